r"""The ``diffusion`` study: a class-conditional DDPM learns the digits (or CIFAR-10), then forgets a class.

``config.experiment = 'diffusion'`` selects this pipeline (`run_diffusion`); ``configs/salun_diffusion.py`` builds
its config with `diffusion_config`. Sections, in order:

  1. config → the dataset as images in [-1, 1] (``normalization='none'``, then ``2x − 1``) and its class-wise
     forget / retain split (``config.forget.classes``); the U-Net (`unlearn_jax.models.diffusion.UNet`) and the
     schedule (`unlearn_jax.diffusion.linear_schedule`). The config is validated first (`validate_diffusion`).
  2. Original: the DDPM trained on every training image by `unlearn_jax.diffusion.fit_diffusion` (the project's
     whole-epoch-scan loop), cached as an Orbax checkpoint in ``workdir/cache`` by config hash, with progress
     checkpoints so that a killed run resumes.
  3. Retrain: the same from the same initialisation without the forget class(es), cached the same way.
  4. The metric classifier: the project's CNN trained on the real training images (all classes), cached.
  5. Each method of ``config.compare`` (`unlearn_jax.unlearning.generation.GENERATION_METHODS`) runs on the
     Original with ``config.methods.<name>``; its wall time is measured with ``block_until_ready``.
  6. Every model generates ``eval.samples_per_class`` images per class (``config.sampling``: DDIM / DDPM steps,
     η, guidance); the classifier labels them (UA, remaining-class accuracy, per-class accuracy) and its
     penultimate features give Fréchet distances to the real test images
     (`unlearn_jax.evaluation.generation`).
  7. ``results.json``, ``results.md`` (printed), ``samples.png`` (a panel per model, a row per class) and
     ``run.json`` are written.

Example:
    >>> from unlearn_jax import run
    >>> from unlearn_jax.studies import diffusion
    >>> results = run.run(diffusion.diffusion_config("tiny_test"), "/tmp/diffusion")
"""
from __future__ import annotations

import json
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
from unlearn_jax import data
from unlearn_jax import diffusion as diffusion_lib
from unlearn_jax import evaluation
from unlearn_jax import model as model_lib
from unlearn_jax import models
from unlearn_jax import run as run_lib
from unlearn_jax import train
from unlearn_jax.evaluation import generation as gen_eval
from unlearn_jax.models import diffusion as unet_lib
from unlearn_jax.unlearning import generation

Pytree = Any
EXPERIMENT = "diffusion"
CACHE_VERSION = 3  # 2: train.run_epochs keys epochs with fold_in; 3: the optimiser state holds the learning rate
DATASETS = ("digits", "cifar10")
COMPARED = ("salun", "rl", "ga", "esd")
ROW_NAMES = {"salun": "SalUn", "rl": "RL", "ga": "GA", "esd": "ESD"}


# ---------------------------------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------------------------------
def _train_section(**overrides) -> ml_collections.ConfigDict:
  """DDPM training: Adam, constant lr, no weight decay (SalUn's ``cifar10_train.yml``: lr 2e-4, batch 128)."""
  return ml_collections.ConfigDict({**dict(optimizer="adam", lr=2e-4, weight_decay=0.0, schedule="constant",
                                           warmup_epochs=0, epochs=2048, batch_size=128, checkpoint_every=1,
                                           checkpoint_min_seconds=60.0), **overrides})


# Options of the digits study (tuned on the 2-core CPU; a 1,437-image dataset needs more passes and a larger
# learning rate than CIFAR-10's 3 passes at 1e-4, and a larger retain weight than α = 1e-3 because 8x8x1 images sum
# the squared error over 64 values instead of 3,072).
DIGITS_OPTIONS: dict[str, dict] = {
    "salun": dict(lr=1e-3, epochs=20, alpha=0.05),
    "rl": dict(lr=1e-3, epochs=20, alpha=0.05),
    "ga": dict(lr=1e-4, epochs=2, alpha=0.05),
    "esd": dict(lr=1e-3, epochs=20, batch_size=32, sample_steps=25),
}


