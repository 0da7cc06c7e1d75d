r"""Width and linear mode connectivity on MNIST-1D: naive, temperature-calibrated and weight-matched barriers.

Does widening alone, with a softmax temperature, give linear mode connectivity without permutations
(Ito et al., arXiv:2510.08023)? For each width multiplier w, two pairs of models (seeds 1, 2 and 3, 4) are trained
on the same MNIST-1D data; B is joined to A naively and after weight matching, and the loss along the line is
measured at 11 points on train and test, with and without a temperature fitted per point (the calibrated barrier).
At the midpoint the study also reports LEWC (`connectivity.layerwise_connectivity`: is each layer of the merged
model ``0.5^l z_A + 0.5^l z_B``?) and the top-8 singular-subspace alignment of the weights before and after weight
matching (`permutation.singular_alignment`, arXiv:2402.04051). Writes results.json, results.md (the table),
curves.json and width_lmc.png (loss barrier against width).

Commands (2-core CPU, shared with other jobs: see benchmarks/RESULTS.md for the load):

  python -m experiments.main --config=configs/width_lmc.py --workdir=workdir/width_lmc_scratch
  python -m experiments.main --config=configs/width_lmc.py:cnn1d --workdir=workdir/width_lmc_cnn1d_scratch

- default (``mlp``): MLP with hidden sizes (16, 16) x w, w = 1, 2, 4, 8, 16, 32, 64 (up to 1024-1024), 20 epochs.
- ``cnn1d``: the MNIST-1D 1-D CNN with base channels (2, 2, 2) x w, w = 1, ..., 64 (up to 128 channels), 12 epochs
  (a small base because XLA's CPU 1-D convolutions are slow; the model's own 25-channel base was not tried).
- ``resnet20``: the earlier ResNet-20 x1, x2 study on 8x8 digits (one pair, BatchNorm reset), kept for comparison.

Measured from scratch (empty workdir, one run each, shared 2-core CPU at load average 6-8): mlp 4 min 12 s wall,
cnn1d 8 min 27 s wall; resnet20 not re-measured. Result (two pairs per width): weight matching cuts the test loss
barrier at every width (MLP 0.13-0.22 vs naive 1.0-1.3; cnn1d x8-x64 0.38-0.46 vs 1.6-1.7) and lifts the hidden
layers' top-8 singular alignment from chance (0.008 at MLP x64) to 0.12 (MLP x64) / 0.27-0.33 (cnn1d x64); but
no barrier falls clearly with width, naive or matched, and temperature calibration does not help at x64 (MLP test 1.00 ->
1.03); LEWC's residual stays 0.6-0.8 at the logits. Tables and reading: the "Width and linear mode connectivity"
section of benchmarks/RESULTS.md.
"""
import ml_collections

from unlearn_jax import config as config_lib

WIDTHS = (1, 2, 4, 8, 16, 32, 64)


def get_config(arg: str | None = None):
  """``arg``: None / ``'mlp'``, ``'cnn1d'`` or ``'resnet20'`` (see the module docstring)."""
  config = config_lib.base_config()
  config.experiment = "width_lmc"
  config.method.name = "original"  # unused by the study; kept valid for the shared validation
  config.lmc = ml_collections.ConfigDict(dict(
      seeds=(1, 2, 3, 4), widths=WIDTHS, methods=("naive", "weight"), corrections=("none",), num_points=11,
      calibrate=True, max_iter=100, matching_seed=0, batch_size=1000, channels=(), lewc=True, singular_k=8))
  config.dataset.name = "mnist1d"
  config.train.batch_size = 128
  arg = arg or "mlp"
  if arg == "mlp":
    config.model.hidden = (16, 16)
    config.train.epochs = 20
  elif arg == "cnn1d":
    config.model.name = "cnn1d"
    config.lmc.channels = (2, 2, 2)
    config.train.epochs = 12
  elif arg == "resnet20":
    config.dataset.name = "digits"
    config.model.name = "resnet20"
    config.train.epochs = 8
    config.lmc.update(dict(seeds=(1, 2), widths=(1, 2), corrections=("reset_bn",), batch_size=512, lewc=False,
                           singular_k=0))
  else:
    raise ValueError(f"config argument {arg!r}: choose 'mlp', 'cnn1d' or 'resnet20'")
  return config
