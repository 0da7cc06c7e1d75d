"""Tests for unlearn_jax.models.hf: Hugging Face safetensors import/export.

Each test writes a tiny random Llama-style or GPT-2-style checkpoint with ``safetensors.numpy`` and compares
our logits with an independent NumPy forward pass written from the HF modelling code (``modeling_llama.py``:
RMSNorm, rotate_half RoPE with Llama 3 frequency rescaling, repeat_kv, SwiGLU; ``modeling_gpt2.py``: LayerNorm,
Conv1D with fused c_attn, gelu_new, learned positions, tied head). No ``transformers`` package is needed.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from unlearn_jax.models import gpt
from unlearn_jax.models import hf

LLAMA_CONFIG = {
    "model_type": "llama", "vocab_size": 40, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
    # head_dim 8: wavelengths 2*pi*10000^(i/4) = 6.3, 63, 628, 6283: one of each kind for these factors
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 1024},
}
GPT2_CONFIG = {"model_type": "gpt2", "vocab_size": 40, "n_embd": 24, "n_layer": 2, "n_head": 3, "n_positions": 16,
               "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}


def _rand(rng, *shape, scale=None):
  scale = 1.0 / np.sqrt(shape[-1]) if scale is None else scale
  return (rng.standard_normal(shape) * scale).astype(np.float32)


def llama_tensors(c: dict, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  d, f, h, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
  hd = d // h
  t = {"model.embed_tokens.weight": _rand(rng, c["vocab_size"], d, scale=1.0),
       "model.norm.weight": 1 + _rand(rng, d, scale=0.2)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t[p + "input_layernorm.weight"] = 1 + _rand(rng, d, scale=0.2)
    t[p + "post_attention_layernorm.weight"] = 1 + _rand(rng, d, scale=0.2)
    t[p + "self_attn.q_proj.weight"] = _rand(rng, h * hd, d)
    t[p + "self_attn.k_proj.weight"] = _rand(rng, kv * hd, d)
    t[p + "self_attn.v_proj.weight"] = _rand(rng, kv * hd, d)
    t[p + "self_attn.o_proj.weight"] = _rand(rng, d, h * hd)
    t[p + "mlp.gate_proj.weight"] = _rand(rng, f, d)
    t[p + "mlp.up_proj.weight"] = _rand(rng, f, d)
    t[p + "mlp.down_proj.weight"] = _rand(rng, d, f)
  if not c["tie_word_embeddings"]:
    t["lm_head.weight"] = _rand(rng, c["vocab_size"], d)
  return t


def gpt2_tensors(c: dict, seed: int = 0, prefix: str = "") -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  d = c["n_embd"]
  t = {"wte.weight": _rand(rng, c["vocab_size"], d, scale=1.0), "wpe.weight": _rand(rng, c["n_positions"], d),
       "ln_f.weight": 1 + _rand(rng, d, scale=0.2), "ln_f.bias": _rand(rng, d, scale=0.2)}
  for i in range(c["n_layer"]):
    p = f"h.{i}."
    for ln in ("ln_1", "ln_2"):
      t[p + ln + ".weight"] = 1 + _rand(rng, d, scale=0.2)
      t[p + ln + ".bias"] = _rand(rng, d, scale=0.2)
    for name, (n_in, n_out) in {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, 4 * d),
                                "mlp.c_proj": (4 * d, d)}.items():
      t[p + name + ".weight"] = _rand(rng, n_in, n_out, scale=1 / np.sqrt(n_in))   # Conv1D: [in, out]
      t[p + name + ".bias"] = _rand(rng, n_out, scale=0.2)
    t[p + "attn.bias"] = np.tril(np.ones((c["n_positions"],) * 2, np.float32))[None, None]   # old mask buffer
  return {prefix + k: v for k, v in t.items()}


# ------------------------------------------------------------------------- independent NumPy forwards (HF)


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _causal_attention(q, k, v):
  """q, k, v: [heads, T, hd] -> [T, heads * hd]."""
  t = q.shape[1]
  scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
  scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
  return (_softmax(scores) @ v).transpose(1, 0, 2).reshape(t, -1)


def hf_llama3_inv_freq(c: dict) -> np.ndarray:
  """``_compute_llama3_parameters`` (transformers' modeling_rope_utils), three explicit regions."""
  hd = c["hidden_size"] // c["num_attention_heads"]
  inv = 1.0 / c["rope_theta"] ** (np.arange(0, hd, 2) / hd)
  s = c.get("rope_scaling")
  if not s:
    return inv
  low_wl = s["original_max_position_embeddings"] / s["low_freq_factor"]
  high_wl = s["original_max_position_embeddings"] / s["high_freq_factor"]
  out = []
  for f in inv:
    wl = 2 * np.pi / f
    if wl < high_wl:
      out.append(f)
    elif wl > low_wl:
      out.append(f / s["factor"])
    else:
      smooth = (s["original_max_position_embeddings"] / wl - s["low_freq_factor"]) / (
          s["high_freq_factor"] - s["low_freq_factor"])
      out.append((1 - smooth) * f / s["factor"] + smooth * f)
  return np.array(out)


def numpy_llama(t: dict, c: dict, ids: np.ndarray) -> np.ndarray:
  """LlamaForCausalLM logits for one sequence ``ids [T]`` (float64)."""
  t = {k: v.astype(np.float64) for k, v in t.items()}
  h_, kv_ = c["num_attention_heads"], c["num_key_value_heads"]
  d = c["hidden_size"]
  hd = d // h_
  eps = c["rms_norm_eps"]
  rms = lambda x, w: w * (x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps))
  rotate_half = lambda x: np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
  freqs = np.arange(len(ids))[:, None] * hf_llama3_inv_freq(c)[None]
  emb = np.concatenate([freqs, freqs], -1)
  cos, sin = np.cos(emb), np.sin(emb)
  silu = lambda x: x / (1 + np.exp(-x))
  x = t["model.embed_tokens.weight"][ids]
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    a = rms(x, t[p + "input_layernorm.weight"])
    q = (a @ t[p + "self_attn.q_proj.weight"].T).reshape(-1, h_, hd).transpose(1, 0, 2)
    k = (a @ t[p + "self_attn.k_proj.weight"].T).reshape(-1, kv_, hd).transpose(1, 0, 2)
    v = (a @ t[p + "self_attn.v_proj.weight"].T).reshape(-1, kv_, hd).transpose(1, 0, 2)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = np.repeat(k, h_ // kv_, axis=0), np.repeat(v, h_ // kv_, axis=0)   # repeat_kv
    x = x + _causal_attention(q, k, v) @ t[p + "self_attn.o_proj.weight"].T
    m = rms(x, t[p + "post_attention_layernorm.weight"])
    x = x + (silu(m @ t[p + "mlp.gate_proj.weight"].T) * (m @ t[p + "mlp.up_proj.weight"].T)) @ \
        t[p + "mlp.down_proj.weight"].T
  x = rms(x, t["model.norm.weight"])
  head = t["model.embed_tokens.weight"] if c["tie_word_embeddings"] else t["lm_head.weight"]
  return x @ head.T


def numpy_gpt2(t: dict, c: dict, ids: np.ndarray) -> np.ndarray:
  """GPT2LMHeadModel logits for one sequence ``ids [T]`` (float64)."""
  t = {k: v.astype(np.float64) for k, v in t.items()}
  d, h_ = c["n_embd"], c["n_head"]
  eps = c["layer_norm_epsilon"]

  def ln(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

  conv1d = lambda x, name: x @ t[name + ".weight"] + t[name + ".bias"]
  gelu_new = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  heads = lambda x: x.reshape(-1, h_, d // h_).transpose(1, 0, 2)
  x = t["wte.weight"][ids] + t["wpe.weight"][np.arange(len(ids))]
  for i in range(c["n_layer"]):
    p = f"h.{i}."
    q, k, v = np.split(conv1d(ln(x, p + "ln_1"), p + "attn.c_attn"), 3, axis=-1)
    x = x + conv1d(_causal_attention(heads(q), heads(k), heads(v)), p + "attn.c_proj")
    x = x + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
  return ln(x, "ln_f") @ t["wte.weight"].T


# ---------------------------------------------------------------------------------------------------- tests


def _write(directory, tensors, config):
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  return str(directory)


def _ids(vocab, n=2, t=11, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, size=(n, t))


def _check_logits(cfg, params, reference, tensors, config):
  lm, _ = gpt.language_model(cfg)
  ids = _ids(cfg.vocab_size)
  ours = np.asarray(jax.jit(lm.logits)(params, jnp.asarray(ids, jnp.int32)))
  for row, seq in enumerate(ids):
    np.testing.assert_allclose(ours[row], reference(tensors, config, seq), rtol=2e-4, atol=2e-4)


def test_llama3_frequencies():
  cfg = hf.config_from_hf(LLAMA_CONFIG)
  ref = hf_llama3_inv_freq(LLAMA_CONFIG)
  np.testing.assert_allclose(gpt.rope_frequencies(cfg), ref, rtol=1e-6)
  plain = 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8)
  assert np.isclose(ref[0], plain[0]) and np.isclose(ref[-1], plain[-1] / 8)   # high kept, low divided
  assert plain[2] / 8 < ref[2] < plain[2]                                      # medium interpolated


@pytest.mark.parametrize("tied", [False, True])
def test_llama_logits_match_numpy(tmp_path, tied):
  config = {**LLAMA_CONFIG, "tie_word_embeddings": tied}
  tensors = llama_tensors(config)
  cfg, params = hf.load_hf_checkpoint(_write(tmp_path, tensors, config))
  assert cfg.kv_heads == 2 and cfg.tie_embeddings == tied and cfg.rope_scaling == (8.0, 1.0, 4.0, 1024)
  _check_logits(cfg, params, numpy_llama, tensors, config)


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_gpt2_logits_match_numpy(tmp_path, prefix):
  tensors = gpt2_tensors(GPT2_CONFIG, prefix=prefix)
  cfg, params = hf.load_hf_checkpoint(_write(tmp_path, tensors, GPT2_CONFIG))
  assert (cfg.norm, cfg.positions, cfg.mlp, cfg.d_ff) == ("layer", "learned", "gelu", 96)
  _check_logits(cfg, params, numpy_gpt2, gpt2_tensors(GPT2_CONFIG), GPT2_CONFIG)


def test_sharded_index_equals_single_file(tmp_path):
  tensors = llama_tensors(LLAMA_CONFIG)
  _, single = hf.load_hf_checkpoint(_write(tmp_path / "single", tensors, LLAMA_CONFIG))
  directory = tmp_path / "sharded"
  os.makedirs(directory)
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for file, part in shards.items():
    save_file({n: tensors[n] for n in part}, str(directory / file))
  with open(directory / "model.safetensors.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": {n: file for file, part in shards.items() for n in part}}, f)
  with open(directory / "config.json", "w") as f:
    json.dump(LLAMA_CONFIG, f)
  _, sharded = hf.load_hf_checkpoint(str(directory))
  jax.tree.map(np.testing.assert_array_equal, sharded, single)
  # the index file itself, with an explicit config
  _, again = hf.load_hf_checkpoint(str(directory / "model.safetensors.index.json"),
                                   cfg=hf.config_from_hf(LLAMA_CONFIG))
  jax.tree.map(np.testing.assert_array_equal, again, single)


@pytest.mark.parametrize("config, make", [(LLAMA_CONFIG, llama_tensors), (GPT2_CONFIG, gpt2_tensors)],
                         ids=["llama", "gpt2"])
def test_export_round_trip(tmp_path, config, make):
  tensors = make(config)
  cfg, params = hf.load_hf_checkpoint(_write(tmp_path / "in", tensors, config))
  hf.save_hf_checkpoint(params, cfg, str(tmp_path / "out"))
  cfg2, params2 = hf.load_hf_checkpoint(str(tmp_path / "out"))
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  # the exported tensors are the original ones (GPT-2 gains the GPT2LMHeadModel prefix, loses the mask buffers)
  written = load_file(str(tmp_path / "out" / "model.safetensors"))
  expect = {("transformer." + k if config is GPT2_CONFIG else k): v for k, v in tensors.items()
            if not k.endswith(".attn.bias")}
  assert sorted(written) == sorted(expect)
  for name, value in expect.items():
    np.testing.assert_array_equal(written[name], value, err_msg=name)


def test_export_of_fresh_params_round_trips(tmp_path):
  cfg = gpt.gpt_config("tiny", vocab_size=40, d_model=32, num_layers=1, d_ff=40, use_bias=True,
                       num_kv_heads=2, tie_embeddings=False)
  params = gpt.init_params(cfg, jax.random.key(0))
  hf.save_hf_checkpoint(params, cfg, str(tmp_path))
  cfg2, params2 = hf.load_hf_checkpoint(str(tmp_path / "model.safetensors"))
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_bf16_checkpoint_loads_as_float32(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in llama_tensors(LLAMA_CONFIG).items()}
  _, params = hf.load_hf_checkpoint(_write(tmp_path, tensors, LLAMA_CONFIG))
  q = params["block_1"]["attn"]["q"]["kernel"]
  assert q.dtype == jnp.float32
  np.testing.assert_array_equal(q, tensors["model.layers.1.self_attn.q_proj.weight"].astype(np.float32).T)


def test_missing_and_misshapen_tensors(tmp_path):
  tensors = llama_tensors(LLAMA_CONFIG)
  missing = dict(tensors)
  del missing["model.layers.1.mlp.up_proj.weight"]
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    hf.load_hf_checkpoint(_write(tmp_path / "a", missing, LLAMA_CONFIG))
  bad = {**tensors, "model.layers.0.self_attn.k_proj.weight": np.zeros((32, 32), np.float32)}
  with pytest.raises(ValueError, match=r"k_proj\.weight.*\(32, 32\).*\(16, 32\)"):
    hf.load_hf_checkpoint(_write(tmp_path / "b", bad, LLAMA_CONFIG))
  tied = {**LLAMA_CONFIG, "tie_word_embeddings": True}
  with pytest.raises(ValueError, match="lm_head.weight"):   # a tied checkpoint read as untied
    hf.load_hf_checkpoint(_write(tmp_path / "c", llama_tensors(tied), tied),
                          cfg=hf.config_from_hf(LLAMA_CONFIG))
  with pytest.raises(ValueError, match=r"embed_tokens\.weight.*\(40, 32\).*\(41, 32\)"):
    hf.load_hf_checkpoint(str(tmp_path / "a" / "model.safetensors"),
                          cfg=hf.config_from_hf(LLAMA_CONFIG).replace(vocab_size=41))
  with pytest.raises(ValueError, match="no checkpoint"):
    hf.load_hf_checkpoint(str(tmp_path / "nowhere"))


def test_config_from_hf_presets_and_errors():
  llama_3_2_1b = {   # the published config.json of meta-llama/Llama-3.2-1B (shape keys)
      "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
      "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
      "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
      "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
  assert hf.config_from_hf(llama_3_2_1b) == gpt.gpt_config("llama-1b")
  gpt2_small = {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
                "n_positions": 1024, "n_inner": None, "layer_norm_epsilon": 1e-5,
                "activation_function": "gelu_new"}
  assert hf.config_from_hf(gpt2_small) == gpt.gpt_config("gpt2-125m")
  assert hf.config_from_hf(hf.hf_config(gpt.gpt_config("llama-1b"))) == gpt.gpt_config("llama-1b")
  assert hf.config_from_hf(gpt2_small, dtype="bfloat16").dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="mistral"):
    hf.config_from_hf({**llama_3_2_1b, "model_type": "mistral"})
  with pytest.raises(ValueError, match="rope_scaling"):
    hf.config_from_hf({**llama_3_2_1b, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
  with pytest.raises(ValueError, match="activation_function"):
    hf.config_from_hf({**gpt2_small, "activation_function": "relu"})
  with pytest.raises(ValueError, match="hidden_size"):
    hf.config_from_hf({k: v for k, v in llama_3_2_1b.items() if k != "hidden_size"})
  with pytest.raises(ValueError, match="no Hugging Face layout"):
    hf.hf_config(gpt.gpt_config("tiny", positions="learned"))


# ----------------------------------------------------- against transformers' own forward, both config layouts

ROPE_CASES = {   # (LlamaConfig keyword arguments, the layout the file is rewritten to)
    "llama3-v5": (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 16}), "transformers5"),
    "llama3-v4": (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 16}), "transformers4"),
    "theta-v5": (dict(rope_parameters={"rope_type": "default", "rope_theta": 37.0}), "transformers5"),
    "theta-v4": (dict(rope_parameters={"rope_type": "default", "rope_theta": 37.0}), "transformers4"),
    "linear-v5": (dict(rope_parameters={"rope_type": "linear", "rope_theta": 80.0, "factor": 3.0}),
                  "transformers5"),
}


