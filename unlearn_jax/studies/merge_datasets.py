r"""The ``merge_datasets`` study: merging two models trained on different datasets, with no data, with the data, or
with condensed stand-ins of the data (Yamada et al., arXiv:2306.05641).

``config.experiment = 'merge_datasets'`` selects this pipeline (`run_merge_datasets`); ``configs/merge_datasets.py``
builds the config. Sections, in order:

  1. The pair of datasets of one shape (`dataset_pair`): ``digits`` and the same digits under one seeded
     permutation of the 64 pixels (train and test alike), or ``mnist1d`` and its spatially shuffled variant
     (``shuffle_seq``: one fixed permutation of the 40 positions).
  2. Endpoints: model A trained on dataset A, model B on dataset B (`unlearn_jax.train.fit`, the ``train``
     schedule), both from the shared initialisation of ``config.seed`` (``shared_init=True``) or B from its own
     (``False``, the paper's independently trained models); cached as ``cache/mergeds-<hash>`` (Orbax).
  3. Condensed datasets (`unlearn_jax.data.condense`): ``images_per_class`` images per class of each dataset by
     gradient matching (``gm``) and/or distribution matching (``dm``), learned against freshly initialised networks
     of the architecture (never the endpoints); cached as ``cache/condensed-<hash>``.
  4. Merges (rows of the table), each scored by accuracy on both test sets:

     - no data: the plain average; weight matching (Git Re-Basin) + average;
     - with data ``D`` (the real training sets, then each condensed version): activation matching on the union of
       A's and B's ``D`` + average; STE matching (the midpoint's loss on the union, the paper's method) + average;
       weight matching + RegMean with each model's Grams on its own ``D``; weight matching + Fisher merging with
       each model's diagonal Fisher on its own ``D``;
     - the paper's control for condensed data: a model trained from the initialisation on the union of the two
       condensed sets only (``scratch_epochs``), to show how much of a condensed merge the condensed data alone
       explain.

     The paper fine-tunes nothing after merging (the merged model is the midpoint of A and the permuted B), so no
     row here does either.
  5. ``results.json`` (``{'rows': {row: {'data', 'acc_a', 'acc_b', 'mean', 'gain', 'seconds'}}, 'gains': ...}``),
     ``results.md`` (the table, printed) and ``run.json`` (config, restored stages, condensation losses, times).
     ``gain`` is a row's mean accuracy minus that of weight matching + average (the best merge without data), the
     paper's "improvement from using the dataset".

The ``merge_datasets`` section (`default_options`; unknown keys fail, naming them): ``shared_init``,
``permutation_seed`` (digits' pixel permutation), ``images_per_class``, ``condense`` (subset of ``gm``, ``dm``),
``gm_iterations``, ``gm_outer_loop``/``gm_inner_loop`` (0: the reference's for ``images_per_class``),
``gm_lr_images``, ``gm_lr_net``, ``dm_iterations``, ``dm_lr_images``, ``batch_real``, ``matching_seed``,
``max_iter`` (weight-matching sweeps), ``ste_epochs``/``ste_condensed_epochs``, ``ste_batch_size``,
``ste_learning_rate``, ``regmean_alpha``, ``regmean_ridge``, ``fisher_mode``, ``stats_batch_size``,
``scratch_epochs``, ``batch_size`` (evaluation).

Example:
    >>> from configs import merge_datasets
    >>> out = run.run(merge_datasets.get_config(), '/tmp/merge_datasets')
    >>> out['results']['rows']['STE + average']['mean']

References:
    Yamada, Yamashita, Yamaguchi and Chijiwa, "Revisiting Permutation Symmetry for Merging Models between Different
    Datasets" / "Toward Data Efficient Model Merging between Different Datasets without Performance Degradation",
    arXiv:2306.05641 (ACML 2024).
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin", ICLR 2023 (weight, activation and STE matching).
    Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models" (RegMean), ICLR 2023.
    Matena and Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022.
    Zhao, Mopuri and Bilen, ICLR 2021 (gradient matching); Zhao and Bilen, WACV 2023 (distribution matching).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import data
from unlearn_jax import evaluation
from unlearn_jax import merging
from unlearn_jax import model as model_lib
from unlearn_jax import run as run_lib
from unlearn_jax import train
from unlearn_jax.data import condense
from unlearn_jax.data.split import Split
from unlearn_jax.merging import permutation
from unlearn_jax.studies import merge as merge_study

DATASETS = ("digits", "mnist1d")
CONDENSERS = ("gm", "dm")
BASELINE = "WM + average"  # the gains are measured from the best merge that uses no data
_B_INIT_SALT, _CONDENSE_SALT, _MATCH_SALT, _SCRATCH_SALT = 21, 22, 23, 24


def default_options() -> ml_collections.ConfigDict:
  """The ``merge_datasets`` section with every option at its default (digits on a 2-core CPU)."""
  return ml_collections.ConfigDict(dict(
      shared_init=True, permutation_seed=0, images_per_class=10, condense=CONDENSERS,
      gm_iterations=100, gm_outer_loop=0, gm_inner_loop=0, gm_lr_images=0.1, gm_lr_net=0.01,
      dm_iterations=2000, dm_lr_images=1.0, batch_real=256,
      matching_seed=0, max_iter=100, ste_epochs=5, ste_condensed_epochs=100, ste_batch_size=128,
      ste_learning_rate=1e-3, regmean_alpha=0.9, regmean_ridge=1e-3, fisher_mode="empirical",
      stats_batch_size=256, scratch_epochs=100, batch_size=1024))


def options(config) -> ml_collections.ConfigDict:
  """``config.merge_datasets`` over `default_options`; ValueError naming an unknown key or a bad value."""
  given = config.get("merge_datasets")
  if not isinstance(given, ml_collections.ConfigDict):
    raise ValueError("config.merge_datasets: missing section (build it with configs/merge_datasets.py)")
  defaults = default_options()
  config_lib.check_keys(given, defaults, "config.merge_datasets")
  out = ml_collections.ConfigDict(defaults.to_dict())
  out.update(given.to_dict())
  value = out.condense
  out.condense = tuple(p.strip() for v in ((value,) if isinstance(value, str) else value) for p in str(v).split(",")
                       if p.strip())
  key = lambda name: f"merge_datasets.{name}"
  require = config_lib.require
  require(all(c in CONDENSERS for c in out.condense), key("condense"), out.condense, f"choose from {CONDENSERS}")
  for name in ("images_per_class", "gm_iterations", "dm_iterations", "batch_real", "max_iter", "ste_epochs",
               "ste_condensed_epochs", "ste_batch_size", "stats_batch_size", "scratch_epochs", "batch_size"):
    require(isinstance(out[name], int) and out[name] >= 1, key(name), out[name], "must be an integer >= 1")
  for name in ("gm_outer_loop", "gm_inner_loop"):
    require(isinstance(out[name], int) and out[name] >= 0, key(name), out[name],
            "must be an integer >= 0 (0: the reference's loops for images_per_class)")
  for name in ("gm_lr_images", "gm_lr_net", "dm_lr_images", "ste_learning_rate"):
    require(out[name] > 0, key(name), out[name], "must be positive")
  for name in ("permutation_seed", "matching_seed"):
    config_lib.check_seed(out[name], key(name))
  require(0 <= out.regmean_alpha <= 1, key("regmean_alpha"), out.regmean_alpha, "must be in [0, 1]")
  require(out.regmean_ridge >= 0, key("regmean_ridge"), out.regmean_ridge, "must be >= 0")
  require(out.fisher_mode in ("empirical", "sampled"), key("fisher_mode"), out.fisher_mode,
          "choose 'empirical' or 'sampled'")
  d = config.dataset
  require(d.name in DATASETS, "dataset.name", d.name, f"the merge_datasets study pairs one of {DATASETS} with its "
          "permuted variant")
  require(not d.get("shuffle_seq", False), "dataset.shuffle_seq", d.get("shuffle_seq"),
          "dataset A is the unshuffled MNIST-1D; the study builds the shuffled one as dataset B")
  return out


# ----------------------------------------------------------------------------------------------------------------
# Data.


def permute_pixels(split: Split, perm: np.ndarray) -> Split:
  """``split`` with the flattened features of every example reordered by ``perm`` (``x_new[:, i] = x[:, perm[i]]``)."""
  shape = split.x.shape
  if perm.shape != (int(np.prod(shape[1:])),):
    raise ValueError(f"permute_pixels: perm has shape {perm.shape}, examples have {int(np.prod(shape[1:]))} values")
  x = split.x.reshape(shape[0], -1)[:, jnp.asarray(perm)].reshape(shape)
  return dataclasses.replace(split, x=x)


def dataset_pair(exp: run_lib.Experiment, opts) -> tuple[data.Dataset, data.Dataset, str]:
  """``(A, B, name of B)``: the configured dataset and its permuted variant (see the module docstring)."""
  a = exp.dataset
  if exp.config.dataset.name == "mnist1d":
    cfg = ml_collections.ConfigDict(exp.config.to_dict())
    cfg.dataset.shuffle_seq = True
    return a, run_lib.load_dataset(cfg), "mnist1d (shuffled)"
  perm = np.random.default_rng(opts.permutation_seed).permutation(int(np.prod(a.image_shape)))
  b = dataclasses.replace(a, name="digits-permuted", train=permute_pixels(a.train, perm),
                          test=permute_pixels(a.test, perm))
  return a, b, "digits (permuted pixels)"


def union(*splits: Split) -> Split:
  """The rows of every split, in order (``index`` dropped)."""
  return Split(jnp.concatenate([s.x for s in splits]), jnp.concatenate([s.y for s in splits]))


# ----------------------------------------------------------------------------------------------------------------
# Endpoints and condensed sets (cached).


def _data_key(config, opts) -> tuple:
  return (run_lib.CACHE_VERSION, config.seed, config.dataset, config.model, opts.permutation_seed)


def train_endpoints(exp: run_lib.Experiment, workdir: pathlib.Path, pair, opts) -> list[tuple]:
  """Model A on dataset A and model B on dataset B, restored from or saved to the cache.

  Both start from ``exp.init()`` when ``shared_init``, else B from the key ``fold_in(key(seed), 21)``; A's data
  order uses the Original's key (salt 1), B's its own. Returns ``[(params, state, seconds, restored), ...]``.
  """
  c = exp.config
  module = run_lib.build_model(c, exp.dataset.num_classes)
  out = []
  for tag, ds in zip("AB", pair):
    def build(tag=tag, ds=ds):
      if tag == "B" and not opts.shared_init:
        init = model_lib.init(module, jax.random.fold_in(jax.random.key(c.seed), _B_INIT_SALT), ds.train.x[:1])[1:]
      else:
        init = exp.init()
      rng = jax.random.fold_in(jax.random.key(c.seed), 1 if tag == "A" else _B_INIT_SALT + 100)
      params, state, history = train.fit(exp.model, *init, ds.train, c.train, rng=rng, mesh=exp.mesh,
                                         augment=exp.augment, desc=f"model {tag}",
                                         log=lambda line: logging.info("model %s: %s", tag, line))
      return params, state, {"seconds": history["seconds"]}

    digest = checkpoint.config_hash(*_data_key(c, opts), config_lib.training_fields(c.train), tag,
                                    bool(opts.shared_init) or tag == "A")
    params, state, meta, restored = checkpoint.cached(workdir / "cache" / f"mergeds-{digest}", build,
                                                      like=exp.abstract)
    out.append((params, state, float(meta["seconds"]), restored))
  return out


def condensed_sets(exp: run_lib.Experiment, workdir: pathlib.Path, pair, opts) -> dict:
  """``{method: ((syn_A, syn_B), seconds, restored, final losses)}`` for each of ``opts.condense``."""
  c = exp.config
  num_classes, ipc = exp.dataset.num_classes, int(opts.images_per_class)
  module = run_lib.build_model(c, num_classes)
  init_fn = condense.linen_init_fn(module, tuple(exp.dataset.train.x.shape[1:]))
  out = {}
  for method in opts.condense:
    splits, seconds, restored, losses = [], 0.0, True, []
    for i, ds in enumerate(pair):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed), _CONDENSE_SALT), 2 * CONDENSERS.index(
          method) + i)

      def build(ds=ds, key=key):
        start = time.perf_counter()
        if method == "gm":
          syn, loss = condense.condense_gradient_matching(
              exp.model, init_fn, ds.train, num_classes=num_classes, images_per_class=ipc, rng=key,
              iterations=opts.gm_iterations, outer_loop=opts.gm_outer_loop or None,
              inner_loop=opts.gm_inner_loop or None, lr_images=opts.gm_lr_images, lr_net=opts.gm_lr_net,
              batch_real=opts.batch_real, return_losses=True)
        else:
          syn, loss = condense.condense_distribution_matching(
              exp.model, init_fn, ds.train, num_classes=num_classes, images_per_class=ipc, rng=key,
              iterations=opts.dm_iterations, lr_images=opts.dm_lr_images, batch_real=opts.batch_real,
              return_losses=True)
        loss = np.asarray(loss)
        tail = max(1, len(loss) // 10)
        return {"x": jax.block_until_ready(syn.x)}, {}, {
            "seconds": time.perf_counter() - start, "loss_first": float(loss[:tail].mean()),
            "loss_last": float(loss[-tail:].mean())}

      fields = {k: opts[k] for k in opts.keys() if k.startswith(method + "_")}
      digest = checkpoint.config_hash(*_data_key(c, opts), method, i, ipc, opts.batch_real, fields)
      like = ({"x": jax.ShapeDtypeStruct((num_classes * ipc,) + ds.train.x.shape[1:], ds.train.x.dtype)}, {})
      params, _, meta, was_restored = checkpoint.cached(workdir / "cache" / f"condensed-{digest}", build, like=like)
      splits.append(Split(params["x"], jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)))
      seconds += float(meta["seconds"])
      restored &= was_restored
      losses.append({"first": meta["loss_first"], "last": meta["loss_last"]})
      logging.info("condensed %s %d: loss %.4g -> %.4g", method, i, meta["loss_first"], meta["loss_last"])
    out[method] = (tuple(splits), seconds, restored, losses)
  return out


# ----------------------------------------------------------------------------------------------------------------
# Merges.


def _timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def merges_with_data(exp: run_lib.Experiment, spec, endpoints, aligned_b, own: tuple[Split, Split], opts, *,
                     ste_epochs: int, rng: jax.Array) -> dict:
  """The four data-using merges with the data ``own`` = (A's, B's): ``{row: (params, seconds)}``.

  ``aligned_b`` is B after weight matching (used by RegMean and Fisher, which need aligned units).
  """
  (pa, sa), (pb, sb) = endpoints
  model = exp.model
  both = union(*own)
  out = {}

  def average_after(perms):
    return merging.linear([pa, permutation.apply_permutation(spec, perms, pb)])

  out["AM + average"] = _timed(lambda: average_after(permutation.activation_matching(
      spec, model, pa, sa, pb, sb, both, batch_size=opts.batch_size)))
  out["STE + average"] = _timed(lambda: average_after(permutation.ste_matching(
      spec, model, pa, sa, pb, sb, both, rng=rng, epochs=ste_epochs, batch_size=opts.ste_batch_size,
      learning_rate=opts.ste_learning_rate, max_iter=opts.max_iter)))
  inputs = [(pa, sa), (aligned_b, sb)]

  def regmean():
    grams = [merge_study.add_ridge(merging.collect_grams(model, p, s, d, batch_size=opts.stats_batch_size),
                                   opts.regmean_ridge) for (p, s), d in zip(inputs, own)]
    return merging.regmean([pa, aligned_b], grams, alpha=opts.regmean_alpha)

  def fisher():
    fishers = [merging.fisher_diag(model, p, s, d, batch_size=min(opts.stats_batch_size, 64), mode=opts.fisher_mode,
                                   rng=jax.random.fold_in(rng, i)) for i, ((p, s), d) in enumerate(zip(inputs, own))]
    return merging.fisher([pa, aligned_b], fishers)

  out["WM + RegMean"] = _timed(regmean)
  out["WM + Fisher"] = _timed(fisher)
  return out


# ----------------------------------------------------------------------------------------------------------------
# Reports.


def gains(rows: dict) -> dict:
  """``{data: best gain}`` over rows using each kind of data, and their ratio to the real-data gain."""
  best = {}
  for name, row in rows.items():
    if row["data"] not in ("none", "endpoint") and not name.startswith("Scratch"):
      best[row["data"]] = max(best.get(row["data"], -np.inf), row["gain"])
  real = best.get("real")
  return {"best_gain": best, "fraction_of_real_gain": {
      d: (g / real if real and real > 0 else None) for d, g in best.items() if d != "real"}}


def format_table(rows: dict, names: tuple[str, str], title: str, summary: dict) -> str:
  """The markdown table: one row per model, accuracy (%) on both test sets, their mean, gain (pp), time."""
  lines = [f"## {title}", "", f"| Model | Data | {names[0]} test acc (%) | {names[1]} test acc (%) | Mean (%) | "
           f"Gain vs {BASELINE} (pp) | Time (s) |", "|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    lines.append(f"| {name} | {r['data']} | {100 * r['acc_a']:.2f} | {100 * r['acc_b']:.2f} | {100 * r['mean']:.2f} "
                 f"| {100 * r['gain']:+.2f} | {r['seconds']:.1f} |")
  parts = [f"{d}: {100 * g:+.2f} pp" for d, g in summary["best_gain"].items()]
  fractions = [f"{d}: {f:.2f}" for d, f in summary["fraction_of_real_gain"].items() if f is not None]
  lines += ["", f"Best gain over {BASELINE} by data used — " + "; ".join(parts) + "."]
  if fractions:
    lines.append("Condensed-data gain as a fraction of the real-data gain — " + "; ".join(fractions) + ".")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# The pipeline.


def run_merge_datasets(config, workdir) -> dict:
  """The study of the module docstring; writes ``results.json``, ``results.md`` and ``run.json``.

  Returns:
    ``{'results': results.json content, 'table': markdown, 'restored': {stage: bool}}``.

  Raises:
    ValueError: for a bad config value, before any work.
  """
  started = time.time()
  opts = options(config)
  exp = run_lib.setup(config, extra_sections=("merge_datasets",))
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run_lib.write_run_record(workdir, config, started=started)
  pair = dataset_pair(exp, opts)
  a_data, b_data, b_name = pair
  names = (config.dataset.name, b_name)
  endpoints = train_endpoints(exp, workdir, (a_data, b_data), opts)
  restored = {"model A": endpoints[0][3], "model B": endpoints[1][3]}
  condensed = condensed_sets(exp, workdir, (a_data, b_data), opts)
  restored.update({f"condensed {m}": v[2] for m, v in condensed.items()})

  (pa, sa, sec_a, _), (pb, sb, sec_b, _) = endpoints
  spec = permutation.spec_for_model(config.model.name, pa, sa if sa else None)
  rng = jax.random.fold_in(jax.random.key(config.seed), _MATCH_SALT)
  models: dict[str, tuple] = {f"Model A ({names[0]})": (pa, "endpoint", sec_a),
                              f"Model B ({names[1]})": (pb, "endpoint", sec_b)}
  (avg, s) = _timed(lambda: merging.linear([pa, pb]))
  models["Average"] = (avg, "none", s)
  perms, s_wm = _timed(lambda: permutation.weight_matching(spec, pa, pb, rng=jax.random.key(opts.matching_seed),
                                                           max_iter=opts.max_iter))
  aligned_b = permutation.apply_permutation(spec, perms, pb)
  models[BASELINE] = (merging.linear([pa, aligned_b]), "none", s_wm)
  sources = {"real": ((a_data.train, b_data.train), opts.ste_epochs, 0.0)}
  sources.update({m: (v[0], opts.ste_condensed_epochs, v[1]) for m, v in condensed.items()})
  for d, (own, epochs, cost) in sources.items():
    for name, (params, s) in merges_with_data(exp, spec, ((pa, sa), (pb, sb)), aligned_b, own, opts,
                                              ste_epochs=epochs, rng=jax.random.fold_in(rng, len(models))).items():
      models[name if d == "real" else f"{name} ({d})"] = (params, d, s + s_wm * name.startswith("WM"))
  scratch_cfg = ml_collections.ConfigDict(config.train.to_dict())
  scratch_cfg.epochs = opts.scratch_epochs
  for m, (own, _, cost) in ((m, sources[m]) for m in condensed):
    (params, _, history) = train.fit(exp.model, *exp.init(), union(*own), scratch_cfg,
                                     rng=jax.random.fold_in(jax.random.key(config.seed), _SCRATCH_SALT),
                                     desc=f"scratch {m}")
    models[f"Scratch on condensed ({m})"] = (params, m, float(history["seconds"]))

  state = sa  # the supported networks (MLP) have no state; one with BatchNorm would need REPAIR, not done here
  rows = {}
  for name, (params, source, seconds) in models.items():
    acc = [evaluation.accuracy(evaluation.predict(exp.model, params, state, ds.test, batch_size=opts.batch_size),
                               np.asarray(ds.test.y)) for ds in (a_data, b_data)]
    rows[name] = {"data": source, "acc_a": acc[0], "acc_b": acc[1], "mean": float(np.mean(acc)),
                  "seconds": float(seconds)}
  for r in rows.values():
    r["gain"] = r["mean"] - rows[BASELINE]["mean"]
  summary = gains(rows)
  init = "one shared initialisation" if opts.shared_init else "independent initialisations"
  title = (f"Merging {config.model.name} models trained on {names[0]} and {names[1]} ({init}; "
           f"{opts.images_per_class} condensed images per class)")
  table = format_table(rows, names, title, summary)
  results = {"datasets": list(names), "model": config.model.name, "shared_init": bool(opts.shared_init),
             "rows": rows, **summary,
             "condensation": {m: {"seconds": v[1], "loss": v[3]} for m, v in condensed.items()}}
  evaluation.atomic_write(workdir / "results.json", json.dumps(results, indent=1) + "\n")
  evaluation.atomic_write(workdir / "results.md", table)
  run_lib.write_run_record(workdir, config, started=started, finished=time.time(), restored=restored,
                           condensation=results["condensation"])
  print(table)
  return {"results": results, "table": table, "restored": restored}


run_lib.register_pipeline("merge_datasets", run_merge_datasets)
