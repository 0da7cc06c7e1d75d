"""Iterative unlearning: the loop's schedules, the objectives' maths, saliency masks, and every method."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from unlearn_jax import model as model_lib
from unlearn_jax import unlearning
from unlearn_jax.data.split import Split
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import objectives as obj
from unlearn_jax.unlearning import saliency
from tests import method_checks


class Linear(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3)(x)


def toy(n, seed):
  rng = np.random.default_rng(seed)
  return Split(jnp.asarray(rng.normal(size=(n, 4)), jnp.float32), jnp.asarray(rng.integers(0, 3, n), jnp.int32),
               jnp.arange(n))


@functools.lru_cache()
def linear_setup():
  model, params, state = model_lib.init(Linear(), jax.random.key(0), jnp.zeros((1, 4)))
  return model, params, state


def ce_value(model, params, split):
  logits, _ = model.apply(params, {}, split.x, train=True)
  return optax.softmax_cross_entropy_with_integer_labels(logits, split.y).mean()


def test_random_labels_default_uniform_over_all_classes_as_the_reference_randint():
  y = jnp.asarray(np.random.default_rng(0).integers(0, 5, 20000), jnp.int32)
  fake = np.asarray(obj.random_wrong_labels(jax.random.key(1), y, 5))
  for c in range(5):  # given the true class, every class (the true one included) has probability 1/5
    counts = np.bincount(fake[np.asarray(y) == c], minlength=5)
    np.testing.assert_allclose(counts / counts.sum(), 0.2, atol=0.03)
  # the RL and SalUn methods draw them the same way by default
  assert not unlearning.DEFAULTS["rl"]["exclude_true"] and not unlearning.DEFAULTS["salun"]["exclude_true"]
  model, params, _ = linear_setup()
  split = toy(3000, 9)
  term = obj.random_labels(model)
  # the term's loss is the CE to labels drawn from the rng: recover them from a model whose logits are one-hot
  logits, _ = model.apply(params, {}, split.x, train=True)
  label_rng = jax.random.split(jax.random.key(4))[0]
  drawn = np.asarray(obj.random_wrong_labels(label_rng, split.y, 3))
  want = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(drawn)).mean()
  loss, _ = term(params, {}, (split.x, split.y), jax.random.key(4), jnp.int32(0))
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert np.mean(drawn == np.asarray(split.y)) == pytest.approx(1 / 3, abs=0.03)


def test_random_wrong_labels_exclude_true_never_true_and_uniform():
  y = jnp.asarray(np.random.default_rng(0).integers(0, 5, 20000), jnp.int32)
  fake = np.asarray(obj.random_wrong_labels(jax.random.key(1), y, 5, exclude_true=True))
  assert not np.any(fake == np.asarray(y))
  for c in range(5):  # given the true class, each of the 4 others has probability 1/4
    counts = np.bincount(fake[np.asarray(y) == c], minlength=5)
    frac = counts / counts.sum()
    np.testing.assert_allclose(np.delete(frac, c), 0.25, atol=0.03)


def test_sequential_schedule_is_forget_steps_then_retain_steps():
  model, params, _ = linear_setup()
  forget, retain = toy(8, 1), toy(12, 2)
  lr = 0.3
  ce = obj.cross_entropy(model)
  objective = loop.Objective(forget=obj.negated(ce), retain=ce)
  out, _, hist = loop.unlearn_loop(model, params, {}, forget, retain, objective=objective, tx=optax.sgd(lr),
                                   epochs=1, batch_size=64, rng=jax.random.key(0))
  g_f = jax.grad(lambda p: -ce_value(model, p, forget))(params)
  mid = jax.tree.map(lambda p, g: p - lr * g, params, g_f)
  g_r = jax.grad(lambda p: ce_value(model, p, retain))(mid)
  expected = jax.tree.map(lambda p, g: p - lr * g, mid, g_r)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(hist["forget_loss"][0], -ce_value(model, params, forget), rtol=1e-5)


def test_joint_schedule_sums_terms_in_one_step():
  model, params, _ = linear_setup()
  forget, retain = toy(8, 1), toy(12, 2)
  lr, beta = 0.3, 0.7
  ce = obj.cross_entropy(model)
  objective = loop.Objective(forget=obj.scaled(obj.negated(ce), 1 - beta), retain=obj.scaled(ce, beta))
  out, _, hist = loop.unlearn_loop(model, params, {}, forget, retain, objective=objective, tx=optax.sgd(lr),
                                   epochs=1, batch_size=64, rng=jax.random.key(0), schedule="joint")
  loss = lambda p: beta * ce_value(model, p, retain) - (1 - beta) * ce_value(model, p, forget)
  expected = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(loss)(params))
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(hist["joint_loss"][0], loss(params), rtol=1e-5)


def test_joint_cycles_the_smaller_split_and_forget_epochs_limit():
  model, params, _ = linear_setup()
  forget, retain = toy(4, 1), toy(40, 2)
  ce = obj.cross_entropy(model)
  _, _, hist = loop.unlearn_loop(model, params, {}, forget, retain, objective=loop.Objective(ce, ce),
                                 tx=optax.sgd(0.1), epochs=1, batch_size=8, rng=jax.random.key(0),
                                 schedule="joint")
  assert len(hist["joint_loss"]) == 1
  _, _, hist = loop.unlearn_loop(model, params, {}, forget, retain, objective=loop.Objective(ce, ce),
                                 tx=optax.sgd(0.1), epochs=3, batch_size=8, rng=jax.random.key(0),
                                 forget_epochs=1)
  assert len(hist["forget_loss"]) == 1 and len(hist["retain_loss"]) == 3
  with pytest.raises(ValueError, match="schedule"):
    loop.unlearn_loop(model, params, {}, forget, retain, objective=loop.Objective(ce, ce), tx=optax.sgd(0.1),
                      epochs=1, batch_size=8, rng=jax.random.key(0), schedule="mixed")
  with pytest.raises(ValueError, match="no forget split"):
    loop.unlearn_loop(model, params, {}, None, retain, objective=loop.Objective(ce, ce), tx=optax.sgd(0.1),
                      epochs=1, batch_size=8, rng=jax.random.key(0))


def test_l1_weight_decays_linearly_to_zero():
  model, params, _ = linear_setup()
  split = toy(6, 3)
  term = obj.with_decaying_l1(obj.cross_entropy(model), alpha=0.01, epochs=4)
  l1 = sum(np.abs(np.asarray(p)).sum() for p in jax.tree.leaves(params))
  for epoch in range(4):
    loss, (_, metrics) = term(params, {}, (split.x, split.y), jax.random.key(0), jnp.int32(epoch))
    alpha_t = 0.01 * (1 - epoch / 4)
    np.testing.assert_allclose(metrics["alpha"], alpha_t, rtol=1e-6)
    np.testing.assert_allclose(loss, ce_value(model, params, split) + alpha_t * l1, rtol=1e-5)


def test_kl_divergence_matches_numpy():
  t = np.random.default_rng(0).normal(size=(5, 4))
  s = np.random.default_rng(1).normal(size=(5, 4))
  T = 2.0
  p = np.exp(t / T) / np.exp(t / T).sum(-1, keepdims=True)
  q = np.exp(s / T) / np.exp(s / T).sum(-1, keepdims=True)
  np.testing.assert_allclose(obj.kl_divergence(jnp.asarray(t), jnp.asarray(s), T),
                             np.mean(np.sum(p * np.log(p / q), -1)), rtol=1e-5)


def test_saliency_mask_keeps_exact_top_fraction():
  rng = np.random.default_rng(0)
  sal = {"a": jnp.asarray(rng.random((7, 5))), "b": jnp.asarray(rng.random(13))}
  for fraction in (0.1, 0.5, 0.77, 1.0):
    mask = saliency.saliency_mask(sal, fraction=fraction)
    flat = np.concatenate([np.asarray(sal["a"]).ravel(), np.asarray(sal["b"])])
    m = np.concatenate([np.asarray(mask["a"]).ravel(), np.asarray(mask["b"])])
    k = int(flat.size * fraction)
    assert m.sum() == k and m.dtype == bool
    assert set(np.flatnonzero(m)) == set(np.argsort(-flat)[:k])
  per = saliency.saliency_mask(sal, fraction=0.4, per_layer=True)
  assert per["a"].sum() == int(35 * 0.4) and per["b"].sum() == int(13 * 0.4)
  assert np.asarray(sal["b"])[np.asarray(per["b"])].min() >= np.asarray(sal["b"])[~np.asarray(per["b"])].max()
  with pytest.raises(ValueError, match="fraction"):
    saliency.saliency_mask(sal, fraction=0.0)
  soft = saliency.soft_saliency_mask(sal, fraction=0.5)
  assert float(max(np.max(v) for v in jax.tree.leaves(soft))) == 1.0
  assert sum(int(np.sum(np.asarray(v) == 1.0)) for v in jax.tree.leaves(soft)) == int(48 * 0.5)


def _sum_of_batch_means_grad(model, params, split, batch_size):
  """NumPy-side reference: the forget loader walked in order, each batch's plain mean CE, gradients summed."""
  total = None
  for start in range(0, split.size, batch_size):
    x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, {}, x, train=False)[0], y).mean())(params)
    total = g if total is None else jax.tree.map(np.add, total, g)
  return total


