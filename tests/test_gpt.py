"""Tests for unlearn_jax.models.gpt: config checks, parameter counts, causality, hidden states, RoPE, KV-cache
generation against a no-cache greedy reference, bf16 compute.

Models are tiny (d_model 32, 2 blocks) with random O(1) weights, so greedy continuations vary from step to
step instead of repeating one token.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import language
from unlearn_jax.model import num_params
from unlearn_jax.models import gpt

V = 48
ROPE = gpt.gpt_config("tiny", vocab_size=V, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=48,
                      max_len=32)
LEARNED = gpt.gpt_config("tiny", vocab_size=V, num_layers=2, num_heads=4, d_model=32, d_ff=48, max_len=32,
                         norm="layer", positions="learned", mlp="gelu", use_bias=True, tie_embeddings=False)


@functools.lru_cache(maxsize=None)
def _setup(cfg: gpt.GPTConfig, seed: int = 0):
  """``(lm, model, params)`` with random weights: kernels ~1.5/sqrt(fan_in), norm scales ~1, biases ~0.2.

  ``lm.logits`` and ``lm.hidden`` are jitted here (``layer`` static) to keep the file fast.
  """
  lm, model = gpt.language_model(cfg)
  shapes = jax.eval_shape(lambda k: gpt.init_params(cfg, k), jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(path[-1].key)
    z = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == "scale":
      return jnp.asarray(1.0 + 0.2 * z)
    if name == "bias":
      return jnp.asarray(0.2 * z)
    return jnp.asarray(z * (1.5 / np.sqrt(leaf.shape[0]) if name == "kernel" else 1.0))

  params = jax.tree_util.tree_map_with_path(draw, shapes)
  lm = lm._replace(logits=jax.jit(lm.logits), hidden=jax.jit(lm.hidden, static_argnums=2))
  return lm, model, params


def _ids(shape, seed=0, low=5):
  return jnp.asarray(np.random.default_rng(seed).integers(low, V, size=shape), jnp.int32)


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, field", [
    (dict(d_model=30), "d_model"),
    (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(norm="batch"), "norm"),
    (dict(positions="alibi"), "positions"),
    (dict(mlp="relu"), "mlp"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(dtype=jnp.int32), "dtype"),
    (dict(rope_scaling=(8.0, 4.0, 1.0, 64)), "rope_scaling"),
    (dict(rope_scaling=(8.0, 4.0)), "rope_scaling"),
    (dict(d_model=12, num_heads=4), "d_model / num_heads"),   # odd head dim with RoPE
])
def test_config_rejects_bad_fields(overrides, field):
  with pytest.raises(ValueError, match=field):
    gpt.gpt_config("tiny", **overrides)


def test_unknown_preset_and_field():
  with pytest.raises(ValueError, match="preset"):
    gpt.gpt_config("gpt5")
  with pytest.raises(ValueError, match="d_hidden"):
    gpt.gpt_config("tiny", d_hidden=3)


def _hand_count(cfg: gpt.GPTConfig) -> int:
  """Parameter count written out per tensor."""
  d, f, h, kv = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.kv_heads
  hd = d // h
  norm = d if cfg.norm == "rms" else 2 * d
  attn = d * h * hd + 2 * d * kv * hd + h * hd * d
  mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f
  if cfg.use_bias:
    attn += h * hd + 2 * kv * hd + d
    mlp += (2 * f if cfg.mlp == "swiglu" else f) + d
  total = cfg.vocab_size * d + cfg.num_layers * (2 * norm + attn + mlp) + norm
  if cfg.positions == "learned":
    total += cfg.max_len * d
  if not cfg.tie_embeddings:
    total += d * cfg.vocab_size
  return total


@pytest.mark.parametrize("name, published", [("tiny", None), ("gpt2-125m", 124_439_808),
                                             ("llama-1b", 1_235_814_400)])
def test_param_counts(name, published):
  cfg = gpt.gpt_config(name)
  shapes = jax.eval_shape(lambda k: gpt.init_params(cfg, k), jax.random.key(0))
  assert num_params(shapes) == _hand_count(cfg)
  if published is not None:   # GPT-2 small and Llama-3.2-1B as published
    assert num_params(shapes) == published
  else:
    assert 0.8e6 < num_params(shapes) < 1.5e6


@pytest.mark.parametrize("cfg", [ROPE, LEARNED, ROPE.replace(use_bias=True, tie_embeddings=False)])
def test_param_counts_small_variants(cfg):
  _, _, params = _setup(cfg)
  assert num_params(params) == _hand_count(cfg)
  block = params["block_0"]
  assert block["attn"]["k"]["kernel"].shape == (cfg.d_model, cfg.kv_heads * cfg.head_dim)
  assert ("gate" in block["mlp"]) == (cfg.mlp == "swiglu")
  assert ("lm_head" in params) == (not cfg.tie_embeddings)


def test_eval_shape_matches_real_init():
  real = gpt.init_params(ROPE, jax.random.key(0))
  abstract = jax.eval_shape(lambda k: gpt.init_params(ROPE, k), jax.random.key(0))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), real) == jax.tree.map(lambda a: (a.shape, a.dtype), abstract)


# ---------------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("cfg", [ROPE, LEARNED], ids=["rope", "learned"])
def test_causal(cfg):
  lm, _, params = _setup(cfg)
  ids = _ids((2, 12))
  changed = ids.at[:, 7].set((ids[:, 7] + 1) % V)
  a, b = lm.logits(params, ids), lm.logits(params, changed)
  assert a.shape == (2, 12, V) and a.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(a[:, :7]), np.asarray(b[:, :7]))
  assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).min(axis=-1).max() > 0   # later positions do see it


def _attention_reference(q, k, v, visible):
  """Explicit float64 softmax attention; ``visible [B, T, S]``; query head j reads key/value head j // groups."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(visible[:, None], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", probs, v)


