r"""RL (random labels): cross-entropy to random labels on the forget set, then on the retain set.

Command (2-core CPU, digits, MLP 256-256, 10% random forget, the registered defaults):

  python -m experiments.main --config=configs/rl.py --workdir=workdir/rl

Measured runtime: 53 s with Original and Retrain restored from the cache (17.9 s of it the method, compilation
included), on the shared 2-core machine at load average 9.2; the first run trains them too (about 20 s more).

GPU command, CIFAR-10 (ResNet-18 trained 182 epochs, 10% random forget), with the reference settings:

  python -m experiments.main --config=configs/rl.py:cifar10 --workdir=workdir/rl_cifar10

SalUn's ``main_random.py`` RL (SalUn without a mask): SGD (momentum 0.9, weight decay 5e-4), lr 0.01, 10 epochs,
batch 256, labels drawn over all classes, the true one included.

Measured on digits, seed 0 (UA / RA / TA / MIA-efficacy in %; Avg. Gap = mean |difference| to Retrain):
  Retrain               3.5 / 100.0 / 96.7 /  6.2
  Original              0.0 / 100.0 / 97.5 /  0.0   gap 2.64
  rl (defaults)         0.0 /  99.9 / 95.8 / 22.9   gap 5.26 (MIA-efficacy overshoots Retrain's)
These are the reference settings, not tuned for digits.
"""
from unlearn_jax import config as config_lib


def get_config(arg: str | None = None):
  return config_lib.method_experiment("rl", arg, cifar10=dict(lr=0.01, epochs=10, batch_size=256))
