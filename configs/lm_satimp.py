r"""SatImp: gradient ascent weighted per token by p^beta1 (1 - p)^beta2, plus retain NLL.

Command (2-core CPU, the ~1.2M-parameter tiny GPT on ~2,100 fictitious QAs; Original and Retrain are trained
first and cached in workdir/lm_satimp/cache):

  python -m experiments.main --config=configs/lm_satimp.py --workdir=workdir/lm_satimp

Smoke-sized variant (about a minute): ``--config=configs/lm_satimp.py:tiny_test``. Compare several methods in one
table with ``--config.compare="('satimp', 'npo')"``; any option with ``--config.methods.satimp.lr=1e-4`` etc.
The table of every method (with the relearning attack and the rephrased / few-shot probes) is in
benchmarks/RESULTS.md.

Reference: Yang et al., "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", ICML 2025;
open-unlearning's SatImp trainer.
Pipeline: unlearn_jax/studies/language.py; objective: unlearn_jax/unlearning/language/.
"""
from unlearn_jax.studies import language


def get_config(arg: str | None = None):
  return language.lm_config("satimp", arg)
