"""The population study: judge unlearning methods by populations of models, as U-LiRA, KLoM and the NeurIPS 2023
unlearning challenge do, instead of by one Retrain and the SVC MIA.

For each forget kind in ``config.population.kinds`` (``'random'``: ``config.forget.fraction`` of the training rows;
``'class'``: every row of ``config.population.classes``), on ``config.seed``'s splits:

1. Three populations of ``config.population.size`` models are trained as one vmapped program each
   (`unlearn_jax.population.fit`) and cached with Orbax (`unlearn_jax.checkpoint.cached`): Originals (every
   training row), Retrains (every row but the forget set) and a second, independent Retrain population, whose
   distance to the first is the **noise floor**, what a perfect unlearner scores with populations of this size.
   Every member has its own initialisation and data order.
2. Each method runs on all Originals at once (`unlearn_jax.sweep.unlearn_population`: one program over the model
   axis for the methods with a Plan and the one-shot ones, member by member otherwise; the table says which), with
   the setting the tuned benchmark chose: read from a benchmark run's ``settings.json``
   (``config.population.settings.<kind>``), or chosen here by the benchmark's own selection
   (`unlearn_jax.studies.sweep.select` on ``config.population.selection_seed`` over ``config.population.grids``;
   cached in ``<workdir>/selection_<kind>/``).
3. Every population is scored by `unlearn_jax.evaluation.population.evaluate` against the Retrains (U-LiRA
   accuracy, KLoM median and 95th percentile per split, the challenge's ε, F and score) and by SalUn's Avg. Gap
   (the mean of `unlearn_jax.run.score` over the first ``config.population.gap_members`` members, against as many
   Retrains).

Writes ``results.json`` (``{kind: {row: metrics}}``), ``results.md`` (one table per kind) and
``klom_<kind>.png`` (histograms of the per-example KLoM on the forget set, floor and methods).

References:
  Hayes et al., arXiv:2403.01218 (U-LiRA); Georgiev et al., arXiv:2410.23232 (KLoM); Triantafillou et al.,
  arXiv:2406.09073 (the challenge score); Fan et al., "SalUn", ICLR 2024 (Avg. Gap).
"""
from __future__ import annotations

import copy
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np

from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import evaluation
from unlearn_jax import population as population_lib
from unlearn_jax import run as run_lib
from unlearn_jax import sweep as sweep_lib
from unlearn_jax import unlearning
from unlearn_jax.evaluation import plots
from unlearn_jax.evaluation import population as pop_metrics
from unlearn_jax.progress import progress

KINDS = ("random", "class")
# stage -> PRNG salt of its members' keys (the single-model stages of `unlearn_jax.run` use 1-4)
STAGES = {"original": 11, "retrain": 12, "retrain_b": 13}
FLOOR = "Retrain vs Retrain (floor)"
INPUT_METHODS = ("dmm", "oracle_matching")  # the run inputs `member_inputs` builds (`unlearn_jax.run.METHOD_INPUTS`)
COLUMNS = (("U-LiRA acc", "ulira_accuracy", 1), ("KLoM p95 forget", "klom_p95_forget", 1),
           ("KLoM p95 retain", "klom_p95_retain", 1), ("KLoM p95 test", "klom_p95_test", 1),
           ("challenge score", "challenge_score", 1), ("Avg. Gap", "avg_gap", 1))


def population_section(methods, *, size: int = 32, kinds=KINDS, classes=(0,), settings=None,
                       selection_seed: int = 100, grids=None, gap_members: int = 4, member_batch: int = 8,
                       loop=None, options=None) -> ml_collections.ConfigDict:
  """``config.population``: the methods, the population size, the forget kinds and where the settings come from.

  Args:
    methods: method names (every Plan and one-shot method run over the model axis; others member by member).
    size: models per population.
    kinds: forget kinds, of `KINDS`.
    classes: the forgotten classes of ``'class'``.
    settings: ``{kind: path of a tuned benchmark run's settings.json}``; a kind without one is tuned here.
    selection_seed, grids: the benchmark's selection protocol for kinds without settings (``grids[name]``:
      `unlearn_jax.studies.sweep.grid_config` overrides).
    gap_members: members scored by `unlearn_jax.run.score` for the Avg. Gap.
    member_batch: members at a time for the one-shot methods' statistics (memory).
    loop: `unlearn_jax.train` loop of the population training (None: the backend's default).
    options: ``{name: {option: value}}`` overriding a method's defaults (the tuned setting still replaces its
      learning rate and coefficient); none by default, as in the tuned benchmark.
  """
  from unlearn_jax.studies import sweep as sweep_study  # pylint: disable=g-import-not-at-top
  grid = {name: sweep_study.grid_config(name, **(grids or {}).get(name, {})) for name in methods}
  opts = {name: unlearning.method_config(name, **(options or {}).get(name, {})) for name in methods}
  return ml_collections.ConfigDict(dict(
      methods=tuple(methods), size=size, kinds=tuple(kinds), classes=tuple(classes),
      settings=ml_collections.ConfigDict({k: (settings or {}).get(k, ml_collections.config_dict.placeholder(str))
                                          for k in KINDS}),
      selection_seed=selection_seed, grids=grid, gap_members=gap_members,
      member_batch=member_batch, loop=ml_collections.config_dict.placeholder(str) if loop is None else loop,
      options=opts))


