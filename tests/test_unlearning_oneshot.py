"""One-shot unlearning: SSD / LFSSD, Fisher forgetting, mnemonic codes, influence (WoodFisher) unlearning.

Each formula is checked against NumPy or a Python loop over examples with `jax.grad`; each registered method is
run on a small digits MLP through the standard signature.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from unlearn_jax import config as config_lib
from unlearn_jax import data
from unlearn_jax import model as model_lib
from unlearn_jax import models
from unlearn_jax import train
from unlearn_jax import unlearning
from unlearn_jax.data.split import Split
from unlearn_jax.unlearning import _fisher as fisher
from unlearn_jax.unlearning import _influence as influence
from unlearn_jax.unlearning import _ssd as ssd

sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


def _two_logit_apply(params, state, x, *, train, rng=None):
  """logits = [x·w, 0]: a 3-parameter linear model whose gradients are easy by hand."""
  del train, rng
  z = x @ params["w"]
  return jnp.stack([z, jnp.zeros_like(z)], -1), state


THREE = model_lib.Model(apply=_two_logit_apply)


def _three_param_data():
  """44 retain rows that never use feature 0, then 4 forget rows that use little else."""
  rng = np.random.default_rng(0)
  xr = np.concatenate([np.zeros((44, 1)), rng.normal(size=(44, 2))], 1)
  xf = np.concatenate([np.ones((4, 1)), 0.01 * rng.normal(size=(4, 2))], 1)
  yr, yf = rng.integers(0, 2, 44), np.array([0, 0, 1, 0])
  split = lambda x, y: Split(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32))
  return split(xf, yf), split(xr, yr), {"w": jnp.asarray([0.7, -0.4, 0.3], jnp.float32)}


def _np_importance(x, y, w, batch_size, per_example, objective="cross_entropy"):
  """SSD / LFSSD importances of the 3-parameter model, by hand."""
  x, y, w = np.asarray(x, np.float64), np.asarray(y), np.asarray(w, np.float64)
  z = x @ w
  if objective == "cross_entropy":  # d CE / d w = (p0 - 1[y = 0]) x, p0 = sigmoid(z)
    g = (sigmoid(z) - (y == 0))[:, None] * x
    stat = np.square
  else:  # d ||[z, 0]||^2 / d w = 2 z x
    g = 2 * z[:, None] * x
    stat = np.abs
  if per_example:
    return stat(g).mean(0)
  batches = [g[i:i + batch_size].mean(0) for i in range(0, len(g), batch_size)]
  return np.mean([stat(b) for b in batches], 0)


@pytest.fixture(scope="module")
def digits():
  """A 32-unit MLP trained 8 epochs on digits with mnemonic codes mixed in (t_mix=0.1), a 10% random forget set.

  Returns ``(dataset, splits, model, params, state, codes)``.
  """
  ds = data.load_dataset("digits", seed=0)
  splits = data.make_unlearning_splits(ds, kind="random", fraction=0.1, seed=0)
  model, params, state = model_lib.init(models.get_model("mlp", 10, features=(32,)), jax.random.key(0),
                                        ds.train.x[:1])
  codes = fisher.mnemonic_codes(jax.random.key(7), 10, ds.train.x.shape[1:])
  cfg = config_lib.train_config(epochs=8)
  tx = train.make_optimizer(cfg, ds.train.num_batches(cfg.batch_size))
  epoch = train.make_epoch_fn(fisher.mnemonic_loss(model, codes, t_mix=0.1), tx, batch_size=cfg.batch_size)
  params, state, _ = train.run_epochs(epoch, tx, params, state, (ds.train.x, ds.train.y), cfg.epochs,
                                      rng=jax.random.key(8))
  return ds, splits, model, params, state, codes


@pytest.fixture(scope="module")
def tiny():
  """An untrained 5-4-3 MLP and 7 random examples (a short last batch with batch_size=3), input 4 always 0."""
  model, params, state = model_lib.init(models.get_model("mlp", 3, features=(4,)), jax.random.key(2),
                                        jnp.zeros((1, 5)))
  rng = np.random.default_rng(3)
  x = rng.normal(size=(7, 5))
  x[:, 4] = 0.0  # an unused input: its first-layer weights have zero Fisher (the variance clamp applies)
  split = Split(jnp.asarray(x, jnp.float32), jnp.asarray(rng.integers(0, 3, 7), jnp.int32))
  return model, params, state, split


def _accuracy(model, params, state, split):
  return float(jnp.mean(jnp.argmax(model.apply(params, state, split.x, train=False)[0], -1) == split.y))


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---------------------------------------------------------------------------------------------------------------
# SSD / LFSSD


@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("objective", ["cross_entropy", "output_norm"])
def test_importance_matches_hand_computation(per_example, objective):
  forget, retain, params = _three_param_data()
  full = ssd.full_split(forget, retain)
  # batch_size 5: a short last batch (48 = 9 * 5 + 3), which counts as a whole batch in the mean over batches
  got = ssd.importance(THREE, params, {}, full, objective=objective, batch_size=5, per_example=per_example)
  want = _np_importance(full.x, full.y, params["w"], 5, per_example, objective)
  np.testing.assert_allclose(got["w"], want, rtol=2e-5)


@pytest.mark.parametrize("per_example", [False, True])
def test_ssd_dampens_the_forget_only_parameter_by_hand_factor(per_example):
  forget, retain, params = _three_param_data()
  cfg = dict(alpha=10.0, lam=1.0, batch_size=4, per_example=per_example)
  out, state = ssd.ssd(THREE, params, {}, forget, retain, config=cfg, rng=None)
  assert state == {}
  # Feature 0 is zero on the 44 retain rows, so its gradient comes from the forget rows only: batch semantics give
  # I_D = I_f / 12 (12 batches of 4, one of them the forget batch), per-example ones I_D = (4/48) I_f. Either way
  # I_f > 10 I_D and the weight is multiplied by λ I_D / I_f = 1/12.
  f = _np_importance(forget.x, forget.y, params["w"], 4, per_example)
  d = _np_importance(ssd.full_split(forget, retain).x, ssd.full_split(forget, retain).y, params["w"], 4,
                     per_example)
  np.testing.assert_array_equal(f > 10 * d, [True, False, False])
  np.testing.assert_allclose(d[0] / f[0], 1 / 12, rtol=1e-9)
  np.testing.assert_allclose(out["w"][0], params["w"][0] / 12, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out["w"][1:]), np.asarray(params["w"][1:]))  # bit-identical


def test_ssd_lambda_bound_and_threshold():
  forget, retain, params = _three_param_data()
  # λ = 20: λ I_D / I_f = 20/12 > 1, so the selected weight is multiplied by 1: unchanged.
  out, _ = ssd.ssd(THREE, params, {}, forget, retain, config=dict(lam=20.0, batch_size=4), rng=None)
  np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(params["w"]))
  # λ = 6: factor 6/12 = 0.5.
  out, _ = ssd.ssd(THREE, params, {}, forget, retain, config=dict(lam=6.0, batch_size=4), rng=None)
  np.testing.assert_allclose(out["w"][0], params["w"][0] * 0.5, rtol=1e-5)
  # α = 13 > 12: nothing selected, everything bit-identical.
  out, _ = ssd.ssd(THREE, params, {}, forget, retain, config=dict(alpha=13.0, batch_size=4), rng=None)
  np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(params["w"]))


def test_lfssd_uses_no_labels_and_matches_hand_selection():
  forget, retain, params = _three_param_data()
  out, _ = ssd.lfssd(THREE, params, {}, forget, retain, config=dict(batch_size=4), rng=None)
  flipped = lambda s: Split(s.x, 1 - s.y)
  out2, _ = ssd.lfssd(THREE, params, {}, flipped(forget), flipped(retain), config=dict(batch_size=4), rng=None)
  np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(out2["w"]))
  full = ssd.full_split(forget, retain)
  f = _np_importance(forget.x, forget.y, params["w"], 4, False, "output_norm")
  d = _np_importance(full.x, full.y, params["w"], 4, False, "output_norm")
  sel = f > 10 * d
  want = np.where(sel, np.asarray(params["w"]) * np.minimum(d / np.where(sel, f, 1), 1), np.asarray(params["w"]))
  assert sel[0] and not sel[1:].any()
  np.testing.assert_allclose(out["w"], want, rtol=1e-5)


def test_ssd_on_digits_changes_only_selected_entries(digits):
  _, splits, model, params, state, _ = digits
  out, _ = ssd.ssd(model, params, state, splits.forget, splits.retain, config={}, rng=jax.random.key(0))
  f = ssd.importance(model, params, state, splits.forget)
  d = ssd.importance(model, params, state, ssd.full_split(splits.forget, splits.retain))
  sel = ssd.selection(f, d, 10.0)
  assert 0 < sum(int(s.sum()) for s in jax.tree.leaves(sel)) < sum(s.size for s in jax.tree.leaves(sel))
  for p, o, s in zip(jax.tree.leaves(params), jax.tree.leaves(out), jax.tree.leaves(sel)):
    p, o, s = np.asarray(p), np.asarray(o), np.asarray(s)
    np.testing.assert_array_equal(o[~s], p[~s])
    nonzero = s & (p != 0)
    assert np.all(np.abs(o[nonzero]) < 0.1 * np.abs(p[nonzero]))  # λ/α = 0.1 bounds the factor


def test_ssd_forgets_a_whole_class(digits):
  ds, _, model, params, state, _ = digits
  splits = data.make_unlearning_splits(ds, kind="class", classes=[3], seed=0)
  assert _accuracy(model, params, state, splits.forget) > 0.9
  # Per example, I_D = (n_f I_f + n_r I_r) / n >= (n_f / n) I_f, so nothing is selected unless alpha < n / n_f
  # (about 9.8 for one digit class): alpha = 5 here.
  none, _ = ssd.ssd(model, params, state, splits.forget, splits.retain, config=dict(per_example=True), rng=None)
  chex.assert_trees_all_equal(none, params)
  out, _ = ssd.ssd(model, params, state, splits.forget, splits.retain, config=dict(alpha=5.0, per_example=True),
                   rng=None)
  assert _accuracy(model, out, state, splits.forget) < 0.1
  assert _accuracy(model, out, state, splits.retain) > 0.95


# ---------------------------------------------------------------------------------------------------------------
# Fisher forgetting


@pytest.mark.parametrize("labels", ["true", "expected", "sampled"])
def test_fisher_diagonal_matches_loop_over_examples(tiny, labels):
  model, params, state, split = tiny
  key = jax.random.key(5)
  got = fisher.fisher_diagonal(model, params, state, split, key, labels=labels, batch_size=3)
  logits = model.apply(params, state, split.x, train=False)[0]
  probs = np.asarray(jax.nn.softmax(logits))
  sampled = np.asarray(jax.random.categorical(key, logits))
  logp = lambda p, x, c: jax.nn.log_softmax(model.apply(p, state, x[None], train=False)[0][0])[c]
  want = jax.tree.map(lambda p: np.zeros(p.shape), params)
  for i in range(split.size):
    for c in range(3):
      weight = {"true": float(c == split.y[i]), "sampled": float(c == sampled[i]), "expected": probs[i, c]}[labels]
      g = _np(jax.grad(logp)(params, split.x[i], c))
      want = jax.tree.map(lambda a, b: a + weight * b ** 2 / split.size, want, g)
  chex.assert_trees_all_close(_np(got), want, rtol=1e-5, atol=1e-9)


def test_noise_variance_follows_reference_rules():
  rng = np.random.default_rng(0)
  f = {"Dense_0": {"kernel": rng.uniform(0, 2, (4, 3)), "bias": rng.uniform(0, 2, 3)},
       "Dense_1": {"kernel": rng.uniform(0, 2, (3, 10)), "bias": rng.uniform(0, 2, 10)}}
  f["Dense_0"]["kernel"][0, 0] = 0.0  # clamp: 1/(0 + 1e-8) -> 1e3
  f["Dense_1"]["kernel"][1, 4] = 1e-5  # head clamp: -> 1e2
  alpha = 1e-6
  var, zero = fisher.noise_variance(jax.tree.map(jnp.asarray, f), alpha=alpha, num_classes=10,
                                    removed_classes=(2,))
  k0 = alpha * np.minimum(1 / (f["Dense_0"]["kernel"] + 1e-8), 1e3)
  np.testing.assert_allclose(var["Dense_0"]["kernel"], np.broadcast_to(k0.mean(0, keepdims=True), (4, 3)),
                             rtol=1e-5)
  np.testing.assert_allclose(var["Dense_0"]["bias"], 10 * alpha / (f["Dense_0"]["bias"] + 1e-8), rtol=1e-5)
  k1 = np.broadcast_to((alpha * np.minimum(1 / (f["Dense_1"]["kernel"] + 1e-8), 1e2)).mean(0, keepdims=True),
                       (3, 10)).copy()
  k1[:, 2] = 1e-4
  np.testing.assert_allclose(var["Dense_1"]["kernel"], 10 * k1, rtol=1e-5)
  b1 = alpha * np.minimum(1 / (f["Dense_1"]["bias"] + 1e-8), 1e2)
  b1[2] = 1e-4
  np.testing.assert_allclose(var["Dense_1"]["bias"], 10 * b1, rtol=1e-5)
  assert np.asarray(zero["Dense_1"]["kernel"])[:, 2].all() and np.asarray(zero["Dense_1"]["kernel"]).sum() == 3
  assert not np.asarray(zero["Dense_0"]["kernel"]).any()


def test_fisher_noise_has_variance_alpha_over_fisher(tiny):
  model, params, state, split = tiny
  alpha = 1e-3
  cfg = dict(alpha=alpha, labels="expected", fan_in_mean=False, head_scale=1.0, vector_scale=1.0)
  F = fisher.fisher_diagonal(model, params, state, split, labels="expected")
  clamp = {"Dense_0": 1e3, "Dense_1": 1e2}  # Dense_1 (last axis = 3 classes) is the classifier
  want = {k: jax.tree.map(lambda f: alpha * np.minimum(1 / (np.asarray(f, np.float64) + 1e-8), clamp[k]), F[k])
          for k in F}
  assert np.asarray(want["Dense_0"]["kernel"]).max() == alpha * 1e3  # the clamp is active somewhere
  method = unlearning.get_method("fisher")  # the registered function, vmapped over 4000 keys
  draws = jax.vmap(lambda k: method(model, params, state, split, split, config=cfg, rng=k)[0])(
      jax.random.split(jax.random.key(0), 4000))
  ratios = jax.tree.map(lambda d, p, w: np.mean((np.asarray(d, np.float64) - np.asarray(p)) ** 2, 0) / w, draws,
                        params, want)
  ratios = np.concatenate([r.ravel() for r in jax.tree.leaves(ratios)])
  assert abs(ratios.mean() - 1) < 0.02, ratios.mean()  # 47 entries x 4000 draws: 1 sigma ~ 0.3%
  assert np.all(np.abs(ratios - 1) < 0.12), ratios  # 1 sigma per entry: sqrt(2 / 4000) = 2.2%
  means = jax.tree.map(lambda d, p, w: np.abs(np.mean(np.asarray(d, np.float64) - np.asarray(p), 0)) / np.sqrt(w),
                       draws, params, want)
  assert max(float(m.max()) for m in jax.tree.leaves(means)) < 0.08  # centred on θ: 1 sigma = 1/sqrt(4000)


def test_fisher_zeroes_the_head_of_a_removed_class(tiny):
  model, params, state, split = tiny
  y = np.asarray(split.y)
  forget, retain = split.take(np.flatnonzero(y == y[0])), split.take(np.flatnonzero(y != y[0]))
  assert fisher.removed_classes(forget, retain) == (int(y[0]),)
  out, _ = fisher.fisher_forgetting(model, params, state, forget, retain, config={}, rng=jax.random.key(0))
  for leaf in ("kernel", "bias"):
    col = np.asarray(out["Dense_1"][leaf])[..., y[0]]
    assert np.all(np.abs(col) < 0.2) and not np.any(col == 0)  # N(0, 10 * 1e-4): std 0.03
  keep, _ = fisher.fisher_forgetting(model, params, state, forget, retain, config=dict(remove_classes=False),
                                     rng=jax.random.key(0))
  np.testing.assert_allclose(keep["Dense_1"]["kernel"], params["Dense_1"]["kernel"], atol=0.2)
  assert np.abs(np.asarray(params["Dense_1"]["kernel"])[:, y[0]]).max() > 0.2


# ---------------------------------------------------------------------------------------------------------------
# Mnemonic codes


def test_mnemonic_shift_matches_reference_transcription():
  rng = np.random.default_rng(1)
  ff = {"a": rng.uniform(0, 1, (3, 4)), "b": rng.uniform(0, 1, 5)}
  fr = {"a": rng.uniform(0, 1, (3, 4)), "b": rng.uniform(0, 1, 5)}
  ff["a"][0, 0] = 0.0  # log 0 = -inf -> replaced by the largest finite log-ratio
  got = fisher.mnemonic_shift(jax.tree.map(jnp.asarray, ff), jax.tree.map(jnp.asarray, fr), 1e-3, 0.5)
  for k in ff:
    with np.errstate(divide="ignore"):
      d = np.log(ff[k]) - np.log(fr[k])
    d[np.isnan(d)] = 0
    d[np.isinf(d)] = d[~np.isinf(d)].max()
    r = np.exp(d)
    np.testing.assert_allclose(got[k], min(1e-3, 0.5 / r.max()) * r, rtol=1e-5)


def test_code_fisher_and_replacement(tiny):
  model, params, state, _ = tiny
  codes = fisher.mnemonic_codes(jax.random.key(0), 3, (5,))
  assert codes.shape == (3, 5) and float(codes.min()) >= 0 and float(codes.max()) < 1
  ff, fr = fisher.code_fisher(model, params, state, codes, jnp.array([False, True, False]))
  ce = lambda p, x, c: -jax.nn.log_softmax(model.apply(p, state, x[None], train=False)[0][0])[c]
  g = [_np(jax.grad(ce)(params, codes[c], c)) for c in range(3)]
  chex.assert_trees_all_close(_np(ff), jax.tree.map(lambda a: (1e-16 + a ** 2) / 1, g[1]), rtol=1e-5)
  chex.assert_trees_all_close(_np(fr), jax.tree.map(lambda a, b: (1e-16 + a ** 2 + b ** 2) / 2, g[0], g[2]),
                              rtol=1e-5)
  x = jnp.zeros((4000, 5))
  y = jnp.arange(4000) % 3
  out = fisher.replace_with_codes(jax.random.key(1), x, y, codes, t_mix=0.3)
  swapped = np.asarray(jnp.any(out != 0, axis=1))
  assert abs(swapped.mean() - 0.3) < 0.03
  np.testing.assert_array_equal(np.asarray(out)[swapped], np.asarray(codes)[np.asarray(y)[swapped]])


def test_mnemonic_forget_removes_a_class_learned_with_codes(digits):
  ds, splits, model, params, state, codes = digits
  test0 = ds.test.take(np.flatnonzero(np.asarray(ds.test.y) == 0))
  rest = ds.test.take(np.flatnonzero(np.asarray(ds.test.y) != 0))
  assert _accuracy(model, params, state, test0) > 0.9
  assert _accuracy(model, params, state, Split(codes, jnp.arange(10))) == 1.0  # the codes were learned
  # λ₁ = 1e-2 suits this 32-unit MLP (the reference tunes λ₁, λ₂ per dataset: 1e-3/10 for its MNIST MLP).
  out, info = fisher.mnemonic_forget(model, params, state, codes, [0], lambda1=1e-2, lambda2=10.0)
  assert info["scores"][info["sign"]] == 2.0  # the forgotten code misclassified, all the others right
  assert _accuracy(model, out, state, test0) < 0.1
  assert _accuracy(model, out, state, rest) > 0.9
  # The standard-signature wrapper regenerates the codes from their seed and forgets the forget set's classes.
  zero = data.make_unlearning_splits(ds, kind="class", classes=[0], seed=0)
  cfg = dict(lambda1=1e-2, lambda2=10.0, code_seed=7)
  same, _ = unlearning.fisher_mnemonic(model, params, state, zero.forget, zero.retain, rng=None, **cfg)  # keywords
  chex.assert_trees_all_equal(same, out)
  with pytest.raises(ValueError, match="whole classes"):
    fisher.mnemonic_unlearn(model, params, state, splits.forget, splits.retain, config=cfg, rng=None)


# ---------------------------------------------------------------------------------------------------------------
# Influence / WoodFisher


@pytest.mark.parametrize("m,p", [(12, 7), (6, 20)])
@pytest.mark.parametrize("damping", [1.0, 0.3])
def test_woodbury_solvers_equal_linear_solve(m, p, damping):
  rng = np.random.default_rng(m + p)
  G, v = rng.normal(size=(m, p)), rng.normal(size=p)
  want = np.linalg.solve(damping * np.eye(p) + G.T @ G / m, v)
  for solve in (influence.woodbury_solve, influence.woodbury_recursion):
    got = solve(jnp.asarray(G, jnp.float32), jnp.asarray(v, jnp.float32), damping, float(m))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_reference_recursion_matches_transcription():
  rng = np.random.default_rng(0)
  G, v = rng.normal(size=(9, 6)), rng.normal(size=6)
  k, o = v.copy(), None
  for g in G:  # Unlearn-Sparse unlearn/Wfisher.py, woodfisher(), with N = 5
    if o is None:
      o = g.copy()
    else:
      t = o @ g
      k -= (k @ g) / (5 + t) * o
      o -= t / (5 + t) * o
  got = influence.reference_recursion(jnp.asarray(G, jnp.float32), jnp.asarray(v, jnp.float32), 5.0)
  np.testing.assert_allclose(got, k, rtol=1e-4, atol=1e-6)


def test_influence_direction_and_fisher_match_loop(tiny):
  model, params, state, split = tiny
  forget, retain = split.take(np.arange(2)), split.take(np.arange(2, 7))
  ce = lambda p, x, y: -jax.nn.log_softmax(model.apply(p, state, x[None], train=False)[0][0])[y]
  flat = lambda t: ravel_pytree(t)[0]
  G = np.stack([np.asarray(flat(jax.grad(ce)(params, split.x[i], split.y[i])), np.float64) for i in range(7)])
  v_want = G[:2].sum(0) / 7 - G[2:].sum(0) * 2 / (7 * 5)
  v = influence.forget_direction(model, params, state, forget, retain, batch_size=3)
  np.testing.assert_allclose(flat(v), v_want, rtol=1e-5, atol=1e-8)
  Gr = G[2:]
  want = np.linalg.solve(0.5 * np.eye(G.shape[1]) + Gr.T @ Gr / 5, v_want)
  for solver in ("woodbury", "recursion"):
    got = influence.inverse_fisher_vector(model, params, state, retain, v, rng=jax.random.key(0), damping=0.5,
                                          num_examples=100, solver=solver, batch_size=3)
    np.testing.assert_allclose(flat(got), want, rtol=2e-4, atol=1e-6)
  # The streamed reference loop sees the retain rows in the order drawn by rng, with the fixed N = num_examples.
  perm = np.asarray(jax.random.permutation(jax.random.key(0), 5))
  got = influence.inverse_fisher_vector(model, params, state, retain, v, rng=jax.random.key(0), num_examples=100,
                                        solver="reference", batch_size=3)
  want_ref = influence.reference_recursion(jnp.asarray(Gr[perm], jnp.float32), flat(v), 100.0)
  np.testing.assert_allclose(flat(got), want_ref, rtol=1e-5, atol=1e-8)
  alpha = 3.0
  out, _ = influence.influence(model, params, state, forget, retain,
                               config=dict(alpha=alpha, damping=0.5, batch_size=3), rng=jax.random.key(0))
  np.testing.assert_allclose(flat(out), np.asarray(flat(params)) + alpha * want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The registered methods


# Other option values (per_example, labels, solver='recursion') are exercised on the small models above.
METHOD_CONFIGS = [("ssd", {}), ("lfssd", {"alpha": 2.0}), ("fisher", {}), ("influence", {}),
                  ("wfisher", {"solver": "reference"})]


@pytest.mark.parametrize("name,cfg", METHOD_CONFIGS)
def test_registered_method_signature_shapes_and_determinism(digits, name, cfg):
  _, splits, model, params, state, _ = digits
  method = unlearning.get_method(name)
  run = functools.partial(method, model, params, state, splits.forget, splits.retain, config=cfg)
  # every registered default as a keyword (cfg overriding some); ``again`` passes ``config=``: the same weights
  out, new_state = method(model, params, state, splits.forget, splits.retain, rng=jax.random.key(0),
                          **{**unlearning.DEFAULTS[name], **cfg})
  chex.assert_trees_all_equal_structs(out, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
  chex.assert_tree_all_finite(out)
  assert new_state is state
  again, _ = run(rng=jax.random.key(0))
  chex.assert_trees_all_equal(out, again)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params)))
  if name == "fisher":
    other, _ = run(rng=jax.random.key(1))
    assert not np.array_equal(np.asarray(other["Dense_0"]["kernel"]), np.asarray(out["Dense_0"]["kernel"]))


@pytest.mark.parametrize("name,cfg,msg", [
    ("ssd", {"alpah": 1.0}, "method.alpah"),
    ("ssd", {"lam": -1.0}, "method.lam"),
    ("fisher", {"labels": "soft"}, "method.labels"),
    ("influence", {"solver": "cg"}, "method.solver"),
    ("influence", {"damping": 0.0}, "method.damping"),
])
def test_bad_options_raise_naming_the_key(digits, name, cfg, msg):
  _, splits, model, params, state, _ = digits
  with pytest.raises(ValueError, match=msg):
    unlearning.get_method(name)(model, params, state, splits.forget, splits.retain, config=cfg,
                                rng=jax.random.key(0))


def test_methods_need_a_retain_set(digits):
  _, splits, model, params, state, _ = digits
  for name in ("ssd", "lfssd", "fisher", "influence"):
    with pytest.raises(ValueError, match="retain"):
      unlearning.get_method(name)(model, params, state, splits.forget, None, config={}, rng=jax.random.key(0))