def test_forget_saliency_is_abs_sum_of_batch_mean_gradients():
  model, params, _ = linear_setup()
  forget = toy(10, 4)
  got = saliency.forget_saliency(model, params, {}, forget, batch_size=4)  # batches of 4, 4 and 2
  want = _sum_of_batch_means_grad(model, params, forget, 4)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, np.abs(b), rtol=1e-5, atol=1e-7)


def test_forget_saliency_short_last_batch_is_a_plain_mean():
  """50 forget rows at batch 16: the last batch of 2 counts as the mean over its own 2 rows, not sum / 16."""
  model, params, _ = linear_setup()
  forget = toy(50, 11)
  got = saliency.forget_saliency(model, params, {}, forget, batch_size=16)
  want = _sum_of_batch_means_grad(model, params, forget, 16)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, np.abs(b), rtol=1e-5, atol=1e-7)
  divided_by_16 = jax.tree.map(lambda g, last: g - last + last * 2 / 16, want,
                               _sum_of_batch_means_grad(model, params, forget.take(np.arange(48, 50)), 16))
  assert any(not np.allclose(a, np.abs(b), rtol=1e-4) for a, b in zip(jax.tree.leaves(got),
                                                                      jax.tree.leaves(divided_by_16)))


def test_gradient_mask_mode_masked_weights_follow_decay_with_momentum():
  """``mask_mode='gradient'``: a masked-out weight sees only weight decay, ``v ← μv + wd·w; w ← w − lr·v`` per step,
  exactly as torch's SGD after ``param.grad *= mask``; unmasked weights move with their gradients too."""
  model, params, _ = linear_setup()
  params = jax.tree.map(lambda p: p + 0.3, params)  # no zero weights (biases start at 0)
  forget, retain = toy(16, 5), toy(32, 6)
  mask = saliency.saliency_mask(jax.tree.map(lambda p: jnp.abs(p) + 0.1, params), fraction=0.5)
  lr, wd, mu, epochs = 0.1, 5e-2, 0.9, 3
  tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu))
  ce = obj.cross_entropy(model)
  kwargs = dict(objective=loop.Objective(obj.random_labels(model), ce), tx=tx, epochs=epochs, batch_size=8,
                rng=jax.random.key(0), mask=mask)
  out, _, _ = loop.unlearn_loop(model, params, {}, forget, retain, mask_mode="gradient", **kwargs)
  steps = epochs * (16 // 8 + 32 // 8)
  for p, o, m in zip(jax.tree.leaves(params), jax.tree.leaves(out), jax.tree.leaves(mask)):
    p, o, m = (np.asarray(a, np.float64) for a in (p, o, m))
    m = m.astype(bool)
    w, v = p[~m].copy(), np.zeros_like(p[~m])
    for _ in range(steps):
      v = mu * v + wd * w
      w = w - lr * v
    np.testing.assert_allclose(o[~m], w, rtol=1e-5, atol=1e-7)
    assert np.all(np.abs(o[~m]) < np.abs(p[~m]))  # they did decay
  frozen, _, _ = loop.unlearn_loop(model, params, {}, forget, retain, mask_mode="freeze", **kwargs)
  for p, f, m in zip(*(jax.tree.leaves(t) for t in (params, frozen, mask))):
    np.testing.assert_array_equal(np.asarray(f)[~np.asarray(m)], np.asarray(p)[~np.asarray(m)])
  # the selected weights differ too: in 'gradient' mode the decayed masked weights change the gradients
  flat = lambda t: np.concatenate([np.asarray(a)[np.asarray(m)] for a, m in zip(jax.tree.leaves(t), jax.tree.leaves(mask))])
  assert not np.allclose(flat(frozen), flat(out))
  with pytest.raises(ValueError, match="mask_mode"):
    loop.unlearn_loop(model, params, {}, forget, retain, mask_mode="both", **kwargs)


def test_masked_weights_stay_bit_identical_with_decay_and_momentum():
  model, params, _ = linear_setup()
  forget, retain = toy(16, 5), toy(32, 6)
  mask = saliency.saliency_mask(jax.tree.map(lambda p: jnp.abs(p) + 0.1, params), fraction=0.5)
  tx = optax.chain(optax.add_decayed_weights(5e-2), optax.sgd(0.1, momentum=0.9))
  ce = obj.cross_entropy(model)
  out, _, _ = loop.unlearn_loop(model, params, {}, forget, retain, objective=loop.Objective(obj.random_labels(model), ce),
                                tx=tx, epochs=5, batch_size=8, rng=jax.random.key(0), mask=mask)  # 10 steps/epoch
  for p, o, m in zip(jax.tree.leaves(params), jax.tree.leaves(out), jax.tree.leaves(mask)):
    p, o, m = map(np.asarray, (p, o, m))
    np.testing.assert_array_equal(o[~m], p[~m])
    assert np.all(o[m] != p[m])


digits_setup = method_checks.digits_setup


ITERATIVE = ("ft", "ga", "neggrad_plus", "rl", "l1_sparse", "salun", "salun_soft")


@pytest.mark.parametrize("name", ITERATIVE)
def test_methods_run_keep_structure_and_are_deterministic(name):
  model, params, state, splits = digits_setup()
  method = unlearning.get_method(name)
  method_checks.check_method_contract(method, model, params, state, splits, {"epochs": 1, "batch_size": 128,
                                                                            "lr": 0.01})


def test_method_options_are_checked_and_complete():
  cfg = unlearning.method_config("salun", lr=0.5)
  assert cfg.lr == 0.5 and cfg.fraction == 0.5 and cfg.name == "salun"
  model, params, state, splits = digits_setup()
  with pytest.raises(ValueError, match="method.learning_rate"):
    unlearning.get_method("rl")(model, params, state, splits.forget, splits.retain, config={"learning_rate": 1},
                                rng=jax.random.key(0))
  with pytest.raises(ValueError, match="unknown unlearning method"):
    unlearning.get_method("forget_everything")


def test_gradient_ascent_blow_up_raises_floating_point_error():
  model, params, state, splits = digits_setup()
  with pytest.raises(FloatingPointError, match="epoch"):
    unlearning.get_method("ga")(model, params, state, splits.forget, None,
                                config={"epochs": 30, "lr": 1e6, "momentum": 0.0}, rng=jax.random.key(0))


def test_joint_anchor_sets_which_split_an_epoch_walks():
  """``anchor='forget'``: one step per forget batch, retain cycled; ``'retain'`` (default): one per retain batch."""
  x = jnp.arange(40, dtype=jnp.float32)[:, None]
  forget, retain = Split(x[:8], jnp.zeros(8, jnp.int32)), Split(x[8:], jnp.zeros(32, jnp.int32))
  # each step lowers w by exactly 0.1 (d loss / d w = 1) and reports the sum of its batch's rows
  term = lambda p, s, b, r, e: (0.5 * p["w"], (s, {"rows": jnp.sum(b[0])}))
  objective = loop.Objective(forget=term, retain=term)
  for anchor, steps, walked, total in (("forget", 2, "forget_rows", float(x[:8].sum())),
                                       ("retain", 8, "retain_rows", float(x[8:].sum()))):
    params, _, hist = loop.unlearn_loop(None, {"w": jnp.ones(())}, {}, forget, retain, objective=objective,
                                        tx=optax.sgd(0.1), epochs=1, batch_size=4, rng=jax.random.key(0),
                                        schedule="joint", anchor=anchor)
    assert float(params["w"]) == pytest.approx(1.0 - 0.1 * steps), anchor
    assert hist[f"joint_{walked}"][0] * steps == pytest.approx(total), (anchor, hist)  # every row once
  with pytest.raises(ValueError, match="anchor"):
    loop.unlearn_loop(None, {"w": jnp.ones(())}, {}, forget, retain, objective=objective, tx=optax.sgd(0.1),
                      epochs=1, batch_size=4, rng=jax.random.key(0), schedule="joint", anchor="both")


def test_every_method_refuses_labels_outside_the_model_and_an_empty_forget_split():
  import dataclasses  # pylint: disable=g-import-not-at-top
  model, params, state, splits = digits_setup()
  f, r = splits.forget, splits.retain
  bad_forget = dataclasses.replace(f, y=f.y.at[3].set(10))  # the MLP scores classes 0..9
  bad_retain = dataclasses.replace(r, y=r.y.at[0].set(-1))
  empty = f.take(np.zeros(0, np.int32))
  labels = [((bad_forget, r), r"forget: label 10 is not a class of the model \(its logits score 10 classes"),
            ((f, bad_retain), "retain: label -1 is not a class")]
  names = [n for n in unlearning.names() if n not in unlearning.BASELINES]
  for i, name in enumerate(names):  # one shared check: each method meets one of the label cases, and the empty
    method = unlearning.get_method(name)
    for (forget, retain), match in (labels[i % 2], ((empty, r), r"forget: the split is empty \(0 rows\)")):
      with pytest.raises(ValueError, match=match):
        method(model, params, state, forget, retain, rng=jax.random.key(0))


def test_split_take_refuses_rows_outside_the_split():
  _, _, _, splits = digits_setup()
  f = splits.forget
  np.testing.assert_array_equal(f.take(np.array([f.size - 1, 0])).y, np.asarray(f.y)[[-1, 0]])
  for rows in ([f.size], [-1], [0, f.size + 5]):
    with pytest.raises(ValueError, match=rf"Split.take: rows: position -?\d+ is outside \[0, {f.size}\)"):
      f.take(np.array(rows))
  assert jax.jit(lambda rows: f.take(rows).y)(jnp.arange(2)).shape == (2,)  # traced rows pass unchecked
  mask = np.arange(f.size) % 3 == 0  # a boolean mask takes its True rows, every leaf alike
  got, host = f.take(mask), f.to_numpy().take(mask)
  for leaf, want in zip(jax.tree.leaves((got, host)), 2 * [np.asarray(a)[mask] for a in jax.tree.leaves(f)]):
    np.testing.assert_array_equal(leaf, want)
  assert isinstance(got.x, jax.Array) and isinstance(host.x, np.ndarray)  # a host split stays on the host
  with pytest.raises(ValueError, match=rf"boolean rows mask needs shape \({f.size},\)"):
    f.take(mask[1:])


class DropoutNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(6)(x))))