def _validate(config) -> None:
  p = config.get("population")
  config_lib.require(p is not None, "population", None, "missing (see unlearn_jax.studies.population)")
  config_lib.require(int(p.size) >= 2, "population.size", p.size, "a population needs at least 2 models")
  config_lib.require(bool(p.methods), "population.methods", tuple(p.methods), "empty")
  config_lib.require(len(p.kinds) > 0, "population.kinds", tuple(p.kinds), f"empty; choose from {KINDS}")
  for kind in p.kinds:
    config_lib.require(kind in KINDS, "population.kinds", tuple(p.kinds), f"choose from {KINDS}")
    try:  # each kind's forget set, as the runs will set it (the class kind's classes are population.classes)
      config_lib.check_forget(_kind_config(config, kind).forget, config.dataset)
    except ValueError as e:
      raise ValueError(str(e).replace("config.forget.classes=", "config.population.classes=", 1)) from e
  config_lib.check_seed(p.selection_seed, "population.selection_seed")
  config_lib.require(1 <= int(p.gap_members) <= int(p.size), "population.gap_members", p.gap_members,
                     f"must be in [1, population.size={p.size}]")
  config_lib.require(int(p.member_batch) >= 1, "population.member_batch", p.member_batch, "must be >= 1")
  for name in p.methods:
    try:
      unlearning.get_method(name)
    except ValueError as e:
      config_lib.require(False, "population.methods", name, str(e))
    config_lib.require(name not in run_lib.METHOD_INPUTS or name in INPUT_METHODS, "population.methods", name,
                       f"needs run inputs this study does not build (it builds those of {INPUT_METHODS})")
    config_lib.require(name in p.grids, f"population.grids.{name}", None, "missing")
    config_lib.require(name in p.options, f"population.options.{name}", None, "missing")
  for kind in p.kinds:
    load_settings(p, kind)
  config_lib.require(p.selection_seed != config.seed, "population.selection_seed", p.selection_seed,
                     f"must differ from config.seed={config.seed} (settings are chosen on another forget set)")


def _kind_config(config, kind: str):
  cfg = copy.deepcopy(config)
  cfg.forget.kind = kind
  cfg.forget.classes = tuple(config.population.classes) if kind == "class" else ()
  cfg.method = ml_collections.ConfigDict(dict(name="retrain"))
  return cfg


def load_settings(p, kind: str) -> dict[str, dict]:
  """``{method: setting}`` of ``p.settings[kind]`` (a tuned benchmark run's ``settings.json``; ``{}`` when it is
  unset or ``''``), checked: a JSON object whose entries for ``p.methods`` hold only the method's swept options
  (`unlearn_jax.sweep.lr_key` but for one-shot methods, `unlearn_jax.sweep.coefficient`) with finite values (learning rates > 0,
  coefficients >= 0). ValueError ``config.population.settings.<kind>=<path>: ...`` otherwise."""
  path = p.settings.get(kind, None)
  if not path:
    return {}
  key = f"population.settings.{kind}"
  config_lib.require(pathlib.Path(path).is_file(), key, path, "no such file")
  try:
    chosen = json.loads(pathlib.Path(path).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"config.{key}={path!r}: not JSON ({e})") from None
  config_lib.require(isinstance(chosen, dict), key, path, "expected a JSON object {method: {option: value}}")
  for name in p.methods:
    if name not in chosen:
      continue
    setting = chosen[name]
    config_lib.require(isinstance(setting, dict), key, path, f"{name}: expected an object, got {setting!r}")
    lr = None if sweep_lib.kind(name) == "one_shot" else sweep_lib.lr_key(name)
    coef = sweep_lib.coefficient(name)
    for option, value in setting.items():
      config_lib.require(option in (lr, coef), key, path, f"{name}.{option}: not a swept option of {name} "
                         f"(expected {tuple(k for k in (lr, coef) if k)})")
      ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
      config_lib.require(ok and (value > 0 if option == lr else value >= 0), key, path,
                         f"{name}.{option}={value!r}: must be a finite number, " + ("> 0" if option == lr else ">= 0"))
  return chosen


