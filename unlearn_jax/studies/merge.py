r"""The ``merge`` study: fine-tune k models from the Original, merge them, score the inputs and the merge.

``config.experiment = 'merge'`` selects this pipeline (`run_merge`); ``configs/merge_<method>.py`` build their
config with `merge_config`. Sections, in order:

  1. config → data, splits, network (`unlearn_jax.run.setup`); the ``merge`` section is validated first, by
     `validate_merge`, so a bad method or option fails before any work.
  2. Original: restored from, or trained into, ``workdir/cache`` (`unlearn_jax.run.original`); in the
     merge-accuracy configs it is a briefly trained "pre-trained" model (see `merge_config`).
  3. The k inputs: each fine-tuned from the Original on its own data (``merge.data``: ``subsets`` = disjoint
     random subsets of the training set, ``classes`` = disjoint groups of classes, ``train`` = the whole
     training set, ``forget`` = the forget set; see `finetune_splits`) with its own seed (and, with
     ``merge.lrs``, its own learning rate); cached as ``cache/finetune-<hash>``.
  4. The merge: statistics first where the method needs them (diagonal Fishers, RegMean Gram matrices, each on
     that input's fine-tuning data), then the jitted merge from `unlearn_jax.merging`; timed together with
     ``block_until_ready`` (compilation included). Non-trained state (BatchNorm statistics) is the mean of the
     inputs' states, or the Original's for ``data='forget'``. The merged model is saved to ``workdir/merged``.
  5. Scoring and reports, in one of two modes:

     - **merge accuracy** (``data`` is ``subsets``, ``classes`` or ``train``): test accuracy (TA) and accuracy
       on the whole training set of the Original, of every input and of the merge. ``results.json`` is
       ``{row: {'TA', 'train_acc', 'seconds'}}`` and ``results.md`` the table of `format_merge_table` (these rows
       have no UA/RA, so `unlearn_jax.evaluation.write_results` does not apply). ``seconds`` is the training
       time for the Original, the fine-tuning time for an input, the statistics + merge time for the merge.
     - **unlearning** (``data='forget'``: task negation, i.e. ``task_arithmetic`` with a negative ``scale``, and
       NegMerge): Retrain is computed too, every row gets UA / RA / TA / MIA (and KL to Retrain) from
       `unlearn_jax.evaluation.evaluate_unlearning`, written by `unlearn_jax.evaluation.write_results` with the
       gap to Retrain. RTE of an input is its fine-tuning time; RTE of the merge is the whole cost of unlearning
       by merging: every input's fine-tuning plus the statistics and the merge.

  ``run.json`` records the config, which stages were restored, the forget indices and the per-input details.

The ``merge`` section (`merge_section`): ``method``, ``k`` (number of inputs), ``data``, ``lrs`` (one
fine-tuning learning rate per input, or empty for ``finetune.lr``), ``finetune`` (optimiser and schedule as
`unlearn_jax.config.train_config`), and the method's own options (`METHOD_OPTIONS`), e.g. ``density``,
``scale``, ``epsilon``, ``alpha``, ``t``. Options of other methods are rejected, naming the key.

Example:
    >>> from unlearn_jax import run
    >>> from unlearn_jax.studies import merge
    >>> results = run.run(merge.merge_config("ties", density=0.2), "/tmp/merge_ties")

References:
    See `unlearn_jax.merging.arithmetic` for each method's paper.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import evaluation
from unlearn_jax import merging
from unlearn_jax import run as run_lib
from unlearn_jax import sharding
from unlearn_jax import train
from unlearn_jax.data.split import Split

Pytree = Any

# The options of each merge method, with their defaults (see `unlearn_jax.merging` for their meaning). The
# statistics options: ``fisher_mode`` and ``stats_batch_size`` go to `merging.fisher_diag` / `collect_grams`;
# RegMean's ``ridge`` is added to every Gram's diagonal (`add_ridge`).
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "linear": dict(weights=()),  # empty: the uniform soup
    "task_arithmetic": dict(scale=0.3),  # a negative scale is task negation
    "ties": dict(density=0.2, scale=1.0),
    "dare": dict(density=0.5, rescale=True, combine="ties", scale=1.0),
    "della": dict(density=0.5, epsilon=0.1, combine="ties", scale=1.0, axis=-1),
    "model_stock": dict(eps=1e-8),
    "slerp": dict(t=0.5),
    "fisher": dict(eps=1e-8, fisher_mode="empirical", stats_batch_size=32),
    "regmean": dict(alpha=0.9, ridge=1e-3, stats_batch_size=256),
    "negmerge": dict(scale=1.0),
    # mergekit's methods (see `unlearn_jax.merging.arithmetic`)
    "breadcrumbs": dict(density=0.9, gamma=0.01, combine="linear", scale=1.0),
    "dare_ties": dict(density=0.5, scale=1.0),
    "dare_linear": dict(density=0.5, scale=1.0),
    "della_linear": dict(density=0.5, epsilon=0.1, scale=1.0, axis=-1),
    "sce": dict(density=1.0),
    "karcher": dict(),
    "multislerp": dict(),
    "nuslerp": dict(),
}
METHODS = tuple(METHOD_OPTIONS)
DATA = ("subsets", "classes", "train", "forget")
SHARED_KEYS = ("method", "k", "data", "lrs", "finetune")
BASE_EPOCHS = 2  # the Original's epochs in the merge-accuracy configs (see `merge_config`)
_COMBINES = ("linear", "ties")
_FISHER_MODES = ("empirical", "sampled")

# fold_in salts of the run seed (run.py uses 1-3 for Original, Retrain and unlearning)
_FINETUNE_SALT, _MERGE_SALT, _SUBSET_SALT = 11, 12, 13


# ----------------------------------------------------------------------------------------------------------------
# Config.


def finetune_config(forget: bool = False, **overrides) -> ml_collections.ConfigDict:
  """The inputs' fine-tuning schedule: SGD with a cosine schedule, tuned on digits.

  Args:
    forget: the schedule for fine-tuning on the forget set (lr 0.1, 20 epochs: the converged Original barely
      moves on data it already fits, so the forget task vector needs a long, large-step fine-tune); otherwise
      lr 0.05 for 10 epochs.
    **overrides: fields of `unlearn_jax.config.train_config`.
  """
  defaults = dict(lr=0.1, epochs=20) if forget else dict(lr=0.05, epochs=10)
  return config_lib.train_config(**{**defaults, **overrides})


def _is_negation(method: str, options: Mapping[str, Any]) -> bool:
  return method == "task_arithmetic" and options.get("scale", METHOD_OPTIONS[method]["scale"]) < 0


def merge_section(method: str, *, k: int | None = None, data: str | None = None, lrs: Sequence[float] = (),
                  finetune: Mapping[str, Any] | None = None, **options) -> ml_collections.ConfigDict:
  """The ``config.merge`` section: shared fields plus every option of ``method`` (defaults updated by options).

  Args:
    method: one of `METHODS`.
    k: number of fine-tuned inputs; default 2 for ``slerp`` and ``nuslerp``, 1 for task negation, 3 for
      ``negmerge``, else 4.
    data: ``subsets``, ``classes``, ``train`` or ``forget`` (see `finetune_splits`); default ``forget`` for task
      negation and NegMerge, else ``subsets``.
    lrs: one fine-tuning learning rate per input (empty: all use ``finetune.lr``).
    finetune: overrides of `finetune_config` (whose defaults depend on whether ``data`` is ``forget``).
    **options: the method's options (`METHOD_OPTIONS`).

  Raises:
    ValueError: for an unknown method or option (naming ``config.merge.<key>``).
  """
  _check_method(method)
  _check_options(method, options)
  if k is None:
    pairs = method in ("slerp", "nuslerp")
    k = 2 if pairs else 1 if _is_negation(method, options) else 3 if method == "negmerge" else 4
  if data is None:
    data = "forget" if method == "negmerge" or _is_negation(method, options) else "subsets"
  section = ml_collections.ConfigDict(dict(method=method, k=k, data=data, lrs=tuple(lrs),
                                           finetune=finetune_config(data == "forget", **(finetune or {}))))
  section.update({**METHOD_OPTIONS[method], **options})
  return section


def merge_config(method: str, arg: str | None = None, **options) -> ml_collections.ConfigDict:
  """A whole experiment config for the merge study: `config_lib.base_config` with ``experiment='merge'``.

  Args:
    method: the merge method.
    arg: the config-file argument: a model name (``--config=configs/merge_ties.py:cnn``) or None.
    **options: as for `merge_section` (``k``, ``data``, ``lrs``, ``finetune`` and the method's options).

  For the merge-accuracy study (``data`` other than ``forget``) the Original plays the pre-trained model and is
  trained for only ``BASE_EPOCHS`` epochs (TA ≈ 95% on digits instead of 97.5%), so that fine-tuning has room to
  help; with ``--config.train.epochs=30`` every merge lands within a few tenths of a point of the converged
  Original. Unlearning by merging (``data='forget'``) keeps the full Original schedule, comparable with the
  unlearning configs. ``config.method`` is unused by this pipeline (kept as ``original``: every config has one).

  Example:
    >>> config = merge_config("dare", density=0.3, combine="linear", scale=0.25)
  """
  config = config_lib.base_config()
  config.experiment = "merge"
  config.method = ml_collections.ConfigDict(dict(name="original"))
  config.merge = merge_section(method, **options)
  if config.merge.data != "forget":
    config.train.epochs = BASE_EPOCHS
  return config_lib.apply_model_arg(config, arg)


def _check_method(method) -> None:
  if method not in METHOD_OPTIONS:
    raise ValueError(f"config.merge.method={method!r}: unknown merge method; choose one of {METHODS}")


def _check_options(method: str, given) -> None:
  known = set(SHARED_KEYS) | set(METHOD_OPTIONS[method])
  unknown = sorted(set(given) - known)
  if unknown:
    raise ValueError(f"unknown config key(s) {', '.join('config.merge.' + k for k in unknown)} for merge method "
                     f"{method!r} (known: {', '.join(sorted(known))})")


def _require(ok: bool, key: str, value, why: str) -> None:
  if not ok:
    raise ValueError(f"config.merge.{key}={value!r}: {why}")


def options(section) -> ml_collections.ConfigDict:
  """The method options of a ``merge`` section: its method's defaults updated with the section's entries."""
  out = ml_collections.ConfigDict(METHOD_OPTIONS[section.method])
  out.update({key: section[key] for key in section.keys() if key in METHOD_OPTIONS[section.method]})
  return out


def validate_merge(config) -> ml_collections.ConfigDict:
  """Checks ``config.merge`` before any work; raises ValueError naming the bad key. Returns the section."""
  section = config.get("merge") if hasattr(config, "get") else None
  if not isinstance(section, ml_collections.ConfigDict):
    raise ValueError("config.merge: missing; build merge configs with unlearn_jax.studies.merge.merge_config")
  _check_method(section.get("method"))
  method = section.method
  _check_options(method, section.keys())
  for key in SHARED_KEYS:
    _require(key in section, key, None, "missing")
  k = section.k
  _require(isinstance(k, int) and k >= 1, "k", k, "must be an integer >= 1")
  _require(method not in ("slerp", "nuslerp") or k == 2, "k", k, f"{method} merges exactly 2 models")
  _require(section.data in DATA, "data", section.data, f"choose one of {DATA}")
  _require(method != "negmerge" or section.data == "forget", "data", section.data,
           "negmerge merges models fine-tuned on the forget set; use data='forget'")
  lrs = tuple(section.lrs)
  _require(len(lrs) in (0, k), "lrs", lrs, f"give one learning rate per input ({k}) or none")
  _require(all(lr > 0 for lr in lrs), "lrs", lrs, "learning rates must be positive")
  ft = section.finetune
  _require(isinstance(ft, ml_collections.ConfigDict), "finetune", ft, "must be a ConfigDict (see finetune_config)")
  reference = config_lib.train_config()
  unknown = sorted(set(ft.keys()) - set(reference.keys()))
  _require(not unknown, "finetune." + (unknown[0] if unknown else ""), None,
           f"unknown key (known: {', '.join(sorted(reference.keys()))})")
  config_lib.check_optimizer_section(ft, "merge.finetune")
  _require(not ft.get("mnemonic_t_mix", 0), "finetune.mnemonic_t_mix", ft.get("mnemonic_t_mix"),
           "fine-tuning uses the plain cross-entropy; mnemonic codes apply to the Original only")
  o = options(section)
  if "density" in o:
    _require(0 < o.density <= 1, "density", o.density, "must be in (0, 1]")
  if "combine" in o:
    _require(o.combine in _COMBINES, "combine", o.combine, f"choose one of {_COMBINES}")
  if "epsilon" in o:
    _require(0 <= o.epsilon and 0 < o.density - o.epsilon and o.density + o.epsilon <= 1, "epsilon", o.epsilon,
             f"density ± epsilon must lie in (0, 1] (density={o.density})")
  if "gamma" in o:
    _require(0 <= o.gamma < 1, "gamma", o.gamma, "must be in [0, 1)")
  if "scale" in o:
    _require(math.isfinite(o.scale), "scale", o.scale, "must be finite")
  if "t" in o:
    _require(math.isfinite(o.t), "t", o.t, "must be finite")
  if "ridge" in o:
    _require(o.ridge >= 0, "ridge", o.ridge, "must be >= 0")
  if "alpha" in o:
    _require(0 <= o.alpha <= 1, "alpha", o.alpha, "must be in [0, 1]")
  if "eps" in o:
    _require(o.eps >= 0, "eps", o.eps, "must be >= 0")
  if "fisher_mode" in o:
    _require(o.fisher_mode in _FISHER_MODES, "fisher_mode", o.fisher_mode, f"choose one of {_FISHER_MODES}")
  if "stats_batch_size" in o:
    _require(o.stats_batch_size >= 1, "stats_batch_size", o.stats_batch_size, "must be at least 1")
  if "weights" in o:
    weights = tuple(o.weights)
    _require(len(weights) in (0, k), "weights", weights, f"give one weight per input ({k}) or none")
    _require(not weights or (all(w >= 0 for w in weights) and sum(weights) > 0), "weights", weights,
             "must be non-negative with a positive sum")
  return section


def method_label(section) -> str:
  """The merged row's name: the method, or ``negation`` for task arithmetic with a negative scale."""
  return "negation" if _is_negation(section.method, options(section)) else section.method


# ----------------------------------------------------------------------------------------------------------------
# Inputs: data, fine-tuning, cache.


def finetune_splits(exp: run_lib.Experiment, section) -> list[Split]:
  """The fine-tuning data of each input, as ``merge.data`` says.

  - ``subsets``: a seeded random partition of the training set into k subsets of ``n // k`` examples (the
    remainder is left out, so every input has the same shapes and they share one compiled epoch);
  - ``classes``: input ``i`` gets the training examples of the classes ``c`` with ``c % k == i`` (specialists,
    the multi-task setting of task arithmetic and TIES), each cut to the size of the smallest group;
  - ``train``: the whole training set for every input (they differ by seed and learning rate only);
  - ``forget``: the forget set for every input.
  """
  k = section.k
  if section.data == "forget":
    return [exp.splits.forget] * k
  train_split = exp.dataset.train
  if section.data == "train":
    return [train_split] * k
  rng = np.random.default_rng([exp.config.seed, _SUBSET_SALT])
  if section.data == "subsets":
    if k > train_split.size:
      raise ValueError(f"config.merge.k={k}: more subsets than the {train_split.size} training examples")
    size = train_split.size // k
    order = rng.permutation(train_split.size)
    rows = [order[i * size:(i + 1) * size] for i in range(k)]
  else:  # classes
    num_classes = exp.dataset.num_classes
    if k > num_classes:
      raise ValueError(f"config.merge.k={k}: data='classes' needs k <= the {num_classes} classes")
    labels = np.asarray(train_split.y)
    groups = [np.flatnonzero(labels % k == i) for i in range(k)]
    size = min(len(g) for g in groups)
    rows = [rng.permutation(g)[:size] for g in groups]
  return [train_split.take(np.sort(r)) for r in rows]


def _input_train_config(section, i: int) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(section.finetune.to_dict())
  if section.lrs:
    cfg.lr = float(section.lrs[i])
  return cfg


def finetune_inputs(exp: run_lib.Experiment, workdir, base: tuple[Pytree, Pytree], splits: Sequence[Split],
                    section) -> list[tuple[Pytree, Pytree, dict, bool]]:
  """Section 3: fine-tunes the Original once per input, or restores the cached checkpoints.

  Input ``i`` trains on ``splits[i]`` with the key ``fold_in(fold_in(key(seed), salt), i)`` (its own shuffling
  order); inputs with the same fine-tuning config and data size share one compiled epoch. The cache key holds
  everything that determines an input: seed, dataset, model, the Original's schedule, the data choice (with the
  forget-set config, or k for subsets and classes), ``i`` and its fine-tuning config.

  Returns:
    One ``(params, state, metadata, restored)`` per input; ``metadata['seconds']`` is its fine-tuning time.
  """
  c = exp.config
  data_key = {"forget": ("forget", c.forget), "train": ("train",)}.get(section.data, (section.data, section.k))
  compiled: dict[str, tuple] = {}  # (config, data size) -> (epoch_fn, tx), so equal inputs compile once

  def fit(i: int, split: Split, cfg):
    batch_size = min(int(cfg.batch_size), split.size)
    key = checkpoint.config_hash(cfg, split.size)
    if key not in compiled:
      tx = train.make_optimizer(cfg, split.num_batches(batch_size))
      compiled[key] = (train.make_epoch_fn(train.classification_loss(exp.model), tx, batch_size=batch_size,
                                           augment=exp.augment, mesh=exp.mesh), tx)
    epoch_fn, tx = compiled[key]
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed), _FINETUNE_SALT), i)
    params, state, history = train.run_epochs(epoch_fn, tx, *base, (split.x, split.y), int(cfg.epochs), rng=rng,
                                              mesh=exp.mesh,
                                              log=lambda line: logging.info("finetune %d: %s", i, line))
    return params, state, {"history": history, "seconds": history["seconds"]}

  out = []
  for i, split in enumerate(splits):
    cfg = _input_train_config(section, i)
    parts = (run_lib.CACHE_VERSION, c.seed, c.dataset, c.model, config_lib.training_fields(c.train), data_key, i, cfg)
    directory = pathlib.Path(workdir) / "cache" / f"finetune-{checkpoint.config_hash(*parts)}"
    params, state, meta, restored = checkpoint.cached(directory, lambda i=i, split=split, cfg=cfg: fit(i, split, cfg),
                                                      like=exp.abstract)
    logging.info("finetune %d: %s %s", i, "restored from" if restored else "trained and saved to", directory)
    out.append((params, state, meta, restored))
  return out


