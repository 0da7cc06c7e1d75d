r"""A small decoder-only transformer (GPT-2 or Llama style) with KV-cache greedy generation.

One block is the pre-norm residual pair

.. math::

   h \leftarrow h + W_o\,\mathrm{Attn}(\mathrm{Norm}_1(h)), \qquad h \leftarrow h + \mathrm{MLP}(\mathrm{Norm}_2(h))

with causal softmax attention :math:`\mathrm{softmax}(q k^\top / \sqrt{d_h} + M)\,v` (:math:`M_{ts} = -\infty`
for :math:`s > t`), computed by `jax.nn.dot_product_attention` (`attention`; ``GPTConfig.attention_impl='cudnn'``
selects the fused GPU kernel). ``GPTConfig`` switches between the two families:

* GPT-2: LayerNorm, learned absolute positions added to the token embeddings, MLP
  ``down(gelu_tanh(up(x)))``, biases everywhere, tied input/output embeddings;
* Llama: RMSNorm :math:`x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \cdot g`, rotary position embeddings (RoPE) on
  ``q`` and ``k`` in the Hugging Face convention (the head dimension is split in two halves,
  :math:`x \mapsto x \cos\theta + \mathrm{rotate\_half}(x) \sin\theta` with
  :math:`\mathrm{rotate\_half}([x_1, x_2]) = [-x_2, x_1]` and :math:`\theta_{t,i} = t\,\theta_{\mathrm{base}}^{-2i/d_h}`,
  optionally rescaled as Llama 3 does), SwiGLU MLP ``down(silu(gate(x)) * up(x))``, no biases, and grouped-query
  attention: ``num_kv_heads`` key/value heads, query head ``j`` reading key/value head ``j // (H / H_kv)``.

The final norm is followed by the output head (the transposed token embedding when tied). Activations are
computed in ``cfg.dtype`` (residual stream included), norms and softmax in float32, and the logits are
returned as float32.

Parameter layout (``i`` counts blocks from 0; every Dense kernel is ``(in, out)``)::

  embed/embedding                (vocab_size, d_model)
  pos_embed/embedding            (max_len, d_model)                    learned positions only
  block_{i}/attn_norm/{scale[, bias]}                                  bias for LayerNorm only
  block_{i}/attn/{q,k,v,o}/{kernel[, bias]}   q: (d_model, H*d_h), k, v: (d_model, H_kv*d_h), o: (H*d_h, d_model)
  block_{i}/mlp_norm/{scale[, bias]}
  block_{i}/mlp/{gate,up,down}/{kernel[, bias]} gate (SwiGLU only), up: (d_model, d_ff), down: (d_ff, d_model)
  final_norm/{scale[, bias]}
  lm_head/kernel                 (d_model, vocab_size)                untied only

Generation (`generate`) prefills the right-padded prompts in one forward, then decodes one token per step in a
`jax.lax.while_loop` with a key/value cache ``[L, B, S, H_kv, d_h]`` (``S`` = prompt width + new tokens). Each
row has its own position: row ``b`` writes its ``s``-th new token at ``prompt_len[b] + s``, overwriting the
padding's cache entries, and attends to cache positions ``<= prompt_len[b] + s``, so rows of different lengths
decode exactly as they would alone.

Under an explicit-axes mesh (`unlearn_jax.sharding`) the batch may be sharded over ``data``: embedding lookups,
cache writes and the generation state follow the batch's sharding.

References:
  Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019; Touvron et al.,
  "LLaMA: Open and Efficient Foundation Language Models", 2023, and Meta's Llama 3 report (2024) for the RoPE
  rescaling; Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021; Ainslie et al.,
  "GQA: Training Generalized Multi-Query Transformer Models", 2023; Shazeer, "GLU Variants Improve
  Transformer", 2020. The Hugging Face ``transformers`` modelling files ``modeling_llama.py`` and
  ``modeling_gpt2.py`` fix the conventions (rotate_half, Conv1D layouts) so their checkpoints load one to one
  (`unlearn_jax.models.hf`).

Example:
    >>> cfg = gpt_config("tiny", vocab_size=64)
    >>> lm, model = language_model(cfg)
    >>> params = init_params(cfg, jax.random.key(0))
    >>> logits = lm.logits(params, ids)                        # [B, T, 64] float32
    >>> out = lm.generate(params, prompt_ids, prompt_len, 16)  # [B, 16], PAD after EOS
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from unlearn_jax import language
from unlearn_jax import model as model_lib

NORMS = ("rms", "layer")
POSITIONS = ("rope", "learned")
MLPS = ("gelu", "swiglu")
ATTENTION_IMPLS = (None, "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Shapes and variants of a `GPT` (hashable: usable as a static jit argument).

  Attributes:
    vocab_size: number of tokens ``V``.
    num_layers: number of blocks ``L``.
    num_heads: query heads ``H``.
    num_kv_heads: key/value heads ``H_kv`` (None: ``H``, plain multi-head attention); must divide ``H``.
    d_model: residual width ``D`` (a multiple of ``H``; the head dimension is ``D / H``).
    d_ff: MLP hidden width.
    max_len: longest sequence (the learned position table's size; generation checks it too).
    norm: 'rms' (RMSNorm, Llama) or 'layer' (LayerNorm with bias, GPT-2).
    norm_eps: the norms' epsilon.
    positions: 'rope' (rotary, Llama) or 'learned' (absolute, GPT-2).
    rope_theta: RoPE base.
    rope_scaling: None, Llama 3's ``(factor, low_freq_factor, high_freq_factor,
      original_max_position_embeddings)`` frequency rescaling, or ``(factor,)``: linear scaling (every frequency
      divided by ``factor``, transformers' ``rope_type='linear'``).
    tie_embeddings: output head = transposed token embedding.
    mlp: 'gelu' (``down(gelu_tanh(up x))``, GPT-2) or 'swiglu' (``down(silu(gate x) * up x)``, Llama).
    use_bias: biases in every Dense layer (attention and MLP).
    dtype: compute dtype (e.g. ``jnp.bfloat16``).
    param_dtype: parameter dtype.
    attention_impl: the backend of `jax.nn.dot_product_attention` (see `attention`): None (XLA), 'xla' or
      'cudnn' (NVIDIA GPUs with a 16-bit ``dtype``: the fused kernel, no T x T scores in memory).
  """
  vocab_size: int = 1024
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int | None = None
  d_model: int = 128
  d_ff: int = 512
  max_len: int = 256
  norm: str = "rms"
  norm_eps: float = 1e-5
  positions: str = "rope"
  rope_theta: float = 10000.0
  rope_scaling: tuple[float, float, float, int] | tuple[float] | None = None
  tie_embeddings: bool = True
  mlp: str = "swiglu"
  use_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "num_heads", "d_model", "d_ff", "max_len"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
    kv = self.num_kv_heads
    if kv is not None and (isinstance(kv, bool) or not isinstance(kv, (int, np.integer)) or kv < 1
                           or self.num_heads % kv):
      raise ValueError(f"GPTConfig.num_kv_heads must be a positive divisor of num_heads={self.num_heads}, "
                       f"got {kv!r}")
    if self.d_model % self.num_heads:
      raise ValueError(f"GPTConfig.d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"GPTConfig.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
    for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"GPTConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
    if self.positions == "rope" and self.head_dim % 2:
      raise ValueError(f"GPTConfig.d_model / num_heads = {self.head_dim} must be even for positions='rope'")
    for name in ("norm_eps", "rope_theta"):
      if not float(getattr(self, name)) > 0:
        raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)!r}")
    if self.rope_scaling is not None:
      scaling = tuple(self.rope_scaling)
      if (len(scaling) not in (1, 4) or not all(float(s) > 0 for s in scaling)
          or (len(scaling) == 4 and not scaling[2] > scaling[1])):
        raise ValueError("GPTConfig.rope_scaling must be (factor, low_freq_factor, high_freq_factor, "
                         "original_max_position_embeddings), all positive, high > low, or (factor,) for linear "
                         f"scaling; got {self.rope_scaling!r}")
      object.__setattr__(self, "rope_scaling", scaling)
    for name in ("dtype", "param_dtype"):
      try:
        dt = jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"GPTConfig.{name}: not a dtype: {getattr(self, name)!r}") from e
      if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"GPTConfig.{name} must be a floating dtype, got {dt}")
      object.__setattr__(self, name, dt)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else int(self.num_kv_heads)

  def replace(self, **overrides) -> GPTConfig:
    return dataclasses.replace(self, **overrides)


