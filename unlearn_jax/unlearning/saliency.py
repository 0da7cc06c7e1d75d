"""Gradient weight saliency (SalUn): which weights matter for the forget set.

The saliency of a weight is the magnitude of the forget loss's gradient, accumulated over the forget set with
the network in eval mode. `saliency_mask` keeps the top ``fraction`` of weights (globally, or per layer) as a
pytree of bools; `unlearn_jax.unlearning.loop.unlearn_loop(mask=...)` then updates only those weights.

References:
  Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
  Classification and Generation", ICLR 2024 (their ``generate_mask.py``: gradients of the forget
  cross-entropy summed over batches, a global sort, the top ``int(n * fraction)`` entries kept).

Example:
    >>> grads = forget_saliency(model, params, state, forget, batch_size=256)
    >>> mask = saliency_mask(grads, fraction=0.5)     # half of all weights, the most salient ones
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from unlearn_jax import sharding
from unlearn_jax.data import split as split_lib

Pytree = Any


def forget_saliency(model, params, state, forget: split_lib.Split, *, batch_size: int = 256) -> Pytree:
  """``|Σ_batches ∇θ mean-CE(forget batch)|`` in eval mode, as a pytree like ``params``.

  The forget set is walked in order in batches of ``batch_size``, as the reference's unshuffled forget loader
  does; every batch's loss is the plain mean over its own examples, the short last one included (it is filled by
  wrapping around, and the wrapped rows get weight 0 and do not count in its mean).
  """

  @jax.jit
  def run(params, x, y):
    n = x.shape[0]
    bs = min(batch_size, n)
    xb, yb, rows = split_lib.batch_arrays((x, y, jnp.arange(n)), bs, None, drop_remainder=False)
    weights = (jnp.arange(rows.size).reshape(rows.shape) < n).astype(jnp.float32)  # 0 for wrapped rows

    def loss(p, xs, ys, ws):
      logits, _ = model.apply(p, state, xs, train=False)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), ys)
      return jnp.sum(ce * ws) / jnp.sum(ws)

    def body(acc, inp):
      g = jax.grad(loss)(params, *inp)
      return jax.tree.map(jnp.add, acc, g), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (xb, yb, weights))
    return jax.tree.map(jnp.abs, total)

  return run(params, forget.x, forget.y)


def saliency_mask(saliency: Pytree, *, fraction: float = 0.5, per_layer: bool = False) -> Pytree:
  """Pytree of bools marking the top ``fraction`` of entries by saliency.

  Args:
    saliency: non-negative pytree (e.g. from `forget_saliency`).
    fraction: share of entries kept, in (0, 1]; exactly ``int(n * fraction)`` entries are True (ties broken by
      position), globally or, with ``per_layer``, in each leaf.
    per_layer: threshold each leaf separately instead of over all weights.

  Raises:
    ValueError: if ``fraction`` is outside (0, 1].
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  # `sharding.top_k_mask` selects exactly what a stable descending sort would, without flattening or sorting,
  # so FSDP-sharded saliencies give masks sharded like them.
  if per_layer:
    return jax.tree.map(lambda s: sharding.top_k_mask(s, int(s.size * fraction)), saliency)
  total = sum(int(s.size) for s in jax.tree.leaves(saliency))
  return sharding.top_k_mask(saliency, int(total * fraction))


def soft_saliency_mask(saliency: Pytree, *, fraction: float = 0.5) -> Pytree:
  """Float mask in [0, 1]: 1 for the top ``fraction`` of entries, ``s / threshold`` below it (SalUn-soft).

  The hard mask freezes non-salient weights; this soft variant lets them move in proportion to their saliency
  relative to the global top-``fraction`` threshold.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  total = sum(int(s.size) for s in jax.tree.leaves(saliency))
  return _soft_below(saliency, sharding.top_k_mask(saliency, max(1, int(total * fraction))))


@jax.jit
def _soft_below(saliency: Pytree, top: Pytree) -> Pytree:
  """``clip(s / threshold, 0, 1)`` with the threshold the smallest entry selected by ``top`` (one program)."""
  threshold = functools.reduce(jnp.minimum, [jnp.min(jnp.where(m, s, jnp.inf)) for m, s in
                                             zip(jax.tree.leaves(top), jax.tree.leaves(saliency))])
  return jax.tree.map(lambda s: jnp.clip(s / jnp.maximum(threshold, 1e-30), 0.0, 1.0), saliency)
