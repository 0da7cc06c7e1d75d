r"""PDU: flatten the forget logits towards uniform under a retain-loss constraint, solved primal-dual (the
retain weight is a dual variable updated every step).

Command (2-core CPU, the ~1.2M-parameter tiny GPT on ~2,100 fictitious QAs; Original and Retrain are trained
first and cached in workdir/lm_pdu/cache):

  python -m experiments.main --config=configs/lm_pdu.py --workdir=workdir/lm_pdu

Smoke-sized variant (about a minute): ``--config=configs/lm_pdu.py:tiny_test``. Compare several methods in one
table with ``--config.compare="('pdu', 'npo')"``; any option with ``--config.methods.pdu.lr=1e-4`` etc.
The table of every method (with the relearning attack and the rephrased / few-shot probes) is in
benchmarks/RESULTS.md.

Reference: Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework for LLMs", 2025;
open-unlearning's PDU trainer.
Pipeline: unlearn_jax/studies/language.py; objective: unlearn_jax/unlearning/language/.
"""
from unlearn_jax.studies import language


def get_config(arg: str | None = None):
  return language.lm_config("pdu", arg)
