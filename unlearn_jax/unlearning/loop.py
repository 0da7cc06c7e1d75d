"""The one iterative unlearning driver: an objective plus an optax transformation (plus an optional mask).

An `Objective` has a forget term and a retain term, each
``loss(params, state, batch, rng, epoch) -> (loss, (new_state, metrics))`` on a batch ``(x, y)`` of its split,
or None. `unlearn_loop` runs them for ``epochs`` epochs under one of two schedules:

* ``'sequential'``: each epoch first steps through every forget batch with the forget term, then through every
  retain batch with the retain term (one optimiser state shared). This is what the SalUn / Unlearn-Sparse code
  does for CIFAR-10 and SVHN (``unlearn/RL.py``) and what SCRUB does (max steps, then min steps);
  ``forget_epochs`` limits the forget phase to the first epochs (SCRUB's ``msteps``).
* ``'joint'``: every step takes one retain batch and one forget batch and descends on the sum of the two
  terms; an epoch walks the ``anchor`` split once (retain by default) and cycles the other: the per-step loss written in the papers (NegGrad+, RL, bad teacher).

Each phase is one jitted whole-epoch `jax.lax.scan` with donated buffers (``loop='scan'``), or one jitted,
donating step per batch called from Python (``loop='steps'``, the default on the CPU, as `unlearn_jax.train`'s:
XLA:CPU runs a convolution's backward pass inside a scan many times slower than alone); either way the host syncs
once per epoch. In the per-step loop an objective with a ``shared`` term (RL, SalUn) runs its forget and retain
phases with one compiled step.
BatchNorm runs in train mode during updates, as in the references. A ``mask`` (a pytree of bools, or of floats
in [0, 1] for a soft mask, e.g. from `saliency`) acts in one of two ways (``mask_mode``):

* ``'freeze'`` (the loop's default): the optimiser's *updates* of masked-out entries are zeroed, so those weights
  stay bit-identical to their starting values, weight decay and momentum included (RMU's and LAF's parameter
  selection; the SalUn repository's 2026 ``_restore_masked_params`` gives the same result).
* ``'gradient'``: the *gradients* are multiplied by the mask before the optimiser, as the SalUn code that produced
  the paper's tables does (``param.grad *= mask[name]`` before ``optimizer.step()``): masked-out weights still
  decay, and move with the momentum that weight decay builds up.

`unlearn_grid` runs the same loop for a whole grid of hyperparameters at once: every phase is ``jax.vmap``-ped
over the grid points (learning rate, a method coefficient, a mask each), so the grid is one compiled program and
each grid point follows exactly the computation it would alone (same batches, same random labels). The points
may also start from different models with keys of their own (``stacked=True``, ``rng`` of shape ``(G,)``): a
population of Originals (`unlearn_jax.population`) is unlearned by the same program.

On a mesh (``mesh=`` or the one set by ``jax.set_mesh`` around the call) the parameters are placed by sharding
rules (`unlearn_jax.sharding.place`; FSDP-sharded where large enough), and the optimiser state, the mask and the
state (frozen teacher copies included) mirror their layout. Every step all-gathers the weights inside the jitted
epoch (`sharding.gathered`) and scatters the gradients back, so parameters stay sharded from epoch to epoch and
the epoch function compiles once: later epochs reuse it.

Example:
    >>> objective = Objective(forget=negated(ce_loss(model)), retain=ce_loss(model))
    >>> params, state, hist = unlearn_loop(model, params, state, forget, retain, objective=objective,
    ...                                    tx=optax.sgd(0.01), epochs=5, batch_size=64, rng=key)
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import sharding as sharding_lib
from unlearn_jax import train as train_lib
from unlearn_jax.data import split as split_lib
from unlearn_jax.progress import progress

Pytree = Any
# loss(params, state, batch, rng, epoch) -> (loss, (new_state, metrics))
Term = Callable[..., tuple[jax.Array, tuple[Pytree, dict]]]
SCHEDULES = ("sequential", "joint")
ANCHORS = ("retain", "forget")
MASK_MODES = ("freeze", "gradient")


class Objective(NamedTuple):
  """The forget and retain terms of an unlearning loss; either may be None.

  ``shared``, optional: one term ``shared(params, state, batch, rng, epoch, forget)`` computing the forget term
  where the traced bool ``forget`` is True and the retain term where it is False (the same numbers, the same
  metrics). With it the per-step loop (``loop='steps'``) runs both sequential phases with one compiled step instead
  of one per phase (e.g. `objectives.random_or_true_labels`, RL's and SalUn's pair).
  """
  forget: Term | None = None
  retain: Term | None = None
  shared: Callable[..., tuple[jax.Array, tuple[Pytree, dict]]] | None = None


class MaskState(NamedTuple):
  mask: Pytree


def mask_updates(mask: Pytree) -> optax.GradientTransformation:
  """Zeroes the updates where a bool ``mask`` is False, or scales them by a float ``mask``.

  Chained last (after weight decay and momentum), a False entry's weight never moves; chained first, it masks the
  gradients the optimiser sees (see `masked_optimizer`).
  """

  # The mask lives in the optimiser state, so jitted steps take it as an argument instead of baking a
  # parameter-sized constant into the compiled program.
  def init(params):
    del params
    return MaskState(train_lib.fresh_copy(mask))  # a copy: optimiser state is donated

  def update(updates, state, params=None):
    del params
    def one(u, m):
      return jnp.where(m, u, jnp.zeros_like(u)) if m.dtype == jnp.bool_ else u * m.astype(u.dtype)
    return jax.tree.map(one, updates, state.mask), state

  return optax.GradientTransformation(init, update)


def masked_optimizer(tx: optax.GradientTransformation, mask: Pytree | None,
                     mode: str = "freeze") -> optax.GradientTransformation:
  """``tx`` with ``mask`` applied to its updates (``'freeze'``) or to the gradients it reads (``'gradient'``)."""
  if mode not in MASK_MODES:
    raise ValueError(f"mask_mode: unknown {mode!r}; choose one of {MASK_MODES}")
  if mask is None:
    return tx
  return optax.chain(tx, mask_updates(mask)) if mode == "freeze" else optax.chain(mask_updates(mask), tx)


def steps_per_epoch(forget, retain, objective: Objective, *, schedule: str, batch_size: int,
                    forget_batch_size: int | None = None) -> int:
  """Optimiser steps of one epoch of `unlearn_loop` (what a learning-rate schedule counts in)."""
  fbs = forget_batch_size or batch_size
  if schedule == "joint" and objective.forget is not None and objective.retain is not None:
    return retain.num_batches(min(batch_size, retain.size))
  return sum(s.num_batches(min(b, s.size)) for s, t, b in ((forget, objective.forget, fbs),
                                                           (retain, objective.retain, batch_size)) if t is not None)


def cycled_batches(arrays, batch_size: int, num_batches: int, rng: jax.Array):
  """``num_batches`` shuffled batches of ``batch_size`` rows, cycling through fresh permutations as needed."""
  n = jax.tree.leaves(arrays)[0].shape[0]
  bs = min(batch_size, n)
  reps = -(-num_batches * bs // n)
  order = jnp.concatenate([jax.random.permutation(k, n) for k in jax.random.split(rng, reps)])
  order = order[: num_batches * bs]
  return jax.tree.map(lambda a: a[order].reshape((num_batches, bs) + a.shape[1:]), arrays)


def _batch_mesh(mesh, *batch_sizes: int):
  """``mesh`` if every batch size divides over its data axis (batches are then sharded), else None."""
  if mesh is None or any(bs % mesh.shape[sharding_lib.DATA] for bs in batch_sizes):
    return None
  return mesh


def joint_term(objective: Objective) -> Term:
  """The joint step's loss: ``forget term + retain term`` on a ``(forget batch, retain batch)`` pair."""

  def loss_fn(params, state, batches, rng, epoch):
    fbatch, rbatch = batches
    k1, k2 = jax.random.split(rng)
    lf, (state, mf) = objective.forget(params, state, fbatch, k1, epoch)
    lr, (state, mr) = objective.retain(params, state, rbatch, k2, epoch)
    metrics = {**{f"forget_{k}": v for k, v in mf.items()}, **{f"retain_{k}": v for k, v in mr.items()},
               "forget_loss": lf, "retain_loss": lr}
    return lf + lr, (state, metrics)

  return loss_fn


