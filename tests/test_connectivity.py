"""Tests for unlearn_jax.merging.connectivity: interpolation, barriers, BatchNorm reset, REPAIR, temperature."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from unlearn_jax import config as config_lib
from unlearn_jax import data
from unlearn_jax import models
from unlearn_jax import train
from unlearn_jax.data.split import Split
from unlearn_jax.merging import connectivity as C
from unlearn_jax.merging import permutation as P
from unlearn_jax.model import init


@pytest.fixture(scope="module")
def digits_pair():
  """Two MLPs trained on digits from different seeds, sharing one compiled epoch (a few seconds)."""
  ds = data.load_dataset("digits", seed=0)
  module = models.get_model("mlp", ds.num_classes, features=(64, 64))
  cfg = config_lib.train_config(epochs=8)
  tx = train.make_optimizer(cfg, ds.train.num_batches(cfg.batch_size))
  ends = []
  for seed in (1, 2):
    model, params, state = init(module, jax.random.key(seed), ds.train.x[:1])
    if not ends:
      epoch = train.make_epoch_fn(train.classification_loss(model), tx, batch_size=cfg.batch_size)
    params, state, _ = train.run_epochs(epoch, tx, params, state, (ds.train.x, ds.train.y), cfg.epochs,
                                        rng=jax.random.key(10 + seed))
    ends.append((params, state))
  return ds, model, ends


def test_interpolate_and_barrier_height():
  a = {"w": jnp.array([0.0, 2.0]), "n": jnp.array(3)}
  b = {"w": jnp.array([4.0, 6.0]), "n": jnp.array(5)}
  mid = C.interpolate(a, b, 0.25)
  np.testing.assert_allclose(mid["w"], [1.0, 3.0])
  assert int(mid["n"]) == 3  # integer leaves are not interpolated
  np.testing.assert_array_equal(C.interpolate(a, b, 1.0)["w"], b["w"])
  with pytest.raises(ValueError, match="'w'.*shape"):
    C.interpolate(a, {"w": jnp.zeros(3), "n": 1}, 0.5)
  with pytest.raises(ValueError, match="'x' is in b but missing from a"):
    C.interpolate(a, dict(b, x=1.0), 0.5)
  assert C.barrier_height([0, 0.5, 1], [0.1, 0.9, 0.2]) == pytest.approx(0.75)
  assert C.barrier_height([0, 0.5, 1], [1.0, 0.2, 0.6], higher_is_better=True) == pytest.approx(0.6)
  assert C.barrier_height([0, 0.5, 1], [1.0, 0.5, 0.0]) == 0.0


def test_barrier_of_a_model_with_itself_is_zero(digits_pair):
  ds, model, (a, _) = digits_pair
  curve = C.barrier(model, a, a, ds.test)
  assert len(curve["alpha"]) == 25 and curve["alpha"][0] == 0.0 and curve["alpha"][-1] == 1.0
  assert curve["loss_barrier"] == 0.0 and curve["accuracy_barrier"] == 0.0
  np.testing.assert_allclose(curve["loss"], curve["loss"][0], rtol=1e-5)


def test_permuted_copy_has_zero_barrier_after_weight_matching(digits_pair):
  ds, model, ((params, state), _) = digits_pair
  spec = P.spec_for_model("mlp", params)
  permuted = P.apply_permutation(spec, P.random_perms(spec, params, jax.random.key(3)), params)
  naive = C.barrier(model, (params, state), (permuted, state), ds.test, num_points=9)
  found = P.weight_matching(spec, params, permuted, rng=jax.random.key(0))
  aligned = P.apply_permutation(spec, found, permuted)
  matched = C.barrier(model, (params, state), (aligned, state), ds.test, num_points=9)
  assert naive["loss_barrier"] > 0.1
  assert matched["loss_barrier"] < 1e-6 and matched["accuracy_barrier"] == 0.0


def test_alignment_and_repair_lower_the_barrier_of_two_seeds(digits_pair):
  ds, model, (a, b) = digits_pair
  spec = P.spec_for_model("mlp", a[0])
  aligned = (P.apply_permutation(spec, P.weight_matching(spec, a[0], b[0], rng=jax.random.key(0)), b[0]), b[1])
  splits = {"train": ds.train, "test": ds.test}
  naive = C.curves(model, a, b, splits, num_points=7, calibrate=True)
  matched = C.curves(model, a, aligned, splits, num_points=7)
  repaired = C.curves(model, a, b, splits, num_points=7, correction="repair", correction_split=ds.train,
                      layers=P.hidden_layers(spec))
  assert set(naive) == {"train", "test"}
  assert matched["train"]["loss_barrier"] < naive["train"]["loss_barrier"] / 3
  assert repaired["train"]["loss_barrier"] < naive["train"]["loss_barrier"]
  row = naive["train"]
  assert np.all(np.asarray(row["calibrated_loss"]) <= np.asarray(row["loss"]) + 1e-9)
  assert all(0.01 < t < 100 for t in row["temperature"]) and len(row["temperature"]) == 7
  assert "calibrated_loss_barrier" in row


def test_repair_restores_interpolated_channel_statistics(digits_pair):
  ds, model, (a, b) = digits_pair
  layers = ("Dense_0", "Dense_1")
  stats_a = C.endpoint_statistics(model, *a, ds.train, layers)
  stats_b = C.endpoint_statistics(model, *b, ds.train, layers)
  params, state = C.repair(model, a, b, 0.3, ds.train, layers=layers, batch_size=500)
  got = C.endpoint_statistics(model, params, state, ds.train, layers)
  for m in layers:
    live = np.asarray(0.7 * stats_a[m][1] + 0.3 * stats_b[m][1]) > 1e-3
    for i in range(2):
      target = 0.7 * np.asarray(stats_a[m][i]) + 0.3 * np.asarray(stats_b[m][i])
      np.testing.assert_allclose(np.asarray(got[m][i])[live], target[live], rtol=2e-3, atol=2e-3, err_msg=m)
  # at alpha = 0 REPAIR leaves A's function as it is
  p0, s0 = C.repair(model, a, b, 0.0, ds.train, layers=layers)
  np.testing.assert_allclose(model.apply(p0, s0, ds.test.x, train=False)[0],
                             model.apply(*a, ds.test.x, train=False)[0], rtol=1e-3, atol=1e-3)
  with pytest.raises(ValueError, match="'fc/bias'"):
    C.repair(model, a, b, 0.5, ds.train, layers=("fc",))


def test_fit_temperature_recovers_the_logit_scale():
  rng = np.random.default_rng(0)
  z = 2.0 * rng.normal(size=(20000, 10)).astype(np.float32)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  y = np.array([rng.choice(10, p=row) for row in p[:20000]])
  assert C.fit_temperature(z, y) == pytest.approx(1.0, rel=0.03)
  for s in (0.25, 3.0, 10.0):
    assert C.fit_temperature(s * z, y) == pytest.approx(s, rel=0.03)
  with pytest.raises(ValueError, match="lower < upper"):
    C.fit_temperature(z, y, lower=2.0, upper=1.0)


class _BNNet(nn.Module):
  momentum: float

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(5, name="dense")(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, name="bn")(h)
    return nn.Dense(3, name="out")(nn.relu(h))


@pytest.mark.parametrize("momentum", [0.5, 0.99])
def test_reset_batch_norm_recomputes_statistics_whatever_the_momentum(momentum):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 4)) * 2 + 1, jnp.float32)
  split = Split(x, jnp.zeros(64, jnp.int32))
  model, params, state = init(_BNNet(momentum), jax.random.key(0), x[:1])
  h = np.asarray(x @ params["dense"]["kernel"] + params["dense"]["bias"])
  new = C.reset_batch_norm(model, params, state, split, batch_size=16)
  # the batches are in order: the statistic is the mean of the 4 batch means / variances
  np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"], h.mean(0), rtol=1e-4, atol=1e-5)
  var = np.mean([h[i:i + 16].var(0) for i in range(0, 64, 16)], axis=0)
  np.testing.assert_allclose(new["batch_stats"]["bn"]["var"], var, rtol=1e-4, atol=1e-5)
  assert C.reset_batch_norm(model, params, {}, split) == {}


def test_curves_reject_bad_options(digits_pair):
  ds, model, (a, b) = digits_pair
  with pytest.raises(ValueError, match="correction must be one of"):
    C.curves(model, a, b, {"t": ds.test}, correction="bn")
  with pytest.raises(ValueError, match="needs correction_split"):
    C.curves(model, a, b, {"t": ds.test}, correction="reset_bn")
  with pytest.raises(ValueError, match="needs layers"):
    C.curves(model, a, b, {"t": ds.test}, correction="repair", correction_split=ds.train)


def _np_mlp_outputs(params, x):
  """NumPy forward pass of the MLP: every Dense output before its ReLU, as (n, features) float64 arrays."""
  h, outs = np.asarray(x, np.float64).reshape(len(x), -1), []
  names = sorted(params, key=lambda k: int(k.split("_")[1]))
  for i, name in enumerate(names):
    h = h @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"], np.float64)
    outs.append(h)
    if i < len(names) - 1:
      h = np.maximum(h, 0.0)
  return outs


def test_layerwise_connectivity_against_numpy_least_squares(digits_pair):
  ds, model, (a, b) = digits_pair
  layers = ("Dense_0", "Dense_1", "Dense_2")
  x = ds.test.x[:300]
  split = Split(x, ds.test.y[:300])
  rows = C.layerwise_connectivity(model, a, b, split, layers=layers, alpha=0.3, batch_size=128)
  mid = C.interpolate(a[0], b[0], 0.3)
  za, zb, zm = _np_mlp_outputs(a[0], x), _np_mlp_outputs(b[0], x), _np_mlp_outputs(mid, x)
  for i, layer in enumerate(layers):
    design = np.stack([za[i].ravel(), zb[i].ravel()], 1)
    coef = np.linalg.lstsq(design, zm[i].ravel(), rcond=None)[0]
    residual = np.linalg.norm(zm[i].ravel() - design @ coef) / np.linalg.norm(zm[i])
    lewc = np.array([0.7 ** (i + 1), 0.3 ** (i + 1)])
    lewc_residual = np.linalg.norm(zm[i].ravel() - design @ lewc) / np.linalg.norm(zm[i])
    row = rows[layer]
    assert row["depth"] == i + 1
    np.testing.assert_allclose([row["weight_a"], row["weight_b"]], coef, rtol=2e-3, atol=1e-4, err_msg=layer)
    assert row["residual"] == pytest.approx(residual, rel=1e-2, abs=1e-4)
    assert row["lewc_residual"] == pytest.approx(lewc_residual, rel=1e-2, abs=1e-4)
    assert (row["lewc_weight_a"], row["lewc_weight_b"]) == pytest.approx(tuple(lewc))
  # the first layer is affine in the weights: exactly (1 - alpha) z_A + alpha z_B, so LEWC holds with exponent 1
  first = rows["Dense_0"]
  assert (first["weight_a"], first["weight_b"]) == pytest.approx((0.7, 0.3), abs=1e-4)
  assert first["residual"] < 1e-5 and first["lewc_residual"] < 1e-5
  assert first["exponent_a"] == pytest.approx(1.0, abs=1e-3)
  assert rows["Dense_2"]["residual"] > 1e-3  # deeper layers of two seeds are not an exact weighted sum


def test_layerwise_connectivity_residual_is_zero_for_equal_endpoints(digits_pair):
  ds, model, (a, _) = digits_pair
  rows = C.layerwise_connectivity(model, a, a, ds.test, layers=("Dense_0", "Dense_1", "Dense_2"))
  for layer, row in rows.items():
    assert row["residual"] < 1e-5, layer
    assert row["weight_a"] + row["weight_b"] == pytest.approx(1.0, abs=1e-5)  # minimum-norm split of z = z_A = z_B
  # LEWC's own weights (0.5^l each) shrink the output of deeper layers: a nonzero residual 1 - 2 * 0.5^l
  assert rows["Dense_2"]["lewc_residual"] == pytest.approx(1 - 2 * 0.5 ** 3, abs=1e-4)
  with pytest.raises(ValueError, match="layers is empty"):
    C.layerwise_connectivity(model, a, a, ds.test, layers=())
  with pytest.raises(ValueError, match="no intermediate output"):
    C.layerwise_connectivity(model, a, a, ds.test, layers=("nope",))