# ----------------------------------------------------------------------------------------------------------------
# The merge.


def merge_params(method: str, opts, params_list: Sequence[Pytree], *, base: Pytree, rng: jax.Array,
                 statistics: Sequence[Pytree] | None = None) -> Pytree:
  """Calls the merge ``method`` of `unlearn_jax.merging` with its options from ``opts``.

  Args:
    method: one of `METHODS`.
    opts: the method's options (`options`).
    params_list: the inputs' parameters.
    base: the Original's parameters (used by the task-vector methods).
    rng: PRNG key (DARE, DELLA).
    statistics: one Fisher (``fisher``) or Gram pytree (``regmean``) per input.

  Returns:
    The merged parameters.
  """
  if method == "linear":
    return merging.linear(params_list, weights=tuple(opts.weights) or None)
  if method == "task_arithmetic":
    return merging.task_arithmetic(params_list, base=base, scale=opts.scale)
  if method == "ties":
    return merging.ties(params_list, base=base, density=opts.density, scale=opts.scale)
  if method == "dare":
    return merging.dare(params_list, base=base, density=opts.density, rng=rng, rescale=opts.rescale,
                        combine=opts.combine, scale=opts.scale)
  if method == "della":
    return merging.della(params_list, base=base, density=opts.density, epsilon=opts.epsilon, rng=rng,
                         combine=opts.combine, scale=opts.scale, axis=opts.axis)
  if method == "model_stock":
    return merging.model_stock(params_list, base=base, eps=opts.eps)
  if method == "slerp":
    a, b = params_list
    return merging.slerp(a, b, t=opts.t)
  if method == "fisher":
    return merging.fisher(params_list, statistics, eps=opts.eps)
  if method == "regmean":
    return merging.regmean(params_list, statistics, alpha=opts.alpha)
  if method == "negmerge":
    return merging.negmerge(params_list, base=base, scale=opts.scale)
  if method == "breadcrumbs":
    return merging.breadcrumbs(params_list, base=base, density=opts.density, gamma=opts.gamma, combine=opts.combine,
                               scale=opts.scale)
  if method in ("dare_ties", "dare_linear"):
    return getattr(merging, method)(params_list, base=base, density=opts.density, rng=rng, scale=opts.scale)
  if method == "della_linear":
    return merging.della_linear(params_list, base=base, density=opts.density, epsilon=opts.epsilon, rng=rng,
                                scale=opts.scale, axis=opts.axis)
  if method == "sce":
    return merging.sce(params_list, base=base, density=opts.density)
  if method == "karcher":
    return merging.karcher(params_list)
  if method in ("multislerp", "nuslerp"):
    return getattr(merging, method)(params_list, base=base)
  raise ValueError(f"config.merge.method={method!r}: unknown merge method; choose one of {METHODS}")