def term_step(term: Term, tx, augment):
  """One optimiser step of ``term`` on a tuple of batches (augmenting each batch's inputs if asked)."""

  def step(params, state, opt_state, batches, rng, epoch):
    aug_rng, loss_rng = jax.random.split(rng)
    if augment is not None:
      keys = jax.random.split(aug_rng, len(batches))
      batches = tuple((augment(k, x), y) for k, (x, y) in zip(keys, batches))
    batch = batches[0] if len(batches) == 1 else batches
    loss_fn = sharding_lib.gathered(lambda p, s, b, r: term(p, s, b, r, epoch))  # FSDP: gather in the step
    return train_lib.train_step(loss_fn, tx, params, state, opt_state, batch, loss_rng)

  return step


def _sequential_batches(batch_size: int, mesh):
  """``prepare(x, y, rng) -> ((), (xb, yb, keys))``: one phase's shuffled batches of one split and its step keys
  (`unlearn_jax.train.epoch_batches`: a phase over the retain set shares the Retrain epoch's program)."""
  return train_lib.epoch_batches(batch_size, mesh)


@functools.lru_cache(maxsize=64)
def _joint_batches(batch_size: int, forget_batch_size: int, mesh, anchor: str):
  """``prepare(fx, fy, rx, ry, rng) -> ((), (forget batches, retain batches, keys))`` of a joint epoch: the
  ``anchor`` split is walked once, the other cycled. Memoised, as `unlearn_jax.train.epoch_batches` is: runs with
  the same batch sizes, mesh and anchor share one function, so its jitted program is traced and compiled once."""

  def prepare(fx, fy, rx, ry, rng):
    anchor_rng, cycled_rng, step_rng = jax.random.split(rng, 3)
    if anchor == "retain":
      rb = split_lib.batch_arrays((rx, ry), batch_size, anchor_rng)
      fb = cycled_batches((fx, fy), forget_batch_size, rb[1].shape[0], cycled_rng)
    else:
      fb = split_lib.batch_arrays((fx, fy), forget_batch_size, anchor_rng)
      rb = cycled_batches((rx, ry), batch_size, fb[1].shape[0], cycled_rng)
    rb, fb = train_lib.shard_batches(rb, mesh), train_lib.shard_batches(fb, mesh)
    return (), (fb, rb, jax.random.split(step_rng, rb[1].shape[0]))

  return prepare


