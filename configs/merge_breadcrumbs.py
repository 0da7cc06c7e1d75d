r"""Model Breadcrumbs (mergekit's) of 4 models fine-tuned on disjoint quarters of digits: drop each task
vector's top 1% and keep the next 90% by magnitude, then sum.

Command (2-core CPU, digits, MLP; about 15-30 s from scratch on a shared CPU: the 2-epoch Original, the
fine-tunes, the merge and the scoring; about 6 s once the cached checkpoints are restored):

  python -m experiments.main --config=configs/merge_breadcrumbs.py --workdir=workdir/merge_breadcrumbs

Measured (seed 0; test accuracy): the Original, trained 2 epochs as the "pre-trained" base, 94.72%;
inputs 94.72 / 96.39 / 96.67 / 95.56% (mean 95.83%); breadcrumbs 95.83%.

Reference: Davari & Belilovsky, ECCV 2024; mergekit's breadcrumbs.
Pipeline: unlearn_jax/studies/merge.py; all methods side by side: benchmarks/RESULTS.md.
"""
from unlearn_jax.studies import merge


def get_config(arg: str | None = None):
  return merge.merge_config("breadcrumbs", arg, density=0.9, gamma=0.01)
