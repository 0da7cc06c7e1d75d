"""Sharding rules, placement, gathering, top-k masks, multi-host init, bf16 compute, no recompilation, `memory`."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearn_jax import config as config_lib
from unlearn_jax import model as model_lib
from unlearn_jax import sharding
from unlearn_jax import train
from unlearn_jax.data.split import Split
from unlearn_jax.models import get_model
from unlearn_jax.unlearning import loop, methods, objectives, saliency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH_2x4 = types.SimpleNamespace(shape={"data": 2, "fsdp": 4})  # spec_for reads only the axis sizes


def _data(n=96, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
  y = np.argmax(x.reshape(n, 64)[:, :10], -1).astype(np.int32)  # learnable labels
  return Split(jnp.asarray(x), jnp.asarray(y), jnp.arange(n))


def _norm(spec) -> jax.P:
  """A spec without its trailing Nones (``jax.typeof`` pads specs to the rank)."""
  entries = list(spec)
  while entries and entries[-1] is None:
    entries.pop()
  return jax.P(*entries)


def _specs(tree):
  return jax.tree.map(lambda a: _norm(jax.typeof(a).sharding.spec), tree)


# ---------------------------------------------------------------------------------------------------------------
# Rules.


def test_fsdp_spec_shards_the_largest_divisible_dimension():
  rng = np.random.default_rng(0)
  for _ in range(50):
    shape = tuple(int(v) for v in rng.choice([1, 3, 4, 6, 8, 12, 16, 40], size=rng.integers(1, 4)))
    divisible = [d for d in range(len(shape)) if shape[d] % 4 == 0]
    expected = [None] * len(shape)
    if divisible and np.prod(shape) >= 8:
      expected[max(divisible, key=lambda d: (shape[d], d))] = "fsdp"
    assert sharding.fsdp_spec(shape, 4, min_size=8) == (jax.P(*expected) if any(expected) else jax.P()), shape
  assert sharding.fsdp_spec((64, 64), 4) == jax.P()  # under the default min_size: replicated
  assert sharding.fsdp_spec((512, 64), 1, min_size=1) == jax.P()  # no fsdp axis


def test_spec_for_first_matching_rule_and_errors():
  rules = ((r"Dense_0.*kernel", jax.P(None, "fsdp")), (r"kernel", "fsdp", 16), (r"bias", "replicate"))
  assert sharding.spec_for("['Dense_0']['kernel']", (6, 8), MESH_2x4, rules) == jax.P(None, "fsdp")
  assert sharding.spec_for("['Dense_1']['kernel']", (8, 6), MESH_2x4, rules) == jax.P("fsdp", None)
  assert sharding.spec_for("['Dense_1']['kernel']", (2, 6), MESH_2x4, rules) == jax.P()  # under min_size 16
  assert sharding.spec_for("['Dense_1']['bias']", (8,), MESH_2x4, rules) == jax.P()
  with pytest.raises(ValueError, match=r"no sharding rule matches parameter \['BatchNorm'\]\['scale'\]"):
    sharding.spec_for("['BatchNorm']['scale']", (8,), MESH_2x4, rules)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.spec_for("['Dense_0']['kernel']", (6, 6), MESH_2x4, rules)
  with pytest.raises(ValueError, match="mesh has no axis 'model'"):
    sharding.spec_for("w", (8,), MESH_2x4, (("w", jax.P("model")),))
  with pytest.raises(ValueError, match="more entries than the leaf's rank"):
    sharding.spec_for("w", (8,), MESH_2x4, (("w", jax.P(None, "fsdp")),))
  with pytest.raises(ValueError, match="unknown kind 'tensor'"):
    sharding.spec_for("w", (8,), MESH_2x4, (("w", "tensor"),))
  with pytest.raises(ValueError, match="expected"):
    sharding.spec_for("w", (8,), MESH_2x4, ("w",))
  config = config_lib.base_config().mesh
  assert sharding.rules_from_config(config) == sharding.DEFAULT_RULES


def test_mirrored_leaves_take_the_parameter_shardings():
  """Optimiser moments, masks and teacher copies get their parameter's sharding; the rest follow the rules."""
  mesh = sharding.make_mesh(data=1, fsdp=1)  # a 1-device mesh still carries the specs
  params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))}, "Dense_1": {"kernel": jnp.ones((3, 2))}}
  rules = ((r"Dense_0.*kernel", jax.P("fsdp", None)), (r"Dense_1.*kernel", jax.P(None, "fsdp")), (".*", "replicate"))
  placed = sharding.place(params, mesh, rules)
  assert _specs(placed) == {"Dense_0": {"kernel": jax.P("fsdp"), "bias": jax.P()},
                            "Dense_1": {"kernel": jax.P(None, "fsdp")}}
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), loop.mask_updates(jax.tree.map(lambda p: p > 0, params)))
  opt_state = sharding.init_opt_state(tx, placed, mesh, rules=((".*", "replicate"),))
  momentum, mask = opt_state[0][0].trace, opt_state[1].mask
  assert _specs(momentum) == _specs(placed) and _specs(mask) == _specs(placed)
  # a frozen teacher in a carried state mirrors the parameters; a leaf of another shape does not
  carried = {"model": {"Dense_0": {"kernel": jnp.ones((2, 2))}}, "frozen": {"teacher": (params, {})}}
  out = sharding.place(carried, mesh, ((".*", "replicate"),), like=placed)
  assert _specs(out["frozen"]["teacher"][0]) == _specs(placed)
  assert _specs(out["model"]) == {"Dense_0": {"kernel": jax.P()}}