def _step_inputs(role: str, steps):
  """``(batches, keys)`` of a phase's ``steps`` (what its ``prepare`` returns second): a sequential phase's one
  ``(x, y)``, or a joint phase's ``(forget batch, retain batch)``."""
  return ((steps[0], steps[1]),) if role != "joint" else (steps[0], steps[1]), steps[2]


def _role_term(objective: Objective, role: str, flag=None) -> Term:
  """The term a phase of ``role`` steps on (``'shared'``: ``objective.shared`` at the traced ``flag``)."""
  if role == "joint":
    return joint_term(objective)
  if role == "shared":
    return lambda p, s, b, r, e: objective.shared(p, s, b, r, e, flag)
  return objective.forget if role == "forget" else objective.retain


def _scan_fn(make, role: str, prepare, *, augment, grid: bool, keyed: bool, data_axis: int | None, n_data: int):
  """Jitted epoch phase ``fn(params, state, opt_state, *data, rng, epoch, hyper)``: one `jax.lax.scan` of the
  ``role`` term of ``make(hyper) -> (objective, tx)`` over the batches ``prepare(*data, rng)`` makes.

  With ``grid`` the phase is vmapped over the leading axis of params, state, optimiser state and ``hyper``, with
  the data and the epoch shared, and the key too unless ``keyed`` (one per grid point), and the data too with
  ``data_axis=0`` (one split per grid point).
  """

  def phase(params, state, opt_state, *args):
    *data, rng, epoch, hyper = args
    objective, tx = make(hyper)
    seqs, keys = _step_inputs(role, prepare(*data, rng)[1])
    return _scan(term_step(_role_term(objective, role), tx, augment), params, state, opt_state, seqs, keys, epoch)

  if grid:
    phase = jax.vmap(phase, in_axes=(0, 0, 0) + (data_axis,) * n_data + (0 if keyed else None, None, 0))
  return jax.jit(phase, donate_argnums=(0, 1, 2))


