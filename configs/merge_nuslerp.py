r"""NuSLERP of 2 models fine-tuned from the Original on disjoint halves of digits: SLERP of their task vectors,
equal weights.

Command (2-core CPU, digits, MLP; about 15-30 s from scratch on a shared CPU: the 2-epoch Original, the
fine-tunes, the merge and the scoring; about 6 s once the cached checkpoints are restored):

  python -m experiments.main --config=configs/merge_nuslerp.py --workdir=workdir/merge_nuslerp

Measured (seed 0; test accuracy): the Original, trained 2 epochs as the "pre-trained" base, 94.72%;
inputs 96.94 / 96.94%; nuslerp 97.50%.

Reference: Shoemake, SIGGRAPH 1985; mergekit's nuslerp.
Pipeline: unlearn_jax/studies/merge.py; all methods side by side: benchmarks/RESULTS.md.
"""
from unlearn_jax.studies import merge


def get_config(arg: str | None = None):
  return merge.merge_config("nuslerp", arg)
