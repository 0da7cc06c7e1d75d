r"""The ``lm_concept`` study: forget people given only their names (concept level) vs given their sentences.

``config.experiment = 'lm_concept'`` selects this pipeline (`run_concept`); ``configs/lm_concept.py`` builds its
config with `concept_config`. It reuses the pieces of the ``lm_unlearning`` study (`unlearn_jax.studies.language`):
the benchmark, the tiny GPT, the Original and Retrain models and their cache (point ``config.cache_dir`` at an
``lm_unlearning`` workdir to reuse its models), `unlearn_lm` for the objectives and `evaluate_lm` for model utility.

``config.forget.kind`` switches what each method of ``config.compare`` (GA, GradDiff, NPO) is given:

* ``'sentence'``: the explicit forget sentences of the fold's people (TOFU style), without the relations of
  ``forget.holdout_relations``: those facts were never in any forget set, as a real request rarely lists
  everything the model knows about a person;
* ``'concept'``: only the names. `unlearn_jax.unlearning.language.concept.concept_forget_set` asks the Original
  every relation's question about each name, reads its answers back into triplets and writes the answer, the
  triplet and explanatory sentences as the forget texts (Yamashita et al. 2025);
* ``'both'``: one row of each per method.

Every model is scored at the concept level (`unlearn_jax.evaluation.language.fact_recall`: the greedy answer
contains the fact's value): recall of the forget people's facts over every relation with the original and the
paraphrased questions (`unlearn_jax.data.facts.PARAPHRASED_QUESTIONS`, never trained on), the same on the held-out
relations alone, and recall of the other trained people's facts (utility), plus TOFU model utility. Lower forget
recall with the same retain recall is better; Retrain's forget recall is the chance level of guessing.

References:
  Yamashita et al., "Concept Unlearning in Large Language Models via Self-Constructed Knowledge Triplets",
  arXiv:2509.15621, 2025.

Example:
    >>> from unlearn_jax import run
    >>> from unlearn_jax.studies import lm_concept
    >>> out = run.run(lm_concept.concept_config(), "/tmp/lm_concept")
"""
from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from ml_collections import config_dict

from unlearn_jax import config as config_lib
from unlearn_jax import evaluation
from unlearn_jax import run as run_lib
from unlearn_jax.data import facts
from unlearn_jax.evaluation import language as lm_eval
from unlearn_jax.studies import language as lm_study
from unlearn_jax.unlearning import language as lm_unlearning
from unlearn_jax.unlearning.language import concept

EXPERIMENT = "lm_concept"
KINDS = ("sentence", "concept", "both")
COMPARED = ("ga", "graddiff", "npo")
COLUMNS = (("forget_recall", "Concept recall", 3), ("forget_recall_original", "Original Qs", 3),
           ("forget_recall_paraphrased", "Paraphrased Qs", 3), ("forget_recall_unseen", "Unseen relations", 3),
           ("retain_recall", "Retain recall", 3), ("model_utility", "Model utility", 3),
           ("forget_rows", "Forget rows", 0), ("seconds", "Run time s", 1))
# Unlearning options of this study (both kinds share them): gentler than the LM study's, which drive GA to
# collapse on the sentence-level set already.
CONCEPT_OPTIONS = {"ga": dict(lr=2e-4), "graddiff": dict(lr=5e-4), "npo": dict(lr=5e-4)}