@jax.jit
def add_ridge(grams: Pytree, ridge) -> Pytree:
  """Adds ``ridge`` times the mean diagonal entry to the diagonal of every Gram matrix.

  A unit that no input's data ever activates (a dead ReLU, a pixel that is always 0) has a zero row and column
  in every Gram, so RegMean's linear system is singular and its solution NaN. With the ridge, such rows of the
  merged kernel become the mean of the inputs' rows, and the other rows move by O(ridge).
  """
  return jax.tree.map(lambda g: g + ridge * jnp.mean(jnp.diagonal(g)) * jnp.eye(g.shape[-1], dtype=g.dtype), grams)


def merge_inputs(exp: run_lib.Experiment, section, base: tuple[Pytree, Pytree],
                 inputs: Sequence[tuple[Pytree, Pytree]], splits: Sequence[Split]):
  """Section 4: statistics where needed, then the merge.

  Returns:
    ``(params, state, {'statistics': seconds, 'merge': seconds})``; times include compilation.
  """
  method, opts = section.method, options(section)
  rng = jax.random.fold_in(jax.random.key(exp.config.seed), _MERGE_SALT)
  stats_rng, merge_rng = jax.random.split(rng)
  # one placement for every tree, so the jitted merges see matching shardings (restored vs freshly trained)
  base, inputs = sharding.replicate((base, list(inputs)), exp.mesh)
  params_list = [p for p, _ in inputs]
  seconds = {}
  with sharding.use_mesh(exp.mesh):
    start = time.perf_counter()
    statistics = None
    if method == "fisher":
      statistics = [merging.fisher_diag(exp.model, p, s, split, batch_size=opts.stats_batch_size,
                                        mode=opts.fisher_mode, rng=jax.random.fold_in(stats_rng, i))
                    for i, ((p, s), split) in enumerate(zip(inputs, splits))]
    elif method == "regmean":
      statistics = [add_ridge(merging.collect_grams(exp.model, p, s, split, batch_size=opts.stats_batch_size),
                              opts.ridge) for (p, s), split in zip(inputs, splits)]
    jax.block_until_ready(statistics)
    seconds["statistics"] = time.perf_counter() - start
    start = time.perf_counter()
    params = merge_params(method, opts, params_list, base=base[0], rng=merge_rng, statistics=statistics)
    jax.block_until_ready(params)
    seconds["merge"] = time.perf_counter() - start
    states = [s for _, s in inputs]
    if section.data == "forget" or not jax.tree.leaves(states[0]):
      state = base[1]
    else:
      state = merging.linear(states)
  return params, state, seconds


