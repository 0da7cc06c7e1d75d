r"""NegGrad+: beta·CE(retain) − (1 − beta)·CE(forget) on one forget and one retain batch per step.

Command (2-core CPU, digits, MLP 256-256, 10% random forget, the registered defaults):

  python -m experiments.main --config=configs/neggrad_plus.py --workdir=workdir/neggrad_plus

Measured runtime: 31 s with Original and Retrain restored from the cache (9.9 s of it the method, compilation
included), on the shared 2-core machine at load average 7.7; the first run trains them too (about 20 s more).

GPU command, CIFAR-10 (ResNet-18 trained 182 epochs, 10% random forget), with the reference settings:

  python -m experiments.main --config=configs/neggrad_plus.py:cifar10 --workdir=workdir/neggrad_plus_cifar10

The registered defaults (SGD, momentum 0.9, weight decay 5e-4, lr 0.01, 10 epochs, beta 0.95, retain batches of 64
as the SCRUB code's NegGrad+; SalUn / Unlearn-Sparse have no NegGrad+).

Measured on digits, seed 0 (UA / RA / TA / MIA-efficacy in %; Avg. Gap = mean |difference| to Retrain):
  Retrain               3.5 / 100.0 / 96.7 /  6.2
  Original              0.0 / 100.0 / 97.5 /  0.0   gap 2.64
  neggrad_plus          0.0 / 100.0 / 97.5 /  0.7   gap 2.47
These are the reference settings, not tuned for digits.
"""
from unlearn_jax import config as config_lib


def get_config(arg: str | None = None):
  return config_lib.method_experiment("neggrad_plus", arg)
