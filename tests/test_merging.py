"""Tests for unlearn_jax.merging: every merge against an independent NumPy formula, plus the special cases."""
import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from unlearn_jax import compilation
from unlearn_jax import merging
from unlearn_jax.data.split import Split
from unlearn_jax.model import init

SHAPES = {"a": {"kernel": (4, 3), "bias": (3,)}, "b": (5,)}


def _tree(seed, shapes=SHAPES):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


def _models(k=3, seed=0):
  """A base and k models around it, as NumPy pytrees."""
  base = _tree(seed)
  return base, [jax.tree.map(lambda b, d: b + d, base, _tree(seed + 1 + i)) for i in range(k)]


def _np_map(fn, *trees):
  return jax.tree.map(lambda *xs: fn(*[np.asarray(x, np.float64) for x in xs]), *trees)


def _assert_close(actual, expected, rtol=1e-5, atol=1e-5):
  chex.assert_trees_all_equal_structs(actual, expected)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol), actual, expected)


# ---------------------------------------------------------------------------------------------------------------
# Independent NumPy references.


def _np_trim(d, density):
  """Keeps the round(density * n) largest magnitudes of each model's delta (d has shape (k, ...))."""
  flat = d.reshape(d.shape[0], -1)
  keep = min(flat.shape[1], max(1, round(density * flat.shape[1])))
  out = np.zeros_like(flat)
  for i, row in enumerate(flat):
    top = np.argsort(-np.abs(row))[:keep]
    out[i, top] = row[top]
  return out.reshape(d.shape)


def _np_disjoint_mean(d):
  elected = np.sign(d.sum(0))
  merged = np.zeros(d.shape[1:])
  for idx in np.ndindex(*d.shape[1:]):
    vals = [v for v in d[(slice(None),) + idx] if v != 0 and np.sign(v) == elected[idx]]
    merged[idx] = np.mean(vals) if vals else 0.0
  return merged


def _np_ties(base, params_list, density, scale):
  return _np_map(lambda b, *ps: b + scale * _np_disjoint_mean(_np_trim(np.stack([p - b for p in ps]), density)),
                 base, *params_list)


def _np_model_stock(b, *ps):
  k = len(ps)
  d = [(p - b).ravel() for p in ps]
  coss = [d[i] @ d[j] / (np.linalg.norm(d[i]) * np.linalg.norm(d[j])) for i in range(k) for j in range(i + 1, k)]
  c = np.mean(coss)
  t = k * c / (1 + (k - 1) * c)
  return t * np.mean(ps, axis=0) + (1 - t) * b


def _np_slerp(a, b, t):
  ua, ub = a.ravel() / np.linalg.norm(a), b.ravel() / np.linalg.norm(b)
  omega = np.arccos(np.clip(ua @ ub, -1, 1))
  return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


# ---------------------------------------------------------------------------------------------------------------
# Each merge against its formula.


def test_linear_matches_weighted_average():
  _, ps = _models()
  w = np.array([0.2, 0.5, 1.3])
  _assert_close(merging.linear(ps), _np_map(lambda *xs: np.mean(xs, axis=0), *ps))
  _assert_close(merging.linear(ps, weights=w), _np_map(lambda *xs: np.tensordot(w, xs, 1) / w.sum(), *ps))
  _assert_close(merging.linear(ps, weights=w, normalize=False), _np_map(lambda *xs: np.tensordot(w, xs, 1), *ps))


def test_task_vectors_and_task_arithmetic():
  base, ps = _models()
  taus = merging.task_vectors(ps, base)
  for tau, p in zip(taus, ps):
    _assert_close(tau, _np_map(lambda x, b: x - b, p, base))
  expected = _np_map(lambda b, *xs: b - 0.7 * sum(x - b for x in xs), base, *ps)
  _assert_close(merging.task_arithmetic(ps, base=base, scale=-0.7), expected)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_numpy(density):
  base, ps = _models(k=4)
  _assert_close(merging.ties(ps, base=base, density=density, scale=0.8), _np_ties(base, ps, density, 0.8))


def test_ties_trims_per_tensor_to_density():
  base = {"w": np.zeros((10, 10), np.float32)}
  p = {"w": np.random.default_rng(0).standard_normal((10, 10)).astype(np.float32)}
  out = np.asarray(merging.ties([p], base=base, density=0.23)["w"])
  assert np.count_nonzero(out) == 23
  assert np.abs(out[out != 0]).min() > np.abs(p["w"][out == 0]).max()


def test_trims_of_large_tensors_find_the_exact_threshold_with_ties(monkeypatch):
  # Past the sort path's 2**16 entries the k-th magnitude is found by counting (a 4-way search on the fp32 bits).
  # Magnitudes on a grid of 50 values make about 1,400 entries tie with each threshold: the counting search must
  # land on the same threshold as a sort and keep every tie (TIES and Breadcrumbs' two thresholds).
  from unlearn_jax.merging import arithmetic
  rng = np.random.default_rng(0)
  base = {"m": np.zeros((280, 250), np.float32)}
  ps = [{"m": (rng.integers(-50, 51, (280, 250)) / 8).astype(np.float32)} for _ in range(3)]
  d = np.stack([p["m"] for p in ps]).reshape(3, -1)
  mag = -np.sort(-np.abs(d), axis=1)  # descending
  keep = round(0.3 * d.shape[1])
  kept = np.where(np.abs(d) >= mag[:, keep - 1:keep], d, 0)
  total = kept.sum(0)
  agree = np.where(total >= 0, kept > 0, kept < 0)
  expected = (agree * kept).sum(0) / np.maximum(agree.sum(0), 1)
  ties = merging.ties(ps, base=base, density=0.3, mergekit=True)["m"]
  np.testing.assert_allclose(np.asarray(ties).ravel(), expected, rtol=1e-6)
  n, dropped = int(0.6 * d.shape[1]), int(0.05 * d.shape[1])
  band = (np.abs(d) >= mag[:, dropped + n - 1:dropped + n]) & (np.abs(d) < mag[:, dropped - 1:dropped])
  crumbs = merging.breadcrumbs(ps, base=base, density=0.6, gamma=0.05)["m"]
  np.testing.assert_allclose(np.asarray(crumbs).ravel(), (band * d).sum(0), rtol=1e-6)
  # the sort path (forced for this size) agrees exactly: both merges are traced again (only the merge program's
  # cache is dropped: `jax.clear_caches` would make every later test of this process compile its programs anew)
  monkeypatch.setattr(arithmetic, "_SORT_BELOW", 1 << 30)
  arithmetic._gta.clear_cache()
  try:
    with compilation.count() as compiled:
      np.testing.assert_array_equal(merging.ties(ps, base=base, density=0.3, mergekit=True)["m"], ties)
      np.testing.assert_array_equal(merging.breadcrumbs(ps, base=base, density=0.6, gamma=0.05)["m"], crumbs)
  finally:  # the programs traced under the patched threshold must not serve this worker's later tests
    arithmetic._gta.clear_cache()
  assert compiled.traced["_gta"] == 2, compiled.traced  # both merges took the sort path