def test_gathered_is_the_identity_without_sharding():
  fn = lambda p, s, x: (jnp.sum(p["w"] * x), ({"n": s["n"] + 1}, {}))
  p, s = {"w": jnp.arange(3.0)}, {"n": jnp.zeros(())}
  (l1, (s1, _)), g1 = jax.value_and_grad(sharding.gathered(fn), has_aux=True)(p, s, 2.0)
  assert float(l1) == 6.0 and float(s1["n"]) == 1.0
  np.testing.assert_array_equal(g1["w"], [2.0, 2.0, 2.0])


# ---------------------------------------------------------------------------------------------------------------
# Top-k masks without sorting.


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_top_k_mask_equals_a_stable_descending_sort(fraction):
  rng = np.random.default_rng(1)
  tree = {"a": np.round(np.abs(rng.normal(size=(7, 5))), 1).astype(np.float32),  # many ties
          "b": np.zeros((6,), np.float32), "c": np.abs(rng.normal(size=(3, 2, 2))).astype(np.float32)}
  flat = np.concatenate([tree[k].ravel() for k in ("a", "b", "c")])
  k = int(flat.size * fraction)
  keep = np.zeros(flat.size, bool)
  keep[np.argsort(-flat, kind="stable")[:k]] = True
  got = sharding.top_k_mask(jax.tree.map(jnp.asarray, tree), k)
  np.testing.assert_array_equal(np.concatenate([np.asarray(got[n]).ravel() for n in ("a", "b", "c")]), keep)
  if fraction > 0:
    ref = saliency.saliency_mask(jax.tree.map(jnp.asarray, tree), fraction=fraction)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, ref)


def test_top_k_mask_compiles_once_for_every_k():
  tree = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(3)}
  before = sharding.top_k_mask._cache_size()
  counts = [int(sum(m.sum() for m in jax.tree.leaves(sharding.top_k_mask(tree, k)))) for k in (0, 4, 15)]
  assert counts == [0, 4, 15] and sharding.top_k_mask._cache_size() == before + 1


# ---------------------------------------------------------------------------------------------------------------
# Multi-host initialisation.


