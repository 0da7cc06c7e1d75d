"""The base experiment config and its validation.

Every ``configs/<method>.py`` starts from `base_config()` and changes what its method needs. The config is
locked, so ``--config.some.typo=1`` fails in the flag parser; `validate` checks values (and, for configs
built in code, unknown keys) before any work starts, naming the bad key.

Fields:
  experiment: which pipeline `unlearn_jax.run.run` runs (``unlearning`` by default; studies register more
    in `unlearn_jax.run.PIPELINES`, each with its own config section(s), validated by the pipeline).
  seed: seeds data splits, initialisation and training.
  dataset: ``name`` (digits | mnist1d | synthetic | cifar10 | cifar100 | svhn_cropped | mnist | fashion_mnist),
    ``data_dir``, ``download``, ``test_fraction`` (digits), ``num_samples``/``shuffle_seq`` (mnist1d: train + test
    examples, 80% of them train; the spatially shuffled variant), ``image_shape``/``num_train``/``num_test``/
    ``num_classes``/``noise`` (synthetic), ``label`` (cifar100: fine | coarse), ``augment`` (none | cifar).
  forget: ``kind`` (random | class | subclass | worst_case); ``fraction`` in (0, 1) of the training rows
    (random, worst_case); ``classes`` and, optionally, ``class_fraction`` of their rows (class, subclass;
    unset: all their rows); ``worst_case_steps``/``worst_case_lr``: the bi-level selection of
    `unlearn_jax.data.worst_case` (run on the Original, so the Original is trained first).
  model: ``name`` (see `unlearn_jax.models.MODELS`), ``dtype`` (float32 | bfloat16 compute), ``width``
    (ResNet-20 and cnn1d channel multiplier), ``hidden`` (MLP layer sizes).
  train / retrain: optimiser and schedule of the Original and of Retrain (see `unlearn_jax.train`), plus
    three fields that control the run but not the model (left out of the cache key, see `training_fields`):
    ``checkpoint_every``: epochs between progress checkpoints (0: none), so that a killed run resumes from the
    last one (`unlearn_jax.checkpoint.EpochCheckpoints`); ``checkpoint_min_seconds``: a due progress checkpoint
    is skipped if the previous one is younger than this (default 60 s: small runs write none, long runs lose
    at most about a minute); ``from_checkpoint``: bring your own model, the path of an Orbax checkpoint
    directory written by `unlearn_jax.checkpoint.save` (``params`` and ``state`` of this config's model) that
    is loaded as the Original (``train``) or Retrain (``retrain``) instead of training; its shapes are checked
    against the model before any work. PyTorch ``.pt``/``.safetensors`` files are not read here.
  method: ``name`` plus the method's own options.
  eval: ``mia``, ``kl``, ``batch_size``.
  mesh: ``data``, ``fsdp`` axis sizes (-1: the remaining devices), ``multihost``.
"""
from __future__ import annotations

import math
import os

import ml_collections
from ml_collections import config_dict

DATASETS = ("digits", "mnist1d", "synthetic", "cifar10", "cifar100", "svhn_cropped", "mnist", "fashion_mnist")
FORGET_KINDS = ("random", "class", "subclass", "worst_case")
DTYPES = ("float32", "bfloat16")
# Fields of a train section that say how to run (checkpointing, where a trained model comes from), not what
# model results: they are left out of the cache key.
RUN_CONTROL_KEYS = ("checkpoint_every", "checkpoint_min_seconds", "from_checkpoint")
# Unlearning methods whose ``method.batch_size`` batches the retain set only (see `batch_warnings`).
RETAIN_BATCHED = ("ft", "l1_sparse", "scrub")
TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".safetensors")
# Epoch counts above this are refused (``epochs=1e9`` is a typo, not a plan: it would run for years).
MAX_EPOCHS = 100_000
# Seeds are unsigned 32-bit: NumPy's generators and `jax.random.key` take [0, 2**32).
SEED_RANGE = (0, 2 ** 32)
# Classes of the datasets with a fixed label set (synthetic: ``dataset.num_classes``; cifar100: 100 fine or 20
# coarse).
NUM_CLASSES = {"digits": 10, "mnist1d": 10, "cifar10": 10, "svhn_cropped": 10, "mnist": 10, "fashion_mnist": 10}