def diffusion_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of the diffusion study.

  Args:
    arg: None (digits on the 2-core CPU), ``'cifar10'`` (the SalUn CIFAR-10 DDPM settings, for a GPU) or
      ``'tiny_test'`` (one step per stage, for tests).

  Fields:
    dataset: ``name`` (digits | cifar10), ``data_dir``, ``download``, ``test_fraction`` (digits).
    forget: ``classes`` forgotten (SalUn forgets CIFAR-10 class 0, airplane).
    diffusion: ``num_timesteps``, ``beta_start``, ``beta_end`` (linear schedule), ``cond_drop`` (classifier-free
      condition dropout in training), ``grad_clip`` (global-norm clipping of training gradients; 0: none).
    unet: `unlearn_jax.models.diffusion.UNet` fields ``channels``, ``num_res_blocks``, ``attn_resolutions``,
      ``dropout``, ``dtype``.
    train / retrain: optimiser of the Original / Retrain DDPM (`unlearn_jax.train.make_optimizer` fields,
      ``epochs``, ``batch_size``, ``checkpoint_every``, ``checkpoint_min_seconds``).
    classifier: the metric CNN (``channels``, ``dense``) and its training fields.
    sampling: ``sampler`` (ddim | ddpm), ``steps``, ``eta``, ``guidance`` (``w`` of ``(1+w)ε_c − wε_∅``).
    compare: methods run, in table order; methods: every method's options (``--config.methods.salun.lr=...``).
    eval: ``samples_per_class`` generated per class and model, ``grid_per_class`` shown in ``samples.png``,
      ``batch_size`` of generation and classification.
  """
  c = ml_collections.ConfigDict()
  c.experiment = EXPERIMENT
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(dict(name="digits", data_dir=config_dict.placeholder(str), download=True,
                                             test_fraction=0.2))
  c.forget = ml_collections.ConfigDict(dict(classes=(0,)))
  c.diffusion = ml_collections.ConfigDict(dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02, cond_drop=0.1,
                                               grad_clip=1.0))
  c.unet = ml_collections.ConfigDict(dict(channels=(16, 32), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                                          dtype="float32"))
  c.train = _train_section(lr=2e-3, epochs=100)
  c.retrain = _train_section(lr=2e-3, epochs=100)
  c.classifier = ml_collections.ConfigDict(dict(channels=(16, 32), dense=64, optimizer="sgd", lr=0.05,
                                                momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
                                                epochs=15, batch_size=64))
  c.sampling = ml_collections.ConfigDict(dict(sampler="ddim", steps=50, eta=1.0, guidance=2.0))
  c.compare = COMPARED
  c.methods = ml_collections.ConfigDict({name: generation.method_config(name, DIGITS_OPTIONS.get(name))
                                         for name in generation.GENERATION_METHODS})
  c.eval = ml_collections.ConfigDict(dict(samples_per_class=50, grid_per_class=8, batch_size=500))
  if arg == "cifar10":
    c.dataset.name = "cifar10"
    c.unet.update(channels=(128, 256, 256, 256), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
    c.train = _train_section()  # 800k iterations of batch 128 over 50,000 images: 2,048 epochs
    c.retrain = _train_section()
    c.classifier.update(channels=(32, 64), dense=128, lr=0.1, epochs=100, batch_size=256)
    c.sampling.update(steps=1000)
    c.methods = ml_collections.ConfigDict({name: generation.method_config(name)
                                           for name in generation.GENERATION_METHODS})
    c.eval.update(samples_per_class=500)  # SalUn's classifier evaluation generates 500 images of the class
  elif arg == "tiny_test":
    # one U-Net level and one step per stage: XLA:CPU runs convolutions inside `lax.scan` ~50x slower than alone.
    # Original (1,437 images) and Retrain (1,295) each take one batch of 720 (the rest dropped): one batch shape, so
    # Retrain reuses the Original's compiled step (the persistent compilation cache) instead of compiling its own.
    c.diffusion.num_timesteps = 100
    c.unet.update(channels=(4,))
    for section in (c.train, c.retrain):
      section.update(epochs=1, batch_size=720)
    c.classifier.update(channels=(8,), dense=16, epochs=1, batch_size=2048)
    c.sampling.steps = 2
    for name in generation.GENERATION_METHODS:
      c.methods[name].update(epochs=1, batch_size=2048, saliency_batch_size=2048) if name == "salun" else \
          c.methods[name].update(epochs=1, batch_size=2048)
    c.methods.esd.update(sample_steps=2, pool_size=16)
    c.eval.update(samples_per_class=8, grid_per_class=2, batch_size=80)
  elif arg is not None:
    raise ValueError(f"config argument {arg!r}: use none, 'cifar10' or 'tiny_test'")
  return c


def validate_diffusion(config) -> ml_collections.ConfigDict:
  """Checks the study's config before any work; ValueError naming the bad key."""
  require = config_lib.require
  config_lib.check_keys(config, diffusion_config())
  for section in ("dataset", "forget", "diffusion", "unet", "train", "retrain", "classifier", "sampling", "methods",
                  "eval"):
    require(section in config, section, None, "missing section")
  config_lib.check_common(config)
  d = config.dataset
  require(d.name in DATASETS, "dataset.name", d.name, f"choose one of {DATASETS}")
  require(0.01 <= d.test_fraction <= 0.99, "dataset.test_fraction", d.test_fraction, "must be in [0.01, 0.99]")
  num_classes = 10
  classes = tuple(config.forget.classes)
  require(len(classes) > 0 and all(0 <= int(k) < num_classes for k in classes), "forget.classes", classes,
          f"name at least one class in [0, {num_classes})")
  require(len(set(classes)) < num_classes, "forget.classes", classes, "must leave at least one class")
  f = config.diffusion
  require(isinstance(f.num_timesteps, int) and f.num_timesteps >= 2, "diffusion.num_timesteps", f.num_timesteps,
          "must be an integer >= 2")
  require(0 < f.beta_start <= f.beta_end < 1, "diffusion.beta_start", (f.beta_start, f.beta_end),
          "need 0 < beta_start <= beta_end < 1")
  require(0 <= f.cond_drop < 1, "diffusion.cond_drop", f.cond_drop, "must be in [0, 1)")
  require(f.grad_clip >= 0, "diffusion.grad_clip", f.grad_clip, "must be >= 0 (0: no clipping)")
  u = config.unet
  require(len(u.channels) >= 1 and all(int(ch) >= 1 for ch in u.channels), "unet.channels", u.channels,
          "must be positive widths")
  size = 8 if d.name == "digits" else 32
  require(size % 2 ** (len(u.channels) - 1) == 0, "unet.channels", u.channels,
          f"{len(u.channels)} levels do not divide the {size}x{size} images")
  require(u.num_res_blocks >= 1, "unet.num_res_blocks", u.num_res_blocks, "must be at least 1")
  require(0 <= u.dropout < 1, "unet.dropout", u.dropout, "must be in [0, 1)")
  require(u.dtype in config_lib.DTYPES, "unet.dtype", u.dtype, f"choose one of {config_lib.DTYPES}")
  c = config.classifier
  require(len(c.channels) >= 1 and all(isinstance(ch, int) and ch >= 1 for ch in c.channels), "classifier.channels",
          tuple(c.channels), "must be one or more positive integer widths")
  require(isinstance(c.dense, int) and c.dense >= 1, "classifier.dense", c.dense, "must be an integer >= 1")
  for section in ("train", "retrain", "classifier"):
    config_lib.check_optimizer_section(config[section], section)
  s = config.sampling
  require(s.sampler in diffusion_lib.SAMPLERS, "sampling.sampler", s.sampler, f"choose one of {diffusion_lib.SAMPLERS}")
  require(1 <= s.steps <= f.num_timesteps, "sampling.steps", s.steps, f"must be in [1, {f.num_timesteps}]")
  require(s.eta >= 0, "sampling.eta", s.eta, "must be >= 0")
  require(s.guidance >= 0, "sampling.guidance", s.guidance, "must be >= 0")
  require(len(config.compare) > 0, "compare", config.compare, "name at least one method")
  for name in config.compare:
    require(name in generation.GENERATION_METHODS, "compare", config.compare,
            f"{name!r} is not a method; choose from {sorted(generation.GENERATION_METHODS)}")
  for name in config.methods.keys():
    try:
      generation.method_config(name, config.methods[name])
    except ValueError as e:
      raise ValueError(f"config.methods.{name}: {e}") from e
    config_lib.check_options(config.methods[name], f"methods.{name}")
  e = config.eval
  require(e.samples_per_class >= 2, "eval.samples_per_class", e.samples_per_class, "must be at least 2")
  require(1 <= e.grid_per_class <= e.samples_per_class, "eval.grid_per_class", e.grid_per_class,
          "must be in [1, samples_per_class]")
  require(e.batch_size >= 1, "eval.batch_size", e.batch_size, "must be at least 1")
  return config


