"""``run(config, workdir)``: the experiment pipeline that ``experiments/main.py`` calls.

Sections, in order:
  1. config → dataset arrays on device → splits (forget, retain, test). Bad input fails here, before anything
     is written: config keys and values, a ``from_checkpoint`` model or an existing cache or progress
     checkpoint that does not fit the model (the error names the path and the first mismatching leaf).
  2. Original: loaded from ``config.train.from_checkpoint`` if set, else restored from ``workdir/cache`` when a
     checkpoint exists for the same config hash, else trained on the full training set. While it trains,
     progress checkpoints (every ``train.checkpoint_every`` epochs) go to ``<cache dir>/progress``; a run
     killed and started again resumes after the last one with the same per-epoch keys, so it ends with the same
     model as an uninterrupted run, and the progress directory is removed once the final checkpoint is saved.
  3. Retrain (the gold standard): trained on the retain set only, loaded/cached/resumed the same way
     (``config.retrain``).
  4. The unlearning method runs on the Original; its wall time is measured with ``block_until_ready``.
  5. Original, Retrain and the unlearned model are scored on the same splits.
  6. ``results.json``, ``results.md`` (Retrain first, with the gap to Retrain), a gap plot and the unlearned
     checkpoint are written; the table is printed.

``workdir/run.json`` (`write_run_record`, atomic) records the full config, seed, package versions, devices,
git commit, command line, start and end time, which stages were restored, loaded or resumed (from which
epoch), and the forget indices; it is written when the work starts (``end_time`` null) and again at the end.

Example:
    >>> from configs import retrain
    >>> results = run(retrain.get_config(), "/tmp/digits_retrain")
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import data
from unlearn_jax import evaluation
from unlearn_jax import files
from unlearn_jax import model as model_lib
from unlearn_jax import models
from unlearn_jax import sharding
from unlearn_jax import train
from unlearn_jax import unlearning
from unlearn_jax.unlearning import _fisher as fisher

# Bump when a change to training code makes cached Original/Retrain checkpoints stale.
# 2: per-epoch keys fold_in(rng, epoch); 3: the optimiser state holds the learning rate (train.make_optimizer:
# optax.inject_hyperparams)
CACHE_VERSION = 3


@dataclasses.dataclass
class Experiment:
  """What every stage of a run shares: the data, the network and the device mesh."""
  config: Any
  dataset: data.Dataset
  splits: data.UnlearningSplits
  model: model_lib.Model
  init: Callable[[], tuple[Any, Any]]  # () -> (params, state): the shared initialisation, computed on demand
  abstract: tuple[Any, Any]  # ShapeDtypeStructs of (params, state), to restore checkpoints without initialising
  mesh: Any
  augment: Callable | None
  input_seconds: dict = dataclasses.field(default_factory=dict)  # `unlearn`: seconds of each method's inputs


def load_dataset(config) -> data.Dataset:
  d = config.dataset
  options = {}
  if d.name == "digits":
    options = dict(test_fraction=d.test_fraction)
  elif d.name == "mnist1d":
    options = dict(num_samples=d.num_samples, shuffle_seq=d.shuffle_seq)
  elif d.name == "synthetic":
    options = dict(image_shape=tuple(d.image_shape), num_train=d.num_train, num_test=d.num_test,
                   num_classes=d.num_classes, noise=d.noise)
  else:
    options = dict(download=d.download)
    if d.name == "cifar100":
      options["label"] = d.label
  return data.load_dataset(d.name, seed=config.seed, data_dir=d.data_dir, **options)


def build_model(config, num_classes: int):
  m = config.model
  kwargs = {}
  if m.name in ("resnet20", "cnn1d"):
    kwargs["width"] = m.width
  elif m.name == "mlp":
    kwargs["features"] = tuple(m.hidden)
  return models.get_model(m.name, num_classes, dtype=jnp.dtype(m.dtype), **kwargs)


def setup(config, extra_sections=()) -> Experiment:
  """Section 1: validated config → data, splits, initialised network, mesh.

  ``extra_sections``: config sections a study pipeline owns and validates itself.
  """
  config_lib.validate(config, extra_sections)
  mesh = sharding.mesh_from_config(config.mesh)
  dataset = load_dataset(config)
  f = config.forget
  # A worst-case forget set needs the Original: a random one stands in until `choose_worst_case` replaces it.
  kind = "random" if f.kind == "worst_case" else f.kind
  fraction = f.fraction if kind == "random" else f.class_fraction
  try:
    splits = data.make_unlearning_splits(dataset, kind=kind, fraction=fraction,
                                         classes=tuple(f.classes) or None, seed=config.seed)
  except ValueError as e:
    raise ValueError(f"config.forget={f.to_dict()!r}: {e}") from e
  for role, split in (("forget", splits.forget), ("retain", splits.retain)):
    config_lib.require(split.size > 0, "forget", f.to_dict(), f"leaves the {role} set of the "
                       f"{dataset.train.size} training rows empty")
  for line in config_lib.batch_warnings(config, train=dataset.train.size, retain=splits.retain.size,
                                        forget=splits.forget.size):
    logging.warning("%s", line)
  module = build_model(config, dataset.num_classes)
  # fsdp_model gathers FSDP-sharded weights inside each forward; with nothing sharded it is the plain model
  model = sharding.fsdp_model(model_lib.from_linen(module))
  key, sample = jax.random.fold_in(jax.random.key(config.seed), 0), dataset.train.x[:1]
  make = lambda: model_lib.init(module, key, sample)[1:]
  augment = data.get_augment(config.dataset.augment)
  abstract = jax.eval_shape(make)
  for section in ("train", "retrain"):  # a model brought in must fit this config's network
    source = config[section].get("from_checkpoint")
    if source and os.path.isdir(source):
      try:
        checkpoint.check(source, abstract)
      except ValueError as e:
        raise ValueError(f"config.{section}.from_checkpoint: {e}") from e
    elif source:  # a PyTorch file: import it now, so a mismatch fails before any work
      _import_torch(source, dataset, abstract, section)
  return Experiment(config, dataset, splits, model, functools.cache(make), abstract, mesh, augment)


def _cache_dir(workdir: pathlib.Path, stage: str, *parts) -> pathlib.Path:
  return pathlib.Path(workdir) / "cache" / f"{stage}-{checkpoint.config_hash(CACHE_VERSION, *parts)}"


def _stage(exp: Experiment, stage: str) -> tuple[data.Split, Any, tuple, int]:
  """``(training split, train section, cache key parts, PRNG salt)`` of ``stage`` (original | retrain)."""
  c = exp.config
  if stage == "original":
    return exp.dataset.train, c.train, (c.seed, c.dataset, c.model, config_lib.training_fields(c.train)), 1
  parts = (c.seed, c.dataset, c.model, c.forget, config_lib.training_fields(c.retrain))
  if c.forget.kind == "worst_case":  # the forget set depends on the Original, which the fields above miss
    parts += (checkpoint.config_hash(np.asarray(exp.splits.forget_index).tolist()),)
  return exp.splits.retain, c.retrain, parts, 2


def _progress_like(train_cfg, abstract) -> dict:
  """The abstract tree of a progress checkpoint: the optimiser state's structure does not depend on steps."""
  opt_state = jax.eval_shape(train.make_optimizer(train_cfg, 1).init, abstract[0])
  return {"params": abstract[0], "state": abstract[1], "opt_state": opt_state}


