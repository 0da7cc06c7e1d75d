"""Linear-mode-connectivity studies: the ``rebasin`` and ``width_lmc`` pipelines of `unlearn_jax.run`.

``rebasin`` (``configs/rebasin.py``): two models of the configured architecture are trained on the same data from
different seeds; ``B`` is aligned to ``A`` by each matching method (``naive`` = no permutation, ``weight``,
``activation``, ``ste``) and the loss / accuracy along the straight line between them is measured on the
training and test sets, with each configured correction (``none``, ``reset_bn``, ``repair``).

``width_lmc`` (``configs/width_lmc.py``): the same at each width multiplier (an MLP's hidden sizes, or the channel
multiplier of ``cnn1d`` / ``resnet20``), for one or more pairs of endpoints, with softmax-temperature calibration:
does widening alone, with a temperature, give linear mode connectivity without permutations (Ito et al. 2025)?
Per width and pair it can also report the layerwise exponentially weighted connectivity of the merged midpoint
(`unlearn_jax.merging.connectivity.layerwise_connectivity`) and the singular-vector alignment of the weights before
and after weight matching (`unlearn_jax.merging.permutation.singular_alignment`).

Both own the config section ``lmc`` (options below; unknown keys fail, naming them). Endpoints are cached under
``workdir/cache/lmc-<hash>`` like the Original. Outputs in ``workdir``: ``results.json`` (barriers and end
point metrics), ``results.md`` (the table, also printed), ``curves.json`` (every curve) and a PNG plot
(``rebasin.png`` / ``width_lmc.png``).

``lmc`` options:
  seeds: the training seeds (initialisation and data order), taken in consecutive pairs ``(A, B)``: two for
    ``rebasin``, an even number for ``width_lmc`` (``(1, 2, 3, 4)``: two pairs); the data split uses
    ``config.seed``.
  methods: matching methods, a subset of ``naive``, ``weight``, ``activation``, ``ste`` (on the command line
    ``--config.lmc.methods=naive,weight``).
  corrections: a subset of ``none``, ``reset_bn``, ``repair`` (see `unlearn_jax.merging.connectivity`).
  num_points: interpolation points in ``[0, 1]``.
  calibrate: also fit a softmax temperature per point and report the calibrated loss barrier.
  max_iter: weight-matching sweeps.
  matching_seed: seeds the weight-matching orders and STE.
  ste_epochs, ste_batch_size, ste_learning_rate: the straight-through estimator's schedule.
  batch_size: rows per forward pass when scoring and measuring statistics.
  widths: (``width_lmc`` only) the width multipliers: an MLP's ``model.hidden`` sizes are multiplied by them, a
    ``cnn1d`` / ``resnet20``'s ``model.width`` is set to them.
  channels: (``width_lmc``, ``cnn1d`` only) the base channels the multiplier scales (``()``: the model's own
    ``(25, 25, 25)``); small bases keep the widest models trainable on a CPU.
  lewc: also measure `layerwise_connectivity` of each method's midpoint on the test set.
  singular_k: if positive, also the top-``k`` `singular_alignment` of the weights before and after weight
    matching.
  merge_seeds: (``rebasin`` only) more seeds: if given, the ``2 + len(merge_seeds)`` models of ``seeds`` and
    these are also merged into one by averaging their parameters after aligning them to ``A`` by each of
    ``merge_methods``: ``average`` (no alignment), ``weight`` (`weight_matching_many`, each model to ``A``),
    ``merge_many`` (the same, then ``merge_rounds - 1`` rounds of re-matching each model to the average of the
    others, Git Re-Basin's MergeMany) and ``ste`` (each model to ``A`` by the straight-through estimator).
    BatchNorm statistics of the merged model are recomputed on the training set.

The ``rebasin`` study also reports, per method, the L2 distance between ``A`` and the aligned ``B``
(`connectivity.l2_distance`; ``naive`` is the distance before alignment): Ito et al. (arXiv:2402.04051) find that
weight matching barely reduces it although it removes most of the barrier.

Example:
    >>> import unlearn_jax.studies.lmc  # registers the pipelines
    >>> from configs import rebasin
    >>> run.run(rebasin.get_config(), '/tmp/rebasin')['results']['barriers']['weight']['none']['train']

References:
    Ito, Yamada, Chijiwa and Kumagai, "Do We Really Need Permutations? Impact of Width Expansion on Linear Mode
    Connectivity", arXiv:2510.08023, 2025 (the width study with temperature calibration, LEWC).
    Ito, Yamada and Kumagai, "Analysis of Linear Mode Connectivity via Permutation-Based Weight Matching",
    ICLR 2025, arXiv:2402.04051 (singular-vector alignment).
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023.
    Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair", ICLR 2023.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import model as model_lib
from unlearn_jax import models
from unlearn_jax import run
from unlearn_jax import train
from unlearn_jax.evaluation import plots
from unlearn_jax.merging import connectivity
from unlearn_jax.merging import permutation
from unlearn_jax.progress import progress

METHODS = ("naive", "weight", "activation", "ste")
MERGE_METHODS = ("average", "weight", "merge_many", "ste")
SPLITS = ("train", "test")
WIDTH_MODELS = ("mlp", "cnn1d", "resnet20")


def default_options() -> ml_collections.ConfigDict:
  """The ``lmc`` section with every option at its default (suits digits on a CPU)."""
  return ml_collections.ConfigDict(dict(
      seeds=(1, 2), methods=METHODS, corrections=("none", "repair"), num_points=connectivity.DEFAULT_POINTS,
      calibrate=False, max_iter=100, matching_seed=0, ste_epochs=5, ste_batch_size=128, ste_learning_rate=1e-3,
      batch_size=1024, widths=(1, 2), channels=(), lewc=False, singular_k=0, merge_seeds=(),
      merge_methods=MERGE_METHODS, merge_rounds=3))


def options(config) -> ml_collections.ConfigDict:
  """``config.lmc`` over `default_options`; ValueError naming an unknown key or a bad value."""
  given = config.get("lmc")
  if given is None:
    raise ValueError("config.lmc: missing section (the lmc study options)")
  defaults = default_options()
  unknown = sorted(set(given.keys()) - set(defaults.keys()))
  if unknown:
    raise ValueError(f"unknown config key(s) {', '.join('config.lmc.' + k for k in unknown)} "
                     f"(known: {', '.join(sorted(defaults.keys()))})")
  out = ml_collections.ConfigDict(defaults.to_dict())
  out.update(given.to_dict() if hasattr(given, "to_dict") else dict(given))
  for key in ("methods", "corrections", "merge_methods"):  # the flag parser reads --config.lmc.methods=naive,weight as one string
    value = (out[key],) if isinstance(out[key], str) else tuple(out[key])
    out[key] = tuple(p.strip() for v in value for p in str(v).split(",") if p.strip())

  def require(ok, key, why):
    if not ok:
      raise ValueError(f"config.lmc.{key}={out[key]!r}: {why}")

  require(len(out.seeds) >= 2 and len(out.seeds) % 2 == 0 and len(set(out.seeds)) == len(out.seeds), "seeds",
          "give an even number of different seeds (consecutive pairs are the endpoints)")
  require(len(out.methods) > 0 and all(m in METHODS for m in out.methods), "methods", f"choose from {METHODS}")
  require(len(out.corrections) > 0 and all(c in connectivity.CORRECTIONS for c in out.corrections), "corrections",
          f"choose from {connectivity.CORRECTIONS}")
  require(out.num_points >= 2, "num_points", "must be at least 2")
  require(out.max_iter >= 1, "max_iter", "must be at least 1")
  require(out.ste_epochs >= 1, "ste_epochs", "must be at least 1")
  require(out.ste_batch_size >= 1, "ste_batch_size", "must be at least 1")
  require(out.ste_learning_rate > 0, "ste_learning_rate", "must be positive")
  require(out.batch_size >= 1, "batch_size", "must be at least 1")
  require(len(out.widths) > 0 and all(int(w) >= 1 for w in out.widths), "widths", "positive integers")
  require(all(int(c) >= 1 for c in out.channels), "channels", "positive integers (or () for the model's own)")
  require(out.singular_k >= 0, "singular_k", "must be 0 (off) or a positive number of singular directions")
  require(not set(out.merge_seeds) & set(out.seeds) and len(set(out.merge_seeds)) == len(out.merge_seeds),
          "merge_seeds", "must be different from each other and from config.lmc.seeds")
  require(len(out.merge_methods) > 0 and all(m in MERGE_METHODS for m in out.merge_methods), "merge_methods",
          f"choose from {MERGE_METHODS}")
  require(out.merge_rounds >= 1, "merge_rounds", "must be at least 1")
  config_lib.check_seeds(out.seeds, "lmc.seeds")
  config_lib.check_seeds(out.merge_seeds, "lmc.merge_seeds")
  config_lib.check_seed(out.matching_seed, "lmc.matching_seed")
  return out


# ----------------------------------------------------------------------------------------------------------------
# Endpoints.


def train_endpoints(exp: run.Experiment, config, module, workdir: pathlib.Path, seeds, extra=()) -> list:
  """Trains ``module`` on the full training set once per seed, or restores each from the cache.

  Seed ``s`` draws the initialisation from ``fold_in(key(s), 0)`` and the data order from ``fold_in(key(s), 1)``;
  the data split is ``config.seed``'s. Both seeds share one compiled initialiser and one compiled epoch (the
  same steps as `unlearn_jax.train.fit`), so the second model costs no compilation. ``extra`` joins the cache
  key (module fields that ``config.model`` does not hold, such as the study's ``cnn1d`` base channels).

  Returns:
    ``[(params, state, restored), ...]``, one per seed.
  """
  model = model_lib.from_linen(module)
  split = exp.dataset.train
  sample = split.x[:1]

  @jax.jit
  def init(key):  # as unlearn_jax.model.init does, compiled once for all seeds
    params_key, dropout_key = jax.random.split(key)
    variables = dict(module.init({"params": params_key, "dropout": dropout_key}, sample, train=False))
    return variables.pop("params", {}), variables

  like = jax.eval_shape(init, jax.random.key(0))
  cfg = config.train
  batch_size = min(int(cfg.batch_size), split.size)
  compiled = []

  def epoch_fn():
    if not compiled:
      tx = train.make_optimizer(cfg, split.num_batches(batch_size))
      compiled.append((train.make_epoch_fn(train.classification_loss(model), tx, batch_size=batch_size,
                                           augment=exp.augment, mesh=exp.mesh), tx))
    return compiled[0]

  out = []
  for seed in progress(seeds, desc="lmc seeds", unit="seed"):
    key = jax.random.key(seed)

    def build():
      fn, tx = epoch_fn()
      params, state, history = train.run_epochs(
          fn, tx, *init(jax.random.fold_in(key, 0)), (split.x, split.y), int(cfg.epochs),
          rng=jax.random.fold_in(key, 1), mesh=exp.mesh,
          log=lambda line: logging.info("lmc seed %d: %s", seed, line))  # pylint: disable=cell-var-from-loop
      return params, state, {"history": history, "seconds": history["seconds"]}

    c = config
    digest = checkpoint.config_hash(run.CACHE_VERSION, "lmc", c.seed, c.dataset, c.model,
                                    config_lib.training_fields(c.train), seed, *extra)
    directory = workdir / "cache" / f"lmc-{digest}"
    params, state, _, restored = checkpoint.cached(directory, build, like=like)
    logging.info("lmc seed %d: %s %s", seed, "restored from" if restored else "trained and saved to", directory)
    out.append((params, state, restored))
  return out


# ----------------------------------------------------------------------------------------------------------------
# One pair of models.


def align(method: str, spec, model, endpoint_a, endpoint_b, train_split, opts):
  """``B`` permuted onto ``A`` by ``method``; returns ``((params, state), seconds)``."""
  params_b, state_b = endpoint_b
  start = time.perf_counter()
  rng = jax.random.key(opts.matching_seed)
  if method == "naive":
    return endpoint_b, 0.0
  if method == "weight":
    perms = permutation.weight_matching(spec, endpoint_a[0], params_b, rng=rng, max_iter=opts.max_iter)
  elif method == "activation":
    perms = permutation.activation_matching(spec, model, *endpoint_a, params_b, state_b, train_split,
                                            batch_size=opts.batch_size)
  elif method == "ste":
    perms = permutation.ste_matching(spec, model, *endpoint_a, params_b, state_b, train_split, rng=rng,
                                     epochs=opts.ste_epochs, batch_size=opts.ste_batch_size,
                                     learning_rate=opts.ste_learning_rate, max_iter=opts.max_iter)
  else:
    raise ValueError(f"config.lmc.methods: unknown method {method!r}; choose from {METHODS}")
  aligned = _permuted(spec, perms, endpoint_b)
  jax.block_until_ready(aligned)
  return aligned, time.perf_counter() - start


def _permuted(spec, perms, endpoint):
  """``(params, state)`` of ``endpoint`` permuted by ``perms`` (the state too, where there is one)."""
  params, state = endpoint
  if not state:
    return permutation.apply_permutation(spec, perms, params), state
  return permutation.apply_permutation(spec, perms, params, state)


def study_pair(model, model_name: str, endpoint_a, endpoint_b, splits: dict, opts) -> dict:
  """Every method x correction for one pair: ``{'curves', 'barriers', 'seconds', 'endpoints'}``."""
  spec = permutation.spec_for_model(model_name, endpoint_a[0], endpoint_a[1] if endpoint_a[1] else None)
  layers = permutation.hidden_layers(spec)
  curves, barriers, seconds, lewc, singular, l2 = {}, {}, {}, {}, {}, {}
  for method in progress(opts.methods, desc="lmc methods", unit="method"):
    aligned, seconds[method] = align(method, spec, model, endpoint_a, endpoint_b, splits["train"], opts)
    l2[method] = connectivity.l2_distance(endpoint_a[0], aligned[0])
    if opts.lewc:
      lewc[method] = connectivity.layerwise_connectivity(
          model, endpoint_a, aligned, splits["test"], layers=permutation.kernel_layers(spec), alpha=0.5,
          batch_size=opts.batch_size)
    if opts.singular_k and method != "naive":
      singular.setdefault("naive", permutation.singular_alignment(endpoint_a[0], endpoint_b[0], spec,
                                                                  k=opts.singular_k))
      singular[method] = permutation.singular_alignment(endpoint_a[0], aligned[0], spec, k=opts.singular_k)
    curves[method], barriers[method] = {}, {}
    for correction in opts.corrections:
      c = connectivity.curves(model, endpoint_a, aligned, splits, num_points=opts.num_points,
                              correction=correction, correction_split=splits["train"], layers=layers,
                              calibrate=opts.calibrate, batch_size=opts.batch_size)
      curves[method][correction] = c
      barriers[method][correction] = {
          name: {k: v for k, v in row.items() if k.endswith("barrier")} for name, row in c.items()}
      logging.info("lmc %s/%s: %s", method, correction, barriers[method][correction])
  endpoints = {}
  for tag, (params, state) in (("A", endpoint_a), ("B", endpoint_b)):
    endpoints[tag] = _evaluate_splits(model, params, state, splits, opts.batch_size)
  out = {"curves": curves, "barriers": barriers, "seconds": seconds, "endpoints": endpoints, "l2_distance": l2}
  if opts.lewc:
    out["lewc"] = lewc
  if opts.singular_k:
    out["singular_alignment"] = singular
  return out


def merge_many(model, model_name: str, endpoints: list, splits: dict, opts) -> dict:
  """Merges k >= 3 endpoints into their parameter average after aligning them to ``endpoints[0]`` by each of
  ``opts.merge_methods`` (see the module docstring).

  Returns:
    ``{'merged': {method: {'<split>_loss', '<split>_accuracy'}}, 'l2_to_first': {method: mean L2 distance of
    the aligned models 1..k-1 to model 0}, 'l2_to_merged': {method: mean L2 distance of the k aligned models to
    their average}, 'seconds': {method: alignment time}, 'endpoints': mean metrics of the k endpoints}``.
  """
  spec = permutation.spec_for_model(model_name, endpoints[0][0], endpoints[0][1] if endpoints[0][1] else None)
  rng = jax.random.key(opts.matching_seed)
  evaluate = lambda params, state: _evaluate_splits(model, params, state, splits, opts.batch_size)
  out = {"merged": {}, "l2_to_first": {}, "l2_to_merged": {}, "seconds": {}}
  for method in progress(opts.merge_methods, desc="merge many", unit="method"):
    start = time.perf_counter()
    if method == "average":
      aligned = list(endpoints)
    elif method in ("weight", "merge_many"):
      perms = permutation.weight_matching_many(spec, [p for p, _ in endpoints], rng=rng, max_iter=opts.max_iter,
                                               rounds=1 if method == "weight" else opts.merge_rounds)
      aligned = [_permuted(spec, q, e) for q, e in zip(perms, endpoints)]
    else:
      aligned = [endpoints[0]] + [align("ste", spec, model, endpoints[0], e, splits["train"], opts)[0]
                                  for e in endpoints[1:]]
    out["seconds"][method] = time.perf_counter() - start
    params = _mean_tree_arrays([p for p, _ in aligned])
    state = aligned[0][1]
    if state:  # averaged running statistics do not describe the averaged network: measured again
      state = connectivity.reset_batch_norm(model, params, _mean_tree_arrays([s for _, s in aligned]),
                                            splits["train"], batch_size=opts.batch_size)
    out["merged"][method] = evaluate(params, state)
    out["l2_to_first"][method] = float(np.mean([connectivity.l2_distance(aligned[0][0], p)
                                                for p, _ in aligned[1:]]))
    out["l2_to_merged"][method] = float(np.mean([connectivity.l2_distance(params, p) for p, _ in aligned]))
  out["endpoints"] = _mean_tree([evaluate(*e) for e in endpoints])
  return out


def _evaluate_splits(model, params, state, splits: dict, batch_size: int) -> dict:
  """``{'<split>_loss', '<split>_accuracy'}``: `connectivity.evaluate` on each of ``splits``."""
  return {f"{name}_{k}": v for name, split in splits.items()
          for k, v in connectivity.evaluate(model, params, state, split, batch_size=batch_size).items()}


def _mean_tree_arrays(trees: list):
  """The leafwise mean of equally shaped pytrees of arrays."""
  return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def _merge_table(merged: dict, title: str) -> str:
  head = ["Merge of aligned models", "train loss", "test loss", "train acc. (%)", "test acc. (%)",
          "mean L2 to model 0", "mean L2 to the merge", "alignment (s)"]
  lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  e = merged["endpoints"]
  lines.append(f"| endpoints (mean) | {e['train_loss']:.4f} | {e['test_loss']:.4f} | {100 * e['train_accuracy']:.2f} "
               f"| {100 * e['test_accuracy']:.2f} | – | – | – |")
  for method, m in merged["merged"].items():
    lines.append(f"| {method} | {m['train_loss']:.4f} | {m['test_loss']:.4f} | {100 * m['train_accuracy']:.2f} "
                 f"| {100 * m['test_accuracy']:.2f} | {merged['l2_to_first'][method]:.3f} "
                 f"| {merged['l2_to_merged'][method]:.3f} | {merged['seconds'][method]:.1f} |")
  return "\n".join(lines) + "\n"


def lewc_summary(rows: dict) -> dict:
  """One `layerwise_connectivity` result in a few numbers: mean relative residual over layers (fitted weights
  and LEWC's ``0.5^l``), and the classifier's fitted weights next to LEWC's."""
  last = list(rows.values())[-1]
  return {"mean_residual": float(np.mean([r["residual"] for r in rows.values()])),
          "mean_lewc_residual": float(np.mean([r["lewc_residual"] for r in rows.values()])),
          "logit_weight_a": last["weight_a"], "logit_weight_b": last["weight_b"],
          "logit_lewc_weight": last["lewc_weight_a"]}


def _mean_tree(trees: list):
  """The elementwise mean of equally shaped nested dicts of floats."""
  return jax.tree.map(lambda *v: float(np.mean(v)), *trees)


def _spread_tree(trees: list):
  """Half the range (max - min) / 2 of equally shaped nested dicts of floats: the +- of two pairs."""
  return jax.tree.map(lambda *v: float(np.ptp(v) / 2), *trees)


# ----------------------------------------------------------------------------------------------------------------
# Writers.


def _write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


def _barrier_table(barriers: dict, title: str, calibrate: bool) -> str:
  head = ["Method", "Correction"] + [f"{s} loss barrier" for s in SPLITS] + [f"{s} acc. barrier (%)" for s in SPLITS]
  if calibrate:
    head += [f"{s} calibrated loss barrier" for s in SPLITS]
  lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, by_corr in barriers.items():
    for corr, row in by_corr.items():
      cells = [method, corr] + [f"{row[s]['loss_barrier']:.4f}" for s in SPLITS]
      cells += [f"{100 * row[s]['accuracy_barrier']:.2f}" for s in SPLITS]
      if calibrate:
        cells += [f"{row[s]['calibrated_loss_barrier']:.4f}" for s in SPLITS]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_curves(curves: dict, path: pathlib.Path, title: str) -> None:
  """Loss and accuracy against alpha, train and test: one colour per method, one line style per correction."""
  fig, axes = plots.new_figure(2, 2)
  styles = {"none": "-", "reset_bn": "--", "repair": ":"}
  colours = {m: f"C{i}" for i, m in enumerate(METHODS)}
  for i, split in enumerate(SPLITS):
    for j, metric in enumerate(("loss", "accuracy")):
      ax = axes[i][j]
      for method, by_corr in curves.items():
        for corr, c in by_corr.items():
          row = c[split]
          ax.plot(row["alpha"], row[metric], styles[corr], color=colours[method], label=f"{method} ({corr})")
      ax.set_xlabel("alpha (0 = model A, 1 = model B)")
      ax.set_ylabel(f"{split} {metric}")
      ax.grid(alpha=0.3)
  _finish(fig, axes, title, path)


def _finish(fig, axes, title: str, path) -> None:
  """Legend on the first panel, title, layout, and the PNG."""
  axes[0][0].legend(fontsize=7)
  fig.suptitle(title)
  plots.save_figure(fig, path)


def plot_widths(results: dict, path: pathlib.Path, title: str) -> None:
  """Loss barrier against width: per method and correction, raw and (when present) calibrated."""
  fig, axes = plots.new_figure(1, len(SPLITS))
  widths = sorted(results, key=int)
  first = results[widths[0]]["barriers"]
  for i, split in enumerate(SPLITS):
    ax = axes[0][i]
    for k, method in enumerate(first):
      for corr in first[method]:
        rows = [results[w]["barriers"][method][corr][split] for w in widths]
        ax.plot([int(w) for w in widths], [r["loss_barrier"] for r in rows], "o-", color=f"C{k}",
                label=f"{method} ({corr})")
        if "calibrated_loss_barrier" in rows[0]:
          ax.plot([int(w) for w in widths], [r["calibrated_loss_barrier"] for r in rows], "s--", color=f"C{k}",
                  label=f"{method} ({corr}), calibrated")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width multiplier")
    ax.set_ylabel(f"{split} loss barrier")
    ax.grid(alpha=0.3)
  _finish(fig, axes, title, path)


# ----------------------------------------------------------------------------------------------------------------
# Pipelines.


def _splits(exp: run.Experiment) -> dict:
  return {"train": exp.dataset.train, "test": exp.dataset.test}


def run_rebasin(config, workdir) -> dict:
  """The ``rebasin`` pipeline: two seeds, every matching method and correction; see the module docstring.

  Returns:
    ``{'results': results.json content, 'curves': curves.json content, 'table': markdown, 'restored': [bool,
    bool]}``.
  """
  opts = options(config)
  if len(opts.seeds) != 2:
    raise ValueError(f"config.lmc.seeds={opts.seeds!r}: the rebasin study takes exactly two seeds")
  workdir = pathlib.Path(workdir)
  start = time.perf_counter()
  exp = run.setup(config, extra_sections=("lmc",))
  workdir.mkdir(parents=True, exist_ok=True)
  module = run.build_model(config, exp.dataset.num_classes)
  trained = train_endpoints(exp, config, module, workdir, tuple(opts.seeds) + tuple(opts.merge_seeds))
  pair = study_pair(exp.model, config.model.name, trained[0][:2], trained[1][:2], _splits(exp), opts)
  title = f"{config.model.name} on {config.dataset.name}, seeds {tuple(opts.seeds)}"
  table = _barrier_table(pair["barriers"], title, opts.calibrate) + "\n" + _l2_table(pair["l2_distance"])
  results = {"model": config.model.name, "dataset": config.dataset.name, "seeds": list(opts.seeds),
             "endpoints": pair["endpoints"], "barriers": pair["barriers"], "l2_distance": pair["l2_distance"],
             "matching_seconds": pair["seconds"]}
  if opts.merge_seeds:
    seeds = tuple(opts.seeds) + tuple(opts.merge_seeds)
    results["merge_many"] = merge_many(exp.model, config.model.name, [t[:2] for t in trained], _splits(exp), opts)
    table += "\n" + _merge_table(results["merge_many"], f"{len(seeds)} models (seeds {seeds}) merged by "
                                                        "averaging after alignment to the first")
  results["seconds"] = time.perf_counter() - start
  _write_json(workdir / "results.json", results)
  _write_json(workdir / "curves.json", pair["curves"])
  (workdir / "results.md").write_text(table)
  plot_curves(pair["curves"], workdir / "rebasin.png", title)
  print(table)
  return {"results": results, "curves": pair["curves"], "table": table, "restored": [t[2] for t in trained]}


def _l2_table(l2: dict) -> str:
  before = l2.get("naive")
  lines = ["### L2 distance between A and the aligned B", "", "| Method | L2 distance | / before alignment |",
           "|---|---|---|"]
  for method, d in l2.items():
    lines.append(f"| {method} | {d:.3f} | {d / before:.3f} |" if before else f"| {method} | {d:.3f} | – |")
  return "\n".join(lines) + "\n"


def _width_model(config, opts, width: int, num_classes: int):
  """``(config, module, cache extra)`` of the model at width multiplier ``width`` (see the ``widths`` option)."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  name = config.model.name
  if name == "mlp":
    cfg.model.hidden = tuple(int(h) * width for h in config.model.hidden)
  else:
    cfg.model.width = width
  if name == "cnn1d" and opts.channels:
    channels = tuple(int(c) for c in opts.channels)
    module = models.get_model("cnn1d", num_classes, dtype=jnp.dtype(cfg.model.dtype), channels=channels,
                              width=width)
    return cfg, module, (("channels", channels),)
  return cfg, run.build_model(cfg, num_classes), ()


def _model_label(config, opts) -> str:
  if config.model.name == "mlp":
    return f"MLP {tuple(config.model.hidden)} x w"
  if config.model.name == "cnn1d":
    return f"cnn1d channels {tuple(opts.channels) or (25, 25, 25)} x w"
  return "ResNet-20 x w"


def _pair_summary(pair: dict) -> dict:
  out = {"endpoints": pair["endpoints"], "barriers": pair["barriers"], "matching_seconds": pair["seconds"]}
  if "lewc" in pair:
    out["lewc"] = pair["lewc"]
    out["lewc_summary"] = {m: lewc_summary(rows) for m, rows in pair["lewc"].items()}
  if "singular_alignment" in pair:
    out["singular_alignment"] = pair["singular_alignment"]
    out["singular_summary"] = {
        m: {"mean": float(np.mean([r["mean"] for r in rows.values()])),
            "chance": float(np.mean([(r["chance_input"] + r["chance_output"]) / 2 for r in rows.values()]))}
        for m, rows in pair["singular_alignment"].items()}
  return out


def _width_table(by_width: dict, title: str, opts) -> str:
  """One row per width: loss barriers (mean +- half-range over pairs), LEWC and singular alignment summaries."""
  corr = opts.corrections[0]
  methods = [m for m in ("naive", "weight") if m in opts.methods] or list(opts.methods[:1])
  head = ["width", "params", "test acc"]
  for split in SPLITS:
    for m in methods:
      head.append(f"{split} {m}")
      if opts.calibrate:
        head.append(f"{split} {m} calibrated")
  if opts.lewc:
    head += ["LEWC residual naive (fitted / 0.5^l)", "logit weights naive (fitted a+b / LEWC)"]
  if opts.singular_k:
    head.append(f"top-{opts.singular_k} singular alignment naive -> weight (chance)")
  lines = [f"### {title}", "", f"Loss barriers ({corr}), mean +- half-range over {len(opts.seeds) // 2} pair(s)", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for w in sorted(by_width, key=int):
    row = by_width[w]
    acc = row["endpoints"]
    cells = [w, f"{row['params']:,}", f"{(acc['A']['test_accuracy'] + acc['B']['test_accuracy']) / 2:.3f}"]
    for split in SPLITS:
      for m in methods:
        keys = ["loss_barrier"] + (["calibrated_loss_barrier"] if opts.calibrate else [])
        for k in keys:
          mean, spread = row["barriers"][m][corr][split][k], row["barriers_spread"][m][corr][split][k]
          cells.append(f"{mean:.3f} +- {spread:.3f}")
    if opts.lewc:
      lw = row["lewc_summary"].get("naive") or next(iter(row["lewc_summary"].values()))
      cells.append(f"{lw['mean_residual']:.3f} / {lw['mean_lewc_residual']:.3f}")
      cells.append(f"{lw['logit_weight_a'] + lw['logit_weight_b']:.3f} / {2 * lw['logit_lewc_weight']:.3f}")
    if opts.singular_k:
      sv = row["singular_summary"]
      after = sv.get("weight") or next(iter(sv.values()))
      cells.append(f"{sv['naive']['mean']:.3f} -> {after['mean']:.3f} ({after['chance']:.3f})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def run_width_lmc(config, workdir) -> dict:
  """The ``width_lmc`` pipeline: ``config.model`` at each of ``config.lmc.widths``; see the module docstring.

  Returns:
    ``{'results': results.json content, 'curves': curves.json content, 'table': markdown, 'restored': {width:
    [bool per seed]}}``.
  """
  opts = options(config)
  if config.model.name not in WIDTH_MODELS:
    raise ValueError(f"config.model.name={config.model.name!r}: the width_lmc study needs one of {WIDTH_MODELS}")
  workdir = pathlib.Path(workdir)
  start = time.perf_counter()
  exp = run.setup(config, extra_sections=("lmc",))
  workdir.mkdir(parents=True, exist_ok=True)
  pairs = [tuple(opts.seeds[i:i + 2]) for i in range(0, len(opts.seeds), 2)]
  by_width, all_curves, restored = {}, {}, {}
  for width in progress(opts.widths, desc="widths", unit="width"):
    cfg, module, extra = _width_model(config, opts, int(width), exp.dataset.num_classes)
    trained = train_endpoints(exp, cfg, module, workdir, opts.seeds, extra)
    model = model_lib.from_linen(module)
    key = str(int(width))
    summaries, all_curves[key] = [], []
    for i in range(len(pairs)):
      pair = study_pair(model, config.model.name, trained[2 * i][:2], trained[2 * i + 1][:2], _splits(exp), opts)
      summaries.append(_pair_summary(pair))
      all_curves[key].append(pair["curves"])
    means = {k: _mean_tree([p[k] for p in summaries]) for k in ("endpoints", "barriers", "lewc_summary",
                                                              "singular_summary") if k in summaries[0]}
    by_width[key] = dict(means, barriers_spread=_spread_tree([p["barriers"] for p in summaries]),
                         params=int(sum(np.size(v) for v in jax.tree.leaves(trained[0][0]))),
                         pairs=[dict(p, seeds=list(s)) for p, s in zip(summaries, pairs)])
    restored[key] = [t[2] for t in trained]
  title = f"{_model_label(config, opts)} on {config.dataset.name}, seed pairs {pairs}"
  table = _width_table(by_width, title, opts)
  results = {"model": config.model.name, "dataset": config.dataset.name, "seeds": list(opts.seeds),
             "widths": by_width, "seconds": time.perf_counter() - start}
  _write_json(workdir / "results.json", results)
  _write_json(workdir / "curves.json", all_curves)
  (workdir / "results.md").write_text(table)
  plot_widths(by_width, workdir / "width_lmc.png", f"{title}: loss barrier vs width")
  print(table)
  return {"results": results, "curves": all_curves, "table": table, "restored": restored}


run.register_pipeline("rebasin", run_rebasin)
run.register_pipeline("width_lmc", run_width_lmc)
