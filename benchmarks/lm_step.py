r"""Language-model unlearning-step throughput: unlearn_jax's GPT vs a plain PyTorch loop of the same shape.

One step is gradient ascent on the forget batch's token-averaged NLL (``-mean_nll``, every token after the
first a target) with AdamW, on random tokens. The JAX side is one jitted step with donated parameters and
optimiser state; the PyTorch side (when ``torch`` is importable) is the usual ``zero_grad / backward / step``
loop on the same architecture (same parameter count, checked), under ``torch.autocast`` for bfloat16.

Reported: compile (first step) time, steady seconds per step (mean over ``--steps`` after the first),
tokens/s, and model FLOP utilisation ``MFU = 6 * params * tokens_per_step / step_time / peak`` (the
Kaplan et al. 2020 / PaLM approximation: forward + backward, attention FLOPs ignored), with the peak given by
``--peak_tflops``; and the ratio of JAX to PyTorch tokens/s from the same run.

  python benchmarks/lm_step.py --config=gpt2-125m --batch=2 --seq=128 --dtype=float32 --steps=3 \
      --peak_tflops=0.33        # CPU (2 AVX-512 cores at 2.6 GHz)
  python benchmarks/lm_step.py --config=llama-1b --batch=8 --seq=512 --dtype=bfloat16 --steps=10 \
      --peak_tflops=989        # one H100 (dense bf16); add --attention_impl=cudnn for cuDNN's fused attention

``--methods=npo,undial,...`` times instead one optimiser step of each LM unlearning method of
`unlearn_jax.unlearning.language` as its loop takes it (`unlearning_step`: its forget term on one batch and its
retain term on another, AdamW, the method's mask) at the same shape, and prints each one's step time relative to
NPO's (``relearn``: one step of the study's relearning attack, NLL fine-tuning on forget QAs):

  python benchmarks/lm_step.py --config=tiny --batch=32 --seq=48 --steps=20 \
      --methods=npo,graddiff,simnpo,altpo,undial,ceu,satimp,wga,pdu,flat,wagle,relearn

``--lora_rank=8`` times instead NPO's unlearning step as the loop runs it
(`unlearn_jax.unlearning.language.unlearning_step`: forget + retain batch, AdamW) with all weights trained and
with LoRA adapters of that rank on ``--lora_targets``, and reports tokens/s (both batches counted), the optimiser
state and the compiled step's peak memory estimate (`experiments.memory.memory_stats`) of each:

  python benchmarks/lm_step.py --config=gpt2-125m --batch=2 --seq=128 --steps=3 --lora_rank=8

References:
  Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022 (appendix B, MFU).
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags

from unlearn_jax import language
from unlearn_jax.data.split import Split
from unlearn_jax.unlearning import language as lm_unlearning
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import teachers
from unlearn_jax.model import num_params
from unlearn_jax.models import gpt

_CONFIG = flags.DEFINE_string("config", "gpt2-125m", "GPT preset: tiny, gpt2-125m or llama-1b.")
_BATCH = flags.DEFINE_integer("batch", 2, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq", 128, "Tokens per sequence.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters float32).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps after the first (compile) step.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak device TFLOP/s for MFU (0: MFU not reported).")
_LR = flags.DEFINE_float("lr", 1e-5, "AdamW learning rate.")
_SIDES = flags.DEFINE_list("sides", ["jax", "torch"], "Which implementations to time.")
_METHODS = flags.DEFINE_list("methods", [], "LM unlearning methods to time one step of, against NPO (replaces the "
                              "JAX-vs-PyTorch comparison).")
_LORA_RANK = flags.DEFINE_integer("lora_rank", 0, "> 0: time NPO's step with full fine-tuning and with LoRA adapters "
                                  "of this rank (replaces the JAX-vs-PyTorch comparison).")
_LORA_TARGETS = flags.DEFINE_list("lora_targets", ["q", "k", "v", "o", "gate", "up", "down"],
                                  "Modules the LoRA adapters go on (GPT-2 has no 'gate': it is skipped).")
_ATTENTION = flags.DEFINE_enum("attention_impl", None, ["xla", "cudnn"], "JAX side: GPTConfig.attention_impl "
                               "(default: XLA; 'cudnn': the fused GPU kernel, 16-bit dtype only).")


def _tokens(cfg: gpt.GPTConfig) -> np.ndarray:
  return np.random.default_rng(0).integers(0, cfg.vocab_size, size=(_BATCH.value, _SEQ.value), dtype=np.int32)


def jax_side(cfg: gpt.GPTConfig) -> tuple[list[float], int]:
  lm, _ = gpt.language_model(cfg)
  params = gpt.init_params(cfg, jax.random.key(0))
  tx = optax.adamw(_LR.value, weight_decay=0.01)
  opt_state = tx.init(params)
  ids = jnp.asarray(_tokens(cfg))
  mask = jnp.ones(ids.shape, jnp.float32).at[:, 0].set(0.0)

  def step(params, opt_state, ids, mask):
    loss, grads = jax.value_and_grad(lambda p: -language.mean_nll(lm.logits(p, ids), ids, mask))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  times = []
  for _ in range(_STEPS.value + 1):
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, ids, mask)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  return times, num_params(params)


def _qa_batch(cfg: gpt.GPTConfig, seed: int) -> dict:
  """Random ``BOS q SEP a EOS``-shaped rows: the second half of each row is the answer (``loss_mask``); the
  IdK / alternate answers other random tokens in the same layout."""
  rng = np.random.default_rng(seed)
  shape = (_BATCH.value, _SEQ.value)
  mask = np.zeros(shape, np.float32)
  mask[:, _SEQ.value // 2:] = 1.0
  x = {"loss_mask": jnp.asarray(mask), "entity_mask": jnp.asarray(1.0 - mask)}
  for prefix in ("", "idk_", "alt_"):
    x[prefix + "input_ids"] = jnp.asarray(rng.integers(5, cfg.vocab_size, size=shape, dtype=np.int32))
    if prefix:
      x[prefix + "loss_mask"] = x["loss_mask"]
  return x


def method_step_times(cfg: gpt.GPTConfig, name: str) -> list[float]:
  """Wall times of ``--steps + 1`` optimiser steps of LM method ``name`` as its loop takes them (the library's
  `unlearn_jax.unlearning.language.unlearning_step`: forget + retain term, AdamW, the method's mask)."""
  lm, _ = gpt.language_model(cfg)
  params = gpt.init_params(cfg, jax.random.key(0))
  y = jnp.zeros((_BATCH.value,), jnp.int32)
  fx, rx = _qa_batch(cfg, 1), _qa_batch(cfg, 2)
  key = jax.random.key(1)
  opts = lm_unlearning.method_config("npo" if name == "relearn" else name, {"lr": _LR.value,
                                                                             "batch_size": _BATCH.value})
  if name == "relearn":  # the relearning attack: plain NLL fine-tuning on forget QAs (the study's robustness)
    tx = lm_unlearning.optimizer(opts, 1)
    step, trainable, state = loop.term_step(lm_unlearning.objectives.nll(lm), tx, None), params, teachers.carry({}, {})
    opt_state, batches = tx.init(params), ((fx, y),)
  else:
    step, trainable, state, opt_state = lm_unlearning.unlearning_step(name, lm, params, opts, rng=key,
                                                                      forget=Split(fx, y), retain=Split(rx, y))
    batches = ((fx, y),) if name in lm_unlearning.FORGET_ONLY else ((fx, y), (rx, y))
  trainable = jax.tree.map(jnp.copy, trainable)  # the frozen reference keeps the Original's buffers: donate a copy
  step = jax.jit(step, donate_argnums=(0, 1, 2))
  times = []
  for _ in range(_STEPS.value + 1):
    start = time.perf_counter()
    trainable, state, opt_state, loss, _ = step(trainable, state, opt_state, batches, key, jnp.int32(0))
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  return times


def methods_main(cfg: gpt.GPTConfig) -> None:
  names = list(dict.fromkeys(["npo", *_METHODS.value]))
  steady = {}
  for name in names:
    times = method_step_times(cfg, name)
    steady[name] = float(np.median(times[1:]))
    print(f"{name}: first step {times[0]:.2f} s, steady {steady[name] * 1e3:.1f} ms/step, "
          f"{steady[name] / steady['npo']:.2f}x NPO")
  assert all(math.isfinite(t) for t in steady.values())


def lora_main(cfg: gpt.GPTConfig) -> None:
  """NPO's loop step, all weights vs LoRA adapters: tokens/s, optimiser state and compiled peak memory."""
  from experiments import memory  # pylint: disable=g-import-not-at-top
  lm, _ = gpt.language_model(cfg)
  key = jax.random.key(0)
  params = gpt.init_params(cfg, key)
  targets = [t for t in _LORA_TARGETS.value if t != "gate" or cfg.mlp == "swiglu"]
  y = jnp.zeros((_BATCH.value,), jnp.int32)
  batches = ((_qa_batch(cfg, 1), y), (_qa_batch(cfg, 2), y))
  tokens = 2 * _BATCH.value * _SEQ.value
  rows = {}
  for label, rank in (("full", 0), (f"lora r={_LORA_RANK.value}", _LORA_RANK.value)):
    opts = lm_unlearning.method_config("npo", {"lr": _LR.value, "lora_rank": rank, "lora_targets": tuple(targets)})
    step, trainable, state, opt_state = lm_unlearning.unlearning_step("npo", lm, params, opts, rng=key)
    trainable, state = jax.tree.map(jnp.copy, (trainable, state))  # donated: keep `params` for the next row
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(trainable, state, opt_state, batches, key,
                                                              jnp.int32(0)).compile()
    peak = memory.memory_stats(compiled)["peak"]
    times = []
    for _ in range(_STEPS.value + 1):
      start = time.perf_counter()
      trainable, state, opt_state, loss, _ = compiled(trainable, state, opt_state, batches, key, jnp.int32(0))
      jax.block_until_ready(loss)
      times.append(time.perf_counter() - start)
    steady = float(np.mean(times[1:]))
    opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state))
    rows[label] = (num_params(trainable), opt_bytes, peak, times[0], tokens / steady)
    print(f"{label}: trainable {num_params(trainable):,} params, optimiser state {opt_bytes / 2**20:.1f} MiB, "
          f"step peak {peak / 2**20:.0f} MiB, first step {times[0]:.2f} s, steady {steady:.3f} s/step, "
          f"{tokens / steady:.1f} tokens/s")
  (*_, full_peak, _, full_rate), (*_, lora_peak, _, lora_rate) = rows.values()
  print(f"ratio lora/full: tokens/s {lora_rate / full_rate:.2f}, peak memory {lora_peak / full_peak:.2f}")
  print("| NPO step | trained params | AdamW state MiB | step peak MiB | first step s | tokens/s |\n"
        "|---|---:|---:|---:|---:|---:|")
  for label, (count, opt_bytes, peak, first, rate) in rows.items():
    print(f"| {label} | {count:,} | {opt_bytes / 2**20:.1f} | {peak / 2**20:.0f} | {first:.2f} | {rate:.1f} |")
  assert all(math.isfinite(r[-1]) for r in rows.values())