def train_config(**overrides) -> ml_collections.ConfigDict:
  """Optimiser + schedule fields used by `unlearn_jax.train.fit` (defaults suit digits).

  ``mnemonic_t_mix > 0`` trains with mnemonic codes swapped in (for ``fisher_mnemonic``).
  """
  c = ml_collections.ConfigDict(dict(
      optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
      warmup_epochs=0, milestones=(), gamma=0.1, epochs=30, batch_size=64, mnemonic_t_mix=0.0,
      mnemonic_code_seed=0, checkpoint_every=1, checkpoint_min_seconds=60.0,
      from_checkpoint=config_dict.placeholder(str)))
  c.update(overrides)
  return c


def training_fields(section: ml_collections.ConfigDict) -> dict:
  """The fields of a train section that determine the trained model (all but `RUN_CONTROL_KEYS`)."""
  return {k: v for k, v in section.to_dict().items() if k not in RUN_CONTROL_KEYS}


def base_config() -> ml_collections.ConfigDict:
  """The shared experiment config: digits, a 10% random forget set, an MLP, Original and Retrain."""
  c = ml_collections.ConfigDict()
  c.experiment = "unlearning"
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(dict(
      name="digits", data_dir=config_dict.placeholder(str), download=True, test_fraction=0.2,
      num_samples=5000, shuffle_seq=False, image_shape=(32, 32, 3), num_train=5000, num_test=1000, num_classes=10, noise=1.0, label="fine",
      augment="none"))
  c.forget = ml_collections.ConfigDict(dict(kind="random", fraction=0.1, classes=(),
                                            class_fraction=config_dict.placeholder(float),
                                            worst_case_steps=10, worst_case_lr=100.0))
  c.model = ml_collections.ConfigDict(dict(name="mlp", dtype="float32", width=1, hidden=(256, 256)))
  c.train = train_config()
  c.retrain = train_config()
  c.method = ml_collections.ConfigDict(dict(name="retrain"))
  c.eval = ml_collections.ConfigDict(dict(mia=True, kl=True, batch_size=1024))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, multihost=False))
  return c


def cifar10_config() -> ml_collections.ConfigDict:
  """The reference CIFAR-10 setting of SalUn / Unlearn-Sparse: ResNet-18, crop+flip, SGD 0.1, 182 epochs."""
  c = base_config()
  c.dataset.name = "cifar10"
  c.dataset.augment = "cifar"
  c.model.name = "resnet18"
  for section in (c.train, c.retrain):
    section.update(dict(lr=0.1, epochs=182, batch_size=256, momentum=0.9, nesterov=False, weight_decay=5e-4,
                        schedule="step", milestones=(91, 136), gamma=0.1))
  c.eval.batch_size = 1000
  return c


def method_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """``config.method`` for a registered method: every option, defaults updated with ``overrides``."""
  from unlearn_jax import unlearning  # pylint: disable=g-import-not-at-top
  return unlearning.method_config(name, **overrides)


def method_experiment(name: str, arg: str | None = None, *, digits: dict | None = None,
                      cifar10: dict | None = None) -> ml_collections.ConfigDict:
  """The config of one unlearning method: digits (``digits`` options) or, for ``arg='cifar10'``, the reference
  CIFAR-10 setting (`cifar10_config`, with the ``cifar10`` options; the method's registered defaults otherwise).

  Any other ``arg`` names a model (see `apply_model_arg`).
  """
  if arg == "cifar10":
    config = cifar10_config()
    config.method = method_config(name, **(cifar10 or {}))
    return config
  config = base_config()
  config.method = method_config(name, **(digits or {}))
  return apply_model_arg(config, arg)


