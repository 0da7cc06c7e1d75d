"""Likelihood-based language-model unlearning terms: GA, GradDiff, NPO, SimNPO and IdkDPO.

Every term is a `unlearn_jax.unlearning.loop` term ``(params, state, batch, rng, epoch) -> (loss, (state,
metrics))`` on a batch ``(x, y)`` whose ``x`` is the dict of `unlearn_jax.language` (``input_ids``,
``loss_mask``, extras). The loop state is a `unlearn_jax.unlearning.teachers.carry`-ed dict whose frozen part holds
the reference model's parameters under ``'reference'`` (the Original, never updated, outside the gradient), so it
is an ordinary jit argument rather than a constant baked into the program.

With ``logπ(y|x)`` the sum of the answer tokens' log-probabilities (`sequence_logprob`, ``n`` the number of target
tokens) and ``NLL`` the token-mean negative log-likelihood over a batch (`mean_nll`):

* GA: forget ``= −NLL_forget``.
* GradDiff: forget ``= −γ·NLL_forget``, retain ``= α·L_retain`` with ``L_retain`` either ``NLL_retain``
  (``'nll'``) or ``KL(π_ref ‖ π_θ)`` of the next-token distributions (``'kl'``). open-unlearning's
  ``compute_kl_divergence`` flattens the ``[B, T, V]`` logits and uses ``kl_div(..., 'batchmean')``: the mean over
  every position of the (dynamically padded) batch. Our batches are padded to a fixed length, so the mean runs over
  the non-PAD positions (question, answer and EOS), which is what a dynamically padded batch nearly is.
* NPO: forget ``= −(2/β)·γ·mean_b logσ(−β·(logπθ(y|x) − logπref(y|x)))``: open-unlearning's ``compute_dpo_loss``
  with no preferred answer (its ``win_log_ratio`` is 0) on sequence log-probs summed over the answer tokens.
* SimNPO: no reference; forget ``= −(2/β)·γ·mean_b logσ(β·(−logπθ(y|x)/n − δ))``, i.e. the reward is the
  length-normalised log-prob and the margin ``δ`` is subtracted from the normalised NLL *inside* the sigmoid
  (``−β·logπ/n − β·δ``); ``γ`` scales the forget term (the reference's ``npo_coeff``), ``α`` the retain term.
* IdkDPO (and AltPO, the same loss with a plausible alternate answer in place of "I don't know"): DPO with the
  "I don't know" answer preferred and the true answer rejected, forget
  ``= −(2/β)·γ·mean_b logσ(β·((logπθ(idk) − logπref(idk)) − (logπθ(y) − logπref(y))))`` (open-unlearning's
  ``DPO`` trainer keeps the ``2/β`` scale of NPO).

Reductions follow open-unlearning: ``NLL`` is the HF token mean over the whole batch, NPO/DPO/SimNPO average the
per-row losses over the batch.

References:
  open-unlearning (github.com/locuslab/open-unlearning): ``src/trainer/unlearn/{grad_ascent,grad_diff,npo,simnpo,
  dpo}.py``, ``src/trainer/utils.py`` (``compute_dpo_loss``, ``compute_batch_nll``, ``compute_kl_divergence``),
  ``configs/trainer/{GradDiff,NPO,SimNPO,DPO}.yaml`` (the defaults).
  Zhang, Lin, Bai and Mei, "Negative Preference Optimization: From Catastrophic Collapse to Effective
  Unlearning", COLM 2024 (NPO).
  Fan, Liu, Lin, Jia, Zhang, Mei and Liu, "Simplicity Prevails: Rethinking Negative Preference Optimization for
  LLM Unlearning", 2024 (SimNPO; github.com/OPTML-Group/Unlearn-Simple).
  Mekala et al., "Alternate Preference Optimization for Unlearning Factual Knowledge in Large Language Models",
  COLING 2025 (AltPO; open-unlearning ``community/methods/AltPO``: its ``DPO`` trainer on alternate answers).
  Rafailov et al., "Direct Preference Optimization", NeurIPS 2023; Maini et al., "TOFU: A Task of Fictitious
  Unlearning for LLMs", 2024 (the IdkDPO baseline).

Example:
    >>> objective = loop.Objective(forget=npo(lm, beta=0.1), retain=retain_term(lm, "nll", alpha=1.0))
    >>> state = teachers.carry({}, {REFERENCE: params})
    >>> params, state, hist = loop.unlearn_loop(None, params, state, forget, retain, objective=objective,
    ...                                         tx=optax.adamw(1e-5), epochs=10, batch_size=32,
    ...                                         rng=jax.random.key(0), schedule="joint")
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from unlearn_jax import language
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import teachers

Pytree = Any
REFERENCE = "reference"  # key of the frozen reference parameters in the carried state
RETAIN_LOSSES = ("nll", "kl")


# ---------------------------------------------------------------------------------------------------------------
# Plumbing: terms over the carried state.
# ---------------------------------------------------------------------------------------------------------------
def lm_term(fn: Callable[[Pytree, dict, dict], tuple[jax.Array, dict]]) -> loop.Term:
  """Adapts ``fn(params, frozen, x) -> (loss, metrics)`` to a loop term over a `teachers.carry`-ed state.

  ``frozen`` is the carried dict of frozen pytrees (reference parameters, control vector, SAE...), ``x`` the
  batch's input dict; the batch's ``y`` and the step's ``rng`` are unused (every LM objective is deterministic).
  """

  def inner(params, state, frozen, batch, rng, epoch):
    del rng, epoch
    x, _ = batch
    loss, metrics = fn(params, frozen, x)
    return loss, (state, metrics)

  return teachers.frozen_term(inner)


def frozen(frozen_dict: dict, name: str) -> Pytree:
  """The frozen pytree ``name`` of the carried state, outside the gradient (ValueError naming it if absent)."""
  if name not in frozen_dict:
    raise ValueError(f"the carried state has no frozen {name!r} (has {sorted(frozen_dict)})")
  return jax.lax.stop_gradient(frozen_dict[name])


def _logits(lm: language.LanguageModel, params, ids) -> jax.Array:
  return lm.logits(params, ids).astype(jnp.float32)


def _seq_logprob(lm, params, x, ids="input_ids", mask="loss_mask"):
  return language.sequence_logprob(_logits(lm, params, x[ids]), x[ids], x[mask])


# ---------------------------------------------------------------------------------------------------------------
# The losses, on per-row log-probabilities (pure functions).
# ---------------------------------------------------------------------------------------------------------------
def dpo_loss(win_log_ratio: jax.Array | float, lose_log_ratio: jax.Array, beta: float) -> jax.Array:
  """``−(2/β)·mean_b logσ(β·(win_log_ratio − lose_log_ratio))`` (open-unlearning's ``compute_dpo_loss``).

  Args:
    win_log_ratio: ``[B]`` ``logπθ(y_w|x) − logπref(y_w|x)`` of the preferred answers, or 0 for none (NPO).
    lose_log_ratio: ``[B]`` the same for the rejected answers.
    beta: inverse temperature β > 0.
  """
  return -(2.0 / beta) * jnp.mean(jax.nn.log_sigmoid(beta * (win_log_ratio - lose_log_ratio)))


def npo_loss(logp: jax.Array, ref_logp: jax.Array, beta: float) -> jax.Array:
  """NPO: ``−(2/β)·mean_b logσ(−β·(logp − ref_logp))``, ``logp`` sequence log-probs ``[B]``."""
  return dpo_loss(0.0, logp - ref_logp, beta)


def simnpo_loss(logp: jax.Array, count: jax.Array, beta: float, delta: float) -> jax.Array:
  """SimNPO: ``−(2/β)·mean_b logσ(β·(−logp/n − δ))`` with ``n = count`` target tokens per row (rows with none
  count as one)."""
  normalised_nll = -logp / jnp.maximum(count, 1.0)
  return -(2.0 / beta) * jnp.mean(jax.nn.log_sigmoid(beta * (normalised_nll - delta)))


def next_token_kl(ref_logits: jax.Array, logits: jax.Array, weights: jax.Array) -> jax.Array:
  """``Σ_{b,t} w·KL(softmax(ref) ‖ softmax(logits)) / Σ w`` over ``[B, T]`` positions, in float32."""
  ref = jax.nn.log_softmax(ref_logits.astype(jnp.float32), axis=-1)
  cur = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  kl = jnp.sum(jnp.exp(ref) * (ref - cur), axis=-1)
  w = weights.astype(jnp.float32)
  return jnp.sum(kl * w) / jnp.maximum(jnp.sum(w), 1.0)


# ---------------------------------------------------------------------------------------------------------------
# The terms.
# ---------------------------------------------------------------------------------------------------------------
def nll(lm: language.LanguageModel, weight: float = 1.0) -> loop.Term:
  """``weight · NLL``: the token-mean NLL of the batch's targets (GA's forget term with ``weight=−1``)."""

  def fn(params, frozen_dict, x):
    del frozen_dict
    value = language.mean_nll(_logits(lm, params, x["input_ids"]), x["input_ids"], x["loss_mask"])
    return weight * value, {"nll": value}

  return lm_term(fn)


def kl_retain(lm: language.LanguageModel, weight: float = 1.0) -> loop.Term:
  """``weight · KL(π_ref ‖ π_θ)`` of the next-token distributions at the batch's non-PAD positions."""

  def fn(params, frozen_dict, x):
    ids = x["input_ids"]
    ref_logits = _logits(lm, frozen(frozen_dict, REFERENCE), ids)
    logits = _logits(lm, params, ids)
    kl = next_token_kl(ref_logits, logits, ids != lm.pad_id)
    return weight * kl, {"kl": kl, "nll": language.mean_nll(logits, ids, x["loss_mask"])}

  return lm_term(fn)


