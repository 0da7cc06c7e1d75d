"""Populations: N models trained as one program over a leading model axis.

Population-based unlearning tests (U-LiRA, KLoM, the NeurIPS 2023 challenge score) and data attribution (TRAK,
datamodels) need tens to hundreds of models that differ only in their seed and in which training rows they see.
Here they are one pytree whose leaves carry a leading model axis ``[N, ...]``, trained together:

* `init`: ``N`` initialisations from ``N`` keys (member ``i`` is ``model_lib.init(module, keys[i], x)``);
* `fit`: `unlearn_jax.train`'s epoch machinery (`train.step_body`, `train.epoch_program`, `train.run_epochs`,
  `train.make_optimizer`) ``jax.vmap``-ped over the model axis: one jitted program per epoch (``loop='scan'``) or
  one jitted step per batch (``loop='steps'``, the CPU default), each member with its own key (data order,
  augmentation, dropout) and its own boolean row mask ``masks[i]`` over the training split;
* masks: `full_masks` (every row), `subset_masks` (random α-subsets of a fixed size, as datamodels and TRAK
  sample them), `exclude_masks` (every row but a forget set, shared or one per member);
* `plan_memory`: what a population needs per device (`jax.eval_shape`, nothing computed), checked by `fit`
  before any work;
* with a mesh (`make_mesh`, one ``model`` axis), the model axis is sharded over the devices with
  `jax.NamedSharding`: each device trains ``N / devices`` members and nothing is communicated.

Member ``i`` of ``fit(..., rng=keys, masks=masks)`` computes what ``train.fit(model, member(params, i),
member(state, i), split.take(np.flatnonzero(masks[i])), cfg, rng=keys[i])`` computes alone (checked to 1e-5 for
both loops in ``tests/test_population.py``): each epoch it draws the same permutation of its own rows
(``jax.random.permutation`` of its row count) and the same step keys, its batches are gathered from the shared
training arrays inside the step, and members with fewer batches than the largest skip the surplus steps exactly
(a per-step validity flag selects the old parameters, state and optimiser state). A member's batch size is
``min(cfg.batch_size, rows)`` as in `train.fit`, so every member must have at least ``batch_size`` rows (or all
the same number), and members with different step counts need a step-independent learning-rate schedule.

Example:
    >>> module = models.get_model('mlp', 10, features=(64,))
    >>> model = model_lib.from_linen(module)
    >>> params, state = init(module, jax.random.split(jax.random.key(0), 32), split.x[:1])
    >>> masks = subset_masks(split.size, 32, 0.5, jax.random.key(1))
    >>> params, state, history = fit(model, params, state, split, cfg, rng=jax.random.key(2), masks=masks)
    >>> one = member(params, 3)    # the 4th model
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from unlearn_jax import sharding as sharding_lib
from unlearn_jax import train as train_lib
from unlearn_jax.data import split as split_lib
from unlearn_jax.model import Model
from unlearn_jax import model as model_lib

Pytree = Any
MODEL = "model"  # the mesh axis the model axis is sharded over


# ---------------------------------------------------------------------------------------------------------------
# The model axis.


def check_size(size: int, key: str = "population.size") -> int:
  """``size`` if it is at least 2, else a ValueError naming ``key``."""
  if int(size) < 2:
    raise ValueError(f"{key}={size}: a population needs at least 2 models")
  return int(size)


def size_of(tree: Pytree) -> int:
  """The length of the leading (model) axis shared by every leaf of ``tree``.

  Raises:
    ValueError: if the leaves disagree (naming the first that does) or the tree has none.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if not flat:
    raise ValueError("population: the tree has no leaves")
  sizes = {p: (leaf.shape[0] if leaf.shape else None) for p, leaf in flat}
  n = sizes[flat[0][0]]
  for path, s in sizes.items():
    if s != n:
      raise ValueError(f"population: leaf {jax.tree_util.keystr(path)} has leading axis {s}, expected {n}")
  return n


def member(tree: Pytree, i: int) -> Pytree:
  """Member ``i`` of a tree with a leading model axis."""
  return jax.tree.map(lambda a: a[i], tree)


