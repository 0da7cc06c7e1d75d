"""LM unlearning objectives (GA, GradDiff, NPO, SimNPO, IdkDPO, AltPO, RMU, SAE, UNDIAL, CE-U, WGA, SatImp, PDU,
FLAT, WAGLE) against independent NumPy formulas.

The stand-in LM is a per-token residual MLP: ``h_0 = E[ids]``, ``h_{k+1} = h_k + tanh(h_k W_k + b_k)``, logits
``h_L H`` (a bigram model, since position ``t`` sees only token ``t``), so every value is recomputed in NumPy.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import chex
import optax
import pytest

from unlearn_jax import language
from unlearn_jax.data.split import Split
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import teachers
from unlearn_jax.unlearning import language as lmu
from unlearn_jax.unlearning.language import objectives as obj
from unlearn_jax.unlearning.language import _rmu as rmu
from unlearn_jax.unlearning.language import _sae as sae_lib
from unlearn_jax.unlearning.language import tokenwise as tok
from unlearn_jax.unlearning.language import _wagle as wagle_lib

V, D, L, T = 16, 6, 2, 10
PAD, BOS, EOS, SEP = 0, 1, 2, 3


def init_params(seed, scale=0.5):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(scale * rng.normal(size=s), jnp.float32)
  return {"embed": f(V, D), "layers": [{"w": f(D, D), "b": f(D)} for _ in range(L)], "head": f(D, V)}


def hidden(params, ids, layer):
  h = params["embed"][ids]
  for k in range(layer):
    h = h + jnp.tanh(h @ params["layers"][k]["w"] + params["layers"][k]["b"])
  return h


LM = language.LanguageModel(logits=lambda p, ids: hidden(p, ids, L) @ p["head"], hidden=hidden, num_layers=L,
                            pad_id=PAD, eos_id=EOS)


# ---- independent NumPy references ------------------------------------------------------------------------------
def np_(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_hidden(p, ids, layer):
  p = np_(p)
  h = p["embed"][np.asarray(ids)]
  for k in range(layer):
    h = h + np.tanh(h @ p["layers"][k]["w"] + p["layers"][k]["b"])
  return h


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_logprobs(p, ids):
  """[B, T] log p(ids[t] | ids[t-1]) (position 0: 0), from the NumPy forward."""
  ids = np.asarray(ids)
  lp = np_log_softmax(np_hidden(p, ids, L) @ np_(p)["head"])
  out = np.zeros(ids.shape)
  for b in range(ids.shape[0]):
    for t in range(1, ids.shape[1]):
      out[b, t] = lp[b, t - 1, ids[b, t]]
  return out


def np_seq(p, ids, mask):
  mask = np.asarray(mask, np.float64)
  return (np_logprobs(p, ids) * mask).sum(-1), mask.sum(-1)


def np_nll(p, ids, mask):
  s, n = np_seq(p, ids, mask)
  return -s.sum() / n.sum()


def log_sigmoid(z):
  return -np.log1p(np.exp(-z))


def np_entity_codes(sae, p, ids, emask, layer):
  s = np_(sae)
  x = np_hidden(p, ids, layer) * s["scale"]
  z = np.maximum((x - s["b_dec"]) @ s["w_enc"] + s["b_enc"], 0.0)
  m = np.asarray(emask, np.float64)
  return (z * m[..., None]).sum(1) / np.maximum(m.sum(1), 1.0)[:, None]


# ---- data --------------------------------------------------------------------------------------------------------
def qa_rows(n, seed, answer_tokens, question_tokens=range(5, 16)):
  """``BOS q SEP a EOS PAD..`` rows (+ idk answers and entity masks) with the contract's masks."""
  rng = np.random.default_rng(seed)
  fields = {k: np.zeros((n, T), np.float32) for k in ("loss_mask", "entity_mask", "idk_loss_mask")}
  ids, idk = np.zeros((n, T), np.int32), np.zeros((n, T), np.int32)
  for i in range(n):
    q = rng.choice(list(question_tokens), rng.integers(2, 4))
    a = rng.choice(list(answer_tokens), rng.integers(1, 4))
    k = rng.choice(list(answer_tokens), 2)
    for arr, mask, ans in ((ids, fields["loss_mask"], a), (idk, fields["idk_loss_mask"], k)):
      row = [BOS, *q, SEP, *ans, EOS]
      arr[i, :len(row)] = row
      mask[i, len(q) + 2:len(row)] = 1.0
    fields["entity_mask"][i, 1:1 + rng.integers(1, len(q) + 1)] = 1.0
  x = {"input_ids": jnp.asarray(ids), "idk_input_ids": jnp.asarray(idk), **{k: jnp.asarray(v) for k, v in
                                                                              fields.items()}}
  # AltPO's alternate answers: another row's IdK-slot answer (no extra draws, so the rows above are unchanged)
  x["alt_input_ids"], x["alt_loss_mask"] = jnp.roll(x["idk_input_ids"], 1, 0), jnp.roll(x["idk_loss_mask"], 1, 0)
  return Split(x, jnp.zeros((n,), jnp.int32), jnp.arange(n))