def stage_dir(exp: Experiment, workdir, stage: str) -> pathlib.Path:
  """The checkpoint directory of ``stage`` (original | retrain): its ``from_checkpoint`` directory or its cache
  under ``workdir`` (written by `original` / `retrain`). ValueError for a stage loaded from a PyTorch file."""
  _, train_cfg, parts, _ = _stage(exp, stage)
  source = train_cfg.get("from_checkpoint")
  if source and not os.path.isdir(source):
    raise ValueError(f"config.{_stage_section(stage)}.from_checkpoint={source!r}: a PyTorch file, not a checkpoint "
                     "directory")
  return pathlib.Path(source) if source else _cache_dir(workdir, stage, *parts)


def check_caches(exp: Experiment, workdir, stages=("original", "retrain")) -> None:
  """Before any work: the cache and progress checkpoints found for ``stages`` must fit the model.

  A worst-case Retrain is skipped (its key needs the Original's forget set), as is a stage loaded from
  ``from_checkpoint`` (checked in `setup`). A corrupt cache passes: `unlearn_jax.checkpoint.cached` moves it
  aside and trains again.

  Raises:
    ValueError: naming the checkpoint directory and the first mismatching leaf.
  """
  for stage in stages:
    if stage == "retrain" and exp.config.forget.kind == "worst_case":
      continue
    _, train_cfg, parts, _ = _stage(exp, stage)
    if train_cfg.get("from_checkpoint"):
      continue
    directory = _cache_dir(workdir, stage, *parts)
    try:
      if checkpoint.exists(directory):
        checkpoint.check(directory, exp.abstract)
      with checkpoint.EpochCheckpoints(directory / "progress") as progress:
        progress.check(_progress_like(train_cfg, exp.abstract))
    except checkpoint.CorruptCheckpointError:
      continue  # unreadable, not a mismatch: moved aside and retrained when the stage runs


