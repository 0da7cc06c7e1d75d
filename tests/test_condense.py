"""Dataset condensation: the gradient-matching distance against NumPy, the DM loss against NumPy, and that each
procedure lowers its own objective on a tiny problem."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import model as model_lib
from unlearn_jax.data import condense
from unlearn_jax.data.split import Split
from unlearn_jax.models import get_model


def _linear_model():
  """A linear softmax classifier ``logits = x W + b``; params ``{'w': (d, k), 'b': (k,)}``, no state."""
  def apply(params, state, x, *, train, rng=None):
    del train, rng
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], state
  return model_lib.Model(apply=apply, features=lambda p, s, x: x.reshape(x.shape[0], -1) @ p["w"])


def _numpy_linear_grads(w, b, x, y):
  """Gradient of the mean softmax cross-entropy of a linear model: dW = X^T (P - Y) / n, db = mean(P - Y)."""
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  return {"w": x.T @ p / len(y), "b": p.mean(0)}


def _numpy_distance(ga, gb, eps=1e-6):
  total = 0.0
  for key in ga:
    a, b = np.asarray(ga[key], np.float64), np.asarray(gb[key], np.float64)
    if a.ndim <= 1:
      continue
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    for j in range(a.shape[1]):  # one output node at a time
      total += 1.0 - a[:, j] @ b[:, j] / (np.linalg.norm(a[:, j]) * np.linalg.norm(b[:, j]) + eps)
  return total


def test_distance_on_linear_model_gradients_matches_numpy():
  rng = np.random.default_rng(0)
  d, k = 6, 4
  w, b = rng.normal(size=(d, k)).astype(np.float32), rng.normal(size=k).astype(np.float32)
  x_real, y_real = rng.normal(size=(20, d)).astype(np.float32), rng.integers(0, k, 20)
  x_syn, y_syn = rng.normal(size=(5, d)).astype(np.float32), rng.integers(0, k, 5)
  model, params = _linear_model(), {"w": jnp.asarray(w), "b": jnp.asarray(b)}

  def loss(p, x, y):
    logits, _ = model.apply(p, {}, x, train=False)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

  g_real = jax.grad(loss)(params, x_real, y_real)
  g_syn = jax.grad(loss)(params, x_syn, y_syn)
  np_real, np_syn = _numpy_linear_grads(w, b, x_real, y_real), _numpy_linear_grads(w, b, x_syn, y_syn)
  np.testing.assert_allclose(g_real["w"], np_real["w"], rtol=1e-5, atol=1e-6)
  got = float(jax.jit(condense.gradient_matching_distance)(g_real, g_syn))
  want = _numpy_distance(np_real, np_syn)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert 0 < got < 2 * k
  # the same gradients give 0, opposite gradients give 2 per output node; biases do not count
  # (up to eps = 1e-6 added to products of squared norms of order 1e-2)
  assert float(condense.gradient_matching_distance(g_real, g_real)) == pytest.approx(0.0, abs=1e-3)
  neg = jax.tree.map(jnp.negative, g_real)
  assert float(condense.gradient_matching_distance(g_real, neg)) == pytest.approx(2.0 * k, abs=1e-3)
  flipped_bias = {"w": g_real["w"], "b": -g_real["b"]}
  assert float(condense.gradient_matching_distance(g_real, flipped_bias)) == pytest.approx(0.0, abs=1e-3)


def test_distance_flattens_conv_kernels_with_outputs_last():
  rng = np.random.default_rng(1)
  a = {"k": rng.normal(size=(3, 2, 5)).astype(np.float32)}  # (width, in, out), as a Flax Conv1D kernel
  b = {"k": rng.normal(size=(3, 2, 5)).astype(np.float32)}
  np.testing.assert_allclose(float(condense.gradient_matching_distance(a, b)), _numpy_distance(a, b), rtol=1e-5)


def test_distance_rejects_mismatched_trees():
  with pytest.raises(ValueError, match="shapes"):
    condense.gradient_matching_distance({"w": jnp.ones((2, 3))}, {"w": jnp.ones((3, 2))})
  with pytest.raises(ValueError, match="trees differ"):
    condense.gradient_matching_distance({"w": jnp.ones((2, 3))}, {"v": jnp.ones((2, 3))})


def test_losses_match_numpy():
  rng = np.random.default_rng(2)
  model = _linear_model()
  w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
  params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
  x_real = rng.normal(size=(3, 7, 4)).astype(np.float32)  # 3 classes, 7 real each
  x_syn = rng.normal(size=(3, 2, 4)).astype(np.float32)
  want = sum(np.sum((x_real[c].mean(0) @ w - x_syn[c].mean(0) @ w) ** 2) for c in range(3))
  got = float(condense.distribution_matching_loss(model, params, {}, jnp.asarray(x_real), jnp.asarray(x_syn)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  want_gm = sum(_numpy_distance(_numpy_linear_grads(w, b, x_real[c], np.full(7, c)),
                                _numpy_linear_grads(w, b, x_syn[c], np.full(2, c))) for c in range(3))
  got_gm = float(jax.jit(condense.gradient_matching_loss, static_argnums=0)(model, params, {}, x_real, x_syn))
  np.testing.assert_allclose(got_gm, want_gm, rtol=1e-4)


def _tiny_problem():
  """Three Gaussian classes of 30 points in 6-D, an MLP with 8 hidden units, and its initialiser."""
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(3, 6)) * 2
  y = np.repeat(np.arange(3), 30)
  x = (centres[y] + rng.normal(size=(90, 6))).astype(np.float32)
  module = get_model("mlp", 3, features=(8,))
  return module, Split(jnp.asarray(x), jnp.asarray(y, jnp.int32)), condense.linen_init_fn(module, (6,))


def _mean_objective(loss_fn, model, init_fn, real, syn, keys=8):
  """The objective averaged over fixed fresh networks, with every real example of each class."""
  x_real = jnp.stack([real.x[np.asarray(real.y) == c] for c in range(3)])
  x_syn = syn.x.reshape((3, -1) + syn.x.shape[1:])
  nets = jax.vmap(init_fn)(jax.random.split(jax.random.key(100), keys))
  losses = jax.jit(jax.vmap(lambda p, s: loss_fn(model, p, s, x_real, x_syn)))(*nets)
  return float(jnp.mean(losses))


@pytest.mark.parametrize("method", ["gm", "dm"])
def test_condensation_lowers_its_objective(method):
  module, real, init_fn = _tiny_problem()
  model = model_lib.from_linen(module)
  kwargs = dict(num_classes=3, images_per_class=2, rng=jax.random.key(0), init="noise", return_losses=True)
  if method == "gm":
    run = lambda lr: condense.condense_gradient_matching(model, init_fn, real, iterations=60, outer_loop=2,
                                                          inner_loop=2, lr_images=lr, **kwargs)
    loss_fn, lr = condense.gradient_matching_loss, 0.1
  else:
    run = lambda lr: condense.condense_distribution_matching(model, init_fn, real, iterations=60, lr_images=lr,
                                                              **kwargs)
    loss_fn, lr = condense.distribution_matching_loss, 0.3
  start, _ = run(0.0)  # the initial images (the learning rate is traced: no second compilation)
  syn, losses = run(lr)
  assert syn.x.shape == (6, 6) and np.array_equal(np.asarray(syn.y), [0, 0, 1, 1, 2, 2])
  assert losses.shape == (60,) and np.all(np.isfinite(losses))
  before = _mean_objective(loss_fn, model, init_fn, real, start)
  after = _mean_objective(loss_fn, model, init_fn, real, syn)
  assert after < 0.8 * before, (before, after)
  # deterministic in the key
  again, _ = run(lr)
  np.testing.assert_array_equal(np.asarray(again.x), np.asarray(syn.x))


def test_real_init_starts_from_real_images_of_each_class():
  module, real, init_fn = _tiny_problem()
  model = model_lib.from_linen(module)
  syn = condense.condense_distribution_matching(model, init_fn, real, num_classes=3, images_per_class=2,
                                                rng=jax.random.key(1), iterations=1, lr_images=0.0)
  x, y = np.asarray(real.x), np.asarray(real.y)
  for row, label in zip(np.asarray(syn.x), np.asarray(syn.y)):
    assert any(np.array_equal(row, r) for r in x[y == label])


def test_bad_arguments_name_the_problem():
  module, real, init_fn = _tiny_problem()
  model = model_lib.from_linen(module)
  common = dict(num_classes=3, rng=jax.random.key(0), iterations=1)
  with pytest.raises(ValueError, match="images_per_class=31"):
    condense.condense_gradient_matching(model, init_fn, real, images_per_class=31, **common)
  with pytest.raises(ValueError, match="init must be"):
    condense.condense_distribution_matching(model, init_fn, real, init="zeros", **common)
  with pytest.raises(ValueError, match=r"class\(es\) \[3\]"):
    condense.condense_distribution_matching(model, init_fn, real, **{**common, "num_classes": 4})
  with pytest.raises(ValueError, match="features"):
    condense.condense_distribution_matching(model._replace(features=None), init_fn, real, **common)
  assert condense.default_loops(10) == (10, 50) and condense.default_loops(1) == (1, 1)
