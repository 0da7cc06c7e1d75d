"""The benchmark study: every unlearning method on the same splits and seeds, one table (mean ± std).

For each seed the pipeline builds the splits, restores or trains the Original and Retrain (cached per seed),
runs every method in ``config.benchmark.methods`` with its options from ``config.benchmark.options.<name>``,
and scores all of them with the same evaluators. The table has UA, RA, TA, MIA-efficacy, Avg. Gap to Retrain and
RTE as mean ± std over seeds, as in Table 1 of the SalUn paper; ``gaps.png`` plots each method's gap.

References:
  Fan et al., "SalUn", ICLR 2024, Table 1; Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
  NeurIPS 2023.
"""
from __future__ import annotations

import copy
import json
import pathlib

import ml_collections
from absl import logging

from unlearn_jax import config as config_lib
from unlearn_jax import evaluation
from unlearn_jax import run as run_lib
from unlearn_jax import unlearning
from unlearn_jax.evaluation import plots
from unlearn_jax.progress import progress


def benchmark_section(methods, seeds=(0, 1, 2), *, tune: bool = False, selection_seed: int = 100, grids=None,
                      **overrides) -> ml_collections.ConfigDict:
  """``config.benchmark``: the methods, the seeds, every method's full options (defaults + overrides) and, for
  ``tune``, the selection seed and each method's grid (`unlearn_jax.studies.sweep.GRIDS`, updated by ``grids``)."""
  from unlearn_jax.studies import sweep as sweep_study  # pylint: disable=g-import-not-at-top
  unknown = sorted((set(overrides) | set(grids or {})) - set(methods))
  if unknown:
    raise ValueError(f"benchmark: options or grids given for methods not in the list: {unknown}")
  opts = {name: unlearning.method_config(name, **overrides.get(name, {})) for name in methods}
  grid = {name: sweep_study.grid_config(name, **(grids or {}).get(name, {})) for name in methods} if tune else {}
  return ml_collections.ConfigDict(dict(methods=tuple(methods), seeds=tuple(seeds), options=opts, tune=tune,
                                        selection_seed=selection_seed, grids=grid))


def _validate(config) -> None:
  b = config.get("benchmark")
  if b is None:
    raise ValueError("config.benchmark is missing (see unlearn_jax.studies.benchmark.benchmark_section)")
  if not b.seeds:
    raise ValueError("config.benchmark.seeds is empty")
  config_lib.check_seed(b.selection_seed, "benchmark.selection_seed")
  config_lib.check_seeds(b.seeds, "benchmark.seeds")
  for name in b.methods:
    unlearning.get_method(name)
    if name not in b.options:
      raise ValueError(f"config.benchmark.options.{name} is missing")
  for name in b.options:
    if name not in b.methods:
      raise ValueError(f"config.benchmark.options.{name}: method not in config.benchmark.methods")
    check_options(b.options[name], f"benchmark.options.{name}")
  if b.get("tune", False):
    from unlearn_jax.studies import sweep as sweep_study  # pylint: disable=g-import-not-at-top
    for name in b.methods:
      if name not in b.grids:
        raise ValueError(f"config.benchmark.grids.{name} is missing (tune=True)")
      sweep_study.check_grid(name, b.grids[name], b.selection_seed, b.seeds, f"benchmark.grids.{name}")


def check_options(method, path: str) -> None:
  """`unlearn_jax.config.check_method_section` for a study's method options at ``config.<path>``."""
  from unlearn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config_lib.check_method_section(method)
  except ValueError as e:
    raise ValueError(str(e).replace("config.method.", f"config.{path}.", 1).replace(
        "config.method:", f"config.{path}:", 1)) from e


def baselines(config, seed: int, workdir, extra_sections=()):
  """``(exp, models)`` for ``seed``: the experiment (`unlearn_jax.run.setup`, ``config.method`` set to retrain) and
  ``{'Original': (params, state, seconds), 'Retrain': ...}``, each restored from ``workdir/cache`` or trained."""
  cfg = copy.deepcopy(config)
  cfg.seed = seed
  cfg.method = ml_collections.ConfigDict(dict(name="retrain"))
  exp = run_lib.setup(cfg, extra_sections=extra_sections)
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  trained = {"Original": run_lib.original(exp, workdir), "Retrain": run_lib.retrain(exp, workdir)}
  return exp, {k: (p, s, meta["seconds"]) for k, (p, s, meta, _) in trained.items()}


