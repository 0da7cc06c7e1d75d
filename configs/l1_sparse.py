r"""l1-sparse: retain cross-entropy plus alpha_t·|theta|_1, alpha_t decaying linearly to 0 over the epochs.

Command (2-core CPU, digits, MLP 256-256, 10% random forget, the registered defaults):

  python -m experiments.main --config=configs/l1_sparse.py --workdir=workdir/l1_sparse

Measured runtime: 50 s with Original and Retrain restored from the cache (16.0 s of it the method, compilation
included), on the shared 2-core machine at load average 9.5; the first run trains them too (about 20 s more).

GPU command, CIFAR-10 (ResNet-18 trained 182 epochs, 10% random forget), with the reference settings:

  python -m experiments.main --config=configs/l1_sparse.py:cifar10 --workdir=workdir/l1_sparse_cifar10

The READMEs' FT_prune: SGD (momentum 0.9, weight decay 5e-4), lr 0.01, 10 epochs, batch 256; alpha 5e-4, the
registered default (the SalUn README passes a tuned ``--alpha``, the newest Unlearn-Sparse README 0.2).

Measured on digits, seed 0 (UA / RA / TA / MIA-efficacy in %; Avg. Gap = mean |difference| to Retrain):
  Retrain               3.5 / 100.0 / 96.7 /  6.2
  Original              0.0 / 100.0 / 97.5 /  0.0   gap 2.64
  l1_sparse (defaults)  0.0 / 100.0 / 97.5 /  0.0   gap 2.64 (no visible change on digits)
These are the reference settings, not tuned for digits.
"""
from unlearn_jax import config as config_lib


def get_config(arg: str | None = None):
  return config_lib.method_experiment("l1_sparse", arg, cifar10=dict(lr=0.01, epochs=10, batch_size=256, alpha=5e-4))
