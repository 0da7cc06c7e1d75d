"""Vectorised hyperparameter sweeps: a grid of settings of one unlearning method as one compiled program.

Three kinds of sweep, one entry point (`sweep`):

* iterative methods with a `unlearn_jax.unlearning.methods.Plan` (`sweep_method`): ``lrs × coefs`` trained together;
* one-shot methods with one scalar coefficient (`unlearn_jax.unlearning.ONE_SHOT`: SSD/LFSSD ``alpha``, Fisher's
  noise ``alpha``, influence/WoodFisher's step ``alpha``; `sweep_one_shot`): the expensive statistics (importances,
  Fisher, ``F⁻¹ v``) computed once and the cheap update ``jax.vmap``-ped over the coefficient values;
* every other method (SCRUB, bad teacher, boundary, LAF; `sweep_sequential`): one run per learning rate, in turn.

`sweep_method` runs an iterative method (one with a `unlearn_jax.unlearning.methods.Plan`: ft, ga, neggrad_plus,
rl, l1_sparse, salun, salun_soft) over the grid ``learning rates × coefficient values`` with
`unlearn_jax.unlearning.loop.unlearn_grid`: every phase of the loop is ``jax.vmap``-ped over the grid points, so
all of them train together, on the same batches and random labels, in one jitted program per phase. The
coefficient is the method's main option (``Plan.coef``: NegGrad+'s ``beta``, l1-sparse's ``alpha``, SalUn's mask
``fraction``); a coefficient that only changes a mask (SalUn) gets one precomputed mask per grid point.

Grid point ``g`` computes what the method computes alone with ``lr = settings[g]['lr']`` and
``<coef> = settings[g][<coef>]`` and the same ``rng`` (checked to 1e-5 in ``tests/test_sweep.py``), so the
best point of a sweep can be rerun, or reported over other seeds, with the method itself.

Example:
    >>> params, state, settings, history = sweep_method('salun', model, params, state, forget, retain,
    ...     options={'epochs': 10}, lrs=(1e-3, 3e-3, 1e-2, 3e-2), coefs=(0.3, 0.5, 0.7), rng=jax.random.key(0))
    >>> jax.tree.leaves(params)[0].shape[0]   # 12 grid points
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from unlearn_jax import train as train_lib
from unlearn_jax import unlearning
from unlearn_jax.unlearning import loop, methods

Pytree = Any


def sweepable() -> tuple[str, ...]:
  """The methods `sweep_method` can vectorise (those with a registered `methods.Plan`)."""
  return tuple(sorted(methods.PLANS))


def kind(name: str) -> str:
  """How `sweep` runs method ``name``: ``'vmapped'`` (a Plan), ``'one_shot'`` or ``'sequential'``."""
  unlearning.get_method(name)
  if name in methods.PLANS:
    return "vmapped"
  return "one_shot" if name in unlearning.ONE_SHOT else "sequential"


def coefficient(name: str) -> str | None:
  """The option a sweep of ``name`` varies besides (or, one-shot, instead of) the learning rate, or None."""
  if name in unlearning.ONE_SHOT:
    return unlearning.ONE_SHOT[name][0]
  return methods.COEFS.get(name)


def grid_settings(lrs: Sequence[float], coef: str | None, coefs: Sequence[float] | None) -> list[dict]:
  """The grid, coefficient-major: ``[{'lr': lr, coef: c} for c in coefs for lr in lrs]``."""
  if not lrs:
    raise ValueError("sweep: lrs is empty")
  for lr in lrs:
    if not lr > 0:
      raise ValueError(f"sweep: learning rate {lr!r} must be positive")
  if coef is None:
    if coefs:
      raise ValueError("sweep: coefs given for a method without a coefficient")
    return [{"lr": float(lr)} for lr in lrs]
  return [{"lr": float(lr), coef: float(c)} for c in coefs for lr in lrs]


def sweep_method(name: str, model, params, state, forget, retain, *, options=None, lrs: Sequence[float],
                 coefs: Sequence[float] | None = None, rng: jax.Array):
  """Runs method ``name`` at every ``(lr, coefficient)`` of the grid as one vmapped unlearning loop.

  Args:
    name: a method of `sweepable`.
    model, params, state, forget, retain: as for the method itself.
    options: the method's other options (defaults: its registered ones); ``lr`` and the coefficient are
      replaced by the grid's values.
    lrs: learning rates.
    coefs: values of the method's coefficient (``methods.PLANS[name]``'s ``Plan.coef``); None: the option's value.
    rng: the key every grid point uses (the one the method would get).

  Returns:
    ``(params, state, settings, history)``: ``params``/``state`` with a leading axis over the grid points, the
    list of their settings, and the loop history (``history['finite']``: which points stayed finite).

  Raises:
    ValueError: for a method without a plan, an unknown option, or an empty or non-positive grid.
  """
  if name not in methods.PLANS:
    raise ValueError(f"sweep: method {name!r} cannot be vectorised; choose one of {sweepable()}")
  opts = unlearning.options(options, name)
  plan = methods.PLANS[name](model, params, state, forget, retain, opts)
  assert plan.coef == methods.COEFS[name], (name, plan.coef)
  if plan.coef is not None and coefs is None:
    coefs = (opts[plan.coef],)
  settings = grid_settings(lrs, plan.coef, coefs)
  hypers = {"lr": jnp.asarray([s["lr"] for s in settings], jnp.float32)}
  if plan.coef is not None:
    hypers["coef"] = jnp.asarray([s[plan.coef] for s in settings], jnp.float32)
  masks = None
  if plan.mask is not None:  # one mask per distinct coefficient, repeated over the learning rates
    per_coef = {c: plan.mask(c) for c in dict.fromkeys(s[plan.coef] for s in settings)}
    masks = jax.tree.map(lambda *m: jnp.stack(m), *[per_coef[s[plan.coef]] for s in settings])
  kw = methods.loop_kwargs(plan, opts, forget, retain)
  steps = kw.pop("steps")

  def make(hyper):
    objective = plan.objective(hyper["coef"] if plan.coef is not None else None)
    return objective, train_lib.make_optimizer(opts, steps, lr=hyper["lr"])

  out_params, out_state, history = loop.unlearn_grid(params, state, kw.pop("forget"), kw.pop("retain"), make=make,
                                                     hypers=hypers, masks=masks, rng=rng, desc=f"sweep {name}",
                                                     **kw)
  return out_params, out_state, settings, history


def grid_point(tree: Pytree, g: int) -> Pytree:
  """Grid point ``g`` of a tree with a leading grid axis."""
  return jax.tree.map(lambda a: a[g], tree)


def sweep_one_shot(name: str, model, params, state, forget, retain, *, options=None, coefs: Sequence[float],
                   rng: jax.Array):
  """A one-shot method of `unlearn_jax.unlearning.ONE_SHOT` at every value of its coefficient, vmapped.

  The statistics the method needs are computed once with ``options`` (and ``rng``); the update is
  ``jax.vmap``-ped over ``coefs``, so point ``g`` equals the method run alone with ``<coef> = coefs[g]`` and the
  same ``rng``.

  Returns:
    ``(params, state, settings, history)`` as `sweep_method` (``settings[g] = {<coef>: coefs[g]}``).
  """
  if name not in unlearning.ONE_SHOT:
    raise ValueError(f"sweep: method {name!r} is not a one-shot method; choose one of {sorted(unlearning.ONE_SHOT)}")
  coef, prepare = unlearning.ONE_SHOT[name]
  if not coefs:
    raise ValueError(f"sweep: no values of {name}'s {coef!r} given")
  for c in coefs:
    if not c >= 0:
      raise ValueError(f"sweep: {coef}={c!r} must be >= 0")
  apply = prepare(model, params, state, forget, retain, unlearning.options(options, name), rng)
  out_params, out_state = jax.jit(jax.vmap(apply))(jnp.asarray(coefs, jnp.float32))
  finite = _finite(out_params)
  return out_params, out_state, [{coef: float(c)} for c in coefs], {"finite": finite}


# The option a sequential sweep varies for methods whose learning rate is not called ``lr`` (LAF: the
# unlearning stage's ``lr_ue``; its alignment stage keeps ``lr_ra``).
LR_KEYS = {"laf": "lr_ue"}


def lr_key(name: str) -> str:
  """The learning-rate option `sweep_sequential` varies for method ``name``."""
  return LR_KEYS.get(name, "lr")


def sweep_sequential(name: str, model, params, state, forget, retain, *, options=None, lrs: Sequence[float],
                     rng: jax.Array):
  """Any registered method at each learning rate (option `lr_key`) in turn, for methods with no vectorised form.

  Returns:
    ``(params, state, settings, history)`` as `sweep_method`, the runs stacked on a leading axis.
  """
  key = lr_key(name)
  opts = unlearning.options(options, name)
  if key not in opts:
    raise ValueError(f"sweep: method {name!r} has no learning rate {key!r} to sweep")
  settings = [{key: s["lr"]} for s in grid_settings(lrs, None, None)]
  method = unlearning.get_method(name)
  runs = [method(model, params, state, forget, retain, config={**opts.to_dict(), **s}, rng=rng) for s in settings]
  out_params, out_state = jax.tree.map(lambda *a: jnp.stack(a), *runs)
  return out_params, out_state, settings, {"finite": _finite(out_params)}


def sweep(name: str, model, params, state, forget, retain, *, options=None, lrs: Sequence[float] = (),
          coefs: Sequence[float] | None = None, rng: jax.Array):
  """Runs method ``name`` over its grid the fastest way it allows (see `kind`): learning rates ``lrs`` (and
  ``coefs``) for a Plan, ``coefs`` for a one-shot method (``lrs`` must be empty), ``lrs`` for the others.

  Returns:
    ``(params, state, settings, history)`` as `sweep_method`.
  """
  how = kind(name)
  kw = dict(options=options, rng=rng)
  if how == "vmapped":
    return sweep_method(name, model, params, state, forget, retain, lrs=lrs, coefs=coefs, **kw)
  if how == "one_shot":
    if lrs:
      raise ValueError(f"sweep: {name!r} is one-shot: it has no learning rate (give coefs only)")
    return sweep_one_shot(name, model, params, state, forget, retain, coefs=coefs, **kw)
  if coefs:
    raise ValueError(f"sweep: {name!r} runs sequentially over learning rates only (coefs given)")
  return sweep_sequential(name, model, params, state, forget, retain, lrs=lrs, **kw)


def _finite(tree: Pytree) -> jax.Array:
  """``(G,)`` bools: whether every entry of grid point ``g`` of ``tree`` is finite."""
  per_leaf = [jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1) for a in jax.tree.leaves(tree)
              if jnp.issubdtype(a.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(per_leaf), axis=0)
