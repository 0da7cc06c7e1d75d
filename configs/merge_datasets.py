r"""Merging two models trained on different datasets, without data, with the data and with condensed data
(Yamada et al., arXiv:2306.05641), on digits vs digits with permuted pixels (default) or MNIST-1D vs its
shuffled-sequence variant (``:mnist1d``).

Command (2-core CPU, MLP 256-256):

  python -m experiments.main --config=configs/merge_datasets.py --workdir=workdir/merge_datasets
  python -m experiments.main --config=configs/merge_datasets.py:mnist1d --workdir=workdir/merge_datasets_mnist1d

Measured from scratch on the shared 2-core CPU (load average 0.1-1.8): digits 142 s wall (188 s user CPU),
MNIST-1D 170 s; a rerun on the same workdir restores endpoints and condensed sets from the cache. Result (mean
accuracy over the two test sets): digits, one init: average = WM + average 83.6%, WM + RegMean with the data 96.5%,
with GM / DM condensed data 95.7 / 96.4%. With ``--config.merge_datasets.shared_init=false`` (142 s): WM + average
65.0%, STE + average with the data 87.2% (+22.2 pp), with GM / DM data 83.8 / 88.8%, WM + RegMean 96.3%.
MNIST-1D: WM + average 36.7%, WM + RegMean 58.9% (data), 48.6 / 53.6% (GM / DM). The full tables and a reading are
in the "Merging models trained on different datasets" section of benchmarks/RESULTS.md.

The pipeline (unlearn_jax/studies/merge_datasets.py) trains model A on dataset A and model B on dataset B from one
initialisation (as the reference code trains both with seed 0; ``--config.merge_datasets.shared_init=false``:
independent ones), condenses each
training set to 10 images per class by gradient matching and by distribution matching, and reports accuracy on
both test sets for the average, weight matching + average, and activation matching / STE / RegMean / Fisher with
the real data, with each condensed set, and a model trained on the condensed data only. Condensation runs far
fewer outer iterations than the reference code (DC 1,000, DM 20,000): 100 and 2,000 here, to fit a CPU.
``model.name=cnn1d`` for MNIST-1D needs a cnn1d permutation spec in unlearn_jax.merging.permutation.
"""
from unlearn_jax import config as config_lib
from unlearn_jax.studies import merge_datasets


def get_config(arg: str | None = None):
  """``arg``: None (digits) or ``mnist1d``."""
  config = config_lib.base_config()
  config.experiment = "merge_datasets"
  config.method.name = "original"  # unused by the study; kept valid for the shared validation
  config.merge_datasets = merge_datasets.default_options()
  if arg == "mnist1d":
    config.dataset.name = "mnist1d"
  elif arg:
    raise ValueError(f"config argument {arg!r}: choose none (digits) or 'mnist1d'")
  return config
