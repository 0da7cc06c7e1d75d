"""DDPM maths against NumPy (schedule, one DDPM and one DDIM step, guidance), the U-Net, the generation methods'
objectives and registry, and the Fréchet distance against its closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict
from scipy import linalg

from unlearn_jax import diffusion as D
from unlearn_jax.data import split as split_lib
from unlearn_jax.evaluation import generation as gen_eval
from unlearn_jax.models.diffusion import UNet, timestep_embedding
from unlearn_jax.unlearning import generation


def np_schedule(T=1000, b0=1e-4, b1=0.02):
  betas = b0 + (b1 - b0) * np.arange(T) / (T - 1)
  return betas, np.cumprod(1 - betas)


def test_linear_schedule_alpha_bar():
  s = D.linear_schedule(1000, 1e-4, 0.02)
  betas, abar = np_schedule()
  np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-5)
  # hand values: ᾱ_0 = 1 - β_0, ᾱ_1 = (1 - β_0)(1 - β_1)
  assert float(s.alphas_cumprod[0]) == pytest.approx(1 - 1e-4)
  assert float(s.alphas_cumprod[1]) == pytest.approx((1 - 1e-4) * (1 - (1e-4 + 0.0199 / 999)), rel=1e-6)
  assert float(D.alpha_bar(s, -1)) == 1.0
  with pytest.raises(ValueError, match="beta_start"):
    D.linear_schedule(10, 0.5, 0.1)


def test_q_sample_and_antithetic_timesteps():
  s = D.linear_schedule(100)
  x0, noise = jnp.ones((3, 2, 2, 1)), jnp.full((3, 2, 2, 1), 2.0)
  t = jnp.array([0, 50, 99])
  a = np.asarray(s.alphas_cumprod)[[0, 50, 99]]
  np.testing.assert_allclose(D.q_sample(s, x0, t, noise)[:, 0, 0, 0], np.sqrt(a) + 2 * np.sqrt(1 - a), rtol=1e-6)
  ts = np.asarray(D.antithetic_timesteps(jax.random.key(0), 7, 100))
  assert ts.shape == (7,) and ts.min() >= 0 and ts.max() < 100
  np.testing.assert_array_equal(ts[4:], 99 - ts[:3])  # the second half mirrors the first


def _np_ddpm_posterior(x, eps, t, betas, abar, z):
  """DDPM's published ancestral step (Ho et al., Algorithm 2) with σ_t² = β_t."""
  alpha = 1 - betas[t]
  mean = (x - betas[t] / np.sqrt(1 - abar[t]) * eps) / np.sqrt(alpha)
  return mean + np.sqrt(betas[t]) * z


def test_ddpm_step_matches_published_update():
  s = D.linear_schedule(1000)
  betas, abar = np_schedule()
  rng = np.random.default_rng(0)
  x, eps, z = (rng.standard_normal((2, 4, 4, 1)).astype(np.float32) for _ in range(3))
  for t in (999, 500, 1):
    got = D.ddpm_step(s, jnp.asarray(x), jnp.asarray(eps), t, t - 1, jnp.asarray(z), clip=False)
    np.testing.assert_allclose(got, _np_ddpm_posterior(x, eps, t, betas, abar, z), rtol=2e-4, atol=2e-4)
  # the last step adds no noise and returns the posterior mean
  got = D.ddpm_step(s, jnp.asarray(x), jnp.asarray(eps), 0, -1, jnp.asarray(z), clip=False)
  np.testing.assert_allclose(got, (x - np.sqrt(1 - abar[0]) * eps) / np.sqrt(abar[0]), rtol=1e-4, atol=1e-4)