def settings_for(config, kind: str, workdir: pathlib.Path) -> dict[str, dict]:
  """``{method: full options}`` with the tuned benchmark's setting of each method for forget kind ``kind``.

  From ``config.population.settings[kind]`` (a benchmark run's ``settings.json``) when given; else chosen by the
  benchmark's selection (`unlearn_jax.studies.sweep.select`) on the selection seed, each method's choice cached in
  ``<workdir>/selection_<kind>/<method>.json``.
  """
  p = config.population
  chosen = load_settings(p, kind)
  directory = workdir / f"selection_{kind}"
  missing = [n for n in p.methods if n not in chosen]
  for name in list(missing):
    cached = directory / f"{name}.json"
    if cached.is_file():
      rows = json.loads(cached.read_text())
      chosen[name] = rows["rows"][rows["best"]]["setting"]
      missing.remove(name)
  if missing:
    from unlearn_jax.studies import benchmark  # pylint: disable=g-import-not-at-top
    from unlearn_jax.studies import sweep as sweep_study  # pylint: disable=g-import-not-at-top
    cfg = _kind_config(config, kind)
    exp, models = benchmark.baselines(cfg, p.selection_seed, workdir, ("population",))
    for name in progress(missing, desc=f"tuning ({kind})", unit="method"):
      opts, _ = run_lib.method_inputs(exp, workdir, *models["Original"][:2], p.options[name])  # as the benchmark
      _, chosen[name], _ = sweep_study.select(exp, models, opts, p.grids[name], directory)
  return {name: {**p.options[name].to_dict(), **chosen[name]} for name in p.methods}


def train_population(exp, workdir: pathlib.Path, stage: str, size: int, loop=None):
  """``(params, state, metadata, restored)`` of a population of ``size`` models of ``stage`` (`STAGES`), trained
  as one program or restored from ``workdir/cache``. Member ``i`` initialises from ``fold_in(k_i, 0)`` and trains
  with ``fold_in(k_i, 1)``, ``k_i`` the ``i``-th of ``size`` keys from ``config.seed`` and the stage's salt; the
  Retrains see every row but the forget set."""
  c = exp.config
  original = stage == "original"
  train_cfg = c.train if original else c.retrain
  parts = ("population", stage, size, c.seed, c.dataset, c.model, config_lib.training_fields(train_cfg))
  if not original:
    parts += (c.forget, checkpoint.config_hash(np.asarray(exp.splits.forget_index).tolist()))
  directory = run_lib._cache_dir(workdir, f"population-{stage}", *parts)  # pylint: disable=protected-access
  module = run_lib.build_model(c, exp.dataset.num_classes)
  split = exp.dataset.train
  member_keys = population_lib.keys(jax.random.fold_in(jax.random.key(c.seed), STAGES[stage]), size)
  init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(member_keys)
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(member_keys)
  init = lambda: population_lib.init(module, init_keys, split.x[:1])
  masks = None if original else population_lib.exclude_masks(split.size, exp.splits.forget_index, size)

  def build():
    params, state = init()
    params, state, history = population_lib.fit(exp.model, params, state, split, train_cfg, rng=train_keys,
                                                masks=masks, loop=loop, desc=f"{stage} x{size}")
    return params, state, {"history": history, "seconds": history["seconds"]}

  return checkpoint.cached(directory, build, like=jax.eval_shape(init))


def _logits(exp, params, state) -> dict[str, np.ndarray]:
  splits = run_lib.eval_splits(exp.splits)
  return {s: np.asarray(population_lib.logits(exp.model, params, state, getattr(splits, s).x,
                                              batch_size=exp.config.eval.batch_size))
          for s in pop_metrics.SPLITS}


