"""Loss terms shared by the iterative unlearning methods.

Every term has the signature ``term(params, state, batch, rng, epoch) -> (loss, (new_state, metrics))`` used by
`unlearn_jax.unlearning.loop`: ``batch`` is ``(x, y)``, the network runs in train mode (BatchNorm statistics are
updated, as in the reference implementations), ``epoch`` is the current epoch as an int32 scalar.

Example:
    >>> ga = negated(cross_entropy(model))            # gradient ascent on the forget set
    >>> rl = random_labels(model)                      # cross-entropy to a random wrong label
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from unlearn_jax import train as train_lib
from unlearn_jax.model import Model

Pytree = Any


def _accuracy(logits, y):
  return jnp.mean(jnp.argmax(logits, -1) == y)


def cross_entropy(model: Model):
  """Mean cross-entropy to the true labels (fine-tuning / retain term)."""

  def term(params, state, batch, rng, epoch):
    del epoch
    x, y = batch
    logits, state = model.apply(params, state, x, train=True, rng=rng)
    return train_lib.cross_entropy(logits, y), (state, {"accuracy": _accuracy(logits, y)})

  return term


def negated(term):
  """``-term``: gradient ascent on whatever ``term`` measures (GA: ``negated(cross_entropy(model))``)."""

  def neg(params, state, batch, rng, epoch):
    loss, aux = term(params, state, batch, rng, epoch)
    return -loss, aux

  return neg


def scaled(term, weight: float):
  """``weight * term``."""

  def out(params, state, batch, rng, epoch):
    loss, aux = term(params, state, batch, rng, epoch)
    return weight * loss, aux

  return out


def random_wrong_labels(rng: jax.Array, y: jax.Array, num_classes: int, exclude_true: bool = False) -> jax.Array:
  """Uniform random labels over all ``num_classes`` (the SalUn code's ``torch.randint(0, num_classes, ...)``);
  with ``exclude_true`` uniform over the ``num_classes - 1`` wrong classes."""
  if not exclude_true:
    return jax.random.randint(rng, y.shape, 0, num_classes, dtype=y.dtype)
  shift = jax.random.randint(rng, y.shape, 1, num_classes, dtype=y.dtype)
  return (y + shift) % num_classes


def random_labels(model: Model, exclude_true: bool = False):
  """Cross-entropy to random labels drawn afresh every step (RL; SalUn's forget term).

  By default labels are drawn from all classes, the true one included, as the SalUn / Unlearn-Sparse code does
  (``torch.randint(0, num_classes, target.shape)``), so about 1/C of the forget steps re-teach the true label. The
  paper describes a wrong label; ``exclude_true=True`` draws one (the term then always pushes away from the
  true class).
  """

  def term(params, state, batch, rng, epoch):
    del epoch
    x, y = batch
    label_rng, drop_rng = jax.random.split(rng)
    logits, state = model.apply(params, state, x, train=True, rng=drop_rng)
    fake = random_wrong_labels(label_rng, y, logits.shape[-1], exclude_true)
    return train_lib.cross_entropy(logits, fake), (state, {"accuracy": _accuracy(logits, y)})

  return term


def random_or_true_labels(model: Model, exclude_true: bool = False):
  """`random_labels` where the traced bool ``forget`` is True, `cross_entropy` where it is False, as one term
  ``term(params, state, batch, rng, epoch, forget)``: the same labels, keys and numbers as each of the two, so RL's
  forget and retain phases can share one compiled step (`loop.Objective.shared`)."""

  def term(params, state, batch, rng, epoch, forget):
    del epoch
    x, y = batch
    label_rng, drop_rng = jax.random.split(rng)
    apply_rng = jax.lax.cond(forget, lambda: drop_rng, lambda: rng)  # each term's own dropout key
    logits, state = model.apply(params, state, x, train=True, rng=apply_rng)
    fake = random_wrong_labels(label_rng, y, logits.shape[-1], exclude_true)
    # the two losses are selected (not the labels: under an explicit mesh the drawn labels are replicated, the
    # batch's sharded); the unselected one's gradient is exactly zero
    loss = jnp.where(forget, train_lib.cross_entropy(logits, fake), train_lib.cross_entropy(logits, y))
    return loss, (state, {"accuracy": _accuracy(logits, y)})

  return term


def l1_norm(params: Pytree) -> jax.Array:
  """``‖θ‖₁`` over every leaf."""
  return sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(params))


def with_decaying_l1(term, alpha: float, epochs: int):
  """``term + α_t ‖θ‖₁`` with ``α_t = α (1 - t / epochs)`` decaying linearly to 0 over the epochs (l1-sparse).

  References:
    Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023 (the linear decay of their
    ``unlearn/FT.py``: ``alpha * (1 - epoch / unlearn_epochs)``).
  """

  def out(params, state, batch, rng, epoch):
    loss, (state, metrics) = term(params, state, batch, rng, epoch)
    alpha_t = alpha * (1.0 - epoch.astype(jnp.float32) / epochs)
    return loss + alpha_t * l1_norm(params), (state, {**metrics, "alpha": alpha_t})

  return out


def kl_divergence(teacher_logits: jax.Array, student_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Mean over the batch of ``KL(softmax(t/T) ‖ softmax(s/T))``, in float32."""
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))
