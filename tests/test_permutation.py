"""Tests for unlearn_jax.merging.permutation: specs, apply_permutation and weight / activation / STE matching."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import models
from unlearn_jax.data.split import Split
from unlearn_jax.merging import permutation as P
from unlearn_jax.model import from_linen

X8 = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
X40 = np.random.default_rng(0).normal(size=(16, 40, 1)).astype(np.float32)  # MNIST-1D-shaped signals


def random_variables(module, x, seed=0):
  """Random (params, state) of the module's shapes without running its initialisers (fast on a loaded CPU).

  Kernels have variance 1/fan_in; BatchNorm scales, shifts and running statistics are all non-trivial, so a
  permutation that misses any of them changes the outputs.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x[:1], train=False))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = P.spec.path_str(path).rsplit("/", 1)[-1]
    if name == "kernel":
      return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, size=s.shape).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(leaf, dict(shapes))
  params = variables.pop("params")
  return from_linen(module), params, variables


MODELS = {
    "mlp": (models.get_model("mlp", 10, features=(32, 24)), X8),
    "cnn": (models.get_model("cnn", 10, channels=(8, 6), dense=12), X8),
    "vgg11_bn": (models.get_model("vgg11_bn", 10), X8),
    "resnet20": (models.get_model("resnet20", 10, width=1), X8),
    "cnn1d": (models.get_model("cnn1d", 10, channels=(6, 5, 4), width=2), X40),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def net(request):
  module, x = MODELS[request.param]
  model, params, state = random_variables(module, x)
  return request.param, model, params, state, x


def _permute(spec, perms, params, state):
  if state:
    return P.apply_permutation(spec, perms, params, state)
  return P.apply_permutation(spec, perms, params), state


def test_mlp_spec_is_git_rebasin_layout():
  spec = P.mlp_permutation_spec(2)
  assert dict(spec.axes_to_perm) == {
      "Dense_0/kernel": (None, "P_0"), "Dense_0/bias": ("P_0",), "Dense_1/kernel": ("P_0", "P_1"),
      "Dense_1/bias": ("P_1",), "Dense_2/kernel": ("P_1", None), "Dense_2/bias": (None,)}
  assert spec.perm_to_axes["P_1"] == (("Dense_1/kernel", 1), ("Dense_1/bias", 0), ("Dense_2/kernel", 0))
  assert hash(spec) == hash(P.mlp_permutation_spec(2)) and spec == P.mlp_permutation_spec(2)
  assert P.hidden_layers(spec) == ("Dense_0", "Dense_1")


def test_permutation_leaves_outputs_unchanged_and_weight_matching_recovers_it(net):
  name, model, params, state, x = net
  spec = P.spec_for_model(name, params, state or None)
  perms = P.random_perms(spec, params, jax.random.key(1), state or None)
  p2, s2 = _permute(spec, perms, params, state)
  # the permutation really moved weights (and BatchNorm statistics) ...
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p2)))
  if state:
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(s2)))
  # ... but not the function
  apply = jax.jit(lambda p, s: model.apply(p, s, x, train=False)[0])
  y0, y1 = np.asarray(apply(params, state)), np.asarray(apply(p2, s2))
  assert np.abs(y0).max() > 0.1
  np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
  if name == "vgg11_bn":
    return  # 9M weights: matching them is slow on a CPU, and resnet20 covers BatchNorm
  # weight matching of the model with its permuted copy finds the inverse permutation exactly
  found = P.weight_matching(spec, params, p2, rng=jax.random.key(2))
  inverse = P.invert_perms(perms)
  for k in perms:
    np.testing.assert_array_equal(found[k], inverse[k], err_msg=k)
  back, _ = _permute(spec, found, p2, s2)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_weight_matching_improves_objective_and_is_deterministic():
  spec = P.mlp_permutation_spec(2)
  module, x = MODELS["mlp"]
  _, pa, _ = random_variables(module, x, seed=5)
  _, pb, _ = random_variables(module, x, seed=6)
  perms, info = P.weight_matching(spec, pa, pb, rng=jax.random.key(0), return_info=True)
  _, start = P.weight_matching(spec, pa, pb, rng=jax.random.key(0), max_iter=1, return_info=True,
                               init_perms=P.identity_perms(spec, pa))
  identity = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))
  assert info["objective"] >= start["objective"] > identity
  again = P.weight_matching(spec, pa, pb, rng=jax.random.key(0))
  for k in perms:
    np.testing.assert_array_equal(perms[k], again[k])
  # a local optimum: no single permutation can be improved further
  _, more = P.weight_matching(spec, pa, pb, rng=jax.random.key(9), init_perms=perms, return_info=True)
  assert more["sweeps"] == 1