def _gap_rows(exp, params, state, count: int) -> dict[str, float]:
  """`unlearn_jax.run.score` of the first ``count`` members, averaged."""
  rows = [run_lib.score(exp, population_lib.member(params, i), population_lib.member(state, i))
          for i in range(count)]
  return {k: float(np.mean([r[k] for r in rows])) for k in evaluation.GAP_KEYS}


def _check_memory(exp, size: int) -> None:
  """The population's memory plan (shapes only) before any training; ValueError naming population.size."""
  module = run_lib.build_model(exp.config, exp.dataset.num_classes)
  x = exp.dataset.train.x[:1]
  abstract = jax.eval_shape(lambda k: population_lib.init(module, k, x),
                            jax.random.split(jax.random.key(0), size))
  plan = population_lib.plan_memory(*abstract, exp.dataset.train, exp.config.train, model=exp.model)
  population_lib.check_memory(plan)


def member_inputs(exp, workdir: pathlib.Path, name: str, opts: dict, pops: dict, loop=None):
  """``(inputs, seconds)``: the run inputs of a method of `unlearn_jax.run.METHOD_INPUTS` as per-member keywords
  (``inputs(i)``; None for a method that needs none) and the seconds building them took (apart from the method's).

  * ``oracle_matching``: member ``i`` matches member ``i`` of the *second* Retrain population (``retrain_b``),
    independent of the Retrains every row is judged against, so the oracle cannot copy the judges' own noise.
  * ``dmm``: the α-subset population of `unlearn_jax.studies.attribution.subset_population` (``num_models`` ×
    ``alpha`` of the method's options; trained once per training setup and cached, shared by both kinds), its
    outputs loaded once for every member.
  """
  if name == "oracle_matching":
    params, state = pops["retrain_b"]
    return (lambda i: {"oracles": [(population_lib.member(params, i), population_lib.member(state, i))]}), 0.0
  if name == "dmm":
    from unlearn_jax.attribution import subsets  # pylint: disable=g-import-not-at-top
    from unlearn_jax.studies import attribution  # pylint: disable=g-import-not-at-top
    directory, seconds = attribution.subset_population(exp, workdir, num_models=opts["num_models"],
                                                       alpha=opts["alpha"],
                                                       key=f"population.options.{name}", loop=loop)
    outputs, _ = subsets.load_outputs(directory)
    return (lambda i: {"subset_outputs": outputs}), seconds
  return None, 0.0


def run_kind(config, kind: str, workdir: pathlib.Path) -> tuple[dict, dict, dict]:
  """One forget kind: ``(rows, per-example KLoM on the forget set per row, seconds per stage)``."""
  p = config.population
  size = int(p.size)
  exp = run_lib.setup(_kind_config(config, kind), extra_sections=("population",))
  _check_memory(exp, size)
  options = settings_for(config, kind, workdir)
  seconds: dict[str, float] = {}
  pops = {}
  for stage in STAGES:
    start = time.perf_counter()
    params, state, meta, restored = train_population(exp, workdir, stage, size, loop=p.get("loop"))
    seconds[stage] = meta["seconds"] if not restored else time.perf_counter() - start
    pops[stage] = (params, state)
  logits = {stage: _logits(exp, *pops[stage]) for stage in ("original", "retrain", "retrain_b")}
  splits = run_lib.eval_splits(exp.splits)
  labels = {s: np.asarray(getattr(splits, s).y) for s in pop_metrics.SPLITS}
  rng = jax.random.fold_in(jax.random.key(config.seed), 14)
  gaps = int(p.gap_members)
  retrain_gap = _gap_rows(exp, *pops["retrain"], gaps)
  hist, rows = {}, {}

  def add(row_name, unlearned_logits, reference, gap_row, **extra):
    row = pop_metrics.evaluate(unlearned_logits, reference, labels, rng=rng)
    row["avg_gap"] = 100 * evaluation.avg_gap(gap_row, retrain_gap)
    rows[row_name] = {**row, **extra}
    hist[row_name] = np.asarray(pop_metrics.klom(unlearned_logits["forget"], reference["forget"], labels["forget"]))

  add(FLOOR, logits["retrain_b"], logits["retrain"], _gap_rows(exp, *pops["retrain_b"], gaps), how="trained")
  add("Original", logits["original"], logits["retrain"], _gap_rows(exp, *pops["original"], gaps), how="trained")
  method_rng = run_lib.method_rng(exp)
  for name in progress(p.methods, desc=f"methods ({kind})", unit="method"):
    inputs, input_seconds = member_inputs(exp, workdir, name, options[name], pops, loop=p.get("loop"))
    out_params, out_state, info = sweep_lib.unlearn_population(
        name, exp.model, *pops["original"], exp.splits.forget, exp.splits.retain, options=options[name],
        rng=method_rng, member_batch=int(p.member_batch), inputs=inputs)
    extra = dict(how=info["how"], seconds=info["seconds"], **({"input_seconds": input_seconds} if inputs else {}))
    finite = np.asarray(info["finite"])
    if not finite.all():
      rows[name] = {**extra, "diverged_members": int((~finite).sum())}
      continue
    seconds[name] = info["seconds"]
    add(name, _logits(exp, out_params, out_state), logits["retrain"], _gap_rows(exp, out_params, out_state, gaps),
        setting={k: v for k, v in options[name].items() if k in ("lr", sweep_lib.coefficient(name), "lr_ue")},
        **extra)
  return rows, hist, seconds


