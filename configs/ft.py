r"""FT (fine-tune): train the Original further on the retain set only (cross-entropy).

Command (2-core CPU, digits, MLP 256-256, 10% random forget, the registered defaults):

  python -m experiments.main --config=configs/ft.py --workdir=workdir/ft

Measured runtime: 18 s with Original and Retrain restored from the cache (4.7 s of it the method, compilation
included), on the shared 2-core machine at load average 6.7; the first run trains them too (about 20 s more).

GPU command, CIFAR-10 (ResNet-18 trained 182 epochs, 10% random forget), with the reference settings:

  python -m experiments.main --config=configs/ft.py:cifar10 --workdir=workdir/ft_cifar10

The SalUn / Unlearn-Sparse READMEs' FT: SGD (momentum 0.9, weight decay 5e-4), lr 0.01, 10 epochs, batch 256.

Measured on digits, seed 0 (UA / RA / TA / MIA-efficacy in %; Avg. Gap = mean |difference| to Retrain):
  Retrain               3.5 / 100.0 / 96.7 /  6.2
  Original              0.0 / 100.0 / 97.5 /  0.0   gap 2.64
  ft (defaults)         0.0 / 100.0 / 97.5 /  0.0   gap 2.64 (no change: the Original already fits the retain set)
These are the reference settings, not tuned for digits.
"""
from unlearn_jax import config as config_lib


def get_config(arg: str | None = None):
  return config_lib.method_experiment("ft", arg, cifar10=dict(lr=0.01, epochs=10, batch_size=256))