# ---------------------------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------------------------
def load_images(config) -> data.Dataset:
  """The dataset with images scaled to [-1, 1] (the DDPM's data range)."""
  d = config.dataset
  options = dict(test_fraction=d.test_fraction) if d.name == "digits" else dict(download=d.download)
  ds = data.load_dataset(d.name, seed=config.seed, data_dir=d.data_dir, normalization="none", **options)
  to_signed = lambda s: data.Split(x=2.0 * s.x - 1.0, y=s.y, index=s.index)
  return data.Dataset(ds.name, to_signed(ds.train), to_signed(ds.test), ds.num_classes, ds.image_shape,
                      mean=(0.5,) * len(ds.mean), std=(0.5,) * len(ds.std))


def build_unet(config, num_classes: int) -> unet_lib.UNet:
  u = config.unet
  return unet_lib.UNet(channels=tuple(u.channels), num_res_blocks=u.num_res_blocks,
                       attn_resolutions=tuple(u.attn_resolutions), num_classes=num_classes, dropout=u.dropout,
                       dtype=jnp.dtype(u.dtype))


def _cached(workdir, stage: str, key_parts, like, build, section=None):
  """``checkpoint.cached`` under ``workdir/cache/diffusion-<stage>-<hash>``, resuming from progress checkpoints."""
  directory = pathlib.Path(workdir) / "cache" / f"diffusion-{stage}-{checkpoint.config_hash(CACHE_VERSION, *key_parts)}"
  progress = checkpoint.EpochCheckpoints(directory / "progress", every=section.get("checkpoint_every", 0) if section
                                         else 0, min_seconds=section.get("checkpoint_min_seconds", 0.0) if section
                                         else 0.0)
  with progress:
    params, state, meta, restored = checkpoint.cached(directory, lambda: build(progress), like=like)
  progress.remove()
  logging.info("%s: %s %s", stage, "restored from" if restored else "trained and saved to", directory)
  return params, state, meta, restored