# ----------------------------------------------------------------------------------------------------------------
# Reports.


def format_merge_table(results: Mapping[str, Mapping[str, float]], *, title: str | None = None,
                       merged: str | None = None) -> str:
  """The merge-accuracy table: one row per model with TA and training accuracy in %, and seconds.

  Args:
    results: ``{row: {'TA', 'train_acc', 'seconds'}}`` (rates as fractions).
    title: optional heading.
    merged: the merged row; if given, a line under the table compares its TA with the inputs' (rows named
      ``Input ...``).

  Returns:
    The markdown text, ending with a newline.
  """
  for row, metrics in results.items():
    missing = [key for key in ("TA", "train_acc", "seconds") if key not in metrics]
    if missing:
      raise ValueError(f"results[{row!r}] lacks {missing}")
  lines = [f"## {title}", ""] if title else []
  lines += ["| Model | TA (%) | Train acc (%) | Time (s) |", "|---|---|---|---|"]
  for row, m in results.items():
    lines.append(f"| {row} | {100 * m['TA']:.2f} | {100 * m['train_acc']:.2f} | {m['seconds']:.2f} |")
  inputs = [m["TA"] for row, m in results.items() if row.startswith("Input")]
  if merged is not None and inputs:
    ta = results[merged]["TA"]
    lines += ["", f"{merged} TA − mean input TA: {100 * (ta - np.mean(inputs)):+.2f} pp; "
              f"− best input TA: {100 * (ta - max(inputs)):+.2f} pp."]
  return "\n".join(lines) + "\n"