def test_matching_many_models_to_one_reference():
  module, x = MODELS["mlp"]
  _, ref, _ = random_variables(module, x, seed=7)
  spec = P.spec_for_model("mlp", ref)
  copies = [P.apply_permutation(spec, P.random_perms(spec, ref, jax.random.key(i)), ref) for i in range(3)]
  all_perms = P.weight_matching_many(spec, [ref] + copies, rng=jax.random.key(0), rounds=2)
  assert len(all_perms) == 4
  for perms, p in zip(all_perms, [ref] + copies):
    jax.tree.map(np.testing.assert_array_equal, P.apply_permutation(spec, perms, p), ref)


def _permuted_mlp(seed, perm_seed):
  """``(model, params, spec, perms, permuted copy)`` of a random MLP."""
  module, x = MODELS["mlp"]
  model, params, _ = random_variables(module, x, seed=seed)
  spec = P.spec_for_model("mlp", params)
  perms = P.random_perms(spec, params, jax.random.key(perm_seed))
  return model, params, spec, perms, P.apply_permutation(spec, perms, params)


def test_activation_and_ste_matching_recover_a_permuted_copy():
  model, params, spec, perms, permuted = _permuted_mlp(8, 1)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(64, 8, 8, 1)), jnp.float32)
  split = Split(x, jnp.argmax(model.apply(params, {}, x, train=False)[0], -1))  # labels the model predicts
  inverse = P.invert_perms(perms)
  for metric in ("correlation", "inner"):
    found = P.activation_matching(spec, model, params, {}, permuted, {}, split, metric=metric, batch_size=24)
    for k in perms:
      np.testing.assert_array_equal(found[k], inverse[k], err_msg=f"{metric} {k}")
  found, info = P.ste_matching(spec, model, params, {}, permuted, {}, split, rng=jax.random.key(0), epochs=1,
                               batch_size=32, init_perms=P.identity_perms(spec, params), return_info=True)
  for k in perms:
    np.testing.assert_array_equal(found[k], inverse[k], err_msg=f"ste {k}")
  assert np.isfinite(info["best_loss"]) and len(info["losses"]) == 1


def test_flattened_axis_is_permuted_blockwise():
  """The CNN's Dense_0 reads h*w blocks of the last conv's channels; the spec permutes each block."""
  module, x = MODELS["cnn"]
  _, params, _ = random_variables(module, x)
  spec = P.cnn_permutation_spec(2)
  assert P.check_spec(spec, params) == {"P_conv_0": 8, "P_conv_1": 6, "P_dense": 12}
  perms = P.random_perms(spec, params, jax.random.key(0))
  out = P.apply_permutation(spec, perms, params)
  k = np.asarray(params["Dense_0"]["kernel"]).reshape(-1, 6, 12)  # (h*w, channels, dense)
  expected = k[:, np.asarray(perms["P_conv_1"])][:, :, np.asarray(perms["P_dense"])].reshape(-1, 12)
  np.testing.assert_array_equal(out["Dense_0"]["kernel"], expected)


def _mlp_params():
  return {f"Dense_{i}": {"kernel": np.zeros(s, np.float32), "bias": np.zeros(s[1:], np.float32)}
          for i, s in enumerate([(4, 5), (5, 6), (6, 3)])}


@pytest.mark.parametrize("edit,match", [
    (lambda a: a.update({"Dense_9/kernel": (None, "P_0")}), "Dense_9/kernel.*missing"),
    (lambda a: a.pop("Dense_1/bias"), "'Dense_1/bias'.*not covered"),
    (lambda a: a.update({"Dense_1/kernel": (None, "P_1")}), "'P_0'.*no input axis"),
    (lambda a: a.update({"Dense_0/bias": (None,)}), "'Dense_0/bias'.*not covered"),
    (lambda a: a.update({"Dense_2/kernel": (None, None)}), "'P_1'.*no input axis"),
    (lambda a: a.update({"Dense_0/kernel": ("P_x", "P_0")}), "'P_x'.*outputs of no layer"),
    (lambda a: a.update({"Dense_1/kernel": ("P_0",)}), "1 axes for params key 'Dense_1/kernel'"),
])
def test_bad_spec_raises_value_error_naming_it(edit, match):
  axes = dict(P.mlp_permutation_spec(2).axes_to_perm)
  edit(axes)
  with pytest.raises(ValueError, match=match):
    P.check_spec(P.PermutationSpec(axes), _mlp_params())