def _load(exp: Experiment, stage: str, source: str):
  """A stage's model from ``source`` (``from_checkpoint``) instead of training.

  ``source`` is an Orbax checkpoint directory written by `unlearn_jax.checkpoint.save`, or a PyTorch CIFAR
  ResNet ``state_dict`` file (``.pt``/``.pth``/``.tar``/``.bin``/``.safetensors``, e.g. a SalUn / Unlearn-Sparse
  Original) imported by `unlearn_jax.torch_io.import_resnet`; a ``normalize`` layer in it must match the
  dataset's standardisation.
  """
  if os.path.isdir(source):
    params, state, meta = checkpoint.restore(source, exp.abstract)
  else:
    params, state = _import_torch(source, exp.dataset, exp.abstract, _stage_section(stage))
    meta = {"seconds": None}
  seconds = meta.get("seconds")
  meta = {**meta, "seconds": float(seconds) if isinstance(seconds, (int, float)) else None,
          "source": os.path.abspath(source)}
  logging.info("%s: loaded from %s", stage, source)
  return params, state, meta, True


def _import_torch(source: str, dataset: data.Dataset, abstract, section: str):
  """``(params, state)`` from a PyTorch ResNet file; ValueError naming ``config.<section>.from_checkpoint``."""
  from unlearn_jax import torch_io  # pylint: disable=g-import-not-at-top
  try:
    tensors = torch_io.load_torch_checkpoint(source)
    stats = (dataset.mean, dataset.std) if torch_io.input_normalization(tensors) is not None else None
    return torch_io.import_resnet(tensors, *abstract, input_stats=stats)
  except ValueError as e:
    raise ValueError(f"config.{section}.from_checkpoint={source!r}: {e}") from e


def _stage_section(stage: str) -> str:
  return "train" if stage == "original" else "retrain"


def _train_cached(exp: Experiment, workdir, stage: str):
  """Trains ``stage`` from the shared initialisation, or restores, resumes or loads it (see the module doc).

  Returns:
    ``(params, state, metadata, restored)``; ``metadata`` holds ``seconds`` (training time, None for a model
    loaded without it), ``history`` (with ``resumed_from_epoch`` if training resumed) and, for a loaded
    model, ``source``.
  """
  split, train_cfg, key_parts, salt = _stage(exp, stage)
  source = train_cfg.get("from_checkpoint")
  if source:
    return _load(exp, stage, source)
  directory = _cache_dir(workdir, stage, *key_parts)
  progress = checkpoint.EpochCheckpoints(directory / "progress", every=train_cfg.get("checkpoint_every", 0),
                                         min_seconds=train_cfg.get("checkpoint_min_seconds", 0.0))

  def build():
    rng = jax.random.fold_in(jax.random.key(exp.config.seed), salt)
    loss_fn = None
    if train_cfg.mnemonic_t_mix > 0:  # the Original of mnemonic-code forgetting sees its class codes
      codes = fisher.mnemonic_codes(jax.random.key(train_cfg.mnemonic_code_seed), exp.dataset.num_classes,
                                    split.x.shape[1:], split.x.dtype)
      loss_fn = fisher.mnemonic_loss(exp.model, codes, t_mix=train_cfg.mnemonic_t_mix)
    params, state, history = train.fit(exp.model, *exp.init(), split, train_cfg, rng=rng,
                                       mesh=exp.mesh, augment=exp.augment, loss_fn=loss_fn,
                                       log=lambda line: logging.info("%s: %s", stage, line),
                                       checkpoints=progress, desc=stage)
    return params, state, {"history": history, "seconds": history["seconds"]}

  with progress:
    params, state, meta, restored = checkpoint.cached(directory, build, like=exp.abstract)
  progress.remove()  # the final checkpoint is committed: progress (also a stale one) is no longer needed
  logging.info("%s: %s %s", stage, "restored from" if restored else "trained and saved to", directory)
  return params, state, meta, restored