def retain_term(lm: language.LanguageModel, kind: str, alpha: float = 1.0) -> loop.Term:
  """GradDiff's retain term ``α·L_retain``: ``kind`` is ``'nll'`` or ``'kl'`` (needs the reference)."""
  if kind == "nll":
    return nll(lm, alpha)
  if kind == "kl":
    return kl_retain(lm, alpha)
  raise ValueError(f"method.retain_loss: unknown {kind!r}; choose one of {RETAIN_LOSSES}")


def gradient_ascent(lm: language.LanguageModel, gamma: float = 1.0) -> loop.Term:
  """GA / GradDiff forget term ``−γ·NLL_forget``."""
  return nll(lm, -gamma)


def npo(lm: language.LanguageModel, beta: float = 0.1, gamma: float = 1.0) -> loop.Term:
  """NPO forget term ``γ·npo_loss(logπθ(y|x), logπref(y|x), β)``; the reference is ``frozen['reference']``."""

  def fn(params, frozen_dict, x):
    logp, count = _seq_logprob(lm, params, x)
    ref_logp, _ = _seq_logprob(lm, frozen(frozen_dict, REFERENCE), x)
    loss = npo_loss(logp, ref_logp, beta)
    return gamma * loss, {"npo": loss, "logp": jnp.mean(logp), "log_ratio": jnp.mean(logp - ref_logp),
                          "nll": -jnp.sum(logp) / jnp.maximum(jnp.sum(count), 1.0)}

  return lm_term(fn)


