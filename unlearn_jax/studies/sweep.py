"""The sweep study: tune one unlearning method on a selection seed, report the chosen setting over other seeds.

A researcher comparing methods must give each the same tuning budget, chosen without looking at the reported
forget sets. This pipeline (``experiment='sweep'``, `configs/sweep.py`) does that for one method:

1. On ``config.sweep.selection_seed`` (its own forget set, Original and Retrain), every setting of the grid runs
   at once with `unlearn_jax.sweep.sweep` (vmapped for the iterative methods, one statistics pass for the one-shot
   ones, one run per learning rate otherwise) and is scored against that seed's Retrain; the setting with the
   smallest Avg. Gap (SalUn's mean |UA, RA, TA, MIA-efficacy difference| to Retrain) wins. A grid point that
   diverged (non-finite weights, or logits that overflow) is never chosen.
2. On each of ``config.sweep.seeds`` the method runs alone with the chosen setting; the table (mean ± std) names
   the setting, and ``selection.md`` lists every grid point's metrics and gap.

`select` is also what the benchmark study (``config.benchmark.tune``) uses for each method. `GRIDS` holds the
default grids: 24 settings per method (8 learning rates × 3 coefficient values, 24 learning rates for a method
without a coefficient, 24 coefficient values for a one-shot method); the methods without a vectorised form
(SCRUB, bad teacher, boundary, LAF: its ``lr_ue``, DMM, oracle matching) get 8 learning rates, run one after the
other. Where the first MNIST-1D study chose a grid's edge, the grid was widened past it.

References:
  Fan et al., "SalUn", ICLR 2024 (Avg. Gap, Table 1).
"""
from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import ml_collections
import numpy as np

from unlearn_jax import config as config_lib
from unlearn_jax import evaluation
from unlearn_jax import run as run_lib
from unlearn_jax import sweep as sweep_lib
from unlearn_jax import unlearning
from unlearn_jax.studies import benchmark

_geom = lambda lo, hi, n: tuple(float(f"{v:.3g}") for v in np.geomspace(lo, hi, n))
_LRS = _geom(1e-3, 1.0, 8)  # SGD learning rates from a tenth of the reference's 0.01 up to where training diverges

# name -> {'lrs': ..., 'coefs': ...}: the default grid of each method (see the module docstring).
GRIDS = {
    "ft": dict(lrs=_geom(1e-3, 1.0, 24)),
    "ga": dict(lrs=_geom(1e-5, 0.3, 24)),
    "rl": dict(lrs=_geom(1e-3, 1.0, 24)),
    "neggrad_plus": dict(lrs=_LRS, coefs=(0.9, 0.99, 0.999)),
    "l1_sparse": dict(lrs=_LRS, coefs=(1e-5, 1e-4, 5e-4)),
    "salun": dict(lrs=_LRS, coefs=(0.1, 0.3, 0.5)),
    "salun_soft": dict(lrs=_LRS, coefs=(0.1, 0.3, 0.5)),
    "ssd": dict(coefs=_geom(1.0, 100.0, 24)),
    "lfssd": dict(coefs=_geom(1.0, 100.0, 24)),
    "fisher": dict(coefs=_geom(3e-9, 3e-5, 24)),
    "influence": dict(coefs=_geom(1e-2, 1e4, 24)),
    "wfisher": dict(coefs=_geom(1e-2, 1e4, 24)),
    "scrub": dict(lrs=_geom(5e-4, 0.5, 8)),
    "bad_teacher": dict(lrs=_geom(1e-5, 1e-2, 8)),
    "boundary_shrink": dict(lrs=_geom(1e-5, 1e-2, 8)),
    "boundary_expanding": dict(lrs=_geom(1e-5, 1e-2, 8)),
    "laf": dict(lrs=_geom(1e-5, 1e-2, 8)),
    "dmm": dict(lrs=_geom(1e-4, 3e-2, 8)),
    "oracle_matching": dict(lrs=_geom(1e-4, 3e-2, 8)),
}