def _step_fn(make, role: str, *, augment, grid: bool, mapped: bool):
  """Jitted, donating ``step(carry, batches, key, epoch, hyper, flag) -> (carry, (loss, metrics))``: one step of
  the ``role`` term (vmapped over the grid; ``mapped``: batches and keys carry the grid axis too)."""

  def step(carry, batches, key, epoch, hyper, flag):
    objective, tx = make(hyper)
    params, state, opt_state, loss, metrics = term_step(_role_term(objective, role, flag), tx, augment)(
        *carry, batches, key, epoch)
    return (params, state, opt_state), (loss, metrics)

  if grid:
    step = jax.vmap(step, in_axes=(0, 0 if mapped else None, 0 if mapped else None, None, 0, None))
  return jax.jit(step, donate_argnums=(0,))


@functools.lru_cache(maxsize=64)
def _grid_prepare(prepare, in_axes: tuple):
  """``prepare`` vmapped over the grid axes ``in_axes`` (the step axis first in its outputs, the grid axis second);
  one function per ``(prepare, in_axes)``, so grids of the same shapes share its jitted program."""
  return jax.vmap(prepare, in_axes=in_axes, out_axes=1)


def _stepped_fn(role: str, prepare, step, *, flag=None, grid: bool, keyed: bool, data_axis: int | None, n_data: int):
  """The per-step twin of `_scan_fn`: ``prepare`` jitted (the shuffle, on device), then ``step`` called from Python
  once per batch, each batch cut out by `train.take_step` (so ``step`` is the same program for any number of
  batches: phases of different lengths share it). Same batches, keys and steps as the scan; no host sync. Returns
  per-step lists of losses and metrics (stacked on the host)."""
  mapped = grid and (keyed or data_axis is not None)
  if mapped:  # the step axis first, the grid axis second
    prepare = _grid_prepare(prepare, (data_axis,) * n_data + (0 if keyed else None,))
  prepare = jax.jit(prepare)

  def phase(params, state, opt_state, *args):
    *data, rng, epoch, hyper = args
    _, steps = prepare(*data, rng)
    carry, losses, metrics = (params, state, opt_state), [], []
    for i in range(steps[2].shape[0]):
      batches, key = _step_inputs(role, train_lib.take_step(steps, i))
      carry, (loss, m) = step(carry, batches, key, epoch, hyper, flag)
      losses.append(loss)
      metrics.append(m)
    return (*carry, losses, metrics)

  return phase


def _scan(step, params, state, opt_state, batch_seqs, keys, epoch):
  def body(carry, inp):
    params, state, opt_state = carry
    *batches, key = inp
    params, state, opt_state, loss, metrics = step(params, state, opt_state, tuple(batches), key, epoch)
    return (params, state, opt_state), (loss, metrics)

  (params, state, opt_state), (losses, metrics) = jax.lax.scan(body, (params, state, opt_state),
                                                               (*batch_seqs, keys))
  return params, state, opt_state, losses, metrics


