"""TRAK, datamodels and LDS against NumPy formulas and synthetic ground truths."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from scipy import stats

from unlearn_jax import attribution
from unlearn_jax import model as model_lib
from unlearn_jax import threefry
from unlearn_jax.attribution import datamodels as dm_lib
from unlearn_jax.attribution import trak


class Logistic(nn.Module):
  """Logistic regression: logits (0, x·w + b), so the margin of label 1 is x·w + b and of label 0 its negative
  (one logit per class would make ΦᵀΦ singular: the softmax is invariant to a shift of all logits)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    z = nn.Dense(1)(x.reshape((x.shape[0], -1)))
    return jnp.concatenate([jnp.zeros_like(z), z], axis=-1)


@functools.lru_cache()
def logistic(seed=0):
  model, params, state = model_lib.init(Logistic(), jax.random.key(seed), jnp.zeros((1, 4)))
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(seed + 7), a.shape), params)
  return model, params, state


def rows(n, seed):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(n, 4)), jnp.float32), jnp.asarray(rng.integers(0, 2, n), jnp.int32)


def numpy_features(params, x, y):
  """Per-example gradients of the logistic-regression margin ±(x·w + b), and Q = 1 - p, written out by hand."""
  w, b = np.asarray(params["Dense_0"]["kernel"], np.float64), np.asarray(params["Dense_0"]["bias"], np.float64)
  x, y = np.asarray(x, np.float64), np.asarray(y)
  sign = np.where(y == 1, 1.0, -1.0)
  margin = sign * (x @ w[:, 0] + b[0])
  grads = sign[:, None] * np.concatenate([np.ones((len(x), 1)), x], axis=1)  # d margin / d (b, w)
  p = 1.0 / (1.0 + np.exp(-margin))  # softmax probability of the true label
  return grads, 1.0 - p


def numpy_trak(models, train, targets):
  """TRAK over an ensemble: mean_m φ_m(z)ᵀ(Φ_mᵀΦ_m)⁻¹Φ_mᵀ, times mean_m Q_m (the paper's estimator)."""
  total, q_sum = 0.0, 0.0
  for params in models:
    phi, q = numpy_features(params, *train)
    phi_t, _ = numpy_features(params, *targets)
    total = total + phi_t @ np.linalg.inv(phi.T @ phi) @ phi.T
    q_sum = q_sum + q
  return (total / len(models)) * (q_sum / len(models))[None, :]


def test_trak_identity_projection_equals_paper_estimator():
  model, params, state = logistic()
  train, targets = rows(40, 1), rows(6, 2)
  got = attribution.trak_scores(model, [(params, state)], train, targets, projection="identity", proj_dim=None,
                                kernel_normalization="none", chunk_size=16)
  np.testing.assert_allclose(np.asarray(got), numpy_trak([params], train, targets), rtol=1e-4, atol=1e-4)
  # the reference code's normalisation rescales one model's scores by one positive constant
  ref = attribution.trak_scores(model, [(params, state)], train, targets, projection="identity", proj_dim=None,
                                chunk_size=16)
  ratio = np.asarray(ref) / np.asarray(got)
  assert ratio.min() > 0 and np.allclose(ratio, ratio.mean(), rtol=1e-3)


def test_trak_ensemble_averages_scores_and_q_separately():
  model, params, state = logistic()
  other = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(jax.random.key(3), a.shape), params)
  train, targets = rows(30, 4), rows(5, 5)
  got = attribution.trak_scores(model, [(params, state), (other, state)], train, targets, projection="identity",
                                proj_dim=None, kernel_normalization="none")
  np.testing.assert_allclose(np.asarray(got), numpy_trak([params, other], train, targets), rtol=1e-4, atol=1e-4)


def test_margin_and_out_to_loss():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  y = jnp.array([0, 1])
  p = np.asarray(jax.nn.softmax(logits))
  want = np.log(p[[0, 1], [0, 1]] / (1 - p[[0, 1], [0, 1]]))
  np.testing.assert_allclose(trak.margin(logits, y), want, rtol=1e-5)
  np.testing.assert_allclose(trak.out_to_loss(logits, y), 1 - p[[0, 1], [0, 1]], rtol=1e-5)