def _to_v4_layout(directory):
  """Rewrites a transformers-5 ``config.json`` into the 4.x layout (top-level rope_theta / rope_scaling)."""
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    c = json.load(f)
  rope = c.pop("rope_parameters")
  c["rope_theta"] = rope.pop("rope_theta")
  c["rope_scaling"] = None if rope["rope_type"] == "default" else rope
  with open(path, "w") as f:
    json.dump(c, f)


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
  """``{case: (directory, ids, transformers logits)}``: tiny random Llama checkpoints transformers saves itself,
  its logits read back from the saved files (``from_pretrained``), so the layout rewrite is part of the check."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  out = {}
  ids = _ids(40, t=24)
  for case, (rope, layout) in ROPE_CASES.items():
    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, **rope)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():   # larger weights than the 0.02 init, so position errors show in the logits
      for name, p in model.named_parameters():
        p.copy_(1 + 0.2 * torch.randn_like(p) if p.ndim == 1 else torch.randn_like(p) / p.shape[-1] ** 0.5)
    directory = str(tmp_path_factory.mktemp(case))
    model.save_pretrained(directory)
    if layout == "transformers4":
      _to_v4_layout(directory)
    loaded = transformers.LlamaForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
      logits = loaded(torch.as_tensor(ids)).logits.numpy()
    out[case] = (directory, ids, logits)
  return out


@pytest.mark.parametrize("case", sorted(ROPE_CASES))
def test_llama_rope_matches_transformers(hf_checkpoints, case, tmp_path):
  directory, ids, expect = hf_checkpoints[case]
  like = hf.read_hf_config(directory)
  assert hf.hf_layout(like) == ROPE_CASES[case][1]
  cfg, params = hf.load_hf_checkpoint(directory)
  lm, _ = gpt.language_model(cfg)
  logits = lambda c, p: np.asarray(gpt.language_model(c)[0].logits(p, jnp.asarray(ids, jnp.int32)))
  np.testing.assert_allclose(logits(cfg, params), expect, atol=2e-4, rtol=2e-4)
  # the test can fail: the same weights with plain RoPE (theta 10000, no scaling) are far off
  assert np.abs(logits(cfg.replace(rope_theta=10000.0, rope_scaling=None), params) - expect).max() > 0.05
  # export keeps the layout, the RoPE values and the token ids, and writes generation_config.json
  hf.save_hf_checkpoint(params, cfg, str(tmp_path), like=like)
  written = hf.read_hf_config(str(tmp_path))
  assert hf.hf_layout(written) == ROPE_CASES[case][1]
  assert hf.rope_from_hf(written) == hf.rope_from_hf(like) == (cfg.rope_theta, cfg.rope_scaling)
  assert (written["bos_token_id"], written["eos_token_id"], written["pad_token_id"]) == (1, 2, 0)
  with open(tmp_path / "generation_config.json") as f:
    assert {k: v for k, v in json.load(f).items() if k.endswith("_token_id")} == {
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
  cfg2, params2 = hf.load_hf_checkpoint(str(tmp_path))
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_exported_llama3_loads_in_transformers(hf_checkpoints, tmp_path):
  """Our export, read by transformers (its own config parsing), gives the logits of the checkpoint we read."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  directory, ids, expect = hf_checkpoints["llama3-v4"]
  cfg, params = hf.load_hf_checkpoint(directory)
  for layout in hf.LAYOUTS:
    hf.save_hf_checkpoint(params, cfg, str(tmp_path / layout), layout=layout, eos_id=2)
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / layout)).eval()
    assert model.generation_config.eos_token_id == 2
    with torch.no_grad():
      np.testing.assert_allclose(model(torch.as_tensor(ids)).logits.numpy(), expect, atol=1e-5, rtol=1e-5)


