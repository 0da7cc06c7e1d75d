"""LAF (label-agnostic forgetting): the VAE and its loss, the two unlearning losses, the head mask, the method."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from unlearn_jax import config as config_lib
from unlearn_jax import model as model_lib
from unlearn_jax import train
from unlearn_jax import unlearning
from unlearn_jax.data import load_dataset, make_unlearning_splits
from unlearn_jax.models import get_model
from unlearn_jax.unlearning import _laf as laf


def np_vae_forward(p, e, eps, sigmoid=True):
  """NumPy forward pass of `EmbeddingVAE` with hidden widths (h1, h2)."""
  relu = lambda v: np.maximum(v, 0)
  lin = lambda name, v: v @ np.asarray(p[name]["kernel"]) + np.asarray(p[name]["bias"])
  h = relu(lin("enc_1", relu(lin("enc_0", e))))
  mu, logvar = lin("mu", h), lin("logvar", h)
  sigma = np.exp(0.5 * logvar)
  z = mu + sigma * eps
  out = lin("out", relu(lin("dec_1", relu(lin("dec_0", z)))))
  return (1 / (1 + np.exp(-out)) if sigmoid else out), mu, sigma


@functools.lru_cache()
def vae_setup():
  vae = laf.EmbeddingVAE(features=6, latent_dims=3, hidden=(5, 4))
  rng = np.random.default_rng(0)
  e = rng.normal(size=(7, 6)).astype(np.float32)
  eps = rng.normal(size=(7, 3)).astype(np.float32)
  params = vae.init(jax.random.key(0), jnp.asarray(e), jnp.asarray(eps))["params"]
  return vae, params, e, eps


def test_vae_forward_matches_numpy_and_torch_linear_init():
  vae, params, e, eps = vae_setup()
  recon, mu, logvar = vae.apply({"params": params}, jnp.asarray(e), jnp.asarray(eps))
  r_np, mu_np, sigma_np = np_vae_forward(params, e.astype(np.float64), eps.astype(np.float64))
  np.testing.assert_allclose(recon, r_np, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mu, mu_np, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(0.5 * np.asarray(logvar)), sigma_np, rtol=1e-5)
  for name, fan_in in (("enc_0", 6), ("enc_1", 5), ("mu", 4), ("dec_0", 3), ("out", 5)):
    for leaf in params[name].values():  # torch.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias included
      assert np.abs(np.asarray(leaf)).max() <= 1 / np.sqrt(fan_in)


def test_vae_loss_matches_numpy_formula_and_kl_integral():
  rng = np.random.default_rng(1)
  recon, e = rng.normal(size=(2, 5, 6))
  mu, logvar = rng.normal(size=(2, 5, 3))
  sigma = np.exp(0.5 * logvar)
  # the reference's Train.vae_loss_function, written with sigma
  sse = np.sum((recon - e) ** 2) / 5
  kld = -0.5 * np.sum(np.log(sigma ** 2) + 1 - mu ** 2 - sigma ** 2) / 5
  got = laf.vae_loss(*(jnp.asarray(a, jnp.float32) for a in (recon, e, mu, logvar)), 0.025)
  np.testing.assert_allclose(got, sse + 0.025 * kld, rtol=1e-5)
  np.testing.assert_allclose(laf.vae_loss(*(jnp.asarray(a, jnp.float32) for a in (recon, e, mu, logvar)), 0.0),
                             sse, rtol=1e-5)
  # the closed-form KL(N(m, s^2) || N(0, 1)) against numerical integration of q log(q/p)
  m, s = 0.7, 0.4
  q = lambda x: np.exp(-(x - m) ** 2 / (2 * s ** 2)) / np.sqrt(2 * np.pi * s ** 2)
  p = lambda x: np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi)
  kl_num = integrate.quad(lambda x: q(x) * np.log(q(x) / p(x)), -10, 10)[0]
  one = laf.vae_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.array([[m]]), jnp.array([[np.log(s ** 2)]]), 1.0)
  np.testing.assert_allclose(one, kl_num, rtol=1e-5)


def test_extractor_loss_matches_numpy():
  vae, params, e, eps = vae_setup()
  u_params = jax.tree.map(lambda a: -a, params)
  e_f, eps_f = e[:3] * 2, eps[:3]
  got = laf.extractor_loss(vae, params, u_params, jnp.asarray(e), jnp.asarray(e_f), jnp.asarray(eps),
                           jnp.asarray(eps_f))

  def energy(p, x, noise):
    m = np.sum((np_vae_forward(p, x.astype(np.float64), noise.astype(np.float64))[0] - x) ** 2, axis=1)
    return np.sum(np.exp(m / (m + 1)))

  np.testing.assert_allclose(got, energy(params, e, eps) - energy(u_params, e_f, eps_f), rtol=1e-5)


def test_alignment_loss_matches_reference_formula():
  rng = np.random.default_rng(2)
  er, er0 = rng.normal(size=(2, 6, 5))
  ef, ef0 = rng.normal(size=(2, 4, 5))
  ef[0] = 0.0  # a zero embedding: torch's epsilon makes its cosine 0
  temp = 5.0

  def cos_loss(a, b):  # torch.nn.CosineEmbeddingLoss(reduction='none') with target 1
    return 1 - np.sum(a * b, 1) / np.sqrt((np.sum(a * a, 1) + 1e-12) * (np.sum(b * b, 1) + 1e-12))

  c1, c2 = cos_loss(er, er0), cos_loss(ef, ef0)
  want = np.sum(np.log(np.exp(c1) / np.sum(np.exp(c2 / temp))))  # VUnlearning.extractor_loss_functioncosine
  got = laf.alignment_loss(*(jnp.asarray(a, jnp.float32) for a in (er, er0, ef, ef0)), temp)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(laf.cosine_distance(jnp.asarray(ef, jnp.float32), jnp.asarray(ef0, jnp.float32))[0],
                             1.0)


@pytest.mark.parametrize("name,head", [("mlp", "Dense_1"), ("cnn", "fc")])
def test_head_mask_is_exactly_the_classifier(name, head):
  kwargs = dict(features=(8,)) if name == "mlp" else dict(channels=(4,), dense=8)
  x = jnp.zeros((1, 8, 8, 1))
  model, params, state = model_lib.init(get_model(name, 10, **kwargs), jax.random.key(0), x)
  mask = laf.head_mask(model, params, state, x)
  chex.assert_trees_all_equal_shapes(mask, params)
  for path, value in jax.tree_util.tree_flatten_with_path(mask)[0]:
    assert value.dtype == jnp.bool_
    assert np.all(value == (path[0].key == head)), jax.tree_util.keystr(path)


@functools.lru_cache()
def digits_setup():
  ds = load_dataset("digits", seed=0)
  splits = make_unlearning_splits(ds, kind="random", fraction=0.05, seed=0)
  model, params, state = model_lib.init(get_model("mlp", 10, features=(16,)), jax.random.key(0), ds.train.x[:1])
  params, state, _ = train.fit(model, params, state, ds.train, config_lib.train_config(epochs=10),
                               rng=jax.random.key(1))
  forget, retain = splits.forget, splits.retain.take(np.arange(160))
  return model, params, state, forget, retain


FAST = dict(vae_epochs=2, epochs=3, lr_ue=1e-2, lr_ra=1e-2, batch_size=32)


def run_laf(rng=0, forget=None, retain=None, **overrides):
  model, params, state, f, r = digits_setup()
  return unlearning.REGISTRY["laf"](model, params, state, forget or f, retain or r,
                                    config={**FAST, **overrides}, rng=jax.random.key(rng))


def test_laf_registered_keeps_structure_head_and_state():
  model, params, state, forget, retain = digits_setup()
  assert "laf" in unlearning.names()
  # every registered default as a keyword, FAST overriding some (run_laf passes ``config=``)
  out, out_state = unlearning.laf(model, params, state, forget, retain, rng=jax.random.key(0),
                                  **{**unlearning.DEFAULTS["laf"], **FAST})
  chex.assert_trees_all_equal_structs(out, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
  assert out_state == state
  chex.assert_trees_all_equal(out["Dense_1"], params["Dense_1"])  # the head gets zero gradient: untouched
  assert not np.allclose(out["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
  # the objective did what it says: forget embeddings moved away from the Original's more than retain ones
  d = lambda s: float(jnp.mean(laf.cosine_distance(model.features(out, state, s.x), model.features(params, state,
                                                                                                       s.x))))
  assert d(forget) > 1.5 * d(retain)


def test_laf_is_deterministic_in_rng_and_label_agnostic():
  _, _, _, forget, retain = digits_setup()
  a, _ = run_laf(rng=0)
  chex.assert_trees_all_equal(a, run_laf(rng=0)[0])
  b, _ = run_laf(rng=1)
  assert not np.allclose(a["Dense_0"]["kernel"], b["Dense_0"]["kernel"])
  relabel = lambda s: type(s)(s.x, (s.y + 3) % 10, s.index)  # no label is read
  chex.assert_trees_all_equal(a, run_laf(rng=0, forget=relabel(forget), retain=relabel(retain))[0])


def test_laf_plus_r_changes_only_the_head():
  model, params, state, forget, retain = digits_setup()
  base, _ = run_laf()
  plus, _ = run_laf(classifier_epochs=2, classifier_lr=1e-2)
  chex.assert_trees_all_equal(plus["Dense_0"], base["Dense_0"])
  assert not np.allclose(plus["Dense_1"]["kernel"], base["Dense_1"]["kernel"])


def test_laf_options_and_errors():
  model, params, state, forget, retain = digits_setup()
  with pytest.raises(ValueError, match="method.lr"):
    run_laf(lr=0.1)
  with pytest.raises(ValueError, match="decoder_output"):
    run_laf(decoder_output="tanh")
  no_features = model_lib.Model(apply=model.apply)
  with pytest.raises(ValueError, match="features"):
    unlearning.REGISTRY["laf"](no_features, params, state, forget, retain, config={}, rng=jax.random.key(0))
  with pytest.raises(FloatingPointError, match="LAF"):
    run_laf(lr_ue=float("nan"))
