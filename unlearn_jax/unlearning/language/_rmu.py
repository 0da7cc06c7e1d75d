"""RMU (Representation Misdirection for Unlearning): scramble one layer's residual stream on forget text.

A control vector ``c·u`` is drawn once, ``u ~ U[0, 1)^D`` normalised to unit norm and scaled by the steering
coefficient ``c``. With ``h_l(θ, x)`` the residual stream after ``l`` blocks (`LanguageModel.hidden`):

* forget ``= γ·MSE_m(h_l(θ, x_f), c·u)``: forget activations are pushed onto the fixed random direction, which
  the later layers read as noise;
* retain ``= α·MSE_m(h_l(θ, x_r), h_l(θ_frozen, x_r))``: retain activations stay where the frozen Original puts
  them;

where ``MSE_m(a, b) = mean_b [Σ_t m_bt · mean_d (a − b)²_btd / Σ_t m_bt]`` averages over the feature axis, then
over the positions of each row whose mask ``m`` is 1, then over rows (open-unlearning's
``compute_activation_loss``). The mask is the batch's ``loss_mask`` (the answer tokens and EOS, open-unlearning's
``labels != -100``); the WMDP reference instead averages over every position of its raw-text batches.

Only the parameters whose dotted key path (``jax.tree_util.keystr(path, simple=True, separator='.')``, e.g.
``blocks.2.mlp.fc_out.kernel``) matches a regex are trained: `param_mask` builds the boolean pytree that
`unlearn_jax.unlearning.loop.unlearn_loop(mask=...)` uses to keep every other weight bit-identical.

Defaults (open-unlearning's ``configs/trainer/RMU.yaml`` and WMDP experiment): ``c = 2``, ``α = γ = 1``, AdamW
with lr 5e-5, a constant schedule and no weight decay; every parameter trainable (``'.*'``; the WMDP code trains
only the MLP output projections of the three blocks feeding the layer, e.g. ``blocks\\.(5|6|7)\\.mlp\\..*``).
The layer is block 7's output of a 32-block model (``model.layers.7``, our ``layer=8``), a quarter of the depth:
`default_layer` picks ``max(1, num_layers // 4)`` (the SAE method uses half the depth).

References:
  Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning", ICML 2024
  (github.com/centerforaisafety/wmdp, ``rmu/unlearn.py``).
  open-unlearning: ``src/trainer/unlearn/rmu.py`` (``get_control_vector``, ``compute_activation_loss``),
  ``configs/trainer/RMU.yaml``, ``configs/experiment/unlearn/wmdp/default.yaml``.

Example:
    >>> objective = rmu_objective(lm, layer=2, gamma=1.0, alpha=1.0)
    >>> state = teachers.carry({}, {REFERENCE: params, CONTROL: control_vector(key, 64, 2.0)})
    >>> mask = param_mask(params, r"blocks\\.[01]\\..*")
    >>> params, state, hist = loop.unlearn_loop(None, params, state, forget, retain, objective=objective,
    ...                                         tx=optax.adamw(5e-5), epochs=5, batch_size=16, rng=key,
    ...                                         schedule="joint", mask=mask)
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from unlearn_jax import language
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning.language import objectives as obj

Pytree = Any
CONTROL = "control"  # key of the scaled control vector c·u in the carried state


def control_vector(rng: jax.Array, dim: int, steering_coeff: float) -> jax.Array:
  """``c·u/‖u‖`` with ``u ~ U[0, 1)^dim``: a random direction in the positive orthant of norm ``c``."""
  u = jax.random.uniform(rng, (dim,), jnp.float32)
  return steering_coeff * u / jnp.linalg.norm(u)


def activation_mse(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
  """``mean_b [Σ_t m·mean_d (a − b)² / Σ_t m]`` for ``a, b`` of ``[B, T, D]`` (``b`` may broadcast), ``m [B, T]``.

  Rows without a masked position contribute 0.
  """
  per_token = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=-1)
  m = mask.astype(jnp.float32)
  return jnp.mean(jnp.sum(per_token * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0))


def param_path(path) -> str:
  """The dotted name of a parameter's key path, e.g. ``blocks.0.attn.query.kernel``."""
  return jax.tree_util.keystr(path, simple=True, separator=".")


