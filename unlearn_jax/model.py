"""The Model contract and adapters from Flax Linen and NNX modules.

Every transform in unlearn_jax runs a network through one function::

    apply(params, state, x, *, train: bool, rng=None) -> (logits, new_state)

``params`` is the pytree of trained weights, ``state`` the pytree of non-trained collections (BatchNorm
statistics), ``{}`` when the network has none. In eval mode ``new_state`` is ``state`` unchanged.

Example:
    >>> model, params, state = init(MLP(features=(64,), num_classes=10), jax.random.key(0), x[:1])
    >>> logits, _ = model.apply(params, state, x, train=False)
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax
from flax import linen as nn
from flax import nnx

Pytree = Any


class Model(NamedTuple):
  """How to run a network: ``apply(params, state, x, *, train, rng=None) -> (logits, new_state)``.

  Attributes:
    apply: the pure forward function.
    features: optional ``(params, state, x) -> embedding`` giving the penultimate representation (used by
      representation-based methods and activation matching); None if the network does not expose it.
    intermediates: optional ``(params, state, x) -> dict`` of named hidden activations; None if unavailable.
  """
  apply: Callable[..., tuple[jax.Array, Pytree]]
  features: Callable[..., jax.Array] | None = None
  intermediates: Callable[..., dict] | None = None


def _split_variables(variables) -> tuple[Pytree, Pytree]:
  variables = dict(variables)
  params = variables.pop("params", {})
  return params, variables


def from_linen(module: nn.Module) -> Model:
  """Wraps a Linen module whose ``__call__(x, train: bool)`` returns logits.

  If ``__call__`` also takes ``features: bool``, ``Model.features`` returns the penultimate embedding.

  Non-``params`` collections (e.g. ``batch_stats``) form ``state``; they are mutable in train mode. A
  ``dropout`` rng stream is fed from ``rng`` when given.
  """

  def apply(params, state, x, *, train: bool, rng=None):
    variables = {"params": params, **state}
    rngs = {"dropout": rng} if rng is not None else None
    mutable = list(state.keys()) if (train and state) else False
    if mutable:
      logits, new_state = module.apply(variables, x, train=train, rngs=rngs, mutable=mutable)
      return logits, dict(new_state)
    return module.apply(variables, x, train=train, rngs=rngs), state

  features = None
  if "features" in inspect.signature(type(module).__call__).parameters:

    def features(params, state, x):
      return module.apply({"params": params, **state}, x, train=False, features=True)

  def intermediates(params, state, x):
    _, inter = module.apply({"params": params, **state}, x, train=False,
                            capture_intermediates=True, mutable=["intermediates"])
    flat = jax.tree_util.tree_flatten_with_path(inter["intermediates"])[0]
    return {jax.tree_util.keystr(p): v for p, v in flat}

  return Model(apply=apply, features=features, intermediates=intermediates)


def _init_variables(module: nn.Module, rngs, x):
  return module.init(rngs, x, train=False)


@functools.lru_cache(maxsize=32)
def _init_program(module: nn.Module):
  """The jitted ``module.init`` (one compile instead of one per initialiser op), one per module: equal Linen modules
  (same class and fields) share it, so initialising the same network again traces and compiles nothing."""
  return jax.jit(functools.partial(_init_variables, module))


def init_linen(module: nn.Module, rng: jax.Array, sample_x: jax.Array) -> tuple[Model, Pytree, Pytree]:
  """Initialises a Linen module and returns ``(Model, params, state)``."""
  params_rng, dropout_rng = jax.random.split(rng)
  try:
    init_fn = _init_program(module)
  except TypeError:  # a module with an unhashable field: jitted for this call only
    init_fn = _init_program.__wrapped__(module)
  variables = init_fn({"params": params_rng, "dropout": dropout_rng}, sample_x)
  params, state = _split_variables(variables)
  return from_linen(module), params, state


def from_nnx(module: nnx.Module) -> tuple[Model, Pytree, Pytree]:
  """Splits an NNX module into ``(Model, params, state)``.

  ``params`` are the ``nnx.Param`` leaves; ``state`` is every other variable (e.g. ``nnx.BatchStat``).
  ``module(x)`` must return logits; train/eval is switched with ``module.train()``/``module.eval()`` on the
  merged copy, so the module's own mode flags (BatchNorm ``use_running_average``, Dropout ``deterministic``)
  are respected. Dropout draws from an ``nnx.Rngs`` stored in the module when ``rng`` is None, otherwise
  the module's rng streams are reseeded from ``rng``.
  """
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def apply(params, state, x, *, train: bool, rng=None):
    m = nnx.merge(graphdef, params, state, copy=True)  # copy: never mutate the caller's arrays
    if train:
      m.train()
    else:
      m.eval()
    if rng is not None:
      tags = sorted({s.tag for _, s in nnx.iter_graph(m) if isinstance(s, nnx.RngStream)})
      if tags:
        nnx.reseed(m, **{t: jax.random.fold_in(rng, i) for i, t in enumerate(tags)})
    logits = m(x)
    _, _, new_state = nnx.split(m, nnx.Param, ...)
    return logits, (new_state if train else state)

  return Model(apply=apply), params, rest


def init(model_def, rng: jax.Array, sample_x: jax.Array) -> tuple[Model, Pytree, Pytree]:
  """``(Model, params, state)`` from a Linen module definition or a constructed NNX module.

  Args:
    model_def: a ``flax.linen.Module`` (initialised here with ``rng`` and ``sample_x``) or an
      ``nnx.Module`` instance (already initialised; ``rng`` and ``sample_x`` are then unused).
    rng: PRNG key for Linen initialisation.
    sample_x: a batch with the input shape, e.g. ``x[:1]``.
  """
  if isinstance(model_def, nn.Module):
    return init_linen(model_def, rng, sample_x)
  if isinstance(model_def, nnx.Module):
    return from_nnx(model_def)
  raise ValueError(f"model_def must be a flax.linen.Module or flax.nnx.Module, got {type(model_def).__name__}")


def num_params(params: Pytree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