def test_spec_must_permute_batchnorm_statistics():
  module, x = MODELS["resnet20"]
  _, params, state = random_variables(module, x)
  spec = P.resnet20_permutation_spec()
  missing = dict(spec.state_axes_to_perm)
  missing.pop("batch_stats/stage2_block0/shortcut_bn/var")
  with pytest.raises(ValueError, match="shortcut_bn/var.*not covered"):
    P.check_spec(P.PermutationSpec(spec.axes_to_perm, missing), params, state)
  wrong = dict(spec.state_axes_to_perm, **{"batch_stats/bn_init/mean": (None,)})
  with pytest.raises(ValueError, match="'batch_stats/bn_init/mean'.*'P_stage1'"):
    P.check_spec(P.PermutationSpec(spec.axes_to_perm, wrong), params, state)
  with pytest.raises(ValueError, match="no permutation 'P_stage1_block0'"):
    P.apply_permutation(spec, {"P_stage1": np.arange(16)}, params, state)
  with pytest.raises(ValueError, match=r"perms\['P_stage1'\] must be a permutation"):
    perms = P.identity_perms(spec, params, state)
    P.apply_permutation(spec, dict(perms, P_stage1=np.zeros(16, int)), params, state)


def test_vgg_spec_variants():
  plain = P.vgg_permutation_spec("vgg11")
  assert plain.axes_to_perm["conv_0/bias"] == ("P_conv_0",) and not plain.state_axes_to_perm
  bn = P.vgg_permutation_spec("vgg16", norm="batch")
  assert "conv_3/bias" not in bn.axes_to_perm and bn.state_axes_to_perm["batch_stats/bn_12/var"] == ("P_conv_12",)
  ln = P.vgg_permutation_spec(13, norm="layer")
  assert ln.axes_to_perm["ln_4/scale"] == ("P_conv_4",) and "conv_4/bias" in ln.axes_to_perm
  assert P.hidden_layers(bn)[:2] == ("bn_0", "bn_1")
  r18 = P.resnet18_permutation_spec()
  assert r18.axes_to_perm["stage4_block0/shortcut_conv/kernel"] == (None, None, "P_stage3", "P_stage4")
  assert r18.activations["P_stage2"] == ("stage2_block0", "stage2_block1")
  with pytest.raises(ValueError, match="no permutation spec builder for model 'vit'"):
    P.spec_for_model("vit", {})


def test_cnn1d_spec_layout_and_blockwise_classifier():
  spec = P.cnn1d_permutation_spec(3)
  assert spec.axes_to_perm["conv_0/kernel"] == (None, None, "P_conv_0")
  assert spec.axes_to_perm["conv_2/kernel"] == (None, "P_conv_1", "P_conv_2")
  assert spec.axes_to_perm["fc/kernel"] == ("P_conv_2", None)
  assert P.kernel_layers(spec) == ("conv_0", "conv_1", "conv_2", "fc")
  module, x = MODELS["cnn1d"]
  _, params, _ = random_variables(module, x)
  assert P.check_spec(spec, params) == {"P_conv_0": 12, "P_conv_1": 10, "P_conv_2": 8}
  perms = P.random_perms(spec, params, jax.random.key(0))
  out = P.apply_permutation(spec, perms, params)
  k = np.asarray(params["fc"]["kernel"]).reshape(-1, 8, 10)  # (positions, channels, classes)
  np.testing.assert_array_equal(out["fc"]["kernel"], k[:, np.asarray(perms["P_conv_2"])].reshape(-1, 10))


def _svd_overlap(a, b, k):
  """NumPy reference: overlap of the top-k left singular subspaces, via principal-angle cosines."""
  ua = np.linalg.svd(a)[0][:, :k]
  ub = np.linalg.svd(b)[0][:, :k]
  cosines = np.linalg.svd(ua.T @ ub, compute_uv=False)  # cosines of the principal angles
  return float(np.mean(cosines ** 2))