@pytest.mark.parametrize("kind", ["rademacher", "normal"])
def test_jl_projection_preserves_inner_products(kind):
  k, d = 4096, 3000
  rng = np.random.default_rng(0)
  u = rng.normal(size=(16, d)) / np.sqrt(d)
  v = 0.6 * u + 0.8 * rng.normal(size=(16, d)) / np.sqrt(d)
  proj = np.asarray(trak.project(jnp.asarray(np.concatenate([u, v]), jnp.float32), jax.random.key(1), proj_dim=k,
                                 projection=kind, block_size=1024))
  est = np.sum(proj[:16] * proj[16:], axis=1) / k
  exact = np.sum(u * v, axis=1)
  bound = np.sqrt(2.0 / k) * np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)  # the stated std bound
  assert np.all(np.abs(est - exact) < 4 * bound)
  assert np.abs(np.mean(est - exact)) < 4 * bound.mean() / np.sqrt(16)  # unbiased


def test_featurize_does_not_depend_on_chunking():
  model, params, state = logistic()
  x, y = rows(23, 6)
  a = attribution.featurize(model, params, state, x, y, proj_dim=64, chunk_size=5, block_size=16)
  b = attribution.featurize(model, params, state, x, y, proj_dim=64, chunk_size=23, block_size=16)
  # chunks: at most chunk_size rows (default: 128 MiB of float32 gradients), spread evenly over the chunks
  assert [trak.chunk_rows(23, 5, 5), trak.chunk_rows(4000, 78858), trak.chunk_rows(4000, 78858, 256)] == [5, 400, 250]
  np.testing.assert_allclose(a.phi, b.phi, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a.q, b.q, rtol=1e-6)
  # a projected feature is R^T g / sqrt(P) for the unprojected one
  ident = attribution.featurize(model, params, state, x, y, projection="identity", proj_dim=None)
  assert ident.phi.shape == (23, 5)
  grads, q = numpy_features(params, x, y)
  np.testing.assert_allclose(ident.phi, grads / np.sqrt(5), rtol=1e-5, atol=1e-6)  # ravel order: bias, kernel
  np.testing.assert_allclose(ident.q, q, rtol=1e-5)


def test_featurize_projects_by_the_same_matrix_in_any_number_of_passes():
  model, params, state = logistic()
  x, y = rows(9, 8)
  ident = attribution.featurize(model, params, state, x, y, projection="identity", proj_dim=None)
  key = jax.random.fold_in(jax.random.key(4), 2)
  want = trak.project(ident.phi, key, proj_dim=60, block_size=16)  # 4 blocks, the last one cut to 12 columns
  one = attribution.featurize(model, params, state, x, y, proj_dim=60, block_size=16, seed=4, model_id=2)
  two = attribution.featurize(model, params, state, x, y, proj_dim=60, block_size=16, seed=4, model_id=2,
                              projection_mib=2 * 4 * 5 * 16 / 2 ** 20)  # 2 blocks of 5 x 16 float32 per pass
  np.testing.assert_allclose(one.phi, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(two.phi, one.phi)
  assert trak._passes(5, 60, 16, 2 * 4 * 5 * 16 / 2 ** 20) == [range(0, 2), range(2, 4)]  # pylint: disable=protected-access


def test_projection_draws_are_jax_randoms():
  for seed, shape in [(0, (7, 5)), (3, (300, 33))]:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), 2)
    got = jax.jit(trak._rademacher, static_argnums=1)(key, shape)  # pylint: disable=protected-access
    np.testing.assert_array_equal(got, jax.random.rademacher(key, shape, dtype=jnp.float32))  # bit for bit
    normal = jax.jit(trak._normal, static_argnums=1)(key, shape)  # pylint: disable=protected-access
    np.testing.assert_allclose(normal, jax.random.normal(key, shape, dtype=jnp.float32), rtol=1e-6, atol=1e-6)
  assert set(np.unique(got)) == {-1.0, 1.0}
  np.testing.assert_array_equal(jax.jit(threefry.bits, static_argnums=1)(key, (3, 4, 5)), jax.random.bits(key, (3, 4, 5)))
  # the shared uniform floats (TRAK's normal draws, the merges' random masks) are jax.random.uniform's, bit for bit
  np.testing.assert_array_equal(threefry.uniform(threefry.bits(key, (3, 4, 5))), jax.random.uniform(key, (3, 4, 5)))


def test_features_cache_round_trip(tmp_path):
  model, params, state = logistic()
  x, y = rows(12, 7)
  a = attribution.cached_features(tmp_path, model, params, state, x, y, proj_dim=8)
  assert len(list(tmp_path.iterdir())) == 1
  b = attribution.cached_features(tmp_path, model, params, state, x, y, proj_dim=8)
  np.testing.assert_array_equal(a.phi, b.phi)
  attribution.cached_features(tmp_path, model, params, state, x, y, proj_dim=8, model_id=1)
  assert len(list(tmp_path.iterdir())) == 2  # another matrix, another entry


