"""Device meshes, FSDP sharding rules, placement of parameters, optimiser state and copies, and gathering.

The batch is sharded over the ``data`` axis of a ``(data, fsdp)`` mesh. Parameters are placed by rules: an
ordered list of ``(key-path regex, kind)`` pairs, the first whose regex ``re.search``-es a leaf's
``jax.tree_util.keystr`` path deciding its `jax.P`:

* ``'replicate'``: ``P()``, a full copy on every device;
* ``'fsdp'`` (optionally ``(regex, 'fsdp', min_size)``): the largest dimension divisible by the ``fsdp`` axis
  size is split over it (ZeRO-3 / FSDP storage), leaves under ``min_size`` entries stay replicated;
* a `jax.P` given explicitly (checked against the leaf's rank and the mesh).

Meshes use explicit axis types, so a shard's layout is part of its array type (``jax.typeof(x).sharding``) and
jitted code keeps it. Optimiser states, masks and frozen copies mirror the parameter tree: `place` with
``like=params`` gives every leaf whose key path ends with a parameter's path (and has its shape) that
parameter's sharding, e.g. ``[0].trace['Dense_0']['kernel']`` of an SGD momentum or
``['frozen']['teacher'][0]['Dense_0']['kernel']`` of a teacher copy; other leaves follow the rules (scalars such
as step counts are always replicated). `init_opt_state` initialises optimiser state directly in that layout.

Compute follows FSDP: a step keeps parameters sharded between steps and `gather`s them (an all-gather inside the
jitted step, never a host copy) just before the forward pass; the transpose of that gather is a reduce-scatter, so
gradients, optimiser updates and the new parameters come out sharded like the parameters. `gathered` wraps a loss
``fn(params, state, ...)`` that way and gives the returned state back its input sharding; `fsdp_model` wraps a
`unlearn_jax.model.Model` so that any function running it (saliency, evaluation, matching) accepts sharded
parameters. Both are the identity for replicated inputs.

References:
  Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel", VLDB 2023; Rajbhandari et al.,
  "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020; the JAX documentation on
  explicit sharding (``jax.sharding.reshard``, ``AxisType.Explicit``) and the FSDP example of its
  distributed-arrays tutorial.

Example:
    >>> mesh = make_mesh(data=2, fsdp=4)
    >>> with jax.set_mesh(mesh):
    ...   params = place(params, mesh, rules=((r"kernel", "fsdp", 1024), (".*", "replicate")))
    ...   opt_state = init_opt_state(tx, params, mesh)
    ...   loss_fn = gathered(classification_loss(model))     # all-gathers the weights inside the step
"""
from __future__ import annotations

import contextlib
import functools
import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