def test_ties_full_density_with_agreeing_signs_is_mean_task_vector():
  base = _tree(0)
  signs = jax.tree.map(np.sign, _tree(1))
  ps = [_np_map(lambda b, s, m: b + s * np.abs(m), base, signs, _tree(2 + i)) for i in range(3)]
  expected = _np_map(lambda b, *xs: b + np.mean([x - b for x in xs], axis=0), base, *ps)
  _assert_close(merging.ties(ps, base=base, density=1.0), expected)


def test_ties_zero_sum_signs_follow_the_reference_codes():
  # Every entry of every tensor sums to exactly 0, and so does the tensor's sum of elected signs: the TIES code
  # leaves the sign 0 and its disjoint_merge then keeps the negative values; mergekit elects +.
  tau = _tree(1)
  base = jax.tree.map(np.zeros_like, tau)
  ps = [tau, jax.tree.map(np.negative, tau)]
  chex.assert_trees_all_close(merging.ties(ps, base=base, density=1.0), jax.tree.map(lambda x: -np.abs(x), tau))
  chex.assert_trees_all_close(merging.ties(ps, base=base, density=1.0, mergekit=True), jax.tree.map(np.abs, tau))
  # One zero-sum entry in a tensor whose other sums are mostly negative: the TIES code gives it the majority sign
  # (-), mergekit +.
  a = np.array([-1.0, -2.0, 3.0, 0.5], np.float32)
  b = np.array([-1.0, -1.0, -1.0, -0.5], np.float32)
  zero = np.zeros(4, np.float32)
  np.testing.assert_allclose(merging.ties([a, b], base=zero, density=1.0), [-1.0, -1.5, 3.0, -0.5])
  np.testing.assert_allclose(merging.ties([a, b], base=zero, density=1.0, mergekit=True), [-1.0, -1.5, 3.0, 0.5])


def test_dare_full_density_is_task_arithmetic_or_ties():
  base, ps = _models()
  key = jax.random.key(3)
  _assert_close(merging.dare(ps, base=base, density=1.0, rng=key, scale=0.4),
                merging.task_arithmetic(ps, base=base, scale=0.4))
  _assert_close(merging.dare(ps, base=base, density=1.0, rng=key, combine="ties"),
                merging.ties(ps, base=base, density=1.0))


def test_dare_drops_and_rescales_independently_per_model():
  density = 0.3
  base = {"w": np.zeros((100, 100), np.float32)}
  delta = np.random.default_rng(0).uniform(1, 2, (100, 100)).astype(np.float32)
  p = {"w": delta}
  out = np.asarray(merging.dare([p, p], base=base, density=density, rng=jax.random.key(0))["w"])
  ratio = out * density / delta  # number of models keeping each entry
  np.testing.assert_allclose(ratio, np.round(ratio), atol=1e-5)
  counts = np.bincount(np.round(ratio).astype(int).ravel(), minlength=3) / ratio.size
  np.testing.assert_allclose(counts, [(1 - density) ** 2, 2 * density * (1 - density), density ** 2], atol=0.02)
  no_rescale = merging.dare([p], base=base, density=density, rng=jax.random.key(0), rescale=False)["w"]
  assert set(np.unique(np.asarray(no_rescale) / delta).round(5)) <= {0.0, 1.0}
  again = merging.dare([p, p], base=base, density=density, rng=jax.random.key(0))["w"]
  other = merging.dare([p, p], base=base, density=density, rng=jax.random.key(1))["w"]
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, other)


def test_dare_masks_are_independent_across_models_and_leaves():
  # Three models whose deltas are 1, 2 and 4 times one positive tensor: without rescaling, the merged delta over
  # that tensor is the binary code of which models kept the entry.
  density, shape = 0.4, (100, 100)
  delta = np.random.default_rng(1).uniform(1, 2, shape).astype(np.float32)
  base = {"v": np.zeros(shape, np.float32), "w": np.zeros(shape, np.float32)}
  ps = [{"v": c * delta, "w": c * delta} for c in (1.0, 2.0, 4.0)]
  out = merging.dare(ps, base=base, density=density, rng=jax.random.key(2), rescale=False)
  code = {name: np.asarray(out[name]) / delta for name in ("v", "w")}
  for c in code.values():
    np.testing.assert_allclose(c, np.round(c), atol=1e-4)
  kept = {name: [(np.round(c).astype(int) >> i) & 1 for i in range(3)] for name, c in code.items()}
  masks = kept["v"] + kept["w"]  # six masks: three models on each of two leaves
  for i, a in enumerate(masks):
    np.testing.assert_allclose(a.mean(), density, atol=0.02)
    for b in masks[i + 1:]:
      np.testing.assert_allclose((a & b).mean(), density**2, atol=0.02)
  np.testing.assert_allclose((kept["v"][0] & kept["v"][1] & kept["v"][2]).mean(), density**3, atol=0.01)


