"""Datasets as normalised device arrays: `Dataset` and the `load_dataset` registry.

Known names:
  * ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits (shipped with scikit-learn, no download), split
    into train/test by a seeded stratified split. The embedded default.
  * ``"synthetic"``: class-conditional Gaussians of any image shape, generated from the seed. For benchmarks.
  * ``"mnist1d"``: MNIST-1D (Greydanus 2020), 1-D signals of length 40 generated locally from the ``mnist1d``
    package's digit templates (no download). Default 4,000 train / 1,000 test; ``x`` is ``(N, 40, 1)``.
  * ``"cifar10"``, ``"cifar100"``, ``"svhn_cropped"``, ``"mnist"``, ``"fashion_mnist"``: TFDS datasets read
    into memory with `tfds.data_source` (no TensorFlow); their ``train`` and ``test`` splits.

Every dataset comes as float32 channel-last arrays (NHWC images, or NLC signals for MNIST-1D) normalised per channel, int32 labels, and ``index`` = the row number
of each example in its split (``train.index == arange(len(train))``), so rows selected from ``train`` by a forget
split keep the row they came from.

Example:
    >>> ds = load_dataset("digits", seed=0)
    >>> ds.train.x.shape, ds.test.x.shape, ds.num_classes   # (1437, 8, 8, 1), (360, 8, 8, 1), 10
    >>> c100 = load_dataset("cifar100", label="coarse")       # 20 superclasses, fine labels kept
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import inspect
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import files
from unlearn_jax.data import tfds_source
from unlearn_jax.data.split import Split

NORMALIZATIONS = ("train", "standard", "none")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A classification dataset held as device arrays.

  Attributes:
    name: Registry name, e.g. ``"cifar10"``.
    train: Training split: ``x`` float32 ``(N, H, W, C)`` normalised, ``y`` int32 ``(N,)``, ``index`` int32 row
      numbers ``0..N-1``.
    test: Test split, same layout.
    num_classes: Number of classes of ``y``.
    image_shape: ``(H, W, C)``.
    mean: Per-channel mean subtracted from the [0, 1]-scaled images.
    std: Per-channel standard deviation the centred images were divided by.
    fine_labels_train: Fine labels of the train rows when ``y`` holds coarse labels (CIFAR-100 superclasses),
      else None.
    fine_labels_test: Fine labels of the test rows, likewise.
    num_fine_classes: Number of fine classes when fine labels are present, else None.
  """
  name: str
  train: Split
  test: Split
  num_classes: int
  image_shape: tuple[int, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  fine_labels_train: np.ndarray | None = None
  fine_labels_test: np.ndarray | None = None
  num_fine_classes: int | None = None

  def denormalize(self, x: jax.Array) -> jax.Array:
    """Maps normalised images back to the [0, 1] scale."""
    return x * jnp.asarray(self.std, x.dtype) + jnp.asarray(self.mean, x.dtype)


def _channel_stats(x: np.ndarray, normalization: str, standard: tuple | None):
  """Per-channel ``(mean, std)`` tuples for images ``x`` in [0, 1] under the ``normalization`` option."""
  channels = x.shape[-1]
  if normalization == "train":
    mean = [float(x[..., c].mean(dtype=np.float64)) for c in range(channels)]
    std = [float(x[..., c].std(dtype=np.float64)) or 1.0 for c in range(channels)]
    return tuple(mean), tuple(std)
  if normalization == "none":
    return (0.0,) * channels, (1.0,) * channels
  if normalization == "standard" and standard is not None:
    return standard
  known = NORMALIZATIONS if standard is not None else tuple(n for n in NORMALIZATIONS if n != "standard")
  raise ValueError(f"normalization={normalization!r} is not one of {known} for this dataset")


def _device_split(x: np.ndarray, y: np.ndarray, mean, std) -> Split:
  x = (np.asarray(x, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return Split(jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.arange(len(y), dtype=jnp.int32))


def from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    normalization: str = "train",
    standard_stats: tuple | None = None,
    fine_labels_train: np.ndarray | None = None,
    fine_labels_test: np.ndarray | None = None,
    num_fine_classes: int | None = None,
) -> Dataset:
  """Builds a `Dataset` from NHWC images in [0, 1] and integer labels held in numpy.

  Args:
    name: Dataset name.
    x_train: Train images, ``(N, H, W, C)``, values in [0, 1] (or 1-D signals ``(N, L, C)``).
    y_train: Train labels, ``(N,)``.
    x_test: Test images, ``(M, H, W, C)``.
    y_test: Test labels, ``(M,)``.
    num_classes: Number of classes.
    normalization: ``"train"`` (per-channel statistics of ``x_train``), ``"standard"`` (``standard_stats``) or
      ``"none"``.
    standard_stats: Published ``(mean, std)`` for ``normalization="standard"``.
    fine_labels_train: Fine labels of the train rows when ``y_train`` holds coarse labels.
    fine_labels_test: Fine labels of the test rows, likewise.
    num_fine_classes: Number of fine classes (required with fine labels).

  Returns:
    The `Dataset`, arrays on the default device.

  Raises:
    ValueError: If images are not 4-D, ``normalization`` is unknown or the fine-label arguments are incomplete.
  """
  if x_train.ndim not in (3, 4) or x_test.ndim != x_train.ndim or x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError("inputs must be NHWC images (or NLC signals) of one shape, got x_train "
                     f"{x_train.shape} and x_test {x_test.shape}")
  has_fine = (fine_labels_train is not None, fine_labels_test is not None, num_fine_classes is not None)
  if any(has_fine) and not all(has_fine):
    raise ValueError("fine_labels_train, fine_labels_test and num_fine_classes must be given together")
  as_labels = lambda a: None if a is None else np.asarray(a, np.int32)
  mean, std = _channel_stats(x_train, normalization, standard_stats)
  return Dataset(
      name=name,
      train=_device_split(x_train, y_train, mean, std),
      test=_device_split(x_test, y_test, mean, std),
      num_classes=int(num_classes),
      image_shape=tuple(x_train.shape[1:]),
      mean=mean,
      std=std,
      fine_labels_train=as_labels(fine_labels_train),
      fine_labels_test=as_labels(fine_labels_test),
      num_fine_classes=num_fine_classes,
  )


def _check_fraction(name: str, value: float) -> None:
  if not 0.0 < value < 1.0:
    raise ValueError(f"{name} must be in (0, 1), got {value}")


def _check_positive(**values: int) -> None:
  for key, value in values.items():
    if int(value) != value or value <= 0:
      raise ValueError(f"{key} must be a positive integer, got {value!r}")


def load_digits(*, seed: int = 0, data_dir: str | None = None, test_fraction: float = 0.2,
                normalization: str = "train") -> Dataset:
  """scikit-learn's 8x8 digits (1,797 images, 10 classes) with a seeded stratified train/test split.

  Pixels (0..16) are scaled to [0, 1], then normalised. The test split holds ``ceil(test_fraction * 1797)``
  images (scikit-learn's rounding), stratified by class; both splits keep the rows in their original order.

  Args:
    seed: Seed of the train/test split.
    data_dir: Unused (the data ships with scikit-learn).
    test_fraction: Fraction of the images in the test split, in (0, 1).
    normalization: ``"train"`` or ``"none"``.

  Returns:
    The `Dataset` named ``"digits"``.
  """
  from sklearn import datasets as sk_datasets  # pylint: disable=import-outside-toplevel
  from sklearn import model_selection  # pylint: disable=import-outside-toplevel

  del data_dir
  _check_fraction("test_fraction", test_fraction)
  digits = sk_datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  train_rows, test_rows = model_selection.train_test_split(
      np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed)
  train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)
  return from_arrays("digits", x[train_rows], y[train_rows], x[test_rows], y[test_rows], num_classes=10,
                     normalization=normalization)


def load_synthetic(*, seed: int = 0, data_dir: str | None = None, image_shape: tuple = (32, 32, 3),
                   num_train: int = 5000, num_test: int = 1000, num_classes: int = 10, noise: float = 1.0,
                   normalization: str = "train") -> Dataset:
  """Class-conditional Gaussians: ``x = template[y] + noise * N(0, I)``, templates drawn as ``N(0, I)`` images.

  Labels cycle through the classes (balanced, shuffled). Two templates are about ``sqrt(2 * prod(image_shape))``
  apart, so a model separates the classes easily at ``noise`` of order 1 and the task gets harder as ``noise``
  grows. Templates, train and test come from independent streams of ``seed``: the test set does not change
  with ``num_train``.

  Args:
    seed: Seed of templates, labels and noise.
    data_dir: Unused.
    image_shape: ``(H, W, C)`` of each example.
    num_train: Train examples.
    num_test: Test examples.
    num_classes: Number of classes.
    noise: Per-pixel noise standard deviation (the templates have unit per-pixel variance).
    normalization: ``"train"`` or ``"none"``.

  Returns:
    The `Dataset` named ``"synthetic"``.
  """
  del data_dir
  image_shape = tuple(image_shape)
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
  _check_positive(num_train=num_train, num_test=num_test, num_classes=num_classes, **{
      f"image_shape[{i}]": d for i, d in enumerate(image_shape)})
  if noise < 0:
    raise ValueError(f"noise must be non-negative, got {noise}")
  template_rng, train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
  templates = template_rng.standard_normal((num_classes,) + image_shape, dtype=np.float32)

  def sample(rng, n):
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    return templates[y] + np.float32(noise) * rng.standard_normal((n,) + image_shape, dtype=np.float32), y

  (x_train, y_train), (x_test, y_test) = sample(train_rng, num_train), sample(test_rng, num_test)
  return from_arrays("synthetic", x_train, y_train, x_test, y_test, num_classes=num_classes,
                     normalization=normalization)


def _mnist1d_arrays(num_samples: int, shuffle_seq: bool, template_seed: int, data_dir) -> dict:
  """``make_dataset``'s ``x``, ``y``, ``x_test``, ``y_test``, kept in ``data_dir`` (default the user cache,
  `unlearn_jax.files.user_cache_dir`) as an ``.npz`` keyed by the arguments and the package version: generating
  5,000 signals takes seconds, reading them milliseconds."""
  try:
    version = importlib.metadata.version("mnist1d")
  except importlib.metadata.PackageNotFoundError:  # pragma: no cover
    version = "unknown"
  name = f"mnist1d-{version}-n{num_samples}-shuffle{int(shuffle_seq)}-seed{template_seed}.npz"
  path = os.path.join(data_dir or files.user_cache_dir("mnist1d"), name)
  keys = ("x", "y", "x_test", "y_test")
  try:
    with np.load(path) as stored:
      return {k: stored[k] for k in keys}
  except (OSError, KeyError, ValueError):
    pass
  try:
    from mnist1d import data as mnist1d_data  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - a declared dependency
    raise ImportError("dataset 'mnist1d' needs the mnist1d package: pip install mnist1d") from e
  args = mnist1d_data.get_dataset_args()
  args.num_samples, args.shuffle_seq, args.seed = num_samples, shuffle_seq, template_seed
  saved = np.random.get_state()
  try:
    raw = mnist1d_data.make_dataset(args)
  finally:
    np.random.set_state(saved)
  raw = {k: np.asarray(raw[k]) for k in keys}
  def write(tmp):
    with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
      np.savez(f, **raw)

  try:
    files.atomic_file(path, write)
  except OSError:  # a read-only cache: generate every time
    pass
  return raw


def load_mnist1d(*, seed: int = 0, data_dir: str | None = None, num_samples: int = 5000, shuffle_seq: bool = False,
                 template_seed: int = 42, normalization: str = "train") -> Dataset:
  """MNIST-1D: 10 classes of length-40 1-D signals, generated locally by the ``mnist1d`` package.

  The package's ``make_dataset(get_dataset_args())`` builds every example from its 10 digit templates by padding,
  shearing, scaling, translation and correlated plus i.i.d. noise; the first 80% of the shuffled rows are the train
  split (4,000 of the default 5,000), the rest the test split. Nothing is downloaded (the package's
  ``get_dataset``, which downloads, is never called), and the result depends only on ``num_samples``,
  ``shuffle_seq`` and ``template_seed``: the default is the canonical MNIST-1D of the package (its seed 42), the
  same for every experiment seed, so the experiment ``seed`` only chooses forget sets, initialisation and order.
  The package seeds NumPy's global generator; its state is saved and restored around the call.

  MNIST-1D separates models where digits does not: an MLP fits its training set perfectly but reaches only about
  60-70% test accuracy (a 1-D CNN about 90%+), so a model that never saw an example differs clearly from one that did.

  Args:
    seed: Unused (see above).
    data_dir: Where the generated arrays are kept (default ``~/.cache/unlearn_jax/mnist1d``); later calls with the
      same arguments read them instead of generating them again.
    num_samples: Total examples (train + test), a multiple of 10 of at least 20 (e.g. 20000 for a larger set).
    shuffle_seq: Apply one fixed random permutation to the 40 positions of every signal (the package's spatially
      shuffled variant, which removes the spatial prior that convolutions use).
    template_seed: The package's generator seed.
    normalization: ``"train"`` (mean and std of the train signals) or ``"none"`` (the package's standardised values).

  Returns:
    The `Dataset` named ``"mnist1d"``, ``x`` of shape ``(N, 40, 1)``.

  References:
    Greydanus, "Scaling Down Deep Learning", arXiv:2011.14439 (2020); Greydanus and Kobak, "Scaling Down Deep
    Learning with MNIST-1D", ICML 2024.

  Example:
    >>> ds = load_mnist1d()
    >>> ds.train.x.shape, ds.test.x.shape   # (4000, 40, 1), (1000, 40, 1)
  """
  del seed
  _check_positive(num_samples=num_samples)
  if num_samples < 20 or num_samples % 10:
    raise ValueError(f"num_samples must be a multiple of 10 of at least 20, got {num_samples}")
  raw = _mnist1d_arrays(int(num_samples), bool(shuffle_seq), int(template_seed), data_dir)
  x_train, x_test = (np.asarray(raw[k], np.float32)[..., None] for k in ("x", "x_test"))
  return from_arrays("mnist1d", x_train, np.asarray(raw["y"]), x_test, np.asarray(raw["y_test"]), num_classes=10,
                     normalization=normalization)


def load_tfds(name: str, *, seed: int = 0, data_dir: str | None = None, download: bool = True,
              label: str | None = None, normalization: str = "standard", max_train: int | None = None,
              max_test: int | None = None) -> Dataset:
  """A TFDS image dataset's ``train`` and ``test`` splits, read into memory with `tfds.data_source`.

  Args:
    name: One of ``tfds_source.TFDS_INFO``: cifar10, cifar100, svhn_cropped, mnist, fashion_mnist.
    seed: Unused (the TFDS splits are fixed).
    data_dir: TFDS data directory.
    download: Whether TFDS may download and prepare the dataset.
    label: cifar100 only: ``"fine"`` (100 classes, default) or ``"coarse"`` (20 superclasses; the fine labels
      are kept in ``fine_labels_train``/``fine_labels_test`` for sub-class forgetting).
    normalization: ``"standard"`` (published per-channel constants), ``"train"`` or ``"none"``.
    max_train: Keep only the first ``max_train`` train rows (for quick runs).
    max_test: Keep only the first ``max_test`` test rows.

  Returns:
    The `Dataset`.
  """
  del seed
  info = tfds_source.TFDS_INFO[name]
  if label is not None and name != "cifar100":
    raise ValueError(f"option label={label!r} is only for 'cifar100', not {name!r}")
  if label not in (None, "fine", "coarse"):
    raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
  coarse = label == "coarse"
  keys = ("image", "label", "coarse_label") if coarse else ("image", "label")
  read = {split: tfds_source.read_tfds_split(name, split, keys=keys, data_dir=data_dir, download=download,
                                             limit=limit)
          for split, limit in (("train", max_train), ("test", max_test))}
  images = {split: arrays["image"].astype(np.float32) / 255.0 for split, arrays in read.items()}
  label_key = "coarse_label" if coarse else "label"
  fine = dict(fine_labels_train=read["train"]["label"], fine_labels_test=read["test"]["label"],
              num_fine_classes=info.num_classes) if coarse else {}
  return from_arrays(
      name, images["train"], read["train"][label_key], images["test"], read["test"][label_key],
      num_classes=tfds_source.CIFAR100_NUM_COARSE if coarse else info.num_classes,
      normalization=normalization, standard_stats=(info.mean, info.std), **fine)


Loader = Callable[..., Dataset]
_REGISTRY: dict[str, Loader] = {"digits": load_digits, "synthetic": load_synthetic, "mnist1d": load_mnist1d}


def register_dataset(name: str, loader: Loader) -> None:
  """Adds ``loader(*, seed, data_dir, **options) -> Dataset`` to the registry under ``name``.

  Raises:
    ValueError: If ``name`` is already registered.
  """
  if name in _REGISTRY:
    raise ValueError(f"dataset {name!r} is already registered")
  _REGISTRY[name] = loader


for _name in tfds_source.TFDS_INFO:
  register_dataset(_name, functools.partial(load_tfds, _name))


def dataset_names() -> tuple[str, ...]:
  """The names `load_dataset` knows, sorted."""
  return tuple(sorted(_REGISTRY))


def load_dataset(name: str, *, seed: int = 0, data_dir: str | None = None, **options) -> Dataset:
  """Loads the dataset ``name`` with its ``options`` (see the module docstring and each ``load_*`` function).

  Args:
    name: A registered name (`dataset_names`).
    seed: Seed of whatever the dataset draws at random (digits' train/test split, synthetic data).
    data_dir: Data directory for datasets that read files (TFDS).
    **options: Dataset-specific keyword options, e.g. ``test_fraction`` for digits, ``label`` for cifar100.

  Returns:
    The `Dataset`.

  Raises:
    ValueError: If ``name`` is unknown (the message lists the known names) or an option is not accepted.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
  loader = _REGISTRY[name]
  params = inspect.signature(loader).parameters
  accepted = [p for p in params if p not in ("seed", "data_dir")]
  unknown = sorted(set(options) - set(accepted))
  takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
  if unknown and not takes_any:
    raise ValueError(f"dataset {name!r} does not accept option(s) {unknown}; accepted options: {accepted}")
  return loader(seed=seed, data_dir=data_dir, **options)
