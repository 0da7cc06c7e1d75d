r"""mergekit's dare_linear of 4 models fine-tuned on disjoint quarters of digits: random drops to 50% with
L1-norm rescaling, deltas summed.

Command (2-core CPU, digits, MLP; about 15-30 s from scratch on a shared CPU: the 2-epoch Original, the
fine-tunes, the merge and the scoring; about 6 s once the cached checkpoints are restored):

  python -m experiments.main --config=configs/merge_dare_linear.py --workdir=workdir/merge_dare_linear

Measured (seed 0; test accuracy): the Original, trained 2 epochs as the "pre-trained" base, 94.72%;
inputs 94.72 / 96.39 / 96.67 / 95.56% (mean 95.83%); dare_linear 96.39%.

Reference: Yu et al., ICML 2024; mergekit's dare_linear.
Pipeline: unlearn_jax/studies/merge.py; all methods side by side: benchmarks/RESULTS.md.
"""
from unlearn_jax.studies import merge


def get_config(arg: str | None = None):
  return merge.merge_config("dare_linear", arg, density=0.5, scale=0.25)