def test_ddim_step_matches_song_et_al():
  s = D.linear_schedule(1000)
  _, abar = np_schedule()
  rng = np.random.default_rng(1)
  x, eps, z = (rng.standard_normal((2, 4, 4, 1)).astype(np.float32) for _ in range(3))
  t, tp = 800, 780  # a skipped step
  for eta in (0.0, 0.5, 1.0):
    x0 = (x - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
    sigma = eta * np.sqrt((1 - abar[tp]) / (1 - abar[t])) * np.sqrt(1 - abar[t] / abar[tp])
    want = np.sqrt(abar[tp]) * x0 + np.sqrt(1 - abar[tp] - sigma ** 2) * eps + sigma * z
    got = D.ddim_step(s, jnp.asarray(x), jnp.asarray(eps), t, tp, jnp.asarray(z), eta=eta)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  # η = 1 on consecutive steps is the DDPM posterior with σ² = β̃ (the posterior variance)
  betas, _ = np_schedule()
  got = D.ddim_step(s, jnp.asarray(x), jnp.asarray(eps), 500, 499, jnp.zeros_like(jnp.asarray(z)), eta=1.0)
  beta_tilde_mean = (np.sqrt(abar[499]) * betas[500] * ((x - np.sqrt(1 - abar[500]) * eps) / np.sqrt(abar[500]))
                     + np.sqrt(1 - betas[500]) * (1 - abar[499]) * x) / (1 - abar[500])
  np.testing.assert_allclose(got, beta_tilde_mean, rtol=1e-3, atol=1e-3)


def test_guidance_formula_and_batched_prediction():
  ec, eu = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
  np.testing.assert_allclose(D.guided_eps(ec, eu, 2.0), 3 * ec - 2 * eu)
  np.testing.assert_allclose(D.guided_eps(ec, eu, 0.0), ec)

  # a fake ε-network: ε = c + t/1000 per pixel, so the guided prediction is known in closed form
  def eps(params, x, t, c, *, rng=None):
    del params, rng
    return jnp.zeros_like(x) + (c.astype(jnp.float32) + t / 1000.0)[:, None, None, None]

  dm = D.DiffusionModel(eps, D.linear_schedule(1000), num_classes=10)
  x, t, c = jnp.zeros((2, 2, 2, 1)), jnp.array([100, 200]), jnp.array([3, 7])
  got = D.guided_prediction(dm, {}, x, t, c, 2.0)
  want = 3 * (np.array([3, 7]) + [0.1, 0.2]) - 2 * (10 + np.array([0.1, 0.2]))
  np.testing.assert_allclose(got[:, 0, 0, 0], want, rtol=1e-6)


def test_timestep_sequence_and_sampler_with_known_eps():
  np.testing.assert_array_equal(D.timestep_sequence(1000, 4), [0, 250, 500, 750])
  with pytest.raises(ValueError, match="steps"):
    D.timestep_sequence(10, 11)

  # With ε ≡ 0 and η = 0, each DDIM step maps x to √(ᾱ_prev/ᾱ_t)·x, so the sample is x_T / √ᾱ_{t_last}.
  def eps(params, x, t, c, *, rng=None):
    return jnp.zeros_like(x)

  dm = D.DiffusionModel(eps, D.linear_schedule(100), num_classes=2)
  sample = D.make_sampler(dm, image_shape=(2, 2, 1), steps=5, eta=0.0, guidance=1.0, clip=False, trajectory=True)
  x, xs, ts = sample({}, jnp.array([0, 1, 0]), jax.random.key(3))
  np.testing.assert_array_equal(ts, [80, 60, 40, 20, 0])
  abar = np.asarray(dm.schedule.alphas_cumprod)
  np.testing.assert_allclose(x, xs[0] / np.sqrt(abar[80]), rtol=1e-4)
  np.testing.assert_allclose(xs[1], xs[0] * np.sqrt(abar[60] / abar[80]), rtol=1e-5)
  with pytest.raises(ValueError, match="sampler"):
    D.make_sampler(dm, image_shape=(2, 2, 1), sampler="euler")


def _tiny(image_shape=(8, 8, 1), channels=(4, 8), attn=()):
  net = UNet(channels=channels, attn_resolutions=attn, num_classes=3)
  x = jnp.zeros((1,) + image_shape)
  c = jnp.zeros((1,), jnp.int32)
  params = jax.jit(lambda key: net.init(key, x, c, c)["params"])(jax.random.key(0))  # one compilation
  return net, D.from_unet(net, D.linear_schedule(50)), params


def _pixel_model(num_classes=3, shape=(8, 8, 1)):
  """A convolution-free ε-network ``ε = w[c]·x + b[c] + v·t/T`` (label ``num_classes`` the null row): the
  generation methods only see ``dm.eps``, and XLA:CPU compiles this in a fraction of a U-Net's time."""
  def eps(params, x, t, c, *, rng=None):
    del rng
    return params["w"][c] * x + params["b"][c] + params["v"] * (t / 50.0)[:, None, None, None]

  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(rng.normal(0, 0.3, (num_classes + 1,) + shape), jnp.float32) for k in ("w", "b")}
  params["v"] = jnp.asarray(rng.normal(0, 0.3, shape), jnp.float32)
  return D.DiffusionModel(eps, D.linear_schedule(50), num_classes), params