def unlearn_loop(model, params, state, forget: split_lib.Split | None, retain: split_lib.Split | None, *,
                 objective: Objective, tx: optax.GradientTransformation, epochs: int, batch_size: int,
                 rng: jax.Array, schedule: str = "sequential", forget_epochs: int | None = None,
                 forget_batch_size: int | None = None, mask: Pytree | None = None, mask_mode: str = "freeze",
                 augment=None, mesh=None, rules=None, log: Callable[[str], None] | None = None,
                 desc: str = "unlearn", anchor: str = "retain",
                 on_epoch: Callable[[int, Pytree, Pytree], bool | None] | None = None, coef=None,
                 loop: str | None = None):
  """Runs an unlearning objective with an optax optimiser; returns ``(params, state, history)``.

  Args:
    model: the network (the objective's terms close over it; kept for symmetry with methods).
    params, state: starting point (the Original); not modified.
    forget, retain: the splits the forget and retain terms read; a term whose split is None must be None.
    objective: the forget and retain terms; with ``coef``, a function ``objective(coef) -> Objective``.
    coef: optional scalar (a method's main coefficient: NegGrad+'s beta, l1-sparse's alpha) handed to
      ``objective`` as a traced argument of the jitted epochs, so runs that differ only in it share one program,
      as runs that differ only in the learning rate do (`unlearn_jax.train.make_optimizer`).
    tx: the optimiser. A ``mask`` is chained after it (``'freeze'``) or before it (``'gradient'``).
    epochs: passes over the data. The current epoch (an int32 scalar) is handed to the terms, so
      epoch-dependent weights (l1-sparse's decaying alpha) need no recompilation.
    batch_size: rows per step (retain and, unless ``forget_batch_size`` is given, forget).
    rng: PRNG key for shuffling, augmentation and the terms' randomness (e.g. random labels).
    schedule: ``'sequential'`` or ``'joint'`` (see the module docstring).
    forget_epochs: with ``'sequential'``, run the forget phase only in the first ``forget_epochs`` epochs.
    anchor: with ``'joint'``, the split one epoch walks through once (``'retain'``, or ``'forget'`` as
      open-unlearning's LM trainers do); the other split is cycled to pair every step with a batch of it.
    mask: optional pytree like ``params`` of bools (or floats in [0, 1]).
    mask_mode: ``'freeze'``: masked-out entries keep their starting values exactly; ``'gradient'``: the gradients
      are masked before the optimiser (see the module docstring).
    augment: optional on-device ``augment(rng, x)``.
    mesh: optional mesh (default: the one ``jax.set_mesh`` set, if any); batches are sharded over its ``data``
      axis when their sizes divide it, parameters placed by ``rules``, everything shaped like them alike.
    rules: sharding rules of `unlearn_jax.sharding.spec_for` (default `sharding.DEFAULT_RULES`: FSDP over the
      mesh's ``fsdp`` axis for leaves large enough, replicated otherwise).
    log: optional per-epoch callback.
    desc: label of the progress bar (`unlearn_jax.progress`; shown on a terminal only).
    on_epoch: optional ``on_epoch(epoch, params, state)`` called after every epoch (0-based); returning True
      stops the loop there (e.g. relearn time: stop once an accuracy is reached). It must not keep ``params``
      or ``state``: the next epoch donates their buffers.
    loop: ``'scan'`` (each phase one jitted `jax.lax.scan`) or ``'steps'`` (one jitted step per batch, called
      from Python); None: `unlearn_jax.train.default_loop` (``'steps'`` on the CPU, where XLA runs a convolution's
      backward pass inside a scan many times slower, ``'scan'`` elsewhere). Both compute the same steps on the
      same batches and keys.

  Raises:
    ValueError: for an unknown schedule or mask mode, or a term without its split.
    FloatingPointError: if a loss is not finite (names the epoch, phase and step).
  """
  del model
  mesh = mesh if mesh is not None else sharding_lib.current_mesh()
  rules = sharding_lib.DEFAULT_RULES if rules is None else rules
  if mesh is not None:
    params = sharding_lib.place(params, mesh, rules)
    state = sharding_lib.place(state, mesh, rules, like=params)  # frozen copies mirror the parameters
    if mask is not None:
      mask = sharding_lib.place(mask, mesh, rules, like=params)
  tx = masked_optimizer(tx, mask, mask_mode)
  params, state = train_lib.fresh_copy((params, state))  # donation never touches the caller's arrays
  opt_state = sharding_lib.init_opt_state(tx, params, mesh, rules)
  make = (lambda c: (objective(c), tx)) if coef is not None else (lambda _: (objective, tx))
  hyper = jnp.asarray(coef, jnp.float32) if coef is not None else None
  return _run(make, hyper, params, state, opt_state, forget, retain, epochs=epochs,
              batch_size=batch_size, rng=rng, schedule=schedule, forget_epochs=forget_epochs,
              forget_batch_size=forget_batch_size, augment=augment, mesh=mesh, log=log, desc=desc, anchor=anchor,
              on_epoch=on_epoch, loop=loop)