DATA = "data"
FSDP = "fsdp"


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ``(data, fsdp)`` mesh with explicit axis types; ``-1`` takes the remaining devices.

  Raises:
    ValueError: if the axis sizes do not multiply to the number of devices.
  """
  devices = list(devices) if devices is not None else jax.devices()
  sizes = mesh_sizes(data, fsdp, len(devices))
  return jax.make_mesh((sizes[DATA], sizes[FSDP]), (DATA, FSDP),
                       axis_types=(AxisType.Explicit, AxisType.Explicit), devices=devices)


def mesh_sizes(data: int, fsdp: int, n: int) -> dict[str, int]:
  """``{'data': ..., 'fsdp': ...}`` for ``n`` devices (``-1``: the remaining ones); ValueError if they do not
  fit."""
  sizes = {DATA: data, FSDP: fsdp}
  unknown = [k for k, v in sizes.items() if v == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
  known = math.prod(v for v in sizes.values() if v != -1)
  if any(v == 0 or v < -1 for v in sizes.values()):
    raise ValueError(f"mesh: axis sizes must be positive or -1, got {sizes}")
  if unknown:
    if n % known:
      raise ValueError(f"mesh: {n} devices are not divisible by the fixed axes {sizes}")
    sizes[unknown[0]] = n // known
  if math.prod(sizes.values()) != n:
    raise ValueError(f"mesh: axis sizes {sizes} do not multiply to the {n} available devices")
  return sizes


def check_mesh_config(config) -> None:
  """Before any work: ``config.mesh``'s ``data``/``fsdp`` fit the local devices (skipped with ``multihost``,
  whose devices are known only after `jax.distributed.initialize`); ValueError ``config.mesh.<axis>=<size>:
  ...`` otherwise."""
  if config.get("multihost", False):
    return
  data, fsdp = config.get("data", -1), config.get("fsdp", 1)
  key, value = ("data", data) if data != -1 else ("fsdp", fsdp)
  try:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (data, fsdp)):
      raise ValueError("mesh: axis sizes must be integers (-1: the remaining devices)")
    mesh_sizes(data, fsdp, jax.device_count())
  except ValueError as e:
    raise ValueError(f"config.mesh.{key}={value!r}: {str(e).removeprefix('mesh: ')}") from e


def mesh_from_config(config) -> jax.sharding.Mesh:
  """Mesh from a ``config.mesh`` ConfigDict with fields ``data``, ``fsdp`` and ``multihost``.

  With ``multihost`` true, `jax.distributed.initialize` runs first (coordinator and process ids from the
  environment, as on Cloud TPU or SLURM), so ``jax.devices()`` spans every host; it is never called otherwise.
  """
  if config.get("multihost", False):
    jax.distributed.initialize()
  return make_mesh(data=config.get("data", -1), fsdp=config.get("fsdp", 1))


def use_mesh(mesh):
  """``jax.set_mesh(mesh)`` as a context manager, or a no-op context for ``mesh=None``."""
  return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def replicated(mesh) -> jax.NamedSharding:
  return jax.NamedSharding(mesh, jax.P())


def replicate(tree: Any, mesh) -> Any:
  """Places every leaf of ``tree`` fully replicated on ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def current_mesh() -> jax.sharding.Mesh | None:
  """The concrete mesh set by ``jax.set_mesh`` around the caller, or None outside any mesh."""
  mesh = jax.sharding.get_mesh()
  return None if mesh.empty else mesh


# ---------------------------------------------------------------------------------------------------------------
# Rules.

MIN_SIZE = 2**14
# Every leaf FSDP-sharded where it is large enough; with ``fsdp=1`` (the default mesh) everything is replicated.
DEFAULT_RULES: tuple = ((".*", "fsdp"),)
KINDS = ("replicate", "fsdp")


def fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int = MIN_SIZE) -> jax.P:
  """Shards the largest dimension divisible by ``axis_size``; small or indivisible leaves stay replicated."""
  if axis_size <= 1 or math.prod(shape) < min_size:
    return jax.P()
  for dim in np.argsort(shape, kind="stable")[::-1]:
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = FSDP
      return jax.P(*spec)
  return jax.P()


def _check_spec(spec: jax.P, shape: tuple[int, ...], mesh, name: str) -> jax.P:
  if len(spec) > len(shape):
    raise ValueError(f"sharding rule for {name}: spec {spec} has more entries than the leaf's rank {len(shape)}")
  for dim, entry in enumerate(spec):
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    for axis in axes:
      if axis not in mesh.shape:
        raise ValueError(f"sharding rule for {name}: mesh has no axis {axis!r} (axes: {tuple(mesh.shape)})")
    size = math.prod(mesh.shape[a] for a in axes)
    if shape[dim] % size:
      raise ValueError(f"sharding rule for {name}: dimension {dim} of shape {shape} is not divisible by {size} "
                       f"devices of {axes}")
  return spec