def test_cifar_shaped_unet_conditions_and_trains_one_step_on_synthetic_data():
  # one 32x32x3 network (with attention at 16x16) for the shape, conditioning and training checks: every U-Net
  # compilation costs seconds on XLA:CPU
  net, dm, params = _tiny((32, 32, 3), channels=(4, 4), attn=(16,))
  assert "down_1_0_attn" in params and params["conv_out"]["kernel"].shape == (3, 3, 4, 3)
  assert params["class_embed"]["embedding"].shape == (4, 4)  # 3 classes + the null class, width channels[0]
  rng = np.random.default_rng(0)
  split = split_lib.Split(x=jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32),
                          y=jnp.asarray([0, 1, 2, 0], jnp.int32))
  eps = jax.jit(dm.eps)
  t = jnp.full((4,), 5)
  out_a, out_b = eps(params, split.x, t, split.y), eps(params, split.x, t, (split.y + 1) % 3)
  assert out_a.shape == split.x.shape and out_a.dtype == jnp.float32
  assert not np.allclose(out_a, out_b)  # the label matters
  cfg = ConfigDict(dict(optimizer="adam", lr=1e-3, schedule="constant", epochs=1, batch_size=4))
  new, history = D.fit_diffusion(dm, params, split, cfg, rng=jax.random.key(0))
  assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), params, new))
  assert min(moved) > 0  # every parameter gets a gradient (the null row only through condition dropout: not
  #                        checked leaf by leaf, the embedding table moves as a whole)


def _assert_trees_close(a, b, atol=1e-5):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol, rtol=1e-5), a, b)


def test_python_loop_equals_the_scan():
  # 3 steps of DDPM training and of SalUn (masked joint loop) / ESD (sequential phase) on the conv-free ε-network
  # (a U-Net costs minutes of compilation here): the Python loop of jitted steps must use the same batches and
  # keys as the whole-epoch scan. SGD, because Adam's first steps turn float noise in ~0 gradients into ±lr.
  dm, params = _pixel_model(shape=(4, 4, 1))
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(-1, 1, (12, 4, 4, 1)), jnp.float32)
  y = jnp.asarray(np.arange(12) % 3, jnp.int32)
  cfg = ConfigDict(dict(optimizer="adam", lr=1e-2, schedule="constant", epochs=1, batch_size=4))
  out = {loop: D.fit_diffusion(dm, params, split_lib.Split(x, y), cfg, rng=jax.random.key(0), loop=loop)
         for loop in ("scan", "python")}
  _assert_trees_close(out["scan"][0], out["python"][0])
  np.testing.assert_allclose(out["scan"][1]["loss"], out["python"][1]["loss"], rtol=1e-5)
  assert float(jnp.abs(out["python"][0]["w"] - params["w"]).max()) > 1e-3
  forget, retain = split_lib.Split(x[y == 0], y[y == 0]), split_lib.Split(x[y != 0], y[y != 0])
  for name, opts in (("salun", dict(batch_size=3, saliency_batch_size=2, fraction=0.5)),
                     ("esd", dict(batch_size=2, xt_source="data"))):
    new = {loop: generation.GENERATION_METHODS[name](dm, params, {}, forget, retain,
                                                     config=dict(opts, epochs=1, lr=0.1, optimizer="sgd",
                                                                 loop=loop),
                                                     rng=jax.random.key(2))[0] for loop in ("scan", "python")}
    _assert_trees_close(new["scan"], new["python"])
    assert float(jnp.abs(new["python"]["w"][0] - params["w"][0]).max()) > 1e-3, name
  g = {loop: generation.diffusion_saliency(dm, params, forget, rng=jax.random.key(3), batch_size=3, loop=loop)
       for loop in ("scan", "python")}
  _assert_trees_close(g["scan"], g["python"])
  assert D.resolve_loop("auto") == ("python" if jax.default_backend() == "cpu" else "scan")
  with pytest.raises(ValueError, match="loop"):
    D.resolve_loop("while")


