"""Everything that needs 8 forced host CPU devices, run in ONE fresh process (the device count is fixed when JAX
starts): FSDP on a 2 x 4 data x fsdp mesh (SalUn, TIES and weight matching, then every unlearning method), every
merge on that mesh, data-parallel training (MLP and ResNet-20) and GPT, a population sharded over its model axis,
and resuming training on a mesh.

Each sharded result must equal the single-device run (to 1e-5 unless a script says otherwise) and keep its expected
`PartitionSpec`; the unlearning loop must compile nothing after its first epoch. The scripts run one after another
in one process (`outputs`), each in a namespace of its own, so Python, JAX and the library start and import once
instead of once per script; one failing script fails only its own test.
"""
from __future__ import annotations

import textwrap

import pytest

from tests import subprocesses


FSDP_SCRIPT = textwrap.dedent("""
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



# Every merge on the 2 x 4 data x fsdp mesh, leaves FSDP-sharded by rule (the layout of FSDP_SCRIPT above), all in
# two jitted programs: the outputs keep the inputs' shardings and equal the single-device merges, and the program of
# the non-gathering merges has no all-gather or all-to-all.
MERGES_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from unlearn_jax import merging, sharding

    assert jax.device_count() == 8, jax.devices()
    P = jax.P
    # A 2 x 4 data x fsdp mesh (explicit axes). Every leaf is placed by the FSDP rule (min_size lowered so these
    # small ones qualify): split 4 ways over its largest dimension divisible by 4, replicated over `data`; "b" (5,)
    # stays replicated. The Grams are placed by the same rule.
    mesh = sharding.make_mesh(data=2, fsdp=4)
    RULES = ((".*", "fsdp", 8),)
    SPECS = {"a": {"kernel": P("fsdp"), "bias": P("fsdp")}, "b": P(), "c": P(None, "fsdp")}
    SHAPES = {"a": {"kernel": (16, 8), "bias": (8,)}, "b": (5,), "c": (4, 16)}
    is_shape = lambda s: isinstance(s, tuple)
    rng = np.random.default_rng(0)
    tree = lambda: jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), SHAPES, is_leaf=is_shape)
    spd = lambda m: m @ m.T + np.eye(len(m), dtype=np.float32)
    base, ps = tree(), [tree() for _ in range(3)]
    fs = [jax.tree.map(np.abs, tree()) for _ in range(3)]
    grams = [(lambda t: {"a": {"kernel": spd(t["a"]["kernel"])}, "c": spd(t["c"])})(tree()) for _ in range(3)]
    key = jax.random.key(0)
    MERGES = {
        "linear": lambda ps, b, f, g: merging.linear(ps),
        "linear_weighted": lambda ps, b, f, g: merging.linear(ps, weights=jnp.array([1.0, 2.0, 3.0])),
        "task_arithmetic": lambda ps, b, f, g: merging.task_arithmetic(ps, base=b, scale=-0.5),
        "ties": lambda ps, b, f, g: merging.ties(ps, base=b, density=0.3),
        "dare": lambda ps, b, f, g: merging.dare(ps, base=b, density=0.5, rng=key),
        "dare_ties": lambda ps, b, f, g: merging.dare(ps, base=b, density=0.5, rng=key, combine="ties"),
        "model_stock": lambda ps, b, f, g: merging.model_stock(ps, base=b),
        "slerp": lambda ps, b, f, g: merging.slerp(ps[0], ps[1], t=0.3),
        "fisher": lambda ps, b, f, g: merging.fisher(ps, f),
        "negmerge": lambda ps, b, f, g: merging.negmerge(ps, base=b, scale=1.0),
        "ties_mergekit": lambda ps, b, f, g: merging.ties(ps, base=b, density=[0.3, 0.5, 0.8], mergekit=True,
                                                          weights=jnp.array([1.0, 0.5, 2.0]), rescale=True),
        "breadcrumbs": lambda ps, b, f, g: merging.breadcrumbs_ties(ps, base=b, density=0.6, gamma=0.1),
        "sce": lambda ps, b, f, g: merging.sce(ps, base=b, density=0.5),
        "karcher": lambda ps, b, f, g: merging.karcher(ps),
        "nuslerp": lambda ps, b, f, g: merging.nuslerp(ps[:2], base=b, flatten=False, row_wise=True),
        "multislerp": lambda ps, b, f, g: merging.multislerp(ps, base=b),
        "nearswap": lambda ps, b, f, g: merging.nearswap(ps[0], base=b, t=0.5),
        # These two gather: DELLA ranks along the sharded last axis of "c", RegMean solves with whole Grams.
        "della": lambda ps, b, f, g: merging.della(ps, base=b, density=0.5, epsilon=0.2, rng=key),
        "regmean": lambda ps, b, f, g: merging.regmean(ps, g),
    }
    GATHERING = ("della", "regmean")
    merge_all = lambda names: lambda *args: {name: MERGES[name](*args) for name in names}
    expected = jax.jit(merge_all(MERGES))(ps, base, fs, grams)

    def norm(spec):   # a spec without its trailing Nones: P("fsdp", None) is P("fsdp")
      entries = list(spec)
      while entries and entries[-1] is None:
        entries.pop()
      return P(*entries)

    with jax.set_mesh(mesh):
      put = lambda t: sharding.place(t, mesh, RULES)
      sbase, sps, sfs, sgrams = put(base), [put(p) for p in ps], [put(f) for f in fs], [put(g) for g in grams]
      assert jax.tree.map(lambda a: norm(a.sharding.spec), sps[0]) == SPECS, sps[0]
      for names in ([n for n in MERGES if n not in GATHERING], GATHERING):
        compiled = jax.jit(merge_all(names)).lower(sps, sbase, sfs, sgrams).compile()
        out = compiled(sps, sbase, sfs, sgrams)
        for name in names:
          for (path, o), w in zip(jax.tree_util.tree_flatten_with_path(out[name])[0], jax.tree.leaves(sps[0])):
            where = (name, jax.tree_util.keystr(path), o.sharding)
            assert o.sharding.is_equivalent_to(w.sharding, o.ndim), where
            assert norm(o.sharding.spec) == norm(w.sharding.spec), where
          jax.tree.map(lambda o, e: np.testing.assert_allclose(np.asarray(o), e, rtol=1e-5, atol=1e-5, err_msg=name),
                       out[name], expected[name])
          print(name, "ok", flush=True)
        if names is not GATHERING:
          hlo = compiled.as_text()
          assert "all-gather" not in hlo and "all-to-all" not in hlo, hlo
    print("SHARDING OK")
""")


