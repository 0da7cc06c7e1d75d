"""``jax.random``'s Threefry-2x32 as fusible jnp ops: the same bits, one elementwise kernel.

On CPU, ``jax.random`` lowers every Threefry draw to a five-step while loop over materialised state that XLA cannot
fuse: each draw writes its words to memory (three times the output in temporaries) and runs several times slower
than the same hash written as elementwise jnp ops, which fuse into whatever consumes them. `threefry2x32` is that
hash (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011: 20 rounds, jax's rotations and key
schedule); `bits` gives ``jax.random.bits(key, shape)`` bit for bit from it (tested against both).

Used by the merges' random masks (`unlearn_jax.merging.arithmetic`) and TRAK's projection matrices
(`unlearn_jax.attribution.trak`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from unlearn_jax import sharding

ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Threefry-2x32 block function (20 rounds), as ``jax.extend.random.threefry2x32_p``, in fusible jnp ops."""
  ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = ((x2 << jnp.uint32(r)) | (x2 >> jnp.uint32(32 - r))) ^ x1
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x1, x2


def bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array | None:
  """``jax.random.bits(key, shape)`` (uint32) bit for bit, for a threefry key with jax's default partitionable
  bits: entry i of the flattened array is the xor of the two words of ``threefry2x32(key, (0, i))``. None for
  another key type or setting, or 2³² entries or more (then call ``jax.random``)."""
  shape = tuple(int(d) for d in shape)
  if (str(jax.random.key_impl(key)) != "threefry2x32" or math.prod(shape) >= 2 ** 32
      or not jax.config.jax_threefry_partitionable):
    return None
  k1, k2 = jax.random.key_data(key)
  index = sharding.flat_index(shape, jnp.uint32)
  b1, b2 = threefry2x32(k1, k2, jnp.zeros_like(index), index)
  return b1 ^ b2


def uniform(bits: jax.Array) -> jax.Array:
  """float32 uniforms in [0, 1) from uint32 ``bits`` as ``jax.random.uniform`` makes them: the top 23 bits
  ``m`` give ``m · 2⁻²³`` (exact; jax writes it as the float ``1.m`` minus 1, the same number)."""
  return (bits >> jnp.uint32(9)).astype(jnp.float32) * jnp.float32(2.0**-23)