def test_timestep_embedding_and_unet_errors():
  emb = timestep_embedding(jnp.array([0.0, 3.0]), 6)
  np.testing.assert_allclose(emb[1], np.concatenate([np.sin(3.0 * np.exp(-np.log(1e4) * np.arange(3) / 2)),
                                                     np.cos(3.0 * np.exp(-np.log(1e4) * np.arange(3) / 2))]),
                             rtol=1e-5)
  np.testing.assert_allclose(emb[0], [0, 0, 0, 1, 1, 1])
  with pytest.raises(ValueError, match="divisible"):
    UNet(channels=(8, 8, 8, 8)).init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)), jnp.zeros(1), jnp.zeros(1))
  with pytest.raises(ValueError, match="NHWC"):
    UNet().init(jax.random.key(0), jnp.zeros((6, 6, 1)), jnp.zeros(1), jnp.zeros(1))


def test_diffusion_loss_is_the_summed_squared_error():
  # ε-network predicting zero: the loss is E Σ ε² = number of pixels (up to sampling noise)
  dm = D.DiffusionModel(lambda p, x, t, c, rng=None: jnp.zeros_like(x), D.linear_schedule(100), 2)
  loss = D.diffusion_loss(dm, {}, jnp.zeros((4096, 2, 2, 1)), jnp.zeros(4096, jnp.int32), jax.random.key(0))
  assert float(loss) == pytest.approx(4.0, rel=0.05)
  c = D.drop_condition(jax.random.key(1), jnp.zeros(10000, jnp.int32), 0.1, 7)
  assert set(np.unique(c)) == {0, 7} and float(jnp.mean(c == 7)) == pytest.approx(0.1, abs=0.015)


def test_relabel_and_esd_terms_against_formulas():
  # ε-network: ε = w·x + c (per pixel), with one scalar parameter w
  def eps(params, x, t, c, *, rng=None):
    return params["w"] * x + c.astype(jnp.float32)[:, None, None, None]

  dm = D.DiffusionModel(eps, D.linear_schedule(100), num_classes=4)
  params = {"w": jnp.float32(0.5)}
  batch = (jnp.ones((6, 2, 2, 1)), jnp.full((6,), 1, jnp.int32))
  loss, _ = generation.relabel_term(dm, cond_drop=0.0, target="next")(params, {}, batch, jax.random.key(0), 0)
  assert float(loss) == pytest.approx(1.0)  # (c − (c+1))² = 1 whatever x_t is
  frozen = {"w": jnp.float32(0.0)}
  x = {"x_t": jnp.ones((6, 2, 2, 1)), "t": jnp.zeros(6, jnp.int32)}
  term = generation.negative_guidance_term(dm, eta=1.5, from_data=False)
  loss, _ = term(params, {"frozen": frozen}, (x, batch[1]), jax.random.key(0), 0)
  # frozen: ε_c = 1, ε_∅ = 4 (null class 4): goal = 4 − 1.5·(1 − 4) = 8.5; model: 0.5 + 1 = 1.5
  assert float(loss) == pytest.approx((8.5 - 1.5) ** 2)
  c = generation.other_class(jax.random.key(0), jnp.arange(400) % 4, 4, "random")
  assert not np.any(np.asarray(c) == np.arange(400) % 4) and set(np.unique(c)) == {0, 1, 2, 3}


def test_saliency_clips_each_batch_and_registry_rejects_unknown_options():
  def eps(params, x, t, c, *, rng=None):
    return params["w"] * x

  dm = D.DiffusionModel(eps, D.linear_schedule(100), num_classes=2)
  forget = split_lib.Split(x=jnp.ones((8, 2, 2, 1)), y=jnp.zeros(8, jnp.int32))
  params = {"w": jnp.float32(3.0), "b": jnp.zeros(3)}
  g = generation.diffusion_saliency(dm, params, forget, rng=jax.random.key(0), batch_size=4, guidance=0.0, clip=1.0)
  assert float(g["w"]) <= 2.0 + 1e-6 and float(g["w"]) > 0.5  # two batches, each clipped to norm 1
  np.testing.assert_array_equal(g["b"], 0.0)
  assert set(generation.GENERATION_METHODS) == {"salun", "rl", "ga", "esd"}
  from unlearn_jax import unlearning  # pylint: disable=g-import-not-at-top
  assert all(unlearning.REGISTRY.get(n) is not f for n, f in generation.GENERATION_METHODS.items())
  with pytest.raises(ValueError, match="method.lrr"):
    generation.generation_options({"lrr": 1.0}, "salun")
  with pytest.raises(ValueError, match="unknown generation"):
    generation.get_generation_method("sga")
  assert generation.method_config("esd").eta == 1.0