def torch_side(cfg: gpt.GPTConfig) -> tuple[list[float], int]:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
  d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim
  norm = (lambda: nn.RMSNorm(d, eps=cfg.norm_eps)) if cfg.norm == "rms" else (lambda: nn.LayerNorm(d, cfg.norm_eps))
  linear = lambda i, o: nn.Linear(i, o, bias=cfg.use_bias)
  inv_freq = torch.from_numpy(gpt.rope_frequencies(cfg))

  def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin

  class Block(nn.Module):

    def __init__(self):
      super().__init__()
      self.n1, self.n2 = norm(), norm()
      self.q, self.k, self.v, self.o = linear(d, h * hd), linear(d, kv * hd), linear(d, kv * hd), linear(h * hd, d)
      self.up, self.down = linear(d, cfg.d_ff), linear(cfg.d_ff, d)
      self.gate = linear(d, cfg.d_ff) if cfg.mlp == "swiglu" else None

    def forward(self, x, cos, sin):
      b, t, _ = x.shape
      a = self.n1(x)
      q = self.q(a).view(b, t, h, hd).transpose(1, 2)
      k = self.k(a).view(b, t, kv, hd).transpose(1, 2)
      v = self.v(a).view(b, t, kv, hd).transpose(1, 2)
      if cos is not None:
        q, k = rope(q, cos, sin), rope(k, cos, sin)
      att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != h)
      x = x + self.o(att.transpose(1, 2).reshape(b, t, h * hd))
      m = self.n2(x)
      m = F.silu(self.gate(m)) * self.up(m) if self.gate is not None else F.gelu(self.up(m), approximate="tanh")
      return x + self.down(m)

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(cfg.vocab_size, d)
      self.pos = nn.Embedding(cfg.max_len, d) if cfg.positions == "learned" else None
      self.blocks = nn.ModuleList([Block() for _ in range(cfg.num_layers)])
      self.norm = norm()
      self.head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)

    def forward(self, ids):
      t = ids.shape[1]
      x = self.embed(ids)
      cos = sin = None
      if self.pos is not None:
        x = x + self.pos(torch.arange(t, device=ids.device))
      else:
        ang = torch.arange(t, device=ids.device, dtype=torch.float32)[:, None] * inv_freq.to(ids.device)[None]
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos(), ang.sin()
      for block in self.blocks:
        x = block(x, cos, sin)
      x = self.norm(x)
      return x @ self.embed.weight.T if self.head is None else self.head(x)

  net = Net().to(device)
  count = sum(p.numel() for p in net.parameters())
  opt = torch.optim.AdamW(net.parameters(), lr=_LR.value, weight_decay=0.01)
  ids = torch.from_numpy(_tokens(cfg)).long().to(device)
  use_bf16 = _DTYPE.value == "bfloat16"
  times = []
  for _ in range(_STEPS.value + 1):
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
      logits = net(ids)
    loss = -F.cross_entropy(logits[:, :-1].float().reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()
    else:
      loss.item()
    times.append(time.perf_counter() - start)
  return times, count


def main(argv):
  del argv
  cfg = gpt.gpt_config(_CONFIG.value, dtype=jnp.dtype(_DTYPE.value), attention_impl=_ATTENTION.value)
  if _SEQ.value > cfg.max_len:
    raise ValueError(f"--seq={_SEQ.value} exceeds the config's max_len={cfg.max_len}")
  tokens = _BATCH.value * _SEQ.value
  print(f"device={jax.devices()[0].device_kind} config={_CONFIG.value} dtype={_DTYPE.value} "
        f"batch={_BATCH.value} seq={_SEQ.value} tokens/step={tokens} steps={_STEPS.value}")
  if _METHODS.value:
    methods_main(cfg)
    return
  if _LORA_RANK.value:
    lora_main(cfg)
    return
  rates, counts = {}, {}
  for side in _SIDES.value:
    times, counts[side] = {"jax": jax_side, "torch": torch_side}[side](cfg)
    steady = float(np.mean(times[1:]))
    rates[side] = tokens / steady
    flops = 6 * counts[side] * tokens
    mfu = f"{100 * flops / steady / (_PEAK.value * 1e12):.1f}%" if _PEAK.value > 0 else "n/a"
    print(f"{side}: params={counts[side]:,} first step {times[0]:.2f} s, steady {steady:.3f} s/step, "
          f"{rates[side]:.1f} tokens/s, {flops / steady / 1e9:.1f} GFLOP/s (6ND), MFU {mfu}")
  if len(rates) == 2:
    if counts["jax"] != counts["torch"]:
      raise AssertionError(f"parameter counts differ: {counts}")
    print(f"ratio jax/torch (tokens/s) = {rates['jax'] / rates['torch']:.2f}")
  assert all(math.isfinite(r) for r in rates.values())


if __name__ == "__main__":
  app.run(main)