def spec_for(name: str, shape: tuple[int, ...], mesh, rules: Sequence[tuple] = DEFAULT_RULES) -> jax.P:
  """The `jax.P` the first matching rule gives a leaf with key path ``name`` and ``shape``.

  Raises:
    ValueError: on a malformed or unknown rule, a spec that does not fit the leaf, or a leaf no rule matches
      (naming its path).
  """
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) not in (2, 3):
      raise ValueError(f"sharding rule {rule!r}: expected (regex, kind) or (regex, 'fsdp', min_size)")
    pattern, kind, *extra = rule
    if not re.search(pattern, name):
      continue
    if isinstance(kind, jax.P):
      return _check_spec(kind, shape, mesh, name)
    if kind == "replicate" and not extra:
      return jax.P()
    if kind == "fsdp":
      return fsdp_spec(shape, mesh.shape.get(FSDP, 1), *extra)
    raise ValueError(f"sharding rule for {pattern!r}: unknown kind {kind!r} (use one of {KINDS}, with a "
                     "min_size only for 'fsdp', or a jax.P)")
  raise ValueError(f"no sharding rule matches parameter {name}")


def rules_from_config(config) -> tuple:
  """The rules of a ``config.mesh`` section: its ``rules`` field if it has one, else `DEFAULT_RULES`."""
  rules = config.get("rules", None)
  return DEFAULT_RULES if rules is None else tuple(tuple(r) for r in rules)


