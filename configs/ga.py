r"""GA (gradient ascent): maximise the cross-entropy of the forget set.

Command (2-core CPU, digits, MLP 256-256, 10% random forget, the registered defaults):

  python -m experiments.main --config=configs/ga.py --workdir=workdir/ga

Measured runtime: 21 s with Original and Retrain restored from the cache (6.2 s of it the method, compilation
included), on the shared 2-core machine at load average 7.5; the first run trains them too (about 20 s more).

GPU command, CIFAR-10 (ResNet-18 trained 182 epochs, 10% random forget), with the reference settings:

  python -m experiments.main --config=configs/ga.py:cifar10 --workdir=workdir/ga_cifar10

The READMEs' GA: SGD (momentum 0.9, weight decay 5e-4), lr 1e-4, 5 epochs, batch 256.

Measured on digits, seed 0 (UA / RA / TA / MIA-efficacy in %; Avg. Gap = mean |difference| to Retrain):
  Retrain               3.5 / 100.0 / 96.7 /  6.2
  Original              0.0 / 100.0 / 97.5 /  0.0   gap 2.64
  ga (defaults)         0.0 / 100.0 / 97.5 /  0.0   gap 2.64 (5 steps at lr 1e-4 change nothing on digits)
These are the reference settings, not tuned for digits.
"""
from unlearn_jax import config as config_lib


def get_config(arg: str | None = None):
  return config_lib.method_experiment("ga", arg, cifar10=dict(lr=1e-4, epochs=5, batch_size=256))
