"""MNIST-1D generated locally (no network) and the 1-D CNN that fits it."""
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import model as model_lib
from unlearn_jax.data import load_dataset
from unlearn_jax.models import get_model


@pytest.fixture(scope="module")
def no_network():
  """Any attempt to open a socket while generating fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError("MNIST-1D tried to use the network")
  original = socket.socket.connect
  socket.socket.connect = refuse
  yield
  socket.socket.connect = original


def test_mnist1d_shape_classes_and_determinism(no_network):
  del no_network
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  a = load_dataset("mnist1d", num_samples=500)
  np.testing.assert_array_equal(np.random.get_state()[1], before)  # the global NumPy generator is left alone
  b = load_dataset("mnist1d", num_samples=500, seed=7)  # the experiment seed does not change the data
  assert a.train.x.shape == (400, 40, 1) and a.test.x.shape == (100, 40, 1)
  assert a.image_shape == (40, 1) and a.num_classes == 10
  assert set(np.unique(np.asarray(a.train.y))) == set(range(10))
  np.testing.assert_array_equal(np.asarray(a.train.x), np.asarray(b.train.x))
  np.testing.assert_array_equal(np.asarray(a.test.y), np.asarray(b.test.y))
  x = np.asarray(a.train.x)
  assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3  # normalised by the train statistics
  c = load_dataset("mnist1d", num_samples=500, template_seed=1)
  assert not np.array_equal(np.asarray(c.train.x), x)


def test_mnist1d_shuffled_sequence_permutes_positions():
  plain = load_dataset("mnist1d", num_samples=200, normalization="none")
  shuffled = load_dataset("mnist1d", num_samples=200, shuffle_seq=True, normalization="none")
  x, z = np.asarray(plain.train.x)[..., 0], np.asarray(shuffled.train.x)[..., 0]
  np.testing.assert_array_equal(np.asarray(plain.train.y), np.asarray(shuffled.train.y))
  # one fixed permutation of the 40 positions: each column of z is a column of x
  perm = [int(np.flatnonzero(np.all(np.isclose(x, z[:, [j]]), axis=0))[0]) for j in range(40)]
  assert sorted(perm) == list(range(40)) and perm != list(range(40))


def test_mnist1d_bad_num_samples():
  with pytest.raises(ValueError, match="num_samples"):
    load_dataset("mnist1d", num_samples=55)


def test_cnn1d_shapes_and_parameter_count():
  module = get_model("cnn1d", 10)
  model, params, state = model_lib.init(module, jax.random.key(0), jnp.zeros((1, 40, 1)))
  counts = {k: sum(int(v.size) for v in jax.tree.leaves(p)) for k, p in params.items()}
  # kernels 5x1x25, 3x25x25, 3x25x25 (+ biases); positions 40 -> 19 -> 10 -> 5; classifier 125 -> 10
  assert counts == {"conv_0": 150, "conv_1": 1900, "conv_2": 1900, "fc": 1260}
  logits, _ = model.apply(params, state, jnp.ones((3, 40, 1)), train=False)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  feats = module.apply({"params": params}, jnp.ones((3, 40, 1)), features=True)
  assert feats.shape == (3, 125)
  wide = model_lib.init(get_model("cnn1d", 10, width=2), jax.random.key(0), jnp.zeros((1, 40, 1)))[1]
  assert wide["conv_1"]["kernel"].shape == (3, 50, 50)


def test_cnn1d_matches_numpy_convolution():
  """One layer against a direct NumPy stride-2, padding-1 cross-correlation."""
  module = get_model("cnn1d", 4, channels=(3,), kernels=(5,))
  x = jax.random.normal(jax.random.key(1), (2, 12, 2))
  _, params, _ = model_lib.init(module, jax.random.key(0), x)
  k, b = np.asarray(params["conv_0"]["kernel"]), np.asarray(params["conv_0"]["bias"])
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (0, 0)))
  out_len = (12 + 2 - 5) // 2 + 1
  h = np.stack([np.einsum("nkc,kco->no", xp[:, 2 * t:2 * t + 5], k) for t in range(out_len)], 1) + b
  h = np.maximum(h, 0).reshape(2, -1)
  want = h @ np.asarray(params["fc"]["kernel"]) + np.asarray(params["fc"]["bias"])
  got = module.apply({"params": params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mnist1d_arrays_are_kept_on_disk_and_read_back(tmp_path, no_network):
  a = load_dataset("mnist1d", num_samples=200, data_dir=str(tmp_path), normalization="none")  # generated, written
  (stored,) = tmp_path.glob("mnist1d-*-n200-shuffle0-seed42.npz")
  b = load_dataset("mnist1d", num_samples=200, data_dir=str(tmp_path), normalization="none")  # read back
  for s, t in ((a.train, b.train), (a.test, b.test)):
    np.testing.assert_array_equal(s.x, t.x)
    np.testing.assert_array_equal(s.y, t.y)
  with np.load(stored) as raw:
    arrays = {k: raw[k] for k in raw.files}
  np.testing.assert_array_equal(arrays["x"].astype(np.float32)[..., None], a.train.x)
  arrays["x"] = arrays["x"] + 1.0  # the file, not a regeneration, is what a later call reads
  with open(stored, "wb") as f:
    np.savez(f, **arrays)
  c = load_dataset("mnist1d", num_samples=200, data_dir=str(tmp_path), normalization="none")
  np.testing.assert_allclose(c.train.x, a.train.x + 1.0, rtol=1e-6, atol=1e-6)
