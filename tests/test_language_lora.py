"""LoRA unlearning (unlearn_jax.unlearning.language.lora) on the tiny GPT: the merge formula against NumPy, outputs
unchanged before the first step, only the adapters move (the change is low rank), optimiser state for the
adapters only, and one-line errors for bad options."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax.data.split import Split
from unlearn_jax.models import gpt
from unlearn_jax.unlearning import language as lmu
from unlearn_jax.unlearning.language import lora

CFG = gpt.gpt_config("tiny", vocab_size=24, num_layers=1, d_model=16, num_heads=2, d_ff=32, max_len=12,
                     tie_embeddings=False)


@functools.lru_cache()
def setup():
  lm, _ = gpt.language_model(CFG, pad_id=0, eos_id=2)
  params = gpt.init_params(CFG, jax.random.key(0))
  rng = np.random.default_rng(0)
  ids = rng.integers(3, CFG.vocab_size, size=(16, 10)).astype(np.int32)
  ids[:, 0] = 1
  mask = np.zeros((16, 10), np.float32)
  mask[:, 5:] = 1.0
  split = lambda rows: Split({"input_ids": jnp.asarray(ids[rows]), "loss_mask": jnp.asarray(mask[rows])},
                             jnp.zeros((len(rows),), jnp.int32), jnp.arange(len(rows)))
  return lm, params, split(np.arange(4)), split(np.arange(4, 16))


def test_merge_is_w_plus_scaled_ba():
  _, params, _, _ = setup()
  adapters = lora.init_adapters(params, rank=3, targets=("q", "mlp/down"), rng=jax.random.key(1))
  assert sorted(adapters["block_0"]["attn"]) == ["q"] and sorted(adapters["block_0"]["mlp"]) == ["down"]
  a = adapters["block_0"]["attn"]["q"]
  assert a["lora_a"].shape == (16, 3) and a["lora_b"].shape == (3, 16)
  np.testing.assert_array_equal(a["lora_b"], 0.0)                       # B starts at zero
  assert 0 < np.abs(a["lora_a"]).max() <= 1 / np.sqrt(16)               # A: peft's Kaiming-uniform bound
  rng = np.random.default_rng(2)
  adapters = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), adapters)
  merged = lora.merge(params, adapters, scale=8.0 / 3)
  for group, name in (("attn", "q"), ("mlp", "down")):
    w = np.asarray(params["block_0"][group][name]["kernel"], np.float64)
    ad = {k: np.asarray(v, np.float64) for k, v in adapters["block_0"][group][name].items()}
    np.testing.assert_allclose(merged["block_0"][group][name]["kernel"], w + 8.0 / 3 * ad["lora_a"] @ ad["lora_b"],
                               rtol=1e-5, atol=1e-5)
  untouched = lambda tree: {n: v for n, v in ((jax.tree_util.keystr(k), v) for k, v in
                                              jax.tree_util.tree_flatten_with_path(tree)[0])
                            if "'q'" not in n and "'down'" not in n}
  jax.tree.map(np.testing.assert_array_equal, untouched(merged), untouched(params))


def test_outputs_unchanged_before_the_first_step():
  lm, params, forget, _ = setup()
  adapters = lora.init_adapters(params, rank=4, targets=("q", "k", "v", "o", "up", "gate", "down", "lm_head"),
                                rng=jax.random.key(3))
  ids = forget.x["input_ids"]
  logits = jax.jit(lm.logits)
  np.testing.assert_array_equal(logits(lora.merge(params, adapters, 4.0), ids), logits(params, ids))


def test_only_adapters_move_and_the_change_is_low_rank():
  lm, params, forget, retain = setup()
  opts = {"lr": 3e-2, "epochs": 4, "batch_size": 4, "warmup_epochs": 0.0, "lora_rank": 2, "lora_alpha": 4.0,
          "lora_targets": ("q", "v")}
  out, hist = lmu.unlearn_lm("npo", lm, params, forget, retain, options=opts, rng=jax.random.key(0))
  for path, new in jax.tree_util.tree_flatten_with_path(out)[0]:
    name, old = jax.tree_util.keystr(path), functools.reduce(lambda t, k: t[k.key], path, params)
    if name.endswith("['q']['kernel']") or name.endswith("['v']['kernel']"):
      delta = np.asarray(new, np.float64) - np.asarray(old, np.float64)
      assert np.abs(delta).max() > 1e-3, name                             # the adapters trained
      s = np.linalg.svd(delta, compute_uv=False)
      assert s[2] < 1e-5 * s[0], (name, s)                                # rank <= 2
    else:
      np.testing.assert_array_equal(new, old, err_msg=name)               # frozen weights are bit-identical
  assert hist["joint_forget_loss"][-1] < hist["joint_forget_loss"][0]      # NPO's forget loss fell
  adapters = 2 * (16 * 2 + 2 * 16)                                         # q and v: A [16, 2] + B [2, 16]
  assert hist["trainable_params"] == adapters
  # AdamW's state: two float32 moments per adapter entry (+ step counts); full fine-tuning keeps them for all weights
  assert 2 * 4 * adapters <= hist["opt_state_bytes"] <= 2 * 4 * adapters + 64


def test_bad_lora_options_fail_before_training():
  lm, params, forget, retain = setup()
  run = lambda **o: lmu.unlearn_lm("graddiff", lm, params, forget, retain, rng=jax.random.key(0),
                                   options={"epochs": 1, **o})
  with pytest.raises(ValueError, match=r"method\.lora_targets: 'q_proj' names no Dense kernel.*block_0/attn/q"):
    run(lora_rank=2, lora_targets=("q", "q_proj"))
  with pytest.raises(ValueError, match=r"method\.lora_rank=17: larger than block_0/attn/\w's kernel \(16, 16\)"):
    run(lora_rank=17)
  with pytest.raises(ValueError, match=r"method\.lora_rank=-1"):
    lmu.method_config("npo", {"lora_rank": -1})
  with pytest.raises(ValueError, match=r"method\.lora_alpha"):
    lmu.method_config("npo", {"lora_rank": 2, "lora_alpha": 0.0})
  with pytest.raises(ValueError, match=r"method\.lora_targets"):
    lmu.method_config("npo", {"lora_rank": 2, "lora_targets": ()})


def _study_config(**npo):
  from configs import lm_npo  # pylint: disable=g-import-not-at-top
  config = lm_npo.get_config("tiny_test")
  config.compare = ("npo",)
  config.methods.npo.update(npo)
  return config


def test_study_refuses_bad_lora_before_any_work(tmp_path):
  from unlearn_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"config\.methods\.npo: method\.lora_targets: 'wq' names no Dense kernel"):
    run_lib.run(_study_config(lora_rank=2, lora_targets=("wq",)), tmp_path / "w")
  with pytest.raises(ValueError, match=r"config\.methods\.npo: method\.lora_rank=65: larger than"):
    run_lib.run(_study_config(lora_rank=65), tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_memory_plan_shows_the_optimiser_state_saving():
  from experiments import memory  # pylint: disable=g-import-not-at-top
  full = memory.lm_memory_report(_study_config(), compile_step=False)
  low = memory.lm_memory_report(_study_config(lora_rank=4, lora_targets=("q", "v")))
  n = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: gpt.init_params(gpt.gpt_config("tiny", vocab_size=full["vocab_size"], num_layers=1, d_model=64,
                                             num_heads=2, d_ff=128), jax.random.key(0)))))
  assert full["trainable"]["total"] == full["params"]["total"] == 4 * n
  assert low["trainable"]["total"] == 4 * 2 * (64 * 4 + 4 * 64)            # q, v: A [64, 4] + B [4, 64]
  # AdamW: two moments of what trains, plus a few counters
  for report in (full, low):
    assert 0 <= report["opt_state"]["total"] - 2 * report["trainable"]["total"] <= 64
  # the compiled step takes the adapters, the frozen base and the optimiser state (+ batches and key)
  args = sum(low[k]["total"] for k in ("trainable", "state", "opt_state"))
  assert args < low["step"]["argument"] < args + 2**16
