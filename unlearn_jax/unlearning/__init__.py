"""Unlearning methods: ``method(model, params, state, forget, retain, *, rng, **options) -> (params, state)``.

Every registered method is an attribute of this package, called with keyword options (each listed, with its type
and default, in the method's docstring); ``config=`` (a ConfigDict or dict of the same options, as the runner
passes ``config.method``) is accepted too, and keywords override it::

    >>> from unlearn_jax import unlearning
    >>> params, state = unlearning.salun(model, params, state, forget, retain, rng=jax.random.key(0),
    ...                                  lr=0.013, epochs=10, fraction=0.5)

``original`` (no unlearning) and ``retrain`` (train from scratch on the retain set, the gold standard) are the
two baselines that `unlearn_jax.run` computes for every experiment; they need no function here. Every other
method registers itself with `register` (which gives it the keyword signature and the options section of its
docstring) and reads its options through `options`, which fills documented defaults and rejects unknown keys.
Building blocks: `loop` (the one iterative driver), `objectives`, `saliency`, `methods` (plans), `teachers`.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

BASELINES = ("original", "retrain")

# name -> method function, name -> its default options, and name -> the check of its own option values (where it
# has one); method modules register themselves here.
REGISTRY: dict[str, Callable] = {}
DEFAULTS: dict[str, dict] = {}
CHECKS: dict[str, Callable] = {}


def register(name: str, *, check: Callable | None = None, **defaults) -> Callable[[Callable], Callable]:
  """Decorator adding a method to `REGISTRY` under ``name``, with its default options.

  ``fn(model, params, state, forget, retain, *, config, rng)`` becomes the public method (`keyword_method`):
  callable with keyword options, its docstring listing them, and an attribute ``unlearn_jax.unlearning.<name>``
  (so a module defining a method must not be named like it). ``check(opts)``, when given, raises ValueError
  ``method.<key>=<value>: <why>`` for a bad option value; it runs before the method's work and, through
  `checked_options`, in the config validation pass (`unlearn_jax.config.check_method_section`), i.e. before a
  run trains its Original and Retrain.
  """

  def wrap(fn):
    if name in REGISTRY or name in BASELINES:
      raise ValueError(f"unlearning method {name!r} is registered twice")
    method = keyword_method(name, fn, defaults, options_fn=lambda config: checked_options(config, name),
                            inputs_fn=check_inputs)
    REGISTRY[name] = method
    DEFAULTS[name] = defaults
    if check is not None:
      CHECKS[name] = check
    setattr(sys.modules[__name__], name, method)
    return method

  return wrap


def _type_name(value) -> str:
  return "Any" if value is None else type(value).__name__


def _section(doc: str, title: str) -> str | None:
  """The ``title:`` section of a Google-style docstring (header to the next blank-line-separated header)."""
  lines, out = inspect.cleandoc(doc or "").splitlines(), []
  for line in lines:
    if out and line and not line.startswith(" "):
      break
    if out or line.strip() == f"{title}:":
      out.append(line)
  return "\n".join(out).rstrip() or None


def _classes(model, params, state, x) -> int | None:
  """The number of classes ``model`` scores (its logits' last axis, from `jax.eval_shape`), or None."""
  spec = lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if hasattr(a, "dtype") else a
  try:
    logits = jax.eval_shape(lambda p, s, v: model.apply(p, s, v, train=False)[0],
                            *jax.tree.map(spec, (params, state, x[:1])))
  except Exception:  # pylint: disable=broad-except  (not a classifier's apply: nothing to check labels against)
    return None
  return int(logits.shape[-1]) if getattr(logits, "ndim", 0) >= 1 else None


def check_inputs(model, params, state, forget, retain) -> None:
  """What every unlearning method needs of its inputs, checked once here (by `register`'s wrapper) before any
  work: a non-empty ``forget`` split, and ``forget``/``retain`` labels that are classes of ``model`` (its logits'
  width), so a label of 10 for a 10-class model fails naming the argument instead of silently indexing past the
  logits. Traced arguments (a method called inside ``jit``/``vmap``) are not checked.

  Raises:
    ValueError: naming ``forget`` or ``retain``, the bad label and the number of classes, or the empty split.
  """
  if forget is None or forget.size == 0:
    raise ValueError("forget: the split is empty (0 rows); an unlearning method needs examples to forget")
  num = None
  for arg, split in (("forget", forget), ("retain", retain)):
    y = getattr(split, "y", None)
    if y is None or not np.size(y) or not jnp.issubdtype(y.dtype, jnp.integer) or not jax.core.is_concrete(y):
      continue
    num = num or _classes(model, params, state, forget.x)
    if num is None:
      return
    low, high = (int(v) for v in jax.device_get((jnp.min(y), jnp.max(y))))
    if low < 0 or high >= num:
      raise ValueError(f"{arg}: label {low if low < 0 else high} is not a class of the model (its logits score "
                       f"{num} classes: labels 0..{num - 1})")


def keyword_method(name: str, fn: Callable, defaults: dict, *, options_fn: Callable | None = None,
                   inputs_fn: Callable | None = None, first: str = "model",
                   where: str = "unlearn_jax.unlearning", positional: tuple[str, ...] | None = None,
                   returns: str = "params, state") -> Callable:
  """``fn(first, params, state, forget, retain, *, config, rng)`` as a function that also takes keyword options.

  The result is ``method(first, params, state, forget, retain, *, rng, config=None, **options)``: ``options``
  (each a key of ``defaults``) update ``config``; an unknown one raises ValueError naming it, before any work
  (``options_fn(config)``, when given, runs first and checks the values; then ``inputs_fn(*positional arguments)``,
  e.g. `check_inputs`). ``positional`` replaces the five positional inputs (the language-model methods take
  ``(lm, params, forget, retain)``) and ``returns`` names what the docstring's example gets back. Keyword-only
  parameters of ``fn`` besides ``config`` and ``rng`` (inputs that are not options) pass through. Its
  ``__signature__`` and docstring list every option with its type and default; the ``References:`` of ``fn``'s
  module are added when ``fn``'s own docstring has none.
  """

  kw = inspect.Parameter.KEYWORD_ONLY
  positional = positional or (first, "params", "state", "forget", "retain")
  # keyword inputs of fn's own that are not options (arrays, models: DMM's subset_outputs, oracle matching's oracles)
  inputs = [p for p in inspect.signature(fn).parameters.values() if p.kind is kw and p.name not in ("config", "rng")]

  def method(*args, rng, config=None, **kwargs):
    args += tuple(kwargs.pop(n) for n in positional[len(args):] if n in kwargs)
    if len(args) != len(positional):
      raise TypeError(f"{name}() takes {len(positional)} inputs ({', '.join(positional)}), got {len(args)}")
    given = {p.name: kwargs.pop(p.name) for p in inputs if p.name in kwargs}
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
      raise ValueError(f"{name}(): unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    if kwargs:
      config = {**(dict(config.items()) if config is not None else {}), **kwargs}
    if options_fn is not None:
      options_fn(config)
    if inputs_fn is not None:
      inputs_fn(*args)
    return fn(*args, config=config, rng=rng, **given)

  method.__signature__ = inspect.Signature(
      [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in positional]
      + [inspect.Parameter("rng", kw), inspect.Parameter("config", kw, default=None), *inputs]
      + [inspect.Parameter(k, kw, default=v, annotation=_type_name(v)) for k, v in defaults.items()])
  doc = inspect.cleandoc(fn.__doc__ or name)
  listed = "\n".join(f"  {k} ({_type_name(v)}): default ``{v!r}``." for k, v in defaults.items())
  example = ", ".join(f"{k}={v!r}" for k, v in list(defaults.items())[:3])
  parts = [doc, f"Options (keywords, or the same keys in ``config``; unknown ones raise ValueError):\n{listed}"]
  references = _section(sys.modules[fn.__module__].__doc__, "References") if "References:" not in doc else None
  if references:
    parts.append(references)
  if "Example:" not in doc:
    parts.append(f"Example:\n    >>> {returns} = {where}.{name}({', '.join(positional)},\n"
                 f"    ...     rng=jax.random.key(0), {example})")
  method.__name__ = method.__qualname__ = name
  method.__module__, method.__doc__, method.__wrapped__ = fn.__module__, "\n\n".join(parts), fn
  return method


# name -> (coef, prepare) of the one-shot methods with one scalar coefficient (SSD's ``alpha``, Fisher's noise
# ``alpha``, influence's step ``alpha``): ``prepare(model, params, state, forget, retain, opts, rng)`` does the
# expensive part once (importances, a Fisher, ``F⁻¹ v``) and returns ``apply(coef) -> (params, state)``, traceable
# in ``coef``. The method is ``prepare(...)(opts[coef])``; `unlearn_jax.sweep` vmaps ``apply`` over a grid.
ONE_SHOT: dict[str, tuple[str, Callable]] = {}


def one_shot(name: str, coef: str, *, check: Callable | None = None, **defaults) -> Callable[[Callable], Callable]:
  """Registers ``prepare`` (see `ONE_SHOT`) as the method ``name`` whose scalar option ``coef`` a sweep varies
  (``check``: as for `register`)."""

  def wrap(prepare):
    ONE_SHOT[name] = (coef, prepare)

    def method(model, params, state, forget, retain, *, config, rng):
      opts = options(config, name)
      return prepare(model, params, state, forget, retain, opts, rng)(opts[coef])

    method.__doc__, method.__module__ = prepare.__doc__, prepare.__module__
    return register(name, check=check, **defaults)(method)

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


def checked_options(config: Any, method: str) -> ml_collections.ConfigDict:
  """`options` of a registered method, with its registered `check` (if any) applied to them."""
  opts = options(config, method)
  if method in CHECKS:
    CHECKS[method](opts)
  return opts


def names() -> tuple[str, ...]:
  """Every method name a config may give: the baselines and the registered methods."""
  return BASELINES + tuple(sorted(REGISTRY))


def get_method(name: str) -> Callable:
  """The registered method function ``name``; ValueError listing the known names otherwise."""
  if name not in REGISTRY:
    raise ValueError(f"unknown unlearning method {name!r}; choose one of {sorted(REGISTRY)}")
  return REGISTRY[name]


# Method modules, imported for their registrations (keep at the bottom). Each registered method is an attribute
# of this package (set by `register`); `__getattr__` finds one registered later by a module imported elsewhere.
from unlearn_jax.unlearning import _dmm, _fisher, _influence, _laf, _ssd, boundary, methods, teachers  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from unlearn_jax.unlearning import loop, objectives, saliency  # noqa: E402,F401  pylint: disable=g-import-not-at-top


# The language-model and generation methods: subpackages of their own (other call contracts), imported on first use.
_SUBPACKAGES = ("generation", "language")


def __getattr__(name: str):
  if name in REGISTRY:
    return REGISTRY[name]
  if name in _SUBPACKAGES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BASELINES", "CHECKS", "DEFAULTS", "ONE_SHOT", "REGISTRY", "checked_options", "get_method",
           "generation", "keyword_method", "language", "loop", "method_config", "methods", "names", "objectives",
           "one_shot", "options", "register", "saliency", "teachers", *sorted(REGISTRY)]
