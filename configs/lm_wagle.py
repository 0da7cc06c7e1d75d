r"""WAGLE: NPO restricted (gradient mask) to the weights with the largest weight attribution for unlearning.

Command (2-core CPU, the ~1.2M-parameter tiny GPT on ~2,100 fictitious QAs; Original and Retrain are trained
first and cached in workdir/lm_wagle/cache):

  python -m experiments.main --config=configs/lm_wagle.py --workdir=workdir/lm_wagle

Smoke-sized variant (about a minute): ``--config=configs/lm_wagle.py:tiny_test``. Compare several methods in one
table with ``--config.compare="('wagle', 'npo')"``; any option with ``--config.methods.wagle.lr=1e-4`` etc.
The table of every method (with the relearning attack and the rephrased / few-shot probes) is in
benchmarks/RESULTS.md.

Reference: Jia et al., "WAGLE: Strategic Weight Attribution for Effective and Modular Unlearning in LLMs", NeurIPS 2024
(github.com/OPTML-Group/WAGLE).
Pipeline: unlearn_jax/studies/language.py; objective: unlearn_jax/unlearning/language/.
"""
from unlearn_jax.studies import language


def get_config(arg: str | None = None):
  return language.lm_config("wagle", arg)
