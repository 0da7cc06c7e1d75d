"""Token-level LM unlearning terms: UNDIAL, CE-U, SatImp, WGA, PDU and FLAT.

Every term is a `unlearn_jax.unlearning.loop` term over the `unlearn_jax.language` batch dict, built with
`objectives.lm_term`. Notation: the batch is shifted as in every causal LM loss, position ``t`` of the logits
predicting token ``t + 1``; ``m`` is the shifted ``loss_mask`` (the answer tokens and EOS), ``p_t`` the model's
probability of the true next token and ``ce_t = −log p_t``; ``mean_m`` averages over the masked positions of the
whole (flattened) batch, as ``CrossEntropyLoss(ignore_index=-100)`` with a boolean index does.

* UNDIAL (self-distillation on adjusted logits): the target of every position is the frozen reference's
  distribution with the true token's logit lowered by ``β`` (at target positions),
  ``q = softmax(z_ref − β·onehot(y))``, and the loss is the soft-label cross-entropy ``−Σ_v q_v log softmax(z)_v``
  averaged over the positions. open-unlearning's ``compute_undial_loss`` averages over *every* position of the
  (dynamically padded) batch and distils the unchanged reference at question positions; we average over the
  positions that predict a non-PAD token (``positions='real'``, what a dynamically padded batch nearly is) or
  over the answer positions only (``'targets'``). The code also lowers logit ``V − 100`` at ignored positions (a
  ``-100`` label used as an index); we do not.
* CE-U: ``−Σ_v q_v log softmax(z)_v`` with ``q = softmax(stop_grad(z))`` after setting the true token's logit
  to −∞ (the model's own distribution with the answer removed), ``mean_m`` over the answer positions except the
  first ``ignore_first_n`` answer tokens of each row (open-unlearning's footnote trick, default 1).
* WGA: ``−mean_m(sg(p_t)^β · ce_t)`` (weighted gradient ascent).
* SatImp: ``−mean_m(sg(p_t)^β₁ · sg(1 − p_t)^β₂ · ce_t)`` (saturation times importance weights).
* PDU: forget ``= mean_m'((max_v z − mean_v z)²)``, the logit margin flattened to uniform, at the positions
  ``m'`` where the *unshifted* label is an answer token (open-unlearning reshapes the unshifted logits against
  the unshifted labels, one position later than the usual target); retain ``= λ·(L_retain − ε)`` with the dual
  variable ``λ`` carried in the loop state and updated after each step's loss,
  ``λ ← max(0, λ + η·(L_retain − ε))`` once ``dual_warmup_epochs`` epochs have passed (primal-dual, per step).
* FLAT: with ``P_f`` and ``P_g`` the mean next-token probability of the forget answer and of a template
  ("I don't know") answer, the variational f-divergence loss ``−a(P_g) + c(P_f)`` (activation ``a`` and
  conjugate ``c`` of `FLAT_DIVERGENCES`). The reference code (``get_contrastive_loss``, ``ProbLossStable``)
  averages the probabilities over *every* shifted position of the padded batch, ignored ones counting 0
  (``flat_mean='positions'``, the default); ``'targets'`` averages over the answer tokens only. Its default
  divergence is Total-Variation.

References:
  Dong et al., "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language
  Models", NAACL 2025. Yang et al., "CE-U: Cross Entropy Unlearning", 2025 (arXiv:2503.01224).
  Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond", ICLR 2025 (WGA).
  Yang et al., "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", ICML 2025 (SatImp).
  Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models", 2025
  (PDU). Wang et al., "LLM Unlearning via Loss Adjustment with Only Forget Data", ICLR 2025 (FLAT;
  github.com/UCSC-REAL/FLAT, ``dataloader.py``).
  open-unlearning: ``src/trainer/unlearn/{undial,ceu,wga,satimp,pdu}.py``, ``src/trainer/utils.py``,
  ``configs/trainer/{UNDIAL,CEU,WGA,SatImp,PDU}.yaml``, ``community/methods/*/run.sh``.

Example:
    >>> objective = loop.Objective(forget=wga(lm, beta=1.0), retain=objectives.retain_term(lm, "nll"))
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from unlearn_jax import language
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import teachers
from unlearn_jax.unlearning.language import objectives as obj

UNDIAL_POSITIONS = ("real", "targets")
FLAT_MEANS = ("positions", "targets")
DUAL = "dual"  # key of PDU's dual variable in the loop's model state

# FLAT's f-divergences: name -> (activation a, conjugate c); the loss is −a(P_g) + c(P_f).
FLAT_DIVERGENCES = {
    "kl": (lambda x: x, lambda x: jnp.exp(x - 1.0)),
    "reverse_kl": (lambda x: -jnp.exp(x), lambda x: -1.0 - x),
    "jeffrey": (lambda x: x, lambda x: x + x ** 2 / 4.0 + x ** 3 / 16.0),
    "squared_hellinger": (lambda x: 1.0 - jnp.exp(x), lambda x: (1.0 - jnp.exp(x)) / jnp.exp(x)),
    "pearson": (lambda x: x, lambda x: x ** 2 / 4.0 + x),
    "neyman": (lambda x: 1.0 - jnp.exp(x), lambda x: 2.0 - 2.0 * jnp.sqrt(1.0 - x)),
    "jensen_shannon": (lambda x: jnp.log(2.0) - jax.nn.softplus(-x),
                       lambda x: x + jax.nn.softplus(-x) - jnp.log(2.0)),
    "total_variation": (lambda x: jnp.tanh(x) / 2.0, lambda x: jnp.tanh(x) / 2.0),
}


def _shifted(lm, params, x, ids="input_ids", mask="loss_mask"):
  """``(log_softmax [B, T-1, V], labels [B, T-1], mask [B, T-1], logits)`` of the shifted batch."""
  logits = obj._logits(lm, params, x[ids])  # pylint: disable=protected-access
  z = logits[:, :-1]
  return jax.nn.log_softmax(z, axis=-1), x[ids][:, 1:], x[mask][:, 1:].astype(jnp.float32), z


def _masked_mean(values, mask):
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _picked(logp, labels):
  return jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


# ---------------------------------------------------------------------------------------------------------------
# Pure losses on arrays (the terms below call them; tests check them against NumPy).
# ---------------------------------------------------------------------------------------------------------------
def soft_cross_entropy(logp: jax.Array, target: jax.Array) -> jax.Array:
  """``−Σ_v target_v · logp_v`` per position (``[..., V]`` → ``[...]``)."""
  return -jnp.sum(jax.lax.stop_gradient(target) * logp, axis=-1)


def weighted_ascent_loss(logp_true: jax.Array, mask: jax.Array, beta1: float, beta2: float = 0.0) -> jax.Array:
  """``−mean_m(sg(p)^β₁ · sg(1−p)^β₂ · ce)`` with ``p = exp(logp_true)``: WGA (``β₂ = 0``) and SatImp."""
  p = jax.lax.stop_gradient(jnp.exp(logp_true))
  weight = p ** beta1 * (1.0 - p) ** beta2 if beta2 else p ** beta1
  return -_masked_mean(weight * -logp_true, mask)


def flat_loss(p_forget: jax.Array, p_good: jax.Array, divergence: str = "total_variation") -> jax.Array:
  """FLAT: ``−a(p_good) + c(p_forget)`` of divergence ``divergence`` (`FLAT_DIVERGENCES`)."""
  if divergence not in FLAT_DIVERGENCES:
    raise ValueError(f"method.divergence={divergence!r}: choose one of {sorted(FLAT_DIVERGENCES)}")
  activation, conjugate = FLAT_DIVERGENCES[divergence]
  return -activation(p_good) + conjugate(p_forget)


# ---------------------------------------------------------------------------------------------------------------
# The terms.
# ---------------------------------------------------------------------------------------------------------------
def undial(lm: language.LanguageModel, beta: float = 10.0, gamma: float = 1.0,
           positions: str = "real") -> loop.Term:
  """UNDIAL forget term: cross-entropy to the reference's softmax with the true logit lowered by ``β``."""
  if positions not in UNDIAL_POSITIONS:
    raise ValueError(f"method.positions={positions!r}: choose one of {UNDIAL_POSITIONS}")

  def fn(params, frozen_dict, x):
    logp, labels, mask, _ = _shifted(lm, params, x)
    ref = obj._logits(lm, obj.frozen(frozen_dict, obj.REFERENCE), x["input_ids"])[:, :-1]  # pylint: disable=protected-access
    onehot = jax.nn.one_hot(labels, ref.shape[-1], dtype=ref.dtype) * mask[..., None]
    target = jax.nn.softmax(ref - beta * onehot, axis=-1)
    weights = mask if positions == "targets" else (labels != lm.pad_id).astype(jnp.float32)
    loss = _masked_mean(soft_cross_entropy(logp, target), weights)
    return gamma * loss, {"undial": loss, "nll": _masked_mean(-_picked(logp, labels), mask)}

  return obj.lm_term(fn)


