"""unlearn_jax: machine unlearning and model merging as pure functions over JAX parameter pytrees.

Public namespaces (imported on first use, so ``import unlearn_jax`` stays light): `unlearning` (every method, called
with keyword options), `merging`, `evaluation`, `data` and `models`; the `Model` contract with its adapters
(`init`, `from_linen`, `from_nnx`) and `Split` at the top level. Each namespace lists its API in ``__all__``.

Example:
    >>> import unlearn_jax
    >>> model, params, state = unlearn_jax.from_nnx(net)   # your own NNX network
    >>> params, state = unlearn_jax.unlearning.salun(model, params, state, forget, retain,
    ...                                              rng=jax.random.key(0), lr=0.01, epochs=5)
"""
import importlib

from unlearn_jax.model import Model, init, from_linen, from_nnx
from unlearn_jax.data.split import Split

__version__ = "0.1.0"

_NAMESPACES = ("data", "evaluation", "merging", "models", "unlearning")


def __getattr__(name: str):
  if name in _NAMESPACES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Model", "Split", "from_linen", "from_nnx", "init", *_NAMESPACES]
