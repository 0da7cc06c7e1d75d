r"""FLAT: maximise an f-divergence (Total-Variation) between an "I don't know" template answer and the forget answer,
using forget data only.

Command (2-core CPU, the ~1.2M-parameter tiny GPT on ~2,100 fictitious QAs; Original and Retrain are trained
first and cached in workdir/lm_flat/cache):

  python -m experiments.main --config=configs/lm_flat.py --workdir=workdir/lm_flat

Smoke-sized variant (about a minute): ``--config=configs/lm_flat.py:tiny_test``. Compare several methods in one
table with ``--config.compare="('flat', 'npo')"``; any option with ``--config.methods.flat.lr=1e-4`` etc.
The table of every method (with the relearning attack and the rephrased / few-shot probes) is in
benchmarks/RESULTS.md.

Reference: Wang et al., "LLM Unlearning via Loss Adjustment with Only Forget Data", ICLR 2025 (github.com/UCSC-REAL/FLAT).
Pipeline: unlearn_jax/studies/language.py; objective: unlearn_jax/unlearning/language/.
"""
from unlearn_jax.studies import language


def get_config(arg: str | None = None):
  return language.lm_config("flat", arg)
