r"""The ``lm_unlearning`` study: a tiny GPT learns fictitious facts, then forgets some people.

``config.experiment = 'lm_unlearning'`` selects this pipeline (`run_lm`); ``configs/lm_<method>.py`` build
their config with `lm_config`. Sections, in order:

  1. config → the fictitious-facts benchmark (`unlearn_jax.data.facts`: people, forget fold, retain, holdout,
     world facts) and the network (`unlearn_jax.models.gpt`, a preset or a local Hugging Face checkpoint). The
     whole config is validated first (`validate_lm`), naming the bad key.
  2. Original: the GPT fine-tuned on every training QA (forget + retain + world), by the one loop of
     `unlearn_jax.unlearning.loop` with a token-mean NLL term; cached in ``workdir/cache`` by config hash.
  3. Retrain: the same from the same initialisation on retain + world only; cached the same way.
  4. Each method of ``config.methods`` runs on the Original (`unlearn_jax.unlearning.language.unlearn_lm`) with
     its options from ``config.method_options.<name>``; its wall time is measured with ``block_until_ready``.
  5. Every model is scored by `unlearn_jax.evaluation.language.evaluate_lm` (Retrain first, so forget quality and
     PrivLeak of the others are relative to it); on MUSE's files also by its VerbMem and KnowMem
     (`evaluation.language.muse_memorization`, ``eval.max_new_tokens`` greedy tokens; a table of their own).
  6. Robustness of forgetting (``config.robustness.enabled``; fictitious facts only, `robustness`): every model,
     Retrain included (the floor), is probed on the forget facts that an attacker does *not* relearn: recall of the facts' values by
     greedy answers to the original questions, to rephrased questions (`facts.PARAPHRASED_QUESTIONS`) and after
     ``few_shot`` solved examples of the same relation about retain people; then a relearning attack fine-tunes
     it (the one loop, NLL; every model at once, `loop.unlearn_grid`) for a few steps on the other ``relearn_fraction`` of the forget QAs (other facts of
     the same people) and the original questions are asked again.
  7. ``results.json``, ``results.md`` (forget quality, model utility, forget ROUGE-L, PrivLeak, forget truth ratio,
     run time; the robustness table) and ``run.json`` are written; the tables are printed.

Example:
    >>> from unlearn_jax import run
    >>> from unlearn_jax.studies import language
    >>> results = run.run(language.lm_config("npo"), "/tmp/lm_npo")
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from ml_collections import config_dict

from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import evaluation
from unlearn_jax import model as model_lib
from unlearn_jax import run as run_lib
from unlearn_jax import train
from unlearn_jax.data import facts
from unlearn_jax.data import lm_benchmarks
from unlearn_jax.evaluation import language as lm_eval
from unlearn_jax.models import gpt
from unlearn_jax.models import hf
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import language as lm_unlearning
from unlearn_jax.unlearning.language import lora

Pytree = Any
EXPERIMENT = "lm_unlearning"
CACHE_VERSION = 1
# The methods the table compares by default (IdkDPO is available too: add it to ``config.methods``).
COMPARED = ("ga", "graddiff", "npo", "simnpo", "rmu", "sae")
# Columns of the printed table: (metric key of `evaluate_lm`, header, scale, digits).
COLUMNS = (("forget_quality", "Forget quality", 1.0, 4), ("model_utility", "Model utility", 1.0, 3),
           ("forget_rouge", "Forget ROUGE-L", 1.0, 3), ("retain_rouge", "Retain ROUGE-L", 1.0, 3),
           ("privleak", "PrivLeak %", 1.0, 1), ("forget_truth_ratio", "Forget truth ratio", 1.0, 3),
           ("seconds", "Run time s", 1.0, 1))
# The robustness table: recall of the probed forget facts (`robustness`).
ROBUSTNESS_COLUMNS = (("probe_recall", "After unlearning", 1.0, 3), ("relearn_recall", "After relearning", 1.0, 3),
                      ("rephrased_recall", "Rephrased", 1.0, 3), ("few_shot_recall", "Few-shot", 1.0, 3))
# The MUSE table (``data.source='muse'``): VerbMem and KnowMem (`evaluation.language.muse_memorization`).
MUSE_COLUMNS = (("verbmem_forget", "VerbMem forget", 1.0, 3), ("knowmem_forget", "KnowMem forget", 1.0, 3),
                ("knowmem_retain", "KnowMem retain", 1.0, 3))


# ---------------------------------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------------------------------
def _train_section(**overrides) -> ml_collections.ConfigDict:
  """Fine-tuning of the Original / Retrain: AdamW with warm-up and cosine decay (TOFU fine-tunes with AdamW)."""
  return config_lib.train_config(**{**dict(optimizer="adamw", lr=3e-3, weight_decay=0.01, schedule="cosine",
                                           warmup_epochs=1, epochs=40, batch_size=32), **overrides})


def lm_config(method: str, arg: str | None = None, *, compare: tuple[str, ...] | None = None,
              **options) -> ml_collections.ConfigDict:
  """The config of the LM study with ``method`` first in the table (its options updated by ``options``).

  Args:
    method: a key of `unlearn_jax.unlearning.language.METHODS`.
    arg: the config-file argument: None (the CPU benchmark) or ``'tiny_test'`` (a minute-sized smoke config).
    compare: the methods run, in table order (default: ``(method,)``).
    **options: overrides of ``method``'s options.

  Fields:
    data: `unlearn_jax.data.facts.make_facts_benchmark` arguments and the ``forget`` fold; or ``source`` 'tofu',
      'muse' or 'wmdp' (default 'facts'): the benchmark's files in the local directory ``dir``, tokenised by
      ``tokenizer`` (a ``tokenizer.json``; default ``dir/tokenizer.json``), rows cut at ``max_length`` tokens,
      WMDP's ``subject`` ('bio' | 'cyber') (`unlearn_jax.data.lm_benchmarks`; the num_* fields are then unused).
    model: ``preset`` (`unlearn_jax.models.gpt.PRESETS`), ``dtype`` (compute: float32 | bfloat16), the optional
      size fields ``num_layers``/``d_model``/``num_heads``/``d_ff`` (None: the preset's), and ``hf_checkpoint``: a
      local Hugging Face safetensors file or directory loaded as the starting point instead of a random init
      (its vocabulary must cover the benchmark's tokenizer).
    train / retrain: fine-tuning of the Original (all facts) and Retrain (without the forget people).
    compare: methods run, in table order; methods: every method's options (``--config.methods.npo.lr=...``).
    eval: ``batch_size``, ``max_new_tokens`` of the greedy answers, ``rouge_rows`` (None: every row),
      ``open_unlearning`` (add open-unlearning's MIA AUCs ``mia_*`` with Retrain as the reference model, and the
      forget set's ``exact_memorization`` / ``extraction_strength``), ``sae`` (score the SAE separation with the SAE probe of ``methods.sae``: its ``layer`` and ``sae_*``
      options; the SAE method unlearns against the same probe).
  """
  if method not in lm_unlearning.METHODS:
    raise ValueError(f"unknown language-model unlearning method {method!r}; choose one of "
                     f"{sorted(lm_unlearning.METHODS)}")
  c = ml_collections.ConfigDict()
  c.experiment = EXPERIMENT
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(num_people=200, facts_per_person=10, num_holdout=40, num_world=100,
                                          num_perturbed=3, forget="forget10", source="facts",
                                          dir=config_dict.placeholder(str), tokenizer=config_dict.placeholder(str),
                                          max_length=128, subject="bio"))
  c.model = ml_collections.ConfigDict(dict(
      preset="tiny", dtype="float32", num_layers=config_dict.placeholder(int), d_model=config_dict.placeholder(int),
      num_heads=config_dict.placeholder(int), d_ff=config_dict.placeholder(int),
      hf_checkpoint=config_dict.placeholder(str)))
  c.train = _train_section()
  c.retrain = _train_section()
  c.compare = tuple(compare or (method,))
  c.methods = ml_collections.ConfigDict({name: lm_unlearning.method_config(name, TINY_OPTIONS.get(name, {}))
                                         for name in lm_unlearning.METHODS})
  c.methods[method].update(options)
  c.eval = ml_collections.ConfigDict(dict(batch_size=128, max_new_tokens=16, rouge_rows=config_dict.placeholder(int),
                                          sae=True, open_unlearning=False))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, multihost=False))
  # Relearning attack: constant-lr AdamW fine-tuning (NLL) on ``relearn_fraction`` of the forget QAs.
  c.robustness = ml_collections.ConfigDict(dict(
      enabled=True, relearn_fraction=0.25, few_shot=3,
      relearn=_train_section(lr=1e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0, epochs=3,
                             batch_size=16)))
  if arg == "tiny_test":
    c.data.update(num_people=40, num_holdout=10, num_world=20)
    # one block: the blocks are unrolled, so each one adds to every program's XLA:CPU compilation
    c.model.update(num_layers=1, d_model=64, num_heads=2, d_ff=128)
    for section in (c.train, c.retrain):
      section.update(epochs=4)
    for name in lm_unlearning.METHODS:
      c.methods[name].epochs = 1
    c.eval.update(rouge_rows=8)
    c.robustness.update(enabled=False, few_shot=1)
    c.robustness.relearn.update(epochs=1)
    c.methods.sae.sae_steps = 50
  elif arg is not None:
    raise ValueError(f"config argument {arg!r}: use none or 'tiny_test'")
  return c


# Options of the CPU benchmark (tiny GPT, ~2k QAs): larger learning rates than the 7B-model defaults of the
# references, which barely move a 1M-parameter model in a few epochs.
TINY_OPTIONS: dict[str, dict] = {
    "ga": dict(lr=1e-3, epochs=5),
    "graddiff": dict(lr=1e-3, epochs=5),
    "npo": dict(lr=5e-4, epochs=5),
    "simnpo": dict(lr=3e-3, epochs=5),
    "idkdpo": dict(lr=1e-3, epochs=5),
    "rmu": dict(lr=3e-3, epochs=5),
    "sae": dict(lr=3e-3, epochs=5, sae_steps=600),
    "altpo": dict(lr=1e-3, epochs=5),
    "undial": dict(lr=1e-3, epochs=5),
    "ceu": dict(lr=1e-3, epochs=5),
    "satimp": dict(lr=1e-3, epochs=5),
    "wga": dict(lr=1e-3, epochs=5),
    "pdu": dict(lr=1e-3, epochs=5, dual_warmup_epochs=1),
    "flat": dict(lr=3e-3, epochs=5, batch_size=32),
    "wagle": dict(lr=5e-4, epochs=5),
}


def validate_lm(config) -> ml_collections.ConfigDict:
  """Checks the LM study's config before any work; ValueError naming the bad key."""
  require = config_lib.require
  config_lib.check_keys(config, lm_config("npo"))  # every method's options are in the reference too
  for section in ("data", "model", "train", "retrain", "eval", "mesh"):
    require(section in config, section, None, "missing section")
  config_lib.check_common(config)
  d = config.data
  require(d.forget in facts.FOLDS, "data.forget", d.forget, f"choose one of {facts.FOLDS}")
  for key, low, high in (("num_people", 2, None), ("num_holdout", 0, None),
                         ("facts_per_person", 1, len(facts.PERSON_ATTRIBUTES)), ("num_world", 0, None),
                         ("num_perturbed", 1, None)):
    require(isinstance(d[key], int) and low <= d[key] <= (high or d[key]), f"data.{key}", d[key],
            f"must be an integer in [{low}, {high}]" if high else f"must be an integer >= {low}")
  sources = ("facts",) + lm_benchmarks.SOURCES
  require(config.data.source in sources, "data.source", config.data.source, f"choose one of {sources}")
  if config.data.source != "facts":
    require(bool(config.data.dir) and os.path.isdir(config.data.dir), "data.dir", config.data.dir,
            "no such directory (the benchmark's local files)")
    require(config.data.max_length >= 8, "data.max_length", config.data.max_length, "must be at least 8")
  require(config.model.preset in gpt.PRESETS, "model.preset", config.model.preset,
          f"choose one of {sorted(gpt.PRESETS)}")
  m, preset = config.model, gpt.PRESETS[config.model.preset]
  sizes = {k: (m[k] if m[k] is not None else preset[k]) for k in ("num_layers", "d_model", "num_heads", "d_ff")}
  for key, value in sizes.items():
    require(isinstance(value, int) and value >= 1, f"model.{key}", value, "must be an integer >= 1")
  require(sizes["d_model"] % sizes["num_heads"] == 0, "model.d_model", sizes["d_model"],
          f"must be a multiple of num_heads={sizes['num_heads']}")
  require(config.model.dtype in config_lib.DTYPES, "model.dtype", config.model.dtype,
          f"choose one of {config_lib.DTYPES}")
  hf_path = config.model.hf_checkpoint
  require(hf_path is None or os.path.exists(hf_path), "model.hf_checkpoint", hf_path, "no such file or directory")
  for section in ("train", "retrain"):
    config_lib.check_optimizer_section(config[section], section)
  config_lib.check_optimizer_section(config.robustness.relearn, "robustness.relearn")
  r = config.robustness
  require(0 < r.relearn_fraction < 1, "robustness.relearn_fraction", r.relearn_fraction, "must be in (0, 1)")
  require(r.few_shot >= 1, "robustness.few_shot", r.few_shot, "must be >= 1")
  require(len(config.compare) > 0, "compare", config.compare, "name at least one method")
  for name in config.compare:
    require(name in lm_unlearning.METHODS, "compare", config.compare,
            f"{name!r} is not a method; choose from {sorted(lm_unlearning.METHODS)}")
  for name in config.methods.keys():
    try:
      lm_unlearning.method_config(name, config.methods[name])
    except ValueError as e:
      raise ValueError(f"config.methods.{name}: {e}") from e
    config_lib.check_options(config.methods[name], f"methods.{name}")
  require(config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, "must be at least 1")
  require(config.eval.max_new_tokens >= 1, "eval.max_new_tokens", config.eval.max_new_tokens, "must be >= 1")
  require(config.eval.rouge_rows is None or config.eval.rouge_rows >= 1, "eval.rouge_rows", config.eval.rouge_rows,
          "must be >= 1 (or None: every row)")
  if not m.hf_checkpoint:  # a checkpoint's max_len: `check_model`, from its config.json, before any training
    room = preset.get("max_len", gpt.GPTConfig.max_len) - facts.prompt_width()
    require(config.eval.max_new_tokens <= room, "eval.max_new_tokens", config.eval.max_new_tokens,
            f"the benchmark's prompts leave room for at most {room} new tokens in the model's max_len")
  return config


# ---------------------------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------------------------
def model_config(config, vocab_size: int) -> gpt.GPTConfig:
  """The network of ``config.model``: a preset (with its size overrides) or a local HF checkpoint's config."""
  m = config.model
  if m.hf_checkpoint:
    cfg = hf.config_from_hf(hf.read_hf_config(m.hf_checkpoint))
  else:
    sizes = {k: m[k] for k in ("num_layers", "d_model", "num_heads", "d_ff") if m[k] is not None}
    cfg = gpt.gpt_config(m.preset, vocab_size=vocab_size, **sizes)
  return cfg.replace(dtype=jnp.dtype(m.dtype))


def check_model(config, vocab_size: int, *, prompt_len: int | None = None) -> None:
  """The network against the data and the methods, before any work: a checkpoint's vocabulary covers the
  tokenizer's, the benchmark's prompts (``prompt_len`` tokens, when given) plus ``eval.max_new_tokens`` fit the
  network's ``max_len`` (a checkpoint's from its ``config.json``), and every compared method's LoRA options fit the
  network's shapes (`lora.check`).

  Raises:
    ValueError: ``config.model.hf_checkpoint=...``, ``config.eval.max_new_tokens=...`` or
      ``config.methods.<name>: method.lora_...``.
  """
  cfg = model_config(config, vocab_size)
  config_lib.require(cfg.vocab_size >= vocab_size, "model.hf_checkpoint", config.model.hf_checkpoint,
                     f"its vocabulary ({cfg.vocab_size}) is smaller than the benchmark tokenizer's ({vocab_size})")
  if prompt_len is not None:
    m = config.model
    where = "model.hf_checkpoint's config.json" if m.hf_checkpoint else f"model.preset={m.preset}"
    config_lib.require(prompt_len + config.eval.max_new_tokens <= cfg.max_len, "eval.max_new_tokens",
                       config.eval.max_new_tokens, f"the benchmark's prompts ({prompt_len} tokens) leave room for at "
                       f"most {cfg.max_len - prompt_len} new tokens in the model's max_len={cfg.max_len} ({where})")
  shapes = jax.eval_shape(functools.partial(gpt.init_params, cfg), jax.random.key(0))
  for name in config.compare:
    o = config.methods[name]
    if o.lora_rank:
      try:
        lora.check(shapes, rank=o.lora_rank, targets=o.lora_targets, alpha=o.lora_alpha)
      except ValueError as e:
        raise ValueError(f"config.methods.{name}: {e}") from e


def build_model(config, vocab_size: int, rng: jax.Array, *, pad_id: int = facts.PAD, eos_id: int = facts.EOS):
  """``(gpt_cfg, lm, init)``: the network and a function giving its starting parameters."""
  m = config.model
  cfg = model_config(config, vocab_size)
  check_model(config, vocab_size)
  if m.hf_checkpoint:
    _, params = hf.load_hf_checkpoint(m.hf_checkpoint, cfg=cfg)
    init = lambda: params
  else:
    init = lambda: gpt.init_params(cfg, rng)
  lm, _ = gpt.language_model(cfg, pad_id=pad_id, eos_id=eos_id)
  return cfg, lm, init


def _nll_setup(lm, split, cfg):
  """``(batch_size, tx, objective)`` of fine-tuning on ``split`` by token-mean NLL with ``cfg``'s optimiser."""
  bs = min(int(cfg.batch_size), split.size)
  return bs, train.make_optimizer(cfg, split.num_batches(bs)), loop.Objective(retain=lm_unlearning.objectives.nll(lm))


def _finetune(lm, params, split, cfg, rng, stage: str):
  """Token-mean NLL on ``split`` with AdamW, by the one loop (a retain-only objective)."""
  bs, tx, objective = _nll_setup(lm, split, cfg)
  params, _, history = loop.unlearn_loop(
      None, params, lm_unlearning.teachers.carry({}, {}), None, split, objective=objective, tx=tx,
      epochs=int(cfg.epochs), batch_size=bs, rng=rng, desc=stage,
      log=lambda line: logging.info("%s: %s", stage, line))
  return params, history


def _cached(workdir, stage: str, key_parts, like, build):
  directory = pathlib.Path(workdir) / "cache" / f"lm-{stage}-{checkpoint.config_hash(CACHE_VERSION, *key_parts)}"
  params, _, meta, restored = checkpoint.cached(directory, build, like=(like, {}))
  logging.info("%s: %s %s", stage, "restored from" if restored else "trained and saved to", directory)
  return params, meta, restored


def make_benchmark(config) -> facts.FactsBenchmark | lm_benchmarks.LMBenchmark:
  """The benchmark of ``config.data``: the fictitious facts (with ``config.seed``), or TOFU / MUSE / WMDP read from
  ``data.dir`` (`unlearn_jax.data.lm_benchmarks.load_benchmark`; ValueError naming a missing file or field)."""
  d = config.data
  if d.source != "facts":
    return lm_benchmarks.load_benchmark(d.source, d.dir, tokenizer=d.tokenizer, forget=d.forget,
                                        max_length=int(d.max_length), subject=d.subject)
  return facts.make_facts_benchmark(seed=config.seed, num_people=d.num_people,
                                    facts_per_person=d.facts_per_person, num_holdout=d.num_holdout,
                                    num_world=d.num_world, num_perturbed=d.num_perturbed)


def original_and_retrain(config, bench: facts.FactsBenchmark, cache_root) -> tuple:
  """``(lm, like, models, restored)``: the network, its abstract params, ``{'Original': (params, seconds),
  'Retrain': ...}`` fine-tuned or restored from ``cache_root/cache`` (keyed by config hash), and which were
  restored. Other studies (`unlearn_jax.studies.lm_concept`) share these models through the same cache."""
  d = config.data
  root = jax.random.key(config.seed)
  tok = bench.tokenizer
  _, lm, init = build_model(config, tok.vocab_size, jax.random.fold_in(root, 0), pad_id=tok.pad_id,
                            eos_id=tok.eos_id)
  like = jax.eval_shape(init)

  def stage_fn(stage, include_forget, cfg, salt):
    def build():
      split = bench.train_set(d.forget, include_forget=include_forget).split(fields=("input_ids", "loss_mask"))
      params, history = _finetune(lm, init(), split, cfg, jax.random.fold_in(root, salt), stage)
      return params, {}, {"history": history, "seconds": history["seconds"]}
    return build

  people = {k: v for k, v in d.to_dict().items() if k != "forget"}  # one Original serves every fold
  models: dict[str, tuple[Pytree, float | None]] = {}
  restored = {}
  p, meta, restored["Original"] = _cached(
      cache_root, "original", (config.seed, people, config.model.to_dict(), config_lib.training_fields(config.train)),
      like, stage_fn("original", True, config.train, 1))
  models["Original"] = (p, meta.get("seconds"))
  p, meta, restored["Retrain"] = _cached(
      cache_root, "retrain", (config.seed, d.to_dict(), config.model.to_dict(),
                              config_lib.training_fields(config.retrain)),
      like, stage_fn("retrain", False, config.retrain, 2))
  models["Retrain"] = (p, meta.get("seconds"))
  return lm, like, models, restored


def run_lm(config, workdir) -> dict:
  """Original, Retrain and every method of ``config.compare``; writes the results and prints the table."""
  validate_lm(config)
  start = time.time()
  workdir = pathlib.Path(workdir)
  d = config.data
  bench = make_benchmark(config)
  sets = bench.splits(d.forget)
  root = jax.random.key(config.seed)
  tok = bench.tokenizer
  # MUSE's VerbMem / KnowMem rows, scored by the library's own metrics (their prompts in the width check)
  muse = bench.records if d.source == "muse" else None
  encode = lambda text: [tok.bos_id, *tok.encode(text)]  # noqa: E731  (the loader's prompts start with BOS)
  widths = [len(encode(p)) for p in lm_eval.muse_prompts(muse)] if muse else []
  check_model(config, tok.vocab_size, prompt_len=max([int(bench.prompt_len), *widths]))
  workdir.mkdir(parents=True, exist_ok=True)
  lm, like, models, restored = original_and_retrain(config, bench, workdir)

  fields = ("input_ids", "loss_mask", "entity_mask")
  # what unlearning forgets and retains: the evaluated sets, unless the benchmark's files have their own
  forget = sets.get("train_forget", sets["forget"]).split(fields=fields + ("idk_input_ids", "idk_loss_mask"))
  if isinstance(bench, facts.FactsBenchmark):  # AltPO's alternate answers are drawn from the facts' pools
    alt_ids, alt_mask, _ = facts.alternate_answers(bench, sets["forget"], seed=config.seed)
    forget = dataclasses.replace(forget, x={**forget.x, "alt_input_ids": jnp.asarray(alt_ids),
                                           "alt_loss_mask": jnp.asarray(alt_mask)})
  retain = (sets.get("train_retain") or facts.concat([sets["retain"], sets["world"]])).split(fields=fields)
  holdout = sets["holdout"].split(fields=fields)
  probe = None
  if config.eval.sae or "sae" in config.compare:  # one probe: the SAE method's and the table's separation score
    probe = lm_unlearning.fit_sae_probe(lm, models["Original"][0], config.methods.sae, forget=forget, retain=retain,
                                        holdout=holdout, rng=jax.random.fold_in(root, 5), known=_people(retain))

  trained = {}  # per method row: what its optimiser updated and kept (LoRA vs full fine-tuning)
  for name in config.compare:
    logging.info("unlearning with %s", name)
    t0 = time.perf_counter()
    # a key per method, not per position in `compare`: a method's row is the same whatever it is compared with
    rng = jax.random.fold_in(root, 10 + list(lm_unlearning.METHODS).index(name))
    params, history = lm_unlearning.unlearn_lm(name, lm, models["Original"][0], forget, retain,
                                               options=config.methods[name], rng=rng,
                                               holdout=holdout, sae_probe=probe)
    jax.block_until_ready(params)
    models[ROW_NAMES.get(name, name)] = (params, time.perf_counter() - t0)
    trained[ROW_NAMES.get(name, name)] = {"trainable_params": history["trainable_params"],
                                          "opt_state_mib": history["opt_state_bytes"] / 2**20}

  eval_sets = {k: sets[k] for k in ("forget", "retain", "world", "holdout")}
  e = config.eval
  evaluate = lambda params, reference=None: lm_eval.evaluate_lm(
      lm, params, eval_sets, decode=bench.tokenizer.decode, reference=reference, batch_size=e.batch_size,
      max_new_tokens=e.max_new_tokens, rouge_rows=e.rouge_rows)
  retrain_eval = evaluate(models["Retrain"][0])
  token_stats = lambda params, name: lm_eval.token_stats(lm, params, sets[name].input_ids, batch_size=e.batch_size)
  results, reference_stats = {}, None
  for row, (params, seconds) in models.items():
    if row == "Retrain":  # scored against itself (KS p-value 1, PrivLeak 0), without generating twice
      metrics = dict(retrain_eval.metrics)
      tr, auc = retrain_eval.samples["forget_truth_ratio"], float(retrain_eval.samples["mink_auc"])
      metrics.update(forget_quality=lm_eval.forget_quality(tr, tr), privleak=lm_eval.privleak(auc, auc))
    else:
      metrics = dict(evaluate(params, retrain_eval.samples).metrics)
    metrics = {k: float(v) for k, v in metrics.items()}
    if probe is not None:
      metrics["sae_separation"] = lm_unlearning.sae_separation(lm, params, probe, forget.x)
    if e.open_unlearning and "holdout" in sets:  # MIA suite (Retrain as the reference model), EM and ES
      stats = [token_stats(params, k) for k in ("forget", "holdout")]
      reference_stats = reference_stats or (stats if row == "Retrain" else
                                            [token_stats(models["Retrain"][0], k) for k in ("forget", "holdout")])
      metrics.update(lm_eval.mia_suite(lm, params, sets["forget"], sets["holdout"], decode=bench.tokenizer.decode,
                                       reference_params=models["Retrain"][0], batch_size=e.batch_size, stats=stats,
                                       reference_stats=reference_stats))
      metrics.update(lm_eval.memorization(lm, params, sets["forget"], batch_size=e.batch_size, stats=stats[0]))
    if muse is not None:
      metrics.update(lm_eval.muse_memorization(lm, params, muse, encode=encode, decode=tok.decode,
                                               max_new_tokens=e.max_new_tokens, batch_size=e.batch_size))
    metrics["seconds"] = float(seconds) if seconds is not None else float("nan")
    metrics.update(trained.get(row, {}))
    results[row] = metrics
  title = f"LM unlearning on fictitious facts ({d.forget}, {config.model.preset} GPT, " \
          f"{model_lib.num_params(like):,} parameters)"
  table = format_lm_table(results, title=title)
  if muse is not None:
    table += "\n" + format_lm_table(results, columns=MUSE_COLUMNS,
                                    title="MUSE memorisation: ROUGE-L F1 of greedy generations")
  if config.robustness.enabled and isinstance(bench, facts.FactsBenchmark):  # the probes are built from the facts
    probes, seconds = robustness(config, lm, bench, sets, {row: p for row, (p, _) in models.items()})
    for row, values in probes.items():
      results[row].update(values)
    table += "\n" + format_lm_table(
        results, columns=ROBUSTNESS_COLUMNS,
        title=f"Robustness: recall of the probed forget facts (relearning all {len(probes)} models: {seconds:.1f} s)")
  evaluation.atomic_write(str(workdir / "results.json"), json.dumps(results, indent=1))
  evaluation.atomic_write(str(workdir / "results.md"), table)
  run_lib.write_run_record(workdir, config, started=start, finished=time.time(), restored=restored)
  print(table)
  return {"results": results, "table": table, "restored": restored}


ROW_NAMES = {"ga": "GA", "graddiff": "GradDiff", "npo": "NPO", "simnpo": "SimNPO", "idkdpo": "IdkDPO", "rmu": "RMU",
             "sae": "SAE", "altpo": "AltPO", "undial": "UNDIAL", "ceu": "CE-U", "satimp": "SatImp", "wga": "WGA",
             "pdu": "PDU", "flat": "FLAT", "wagle": "WAGLE"}


def _people(split):
  """The rows of ``split`` about people (the world facts have person -1); all of them where none is."""
  people = np.flatnonzero(np.asarray(split.y) >= 0)
  return split.take(people) if people.size else split


def robustness(config, lm, bench: facts.FactsBenchmark, sets: dict, models: dict):
  """Recall of the probed forget facts for every model of ``models`` (``{row: params}``), and after relearning.

  The forget QAs are split once (seeded): ``relearn_fraction`` of them are the attacker's relearning data, the
  rest are probed. Recall (`evaluation.language.value_recalled`: the greedy answer states the value) is measured
  with the original questions, rephrased questions and ``few_shot``-shot prompts, then again with the original
  questions after fine-tuning the model on the relearning data (``config.robustness.relearn``: token-mean NLL by
  the one loop). Every model is relearned at once, as one vmapped program (`loop.unlearn_grid` with stacked
  parameters), on the same batches.

  Returns:
    ``({row: {'probe_recall', 'rephrased_recall', 'few_shot_recall', 'relearn_recall'}}, relearning seconds)``.
  """
  r, e = config.robustness, config.eval
  forget = sets["forget"]
  order = np.random.default_rng([config.seed, 11]).permutation(len(forget))
  cut = max(1, int(round(r.relearn_fraction * len(forget))))
  relearn_set = forget.take(np.sort(order[:cut])).split(fields=("input_ids", "loss_mask"))
  probed = forget.take(np.sort(order[cut:]))
  prompts = {"probe_recall": facts.concept_views(bench, probed)[:2],
             "rephrased_recall": facts.concept_views(bench, probed, paraphrased=True)[:2],
             "few_shot_recall": facts.few_shot_prompts(bench, probed, sets["retain"], k=int(r.few_shot),
                                                       seed=config.seed)[:2]}
  values = facts.concept_views(bench, probed)[2]
  recall = lambda params, ids, lens: float(lm_eval.fact_recall(
      lm, params, ids, lens, values, decode=bench.tokenizer.decode, max_new_tokens=e.max_new_tokens,
      batch_size=e.batch_size)[0].mean())
  out = {row: {name: recall(params, *p) for name, p in prompts.items()} for row, params in models.items()}

  rows = list(models)
  bs, tx, objective = _nll_setup(lm, relearn_set, r.relearn)
  t0 = time.perf_counter()
  stacked, _, _ = loop.unlearn_grid(
      jax.tree.map(lambda *p: jnp.stack(p), *[models[row] for row in rows]), lm_unlearning.teachers.carry({}, {}),
      None, relearn_set,
      make=lambda _: (objective, tx), hypers=jnp.zeros((len(rows),)), epochs=int(r.relearn.epochs),
      batch_size=bs, rng=jax.random.fold_in(jax.random.key(config.seed), 17), desc="relearn", stacked=True)
  jax.block_until_ready(stacked)
  seconds = time.perf_counter() - t0
  for g, row in enumerate(rows):
    out[row]["relearn_recall"] = recall(jax.tree.map(lambda p: p[g], stacked), *prompts["probe_recall"])
  return out, seconds


def format_lm_table(results: dict, *, title: str, columns=None) -> str:
  """Markdown table: one row per model, ``columns`` (default `COLUMNS` plus the SAE separation when present)."""
  if columns is not None:
    return _markdown(results, title, list(columns))
  columns = list(COLUMNS)
  if any("sae_separation" in r for r in results.values()):
    columns.insert(-1, ("sae_separation", "SAE separation", 1.0, 3))
  return _markdown(results, title, columns)


def _markdown(results: dict, title: str, columns: list) -> str:
  lines = [f"### {title}", "", "| Model | " + " | ".join(h for _, h, _, _ in columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for row, metrics in results.items():
    cells = []
    for key, _, scale, digits in columns:
      v = metrics.get(key)
      cells.append("—" if v is None or not np.isfinite(v) else f"{v * scale:.{digits}f}")
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


run_lib.register_pipeline(EXPERIMENT, run_lm)
