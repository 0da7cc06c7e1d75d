"""Teacher-student unlearning: SCRUB and the bad (incompetent) teacher, run by the one loop in `loop`.

Both methods distil a *frozen* network into the student (which starts as the Original):

* ``'scrub'``: the teacher is the Original. Max steps (forget set, only in the first ``msteps`` epochs) ascend
  the distillation KL, ``-T²·KL(teacher‖student)``; min steps (retain set, every epoch) descend
  ``γ·CE + α·T²·KL(teacher‖student)``. One SGD state is shared and each epoch runs all max steps, then all
  min steps (the loop's ``'sequential'`` schedule with ``forget_epochs=msteps``), as the reference does. The
  student starts equal to the teacher, where the KL has zero gradient: the first max steps do nothing until the
  min steps (or weight decay) have moved the student, which is why ``msteps`` needs at least two epochs.
* ``'bad_teacher'``: two teachers, the Original (competent) and a randomly initialised network of the same
  architecture (incompetent). The forget set and a random ``retain_fraction`` of the retain set are shuffled
  together; each row is distilled towards the incompetent teacher if it is a forget row, the competent one
  otherwise: per batch ``mean_i KL(p_teacher(i)^T ‖ p_student^T)``.

Frozen networks travel in the loop's ``state``. A closed-over array would be baked into the jitted program as a
constant (the whole Original, twice for bad teacher); instead the teachers are carried as
``{'model': state, 'frozen': {name: (params, state)}}`` (`carry`), so they are ordinary jit arguments,
replicated over a mesh like the student's state, passed through every step unchanged, never differentiated
(gradients are taken with respect to ``params`` only) and always run in eval mode. `frozen_term` adapts a
``fn(params, state, frozen, batch, rng, epoch)`` to the loop's term signature; `run_frozen` runs the loop on the
carried state and returns the student's own ``(params, state)``.

Loss scales. `distill_kl` is the reference ``DistillKL``: ``T² · Σ KL / batch`` (a batch mean with the usual
Hinton T² factor). The bad-teacher reference calls ``F.kl_div`` with its default ``'mean'`` reduction, which also
divides by the number of classes; `bad_teacher_loss` uses the batch mean, a constant factor C larger, which the
reference's Adam optimiser is invariant to (up to its ε).

References:
  Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards Unbounded Machine Unlearning", NeurIPS 2023
  (SCRUB; github.com/meghdadk/SCRUB: ``train_distill`` with ``split='maximize'|'minimize'``, ``DistillKL``, the
  large-scale notebook's hyper-parameters).
  Chundawat, Tarun, Mandal and Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks
  using an Incompetent Teacher", AAAI 2023 (github.com/vikram2000b/bad-teaching-unlearning: ``UnlearnerLoss``,
  ``blindspot_unlearner``, ``UnLearningData``).
  Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015 (the T² factor).

Example:
    >>> params, state = scrub(model, params, state, forget, retain,
    ...                       config={'lr': 5e-4, 'epochs': 3, 'msteps': 2}, rng=jax.random.key(0))
    >>> params, state = bad_teacher(model, params, state, forget, retain, config={}, rng=jax.random.key(0))
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from unlearn_jax import train as train_lib
from unlearn_jax.data import split as split_lib
from unlearn_jax.model import Model
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import methods
from unlearn_jax.unlearning import objectives as obj
from unlearn_jax.unlearning import options, register

Pytree = Any
MODEL, FROZEN = "model", "frozen"


# ---------------------------------------------------------------------------------------------------------------
# Frozen networks carried through the loop.
# ---------------------------------------------------------------------------------------------------------------
def carry(state: Pytree, frozen: dict[str, tuple[Pytree, Pytree]]) -> dict:
  """The loop state carrying frozen networks: ``{'model': state, 'frozen': {name: (params, state)}}``."""
  return {MODEL: state, FROZEN: frozen}


def frozen_term(fn: Callable) -> loop.Term:
  """Adapts ``fn(params, state, frozen, batch, rng, epoch) -> (loss, (new_state, metrics))`` to a loop term.

  The term reads and writes a `carry`-ed state: ``fn`` sees the student's state and the dict of frozen
  ``(params, state)`` pairs; the frozen part is handed back unchanged.
  """

  def term(params, carried, batch, rng, epoch):
    loss, (new_state, metrics) = fn(params, carried[MODEL], carried[FROZEN], batch, rng, epoch)
    return loss, ({MODEL: new_state, FROZEN: carried[FROZEN]}, metrics)

  return term


def frozen_logits(model: Model, teacher: tuple[Pytree, Pytree], x: jax.Array) -> jax.Array:
  """Logits of a frozen ``(params, state)`` network in eval mode, outside the gradient (float32)."""
  logits, _ = model.apply(*teacher, x, train=False)
  return jax.lax.stop_gradient(logits.astype(jnp.float32))


def run_frozen(model: Model, params, state, frozen: dict, forget, retain, objective: loop.Objective, opts, rng,
               *, schedule: str = "sequential", forget_epochs: int | None = None,
               forget_batch_size: int | None = None):
  """`loop.unlearn_loop` with frozen networks carried in the state; returns the student's ``(params, state)``.

  Args:
    model, params, state: the student's network and starting point (the Original).
    frozen: ``{name: (params, state)}`` of the frozen networks the terms read (`frozen_term`).
    forget, retain: the splits of the objective's terms (either may be None with its term).
    objective: terms written with `frozen_term`.
    opts: optimiser fields of `unlearn_jax.train.make_optimizer` plus ``epochs`` and ``batch_size``.
    rng: PRNG key of the loop (shuffling, dropout).
    schedule, forget_epochs: as in `loop.unlearn_loop`.
    forget_batch_size: rows per forget step (defaults to ``opts.batch_size``).
  """
  bs, fbs = opts.batch_size, forget_batch_size or opts.batch_size
  steps = loop.steps_per_epoch(forget, retain, objective, schedule=schedule, batch_size=bs, forget_batch_size=fbs)
  tx = train_lib.make_optimizer(opts, steps)
  params, carried, _ = loop.unlearn_loop(model, params, carry(state, frozen), forget, retain, objective=objective,
                                         tx=tx, epochs=opts.epochs, batch_size=bs, rng=rng, schedule=schedule,
                                         forget_epochs=forget_epochs, forget_batch_size=fbs)
  return params, carried[MODEL]


# ---------------------------------------------------------------------------------------------------------------
# SCRUB.
# ---------------------------------------------------------------------------------------------------------------
def distill_kl(teacher_logits: jax.Array, student_logits: jax.Array, temperature: float) -> jax.Array:
  """``T² · mean_batch KL(softmax(t/T) ‖ softmax(s/T))``: SCRUB's (RepDistiller's) ``DistillKL``.

  References:
    Hinton et al. 2015; Kurmanji et al. 2023 (``DistillKL``: ``kl_div(sum) · T² / batch``).
  """
  return temperature ** 2 * obj.kl_divergence(teacher_logits, student_logits, temperature)


def scrub_max_term(model: Model, temperature: float, teacher: str = "teacher") -> loop.Term:
  """SCRUB's max step on a forget batch: ``-distill_kl(teacher, student)`` (ascends the KL)."""

  def fn(params, state, frozen, batch, rng, epoch):
    del epoch
    x, y = batch
    logits, state = model.apply(params, state, x, train=True, rng=rng)
    kl = distill_kl(frozen_logits(model, frozen[teacher], x), logits, temperature)
    return -kl, (state, {"kl": kl, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)})

  return frozen_term(fn)


