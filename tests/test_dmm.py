"""Oracle matching and Datamodel Matching (DMM): targets against closed forms, and forgetting on digits."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from unlearn_jax import model as model_lib
from unlearn_jax import population
from unlearn_jax import train
from unlearn_jax import unlearning
from unlearn_jax.evaluation import population as pop_metrics
from unlearn_jax.models import get_model
from unlearn_jax.attribution import subsets
from unlearn_jax.data.split import Split
from unlearn_jax.unlearning import _dmm as dmm
from tests import method_checks


def test_oracle_matching_with_exact_retrain_outputs_gets_klom_below_the_originals():
  """Populations of 4 Originals and 4 Retrains (digits MLPs, one vmapped program each, member i of both from the
  same initialisation); Original i is matched to the exact outputs of Retrain i: KLoM to the Retrain population on
  the forget set (mean and median over forget examples, the reference's binning) falls below the Originals'."""
  model, params, state, splits = method_checks.digits_setup()
  cfg = ml_collections.ConfigDict(dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
                                       schedule="constant", epochs=8, batch_size=64))
  train_split = Split(jnp.concatenate([splits.forget.x, splits.retain.x]),
                      jnp.concatenate([splits.forget.y, splits.retain.y]))
  n_forget, size = splits.forget.size, 4
  keys = jax.random.split(jax.random.key(0), size)
  p0, s0 = population.init(lambda k: model_lib.init(get_model("mlp", 10, features=(32,)), k,
                                                    train_split.x[:1])[1:], keys)
  originals = population.fit(model, p0, s0, train_split, cfg, rng=jax.random.key(1),
                             masks=population.full_masks(train_split.size, size))[:2]
  retrains = population.fit(model, p0, s0, train_split, cfg, rng=jax.random.key(2),
                            masks=population.exclude_masks(train_split.size, np.arange(n_forget), size))[:2]
  oracles = [population.member(retrains, i) for i in range(size)]
  unlearned = [unlearning.REGISTRY["oracle_matching"](model, *population.member(originals, i), splits.forget,
                                                      splits.retain, config=dict(lr=3e-3, epochs=6, batch_size=64),
                                                      rng=jax.random.key(10 + i), oracles=[oracles[i]])
               for i in range(size)]
  logits = lambda members: jnp.stack([model.apply(*m, splits.forget.x, train=False)[0] for m in members])
  ref = logits(oracles)
  before = pop_metrics.klom(logits([population.member(originals, i) for i in range(size)]), ref, splits.forget.y)
  after = pop_metrics.klom(logits(unlearned), ref, splits.forget.y)
  assert np.nanmedian(after) < np.nanmedian(before) - 1.0, (np.nanmedian(after), np.nanmedian(before))
  assert np.nanmean(after) < np.nanmean(before) - 0.5, (np.nanmean(after), np.nanmean(before))


def test_matching_rows_duplicates_forget_and_samples_retain():
  f = Split(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32), jnp.arange(4))
  r = Split(jnp.zeros((20, 2)), jnp.zeros(20, jnp.int32), jnp.arange(4, 24))
  f_rows, r_rows = dmm.matching_rows(f, r, retain_multiplier=2.0, forget_multiplier=1.5, rng=jax.random.key(0))
  np.testing.assert_array_equal(f_rows, [0, 1, 2, 3, 0, 1])
  assert len(r_rows) == 8 and len(set(r_rows.tolist())) == 8 and r_rows.max() < 20


def test_match_term_is_mse_or_soft_cross_entropy():
  model, params, state, splits = method_checks.digits_setup()
  x = splits.forget.x[:5]
  targets = jax.random.normal(jax.random.key(0), (5, 10))
  logits = np.asarray(model.apply(params, state, x, train=True)[0])
  mse, _ = dmm.match_term(model, "mse")(params, state, (x, targets), None, jnp.int32(0))
  np.testing.assert_allclose(mse, np.mean((logits - np.asarray(targets)) ** 2), rtol=1e-5)
  ce, _ = dmm.match_term(model, "ce")(params, state, (x, targets), None, jnp.int32(0))
  p = np.asarray(jax.nn.softmax(targets))
  np.testing.assert_allclose(ce, -np.mean(np.sum(p * np.asarray(jax.nn.log_softmax(logits)), 1)), rtol=1e-5)


def linear_population(model, params, state, splits, m=300, seed=0):
  """Subset masks and logits that are exactly linear in the masks: logits = base + masks @ theta."""
  rng = np.random.default_rng(seed)
  n = splits.forget.size + splits.retain.size
  masks = rng.random((m, n)) < 0.5
  theta = np.zeros((n, n, 10), np.float32)  # [source row, target row, class]
  for t in range(n):
    theta[rng.choice(n, 2, replace=False), t] = rng.normal(size=(2, 10))
  base = rng.normal(size=(n, 10))
  logits = base[None] + np.einsum("mi,itc->mtc", masks.astype(np.float32), theta)
  return subsets.SubsetOutputs(jnp.asarray(masks), jnp.asarray(logits, jnp.float32)), theta


def tiny_splits():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(30, 64)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 30), jnp.int32)
  forget = np.array([2, 7, 11, 20])
  retain = np.setdiff1d(np.arange(30), forget)
  return ml_collections.ConfigDict(dict(forget=Split(x[forget], y[forget], jnp.asarray(forget)),
                                        retain=Split(x[retain], y[retain], jnp.asarray(retain))))


def test_dmm_targets_subtract_the_forget_sets_datamodel_effect():
  model, params, state, _ = method_checks.digits_setup()
  splits = tiny_splits()
  outputs, theta = linear_population(model, params, state, splits)
  opts = unlearning.options({"retain_multiplier": 2.0}, "dmm")
  x, predicted = dmm.dmm_targets(model, params, state, splits.forget, splits.retain, outputs, opts,
                                 jax.random.key(0))
  f_rows, r_rows = dmm.matching_rows(splits.forget, splits.retain, retain_multiplier=2.0, forget_multiplier=1.0,
                                     rng=jax.random.key(0))
  rows = np.concatenate([np.asarray(splits.forget.index)[f_rows], np.asarray(splits.retain.index)[r_rows]])
  original = np.asarray(model.apply(params, state, x, train=False)[0])
  want = original - theta[np.asarray(splits.forget.index)][:, rows].sum(0)
  np.testing.assert_allclose(np.asarray(predicted), want, atol=0.05)
  assert np.abs(want - original).max() > 0.5  # the effect is not negligible


def test_dmm_diagonal_targets_subtract_each_forget_rows_difference_of_means():
  model, params, state, _ = method_checks.digits_setup()
  splits = tiny_splits()
  outputs, _ = linear_population(model, params, state, splits, m=40)
  opts = unlearning.options({"retain_multiplier": 1.0, "dm_terms": "diagonal"}, "dmm")
  x, predicted = dmm.dmm_targets(model, params, state, splits.forget, splits.retain, outputs, opts,
                                 jax.random.key(0))
  original = np.asarray(model.apply(params, state, x, train=False)[0])
  masks, logits = np.asarray(outputs.masks), np.asarray(outputs.logits)
  for pos, row in enumerate(np.asarray(splits.forget.index)):  # the forget rows come first
    inside = masks[:, row]
    effect = logits[inside, row].mean(0) - logits[~inside, row].mean(0)
    np.testing.assert_allclose(predicted[pos], original[pos] - effect, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(predicted[4:], original[4:], rtol=1e-6)  # retain rows keep the Original's logits


def test_dmm_runs_from_a_saved_population_and_moves_the_weights(tmp_path):
  model, params, state, _ = method_checks.digits_setup()
  splits = tiny_splits()
  outputs, _ = linear_population(model, params, state, splits, m=40)
  subsets.save_outputs(tmp_path / "subsets", outputs, {"alpha": 0.5})
  loaded, meta = subsets.load_outputs(tmp_path / "subsets")
  np.testing.assert_array_equal(loaded.logits, outputs.logits) and meta["alpha"] == 0.5
  config = {"attribution_dir": str(tmp_path / "subsets"), "epochs": 2, "batch_size": 8}
  method_checks.check_method_contract(unlearning.REGISTRY["dmm"], model, params, state, splits, config)


def test_bad_options_fail_before_work():
  model, params, state, splits = method_checks.digits_setup()
  with pytest.raises(ValueError, match="method.attribution_dir: empty"):
    unlearning.REGISTRY["dmm"](model, params, state, splits.forget, splits.retain, config={}, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="method.oracle_dirs: empty"):
    unlearning.REGISTRY["oracle_matching"](model, params, state, splits.forget, splits.retain, config={},
                                           rng=jax.random.key(0))
  with pytest.raises(ValueError, match="method.loss='l1'"):
    unlearning.REGISTRY["oracle_matching"](model, params, state, splits.forget, splits.retain,
                                           config={"loss": "l1"}, rng=jax.random.key(0), oracles=[(params, state)])
  with pytest.raises(ValueError, match="masks: shape"):
    subsets.save_outputs("/nonexistent", subsets.SubsetOutputs(np.ones(3), np.ones((3, 2, 2))))


def test_exponential_schedule_decays_per_epoch():
  cfg = ml_collections.ConfigDict(dict(lr=1.0, schedule="exponential", gamma=0.5, epochs=3))
  sched = train.make_schedule(cfg, steps_per_epoch=4)
  np.testing.assert_allclose([sched(i) for i in (0, 3, 4, 8, 11)], [1.0, 1.0, 0.5, 0.25, 0.25])


def test_run_inputs_read_the_methods_own_options(monkeypatch):
  """The run builds DMM's population from the options it is given (a benchmark's, not config.method's)."""
  import types  # pylint: disable=g-import-not-at-top
  from unlearn_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from unlearn_jax.studies import attribution as study  # pylint: disable=g-import-not-at-top
  seen = {}
  monkeypatch.setattr(study, "subset_population", lambda exp, workdir, **kw: (seen.update(kw), ("/pop", 3.0))[1])
  exp = types.SimpleNamespace(config=types.SimpleNamespace(method=unlearning.method_config("ft")))
  method, seconds = run_lib.method_inputs(exp, "/tmp/w", None, None, unlearning.method_config("dmm", num_models=7,
                                                                                              alpha=0.25))
  assert seen == {"num_models": 7, "alpha": 0.25} and seconds == 3.0
  assert method.attribution_dir == "/pop" and method.num_models == 7
  assert run_lib.method_inputs(exp, None, None, None)[1] == 0.0  # ft needs nothing
  with pytest.raises(ValueError, match="config.attribution.alpha=1.0"):
    study.check_alpha(1.0, "config.attribution.alpha")


def test_self_effects_difference_of_means_and_rows_without_an_estimate():
  masks = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]], bool)  # row 0 always in, row 2 never
  logits = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
  got = np.asarray(dmm.self_effects(subsets.SubsetOutputs(masks, logits), [0, 1, 2]))
  np.testing.assert_allclose(got[1], logits[[0, 2], 1].mean(0) - logits[[1, 3], 1].mean(0))
  np.testing.assert_array_equal(got[[0, 2]], 0.0)
