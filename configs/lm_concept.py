r"""Concept unlearning (only the forget people's names are given) vs sentence-level unlearning (their explicit
forget sentences, three relations held out), each with GA, GradDiff and NPO, scored by concept-level fact recall.

Command (2-core CPU, the ~1.1M-parameter tiny GPT of the LM study on the same fictitious facts; Original and
Retrain are those of the ``lm_unlearning`` study, trained first and cached in ``<cache_dir or workdir>/cache``):

  python -m experiments.main --config=configs/lm_concept.py --workdir=workdir/lm_concept

Reuse the models of an LM-study run with ``--config.cache_dir=workdir/lm_npo`` (same data, model and training
sections, so the same cache keys).

Measured from scratch (fresh workdir, 2026-12-03, quiet 2-core CPU): 9 min 48 s, Original and Retrain 207 s and
181 s of it (1,461 s earlier on the machine shared at load 5-9; 619 s with Original and Retrain restored).
Result: concept recall of the 20 forget people (all relations, original + paraphrased questions) falls from 0.630
(Original) to 0.013 / 0.007 / 0.005 with concept-level GA / GradDiff / NPO against 0.475 / 0.163 / 0.100 with
sentence-level, and on the held-out relations to 0.008-0.017 against 0.23-0.73; but the other people's fact recall
falls to 0.06-0.49 against 0.33-0.86 (the concept set is 5.7x larger, so it also gets more steps). Tables, the
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