def unlearn_grid(params, state, forget: split_lib.Split | None, retain: split_lib.Split | None, *,
                 make: Callable[[Pytree], tuple[Objective, optax.GradientTransformation]], hypers: Pytree,
                 epochs: int, batch_size: int, rng: jax.Array, schedule: str = "sequential",
                 forget_epochs: int | None = None, forget_batch_size: int | None = None,
                 masks: Pytree | None = None, mask_mode: str = "freeze", augment=None,
                 log: Callable[[str], None] | None = None, desc: str = "sweep", anchor: str = "retain",
                 stacked: bool = False, stacked_data: bool = False, loop: str | None = None):
  """`unlearn_loop` for ``G`` hyperparameter settings at once, as one vmapped, jitted program per phase.

  Every grid point starts from the same ``(params, state)`` and sees the same batches and the same randomness
  (``rng`` is shared), so grid point ``g`` computes what `unlearn_loop` computes with ``make(hypers[g])`` alone.
  With ``stacked``, ``params`` and ``state`` already have the leading axis ``G`` (point ``g`` starts from its own
  model, e.g. a population member), and ``rng`` may be ``(G,)`` keys, one per point: point ``g`` then computes
  what `unlearn_loop` computes from ``params[g]`` with ``rng[g]``. With ``stacked_data`` as well, the splits'
  arrays carry the leading axis ``G`` too (every point the same number of rows): point ``g`` trains on its own
  ``x[g], y[g]`` (e.g. a population member's own matching set and targets, `unlearn_jax.unlearning._dmm`).
  A grid point whose loss stops being finite (a learning rate too large) does not stop the others: its
  ``history['finite'][g]`` is False and its parameters are whatever they became.

  Args:
    params, state: the common starting point (with ``stacked``: one per point); not modified.
    forget, retain: as in `unlearn_loop`.
    make: ``make(hyper) -> (objective, tx)`` for one grid point's slice of ``hypers`` (its leaves are traced
      scalars, e.g. a learning rate or a loss weight); which terms are None must not depend on ``hyper``.
    hypers: pytree whose leaves have a leading axis of size ``G``.
    masks: optional pytree like ``params`` with a leading axis of size ``G`` (one mask per grid point).
    mask_mode, epochs, batch_size, rng, schedule, forget_epochs, forget_batch_size, augment, log, desc, anchor,
      loop: as in `unlearn_loop`. Runs unsharded (on the default device).

  Returns:
    ``(params, state, history)``: ``params`` and ``state`` with a leading grid axis; ``history`` holds per-epoch
    lists of ``(G,)`` mean losses and ``finite``, a ``(G,)`` bool array.
  """
  leaves = jax.tree.leaves(hypers)
  if not leaves:
    raise ValueError("unlearn_grid: hypers has no leaves")
  size = leaves[0].shape[0]
  for path, leaf in jax.tree_util.tree_flatten_with_path((hypers, masks))[0]:
    if leaf.shape[:1] != (size,):
      raise ValueError(f"unlearn_grid: {jax.tree_util.keystr(path)} has leading shape {leaf.shape[:1]}, "
                       f"expected ({size},) (one entry per grid point)")

  def make_masked(hm):
    hyper, mask = hm
    objective, tx = make(hyper)
    return objective, masked_optimizer(tx, mask, mask_mode)

  hm = (hypers, masks)
  if stacked_data:
    if not stacked:
      raise ValueError("unlearn_grid: stacked_data needs stacked models")
    for path, leaf in jax.tree_util.tree_flatten_with_path((forget, retain))[0]:
      if leaf.shape[:1] != (size,):
        raise ValueError(f"unlearn_grid: stacked data {jax.tree_util.keystr(path)} has leading shape "
                         f"{leaf.shape[:1]}, expected ({size},) (one split per grid point)")
  if stacked:
    for path, leaf in jax.tree_util.tree_flatten_with_path((params, state))[0]:
      if leaf.shape[:1] != (size,):
        raise ValueError(f"unlearn_grid: stacked {jax.tree_util.keystr(path)} has leading shape {leaf.shape[:1]}, "
                         f"expected ({size},) (one model per grid point)")
    params, state = train_lib.fresh_copy((params, state))  # donation never touches the caller's arrays
  else:
    tile = lambda t: jax.tree.map(lambda a: jnp.repeat(jnp.asarray(a)[None], size, axis=0), t)
    params, state = tile(params), tile(state)
  keyed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.ndim == 1
  if keyed and rng.shape != (size,):
    raise ValueError(f"unlearn_grid: rng has shape {rng.shape}; expected one key or ({size},) keys")
  opt_state = jax.jit(jax.vmap(lambda h, p: make_masked(h)[1].init(p)))(hm, params)
  return _run(make_masked, hm, params, state, opt_state, forget, retain, epochs=epochs, batch_size=batch_size,
              rng=rng, schedule=schedule, forget_epochs=forget_epochs, forget_batch_size=forget_batch_size,
              augment=augment, mesh=None, log=log, desc=desc, anchor=anchor, grid=True, keyed=keyed,
              data_axis=0 if stacked_data else None, loop=loop)