PRESETS: dict[str, dict[str, Any]] = {
    # ~1.2M parameters: the CPU-sized Llama-style model of the fictitious-facts benchmark.
    "tiny": dict(vocab_size=1024, num_layers=4, num_heads=4, d_model=128, d_ff=512, max_len=256),
    # GPT-2 small: 124,439,808 parameters.
    "gpt2-125m": dict(vocab_size=50257, num_layers=12, num_heads=12, d_model=768, d_ff=3072, max_len=1024,
                      norm="layer", positions="learned", mlp="gelu", use_bias=True, tie_embeddings=True),
    # Llama-3.2-1B: 1,235,814,400 parameters.
    "llama-1b": dict(vocab_size=128256, num_layers=16, num_heads=32, num_kv_heads=8, d_model=2048, d_ff=8192,
                     max_len=131072, rope_theta=500000.0, rope_scaling=(32.0, 1.0, 4.0, 8192)),
}


def gpt_config(name: str = "tiny", **overrides) -> GPTConfig:
  """The preset ``name`` ('tiny', 'gpt2-125m', 'llama-1b') with fields replaced by ``overrides``.

  Raises:
    ValueError: for an unknown preset or field, or an invalid resulting config.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown GPT preset {name!r}; known: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(GPTConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"GPTConfig has no field(s) {unknown}")
  return GPTConfig(**{**PRESETS[name], **overrides})


def rope_frequencies(cfg: GPTConfig) -> np.ndarray:
  """The ``d_h / 2`` rotary inverse frequencies ``theta^(-2i/d_h)``, with Llama 3's or linear rescaling.

  Linear scaling divides every frequency by ``factor``. Llama 3 divides the frequencies whose wavelength exceeds ``original_max / low_freq_factor`` by ``factor``,
  keeps those shorter than ``original_max / high_freq_factor``, and interpolates linearly in
  ``original_max / wavelength`` between the two.
  """
  d = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
  if cfg.rope_scaling is None:
    return inv.astype(np.float32)
  if len(cfg.rope_scaling) == 1:
    return (inv / cfg.rope_scaling[0]).astype(np.float32)
  factor, low, high, original = cfg.rope_scaling
  wavelen = 2 * np.pi / inv
  smooth = np.clip((original / wavelen - low) / (high - low), 0.0, 1.0)
  return ((1 - smooth) * inv / factor + smooth * inv).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates ``x [B, T, heads, d_h]`` at integer ``positions [B, T]`` (HF rotate_half convention)."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)   # [B, T, d_h/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  return (xf * cos + jnp.concatenate([-x2, x1], axis=-1) * sin).astype(x.dtype)


def _spec(x: jax.Array) -> tuple:
  """``x``'s PartitionSpec under an explicit-axes mesh, one entry per axis (all None without a mesh)."""
  spec = tuple(jax.typeof(x).sharding.spec)
  return spec + (None,) * (x.ndim - len(spec))


