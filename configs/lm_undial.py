r"""UNDIAL: self-distillation towards the Original's next-token distribution with the true token's logit
lowered by beta (10).

Command (2-core CPU, the ~1.2M-parameter tiny GPT on ~2,100 fictitious QAs; Original and Retrain are trained
first and cached in workdir/lm_undial/cache):

  python -m experiments.main --config=configs/lm_undial.py --workdir=workdir/lm_undial

Smoke-sized variant (about a minute): ``--config=configs/lm_undial.py:tiny_test``. Compare several methods in one
table with ``--config.compare="('undial', 'npo')"``; any option with ``--config.methods.undial.lr=1e-4`` etc.
The table of every method (with the relearning attack and the rephrased / few-shot probes) is in
benchmarks/RESULTS.md.

Reference: Dong et al., "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in LLMs", NAACL 2025;
open-unlearning's UNDIAL trainer.
Pipeline: unlearn_jax/studies/language.py; objective: unlearn_jax/unlearning/language/.
"""
from unlearn_jax.studies import language


def get_config(arg: str | None = None):
  return language.lm_config("undial", arg)