def test_merges_keep_sharding_on_eight_devices(outputs):
  stdout = subprocesses.assert_printed(outputs["merges"], "SHARDING OK")
  for name in ("linear", "linear_weighted", "task_arithmetic", "ties", "dare", "dare_ties", "model_stock", "slerp",
               "fisher", "negmerge", "della", "regmean", "ties_mergekit", "breadcrumbs", "sce", "karcher", "nuslerp",
               "multislerp", "nearswap"):
    assert f"{name} ok" in stdout, name



# Data-parallel training (batches split over a data mesh of 8) equals one device.
TRAIN_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from unlearn_jax import config as config_lib, model as model_lib, sharding, train
    from unlearn_jax.models import get_model
    from unlearn_jax.data.split import Split
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(128, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(np.argmax(np.asarray(x).reshape(128, 64)[:, :10], -1), jnp.int32)  # learnable labels
    split = Split(x, y, jnp.arange(128))
    # a stable regime: with a large step on noise labels, training is chaotic and float rounding grows
    cfg = config_lib.train_config(lr=0.01, epochs=2, batch_size=32)
    mesh = sharding.make_mesh(data=8)
    # MLP: two epochs, identical. ResNet-20 (BatchNorm): one epoch; over longer runs float rounding in the
    # batch statistics grows past 1e-5 even in a stable regime.
    for name, epochs in (("mlp", 2), ("resnet20", 1)):
      cfg.epochs = epochs
      model, params, state = model_lib.init(get_model(name, 10), jax.random.key(0), x[:1])
      p1, s1, h1 = train.fit(model, params, state, split, cfg, rng=jax.random.key(1))
      p8, s8, h8 = train.fit(model, params, state, split, cfg, rng=jax.random.key(1), mesh=mesh)
      np.testing.assert_allclose(h1["loss"], h8["loss"], rtol=1e-5, atol=1e-6)
      for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
      leaf = jax.tree.leaves(p8)[0]
      assert leaf.sharding.is_fully_replicated, leaf.sharding
      print(name, "losses", h1["loss"], h8["loss"])
    print("SHARDED_OK")
""")


def test_sharded_training_matches_single_device(outputs):
  subprocesses.assert_printed(outputs["train"], "SHARDED_OK")



GPT_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from unlearn_jax import language, sharding
    from unlearn_jax.models import gpt
    assert len(jax.devices()) == 8, jax.devices()
    cfg = gpt.gpt_config("tiny", vocab_size=48, num_layers=2, num_kv_heads=2, d_model=32, d_ff=48, max_len=32)
    lm, _ = gpt.language_model(cfg)
    params = gpt.init_params(cfg, jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 48, (8, 12)), jnp.int32)
    mask = jnp.ones((8, 12)).at[:, :4].set(0.0)
    plen = jnp.array([6, 3, 4, 5, 6, 1, 2, 3])
    grad = jax.jit(jax.grad(lambda p, i, m: language.mean_nll(lm.logits(p, i), i, m)))
    g1, out1 = grad(params, ids, mask), lm.generate(params, ids[:, :6], plen, 5)
    mesh = sharding.make_mesh(data=8)
    rows = jax.NamedSharding(mesh, jax.P("data"))
    with sharding.use_mesh(mesh):
      p8 = sharding.replicate(params, mesh)
      i8, m8, l8 = (jax.device_put(a, rows) for a in (ids, mask, plen))
      g8, out8 = grad(p8, i8, m8), lm.generate(p8, i8[:, :6], l8, 5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out1, out8)
    print("SHARDED_OK")
""")


