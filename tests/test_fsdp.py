"""FSDP on 8 forced CPU devices (a 2 x 4 data x fsdp mesh): SalUn, TIES and weight matching, then every unlearning
method, with sharded params.

Each output must equal the single-device run to 1e-5 and keep the expected `PartitionSpec` on every leaf; the
unlearning loop must compile nothing after its first epoch. The devices need a fresh process: both scripts run in
one (`outputs`), so JAX and the library start once. Every merge on the same mesh: ``tests/test_merging.py``.
"""
from __future__ import annotations

import textwrap

import pytest

from tests import subprocesses


SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from unlearn_jax import merging, model as model_lib, sharding
    from unlearn_jax.data.split import Split
    from unlearn_jax.merging import permutation
    from unlearn_jax.models import get_model
    from unlearn_jax.unlearning import loop, methods, saliency

    assert jax.device_count() == 8, jax.devices()
    P = jax.P
    rng = np.random.default_rng(0)
    n = 96
    x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    y = np.argmax(x.reshape(n, 64)[:, :10], -1).astype(np.int32)   # digits-like: 8x8 images, 10 learnable classes
    forget = Split(jnp.asarray(x[:32]), jnp.asarray(y[:32]), jnp.arange(32))
    retain = Split(jnp.asarray(x[32:]), jnp.asarray(y[32:]), jnp.arange(32, n))
    model, params, state = model_lib.init(get_model("mlp", 10, features=(64, 32)), jax.random.key(0), x[:1])

    # Kernels FSDP-sharded (min_size lowered so these small ones qualify), biases replicated.
    rules = ((r"kernel", "fsdp", 256), (r"bias", "replicate"))
    # the largest dimension divisible by 4, the later one on ties: (64, 64) -> 1, (64, 32) -> 0, (32, 10) -> 0
    EXPECTED = {"Dense_0": {"kernel": P(None, "fsdp"), "bias": P()}, "Dense_1": {"kernel": P("fsdp"), "bias": P()},
                "Dense_2": {"kernel": P("fsdp"), "bias": P()}}

    def norm(spec):
      entries = list(spec)
      while entries and entries[-1] is None:
        entries.pop()
      return P(*entries)

    def check(name, got, want, expected=EXPECTED, tol=1e-5):
      specs = jax.tree.map(lambda a: norm(jax.typeof(a).sharding.spec), got)
      assert specs == expected, (name, specs)
      assert all(len(a.sharding.device_set) == 8 for a in jax.tree.leaves(got)), name
      jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol,
                                                           err_msg=name), got, want)
      print(name, "ok")

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_, **__: compiles.append(1) if event == "/jax/core/compile/backend_compile_duration" else None)
    per_epoch = []

    # ---- single device (no mesh) ----
    grads1 = saliency.forget_saliency(model, params, state, forget, batch_size=16)
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
    kwargs = dict(objective=methods.rl_objective(model, True), tx=tx, epochs=3, batch_size=16,
                  rng=jax.random.key(1))
    models = [jax.tree.map(lambda p, i=i: p + 0.01 * (i + 1) * rng.standard_normal(p.shape).astype(np.float32),
                           params) for i in range(3)]
    ties1 = merging.ties(models, base=params, density=0.3)
    spec = permutation.spec_for_model("mlp", params)
    true_perms = permutation.random_perms(spec, params, jax.random.key(5))
    params_b = jax.tree.map(lambda p: p + 0.02 * rng.standard_normal(p.shape).astype(np.float32),
                            permutation.apply_permutation(spec, true_perms, params))
    perms1 = permutation.weight_matching(spec, params, params_b, rng=jax.random.key(2))
    aligned1 = permutation.apply_permutation(spec, perms1, params_b)

    # ---- FSDP: data=2 x fsdp=4 ----
    mesh = sharding.make_mesh(data=2, fsdp=4)
    with jax.set_mesh(mesh):
      ps = sharding.place(params, mesh, rules)
      check("placement", ps, params, tol=0)

      # SalUn: saliency on sharded params (the model gathers its weights inside the jitted step) ...
      grads8 = saliency.forget_saliency(sharding.fsdp_model(model), ps, state, forget, batch_size=16)
      check("saliency", grads8, grads1)
      k = int(0.5 * sum(g.size for g in jax.tree.leaves(grads8)))
      mask8 = sharding.top_k_mask(grads8, k)
      mask1 = saliency.saliency_mask(jax.device_get(grads8), fraction=0.5)   # same numbers, one device, a sort
      check("saliency mask", mask8, mask1, tol=0)
      # ... then the RL loop restricted to the mask, every step on sharded params and optimiser state
      out8, _, h8 = loop.unlearn_loop(model, ps, state, forget, retain, mask=mask8, mesh=mesh, rules=rules,
                                      log=lambda line: per_epoch.append(len(compiles)), **kwargs)
      assert per_epoch[0] > 0 and per_epoch[1] == per_epoch[2] == per_epoch[0], ("recompiled", per_epoch)
    out1, _, h1 = loop.unlearn_loop(model, params, state, forget, retain, mask=mask1, **kwargs)
    np.testing.assert_allclose(h8["retain_loss"], h1["retain_loss"], rtol=1e-5)
    check("salun", out8, out1)
    frozen = jax.tree.map(lambda o, p, m: np.asarray(o)[~np.asarray(m)] - np.asarray(p)[~np.asarray(m)], out8,
                          params, mask1)
    assert all(np.all(v == 0) for v in jax.tree.leaves(frozen)), "masked-out weights moved"

    with jax.set_mesh(mesh):
      # SCRUB's teacher travels in the carried state, placed like the student
      carried = sharding.place({"model": state, "frozen": {"teacher": (params, state)}}, mesh, rules, like=ps)
      assert jax.tree.map(lambda a: norm(jax.typeof(a).sharding.spec), carried["frozen"]["teacher"][0]) == EXPECTED

      # TIES over three sharded models
      ms = [sharding.place(m, mesh, rules) for m in models]
      compiled = jax.jit(merging.ties, static_argnames=("density",)).lower(ms, base=ps, density=0.3).compile()
      assert "all-gather" not in compiled.as_text(), "TIES gathered a parameter"
      check("ties", merging.ties(ms, base=ps, density=0.3), ties1)

      # weight matching of two sharded MLPs; the aligned model stays sharded
      pbs = sharding.place(params_b, mesh, rules)
      perms8 = permutation.weight_matching(spec, ps, pbs, rng=jax.random.key(2))
      for name in perms1:
        np.testing.assert_array_equal(np.asarray(perms8[name]), np.asarray(perms1[name]))
        np.testing.assert_array_equal(np.asarray(perms8[name]), np.argsort(np.asarray(true_perms[name])))
      check("weight matching", permutation.apply_permutation(spec, perms8, pbs), aligned1)

    # the memory command's accounting on this mesh: Dense_0's (64, 256) kernel reaches the default min_size and is
    # split 4 ways over its 256 columns; Dense_1's (256, 10) kernel and the biases are replicated
    from experiments import memory
    from configs import original
    config = original.get_config()
    config.model.hidden, config.mesh.data, config.mesh.fsdp = (256,), 2, 4
    report = memory.memory_report(config)
    assert report["specs"]["['Dense_0']['kernel']"] == str(P(None, "fsdp")), report["specs"]
    assert report["params"]["per_device"] == 4 * (64 * 64 + 256 + 256 * 10 + 10), report["params"]
    assert report["params"]["total"] == 4 * (64 * 256 + 256 + 256 * 10 + 10), report["params"]
    assert report["step"]["alias"] >= 2 * report["params"]["per_device"], report["step"]
    print(memory.format_report(report))
    print("FSDP_OK")
