r"""LFSSD: loss-free Selective Synaptic Dampening (importances from the logits' squared norm, no labels).

Command (2-core CPU, digits, MLP 256-256, 10% random forget, the registered defaults except alpha):

  python -m experiments.main --config=configs/lfssd.py --workdir=workdir/lfssd

Measured runtime: 20 s with Original and Retrain restored from the cache (5.1 s of it the method, compilation
included), on the shared 2-core machine at load average 8.9; the first run trains them too (about 20 s more).

On digits ``alpha=2``: with the reference's 10 no weight is selected here (the LFSSD importance ratios stay
below 4; see configs/ssd.py, whose ``:lfssd`` argument runs the reference alpha).

GPU command, CIFAR-10 (ResNet-18 trained 182 epochs, 10% random forget), with the reference settings:

  python -m experiments.main --config=configs/lfssd.py:cifar10 --workdir=workdir/lfssd_cifar10

The SSD reference's LFSSD defaults: alpha 10 (selection), lam 1 (dampening), batch-mean importances over batches of
128.

Measured on digits, seed 0 (UA / RA / TA / MIA-efficacy in %; Avg. Gap = mean |difference| to Retrain):
  Retrain               3.5 / 100.0 / 96.7 /  6.2
  Original              0.0 / 100.0 / 97.5 /  0.0   gap 2.64
  lfssd, alpha=2        0.0 / 100.0 / 97.5 /  0.7   gap 2.47
"""
from unlearn_jax import config as config_lib


def get_config(arg: str | None = None):
  return config_lib.method_experiment("lfssd", arg, digits=dict(alpha=2.0))