def scrub_min_term(model: Model, temperature: float, ce_weight: float, kl_weight: float,
                   teacher: str = "teacher") -> loop.Term:
  """SCRUB's min step on a retain batch: ``γ·CE(student, y) + α·distill_kl(teacher, student)``.

  ``ce_weight`` is the reference's γ (``gamma``), ``kl_weight`` its α (``alpha``).
  """

  def fn(params, state, frozen, batch, rng, epoch):
    del epoch
    x, y = batch
    logits, state = model.apply(params, state, x, train=True, rng=rng)
    ce = train_lib.cross_entropy(logits, y)
    kl = distill_kl(frozen_logits(model, frozen[teacher], x), logits, temperature)
    return ce_weight * ce + kl_weight * kl, (state, {"ce": ce, "kl": kl,
                                             "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)})

  return frozen_term(fn)


def scrub_objective(model: Model, *, temperature: float, ce_weight: float, kl_weight: float) -> loop.Objective:
  """SCRUB's max (forget) and min (retain) terms; the teacher is ``frozen['teacher']``."""
  return loop.Objective(forget=scrub_max_term(model, temperature),
                        retain=scrub_min_term(model, temperature, ce_weight, kl_weight))


# The optimiser and loop fields of `methods.LOOP_DEFAULTS`, less ``phases``: these methods fix their schedule.
_LOOP_FIELDS = {k: v for k, v in methods.LOOP_DEFAULTS.items() if k != "phases"}
# The reference's large-scale CIFAR-10 setting (SCRUB repository, large_scale_unlearning.ipynb): SGD lr 5e-4,
# momentum 0.9, weight decay 5e-4, 3 epochs of which the first 2 have max steps, kd_T 4, gamma 0.99,
# alpha 0.001, forget batches of 512 and retain batches of 128. Its step decay at epochs (3, 5, 9) never fires
# within 3 epochs, so the learning rate is constant. The reference's gamma and alpha are ``ce_weight`` and
# ``kl_weight`` here: ``gamma`` is already the learning-rate step-decay factor of the loop fields.
SCRUB_DEFAULTS = dict(_LOOP_FIELDS, lr=5e-4, epochs=3, batch_size=128, momentum=0.9, weight_decay=5e-4,
                      msteps=2, temperature=4.0, ce_weight=0.99, kl_weight=0.001, forget_batch_size=512)


def _check_scrub_options(opts) -> None:
  """``msteps`` an integer >= 0; ``ce_weight``/``kl_weight`` (the loss weights) >= 0."""
  if isinstance(opts.msteps, bool) or not isinstance(opts.msteps, int) or opts.msteps < 0:
    raise ValueError(f"method.msteps={opts.msteps!r}: must be an integer >= 0")
  for key in ("ce_weight", "kl_weight"):
    if not opts[key] >= 0:
      raise ValueError(f"method.{key}={opts[key]!r}: must be >= 0 (a loss weight)")


@register("scrub", check=_check_scrub_options, **SCRUB_DEFAULTS)
def scrub(model, params, state, forget, retain, *, config, rng):
  """SCRUB: max steps ``-T²KL`` on the forget set (first ``msteps`` epochs), min steps ``γCE + αT²KL`` on retain.

  The teacher is the Original, frozen, in eval mode; the student runs in train mode. Options (reference
  defaults, see `SCRUB_DEFAULTS`): ``msteps`` (epochs with max steps), ``temperature`` (kd_T), ``ce_weight``
  (γ, the reference's gamma), ``kl_weight`` (α, its alpha), ``forget_batch_size``, plus the optimiser fields of
  `methods.LOOP_DEFAULTS` (``epochs``, ``lr``, ``optimizer``, ``momentum``, ``weight_decay``, ``schedule``...,
  ``batch_size`` for the retain set). The schedule is always sequential: each epoch runs all max steps, then
  all min steps, with one optimiser state.

  References:
    Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023.
  """
  opts = options(config, "scrub")
  if opts.msteps < 0:
    raise ValueError(f"method.msteps={opts.msteps}: must be >= 0")
  objective = scrub_objective(model, temperature=opts.temperature, ce_weight=opts.ce_weight,
                              kl_weight=opts.kl_weight)
  if opts.msteps == 0:
    objective = objective._replace(forget=None)
  return run_frozen(model, params, state, {"teacher": (params, state)}, forget, retain, objective, opts, rng,
                    forget_epochs=opts.msteps, forget_batch_size=opts.forget_batch_size)


# ---------------------------------------------------------------------------------------------------------------
# Bad teacher.
# ---------------------------------------------------------------------------------------------------------------
def _leaf_name(path) -> str:
  key = path[-1] if path else None
  return str(getattr(key, "key", getattr(key, "name", key)))


@jax.jit
def random_init_like(params: Pytree, rng: jax.Array) -> Pytree:
  """A freshly initialised network with the structure of ``params``, drawn from ``rng``.

  Leaves named ``kernel`` are drawn LeCun-normal (Flax's default for ``Dense``/``Conv``: variance
  ``1 / fan_in`` with ``fan_in`` the product of all but the last axis), ``scale`` leaves (normalisation layers)
  are ones, every other leaf (biases, shifts) is zero. This is the incompetent teacher of the bad-teacher
  method, whose reference builds an untrained network of the same architecture.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(rng, max(1, len(flat)))
  out = []
  for (path, leaf), key in zip(flat, keys):
    name = _leaf_name(path)
    if name == "kernel" and leaf.ndim >= 2:
      out.append(jax.nn.initializers.lecun_normal()(key, leaf.shape, leaf.dtype))
    elif name == "scale":
      out.append(jnp.ones_like(leaf))
    else:
      out.append(jnp.zeros_like(leaf))
  return jax.tree.unflatten(treedef, out)


@jax.jit
def fresh_state_like(state: Pytree) -> Pytree:
  """Non-trained collections of a fresh network: BatchNorm ``var`` ones, every other leaf zeros."""
  return jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.ones_like(v) if _leaf_name(p) == "var" else jnp.zeros_like(v), state)


def bad_teacher_loss(student_logits: jax.Array, competent_logits: jax.Array, incompetent_logits: jax.Array,
                     is_forget: jax.Array, temperature: float = 1.0) -> jax.Array:
  """``mean_i KL(q_i ‖ softmax(s_i/T))`` with ``q_i`` the incompetent teacher's ``softmax(·/T)`` on forget rows
  (``is_forget`` 1) and the competent teacher's on the others.

  References:
    Chundawat et al. 2023 (``UnlearnerLoss``; see the module docstring for the reduction).
  """
  flag = is_forget.astype(jnp.float32)[:, None]
  teacher = (flag * jax.nn.softmax(incompetent_logits.astype(jnp.float32) / temperature)
             + (1.0 - flag) * jax.nn.softmax(competent_logits.astype(jnp.float32) / temperature))
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  log_t = jnp.log(jnp.where(teacher > 0, teacher, 1.0))
  return jnp.mean(jnp.sum(teacher * (log_t - log_s), axis=-1))


def bad_teacher_term(model: Model, temperature: float = 1.0) -> loop.Term:
  """The bad-teacher loss on a mixed batch ``(x, is_forget)``; teachers ``frozen['competent'|'incompetent']``."""

  def fn(params, state, frozen, batch, rng, epoch):
    del epoch
    x, is_forget = batch
    logits, state = model.apply(params, state, x, train=True, rng=rng)
    loss = bad_teacher_loss(logits, frozen_logits(model, frozen["competent"], x),
                            frozen_logits(model, frozen["incompetent"], x), is_forget, temperature)
    return loss, (state, {"forget_rows": jnp.mean(is_forget.astype(jnp.float32))})

  return frozen_term(fn)


def mixed_split(forget: split_lib.Split, retain: split_lib.Split | None, retain_fraction: float,
                rng: jax.Array) -> split_lib.Split:
  """The forget set and ``int(retain_fraction · |retain|)`` random retain rows, ``y`` = 1 on forget rows, else 0.

  The reference's ``UnLearningData`` over the forget set and a random 30% of the retain set; the loop shuffles
  the rows, so batches mix both kinds.
  """
  if not 0.0 <= retain_fraction <= 1.0:
    raise ValueError(f"method.retain_fraction={retain_fraction}: must be in [0, 1]")
  k = int(retain_fraction * retain.size) if retain is not None else 0
  if retain_fraction > 0 and retain is None:
    raise ValueError("bad_teacher: retain_fraction > 0 needs a retain split")
  return _mix(forget.x, retain.x if k else None, rng, k)


@functools.partial(jax.jit, static_argnames="k")
def _mix(forget_x, retain_x, rng, k: int) -> split_lib.Split:
  xs, flags = [forget_x], [jnp.ones((forget_x.shape[0],), jnp.int32)]
  if k:
    rows = jax.random.permutation(rng, retain_x.shape[0])[:k]
    xs.append(retain_x[rows])
    flags.append(jnp.zeros((k,), jnp.int32))
  return split_lib.Split(jnp.concatenate(xs), jnp.concatenate(flags))


# The reference notebook (CIFARSuper20_Rocket_Unlearn.ipynb): Adam lr 1e-4, 1 epoch, batches of 256,
# KL_temperature 1, a random 30% of the retain set.
BAD_TEACHER_DEFAULTS = dict(_LOOP_FIELDS, optimizer="adam", lr=1e-4, epochs=1, batch_size=256, weight_decay=0.0,
                            temperature=1.0, retain_fraction=0.3)


@register("bad_teacher", **BAD_TEACHER_DEFAULTS)
def bad_teacher(model, params, state, forget, retain, *, config, rng):
  """Bad teacher: distil the Original on retain rows and a randomly initialised network on forget rows.

  Options (reference defaults, see `BAD_TEACHER_DEFAULTS`): ``temperature`` (KL_temperature),
  ``retain_fraction`` (share of the retain set mixed with the forget set), plus the optimiser fields of
  `methods.LOOP_DEFAULTS` (Adam by default). The incompetent teacher is `random_init_like` of the Original
  with `fresh_state_like` statistics, drawn from ``rng``.

  References:
    Chundawat et al., "Can Bad Teaching Induce Forgetting?", AAAI 2023.
  """
  opts = options(config, "bad_teacher")
  init_rng, subset_rng, loop_rng = jax.random.split(rng, 3)
  incompetent = (random_init_like(params, init_rng), fresh_state_like(state))
  data = mixed_split(forget, retain, opts.retain_fraction, subset_rng)
  frozen = {"competent": (params, state), "incompetent": incompetent}
  objective = loop.Objective(retain=bad_teacher_term(model, opts.temperature))
  return run_frozen(model, params, state, frozen, None, data, objective, opts, loop_rng)