def grid_config(name: str, lrs=None, coefs=None) -> ml_collections.ConfigDict:
  """``{'lrs', 'coefs'}`` of method ``name``: `GRIDS`' defaults, replaced by the given ones."""
  default = GRIDS.get(name)
  if default is None and lrs is None and coefs is None:
    raise ValueError(f"sweep: no default grid for method {name!r}; give lrs/coefs (defaults: {sorted(GRIDS)})")
  default = default or {}
  return ml_collections.ConfigDict(dict(lrs=tuple(default.get("lrs", ()) if lrs is None else lrs),
                                        coefs=tuple(default.get("coefs", ()) if coefs is None else coefs)))


def sweep_section(method: str, *, lrs=None, coefs=None, selection_seed: int = 100, seeds=(0, 1, 2),
                  **options) -> ml_collections.ConfigDict:
  """``config.sweep``: the method's full options, its grid, the selection seed and the reported seeds."""
  return ml_collections.ConfigDict(dict(options=unlearning.method_config(method, **options),
                                        grid=grid_config(method, lrs, coefs), selection_seed=selection_seed,
                                        seeds=tuple(seeds)))


def describe(setting: dict) -> str:
  """``'lr=0.01, fraction=0.5'``."""
  return ", ".join(f"{k}={v:.3g}" for k, v in setting.items())


def check_grid(name: str, grid, selection_seed: int, seeds, path: str) -> None:
  """ValueError naming ``config.<path>...`` for a grid the method's sweep cannot run, or a reused seed."""
  how = sweep_lib.kind(name)
  coef = sweep_lib.coefficient(name)
  if how == "sequential" and sweep_lib.lr_key(name) not in unlearning.DEFAULTS.get(name, {}):
    raise ValueError(f"config.{path}: {name} has no learning rate {sweep_lib.lr_key(name)!r} to sweep")
  if how == "one_shot" and (grid.lrs or not grid.coefs):
    raise ValueError(f"config.{path}.grid: {name} is one-shot: give coefs ({coef}) and no lrs")
  if how != "one_shot" and not grid.lrs:
    raise ValueError(f"config.{path}.grid.lrs: empty")
  if grid.coefs and how != "one_shot" and coef is None:
    raise ValueError(f"config.{path}.grid.coefs={tuple(grid.coefs)}: {name} has no coefficient to sweep")
  for lr in grid.lrs:
    if not lr > 0:
      raise ValueError(f"config.{path}.grid.lrs: {lr!r} must be positive")
  for c in grid.coefs if coef is not None else ():  # each one as the method's option (a fraction in (0, 1]...)
    try:
      config_lib.check_options({coef: c}, f"{path}.grid.coefs")
    except ValueError as e:
      raise ValueError(f"config.{path}.grid.coefs={tuple(grid.coefs)}: {coef}={c!r} "
                       f"{str(e).split(': ', 1)[1]}") from e
  if selection_seed in tuple(seeds):
    raise ValueError(f"config.{path}.selection_seed={selection_seed}: must not be one of the reported seeds "
                     f"{tuple(seeds)}")


def select(exp, models: dict, options, grid, workdir=None):
  """Runs ``options.name`` over ``grid`` on ``exp``'s splits from ``models['Original']`` and picks the setting
  with the smallest Avg. Gap to ``models['Retrain']``.

  Args:
    exp: the selection seed's `unlearn_jax.run.Experiment`.
    models: ``{'Original': (params, state, seconds), 'Retrain': ...}`` of that seed.
    options: the method's full options (``name`` included); the grid replaces ``lr`` and the coefficient.
    grid: ``{'lrs', 'coefs'}`` (see `grid_config`).
    workdir: if given, ``<workdir>/<name>.json`` and ``<name>.md`` list every grid point.

  Returns:
    ``(options, setting, rows)``: the options with the chosen setting, the setting, and one row per grid point
    (its setting, metrics, ``gap`` (inf if it diverged) and ``finite``).
  """
  name = options.name
  opts = {k: v for k, v in options.items() if k != "name"}
  start = time.perf_counter()
  params, state, settings, history = sweep_lib.sweep(name, exp.model, *models["Original"][:2], exp.splits.forget,
                                                     exp.splits.retain, options=opts, lrs=tuple(grid.lrs),
                                                     coefs=tuple(grid.coefs) or None, rng=run_lib.method_rng(exp))
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  retrain_row = run_lib.score(exp, *models["Retrain"][:2])
  finite = np.asarray(history["finite"])
  rows = []
  for g, setting in enumerate(settings):
    row = {"setting": setting, "finite": bool(finite[g]), "gap": math.inf}
    if finite[g]:
      try:
        metrics = run_lib.score(exp, sweep_lib.grid_point(params, g), sweep_lib.grid_point(state, g))
      except ValueError as e:  # finite weights whose logits overflow: diverged as well
        if "not all finite" not in str(e):
          raise
        row["finite"] = False
      else:
        row.update(metrics, gap=evaluation.avg_gap(metrics, retrain_row))
    rows.append(row)
  best = int(np.argmin([r["gap"] for r in rows]))
  if not math.isfinite(rows[best]["gap"]):
    raise ValueError(f"sweep of {name}: every grid point diverged; lower the learning rates")
  if workdir is not None:
    _write_selection(pathlib.Path(workdir), name, rows, best, retrain_row, seconds, sweep_lib.kind(name))
  chosen = ml_collections.ConfigDict(options.to_dict())
  chosen.update(settings[best])
  return chosen, settings[best], rows


