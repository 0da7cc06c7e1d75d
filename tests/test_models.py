"""Tests for unlearn_jax.models: registry, shapes, dtypes, state layout, parameter counts, BatchNorm modes.

Real initialisation runs once per model on 8x8x1 digits (cached); 32x32x3 CIFAR shapes and parameter counts
are checked through ``jax.eval_shape``, which traces the same code without computing, to keep the file fast.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearn_jax.model import from_linen, init, num_params
from unlearn_jax.models import MODELS, VGG, BasicBlock, ResNet18, ResNet20, get_model

DIGITS = (8, 8, 1)
CIFAR = (32, 32, 3)
BATCH = 2
BN_MODELS = {"resnet18", "resnet20", "vgg11_bn", "vgg16_bn"}
# The image models (NHWC inputs); cnn1d takes (N, L, C) signals and is tested in tests/test_mnist1d.py.
IMAGE_MODELS = tuple(m for m in MODELS if m != "cnn1d")
EMBED_DIM = {"mlp": 512, "cnn": 128, "resnet18": 512, "resnet20": 64,
             "vgg11": 512, "vgg16": 512, "vgg11_bn": 512, "vgg16_bn": 512}


# XLA's RngBitGenerator keys compile far faster on CPU than threefry ones; initialising every model draws
# normals of many new shapes, so this keeps the file fast without changing what is tested.
KEY = jax.random.key(0, impl="rbg")


def _images(shape, n=BATCH, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((n,) + shape), jnp.float32)


def _kwargs(width):
  return {} if width is None else {"width": width}


@functools.lru_cache(maxsize=None)
def _init(name, width=None):
  """Real ``(Model, params, state)`` on digits, shared by the tests.

  The sample batch is the test batch itself, so un-jitted applies on it reuse the primitives compiled here.
  """
  return init(get_model(name, 10, **_kwargs(width)), KEY, _images(DIGITS))


@functools.lru_cache(maxsize=None)
def _abstract_init(name, shape, width=None, dtype=jnp.float32):
  """``(Model, params, state)`` with ShapeDtypeStruct leaves, from ``init`` under ``jax.eval_shape``."""
  module = get_model(name, 10, dtype=dtype, **_kwargs(width))
  x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
  params, state = jax.eval_shape(lambda k, x: init(module, k, x)[1:], KEY, x)
  return from_linen(module), params, state


@functools.lru_cache(maxsize=None)
def _jit_apply(model, train):
  return jax.jit(functools.partial(model.apply, train=train))


def _leaf_names(tree):
  return {str(path[-1].key) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _module_paths(tree, leaf=None):
  """Paths of the modules holding leaves (only those holding a leaf named ``leaf``, if given)."""
  return {tuple(str(k.key) for k in path[:-1]) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
          if leaf is None or str(path[-1].key) == leaf}


def _cifar_resnet_count(stage_sizes, widths, in_ch=3, num_classes=10):
  """Hand count: 3x3 stem, BasicBlocks with 1x1 projection shortcuts where the shape changes, Dense."""
  conv = lambda k, cin, cout: int(np.prod([k, k, cin, cout]))
  bn = lambda c: 2 * c  # scale and bias; mean and var are state
  total, cin = conv(3, in_ch, widths[0]) + bn(widths[0]), widths[0]
  for stage, (n, w) in enumerate(zip(stage_sizes, widths)):
    for b in range(n):
      total += 2 * bn(w) + conv(3, cin, w) + conv(3, w, w)
      if cin != w or (stage > 0 and b == 0):
        total += conv(1, cin, w) + bn(w)
      cin = w
  return total + cin * num_classes + num_classes


def _check_variables(name, params, state):
  """float32 params without batch statistics; state is exactly the BatchNorm stats (or {})."""
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves((params, state)))
  assert _leaf_names(params) <= {"kernel", "bias", "scale"}
  if name in BN_MODELS:
    assert list(state) == ["batch_stats"]
    assert _leaf_names(state) == {"mean", "var"}
    # Every BatchNorm has scale/bias in params and mean/var in state under the same path.
    assert _module_paths(params, "scale") == _module_paths(state["batch_stats"])
  else:
    assert state == {}


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_digits_logits_features_and_state(name):
  model, params, state = _init(name)
  _check_variables(name, params, state)
  x = _images(DIGITS)
  logits, new_state = model.apply(params, state, x, train=False)
  assert logits.shape == (BATCH, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert new_state is state
  emb = model.features(params, state, x)
  assert emb.shape == (BATCH, EMBED_DIM[name]) and emb.dtype == jnp.float32
  # The embedding is the classifier's input.
  head = params["Dense_2"] if name == "mlp" else params["fc"]
  np.testing.assert_allclose(emb @ head["kernel"] + head["bias"], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_cifar_shapes(name):
  model, params, state = _abstract_init(name, CIFAR)
  _check_variables(name, params, state)
  x = jax.ShapeDtypeStruct((BATCH,) + CIFAR, jnp.float32)
  logits, new_state = jax.eval_shape(functools.partial(model.apply, train=True), params, state, x)
  assert logits.shape == (BATCH, 10) and logits.dtype == jnp.float32
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  emb = jax.eval_shape(model.features, params, state, x)
  assert emb.shape == (BATCH, EMBED_DIM[name]) and emb.dtype == jnp.float32


def test_registry_errors_and_kwargs():
  with pytest.raises(ValueError, match="known models: mlp, cnn, cnn1d, resnet18"):
    get_model("resnet50", 10)
  with pytest.raises(ValueError, match="'widht'"):
    get_model("resnet20", 10, widht=2)
  with pytest.raises(ValueError, match="'batch_norm'"):
    get_model("vgg11", 10, batch_norm=True)
  with pytest.raises(ValueError, match="num_classes"):
    get_model("mlp", 0)
  with pytest.raises(ValueError, match="width"):
    get_model("resnet20", 10, width=0)
  with pytest.raises(ValueError, match="vgg13"):
    VGG("vgg13")
  assert MODELS == ("mlp", "cnn", "cnn1d", "resnet18", "resnet20", "vgg11", "vgg16", "vgg11_bn", "vgg16_bn")
  vgg = get_model("vgg16_bn", 7, dtype=jnp.bfloat16)
  assert (vgg.cfg, vgg.batch_norm, vgg.num_classes, vgg.dtype) == ("vgg16", True, 7, jnp.bfloat16)
  assert isinstance(get_model("resnet18", 10), ResNet18)
  assert get_model("resnet20", 10, width=8) == ResNet20(width=8, num_classes=10)
  _, params, _ = init(get_model("mlp", 3, features=(16,)), KEY, _images(DIGITS, 1))
  assert jax.tree.map(jnp.shape, params) == {"Dense_0": {"kernel": (64, 16), "bias": (16,)},
                                             "Dense_1": {"kernel": (16, 3), "bias": (3,)}}
  _, params, _ = _abstract_init("cnn", DIGITS)
  assert jax.tree.map(jnp.shape, params) == {
      "conv_0": {"kernel": (3, 3, 1, 32), "bias": (32,)},
      "conv_1": {"kernel": (3, 3, 32, 64), "bias": (64,)},
      "Dense_0": {"kernel": (2 * 2 * 64, 128), "bias": (128,)},
      "fc": {"kernel": (128, 10), "bias": (10,)}}


def test_parameter_layout():
  _, params, _ = _abstract_init("resnet18", CIFAR)
  blocks = [f"stage{s}_block{b}" for s in range(1, 5) for b in range(2)]
  assert set(params) == {"conv_init", "bn_init", *blocks, "fc"}
  assert {b for b in blocks if "shortcut_conv" in params[b]} == {"stage2_block0", "stage3_block0", "stage4_block0"}
  assert set(params["stage2_block0"]) == {"conv1", "bn1", "conv2", "bn2", "shortcut_conv", "shortcut_bn"}
  assert params["stage2_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 128)
  assert params["stage4_block1"]["conv2"]["kernel"].shape == (3, 3, 512, 512)
  assert "bias" not in params["conv_init"] and params["fc"]["kernel"].shape == (512, 10)

  _, params, _ = _abstract_init("resnet20", CIFAR, width=4)
  blocks = [f"stage{s}_block{b}" for s in range(1, 4) for b in range(3)]
  assert set(params) == {"conv_init", "bn_init", *blocks, "fc"}
  assert {b for b in blocks if "shortcut_conv" in params[b]} == {"stage2_block0", "stage3_block0"}
  assert params["conv_init"]["kernel"].shape == (3, 3, 3, 64)
  assert params["stage3_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 128, 256)

  for name, n_conv in [("vgg11", 8), ("vgg16", 13)]:
    _, params, _ = _abstract_init(name, CIFAR)
    assert set(params) == {f"conv_{i}" for i in range(n_conv)} | {"fc"}
    assert set(params["conv_0"]) == {"kernel", "bias"}
    _, params, state = _abstract_init(name + "_bn", CIFAR)
    convs, bns = [f"conv_{i}" for i in range(n_conv)], [f"bn_{i}" for i in range(n_conv)]
    assert set(params) == {*convs, *bns, "fc"} and set(state["batch_stats"]) == set(bns)
    assert set(params["conv_0"]) == {"kernel"}  # BatchNorm's shift replaces the conv bias


def test_parameter_counts():
  count = lambda name, width=None: num_params(_abstract_init(name, CIFAR, width)[1])
  assert count("resnet18") == 11_173_962 == _cifar_resnet_count((2, 2, 2, 2), (64, 128, 256, 512))
  assert count("resnet20", 1) == 272_474 == _cifar_resnet_count((3, 3, 3), (16, 32, 64))
  assert count("resnet20", 4) == 4_327_754 == _cifar_resnet_count((3, 3, 3), (64, 128, 256))
  assert count("mlp") == 1_841_162 == 32 * 32 * 3 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
  # Regression figures for the others (32x32x3 input, 10 classes).
  expected = {"cnn": 545_098, "vgg11": 9_225_610, "vgg16": 14_719_818, "vgg11_bn": 9_228_362,
              "vgg16_bn": 14_724_042}
  assert {n: count(n) for n in expected} == expected
  # Only the stem and the head depend on the input channels and the classes.
  assert num_params(_init("resnet18")[1]) == 11_173_962 - 2 * 9 * 64


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_bf16_compute_close_to_fp32(name):
  model, params, state = _init(name)
  bf16_model, bf16_params, bf16_state = _abstract_init(name, DIGITS, dtype=jnp.bfloat16)
  chex.assert_trees_all_equal_shapes_and_dtypes(bf16_params, params)  # float32 parameters
  chex.assert_trees_all_equal_shapes_and_dtypes(bf16_state, state)  # float32 statistics
  x = _images(DIGITS, seed=1)
  ref, _ = model.apply(params, state, x, train=False)
  out, _ = _jit_apply(bf16_model, False)(params, state, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.max(jnp.abs(ref))) + 1e-3)
  assert not np.array_equal(out, ref)  # the compute really ran in bfloat16


@pytest.mark.parametrize("name,width", [("resnet18", None), ("resnet20", 1), ("resnet20", 4),
                                        ("vgg16_bn", None)])
def test_batchnorm_train_updates_state_eval_does_not(name, width):
  model, params, state = _init(name, width)
  x = _images(DIGITS, seed=2)
  _, new_state = model.apply(params, state, x, train=True)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), new_state, state)
  assert all(jax.tree.leaves(moved)), "every running mean and var should move in train mode"
  _, eval_state = model.apply(params, new_state, x, train=False)
  assert eval_state is new_state


def _conv(x, kernel, stride, pad):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_basic_block_matches_reference():
  """Eval-mode projection block against a hand-written forward with PyTorch's symmetric padding."""
  block = BasicBlock(8, strides=2)
  x = _images((6, 6, 4), seed=6)  # stride 2 on 6x6: PyTorch pads (1, 1), Linen's 'SAME' would pad (0, 1)
  rng = np.random.default_rng(7)
  variables = jax.tree.map(lambda v: jnp.asarray(rng.standard_normal(v.shape), jnp.float32), block.init(KEY, x))
  p, s = variables["params"], jax.tree.map(jnp.abs, variables["batch_stats"])
  bn = lambda h, n: (h - s[n]["mean"]) / jnp.sqrt(s[n]["var"] + 1e-5) * p[n]["scale"] + p[n]["bias"]
  y = jax.nn.relu(bn(_conv(x, p["conv1"]["kernel"], 2, 1), "bn1"))
  y = bn(_conv(y, p["conv2"]["kernel"], 1, 1), "bn2")
  shortcut = bn(_conv(x, p["shortcut_conv"]["kernel"], 2, 0), "shortcut_bn")
  out = block.apply({"params": p, "batch_stats": s}, x)
  assert out.shape == (BATCH, 3, 3, 8)
  np.testing.assert_allclose(out, jax.nn.relu(y + shortcut), rtol=1e-4, atol=1e-4)
  identity = BasicBlock(4).init(KEY, x)["params"]  # same shape in and out: no projection
  assert set(identity) == {"conv1", "bn1", "conv2", "bn2"}


def test_batchnorm_momentum_matches_pytorch():
  """Running stats after one train step: 0.9 * init + 0.1 * batch stat (biased variance, as Flax uses)."""
  model, params, state = _init("resnet20", 1)
  x = _images(DIGITS, seed=3)
  _, new_state = model.apply(params, state, x, train=True)
  h = _conv(x, params["conv_init"]["kernel"], 1, 1)
  stats = new_state["batch_stats"]["bn_init"]
  np.testing.assert_allclose(stats["mean"], 0.1 * h.mean(axis=(0, 1, 2)), atol=1e-5)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-4)


def test_mlp_sgd_step_lowers_loss():
  model, params, state = _init("mlp")
  x, y = _images(DIGITS, seed=4), jnp.arange(BATCH)

  @jax.jit
  def loss_fn(p):
    logits, _ = model.apply(p, state, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  opt = optax.sgd(0.05)
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, _ = opt.update(grads, opt.init(params))
  new_loss = loss_fn(optax.apply_updates(params, updates))
  assert np.isfinite(loss) and new_loss < loss - 1e-3