def _write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1) + "\n")
  os.replace(tmp, path)


def _accuracy(exp: run_lib.Experiment, params, state, split: Split) -> float:
  logits = evaluation.predict(exp.model, params, state, split, batch_size=exp.config.eval.batch_size)
  return evaluation.accuracy(logits, np.asarray(split.y))


# ----------------------------------------------------------------------------------------------------------------
# The pipeline.


def run_merge(config, workdir: str | os.PathLike) -> dict:
  """The merge study (see the module docstring); writes ``results.json``, ``results.md`` and ``run.json``.

  Returns:
    ``{'results': {row: metrics}, 'table': markdown, 'restored': {stage: bool},
    'seconds': {'total', 'statistics', 'merge'}}``.

  Raises:
    ValueError: for a bad ``merge`` section or any other bad config value, before any work.
  """
  start = time.perf_counter()
  section = validate_merge(config)
  exp = run_lib.setup(config, extra_sections=("merge",))
  workdir = pathlib.Path(workdir)
  label = method_label(section)
  unlearning_mode = section.data == "forget"
  splits = finetune_splits(exp, section)
  workdir.mkdir(parents=True, exist_ok=True)

  models: dict[str, tuple] = {}
  restored: dict[str, bool] = {}
  p, s, meta, restored["Original"] = run_lib.original(exp, workdir)
  base = (p, s)
  models["Original"] = (p, s, meta["seconds"])
  if unlearning_mode:
    p, s, meta, restored["Retrain"] = run_lib.retrain(exp, workdir)
    models["Retrain"] = (p, s, meta["seconds"])
  inputs = finetune_inputs(exp, workdir, base, splits, section)
  for i, (p, s, meta, was_restored) in enumerate(inputs):
    models[f"Input {i + 1}"] = (p, s, meta["seconds"])
    restored[f"Input {i + 1}"] = was_restored
  params, state, seconds = merge_inputs(exp, section, base, [(p, s) for p, s, _, _ in inputs], splits)
  merge_seconds = seconds["statistics"] + seconds["merge"]
  finetune_seconds = sum(float(meta["seconds"]) for _, _, meta, _ in inputs)
  models[label] = (params, state, merge_seconds + (finetune_seconds if unlearning_mode else 0.0))
  shutil.rmtree(workdir / "merged", ignore_errors=True)  # a checkpoint of an earlier run is replaced
  checkpoint.save(workdir / "merged", params, state, {"method": label, "seconds": seconds})

  title = f"{label} merge of {section.k} model(s) fine-tuned on {section.data} ({config.dataset.name}, " \
          f"{config.model.name})"
  if unlearning_mode:
    ecfg = config.eval
    reference = models["Retrain"][:2] if ecfg.kl else None
    scored = run_lib.eval_splits(exp.splits)  # class-wise forgetting: TA on the remaining classes, as run.py
    results = {row: evaluation.evaluate_unlearning(exp.model, p, s, scored, run_time=sec, mia=ecfg.mia,
                                                   batch_size=ecfg.batch_size, reference=reference)
               for row, (p, s, sec) in models.items()}
    table = evaluation.write_results(results, workdir, reference="Retrain", title=title)
  else:
    results = {row: {"TA": _accuracy(exp, p, s, exp.splits.test),
                     "train_acc": _accuracy(exp, p, s, exp.dataset.train), "seconds": float(sec)}
               for row, (p, s, sec) in models.items()}
    table = format_merge_table(results, title=title, merged=label)
    _write_json(workdir / "results.json", results)
    (workdir / "results.md").write_text(table)

  info = {"config": json.loads(config.to_json_best_effort()), "restored": restored, "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()],
          "forget_index": [int(i) for i in exp.splits.forget_index],
          "inputs": [{"examples": split.size, "lr": float(_input_train_config(section, i).lr),
                      "seconds": float(meta["seconds"])} for i, (split, (_, _, meta, _)) in
                     enumerate(zip(splits, inputs))],
          "seconds": seconds}
  _write_json(workdir / "run.json", info)
  print(table)
  return {"results": results, "table": table, "restored": restored,
          "seconds": {"total": time.perf_counter() - start, **seconds}}


run_lib.register_pipeline("merge", run_merge)
