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

Every sweep also takes a population (``population=True``; `unlearn_jax.population`): ``params``/``state`` then
carry a leading model axis ``N``, ``rng`` is one key per member (or one key, split into ``N``), and the grid runs
for every member: point ``g * N + i`` is setting ``g`` applied to member ``i`` with key ``i``, still one program
per phase (Plans: `loop.unlearn_grid` with ``stacked=True``; one-shot methods: statistics and update vmapped over
the members). `unlearn_population` runs a method at its own options over a population that way, or member by member
for the methods with no vectorised form, and says which.

Grid point ``g`` computes what the method computes alone with ``lr = settings[g]['lr']`` and
``<coef> = settings[g][<coef>]`` and the same ``rng`` (checked to 1e-5 in ``tests/test_sweep.py``), so the
best point of a sweep can be rerun, or reported over other seeds, with the method itself.

Example:
    >>> params, state, settings, history = sweep_method('salun', model, params, state, forget, retain,
    ...     options={'epochs': 10}, lrs=(1e-3, 3e-3, 1e-2, 3e-2), coefs=(0.3, 0.5, 0.7), rng=jax.random.key(0))
    >>> jax.tree.leaves(params)[0].shape[0]   # 12 grid points
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from unlearn_jax import population as population_lib
from unlearn_jax import train as train_lib
from unlearn_jax import unlearning
from unlearn_jax.unlearning import _dmm, loop, methods

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


def _members(params, state, rng, population: bool):
  """``(N, first member's (params, state), per-member keys)`` of a population; ``(None, (params, state), rng)``
  otherwise."""
  if not population:
    return None, (params, state), rng
  n = population_lib.check_size(population_lib.size_of(params))
  first = (population_lib.member(params, 0), population_lib.member(state, 0))
  return n, first, population_lib.keys(rng, n)


def _over_members(settings: list[dict], n: int | None) -> list[dict]:
  """The settings of a population sweep, setting-major: ``[{**s, 'member': i} for s in settings for i in ...]``."""
  return settings if n is None else [{**s, "member": i} for s in settings for i in range(n)]


def sweep_method(name: str, model, params, state, forget, retain, *, options=None, lrs: Sequence[float],
                 coefs: Sequence[float] | None = None, rng: jax.Array, population: bool = False):
  """Runs method ``name`` at every ``(lr, coefficient)`` of the grid as one vmapped unlearning loop.

  Args:
    name: a method of `sweepable`.
    model, params, state, forget, retain: as for the method itself.
    options: the method's other options (defaults: its registered ones); ``lr`` and the coefficient are
      replaced by the grid's values.
    lrs: learning rates.
    coefs: values of the method's coefficient (``methods.PLANS[name]``'s ``Plan.coef``); None: the option's value.
    rng: the key every grid point uses (the one the method would get); with ``population``, one per member.
    population: ``params``/``state`` carry a leading model axis (see the module docstring); a mask (SalUn) is
      computed for each member from its own parameters.

  Returns:
    ``(params, state, settings, history)``: ``params``/``state`` with a leading axis over the grid points (times
    the members), the list of their settings (with ``'member'``), and the loop history (``history['finite']``:
    which points stayed finite).

  Raises:
    ValueError: for a method without a plan, an unknown option, or an empty or non-positive grid.
  """
  if name not in methods.PLANS:
    raise ValueError(f"sweep: method {name!r} cannot be vectorised; choose one of {sweepable()}")
  opts = unlearning.options(options, name)
  n, first, rng = _members(params, state, rng, population)
  plan = methods.PLANS[name](model, *first, forget, retain, opts)
  assert plan.coef == methods.COEFS[name], (name, plan.coef)
  if plan.coef is not None and coefs is None:
    coefs = (opts[plan.coef],)
  settings = grid_settings(lrs, plan.coef, coefs)
  hypers = {"lr": jnp.asarray([s["lr"] for s in settings], jnp.float32)}
  if plan.coef is not None:
    hypers["coef"] = jnp.asarray([s[plan.coef] for s in settings], jnp.float32)
  masks = None
  if plan.mask is not None:  # one mask per distinct coefficient, repeated over the learning rates
    distinct = tuple(dict.fromkeys(s[plan.coef] for s in settings))
    if n is None:
      per_coef = {c: plan.mask(c) for c in distinct}
    else:  # each member's own mask, from its own parameters: (N, ...) leaves
      member_masks = lambda ps: (lambda pl: {c: pl.mask(c) for c in distinct})(
          methods.PLANS[name](model, *ps, forget, retain, opts))
      # lax.map, not vmap: one compiled program, each member's saliency and top-k exactly as alone (a vmapped
      # `sharding.top_k_mask` over 2 members also crashes XLA:CPU's LLVM backend at optimisation level 1)
      per_coef = jax.jit(lambda ps: jax.lax.map(member_masks, ps))((params, state))
    masks = jax.tree.map(lambda *m: jnp.concatenate(m) if n else jnp.stack(m),
                         *[per_coef[s[plan.coef]] for s in settings])
  if n is not None:  # point g * N + i: setting g on member i
    hypers = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), hypers)
    params, state = jax.tree.map(lambda a: jnp.concatenate([a] * len(settings)), (params, state))
    rng = jnp.concatenate([rng] * len(settings))
  kw = methods.loop_kwargs(plan, opts, forget, retain)
  steps = kw.pop("steps")

  def make(hyper):
    objective = plan.objective(hyper["coef"] if plan.coef is not None else None)
    return objective, train_lib.make_optimizer(opts, steps, lr=hyper["lr"])

  out_params, out_state, history = loop.unlearn_grid(params, state, kw.pop("forget"), kw.pop("retain"), make=make,
                                                     hypers=hypers, masks=masks, rng=rng, desc=f"sweep {name}",
                                                     stacked=n is not None, **kw)
  return out_params, out_state, _over_members(settings, n), history


