"""WAGLE: weight-attribution masks for LLM unlearning (SalUn's idea, with the retain loss in the score).

The attribution of weight ``i`` estimates how much resetting it would change the forget loss once the retain loss
is re-optimised; to first order, with a diagonal Hessian ``h`` of the retain loss,

    ``S_i = |g_f,i · (θ_i − (1 + μ)·g_r,i / h_i)|``

where ``g_f`` and ``g_r`` are the gradients of the forget and retain NLL, summed over single-example batches (the
reference's mask loader uses batch size 1: each row's token-mean NLL). The reference code's ``hessian`` score
estimates ``h`` by an EMA of the squared summed retain gradient over 10 identical passes, i.e. ``h = g_r²``
(``hessian='squared_gradient'``, the default; its numerator sums the 10 passes, a factor 10 we drop, and its
overall ``μ`` factor does not change the ranking). The paper's analysis takes ``h = γ`` constant
(``hessian='constant'`` with ``wagle_gamma``). The top ``fraction`` of weights by ``S`` (globally, exactly
``int(n·fraction)``, as the reference's argsort) are updated; the mask multiplies the *gradients* before the
optimiser (``mask_mode='gradient'``, the reference's ``tensor.grad *= mask``), and the unlearning objective is
GradDiff's or NPO's (``base``).

Defaults (the reference's TOFU configs ``configs/unlearn/Tofu/{NPO,GradDiff}+WAGLE.json``): NPO with
``γ = 1`` as the base, ``fraction = 0.95`` (``mask/tofu_0.95.pt``), lr 1e-5, 5 epochs, weight decay 0.1,
``μ = 1e-3`` (hard-coded in the ``hessian`` score).

References:
  Jia et al., "WAGLE: Strategic Weight Attribution for Effective and Modular Unlearning in Large Language
  Models", NeurIPS 2024 (github.com/OPTML-Group/WAGLE, ``src/unlearn/generate_mask.py``).

Example:
    >>> scores = wagle_scores(lm, params, forget.x, retain.x)
    >>> mask = saliency.saliency_mask(scores, fraction=0.95)
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from unlearn_jax import language
from unlearn_jax.data import split as split_lib

Pytree = Any
HESSIANS = ("squared_gradient", "constant")


def row_nll_gradient(lm: language.LanguageModel, params: Pytree, x: dict, *, chunk: int = 64) -> Pytree:
  """``Σ_rows ∇θ NLL_row`` with ``NLL_row`` the token-mean NLL of one row (batch size 1), in chunks of rows."""
  ids, mask = x["input_ids"], x["loss_mask"]
  n = ids.shape[0]
  bs = min(chunk, n)
  idb, mb, rows = split_lib.batch_arrays((ids, mask, jnp.arange(n)), bs, None, drop_remainder=False)
  weights = (jnp.arange(rows.size).reshape(rows.shape) < n).astype(jnp.float32)  # 0 for wrapped rows

  def loss(p, i, m, w):
    logp, count = language.sequence_logprob(lm.logits(p, i).astype(jnp.float32), i, m)
    return jnp.sum(w * -logp / jnp.maximum(count, 1.0))

  def body(acc, inp):
    return jax.tree.map(jnp.add, acc, jax.grad(loss)(params, *inp)), None

  total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (idb, mb, weights))
  return total


def attribution(params: Pytree, forget_grad: Pytree, retain_grad: Pytree, *, hessian: str = "squared_gradient",
                gamma: float = 1.0, mu: float = 1e-3) -> Pytree:
  """``|g_f · (θ − (1 + μ)·g_r / h)|`` leafwise, ``h = g_r²`` or ``γ`` (see the module docstring)."""
  if hessian not in HESSIANS:
    raise ValueError(f"method.hessian={hessian!r}: choose one of {HESSIANS}")

  def one(theta, gf, gr):
    if hessian == "constant":
      inv = gr / gamma
    else:  # g_r / g_r² = 1 / g_r, 0 where the retain gradient vanishes
      inv = jnp.where(gr == 0, 0.0, 1.0 / jnp.where(gr == 0, 1.0, gr))
    return jnp.abs(gf * (theta - (1.0 + mu) * inv))

  return jax.tree.map(one, params, forget_grad, retain_grad)


def wagle_scores(lm: language.LanguageModel, params: Pytree, forget_x: dict, retain_x: dict, *,
                 hessian: str = "squared_gradient", gamma: float = 1.0, mu: float = 1e-3,
                 chunk: int = 64) -> Pytree:
  """The WAGLE attribution of every weight of ``params`` (a pytree like it) from forget and retain batches."""
  grad = jax.jit(lambda p, x: row_nll_gradient(lm, p, x, chunk=chunk))
  return attribution(params, grad(params, forget_x), grad(params, retain_x), hessian=hessian, gamma=gamma, mu=mu)