def original(exp: Experiment, workdir):
  """Section 2: the Original model, trained on all training data."""
  return _train_cached(exp, workdir, "original")


def choose_worst_case(exp: Experiment, params, state) -> None:
  """Replaces ``exp.splits`` by the worst-case forget set of the Original (``config.forget.kind='worst_case'``).

  Deterministic in the Original and the seed, so the Retrain cache key (which holds both) stays valid.
  """
  f = exp.config.forget
  rows = data.worst_case_forget_indices(exp.model, params, state, exp.dataset.train, fraction=f.fraction,
                                        rng=jax.random.fold_in(jax.random.key(exp.config.seed), 4),
                                        steps=f.worst_case_steps, lr=f.worst_case_lr)
  exp.splits = data.splits_from_indices(exp.dataset, rows)


def retrain(exp: Experiment, workdir):
  """Section 3: the Retrain model, trained on the retain set only."""
  return _train_cached(exp, workdir, "retrain")


def method_rng(exp: Experiment) -> jax.Array:
  """The key the unlearning method gets (`unlearn`; a sweep's grid points get the same one)."""
  return jax.random.fold_in(jax.random.key(exp.config.seed), 3)


# method name -> ``'module:function'`` of ``inputs(exp, workdir, params, state, method) -> ({option: value},
# seconds)`` (``method``: the method's options):
# what a method needs from the run besides its splits (DMM's α-subset population, oracle matching's Retrain),
# built or restored from the workdir's cache before the method's clock starts (the module is imported on first use).
METHOD_INPUTS: dict[str, str] = {"dmm": "unlearn_jax.studies.attribution:dmm_inputs",
                                 "oracle_matching": "unlearn_jax.studies.attribution:oracle_inputs"}


def method_inputs(exp: Experiment, workdir, params, state, method=None):
  """``config.method`` (or ``method``) with the options `METHOD_INPUTS` builds for it, and the seconds that took
  (0 for a method that needs none). ValueError if the method needs a ``workdir`` and none is given."""
  method = exp.config.method if method is None else method
  if method.name not in METHOD_INPUTS:
    return method, 0.0
  module, function = METHOD_INPUTS[method.name].split(":")
  inputs = getattr(importlib.import_module(module), function)
  if workdir is None:
    raise ValueError(f"method {method.name!r} builds its inputs in the run's workdir; give workdir=")
  extra, seconds = inputs(exp, pathlib.Path(workdir), params, state, method)
  method = ml_collections.ConfigDict(method.to_dict())
  method.update(extra)
  return method, seconds


def unlearn(exp: Experiment, params, state, workdir=None):
  """Section 4: the configured method applied to the Original; returns ``(params, state, seconds)``.

  Inputs a method needs from the run (`METHOD_INPUTS`) are built first, outside ``seconds``; their own seconds
  are logged and kept in ``exp.input_seconds[method name]``.
  """
  method = unlearning.get_method(exp.config.method.name)
  config, input_seconds = method_inputs(exp, workdir, params, state)
  if config.name in METHOD_INPUTS:
    exp.input_seconds[config.name] = input_seconds
    logging.info("%s: inputs built or restored in %.1f s (not in its run time)", config.name, input_seconds)
  rng = method_rng(exp)
  start = time.perf_counter()
  with sharding.use_mesh(exp.mesh):
    out_params, out_state = method(exp.model, params, state, exp.splits.forget, exp.splits.retain,
                                   config=config, rng=rng)
    jax.block_until_ready((out_params, out_state))
  return out_params, out_state, time.perf_counter() - start


def score(exp: Experiment, params, state, seconds: float | None = None, reference=None) -> dict[str, float]:
  """Section 5 for one model: `evaluation.evaluate_unlearning` on `eval_splits` with ``config.eval``'s MIA and
  batch size, and the KL to ``reference`` (Retrain's ``(params, state)``) when ``config.eval.kl``."""
  e = exp.config.eval
  return evaluation.evaluate_unlearning(exp.model, params, state, eval_splits(exp.splits), run_time=seconds,
                                        mia=e.mia, batch_size=e.batch_size,
                                        reference=reference if (reference is not None and e.kl) else None)