def _take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
  """``table[ids]``; under an explicit-axes mesh the rows follow ``ids``' (batch) sharding."""
  spec = _spec(ids)
  if any(s is not None for s in spec):
    return table.at[ids].get(out_sharding=jax.P(*spec, None))
  return table[ids]


def _rows_like(x: jax.Array, ref: jax.Array) -> jax.Array:
  """``x`` resharded so its leading (batch) axis is split like ``ref``'s (a no-op without a mesh)."""
  lead = _spec(ref)[0]
  if lead is None and not any(s is not None for s in _spec(x)):
    return x
  return jax.sharding.reshard(x, jax.P(lead, *([None] * (x.ndim - 1))))


def _scatter(buf: jax.Array, index: tuple, values: jax.Array) -> jax.Array:
  """``buf.at[index].set(values)``, keeping ``buf``'s sharding under an explicit-axes mesh."""
  spec = _spec(buf)
  if any(s is not None for s in spec):
    return buf.at[index].set(values, out_sharding=jax.P(*spec))
  return buf.at[index].set(values)


def _dense(cfg: GPTConfig, features: int, name: str, std: float = 0.02) -> nn.Dense:
  return nn.Dense(features, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  kernel_init=nn.initializers.normal(std), name=name)


def _norm(cfg: GPTConfig, name: str) -> nn.Module:
  if cfg.norm == "rms":
    return nn.RMSNorm(cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)
  return nn.LayerNorm(cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, use_fast_variance=False,
                      name=name)