def stack(trees: Sequence[Pytree]) -> Pytree:
  """The trees of single models stacked on a new leading model axis (the inverse of `member`)."""
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def keys(rng: jax.Array | Sequence[int], size: int | None = None) -> jax.Array:
  """``(N,)`` typed keys: ``jax.random.split(rng, size)`` for one key, ``jax.random.key(s)`` per int seed, or
  ``rng`` itself when it already is ``(N,)`` keys."""
  if isinstance(rng, (list, tuple, np.ndarray)) and not isinstance(rng, jax.Array):
    return jax.vmap(jax.random.key)(jnp.asarray(rng, jnp.uint32))
  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  if rng.ndim == 0:
    if size is None:
      raise ValueError("population.keys: one key needs a size")
    return jax.random.split(rng, check_size(size))
  return rng


def init(init_fn, rngs: jax.Array | Sequence[int], sample_x: jax.Array | None = None) -> tuple[Pytree, Pytree]:
  """``(params, state)`` of ``N`` models with a leading model axis, one per key of ``rngs``.

  Args:
    init_fn: a ``flax.linen.Module`` (initialised like `unlearn_jax.model.init` with ``sample_x``) or a function
      ``init_fn(key) -> (params, state)``.
    rngs: ``(N,)`` keys or ``N`` integer seeds; member ``i`` is what ``init_fn`` gives alone with ``rngs[i]``.
    sample_x: a batch with the input shape (a Linen module only).

  Raises:
    ValueError: for fewer than 2 keys, or a Linen module without ``sample_x``.
  """
  rngs = keys(rngs)
  check_size(rngs.shape[0])
  if isinstance(init_fn, nn.Module):
    if sample_x is None:
      raise ValueError("population.init: a Linen module needs sample_x")
    return _linen_init(init_fn)(rngs, sample_x)
  return jax.jit(jax.vmap(init_fn))(rngs)


@functools.lru_cache(maxsize=32)
def _linen_init(module: nn.Module):
  """One jitted, vmapped `model_lib.init_linen` per module (populations of one network share its compilation)."""
  return jax.jit(jax.vmap(lambda k, x: model_lib.init_linen(module, k, x)[1:], in_axes=(0, None)))


def logits(model: Model, params: Pytree, state: Pytree, x, *, batch_size: int = 1024) -> jax.Array:
  """``(N, n, C)`` float32 eval-mode logits of every member on ``x`` (``n`` rows), ``batch_size`` rows at a time,
  the members vmapped in one program."""
  run = jax.jit(jax.vmap(lambda p, s, xb: model.apply(p, s, xb, train=False)[0].astype(jnp.float32),
                         in_axes=(0, 0, None)))
  n = jax.tree.leaves(x)[0].shape[0]
  parts = [run(params, state, jax.tree.map(lambda a: a[i:i + batch_size], x)) for i in range(0, n, batch_size)]
  return jnp.concatenate(parts, axis=1)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A one-axis ``('model',)`` mesh over ``devices`` (default: all) with an explicit axis type."""
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (MODEL,), axis_types=(jax.sharding.AxisType.Explicit,), devices=devices)


def model_sharding(mesh) -> jax.NamedSharding:
  """The leading (model) axis over the mesh's ``model`` axis, the rest replicated."""
  return jax.NamedSharding(mesh, jax.P(MODEL))


def shard(tree: Pytree, mesh) -> Pytree:
  """``tree`` (leaves with a leading model axis) placed with the model axis over ``mesh``'s ``model`` axis."""
  return jax.device_put(tree, model_sharding(mesh))


def _mesh_devices(mesh) -> int:
  if mesh is None:
    return 1
  if MODEL not in mesh.shape:
    raise ValueError(f"population: the mesh has no {MODEL!r} axis (axes: {tuple(mesh.shape)}); see make_mesh")
  return int(mesh.shape[MODEL])


# ---------------------------------------------------------------------------------------------------------------
# Masks: which training rows each member sees.


def full_masks(n: int, size: int) -> np.ndarray:
  """``(size, n)`` all-True masks: every member sees every row."""
  return np.ones((check_size(size), int(n)), bool)