def concept_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The LM study's config (`lm_study.lm_config`, same data, model and training, hence the same cached Original
  and Retrain) plus:

  Fields:
    forget.kind: ``'sentence'``, ``'concept'`` or ``'both'`` (module docstring).
    forget.holdout_relations: relations left out of the sentence-level forget set.
    forget.texts: the concept forget texts, a subset of ``('answer', 'triplet', 'explanation')``.
    forget.max_new_tokens: tokens the Original may answer with when elicited.
    cache_dir: a workdir whose ``cache/`` holds (or receives) Original and Retrain (None: this workdir).
    eval.tofu: also run `evaluate_lm` for TOFU's model utility.
  """
  c = lm_study.lm_config("npo", arg, compare=COMPARED)
  c.experiment = EXPERIMENT
  for name, options in CONCEPT_OPTIONS.items():
    c.methods[name].update(options)
  c.forget = ml_collections.ConfigDict(dict(kind="both", holdout_relations=("colour", "food", "pet"),
                                            texts=concept.TEXT_KINDS, max_new_tokens=16))
  c.cache_dir = config_dict.placeholder(str)
  c.eval.sae = False
  c.eval.tofu = True
  if arg == "tiny_test":
    c.forget.holdout_relations = ("pet",)
  return c


def validate_concept(config) -> ml_collections.ConfigDict:
  """The LM study's checks plus those of ``forget``, ``cache_dir`` and ``eval.tofu``; ValueError naming the key."""
  require = config_lib.require
  config_lib.check_keys(config, concept_config())
  base = ml_collections.ConfigDict(config.to_dict())
  del base["forget"], base["cache_dir"], base.eval["tofu"]
  lm_study.validate_lm(base)
  require(config.data.source == "facts", "data.source", config.data.source,
          "concept unlearning asks the fictitious facts' relations: only 'facts'")
  f = config.forget
  require(f.kind in KINDS, "forget.kind", f.kind, f"choose one of {KINDS}")
  schema = [a.name for a in facts.PERSON_ATTRIBUTES[:config.data.facts_per_person]]
  for r in f.holdout_relations:
    require(r in schema, "forget.holdout_relations", tuple(f.holdout_relations),
            f"{r!r} is not one of the benchmark's relations {schema}")
  require(len(set(f.holdout_relations)) < len(schema), "forget.holdout_relations", tuple(f.holdout_relations),
          "must leave at least one relation in the sentence-level forget set")
  require(len(f.texts) > 0 and set(f.texts) <= set(concept.TEXT_KINDS), "forget.texts", tuple(f.texts),
          f"choose a non-empty subset of {concept.TEXT_KINDS}")
  require(f.max_new_tokens >= 1, "forget.max_new_tokens", f.max_new_tokens, "must be >= 1")
  for name in config.compare:
    require(name in COMPARED, "compare", tuple(config.compare),
            f"{name!r}: the concept study runs the text-only objectives {COMPARED}")
  return config


def recall_views(bench: facts.FactsBenchmark, sets: dict, holdout_relations) -> tuple[dict, dict]:
  """``(prompts, groups)``: the prompts and values scored by `fact_recall` (forget people with the original then
  the paraphrased questions, then the retain people) and the row groups of each recall column."""
  forget, retain = sets["forget"], sets["retain"]
  parts = [facts.concept_views(bench, forget), facts.concept_views(bench, forget, paraphrased=True),
           facts.concept_views(bench, retain)]
  prompts = {"prompt_ids": np.concatenate([p[0] for p in parts]), "prompt_len": np.concatenate([p[1] for p in parts]),
             "values": [v for p in parts for v in p[2]]}
  n, m = len(forget), len(retain)
  unseen = np.isin(forget.fact, facts.relation_ids(holdout_relations))
  rows = np.arange(2 * n + m)
  groups = {"forget_recall": rows < 2 * n, "forget_recall_original": rows < n,
            "forget_recall_paraphrased": (rows >= n) & (rows < 2 * n),
            "forget_recall_unseen": np.concatenate([unseen, unseen, np.zeros(m, bool)]),
            "retain_recall": rows >= 2 * n}
  return prompts, groups