def attention(q: jax.Array, keys: jax.Array, values: jax.Array, positions: jax.Array | None = None, *,
              implementation: str | None = None) -> jax.Array:
  r"""Causal softmax attention ``softmax(q k^T / sqrt(d_h) + M) v`` by `jax.nn.dot_product_attention`.

  ``q`` is ``[B, T, H, d_h]``, ``keys`` and ``values`` ``[B, S, H_kv, d_h]`` (grouped-query: query head ``j``
  reads key/value head ``j // (H / H_kv)``); scores and softmax are float32 whatever the dtype. The mask ``M``
  (``-inf`` where a key is hidden) is

  * ``positions=None``: causal within the sequence (``S == T``, key ``s`` visible to query ``t`` iff
    ``s <= t``), the training / prefill case. Right padding needs no mask of its own there: a real token
    never follows a pad.
  * ``positions [B, T]`` (the KV-cache case, key ``s`` sitting at position ``s``): query ``(b, t)`` sees the
    keys at positions ``<= positions[b, t]``, so each row's padding and not-yet-written cache slots are
    hidden. One query per row (decoding) passes this as per-row key lengths ``positions + 1`` (a padding
    mask, which cuDNN's fused kernel takes); several are an explicit ``[B, 1, T, S]`` boolean mask.

  Args:
    q: queries.
    keys: keys.
    values: values (same shape and dtype as ``keys``).
    positions: None, or the int positions of the queries in the cache.
    implementation: `jax.nn.dot_product_attention`'s backend: None or 'xla' (any device), 'cudnn' (NVIDIA GPU,
      fp16/bf16, the fused flash-attention kernel; not with several cached queries per row).

  Returns:
    ``[B, T, H, d_h]`` in ``q``'s dtype.

  Example:
    >>> out = attention(q, k, v)                      # causal, [B, T, H, d_h]
    >>> out = attention(q1, k_cache, v_cache, pos)     # one new token per row against the cache
  """
  keys, values = keys.astype(q.dtype), values.astype(q.dtype)
  if positions is None:
    return jax.nn.dot_product_attention(q, keys, values, is_causal=True, implementation=implementation)
  if positions.shape[1] == 1:
    return jax.nn.dot_product_attention(q, keys, values, key_value_seq_lengths=positions[:, 0].astype(jnp.int32) + 1,
                                        implementation=implementation)
  visible = jnp.arange(keys.shape[1])[None, None, :] <= positions[:, :, None]   # [B, T, S]
  return jax.nn.dot_product_attention(q, keys, values, mask=visible[:, None], implementation=implementation)