def eval_splits(splits: data.UnlearningSplits) -> data.UnlearningSplits:
  """The splits scored: for class-wise forgetting TA is measured on the test rows of the remaining classes."""
  if splits.test_retain is not None:
    return dataclasses.replace(splits, test=splits.test_retain)
  return splits


def run(config, workdir: str | os.PathLike) -> dict:
  """Runs the pipeline ``config.experiment`` names (``unlearning`` by default) and writes its results.

  The run holds ``workdir``'s lock (`unlearn_jax.files.workdir_lock`) throughout: a second run on the same
  directory stops at once naming this one's pid.

  Raises:
    ValueError: for an unknown ``config.experiment`` or any bad config value, before any work.
    unlearn_jax.files.WorkdirError: ``workdir`` is empty, a file, unwritable or busy with another run.
  """
  fn = pipeline(config.get("experiment", "unlearning"))
  with files.workdir_lock(workdir):
    return fn(config, workdir)


def run_unlearning(config, workdir: str | os.PathLike) -> dict:
  """Original, Retrain and the method; writes ``results.json`` / ``results.md`` under ``workdir``.

  Returns:
    ``{'results': {row name: metrics}, 'table': markdown, 'restored': {stage: bool}, 'seconds': {...}}``.
  """
  workdir = pathlib.Path(workdir)
  started, start = time.time(), time.perf_counter()
  exp = setup(config)
  name = config.method.name
  check_caches(exp, workdir, ("original",) if name == "original" else ("original", "retrain"))
  workdir.mkdir(parents=True, exist_ok=True)
  write_run_record(workdir, config, started=started)
  models_: dict[str, tuple] = {}
  restored, stages = {}, {}

  p, s, stages["Original"], restored["Original"] = original(exp, workdir)
  models_["Original"] = (p, s, stages["Original"]["seconds"])
  if config.forget.kind == "worst_case":
    choose_worst_case(exp, p, s)
  if name != "original":
    p, s, stages["Retrain"], restored["Retrain"] = retrain(exp, workdir)
    models_["Retrain"] = (p, s, stages["Retrain"]["seconds"])
  if name not in unlearning.BASELINES:
    p, s, seconds = unlearn(exp, *models_["Original"][:2], workdir=workdir)
    models_[name] = (p, s, seconds)
    checkpoint.save(workdir / "unlearned", p, s, {"method": name, "seconds": seconds})

  reference = models_.get("Retrain")
  results = {row: score(exp, p, s, seconds, reference[:2] if reference is not None else None)
             for row, (p, s, seconds) in models_.items()}
  ref_row = "Retrain" if reference is not None else "Original"
  table = evaluation.write_results(results, workdir, reference=ref_row,
                                   title=f"{name} on {config.dataset.name} ({config.model.name})")
  _write_plots(results, workdir, ref_row)
  write_run_record(workdir, config, started=started, finished=time.time(), restored=restored,
                   **stage_record(stages, restored), forget_index=[int(i) for i in exp.splits.forget_index],
                   input_seconds=dict(exp.input_seconds))
  print(table)
  for method_name, secs in exp.input_seconds.items():
    print(f"{method_name}: building its run inputs took {secs:.1f} s (cached; not in its run time)")
  if reference is not None and name in results:
    print(verdict(results, name))
  return {"results": results, "table": table, "restored": restored,
          "seconds": {"total": time.perf_counter() - start}}


def verdict(results: dict, name: str) -> str:
  """One line: whether method ``name`` ends closer to Retrain than the Original (Avg. Gap, in points, over the
  gap columns the rows have: no MIA with ``eval.mia=False``), and how far from Retrain it is on each column."""
  keys = [k for k in evaluation.GAP_KEYS if all(k in results[row] for row in (name, "Original", "Retrain"))]
  ours, original = (100 * evaluation.avg_gap(results[k], results["Retrain"], keys) for k in (name, "Original"))
  columns = ", ".join(f"{k} {100 * abs(results[name][k] - results['Retrain'][k]):.2f}" for k in keys)
  per_column = f"; {name} vs Retrain per column (points): {columns}."
  if ours < original:
    return (f"verdict: {name} is closer to Retrain than the Original is (Avg. Gap {ours:.2f} vs {original:.2f})"
            + per_column)
  return (f"verdict: {name} does NOT beat doing nothing here: its Avg. Gap {ours:.2f} is not below the "
          f"Original's {original:.2f}" + per_column)


