"""A small 1-D convolutional network for MNIST-1D signals ``(N, L, C)`` (length 40, one channel).

Parameter layout::

  conv_0 .. conv_{C-1}   1-D convolutions, {kernel (k_i, in, out), bias (out,)}, stride 2, padding 1, each
                         followed by ReLU
  fc                     the classifier on the flattened last map, kernel (L_C * channels[-1], num_classes)

with ``C = len(channels)``. There is no BatchNorm, so ``state`` is ``{}``. With the defaults (three layers of 25
channels, kernels 5, 3, 3) a length-40 signal shrinks to 19, 10 and 5 positions: 5,210 parameters.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
from flax import linen as nn

from unlearn_jax.models.mlp import classifier_head


class CNN1D(nn.Module):
  """Conv1d(stride 2, padding 1)+ReLU blocks and a Dense classifier on the flattened map.

  The MNIST-1D paper's convolutional baseline (three stride-2 convolutions of 25 channels, then a linear layer),
  which reaches about 94% test accuracy where an MLP gets about 68%. ``width`` multiplies every channel count (for
  width studies); ``features=True`` returns the flattened last map (the classifier input).

  Attributes:
    channels: output channels of the convolutions (before ``width``).
    kernels: kernel size of each convolution.
    width: channel multiplier (a positive integer).
    num_classes: number of output logits.
    dtype: compute dtype; parameters stay float32 and logits are returned as float32.

  References:
    Greydanus and Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024 (the ``ConvBase`` baseline).

  Example:
    >>> model, params, state = init(CNN1D(num_classes=10), key, jnp.zeros((1, 40, 1)))
    >>> sorted(params)
    ['conv_0', 'conv_1', 'conv_2', 'fc']
  """
  channels: Sequence[int] = (25, 25, 25)
  kernels: Sequence[int] = (5, 3, 3)
  width: int = 1
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    """Logits ``(batch, num_classes)`` of signals ``(batch, length, channels)`` (``(batch, length)`` is read as one
    channel); ``train`` is unused (no BatchNorm or dropout)."""
    del train
    if len(self.channels) != len(self.kernels):
      raise ValueError(f"CNN1D: channels {tuple(self.channels)} and kernels {tuple(self.kernels)} differ in length")
    x = jnp.asarray(x, self.dtype)
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3:
      raise ValueError(f"CNN1D takes (batch, length, channels) inputs, got shape {x.shape}")
    for i, (ch, k) in enumerate(zip(self.channels, self.kernels)):
      x = nn.relu(nn.Conv(ch * self.width, (k,), strides=(2,), padding=((1, 1),), dtype=self.dtype,
                          name=f"conv_{i}")(x))
    x = x.reshape((x.shape[0], -1))
    return classifier_head(x, features=features, num_classes=self.num_classes, dtype=self.dtype, name="fc")
