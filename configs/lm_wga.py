r"""WGA: gradient ascent weighted per token by p^beta, plus retain NLL.

Command (2-core CPU, the ~1.2M-parameter tiny GPT on ~2,100 fictitious QAs; Original and Retrain are trained
first and cached in workdir/lm_wga/cache):

  python -m experiments.main --config=configs/lm_wga.py --workdir=workdir/lm_wga

Smoke-sized variant (about a minute): ``--config=configs/lm_wga.py:tiny_test``. Compare several methods in one
table with ``--config.compare="('wga', 'npo')"``; any option with ``--config.methods.wga.lr=1e-4`` etc.
The table of every method (with the relearning attack and the rephrased / few-shot probes) is in
benchmarks/RESULTS.md.

Reference: Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond", ICLR 2025;
open-unlearning's WGA trainer.
Pipeline: unlearn_jax/studies/language.py; objective: unlearn_jax/unlearning/language/.
"""
from unlearn_jax.studies import language


def get_config(arg: str | None = None):
  return language.lm_config("wga", arg)