class Attention(nn.Module):
  """Causal (grouped-query) self-attention, optionally reading and writing a key/value cache.

  Attributes:
    cfg: the model config.
    layer: this block's index (its slot in the cache).
  """
  cfg: GPTConfig
  layer: int = 0

  def setup(self):
    cfg = self.cfg
    self.q = _dense(cfg, cfg.num_heads * cfg.head_dim, "q")
    self.k = _dense(cfg, cfg.kv_heads * cfg.head_dim, "k")
    self.v = _dense(cfg, cfg.kv_heads * cfg.head_dim, "v")
    self.o = _dense(cfg, cfg.d_model, "o", std=0.02 / math.sqrt(2 * cfg.num_layers))

  def __call__(self, x, positions, cache=None):
    """Attention output ``[B, T, D]`` and ``(k, v)``.

    Args:
      x: ``[B, T, D]`` normed inputs.
      positions: int ``[B, T]`` positions of the tokens of ``x``.
      cache: None (attend within ``x``; the returned ``(k, v)`` are this call's ``[B, T, H_kv, d_h]``), or the
        full ``(k, v)`` caches ``[L, B, S, H_kv, d_h]``: this call's keys and values are written at
        ``[layer, b, positions[b]]`` and each query attends to cache positions up to its own; the updated
        caches are returned.
    """
    cfg = self.cfg
    b, t, _ = x.shape
    q = self.q(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = self.k(x).reshape(b, t, cfg.kv_heads, cfg.head_dim)
    v = self.v(x).reshape(b, t, cfg.kv_heads, cfg.head_dim)
    if cfg.positions == "rope":
      inv_freq = rope_frequencies(cfg)
      q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    if cache is None:
      keys, values, new = k, v, (k, v)
    else:
      rows = jnp.arange(b)[:, None]
      ck, cv = (_scatter(c, (self.layer, rows, positions), new.astype(c.dtype)) for c, new in zip(cache, (k, v)))
      keys, values, new = ck[self.layer], cv[self.layer], (ck, cv)
    out = attention(q, keys, values, positions if cache is not None else None,
                    implementation=cfg.attention_impl)
    return self.o(out.reshape(b, t, cfg.num_heads * cfg.head_dim)), new


class MLP(nn.Module):
  """GPT-2's ``down(gelu_tanh(up x))`` or Llama's SwiGLU ``down(silu(gate x) * up x)``."""
  cfg: GPTConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    up = _dense(cfg, cfg.d_ff, "up")(x)
    if cfg.mlp == "swiglu":
      h = nn.silu(_dense(cfg, cfg.d_ff, "gate")(x)) * up
    else:
      h = nn.gelu(up, approximate=True)
    return _dense(cfg, cfg.d_model, "down", std=0.02 / math.sqrt(2 * cfg.num_layers))(h)


class Block(nn.Module):
  """One pre-norm transformer block; returns the new residual stream and the attention's ``(k, v)``."""
  cfg: GPTConfig
  layer: int = 0

  def setup(self):
    self.attn_norm = _norm(self.cfg, "attn_norm")
    self.attn = Attention(self.cfg, self.layer, name="attn")
    self.mlp_norm = _norm(self.cfg, "mlp_norm")
    self.mlp = MLP(self.cfg, name="mlp")

  def __call__(self, h, positions, cache=None):
    a, kv = self.attn(self.attn_norm(h), positions, cache)
    h = h + a
    return h + self.mlp(self.mlp_norm(h)), kv


class GPT(nn.Module):
  """Decoder-only transformer; see the module docstring for the maths and the parameter layout.

  Attributes:
    cfg: a `GPTConfig`.

  Example:
    >>> logits = GPT(cfg).apply({'params': params}, ids)                    # [B, T, V] float32
    >>> h2 = GPT(cfg).apply({'params': params}, ids, hidden_layer=2)        # [B, T, D] after 2 blocks
  """
  cfg: GPTConfig

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                          embedding_init=nn.initializers.normal(0.02), name="embed")
    if cfg.positions == "learned":
      self.pos_embed = nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                embedding_init=nn.initializers.normal(0.01), name="pos_embed")
    self.blocks = [Block(cfg, i, name=f"block_{i}") for i in range(cfg.num_layers)]
    self.final_norm = _norm(cfg, "final_norm")
    if not cfg.tie_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                              kernel_init=nn.initializers.normal(0.02),
                              dot_general=functools.partial(jax.lax.dot_general,
                                                            preferred_element_type=jnp.float32),
                              name="lm_head")

  def _embed(self, input_ids, positions):
    h = _take_rows(self.embed.embedding, input_ids).astype(self.cfg.dtype)
    if self.cfg.positions == "learned":
      h = h + _take_rows(self.pos_embed.embedding, positions).astype(self.cfg.dtype)
    return h

  def _head(self, h):
    """Final norm and output head: float32 logits ``[..., V]`` (computed in ``dtype``, float32 accumulation)."""
    h = self.final_norm(h)
    if self.cfg.tie_embeddings:
      table = self.embed.embedding.astype(self.cfg.dtype)
      return jnp.einsum("...d,vd->...v", h, table, preferred_element_type=jnp.float32)
    return self.lm_head(h).astype(jnp.float32)

  def __call__(self, input_ids, train: bool = False, *, hidden_layer: int | None = None):
    """Float32 logits ``[B, T, V]`` of ``input_ids [B, T]``; or, with ``hidden_layer=l``, the residual stream
    ``[B, T, D]`` (in ``dtype``) after ``l`` blocks (0: the embeddings), running no block beyond it.

    There is no dropout, so ``train`` changes nothing.

    Raises:
      ValueError: if ``hidden_layer`` is outside ``[0, num_layers]`` or the sequence exceeds ``max_len``
        with learned positions.
    """
    del train
    if hidden_layer is not None and not 0 <= hidden_layer <= self.cfg.num_layers:
      raise ValueError(f"hidden_layer must be in [0, {self.cfg.num_layers}], got {hidden_layer}")
    b, t = input_ids.shape
    if self.cfg.positions == "learned" and t > self.cfg.max_len:
      raise ValueError(f"input_ids has length {t} > max_len={self.cfg.max_len}")
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    h = self._embed(input_ids, positions)
    stop = self.cfg.num_layers if hidden_layer is None else hidden_layer
    for block in self.blocks[:stop]:
      h, _ = block(h, positions)
    return h if hidden_layer is not None else self._head(h)

  def prefill(self, input_ids, last, cache_len: int):
    """Runs the prompts ``[B, Tp]`` once: logits ``[B, V]`` at positions ``last [B]`` and the ``(k, v)``
    caches ``[L, B, cache_len, H_kv, d_h]`` holding the prompts' keys/values at positions ``< Tp``."""
    b, t = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    h = self._embed(input_ids, positions)
    ks, vs = [], []
    for block in self.blocks:
      h, (k, v) = block(h, positions)
      ks.append(k)
      vs.append(v)
    pad = ((0, 0), (0, 0), (0, cache_len - t), (0, 0), (0, 0))
    cache = tuple(jnp.pad(jnp.stack(a), pad) for a in (ks, vs))
    return self._head(jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]), cache

  def decode(self, input_ids, positions, cache):
    """Feeds ``input_ids [B, T]`` at ``positions [B, T]`` through the cache: logits ``[B, T, V]`` and the
    updated ``(k, v)`` caches."""
    h = self._embed(input_ids, positions)
    for block in self.blocks:
      h, cache = block(h, positions, cache)
    return self._head(h), cache


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: GPTConfig, rng: jax.Array):
  ids = jnp.zeros((1, min(cfg.max_len, 8)), jnp.int32)
  return GPT(cfg).init(rng, ids)["params"]


