r"""Git Re-Basin on digits: two MLPs from different seeds, joined naively and after permutation alignment.

Command (2-core CPU, digits, MLP 256-256; about 25 s of CPU time, 65 s of wall time on a shared 2-core machine
the first time, about 30 s when the two cached endpoints are restored):

  python -m experiments.main --config=configs/rebasin.py --workdir=workdir/rebasin

Trains models A and B (seeds 1 and 2, same data and schedule as configs/original.py), aligns B to A by no
permutation (naive), weight matching, activation matching and the straight-through estimator, and measures loss
and accuracy at 25 points of the straight line from A to B on the train and test sets, without and with REPAIR.
Also reports the L2 distance between A and the aligned B for each method (arXiv:2402.04051: weight matching barely
reduces it), and merges four models (seeds 1-4) by averaging them after aligning them to A by no permutation,
weight matching (each to A, and MergeMany's 3 rounds) and the straight-through estimator.
Writes results.json, results.md, curves.json and rebasin.png to the workdir.

Expected result (measured): endpoints at train loss 0.004 and test accuracy 0.98 / 0.97; train loss barrier
naive 0.471, weight matching 0.060 (ratio 0.13, well under 1/3), activation
matching 0.055, STE 0.045; with REPAIR naive 0.102, weight 0.030, activation 0.032, STE 0.022. Test loss
barriers: naive 0.438, weight 0.061, activation 0.022, STE 0.037. L2 distance A to aligned B: naive 31.64,
weight 27.38 (0.865 of it), activation 29.32, STE 27.35. Four models averaged, test accuracy: no alignment 55.8%,
weight 94.2%, MergeMany 93.6%, STE 96.1% (endpoints 97.6%); 80 s wall from scratch on a loaded 2-core CPU. The
same numbers on every run (same seeds, same backend). The pipeline is registered by importing unlearn_jax.studies.lmc.
Variants: ``get_config('cnn')``, ``get_config('vgg11_bn')`` (use ``--config.lmc.corrections=reset_bn,repair``
for BatchNorm networks: naively interpolated running statistics are meaningless); GPU, CIFAR-10 (not run yet):

  python -m experiments.main --config=configs/rebasin.py:vgg16_bn --config.dataset.name=cifar10 \
    --config.dataset.augment=cifar --config.train.epochs=100 --config.train.batch_size=128 \
    --config.lmc.corrections=reset_bn,repair --workdir=workdir/rebasin_cifar10
"""
import ml_collections

from unlearn_jax import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.experiment = "rebasin"
  config.method.name = "original"  # unused by the study; kept valid for the shared validation
  config.lmc = ml_collections.ConfigDict(dict(
      seeds=(1, 2), methods=("naive", "weight", "activation", "ste"), corrections=("none", "repair"),
      num_points=25, calibrate=False, max_iter=100, matching_seed=0, ste_epochs=5, ste_batch_size=128,
      ste_learning_rate=1e-3, batch_size=1024, merge_seeds=(3, 4),
      merge_methods=("average", "weight", "merge_many", "ste"), merge_rounds=3))
  return config_lib.apply_model_arg(config, arg)
