"""Datamodel Matching (DMM) and oracle matching: fine-tune the Original to match (predicted) Retrain outputs.

Both methods build a *matching set* — the forget rows (repeated ``forget_multiplier`` times) and a random sample
of ``retain_multiplier × |forget|`` retain rows — and targets for it, then fine-tune the Original with the mean
squared error between its logits and the targets (``loss='mse'``, mean over rows and classes; ``'ce'`` is the
reference's alternative: cross-entropy to the targets' softmax), run by the one unlearning loop
(`unlearn_jax.unlearning.loop`) as the retain term of an `Objective`:

* ``oracle_matching`` (the paper's upper bound, "OM"): the targets are the logits of Retrain models (oracles,
  averaged when there are several, as the reference averages ``num_oracles=10``), given as ``oracles=`` or as
  checkpoint directories in ``oracle_dirs`` (which `unlearn_jax.run` fills with the run's Retrain).
* ``dmm``: the targets are *predicted*: the Original's logits minus the forget set's attributed effect,
  ``z(x) − dm_multiplier · Σ_{i∈forget} θ_x[i]``, where ``θ_x`` are the datamodels of every logit of x fitted on
  the outputs of a population of models trained on random α-subsets of the training set
  (`unlearn_jax.attribution.datamodels`); with ``dm_terms='diagonal'`` (the reference ``dm_direct``'s
  ``diagonal_only``) only each forget row's effect on its own logits is kept, estimated from its own indicator
  alone (`self_effects`: the difference of the means over models with and without it), which is what few subset
  models can estimate. The population's outputs (`unlearn_jax.attribution.subsets`) are given
  as ``subset_outputs=`` or a directory ``attribution_dir``; `unlearn_jax.run` trains and caches them once per
  Original (``num_models`` members, subsets of a fraction ``alpha``) before the method's clock starts, so the
  table's run time is DMM's own (the attribution's time is reported apart).

Defaults follow the authors' code (``oracle_matching`` / ``dm_matching``, ``finetune``): Adam, lr 5e-4, 5 epochs,
batch size 512, the learning rate multiplied by 0.95 after every epoch (``ExponentialLR``), MSE on the logits,
``retain_multiplier=3``, ``forget_multiplier=1``, no pull towards the Original (``l2_to_original=0``, their
``wd_lambda``), ``dm_multiplier=1``. Differences: the matching set is reshuffled every epoch (the reference's loader
has ``shuffle=False``) and the last partial batch is dropped, as everywhere in the loop; the datamodels here are
fitted by ridge regression by default (``regression='ridge'``: closed form, λ chosen per target on held-out
models), where the paper fits ℓ1-regularised ones (``regression='lasso'``, the `fit_datamodels` default, whose
cost grows with steps × λ path × models × training rows × targets × classes — minutes to hours on a CPU for
thousands of targets); and ``num_models`` defaults to 64, where the paper uses 1,000-20,000 models trained on 50%
subsets. The paper's matching set is forget ∪ a retain sample, as here; no test rows are used.

References:
  Georgiev, Rinberg, Park, Garg, Ilyas, Madry and Neel, "Attribute-to-Delete: Machine Unlearning via Datamodel
  Matching", arXiv:2410.23232 (ICLR 2025); the authors' ``unlearning_algos`` code (``oracle_matching``,
  ``dm_matching``, ``DatamodelWrappedModel``).

Example:
    >>> params2, state2 = oracle_matching(model, params, state, forget, retain, config={},
    ...                                   rng=jax.random.key(0), oracles=[(retrain_params, retrain_state)])
    >>> params3, state3 = dmm(model, params, state, forget, retain, config={}, rng=jax.random.key(0),
    ...                       subset_outputs=outputs)   # SubsetOutputs of an α-subset population
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import checkpoint
from unlearn_jax import population as population_lib
from unlearn_jax.attribution import datamodels as dm_lib
from unlearn_jax.attribution import subsets as subsets_lib
from unlearn_jax import train as train_lib
from unlearn_jax.data import split as split_lib
from unlearn_jax.model import Model
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import methods
from unlearn_jax.unlearning import checked_options, register
from unlearn_jax.unlearning import teachers

Pytree = Any
LOSSES = ("mse", "ce")

# The authors' ``oracle_matching`` / ``dm_matching`` defaults (Adam 5e-4, 5 epochs, batch 512, ExponentialLR 0.95).
MATCH_DEFAULTS = dict(methods.LOOP_DEFAULTS, epochs=5, lr=5e-4, optimizer="adam", momentum=0.0, weight_decay=0.0,
                      schedule="exponential", gamma=0.95, batch_size=512, loss="mse", retain_multiplier=3.0,
                      forget_multiplier=1.0, l2_to_original=0.0)
DM_TERMS = ("all", "diagonal")
DMM_DEFAULTS = dict(MATCH_DEFAULTS, dm_multiplier=1.0, dm_terms="all", regression="ridge", num_lambdas=10,
                    lasso_eps=1e-2,
                    lasso_steps=300, num_models=64, alpha=0.5, attribution_dir="")


def _check_match_options(opts) -> None:
  if opts.loss not in LOSSES:
    raise ValueError(f"method.loss={opts.loss!r}: unknown; choose one of {LOSSES}")
  if opts.retain_multiplier < 0:
    raise ValueError(f"method.retain_multiplier={opts.retain_multiplier}: must be >= 0")
  if opts.forget_multiplier <= 0:
    raise ValueError(f"method.forget_multiplier={opts.forget_multiplier}: must be > 0")
  if opts.l2_to_original < 0:
    raise ValueError(f"method.l2_to_original={opts.l2_to_original}: must be >= 0")


def _check_dmm_options(opts) -> None:
  """`_check_match_options` and DMM's own: ``regression``, ``dm_terms``, the population's ``alpha`` in (0, 1) and
  ``num_models`` >= 3, ``num_lambdas`` and ``lasso_steps`` >= 1, ``lasso_eps`` in (0, 1]."""
  _check_match_options(opts)
  if opts.regression not in dm_lib.METHODS:
    raise ValueError(f"method.regression={opts.regression!r}: unknown; choose one of {dm_lib.METHODS}")
  if opts.dm_terms not in DM_TERMS:
    raise ValueError(f"method.dm_terms={opts.dm_terms!r}: unknown; choose one of {DM_TERMS}")
  subsets_lib.check_alpha(opts.alpha, "method.alpha")
  subsets_lib.check_num_models(opts.num_models, "method.num_models")
  for key in ("num_lambdas", "lasso_steps"):
    if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 1:
      raise ValueError(f"method.{key}={opts[key]!r}: must be an integer >= 1")
  if not 0 < opts.lasso_eps <= 1:
    raise ValueError(f"method.lasso_eps={opts.lasso_eps!r}: must be in (0, 1] (the smallest λ / the largest)")


def matching_rows(forget: split_lib.Split, retain: split_lib.Split, *, retain_multiplier: float,
                  forget_multiplier: float, rng: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """Positions ``(in forget, in retain)`` of the matching set: every forget row ``⌊forget_multiplier⌋`` times plus
  the first ``frac · |forget|`` again (the reference's ``duplicate_forget_indices``), and
  ``⌊retain_multiplier · |forget|⌋`` retain rows drawn without replacement."""
  nf = forget.size
  reps = int(forget_multiplier)
  f_rows = np.concatenate([np.tile(np.arange(nf), reps), np.arange(int(nf * (forget_multiplier - reps)))])
  nr = min(int(retain_multiplier * nf), retain.size)
  r_rows = np.sort(np.asarray(jax.random.choice(rng, retain.size, (nr,), replace=False))) if nr else \
      np.zeros((0,), np.int64)
  return f_rows.astype(np.int64), r_rows.astype(np.int64)


def match_term(model: Model, loss: str = "mse", l2_to_original: float = 0.0) -> loop.Term:
  """The matching loss on a batch ``(x, targets)``: MSE between the logits and the target logits (mean over rows
  and classes, ``torch.nn.functional.mse_loss``), or cross-entropy to ``softmax(targets)``; plus
  ``l2_to_original · ‖θ − θ_Original‖²`` (then the state must be a `teachers.carry` holding ``'original'``)."""

  def fn(params, state, frozen, batch, rng, epoch):
    del epoch
    x, targets = batch
    logits, state = model.apply(params, state, x, train=True, rng=rng)
    logits = logits.astype(jnp.float32)
    if loss == "mse":
      value = jnp.mean((logits - targets) ** 2)
    else:
      value = -jnp.mean(jnp.sum(jax.nn.softmax(targets) * jax.nn.log_softmax(logits), axis=-1))
    metrics = {"match": value}
    if l2_to_original:
      sq = sum(jnp.sum((p - q) ** 2) for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(frozen["original"][0])))
      value = value + l2_to_original * sq
      metrics["distance"] = jnp.sqrt(sq)
    return value, (state, metrics)

  if l2_to_original:
    return teachers.frozen_term(fn)
  return lambda params, state, batch, rng, epoch: fn(params, state, None, batch, rng, epoch)


def match_outputs(model: Model, params, state, x, targets, opts, rng):
  """Fine-tunes ``(params, state)`` so that its logits on ``x`` approach ``targets`` [n, C] (see `match_term`),
  with the optimiser and loop fields of ``opts``; returns ``(params, state)``."""
  split = split_lib.Split(x, jnp.asarray(targets, jnp.float32))
  objective = loop.Objective(retain=match_term(model, opts.loss, opts.l2_to_original))
  if opts.l2_to_original:
    return teachers.run_frozen(model, params, state, {"original": (params, state)}, None, split, objective, opts, rng)
  return methods.run_objective(model, params, state, None, split, objective, opts, rng)


def _eval_logits(model: Model, params, state, x) -> jax.Array:
  return jax.jit(lambda p, s, x: model.apply(p, s, x, train=False)[0].astype(jnp.float32))(params, state, x)


@register("oracle_matching", check=_check_match_options, **MATCH_DEFAULTS, oracle_dirs=())
def oracle_matching(model, params, state, forget, retain, *, config, rng, oracles: Sequence | None = None):
  """Oracle matching: fine-tune the Original towards the mean logits of Retrain models on forget ∪ a retain sample.

  Args:
    model, params, state: the Original.
    forget, retain: the splits.
    config: options (defaults in `MATCH_DEFAULTS`): the loop and optimiser fields, ``loss``,
      ``retain_multiplier``, ``forget_multiplier``, ``l2_to_original``, and ``oracle_dirs`` (checkpoint
      directories of Retrain models, used when ``oracles`` is not given).
    rng: PRNG key (the retain sample, then the loop).
    oracles: ``[(params, state), ...]`` of Retrain models (their logits are averaged).

  Returns:
    ``(params, state)``.
  """
  opts, x, targets, loop_rng = matching_set("oracle_matching", model, params, state, forget, retain, config=config,
                                            rng=rng, oracles=oracles)
  return match_outputs(model, params, state, x, targets, opts, loop_rng)


def _oracle_set(model, params, state, forget, retain, opts, rng, oracles=None):
  """`oracle_matching`'s matching inputs and targets: ``(x, mean oracle logits on x)``."""
  if oracles is None:
    if not opts.oracle_dirs:
      raise ValueError("method.oracle_dirs: empty; give Retrain checkpoint directories (or oracles=...)")
    oracles = []
    for d in opts.oracle_dirs:
      found = checkpoint.restore(d, (params, state))
      if found is None:
        raise ValueError(f"method.oracle_dirs: {d}: no checkpoint there")
      oracles.append(found[:2])
  if not oracles:
    raise ValueError("oracles: empty; give at least one Retrain (params, state)")
  f_rows, r_rows = matching_rows(forget, retain, retain_multiplier=opts.retain_multiplier,
                                 forget_multiplier=opts.forget_multiplier, rng=rng)
  x = jax.tree.map(lambda a, b: jnp.concatenate([a[f_rows], b[r_rows]]), forget.x, retain.x)
  return x, sum(_eval_logits(model, p, s, x) for p, s in oracles) / len(oracles)


def predicted_retrain_logits(original_logits: jax.Array, datamodels: dm_lib.Datamodels, forget_rows,
                             multiplier: float = 1.0) -> jax.Array:
  """``original_logits − multiplier · Σ_{i∈forget_rows} θ[i]``: the datamodels' prediction of Retrain's logits
  (the reference's ``DatamodelWrappedModel``); ``datamodels.weight`` is [n_train, rows, C]."""
  return original_logits - multiplier * dm_lib.removal_effect(datamodels, forget_rows)


def _train_positions(split: split_lib.Split, n: int, name: str) -> np.ndarray:
  if split.index is None:
    raise ValueError(f"{name}: needs its training-row numbers (Split.index) to find them in the subset masks")
  index = np.asarray(split.index)
  if index.size and (index.min() < 0 or index.max() >= n):
    raise ValueError(f"{name}.index: rows outside [0, {n}) of the subset models' training set")
  return index


def self_effects(subset_outputs: subsets_lib.SubsetOutputs, rows) -> jax.Array:
  """Each row's datamodel restricted to its own indicator, for its logits: ``mean(z_r | r ∈ S) − mean(z_r | r ∉ S)``
  over the subset models ([len(rows), C]; the least-squares coefficient of that one-feature regression). A row in
  every subset model or in none has no estimate: its effect is 0 (its logits are left as the Original's).
  """
  rows = np.asarray(rows)
  inside = np.asarray(subset_outputs.masks)[:, rows].astype(np.float32)  # [M, R]
  n_in, n_out = inside.sum(0), (1 - inside).sum(0)
  known = jnp.asarray((n_in > 0) & (n_out > 0), jnp.float32)[:, None]
  logits = jnp.asarray(subset_outputs.logits)[:, rows]  # [M, R, C]
  w = jnp.asarray(inside)[..., None]
  diff = (jnp.sum(w * logits, 0) / np.maximum(n_in, 1)[:, None]
          - jnp.sum((1 - w) * logits, 0) / np.maximum(n_out, 1)[:, None])
  return known * diff


def dmm_targets(model: Model, params, state, forget, retain, subset_outputs: subsets_lib.SubsetOutputs, opts,
                rng: jax.Array):
  """``(x, predicted)``: DMM's matching inputs and their predicted Retrain logits (``opts`` as `dmm`'s)."""
  subsets_lib.check_outputs(subset_outputs)
  n = subset_outputs.masks.shape[1]
  if subset_outputs.logits.shape[1] != n:
    raise ValueError(f"subset_outputs.logits: {subset_outputs.logits.shape[1]} rows, expected the {n} training rows")
  f_index, r_index = _train_positions(forget, n, "forget"), _train_positions(retain, n, "retain")
  f_rows, r_rows = matching_rows(forget, retain, retain_multiplier=opts.retain_multiplier,
                                 forget_multiplier=opts.forget_multiplier, rng=rng)
  rows = np.concatenate([f_index[f_rows], r_index[r_rows]])  # training-row numbers of the matching set
  x = jax.tree.map(lambda a, b: jnp.concatenate([a[f_rows], b[r_rows]]), forget.x, retain.x)
  original = _eval_logits(model, params, state, x)
  if opts.dm_terms == "diagonal":
    effect = self_effects(subset_outputs, rows) * jnp.asarray(np.isin(rows, f_index), jnp.float32)[:, None]
    return x, original - opts.dm_multiplier * effect
  unique, inverse = np.unique(rows, return_inverse=True)  # each row's datamodels fitted once
  dm = dm_lib.fit_datamodels(subset_outputs.masks, jnp.asarray(subset_outputs.logits)[:, unique],
                             method=opts.regression, num_lambdas=opts.num_lambdas, eps=opts.lasso_eps,
                             steps=opts.lasso_steps)
  predicted = predicted_retrain_logits(original, dm._replace(weight=dm.weight[:, inverse]), f_index,
                                       opts.dm_multiplier)
  return x, predicted


@register("dmm", check=_check_dmm_options, **DMM_DEFAULTS)
def dmm(model, params, state, forget, retain, *, config, rng, subset_outputs: subsets_lib.SubsetOutputs | None = None):
  """Datamodel Matching: fine-tune the Original towards its own logits minus the forget set's attributed effect.

  Args:
    model, params, state: the Original.
    forget, retain: the splits, with ``index`` (training-row numbers, the columns of the subset masks).
    config: options (defaults in `DMM_DEFAULTS`): those of `oracle_matching` (but ``oracle_dirs``), and
      ``dm_multiplier``, ``dm_terms`` (``'all'``; ``'diagonal'``: only each forget row's effect on itself, the
      reference's ``diagonal_only``, estimated by `self_effects`), ``regression`` (``'ridge'`` | ``'lasso'``),
      ``num_lambdas``, ``lasso_eps``,
      ``lasso_steps`` (`unlearn_jax.attribution.fit_datamodels`), ``attribution_dir`` (a directory of
      `unlearn_jax.attribution.subsets.save_outputs`, used when ``subset_outputs`` is not given), and
      ``num_models`` / ``alpha``, the population `unlearn_jax.run` builds for it.
    rng: PRNG key (the retain sample, then the loop).
    subset_outputs: masks [M, n_train] and logits [M, n_train, C] of α-subset models on the training rows.

  Returns:
    ``(params, state)``.
  """
  opts, x, predicted, loop_rng = matching_set("dmm", model, params, state, forget, retain, config=config, rng=rng,
                                              subset_outputs=subset_outputs)
  return match_outputs(model, params, state, x, predicted, opts, loop_rng)


def _dmm_set(model, params, state, forget, retain, opts, rng, subset_outputs=None):
  """`dmm`'s matching inputs and predicted Retrain logits (the outputs loaded from ``attribution_dir`` if None)."""
  if subset_outputs is None:
    if not opts.attribution_dir:
      raise ValueError("method.attribution_dir: empty; give the outputs of an α-subset population "
                       "(unlearn_jax.attribution.subsets.save_outputs) or subset_outputs=...")
    subset_outputs, _ = subsets_lib.load_outputs(opts.attribution_dir)
  return dmm_targets(model, params, state, forget, retain, subset_outputs, opts, rng)


# name -> its matching set: ``fn(model, params, state, forget, retain, opts, rng, **inputs) -> (x, targets)``
MATCHING = {"oracle_matching": _oracle_set, "dmm": _dmm_set}


def matching_set(name: str, model: Model, params, state, forget, retain, *, config, rng, **inputs):
  """``(opts, x, targets, loop_rng)``: what method ``name`` of `MATCHING` fine-tunes towards, before its loop.

  ``config`` is checked as the registered method checks it; ``rng`` is split into the matching set's key (the
  retain sample) and the loop's, as the method does; ``inputs``: its keyword inputs (``oracles``,
  ``subset_outputs``)."""
  opts = checked_options(config, name)
  sample_rng, loop_rng = jax.random.split(rng)
  x, targets = MATCHING[name](model, params, state, forget, retain, opts, sample_rng, **inputs)
  return opts, x, targets, loop_rng


def match_population(name: str, model: Model, params, state, forget, retain, *, config, rng: jax.Array,
                     inputs=None):
  """Method ``name`` of `MATCHING` on every member of a population (leaves with a leading model axis ``N``).

  Member ``i``'s matching set and targets are built as the method builds them alone (with key ``rng[i]`` and the
  keyword inputs ``inputs(i)``, e.g. its own oracle), one member after another; the fine-tuning towards them is
  one program over the model axis (`unlearn_jax.unlearning.loop.unlearn_grid` with ``stacked`` models and
  per-member data), so member ``i`` computes what ``name`` computes alone on it.

  Returns:
    ``(params, state, history)`` (``history['finite']``: ``(N,)`` bools).

  Raises:
    ValueError: with ``l2_to_original > 0`` (its frozen copy of each Original runs member by member only).
  """
  opts = checked_options(config, name)
  if opts.l2_to_original:  # before any member's matching set is built
    raise ValueError(f"{name}: l2_to_original={opts.l2_to_original} runs member by member only")
  n = rng.shape[0]
  sets = [matching_set(name, model, population_lib.member(params, i), population_lib.member(state, i), forget,
                       retain, config=config, rng=rng[i], **(inputs(i) if inputs else {}))
          for i in range(n)]
  stack = lambda k: population_lib.stack([s[k] for s in sets])
  data = split_lib.Split(stack(1), jnp.asarray(stack(2), jnp.float32))
  objective = loop.Objective(retain=match_term(model, opts.loss))
  one = split_lib.Split(sets[0][1], jnp.asarray(sets[0][2], jnp.float32))
  steps = loop.steps_per_epoch(None, one, objective, schedule=opts.phases, batch_size=opts.batch_size)
  make = lambda hyper: (objective, train_lib.make_optimizer(opts, steps, lr=hyper))
  return loop.unlearn_grid(params, state, None, data, make=make, hypers=jnp.full((n,), opts.lr, jnp.float32),
                           epochs=opts.epochs, batch_size=opts.batch_size, rng=stack(3), schedule=opts.phases,
                           desc=f"{name} x{n}", stacked=True, stacked_data=True)