def init_params(cfg: GPTConfig, rng: jax.Array):
  """Random parameters of ``GPT(cfg)`` (jitted; ``jax.eval_shape(lambda k: init_params(cfg, k), key)`` gives
  their shapes without allocating them)."""
  return _init(cfg, rng)


def _greedy(module: GPT, cfg: GPTConfig, pad_id: int, eos_id: int, params, prompt_ids, prompt_len,
            max_new_tokens: int):
  b, tp = prompt_ids.shape
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
  if tp + max_new_tokens > cfg.max_len:
    raise ValueError(f"prompt width {tp} + max_new_tokens {max_new_tokens} exceeds max_len={cfg.max_len}")
  if prompt_len.shape != (b,):
    raise ValueError(f"prompt_len must have shape ({b},), got {prompt_len.shape}")
  out = _rows_like(jnp.full((b, max_new_tokens), pad_id, jnp.int32), prompt_ids)
  if max_new_tokens == 0:
    return out
  variables = {"params": params}
  length = _rows_like(jnp.clip(prompt_len.astype(jnp.int32), 1, tp), prompt_ids)
  logits, cache = module.apply(variables, prompt_ids.astype(jnp.int32), length - 1, tp + max_new_tokens,
                               method=GPT.prefill)
  tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def cond(carry):
    i, _, done, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, tok, done, cache, out = carry
    out = out.at[:, i].set(jnp.where(done, pad_id, tok))
    done = done | (tok == eos_id)
    step_logits, cache = module.apply(variables, tok[:, None], (length + i)[:, None], cache, method=GPT.decode)
    return i + 1, jnp.argmax(step_logits[:, 0], axis=-1).astype(jnp.int32), done, cache, out

  init = (jnp.int32(0), tok, _rows_like(jnp.zeros((b,), bool), prompt_ids), cache, out)
  return jax.lax.while_loop(cond, body, init)[-1]


def language_model(cfg: GPTConfig, *, pad_id: int = 0, eos_id: int = 2
                   ) -> tuple[language.LanguageModel, model_lib.Model]:
  """The `unlearn_jax.language.LanguageModel` and the classifier-style `unlearn_jax.model.Model` of ``GPT(cfg)``.

  ``LanguageModel.generate(params, prompt_ids, prompt_len, max_new_tokens)`` is jitted (``max_new_tokens``
  static): greedy decoding with a KV cache, ``pad_id`` after a row's first ``eos_id``; it stops early once
  every row has emitted EOS. ``Model.apply(params, state, x, train=...)`` takes ``x`` as ``input_ids`` or a
  batch dict holding them and returns ``(logits [B, T, V], state)``; ``state`` is ``{}``.
  """
  module = GPT(cfg)

  def logits(params, input_ids):
    return module.apply({"params": params}, input_ids)

  def hidden(params, input_ids, layer: int):
    return module.apply({"params": params}, input_ids, hidden_layer=layer)

  generate = jax.jit(functools.partial(_greedy, module, cfg, pad_id, eos_id), static_argnames="max_new_tokens")

  def apply(params, state, x, *, train: bool, rng=None):
    del train, rng
    ids = x["input_ids"] if isinstance(x, dict) else x
    return logits(params, ids), state

  lm = language.LanguageModel(logits=logits, hidden=hidden, generate=generate, num_layers=cfg.num_layers,
                              pad_id=pad_id, eos_id=eos_id)
  return lm, model_lib.Model(apply=apply)