def test_rl_shared_term_is_the_forget_term_or_the_retain_term():
  """`objectives.random_or_true_labels` (RL's phases in one step) gives the random-label term's loss and gradients
  where ``forget``, the cross-entropy's elsewhere, dropout keys included."""
  model, params, _ = model_lib.init(DropoutNet(), jax.random.key(0), jnp.zeros((1, 4)))
  batch, key = (toy(8, 5).x, toy(8, 5).y), jax.random.key(7)

  @jax.jit
  def grads(params):
    g = lambda term, *flag: jax.value_and_grad(term, has_aux=True)(params, {}, batch, key, jnp.int32(0), *flag)
    shared = obj.random_or_true_labels(model)
    return [(g(obj.random_labels(model)), g(shared, True)), (g(obj.cross_entropy(model)), g(shared, False))]

  (rl, rl_shared), (ce, ce_shared) = grads(params)
  for (want, want_g), (got, got_g) in ((rl, rl_shared), (ce, ce_shared)):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got_g, want_g)
  assert not np.isclose(rl[0][0], ce[0][0])


def test_per_step_loop_equals_the_scan():
  """``loop='steps'`` (one jitted step per batch; RL's two phases one step) takes the same batches, keys and steps
  as the whole-epoch scan: sequential phases with a gradient mask; a grid of joint steps, a key per point."""
  model, params, _ = linear_setup()
  forget, retain = toy(16, 5), toy(24, 6)
  objective = loop.Objective(obj.random_labels(model), obj.cross_entropy(model), obj.random_or_true_labels(model))
  tx = optax.chain(optax.add_decayed_weights(5e-2), optax.sgd(0.1, momentum=0.9))
  mask = saliency.saliency_mask(jax.tree.map(lambda p: jnp.abs(p) + 0.1, params), fraction=0.5)
  kw = dict(objective=objective, tx=tx, epochs=2, batch_size=8)
  runs = {
      "sequential": lambda lp: loop.unlearn_loop(model, params, {}, forget, retain, rng=jax.random.key(1),
                                                 mask=mask, mask_mode="gradient", loop=lp, **kw),
      "joint grid": lambda lp: loop.unlearn_grid(
          jax.tree.map(lambda p: jnp.stack([p, p + 0.1]), params), {}, forget, retain,
          make=lambda lr: (objective, optax.sgd(lr)), hypers=jnp.asarray([0.05, 0.1]), epochs=1, batch_size=8,
          rng=jax.random.split(jax.random.key(3), 2), stacked=True, schedule="joint", loop=lp)}
  close = lambda a, b: jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
  for name, run in runs.items():
    scan, steps = run("scan"), run("steps")
    close(steps[0], scan[0])
    assert set(steps[2]) == set(scan[2]), name
    for k in ("forget_loss", "retain_loss", "joint_loss", "retain_accuracy"):
      if k in scan[2]:
        close(np.asarray(steps[2][k]), np.asarray(scan[2][k]))
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(scan[0]), jax.tree.leaves(params)))
    assert moved > 1e-3, name
  with pytest.raises(ValueError, match="loop"):
    runs["sequential"]("while")
