"""Study pipelines beyond unlearning; each module registers itself with `unlearn_jax.run.register_pipeline`."""
from unlearn_jax.studies import benchmark, lmc, merge  # noqa: F401
from unlearn_jax.studies import lm_concept  # noqa: F401
from unlearn_jax.studies import merge_datasets  # noqa: F401
from unlearn_jax.studies import diffusion  # noqa: F401
from unlearn_jax.studies import sweep  # noqa: F401