def apply_model_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies a config-file argument that names a model (``--config=configs/x.py:cnn``); None keeps it."""
  from unlearn_jax import models  # pylint: disable=g-import-not-at-top
  if arg:
    if arg not in models.MODELS:
      raise ValueError(f"config argument {arg!r}: not a model name; choose one of {models.MODELS}")
    config.model.name = arg
  return config


def check_keys(config, reference, path="config"):
  """ValueError naming the first key of ``config`` (recursively) that ``reference`` does not have."""
  for key in config.keys():
    if key not in reference:
      known = ", ".join(sorted(reference.keys()))
      raise ValueError(f"unknown config key {path}.{key} (known: {known})")
    sub, ref = config[key], reference[key]
    if isinstance(ref, ml_collections.ConfigDict) and isinstance(sub, ml_collections.ConfigDict):
      check_keys(sub, ref, f"{path}.{key}")


def require(ok: bool, key: str, value, why: str):
  """ValueError ``config.<key>=<value>: <why>`` unless ``ok``."""
  if not ok:
    raise ValueError(f"config.{key}={value!r}: {why}")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite(config, path: str = "") -> None:
  """Every float of ``config`` (recursively, in tuples too) is finite: ``lr=inf`` or ``1e400`` (which parses as
  inf) is refused wherever it is, naming the key. No config field means "no limit" by infinity."""
  items = config.items() if hasattr(config, "items") else enumerate(config)
  for key, value in items:
    name = f"{path}.{key}" if path and hasattr(config, "items") else (str(key) if not path else path)
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      check_finite(value, name)
    elif isinstance(value, (tuple, list)):
      for item in value:
        require(not isinstance(item, float) or math.isfinite(item), name, tuple(value), "must be finite")
        if isinstance(item, (tuple, list, dict)):
          check_finite(item, name)
    elif isinstance(value, float):
      require(math.isfinite(value), name, value, "must be finite")


def check_common(config) -> None:
  """What every pipeline's config shares: every float finite (`check_finite`), ``seed`` in [0, 2**32), and a
  ``mesh`` section (if any) that fits the devices (`unlearn_jax.sharding.check_mesh_config`)."""
  check_finite(config)
  check_seed(config.get("seed", 0), "seed")
  if isinstance(config.get("mesh"), ml_collections.ConfigDict):
    from unlearn_jax import sharding  # pylint: disable=g-import-not-at-top
    sharding.check_mesh_config(config.mesh)


def check_seed(value, key: str) -> None:
  """A seed: an integer in [0, 2**32) (`SEED_RANGE`)."""
  require(_is_int(value) and SEED_RANGE[0] <= value < SEED_RANGE[1], key, value, "must be an integer in [0, 2**32)")


def check_seeds(values, key: str) -> None:
  """Each of ``values`` a seed (`check_seed`), the first bad one named ``config.<key>=<it>``."""
  for value in values:
    check_seed(value, key)


def check_epochs(value, key: str, low: int = 1) -> None:
  """An epoch count: an integer in ``[low, MAX_EPOCHS]``."""
  require(_is_int(value) and low <= value <= MAX_EPOCHS, key, value,
          f"must be an integer in [{low}, {MAX_EPOCHS}]")


def check_optimizer_section(t: ml_collections.ConfigDict, path: str) -> None:
  """The optimiser and schedule fields every training section has (`train_config`), named ``config.<path>.<key>``
  when bad: every float finite, ``lr > 0``, ``epochs`` in [1, `MAX_EPOCHS`], ``warmup_epochs`` in [0, epochs],
  ``batch_size >= 1``, ``momentum``/``weight_decay``/``gamma``/``milestones`` as `check_options` has them,
  ``mnemonic_code_seed`` in [0, 2**32), ``checkpoint_every``/``checkpoint_min_seconds`` >= 0."""
  from unlearn_jax import train  # pylint: disable=g-import-not-at-top
  check_finite(t, path)
  require(t.optimizer in train.OPTIMIZERS, f"{path}.optimizer", t.optimizer, f"choose one of {train.OPTIMIZERS}")
  require(t.schedule in train.SCHEDULES, f"{path}.schedule", t.schedule, f"choose one of {train.SCHEDULES}")
  require(_is_number(t.lr) and t.lr > 0, f"{path}.lr", t.lr, "must be positive")
  require(not _is_int(t.epochs) or t.epochs >= 1, f"{path}.epochs", t.epochs, "must be at least 1")
  check_epochs(t.epochs, f"{path}.epochs")
  warmup = t.get("warmup_epochs", 0)
  require(_is_number(warmup) and 0 <= warmup <= t.epochs, f"{path}.warmup_epochs", warmup,
          f"must be in [0, epochs={t.epochs}]")
  require(_is_int(t.batch_size) and t.batch_size >= 1, f"{path}.batch_size", t.batch_size, "must be at least 1")
  check_options({k: t[k] for k in ("momentum", "weight_decay", "gamma", "milestones") if k in t}, path)
  check_seed(t.get("mnemonic_code_seed", 0), f"{path}.mnemonic_code_seed")
  every, min_seconds = t.get("checkpoint_every", 0), t.get("checkpoint_min_seconds", 0.0)
  require(_is_int(every) and every >= 0, f"{path}.checkpoint_every", every,
          "must be an integer >= 0 (0: no progress checkpoints)")
  require(_is_number(min_seconds) and min_seconds >= 0, f"{path}.checkpoint_min_seconds", min_seconds,
          "must be >= 0")


def num_classes(d: ml_collections.ConfigDict) -> int:
  """The number of classes of ``config.dataset`` (``d``), known before the data is loaded."""
  if d.name == "synthetic":
    return int(d.num_classes)
  if d.name == "cifar100":
    return 100 if d.get("label", "fine") == "fine" else 20
  return NUM_CLASSES[d.name]


def check_dataset(d: ml_collections.ConfigDict) -> None:
  """``config.dataset``: name, test fraction, the synthetic generator's fields, augmentation."""
  require(d.name in DATASETS, "dataset.name", d.name, f"unknown dataset; choose one of {DATASETS}")
  # both splits keep at least 1% of the data, so a stratified split has every class on either side
  require(_is_number(d.test_fraction) and 0.01 <= d.test_fraction <= 0.99, "dataset.test_fraction",
          d.test_fraction, "must be in [0.01, 0.99]")
  require(isinstance(d.num_samples, int) and d.num_samples >= 20 and d.num_samples % 10 == 0, "dataset.num_samples",
          d.num_samples, "must be a multiple of 10 of at least 20")
  require(d.augment in ("none", "cifar"), "dataset.augment", d.augment, "choose 'none' or 'cifar'")
  require(d.get("label", "fine") in ("fine", "coarse"), "dataset.label", d.get("label"), "choose 'fine' or 'coarse'")
  if d.name == "synthetic":
    shape = tuple(d.image_shape)
    require(len(shape) == 3 and all(_is_int(n) and n >= 1 for n in shape), "dataset.image_shape", shape,
            "must be (height, width, channels) of positive integers")
    require(_is_int(d.num_classes) and d.num_classes >= 2, "dataset.num_classes", d.num_classes,
            "must be an integer >= 2")
    for key in ("num_train", "num_test"):
      require(_is_int(d[key]) and d[key] >= d.num_classes, f"dataset.{key}", d[key],
              f"must be an integer >= num_classes={d.num_classes}")
    require(_is_number(d.noise) and d.noise >= 0, "dataset.noise", d.noise, "must be >= 0")


