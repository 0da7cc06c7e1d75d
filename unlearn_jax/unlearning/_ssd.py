"""Selective Synaptic Dampening (SSD) and its loss-free variant (LFSSD): one-shot, retraining-free unlearning.

SSD measures how important each parameter is to the forget set and to the whole training set, and shrinks the
parameters that matter far more to the forget set::

    I_D, I_f   importances over the full training set D = retain ∪ forget and over the forget set
    selected   I_f > α · I_D                                     (α = ``alpha``, the selection weighting)
    θ'         θ · min(λ · I_D / I_f, 1)  where selected, θ elsewhere (bit-identical)   (λ = ``lam``)

The importance is a diagonal-Fisher-like average of squared gradients, computed with the network in eval mode:

* SSD (``'ssd'``): the gradient of the mean cross-entropy of a batch, squared, averaged over the batches;
* LFSSD (``'lfssd'``): the gradient of the batch mean of the squared l2 norm of the logits, ``‖f(x)‖²``, taken in
  absolute value (not squared), averaged over the batches — no labels are used.

Batch semantics. By default (``per_example=False``) the importance follows the reference exactly: the data are
cut, in order and unshuffled, into batches of ``batch_size`` (128, the reference's loaders) with a short last
batch; each batch's *mean* gradient is squared (LFSSD: absolute value), and the results are averaged over the
number of batches. The full set is ``retain`` followed by ``forget``, as the reference's ``ConcatDataset``. The
importances therefore depend on ``batch_size``. With ``per_example=True`` the per-example gradients (``jax.vmap``)
are squared instead and averaged over examples: the empirical diagonal Fisher, independent of batching.

Defaults ``alpha=10``, ``lam=1`` (``selection_weighting=10``, ``dampening_constant=1`` in the reference's
``forget_random_main.py`` / ``forget_full_class_main.py``; λ is named ``lam`` because ``lambda`` is a Python
keyword). With ``alpha >= lam`` every selected weight is scaled by less than ``lam / alpha``, so the ``min(·, 1)``
bound only matters for ``lam > alpha``. LFSSD uses the same defaults.

With ``per_example=True`` selection needs ``alpha < n / n_f``: ``I_D = (n_f I_f + n_r I_r) / n >= (n_f / n) I_f``,
so with a forget set of 10% or more of the training data and ``alpha = 10`` no weight is ever selected. The batch
semantics have no such bound (a batch's squared mean gradient is not additive over its examples, and the forget
rows fall into different batches of the full loader), but the ratios stay modest: on digits (32-unit MLP, 10%
random forget) ``alpha = 10`` selects 151 of 2,410 weights with batch semantics, none per example, and LFSSD's
ratios stay below 4. The reference evaluates SSD on forget sets of 0.2% (100 CIFAR images) to 5% (a CIFAR-20
superclass); for larger forget sets lower ``alpha``. Every parameter is eligible (the reference's
``min_layer``/``max_layer`` are unused there too).

References:
  Foster, Schoepf and Brintrup, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
  Dampening", AAAI 2024 (github.com/if-loops/selective-synaptic-dampening, ``src/ssd.py``, ParameterPerturber).
  Foster, Schoepf and Brintrup, "Loss-Free Machine Unlearning", ICLR 2024 Tiny Papers (LFSSD; the change is
  given in that repository's README).

Example:
    >>> params, state = ssd(model, params, state, forget, retain, config={'alpha': 10.0, 'lam': 1.0},
    ...                     rng=jax.random.key(0))
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from unlearn_jax.data import split as split_lib
from unlearn_jax.unlearning import _fisher as fisher_lib
from unlearn_jax.unlearning import one_shot

Pytree = Any

OBJECTIVES = ("cross_entropy", "output_norm")


def _example_loss(objective: str):
  if objective == "cross_entropy":
    return lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return lambda logits, y: jnp.sum(jnp.square(logits))  # LFSSD: squared l2 norm of the output, no label


@functools.partial(jax.jit, static_argnames=("model", "objective", "batch_size", "per_example"))
def importance(model, params, state, split: split_lib.Split, *, objective: str = "cross_entropy",
               batch_size: int = 128, per_example: bool = False) -> Pytree:
  """Per-parameter importance of ``split`` (eval mode), a float32 pytree like ``params``.

  Args:
    model, params, state: the network where the importance is measured.
    split: the data, batched in order (no shuffle).
    objective: ``'cross_entropy'`` (SSD: gradients squared) or ``'output_norm'`` (LFSSD: the loss is ``‖f(x)‖²``
      and gradients are taken in absolute value).
    batch_size: reference semantics: ``(1/B) Σ_b s(∇ mean_{i∈b} ℓ_i)`` over the ``B = ceil(n / batch_size)``
      batches, the last one short, with ``s = square`` (SSD) or ``abs`` (LFSSD).
    per_example: ``(1/n) Σ_i s(∇ ℓ_i)`` instead; ``batch_size`` then only sets the memory used.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective: unknown {objective!r}; choose one of {OBJECTIVES}")
  stat = jnp.square if objective == "cross_entropy" else jnp.abs
  loss = fisher_lib.example_fn(model, state, _example_loss(objective))
  xb, yb, wb, _ = fisher_lib.weighted_batches((split.x, split.y), batch_size)
  n, nb = split.x.shape[0], xb.shape[0]

  def batch_mean_loss(p, xs, ys, ws):
    losses = jax.vmap(loss, in_axes=(None, 0, 0))(p, xs, ys)
    return jnp.sum(ws * losses) / jnp.sum(ws)

  def body(acc, inp):
    xs, ys, ws = inp
    if per_example:
      g = fisher_lib.weighted_sum(ws, jax.tree.map(stat, fisher_lib.per_example_grads(loss, params, xs, ys)))
    else:
      g = jax.tree.map(stat, jax.grad(batch_mean_loss)(params, xs, ys, ws))
    return fisher_lib.accumulate(acc, g), None

  zeros = fisher_lib.accumulator(params)
  total, _ = jax.lax.scan(body, zeros, (xb, yb, wb))
  return jax.tree.map(lambda t: t / (n if per_example else nb), total)