def term_value(term, params, frozen, x):
  loss, (state, metrics) = term(params, teachers.carry({}, frozen), (x, None), jax.random.key(0), jnp.int32(0))
  assert state["frozen"] is frozen
  return float(loss), metrics


@functools.lru_cache()
def setup():
  ref = init_params(0)
  cur = jax.tree.map(lambda a, b: a + 0.3 * b, ref, init_params(1, 1.0))  # a model that moved away from ref
  return ref, cur, qa_rows(6, 2, range(5, 16)).x


# ---- likelihood objectives ---------------------------------------------------------------------------------------
def test_ga_and_graddiff_nll_terms():
  _, cur, x = setup()
  want = np_nll(cur, x["input_ids"], x["loss_mask"])
  ga, _ = term_value(obj.gradient_ascent(LM), cur, {}, x)
  np.testing.assert_allclose(ga, -want, rtol=1e-5)
  gd, m = term_value(obj.gradient_ascent(LM, gamma=0.4), cur, {}, x)
  np.testing.assert_allclose(gd, -0.4 * want, rtol=1e-5)
  np.testing.assert_allclose(float(m["nll"]), want, rtol=1e-5)
  ret, _ = term_value(obj.retain_term(LM, "nll", alpha=0.7), cur, {}, x)
  np.testing.assert_allclose(ret, 0.7 * want, rtol=1e-5)
  with pytest.raises(ValueError, match="method.retain_loss"):
    obj.retain_term(LM, "mse")


def test_kl_retain_is_reference_to_model_kl_over_real_tokens():
  ref, cur, x = setup()
  ids = np.asarray(x["input_ids"])
  lr, lc = (np_log_softmax(np_hidden(p, ids, L) @ np_(p)["head"]) for p in (ref, cur))
  kl = (np.exp(lr) * (lr - lc)).sum(-1)           # KL(ref || cur) at every position
  real = ids != PAD
  want = kl[real].mean()
  got, m = term_value(obj.retain_term(LM, "kl", alpha=2.0), cur, {obj.REFERENCE: ref}, x)
  np.testing.assert_allclose(got, 2.0 * want, rtol=1e-5)
  assert abs(want - kl.mean()) > 1e-3  # padding excluded: the all-position mean differs
  same, _ = term_value(obj.retain_term(LM, "kl"), ref, {obj.REFERENCE: ref}, x)
  assert abs(same) < 1e-6


def test_npo_matches_log_sigmoid_of_log_ratio():
  ref, cur, x = setup()
  lp, _ = np_seq(cur, x["input_ids"], x["loss_mask"])
  lp_ref, _ = np_seq(ref, x["input_ids"], x["loss_mask"])
  beta, gamma = 0.1, 1.5
  want = -(2 / beta) * np.mean(log_sigmoid(-beta * (lp - lp_ref)))
  got, m = term_value(obj.npo(LM, beta=beta, gamma=gamma), cur, {obj.REFERENCE: ref}, x)
  np.testing.assert_allclose(got, gamma * want, rtol=1e-5)
  np.testing.assert_allclose(float(m["log_ratio"]), np.mean(lp - lp_ref), rtol=1e-5)
  # At the reference the loss is (2/β)·log 2 for every row.
  at_ref, _ = term_value(obj.npo(LM, beta=beta), ref, {obj.REFERENCE: ref}, x)
  np.testing.assert_allclose(at_ref, 2 / beta * np.log(2), rtol=1e-5)