def score_all(exp, models: dict) -> dict:
  """`unlearn_jax.run.score` of every ``name: (params, state, seconds)``, with the KL to ``models['Retrain']``."""
  reference = models["Retrain"][:2]
  return {row: run_lib.score(exp, p, s, seconds, reference) for row, (p, s, seconds) in models.items()}


def run_benchmark(config, workdir) -> dict:
  """Runs the study; writes ``results.json`` (aggregated), ``per_seed.json``, ``results.md`` and the plots of
  `unlearn_jax.evaluation.plots.write_plots` (``gaps.png``, ``tradeoff.png``, ``method_bars.png``).

  With ``config.benchmark.tune``, each method's learning rate / coefficient is first chosen by
  `unlearn_jax.studies.sweep.select` on ``config.benchmark.selection_seed`` (grids in ``config.benchmark.grids``);
  the chosen settings are in ``results.json``'s ``settings`` file (``settings.json``) and under the table.
  """
  _validate(config)
  workdir = pathlib.Path(workdir)
  options = {name: config.benchmark.options[name] for name in config.benchmark.methods}
  chosen = {}
  if config.benchmark.get("tune", False):
    from unlearn_jax.studies import sweep as sweep_study  # pylint: disable=g-import-not-at-top
    exp, models = baselines(config, config.benchmark.selection_seed, workdir, ("benchmark",))
    for name in progress(config.benchmark.methods, desc="tuning", unit="method"):
      opts, _ = run_lib.method_inputs(exp, workdir, *models["Original"][:2], options[name])  # DMM's population...
      options[name], chosen[name], _ = sweep_study.select(exp, models, opts, config.benchmark.grids[name],
                                                          workdir / "selection")
  per_seed, input_seconds = [], {}
  for seed in progress(config.benchmark.seeds, desc="benchmark seeds", unit="seed"):
    exp, models = baselines(config, seed, workdir, ("benchmark",))
    for name in progress(config.benchmark.methods, desc=f"seed {seed}", unit="method"):
      exp.config.method = options[name]
      logging.info("seed %d: %s", seed, name)
      models[name] = run_lib.unlearn(exp, *models["Original"][:2], workdir=workdir)
    per_seed.append(score_all(exp, models))
    input_seconds.update(exp.input_seconds)
  results = evaluation.aggregate_seeds(per_seed)
  title = (f"benchmark on {config.dataset.name} ({config.model.name}), {config.forget.kind} forget, "
           f"seeds {tuple(config.benchmark.seeds)}")
  table = evaluation.write_results(results, workdir, reference="Retrain", title=title)
  evaluation.atomic_write(str(workdir / "per_seed.json"), json.dumps(per_seed, indent=1))
  if chosen:
    table += "\nSettings chosen on seed %d by Avg. Gap: %s\n" % (
        config.benchmark.selection_seed, "; ".join(f"{k} {sweep_study.describe(v)}" for k, v in chosen.items()))
    evaluation.atomic_write(str(workdir / "results.md"), table)
    evaluation.atomic_write(str(workdir / "settings.json"), json.dumps(chosen, indent=1))
  input_seconds = {k: v for k, v in input_seconds.items() if v >= 1.0}  # restoring a cached Retrain: nothing to say
  if input_seconds:  # e.g. DMM's α-subset population: built once, outside the RTE column
    table += "\nRun inputs (cached, not in RTE): " + "; ".join(f"{k} {v:.0f} s" for k, v in input_seconds.items()) + "\n"
    evaluation.atomic_write(str(workdir / "results.md"), table)
  plots.write_plots(results, workdir, reference="Retrain")
  print(table)
  return {"results": results, "per_seed": per_seed, "table": table, "settings": chosen}


run_lib.register_pipeline("benchmark", run_benchmark)