def simnpo(lm: language.LanguageModel, beta: float = 4.5, delta: float = 0.0, gamma: float = 0.125) -> loop.Term:
  """SimNPO forget term ``γ·simnpo_loss(logπθ(y|x), n, β, δ)`` (reference-free)."""

  def fn(params, frozen_dict, x):
    del frozen_dict
    logp, count = _seq_logprob(lm, params, x)
    loss = simnpo_loss(logp, count, beta, delta)
    return gamma * loss, {"simnpo": loss, "logp": jnp.mean(logp),
                          "nll": -jnp.sum(logp) / jnp.maximum(jnp.sum(count), 1.0)}

  return lm_term(fn)


def idk_dpo(lm: language.LanguageModel, beta: float = 0.1, gamma: float = 1.0, win: str = "idk") -> loop.Term:
  """IdkDPO forget term: DPO preferring ``<win>_input_ids``/``<win>_loss_mask`` over the true answer.

  ``win='idk'``: the "I don't know" answers (IdkDPO); ``win='alt'``: plausible alternate answers (AltPO).
  """
  win_ids, win_mask = f"{win}_input_ids", f"{win}_loss_mask"

  def fn(params, frozen_dict, x):
    ref = frozen(frozen_dict, REFERENCE)
    lose, count = _seq_logprob(lm, params, x)
    lose_ref, _ = _seq_logprob(lm, ref, x)
    won, _ = _seq_logprob(lm, params, x, win_ids, win_mask)
    won_ref, _ = _seq_logprob(lm, ref, x, win_ids, win_mask)
    loss = dpo_loss(won - won_ref, lose - lose_ref, beta)
    return gamma * loss, {"dpo": loss, "logp": jnp.mean(lose), f"{win}_logp": jnp.mean(won),
                          "nll": -jnp.sum(lose) / jnp.maximum(jnp.sum(count), 1.0)}

  return lm_term(fn)
