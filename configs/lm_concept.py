r"""Concept unlearning (only the forget people's names are given) vs sentence-level unlearning (their explicit
forget sentences, three relations held out), each with GA, GradDiff and NPO, scored by concept-level fact recall.

Command (2-core CPU, the ~1.1M-parameter tiny GPT of the LM study on the same fictitious facts; Original and
Retrain are those of the ``lm_unlearning`` study, trained first and cached in ``<cache_dir or workdir>/cache``):

  python -m experiments.main --config=configs/lm_concept.py --workdir=workdir/lm_concept

Reuse the models of an LM-study run with ``--config.cache_dir=workdir/lm_npo`` (same data, model and training
sections, so the same cache keys).

Measured on the 2-core CPU shared with other jobs (load 5-7): 619 s with Original and Retrain restored from the
cache. From scratch (fresh workdir, 2026-12-03, load 5-9): 1,461 s (24 min), over the 15-minute goal on the shared
machine; Original and Retrain took 534 s and 492 s of it (unmeasured on a quiet machine).
Result: concept recall of the 20 forget people (all relations, original + paraphrased questions) falls from 0.632
(Original) to 0.058 / 0.000 / 0.015 with concept-level GA / GradDiff / NPO against 0.422 / 0.347 / 0.215 with
sentence-level, and on the held-out relations to 0.008-0.025 against 0.38-0.63; but the other people's fact recall
falls to 0.18-0.36 against 0.50-0.80 (the concept set is 5.7x larger, so it also gets more steps). Tables, the
equal-steps control and the reading: benchmarks/RESULTS.md ("Concept unlearning").

Smoke-sized variant (about a minute): ``--config=configs/lm_concept.py:tiny_test``. One kind only:
``--config.forget.kind=concept``; other held-out relations: ``--config.forget.holdout_relations="('pet',)"``.

Reference: Yamashita et al., "Concept Unlearning in Large Language Models via Self-Constructed Knowledge
Triplets", arXiv:2509.15621, 2025. Pipeline: unlearn_jax/studies/lm_concept.py; method:
unlearn_jax/unlearning/language/concept.py.
"""
from unlearn_jax.studies import lm_concept


def get_config(arg: str | None = None):
  return lm_concept.concept_config(arg)