def _generate(sampler, classify, params, num_classes: int, per_class: int, batch_size: int, rng):
  """``(images (n, ...), conditions (n,), predicted (n,), features (n, d))`` for ``per_class`` images per class."""
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
  bs = min(batch_size, labels.size)
  padded = np.resize(labels, -(-labels.size // bs) * bs)  # fixed batch shape: one compilation
  outputs = []
  for i in range(0, padded.size, bs):
    images = sampler(params, jnp.asarray(padded[i:i + bs]), jax.random.fold_in(rng, i))
    outputs.append((images, *classify(images)))
  images, logits, feats = (np.concatenate(parts)[:labels.size] for parts in zip(*jax.device_get(outputs)))
  return images, labels, np.argmax(logits, -1), feats


def run_diffusion(config, workdir) -> dict:
  """Original, Retrain, the classifier and every method of ``config.compare``; writes and prints the results."""
  validate_diffusion(config)
  started = time.time()
  workdir = pathlib.Path(workdir)
  ds = load_images(config)
  forget_classes = tuple(int(k) for k in config.forget.classes)
  splits = data.make_unlearning_splits(ds, kind="class", classes=forget_classes, seed=config.seed)
  root = jax.random.key(config.seed)
  f = config.diffusion
  module = build_unet(config, ds.num_classes)
  dm = diffusion_lib.from_unet(module, diffusion_lib.linear_schedule(f.num_timesteps, f.beta_start, f.beta_end))
  sample_x, sample_c = ds.train.x[:1], ds.train.y[:1]
  # jitted: one compilation instead of one per initialiser op (the same values as the eager init)
  init_fn = jax.jit(lambda key: module.init(key, sample_x, sample_c, sample_c)["params"])
  init = lambda: init_fn(jax.random.fold_in(root, 0))
  like = (jax.eval_shape(init), {})
  workdir.mkdir(parents=True, exist_ok=True)
  run_lib.write_run_record(workdir, config, started=started)

  def ddpm_stage(stage, split, section, salt):
    def build(progress):
      params, history = diffusion_lib.fit_diffusion(
          dm, init(), split, section, rng=jax.random.fold_in(root, salt), cond_drop=f.cond_drop,
          grad_clip=f.grad_clip, checkpoints=progress, desc=stage,
          log=lambda line: logging.info("%s: %s", stage, line))
      return params, {}, {"history": history, "seconds": history["seconds"]}
    return build

  base = (config.seed, config.dataset.to_dict(), config.unet.to_dict(), f.to_dict())
  models_: dict[str, tuple[Pytree, float | None]] = {}
  restored = {}
  p, _, meta, restored["Original"] = _cached(
      workdir, "original", base + (config_lib.training_fields(config.train),), like,
      ddpm_stage("original", ds.train, config.train, 1), config.train)
  models_["Original"] = (p, meta.get("seconds"))
  p, _, meta, restored["Retrain"] = _cached(
      workdir, "retrain", base + (forget_classes, config_lib.training_fields(config.retrain)), like,
      ddpm_stage("retrain", splits.retain, config.retrain, 2), config.retrain)
  models_["Retrain"] = (p, meta.get("seconds"))

  # The metric classifier: the project's CNN on the real images.
  cc = config.classifier
  cnn = models.get_model("cnn", ds.num_classes, channels=tuple(cc.channels), dense=cc.dense)
  classifier = model_lib.from_linen(cnn)
  c_init = lambda: model_lib.init(cnn, jax.random.fold_in(root, 3), sample_x)[1:]

  def build_classifier(progress):
    cp, cs, history = train.fit(classifier, *c_init(), ds.train, cc, rng=jax.random.fold_in(root, 4),
                                checkpoints=progress, desc="classifier")
    return cp, cs, {"history": history, "seconds": history["seconds"]}

  cparams, cstate, _, restored["classifier"] = _cached(
      workdir, "classifier", (config.seed, config.dataset.to_dict(), cc.to_dict()), jax.eval_shape(c_init),
      build_classifier)
  test_logits = evaluation.predict(classifier, cparams, cstate, ds.test)
  classifier_acc = evaluation.accuracy(test_logits, np.asarray(ds.test.y))
  logging.info("classifier test accuracy %.4f", classifier_acc)

  for name in config.compare:
    logging.info("unlearning with %s", name)
    rng = jax.random.fold_in(root, 10 + list(generation.GENERATION_METHODS).index(name))
    t0 = time.perf_counter()
    params, _ = generation.get_generation_method(name)(dm, models_["Original"][0], {}, splits.forget, splits.retain,
                                                       config=config.methods[name], rng=rng)
    jax.block_until_ready(params)
    models_[ROW_NAMES.get(name, name)] = (params, time.perf_counter() - t0)

  s, e = config.sampling, config.eval
  sampler = diffusion_lib.make_sampler(dm, image_shape=ds.image_shape, steps=s.steps, sampler=s.sampler, eta=s.eta,
                                       guidance=s.guidance)
  classify = jax.jit(lambda x: (classifier.apply(cparams, cstate, x, train=False)[0],
                                classifier.features(cparams, cstate, x)))
  real_feats = np.concatenate([np.asarray(classify(ds.test.x[i:i + e.batch_size])[1])
                               for i in range(0, ds.test.size, e.batch_size)])
  real_labels = np.asarray(ds.test.y)
  results, grids = {}, {}
  eval_key = jax.random.fold_in(root, 5)  # the same noise for every model: differences come from the weights
  for row, (params, seconds) in models_.items():
    t0 = time.perf_counter()
    images, conds, predicted, feats = _generate(sampler, classify, params, ds.num_classes, e.samples_per_class,
                                                e.batch_size, eval_key)
    metrics = gen_eval.generation_scores(predicted, conds, forget_classes=forget_classes)
    metrics.update(gen_eval.frechet_scores(feats, conds, real_feats, real_labels, forget_classes=forget_classes))
    metrics["FD_forget"] = float(np.mean([metrics[f"FD_{k}"] for k in forget_classes]))
    metrics["seconds"] = float(seconds) if seconds is not None else float("nan")
    metrics["eval_seconds"] = time.perf_counter() - t0
    results[row] = metrics
    grids[row] = images.reshape((ds.num_classes, e.samples_per_class) + images.shape[1:])[:, :e.grid_per_class]
    logging.info("%s: %s", row, {k: round(v, 4) for k, v in metrics.items() if not k.startswith(("Acc_", "FD_"))})

  title = (f"Forgetting class {', '.join(map(str, forget_classes))} of a class-conditional DDPM on {ds.name} "
           f"({model_lib.num_params(like[0]):,}-parameter U-Net; {e.samples_per_class} samples per class, "
           f"{s.sampler} {s.steps} steps, guidance {s.guidance}; classifier test accuracy {classifier_acc:.3f})")
  table = format_table(results, title=title)
  evaluation.atomic_write(str(workdir / "results.json"),
                          json.dumps({"rows": results, "classifier_test_accuracy": classifier_acc}, indent=1))
  evaluation.atomic_write(str(workdir / "results.md"), table)
  gen_eval.write_sample_grids(grids, workdir / "samples.png")
  run_lib.write_run_record(workdir, config, started=started, finished=time.time(), restored=restored)
  print(table)
  return {"results": results, "table": table, "restored": restored, "classifier_accuracy": classifier_acc}


COLUMNS = (("UA", "UA %", 100.0, 1), ("Acc_remain", "Acc remaining %", 100.0, 1),
           ("FD_remain", "FD remaining", 1.0, 2), ("FD_forget", "FD forgotten", 1.0, 2),
           ("seconds", "Run time s", 1.0, 1))


def format_table(results: dict, *, title: str) -> str:
  """Markdown table, one row per model: UA, remaining-class accuracy, FDs and the run (training) time."""
  lines = [f"### {title}", "", "| Model | " + " | ".join(h for _, h, _, _ in COLUMNS) + " |",
           "|---|" + "---:|" * len(COLUMNS)]
  for row, metrics in results.items():
    cells = []
    for key, _, scale, digits in COLUMNS:
      v = metrics.get(key)
      cells.append("—" if v is None or not np.isfinite(v) else f"{v * scale:.{digits}f}")
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


run_lib.register_pipeline(EXPERIMENT, run_diffusion)