def test_simnpo_normalises_by_length_and_subtracts_delta_inside():
  _, cur, x = setup()
  lp, n = np_seq(cur, x["input_ids"], x["loss_mask"])
  assert len(set(n)) > 1  # rows of different lengths, so the normalisation matters
  beta, delta, gamma = 0.5, 2.0, 0.125  # a small β keeps logσ off its saturated tail
  want = -(2 / beta) * np.mean(log_sigmoid(beta * (-lp / n - delta)))
  got, _ = term_value(obj.simnpo(LM, beta=beta, delta=delta, gamma=gamma), cur, {}, x)
  np.testing.assert_allclose(got, gamma * want, rtol=1e-5)
  wrong = -(2 / beta) * np.mean(log_sigmoid(beta * (-lp / n) - delta))  # δ outside β: a different loss
  assert abs(gamma * wrong - got) > 0.05 * abs(got)


@pytest.mark.parametrize("win,beta", [("idk", 0.1), ("alt", 0.3)])  # IdkDPO, AltPO
def test_dpo_prefers_idk_or_alternate_over_true_answer(win, beta):
  ref, cur, x = setup()
  lose, _ = np_seq(cur, x["input_ids"], x["loss_mask"])
  lose_ref, _ = np_seq(ref, x["input_ids"], x["loss_mask"])
  won, _ = np_seq(cur, x[f"{win}_input_ids"], x[f"{win}_loss_mask"])
  won_ref, _ = np_seq(ref, x[f"{win}_input_ids"], x[f"{win}_loss_mask"])
  want = -(2 / beta) * np.mean(log_sigmoid(beta * ((won - won_ref) - (lose - lose_ref))))
  got, m = term_value(obj.idk_dpo(LM, beta=beta, win=win), cur, {obj.REFERENCE: ref}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(float(m[f"{win}_logp"]), won.mean(), rtol=1e-5)


# ---- token-level objectives (UNDIAL, CE-U, WGA, SatImp, PDU, FLAT) -------------------------------------------
def np_full_logits(p, ids):
  return np_hidden(p, ids, L) @ np_(p)["head"]


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_shifted(p, x, ids="input_ids", mask="loss_mask"):
  """(log-softmax [B,T-1,V], labels, mask [B,T-1], logits [B,T-1,V]) of the shifted batch."""
  z = np_full_logits(p, x[ids])[:, :-1]
  return np_log_softmax(z), np.asarray(x[ids])[:, 1:], np.asarray(x[mask], np.float64)[:, 1:], z


def picked(a, labels):
  return np.take_along_axis(a, labels[..., None], -1)[..., 0]


def test_undial_distils_reference_with_true_logit_lowered():
  ref, cur, x = setup()
  lz, labels, m, _ = np_shifted(cur, x)
  zr = np_full_logits(ref, x["input_ids"])[:, :-1]
  beta = 3.0
  adjusted = zr.copy()
  for b in range(labels.shape[0]):
    for t in range(labels.shape[1]):
      adjusted[b, t, labels[b, t]] -= beta * m[b, t]  # only answer positions are adjusted
  ce = -(np_softmax(adjusted) * lz).sum(-1)
  real = (labels != PAD).astype(np.float64)
  got, _ = term_value(tok.undial(LM, beta=beta, gamma=0.5), cur, {obj.REFERENCE: ref}, x)
  np.testing.assert_allclose(got, 0.5 * (ce * real).sum() / real.sum(), rtol=1e-5)
  got_t, _ = term_value(tok.undial(LM, beta=beta, positions="targets"), cur, {obj.REFERENCE: ref}, x)
  np.testing.assert_allclose(got_t, (ce * m).sum() / m.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="method.positions"):
    tok.undial(LM, positions="all")


def test_ceu_is_cross_entropy_to_own_distribution_without_true_token():
  _, cur, x = setup()
  lz, labels, _, z = np_shifted(cur, x)
  full = np.asarray(x["loss_mask"], np.float64)
  keep = (full * (np.cumsum(full, -1) > 1))[:, 1:]  # the first answer token of each row is skipped
  target = z.copy()
  np.put_along_axis(target, labels[..., None], -np.inf, -1)
  ce = -(np_softmax(target) * lz).sum(-1)
  got, m = term_value(tok.ceu(LM, ignore_first_n=1), cur, {}, x)
  np.testing.assert_allclose(got, (ce * keep).sum() / keep.sum(), rtol=1e-5)
  every = full[:, 1:]
  got0, _ = term_value(tok.ceu(LM, ignore_first_n=0), cur, {}, x)
  np.testing.assert_allclose(got0, (ce * every).sum() / every.sum(), rtol=1e-5)
  assert abs(got - got0) > 1e-4


def test_wga_and_satimp_weight_the_ascent_by_detached_probabilities():
  _, cur, x = setup()
  lz, labels, m, _ = np_shifted(cur, x)
  lp = picked(lz, labels)
  p, ce = np.exp(lp), -lp
  got, _ = term_value(tok.weighted_ascent(LM, 2.0), cur, {}, x)
  np.testing.assert_allclose(got, -(p ** 2 * ce * m).sum() / m.sum(), rtol=1e-5)
  got, _ = term_value(tok.weighted_ascent(LM, 5.0, 1.0, gamma=0.1, name="satimp"), cur, {}, x)
  np.testing.assert_allclose(got, -0.1 * (p ** 5 * (1 - p) * ce * m).sum() / m.sum(), rtol=1e-5)
  # The weights are constants for the gradient: at β = 0 WGA's gradient is GA's.
  grad = lambda term: jax.grad(lambda q: term(q, teachers.carry({}, {}), (x, None), jax.random.key(0),
                                              jnp.int32(0))[0])(cur)
  chex.assert_trees_all_close(grad(tok.weighted_ascent(LM, 0.0)), grad(obj.gradient_ascent(LM)), rtol=1e-5,
                              atol=1e-7)


def test_pdu_margin_term_and_dual_ascent():
  _, cur, x = setup()
  z = np_full_logits(cur, x["input_ids"])
  m = np.asarray(x["loss_mask"], np.float64)  # unshifted, as the reference indexes the logits
  margin = (z.max(-1) - z.mean(-1)) ** 2
  got, _ = term_value(tok.pdu_forget(LM, gamma=2.0), cur, {}, x)
  np.testing.assert_allclose(got, 2.0 * (margin * m).sum() / m.sum(), rtol=1e-5)
  nll = np_nll(cur, x["input_ids"], x["loss_mask"])
  term = tok.pdu_retain(LM, "nll", eps=0.5, dual_step=0.7, warmup_epochs=2)
  state = teachers.carry(tok.init_dual(3.0), {})
  for epoch, want_lam in ((0, 3.0), (2, max(0.0, 3.0 + 0.7 * (nll - 0.5)))):
    loss, (new, metrics) = term(cur, state, (x, None), jax.random.key(0), jnp.int32(epoch))
    np.testing.assert_allclose(float(loss), 3.0 * (nll - 0.5), rtol=1e-5)  # the step uses λ before its update
    np.testing.assert_allclose(float(new["model"][tok.DUAL]), want_lam, rtol=1e-5)
  _, (new, _) = term(cur, teachers.carry(tok.init_dual(0.1), {}), (x, None), jax.random.key(0), jnp.int32(5))
  big_eps = tok.pdu_retain(LM, "nll", eps=nll + 10.0)
  _, (low, _) = big_eps(cur, teachers.carry(tok.init_dual(0.1), {}), (x, None), jax.random.key(0), jnp.int32(0))
  assert float(low["model"][tok.DUAL]) == 0.0  # projected onto λ >= 0


# FLAT's divergences written out: (activation a, conjugate c) with loss −a(P_idk) + c(P_forget).
NP_FLAT = {
    "kl": (lambda v: v, lambda v: np.exp(v - 1)),
    "reverse_kl": (lambda v: -np.exp(v), lambda v: -1 - v),
    "jeffrey": (lambda v: v, lambda v: v + v * v / 4 + v ** 3 / 16),
    "squared_hellinger": (lambda v: 1 - np.exp(v), lambda v: (1 - np.exp(v)) * np.exp(-v)),
    "pearson": (lambda v: v, lambda v: v * v / 4 + v),
    "neyman": (lambda v: 1 - np.exp(v), lambda v: 2 - 2 * np.sqrt(1 - v)),
    "jensen_shannon": (lambda v: np.log(2) - np.log1p(np.exp(-v)), lambda v: v + np.log1p(np.exp(-v)) - np.log(2)),
    "total_variation": (lambda v: np.tanh(v) / 2, lambda v: np.tanh(v) / 2),
}


def test_flat_f_divergence_of_mean_probabilities():
  _, cur, x = setup()
  lf, yf, mf, _ = np_shifted(cur, x)
  lg, yg, mg, _ = np_shifted(cur, x, "idk_input_ids", "idk_loss_mask")
  pf, pg = np.exp(picked(lf, yf)) * mf, np.exp(picked(lg, yg)) * mg
  positions = (pf.sum() / pf.size, pg.sum() / pg.size)  # the reference: every shifted position counts
  targets = (pf.sum() / mf.sum(), pg.sum() / mg.sum())
  assert set(NP_FLAT) == set(tok.FLAT_DIVERGENCES)
  for name, (a, c) in NP_FLAT.items():
    got, _ = term_value(tok.flat(LM, name), cur, {}, x)
    np.testing.assert_allclose(got, -a(positions[1]) + c(positions[0]), rtol=1e-5, atol=1e-6, err_msg=name)
  got, m = term_value(tok.flat(LM, "kl", mean="targets"), cur, {}, x)
  np.testing.assert_allclose(got, -targets[1] + np.exp(targets[0] - 1), rtol=1e-5)
  with pytest.raises(ValueError, match="method.divergence"):
    tok.flat(LM, "hellinger")


# ---- WAGLE -------------------------------------------------------------------------------------------------------
def test_wagle_attribution_and_row_gradients():
  ref, cur, x = setup()
  # Σ_rows ∇ NLL_row, against one gradient per row (no chunking), with a chunk that wraps around.
  one = jax.jit(jax.grad(lambda q, ids, mask: language.mean_nll(LM.logits(q, ids), ids, mask)))
  rows = [one(cur, x["input_ids"][i:i + 1], x["loss_mask"][i:i + 1]) for i in range(6)]
  want = jax.tree.map(lambda *g: sum(g), *rows)
  chex.assert_trees_all_close(wagle_lib.row_nll_gradient(LM, cur, x, chunk=4), want, rtol=1e-4, atol=1e-6)
  rng = np.random.default_rng(0)
  theta, gf, gr = (rng.normal(size=(5, 3)) for _ in range(3))
  gr[0, 0] = 0.0
  got = np.asarray(wagle_lib.attribution(jnp.asarray(theta), jnp.asarray(gf), jnp.asarray(gr), mu=0.01))
  inv = np.divide(1.0, gr, out=np.zeros_like(gr), where=gr != 0)
  np.testing.assert_allclose(got, np.abs(gf * (theta - 1.01 * inv)), rtol=1e-5)
  got = np.asarray(wagle_lib.attribution(jnp.asarray(theta), jnp.asarray(gf), jnp.asarray(gr), hessian="constant",
                                         gamma=4.0, mu=0.0))
  np.testing.assert_allclose(got, np.abs(gf * (theta - gr / 4.0)), rtol=1e-5)


def test_wagle_updates_only_attributed_weights():
  params, forget, retain = trained_original()
  opts = {"lr": 0.01, "epochs": 1, "batch_size": 8, "weight_decay": 0.0, "warmup_epochs": 0.0, "fraction": 0.3,
          "base": "graddiff"}
  out, _ = lmu.unlearn_lm("wagle", LM, params, forget, retain, options=opts, rng=jax.random.key(0))
  moved = jax.tree.map(lambda a, b: np.asarray(a) != np.asarray(b), params, out)
  total = sum(m.size for m in jax.tree.leaves(moved))
  count = sum(int(m.sum()) for m in jax.tree.leaves(moved))
  assert 0 < count <= int(0.3 * total), (count, total)


# ---- RMU ---------------------------------------------------------------------------------------------------------
def np_activation_mse(a, b, mask):
  m = np.asarray(mask, np.float64)
  per_token = ((a - b) ** 2).mean(-1)
  return np.mean((per_token * m).sum(-1) / m.sum(-1))


def test_rmu_terms_and_control_vector():
  ref, cur, x = setup()
  c = 3.0
  u = rmu.control_vector(jax.random.key(3), 64, c)
  np.testing.assert_allclose(float(jnp.linalg.norm(u)), c, rtol=1e-5)
  assert float(u.min()) >= 0.0 and len(np.unique(np.asarray(u))) == 64  # a random positive-orthant direction
  cu = rmu.control_vector(jax.random.key(3), D, c)
  frozen = {obj.REFERENCE: ref, rmu.CONTROL: cu}
  objective = rmu.rmu_objective(LM, layer=1, gamma=0.5, alpha=4.0)
  h = np_hidden(cur, x["input_ids"], 1)
  want_f = np_activation_mse(h, np.asarray(cu, np.float64)[None, None], x["loss_mask"])
  want_r = np_activation_mse(h, np_hidden(ref, x["input_ids"], 1), x["loss_mask"])
  np.testing.assert_allclose(term_value(objective.forget, cur, frozen, x)[0], 0.5 * want_f, rtol=1e-5)
  np.testing.assert_allclose(term_value(objective.retain, cur, frozen, x)[0], 4.0 * want_r, rtol=1e-5)
  with pytest.raises(ValueError, match="method.layer"):
    rmu.rmu_objective(LM, layer=L + 1)
  assert (rmu.default_layer(32), rmu.default_layer(4, 0.5), rmu.default_layer(2)) == (8, 2, 1)
  with pytest.raises(ValueError, match="method.layer"):
    rmu.default_layer(0)


def test_param_mask_from_key_path_regex():
  params = init_params(0)
  mask = rmu.param_mask(params, r"layers\.1\.")
  assert mask["layers"][1] == {"w": True, "b": True}
  assert mask["layers"][0] == {"w": False, "b": False} and not mask["embed"] and not mask["head"]
  with pytest.raises(ValueError, match="matches no parameter"):
    rmu.param_mask(params, r"blocks\.7")
  with pytest.raises(ValueError, match="not a valid regex"):
    rmu.param_mask(params, r"layers\.(")


def test_rmu_trains_only_masked_layers_and_reaches_control():
  forget, retain = qa_rows(8, 4, range(5, 10)), qa_rows(8, 5, range(10, 16))
  params = init_params(0)
  opts = {"lr": 0.05, "epochs": 30, "batch_size": 8, "layer": 2, "steering_coeff": 2.0, "alpha": 1.0,
          "params_regex": r"layers\.1\."}
  out, hist = lmu.unlearn_lm("rmu", LM, params, forget, retain, options=opts, rng=jax.random.key(0))
  for path in (("embed",), ("head",), ("layers", 0, "w"), ("layers", 0, "b")):
    a, b = functools.reduce(lambda t, k: t[k], path, params), functools.reduce(lambda t, k: t[k], path, out)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  assert not np.array_equal(np.asarray(params["layers"][1]["w"]), np.asarray(out["layers"][1]["w"]))
  assert hist["joint_forget_mse"][-1] < 0.5 * hist["joint_forget_mse"][0]
  assert hist["joint_retain_mse"][-1] < hist["joint_forget_mse"][-1] + 1.0


# ---- SAE ---------------------------------------------------------------------------------------------------------
def test_train_sae_lowers_loss_with_unit_decoder_rows():
  rng = np.random.default_rng(0)
  atoms = rng.normal(size=(12, 8))
  codes = rng.exponential(size=(512, 12)) * (rng.random((512, 12)) < 0.2)
  acts = jnp.asarray(codes @ atoms + 0.5, jnp.float32)
  sae, hist = sae_lib.train_sae(acts, num_latents=24, l1_coeff=1e-3, steps=400, lr=1e-2, rng=jax.random.key(0),
                                batch_size=128)
  loss = np.asarray(hist["loss"])
  assert loss.shape == (400,) and loss[-50:].mean() < 0.3 * loss[:5].mean()
  np.testing.assert_allclose(np.linalg.norm(np.asarray(sae["w_dec"]), axis=-1), 1.0, rtol=1e-5)
  # sae_loss against NumPy on the trained SAE: MSE over rows and features + λ·mean row L1.
  s, a = np_(sae), np.asarray(acts, np.float64)
  x = a * s["scale"]
  z = np.maximum((x - s["b_dec"]) @ s["w_enc"] + s["b_enc"], 0.0)
  want = ((z @ s["w_dec"] + s["b_dec"] - x) ** 2).mean() + 0.05 * np.abs(z).sum(-1).mean()
  np.testing.assert_allclose(float(sae_lib.sae_loss(sae, acts, 0.05)[0]), want, rtol=1e-4)
  np.testing.assert_allclose(float(s["scale"]), np.sqrt(8 / (a ** 2).sum(-1).mean()), rtol=1e-5)
  with pytest.raises(ValueError, match="activations"):
    sae_lib.train_sae(acts[0], num_latents=4, l1_coeff=0.0, steps=1, lr=1e-3, rng=jax.random.key(0))


def test_sae_objective_and_separation_match_numpy():
  ref, cur, x = setup()
  layer = 1
  sae = sae_lib.init_sae(jax.random.key(1), hidden(ref, x["input_ids"], layer).reshape(-1, D), 10)
  sae = {**sae, "b_enc": jnp.full((10,), 0.3)}  # most latents active
  known = jnp.asarray(np.random.default_rng(1).random(10), jnp.float32)
  unknown = jnp.asarray(np.random.default_rng(2).random(10), jnp.float32)
  probe = sae_lib.SAEProbe(sae=sae, known=known, unknown=unknown, layer=layer)
  z = np_entity_codes(sae, cur, x["input_ids"], x["entity_mask"], layer)
  k, u = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
  s = (z - k) @ (u - k) / ((u - k) ** 2).sum()
  got, m = term_value(sae_lib.sae_forget(LM, gamma=0.7), cur, {sae_lib.PROBE: probe}, x)
  np.testing.assert_allclose(got, 0.7 * np.mean((s - 1) ** 2), rtol=1e-4)
  np.testing.assert_allclose(sae_lib.sae_separation(LM, cur, probe, x, batch_size=4), s.mean(), rtol=1e-4)
  # The centroids themselves score 0 and 1.
  sep = sae_lib.separation(jnp.stack([known, unknown]), known, unknown)
  np.testing.assert_allclose(np.asarray(sep), [0.0, 1.0], atol=1e-5)


def test_fit_probe_centroids_are_mean_entity_codes():
  ref, _, x = setup()
  other = qa_rows(5, 9, range(5, 16)).x
  probe = sae_lib.fit_probe(LM, ref, [x, other], known_x=x, unknown_x=other, layer=1, num_latents=8,
                            l1_coeff=1e-3, steps=20, lr=1e-2, rng=jax.random.key(0), batch_size=None)
  np.testing.assert_allclose(np.asarray(probe.known), np_entity_codes(probe.sae, ref, x["input_ids"],
                                                                      x["entity_mask"], 1).mean(0), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(sae_lib.sae_separation(LM, ref, probe, other), 1.0, rtol=1e-4)
  acts = sae_lib.collect_activations(LM, ref, x, 1, batch_size=4)
  assert acts.shape == (int((np.asarray(x["input_ids"]) != PAD).sum()), D)


# ---- the runner --------------------------------------------------------------------------------------------------
@functools.lru_cache()
def trained_original():
  """The stand-in LM fitted (token NLL, Adam) to forget + retain rows whose answers use disjoint tokens."""
  forget, retain = qa_rows(8, 4, range(5, 10)), qa_rows(16, 5, range(10, 16))
  both = Split(jax.tree.map(lambda a, b: jnp.concatenate([a, b]), forget.x, retain.x),
               jnp.zeros((24,), jnp.int32))
  params, _, _ = loop.unlearn_loop(None, init_params(0), teachers.carry({}, {}), None, both,
                                   objective=loop.Objective(retain=obj.nll(LM)), tx=optax.adam(0.05), epochs=60,
                                   batch_size=24, rng=jax.random.key(0))
  return params, forget, retain


def mean_logp(params, split):
  lp, _ = np_seq(params, split.x["input_ids"], split.x["loss_mask"])
  return lp.mean()


def test_npo_lowers_forget_logprob_and_keeps_retain():
  params, forget, retain = trained_original()
  f0, r0 = mean_logp(params, forget), mean_logp(params, retain)
  out, hist = lmu.unlearn_lm("npo", LM, params, forget, retain, rng=jax.random.key(1),
                             options={"lr": 0.02, "epochs": 20, "batch_size": 8, "warmup_epochs": 0.0})
  f1, r1 = mean_logp(out, forget), mean_logp(out, retain)
  assert f1 < f0 - 3.0, (f0, f1)
  assert abs(r1 - r0) < 0.1 * (f0 - f1), (r0, r1, f0, f1)
  assert hist["joint_forget_log_ratio"][-1] < -3.0 < hist["joint_forget_log_ratio"][0] + 3.0


# Every LM method, called through its keyword function with all its defaults as keywords (tests/test_api.py
# checks that this list covers `lmu.METHODS`).
LM_METHODS = tuple(sorted(lmu.METHODS))


@pytest.mark.parametrize("name", LM_METHODS)
def test_every_method_runs_and_logs_the_right_split(name):
  params, forget, retain = trained_original()
  holdout = qa_rows(6, 11, range(5, 16))
  # one step (8 forget rows): the history is the Original's losses, taken before the step moves the weights
  opts = {"lr": 0.01, "epochs": 1, "batch_size": 32, "warmup_epochs": 0.0}
  opts.update({"layer": 1, "sae_steps": 20, "sae_expansion": 2} if name == "sae" else {})
  opts.update({"layer": 1} if name == "rmu" else {})
  method = getattr(lmu, name)
  out, hist = method(LM, params, forget, retain, config=opts, rng=jax.random.key(0), holdout=holdout)
  # every default as a keyword (the sizes above overridden) is the config= path, bit for bit
  kw_out, kw_hist = method(LM, params, forget, retain, rng=jax.random.key(0), holdout=holdout,
                           **{**lmu.METHODS[name], **opts})
  chex.assert_trees_all_equal(kw_out, out)
  assert kw_hist.keys() == hist.keys()
  for key in (k for k in hist if "seconds" not in k):
    np.testing.assert_array_equal(kw_hist[key], hist[key], err_msg=key)
  assert all(np.all(np.isfinite(v)) for v in hist.values())
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(out)))
  nll_f = np_nll(params, forget.x["input_ids"], forget.x["loss_mask"])
  nll_r = np_nll(params, retain.x["input_ids"], retain.x["loss_mask"])
  if name == "ga":
    np.testing.assert_allclose(hist["forget_loss"][0], -nll_f, rtol=1e-4)
  elif name in lmu.FORGET_ONLY:
    np.testing.assert_allclose(hist["forget_nll"][0], nll_f, rtol=1e-4)
  elif name != "rmu":  # forget anchored (the loop walks the forget split, cycles retain); keys name the terms
    np.testing.assert_allclose(hist["joint_retain_nll"][0], nll_r, rtol=1e-4)
    if name != "sae":
      np.testing.assert_allclose(hist["joint_forget_nll"][0], nll_f, rtol=1e-4)


def test_runner_rejects_bad_options_and_missing_fields():
  params, forget, retain = trained_original()
  with pytest.raises(ValueError, match="method.temperature"):
    lmu.unlearn_lm("npo", LM, params, forget, retain, options={"temperature": 2.0}, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="unknown language-model unlearning method"):
    lmu.unlearn_lm("scrub", LM, params, forget, retain, options={}, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="method.anchor"):
    lmu.method_config("npo", {"anchor": "both"})
  no_idk = Split({k: forget.x[k] for k in ("input_ids", "loss_mask")}, forget.y)
  with pytest.raises(ValueError, match="idk_input_ids"):
    lmu.unlearn_lm("idkdpo", LM, params, no_idk, retain, options={}, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="holdout"):
    lmu.unlearn_lm("sae", LM, params, forget, retain, options={"layer": 1}, rng=jax.random.key(0))