def test_batch_sharded_grads_and_generation_match_single_device(outputs):
  """Under an 8-device explicit-axes data mesh, gradients and KV-cache generation equal the 1-device ones."""
  subprocesses.assert_printed(outputs["gpt"], "SHARDED_OK")



# A population of 8 members sharded over the model axis trains as on one device.
POPULATION_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import linen as nn
    from unlearn_jax import config as config_lib, model as model_lib, population as pop
    from unlearn_jax.data.split import Split
    class Tiny(nn.Module):
      @nn.compact
      def __call__(self, x, train=False):
        return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))
    rng = np.random.default_rng(0)
    split = Split(jnp.asarray(rng.normal(size=(32, 5)), jnp.float32), jnp.asarray(rng.integers(0, 3, 32), jnp.int32))
    model = model_lib.from_linen(Tiny())
    params, state = pop.init(Tiny(), list(range(8)), split.x[:1])
    cfg = config_lib.train_config(lr=0.1, epochs=2, batch_size=8, schedule="constant")
    masks = pop.exclude_masks(32, np.arange(8)[:, None] * 3)
    masks[3, 20:] = False  # one member with fewer steps
    mesh = pop.make_mesh()
    sharded, _, h = pop.fit(model, params, state, split, cfg, rng=jax.random.key(1), masks=masks, mesh=mesh,
                            loop="scan")
    leaf = jax.tree.leaves(sharded)[0]
    assert jax.typeof(leaf).sharding.spec[0] == "model" and len(leaf.sharding.device_set) == 8, leaf.sharding
    alone, _, _ = pop.fit(model, params, state, split, cfg, rng=jax.random.key(1), masks=masks, loop="scan")
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(alone)):
      np.testing.assert_allclose(a, b, atol=1e-5)
    try:
      pop.fit(model, pop.member(params, slice(0, 4)), state, split, cfg, rng=jax.random.key(1), mesh=mesh)
    except ValueError as e:
      assert "population.size=4 is not divisible by the 8 devices" in str(e), e
    print("POPULATION_SHARDED_OK")
""")


def test_population_sharded_over_8_devices_equals_one_device(outputs):
  subprocesses.assert_printed(outputs["population"], "POPULATION_SHARDED_OK")



# A run killed after epoch 3 on a data x fsdp mesh resumes onto the shardings it trained with.
RESUME_SCRIPT = textwrap.dedent("""
    import tempfile, jax, numpy as np
    from tests.test_resume import Killed, KilledAfter, setup_fit
    from unlearn_jax import checkpoint, sharding, train
    assert len(jax.devices()) == 8, jax.devices()
    model, params, state, split, cfg = setup_fit()
    split = type(split)(split.x[:96], split.y[:96], split.index[:96])  # batches of 32 split over 4 devices
    mesh, rng = sharding.make_mesh(data=4, fsdp=2), jax.random.key(3)
    full_p, full_s, full_h = train.fit(model, params, state, split, cfg, rng=rng, mesh=mesh)
    with tempfile.TemporaryDirectory() as d:
      try:
        train.fit(model, params, state, split, cfg, rng=rng, mesh=mesh, checkpoints=KilledAfter(d, 3, every=1))
        raise AssertionError("not killed")
      except Killed:
        pass
      p, s, h = train.fit(model, params, state, split, cfg, rng=rng, mesh=mesh,
                          checkpoints=checkpoint.EpochCheckpoints(d))
    assert h["resumed_from_epoch"] == 3 and h["loss"] == full_h["loss"]
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((full_p, full_s))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      assert a.sharding == b.sharding, (a.sharding, b.sharding)
    print("MESH_RESUME_OK")
""")


def test_resume_on_a_mesh_restores_onto_the_training_shardings(outputs):
  subprocesses.assert_printed(outputs["resume"], "MESH_RESUME_OK")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  """What each script of this file printed; they run one after the other in one 8-device process. FSDP_SCRIPT comes
  first: its check that the unlearning loop compiles in its first epoch (and only then) needs programs that no script
  before it compiled."""
  workdir = tmp_path_factory.mktemp("every_method")
  return subprocesses.run_scripts_on_8_cpu_devices({
      "salun_ties_weight_matching": FSDP_SCRIPT,
      "every_method": f"WORKDIR = {str(workdir)!r}\n" + EVERY_METHOD_SCRIPT,
      "merges": MERGES_SCRIPT,
      "train": TRAIN_SCRIPT,
      "gpt": GPT_SCRIPT,
      "population": POPULATION_SCRIPT,
      "resume": RESUME_SCRIPT}, timeout=1200)