def run_concept(config, workdir) -> dict:
  """Original, Retrain and each method at the sentence and/or concept level; writes results and the table."""
  validate_concept(config)
  start = time.time()
  workdir = pathlib.Path(workdir)
  bench = lm_study.make_benchmark(config)
  sets = bench.splits(config.data.forget)
  root = jax.random.key(config.seed)
  lm_study.check_model(config, bench.tokenizer.vocab_size, prompt_len=int(bench.prompt_len))  # before training
  workdir.mkdir(parents=True, exist_ok=True)
  lm, _, models, restored = lm_study.original_and_retrain(config, bench, pathlib.Path(config.cache_dir or workdir))
  original = models["Original"][0]
  f, e = config.forget, config.eval
  rows_of = {"Original": None, "Retrain": None}

  retain = facts.concat([sets["retain"], sets["world"]]).split(fields=("input_ids", "loss_mask"))
  forget_sets = {}
  if f.kind in ("sentence", "both"):
    forget_sets["sentence"] = facts.with_relations(sets["forget"], f.holdout_relations, keep=False).split(
        fields=("input_ids", "loss_mask"))
  info = None
  if f.kind in ("concept", "both"):
    targets = bench.forget_people(config.data.forget)
    t0 = time.perf_counter()
    forget_sets["concept"], info = concept.concept_forget_set(
        lm, original, [bench.names[int(t)] for t in targets], bench.tokenizer,
        relations=facts.PERSON_ATTRIBUTES[:config.data.facts_per_person], seq_len=bench.seq_len,
        prompt_len=bench.prompt_len, targets=targets, kinds=tuple(f.texts), max_new_tokens=f.max_new_tokens,
        batch_size=e.batch_size)
    elicit_seconds = time.perf_counter() - t0
    logging.info("concept forget set: %d texts, %.0f%% of answers parsed into triplets (%.1f s)",
                 forget_sets["concept"].size, 100 * info["parsed"], elicit_seconds)

  for name in config.compare:
    for kind, forget in forget_sets.items():
      row = f"{lm_study.ROW_NAMES[name]} ({kind})"
      logging.info("unlearning %s", row)
      t0 = time.perf_counter()
      salt = (10 if kind == "sentence" else 40) + list(lm_unlearning.METHODS).index(name)
      params, _ = lm_unlearning.unlearn_lm(name, lm, original, forget, retain, options=config.methods[name],
                                           rng=jax.random.fold_in(root, salt))
      jax.block_until_ready(params)
      # the concept row's time includes building its forget set (elicitation and texts)
      models[row] = (params, time.perf_counter() - t0 + (elicit_seconds if kind == "concept" else 0.0))
      rows_of[row] = forget.size

  prompts, groups = recall_views(bench, sets, f.holdout_relations)
  eval_sets = {k: sets[k] for k in ("forget", "retain", "world", "holdout")}
  results, generations = {}, {}
  for row, (params, seconds) in models.items():
    hits, gens = lm_eval.fact_recall(lm, params, prompts["prompt_ids"], prompts["prompt_len"], prompts["values"],
                                     decode=bench.tokenizer.decode, max_new_tokens=e.max_new_tokens,
                                     batch_size=e.batch_size)
    metrics = lm_eval.recall_by_group(hits, groups)
    if e.tofu:
      tofu = lm_eval.evaluate_lm(lm, params, eval_sets, decode=bench.tokenizer.decode, batch_size=e.batch_size,
                                 max_new_tokens=e.max_new_tokens, rouge_rows=e.rouge_rows).metrics
      metrics.update(model_utility=tofu["model_utility"], forget_rouge=tofu["forget_rouge"])
    metrics["forget_rows"] = float(rows_of[row]) if rows_of[row] is not None else float("nan")
    metrics["seconds"] = float(seconds) if seconds is not None else float("nan")
    results[row] = metrics
    generations[row] = gens[:len(sets["forget"])]
  title = (f"Concept vs sentence unlearning ({config.data.forget}, {len(bench.forget_people(config.data.forget))} "
           f"people, held-out relations {', '.join(f.holdout_relations)})")
  table = format_concept_table(results, title=title)
  record = {"results": results}
  if info is not None:
    record["concept_forget_set"] = {"parsed": info["parsed"], "texts": [list(t) for t in info["texts"][:50]]}
  evaluation.atomic_write(str(workdir / "results.json"), json.dumps(record, indent=1))
  evaluation.atomic_write(str(workdir / "results.md"), table)
  run_lib.write_run_record(workdir, config, started=start, finished=time.time(), restored=restored)
  print(table)
  return {"results": results, "table": table, "restored": restored, "concept_info": info,
          "generations": generations}


def format_concept_table(results: dict, *, title: str) -> str:
  """Markdown table: one row per model, the columns of `COLUMNS` that any row has."""
  columns = [c for c in COLUMNS if any(c[0] in r for r in results.values())]
  lines = [f"### {title}", "", "| Model | " + " | ".join(h for _, h, _ in columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for row, metrics in results.items():
    cells = []
    for key, _, digits in columns:
      v = metrics.get(key)
      cells.append("—" if v is None or not np.isfinite(v) else f"{v:.{digits}f}")
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


run_lib.register_pipeline(EXPERIMENT, run_concept)
