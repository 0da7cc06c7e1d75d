"""Unlearning methods: each is ``method(model, params, state, forget, retain, *, config, rng) -> (params, state)``.

``original`` (no unlearning) and ``retrain`` (train from scratch on the retain set, the gold standard) are the
two baselines that `unlearn_jax.run` computes for every experiment; they need no function here. Every other
method registers itself with `register` and reads its options from ``config`` (a ConfigDict or dict) through
`options`, which fills documented defaults and rejects unknown keys.
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

BASELINES = ("original", "retrain")

# name -> method function, and name -> its default options; method modules register themselves here.
REGISTRY: dict[str, Callable] = {}
DEFAULTS: dict[str, dict] = {}


def register(name: str, **defaults) -> Callable[[Callable], Callable]:
  """Decorator adding a method function to `REGISTRY` under ``name``, with its default options."""

  def wrap(fn):
    if name in REGISTRY or name in BASELINES:
      raise ValueError(f"unlearning method {name!r} is registered twice")
    REGISTRY[name] = fn
    DEFAULTS[name] = defaults
    return fn

  return wrap


# name -> (coef, prepare) of the one-shot methods with one scalar coefficient (SSD's ``alpha``, Fisher's noise
# ``alpha``, influence's step ``alpha``): ``prepare(model, params, state, forget, retain, opts, rng)`` does the
# expensive part once (importances, a Fisher, ``F⁻¹ v``) and returns ``apply(coef) -> (params, state)``, traceable
# in ``coef``. The method is ``prepare(...)(opts[coef])``; `unlearn_jax.sweep` vmaps ``apply`` over a grid.
ONE_SHOT: dict[str, tuple[str, Callable]] = {}


def one_shot(name: str, coef: str, **defaults) -> Callable[[Callable], Callable]:
  """Registers ``prepare`` (see `ONE_SHOT`) as the method ``name`` whose scalar option ``coef`` a sweep varies."""

  def wrap(prepare):
    ONE_SHOT[name] = (coef, prepare)

    def method(model, params, state, forget, retain, *, config, rng):
      opts = options(config, name)
      return prepare(model, params, state, forget, retain, opts, rng)(opts[coef])

    method.__name__, method.__doc__ = prepare.__name__, prepare.__doc__
    return register(name, **defaults)(method)

  return wrap


def method_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The full ``config.method`` of a registered method: its name and every option (defaults + overrides).

  Every option is present, so each can be overridden from the command line (``--config.method.lr=0.1``).
  """
  return ml_collections.ConfigDict({"name": name, **options(overrides, name)})


def options(config: Any, method: str, **defaults) -> ml_collections.ConfigDict:
  """The method's options: ``defaults`` (else its registered ones) updated with ``config``'s entries.

  ``name`` is ignored; an unknown key raises ValueError naming it.
  """
  defaults = defaults or DEFAULTS.get(method, {})
  given = dict(config.items()) if config is not None else {}
  given.pop("name", None)
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"method {method!r}: unknown option(s) {', '.join('method.' + k for k in unknown)}; "
                     f"known: {', '.join(sorted(defaults))}")
  out = ml_collections.ConfigDict(defaults)
  out.update(given)
  return out


def names() -> tuple[str, ...]:
  """Every method name a config may give: the baselines and the registered methods."""
  return BASELINES + tuple(sorted(REGISTRY))


def get_method(name: str) -> Callable:
  """The registered method function ``name``; ValueError listing the known names otherwise."""
  if name not in REGISTRY:
    raise ValueError(f"unknown unlearning method {name!r}; choose one of {sorted(REGISTRY)}")
  return REGISTRY[name]


# Method modules, imported for their registrations (keep at the bottom).
from unlearn_jax.unlearning import boundary, dmm, fisher, influence, laf, methods, ssd, teachers  # noqa: E402,F401  pylint: disable=g-import-not-at-top