def test_methods_run_and_salun_keeps_unmasked_weights():
  dm, params = _pixel_model()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (24, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(np.arange(24) % 3, jnp.int32)
  forget, retain = split_lib.Split(x[y == 0], y[y == 0]), split_lib.Split(x[y != 0], y[y != 0])
  opts = dict(epochs=1, batch_size=8, lr=1e-3)
  extra = {"salun": dict(saliency_batch_size=8, fraction=0.3), "esd": dict(sample_steps=3, pool_size=8, batch_size=4)}
  for name in ("salun", "rl", "ga", "esd"):
    new, state = generation.GENERATION_METHODS[name](dm, params, {}, forget, retain,
                                                     config={**opts, **extra.get(name, {})}, rng=jax.random.key(1))
    assert state == {}
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: np.asarray(a != b), params, new))
    frac = sum(c.sum() for c in changed) / sum(c.size for c in changed)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(new)), name
    if name == "salun":
      assert 0 < frac <= 0.3 + 1e-6, frac  # only the masked 30% may move
    elif name != "esd":
      assert frac > 0.3, (name, frac)
    else:  # ESD trains the forget row, the null row is only a frozen target: it (and other classes) stay
      np.testing.assert_array_equal(new["w"][1:], params["w"][1:])
      assert np.abs(np.asarray(new["w"][0] - params["w"][0])).max() > 0
  with pytest.raises(ValueError, match="target"):
    generation.GENERATION_METHODS["rl"](dm, params, {}, forget, retain, config={"target": "prev"},
                                        rng=jax.random.key(0))


def test_frechet_distance_closed_form():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((2000, 3)) @ np.array([[1.0, 0.2, 0.0], [0.0, 0.7, 0.1], [0.0, 0.0, 0.5]])
  assert gen_eval.feature_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  shift = np.array([1.0, -2.0, 0.5])
  assert gen_eval.feature_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
  # different covariances: Tr(S1 + S2 − 2(S1 S2)^½) against diagonal closed form Σ(√s1 − √s2)²
  s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
  assert gen_eval.frechet_distance(np.zeros(2), s1, np.ones(2), s2) == pytest.approx(2 + 4 + 1)
  m1, c1 = gen_eval.gaussian_stats(a)
  np.testing.assert_allclose(c1, np.cov(a.T))
  full = gen_eval.frechet_distance(m1, c1, m1 + 1, 2 * c1)
  assert full == pytest.approx(3 + np.trace(c1) * (3 - 2 * np.sqrt(2)), rel=1e-6)
  assert full == pytest.approx(3 + np.trace(c1 + 2 * c1 - 2 * np.real(linalg.sqrtm(2 * c1 @ c1))), rel=1e-6)
  with pytest.raises(ValueError, match="features"):
    gen_eval.gaussian_stats(np.zeros(5))
  # per class, over the remaining classes and over all: each the distance of the matching rows
  labels = np.arange(2000) % 2
  scores = gen_eval.frechet_scores(a + shift, labels, a, labels, forget_classes=(0,))
  assert scores["FD_1"] == pytest.approx(gen_eval.feature_distance(a[1::2] + shift, a[1::2]))
  assert scores["FD_remain"] == scores["FD_1"]
  assert scores["FD_all"] == pytest.approx(float(shift @ shift), rel=1e-6)


def test_generation_scores_and_grid():
  cond = np.array([0, 0, 0, 0, 1, 1, 2, 2])
  pred = np.array([0, 1, 2, 2, 1, 0, 2, 2])
  s = gen_eval.generation_scores(pred, cond, forget_classes=(0,))
  assert s["UA"] == pytest.approx(0.75) and s["Acc_remain"] == pytest.approx(0.75) and s["Acc_1"] == 0.5
  with pytest.raises(ValueError, match="both"):
    gen_eval.generation_scores(pred[:4], cond[:4], forget_classes=(0,))
  grid = gen_eval.image_grid(-np.ones((3, 2, 2, 1)), columns=2)
  assert grid.shape == (5, 5, 1) and grid[0, 0, 0] == 0.0 and grid[2, 0, 0] == 1.0 and grid[3, 3, 0] == 1.0