def test_random_masks_are_the_jax_prng():
  from jax.extend.random import threefry2x32_p
  from unlearn_jax.merging import arithmetic
  words = [jnp.asarray(np.random.default_rng(i).integers(0, 2**32, (257,), dtype=np.uint32)) for i in range(4)]
  k1, k2 = words[0][0], words[1][0]
  for mine, ref in zip(arithmetic._threefry2x32(k1, k2, words[2], words[3]), threefry2x32_p.bind(k1, k2, *words[2:])):
    np.testing.assert_array_equal(np.asarray(mine), np.asarray(ref))
  # k = 3 models from two keys: the high and low words of each key's 64-bit draw, as jax.random.uniform makes them.
  keys, shape = jax.random.split(jax.random.key(4), 2), (3, 5, 7)
  us = arithmetic._uniforms(jax.random.key_data(keys), jnp.zeros(shape), 3)
  with jax.enable_x64(True):
    bits = [np.asarray(jax.random.bits(key, shape, jnp.uint64)) for key in keys]
  unit = lambda b: (b.astype(np.uint32) >> 9).astype(np.float32) * np.float32(2.0**-23)
  for u, ref in zip(us, [unit(bits[0] >> 32), unit(bits[0]), unit(bits[1] >> 32)]):
    np.testing.assert_array_equal(np.asarray(u), ref)
  assert np.asarray(us[0]).min() >= 0 and np.asarray(us[0]).max() < 1


def test_random_merges_accept_every_prng_implementation():
  base, p = {"w": np.zeros((100, 100), np.float32)}, {"w": np.ones((100, 100), np.float32)}
  for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
    key = jax.random.key(0, impl=impl)
    kept = np.asarray(merging.dare([p], base=base, density=0.3, rng=key, rescale=False)["w"])
    np.testing.assert_allclose(kept.mean(), 0.3, atol=0.02, err_msg=impl)
    np.testing.assert_array_equal(kept, merging.dare([p], base=base, density=0.3, rng=key, rescale=False)["w"])
    chex.assert_tree_all_finite(merging.della([p], base=base, density=0.5, epsilon=0.2, rng=key))


def test_random_merges_compile_without_a_loop_per_draw():
  # jax.random's Threefry is a while loop on CPU; one per leaf and model made large pytrees compile for minutes.
  shapes = {f"layer_{i}": {"kernel": (6, 5), "bias": (5,)} for i in range(6)}
  base, ps = _tree(0, shapes), [_tree(1 + i, shapes) for i in range(4)]
  key = jax.random.key(0)
  for name, merge in {"dare": lambda ps, b: merging.dare(ps, base=b, density=0.5, rng=key, combine="ties"),
                      "della": lambda ps, b: merging.della(ps, base=b, density=0.5, epsilon=0.1, rng=key)}.items():
    # the lowered program (before XLA's backend passes, which may add loops of their own, e.g. for scatters): one
    # jax.random Threefry call, the key split, and no jax.random.uniform (the old code had one per leaf and model)
    lowered = jax.jit(merge).lower(ps, base).as_text()
    calls = re.findall(r"call @(threefry2x32|_uniform)", lowered)
    assert calls.count("threefry2x32") <= 1 and "_uniform" not in calls, (name, calls)


