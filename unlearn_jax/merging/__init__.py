"""Model merging: pure functions from a list of parameter pytrees to one pytree."""
from unlearn_jax.merging.arithmetic import breadcrumbs
from unlearn_jax.merging.arithmetic import breadcrumbs_ties
from unlearn_jax.merging.arithmetic import dare
from unlearn_jax.merging.arithmetic import dare_linear
from unlearn_jax.merging.arithmetic import dare_ties
from unlearn_jax.merging.arithmetic import della
from unlearn_jax.merging.arithmetic import della_linear
from unlearn_jax.merging.arithmetic import fisher
from unlearn_jax.merging.arithmetic import karcher
from unlearn_jax.merging.arithmetic import linear
from unlearn_jax.merging.arithmetic import model_stock
from unlearn_jax.merging.arithmetic import multislerp
from unlearn_jax.merging.arithmetic import nearswap
from unlearn_jax.merging.arithmetic import negmerge
from unlearn_jax.merging.arithmetic import nuslerp
from unlearn_jax.merging.arithmetic import passthrough
from unlearn_jax.merging.arithmetic import regmean
from unlearn_jax.merging.arithmetic import sce
from unlearn_jax.merging.arithmetic import slerp
from unlearn_jax.merging.arithmetic import task_arithmetic
from unlearn_jax.merging.arithmetic import task_vectors
from unlearn_jax.merging.arithmetic import ties
from unlearn_jax.merging.statistics import collect_grams
from unlearn_jax.merging.statistics import fisher_diag

__all__ = [
    "breadcrumbs",
    "breadcrumbs_ties",
    "collect_grams",
    "dare",
    "dare_linear",
    "dare_ties",
    "della",
    "della_linear",
    "fisher",
    "fisher_diag",
    "karcher",
    "linear",
    "model_stock",
    "multislerp",
    "nearswap",
    "negmerge",
    "nuslerp",
    "passthrough",
    "regmean",
    "sce",
    "slerp",
    "task_arithmetic",
    "task_vectors",
    "ties",
]


def __getattr__(name):
  # connectivity and permutation pull in the evaluation stack (sklearn, flax): imported on first use, so that
  # `python -m experiments.merge` and the merges themselves start quickly.
  if name in ("connectivity", "permutation", "mergekit"):
    import importlib
    return importlib.import_module(f"unlearn_jax.merging.{name}")
  raise AttributeError(f"module 'unlearn_jax.merging' has no attribute {name!r}")
