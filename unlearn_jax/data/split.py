"""`Split`: the data of one role (train, forget, retain, test, shadow) as device arrays.

A `Split` is a pytree (its arrays are leaves), so it can be passed straight into jitted functions. Batching
happens on device: `Split.batches` permutes and reshapes into ``(num_batches, batch_size, ...)`` arrays that a
`jax.lax.scan` consumes without any host round trip.

Example:
    >>> s = Split(x=jnp.zeros((10, 8, 8, 1)), y=jnp.arange(10) % 3)
    >>> xb, yb = s.batches(4, jax.random.key(0))   # shapes (2, 4, 8, 8, 1), (2, 4)
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.tree_util.register_dataclass, data_fields=["x", "y", "index"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Split:
  """Inputs ``x``, integer labels ``y`` and the row ``index`` of each example in its source dataset.

  ``x`` is an array or a pytree of arrays sharing the leading (row) axis, e.g. a language-model split's
  ``{'input_ids': [N, T], 'loss_mask': [N, T], ...}``; ``y`` is one array with a row per example.
  """
  x: jax.Array
  y: jax.Array
  index: jax.Array | None = None

  def __post_init__(self):
    if isinstance(self.y, jax.ShapeDtypeStruct) or not hasattr(self.y, "shape"):
      return
    for path, leaf in jax.tree_util.tree_flatten_with_path(self.x)[0]:
      if hasattr(leaf, "shape") and leaf.shape[:1] != self.y.shape[:1]:
        name = f"x{jax.tree_util.keystr(path)}"
        raise ValueError(f"Split: {name} has {leaf.shape[0] if leaf.shape else 0} rows but y has {self.y.shape[0]}")
    if self.index is not None and self.index.shape[:1] != self.y.shape[:1]:
      raise ValueError(f"Split: index has {self.index.shape[0]} rows but y has {self.y.shape[0]}")

  def __len__(self) -> int:
    return int(self.y.shape[0])

  @property
  def size(self) -> int:
    return int(self.y.shape[0])

  def take(self, rows) -> "Split":
    """The sub-split of the given row positions (positions in this split, not source indices).

    Raises:
      ValueError: for a position outside ``[0, size)`` (checked unless ``rows`` is traced), instead of JAX's
        clamping it to the last row.
    """
    if isinstance(rows, jax.core.Tracer):
      return _take_rows(self, rows)
    rows = np.asarray(rows)  # checked on the host: no device program per index shape
    if rows.dtype == bool:
      if rows.shape != (self.size,):
        raise ValueError(f"Split.take: a boolean rows mask needs shape ({self.size},), got {rows.shape}")
      rows = np.flatnonzero(rows)
    if rows.size and np.issubdtype(rows.dtype, np.integer):
      low, high = int(rows.min()), int(rows.max())
      if low < 0 or high >= self.size:
        raise ValueError(f"Split.take: rows: position {low if low < 0 else high} is outside [0, {self.size})")
    if all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(self)):
      return jax.tree.map(lambda a: a[rows], self)  # a host split stays on the host
    return _take_rows(self, rows)

  def num_batches(self, batch_size: int, drop_remainder: bool = True) -> int:
    return num_batches(self.size, batch_size, drop_remainder)

  def batches(self, batch_size: int, rng: jax.Array | None = None, *, drop_remainder: bool = True):
    """``(xb, yb)`` of shape ``(num_batches, batch_size, ...)``, shuffled by ``rng`` when given.

    With ``drop_remainder=False`` the last batch is filled by wrapping around to the start of the (shuffled)
    order, so every example is seen at least once per epoch and all batches have the same shape.
    """
    return _batches(self.x, self.y, int(batch_size), rng, drop_remainder=bool(drop_remainder))

  def to_numpy(self) -> "Split":
    return jax.tree.map(np.asarray, self)


# One program shuffles and batches a split (per data shape and batch size), instead of one per indexing,
# reshape and concatenation of every leaf when called outside a jitted function.
@functools.partial(jax.jit, static_argnames=("batch_size", "drop_remainder"))
def _batches(x, y, batch_size: int, rng, *, drop_remainder: bool):
  return batch_arrays((x, y), batch_size, rng, drop_remainder=drop_remainder)


# Every leaf's rows in one program (per split layout and number of rows) instead of an indexing program or more per
# leaf and shape.
_take_rows = jax.jit(lambda split, rows: jax.tree.map(lambda a: a[rows], split))


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if n <= 0:
    raise ValueError("cannot batch an empty split")
  return max(1, n // batch_size) if drop_remainder else -(-n // batch_size)


def batch_arrays(arrays, batch_size: int, rng: jax.Array | None = None, *, drop_remainder: bool = True):
  """Shuffles (if ``rng``) and reshapes each array of a tuple to ``(num_batches, batch_size, ...)``.

  ``arrays`` may be any pytree whose leaves share the leading axis (e.g. a tuple holding a dict of token
  arrays); the same structure is returned. A split smaller than ``batch_size`` gives one batch of its own
  size with ``drop_remainder``.
  """
  n = jax.tree.leaves(arrays)[0].shape[0]
  bs = min(batch_size, n)
  nb = num_batches(n, bs, drop_remainder)
  order = jax.random.permutation(rng, n) if rng is not None else jnp.arange(n)
  total = nb * bs
  if total > n:  # wrap around to fill the last batch
    order = jnp.concatenate([order, order[: total - n]])
  order = order[:total]
  return jax.tree.map(lambda a: a[order].reshape((nb, bs) + a.shape[1:]), arrays)