def test_packed_keep_masks_are_the_fused_masks():
  # The masks stored by the loop over keys (one bit per model) are those computed inline, for k <= 2 (a loop over
  # the models), odd k (the last key's second word unused) and k > 8 (uint16), with DARE's scalar and DELLA's
  # per-entry probabilities and a model at density 1.
  from unlearn_jax.merging import arithmetic
  like = jnp.zeros((6, 7))
  rng = np.random.default_rng(0)
  for k, per_entry in ((2, False), (3, True), (9, False)):
    key_data = jax.random.bits(jax.random.key(k), ((k + 1) // 2, 2), jnp.uint32)
    densities = jnp.asarray([0.5] * (k - 1) + [1.0], jnp.float32)
    probs = ([rng.uniform(0.2, 0.8, like.shape).astype(np.float32) for _ in range(k)] if per_entry
             else [0.5] * (k - 1) + [1.0])
    ref, packed = jax.jit(lambda d, p, kd: (arithmetic._keep_masks([like] * k, d, p, kd),
                                            arithmetic._packed_keep_masks([like] * k, d, p, kd)))(
        densities, probs, key_data)
    bits = (np.asarray(packed)[None] >> np.arange(k).reshape(-1, 1, 1)) & 1
    np.testing.assert_array_equal(bits == 1, np.asarray(ref), err_msg=str(k))


def test_ties_code_majority_sign_reaches_zero_sums_and_compiles_one_hash_pass():
  # A zero-sum entry in a tensor whose other sums are mostly positive takes + (the TIES code's majority), with
  # and without random drops (density 1 - 1e-7 keeps everything here, but runs the masks pass).
  a = np.array([1.0, 2.0, -3.0, 0.5], np.float32)
  b = np.array([1.0, 1.0, 1.0, -0.5], np.float32)
  zero = np.zeros(4, np.float32)
  np.testing.assert_allclose(merging.ties([a, b], base=zero, density=1.0), [1.0, 1.5, -3.0, 0.5])
  np.testing.assert_allclose(merging.dare([a, b], base=zero, density=1 - 1e-7, rng=jax.random.key(0),
                                          combine="ties", rescale=False), [1.0, 1.5, -3.0, 0.5])
  # The hash runs once per tensor, as in a merge without reductions, although the majority sign and mergekit's
  # L1 norms are reductions the merge waits on (they read the stored masks); it ran 2-3 times before.
  base, ps = _models()
  key = jax.random.key(0)
  xors = lambda merge: jax.jit(merge).lower(ps, base).compile().as_text().count(" xor(")
  one_pass = xors(lambda ps, b: merging.dare(ps, base=b, density=0.5, rng=key, combine="ties", mergekit=True,
                                             rescale="inverse"))
  assert xors(lambda ps, b: merging.dare(ps, base=b, density=0.5, rng=key, combine="ties")) <= one_pass
  assert xors(lambda ps, b: merging.dare_ties(ps, base=b, density=0.5, rng=key)) <= one_pass


def test_della_keep_probability_follows_magnitude_rank():
  density, epsilon, n = 0.5, 0.3, 10
  rng = np.random.default_rng(0)
  mags = np.stack([rng.permutation(np.arange(1, n + 1)) for _ in range(3000)]).astype(np.float32)
  delta = {"w": (mags * rng.choice([-1, 1], mags.shape)).astype(np.float32), "v": np.arange(1, n + 1, dtype=np.float32)}
  base = jax.tree.map(np.zeros_like, delta)
  # rank (0-based) = magnitude - 1 along each row of w, and along the whole vector v.
  probs = {"w": density - epsilon + 2 * epsilon * (mags - 1) / (n - 1), "v": np.linspace(0.2, 0.8, n)}
  out = merging.della([delta], base=base, density=density, epsilon=epsilon, rng=jax.random.key(0), combine="linear")
  for name in ("w", "v"):  # kept entries are divided by their own keep probability
    kept = np.asarray(out[name]) != 0
    np.testing.assert_allclose(np.asarray(out[name])[kept] * probs[name][kept], delta[name][kept], rtol=1e-5)
  kept = np.asarray(out["w"]) != 0
  freq = np.array([kept[mags == m].mean() for m in range(1, n + 1)])
  np.testing.assert_allclose(freq, np.linspace(density - epsilon, density + epsilon, n), atol=0.03)


def test_della_rank_is_the_inverse_of_the_stable_argsort_along_any_axis():
  from unlearn_jax.merging import arithmetic
  x = np.random.default_rng(0).integers(0, 5, (3, 4, 6)).astype(np.float32)  # many ties: the stable order counts
  for ax in range(3):
    order = jnp.argsort(jnp.asarray(x), axis=ax)
    rank = arithmetic._inverse_permutation(order, ax)
    np.testing.assert_array_equal(np.asarray(rank), np.argsort(np.argsort(x, axis=ax, kind="stable"), axis=ax))


def test_della_without_spread_is_dare():
  base, ps = _models()
  key = jax.random.key(7)
  _assert_close(merging.della(ps, base=base, density=0.6, epsilon=0.0, rng=key, combine="ties"),
                merging.dare(ps, base=base, density=0.6, rng=key, combine="ties"))


def test_model_stock_matches_numpy():
  base, ps = _models(k=3)
  _assert_close(merging.model_stock(ps, base=base), _np_map(_np_model_stock, base, *ps))


def test_model_stock_and_dare_keep_no_task_vectors_in_memory():
  # Each pass recomputes p - base rather than storing the k task vectors; XLA's plan has no tensor-sized buffer.
  shape = (64, 256)
  base, ps = _tree(0, {"w": shape}), [_tree(1 + i, {"w": shape}) for i in range(8)]
  one_tensor = 4 * math.prod(shape)
  for name, merge in {"model_stock": lambda ps, b: merging.model_stock(ps, base=b),
                      "dare": lambda ps, b: merging.dare(ps, base=b, density=0.5, rng=jax.random.key(0))}.items():
    temp = jax.jit(merge).lower(ps, base).compile().memory_analysis().temp_size_in_bytes
    assert temp < one_tensor, (name, temp, one_tensor)


def test_model_stock_of_identical_models_is_that_model():
  base, [p] = _models(k=1)
  _assert_close(merging.model_stock([p, p, p], base=base), p)


def test_slerp_matches_numpy_and_ends():
  _, (a, b) = _models(k=2)
  _assert_close(merging.slerp(a, b, t=0.3), _np_map(lambda x, y: _np_slerp(x, y, 0.3), a, b))
  chex.assert_trees_all_equal(merging.slerp(a, b, t=0.0), a)
  chex.assert_trees_all_close(merging.slerp(a, b, t=1.0), b, rtol=1e-6)
  colinear = jax.tree.map(lambda x: 2 * x, a)
  _assert_close(merging.slerp(a, colinear, t=0.25), jax.tree.map(lambda x: 1.25 * x, a))


def test_slerp_preserves_unit_norm():
  _, (a, b) = _models(k=2)
  unit = lambda t: jax.tree.map(lambda x: x / np.linalg.norm(x), t)
  for t in (0.1, 0.5, 0.9):
    norms = jax.tree.map(lambda x: np.linalg.norm(np.asarray(x)), merging.slerp(unit(a), unit(b), t=t))
    _assert_close(norms, jax.tree.map(lambda _: 1.0, norms))


def test_fisher_merge_matches_numpy():
  _, ps = _models()
  fs = [jax.tree.map(np.abs, _tree(10 + i)) for i in range(3)]
  w = np.array([1.0, 2.0, 0.5])
  expected = _np_map(lambda *x: np.tensordot(w, np.multiply(x[3:], x[:3]), 1) / np.tensordot(w, x[3:], 1), *ps, *fs)
  _assert_close(merging.fisher(ps, fs, weights=w), expected, rtol=1e-4)
  floored = [jax.tree.map(lambda f: np.maximum(f, 0.3), f) for f in fs]
  expected = _np_map(lambda *x: np.tensordot(w, np.multiply(x[3:], x[:3]), 1) / np.tensordot(w, x[3:], 1), *ps,
                     *floored)
  _assert_close(merging.fisher(ps, fs, weights=w, eps=0.3), expected, rtol=1e-4)
  _assert_close(merging.fisher(ps, [fs[0]] * 3), merging.linear(ps))
  _assert_close(merging.fisher(ps, [jax.tree.map(np.zeros_like, fs[0])] * 3), merging.linear(ps))


def test_regmean_matches_numpy():
  _, ps = _models()
  rng = np.random.default_rng(1)
  grams = []
  for _ in ps:
    x = rng.standard_normal((20, 4))
    grams.append({"a": {"kernel": (x.T @ x).astype(np.float32)}})
  w, alpha = np.array([1.0, 0.5, 2.0]), 0.7

  def reduce(g):
    return np.where(np.eye(4, dtype=bool), g, alpha * g)

  lhs = sum(wi * reduce(g["a"]["kernel"]) for wi, g in zip(w, grams))
  rhs = sum(wi * reduce(g["a"]["kernel"]) @ p["a"]["kernel"] for wi, g, p in zip(w, grams, ps))
  out = merging.regmean(ps, grams, alpha=alpha, weights=w)
  np.testing.assert_allclose(out["a"]["kernel"], np.linalg.solve(lhs, rhs), rtol=1e-4, atol=1e-5)
  for path in (("a", "bias"), ("b",)):
    leaf = lambda t: functools.reduce(lambda node, key: node[key], path, t)
    np.testing.assert_allclose(leaf(out), np.tensordot(w, [leaf(p) for p in ps], 1) / w.sum(), rtol=1e-5)


def test_regmean_with_identity_grams_is_mean():
  _, ps = _models()
  grams = [{"a": {"kernel": np.eye(4, dtype=np.float32)}}] * 3
  _assert_close(merging.regmean(ps, grams, alpha=0.3), merging.linear(ps))


class _Linear(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(2, use_bias=False)(x)


def test_regmean_recovers_least_squares_on_union_of_data():
  rng = np.random.default_rng(0)
  w_true = rng.standard_normal((4, 2))
  xs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (30, 50)]
  ys = [x @ w_true + 0.3 * rng.standard_normal((len(x), 2)) for x in xs]
  model, _, state = init(_Linear(), jax.random.key(0), jnp.ones((1, 4)))
  params = [{"Dense_0": {"kernel": np.linalg.lstsq(x, y, rcond=None)[0].astype(np.float32)}} for x, y in zip(xs, ys)]
  union = np.linalg.lstsq(np.concatenate(xs), np.concatenate(ys), rcond=None)[0]
  splits = [Split(jnp.asarray(x), jnp.zeros(len(x), jnp.int32)) for x in xs]
  summed = [merging.collect_grams(model, p, state, s, batch_size=16) for p, s in zip(params, splits)]
  np.testing.assert_allclose(merging.regmean(params, summed, alpha=1.0)["Dense_0"]["kernel"], union, rtol=1e-4,
                             atol=1e-5)
  averaged = [merging.collect_grams(model, p, state, s, batch_size=16, average=True) for p, s in zip(params, splits)]
  np.testing.assert_allclose(merging.regmean(params, averaged, alpha=1.0, weights=[30, 50])["Dense_0"]["kernel"],
                             union, rtol=1e-4, atol=1e-5)


def test_negmerge_keeps_only_sign_consistent_entries():
  base, ps = _models(k=3)
  deltas = np.stack([p["b"] - base["b"] for p in ps])
  consistent = np.abs(np.sign(deltas).sum(0)) == 3
  assert 0 < consistent.sum() < consistent.size
  expected = _np_map(lambda b, *xs: b - 0.5 * np.where(np.abs(np.sign(np.subtract(xs, b)).sum(0)) == 3,
                                                       np.mean(xs, 0) - b, 0.0), base, *ps)
  out = merging.negmerge(ps, base=base, scale=0.5)
  _assert_close(out, expected)
  np.testing.assert_array_equal(np.asarray(out["b"])[~consistent], base["b"][~consistent])


# ---------------------------------------------------------------------------------------------------------------
# Shared properties.


def test_merging_one_model_returns_it():
  base, [p] = _models(k=1)
  key = jax.random.key(0)
  merges = {
      "linear": lambda: merging.linear([p]),
      "task_arithmetic": lambda: merging.task_arithmetic([p], base=base, scale=1.0),
      "ties": lambda: merging.ties([p], base=base, density=1.0),
      "dare": lambda: merging.dare([p], base=base, density=1.0, rng=key, combine="ties"),
      "della": lambda: merging.della([p], base=base, density=1.0, epsilon=0.0, rng=key),
      "model_stock": lambda: merging.model_stock([p], base=base),
      "fisher": lambda: merging.fisher([p], [jax.tree.map(np.abs, _tree(5))]),
      "regmean": lambda: merging.regmean([p], [{"a": {"kernel": np.diag([1.0, 2.0, 3.0, 4.0]).astype(np.float32)}}]),
      "negmerge": lambda: merging.negmerge([p], base=base, scale=-1.0),
      "slerp": lambda: merging.slerp(p, p, t=0.4),
  }
  for name, merge in merges.items():
    chex.assert_trees_all_close(merge(), p, rtol=1e-5, atol=1e-6, custom_message=name)


def test_merges_do_not_recompile_when_traced_values_change():
  base, ps = _models()
  fs = [jax.tree.map(np.abs, _tree(10 + i)) for i in range(3)]
  grams = [{"a": {"kernel": np.eye(4, dtype=np.float32) * (i + 1)}} for i in range(3)]
  cases = {
      "linear": lambda ps, b, s: merging.linear(ps, weights=[1.0, 2.0, s]),
      "task_arithmetic": lambda ps, b, s: merging.task_arithmetic(ps, base=b, scale=s),
      "ties": lambda ps, b, s: merging.ties(ps, base=b, density=0.5, scale=s),
      "dare": lambda ps, b, s: merging.dare(ps, base=b, density=0.5, rng=jax.random.key(1), combine="ties", scale=s),
      "della": lambda ps, b, s: merging.della(ps, base=b, density=0.5, epsilon=0.2, rng=jax.random.key(1), scale=s),
      "model_stock": lambda ps, b, s: merging.model_stock(ps, base=b, eps=s),
      "fisher": lambda ps, b, s: merging.fisher(ps, fs, weights=[1.0, 2.0, s]),
      "regmean": lambda ps, b, s: merging.regmean(ps, grams, alpha=s),
      "negmerge": lambda ps, b, s: merging.negmerge(ps, base=b, scale=s),
      "slerp": lambda ps, b, s: merging.slerp(ps[0], ps[1], t=s),
  }
  shifted = [jax.tree.map(lambda x: x + 0.1, p) for p in ps]
  for name, call in cases.items():
    call(ps, base, 0.5)
    compiled = getattr(merging, name)._cache_size()
    out = call(shifted, base, 0.25)
    assert getattr(merging, name)._cache_size() == compiled, name
    chex.assert_tree_all_finite(out)


def test_merges_trace_inside_a_callers_jit():
  base, ps = _models()
  outer = jax.jit(merging.ties, static_argnames=("density",))
  chex.assert_trees_all_close(outer(ps, base=base, density=0.5, scale=0.3),
                              _np_ties(base, ps, 0.5, 0.3), rtol=1e-5, atol=1e-6)

  @jax.jit
  def forget_then_soup(ps, base):
    return merging.linear([merging.task_arithmetic(ps[:1], base=base, scale=-1.0), ps[1]])

  expected = _np_map(lambda b, p0, p1: ((2 * b - p0) + p1) / 2, base, ps[0], ps[1])
  _assert_close(forget_then_soup(ps, base), expected)


def test_merges_accept_abstract_leaves():
  base, ps = _models()
  abstract = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
  out = jax.eval_shape(lambda ps, b: merging.ties(ps, base=b, density=0.3), abstract(ps), abstract(base))
  chex.assert_trees_all_equal_shapes_and_dtypes(out, abstract(base))


@pytest.mark.parametrize("change,path", [
    (lambda t: {"a": t["a"], "c": t["b"]}, "['b']"),
    (lambda t: {"a": {"kernel": np.zeros((4, 4), np.float32), "bias": t["a"]["bias"]}, "b": t["b"]}, "['a']['kernel']"),
    (lambda t: {"a": t["a"], "b": t["b"].astype(np.float16)}, "['b']"),
], ids=["structure", "shape", "dtype"])
def test_mismatched_trees_raise_naming_the_path(change, path):
  base, ps = _models()
  bad = change(ps[1])
  for call in (lambda: merging.linear([ps[0], bad]),
               lambda: merging.ties([ps[0], bad], base=base, density=0.5),
               lambda: merging.ties(ps, base=change(base), density=0.5),
               lambda: merging.fisher(ps[:2], [ps[0], bad]),
               lambda: merging.slerp(ps[0], bad, t=0.5)):
    with pytest.raises(ValueError, match=re.escape(path)):
      call()


_BAD_CALLS = {
    "empty_list": lambda base, ps, key: merging.linear([]),
    "empty_list_with_base": lambda base, ps, key: merging.task_arithmetic([], base=base, scale=1.0),
    "density_zero": lambda base, ps, key: merging.ties(ps, base=base, density=0.0),
    "density_above_one": lambda base, ps, key: merging.ties(ps, base=base, density=1.5),
    "dare_density_zero": lambda base, ps, key: merging.dare(ps, base=base, density=0.0, rng=key),
    "unknown_combine": lambda base, ps, key: merging.dare(ps, base=base, density=0.5, rng=key, combine="mean"),
    "della_prob_zero": lambda base, ps, key: merging.della(ps, base=base, density=0.5, epsilon=0.5, rng=key),
    "della_prob_above_one": lambda base, ps, key: merging.della(ps, base=base, density=0.8, epsilon=0.3, rng=key),
    "della_negative_epsilon": lambda base, ps, key: merging.della(ps, base=base, density=0.5, epsilon=-0.1, rng=key),
    "weights_length": lambda base, ps, key: merging.linear(ps, weights=[1.0, 2.0]),
    "grams_length": lambda base, ps, key: merging.regmean(ps, [{"a": {"kernel": np.eye(4)}}] * 2),
    "gram_on_vector": lambda base, ps, key: merging.regmean(ps, [{"a": {"bias": np.eye(3)}}] * 3),
    "gram_shape": lambda base, ps, key: merging.regmean(ps, [{"a": {"kernel": np.eye(3)}}] * 3),
    "gram_unknown_path": lambda base, ps, key: merging.regmean(ps, [{"z": {"kernel": np.eye(4)}}] * 3),
}


@pytest.mark.parametrize("name", sorted(_BAD_CALLS))
def test_invalid_options_raise(name):
  base, ps = _models()
  with pytest.raises(ValueError):
    _BAD_CALLS[name](base, ps, jax.random.key(0))


# ---------------------------------------------------------------------------------------------------------------
# Statistics.


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(8)(x)
    return nn.Dense(3)(nn.relu(h))


@pytest.fixture(scope="module")
def mlp():
  model, params, state = init(_MLP(), jax.random.key(0), jnp.ones((1, 4)))
  rng = np.random.default_rng(0)
  split = Split(jnp.asarray(rng.standard_normal((10, 4)), jnp.float32), jnp.asarray(rng.integers(0, 3, 10)))
  return model, params, state, split


def _per_example_grads(model, params, state, split, label_fn):
  """Hand loop: for each example and each label of label_fn(i), (weight, grad of log p(label | x_i))."""

  @jax.jit
  def grad(x, y):
    return jax.grad(lambda p: jax.nn.log_softmax(model.apply(p, state, x[None], train=False)[0][0])[y])(params)

  return [(w, grad(split.x[i], y)) for i in range(len(split)) for w, y in label_fn(i)]


def test_fisher_diag_empirical_matches_loop(mlp):
  model, params, state, split = mlp
  terms = _per_example_grads(model, params, state, split, lambda i: [(1.0, split.y[i])])
  expected = jax.tree.map(lambda *gs: sum(np.square(g) for g in gs) / len(split), *[g for _, g in terms])
  _assert_close(merging.fisher_diag(model, params, state, split, batch_size=4), expected, rtol=1e-4, atol=1e-7)


def test_fisher_diag_sampled_estimates_the_true_fisher(mlp):
  model, params, state, split = mlp
  probs = jax.nn.softmax(model.apply(params, state, split.x, train=False)[0])
  terms = _per_example_grads(model, params, state, split, lambda i: [(probs[i, c], c) for c in range(3)])
  exact = jax.tree.map(lambda *gs: sum(w * np.square(g) for (w, _), g in zip(terms, gs)) / len(split),
                       *[g for _, g in terms])
  draws = jax.vmap(lambda key: merging.fisher_diag(model, params, state, split, batch_size=4, mode="sampled",
                                                   rng=key))(jax.random.split(jax.random.key(0), 200))
  estimate = jax.tree.map(lambda x: np.mean(x, 0), draws)
  total = lambda t: sum(float(np.sum(x)) for x in jax.tree.leaves(t))
  np.testing.assert_allclose(total(estimate), total(exact), rtol=0.05)
  _assert_close(estimate, exact, rtol=0.2, atol=0.02 * max(float(np.max(x)) for x in jax.tree.leaves(exact)))
  with pytest.raises(ValueError):
    merging.fisher_diag(model, params, state, split, mode="sampled")


def test_collect_grams_matches_hand_computation(mlp):
  model, params, state, split = mlp
  x = np.asarray(split.x, np.float64)
  dense0 = jax.tree.map(np.asarray, params["Dense_0"])
  h = np.maximum(x @ dense0["kernel"] + dense0["bias"], 0)
  expected = {"Dense_0": {"kernel": x.T @ x}, "Dense_1": {"kernel": h.T @ h}}
  _assert_close(merging.collect_grams(model, params, state, split, batch_size=4), expected, rtol=1e-5)
  _assert_close(merging.collect_grams(model, params, state, split, batch_size=4, average=True),
                jax.tree.map(lambda g: g / len(split), expected), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# mergekit's options and methods, each against an independent NumPy formula.


def _np_gta(base, ps, *, weights, keep_fn, consensus, normalize, zero_positive=True, scale=1.0):
  """mergekit's generalized task arithmetic on one tensor: keep_fn(i, delta) sparsifies model i's delta."""
  d = np.stack([w * keep_fn(i, p - base) for i, (w, p) in enumerate(zip(weights, ps))])
  w = np.asarray(weights, np.float64).reshape((-1,) + (1,) * (d.ndim - 1))
  if consensus:
    total = d.sum(0)
    elected = np.where(total >= 0, 1.0, -1.0) if zero_positive else np.sign(total)
    mask = np.sign(d) == elected
    mixed, divisor = (d * mask).sum(0), (w * mask).sum(0)
    divisor[divisor == 0] = 1
  else:
    mixed, divisor = d.sum(0), np.full(d.shape[1:], w.sum())
  return base + scale * (mixed / divisor if normalize else mixed)


def _np_keep_top(x, n):
  flat = np.abs(x).ravel()
  out = np.zeros_like(x).ravel()
  top = np.argsort(-flat, kind="stable")[:n]
  out[top] = x.ravel()[top]
  return out.reshape(x.shape)


def test_ties_per_model_weight_density_normalize_match_mergekit_formula():
  base, ps = _models(k=3)
  weights, densities = [1.0, 0.5, 2.0], [0.5, 0.3, 0.9]
  for normalize in (True, False):
    out = merging.ties(ps, base=base, density=densities, weights=weights, normalize=normalize, mergekit=True,
                       scale=0.7)
    expected = _np_map(lambda b, *xs: _np_gta(
        b, xs, weights=weights, consensus=True, normalize=normalize, scale=0.7,
        keep_fn=lambda i, x: _np_keep_top(x, max(1, int(densities[i] * x.size)))), base, *ps)
    _assert_close(out, expected)


def test_task_arithmetic_weights_and_normalize():
  base, ps = _models(k=3)
  w = [0.2, 0.5, 1.3]
  expected = _np_map(lambda b, *xs: _np_gta(b, xs, weights=w, consensus=False, normalize=True, scale=0.5,
                                            keep_fn=lambda i, x: x), base, *ps)
  _assert_close(merging.task_arithmetic(ps, base=base, scale=0.5, weights=w, normalize=True), expected)


def _np_breadcrumbs(x, density, gamma):
  n = x.size
  target, top = int(density * n), int(gamma * n)
  bottom = max(0, n - target - top)
  order = np.argsort(np.abs(x).ravel(), kind="stable")
  out = np.zeros(n)
  out[order[bottom:bottom + target]] = x.ravel()[order[bottom:bottom + target]]
  return out.reshape(x.shape)


@pytest.mark.parametrize("combine", ["linear", "ties"])
def test_breadcrumbs_matches_numpy(combine):
  base, ps = _models(k=3)
  weights, densities, gammas = [1.0, 0.5, 0.8], [0.6, 0.4, 0.9], [0.1, 0.2, 0.05]
  out = merging.breadcrumbs(ps, base=base, density=densities, gamma=gammas, weights=weights, combine=combine,
                            normalize=True)
  expected = _np_map(lambda b, *xs: _np_gta(b, xs, weights=weights, consensus=combine == "ties", normalize=True,
                                            keep_fn=lambda i, x: _np_breadcrumbs(x, densities[i], gammas[i])),
                     base, *ps)
  _assert_close(out, expected)
  _assert_close(merging.breadcrumbs_ties(ps, base=base, density=0.5, gamma=0.1),
                merging.breadcrumbs(ps, base=base, density=0.5, gamma=0.1, combine="ties"))


def test_l1_rescale_keeps_each_task_vector_norm():
  base = {"w": np.zeros((50, 40), np.float32)}
  p = {"w": np.random.default_rng(0).standard_normal((50, 40)).astype(np.float32)}
  key = jax.random.key(0)
  for out in (merging.dare([p], base=base, density=0.3, rng=key, rescale="l1"),
              merging.dare_linear([p], base=base, density=0.3, rng=key),
              merging.della([p], base=base, density=0.4, epsilon=0.2, rng=key, rescale="l1", combine="linear"),
              merging.ties([p], base=base, density=0.2, rescale=True)):
    w = np.asarray(out["w"])
    assert 0.1 < np.mean(w != 0) < 0.6
    np.testing.assert_allclose(np.abs(w).sum(), np.abs(p["w"]).sum(), rtol=1e-4)
    kept = w != 0
    ratio = w[kept] / p["w"][kept]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)  # one factor per tensor


def test_dare_ties_is_mergekit_sum_of_agreeing_weighted_deltas():
  base, ps = _models(k=3)
  w = [0.5, 1.0, 1.5]
  out = merging.dare_ties(ps, base=base, density=1.0, rng=jax.random.key(0), weights=w)
  expected = _np_map(lambda b, *xs: _np_gta(b, xs, weights=w, consensus=True, normalize=False,
                                            keep_fn=lambda i, x: x), base, *ps)
  _assert_close(out, expected)


def test_model_stock_opposed_pair_keeps_base_and_filter_wise():
  base, [p] = _models(k=1)
  opposed = [p, _np_map(lambda b, x: 2 * b - x, base, p)]
  chex.assert_trees_all_close(merging.model_stock(opposed, base=base), base, atol=1e-6)
  b, ps = np.zeros((3, 5), np.float32), [np.random.default_rng(i).standard_normal((3, 5)).astype(np.float32)
                                          for i in range(3)]
  out = np.asarray(merging.model_stock(ps, base=b, filter_wise=True))
  for row in range(3):
    np.testing.assert_allclose(out[row], _np_model_stock(b[row], *[x[row] for x in ps]), rtol=1e-5, atol=1e-6)


def test_slerp_takes_one_t_per_tensor():
  a, b = _tree(1), _tree(2)
  ts = {"a": {"kernel": 0.2, "bias": 0.9}, "b": 0.5}
  expected = jax.tree.map(lambda x, y, t: _np_slerp(np.float64(x), np.float64(y), t), a, b, ts)
  _assert_close(merging.slerp(a, b, t=ts), expected)


def _np_sce(b, *ps, density):
  tv = np.stack([p - b for p in ps])
  if density < 1:
    var = tv.var(0)
    k = int(np.count_nonzero(var) * density)
    mask = np.zeros(var.size)
    mask[np.argsort(-var.ravel(), kind="stable")[:k]] = 1
    tv = tv * mask.reshape(var.shape)
  elected = np.where(tv.sum(0) >= 0, 1.0, -1.0)
  agree = np.sign(tv) == elected
  w = (tv ** 2).reshape(len(ps), -1).mean(1)
  w = w / w.sum()
  ew = w.reshape((-1,) + (1,) * (tv.ndim - 1)) * agree
  return b + (tv * ew).sum(0) / np.maximum(ew.sum(0), 1e-6)


@pytest.mark.parametrize("density", [1.0, 0.5])
def test_sce_matches_numpy(density):
  base, ps = _models(k=3)
  _assert_close(merging.sce(ps, base=base, density=density),
                _np_map(functools.partial(_np_sce, density=density), base, *ps))


def _np_karcher(*xs, iters=10, tol=1e-5):
  norms = [np.linalg.norm(x) for x in xs]
  units = [x / n for x, n in zip(xs, norms)]
  mean = sum(units) / len(xs)
  mean /= np.linalg.norm(mean)
  for _ in range(iters):
    tangent = np.zeros_like(mean)
    for u in units:
      c = np.clip(np.sum(mean * u), -1, 1)
      th = np.arccos(c)
      if th >= tol:
        tangent += (th / np.sin(th)) * (u - c * mean) / len(xs)
    tn = np.linalg.norm(tangent)
    if tn < tol:
      break
    mean = np.cos(tn) * mean + np.sin(tn) * tangent / tn
    mean /= np.linalg.norm(mean)
  return np.mean(norms) * mean


def test_karcher_matches_numpy_and_is_a_point_of_equal_angles_for_two():
  _, ps = _models(k=3)
  _assert_close(merging.karcher(ps, max_iter=10), _np_map(_np_karcher, *ps), rtol=1e-4, atol=1e-5)
  x, y = np.array([1.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32)
  np.testing.assert_allclose(merging.karcher([x, y]), 2.0 * np.array([1, 1]) / np.sqrt(2), rtol=1e-5)


def _np_nuslerp_rows(t, v0, v1):
  u0 = v0 / np.linalg.norm(v0, axis=-1, keepdims=True)
  u1 = v1 / np.linalg.norm(v1, axis=-1, keepdims=True)
  th = np.arccos(np.clip(np.sum(u0 * u1, -1, keepdims=True), -1, 1))
  return (np.sin((1 - t) * th) * v0 + np.sin(t * th) * v1) / np.sin(th)


def test_nuslerp_matches_numpy():
  base, ps = _models(k=2)
  t = 3.0 / (1.0 + 3.0)
  out = merging.nuslerp(ps, base=base, weights=[1.0, 3.0])
  _assert_close(out, _np_map(lambda b, x, y: b + _np_nuslerp_rows(t, (x - b).ravel(), (y - b).ravel()).reshape(b.shape),
                             base, *ps))
  a, b = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
  np.testing.assert_allclose(merging.nuslerp([a, b], flatten=False), _np_nuslerp_rows(0.5, a, b), rtol=1e-5)
  np.testing.assert_allclose(merging.nuslerp([a, b], flatten=False, row_wise=True),
                             _np_nuslerp_rows(0.5, a.T, b.T).T, rtol=1e-5)


def _np_multislerp(b, *ps, w):
  xs = [p - b for p in ps]
  w = np.asarray(w) / np.sum(w)
  norms = [np.linalg.norm(x) for x in xs]
  units = [x / n for x, n in zip(xs, norms)]
  m = sum(wi * u for wi, u in zip(w, units))
  m /= np.linalg.norm(m)
  v = sum(wi * (u - np.sum(u * m) * m) for wi, u in zip(w, units))
  vn = np.linalg.norm(v)
  return b + (m * np.cos(vn) + v * np.sin(vn) / vn) * np.dot(w, norms)


def test_multislerp_matches_numpy_and_two_unit_vectors_give_slerp():
  base, ps = _models(k=3)
  w = [1.0, 2.0, 0.5]
  _assert_close(merging.multislerp(ps, base=base, weights=w), _np_map(functools.partial(_np_multislerp, w=w), base,
                                                                      *ps), rtol=1e-4, atol=1e-5)
  x, y = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
  np.testing.assert_allclose(merging.multislerp([x, y]), [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-5)


def test_nearswap_and_passthrough():
  a = np.array([0.0, 0.0, 0.0], np.float32)
  b = np.array([0.05, 0.2, 1.0], np.float32)
  w = np.clip(0.1 / np.abs(a - b), 0, 1)
  np.testing.assert_allclose(merging.nearswap(b, base=a, t=0.1), w * b + (1 - w) * a, rtol=1e-6)
  np.testing.assert_allclose(merging.passthrough(b, scale=2.0), 2 * b)


@pytest.mark.parametrize("call", [
    lambda base, ps: merging.ties(ps, base=base, density=0.5),
    lambda base, ps: merging.linear(ps),
    lambda base, ps: merging.model_stock(ps, base=base),
    lambda base, ps: merging.sce(ps, base=base),
], ids=["ties", "linear", "model_stock", "sce"])
def test_merges_refuse_non_finite_inputs_naming_the_path(call):
  base, ps = _models()
  bad = jax.tree.map(np.copy, ps[1])
  bad["a"]["kernel"][2, 1] = np.nan
  with pytest.raises(ValueError, match=re.escape("params_list[1]['a']['kernel']")):
    call(base, [ps[0], bad, ps[2]])


def test_merges_refuse_non_finite_options_and_ties_propagates_nan_unchecked():
  base, ps = _models()
  with pytest.raises(ValueError, match=re.escape("base['b']")):
    merging.ties(ps, base={"a": base["a"], "b": jnp.asarray(base["b"]).at[0].set(jnp.inf)}, density=0.5)
  with pytest.raises(ValueError, match="scale"):
    merging.task_arithmetic(ps, base=base, scale=float("nan"))
  with pytest.raises(ValueError, match=re.escape("weights")):
    merging.ties(ps, base=base, density=0.5, weights=[1.0, np.inf, 1.0])
  with pytest.raises(ValueError, match="density"):
    merging.ties(ps, base=base, density=float("nan"))
  bad = jax.tree.map(np.copy, ps[1])
  bad["b"][3] = np.nan
  out = merging.ties([ps[0], bad, ps[2]], base=base, density=1.0, check_finite=False)
  assert np.isnan(np.asarray(out["b"])[3])
