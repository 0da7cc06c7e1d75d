"""SAE-latent unlearning: make the forget entities look *unknown* in a sparse autoencoder's latent space.

1. A ReLU sparse autoencoder is trained on the Original's residual stream at layer ``l`` (every non-PAD token).
   Inputs are scaled by one constant ``s`` so that ``E‖s·h‖² = D`` (the l1 coefficient then means the same for
   any model width); with ``x = s·h``::

     z = ReLU((x − b_d) W_e + b_e),   x̂ = z W_d + b_d,   L = mean_n mean_d (x̂ − x)² + λ·mean_n ‖z‖₁

   The decoder rows (one ``D``-vector per latent) are kept at unit norm by projecting after every Adam step, so
   the l1 penalty cannot be dodged by shrinking codes and growing decoder rows. Training is one jitted
   ``lax.scan`` over random minibatches (`train_sae`).
2. `entity_codes`: the codes of each row's entity-name tokens (``entity_mask``), averaged over those tokens.
3. The centroids ``μ_k`` (retain entities, which the model was trained on: *known*) and ``μ_u`` (holdout
   entities, never trained on: *unknown*), and the separation score of a code ``z``::

     s(z) = ⟨z − μ_k, μ_u − μ_k⟩ / ‖μ_u − μ_k‖²        (0: like the known entities, 1: like the unknown ones)

   `sae_separation` is the mean ``s`` over a split's rows (for the forget rows, the metric the results table shows).
4. The objective: forget ``= γ·mean_b (s(z_b) − 1)²`` (moves each forget entity's code onto the unknown centroid
   along the known→unknown axis), retain ``= α·NLL_retain``. The SAE and centroids are frozen and ride in the
   loop's carried state (`SAEProbe`, under ``'probe'``).

The latent codes describe what the model represents about an entity independently of whether the answer tokens
are still produced; pulling them to the unknown centroid is a representation-level counterpart of RMU with a
target that is learned from data (what "never seen" looks like) instead of random.

References:
  Bricken et al., "Towards Monosemanticity: Decomposing Language Models With Dictionary Learning", Anthropic 2023
  (ReLU SAE with tied pre-encoder bias and unit-norm decoder rows).
  Ferrando, Obeso, Rajamanoharan and Nanda, "Do I Know This Entity? Knowledge Awareness and Hallucinations in
  Language Models", ICLR 2025 (SAE latents separating known from unknown entities).
  Farrell, Lau and Conmy, "Applying Sparse Autoencoders to Unlearn Knowledge in Language Models", 2024.

Example:
    >>> probe = fit_probe(lm, params, [forget.x, retain.x, holdout.x], known_x=retain.x, unknown_x=holdout.x,
    ...                   layer=2, num_latents=256, l1_coeff=1e-2, steps=1000, lr=1e-3, rng=key)
    >>> sae_separation(lm, params, probe, forget.x)      # ≈ 0 for the Original: the forget people are known
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import language
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning.language import objectives as obj

Pytree = Any
PROBE = "probe"  # key of the SAEProbe in the carried state
TRAINED = ("w_enc", "b_enc", "w_dec", "b_dec")


# ---------------------------------------------------------------------------------------------------------------
# The sparse autoencoder.
# ---------------------------------------------------------------------------------------------------------------
def encode(sae: dict, h: jax.Array) -> jax.Array:
  """Codes ``ReLU((s·h − b_d) W_e + b_e)`` of activations ``h [..., D]`` -> ``[..., K]``."""
  x = h.astype(jnp.float32) * sae["scale"]
  return jax.nn.relu((x - sae["b_dec"]) @ sae["w_enc"] + sae["b_enc"])


def decode(sae: dict, z: jax.Array) -> jax.Array:
  """Reconstruction ``z W_d + b_d`` in the scaled units of `encode`."""
  return z @ sae["w_dec"] + sae["b_dec"]


def sae_loss(sae: dict, h: jax.Array, l1_coeff: float) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """``(MSE + λ·L1, (MSE, L1))`` on activations ``h [N, D]``: MSE is the mean over rows and features of the
  squared reconstruction error of ``s·h``, L1 the mean over rows of ``‖z‖₁``."""
  x = h.astype(jnp.float32) * sae["scale"]
  z = encode(sae, h)
  mse = jnp.mean(jnp.square(decode(sae, z) - x))
  l1 = jnp.mean(jnp.sum(jnp.abs(z), axis=-1))
  return mse + l1_coeff * l1, (mse, l1)


def _unit_rows(w: jax.Array) -> jax.Array:
  return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


def init_sae(rng: jax.Array, activations: jax.Array, num_latents: int) -> dict:
  """Unit-norm random decoder rows, the encoder tied to the decoder's transpose, ``b_e = 0``, ``b_d`` the mean
  scaled activation, and the input scale ``s = sqrt(D / mean‖h‖²)``."""
  h = activations.astype(jnp.float32)
  dim = h.shape[-1]
  scale = jnp.sqrt(dim / jnp.maximum(jnp.mean(jnp.sum(h * h, axis=-1)), 1e-12))
  w_dec = _unit_rows(jax.random.normal(rng, (num_latents, dim), jnp.float32))
  return {"w_enc": w_dec.T, "b_enc": jnp.zeros((num_latents,), jnp.float32), "w_dec": w_dec,
          "b_dec": jnp.mean(h, axis=0) * scale, "scale": scale}


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "lr", "l1_coeff"), donate_argnums=(0,))
def _fit(sae: dict, activations: jax.Array, rng: jax.Array, *, steps: int, batch_size: int, lr: float,
         l1_coeff: float):
  tx = optax.adam(lr)
  trained = {k: sae[k] for k in TRAINED}
  n = activations.shape[0]

  def step(carry, key):
    trained, opt_state = carry
    rows = activations if batch_size >= n else activations[jax.random.randint(key, (batch_size,), 0, n)]
    loss_fn = lambda t: sae_loss({**t, "scale": sae["scale"]}, rows, l1_coeff)
    (loss, (mse, l1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
    updates, opt_state = tx.update(grads, opt_state, trained)
    trained = optax.apply_updates(trained, updates)
    trained = {**trained, "w_dec": _unit_rows(trained["w_dec"])}
    return (trained, opt_state), (loss, mse, l1)

  (trained, _), (losses, mses, l1s) = jax.lax.scan(step, (trained, tx.init(trained)), jax.random.split(rng, steps))
  return {**trained, "scale": sae["scale"]}, {"loss": losses, "mse": mses, "l1": l1s}


def train_sae(activations: jax.Array, *, num_latents: int, l1_coeff: float, steps: int, lr: float,
              rng: jax.Array, batch_size: int | None = None) -> tuple[dict, dict]:
  """Trains a ReLU SAE on ``activations [N, D]`` with Adam; returns ``(sae, history)``.

  Args:
    activations: ``[N, D]`` residual-stream vectors (one per token).
    num_latents: ``K``, the dictionary size.
    l1_coeff: λ of the sparsity penalty (on the scaled inputs, see the module docstring).
    steps: Adam steps (one jitted ``lax.scan``).
    lr: Adam learning rate.
    rng: PRNG key (initialisation and minibatch sampling).
    batch_size: rows per step, drawn uniformly with replacement; None or ``>= N``: full batch.

  Returns:
    ``sae``: ``{'w_enc' [D, K], 'b_enc' [K], 'w_dec' [K, D] (unit rows), 'b_dec' [D], 'scale' []}``;
    ``history``: per-step ``'loss'``, ``'mse'``, ``'l1'`` arrays of length ``steps``.

  Raises:
    ValueError: on a non-2-D or empty ``activations`` or a non-positive size.
  """
  activations = jnp.asarray(activations, jnp.float32)
  if activations.ndim != 2 or activations.shape[0] == 0:
    raise ValueError(f"activations: expected a non-empty [N, D] array, got shape {activations.shape}")
  for name, value in (("num_latents", num_latents), ("steps", steps)):
    if value < 1:
      raise ValueError(f"{name}={value}: must be >= 1")
  if l1_coeff < 0:
    raise ValueError(f"l1_coeff={l1_coeff}: must be >= 0")
  init_rng, fit_rng = jax.random.split(rng)
  sae = init_sae(init_rng, activations, num_latents)
  bs = activations.shape[0] if batch_size is None else min(int(batch_size), activations.shape[0])
  return _fit(sae, activations, fit_rng, steps=int(steps), batch_size=bs, lr=float(lr), l1_coeff=float(l1_coeff))


# ---------------------------------------------------------------------------------------------------------------
# Entity codes, centroids and the separation score.
# ---------------------------------------------------------------------------------------------------------------
@functools.partial(jax.tree_util.register_dataclass, data_fields=["sae", "known", "unknown"],
                   meta_fields=["layer"])
@dataclasses.dataclass(frozen=True)
class SAEProbe:
  """A trained SAE at residual layer ``layer`` and the known / unknown entity centroids of its codes ``[K]``."""
  sae: dict
  known: jax.Array
  unknown: jax.Array
  layer: int


def entity_codes(lm: language.LanguageModel, params: Pytree, sae: dict, x: dict, layer: int) -> jax.Array:
  """``[B, K]``: the SAE codes of the layer-``layer`` residual at each row's ``entity_mask`` tokens, averaged
  over those tokens (rows without entity tokens give zeros)."""
  if lm.hidden is None:
    raise ValueError("the SAE objective needs LanguageModel.hidden, which the model does not provide")
  if "entity_mask" not in x:
    raise ValueError(f"x['entity_mask'] is missing (fields: {sorted(x)}); build the split with it")
  z = encode(sae, lm.hidden(params, x["input_ids"], layer))
  m = x["entity_mask"].astype(jnp.float32)
  return jnp.einsum("btk,bt->bk", z, m) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)[:, None]


def separation(codes: jax.Array, known: jax.Array, unknown: jax.Array) -> jax.Array:
  """``s(z) = ⟨z − μ_k, μ_u − μ_k⟩ / ‖μ_u − μ_k‖²`` for each row of ``codes [B, K]``."""
  axis = unknown - known
  return (codes - known) @ axis / jnp.maximum(jnp.sum(axis * axis), 1e-12)


def _by_chunks(fn, x: dict, batch_size: int) -> np.ndarray:
  """``fn`` applied to consecutive row chunks of the dict ``x``, concatenated on the host."""
  n = jax.tree.leaves(x)[0].shape[0]
  out = [np.asarray(fn(jax.tree.map(lambda a: a[i:i + batch_size], x))) for i in range(0, n, batch_size)]
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _codes(lm, params, sae, x, layer):
  return entity_codes(lm, params, sae, x, layer)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _hidden(lm, params, ids, layer):
  return lm.hidden(params, ids, layer).astype(jnp.float32)


def collect_activations(lm: language.LanguageModel, params: Pytree, x: dict, layer: int, *,
                        batch_size: int = 256) -> np.ndarray:
  """``[N_tokens, D]`` residual vectors at layer ``layer`` of every non-PAD token of ``x['input_ids']``."""
  if lm.hidden is None:
    raise ValueError("the SAE objective needs LanguageModel.hidden, which the model does not provide")
  ids = {"input_ids": jnp.asarray(x["input_ids"])}
  h = _by_chunks(lambda b: _hidden(lm, params, b["input_ids"], layer), ids, batch_size)
  return h[np.asarray(ids["input_ids"]) != lm.pad_id]


def mean_codes(lm: language.LanguageModel, params: Pytree, sae: dict, x: dict, layer: int, *,
               batch_size: int = 256) -> jax.Array:
  """The centroid ``[K]``: `entity_codes` averaged over the rows of ``x``."""
  fields = {"input_ids": x["input_ids"], "entity_mask": x["entity_mask"]} if "entity_mask" in x else x
  codes = _by_chunks(lambda b: _codes(lm, params, sae, b, layer), fields, batch_size)
  return jnp.asarray(codes.mean(axis=0))


def fit_probe(lm: language.LanguageModel, params: Pytree, train_xs: Sequence[dict], *, known_x: dict,
              unknown_x: dict, layer: int, num_latents: int, l1_coeff: float, steps: int, lr: float,
              rng: jax.Array, batch_size: int | None = 1024) -> SAEProbe:
  """Trains the SAE on the non-PAD tokens of ``train_xs`` (under ``params``, the Original) and takes the centroids
  of the ``known_x`` (retain) and ``unknown_x`` (holdout) entities."""
  acts = np.concatenate([collect_activations(lm, params, x, layer) for x in train_xs])
  sae, _ = train_sae(jnp.asarray(acts), num_latents=num_latents, l1_coeff=l1_coeff, steps=steps, lr=lr, rng=rng,
                     batch_size=batch_size)
  return SAEProbe(sae=sae, known=mean_codes(lm, params, sae, known_x, layer),
                  unknown=mean_codes(lm, params, sae, unknown_x, layer), layer=layer)


def sae_separation(lm: language.LanguageModel, params: Pytree, probe: SAEProbe, x: dict, *,
                   batch_size: int = 256) -> float:
  """Mean separation score ``s`` of the rows of ``x`` under ``params`` (0: known-like, 1: unknown-like)."""
  fields = {"input_ids": x["input_ids"], "entity_mask": x["entity_mask"]} if "entity_mask" in x else x
  codes = _by_chunks(lambda b: _codes(lm, params, probe.sae, b, probe.layer), fields, batch_size)
  return float(np.mean(np.asarray(separation(jnp.asarray(codes), probe.known, probe.unknown))))


# ---------------------------------------------------------------------------------------------------------------
# The objective.
# ---------------------------------------------------------------------------------------------------------------
def sae_forget(lm: language.LanguageModel, gamma: float = 1.0) -> loop.Term:
  """``γ·mean_b (s(z_b) − 1)²`` on a forget batch, with the `SAEProbe` carried as ``frozen['probe']``."""

  def fn(params, frozen_dict, x):
    probe = obj.frozen(frozen_dict, PROBE)
    s = separation(entity_codes(lm, params, probe.sae, x, probe.layer), probe.known, probe.unknown)
    loss = jnp.mean(jnp.square(s - 1.0))
    return gamma * loss, {"separation": jnp.mean(s), "sae": loss}

  return obj.lm_term(fn)


def sae_objective(lm: language.LanguageModel, *, gamma: float = 1.0, alpha: float = 1.0,
                  retain_loss: str = "nll") -> loop.Objective:
  """The SAE-latent forget term plus GradDiff's ``α``-weighted retain term."""
  return loop.Objective(forget=sae_forget(lm, gamma), retain=obj.retain_term(lm, retain_loss, alpha))