def subset_masks(n: int, size: int, alpha: float, rng: jax.Array) -> np.ndarray:
  """``(size, n)`` masks of random α-subsets: member ``i`` sees ``round(alpha * n)`` rows drawn without
  replacement (its own draw from ``jax.random.split(rng, size)[i]``), as datamodels / TRAK sample subsets.

  Raises:
    ValueError: for ``alpha`` outside (0, 1], ``size < 2``, or a subset with no rows.
  """
  if not 0.0 < float(alpha) <= 1.0:
    raise ValueError(f"population.alpha={alpha}: must be in (0, 1]")
  size = check_size(size)
  k = int(round(float(alpha) * n))
  if k < 1:
    raise ValueError(f"population.alpha={alpha}: a subset of {n} rows would be empty")
  perms = jax.vmap(lambda key: jax.random.permutation(key, n))(jax.random.split(rng, size))
  masks = np.zeros((size, n), bool)
  np.put_along_axis(masks, np.asarray(perms[:, :k]), True, axis=1)
  return masks


def exclude_masks(n: int, rows, size: int | None = None) -> np.ndarray:
  """``(size, n)`` masks of every row but ``rows``: one forget set ``[k]`` shared by ``size`` members (Retrains)
  or ``[size, k]``, one forget set per member. ``rows`` are positions in the training split."""
  rows = np.asarray(rows, np.int64)
  if rows.ndim == 1:
    if size is None:
      raise ValueError("population.exclude_masks: a shared forget set needs a size")
    rows = np.broadcast_to(rows, (check_size(size), rows.shape[0]))
  if rows.ndim != 2:
    raise ValueError(f"population.exclude_masks: rows has shape {rows.shape}; expected [k] or [size, k]")
  if rows.size and (rows.min() < 0 or rows.max() >= n):
    raise ValueError(f"population.exclude_masks: rows must lie in [0, {n}), got [{rows.min()}, {rows.max()}]")
  masks = np.ones((check_size(rows.shape[0]), n), bool)
  np.put_along_axis(masks, rows, False, axis=1)
  return masks


def check_masks(masks, size: int, n: int) -> np.ndarray:
  """``masks`` as a ``(size, n)`` NumPy bool array (None: `full_masks`).

  Raises:
    ValueError: for a wrong shape or a member with no rows (naming it).
  """
  if masks is None:
    return full_masks(n, size)
  masks = np.asarray(masks)
  if masks.shape != (size, n):
    raise ValueError(f"population masks: shape {masks.shape}, expected ({size}, {n}) (models, training rows)")
  masks = masks.astype(bool)
  empty = np.flatnonzero(~masks.any(axis=1))
  if empty.size:
    raise ValueError(f"population masks: member {int(empty[0])} has no rows")
  return masks


class Layout(NamedTuple):
  """How the members' rows become batches (host-side, from the masks).

  Attributes:
    rows: ``(N,)`` rows per member.
    batch_size: the members' common batch size, ``min(cfg.batch_size, rows)``.
    steps: ``(N,)`` optimiser steps per epoch per member.
    groups: ``((members, rows, steps), ...)``: members with equal row counts.
    index: ``(N, max rows)`` int32: member ``i``'s training rows in order, padded with 0.
  """
  rows: np.ndarray
  batch_size: int
  steps: np.ndarray
  groups: tuple
  index: np.ndarray

  @property
  def max_steps(self) -> int:
    return int(self.steps.max())

  def valid(self) -> np.ndarray:
    """``(max_steps, N)`` bools: whether member ``i`` takes step ``s``."""
    return np.arange(self.max_steps)[:, None] < self.steps[None, :]


