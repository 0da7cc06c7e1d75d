"""Attribution in the runs: the inputs DMM and oracle matching take from a run, built once and cached.

* ``dmm``: a population of ``method.num_models`` models, each trained with the Original's settings on a random
  ``method.alpha`` fraction of the training rows (`unlearn_jax.population`, one vmapped program), and their
  logits on every training row (`unlearn_jax.attribution.subsets`), cached under ``workdir/cache/subsets-<hash>``
  keyed by what determines them (dataset, model, training settings, size, α) — not by the seed or the forget set,
  so every seed, forget set and method setting on the same training setup reuses it (as the paper's datamodels).
* ``oracle_matching``: the run's own Retrain (restored from its cache, or trained and cached).

Both are named in `unlearn_jax.run.METHOD_INPUTS`; `unlearn_jax.run.unlearn` builds them before the
method's clock starts and keeps their seconds apart (``exp.input_seconds``; for a cached population, the seconds
its training took when it was built).
"""
from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import evaluation
from unlearn_jax import run as run_lib
from unlearn_jax.attribution import datamodels
from unlearn_jax.attribution.lds import spearman_per_target
from unlearn_jax.attribution import subsets
from unlearn_jax.attribution.subsets import check_alpha, check_num_models
from unlearn_jax.attribution import trak


def subset_population(exp: run_lib.Experiment, workdir, *, num_models: int, alpha: float, salt: int = 5,
                      key: str = "method", loop: str | None = None):
  """``(directory, seconds)``: the cached outputs (and parameters) of ``num_models`` α-subset models of ``exp``'s
  training set, trained and saved if absent; ``seconds`` is the time building them took.

  The population depends on the training set, the network and its training settings, ``num_models``, ``alpha``
  and ``salt`` (which seeds the subsets, initialisations and data orders) — not on ``config.seed`` or the forget
  set: as the paper's datamodels, it is computed once per training setup and shared by every seed and forget set.
  ``loop``: `unlearn_jax.population.fit`'s training loop (the same training either way, up to float rounding).
  """
  check_alpha(alpha, f"{key}.alpha")
  check_num_models(num_models, f"{key}.num_models")
  c = exp.config
  parts = (run_lib.CACHE_VERSION, c.dataset, c.model, config_lib.training_fields(c.train), int(num_models),
           float(alpha), int(salt))
  directory = pathlib.Path(workdir) / "cache" / f"subsets-{checkpoint.config_hash(*parts)}"
  if checkpoint.exists(directory):
    return directory, float(subsets.load_outputs(directory)[1].get("seconds") or 0.0)
  from unlearn_jax import population  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  train = exp.dataset.train
  mask_rng, init_rng, fit_rng = jax.random.split(jax.random.key(int(salt)), 3)
  masks = population.subset_masks(train.size, int(num_models), float(alpha), mask_rng)
  module = run_lib.build_model(c, exp.dataset.num_classes)
  params, state = population.init(module, jax.random.split(init_rng, int(num_models)), train.x[:1])
  params, state, _ = population.fit(exp.model, params, state, train, c.train, rng=fit_rng, masks=masks,
                                    augment=exp.augment, loop=loop, desc="α-subset models")
  logits = subsets.population_logits(exp.model, params, state, train.x)
  seconds = time.perf_counter() - start
  subsets.save_outputs(directory, subsets.SubsetOutputs(masks, logits),
                       {"seconds": seconds, "num_models": int(num_models), "alpha": float(alpha)},
                       members=(params, state))
  return directory, seconds


def dmm_inputs(exp, workdir, params, state, method):
  """``({'attribution_dir': ...}, seconds)`` for ``dmm`` with options ``method`` (see `subset_population`)."""
  del params, state
  directory, seconds = subset_population(exp, workdir, num_models=method.num_models, alpha=method.alpha)
  return {"attribution_dir": str(directory)}, seconds


def oracle_inputs(exp, workdir, params, state, method):
  """``({'oracle_dirs': (Retrain's checkpoint,)}, seconds)`` for ``oracle_matching``."""
  del params, state, method
  start = time.perf_counter()
  run_lib.retrain(exp, workdir)  # restored from the cache, or trained and cached
  return {"oracle_dirs": (str(run_lib.stage_dir(exp, workdir, "retrain")),)}, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------
# The attribution study: LDS of TRAK and of datamodels on held-out α-subset models.
# ---------------------------------------------------------------------------------------------------------------
def attribution_section(*, num_models: int = 64, num_heldout: int = 16, alpha: float = 0.5, num_targets: int = 200,
                        trak_models=(1, 3), proj_dim: int = 2048, regressions=("ridge", "lasso"),
                        num_lambdas: int = 10, lasso_steps: int = 100) -> ml_collections.ConfigDict:
  """``config.attribution`` of the study (see `run_attribution`)."""
  return ml_collections.ConfigDict(dict(num_models=num_models, num_heldout=num_heldout, alpha=alpha,
                                        num_targets=num_targets, trak_models=tuple(trak_models), proj_dim=proj_dim,
                                        regressions=tuple(regressions), num_lambdas=num_lambdas,
                                        lasso_steps=lasso_steps))


