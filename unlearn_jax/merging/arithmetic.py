"""Weight-space merges: soups, task arithmetic, TIES, DARE, DELLA, Model Stock, SLERP, Fisher, RegMean, NegMerge,
and mergekit's Breadcrumbs, SCE, Karcher, NuSLERP, Multi-SLERP, NearSwap and passthrough.

Every merge is a pure function over parameter pytrees::

    merged = merge(params_list, *, base=None, **options)

``params_list`` is a sequence of pytrees of the same structure, shapes and dtypes (checked; a mismatch raises a
``ValueError`` naming the first differing key path). Methods built on task vectors take the common ``base`` (the
pre-trained or Original parameters) and work on the deltas ``tau_i = params_list[i] - base``, tensor by tensor.
The task-vector merges (task arithmetic, TIES, DARE, DELLA, Breadcrumbs and their mergekit-named variants) are
one engine, mergekit's "generalized task arithmetic": sparsify each delta (per-model ``density``, ``gamma``,
``epsilon``), optionally rescale it (``1/p`` or L1-norm matching), multiply by its per-model ``weight``, then sum
or TIES-elect, optionally ``normalize`` by the summed weights, and add ``scale`` times the result to the base.
Each method's default is its reference code; ``mergekit=True`` gives mergekit's semantics where they differ.

Every merge refuses NaN or inf in its inputs and options with a ``ValueError`` naming the argument and pytree path
(``check_finite=False`` skips that pass over the inputs where the caller vouches for them).

The merges are jitted, with the options that change shapes or control flow static (``normalize``, ``density``,
``gamma``, ``epsilon``, ``rescale``, ``combine``, ``axis``, ``filter_wise``); ``scale``, ``weights``, ``t``,
``alpha``, ``eps`` and ``rng`` are traced, so sweeping them does not recompile. They also trace inside a caller's
jit or ``jax.eval_shape``. The merges are elementwise maps and full-tensor reductions, so parameters sharded over an
Explicit mesh keep their sharding and are not gathered; the exceptions are DELLA's per-row magnitude ranking (only
a sharded ranking axis is gathered) and RegMean's linear solve (each Gram matrix and kernel is gathered for its
solve).

Example:
    >>> merged = ties([p1, p2, p3], base=p0, density=0.2)
    >>> forgotten = task_arithmetic([p_forget], base=p_original, scale=-1.0)
    >>> as_mergekit = ties([p1, p2], base=p0, density=0.5, weights=[0.7, 0.3], mergekit=True)
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import sharding
from unlearn_jax import threefry

Pytree = Any

_COMBINES = ("linear", "ties")


# ----------------------------------------------------------------------------------------------------------------
# Validation.


def _leaf_spec(x) -> tuple[tuple[int, ...], Any]:
  return tuple(jnp.shape(x)), jnp.result_type(x)


def _check_trees(trees: Sequence[Pytree], names: Sequence[str], fn: str) -> None:
  """Raises ``ValueError`` naming the first key path where a tree differs from ``trees[0]``."""
  ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(trees[0])
  ref_paths = [jax.tree_util.keystr(p) for p, _ in ref_leaves]
  for tree, name in zip(trees[1:], names[1:]):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    if paths != ref_paths:
      i = next((i for i, (a, b) in enumerate(zip(paths, ref_paths)) if a != b), min(len(paths), len(ref_paths)))
      mine = paths[i] if i < len(paths) else "nothing"
      theirs = ref_paths[i] if i < len(ref_paths) else "nothing"
      raise ValueError(f"{fn}: {name} has {mine} where {names[0]} has {theirs} (leaf {i}): the pytrees differ "
                       "in structure")
    if treedef != ref_def:
      raise ValueError(f"{fn}: {name} and {names[0]} have the same key paths but different node types: "
                       f"{treedef} vs {ref_def}")
    for path, (_, a), (_, b) in zip(paths, leaves, ref_leaves):
      if _leaf_spec(a) != _leaf_spec(b):
        (sa, da), (sb, db) = _leaf_spec(a), _leaf_spec(b)
        raise ValueError(f"{fn}: {name}{path} is {da}{list(sa)} but {names[0]}{path} is {db}{list(sb)}")


def _check_list(params_list: Sequence[Pytree], fn: str, *, base: Pytree | None = None, **others) -> int:
  """Validates ``params_list`` (non-empty, matching trees) against ``base`` and the other lists; returns k."""
  params_list = list(params_list)
  if not params_list:
    raise ValueError(f"{fn}: params_list is empty; give at least one model")
  trees = ([base] if base is not None else []) + params_list
  names = (["base"] if base is not None else []) + [f"params_list[{i}]" for i in range(len(params_list))]
  for key, lst in others.items():
    if len(lst) != len(params_list):
      raise ValueError(f"{fn}: {key} has {len(lst)} entries but params_list has {len(params_list)}")
    trees += list(lst)
    names += [f"{key}[{i}]" for i in range(len(lst))]
  _check_trees(trees, names, fn)
  return len(params_list)


def _weight_vector(weights, k: int, fn: str) -> jax.Array:
  if weights is None:
    return jnp.ones((k,), jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (k,):
    raise ValueError(f"{fn}: weights must have shape ({k},), one per model, got {weights.shape}")
  return weights


def _per_model(value, k: int, name: str, fn: str, *, low: float, high: float, low_open: bool = True,
               high_open: bool = False) -> tuple[float, ...]:
  """``value`` (one float, or one per model) as a tuple of k Python floats, each checked to lie in its range."""
  values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * k
  if len(values) != k:
    raise ValueError(f"{fn}: {name} has {len(values)} entries but params_list has {k}")
  out = []
  for i, v in enumerate(values):
    v = float(v)
    where = name if len(set(values)) == 1 else f"{name}[{i}]"
    if (not math.isfinite(v) or v < low or v > high or (low_open and v == low) or (high_open and v == high)):
      interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
      raise ValueError(f"{fn}: {where} must be in {interval}, got {v}")
    out.append(v)
  return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Finiteness. Every public merge refuses NaN and inf in its inputs and options before any work: a NaN in one
# model would otherwise vanish or spread silently (TIES drops it from the sign election). The check is one fused
# reduction per leaf and one host transfer per call; ``check_finite=False`` skips it where the caller vouches for
# the inputs. Traced and abstract values (inside a caller's jit or eval_shape) cannot be checked and are skipped.


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def _require_finite(fn: str, arguments: dict[str, Any]) -> None:
  """Raises ``ValueError`` naming the first argument path with a NaN or inf entry."""
  names, leaves = [], []
  for name, value in arguments.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
      where = f"{name}{jax.tree_util.keystr(path)}"
      if isinstance(leaf, (jax.core.Tracer, jax.ShapeDtypeStruct, str, bool)) or leaf is None:
        continue
      if isinstance(leaf, (int, float)):
        ok = math.isfinite(leaf)
      else:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
          continue  # integer arrays, PRNG keys
        if isinstance(leaf, jax.Array):
          names.append(where)
          leaves.append(leaf)
          continue
        ok = bool(np.isfinite(leaf).all())
      if not ok:
        _raise_not_finite(fn, where)
  if leaves:
    flags = np.asarray(_finite_flags(leaves))
    if not flags.all():
      _raise_not_finite(fn, names[int(np.argmin(flags))])


def _raise_not_finite(fn: str, where: str):
  raise ValueError(f"{fn}: {where} has NaN or inf entries; merges refuse non-finite inputs (check_finite=False "
                   "skips this check)")


def _checked(fn: Callable, *, jitted: Callable | None = None) -> Callable:
  """Wraps a merge so that it first refuses non-finite inputs and options (`_require_finite`).

  The wrapper takes one more keyword, ``check_finite`` (default True). It keeps ``fn``'s signature (so a caller
  may ``jax.jit`` it with static argument names) and ``_cache_size`` (of ``jitted``, or of ``fn`` if jitted).
  """
  signature = inspect.signature(fn)

  @functools.wraps(fn)
  def merge(*args, check_finite: bool = True, **kwargs):
    if check_finite:
      _require_finite(fn.__name__, dict(signature.bind(*args, **kwargs).arguments))
    return fn(*args, **kwargs)

  merge._cache_size = (jitted or fn)._cache_size
  return merge


# ----------------------------------------------------------------------------------------------------------------
# Sharding helpers. On an Explicit mesh, sorting and linear solves refuse sharded operands; these gather only the
# named axes of one tensor and restore its sharding afterwards. On Auto meshes and single devices they do nothing.


def _sharded_spec(x: jax.Array):
  """The PartitionSpec of ``x`` padded to its rank, or None when no axis is sharded."""
  spec = tuple(jax.typeof(x).sharding.spec)
  spec += (None,) * (x.ndim - len(spec))
  return jax.P(*spec) if any(s is not None for s in spec) else None


def _unshard_axes(x: jax.Array, axes: Sequence[int]) -> tuple[jax.Array, Any]:
  """``x`` with ``axes`` unsharded, and the spec to restore (None when nothing had to move)."""
  spec = _sharded_spec(x)
  axes = {a % x.ndim for a in axes}
  if spec is None or all(spec[a] is None for a in axes):
    return x, None
  return jax.reshard(x, jax.P(*(None if i in axes else s for i, s in enumerate(spec)))), spec


def _reshard_back(x: jax.Array, spec) -> jax.Array:
  return x if spec is None else jax.reshard(x, spec)


def _weighted_sum(w: jax.Array, xs: Sequence[jax.Array]) -> jax.Array:
  """``sum_i w[i] * xs[i]`` as one fused elementwise sum (no stacked copy), keeping the sharding of ``xs[i]``."""
  return _sum([w[i].astype(x.dtype) * x for i, x in enumerate(xs)])


def _sum(xs: Sequence[jax.Array]) -> jax.Array:
  """The elementwise sum of a list of arrays, left to right; XLA fuses it into one pass over the inputs."""
  return functools.reduce(jnp.add, xs)


# ----------------------------------------------------------------------------------------------------------------
# Random masks. On CPU, ``jax.random`` lowers each Threefry draw to a five-step while loop that XLA cannot fuse:
# every draw writes its bits to memory and compiles to its own loop, so k draws per tensor over a large pytree took
# minutes to compile and ran at a tenth of memory speed. The same hash written in jnp ops is elementwise and fuses
# into the merge (`unlearn_jax.threefry`); its output equals ``jax.random.bits`` (tested), so the masks are those of
# the jax PRNG.
_threefry2x32 = threefry.threefry2x32


def _uniforms(key_data: jax.Array, like: jax.Array, k: int) -> list[jax.Array]:
  """k fp32 uniform arrays shaped and sharded like ``like``, two per key of ``key_data`` (shape ``(ceil(k/2), 2)``).

  Each key's Threefry block at counter ``(0, i)`` gives 64 bits for entry ``i``: the high word drives one model
  and the low word the next, i.e. the two halves of ``jax.random.bits(key, shape, jnp.uint64)``, so the k masks
  cost ceil(k / 2) hashes.
  """
  index = sharding.flat_positions(like, jnp.uint32)  # `_apply_deltas` checks the size is below 2**32
  per_key = key_data.reshape(key_data.shape[:1] + (1,) * like.ndim + (2,))
  hi, lo = _threefry2x32(per_key[..., 0], per_key[..., 1], jnp.zeros((), jnp.uint32), index)
  return [threefry.uniform((hi, lo)[i % 2][i // 2]) for i in range(k)]


# ----------------------------------------------------------------------------------------------------------------
# Per-tensor pieces shared by the task-vector merges. ``ds`` is the list of one tensor's k task vectors; every
# piece is elementwise across the list (or a reduction over one tensor), so nothing stacks k copies.

_INF_BITS = 0x7F800000  # the int32 bits of +inf; non-negative floats order like their int32 bits


def _magnitude_bits(d: jax.Array) -> jax.Array:
  """The int32 bit patterns of ``|d|`` in fp32, NaN clipped to +inf."""
  return jnp.minimum(jax.lax.bitcast_convert_type(jnp.abs(d).astype(jnp.float32), jnp.int32), _INF_BITS)


def _kth_largest_by_counting(bits: Callable[[], Sequence[jax.Array]], keeps: Sequence[Any]) -> list[jax.Array]:
  """The ``keeps[i]``-th largest entry of each tensor ``bits()[i]`` (non-negative int32), by a 4-way search.

  Each of 18 rounds counts, for every tensor, its entries at or above three pivots that split the remaining
  interval in four (`_sums`: one fused pass over the inputs for all tensors and pivots), and keeps the quarter
  holding the answer; the interval starts as all of ``[0, +inf's bits]`` and is one value after the last round.
  ``bits`` is called inside each round, so the bit patterns are recomputed from the inputs rather than stored (k
  tensors of temporaries). Only reductions, so a sharded tensor stays sharded. The answer is exact, ties included:
  the largest ``t`` with at least ``keep`` entries ``>= t``.
  """
  k = len(keeps)
  keeps = jnp.stack([jnp.asarray(n, jnp.int32) for n in keeps])

  def step(_, bounds):
    lo, hi = bounds
    quarter = jnp.maximum((hi - lo + 1) // 4, 1)
    pivots = [jnp.minimum(lo + quarter * j, hi) for j in (1, 2, 3)]
    counts = _sums([(x >= p[i]).astype(jnp.int32) for i, x in enumerate(bits()) for p in pivots])
    for j, p in enumerate(pivots):
      ok = jnp.stack(counts[j::3]) >= keeps
      lo, hi = jnp.where(ok, jnp.maximum(lo, p), lo), jnp.where(ok, hi, jnp.minimum(hi, p - 1))
    return lo, hi

  lo, _ = jax.lax.fori_loop(0, 18, step, (jnp.zeros((k,), jnp.int32), jnp.full((k,), _INF_BITS, jnp.int32)))
  return [lo[i] for i in range(k)]


_SORT_BELOW = 1 << 16  # tensors up to this size select by sorting


def _kth_largest(bits: Callable[[], Sequence[jax.Array]], keeps: Sequence[Any]) -> list[jax.Array]:
  """The ``keeps[i]``-th largest of each ``bits()[i]``: by sorting small tensors (it compiles faster), else by
  counting (`_kth_largest_by_counting`, which calls ``bits`` again in each round)."""
  values = bits()
  if not values or values[0].size == 0:
    return [jnp.int32(0) for _ in values]
  if values[0].size <= _SORT_BELOW and _sharded_spec(values[0]) is None:
    return [jnp.sort(b.reshape(-1))[b.size - jnp.asarray(n, jnp.int32)] for b, n in zip(values, keeps)]
  return _kth_largest_by_counting(bits, keeps)


def _keep_count(density: float, size: int, count: str) -> int:
  """How many entries a magnitude trim keeps: ``round`` (at least 1) or, as mergekit, ``floor`` (at least 1);
  every entry at density 1."""
  if density >= 1.0:
    return size
  n = int(density * size) if count == "floor" else round(density * size)
  return min(size, max(1, n))


def _outlier_band(density: float, gamma: float, size: int) -> tuple[int, int]:
  """``(kept, dropped above)`` of mergekit's ``magnitude_outliers``: of ``size`` entries the ``int(gamma size)``
  largest magnitudes are dropped (fewer where needed to keep ``int(density size)``), then ``int(density size)``
  kept; density 1 keeps everything (no outlier removal)."""
  if density >= 1.0:
    return size, 0
  target = int(density * size)
  return target, size - max(0, size - target - int(gamma * size)) - target


def _magnitude_thresholds(deltas: Callable[[], Sequence[jax.Array]], keeps: jax.Array) -> list[jax.Array]:
  """The bit pattern of each task vector's ``keeps[i]``-th largest magnitude (`_kth_largest`); ``deltas()`` gives
  the task vectors (recomputed in each counting round)."""
  return _kth_largest(lambda: [_magnitude_bits(d) for d in deltas()], [keeps[i] for i in range(keeps.shape[0])])


def _magnitude_trim(ds: Sequence[jax.Array], keeps: jax.Array, kth: Sequence[jax.Array]) -> list[jax.Array]:
  """TIES trim: task vector ``i`` keeps its ``keeps[i]`` largest-magnitude entries (a traced count, so that
  densities enter the compiled program as values).

  The threshold is the exact ``keep``-th largest magnitude (entries tied with it are all kept), found on the
  fp32 bit patterns (``kth``, from `_magnitude_thresholds` in a pass of its own).
  """
  if math.prod(ds[0].shape) == 0:
    return list(ds)
  bits = [_magnitude_bits(d) for d in ds]
  return [jnp.where(b >= t, d, 0) for b, t, d in zip(bits, kth, ds)]


def _outlier_thresholds(deltas: Callable[[], Sequence[jax.Array]], bands: jax.Array
                        ) -> tuple[list[jax.Array], list[jax.Array]]:
  """The bit patterns bounding Breadcrumbs' kept band of each task vector (see `_outlier_trim`), both found in one
  search."""
  k = bands.shape[0]
  kept, above = [bands[i, 0] for i in range(k)], [bands[i, 1] for i in range(k)]
  both = _kth_largest(lambda: [_magnitude_bits(d) for d in deltas()] * 2,
                      [jnp.maximum(a + n, 1) for a, n in zip(above, kept)] + [jnp.maximum(a, 1) for a in above])
  return both[:k], both[k:]


def _outlier_trim(ds: Sequence[jax.Array], bands: jax.Array, kth) -> list[jax.Array]:
  """Model Breadcrumbs' mask: task vector ``i`` drops its ``bands[i, 1]`` largest magnitudes and keeps the next
  ``bands[i, 0]`` (`_outlier_band`); the rest are 0. ``kth``: the thresholds of `_outlier_thresholds`."""
  if math.prod(ds[0].shape) == 0:
    return list(ds)
  bits = [_magnitude_bits(d) for d in ds]
  low, high = kth
  kept, above = [bands[i, 0] for i in range(len(ds))], [bands[i, 1] for i in range(len(ds))]
  return [jnp.where((b >= lo) & ((a == 0) | (b < hi)) & (n > 0), d, 0)
          for b, lo, hi, a, n, d in zip(bits, low, high, above, kept, ds)]


def _inverse_permutation(order: jax.Array, ax: int) -> jax.Array:
  """``rank`` with ``rank[..., order[..., j, ...], ...] = j`` along ``ax``: one scatter into the flattened array.

  The scatter takes one flat index per entry (``jnp.put_along_axis`` would build ``order.ndim`` of them, the
  largest temporary of DELLA); past 2**31 entries, where int32 flat indices would overflow, it does that.
  """
  positions = jax.lax.broadcasted_iota(order.dtype, order.shape, ax)
  if order.size >= 2**31:
    return jnp.put_along_axis(jnp.zeros_like(order), order, positions, axis=ax, inplace=False)
  strides = [math.prod(order.shape[d + 1:]) for d in range(order.ndim)]
  flat = order * strides[ax]
  for d in range(order.ndim):
    if d != ax:
      flat = flat + jax.lax.broadcasted_iota(order.dtype, order.shape, d) * strides[d]
  rank = jnp.zeros((order.size,), order.dtype).at[flat.reshape(-1)].set(positions.reshape(-1), unique_indices=True)
  return rank.reshape(order.shape)


def _della_keep_probs(ds: Sequence[jax.Array], densities: Sequence[float], epsilons: Sequence[float],
                      axis: int) -> list[jax.Array]:
  """Keep probabilities spaced linearly in [density_i - epsilon_i, density_i + epsilon_i] by magnitude rank along
  axis.

  The k magnitudes of one tensor are ranked together, stacked, so that the tensor costs one sort and one scatter
  rather than k of each. The rank is the inverse permutation of the stable argsort: a scatter (or, for a tensor
  still sharded along its other axes, which an Explicit mesh refuses to scatter, the argsort of the argsort).
  """
  d0 = ds[0]
  if d0.ndim == 0:  # scalar leaves: one entry, the centre of the range
    return [jnp.full(d0.shape, p, d0.dtype) for p in densities]
  ax = 1 + (0 if d0.ndim == 1 else axis % d0.ndim)  # the ranked axis of the (k, ...) stack
  mag, spec = _unshard_axes(jnp.stack([jnp.abs(d) for d in ds]), [ax])
  n = mag.shape[ax]
  order = jnp.argsort(mag, axis=ax)
  rank = _inverse_permutation(order, ax) if _sharded_spec(order) is None else jnp.argsort(order, axis=ax)
  rank = rank.astype(d0.dtype)
  rank_norm = _reshard_back(rank / (n - 1) if n > 1 else jnp.full_like(rank, 0.5), spec)
  return [p - e + 2 * e * rank_norm[i] for i, (p, e) in enumerate(zip(densities, epsilons))]


def _sums(values: Sequence[jax.Array]) -> list[jax.Array]:
  """The sums of several arrays of one shape, as one variadic reduction.

  XLA:CPU stores the operand of a lone reduction, or of an XNNPACK one when it cannot take its computation (the
  random masks' integer hash), while a variadic reduction fuses the computation of all its operands into one
  loop: the values are computed once, in one pass, and never stored. The last axis is reduced first and the
  partial sums then pairwise (``jnp.sum``), so the rounding error stays that of short sums.
  """
  x = values[0]
  if x.ndim == 0 or _sharded_spec(x) is not None:
    return [jnp.sum(v) for v in values]
  if x.ndim == 1:  # rows of 1024 (zero-padded; zeros add nothing)
    pad = -x.shape[0] % 1024
    values = [jnp.pad(v, (0, pad)).reshape(-1, 1024) for v in values]
  zeros = tuple(jnp.zeros((), v.dtype) for v in values)
  partial = jax.lax.reduce(tuple(values), zeros, lambda a, b: tuple(p + q for p, q in zip(a, b)),
                           (values[0].ndim - 1,))
  return [jnp.sum(p) for p in partial]


def _l1_factors(ds: Sequence[jax.Array], kept: Sequence[jax.Array], eps: float = 1e-7) -> list[tuple]:
  """Per model ``(ok, |d|_1 / |kept|_1)``: mergekit's rescale multiplies ``kept`` by the ratio unless either norm
  is below ``eps`` (``ok`` false). The 2k norms are one fused pass (`_sums`)."""
  norms = _sums([jnp.abs(d) for d in ds] + [jnp.abs(x) for x in kept])
  out = []
  for before, after in zip(norms[:len(ds)], norms[len(ds):]):
    ok = (before >= eps) & (after >= eps)
    out.append((ok, before / jnp.where(ok, after, 1)))
  return out


def _l1_apply(kept: jax.Array, factor: tuple[jax.Array, jax.Array]) -> jax.Array:
  ok, ratio = factor
  return jnp.where(ok, kept * ratio, kept)


class _Spec(NamedTuple):
  """The static description of one generalized task-arithmetic merge (mergekit's ``GeneralizedTaskArithmetic``);
  the densities, epsilons and keep counts are traced arguments of `_gta`.

  sparsify: None, ``magnitude`` (TIES trim), ``random`` (DARE), ``outliers`` (Breadcrumbs) or ``della``.
  active: some model has a density below 1 (otherwise nothing is dropped and no mask is computed). rescale:
  None, ``inverse`` (divide kept entries by their keep probability) or ``l1`` (match each task vector's L1 norm).
  consensus: TIES sign election. zero_sign: ``majority`` (TIES code) or ``positive`` (mergekit). normalize:
  divide by the summed weights (of the agreeing models under consensus).
  """
  sparsify: str | None = None
  active: bool = False
  rescale: str | None = None
  axis: int = -1
  consensus: bool = False
  zero_sign: str = "majority"
  normalize: bool = False


def _keep_masks(ds: Sequence[jax.Array], densities: jax.Array, probs: Sequence[Any], key_data) -> list[jax.Array]:
  """Whether DARE/DELLA keeps each entry of each task vector: ``u_i < p_i`` (every entry at density 1)."""
  us = _uniforms(key_data, ds[0], len(ds))
  return [(u < p) | (densities[i] >= 1) for i, (u, p) in enumerate(zip(us, probs))]


def _packed_keep_masks(ds: Sequence[jax.Array], densities: jax.Array, probs: Sequence[Any], key_data) -> jax.Array:
  """`_keep_masks` of the k <= 32 models as one unsigned integer array, bit i holding model i's mask.

  Computed in a loop over the Threefry keys (two models each; over the models when k <= 2, so that the loop is
  not removed as a single trip), which is a fusion boundary: the passes that read the masks afterwards (the L1
  norms, the majority sign, the merge) do not each recompute the hash, and the fused reductions do not run it in
  XLA:CPU's scalar reduction loop (5x slower than the vectorised elementwise hash). Optimization barriers would
  not do: XLA:CPU removes them before fusion.
  """
  k, like = len(ds), ds[0]
  dtype = jnp.uint8 if k <= 8 else jnp.uint16 if k <= 16 else jnp.uint32
  index = sharding.flat_positions(like, jnp.uint32)
  stacked = jnp.stack([jnp.broadcast_to(p, like.shape).astype(like.dtype) for p in probs]) if jnp.ndim(probs[0]) else \
      jnp.stack([jnp.asarray(p, like.dtype) for p in probs])
  pairs = k > 2

  def keep(i, word):
    p = jax.lax.dynamic_index_in_dim(stacked, i, keepdims=False)
    bit = ((threefry.uniform(word) < p) | (densities[i] >= 1)) & (i < k)
    return bit.astype(dtype) << jnp.minimum(i, k - 1).astype(dtype)

  def body(g, packed):
    kd = jax.lax.dynamic_index_in_dim(key_data, g // 2 if not pairs else g, keepdims=False)
    hi, lo = _threefry2x32(kd[0], kd[1], jnp.zeros((), jnp.uint32), index)
    if pairs:
      return packed | keep(2 * g, hi) | keep(2 * g + 1, lo)
    return packed | keep(g, jnp.where(g == 0, hi, lo))

  trips = key_data.shape[0] if pairs else k
  return jax.lax.fori_loop(0, trips, body, jnp.zeros_like(like, dtype))


def _sparsify(spec: _Spec, ds: list[jax.Array], densities: jax.Array, stats: dict, counts, key_data
              ) -> list[jax.Array]:
  """Drops entries of each task vector as ``spec.sparsify`` says; ``counts`` are this tensor's keep counts
  (magnitude) or bands (outliers). A model of density 1 keeps everything.

  ``stats`` holds what earlier passes computed for this tensor (see `_gta`): DELLA's keep probabilities
  (``probs``), the packed random keep masks (``masks``; otherwise the hash is computed here), the trim thresholds
  (``kth``; otherwise found here) and the L1 rescale factors (``l1``; applied where present).
  """
  if not spec.active:
    return ds
  if spec.sparsify in ("random", "della"):
    probs = stats["probs"] if spec.sparsify == "della" else [densities[i].astype(d.dtype) for i, d in enumerate(ds)]
    keep = ([(stats["masks"] >> i) & 1 != 0 for i in range(len(ds))] if "masks" in stats
            else _keep_masks(ds, densities, probs, key_data))
    # The division sits inside the select: XLA will not fuse a divided select into the merge's sum, and each
    # unfused term then recomputes its hash.
    kept = [jnp.where(m, d / p if spec.rescale == "inverse" else d, 0) for d, m, p in zip(ds, keep, probs)]
    if spec.rescale == "inverse":  # density 1 (DELLA's probabilities may then pass 1): the delta as it is
      kept = [jnp.where(densities[i] >= 1, d, k) for i, (d, k) in enumerate(zip(ds, kept))]
  elif spec.sparsify == "magnitude":
    kept = _magnitude_trim(ds, counts, stats["kth"])
  elif spec.sparsify == "outliers":
    kept = _outlier_trim(ds, counts, stats["kth"])
  else:
    return ds
  if "l1" in stats:
    kept = [_l1_apply(k, f) for k, f in zip(kept, stats["l1"])]
  return kept


def _elect(ds: Sequence[jax.Array], zero_positive) -> tuple[jax.Array, jax.Array]:
  """TIES sign election: ``(elected sign, summed deltas)``.

  The elected sign of an entry is the sign of its summed deltas; where that sum is exactly 0 it is +1 if
  ``zero_positive`` (a bool, or a traced boolean scalar) else -1.
  """
  total = _sum(ds)
  zero = jnp.where(zero_positive, 1, -1).astype(total.dtype)
  return jnp.where(total > 0, 1, jnp.where(total < 0, -1, zero)).astype(total.dtype), total


def _combine(spec: _Spec, ds: Sequence[jax.Array], w: jax.Array, zero_positive=True) -> jax.Array:
  """Sums the weighted deltas ``ds`` (those agreeing with the elected sign, under consensus), divided by the summed
  weights of the contributing models when ``spec.normalize``.

  The agreeing deltas are those of the elected sign's side: ``d > 0`` where it is positive, ``d < 0`` otherwise
  (the TIES code's ``disjoint_merge``; with mergekit's election, ``zero_positive=True``, the sign is never 0, so
  this is its ``sign(d) == elected``). A NaN sum stays NaN (a NaN delta never agrees with any sign).
  """
  if spec.consensus:
    elected, total = _elect(ds, zero_positive)
    agree = [jnp.where(elected > 0, d > 0, d < 0) for d in ds]
    mixed = _sum([jnp.where(a, d, 0) for a, d in zip(agree, ds)])
    mixed = jnp.where(jnp.isnan(total), total, mixed)
    if not spec.normalize:
      return mixed
    divisor = _sum([jnp.where(a, w[i].astype(mixed.dtype), 0) for i, a in enumerate(agree)])
    return mixed / jnp.where(divisor == 0, 1, divisor)
  mixed = _sum(ds)
  if not spec.normalize:
    return mixed
  divisor = jnp.sum(w).astype(mixed.dtype)
  return mixed / jnp.where(jnp.abs(divisor) < 1e-8, 1, divisor)


def _majority_positive(ds: Sequence[jax.Array]) -> jax.Array:
  """The TIES code's ``resolve_zero_signs('majority')``: whether the sum over the tensor of the entries' elected
  signs (``sign(sum_i d_i)``; NaN sums count 0, as its ``nansum``) is positive, counted exactly in one fused pass
  (`_sums`). Entries whose sum is exactly 0 then take +; otherwise they keep sign 0 or take -, and
  ``disjoint_merge`` keeps the negative values in both cases."""
  total = _sum(ds)
  above, below = _sums([(total > 0).astype(jnp.int32), (total < 0).astype(jnp.int32)])
  return above > below


def _apply_deltas(fn: str, params_list, base, merge_tensor: Callable, scale, *, rng=None,
                  passes: Sequence[tuple[str, Callable]] = (), per_leaf: Pytree | None = None) -> Pytree:
  """``base + scale * merge_tensor(ds, stats, *extras)``, leaf by leaf, in base's dtype; ``ds`` lists the k task
  vectors.

  ``passes`` are ``(name, pass_)`` pairs: in order, ``stats[name] = pass_(deltas, stats, *extras)`` is computed
  in a pass of its own (``stats`` starts empty); ``deltas()`` builds the task vectors from the inputs, so that a
  pass may rebuild them inside a loop (`_kth_largest_by_counting`) rather than store them. An optimization barrier after each pass makes XLA recompute ``ds``
  from the inputs for the next pass instead of storing the k task vectors for all of them (k tensors of
  temporaries, written and read back), and keeps a pass's work out of the later ones. With ``per_leaf`` (a pytree
  like ``base``), the extras start with this leaf's entry. With ``rng``, they end with this leaf's
  ``(ceil(k / 2), 2)`` uint32 Threefry keys (see :func:`_uniforms`), fresh for each leaf.
  """
  k = _check_list(params_list, fn, base=base)
  leaves, treedef = jax.tree.flatten(base)
  keys = ()
  if rng is not None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(base)[0]:
      if math.prod(jnp.shape(leaf)) >= 2**32:
        raise ValueError(f"{fn}: base{jax.tree_util.keystr(path)} has shape {list(jnp.shape(leaf))}, 2**32 entries "
                         "or more, which the random masks do not support")
    # Two words, a Threefry key, per leaf and pair of models, drawn from rng whatever its PRNG implementation.
    key_data = jax.random.bits(rng, (len(leaves), (k + 1) // 2, 2), jnp.uint32)
    keys = (jax.tree.unflatten(treedef, list(key_data)),)

  extras = keys if per_leaf is None else (per_leaf,) + keys

  def leaf(b, *rest):
    leaf_extras, ps = rest[:len(extras)], rest[len(extras):]
    stats = {}
    for name, pass_ in passes:
      stat = pass_(lambda: [p - b for p in ps], stats, *leaf_extras)  # pylint: disable=cell-var-from-loop
      stats, b, ps = jax.lax.optimization_barrier(({**stats, name: stat}, b, ps))
    return (b + scale * merge_tensor([p - b for p in ps], stats, *leaf_extras)).astype(b.dtype)

  return jax.tree.map(leaf, base, *extras, *params_list)


# ----------------------------------------------------------------------------------------------------------------
# Public merges.

@_checked
@functools.partial(jax.jit, static_argnames=("normalize",))
def linear(params_list: Sequence[Pytree], *, weights=None, normalize: bool = True) -> Pytree:
  """Weighted average of parameters (a model soup).

  Computes ``sum_i w_i theta_i``, divided by ``sum_i w_i`` when ``normalize`` (the default, as mergekit's
  ``linear`` method). With ``weights=None`` every model weighs 1, so the default is the uniform soup; pass
  ``normalize=False`` to use the weights exactly as given (e.g. extrapolation with weights not summing to 1).

  Args:
    params_list: the models, pytrees of the same structure, shapes and dtypes.
    weights: optional ``(k,)`` weights, one per model.
    normalize: divide by the sum of the weights.

  Returns:
    The merged pytree, in the dtype of ``params_list[0]``.

  References:
    Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
    increasing inference time", ICML 2022.

  Example:
    >>> soup = linear([p1, p2, p3])
    >>> mix = linear([p1, p2], weights=[0.3, 0.7])
  """
  k = _check_list(params_list, "linear")
  w = _weight_vector(weights, k, "linear")
  if normalize:
    w = w / jnp.sum(w)
  return jax.tree.map(lambda *ps: _weighted_sum(w, ps).astype(ps[0].dtype), *params_list)


@_checked
@jax.jit
def task_vectors(params_list: Sequence[Pytree], base: Pytree) -> list[Pytree]:
  """The task vectors ``tau_i = params_list[i] - base``.

  References:
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.

  Example:
    >>> [tau] = task_vectors([finetuned], pretrained)
  """
  _check_list(params_list, "task_vectors", base=base)
  return [optax.tree.sub(p, base) for p in params_list]


@functools.partial(jax.jit, static_argnames=("spec",))
def _gta(params_list, base, weights, scale, rng, densities, epsilons, counts, *, spec: _Spec) -> Pytree:
  """``base + scale * combine(w_i * sparsify(tau_i))`` per tensor: the one engine of the task-vector merges.

  ``densities`` and ``epsilons`` are ``(k,)`` arrays and ``counts`` a pytree like ``base`` of per-tensor keep
  counts (or None), all traced: sweeping them, or a density gradient over layers, reuses one program.
  """
  k = len(params_list)
  w = _weight_vector(weights, k, "merge")
  random = spec.sparsify in ("random", "della") and spec.active
  l1 = spec.active and spec.rescale == "l1"
  majority = spec.consensus and spec.zero_sign == "majority"
  per_leaf = lambda extra: (extra[0] if counts is not None else None, extra[-1] if random else None)
  sparsify = lambda ds, stats, extra: _sparsify(spec, ds, densities, stats, *per_leaf(extra))
  weighted = lambda ds: [w[i].astype(d.dtype) * d for i, d in enumerate(ds)]
  # What the merge of a tensor waits on, each in a pass of its own (`_apply_deltas`): DELLA's keep probabilities,
  # DARE's random keep masks (stored, one bit per model, where later passes need them; DELLA's cost is its sort,
  # and a loop reading its k probability tensors measured slower than hashing again) or the trim thresholds
  # (counting passes that rebuild the task vectors from the inputs), the L1 rescale factors, the TIES code's
  # majority sign. The last two are fused variadic reductions (`_sums`): as single reductions each stored its
  # operand and recomputed the random hash or the trim in a fusion of its own (k of them for the L1 norms;
  # compile time x5-10, run time x3).
  passes = []
  if spec.sparsify == "della" and spec.active:
    passes.append(("probs", lambda deltas, stats, *extra: _della_keep_probs(
        deltas(), [densities[i] for i in range(k)], [epsilons[i] for i in range(k)], spec.axis)))
  if (l1 or majority) and spec.sparsify == "random" and spec.active and k <= 32:
    passes.append(("masks", lambda deltas, stats, *extra: _packed_keep_masks(
        deltas(), densities, stats["probs"] if "probs" in stats else [densities[i] for i in range(k)],
        per_leaf(extra)[1])))
  if spec.sparsify in ("magnitude", "outliers") and spec.active:
    thresholds = _magnitude_thresholds if spec.sparsify == "magnitude" else _outlier_thresholds
    passes.append(("kth", lambda deltas, stats, *extra: thresholds(deltas, per_leaf(extra)[0])))
  if l1:
    passes.append(("l1", lambda deltas, stats, *extra: _l1_factors(deltas(), sparsify(deltas(), stats, extra))))
  if majority:
    passes.append(("majority", lambda deltas, stats, *extra: _majority_positive(
        weighted(sparsify(deltas(), stats, extra)))))

  def merge_tensor(ds, stats, *extra):
    zero_positive = stats["majority"] if majority else True
    return _combine(spec, weighted(sparsify(ds, stats, extra)), w, zero_positive)

  return _apply_deltas("merge", params_list, base, merge_tensor, scale, rng=rng if random else None,
                       passes=passes, per_leaf=counts)


def _rescale_mode(rescale, *, random: bool, mergekit: bool, fn: str) -> str | None:
  """``rescale`` as a `_Spec` mode: True is the method's own rule (1/p for random drops, L1 matching under
  ``mergekit`` or for deterministic trims), False none; 'inverse' and 'l1' pick one."""
  if rescale is True:
    return "l1" if (mergekit or not random) else "inverse"
  if rescale is False or rescale is None:
    return None
  if rescale == "l1" or (rescale == "inverse" and random):
    return rescale
  allowed = "True, False, 'inverse' or 'l1'" if random else "True, False or 'l1'"
  raise ValueError(f"{fn}: rescale must be {allowed}, got {rescale!r}")


def _check_combine(combine: str, fn: str) -> None:
  if combine not in _COMBINES:
    raise ValueError(f"{fn}: combine must be one of {_COMBINES}, got {combine!r}")


def _task_vector_merge(fn: str, params_list, base, *, scale, weights, rng=None, sparsify=None, density=1.0,
                       gamma=0.0, epsilon=0.0, rescale=False, combine="linear", normalize=False, mergekit=False,
                       axis=-1) -> Pytree:
  """Validates the options of a task-vector merge and runs `_gta`."""
  _check_combine(combine, fn)
  k = _check_list(params_list, fn, base=base)
  densities = _per_model(density, k, "density", fn, low=0.0, high=1.0)
  gammas = _per_model(gamma, k, "gamma", fn, low=0.0, high=1.0, low_open=False)
  epsilons = _per_model(epsilon, k, "epsilon", fn, low=0.0, high=1.0, low_open=False)
  if sparsify == "della":
    for i, (p, e) in enumerate(zip(densities, epsilons)):
      if p < 1.0 and (p - e <= 0 or p + e > 1):
        raise ValueError(f"{fn}: keep probabilities density +- epsilon = [{p - e}, {p + e}] (model {i}) must lie "
                         "in (0, 1] with epsilon >= 0")
  random = sparsify in ("random", "della")
  if random and rng is None and any(p < 1.0 for p in densities):
    raise ValueError(f"{fn}: rng is required for random drops (density < 1)")
  active = sparsify is not None and any(p < 1.0 for p in densities)
  spec = _Spec(sparsify=sparsify, active=active,
               rescale=_rescale_mode(rescale, random=random, mergekit=mergekit, fn=fn) if sparsify else None,
               axis=axis, consensus=combine == "ties", zero_sign="positive" if mergekit else "majority",
               normalize=bool(normalize))
  counts = None  # per tensor, computed here from the static shapes: int(density * size) exactly as mergekit
  if active and sparsify == "magnitude":
    count = "floor" if mergekit else "round"
    counts = jax.tree.map(lambda b: np.array([_keep_count(p, math.prod(jnp.shape(b)), count) for p in densities],
                                             np.int32), base)
  elif active and sparsify == "outliers":
    counts = jax.tree.map(lambda b: np.array([_outlier_band(p, g, math.prod(jnp.shape(b)))
                                              for p, g in zip(densities, gammas)], np.int32), base)
  return _gta(list(params_list), base, weights, scale, rng, np.asarray(densities, np.float32),
              np.asarray(epsilons, np.float32), counts, spec=spec)


@functools.partial(_checked, jitted=_gta)
def task_arithmetic(params_list: Sequence[Pytree], *, base: Pytree, scale=1.0, weights=None,
                    normalize: bool = False) -> Pytree:
  """``base + scale * sum_i w_i tau_i``: task addition, or with a negative ``scale`` task negation.

  Forgetting by negation fine-tunes the Original on the forget set and subtracts that task vector:
  ``task_arithmetic([finetuned_on_forget], base=original, scale=-1.0)``.

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    scale: the coefficient lambda of the summed task vectors (may be traced; mergekit's ``lambda``).
    weights: optional ``(k,)`` per-model weights (default 1 each; may be traced).
    normalize: divide by ``sum_i w_i`` (mergekit's ``normalize``, default off as there).

  References:
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.

  Example:
    >>> multi_task = task_arithmetic([p_a, p_b], base=p0, scale=0.4)
  """
  return _task_vector_merge("task_arithmetic", params_list, base, scale=scale, weights=weights,
                            normalize=normalize)


@functools.partial(_checked, jitted=_gta)
def ties(params_list: Sequence[Pytree], *, base: Pytree, density, scale=1.0, weights=None, normalize: bool = True,
         rescale: bool | str = False, mergekit: bool = False) -> Pytree:
  """TIES-Merging: trim, elect sign, disjoint merge.

  Per tensor: each task vector keeps its ``round(density * size)`` largest-magnitude entries (ties with the
  threshold kept too) and is multiplied by its weight; each entry's sign is elected as the sign of the sum of
  these values; the merged delta sums the values that have the elected sign and, with ``normalize``, divides by
  the summed weights of those models (the mean over the agreeing models for unit weights; 0 if none). The
  result is ``base + scale * merged``. Trimming is per tensor, as in mergekit (the paper's code trims the whole
  flattened model at once).

  An entry whose summed values are exactly 0 gets, as in the TIES code (``resolve_zero_signs('majority')``), the
  sign of the sum of the tensor's elected signs; if that is 0 too, the entry stays 0 and the code's
  ``disjoint_merge`` then keeps the negative values. With ``mergekit=True`` the sign is + there (mergekit's
  ``(sum >= 0) * 2 - 1``) and the kept count is ``floor(density * size)`` (at least 1), which is mergekit's
  ``ties`` exactly (its ``int8_mask`` changes nothing numerically).

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    density: the fraction in (0, 1] of each task vector's entries kept per tensor, or one per model (static).
    scale: lambda, the coefficient of the merged task vector (may be traced).
    weights: optional ``(k,)`` per-model weights (default 1; may be traced).
    normalize: divide by the agreeing models' summed weights (True, as the paper's mean and mergekit's default)
      or just sum (False).
    rescale: True or ``'l1'`` scales each trimmed task vector back to its L1 norm (mergekit's ``rescale``).
    mergekit: mergekit's zero-sign rule and keep count.

  References:
    Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023.

  Example:
    >>> merged = ties([p1, p2, p3], base=p0, density=0.2)
    >>> as_mergekit = ties([p1, p2], base=p0, density=[0.5, 0.3], weights=[1.0, 0.5], mergekit=True)
  """
  return _task_vector_merge("ties", params_list, base, scale=scale, weights=weights, sparsify="magnitude",
                            density=density, rescale=rescale, combine="ties", normalize=normalize,
                            mergekit=mergekit)


@functools.partial(_checked, jitted=_gta)
def dare(params_list: Sequence[Pytree], *, base: Pytree, density, rng: jax.Array, rescale: bool | str = True,
         combine: str = "linear", scale=1.0, weights=None, normalize: bool | None = None,
         mergekit: bool = False) -> Pytree:
  """DARE: drop and rescale each task vector, then combine.

  Every entry of every task vector is kept independently with probability ``density`` (a fresh key per leaf and
  pair of models, see :func:`_uniforms`) and, with ``rescale``, the kept entries are divided by ``density`` so
  each delta is unbiased (the paper's code; ``rescale='l1'`` or ``mergekit=True`` instead scales each dropped task
  vector back to its L1 norm, as mergekit). The deltas are multiplied by their weights, then ``combine='linear'``
  sums them (the paper's task arithmetic; with unit weights and ``density=1`` this is exactly
  :func:`task_arithmetic`), and ``combine='ties'`` applies TIES sign election and the disjoint merge (no
  magnitude trim; with ``density=1`` it equals ``ties(..., density=1)``).

  ``normalize`` (default: True for ``'ties'``, the paper's disjoint mean; False for ``'linear'``, and False for
  both with ``mergekit=True``, as mergekit's ``dare_ties`` and ``dare_linear``) divides by the summed weights of
  the contributing models.

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    density: the keep probability in (0, 1], or one per model (static).
    rng: PRNG key.
    rescale: True (the method's rule: 1/density, or L1 matching with ``mergekit``), False, ``'inverse'``, ``'l1'``.
    combine: ``'linear'`` (sum) or ``'ties'`` (sign election and disjoint merge).
    scale: the coefficient of the combined delta (mergekit's ``lambda``).
    weights: optional ``(k,)`` per-model weights.
    normalize: see above; None picks the default.
    mergekit: mergekit's defaults (L1 rescale, no normalize) and its zero-sign rule (+).

  References:
    Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch",
    ICML 2024.

  Example:
    >>> merged = dare([p1, p2], base=p0, density=0.1, rng=jax.random.key(0), combine="ties")
  """
  if normalize is None:
    normalize = combine == "ties" and not mergekit
  return _task_vector_merge("dare", params_list, base, scale=scale, weights=weights, rng=rng, sparsify="random",
                            density=density, rescale=rescale, combine=combine, normalize=normalize,
                            mergekit=mergekit)


@functools.partial(_checked, jitted=_gta)
def dare_ties(params_list: Sequence[Pytree], *, base: Pytree, density, rng: jax.Array, scale=1.0, weights=None,
              rescale: bool | str = True, normalize: bool = False) -> Pytree:
  """mergekit's ``dare_ties``: :func:`dare` with ``combine='ties', mergekit=True`` (L1-norm rescaling, weighted
  deltas summed where they agree with the elected sign, + where the sum is 0, no normalisation by default).

  References:
    Yu et al., "Language Models are Super Mario", ICML 2024; mergekit's ``dare_ties``.

  Example:
    >>> merged = dare_ties([p1, p2], base=p0, density=0.5, weights=[0.6, 0.4], rng=jax.random.key(0))
  """
  return dare(params_list, base=base, density=density, rng=rng, rescale=rescale, combine="ties", scale=scale,
              weights=weights, normalize=normalize, mergekit=True, check_finite=False)


@functools.partial(_checked, jitted=_gta)
def dare_linear(params_list: Sequence[Pytree], *, base: Pytree, density, rng: jax.Array, scale=1.0, weights=None,
                rescale: bool | str = True, normalize: bool = False) -> Pytree:
  """mergekit's ``dare_linear``: :func:`dare` with ``combine='linear', mergekit=True`` (L1-norm rescaling, the
  weighted deltas summed, divided by the summed weights only with ``normalize``).

  References:
    Yu et al., "Language Models are Super Mario", ICML 2024; mergekit's ``dare_linear``.

  Example:
    >>> merged = dare_linear([p1, p2], base=p0, density=0.5, weights=[0.6, 0.4], rng=jax.random.key(0))
  """
  return dare(params_list, base=base, density=density, rng=rng, rescale=rescale, combine="linear", scale=scale,
              weights=weights, normalize=normalize, mergekit=True, check_finite=False)


@functools.partial(_checked, jitted=_gta)
def della(params_list: Sequence[Pytree], *, base: Pytree, density, epsilon, rng: jax.Array, combine: str = "ties",
          scale=1.0, axis: int = -1, weights=None, rescale: bool | str = True, normalize: bool | None = None,
          mergekit: bool = False) -> Pytree:
  """DELLA: magnitude-ranked stochastic dropping (MagPrune), rescaling, then combine.

  Along ``axis`` of every tensor of two or more dimensions (each "row"; the whole tensor for vectors), the
  entries of each task vector are ranked by magnitude and given keep probabilities spaced linearly from
  ``density - epsilon`` (smallest) to ``density + epsilon`` (largest); a one-entry row gets ``density``. Each
  entry is kept independently with its probability ``p`` and divided by ``p`` (the paper's code; ``rescale='l1'``
  or ``mergekit=True``: L1-norm matching, as mergekit). The weighted deltas are then combined as in
  :func:`dare`: ``'ties'`` (the default, the paper's DELLA-Merging and mergekit's ``della``; normalised by the
  agreeing weights unless ``normalize=False``) or ``'linear'`` (mergekit's ``della_linear``; not normalised
  unless ``normalize=True``). With ``epsilon=0`` DELLA is DARE. A model with density 1 is kept whole.

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    density: the mean keep probability, or one per model (static).
    epsilon: half the spread of keep probabilities (one, or one per model); ``density +- epsilon`` must lie in
      (0, 1] (static).
    rng: PRNG key.
    combine: ``'ties'`` or ``'linear'``.
    scale: the coefficient of the combined delta.
    axis: the axis ranked in tensors of two or more dimensions (static). Flax kernels are ``(..., in, out)``,
      so ``-1`` ranks across output units for a fixed input; ``-2`` ranks a unit's incoming weights, which is
      the row of a PyTorch ``(out, in)`` weight (mergekit ranks the last axis of PyTorch tensors).
    weights: optional ``(k,)`` per-model weights.
    rescale: True (1/p, or L1 with ``mergekit``), False, ``'inverse'`` or ``'l1'``.
    normalize: None: True for ``'ties'``, False for ``'linear'``.
    mergekit: L1 rescaling and mergekit's zero-sign rule (+).

  References:
    Deep et al., "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling",
    arXiv:2406.11617, 2024.

  Example:
    >>> merged = della([p1, p2], base=p0, density=0.5, epsilon=0.1, rng=jax.random.key(0))
  """
  if normalize is None:
    normalize = combine == "ties"
  return _task_vector_merge("della", params_list, base, scale=scale, weights=weights, rng=rng, sparsify="della",
                            density=density, epsilon=epsilon, rescale=rescale, combine=combine,
                            normalize=normalize, mergekit=mergekit, axis=axis)


@functools.partial(_checked, jitted=_gta)
def della_linear(params_list: Sequence[Pytree], *, base: Pytree, density, epsilon, rng: jax.Array, scale=1.0,
                 axis: int = -1, weights=None, rescale: bool | str = True, normalize: bool = False) -> Pytree:
  """mergekit's ``della_linear``: :func:`della` with ``combine='linear', mergekit=True`` (L1-norm rescaling).

  References:
    Deep et al., "DELLA-Merging", arXiv:2406.11617, 2024; mergekit's ``della_linear``.

  Example:
    >>> merged = della_linear([p1, p2], base=p0, density=0.5, epsilon=0.1, rng=jax.random.key(0))
  """
  return della(params_list, base=base, density=density, epsilon=epsilon, rng=rng, combine="linear", scale=scale,
               axis=axis, weights=weights, rescale=rescale, normalize=normalize, mergekit=True,
               check_finite=False)


@functools.partial(_checked, jitted=_gta)
def breadcrumbs(params_list: Sequence[Pytree], *, base: Pytree, density, gamma=0.01, scale=1.0, weights=None,
                combine: str = "linear", normalize: bool = False, rescale: bool | str = False) -> Pytree:
  """Model Breadcrumbs: drop each task vector's largest outliers and its smallest entries, then combine.

  Per tensor of ``n`` entries and per model (mergekit's ``magnitude_outliers``): the ``int(gamma * n)``
  largest-magnitude entries are dropped (fewer if needed so that ``int(density * n)`` remain), the next
  ``int(density * n)`` are kept and the rest dropped; ``density=1`` keeps everything. The weighted deltas are
  then summed (``combine='linear'``, mergekit's ``breadcrumbs``) or merged by TIES sign election
  (``'ties'``, mergekit's ``breadcrumbs_ties``, + where the sum is 0); ``normalize`` divides by the summed
  (agreeing) weights. The defaults are mergekit's (the paper's code masks per layer with the same two
  fractions).

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    density: the fraction kept, one or one per model (static).
    gamma: the fraction of top outliers dropped, one or one per model (static).
    scale: the coefficient of the combined delta.
    weights: optional ``(k,)`` per-model weights.
    combine: ``'linear'`` or ``'ties'``.
    normalize: divide by the summed weights.
    rescale: True or ``'l1'`` scales each masked task vector back to its L1 norm.

  References:
    Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", ECCV 2024.

  Example:
    >>> merged = breadcrumbs([p1, p2], base=p0, density=0.9, gamma=0.01, weights=[0.5, 0.5])
  """
  return _task_vector_merge("breadcrumbs", params_list, base, scale=scale, weights=weights, sparsify="outliers",
                            density=density, gamma=gamma, rescale=rescale, combine=combine, normalize=normalize,
                            mergekit=True)


@functools.partial(_checked, jitted=_gta)
def breadcrumbs_ties(params_list: Sequence[Pytree], *, base: Pytree, density, gamma=0.01, scale=1.0, weights=None,
                     normalize: bool = False, rescale: bool | str = False) -> Pytree:
  """mergekit's ``breadcrumbs_ties``: :func:`breadcrumbs` with ``combine='ties'``.

  References:
    Davari & Belilovsky, "Model Breadcrumbs", ECCV 2024; mergekit's ``breadcrumbs_ties``.

  Example:
    >>> merged = breadcrumbs_ties([p1, p2], base=p0, density=0.9, gamma=0.01)
  """
  return breadcrumbs(params_list, base=base, density=density, gamma=gamma, scale=scale, weights=weights,
                     combine="ties", normalize=normalize, rescale=rescale, check_finite=False)


@_checked
@functools.partial(jax.jit, static_argnames=("filter_wise", "axis"))
def model_stock(params_list: Sequence[Pytree], *, base: Pytree, eps: float = 1e-8, filter_wise: bool = False,
                axis: int = -1) -> Pytree:
  """Model Stock: interpolate the average of the fine-tuned models towards the base, per tensor (or per filter).

  For each tensor, ``cos`` is the mean over pairs of models of the cosine between their task vectors (mergekit's
  reading of the paper's single angle for k > 2; norms below ``eps`` give cosine 0), and
  ``t = k cos / (1 + (k - 1) cos)``; the result is ``t * mean_i theta_i + (1 - t) * base``. Where
  ``|1 + (k - 1) cos| < 1e-6`` (e.g. two exactly opposed task vectors) there is no finite ``t`` and the base is
  kept (``t = 0``), as mergekit. One model gives ``t = 1``, i.e. that model. With ``filter_wise`` each slice along
  the other axes (each row of a PyTorch ``(out, in)`` weight, reducing ``axis``) gets its own cosine and ``t``,
  as mergekit's ``filter_wise``; vectors are one filter.

  Args:
    params_list: k fine-tuned models.
    base: the pre-trained anchor.
    eps: the smallest task-vector norm treated as non-zero.
    filter_wise: one ``t`` per filter instead of per tensor (static).
    axis: the axis reduced per filter (static; -1 is mergekit's, on PyTorch-layout tensors).

  References:
    Jang et al., "Model Stock: All we need is just a few fine-tuned models", ECCV 2024.

  Example:
    >>> merged = model_stock([p1, p2, p3], base=p0)
  """
  k = _check_list(params_list, "model_stock", base=base)

  def leaf(b, *ps):
    if k == 1:  # t = 1: the model itself
      return ps[0]
    red = axis % b.ndim if filter_wise and b.ndim > 1 else None
    rsum = lambda x: jnp.sum(x, axis=red, keepdims=red is not None)
    # Three passes over the inputs: the norms, the mean cosine, the merge. Left alone, XLA computes the task
    # vectors once and keeps them for all three passes (k tensors of temporaries, written and read back); the
    # optimization barriers make each pass recompute p - b from the inputs instead, which is cheaper.
    sq = [rsum(jnp.square(p - b)) for p in ps]  # |tau_i|^2
    sq, b, ps = jax.lax.optimization_barrier((sq, b, ps))
    norms = [jnp.maximum(jnp.sqrt(s), eps) for s in sq]
    # The mean over ordered pairs i != j of u_i . u_j (u_i = tau_i / norm_i) is
    # (|sum_i u_i|^2 - sum_i |u_i|^2) / (k (k - 1)).
    own = _sum([s / jnp.square(n) for s, n in zip(sq, norms)])
    cos = (rsum(jnp.square(_sum([(p - b) / n for p, n in zip(ps, norms)]))) - own) / (k * (k - 1))
    denominator = 1 + (k - 1) * cos
    singular = jnp.abs(denominator) < 1e-6
    t = jnp.where(singular, 0, k * cos / jnp.where(singular, 1, denominator))
    t, b, ps = jax.lax.optimization_barrier((t, b, ps))
    return (b + t * (_sum([p - b for p in ps]) / k)).astype(b.dtype)

  return jax.tree.map(leaf, base, *params_list)


def _per_leaf(value, like: Pytree, name: str, fn: str) -> Pytree:
  """``value`` as a pytree like ``like``: itself if it has ``like``'s structure, else one scalar for every leaf."""
  if jax.tree.structure(value) == jax.tree.structure(like):
    return value
  if jnp.ndim(value) == 0 and len(jax.tree.leaves(value)) == 1:
    return jax.tree.map(lambda _: value, like)
  raise ValueError(f"{fn}: {name} must be a scalar or a pytree of scalars with the models' structure")


@_checked
@jax.jit
def slerp(a: Pytree, b: Pytree, *, t, eps: float = 1e-8, dot_threshold: float = 0.9995) -> Pytree:
  """Spherical linear interpolation from ``a`` (t=0) to ``b`` (t=1), per tensor.

  Each tensor is treated as one flattened vector; the angle ``omega`` is that of the two normalised vectors and
  the result is ``sin((1 - t) omega) / sin(omega) * a + sin(t omega) / sin(omega) * b``. When the normalised
  vectors are nearly colinear (``|cos omega| > dot_threshold``) it falls back to linear interpolation. Between
  unit vectors the result is a unit vector. ``t`` is one scalar, or a pytree of scalars with the models'
  structure (one ``t`` per tensor, e.g. mergekit's gradient lists over layers). In mergekit's ``slerp`` the base
  model is ``a``.

  Args:
    a: the start pytree.
    b: the end pytree (same structure, shapes and dtypes).
    t: the interpolation parameter, or a pytree of them (may be traced).
    eps: norms at or below ``eps`` are not normalised when measuring the angle.
    dot_threshold: the cosine above which linear interpolation is used.

  References:
    Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985; mergekit's ``slerp`` merge.

  Example:
    >>> halfway = slerp(p1, p2, t=0.5)
  """
  _check_list([a, b], "slerp")
  ts = _per_leaf(t, a, "t", "slerp")

  def leaf(x, y, t):
    x32, y32 = x.astype(jnp.float32), y.astype(jnp.float32)
    nx, ny = jnp.sqrt(jnp.sum(jnp.square(x32))), jnp.sqrt(jnp.sum(jnp.square(y32)))
    ux = jnp.where(nx > eps, x32 / nx, x32)
    uy = jnp.where(ny > eps, y32 / ny, y32)
    dot = jnp.sum(ux * uy)
    colinear = jnp.abs(dot) > dot_threshold
    omega = jnp.arccos(jnp.clip(dot, -1.0, 1.0))
    sin_omega = jnp.where(colinear, 1.0, jnp.sin(omega))
    s0 = jnp.where(colinear, 1 - t, jnp.sin((1 - t) * omega) / sin_omega)
    s1 = jnp.where(colinear, t, jnp.sin(t * omega) / sin_omega)
    return (s0 * x32 + s1 * y32).astype(x.dtype)

  return jax.tree.map(leaf, a, b, ts)


@_checked
@jax.jit
def fisher(params_list: Sequence[Pytree], fishers: Sequence[Pytree], *, weights=None, eps: float = 1e-8) -> Pytree:
  """Fisher-weighted averaging with diagonal Fishers.

  ``theta = sum_i w_i F_i theta_i / sum_i w_i F_i`` elementwise, where each Fisher is floored at ``eps``
  (``F_i = max(F_i, eps)``, as the reference implementation's ``fisher_floor``), so entries no model is
  sensitive to fall back to the ``w``-weighted mean. Equal Fishers give the weighted mean.

  Args:
    params_list: the models.
    fishers: one diagonal Fisher per model, pytrees like the parameters (e.g. from
      :func:`unlearn_jax.merging.statistics.fisher_diag`).
    weights: optional ``(k,)`` model coefficients (default uniform; only their ratios matter).
    eps: the Fisher floor.

  References:
    Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022.

  Example:
    >>> merged = fisher([p1, p2], [fisher_diag(model, p1, s1, d1), fisher_diag(model, p2, s2, d2)])
  """
  k = _check_list(params_list, "fisher", fishers=fishers)
  w = _weight_vector(weights, k, "fisher")

  def leaf(*leaves):
    thetas, fs = leaves[:k], [jnp.maximum(f, eps) for f in leaves[k:]]
    return (_weighted_sum(w, [f * x for f, x in zip(fs, thetas)]) / _weighted_sum(w, fs)).astype(leaves[0].dtype)

  return jax.tree.map(leaf, *params_list, *fishers)


def _regmean_kernel(kernels: Sequence[jax.Array], grams: Sequence[jax.Array], w: jax.Array, alpha) -> jax.Array:
  """``(sum_i w_i G_i)^-1 sum_i w_i G_i W_i`` with the off-diagonal entries of each G_i scaled by alpha.

  The scaled Gram ``alpha G + (1 - alpha) diag(G)`` is never formed: ``G_i W_i`` is one matmul of the input
  Gram, plus the diagonal term, so the only temporaries are the summed Gram and right-hand side. The solve needs
  whole matrices, so on an Explicit mesh this one kernel and its Grams are gathered and the result is resharded
  like the input kernels.
  """
  spec = _sharded_spec(kernels[0])
  kernels = [_unshard_axes(x, [0, 1])[0] for x in kernels]
  grams = [_unshard_axes(g, [0, 1])[0] for g in grams]
  diagonals = [jnp.diagonal(g) for g in grams]
  rhs = _weighted_sum(w, [alpha * jnp.matmul(g, x, precision=jax.lax.Precision.HIGHEST) + (1 - alpha) * dg[:, None] * x
                          for g, x, dg in zip(grams, kernels, diagonals)])
  lhs = alpha * _weighted_sum(w, grams) + (1 - alpha) * jnp.diag(_weighted_sum(w, diagonals))
  return _reshard_back(jnp.linalg.solve(lhs, rhs), spec)


@_checked
@jax.jit
def regmean(params_list: Sequence[Pytree], grams: Sequence[Pytree], *, alpha=0.9, weights=None) -> Pytree:
  """RegMean: merge linear layers by the closed-form least squares on their inputs; average the rest.

  For every 2-D kernel ``W_i`` of shape ``(in, out)`` (a Linen ``Dense`` kernel, ``y = x @ W``) that has a Gram
  matrix ``G_i = X_i^T X_i`` of shape ``(in, in)`` over the inputs ``X_i`` of that layer in model i, the
  off-diagonal entries of each ``G_i`` are multiplied by ``alpha`` and the merged kernel solves
  ``(sum_i w_i G_i) W = sum_i w_i G_i W_i``: with ``alpha=1`` it is the kernel minimising
  ``sum_i w_i ||X_i W - X_i W_i||^2``, i.e. least squares on the union of the data. Every other leaf (biases,
  convolutions, norms, kernels without a Gram) is the ``w``-weighted mean.

  Gram layout: ``grams[i]`` mirrors ``params_list[i]`` but holds only the kernels that RegMean merges, each
  replaced by its ``(in, in)`` Gram, e.g. ``{'Dense_0': {'kernel': G}}`` for params
  ``{'Dense_0': {'kernel': W, 'bias': b}, ...}``. :func:`unlearn_jax.merging.statistics.collect_grams` returns
  exactly this for every Linen ``Dense`` layer. Sums or means over examples both work (only the relative scale
  across models matters: sums weigh models by their data size, as the paper's derivation; means weigh them
  equally, as its code).

  Args:
    params_list: the models.
    grams: one Gram pytree per model, all with the same key paths, each present in the parameters.
    alpha: the off-diagonal scale in [0, 1] (0 uses only the diagonal).
    weights: optional ``(k,)`` model coefficients; Gram matrices are scaled by them and the averaged leaves use
      them normalised.

  References:
    Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023.

  Example:
    >>> grams = [collect_grams(model, p, s, data, batch_size=256) for p, s, data in members]
    >>> merged = regmean([p for p, _, _ in members], grams, alpha=0.9)
  """
  k = _check_list(params_list, "regmean")
  if len(grams) != k:
    raise ValueError(f"regmean: grams has {len(grams)} entries but params_list has {k}")
  _check_trees(list(grams), [f"grams[{i}]" for i in range(k)], "regmean")
  w = _weight_vector(weights, k, "regmean")
  flat_grams = [{jax.tree_util.keystr(p): g for p, g in jax.tree_util.tree_flatten_with_path(tree)[0]}
                for tree in grams]
  param_paths = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params_list[0])[0]}
  for path, g in flat_grams[0].items():
    kernel = param_paths.get(path)
    if kernel is None:
      raise ValueError(f"regmean: grams have {path} but the parameters have no leaf there")
    n = jnp.shape(kernel)[0] if jnp.ndim(kernel) == 2 else None
    if n is None or jnp.shape(g) != (n, n):
      raise ValueError(f"regmean: the Gram at {path} has shape {jnp.shape(g)}, but the parameter there has shape "
                       f"{jnp.shape(kernel)}; a (in, out) kernel needs an (in, in) Gram")
  w_mean = w / jnp.sum(w)

  def leaf(path, *leaves):
    key = jax.tree_util.keystr(path)
    if key in flat_grams[0]:
      merged = _regmean_kernel(leaves, [g[key] for g in flat_grams], w, alpha)
    else:
      merged = _weighted_sum(w_mean, leaves)
    return merged.astype(leaves[0].dtype)

  return jax.tree_util.tree_map_with_path(leaf, *params_list)


@_checked
@jax.jit
def negmerge(params_list: Sequence[Pytree], *, base: Pytree, scale) -> Pytree:
  """NegMerge: negate the sign-consensual part of several forget-set task vectors.

  ``params_list`` are models fine-tuned on the forget set from ``base`` (e.g. with different hyperparameters).
  An entry is kept only where all task vectors are non-zero with the same sign; kept entries take the mean over
  the k task vectors (as the authors' code), the others 0; the result is ``base - scale * merged``.

  Args:
    params_list: models fine-tuned on the forget set.
    base: the Original model.
    scale: the negation coefficient (positive forgets).

  References:
    Kim et al., "NegMerge: Sign-Consensual Weight Merging for Machine Unlearning", ICML 2025.

  Example:
    >>> unlearned = negmerge([ft_lr1, ft_lr2, ft_lr3], base=original, scale=1.0)
  """

  def merge_tensor(ds, stats):
    del stats
    consistent = jnp.abs(_sum([jnp.sign(d) for d in ds])) == len(ds)
    return jnp.where(consistent, _sum(ds) / len(ds), 0)

  return _apply_deltas("negmerge", params_list, base, merge_tensor, -scale)


# ----------------------------------------------------------------------------------------------------------------
# mergekit's own methods (no paper code beyond mergekit: mergekit is the reference).


def _norm(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims))


def _work_dtype(x: jax.Array):
  return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


@_checked
@functools.partial(jax.jit, static_argnames=("density",))
def sce(params_list: Sequence[Pytree], *, base: Pytree, density: float = 1.0) -> Pytree:
  """SCE: select the entries where the task vectors vary most, weight each model by its energy, erase
  minority signs.

  Per tensor: with ``density < 1`` only the ``floor(density * m)`` entries of largest variance across the k task
  vectors are kept (``m`` the number of entries of non-zero variance); each model's weight is the mean square of
  its (selected) task vector, normalised to sum 1 (uniform if the sum is below 1e-6); signs are elected as in
  mergekit's TIES (+ where the sum is 0), and the merged delta is
  ``sum_i w_i m_i tau_i / max(sum_i w_i m_i, 1e-6)`` with ``m_i`` the agreement mask.

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    density: mergekit's ``select_topk``, the fraction of varying entries kept (static).

  References:
    Wan et al., "FuseChat: Knowledge Fusion of Chat Models", arXiv:2408.07990, 2024 (SCE); mergekit's ``sce``.

  Example:
    >>> merged = sce([p1, p2, p3], base=p0, density=0.5)
  """
  k = _check_list(params_list, "sce", base=base)
  (density,) = _per_model(density, 1, "density", "sce", low=0.0, high=1.0, low_open=False)

  def leaf(b, *ps):
    tvs = [p - b for p in ps]
    if density <= 0.0:
      return b
    if density < 1.0:
      mean = _sum(tvs) / k
      var = _sum([jnp.square(tv - mean) for tv in tvs]) / k
      keep = jnp.floor(jnp.sum(var != 0).astype(jnp.float32) * density).astype(jnp.int32)
      bits = _magnitude_bits(var)
      (kth,) = _kth_largest(lambda: [bits], [jnp.maximum(keep, 1)])
      selected = (bits >= kth) & (keep > 0)
      tvs = [jnp.where(selected, tv, 0) for tv in tvs]
    elected, total = _elect(tvs, True)
    energy = jnp.stack([jnp.mean(jnp.square(tv)) for tv in tvs])
    energy_sum = jnp.sum(energy)
    w = jnp.where(jnp.abs(energy_sum) < 1e-6, 1.0 / k, energy / jnp.where(energy_sum == 0, 1, energy_sum))
    agree = [jnp.where(elected > 0, tv > 0, tv < 0) for tv in tvs]
    merged = _sum([jnp.where(a, w[i] * tv, 0) for i, (a, tv) in enumerate(zip(agree, tvs))])
    divisor = _sum([jnp.where(a, w[i], 0).astype(merged.dtype) for i, a in enumerate(agree)])
    merged = jnp.where(jnp.isnan(total), total, merged / jnp.maximum(divisor, 1e-6))
    return (b + merged).astype(b.dtype)

  return jax.tree.map(leaf, base, *params_list)


@_checked
@functools.partial(jax.jit, static_argnames=("max_iter",))
def karcher(params_list: Sequence[Pytree], *, weights=None, max_iter: int = 10, tol: float = 1e-5) -> Pytree:
  """The Karcher (Riemannian) mean of the models' directions on the unit sphere, scaled by their mean norm.

  Per tensor: each model is split into its norm and unit direction; directions of norm at most ``tol`` are left
  out. Starting from the normalised weighted mean direction, up to ``max_iter`` steps move along the weighted
  mean of the log maps ``theta_i / sin(theta_i) (u_i - cos(theta_i) m)`` (terms with ``theta_i < tol`` skipped)
  and stop once that tangent's norm is below ``tol``. The result is ``sum_i w_i |x_i|`` times the mean
  direction (0 if every norm is below ``tol``). Default weights are ``1/k``, as mergekit's ``karcher``.

  Args:
    params_list: the models (mergekit merges every input, its base included).
    weights: optional ``(k,)`` weights (default ``1/k`` each).
    max_iter: the most steps (static).
    tol: the norm and angle tolerance.

  References:
    Karcher, "Riemannian center of mass and mollifier smoothing", Comm. Pure Appl. Math. 1977; mergekit's
    ``karcher``.

  Example:
    >>> merged = karcher([p1, p2, p3])
  """
  k = _check_list(params_list, "karcher")
  alpha = jnp.full((k,), 1.0 / k, jnp.float32) if weights is None else _weight_vector(weights, k, "karcher")

  def leaf(*ps):
    if k == 1:
      return ps[0]
    dtype = _work_dtype(ps[0])
    xs = [p.astype(dtype) for p in ps]
    norms = [_norm(x) for x in xs]
    units = [jnp.where(n == 0, 0, x / jnp.where(n == 0, 1, n)) for x, n in zip(xs, norms)]
    valid = jnp.stack([n > tol for n in norms])
    a = jnp.where(valid, alpha.astype(dtype), 0)
    a = a / jnp.where(jnp.sum(a) == 0, 1, jnp.sum(a))
    first = units[-1]
    for i in reversed(range(k)):
      first = jnp.where(valid[i], units[i], first)
    mean = _sum([a[i] * u for i, u in enumerate(units)])
    mean_norm = _norm(mean)
    mean = jnp.where(mean_norm < tol, first, mean / jnp.where(mean_norm < tol, 1, mean_norm))

    def step(state):
      i, mean, _ = state
      dots = [jnp.clip(jnp.sum(mean * u), -1.0, 1.0) for u in units]
      thetas = [jnp.arccos(d) for d in dots]
      coefs = [jnp.where(valid[j] & (th >= tol), a[j] * th / jnp.where(th >= tol, jnp.sin(th), 1), 0)
               for j, th in enumerate(thetas)]
      tangent = _sum([c * (u - d * mean) for c, u, d in zip(coefs, units, dots)])
      tn = _norm(tangent)
      done = tn < tol
      moved = jnp.cos(tn) * mean + jnp.sin(tn) * (tangent / jnp.where(done, 1, tn))
      moved_norm = _norm(moved)
      moved = jnp.where(moved_norm > tol, moved / jnp.where(moved_norm > tol, moved_norm, 1), moved)
      return i + 1, jnp.where(done, mean, moved), done

    _, mean, _ = jax.lax.while_loop(lambda s: (s[0] < max_iter) & ~s[2], step, (0, mean, jnp.bool_(False)))
    scale = _sum([alpha[i].astype(dtype) * n for i, n in enumerate(norms)])
    return jnp.where(jnp.any(valid), scale * mean, 0).astype(ps[0].dtype)

  return jax.tree.map(leaf, *params_list)


@_checked
@functools.partial(jax.jit, static_argnames=("row_wise", "flatten"))
def nuslerp(params_list: Sequence[Pytree], *, base: Pytree | None = None, weights=None, row_wise: bool = False,
            flatten: bool = True, eps: float = 1e-8) -> Pytree:
  """NuSLERP: SLERP of two models (or, with ``base``, of their task vectors) with ``t = w_2 / (w_1 + w_2)``.

  ``t`` is 0.5 when the weights sum to less than 1e-6 in magnitude. With ``flatten`` (the default) each tensor
  is one vector; otherwise every row along the last axis (or, with ``row_wise``, along the first) is
  interpolated on its own. Rows whose directions are colinear (``1 - cos^2 <= eps^2``) are interpolated
  linearly. With ``base`` the result is ``base + slerp(tau_1, tau_2)``.

  Args:
    params_list: exactly two models.
    base: optional common base.
    weights: ``(2,)`` relative weights (default equal).
    row_wise: interpolate the vectors along the first axis (mergekit's ``nuslerp_row_wise``; static).
    flatten: one vector per tensor (mergekit's ``nuslerp_flatten``; static).
    eps: the colinearity tolerance.

  References:
    Shoemake, SIGGRAPH 1985; mergekit's ``nuslerp``.

  Example:
    >>> merged = nuslerp([p1, p2], base=p0, weights=[1.0, 2.0])
  """
  k = _check_list(params_list, "nuslerp", base=base)
  if k != 2:
    raise ValueError(f"nuslerp: needs exactly two models, got {k}")
  w = _weight_vector(weights, 2, "nuslerp")
  total = w[0] + w[1]
  t = jnp.where(jnp.abs(total) < 1e-6, 0.5, w[1] / jnp.where(total == 0, 1, total))

  def interpolate(v0, v1):
    # The vectors are the whole tensor (flatten), its rows along the last axis, or (row_wise) along the first;
    # reducing over those axes instead of reshaping keeps a sharded tensor's layout.
    red = None if flatten or v0.ndim == 0 else 0 if row_wise else -1
    norm = lambda x: _norm(x, axis=red, keepdims=red is not None)
    u0, u1 = v0 / jnp.maximum(norm(v0), 1e-7), v1 / jnp.maximum(norm(v1), 1e-7)
    cos = jnp.clip(jnp.sum(u0 * u1, axis=red, keepdims=red is not None), -1, 1)
    colinear = (1 - jnp.square(cos)) <= eps**2
    theta = jnp.arccos(jnp.where(colinear, 0, cos))
    sin_theta = jnp.where(colinear, 1, jnp.sin(theta))
    tt = t.astype(v0.dtype)
    res = (jnp.sin((1 - tt) * theta) * v0 + jnp.sin(tt * theta) * v1) / sin_theta
    return jnp.where(colinear, (1 - tt) * v0 + tt * v1, res)

  if base is None:
    return jax.tree.map(lambda x, y: interpolate(x, y).astype(x.dtype), *params_list)
  return jax.tree.map(lambda b, x, y: (b + interpolate(x - b, y - b)).astype(b.dtype), base, *params_list)


@_checked
@functools.partial(jax.jit, static_argnames=("normalize_weights",))
def multislerp(params_list: Sequence[Pytree], *, base: Pytree | None = None, weights=None,
               normalize_weights: bool = True, eps: float = 1e-8) -> Pytree:
  """Multi-SLERP: barycentric interpolation of k models (or task vectors, with ``base``) on the hypersphere.

  Per tensor: the unit directions ``u_i = x_i / (|x_i| + eps)`` are averaged with the weights and normalised
  (``m``); their tangent components at ``m`` are averaged (``v``), mapped back by the exponential map
  ``m cos|v| + v sin|v| / |v|`` (``|v|`` offset by ``eps``), and scaled by ``sum_i w_i |x_i|``. Where the weighted
  mean direction vanishes (antipodal inputs with balanced weights) two models are combined linearly and more
  give NaN (mergekit raises there). One model is returned as it is.

  Args:
    params_list: the models.
    base: optional common base; the task vectors are interpolated and added back.
    weights: ``(k,)`` weights (default equal), normalised to sum 1 unless ``normalize_weights=False``.
    normalize_weights: see above (static).
    eps: the stabiliser.

  References:
    Goddard, "Multi-SLERP" (https://goddard.blog/posts/multislerp-wow-what-a-cool-idea); mergekit's
    ``multislerp``.

  Example:
    >>> merged = multislerp([p1, p2, p3], base=p0, weights=[1.0, 1.0, 2.0])
  """
  k = _check_list(params_list, "multislerp", base=base)
  w = _weight_vector(weights, k, "multislerp")
  if normalize_weights:
    w = w / jnp.sum(w)

  def leaf(b, *ps):
    if k == 1:
      return ps[0]
    xs = [p if b is None else p - b for p in ps]
    wd = w.astype(xs[0].dtype)
    norms = [_norm(x) for x in xs]
    units = [x / (n + eps) for x, n in zip(xs, norms)]
    mean = _sum([wd[i] * u for i, u in enumerate(units)])
    mean_norm = _norm(mean)
    degenerate = mean_norm < eps
    mean = mean / jnp.where(degenerate, 1, mean_norm)
    tangent = _sum([wd[i] * (u - jnp.sum(u * mean) * mean) for i, u in enumerate(units)])
    tn = _norm(tangent) + eps
    res = (mean * jnp.cos(tn) + tangent * (jnp.sin(tn) / tn)) * _sum([wd[i] * n for i, n in enumerate(norms)])
    fallback = _sum([wd[i] * x for i, x in enumerate(xs)]) if k == 2 else jnp.full_like(res, jnp.nan)
    res = jnp.where(degenerate, fallback, res)
    return (res if b is None else b + res).astype(ps[0].dtype)

  if base is None:
    return jax.tree.map(lambda *ps: leaf(None, *ps), *params_list)
  return jax.tree.map(leaf, base, *params_list)


@_checked
@jax.jit
def nearswap(params: Pytree, *, base: Pytree, t) -> Pytree:
  """NearSwap: take the other model's value where it is close to the base, keep the base where they differ.

  Per entry, ``w = clip(t / max(|base - params|, 1e-6), 0, 1)`` and the result is ``w params + (1 - w) base``:
  entries within ``t`` of each other become ``params``', distant ones move towards it by ``t`` only.

  Args:
    params: the other model.
    base: the base model.
    t: the similarity threshold (may be traced).

  References:
    alchemonaut, "QuartetAnemoi-70B-t0.0001" (https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001);
    mergekit's ``nearswap``.

  Example:
    >>> merged = nearswap(p1, base=p0, t=1e-4)
  """
  _check_list([params], "nearswap", base=base)

  def leaf(a, b):
    w = jnp.clip(t / jnp.maximum(jnp.abs(a - b), 1e-6), 0, 1).astype(a.dtype)
    return (w * b + (1 - w) * a).astype(a.dtype)

  return jax.tree.map(leaf, base, params)


@_checked
@jax.jit
def passthrough(params: Pytree, *, scale=None) -> Pytree:
  """mergekit's ``passthrough``: one model, optionally multiplied by ``scale`` (a scalar or a pytree of them).

  With layer slices (:func:`unlearn_jax.merging.mergekit.stack_layers`) this builds a "frankenmerge" from blocks
  of several models.

  References:
    mergekit's ``passthrough``.

  Example:
    >>> halved = passthrough(p1, scale=0.5)
  """
  if scale is None:
    return params
  scales = _per_leaf(scale, params, "scale", "passthrough")
  return jax.tree.map(lambda x, s: (x * s).astype(x.dtype), params, scales)