def layout(masks: np.ndarray, cfg) -> Layout:
  """The `Layout` of ``masks`` under the batch size and schedule of ``cfg``.

  Raises:
    ValueError: if members would train with different batch sizes (one has fewer rows than ``batch_size``), or
      with different step counts under a schedule that depends on the step count.
  """
  rows = masks.sum(axis=1)
  sizes = np.minimum(int(cfg.batch_size), rows)
  if len(set(sizes.tolist())) > 1:
    i = int(np.argmin(rows))
    raise ValueError(f"population masks: member {i} has {int(rows[i])} rows, fewer than batch_size="
                     f"{int(cfg.batch_size)}, so it would train with another batch size than the others")
  bs = int(sizes[0])
  steps = np.asarray([split_lib.num_batches(int(r), bs) for r in rows])
  if len(set(steps.tolist())) > 1 and (cfg.get("schedule", "constant") != "constant" or cfg.get("warmup_epochs", 0)):
    raise ValueError(f"population masks: members take {int(steps.min())} to {int(steps.max())} steps per epoch, "
                     f"and schedule={cfg.get('schedule')!r} (warmup_epochs={cfg.get('warmup_epochs', 0)}) depends "
                     "on the step count; give every member the same number of rows or use a constant schedule")
  groups = {}
  for i, r in enumerate(rows.tolist()):
    groups.setdefault(r, []).append(i)
  groups = tuple((tuple(m), int(r), int(split_lib.num_batches(r, bs))) for r, m in groups.items())
  index = np.zeros((masks.shape[0], int(rows.max())), np.int32)
  for i, m in enumerate(masks):
    where = np.flatnonzero(m)
    index[i, :where.size] = where
  return Layout(rows, bs, steps, groups, index)


# ---------------------------------------------------------------------------------------------------------------
# Memory.


class MemoryPlan(NamedTuple):
  """Bytes a population needs (`plan_memory`): ``per_member`` (parameters, gradients, optimiser state, state,
  one batch's activations, row indices), ``shared`` (the training arrays every device holds), ``per_device``
  (``shared + per_member * ceil(size / devices)``), the device's ``limit`` and ``max_size``, the largest
  population that fits."""
  size: int
  devices: int
  per_member: int
  shared: int
  per_device: int
  limit: int
  max_size: int

  @property
  def fits(self) -> bool:
    return self.per_device <= self.limit