def test_rope_from_hf_layouts_and_errors():
  base = {"max_position_embeddings": 64}
  assert hf.rope_from_hf(base) == (10000.0, None)
  assert hf.rope_from_hf({**base, "rope_theta": 5e5}) == (5e5, None)
  # transformers 5's dict wins over a stray top-level rope_theta; 4.x rope_scaling wins over rope_parameters
  assert hf.rope_from_hf({**base, "rope_theta": 1.0, "rope_parameters": {"rope_theta": 2.0}}) == (2.0, None)
  assert hf.rope_from_hf({**base, "rope_parameters": {"rope_type": "linear", "factor": 4, "rope_theta": 3.0},
                          "rope_scaling": {"type": "linear", "factor": 2}}) == (10000.0, (2.0,))
  # llama3's original_max_position_embeddings falls back to max_position_embeddings
  assert hf.rope_from_hf({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                                                   "high_freq_factor": 4}}) == (10000.0, (8.0, 1.0, 4.0, 64))
  with pytest.raises(ValueError, match=r"rope_parameters\.rope_type 'yarn'"):
    hf.rope_from_hf({**base, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}})
  with pytest.raises(ValueError, match="lacks 'low_freq_factor'"):
    hf.rope_from_hf({**base, "rope_parameters": {"rope_type": "llama3", "factor": 2.0}})
  with pytest.raises(ValueError, match="partial_rotary_factor"):
    hf.rope_from_hf({**base, "rope_parameters": {"partial_rotary_factor": 0.5}})
  with pytest.raises(ValueError, match="layout"):
    hf.hf_config(gpt.gpt_config("tiny"), layout="transformers3")
  # linear scaling: every frequency divided by the factor
  cfg = gpt.gpt_config("tiny", rope_scaling=(4.0,))
  np.testing.assert_allclose(gpt.rope_frequencies(cfg), gpt.rope_frequencies(cfg.replace(rope_scaling=None)) / 4,
                             rtol=1e-6)
