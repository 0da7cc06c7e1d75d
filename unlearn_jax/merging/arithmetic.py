"""Weight-space merges: soups, task arithmetic, TIES, DARE, DELLA, Model Stock, SLERP, Fisher, RegMean, NegMerge.

Every merge is a pure function over parameter pytrees::

    merged = merge(params_list, *, base=None, **options)

``params_list`` is a sequence of pytrees of the same structure, shapes and dtypes (checked; a mismatch raises a
``ValueError`` naming the first differing key path). Methods built on task vectors take the common ``base`` (the
pre-trained or Original parameters) and work on the deltas ``tau_i = params_list[i] - base``, tensor by tensor.

The merges are jitted, with the options that change shapes or control flow static (``normalize``, ``density``,
``epsilon``, ``rescale``, ``combine``, ``axis``); ``scale``, ``weights``, ``t``, ``alpha``, ``eps`` and ``rng`` are
traced, so sweeping them does not recompile. They also trace inside a caller's jit or ``jax.eval_shape``. The merges
are elementwise maps and full-tensor reductions, so parameters sharded over an Explicit mesh keep their sharding
and are not gathered; the exceptions are DELLA's per-row magnitude ranking (only a sharded ranking axis is
gathered) and RegMean's linear solve (each Gram matrix and kernel is gathered for its solve).

Example:
    >>> merged = ties([p1, p2, p3], base=p0, density=0.2)
    >>> forgotten = task_arithmetic([p_forget], base=p_original, scale=-1.0)
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from unlearn_jax import sharding

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


def _check_density(density: float, fn: str) -> None:
  if not 0.0 < density <= 1.0:
    raise ValueError(f"{fn}: density must be in (0, 1], got {density}")


def _check_combine(combine: str, fn: str) -> None:
  if combine not in _COMBINES:
    raise ValueError(f"{fn}: combine must be one of {_COMBINES}, got {combine!r}")


def _weight_vector(weights, k: int, fn: str) -> jax.Array:
  if weights is None:
    return jnp.ones((k,), jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (k,):
    raise ValueError(f"{fn}: weights must have shape ({k},), one per model, got {weights.shape}")
  return weights


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
# into the merge; its output equals ``jax.random.bits`` (tested), so the masks are those of the jax PRNG.

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Threefry-2x32 block function (20 rounds), as ``jax.extend.random.threefry2x32_p``, in fusible jnp ops."""
  ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = ((x2 << jnp.uint32(r)) | (x2 >> jnp.uint32(32 - r))) ^ x1
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x1, x2


def _to_unit(bits: jax.Array) -> jax.Array:
  """Uniform floats in [0, 1) from the top 23 bits, exactly as ``jax.random.uniform`` makes them."""
  return (bits >> jnp.uint32(9)).astype(jnp.float32) * jnp.float32(2.0**-23)


