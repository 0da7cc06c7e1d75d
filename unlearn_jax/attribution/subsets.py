"""The outputs of a population of α-subset models: what datamodels regress on, cached with Orbax.

A population of M models, member m trained on the training rows ``masks[m]`` (e.g. by
``unlearn_jax.population.fit(..., masks=population.subset_masks(n, M, alpha, key))``), is summarised for
attribution by its masks and every member's logits on the rows of interest (the training rows, in training-set
order). `population_logits` computes the logits of all members in one vmapped program; `save_outputs` /
`load_outputs` keep them in a directory through `unlearn_jax.checkpoint` (the only Orbax module), so an
attribution is computed once per training set and reused.

Example:
    >>> logits = population_logits(model, params, state, train.x)       # [M, n, C]
    >>> save_outputs(directory, SubsetOutputs(masks, logits), {'alpha': 0.5})
    >>> outputs, meta = load_outputs(directory)
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import checkpoint
from unlearn_jax.model import Model


def check_alpha(alpha: float, key: str = "method.alpha") -> None:
  """ValueError ``<key>=<alpha>: ...`` unless 0 < α < 1."""
  if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not 0.0 < float(alpha) < 1.0:
    raise ValueError(f"{key}={alpha!r}: an α-subset fraction must be in (0, 1)")


def check_num_models(num_models: int, key: str = "method.num_models") -> None:
  """ValueError ``<key>=<num_models>: ...`` unless an integer >= 3 (the fewest a datamodel regression with
  held-out models for its λ can use)."""
  if not isinstance(num_models, numbers.Integral) or isinstance(num_models, bool) or num_models < 3:
    raise ValueError(f"{key}={num_models!r}: datamodels need at least 3 subset models (an integer)")


class SubsetOutputs(NamedTuple):
  """``masks`` [M, n] bool (row i in member m's training subset) and ``logits`` [M, n_rows, C] float32."""
  masks: Any
  logits: Any


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _logits(model: Model, params, state, x, *, batch_size: int):
  n = jax.tree.leaves(x)[0].shape[0]
  nb = -(-n // batch_size)
  pad = nb * batch_size - n
  xp = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)]) if pad else a, x)
  xb = jax.tree.map(lambda a: a.reshape((nb, batch_size) + a.shape[1:]), xp)

  def one(p, s):
    out = jax.lax.map(lambda b: model.apply(p, s, b, train=False)[0].astype(jnp.float32), xb)
    return out.reshape((nb * batch_size,) + out.shape[2:])[:n]

  return jax.vmap(one)(params, state)


def population_logits(model: Model, params, state, x, *, batch_size: int = 1024) -> jax.Array:
  """Logits [M, n, C] of every member of a population (leaves with a leading model axis) on rows ``x``, in eval
  mode, ``batch_size`` rows at a time."""
  if int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size}: must be >= 1")
  n = jax.tree.leaves(x)[0].shape[0]
  return _logits(model, params, state, x, batch_size=min(int(batch_size), n))


def check_outputs(outputs: SubsetOutputs) -> None:
  """ValueError naming the field if ``masks`` is not [M, n] or ``logits`` not [M, n_rows, C] with the same M."""
  m = np.shape(outputs.masks)
  lg = np.shape(outputs.logits)
  if len(m) != 2 or m[0] < 1:
    raise ValueError(f"masks: shape {m}; expected [num_models, num_train]")
  if len(lg) != 3 or lg[0] != m[0]:
    raise ValueError(f"logits: shape {lg} does not fit masks of shape {m} (need [{m[0]}, rows, classes])")


def save_outputs(directory, outputs: SubsetOutputs, metadata: dict | None = None, members=None) -> None:
  """Writes ``outputs`` (and JSON ``metadata``; and the members' stacked ``(params, state)`` if given, for TRAK)
  as one checkpoint in ``directory``."""
  check_outputs(outputs)
  tree = {"masks": jnp.asarray(outputs.masks, bool), "logits": jnp.asarray(outputs.logits, jnp.float32)}
  state = {}
  if members is not None:
    tree["members"], state = members
  checkpoint.save(directory, tree, state, metadata)


def _load(directory):
  found = checkpoint.restore_stored(directory)
  if found is None or not {"masks", "logits"} <= set(found[0]):
    raise ValueError(f"attribution {directory}: no subset-model outputs there (see "
                     "unlearn_jax.attribution.subsets.save_outputs)")
  return found


def load(directory, *, members: bool = False) -> tuple[SubsetOutputs, dict, tuple | None]:
  """``(SubsetOutputs, metadata, members)`` from `save_outputs`' ``directory`` in one read: ``members`` is the
  stacked ``(params, state)`` saved with the outputs, or None. ValueError naming the directory if there are no
  outputs, or (with ``members=True``) if the members were not saved."""
  tree, state, meta = _load(directory)
  if members and "members" not in tree:
    raise ValueError(f"attribution {directory}: the members' parameters were not saved")
  return SubsetOutputs(tree["masks"], tree["logits"]), meta, (tree["members"], state) if "members" in tree else None


def load_outputs(directory) -> tuple[SubsetOutputs, dict]:
  """``(SubsetOutputs, metadata)`` from `save_outputs`' ``directory``; ValueError naming it if there is none."""
  return load(directory)[:2]


def load_members(directory):
  """The members' stacked ``(params, state)`` saved with the outputs; ValueError if they were not saved."""
  return load(directory, members=True)[2]