def table(kind: str, rows: dict, size: int) -> str:
  """The markdown table of one forget kind (``seconds``: the method on all members; run inputs listed below)."""
  head = "| Method | run as | " + " | ".join(c[0] for c in COLUMNS) + " | seconds |"
  lines = [f"### {kind} forgetting, {size} models per population", "", head, "|---" * (len(COLUMNS) + 3) + "|"]
  for name, row in rows.items():
    secs = f"{row['seconds']:.1f}" if "seconds" in row else ""
    if "diverged_members" in row:
      lines.append(f"| {name} | {row['how']} | " + " | ".join(["diverged"] * len(COLUMNS)) + f" | {secs} |")
      continue
    cells = [f"{row[key]:.3f}" if key != "avg_gap" else f"{row[key]:.2f}" for _, key, _ in COLUMNS]
    lines.append(f"| {name} | {row.get('how', '')} | " + " | ".join(cells) + f" | {secs} |")
  inputs = [f"{name} {row['input_seconds']:.0f} s" for name, row in rows.items() if row.get("input_seconds")]
  if inputs:  # e.g. DMM's α-subset population: built once (cached), not in the method's seconds
    lines += ["", "Run inputs (built or restored apart, not in the seconds column): " + "; ".join(inputs) + "."]
  return "\n".join(lines) + "\n"


def plot_klom(hist: dict[str, np.ndarray], path, *, title: str) -> str:
  """Histograms of per-example KLoM on the forget set, one outline per row (the floor filled)."""
  fig, axes = plots.new_figure(size=(7.0, 4.2))
  ax = axes[0, 0]
  top = max(float(np.max(v)) for v in hist.values()) or 1.0
  edges = np.linspace(0.0, top, 31)
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top  (plots.new_figure checked it is there)
  colors = colormaps["tab20"].colors
  for i, (name, values) in enumerate(hist.items()):
    kw = dict(histtype="stepfilled", alpha=0.3) if name == FLOOR else dict(histtype="step")
    ax.hist(values, bins=edges, label=name, color=colors[i % len(colors)], **kw)
  ax.set_xlabel("KLoM per forget example (Retrain vs row)")
  ax.set_ylabel("examples")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=6, ncol=2)
  return plots.save_figure(fig, path)


def run_population(config, workdir) -> dict:
  """Runs the study (see the module docstring); returns ``{'results', 'table', 'seconds'}``."""
  _validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  results, seconds, tables = {}, {}, []
  size = int(config.population.size)
  for kind in config.population.kinds:
    rows, hist, seconds[kind] = run_kind(config, kind, workdir)
    results[kind] = rows
    tables.append(table(kind, rows, size))
    plot_klom(hist, workdir / f"klom_{kind}.png",
              title=f"{config.dataset.name} {config.model.name}, {kind} forget, {size} models per population")
  seconds["total"] = time.perf_counter() - start
  text = (f"## Population study: {config.dataset.name}, {config.model.name}\n\n" + "\n".join(tables) +
          f"\nTotal {seconds['total']:.0f} s. U-LiRA accuracy 0.5 and KLoM 0 are a perfect unlearner; compare each "
          "row with the floor row (two Retrain populations).\n")
  evaluation.atomic_write(str(workdir / "results.md"), text)
  evaluation.atomic_write(str(workdir / "results.json"),
                          json.dumps({"results": results, "seconds": seconds}, indent=1, default=float))
  print(text)
  return {"results": results, "table": text, "seconds": seconds}


run_lib.register_pipeline("population", run_population)