def test_singular_alignment_is_one_for_a_permuted_copy_and_chance_for_random_weights():
  _, params, spec, perms, copy = _permuted_mlp(3, 4)
  after = P.singular_alignment(params, copy, spec, k=4, perms=P.invert_perms(perms))
  assert set(after) == {"Dense_0", "Dense_1", "Dense_2"}
  for layer, row in after.items():
    assert row["input"] == pytest.approx(1.0, abs=1e-9) and row["output"] == pytest.approx(1.0, abs=1e-9), layer
  before = P.singular_alignment(params, copy, spec, k=4)
  assert before["Dense_1"]["mean"] < 0.9  # both sides of the hidden layer are scrambled by the permutation
  # the unpermuted input space of the first layer and output space of the classifier stay aligned
  assert before["Dense_0"]["input"] == pytest.approx(1.0) and before["Dense_2"]["output"] == pytest.approx(1.0)
  # against NumPy's principal angles
  w_a, w_b = np.asarray(params["Dense_1"]["kernel"], np.float64), np.asarray(copy["Dense_1"]["kernel"], np.float64)
  assert before["Dense_1"]["input"] == pytest.approx(_svd_overlap(w_a, w_b, 4), abs=1e-9)
  assert before["Dense_1"]["output"] == pytest.approx(_svd_overlap(w_a.T, w_b.T, 4), abs=1e-9)
  # independent random 200 x 300 matrices: overlap near k / n, far below 1
  rng = np.random.default_rng(0)
  shapes = {"h": (200, 300), "o": (300, 5)}
  rand = lambda: {m: {"kernel": rng.normal(size=s), "bias": np.zeros(s[1])} for m, s in shapes.items()}
  spec2 = P.PermutationSpec({"h/kernel": (None, "P"), "h/bias": ("P",), "o/kernel": ("P", None), "o/bias": (None,)})
  row = P.singular_alignment(rand(), rand(), spec2, k=10)["h"]
  assert row["chance_input"] == pytest.approx(10 / 200) and row["chance_output"] == pytest.approx(10 / 300)
  assert row["input"] < 4 * row["chance_input"] and row["output"] < 4 * row["chance_output"]
  with pytest.raises(ValueError, match="k must be at least 1"):
    P.singular_alignment(params, copy, spec, k=0)


def test_weight_matching_raises_singular_alignment_of_trained_like_weights():
  """Two noisy permuted copies of one low-rank network: matching recovers the shared top singular directions."""
  rng = np.random.default_rng(1)
  spec = P.mlp_permutation_spec(1)
  base = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 40))  # rank 3 hidden layer
  make = lambda: {"Dense_0": {"kernel": base + 0.3 * rng.normal(size=base.shape), "bias": np.zeros(40)},
                  "Dense_1": {"kernel": rng.normal(size=(40, 4)), "bias": np.zeros(4)}}
  pa, pb = make(), make()
  pb = P.apply_permutation(spec, P.random_perms(spec, pb, jax.random.key(0)), pb)
  found = P.weight_matching(spec, pa, pb, rng=jax.random.key(1))
  before = P.singular_alignment(pa, pb, spec, k=3)["Dense_0"]["output"]
  after = P.singular_alignment(pa, pb, spec, k=3, perms=found)["Dense_0"]["output"]
  assert before < 0.5 < 0.95 < after


def test_l2_distance_is_the_numpy_norm_and_invariant_to_permuting_both_models():
  from unlearn_jax.merging import connectivity
  _, params, spec, perms, copy = _permuted_mlp(3, 4)
  other = jax.tree.map(lambda x: x + np.float32(0.3) * np.sign(x), params)
  flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])
  expected = np.linalg.norm(flat(params) - flat(other))
  assert connectivity.l2_distance(params, other) == pytest.approx(expected, rel=1e-6)
  # one permutation applied to both models leaves their distance unchanged; applied to one, it moves it
  moved = P.apply_permutation(spec, perms, other)
  assert connectivity.l2_distance(copy, moved) == pytest.approx(expected, rel=1e-6)
  assert connectivity.l2_distance(params, copy) > 0.5 * np.linalg.norm(flat(params))
  # weight matching undoes a permutation exactly: distance 0 after alignment
  back = P.weight_matching(spec, params, copy, rng=jax.random.key(0))
  assert connectivity.l2_distance(params, P.apply_permutation(spec, back, copy)) == pytest.approx(0, abs=1e-6)
  with pytest.raises(ValueError, match="l2_distance"):
    connectivity.l2_distance(params, {"Dense_0": params["Dense_0"]})