def ceu(lm: language.LanguageModel, ignore_first_n: int = 1, gamma: float = 1.0) -> loop.Term:
  """CE-U forget term: cross-entropy to the model's own (detached) distribution without the true token."""

  def fn(params, frozen_dict, x):
    del frozen_dict
    full = x["loss_mask"].astype(jnp.float32)
    keep = full * (jnp.cumsum(full, axis=-1) > ignore_first_n)
    logp, labels, _, z = _shifted(lm, params, x)
    mask = keep[:, 1:]
    suppressed = jnp.where(jax.nn.one_hot(labels, z.shape[-1], dtype=bool), -jnp.inf, z)
    loss = _masked_mean(soft_cross_entropy(logp, jax.nn.softmax(suppressed, axis=-1)), mask)
    return gamma * loss, {"ceu": loss, "nll": _masked_mean(-_picked(logp, labels), full[:, 1:])}

  return obj.lm_term(fn)


def weighted_ascent(lm: language.LanguageModel, beta1: float, beta2: float = 0.0, gamma: float = 1.0,
                    name: str = "wga") -> loop.Term:
  """WGA (``beta2 = 0``) or SatImp forget term ``γ·weighted_ascent_loss``."""

  def fn(params, frozen_dict, x):
    del frozen_dict
    logp, labels, mask, _ = _shifted(lm, params, x)
    true = _picked(logp, labels)
    loss = weighted_ascent_loss(true, mask, beta1, beta2)
    return gamma * loss, {name: loss, "nll": _masked_mean(-true, mask)}

  return obj.lm_term(fn)