def shardings_by_rule(tree: Any, mesh, rules: Sequence[tuple] = ((".*", "replicate"),)) -> Any:
  """A pytree of `NamedSharding` for ``tree`` (arrays or ShapeDtypeStructs) from rules; see `spec_for`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jax.NamedSharding(mesh, spec_for(jax.tree_util.keystr(path), tuple(leaf.shape), mesh,
                                                          rules)), tree)


def _sharding_of(leaf) -> jax.sharding.Sharding:
  return leaf if isinstance(leaf, jax.sharding.Sharding) else leaf.sharding


def mirror_shardings(tree: Any, like: Any, mesh, rules: Sequence[tuple] = DEFAULT_RULES) -> Any:
  """Shardings for ``tree`` in which every leaf that mirrors a leaf of ``like`` gets that leaf's sharding.

  A leaf mirrors ``like``'s leaf at path ``q`` when its own key path ends with ``q`` and the shapes agree
  (optimiser moments, masks, teacher copies); the longest such ``q`` wins. Other leaves follow ``rules``.

  Args:
    tree: arrays or ShapeDtypeStructs.
    like: placed arrays (or `jax.sharding.Sharding` leaves), e.g. the parameters.
    mesh: the mesh of the rule-placed leaves.
    rules: for the leaves that mirror nothing.
  """
  table = {tuple(path): (tuple(leaf.shape) if hasattr(leaf, "shape") else None, _sharding_of(leaf))
           for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]}
  lengths = sorted({len(p) for p in table}, reverse=True)

  def one(path, leaf):
    path = tuple(path)
    for n in lengths:
      if n <= len(path) and path[len(path) - n:] in table:
        shape, sharding = table[path[len(path) - n:]]
        if shape is None or shape == tuple(leaf.shape):
          return sharding
    return jax.NamedSharding(mesh, spec_for(jax.tree_util.keystr(path), tuple(leaf.shape), mesh, rules))

  return jax.tree_util.tree_map_with_path(one, tree)


def place(tree: Any, mesh, rules: Sequence[tuple] = DEFAULT_RULES, *, like: Any = None) -> Any:
  """Puts ``tree`` on ``mesh`` by ``rules`` (and, with ``like``, mirrored leaves like ``like``'s).

  Use it for the parameters (``place(params, mesh, rules)``), then for everything shaped after them:
  ``place(mask, mesh, rules, like=params)``, ``place(carried_state, mesh, rules, like=params)``.
  """
  shardings = (shardings_by_rule(tree, mesh, rules) if like is None
               else mirror_shardings(tree, like, mesh, rules))
  return jax.device_put(tree, shardings)


def init_opt_state(tx, params: Any, mesh, rules: Sequence[tuple] = DEFAULT_RULES) -> Any:
  """``tx.init(params)`` built on device in the parameters' layout: moments sharded like the parameters
  they mirror, counters replicated (`mirror_shardings`). Without a mesh, plain ``tx.init``.
  """
  if mesh is None:
    return tx.init(params)
  shardings = mirror_shardings(jax.eval_shape(tx.init, params), params, mesh, rules)
  with jax.set_mesh(mesh):
    return jax.jit(tx.init, out_shardings=shardings)(params)


def abstract_init(init_fn, mesh, rules: Sequence[tuple] = DEFAULT_RULES, *args):
  """``(abstract, shardings, init)``: the ShapeDtypeStructs of ``init_fn(*args)`` (`jax.eval_shape`, nothing
  computed), their shardings by ``rules``, and ``jax.jit(init_fn, out_shardings=shardings)``, which builds each
  leaf directly in its shards (no device ever holds the whole of a sharded leaf).
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = shardings_by_rule(abstract, mesh, rules)
  return abstract, shardings, jax.jit(init_fn, out_shardings=shardings)


def bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of ``tree`` (arrays, or ShapeDtypeStructs with a sharding): the largest shard."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


# ---------------------------------------------------------------------------------------------------------------
# FSDP compute: gather inside the step, keep storage sharded.


def _is_sharded(x) -> bool:
  if not hasattr(x, "shape") or not jnp.ndim(x):
    return False
  return any(s is not None for s in jax.typeof(x).sharding.spec)


def gather(tree: Any) -> Any:
  """Every sharded leaf of ``tree`` resharded to ``P()`` (an all-gather inside jitted code); others unchanged.

  Differentiable: the gradient of a gathered leaf comes back with the leaf's own sharding (a reduce-scatter).
  """
  return jax.tree.map(lambda x: jax.sharding.reshard(x, jax.P()) if _is_sharded(x) else x, tree)


def reshard_like(tree: Any, reference: Any) -> Any:
  """``tree`` with each leaf resharded to the sharding spec of the same leaf of ``reference``."""

  def one(x, ref):
    if not hasattr(x, "shape") or not hasattr(ref, "shape"):
      return x
    want = jax.typeof(ref).sharding.spec
    return x if jax.typeof(x).sharding.spec == want else jax.sharding.reshard(x, want)

  return jax.tree.map(one, tree, reference)


def gathered(fn: Callable) -> Callable:
  """Wraps ``fn(params, state, *args) -> (loss, (new_state, aux))`` to run on gathered ``params`` and ``state``.

  The new state is handed back with ``state``'s shardings, so it can be a `jax.lax.scan` carry. This is the
  FSDP step: storage stays sharded, each step all-gathers the weights it computes with.
  """

  @functools.wraps(fn)
  def wrapped(params, state, *args, **kwargs):
    if not any(_is_sharded(x) for x in jax.tree.leaves((params, state))):
      return fn(params, state, *args, **kwargs)  # replicated or unplaced: exactly ``fn``
    loss, (new_state, aux) = fn(gather(params), gather(state), *args, **kwargs)
    return loss, (reshard_like(new_state, state), aux)

  return wrapped


def fsdp_model(model):
  """A `unlearn_jax.model.Model` whose functions gather sharded ``params``/``state`` before running.

  ``apply`` returns its new state with the input state's shardings. For replicated inputs every function is
  the same as ``model``'s.
  """

  def apply(params, state, x, **kwargs):
    if not any(_is_sharded(v) for v in jax.tree.leaves((params, state))):
      return model.apply(params, state, x, **kwargs)
    logits, new_state = model.apply(gather(params), gather(state), x, **kwargs)
    return logits, reshard_like(new_state, state)

  def wrap(fn):
    return None if fn is None else functools.wraps(fn)(lambda params, state, x: fn(gather(params), gather(state), x))

  return model._replace(apply=apply, features=wrap(model.features), intermediates=wrap(model.intermediates))


# ---------------------------------------------------------------------------------------------------------------
# Selection without gathering.


def flat_index(shape: tuple[int, ...], dtype=jnp.int32, out_sharding=None) -> jax.Array:
  """Row-major flat index of every entry of an array of ``shape``, as ``dtype`` (laid out by ``out_sharding``,
  default unsharded); the caller makes sure the size fits ``dtype``."""
  if not shape:
    return jnp.zeros((), dtype)
  strides = np.cumprod((1,) + tuple(shape)[:0:-1])[::-1]
  return sum(jnp.asarray(int(stride), dtype) * jax.lax.broadcasted_iota(dtype, shape, dim, out_sharding=out_sharding)
             for dim, stride in enumerate(strides))


def flat_positions(x: jax.Array, dtype=jnp.int32) -> jax.Array:
  """`flat_index` of ``x``'s shape, laid out (sharded) like ``x``."""
  return flat_index(x.shape, dtype, jax.typeof(x).sharding if _is_sharded(x) else None)


def _bisect(count_at_least: Callable, lo: int, hi: int, need) -> jax.Array:
  """The largest ``v`` in ``[lo, hi]`` with ``count_at_least(v) >= need`` (``count_at_least`` non-increasing)."""

  def step(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo + 1) // 2
    ok = count_at_least(mid) >= need
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  return jax.lax.fori_loop(0, 32, step, (jnp.int32(lo), jnp.int32(hi)))[0]


def _select(bits: list, pos: list, k, total: int) -> list:
  """`top_k_mask`'s selection over int32 bit patterns ``bits`` with flat positions ``pos`` (leaf by leaf)."""
  count = lambda pred: sum(jnp.sum(pred(i, b), dtype=jnp.int32) for i, b in enumerate(bits))
  threshold = _bisect(lambda v: count(lambda i, b: b >= v), 0, 0x7F800000, k)
  need = k - count(lambda i, b: b > threshold)
  # the smallest position bound P with `need` ties before it: the largest P' with fewer than `need`, plus 1
  bound = _bisect(lambda v: -count(lambda i, b: (b == threshold) & (pos[i] < v)), 0, total, 1 - need) + 1
  return [((b > threshold) | ((b == threshold) & (p < bound))) & (k > 0) for b, p in zip(bits, pos)]


@jax.jit
def top_k_mask(scores: Any, k: int | jax.Array) -> Any:
  """Bools marking the ``k`` largest entries of a non-negative float pytree, ties broken by position.

  The same selection as a stable descending sort of all entries concatenated in leaf order (``ravel_pytree``)
  keeping the first ``k``, but computed by two bisections of 32 elementwise comparisons and counts each: one on
  the float32 bit patterns (which order like the values for non-negative floats) for the threshold value, one
  on the flat position for the ties at the threshold. Nothing is sorted; when a leaf is sharded nothing is
  reshaped or concatenated either, so sharded leaves stay sharded and the mask comes out laid out like ``scores``
  (unsharded leaves are concatenated, which compiles to a much smaller program). Counts are int32 (up to 2**31
  entries).
  ``k`` is traced: masks of every size share one compiled program (a sweep over mask fractions compiles once).
  """
  leaves, treedef = jax.tree.flatten(scores)
  bits = [jax.lax.bitcast_convert_type(jnp.abs(s).astype(jnp.float32), jnp.int32) for s in leaves]
  offsets = np.cumsum([0] + [int(np.prod(s.shape)) for s in leaves])
  if leaves and not any(_is_sharded(s) for s in leaves):
    # unsharded: the same selection on the leaves concatenated, one comparison per bisection step instead of one
    # per leaf (a U-Net's 79 leaves: 3.6 s of XLA:CPU compilation -> a fraction of a second), then split back
    flat = _select([jnp.concatenate([b.ravel() for b in bits])], [jnp.arange(int(offsets[-1]), dtype=jnp.int32)],
                   k, int(offsets[-1]))[0]
    masks = [m.reshape(s.shape) for m, s in zip(jnp.split(flat, offsets[1:-1]), leaves)]
  else:
    masks = _select(bits, [flat_positions(s) + int(o) for s, o in zip(leaves, offsets)], k, int(offsets[-1]))
  return jax.tree.unflatten(treedef, masks)


def batch_spec(ndim: int, leading: int = 1) -> jax.P:
  """Spec for an array whose axis ``leading`` is the batch: that axis over ``data``, the rest replicated."""
  spec = [None] * ndim
  spec[leading] = DATA
  return jax.P(*spec)
