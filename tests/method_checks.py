"""Checks every unlearning method must pass (shared by the method test modules)."""
import functools

import jax
import numpy as np

from unlearn_jax import model as model_lib
from unlearn_jax import unlearning
from unlearn_jax.data import load_dataset, make_unlearning_splits
from unlearn_jax.models import get_model


@functools.lru_cache()
def digits_setup():
  """A digits MLP (32 hidden units, untrained) and a 10% random forget split, shared by the method tests."""
  ds = load_dataset("digits", seed=0)
  splits = make_unlearning_splits(ds, kind="random", fraction=0.1, seed=0)
  model, params, state = model_lib.init(get_model("mlp", 10, features=(32,)), jax.random.key(0), ds.train.x[:1])
  return model, params, state, splits


def check_method_contract(method, model, params, state, splits, config):
  """The standard signature runs, keeps tree structure, shapes and dtypes, moves the weights and is
  deterministic in ``rng``; BatchNorm-free ``state`` comes back unchanged. The first call passes every registered
  default as a keyword (``config`` overriding some), the second ``config=``: both give the same weights."""
  options = {**unlearning.DEFAULTS[method.__name__], **config}
  a, sa = method(model, params, state, splits.forget, splits.retain, rng=jax.random.key(1), **options)
  b, _ = method(model, params, state, splits.forget, splits.retain, config=config, rng=jax.random.key(1))
  assert jax.tree.structure(a) == jax.tree.structure(params)
  for x, y, p in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(params)):
    assert x.shape == p.shape and x.dtype == p.dtype
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, p) for x, p in zip(jax.tree.leaves(a), jax.tree.leaves(params)))
  assert sa == state
