r"""mergekit's della_linear of 4 models fine-tuned on disjoint quarters of digits: magnitude-ranked drops
(0.5 +- 0.1) with L1-norm rescaling, deltas summed.

Command (2-core CPU, digits, MLP; about 15-30 s from scratch on a shared CPU: the 2-epoch Original, the
fine-tunes, the merge and the scoring; about 6 s once the cached checkpoints are restored):

  python -m experiments.main --config=configs/merge_della_linear.py --workdir=workdir/merge_della_linear

Measured (seed 0; test accuracy): the Original, trained 2 epochs as the "pre-trained" base, 94.72%;
inputs 94.72 / 96.39 / 96.67 / 95.56% (mean 95.83%); della_linear 96.11%.

Reference: Deep et al., arXiv:2406.11617; mergekit's della_linear.
Pipeline: unlearn_jax/studies/merge.py; all methods side by side: benchmarks/RESULTS.md.
"""
from unlearn_jax.studies import merge


def get_config(arg: str | None = None):
  return merge.merge_config("della_linear", arg, density=0.5, epsilon=0.1, scale=0.25)