def _uniforms(key_data: jax.Array, like: jax.Array, k: int) -> list[jax.Array]:
  """k fp32 uniform arrays shaped and sharded like ``like``, two per key of ``key_data`` (shape ``(ceil(k/2), 2)``).

  Each key's Threefry block at counter ``(0, i)`` gives 64 bits for entry ``i``: the high word drives one model
  and the low word the next, i.e. the two halves of ``jax.random.bits(key, shape, jnp.uint64)``, so the k masks
  cost ceil(k / 2) hashes.
  """
  index = sharding.flat_positions(like, jnp.uint32)  # `_apply_deltas` checks the size is below 2**32
  per_key = key_data.reshape(key_data.shape[:1] + (1,) * like.ndim + (2,))
  hi, lo = _threefry2x32(per_key[..., 0], per_key[..., 1], jnp.zeros((), jnp.uint32), index)
  return [_to_unit((hi, lo)[i % 2][i // 2]) for i in range(k)]


def _random_keep(ds: Sequence[jax.Array], key_data: jax.Array, probs: Sequence[Any], *, rescale: bool
                 ) -> list[jax.Array]:
  """Keeps each entry of ``ds[i]`` independently with probability ``probs[i]`` (broadcastable), else 0.

  With ``rescale`` the kept entries are divided by their probability. The division sits inside the select: XLA
  will not fuse a divided select into the merge's sum, and each unfused term then recomputes its hash.
  """
  us = _uniforms(key_data, ds[0], len(ds))
  return [jnp.where(u < p, d / p if rescale else d, 0) for d, u, p in zip(ds, us, probs)]


# ----------------------------------------------------------------------------------------------------------------
# Per-tensor pieces shared by the task-vector merges. ``ds`` is the list of one tensor's k task vectors; every
# piece is elementwise across the list (or a reduction over one tensor), so nothing stacks k copies.


def _elected_sign(ds: Sequence[jax.Array]) -> jax.Array:
  """TIES sign election: the sign of the summed deltas of each entry."""
  return jnp.sign(_sum(ds))


def _disjoint_mean(ds: Sequence[jax.Array]) -> jax.Array:
  """Mean, per entry, of the deltas whose sign is the elected sign (0 where the summed deltas are 0).

  Zero (trimmed or dropped) entries only match an elected sign of 0, where every term of the mean is 0 anyway.
  """
  elected = _elected_sign(ds)
  agree = [jnp.sign(d) == elected for d in ds]
  count = _sum([a.astype(jnp.int32) for a in agree])
  total = _sum([jnp.where(a, d, 0) for a, d in zip(agree, ds)])
  return total / jnp.maximum(count, 1).astype(total.dtype)


def _combine(ds: Sequence[jax.Array], combine: str) -> jax.Array:
  return _disjoint_mean(ds) if combine == "ties" else _sum(ds)


_INF_BITS = 0x7F800000  # the int32 bits of +inf; non-negative floats order like their int32 bits


def _magnitude_bits(d: jax.Array) -> jax.Array:
  """The int32 bit patterns of ``|d|`` in fp32, NaN clipped to +inf."""
  return jnp.minimum(jax.lax.bitcast_convert_type(jnp.abs(d).astype(jnp.float32), jnp.int32), _INF_BITS)


def _kth_largest_by_bisection(bits: jax.Array, keep: int) -> jax.Array:
  """The ``keep``-th largest entry of ``bits`` by bisection: 31 rounds of an elementwise comparison and a count.

  Only reductions, so a sharded tensor stays sharded (each round is one all-reduce of a scalar).
  """

  def step(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo + 1) // 2
    ok = jnp.sum(bits >= mid) >= keep
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 31, step, (jnp.int32(0), jnp.int32(_INF_BITS)))
  return lo


def _kth_largest_by_radix(bits: Sequence[jax.Array], keep: int) -> jax.Array:
  """The ``keep``-th largest entry of each tensor of ``bits`` (non-negative int32), by a two-pass radix select.

  A histogram of the high 15 bits finds the bucket holding the ``keep``-th largest value and how many of it are
  still needed; a histogram of the low 16 bits of that bucket's entries finds the value. Two passes over each
  tensor instead of bisection's 31, but each histogram is a scatter-add, which an Explicit mesh would gather.
  The k histograms are stacked (they are small) so that the scans over them are one op each.
  """
  flat = [b.reshape(-1) for b in bits]
  high = [f >> 16 for f in flat]

  def at_least(counts):  # at_least(c)[:, j] = sum of c[:, j:], with a trailing 0
    suffix = jnp.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    return jnp.concatenate([suffix, jnp.zeros((len(flat), 1), counts.dtype)], axis=1)

  def select(counts, needed):  # the largest j with at_least(counts)[:, j] >= needed, and the count above it
    c = at_least(counts)
    j = jnp.sum(c[:, :-1] >= needed[:, None], axis=1) - 1  # non-increasing, and c[:, 0] = size >= needed
    return j, jnp.take_along_axis(c, (j + 1)[:, None], axis=1)[:, 0]

  keep = jnp.full((len(flat),), keep, jnp.int32)
  bucket, above = select(jnp.stack([jnp.bincount(h, length=1 << 15) for h in high]), keep)
  low_counts = [jnp.bincount(f & 0xFFFF, weights=(h == bucket[i]).astype(jnp.int32), length=1 << 16)
                for i, (f, h) in enumerate(zip(flat, high))]
  low, _ = select(jnp.stack(low_counts), keep - above)
  return (bucket << 16) | low


def _trim(ds: Sequence[jax.Array], density: float) -> list[jax.Array]:
  """TIES trim: keeps the ``round(density * size)`` (at least 1) largest-magnitude entries of each task vector.

  The threshold is the exact ``keep``-th largest magnitude (entries tied with it are all kept), found on the
  fp32 bit patterns: by radix select, or by bisection where the tensor is sharded (so it is never gathered).
  """
  if density >= 1.0:
    return list(ds)
  size = math.prod(ds[0].shape)
  keep = min(size, max(1, round(density * size)))
  bits = [_magnitude_bits(d) for d in ds]
  if _sharded_spec(bits[0]) is not None:
    kth = [_kth_largest_by_bisection(b, keep) for b in bits]
  else:
    kth = list(_kth_largest_by_radix(bits, keep))
  return [jnp.where(b >= t, d, 0) for b, t, d in zip(bits, kth, ds)]


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


def _della_keep_probs(ds: Sequence[jax.Array], density: float, epsilon: float, axis: int) -> list[jax.Array]:
  """Keep probabilities spaced linearly in [density - epsilon, density + epsilon] by magnitude rank along axis.

  The k magnitudes of one tensor are ranked together, stacked, so that the tensor costs one sort and one scatter
  rather than k of each. The rank is the inverse permutation of the stable argsort: a scatter (or, for a tensor
  still sharded along its other axes, which an Explicit mesh refuses to scatter, the argsort of the argsort).
  """
  d0 = ds[0]
  if d0.ndim == 0:  # scalar leaves: one entry, the centre of the range
    return [jnp.full(d0.shape, density, d0.dtype)] * len(ds)
  ax = 1 + (0 if d0.ndim == 1 else axis % d0.ndim)  # the ranked axis of the (k, ...) stack
  mag, spec = _unshard_axes(jnp.stack([jnp.abs(d) for d in ds]), [ax])
  n = mag.shape[ax]
  order = jnp.argsort(mag, axis=ax)
  rank = _inverse_permutation(order, ax) if _sharded_spec(order) is None else jnp.argsort(order, axis=ax)
  rank = rank.astype(d0.dtype)
  rank_norm = rank / (n - 1) if n > 1 else jnp.full_like(rank, 0.5)
  probs = _reshard_back(density - epsilon + 2 * epsilon * rank_norm, spec)
  return [probs[i] for i in range(len(ds))]


def _apply_deltas(fn: str, params_list, base, merge_tensor: Callable, scale, *, rng=None,
                  first_pass: Callable | None = None) -> Pytree:
  """``base + scale * merge_tensor(ds)``, leaf by leaf, in base's dtype; ``ds`` lists the k task vectors.

  With ``first_pass``, ``stats = first_pass(ds)`` is computed in a pass of its own and the call becomes
  ``merge_tensor(ds, stats)``. An optimization barrier between the two makes XLA recompute ``ds`` from the inputs
  for the second pass instead of storing the k task vectors for both (k tensors of temporaries, written and
  read back). With ``rng``, ``merge_tensor`` also gets, last, this leaf's ``(ceil(k / 2), 2)`` uint32 Threefry
  keys (see :func:`_uniforms`), fresh for each leaf.
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

  def leaf(b, *rest):
    leaf_keys, ps = rest[:len(keys)], rest[len(keys):]
    stats = ()
    if first_pass is not None:
      first = first_pass([p - b for p in ps])
      first, b, ps = jax.lax.optimization_barrier((first, b, ps))
      stats = (first,)
    ds = [p - b for p in ps]
    return (b + scale * merge_tensor(ds, *stats, *leaf_keys)).astype(b.dtype)

  return jax.tree.map(leaf, base, *keys, *params_list)


# ----------------------------------------------------------------------------------------------------------------
# Public merges.


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


@jax.jit
def task_arithmetic(params_list: Sequence[Pytree], *, base: Pytree, scale) -> Pytree:
  """``base + scale * sum_i tau_i``: task addition, or with a negative ``scale`` task negation.

  Forgetting by negation fine-tunes the Original on the forget set and subtracts that task vector:
  ``task_arithmetic([finetuned_on_forget], base=original, scale=-1.0)``.

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    scale: the coefficient lambda of the summed task vectors (may be traced).

  References:
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.

  Example:
    >>> multi_task = task_arithmetic([p_a, p_b], base=p0, scale=0.4)
  """
  return _apply_deltas("task_arithmetic", params_list, base, _sum, scale)


@functools.partial(jax.jit, static_argnames=("density",))
def ties(params_list: Sequence[Pytree], *, base: Pytree, density: float, scale=1.0) -> Pytree:
  """TIES-Merging: trim, elect sign, disjoint merge.

  Per tensor: each task vector keeps its ``round(density * size)`` largest-magnitude entries (ties with the
  threshold kept too); each entry's sign is elected as the sign of the sum of the trimmed values; the merged
  delta is the mean over the models whose trimmed value is non-zero and has the elected sign (0 if none). The
  result is ``base + scale * merged``. Trimming is per tensor, as in mergekit (the paper trims over the whole
  flattened model).

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    density: the fraction in (0, 1] of each task vector's entries kept per tensor (static).
    scale: lambda, the coefficient of the merged task vector.

  References:
    Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023.

  Example:
    >>> merged = ties([p1, p2, p3], base=p0, density=0.2)
  """
  _check_density(density, "ties")
  return _apply_deltas("ties", params_list, base, lambda ds: _disjoint_mean(_trim(ds, density)), scale)


@functools.partial(jax.jit, static_argnames=("density", "rescale", "combine"))
def dare(params_list: Sequence[Pytree], *, base: Pytree, density: float, rng: jax.Array, rescale: bool = True,
         combine: str = "linear", scale=1.0) -> Pytree:
  """DARE: drop and rescale each task vector, then combine.

  Every entry of every task vector is kept independently with probability ``density`` (a fresh key per leaf and
  pair of models, see :func:`_uniforms`) and, with ``rescale``, the kept entries are divided by ``density`` so
  each delta is unbiased (the paper's rescaling; mergekit instead matches the L1 norm). ``combine='linear'``
  then sums the deltas, as the paper's task arithmetic and mergekit's ``dare_linear`` with unit weights, so with
  ``density=1`` this is exactly ``task_arithmetic(params_list, base=base, scale=scale)``; pass ``scale=1/k`` for
  a mean. ``combine='ties'`` applies TIES sign election and the disjoint mean (no magnitude trim), so with
  ``density=1`` it equals ``ties(..., density=1)``.

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    density: the keep probability in (0, 1] (static).
    rng: PRNG key.
    rescale: divide the kept entries by ``density``.
    combine: ``'linear'`` (sum) or ``'ties'`` (sign election and disjoint mean).
    scale: the coefficient of the combined delta.

  References:
    Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch",
    ICML 2024.

  Example:
    >>> merged = dare([p1, p2], base=p0, density=0.1, rng=jax.random.key(0), combine="ties")
  """
  _check_density(density, "dare")
  _check_combine(combine, "dare")

  def merge_tensor(ds, key_data):
    if density < 1.0:  # with density 1 every entry is kept: no draws
      ds = _random_keep(ds, key_data, [density] * len(ds), rescale=rescale)
    return _combine(ds, combine)

  return _apply_deltas("dare", params_list, base, merge_tensor, scale, rng=rng)


@functools.partial(jax.jit, static_argnames=("density", "epsilon", "combine", "axis"))
def della(params_list: Sequence[Pytree], *, base: Pytree, density: float, epsilon: float, rng: jax.Array,
          combine: str = "ties", scale=1.0, axis: int = -1) -> Pytree:
  """DELLA: magnitude-ranked stochastic dropping (MagPrune), rescaling, then combine.

  Along ``axis`` of every tensor of two or more dimensions (each "row"; the whole tensor for vectors), the
  entries of each task vector are ranked by magnitude and given keep probabilities spaced linearly from
  ``density - epsilon`` (smallest) to ``density + epsilon`` (largest); a one-entry row gets ``density``. Each
  entry is kept independently with its probability ``p`` and divided by ``p``. The deltas are then combined as
  in :func:`dare`: ``'ties'`` (the default, the paper's DELLA-Merging; mergekit's ``della``) or ``'linear'``
  (mergekit's ``della_linear``). With ``epsilon=0`` DELLA is DARE.

  Args:
    params_list: the fine-tuned models.
    base: the model they were fine-tuned from.
    density: the mean keep probability (static).
    epsilon: half the spread of keep probabilities; ``density +- epsilon`` must lie in (0, 1] (static).
    rng: PRNG key.
    combine: ``'ties'`` or ``'linear'``.
    scale: the coefficient of the combined delta.
    axis: the axis ranked in tensors of two or more dimensions (static). Flax kernels are ``(..., in, out)``,
      so ``-1`` ranks across output units for a fixed input; ``-2`` ranks a unit's incoming weights, which is
      the row of a PyTorch ``(out, in)`` weight.

  References:
    Deep et al., "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling",
    arXiv:2406.11617, 2024.

  Example:
    >>> merged = della([p1, p2], base=p0, density=0.5, epsilon=0.1, rng=jax.random.key(0))
  """
  _check_density(density, "della")
  _check_combine(combine, "della")
  if epsilon < 0 or density - epsilon <= 0 or density + epsilon > 1:
    raise ValueError(f"della: keep probabilities density +- epsilon = [{density - epsilon}, {density + epsilon}] "
                     "must lie in (0, 1] with epsilon >= 0")

  def merge_tensor(ds, probs, key_data):
    return _combine(_random_keep(ds, key_data, probs, rescale=True), combine)

  return _apply_deltas("della", params_list, base, merge_tensor, scale, rng=rng,
                       first_pass=lambda ds: _della_keep_probs(ds, density, epsilon, axis))


@jax.jit
def model_stock(params_list: Sequence[Pytree], *, base: Pytree, eps: float = 1e-8) -> Pytree:
  """Model Stock: interpolate the average of the fine-tuned models towards the base, per tensor.

  For each tensor, ``cos`` is the mean over pairs of models of the cosine between their task vectors (mergekit's
  reading of the paper's single angle for k > 2; norms below ``eps`` give cosine 0), and
  ``t = k cos / (1 + (k - 1) cos)``; the result is ``t * mean_i theta_i + (1 - t) * base``. One model gives
  ``t = 1``, i.e. that model.

  Args:
    params_list: k fine-tuned models.
    base: the pre-trained anchor.
    eps: the smallest task-vector norm treated as non-zero.

  References:
    Jang et al., "Model Stock: All we need is just a few fine-tuned models", ECCV 2024.

  Example:
    >>> merged = model_stock([p1, p2, p3], base=p0)
  """
  k = _check_list(params_list, "model_stock", base=base)

  def leaf(b, *ps):
    if k == 1:  # t = 1: the model itself
      return ps[0]
    # Three passes over the inputs: the norms, the mean cosine, the merge. Left alone, XLA computes the task
    # vectors once and keeps them for all three passes (k tensors of temporaries, written and read back); the
    # optimization barriers make each pass recompute p - b from the inputs instead, which is cheaper.
    sq = [jnp.sum(jnp.square(p - b)) for p in ps]  # |tau_i|^2
    sq, b, ps = jax.lax.optimization_barrier((sq, b, ps))
    norms = [jnp.maximum(jnp.sqrt(s), eps) for s in sq]
    # The mean over ordered pairs i != j of u_i . u_j (u_i = tau_i / norm_i) is
    # (|sum_i u_i|^2 - sum_i |u_i|^2) / (k (k - 1)).
    own = _sum([s / jnp.square(n) for s, n in zip(sq, norms)])
    cos = (jnp.sum(jnp.square(_sum([(p - b) / n for p, n in zip(ps, norms)]))) - own) / (k * (k - 1))
    t = k * cos / (1 + (k - 1) * cos)
    t, b, ps = jax.lax.optimization_barrier((t, b, ps))
    return (b + t * (_sum([p - b for p in ps]) / k)).astype(b.dtype)

  return jax.tree.map(leaf, base, *params_list)


@jax.jit
def slerp(a: Pytree, b: Pytree, *, t, eps: float = 1e-8, dot_threshold: float = 0.9995) -> Pytree:
  """Spherical linear interpolation from ``a`` (t=0) to ``b`` (t=1), per tensor.

  Each tensor is treated as one flattened vector; the angle ``omega`` is that of the two normalised vectors and
  the result is ``sin((1 - t) omega) / sin(omega) * a + sin(t omega) / sin(omega) * b``. When the normalised
  vectors are nearly colinear (``|cos omega| > dot_threshold``) it falls back to linear interpolation. Between
  unit vectors the result is a unit vector.

  Args:
    a: the start pytree.
    b: the end pytree (same structure, shapes and dtypes).
    t: the interpolation parameter (may be traced).
    eps: norms at or below ``eps`` are not normalised when measuring the angle.
    dot_threshold: the cosine above which linear interpolation is used.

  References:
    Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985; mergekit's ``slerp`` merge.

  Example:
    >>> halfway = slerp(p1, p2, t=0.5)
  """
  _check_list([a, b], "slerp")

  def leaf(x, y):
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

  return jax.tree.map(leaf, a, b)


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

  def merge_tensor(ds):
    consistent = jnp.abs(_sum([jnp.sign(d) for d in ds])) == len(ds)
    return jnp.where(consistent, _sum(ds) / len(ds), 0)

  return _apply_deltas("negmerge", params_list, base, merge_tensor, -scale)
