r"""IU (wfisher): one step theta + alpha·F⁻¹v with the WoodFisher inverse of the retain Fisher.

Command (2-core CPU, digits, MLP 256-256, 10% random forget, the registered defaults except alpha):

  python -m experiments.main --config=configs/wfisher.py --workdir=workdir/wfisher

Measured runtime: 32 s with Original and Retrain restored from the cache (17.8 s of it the method, compilation
included), on the shared 2-core machine at load average 8.5; the first run trains them too (about 20 s more).

The same method as ``influence`` under the reference's name. On digits ``alpha=50`` (tuned in
configs/influence.py; alpha 0.2 leaves the Original unchanged here).

GPU command, CIFAR-10 (ResNet-18 trained 182 epochs, 10% random forget), with the reference settings:

  python -m experiments.main --config=configs/wfisher.py:cifar10 --workdir=workdir/wfisher_cifar10

The Unlearn-Sparse README's ``wfisher``: alpha 0.2 (its argparse default; the SalUn README passes a tuned
``--alpha``), damping 1, 1,000 retain gradients.

Measured on digits, seed 0 (UA / RA / TA / MIA-efficacy in %; Avg. Gap = mean |difference| to Retrain):
  Retrain               3.5 / 100.0 / 96.7 /  6.2
  Original              0.0 / 100.0 / 97.5 /  0.0   gap 2.64
  wfisher, alpha=50     0.0 / 100.0 / 96.7 /  2.1   gap 1.91
"""
from unlearn_jax import config as config_lib


def get_config(arg: str | None = None):
  return config_lib.method_experiment("wfisher", arg, digits=dict(alpha=50.0))