@jax.jit
def dampen(params: Pytree, forget_importance: Pytree, full_importance: Pytree, alpha, lam) -> Pytree:
  """SSD's update: ``θ · min(lam · I_D / I_f, 1)`` where ``I_f > alpha · I_D``; other entries returned unchanged."""

  def leaf(p, f, d):
    selected = f > alpha * d
    factor = jnp.minimum(lam * d / jnp.where(selected, f, 1.0), 1.0)
    return jnp.where(selected, p * factor.astype(p.dtype), p)

  return jax.tree.map(leaf, params, forget_importance, full_importance)


def selection(forget_importance: Pytree, full_importance: Pytree, alpha) -> Pytree:
  """The pytree of bools SSD dampens: ``I_f > alpha · I_D``."""
  return jax.tree.map(lambda f, d: f > alpha * d, forget_importance, full_importance)


def full_split(forget: split_lib.Split, retain: split_lib.Split) -> split_lib.Split:
  """The whole training set as the reference orders it: ``retain`` rows, then ``forget`` rows."""
  return split_lib.Split(jnp.concatenate([retain.x, forget.x]), jnp.concatenate([retain.y, forget.y]))


SSD_DEFAULTS = dict(alpha=10.0, lam=1.0, batch_size=128, per_example=False)


def _prepare(model, params, state, forget, retain, opts, name: str, objective: str):
  """Both importances once; returns ``apply(alpha) -> (params, state)`` (``lam`` from ``opts``)."""
  if retain is None:
    raise ValueError(f"method {name!r}: needs a retain set (the full-data importance is over retain ∪ forget)")
  if opts.alpha < 0 or opts.lam < 0:
    raise ValueError(f"method.alpha={opts.alpha}, method.lam={opts.lam}: both must be >= 0")
  if int(opts.batch_size) <= 0:
    raise ValueError(f"method.batch_size={opts.batch_size}: must be positive")
  kw = dict(objective=objective, batch_size=int(opts.batch_size), per_example=bool(opts.per_example))
  forget_imp = importance(model, params, state, forget, **kw)
  full_imp = importance(model, params, state, full_split(forget, retain), **kw)
  return lambda alpha: (dampen(params, forget_imp, full_imp, alpha, opts.lam), state)


def _check_ssd_options(opts) -> None:
  """``alpha`` (the selection threshold) and ``lam`` (the dampening) >= 0, checked before any work."""
  for key in ("alpha", "lam"):
    if not opts[key] >= 0:
      raise ValueError(f"method.{key}={opts[key]!r}: must be >= 0")


@one_shot("ssd", "alpha", check=_check_ssd_options, **SSD_DEFAULTS)
def ssd(model, params, state, forget, retain, opts, rng):
  """SSD: dampen the parameters far more important to ``forget`` than to ``retain ∪ forget`` (cross-entropy).

  Options (``config``): ``alpha`` (10), ``lam`` (1), ``batch_size`` (128), ``per_example`` (False); see the
  module docstring. ``rng`` is unused: SSD is deterministic. A sweep varies ``alpha`` on the same importances.

  Returns:
    ``(params, state)``, same structure and dtypes; unselected entries bit-identical, ``state`` unchanged.

  Raises:
    ValueError: for an unknown option, a negative ``alpha``/``lam``, a bad ``batch_size`` or no retain set.
  """
  del rng
  return _prepare(model, params, state, forget, retain, opts, "ssd", "cross_entropy")


@one_shot("lfssd", "alpha", check=_check_ssd_options, **SSD_DEFAULTS)
def lfssd(model, params, state, forget, retain, opts, rng):
  """LFSSD: SSD with label-free importances, ``|∇ mean ‖f(x)‖²|`` averaged over batches.

  Same options and return value as `ssd`; labels are never read.
  """
  del rng
  return _prepare(model, params, state, forget, retain, opts, "lfssd", "output_norm")