def check_forget(f: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  """``config.forget`` against the dataset: the kind's own fields only, classes in range, one class left."""
  require(f.kind in FORGET_KINDS, "forget.kind", f.kind, f"choose one of {FORGET_KINDS}")
  if f.kind in ("random", "worst_case"):
    require(f.fraction is not None and _is_number(f.fraction) and 0 < f.fraction < 1, "forget.fraction", f.fraction,
            "must be in (0, 1)")
    require(len(f.classes) == 0, "forget.classes", tuple(f.classes),
            f"not used by kind {f.kind!r} (it forgets a fraction of all rows); set forget.kind='class'")
    require(f.class_fraction is None, "forget.class_fraction", f.class_fraction,
            f"not used by kind {f.kind!r}; use forget.fraction")
    if f.kind == "worst_case":
      require(_is_int(f.worst_case_steps) and f.worst_case_steps >= 1, "forget.worst_case_steps",
              f.worst_case_steps, "must be an integer >= 1")
      require(_is_number(f.worst_case_lr) and f.worst_case_lr > 0, "forget.worst_case_lr", f.worst_case_lr,
              "must be positive")
    return
  if f.class_fraction is not None:
    require(_is_number(f.class_fraction) and 0 < f.class_fraction < 1, "forget.class_fraction", f.class_fraction,
            "must be in (0, 1)")
  classes = tuple(f.classes)
  require(len(classes) > 0, "forget.classes", classes, f"needs at least one class for kind {f.kind!r}")
  if f.kind == "subclass":
    require(d.name == "cifar100" and d.get("label") == "coarse", "forget.kind", f.kind,
            f"needs fine labels under coarse ones: dataset.name='cifar100' with dataset.label='coarse' (dataset "
            f"{d.name!r} has none)")
    n = 100
  else:
    n = num_classes(d)
  require(all(_is_int(c) and 0 <= c < n for c in classes), "forget.classes", classes,
          f"class ids must be integers in [0, {n}) for dataset {d.name!r}")
  require(len(set(classes)) < n, "forget.classes", classes,
          f"forgets all {n} classes; leave at least one to retain")


def check_model(m: ml_collections.ConfigDict) -> None:
  from unlearn_jax import models  # pylint: disable=g-import-not-at-top
  require(m.name in models.MODELS, "model.name", m.name, f"unknown model; choose one of {models.MODELS}")
  require(m.dtype in DTYPES, "model.dtype", m.dtype, f"choose one of {DTYPES}")
  require(_is_int(m.width) and m.width >= 1, "model.width", m.width, "must be an integer >= 1")
  hidden = tuple(m.hidden)
  require(all(_is_int(n) and n >= 1 for n in hidden), "model.hidden", hidden, "layer sizes must be integers >= 1")


def _check_source(key: str, path) -> None:
  """A ``from_checkpoint`` value: None, a directory holding a complete `unlearn_jax.checkpoint` checkpoint, or
  an existing PyTorch ResNet ``state_dict`` file (`unlearn_jax.torch_io`)."""
  if path is None:
    return
  from unlearn_jax import checkpoint  # pylint: disable=g-import-not-at-top
  require(isinstance(path, str) and bool(path), key, path, "must be a checkpoint directory path")
  if path.lower().endswith(TORCH_SUFFIXES):
    require(os.path.isfile(path), key, path, "no such file")
    return
  require(os.path.isdir(path), key, path, "no such directory")
  require(checkpoint.exists(path), key, path, "holds no complete checkpoint (see unlearn_jax.checkpoint.save)")


def validate(config: ml_collections.ConfigDict, extra_sections=()) -> ml_collections.ConfigDict:
  """Checks keys and values before any work; raises ValueError naming the bad key.

  ``method`` and the ``extra_sections`` a study pipeline owns are free-form here: the method or the pipeline
  checks them.
  """
  from unlearn_jax import unlearning  # pylint: disable=g-import-not-at-top

  base = base_config()
  method = config.get("method")
  own = set(extra_sections) | {"method"}
  check_keys(ml_collections.ConfigDict({k: v for k, v in config.items() if k not in own}), base)
  require(isinstance(method, ml_collections.ConfigDict) and "name" in method, "method", method,
           "must be a ConfigDict with a name")
  require(method.name in unlearning.names(), "method.name", method.name,
           f"unknown method; choose one of {unlearning.names()}")
  for section in base.keys():
    require(section in config, section, None, "missing section")
  check_common(config)
  check_dataset(config.dataset)
  check_forget(config.forget, config.dataset)
  check_model(config.model)
  for section in ("train", "retrain"):
    t = config[section]
    check_optimizer_section(t, section)
    require(0 <= t.mnemonic_t_mix < 1, f"{section}.mnemonic_t_mix", t.mnemonic_t_mix, "must be in [0, 1)")
    _check_source(f"{section}.from_checkpoint", t.get("from_checkpoint"))
  require(config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, "must be at least 1")
  check_method_section(method)
  return config


def check_method_section(method: ml_collections.ConfigDict) -> None:
  """``config.method``'s options against the method's registered ones (`unlearn_jax.unlearning.options`), the
  generic values every method shares (`check_options`), and the method's own check of its values (registered
  with it, `unlearn_jax.unlearning.checked_options`), so a bad one fails before Original and Retrain are
  trained."""
  from unlearn_jax import unlearning  # pylint: disable=g-import-not-at-top
  if method.name in unlearning.BASELINES:
    return
  try:
    opts = unlearning.options(method, method.name)
  except ValueError as e:
    raise ValueError(f"config.method: {e}") from e
  check_options(opts, "method")
  try:
    unlearning.checked_options(opts, method.name)  # the method's own checks (`unlearning.register`'s ``check``)
  except ValueError as e:
    raise ValueError(f"config.{e}") from e


def check_options(opts, path: str) -> None:
  """The rules shared by every method's options, recognised by name (``opts`` is a mapping; bad ones are named
  ``config.<path>.<key>``); used for ``config.method`` and the studies' ``methods.<name>`` sections:

  * every float finite;
  * ``lr`` and every ``*_lr`` / ``lr_*`` rate: > 0;
  * ``epochs``: an integer in [1, `MAX_EPOCHS`] (0 iterations is the Original: use ``method.name=original``);
    every other ``*_epochs`` (LAF's ``classifier_epochs``...): an integer in [0, `MAX_EPOCHS`]; ``warmup_epochs``:
    a number in that range;
  * ``batch_size`` and every ``*_batch_size``: an integer >= 1. A batch larger than the split it batches is
    not refused: it is capped to the split with one warning (`batch_warnings`), as the reference code's
    DataLoader yields one short batch;
  * ``fraction`` and every ``*_fraction`` (SalUn's saliency mask, Bad Teacher's retain share): in (0, 1];
  * ``temperature`` / ``temp``: > 0;
  * the optimiser fields of `train_config` (the iterative methods' `unlearn_jax.unlearning.methods.LOOP_DEFAULTS`
    too): ``optimizer`` one of `unlearn_jax.train.OPTIMIZERS`, ``schedule`` one of `unlearn_jax.train.SCHEDULES`,
    ``momentum`` in [0, 1), ``weight_decay`` >= 0, Adam's ``b1``/``b2`` in [0, 1); ``eps`` (Adam's, Fisher's
    damping, Boundary Shrink's attack step) > 0; beside ``milestones`` (the learning-rate schedule's fields),
    ``gamma`` > 0 and ``milestones`` numbers in [0, `MAX_EPOCHS`];
  * ``seed`` and every ``*_seed``: an integer in [0, 2**32) (`check_seed`);
  * the loop's ``phases`` (`unlearn_jax.unlearning.loop.SCHEDULES`) and ``mask_mode``
    (`unlearn_jax.unlearning.loop.MASK_MODES`).
  """
  from unlearn_jax import train  # pylint: disable=g-import-not-at-top
  from unlearn_jax.unlearning import loop  # pylint: disable=g-import-not-at-top
  check_finite(opts, path)
  for key, value in opts.items():
    name = f"{path}.{key}"
    if key == "lr" or key.endswith("_lr") or key.startswith("lr_"):
      require(_is_number(value) and value > 0, name, value, "must be positive")
    elif key == "epochs":
      check_epochs(value, name)
    elif key == "warmup_epochs":  # may be a fraction of an epoch
      require(_is_number(value) and 0 <= value <= MAX_EPOCHS, name, value, f"must be in [0, {MAX_EPOCHS}]")
    elif key.endswith("_epochs"):
      check_epochs(value, name, low=0)
    elif key == "batch_size" or key.endswith("_batch_size"):
      require(_is_int(value) and value >= 1, name, value, "must be an integer >= 1")
    elif key == "fraction" or key.endswith("_fraction"):
      require(_is_number(value) and 0 < value <= 1, name, value, "must be in (0, 1]")
    elif key in ("temperature", "temp"):
      require(_is_number(value) and value > 0, name, value, "must be positive")
    elif key == "optimizer":
      require(value in train.OPTIMIZERS, name, value, f"choose one of {train.OPTIMIZERS}")
    elif key == "schedule":
      require(value in train.SCHEDULES, name, value, f"choose one of {train.SCHEDULES}")
    elif key == "momentum":
      require(_is_number(value) and 0 <= value < 1, name, value, "must be in [0, 1)")
    elif key == "weight_decay":
      require(_is_number(value) and value >= 0, name, value, "must be >= 0")
    elif key in ("b1", "b2"):  # Adam's moment decays
      require(_is_number(value) and 0 <= value < 1, name, value, "must be in [0, 1)")
    elif key == "eps":
      require(_is_number(value) and value > 0, name, value, "must be positive")
    elif key == "seed" or key.endswith("_seed"):  # fisher_mnemonic's code_seed...
      check_seed(value, name)
    elif key == "gamma" and "milestones" in opts:
      require(_is_number(value) and value > 0, name, value, "must be positive (the learning rate's decay factor)")
    elif key == "milestones":
      require(all(_is_number(m) and 0 <= m <= MAX_EPOCHS for m in value), name, tuple(value),
              f"must be epochs in [0, {MAX_EPOCHS}]")
    elif key == "phases":
      require(value in loop.SCHEDULES, name, value, f"choose one of {loop.SCHEDULES}")
    elif key == "mask_mode":
      require(value in loop.MASK_MODES, name, value, f"choose one of {loop.MASK_MODES}")


def batch_warnings(config: ml_collections.ConfigDict, *, train: int, retain: int, forget: int) -> list[str]:
  """One line for each batch size larger than the split it batches (``train``/``retain``/``forget`` rows).

  Such a batch is capped to the split (`unlearn_jax.train.fit`, `unlearn_jax.unlearning.loop`), i.e. one short
  batch per epoch, as a PyTorch DataLoader gives; this says so instead of refusing. ``config.method``'s
  ``batch_size`` is compared with the forget set, the smallest split it batches (the retain set for the methods
  in `RETAIN_BATCHED`), ``forget_batch_size`` with the forget set.
  """
  checks = [("train.batch_size", config.train.batch_size, train, "training"),
            ("retrain.batch_size", config.retrain.batch_size, retain, "retain")]
  method = config.method
  if "batch_size" in method:
    retain_only = method.name in RETAIN_BATCHED
    checks.append(("method.batch_size", method.batch_size, retain if retain_only else forget,
                   "retain" if retain_only else "forget"))
  if "forget_batch_size" in method:
    checks.append(("method.forget_batch_size", method.forget_batch_size, forget, "forget"))
  return [f"config.{key}={size} is larger than the {rows} {role} examples: capped to {rows} (one batch per "
          "epoch)" for key, size, rows, role in checks if size > rows]