def param_mask(params: Pytree, regex: str) -> Pytree:
  """A bool pytree like ``params``: True where ``re.search(regex, dotted path)`` matches (`param_path`).

  Raises:
    ValueError: if ``regex`` does not compile or matches no parameter (listing a few of the paths).
  """
  try:
    pattern = re.compile(regex)
  except re.error as e:
    raise ValueError(f"method.params_regex: {regex!r} is not a valid regex ({e})") from e
  mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(pattern.search(param_path(p))), params)
  if not any(jax.tree.leaves(mask)):
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ValueError(f"method.params_regex: {regex!r} matches no parameter; paths are e.g. {paths[:8]}")
  return mask


def default_layer(num_layers: int, depth: float = 0.25) -> int:
  """``max(1, int(depth · num_layers))``; the default ``depth`` is WMDP's (block 7's output of 32 blocks)."""
  if num_layers < 1:
    raise ValueError("method.layer: the language model reports no blocks (num_layers=0); give the layer")
  return max(1, int(depth * num_layers))


def check_layer(lm: language.LanguageModel, layer: int) -> int:
  """``layer`` if it is a residual layer of ``lm`` (``0..num_layers``; unchecked when ``num_layers`` is 0)."""
  if lm.num_layers and not 0 <= layer <= lm.num_layers:
    raise ValueError(f"method.layer={layer}: must be in [0, {lm.num_layers}]")
  return layer


def _hidden(lm: language.LanguageModel, params, ids, layer: int) -> jax.Array:
  if lm.hidden is None:
    raise ValueError("this objective needs LanguageModel.hidden, which the model does not provide")
  return lm.hidden(params, ids, layer).astype(jnp.float32)


def hidden_width(lm: language.LanguageModel, params: Pytree, input_ids: jax.Array, layer: int) -> int:
  """``D``, the width of the layer-``layer`` residual stream (from shapes only; nothing is computed)."""
  return jax.eval_shape(lambda p, i: _hidden(lm, p, i, layer), params, input_ids[:1]).shape[-1]


def rmu_forget(lm: language.LanguageModel, layer: int, gamma: float = 1.0) -> loop.Term:
  """``γ·MSE_m(h_l(θ, x), c·u)`` on a forget batch; ``c·u`` is ``frozen['control']``."""

  def fn(params, frozen_dict, x):
    h = _hidden(lm, params, x["input_ids"], layer)
    target = obj.frozen(frozen_dict, CONTROL)
    loss = activation_mse(h, target, x["loss_mask"])
    return gamma * loss, {"mse": loss}

  return obj.lm_term(fn)


def rmu_retain(lm: language.LanguageModel, layer: int, alpha: float = 1.0) -> loop.Term:
  """``α·MSE_m(h_l(θ, x), h_l(θ_frozen, x))`` on a retain batch; ``θ_frozen`` is ``frozen['reference']``."""

  def fn(params, frozen_dict, x):
    ids = x["input_ids"]
    h = _hidden(lm, params, ids, layer)
    ref = _hidden(lm, obj.frozen(frozen_dict, obj.REFERENCE), ids, layer)
    loss = activation_mse(h, ref, x["loss_mask"])
    return alpha * loss, {"mse": loss}

  return obj.lm_term(fn)


def rmu_objective(lm: language.LanguageModel, *, layer: int, gamma: float = 1.0,
                  alpha: float = 1.0) -> loop.Objective:
  """RMU's forget and retain terms at residual layer ``layer``."""
  check_layer(lm, layer)
  return loop.Objective(forget=rmu_forget(lm, layer, gamma), retain=rmu_retain(lm, layer, alpha))
