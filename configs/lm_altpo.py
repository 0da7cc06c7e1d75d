r"""AltPO: DPO preferring a plausible alternate answer (another value of the same kind) over the true forget
answer, plus retain NLL.

Command (2-core CPU, the ~1.2M-parameter tiny GPT on ~2,100 fictitious QAs; Original and Retrain are trained
first and cached in workdir/lm_altpo/cache):

  python -m experiments.main --config=configs/lm_altpo.py --workdir=workdir/lm_altpo

Smoke-sized variant (about a minute): ``--config=configs/lm_altpo.py:tiny_test``. Compare several methods in one
table with ``--config.compare="('altpo', 'npo')"``; any option with ``--config.methods.altpo.lr=1e-4`` etc.
The table of every method (with the relearning attack and the rephrased / few-shot probes) is in
benchmarks/RESULTS.md.

Reference: Mekala et al., "Alternate Preference Optimization for Unlearning Factual Knowledge in LLMs", COLING 2025;
open-unlearning's community/methods/AltPO (its DPO trainer on alternate answers).
Pipeline: unlearn_jax/studies/language.py; objective: unlearn_jax/unlearning/language/.
"""
from unlearn_jax.studies import language


def get_config(arg: str | None = None):
  return language.lm_config("altpo", arg)