def test_distributed_initialize_only_when_multihost(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  config = config_lib.base_config().mesh
  mesh = sharding.mesh_from_config(config)
  assert not calls and mesh.shape == {"data": jax.device_count(), "fsdp": 1}
  config.multihost = True
  sharding.mesh_from_config(config)
  assert calls == [((), {})]


# ---------------------------------------------------------------------------------------------------------------
# Placement in the loops, recompilation, bf16.


class CompileCounter:
  """Counts XLA backend compilations (the '/jax/core/compile/backend_compile_duration' event)."""
  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.count, self.per_epoch = 0, []
    jax.monitoring.register_event_duration_secs_listener(self)

  def __call__(self, event, duration, **kwargs):
    del duration, kwargs
    if event == self.EVENT:
      self.count += 1

  def log(self, line):
    del line
    self.per_epoch.append(self.count)

  def close(self):
    jax.monitoring.unregister_event_duration_listener(self)


@pytest.fixture
def counter():
  c = CompileCounter()
  yield c
  c.close()


def _mlp(dtype=jnp.float32, features=(32,)):
  split = _data()
  model, params, state = model_lib.init(get_model("mlp", 10, dtype=dtype, features=features), jax.random.key(0),
                                        split.x[:1])
  return split, model, params, state


def test_no_recompilation_after_the_first_epoch(counter):
  split, model, params, state = _mlp()
  mesh = sharding.make_mesh(data=1, fsdp=1)
  cfg = config_lib.train_config(lr=0.01, epochs=3, batch_size=32)
  train.fit(model, params, state, split, cfg, rng=jax.random.key(1), mesh=mesh, log=counter.log)
  assert len(counter.per_epoch) == 3 and counter.per_epoch[0] > 0
  assert counter.per_epoch[2] == counter.per_epoch[0], counter.per_epoch  # epochs 2 and 3 compile nothing
  counter.per_epoch.clear()
  forget, retain = Split(split.x[:24], split.y[:24], split.index[:24]), Split(split.x[24:], split.y[24:],
                                                                                split.index[24:])
  mask = jax.tree.map(lambda p: jnp.abs(p) > 0.05, params)
  with jax.set_mesh(mesh):  # the loop picks up the ambient mesh
    loop.unlearn_loop(model, params, state, forget, retain, objective=methods.rl_objective(model, True),
                      tx=optax.sgd(0.01, momentum=0.9), epochs=3, batch_size=16, rng=jax.random.key(2), mask=mask,
                      log=counter.log)
  assert len(counter.per_epoch) == 3 and counter.per_epoch[2] == counter.per_epoch[0], counter.per_epoch


def test_loop_under_a_mesh_keeps_rule_shardings_and_matches_no_mesh():
  split, model, params, state = _mlp()
  forget, retain = Split(split.x[:24], split.y[:24], split.index[:24]), Split(split.x[24:], split.y[24:],
                                                                                split.index[24:])
  kwargs = dict(objective=methods.rl_objective(model, True), tx=optax.sgd(0.01, momentum=0.9), epochs=2,
                batch_size=16, rng=jax.random.key(2))
  ref, _, h_ref = loop.unlearn_loop(model, params, state, forget, retain, **kwargs)
  mesh = sharding.make_mesh(data=1, fsdp=1)
  rules = ((r"kernel", jax.P(None, "fsdp")), (".*", "replicate"))
  out, _, h = loop.unlearn_loop(model, params, state, forget, retain, mesh=mesh, rules=rules, **kwargs)
  assert _specs(out) == {k: {"kernel": jax.P(None, "fsdp"), "bias": jax.P()} for k in params}
  np.testing.assert_allclose(h["retain_loss"], h_ref["retain_loss"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), out, ref)


def _dot_dtypes(fn, *args):
  jaxpr = jax.make_jaxpr(fn)(*args)
  found = []

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return found


def test_bfloat16_compute_path_for_training_and_unlearning():
  split, m32, p32, s32 = _mlp(jnp.float32)
  _, m16, p16, s16 = _mlp(jnp.bfloat16)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(p16))  # parameters stay float32
  jax.tree.map(np.testing.assert_array_equal, p32, p16)  # same initialisation
  loss16 = train.classification_loss(m16)
  dots = _dot_dtypes(jax.grad(lambda p: loss16(p, s16, (split.x[:8], split.y[:8]), None)[0]), p16)
  assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), dots  # forward and backward in bf16
  assert all(d == ("float32", "float32") for d in _dot_dtypes(
      lambda p: train.classification_loss(m32)(p, s32, (split.x[:8], split.y[:8]), None)[0], p32))

  cfg = config_lib.train_config(lr=0.01, epochs=2, batch_size=32)
  out32, _, h32 = train.fit(m32, p32, s32, split, cfg, rng=jax.random.key(1))
  out16, _, h16 = train.fit(m16, p16, s16, split, cfg, rng=jax.random.key(1))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(out16))
  assert np.all(np.isfinite(h16["loss"]))
  np.testing.assert_allclose(h16["loss"], h32["loss"], rtol=0.03)

  forget, retain = Split(split.x[:24], split.y[:24], split.index[:24]), Split(split.x[24:], split.y[24:],
                                                                                split.index[24:])
  hist = {}
  for name, model, params, state in (("f32", m32, out32, s32), ("bf16", m16, out16, s16)):
    objective = loop.Objective(forget=objectives.negated(objectives.cross_entropy(model)),
                               retain=objectives.cross_entropy(model))
    _, _, hist[name] = loop.unlearn_loop(model, params, state, forget, retain, objective=objective,
                                         tx=optax.sgd(0.01), epochs=1, batch_size=16, rng=jax.random.key(3))
  for key in ("forget_loss", "retain_loss"):
    assert np.all(np.isfinite(hist["bf16"][key]))
    np.testing.assert_allclose(hist["bf16"][key], hist["f32"][key], rtol=0.03)


# ---------------------------------------------------------------------------------------------------------------
# The memory command.


def test_memory_report_of_the_original_config():
  sys.path.insert(0, ROOT)
  from experiments import memory  # pylint: disable=g-import-not-at-top
  from configs import original  # pylint: disable=g-import-not-at-top
  config = original.get_config()
  config.model.hidden = (128,)  # a smaller MLP: a faster compile, the same accounting
  report = memory.memory_report(config)
  module = get_model("mlp", 10, features=tuple(config.model.hidden))
  _, params, _ = model_lib.init(module, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  n = model_lib.num_params(params)
  assert report["params"]["total"] == 4 * n and report["params"]["per_device"] == 4 * n  # one device
  # SGD with momentum: one float32 trace per parameter, the cosine schedule's int32 step count, and the injected
  # learning rate (float32) with its own step count (train.make_optimizer: optax.inject_hyperparams)
  assert report["opt_state"]["total"] == 4 * n + 4 + 8
  step = report["step"]
  assert step["argument"] >= 8 * n and step["alias"] >= 8 * n  # params and momentum, donated
  assert step["peak"] == step["argument"] + step["output"] - step["alias"] + step["temp"] + step["generated_code"]
  assert report["init"]["output"] >= 4 * n
  text = memory.format_report(report)
  assert "step temp" in text and "params" in text


def test_memory_command_line():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-m", "experiments.memory", "--config=configs/original.py",
                        "--config.model.hidden=(64,)"], env=env, capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  n = 64 * 64 + 64 + 64 * 10 + 10
  line = next(l for l in out.stdout.splitlines() if l.startswith("params"))
  assert abs(float(line.split()[1]) - 4 * n / 2**20) < 1e-3, out.stdout
