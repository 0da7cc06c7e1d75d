"""A small class-conditional U-Net predicting the noise ε of a DDPM, for 8x8x1 digits and 32x32x3 images.

``UNet()(x, t, c)`` maps noisy images ``x`` (NHWC), integer (or float) timesteps ``t`` ``(B,)`` and class
labels ``c`` ``(B,)`` to an ε prediction shaped like ``x``. Label ``num_classes`` is the *null class*: its
embedding stands for "no condition", which classifier-free guidance needs (`unlearn_jax.diffusion.guided_eps`).

Layout (the DDPM / DDIM U-Net of Ho et al. and Song et al. that the SalUn DDPM code uses, made small)::

  time_mlp_0/1      sinusoidal embedding of t (width ch) -> Dense(4·ch) -> swish -> Dense(4·ch)
  class_embed       Embed(num_classes + 1, ch): the last row is the null class (SalUn keeps a separate
                    ``null_classes_emb`` vector; one table is the same thing)
  class_mlp_0/1     Dense(4·ch) -> swish -> Dense(4·ch) on the class embedding; every ResBlock reads the time and
                    class embeddings concatenated (SalUn's ``temb_cemb``)
  conv_in           3x3 conv to ``channels[0]``
  down_{i}_{j}      ``num_res_blocks`` ResBlocks per level i (+ self-attention at ``attn_resolutions``), then a
                    stride-2 3x3 conv except at the last level
  mid_0, mid_attn, mid_1
  up_{i}_{j}        ``num_res_blocks + 1`` ResBlocks per level on the concatenated skips, then nearest-neighbour
                    upsampling + 3x3 conv except at the top level
  norm_out, conv_out   GroupNorm -> swish -> 3x3 conv to the image channels

A ResBlock is GroupNorm -> swish -> conv -> (+ Dense(swish(embedding))) -> GroupNorm -> swish -> dropout -> conv, plus a
1x1 shortcut when the width changes. There is no BatchNorm, so the model has no state.

The SalUn CIFAR-10 model is ``channels=(128, 256, 256, 256), num_res_blocks=2, attn_resolutions=(16,),
dropout=0.1`` (their ``cifar10_train.yml``: ch 128, ch_mult 1,2,2,2); `cifar10_unet` builds it.

References:
  Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020; Ho and Salimans,
  "Classifier-Free Diffusion Guidance", 2022 (the null class); Fan et al., "SalUn", ICLR 2024 (their
  ``DDPM/models/diffusion.py``: a class-embedding MLP beside the time MLP, a learned null embedding).

Example:
    >>> net = UNet(channels=(32, 64), num_classes=10)
    >>> params = net.init(key, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
    >>> eps = net.apply(params, x_t, t, c)   # same shape as x_t
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn


def timestep_embedding(t: jax.Array, dim: int, *, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding ``[sin(t·f_k), cos(t·f_k)]`` with ``f_k = max_period^(-k/(dim/2-1))``, shape ``(B, dim)``.

  The frequencies follow the DDPM code (``get_timestep_embedding``: ``log(10000)/(half-1)`` spacing); an odd
  ``dim`` is zero-padded.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _groups(channels: int) -> int:
  """GroupNorm groups: ``channels // 4`` capped at 32 (the DDPM U-Net's 32 from 128 channels up), a divisor."""
  g = min(32, max(1, channels // 4))
  while channels % g:
    g -= 1
  return g


class ResBlock(nn.Module):
  """Two 3x3 convolutions with GroupNorm and swish, the embedding added in between, and a residual path."""
  out_channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.swish(nn.GroupNorm(_groups(x.shape[-1]), dtype=self.dtype, name="norm_0")(x))
    h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_0")(h)
    h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="emb")(nn.swish(emb))[:, None, None, :]
    h = nn.swish(nn.GroupNorm(_groups(self.out_channels), dtype=self.dtype, name="norm_1")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_1")(h)
    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the spatial positions, with a residual path."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = nn.GroupNorm(_groups(c), dtype=self.dtype, name="norm")(x).reshape(b, h * w, c)
    y = nn.SelfAttention(num_heads=1, dtype=self.dtype, name="attn")(y)
    return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
  """Class-conditional ε-prediction U-Net (see the module docstring for the layout).

  Attributes:
    channels: width of each resolution level; each level after the first halves the resolution.
    num_res_blocks: ResBlocks per level on the way down (one more on the way up).
    attn_resolutions: spatial sizes (height) at which self-attention follows each ResBlock.
    num_classes: number of real classes; label ``num_classes`` is the null class.
    dropout: dropout rate inside the ResBlocks (active with ``train=True`` and a ``dropout`` rng).
    dtype: compute dtype; parameters stay float32 and the output is float32.
  """
  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  num_classes: int = 10
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, t, c, train: bool = False):
    """ε prediction ``(B, H, W, C)`` for noisy ``x``, timesteps ``t`` ``(B,)`` and labels ``c`` ``(B,)``."""
    if x.ndim != 4:
      raise ValueError(f"UNet: x must be NHWC, got shape {x.shape}")
    levels = len(self.channels)
    if x.shape[1] % (2 ** (levels - 1)) or x.shape[2] % (2 ** (levels - 1)):
      raise ValueError(f"UNet: image size {x.shape[1:3]} is not divisible by 2**{levels - 1} "
                       f"(channels={tuple(self.channels)})")
    ch0, dim = self.channels[0], 4 * self.channels[0]
    mlp = lambda h, name: nn.Dense(dim, dtype=self.dtype, name=f"{name}_1")(
        nn.swish(nn.Dense(dim, dtype=self.dtype, name=f"{name}_0")(h)))
    temb = mlp(timestep_embedding(t, ch0), "time_mlp")
    cemb = mlp(nn.Embed(self.num_classes + 1, ch0, name="class_embed")(jnp.asarray(c, jnp.int32)), "class_mlp")
    emb = jnp.concatenate([temb, cemb], axis=-1).astype(self.dtype)

    h = nn.Conv(self.channels[0], (3, 3), dtype=self.dtype, name="conv_in")(jnp.asarray(x, self.dtype))
    skips = [h]
    for i, ch in enumerate(self.channels):
      for j in range(self.num_res_blocks):
        h = ResBlock(ch, self.dropout, self.dtype, name=f"down_{i}_{j}")(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.dtype, name=f"down_{i}_{j}_attn")(h)
        skips.append(h)
      if i < levels - 1:
        h = nn.Conv(ch, (3, 3), strides=(2, 2), dtype=self.dtype, name=f"down_{i}_pool")(h)
        skips.append(h)

    h = ResBlock(self.channels[-1], self.dropout, self.dtype, name="mid_0")(h, emb, train)
    h = AttnBlock(self.dtype, name="mid_attn")(h)
    h = ResBlock(self.channels[-1], self.dropout, self.dtype, name="mid_1")(h, emb, train)

    for i in reversed(range(levels)):
      ch = self.channels[i]
      for j in range(self.num_res_blocks + 1):
        h = ResBlock(ch, self.dropout, self.dtype, name=f"up_{i}_{j}")(
            jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.dtype, name=f"up_{i}_{j}_attn")(h)
      if i > 0:
        b, hh, ww, cc = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, cc), method="nearest")
        h = nn.Conv(ch, (3, 3), dtype=self.dtype, name=f"up_{i}_upsample")(h)

    h = nn.swish(nn.GroupNorm(_groups(h.shape[-1]), dtype=self.dtype, name="norm_out")(h))
    out = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, name="conv_out")(h)
    return out.astype(jnp.float32)


def cifar10_unet(num_classes: int = 10, dtype: Any = jnp.float32) -> UNet:
  """The SalUn / DDIM CIFAR-10 network: ch 128, ch_mult (1, 2, 2, 2), 2 ResBlocks, attention at 16x16, dropout 0.1."""
  return UNet(channels=(128, 256, 256, 256), num_res_blocks=2, attn_resolutions=(16,), num_classes=num_classes,
              dropout=0.1, dtype=dtype)