def _write_plots(results: dict, workdir: pathlib.Path, reference: str) -> None:
  """Trade-off scatter, per-method bars and gap bars next to the results (skipped without matplotlib)."""
  try:
    evaluation.write_plots(results, workdir, reference=reference)
  except ImportError as e:
    logging.warning("plots skipped: %s", e)


def stage_record(stages: dict[str, dict], restored: dict[str, bool]) -> dict:
  """``{'resumed': {stage: epoch}, 'sources': {stage: path}}`` from the metadata `original`/`retrain` return."""
  resumed = {k: m["history"]["resumed_from_epoch"] for k, m in stages.items()
             if not restored.get(k) and "resumed_from_epoch" in m.get("history", {})}
  sources = {k: m["source"] for k, m in stages.items() if "source" in m}
  return {"resumed": resumed, "sources": sources}


def git_commit(directory: str | os.PathLike | None = None) -> str | None:
  """``git rev-parse HEAD`` of the repository holding ``directory`` (default: this package), else None."""
  directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                         timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  commit = out.stdout.strip()
  return commit if out.returncode == 0 and len(commit) in (40, 64) else None


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _iso(t: float | None) -> str | None:
  return None if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def run_record(config, *, started: float, finished: float | None = None, **extra) -> dict:
  """What reproduces a run: config, seed, versions, devices, git commit, command line and times.

  Args:
    config: the experiment config.
    started, finished: ``time.time()`` at the start and end (None while running).
    **extra: further JSON-serialisable fields (e.g. ``restored``, ``resumed``, ``forget_index``).
  """
  devices = jax.devices()
  versions = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": _version("jaxlib"),
              "flax": _version("flax"), "optax": _version("optax"), "orbax": _version("orbax-checkpoint"),
              "numpy": np.__version__}
  return {"config": json.loads(config.to_json_best_effort()), "seed": config.get("seed"), "versions": versions,
          "jax": jax.__version__, "device": {"platform": devices[0].platform, "kind": devices[0].device_kind,
                                             "count": len(devices), "processes": jax.process_count()},
          "devices": [str(d) for d in devices], "git_commit": git_commit(), "command": list(sys.argv),
          "start_time": _iso(started), "end_time": _iso(finished),
          "seconds": None if finished is None else finished - started, **extra}


def write_run_record(workdir: str | os.PathLike, config, *, started: float, finished: float | None = None,
                     **extra) -> None:
  """Writes `run_record` to ``workdir/run.json`` atomically (process 0 only)."""
  if jax.process_index() == 0:
    info = run_record(config, started=started, finished=finished, **extra)
    evaluation.atomic_write(os.path.join(workdir, "run.json"), json.dumps(info, indent=1) + "\n")


# experiment name -> run(config, workdir) -> dict. Study modules add theirs with `register_pipeline` when imported.
PIPELINES: dict[str, Callable] = {"unlearning": run_unlearning}

# experiment name -> the study module that registers it, imported on first use. The layers run one way: studies
# import this module (its stages), this module names them only here, as strings, and never imports them itself.
STUDIES: dict[str, str] = {
    "attribution": "unlearn_jax.studies.attribution",
    "benchmark": "unlearn_jax.studies.benchmark",
    "diffusion": "unlearn_jax.studies.diffusion",
    "lm_concept": "unlearn_jax.studies.lm_concept",
    "lm_unlearning": "unlearn_jax.studies.language",
    "merge": "unlearn_jax.studies.merge",
    "merge_datasets": "unlearn_jax.studies.merge_datasets",
    "population": "unlearn_jax.studies.population",
    "rebasin": "unlearn_jax.studies.lmc",
    "sweep": "unlearn_jax.studies.sweep",
    "width_lmc": "unlearn_jax.studies.lmc",
}


def register_pipeline(name: str, fn: Callable) -> Callable:
  """Makes ``config.experiment=name`` run ``fn(config, workdir)``; returns ``fn``."""
  PIPELINES[name] = fn
  return fn


def pipeline(name: str) -> Callable:
  """The pipeline registered for ``name``, importing its study module (`STUDIES`) the first time.

  Raises:
    ValueError: ``config.experiment=<name>: unknown; choose one of [...]``.
  """
  if name not in PIPELINES and name in STUDIES:
    importlib.import_module(STUDIES[name])
  if name not in PIPELINES:
    raise ValueError(f"config.experiment={name!r}: unknown; choose one of {sorted({*PIPELINES, *STUDIES})}")
  return PIPELINES[name]
