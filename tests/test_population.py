"""Populations: a member trains as it would alone, bad input is refused first (the model axis sharded over 8 devices:
``tests/test_eight_devices.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from unlearn_jax import config as config_lib
from unlearn_jax import model as model_lib
from unlearn_jax import population as pop
from unlearn_jax import train
from unlearn_jax.data.split import Split


class Tiny(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


def data(n=40, d=5, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  x = rng.normal(size=(3, d))[y] * 2 + rng.normal(size=(n, d))
  return Split(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.arange(n))


def cfg(**kw):
  return config_lib.train_config(**{"lr": 0.1, "epochs": 2, "batch_size": 8, "momentum": 0.9,
                                    "schedule": "constant", **kw})


def max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("loop", ["scan", "steps"])
def test_member_equals_the_same_seed_and_mask_trained_alone(loop):
  """Two members: every row (5 steps an epoch), and a random 60% subset (3 steps: the other two are skipped);
  each equals `train.fit` on its own rows with its own key and initialisation."""
  split, module = data(), Tiny()
  model = model_lib.from_linen(module)
  params, state = pop.init(module, [0, 1], split.x[:1])
  one = model_lib.init(module, jax.random.key(1), split.x[:1])[1]
  assert max_diff(pop.member(params, 1), one) == 0.0  # member i is initialised from key i
  masks = np.stack([pop.full_masks(40, 2)[0], pop.subset_masks(40, 2, 0.6, jax.random.key(3))[0]])
  assert masks.sum(1).tolist() == [40, 24]
  rngs = jax.random.split(jax.random.key(7), 2)
  out_params, out_state, history = pop.fit(model, params, state, split, cfg(), rng=rngs, masks=masks, loop=loop)
  assert jax.tree.leaves(out_params)[0].shape[0] == 2 and len(history["loss"]) == 2
  losses = []
  for i in range(2):
    p, s, h = train.fit(model, pop.member(params, i), pop.member(state, i), split.take(np.flatnonzero(masks[i])),
                        cfg(), rng=rngs[i], loop=loop)
    assert max_diff(p, pop.member(out_params, i)) < 1e-5, i
    losses.append(h["loss"])
  # the history is the mean over members of each member's mean over the steps it took
  np.testing.assert_allclose(history["loss"], np.mean(losses, axis=0), rtol=1e-5)


def test_masks_and_bad_input_are_refused_before_training():
  split, module = data(), Tiny()
  model = model_lib.from_linen(module)
  params, state = pop.init(module, [0, 1], split.x[:1])
  sub = pop.subset_masks(40, 4, 0.25, jax.random.key(0))
  assert sub.shape == (4, 40) and (sub.sum(1) == 10).all() and len({r.tobytes() for r in sub}) == 4
  np.testing.assert_array_equal(pop.exclude_masks(5, [[0, 1], [4, 2]]), [[0, 0, 1, 1, 1], [1, 1, 0, 1, 0]])
  with pytest.raises(ValueError, match=r"population.size=1: a population needs at least 2"):
    pop.init(module, [0], split.x[:1])
  with pytest.raises(ValueError, match=r"population.size=1"):
    pop.fit(model, pop.member(params, slice(0, 1)), state, split, cfg(), rng=jax.random.key(0))
  for alpha in (0.0, 1.5):
    with pytest.raises(ValueError, match=rf"population.alpha={alpha}: must be in \(0, 1\]"):
      pop.subset_masks(40, 2, alpha, jax.random.key(0))
  empty = pop.full_masks(40, 2)
  empty[1] = False
  with pytest.raises(ValueError, match="member 1 has no rows"):
    pop.fit(model, params, state, split, cfg(), rng=jax.random.key(0), masks=empty)
  with pytest.raises(ValueError, match=r"shape \(2, 39\), expected \(2, 40\)"):
    pop.fit(model, params, state, split, cfg(), rng=jax.random.key(0), masks=np.ones((2, 39), bool))
  small = pop.full_masks(40, 2)
  small[1, 5:] = False
  with pytest.raises(ValueError, match="member 1 has 5 rows, fewer than batch_size=8"):
    pop.fit(model, params, state, split, cfg(), rng=jax.random.key(0), masks=small)
  uneven = pop.full_masks(40, 2)
  uneven[1, :8] = False  # 4 steps per epoch against 5
  with pytest.raises(ValueError, match="members take 4 to 5 steps per epoch, and schedule='cosine'"):
    pop.fit(model, params, state, split, cfg(schedule="cosine"), rng=jax.random.key(0), masks=uneven)
  # memory: the plan's arithmetic, and a limit one member short refuses with the size that fits
  plan = pop.plan_memory(params, state, split, cfg(), model=model)
  one = jax.tree.map(lambda a: a[0], params)
  weights = sum(a.size * 4 for a in jax.tree.leaves(one))
  acts = 2 * sum(a.size * 4 for a in jax.tree.leaves(model.intermediates(one, {}, split.x[:8])))
  opt = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(train.make_optimizer(cfg(), 5).init(one)))
  assert opt >= weights  # the momentum, and step counts
  assert plan.per_member == 2 * weights + opt + acts + 8 * 40  # params, grads, optimiser state, activations, rows
  assert plan.shared == 40 * 5 * 4 + 40 * 4 and plan.per_device == plan.shared + 2 * plan.per_member
  with pytest.raises(ValueError, match=r"population.size=2: needs .* GiB per device .*; at most 1 models fit"):
    pop.fit(model, params, state, split, cfg(), rng=jax.random.key(0),
            memory_limit=plan.shared + plan.per_member + plan.per_member // 2)


@pytest.mark.parametrize("name,options,how", [("salun", dict(epochs=2, batch_size=8, fraction=0.3), "vmapped"),
                                              ("ssd", {}, "one_shot"),
                                              ("oracle_matching", dict(epochs=2, batch_size=8, lr=0.05),
                                               "vmapped"),
                                              ("dmm", dict(epochs=2, batch_size=8, lr=0.05, dm_terms="diagonal"),
                                               "vmapped")])
def test_unlearning_a_population_equals_each_member_alone(name, options, how):
  """SalUn (a Plan, with a saliency mask per member), SSD (one-shot), oracle matching and DMM (per-member matching
  sets and targets): one program over the model axis, member ``i`` equal to the method run alone on it with key
  ``i`` (and, oracle matching, its own oracle)."""
  from unlearn_jax import sweep, unlearning
  split, module = data(), Tiny()
  model = model_lib.from_linen(module)
  params, state = pop.init(module, [0, 1], split.x[:1])
  forget, retain = split.take(np.arange(8)), split.take(np.arange(8, 40))
  keys = jax.random.split(jax.random.key(5), 2)
  oracles = pop.init(module, [2, 3], split.x[:1])
  from unlearn_jax.attribution import subsets
  rng = np.random.default_rng(0)  # an α-subset population's outputs: 6 models, half the rows each
  outputs = subsets.SubsetOutputs(rng.random((6, 40)) < 0.5, rng.normal(size=(6, 40, 3)).astype(np.float32))
  inputs = {"oracle_matching": lambda i: {"oracles": [(pop.member(oracles[0], i), pop.member(oracles[1], i))]},
            "dmm": lambda i: {"subset_outputs": outputs}}.get(name)
  out, out_state, info = sweep.unlearn_population(name, model, params, state, forget, retain, options=options,
                                                  rng=keys, inputs=inputs)
  assert info["how"] == how and np.asarray(info["finite"]).all()
  for i in range(2):
    alone, _ = unlearning.get_method(name)(model, pop.member(params, i), pop.member(state, i), forget, retain,
                                           config=options, rng=keys[i], **(inputs(i) if inputs else {}))
    assert max_diff(alone, pop.member(out, i)) < 1e-5
    assert max_diff(alone, pop.member(params, i)) > 1e-3  # it did unlearn something