def _write_selection(workdir: pathlib.Path, name: str, rows, best: int, retrain_row, seconds: float, how: str):
  keys = evaluation.GAP_KEYS
  lines = [f"## {name}: {len(rows)} settings ({how}, {seconds:.1f} s), chosen: {describe(rows[best]['setting'])}",
           "", "| setting | " + " | ".join(keys) + " | Avg. Gap |", "|---" * (len(keys) + 2) + "|",
           "| Retrain | " + " | ".join(f"{100 * retrain_row[k]:.2f}" for k in keys) + " | 0.00 |"]
  for g, r in enumerate(rows):
    cells = [f"{100 * r[k]:.2f}" if r["finite"] else "diverged" for k in keys]
    mark = " (chosen)" if g == best else ""
    lines.append(f"| {describe(r['setting'])}{mark} | " + " | ".join(cells) + f" | {100 * r['gap']:.2f} |")
  workdir.mkdir(parents=True, exist_ok=True)
  evaluation.atomic_write(str(workdir / f"{name}.md"), "\n".join(lines) + "\n")
  evaluation.atomic_write(str(workdir / f"{name}.json"),
                          json.dumps({"rows": rows, "best": best, "seconds": seconds, "retrain": retrain_row},
                                     indent=1, default=str))


def _validate(config) -> None:
  s = config.get("sweep")
  if s is None:
    raise ValueError("config.sweep is missing (see unlearn_jax.studies.sweep.sweep_section)")
  if not s.seeds:
    raise ValueError("config.sweep.seeds is empty")
  config_lib.check_seed(s.selection_seed, "sweep.selection_seed")
  config_lib.check_seeds(s.seeds, "sweep.seeds")
  benchmark.check_options(s.options, "sweep.options")
  check_grid(s.options.name, s.grid, s.selection_seed, s.seeds, "sweep")


def run_sweep(config, workdir) -> dict:
  """Runs the study (see the module docstring); writes ``results.json``/``results.md`` (the chosen setting over
  ``config.sweep.seeds``), ``per_seed.json`` and ``selection/<method>.md``/``.json``."""
  _validate(config)
  s, workdir = config.sweep, pathlib.Path(workdir)
  exp, models = benchmark.baselines(config, s.selection_seed, workdir, ("sweep",))
  options, setting, rows = select(exp, models, s.options, s.grid, workdir / "selection")
  label = f"{options.name} ({describe(setting)})"
  per_seed = []
  for seed in s.seeds:
    exp, models = benchmark.baselines(config, seed, workdir, ("sweep",))
    exp.config.method = options
    models[label] = run_lib.unlearn(exp, *models["Original"][:2])
    per_seed.append(benchmark.score_all(exp, models))
  results = evaluation.aggregate_seeds(per_seed)
  title = (f"{options.name} on {config.dataset.name} ({config.model.name}), {config.forget.kind} forget: "
           f"{describe(setting)} chosen from {len(rows)} settings by Avg. Gap on seed {s.selection_seed}, "
           f"reported over seeds {tuple(s.seeds)}")
  table = evaluation.write_results(results, workdir, reference="Retrain", title=title)
  evaluation.atomic_write(str(workdir / "per_seed.json"), json.dumps(per_seed, indent=1))
  print(table)
  return {"results": results, "per_seed": per_seed, "table": table, "setting": setting, "selection": rows}


run_lib.register_pipeline("sweep", run_sweep)