@pytest.mark.parametrize("case", ["causal", "cache_one_query", "cache_several_queries"])
def test_attention_matches_explicit_softmax_with_causal_and_padding_masks(case):
  rng = np.random.default_rng(3)
  b, h, h_kv, d, s = 3, 4, 2, 8, 10
  t = {"causal": s, "cache_one_query": 1, "cache_several_queries": 3}[case]
  q = rng.standard_normal((b, t, h, d)).astype(np.float32) * 2
  k, v = (rng.standard_normal((b, s, h_kv, d)).astype(np.float32) * 2 for _ in range(2))
  if case == "causal":
    positions, visible = None, np.tril(np.ones((s, s), bool))[None].repeat(b, 0)
  else:  # rows of different lengths: key s is visible to query (b, t) iff s <= positions[b, t]
    start = np.array([0, 4, 6])
    positions = start[:, None] + np.arange(t)[None]
    visible = np.arange(s)[None, None, :] <= positions[:, :, None]
  out = jax.jit(gpt.attention)(q, k, v, None if positions is None else jnp.asarray(positions, jnp.int32))
  assert out.shape == (b, t, h, d) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), _attention_reference(q, k, v, visible), rtol=1e-5, atol=1e-5)
  # the masks matter: a hidden key changes nothing, a visible one changes the output
  hidden_b, hidden_s = (0, s - 1) if case == "causal" else (0, int(positions[0, -1]) + 1)
  k2 = k.copy()
  k2[hidden_b, hidden_s] += 5.0
  out2 = jax.jit(gpt.attention)(q, k2, v, None if positions is None else jnp.asarray(positions, jnp.int32))
  if case == "causal":
    np.testing.assert_array_equal(np.asarray(out2)[0, :-1], np.asarray(out)[0, :-1])
    assert np.abs(np.asarray(out2)[0, -1] - np.asarray(out)[0, -1]).max() > 1e-3
  else:
    np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))


def _norm(cfg, p, x):
  x = np.asarray(x, np.float64)
  if cfg.norm == "rms":
    return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + cfg.norm_eps) * np.asarray(p["scale"])
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + cfg.norm_eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


@pytest.mark.parametrize("cfg", [ROPE, LEARNED], ids=["rope", "learned"])
def test_hidden_states(cfg):
  lm, _, params = _setup(cfg)
  ids = _ids((2, 9), seed=1)
  # layer 0: the embeddings (plus learned positions)
  h0 = np.asarray(params["embed"]["embedding"])[np.asarray(ids)]
  if cfg.positions == "learned":
    h0 = h0 + np.asarray(params["pos_embed"]["embedding"])[:9]
  np.testing.assert_allclose(lm.hidden(params, ids, 0), h0, rtol=1e-6, atol=1e-6)
  # hidden(l) followed by the remaining blocks equals hidden(L)
  positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
  full = lm.hidden(params, ids, cfg.num_layers)
  blocks = [jax.jit(lambda p, h, i=i: gpt.Block(cfg, i).apply({"params": p}, h, positions))
            for i in range(cfg.num_layers)]
  for start in range(cfg.num_layers):
    h = lm.hidden(params, ids, start)
    for i in range(start, cfg.num_layers):
      h, _ = blocks[i](params[f"block_{i}"], h)
    np.testing.assert_allclose(h, full, rtol=1e-5, atol=1e-5)
  # hidden(L) is the pre-final-norm stream: final norm and head give the logits
  head = (np.asarray(params["embed"]["embedding"]).T if cfg.tie_embeddings
          else np.asarray(params["lm_head"]["kernel"]))
  expect = _norm(cfg, params["final_norm"], full) @ head
  np.testing.assert_allclose(lm.logits(params, ids), expect, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="hidden_layer"):
    lm.hidden(params, ids, cfg.num_layers + 1)


