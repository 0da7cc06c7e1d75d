r"""DELLA: magnitude-ranked keep probabilities in [0.4, 0.6], rescale, TIES combine (4 inputs).

Command (2-core CPU, digits, MLP; about 18 s from scratch (30 s with other jobs sharing the CPU): the 2-epoch
Original, the fine-tunes, the merge and the scoring; about 6 s once the cached checkpoints are restored):

  python -m experiments.main --config=configs/merge_della.py --workdir=workdir/merge_della

Measured (seed 0; test accuracy): the Original, trained 2 epochs as the "pre-trained" base, 94.72%;
inputs 94.72 / 96.39 / 96.67 / 95.56% (mean 95.83%); DELLA 97.22%, above the best input.

Multi-task variant (``--config.merge.data=classes --config.merge.k=5``: input i fine-tunes on the classes
c with c % 5 == i only, and scores 27-54% TA): 76.11%.

Reference: Deep et al., arXiv:2406.11617, 2024.
Pipeline: unlearn_jax/studies/merge.py; all methods side by side: benchmarks/RESULTS.md.
"""
from unlearn_jax.studies import merge


def get_config(arg: str | None = None):
  return merge.merge_config("della", arg, density=0.5, epsilon=0.1)
