"""The training loop: optimiser maths, schedules, scanning, non-finite losses, mesh checks (training on 8 devices:
``tests/test_eight_devices.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from unlearn_jax import config as config_lib
from unlearn_jax import model as model_lib
from unlearn_jax import train
from unlearn_jax.data.split import Split



class Linear(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


def blobs(n=96, d=5, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  centres = rng.normal(size=(3, d)) * 3
  x = centres[y] + rng.normal(size=(n, d))
  return Split(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.arange(n))


def test_cosine_step_warmup_schedules():
  cfg = config_lib.train_config(lr=0.1, epochs=10, schedule="cosine")
  sched = train.make_schedule(cfg, steps_per_epoch=5)
  np.testing.assert_allclose(sched(0), 0.1)
  np.testing.assert_allclose(sched(25), 0.05, rtol=1e-5)
  np.testing.assert_allclose(sched(50), 0.0, atol=1e-7)
  step = train.make_schedule(config_lib.train_config(lr=0.1, epochs=10, schedule="step", milestones=(4, 8),
                                                     gamma=0.1), 5)
  np.testing.assert_allclose([step(19), step(20), step(39), step(40)], [0.1, 0.01, 0.01, 0.001], rtol=1e-5)
  warm = train.make_schedule(config_lib.train_config(lr=0.1, epochs=10, schedule="constant", warmup_epochs=2), 5)
  np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(30)], [0.0, 0.05, 0.1, 0.1], rtol=1e-5)
  with pytest.raises(ValueError, match="schedule"):
    train.make_schedule(config_lib.train_config(schedule="exp"), 5)


def test_sgd_matches_torch_formula():
  """torch.optim.SGD(lr, momentum=m, nesterov=True, weight_decay=wd), written out in NumPy."""
  lr, m, wd = 0.1, 0.9, 5e-4
  cfg = config_lib.train_config(lr=lr, momentum=m, nesterov=True, weight_decay=wd, schedule="constant")
  tx = train.make_optimizer(cfg, steps_per_epoch=1)
  w = jnp.array([1.0, -2.0, 3.0])
  grads = [jnp.array([0.5, 0.1, -0.3]), jnp.array([-0.2, 0.4, 0.1]), jnp.array([0.3, 0.3, 0.3])]
  state = tx.init(w)
  w_np, buf = np.asarray(w, np.float64), None
  for g in grads:
    upd, state = tx.update(g, state, w)
    w = optax.apply_updates(w, upd)
    d = np.asarray(g, np.float64) + wd * w_np
    buf = d if buf is None else m * buf + d
    w_np = w_np - lr * (d + m * buf)
  np.testing.assert_allclose(w, w_np, rtol=1e-5)


def test_adamw_and_unknown_optimizer():
  tx = train.make_optimizer(config_lib.train_config(optimizer="adamw", lr=1e-3, weight_decay=0.1), 1)
  upd, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))
  # first Adam step is lr * sign(g); decoupled decay adds lr * wd * w
  np.testing.assert_allclose(upd, -(1e-3 + 1e-3 * 0.1) * np.ones(2), rtol=1e-4)
  with pytest.raises(ValueError, match="optimizer"):
    train.make_optimizer(config_lib.train_config(optimizer="lbfgs"), 1)


def test_fit_learns_and_keeps_inputs():
  split = blobs()
  model, params, state = model_lib.init(Linear(), jax.random.key(0), split.x[:1])
  cfg = config_lib.train_config(lr=0.1, epochs=5, batch_size=16)
  lines = []
  new_params, _, hist = train.fit(model, params, state, split, cfg, rng=jax.random.key(1), log=lines.append)
  assert len(hist["loss"]) == 5 and hist["loss"][-1] < hist["loss"][0] and hist["accuracy"][-1] > 0.9
  assert len(lines) == 5 and lines[0].startswith("epoch 1/5")
  # the caller's parameters were not donated away
  assert np.isfinite(np.asarray(jax.tree.leaves(params)[0])).all()
  # same seed, same numbers
  again, _, hist2 = train.fit(model, params, state, split, cfg, rng=jax.random.key(1))
  chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), new_params, again)
  assert all(jax.tree.leaves(chex_equal)) and hist2["loss"] == hist["loss"]


@pytest.mark.parametrize("loop", ["scan", "steps"])
def test_epoch_compiles_once(loop):
  split = blobs()
  model, params, state = model_lib.init(Linear(), jax.random.key(0), split.x[:1])
  cfg = config_lib.train_config(epochs=1, batch_size=16)
  tx = train.make_optimizer(cfg, 6)
  epoch = train.make_epoch_fn(train.classification_loss(model), tx, batch_size=16, loop=loop)
  opt_state = tx.init(params)
  p, s, o, losses, metrics = epoch(params, state, opt_state, split.x, split.y, jax.random.key(0))
  assert losses.shape == (6,) and metrics["accuracy"].shape == (6,)
  p, s, o, losses, _ = epoch(p, s, o, split.x, split.y, jax.random.key(1))
  assert (epoch if loop == "scan" else epoch.step)._cache_size() == 1


class TinyConv(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_stepped_epoch_equals_the_scanned_epoch():
  """The CPU default (one jitted step per batch) computes what the whole-epoch scan computes."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(48, 6, 6, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 48), jnp.int32)
  model, params, state = model_lib.init(TinyConv(), jax.random.key(0), x[:1])
  cfg = config_lib.train_config(epochs=1, batch_size=16, lr=0.1)
  tx = train.make_optimizer(cfg, 3)
  outs = {}
  for loop in train.LOOPS:
    epoch = train.make_epoch_fn(train.classification_loss(model), tx, batch_size=16, loop=loop)
    copy = jax.tree.map(jnp.array, (params, state, tx.init(params)))
    outs[loop] = epoch(*copy, x, y, jax.random.key(4))
  for a, b in zip(jax.tree.leaves(outs["scan"]), jax.tree.leaves(outs["steps"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert outs["steps"][3].shape == (3,)
  assert not np.allclose(jax.tree.leaves(outs["steps"][0])[0], jax.tree.leaves(params)[0])
  with pytest.raises(ValueError, match="loop="):
    train.make_epoch_fn(train.classification_loss(model), tx, batch_size=16, loop="while")


def test_non_finite_loss_names_epoch_and_step():
  split = blobs()
  x = np.asarray(split.x).copy()
  x[:] = np.nan
  bad = Split(jnp.asarray(x), split.y, split.index)
  model, params, state = model_lib.init(Linear(), jax.random.key(0), split.x[:1])
  with pytest.raises(FloatingPointError, match=r"epoch 0, step 0"):
    train.fit(model, params, state, bad, config_lib.train_config(epochs=2, batch_size=16), rng=jax.random.key(0))


def test_batch_not_divisible_by_mesh():
  from unlearn_jax import sharding
  mesh = sharding.make_mesh(data=1)
  tx = optax.sgd(0.1)
  train.make_epoch_fn(lambda *a: None, tx, batch_size=3, mesh=mesh)  # 1 device: fine
  with pytest.raises(ValueError, match="mesh"):
    sharding.make_mesh(data=3)


@pytest.mark.parametrize("name,kwargs", [("resnet18", {}), ("resnet20", {"width": 1}), ("resnet20", {"width": 4}),
                                         ("vgg16_bn", {})])
def test_cifar_models_train_one_epoch_and_update_batchnorm(name, kwargs):
  from unlearn_jax.models import get_model
  rng = np.random.default_rng(0)
  split = Split(jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
                jnp.asarray(rng.integers(0, 10, 8), jnp.int32), jnp.arange(8))
  model, params, state = model_lib.init(get_model(name, 10, **kwargs), jax.random.key(0), split.x[:1])
  cfg = config_lib.train_config(lr=0.01, epochs=1, batch_size=4)
  new_params, new_state, hist = train.fit(model, params, state, split, cfg, rng=jax.random.key(1))
  assert len(hist["loss"]) == 1 and np.isfinite(hist["loss"][0])
  assert set(new_state) == {"batch_stats"}
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state))]
  assert all(moved), f"{sum(moved)}/{len(moved)} BatchNorm statistics updated"
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)))