def device_memory(device: jax.Device | None = None) -> int:
  """Bytes one device can hold: its allocator's ``bytes_limit`` where it reports one (GPU, TPU), else the host's
  physical memory shared by its CPU devices."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return int(host // max(1, len(jax.local_devices(backend=device.platform))))


def _bytes(tree: Pytree) -> int:
  return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def plan_memory(params: Pytree, state: Pytree, split: split_lib.Split, cfg, *, model: Model | None = None,
                masks=None, mesh=None, limit: int | None = None) -> MemoryPlan:
  """What `fit` needs per device, from shapes only (`jax.eval_shape`; nothing is computed or allocated).

  Args:
    params, state: the population (arrays or ShapeDtypeStructs with the leading model axis).
    split, cfg: the training data and the train section (optimiser, ``batch_size``).
    model: optional; when it has ``intermediates``, one batch's activations are counted per member.
    masks: the members' row masks (None: every row).
    mesh: optional ``model`` mesh; members are divided over its devices.
    limit: bytes per device (default `device_memory`).
  """
  size = size_of(params)
  one = jax.eval_shape(lambda p, s: (member(p, 0), member(s, 0)), params, state)
  bs = min(int(cfg.batch_size), split.size)
  opt = jax.eval_shape(train_lib.make_optimizer(cfg, 1).init, one[0])
  acts = 0
  if model is not None and model.intermediates is not None:
    x = jax.tree.map(lambda a: jax.ShapeDtypeStruct((bs,) + a.shape[1:], a.dtype), split.x)
    acts = 2 * _bytes(jax.eval_shape(model.intermediates, *one, x))  # forward values and their gradients
  rows = split.size if masks is None else int(np.asarray(masks).sum(axis=1).max())
  per_member = 2 * _bytes(one[0]) + _bytes(opt) + 2 * _bytes(one[1]) + acts + 8 * rows
  shared = _bytes((split.x, split.y))
  devices = _mesh_devices(mesh)
  per_device = shared + per_member * -(-size // devices)
  limit = int(limit if limit is not None else device_memory(mesh.devices.flat[0] if mesh is not None else None))
  max_size = max(0, (limit - shared) // max(1, per_member)) * devices
  return MemoryPlan(size, devices, per_member, shared, per_device, limit, int(max_size))


def _gib(b: int) -> str:
  return f"{b / 2**30:.3g} GiB"


def check_memory(plan: MemoryPlan, key: str = "population.size") -> None:
  """Raises ValueError naming ``key`` when ``plan`` does not fit, with the size that would."""
  if not plan.fits:
    raise ValueError(f"{key}={plan.size}: needs {_gib(plan.per_device)} per device but a device holds "
                     f"{_gib(plan.limit)}; at most {plan.max_size} models fit")


# ---------------------------------------------------------------------------------------------------------------
# Training.


def vmapped(tx: optax.GradientTransformation, mesh=None) -> optax.GradientTransformation:
  """``tx`` over a leading model axis (each member its own optimiser state, built sharded over ``mesh``'s
  ``model`` axis when given)."""
  init = jax.vmap(tx.init)
  if mesh is not None:
    init = jax.jit(init, out_shardings=model_sharding(mesh))
  return optax.GradientTransformation(init, jax.vmap(tx.update))


def make_epoch_fn(loss_fn, tx: optax.GradientTransformation, lay: Layout, *, augment: Callable | None = None,
                  loop: str | None = None, mesh=None):
  """The population's epoch ``epoch(params, state, opt_state, x, y, index, keys) -> (params, state, opt_state,
  losses, metrics)``: `train.step_body` vmapped over the model axis, run by `train.epoch_program`.

  ``index`` is `Layout.index`, ``keys`` the members' ``(N,)`` epoch keys; ``losses`` and metrics are
  ``(max_steps, N)`` (entries of skipped steps are meaningless; see `Layout.valid`). With ``mesh`` the per-step
  inputs are sharded over its ``model`` axis like the members.
  """
  body = train_lib.step_body(loss_fn, tx, augment)
  bs, nb, size = lay.batch_size, lay.max_steps, lay.rows.shape[0]
  valid = lay.valid()
  group = np.zeros(size, np.int32)
  for g, (members, _, _) in enumerate(lay.groups):
    group[list(members)] = g

  def prepare(x, y, index, keys):
    split_keys = jax.vmap(jax.random.split)(keys)
    perm_keys, step_keys = split_keys[:, 0], split_keys[:, 1]
    rows = step_data = None
    # One pass per distinct row count: every member draws the permutation (and step keys) of that count, and a
    # member keeps the draw of its own count (elementwise selects, so a model-sharded population stays sharded).
    for g, (_, n, steps) in enumerate(lay.groups):
      perm = jax.vmap(lambda k: jax.random.permutation(k, n))(perm_keys)[:, :steps * bs]
      r = jnp.pad(jnp.take_along_axis(index, perm, axis=1), ((0, 0), (0, (nb - steps) * bs)))
      k = jax.random.key_data(jax.vmap(lambda k: jax.random.split(k, steps))(step_keys))
      k = jnp.pad(k, ((0, 0), (0, nb - steps)) + ((0, 0),) * (k.ndim - 2))
      if rows is None:
        rows, step_data = r, k
      else:
        mine = jnp.asarray(group == g)
        rows = jnp.where(mine[:, None], r, rows)
        step_data = jnp.where(mine.reshape((size,) + (1,) * (k.ndim - 1)), k, step_data)
    rows = rows.reshape(size, nb, bs).swapaxes(0, 1)
    step_keys = jax.random.wrap_key_data(step_data.swapaxes(0, 1), impl=jax.random.key_impl(keys))
    steps = (rows, jnp.asarray(valid), step_keys)
    if mesh is not None:  # members on axis 1
      steps = jax.tree.map(lambda a: jax.sharding.reshard(a, jax.P(None, MODEL)), steps)
    return (x, y), steps

  def member_step(carry, inp, shared):
    x, y = shared
    rows, ok, key = inp
    take = (lambda a: a[rows]) if mesh is None else (lambda a: a.at[rows].get(out_sharding=jax.P()))
    new, out = body(carry, (jax.tree.map(take, x), take(y), key))
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, carry), out

  members = jax.vmap(member_step, in_axes=(0, 0, None), spmd_axis_name=None if mesh is None else MODEL)
  return train_lib.epoch_program(prepare, members, loop=loop)


def _summary(lay: Layout):
  """`train.run_epochs`' ``summarize`` for a population: means over the steps each member took, then over the
  members; a non-finite loss names its member."""
  valid = lay.valid()

  def summarize(losses, metrics, epoch):
    losses = np.asarray(losses)
    bad = np.argwhere(valid & ~np.isfinite(losses))
    if bad.size:
      s, i = bad[0]
      raise FloatingPointError(f"non-finite loss {losses[s, i]} of member {i} at epoch {epoch}, step {s}")
    mean = lambda v: float(np.mean(np.sum(np.where(valid, v, 0.0), axis=0) / lay.steps))
    return {"loss": mean(losses), **{k: mean(np.asarray(v)) for k, v in metrics.items()}}

  return summarize


def fit(model: Model, params: Pytree, state: Pytree, split: split_lib.Split, cfg, *, rng, masks=None, mesh=None,
        augment: Callable | None = None, loss_fn=None, loop: str | None = None,
        log: Callable[[str], None] | None = None, checkpoints=None, desc: str = "population", memory_limit: int | None = None):
  """Trains a population with cross-entropy on its members' rows of ``split`` for ``cfg.epochs`` epochs.

  Args:
    model: the network.
    params, state: the population's initial parameters and state, with a leading model axis ``N`` (`init`);
      not modified.
    split: the training data, shared by all members.
    cfg: the train section (optimiser fields, ``epochs``, ``batch_size``), as for `train.fit`.
    rng: ``(N,)`` keys, one per member (member ``i`` trains as `train.fit` with ``rng=rng[i]``), or one key,
      split into ``N``.
    masks: ``(N, split.size)`` bools: the rows each member trains on (None: all); see `subset_masks`,
      `exclude_masks`.
    mesh: optional mesh with a ``model`` axis (`make_mesh`): the members are sharded over its devices.
    augment, loss_fn, log, checkpoints, desc: as for `train.fit` (``desc`` labels the epoch progress bar).
    loop: ``'scan'`` or ``'steps'`` (default: `train.default_loop`).
    memory_limit: bytes per device for the memory check (default: `device_memory`).

  Returns:
    ``(params, state, history)``: the trained population (leading axis ``N``) and the per-epoch means over the
    members of their mean ``loss`` and metrics, plus the training ``seconds``.

  Raises:
    ValueError: before any training, for ``N < 2``, a bad mask, a population that does not fit in memory (with
      the size that would), or ``N`` not divisible by the mesh's ``model`` axis.
    FloatingPointError: if a member's loss is not finite (names the member, epoch and step).
  """
  size = check_size(size_of(params))
  if jax.tree.leaves(state) and size_of(state) != size:
    raise ValueError(f"population: state has leading axis {size_of(state)} but params has {size}")
  rngs = keys(rng, size)
  if rngs.shape != (size,):
    raise ValueError(f"population: rng has shape {rngs.shape}; expected one key or ({size},) keys")
  masks = check_masks(masks, size, split.size)
  lay = layout(masks, cfg)
  devices = _mesh_devices(mesh)
  if size % devices:
    raise ValueError(f"population.size={size} is not divisible by the {devices} devices of the mesh's "
                     f"{MODEL!r} axis")
  check_memory(plan_memory(params, state, split, cfg, model=model, masks=masks, mesh=mesh, limit=memory_limit))

  tx = train_lib.make_optimizer(cfg, int(lay.steps[0]))
  epoch_fn = make_epoch_fn(loss_fn or train_lib.classification_loss(model), tx, lay, augment=augment, loop=loop,
                           mesh=mesh)
  data = (split.x, split.y, jnp.asarray(lay.index))
  if mesh is not None:
    params, state, rngs = shard((params, state, rngs), mesh)
    data = (*sharding_lib.replicate(data[:2], mesh), shard(data[2], mesh))
  with sharding_lib.use_mesh(mesh):
    return train_lib.run_epochs(epoch_fn, vmapped(tx, mesh), params, state, data, int(cfg.epochs), rng=rngs, log=log,
                                checkpoints=checkpoints, desc=desc, summarize=_summary(lay))