def grid_point(tree: Pytree, g: int) -> Pytree:
  """Grid point ``g`` of a tree with a leading grid axis."""
  return jax.tree.map(lambda a: a[g], tree)


def sweep_one_shot(name: str, model, params, state, forget, retain, *, options=None, coefs: Sequence[float],
                   rng: jax.Array, population: bool = False, member_batch: int | None = None):
  """A one-shot method of `unlearn_jax.unlearning.ONE_SHOT` at every value of its coefficient, vmapped.

  The statistics the method needs are computed once with ``options`` (and ``rng``); the update is
  ``jax.vmap``-ped over ``coefs``, so point ``g`` equals the method run alone with ``<coef> = coefs[g]`` and the
  same ``rng``. With ``population``, the statistics and the update are vmapped over the members too (one program;
  member ``i`` with key ``i``; ``member_batch`` members at a time, `jax.lax.map`'s ``batch_size``, bounds the
  memory of statistics that are large per member, e.g. influence's per-example gradients; None: all at once).

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
  opts = unlearning.options(options, name)
  n, _, rng = _members(params, state, rng, population)
  grid = lambda p, s, k: jax.vmap(prepare(model, p, s, forget, retain, opts, k))(jnp.asarray(coefs, jnp.float32))
  if n is None:  # the statistics eagerly, the update vmapped over the coefficients
    apply = prepare(model, params, state, forget, retain, opts, rng)
    out_params, out_state = jax.jit(jax.vmap(apply))(jnp.asarray(coefs, jnp.float32))
  else:  # (N, G, ...) -> (G * N, ...), setting-major
    out = jax.jit(lambda *a: jax.lax.map(lambda m: grid(*m), a, batch_size=member_batch or n))(params, state, rng)
    out_params, out_state = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:]), out)
  return out_params, out_state, _over_members([{coef: float(c)} for c in coefs], n), {"finite": _finite(out_params)}


# The option a sequential sweep varies for methods whose learning rate is not called ``lr`` (LAF: the
# unlearning stage's ``lr_ue``; its alignment stage keeps ``lr_ra``).
LR_KEYS = {"laf": "lr_ue"}


def lr_key(name: str) -> str:
  """The learning-rate option `sweep_sequential` varies for method ``name``."""
  return LR_KEYS.get(name, "lr")


def sweep_sequential(name: str, model, params, state, forget, retain, *, options=None, lrs: Sequence[float],
                     rng: jax.Array, population: bool = False):
  """Any registered method at each learning rate (option `lr_key`) in turn, for methods with no vectorised form
  (with ``population``: for each member in turn, member ``i`` with key ``i``).

  Returns:
    ``(params, state, settings, history)`` as `sweep_method`, the runs stacked on a leading axis.
  """
  key = lr_key(name)
  opts = unlearning.options(options, name)
  if key not in opts:
    raise ValueError(f"sweep: method {name!r} has no learning rate {key!r} to sweep")
  settings = [{key: s["lr"]} for s in grid_settings(lrs, None, None)]
  n, _, rng = _members(params, state, rng, population)
  configs = [{**opts.to_dict(), **s} for s in settings]
  out_params, out_state = _one_by_one(name, model, params, state, forget, retain, configs, rng, n)
  return out_params, out_state, _over_members(settings, n), {"finite": _finite(out_params)}


def _one_by_one(name: str, model, params, state, forget, retain, configs: list[dict], rng, n: int | None,
                inputs=None):
  """The method at each config in turn (and, for a population of ``n``, on each member ``i`` with key
  ``rng[i]`` and the keyword inputs ``inputs(i)``), stacked setting-major."""
  method = unlearning.get_method(name)
  if n is None:
    runs = [method(model, params, state, forget, retain, config=c, rng=rng) for c in configs]
  else:
    inputs = inputs or (lambda i: {})
    runs = [method(model, population_lib.member(params, i), population_lib.member(state, i), forget, retain,
                   config=c, rng=rng[i], **inputs(i)) for c in configs for i in range(n)]
  return jax.tree.map(lambda *a: jnp.stack(a), *runs)


def sweep(name: str, model, params, state, forget, retain, *, options=None, lrs: Sequence[float] = (),
          coefs: Sequence[float] | None = None, rng: jax.Array, population: bool = False,
          member_batch: int | None = None):
  """Runs method ``name`` over its grid the fastest way it allows (see `kind`): learning rates ``lrs`` (and
  ``coefs``) for a Plan, ``coefs`` for a one-shot method (``lrs`` must be empty), ``lrs`` for the others; over
  every member of a population with ``population`` (see the module docstring).

  Returns:
    ``(params, state, settings, history)`` as `sweep_method`.
  """
  how = kind(name)
  kw = dict(options=options, rng=rng, population=population)
  if how == "vmapped":
    return sweep_method(name, model, params, state, forget, retain, lrs=lrs, coefs=coefs, **kw)
  if how == "one_shot":
    if lrs:
      raise ValueError(f"sweep: {name!r} is one-shot: it has no learning rate (give coefs only)")
    return sweep_one_shot(name, model, params, state, forget, retain, coefs=coefs, member_batch=member_batch, **kw)
  if coefs:
    raise ValueError(f"sweep: {name!r} runs sequentially over learning rates only (coefs given)")
  return sweep_sequential(name, model, params, state, forget, retain, lrs=lrs, **kw)


def unlearn_population(name: str, model, params, state, forget, retain, *, options=None, rng: jax.Array,
                       member_batch: int | None = None, inputs=None):
  """Method ``name`` at its options (``options``, else its defaults) on every member of a population.

  Plans and one-shot methods run over the model axis as one program (`sweep` with ``population=True`` and a
  one-point grid); so do DMM and oracle matching (`unlearn_jax.unlearning._dmm.match_population`: each member's
  matching set and targets built in turn, the fine-tuning one program; ``'vmapped'``); the others run member by
  member. Member ``i`` gets key ``i`` of `population.keys` ``(rng, N)``
  and computes what the method computes alone on ``member(params, i)`` with that key. ``member_batch``: see
  `sweep_one_shot`. ``inputs(i)``: keyword arguments of member ``i``'s call (the run inputs of DMM and oracle
  matching, ``subset_outputs`` / ``oracles``, or of a member-by-member method); None for the others.

  Returns:
    ``(params, state, info)``: the unlearned population (leading axis ``N``), and ``info`` with ``how``
    (``'vmapped'``, ``'one_shot'`` or ``'member_by_member'``), ``finite`` (``(N,)`` bools) and ``seconds``.
  """
  how = kind(name)
  opts = unlearning.options(options, name)
  start = time.perf_counter()
  if name in _dmm.MATCHING and not opts.l2_to_original:
    how = "vmapped"
    out_params, out_state, history = _dmm.match_population(name, model, params, state, forget, retain, config=opts,
                                                           rng=_members(params, state, rng, True)[2], inputs=inputs)
  elif how == "sequential":
    how = "member_by_member"
    n, _, keys = _members(params, state, rng, True)
    out_params, out_state = _one_by_one(name, model, params, state, forget, retain, [opts.to_dict()], keys, n,
                                        inputs)
    history = {"finite": _finite(out_params)}
  else:
    if inputs is not None:
      raise ValueError(f"unlearn_population: {name!r} runs over the model axis and takes no per-member inputs")
    if how == "vmapped":
      coef = methods.COEFS[name]
      grid = dict(lrs=(opts.lr,), coefs=None if coef is None else (opts[coef],))
    else:
      grid = dict(coefs=(opts[coefficient(name)],), member_batch=member_batch)
    out_params, out_state, _, history = sweep(name, model, params, state, forget, retain, options=opts, rng=rng,
                                              population=True, **grid)
  jax.block_until_ready(out_params)
  return out_params, out_state, {"how": how, "finite": history["finite"], "seconds": time.perf_counter() - start}


def _finite(tree: Pytree) -> jax.Array:
  """``(G,)`` bools: whether every entry of grid point ``g`` of ``tree`` is finite."""
  per_leaf = [jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1) for a in jax.tree.leaves(tree)
              if jnp.issubdtype(a.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(per_leaf), axis=0)
