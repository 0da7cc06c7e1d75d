r"""CE-U: cross-entropy towards the model's own distribution with the true token removed (forget set only).

Command (2-core CPU, the ~1.2M-parameter tiny GPT on ~2,100 fictitious QAs; Original and Retrain are trained
first and cached in workdir/lm_ceu/cache):

  python -m experiments.main --config=configs/lm_ceu.py --workdir=workdir/lm_ceu

Smoke-sized variant (about a minute): ``--config=configs/lm_ceu.py:tiny_test``. Compare several methods in one
table with ``--config.compare="('ceu', 'npo')"``; any option with ``--config.methods.ceu.lr=1e-4`` etc.
The table of every method (with the relearning attack and the rephrased / few-shot probes) is in
benchmarks/RESULTS.md.

Reference: Yang et al., "CE-U: Cross Entropy Unlearning", 2025; open-unlearning's CEU trainer.
Pipeline: unlearn_jax/studies/language.py; objective: unlearn_jax/unlearning/language/.
"""
from unlearn_jax.studies import language


def get_config(arg: str | None = None):
  return language.lm_config("ceu", arg)