def synthetic_population(m=400, n=40, t=6, alpha=0.5, noise=0.01, seed=0):
  rng = np.random.default_rng(seed)
  masks = rng.random((m, n)) < alpha
  theta = np.zeros((n, t))
  for j in range(t):
    idx = rng.choice(n, 4, replace=False)
    theta[idx, j] = rng.choice([-1.0, 1.0], 4) * rng.uniform(0.5, 1.5, 4)
  bias = rng.normal(size=t)
  out = masks @ theta + bias + noise * rng.normal(size=(m, t))
  return masks, out, theta, bias


@pytest.mark.parametrize("method", ["lasso", "ridge"])
def test_datamodels_recover_linear_ground_truth(method):
  masks, out, theta, bias = synthetic_population()
  dm = attribution.fit_datamodels(masks, out, method=method, steps=400)
  np.testing.assert_allclose(np.asarray(dm.weight), theta, atol=0.06)
  np.testing.assert_allclose(np.asarray(dm.bias), bias, atol=0.1)
  # removal effect is the sum of the removed rows' coefficients
  np.testing.assert_allclose(attribution.removal_effect(dm, jnp.array([1, 3])), dm.weight[1] + dm.weight[3],
                             rtol=1e-6)
  if method == "lasso":  # l1 gives exact zeros off the support
    assert np.mean(np.asarray(dm.weight)[theta == 0] == 0) > 0.8


def test_datamodels_vectorise_over_trailing_target_axes():
  masks, out, _, _ = synthetic_population(m=60, n=10, t=6)
  flat = attribution.fit_datamodels(masks, out, method="ridge")
  shaped = attribution.fit_datamodels(masks, out.reshape(60, 3, 2), method="ridge")
  assert shaped.weight.shape == (10, 3, 2)
  np.testing.assert_allclose(shaped.weight.reshape(10, 6), flat.weight, rtol=1e-5, atol=1e-6)


def test_lds_of_exact_ground_truth_is_one():
  masks, out, theta, bias = synthetic_population(noise=0.0, seed=3)
  exact = dm_lib.Datamodels(jnp.asarray(theta, jnp.float32), jnp.asarray(bias, jnp.float32), jnp.zeros(6))
  assert attribution.lds(attribution.predict(exact, masks), out) == pytest.approx(1.0, abs=1e-9)
  # TRAK-style predictions (no bias, any positive scale per target) score the same
  assert attribution.lds(attribution.trak.predicted_outputs(jnp.asarray(3 * theta.T, jnp.float32), masks),
                         out) == pytest.approx(1.0, abs=1e-9)
  assert attribution.lds(-out, out) == pytest.approx(-1.0)


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(0)
  p, a = rng.integers(0, 4, (25, 5)).astype(float), rng.normal(size=(25, 5))
  want = [stats.spearmanr(p[:, j], a[:, j])[0] for j in range(5)]
  np.testing.assert_allclose(attribution.spearman_per_target(p, a), want, rtol=1e-10)


def test_bad_input_is_one_line_before_work():
  model, params, state = logistic()
  train, targets = rows(10, 0), rows(3, 1)
  with pytest.raises(ValueError, match="proj_dim=0"):
    attribution.trak_scores(model, [(params, state)], train, targets, proj_dim=0)
  with pytest.raises(ValueError, match="projection='sparse'"):
    attribution.trak_scores(model, [(params, state)], train, targets, projection="sparse")
  with pytest.raises(ValueError, match="models: empty"):
    attribution.trak_scores(model, [], train, targets)
  with pytest.raises(ValueError, match="targets: x has 3 rows"):
    attribution.trak_scores(model, [(params, state)], train, (targets[0], targets[1][:2]))
  with pytest.raises(ValueError, match="masks: 2 subset models"):
    attribution.fit_datamodels(np.ones((2, 5)), np.ones((2, 3)))
  with pytest.raises(ValueError, match="outputs: shape"):
    attribution.fit_datamodels(np.ones((9, 5)), np.ones((8, 3)))
  with pytest.raises(ValueError, match="masks: shape"):
    attribution.predict(dm_lib.Datamodels(jnp.zeros((5, 2)), jnp.zeros(2), jnp.zeros(2)), np.ones((4, 6)))
  with pytest.raises(ValueError, match="predicted: shape"):
    attribution.lds(np.zeros((5, 2)), np.zeros((5, 3)))