def split_keys(rng: jax.Array, num: int) -> jax.Array:
  """``jax.random.split(rng, num)``; for ``(G,)`` keys (one per grid point), ``(num, G)`` keys whose column ``g``
  is ``jax.random.split(rng[g], num)``."""
  if jnp.ndim(rng) == 0 or not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.split(rng, num)
  return jax.vmap(lambda k: jax.random.split(k, num), out_axes=1)(rng)


def _run(make, hyper, params, state, opt_state, forget, retain, *, epochs, batch_size, rng, schedule, forget_epochs,
         forget_batch_size, augment, mesh, log, desc, anchor, grid: bool = False, on_epoch=None,
         keyed: bool = False, data_axis: int | None = None, loop: str | None = None):
  """The epochs of `unlearn_loop` / `unlearn_grid` from a prepared optimiser state (``data_axis=0``: the splits'
  arrays carry the grid axis first; ``loop``: `unlearn_loop`'s)."""
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule: unknown {schedule!r}; choose one of {SCHEDULES}")
  if anchor not in ANCHORS:
    raise ValueError(f"anchor: unknown {anchor!r}; choose one of {ANCHORS}")
  probe = make(jax.tree.map(lambda a: a[0], hyper) if grid else hyper)[0]  # which terms the objective has
  for name, term, split in (("forget", probe.forget, forget), ("retain", probe.retain, retain)):
    if term is not None and split is None:
      raise ValueError(f"the objective has a {name} term but no {name} split was given")
  if probe.forget is None and probe.retain is None:
    raise ValueError("the objective has neither a forget nor a retain term")
  if schedule == "joint" and (probe.forget is None or probe.retain is None):
    schedule = "sequential"  # a single term: the schedules coincide
  rows = lambda split: split.y.shape[1] if data_axis == 0 else split.size
  forget_bs = min(forget_batch_size or batch_size, rows(forget)) if forget is not None else None
  retain_bs = min(batch_size, rows(retain)) if retain is not None else None

  loop = loop or train_lib.default_loop()
  if loop not in train_lib.LOOPS:
    raise ValueError(f"loop={loop!r}: choose one of {train_lib.LOOPS}")
  # the sequential phases share one step when the objective has a `shared` term (per-step loop only)
  shared = (loop == "steps" and schedule == "sequential" and probe.shared is not None
            and probe.forget is not None and probe.retain is not None)
  steps: dict[str, Callable] = {}
  mapped = grid and (keyed or data_axis is not None)

  def phase_fn(role, prepare, n_data):
    kw = dict(grid=grid, keyed=keyed, data_axis=data_axis, n_data=n_data)
    if loop == "scan":
      return _scan_fn(make, role, prepare, augment=augment, **kw)
    step_role = "shared" if shared else role
    if step_role not in steps:
      steps[step_role] = _step_fn(make, step_role, augment=augment, grid=grid, mapped=mapped)
    return _stepped_fn(role, prepare, steps[step_role], flag=np.bool_(role == "forget") if shared else None, **kw)

  phases = []
  if schedule == "joint":
    prepare = _joint_batches(retain_bs, forget_bs, _batch_mesh(mesh, retain_bs, forget_bs), anchor)
    phases.append(("joint", phase_fn("joint", prepare, 4), (forget.x, forget.y, retain.x, retain.y), None))
  else:
    for name, term, split, bs, last in (("forget", probe.forget, forget, forget_bs, forget_epochs),
                                        ("retain", probe.retain, retain, retain_bs, None)):
      if term is not None:
        prepare = _sequential_batches(bs, _batch_mesh(mesh, bs))
        phases.append((name, phase_fn(name, prepare, 2), (split.x, split.y), last))

  if mesh is not None:
    phases = [(n, f, sharding_lib.replicate(d, mesh), e) for n, f, d, e in phases]
  history: dict[str, Any] = {}
  finite = None
  start = time.perf_counter()
  with sharding_lib.use_mesh(mesh):
    for epoch, key in enumerate(progress(split_keys(rng, epochs), desc=desc, unit="epoch")):
      epoch_start = time.perf_counter()
      outputs = []
      for (name, fn, arrays, last_epoch), pkey in zip(phases, split_keys(key, len(phases))):
        if last_epoch is not None and epoch >= last_epoch:
          continue
        params, state, opt_state, losses, metrics = fn(params, state, opt_state, *arrays, pkey,
                                                       jnp.int32(epoch), hyper)
        outputs.append((name, losses, metrics))
      for name, losses, metrics in jax.device_get(outputs):  # the one host sync of the epoch
        if isinstance(losses, list):  # the per-step loop: one entry per step, the steps last (as the scan's)
          metrics = {k: np.stack([m[k] for m in metrics], axis=-1) for k in metrics[0]}
        losses = np.asarray(losses) if not isinstance(losses, list) else np.stack(losses, axis=-1)
        if grid:  # (G, steps): a diverged grid point is recorded, not fatal
          ok = np.all(np.isfinite(losses), axis=-1)
          finite = ok if finite is None else finite & ok
        else:
          train_lib.check_finite(losses, epoch, what=f"{name} loss")
        mean = lambda v: np.mean(np.asarray(v), axis=-1) if grid else float(np.mean(v))
        history.setdefault(f"{name}_loss", []).append(mean(losses))
        for k, v in metrics.items():
          history.setdefault(f"{name}_{k}", []).append(mean(v))
      history.setdefault("epoch_seconds", []).append(time.perf_counter() - epoch_start)
      if log is not None:
        log(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={np.mean(v[-1]):.4f}" for k, v in history.items()))
      if on_epoch is not None and on_epoch(epoch, params, state):
        break
    jax.block_until_ready(params)
  history["seconds"] = time.perf_counter() - start
  if grid:
    history["finite"] = finite
  return params, state, history