def pdu_forget(lm: language.LanguageModel, gamma: float = 1.0) -> loop.Term:
  """PDU forget term ``γ·mean((max_v z − mean_v z)²)`` at the (unshifted) answer positions."""

  def fn(params, frozen_dict, x):
    del frozen_dict
    z = obj._logits(lm, params, x["input_ids"])  # pylint: disable=protected-access
    margin = jnp.square(jnp.max(z, axis=-1) - jnp.mean(z, axis=-1))
    loss = _masked_mean(margin, x["loss_mask"].astype(jnp.float32))
    return gamma * loss, {"margin": loss, "nll": language.mean_nll(z, x["input_ids"], x["loss_mask"])}

  return obj.lm_term(fn)


def pdu_retain(lm: language.LanguageModel, kind: str = "nll", *, eps: float, dual_step: float = 1.0,
               warmup_epochs: int = 0, primal_dual: bool = True) -> loop.Term:
  """PDU retain term ``λ·(L_retain − ε)``; ``λ`` is ``state['model']['dual']`` (see `init_dual`), updated per
  step by projected dual ascent (``primal_dual``) from epoch ``warmup_epochs`` on."""
  base = obj.retain_term(lm, kind, 1.0)

  def term(params, carried, batch, rng, epoch):
    value, (carried, metrics) = base(params, carried, batch, rng, epoch)
    lam = carried[teachers.MODEL][DUAL]
    slack = value - eps
    loss = lam * slack
    if primal_dual:
      step = jnp.maximum(0.0, lam + dual_step * jax.lax.stop_gradient(slack))
      lam = jnp.where(epoch >= warmup_epochs, step, lam)
    carried = {**carried, teachers.MODEL: {**carried[teachers.MODEL], DUAL: lam}}
    return loss, (carried, {**metrics, "dual": lam, "slack": slack})

  return term


def init_dual(alpha: float) -> dict:
  """The loop's model state of PDU: the dual variable ``λ`` starting at the retain preference ``α``."""
  return {DUAL: jnp.asarray(alpha, jnp.float32)}


def flat(lm: language.LanguageModel, divergence: str = "total_variation", mean: str = "positions",
         gamma: float = 1.0) -> loop.Term:
  """FLAT forget term: `flat_loss` of the forget answer against ``idk_input_ids`` / ``idk_loss_mask``."""
  if mean not in FLAT_MEANS:
    raise ValueError(f"method.flat_mean={mean!r}: choose one of {FLAT_MEANS}")
  flat_loss(jnp.float32(0.5), jnp.float32(0.5), divergence)  # validates the name

  def mean_prob(params, x, ids, mask_key):
    logp, labels, mask, _ = _shifted(lm, params, x, ids, mask_key)
    true = _picked(logp, labels)
    p = jnp.exp(true) * mask
    return jnp.sum(p) / (p.size if mean == "positions" else jnp.maximum(jnp.sum(mask), 1.0)), _masked_mean(-true, mask)

  def fn(params, frozen_dict, x):
    del frozen_dict
    p_forget, nll = mean_prob(params, x, "input_ids", "loss_mask")
    p_good, _ = mean_prob(params, x, "idk_input_ids", "idk_loss_mask")
    loss = flat_loss(p_forget, p_good, divergence)
    return gamma * loss, {"flat": loss, "p_forget": p_forget, "p_idk": p_good, "nll": nll}

  return obj.lm_term(fn)