""")


def test_fsdp_salun_ties_weight_matching_equal_single_device(outputs):
  stdout = subprocesses.assert_printed(outputs["salun_ties_weight_matching"], "FSDP_OK")
  for name in ("placement", "saliency", "saliency mask", "salun", "ties", "weight matching"):
    assert f"{name} ok" in stdout, stdout


EVERY_METHOD_SCRIPT = textwrap.dedent("""
    import copy
    import jax
    import numpy as np
    from configs import retrain
    from unlearn_jax import run as run_lib, sharding, unlearning

    def config(kind, fsdp):
      c = retrain.get_config()
      c.train.epochs = c.retrain.epochs = 2
      # one hidden layer: fewer ops to compile per program; its (64, 256) kernel has the 2^14 entries that
      # DEFAULT_RULES shard (P(None, "fsdp")), the (256, 10) head and the biases stay replicated
      c.model.hidden = (256,)
      if kind == "class":
        c.forget.kind, c.forget.classes = "class", (3,)
      c.mesh.data, c.mesh.fsdp = (2, 4) if fsdp else (-1, 1)
      return c

    # fewer examples, VAE epochs and VAE layers where those dominate, and batches of 256 (fewer sharded steps) for
    # every method (the sharded and single runs still see the same ones); LAF's VAE without hidden layers is still
    # an encoder and decoder around the embedding
    LIGHT = {"influence": dict(num_examples=128), "wfisher": dict(num_examples=128),
             "laf": dict(vae_epochs=1, vae_hidden=())}

    for kind in ("random", "class"):
      single, mesh = run_lib.setup(config(kind, False)), run_lib.setup(config(kind, True))
      single.mesh = None
      params, state, _, _ = run_lib.original(single, WORKDIR + "/" + kind)
      placed = sharding.place(params, mesh.mesh, sharding.DEFAULT_RULES)
      names = [n for n in unlearning.names() if n not in unlearning.BASELINES and n not in run_lib.METHOD_INPUTS
               and (n == "fisher_mnemonic") == (kind == "class")]
      for name in names:
        opts = dict(epochs=1) if "epochs" in unlearning.DEFAULTS[name] else {}
        if unlearning.DEFAULTS[name].get("batch_size", 256) < 256:
          opts["batch_size"] = 256  # most methods' default: every sharded step waits on its collectives, 8 threads
        opts.update(LIGHT.get(name, {}))
        outs = []
        for exp, p in ((single, params), (mesh, placed)):
          exp.config.method = unlearning.method_config(name, **opts)
          outs.append(run_lib.unlearn(exp, p, state)[0])
        flat = jax.tree_util.tree_flatten_with_path(outs[1])[0]
        for (path, got), want in zip(flat, jax.tree.leaves(outs[0])):
          np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5, err_msg=name)
          expected = sharding.spec_for(jax.tree_util.keystr(path), got.shape, mesh.mesh, sharding.DEFAULT_RULES)
          full = lambda spec: tuple(spec) + (None,) * (got.ndim - len(spec))  # P(None,) is P()
          assert full(got.sharding.spec) == full(expected), (name, path, got.sharding.spec, expected)
        assert any(l.sharding.spec != jax.P() for l in jax.tree.leaves(outs[1])), name
        print(name, "ok", flush=True)
    print("EVERY_METHOD_OK")
""")


def test_every_unlearning_method_runs_fsdp_sharded_and_equals_single_device(outputs):
  """All registered methods (iterative and one-shot) on FSDP-sharded params: same result, params stay sharded."""
  from unlearn_jax import unlearning  # pylint: disable=g-import-not-at-top
  stdout = subprocesses.assert_printed(outputs["every_method"], "EVERY_METHOD_OK")
  from unlearn_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  for name in unlearning.names():
    if name not in unlearning.BASELINES and name not in run_lib.METHOD_INPUTS:  # dmm, oracle_matching: run inputs
      assert f"{name} ok" in stdout, name


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  """What each script of this file printed; they run one after the other in one 8-device process."""
  workdir = tmp_path_factory.mktemp("every_method")
  return subprocesses.run_scripts_on_8_cpu_devices({
      "salun_ties_weight_matching": SCRIPT,
      "every_method": f"WORKDIR = {str(workdir)!r}\n" + EVERY_METHOD_SCRIPT})