def _validate(config) -> None:
  a = config.get("attribution")
  if a is None:
    raise ValueError("config.attribution is missing (see unlearn_jax.studies.attribution.attribution_section)")
  config_lib.check_keys(a, attribution_section(), "config.attribution")
  check_alpha(a.alpha, "config.attribution.alpha")
  check_num_models(a.num_models, "config.attribution.num_models")
  config_lib.require(a.num_heldout >= 3, "attribution.num_heldout", a.num_heldout, "a rank correlation needs >= 3")
  config_lib.require(a.num_targets >= 1, "attribution.num_targets", a.num_targets, "must be >= 1")
  config_lib.require(a.proj_dim >= 1, "attribution.proj_dim", a.proj_dim, "k must be >= 1")
  for key in ("num_lambdas", "lasso_steps"):
    config_lib.require(isinstance(a[key], int) and not isinstance(a[key], bool) and a[key] >= 1,
                       f"attribution.{key}", a[key], "must be an integer >= 1")
  config_lib.require(len(a.trak_models) + len(a.regressions) > 0, "attribution.regressions", tuple(a.regressions),
                     "empty with attribution.trak_models=() too: no estimator to score")
  for k in a.trak_models:
    config_lib.require(1 <= k <= a.num_models, "attribution.trak_models", tuple(a.trak_models),
                       f"each in [1, num_models={a.num_models}]")
  for r in a.regressions:
    config_lib.require(r in datamodels.METHODS, "attribution.regressions", tuple(a.regressions),
                       f"choose from {datamodels.METHODS}")


def run_attribution(config, workdir) -> dict:
  """LDS of datamodels and TRAK on MNIST-1D (or ``config.dataset``): writes ``results.json`` and ``results.md``.

  Two populations of α-subset models (`subset_population`): ``num_models`` to fit datamodels (and whose first
  ``k`` members are TRAK's ensembles, for each ``k`` in ``trak_models``) — the same population DMM uses — and
  ``num_heldout`` more, never seen by either estimator, on which the LDS is measured. Targets are the first
  ``num_targets`` test rows; the output is the margin.
  """
  _validate(config)
  a = config.attribution
  workdir = pathlib.Path(workdir)
  exp = run_lib.setup(config, extra_sections=("attribution",))
  fit_dir, fit_seconds = subset_population(exp, workdir, num_models=a.num_models, alpha=a.alpha, key="attribution")
  held_dir, held_seconds = subset_population(exp, workdir, num_models=a.num_heldout, alpha=a.alpha, salt=6,
                                             key="attribution")
  test = exp.dataset.test
  targets = test.take(np.arange(min(int(a.num_targets), test.size)))

  def outputs_and_margins(directory):  # one read of the saved population: its outputs and members
    outputs, _, (params, state) = subsets.load(directory, members=True)
    logits = subsets.population_logits(exp.model, params, state, targets.x)
    margin = np.asarray(trak.margin(logits, jnp.broadcast_to(targets.y, logits.shape[:2])))
    return outputs, margin, (params, state)

  fit_out, fit_margins, members = outputs_and_margins(fit_dir)
  held_out, held_margins, _ = outputs_and_margins(held_dir)
  def row(estimator, models, score, start):  # LDS = mean Spearman over targets, with its standard error
    return dict(estimator=estimator, models=int(models), lds=float(np.nanmean(score)),
                sem=float(np.nanstd(score) / np.sqrt(np.sum(np.isfinite(score)))),
                seconds=time.perf_counter() - start)

  rows = []
  for reg in a.regressions:
    start = time.perf_counter()
    dm = datamodels.fit_datamodels(fit_out.masks, fit_margins, method=reg, num_lambdas=a.num_lambdas,
                                   steps=a.lasso_steps)
    score = spearman_per_target(datamodels.predict(dm, held_out.masks), held_margins)
    rows.append(row(f"datamodels ({reg})", a.num_models, score, start))
  for k in a.trak_models:
    start = time.perf_counter()
    ensemble = trak.unstack(*jax.tree.map(lambda v: v[:k], members))
    scores = trak.trak_scores(exp.model, ensemble, exp.dataset.train, targets, proj_dim=a.proj_dim,
                              cache_dir=workdir / "cache" / "trak", desc=f"TRAK, {k} models")
    score = spearman_per_target(trak.predicted_outputs(scores, held_out.masks), held_margins)
    rows.append(row(f"TRAK (k={a.proj_dim})", k, score, start))
  title = (f"LDS on {config.dataset.name} ({config.model.name}): {len(targets)} test targets (margins), "
           f"α={a.alpha}, {a.num_heldout} held-out subset models")
  lines = [f"## {title}", "", "| estimator | models used | LDS (mean ± s.e. over targets) | seconds |",
           "|---|---|---|---|"]
  lines += [f"| {r['estimator']} | {r['models']} | {r['lds']:.3f} ± {r['sem']:.3f} | {r['seconds']:.1f} |"
            for r in rows]
  lines += ["", f"Training the populations took {fit_seconds:.0f} s ({a.num_models} models) and "
                f"{held_seconds:.0f} s ({a.num_heldout} held-out models), cached under {workdir / 'cache'}."]
  table = "\n".join(lines) + "\n"
  workdir.mkdir(parents=True, exist_ok=True)
  evaluation.atomic_write(str(workdir / "results.md"), table)
  evaluation.atomic_write(str(workdir / "results.json"), json.dumps(
      {"rows": rows, "population_seconds": {"fit": fit_seconds, "heldout": held_seconds}}, indent=1))
  print(table)
  return {"rows": rows, "table": table}


run_lib.register_pipeline("attribution", run_attribution)