def test_rope_is_relative():
  """<R(p) q, R(p') k> depends only on p - p' (RoPE's defining property), and position 0 is the identity."""
  inv = gpt.rope_frequencies(ROPE)
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.standard_normal((1, 1, 1, ROPE.head_dim)), jnp.float32) for _ in range(2))
  rot = lambda x, p: gpt.apply_rope(x, jnp.full((1, 1), p), inv)[0, 0, 0]
  dots = [float(rot(q, p + 3) @ rot(k, p)) for p in (0, 5, 11)]
  np.testing.assert_allclose(dots, dots[0], rtol=1e-5)
  assert abs(float(rot(q, 3) @ rot(k, 0)) - float(rot(q, 4) @ rot(k, 0))) > 1e-4
  np.testing.assert_allclose(rot(q, 0), q[0, 0, 0], rtol=1e-6)


def test_bf16_close_to_fp32():
  lm, _, params = _setup(ROPE)
  lm16, _, _ = _setup(ROPE.replace(dtype=jnp.bfloat16))
  ids = _ids((2, 10), seed=2)
  a, b = lm.logits(params, ids), lm16.logits(params, ids)
  assert b.dtype == jnp.float32 and lm16.hidden(params, ids, 1).dtype == jnp.bfloat16
  scale = float(jnp.std(a))
  err = float(jnp.max(jnp.abs(a - b)))
  assert 0 < err < 0.1 * scale   # bf16 rounding is visible but small
  assert float(jnp.mean(jnp.argmax(a, -1) == jnp.argmax(b, -1))) > 0.8


def test_model_adapter_and_mean_nll():
  lm, model, params = _setup(ROPE)
  ids = _ids((2, 8), seed=3)
  apply = jax.jit(model.apply, static_argnames="train")
  logits, state = apply(params, {}, {"input_ids": ids, "loss_mask": jnp.ones((2, 8))}, train=True)
  assert state == {}
  np.testing.assert_array_equal(logits, lm.logits(params, ids))
  np.testing.assert_array_equal(apply(params, {}, ids, train=False)[0], logits)
  grads = jax.jit(jax.grad(lambda p: language.mean_nll(lm.logits(p, ids), ids, jnp.ones((2, 8)))))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------------------------------------------- generation


def _naive_greedy(lm, params, prompt_ids, prompt_len, n, eos):
  """Full forward per step, no cache: the reference for `generate`."""
  prompt_ids, prompt_len = np.asarray(prompt_ids), np.asarray(prompt_len)
  b = prompt_ids.shape[0]
  buf = np.zeros((b, prompt_ids.shape[1] + n), np.int32)
  buf[:, :prompt_ids.shape[1]] = prompt_ids
  length = prompt_len.copy()
  out = np.zeros((b, n), np.int32)
  for s in range(n):
    logits = np.asarray(lm.logits(params, jnp.asarray(buf)))
    nxt = logits[np.arange(b), length - 1].argmax(-1)
    buf[np.arange(b), length] = nxt
    out[:, s] = nxt
    length += 1
  done = np.cumsum(out == eos, axis=1) - (out == eos) > 0   # strictly after the first EOS
  return np.where(done, 0, out)


@pytest.mark.parametrize("cfg", [ROPE, LEARNED], ids=["rope-gqa", "learned"])
def test_generate_matches_naive_greedy(cfg):
  lm, _, params = _setup(cfg)
  prompt_len = np.array([3, 9, 6, 1])
  prompt_ids = np.array(_ids((4, 9), seed=4))
  prompt_ids[np.arange(9)[None] >= prompt_len[:, None]] = 0      # right padding
  n = 8
  ref = _naive_greedy(lm, params, prompt_ids, prompt_len, n, eos=lm.eos_id)
  assert len(np.unique(ref)) > 4                                   # a non-degenerate continuation
  got = lm.generate(params, jnp.asarray(prompt_ids), jnp.asarray(prompt_len), n)
  np.testing.assert_array_equal(np.asarray(got), ref)
  # padding garbage must not leak: a row alone gives the same continuation
  alone = lm.generate(params, jnp.asarray(prompt_ids[:1, :3]), jnp.asarray(prompt_len[:1]), n)
  np.testing.assert_array_equal(np.asarray(alone), ref[:1])

  # with the token row 1 emits at step 2 as EOS: that row emits it, then PAD; other rows unchanged up to
  # their own first EOS
  eos = int(ref[1, 2])
  lm_eos, _ = gpt.language_model(cfg, pad_id=0, eos_id=eos)
  got = np.asarray(lm_eos.generate(params, jnp.asarray(prompt_ids), jnp.asarray(prompt_len), n))
  expect = _naive_greedy(lm, params, prompt_ids, prompt_len, n, eos=eos)
  np.testing.assert_array_equal(got, expect)
  assert got[1, 2] == eos and np.all(got[1, 3:] == 0)


def test_generate_checks_length():
  lm, _, params = _setup(LEARNED)
  with pytest.raises(ValueError, match="max_len"):
    lm.generate(params, jnp.ones((1, 30), jnp.int32), jnp.array([30]), 5)
  assert lm.generate(params, jnp.ones((2, 4), jnp.int32), jnp.array([4, 2]), 0).shape == (2, 0)
