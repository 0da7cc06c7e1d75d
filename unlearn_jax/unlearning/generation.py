"""Unlearning a class of a class-conditional diffusion model: SalUn, RL, GA and ESD, each an objective of `loop`.

Every method is ``method(dm, params, state, forget, retain, *, config, rng) -> (params, state)`` with ``dm`` a
`unlearn_jax.diffusion.DiffusionModel`, ``forget`` / ``retain`` `Split`\\ s of images in [-1, 1] with their
class labels, and ``state`` ``{}`` (the diffusion U-Net has none). They register in `GENERATION_METHODS` (not in
the classification `unlearn_jax.unlearning.REGISTRY`) with `register_generation`; `generation_options` fills the
defaults and rejects unknown options with a ValueError naming them.

Methods (defaults from the SalUn DDPM code, ``DDPM/runners/diffusion.py`` ``saliency_unlearn`` and
``configs/cifar10_saliency_unlearn.yml``: Adam, lr 1e-4, gradient norm clipped to 1, batch 128, 1000 iterations,
i.e. about 3 passes over CIFAR-10's 45,000 retain images, one retain and one forget batch per step,
``loss = forget + α·retain`` with ``α = 1e-3`` as in their README command):

  salun: the forget class's conditional prediction is pulled towards another class's (``MSE(ε_θ(x_t, c_f),
    sg[ε_θ(x_t, c')])`` with ``c' = (c_f + 1) mod K``, the reference's "rl" pseudo label) plus ``α`` times the
    retain diffusion loss, updating only the weights of the saliency mask: the top ``fraction`` (0.5) of
    ``|Σ_batches clip(∇θ forget diffusion loss)|``, the loss taken on the guided prediction (scale 2), each batch
    gradient clipped to norm 1 as the reference's ``generate_mask`` does. The mask zeroes the Adam updates of the
    other weights after the global-norm clip; with no weight decay this equals the reference's ``param.grad *=
    mask`` between its clip and ``optimizer.step()``.
  rl: the same objective on all weights (SalUn without the mask).
  ga: ascent on the forget class's diffusion loss plus ``α`` times the retain loss (the reference's ``ga``).
  esd: Erased Stable Diffusion's negative guidance: ``MSE(ε_θ(x_t, c_f), ε*(x_t, ∅) − η·(ε*(x_t, c_f) −
    ε*(x_t, ∅)))`` against the frozen Original ``ε*``, no retain term. As in the ESD code (``esd_sd.py``: Adam,
    lr 5e-5, the frozen model's own DDIM trajectory for the erased concept with guidance 3 = our ``w=2``, stopped
    at a random step of 50), ``x_t`` comes from the Original's guided samples of the forget class by default
    (``xt_source='sample'``; ``'data'`` noises the forget images instead). ``η = 1`` is the paper's and equals the
    code's ``negative_guidance=2`` in its ``ε_c − g·(ε_c − ε_∅)`` form. ESD for Stable Diffusion trains only the
    cross-attention (``esd-x``); this U-Net has no cross-attention, so all weights train (``esd-u``-like).
    SalUn's own ESD baseline (``train_esd``) differs: batch 1 for 10,000 steps, ``x_t`` from the model being
    trained rather than the frozen one; here the pool is sampled once from the frozen Original, so the loop is
    one whole-epoch scan.

Common options: ``optimizer``, ``lr``, ``weight_decay``, ``schedule``, ``epochs`` (passes over the retain set in
joint steps, or over the forget set / ESD pool without a retain term), ``batch_size``, ``grad_clip`` (0: none),
``cond_drop`` (condition dropout of the terms, 0.1 as the reference's train-mode calls), ``loop`` (``'scan'``: the
project's whole-epoch scan; ``'python'``: one jitted step per batch from Python; ``'auto'``: python on CPU, where
XLA runs conv backward passes inside a scan ~48x slower, see `unlearn_jax.diffusion.resolve_loop`).

References:
  Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
  Classification and Generation", ICLR 2024; Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023.

Example:
    >>> params, _ = GENERATION_METHODS['salun'](dm, params, {}, forget, retain, config={'epochs': 30},
    ...                                         rng=jax.random.key(0))
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from unlearn_jax import diffusion as diffusion_lib
from unlearn_jax import train as train_lib
from unlearn_jax.data import split as split_lib
from unlearn_jax.unlearning import keyword_method, loop, objectives, options, saliency

Pytree = Any
# name -> method function, and name -> default options (the classification REGISTRY stays untouched).
GENERATION_METHODS: dict[str, Callable] = {}
GENERATION_DEFAULTS: dict[str, dict] = {}
TARGETS = ("next", "random")
XT_SOURCES = ("sample", "data")

LOOP_DEFAULTS = dict(optimizer="adam", lr=1e-4, weight_decay=0.0, schedule="constant", epochs=3, batch_size=128,
                     grad_clip=1.0, cond_drop=0.1, loop="auto")


def register_generation(name: str, **defaults) -> Callable[[Callable], Callable]:
  """Decorator adding a generation-unlearning method to `GENERATION_METHODS` with its default options; the method
  takes keyword options too (`unlearn_jax.unlearning.keyword_method`)."""

  def wrap(fn):
    if name in GENERATION_METHODS:
      raise ValueError(f"generation unlearning method {name!r} is registered twice")
    method = keyword_method(name, fn, defaults, options_fn=lambda config: generation_options(config, name),
                            first="dm", where="unlearn_jax.unlearning.generation")
    GENERATION_METHODS[name] = method
    GENERATION_DEFAULTS[name] = defaults
    return method

  return wrap


def get_generation_method(name: str) -> Callable:
  """The registered method ``name``; ValueError listing the known names otherwise."""
  if name not in GENERATION_METHODS:
    raise ValueError(f"unknown generation unlearning method {name!r}; choose one of {sorted(GENERATION_METHODS)}")
  return GENERATION_METHODS[name]


def generation_options(config, name: str) -> ml_collections.ConfigDict:
  """``name``'s options: its defaults updated with ``config``; ValueError naming an unknown option."""
  get_generation_method(name)
  return options(config, name, **GENERATION_DEFAULTS[name])


def method_config(name: str, overrides=None) -> ml_collections.ConfigDict:
  """Every option of ``name`` (defaults updated with ``overrides``), for ``config.methods.<name>``."""
  return generation_options(overrides or {}, name)


# ---------------------------------------------------------------------------------------------------------------
# Terms: loss(params, state, (x, y), rng, epoch) -> (loss, (state, metrics)).
# ---------------------------------------------------------------------------------------------------------------
def diffusion_term(dm, *, cond_drop: float):
  """The diffusion loss of the batch's images under their own labels."""

  def term(params, state, batch, rng, epoch):
    del epoch
    x0, c = batch
    loss = diffusion_lib.diffusion_loss(dm, params, x0, c, rng, cond_drop=cond_drop)
    return loss, (state, {"diffusion": loss})

  return term


def other_class(rng: jax.Array, c: jax.Array, num_classes: int, target: str) -> jax.Array:
  """The class the forget prediction is pulled to: ``(c+1) mod K`` (``'next'``, the reference) or a uniform
  class different from ``c`` (``'random'``)."""
  if target == "next":
    return (c + 1) % num_classes
  return (c + jax.random.randint(rng, c.shape, 1, num_classes)) % num_classes


def relabel_term(dm, *, cond_drop: float, target: str):
  """``mean (ε_θ(x_t, c̃_f) − sg[ε_θ(x_t, c̃')])²`` at noised forget images (each label dropped with ``cond_drop``
  independently, as the reference's two train-mode calls do)."""

  def term(params, state, batch, rng, epoch):
    del epoch
    x0, c = batch
    noise_key, target_key, d1, d2, n1, n2 = jax.random.split(rng, 6)
    x_t, t, _ = diffusion_lib.noised(dm, x0, noise_key)
    pseudo = other_class(target_key, c, dm.num_classes, target)
    out = dm.eps(params, x_t, t, diffusion_lib.drop_condition(d1, c, cond_drop, dm.null_class), rng=n1)
    goal = dm.eps(params, x_t, t, diffusion_lib.drop_condition(d2, pseudo, cond_drop, dm.null_class), rng=n2)
    loss = jnp.mean(jnp.square(out - jax.lax.stop_gradient(goal)))
    return loss, (state, {"relabel": loss})

  return term


def negative_guidance_term(dm, *, eta: float, from_data: bool):
  """ESD: ``mean (ε_θ(x_t, c_f) − [ε*_∅ − η(ε*_c − ε*_∅)])²``, ``ε*`` the frozen ``state['frozen']`` parameters.

  ``from_data``: the batch holds clean forget images, noised here; else it holds ``{'x_t', 't'}`` drawn from the
  frozen model's trajectories (`esd_pool`).
  """

  def term(params, state, batch, rng, epoch):
    del epoch
    x, c = batch
    noise_key, net_key = jax.random.split(rng)
    if from_data:
      x_t, t, _ = diffusion_lib.noised(dm, x, noise_key)
    else:
      x_t, t = x["x_t"], x["t"]
    frozen = state["frozen"]
    both = dm.eps(frozen, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                  jnp.concatenate([c, jnp.full_like(c, dm.null_class)]))
    eps_c, eps_u = jnp.split(both, 2)
    goal = jax.lax.stop_gradient(eps_u - eta * (eps_c - eps_u))
    loss = jnp.mean(jnp.square(dm.eps(params, x_t, t, c, rng=net_key) - goal))
    return loss, (state, {"esd": loss})

  return term


# ---------------------------------------------------------------------------------------------------------------
# Saliency of the forget class's diffusion loss.
# ---------------------------------------------------------------------------------------------------------------
def diffusion_saliency(dm, params: Pytree, forget: split_lib.Split, *, rng: jax.Array, batch_size: int = 128,
                       guidance: float = 2.0, clip: float = 1.0, loop: str | None = "auto") -> Pytree:
  """``|Σ_batches clip(∇θ L_b)|`` with ``L_b = mean_batch Σ_pixels (ε − ε̃_θ(x_t, t, c))²`` on forget batches.

  ``ε̃`` is the guided prediction (`diffusion.guided_prediction`, scale ``guidance``, eval mode) and each batch's
  gradient is clipped to global norm ``clip`` (0: no clipping) before it is summed, as the SalUn
  ``generate_mask`` does (it clips in place before reading the gradient). Every forget image is used once (the
  last batch wraps around to fill). ``loop``: ``'scan'`` over the batches or one jitted batch per Python step
  (`unlearn_jax.diffusion.resolve_loop`; same keys and batches).
  """
  bs = min(batch_size, forget.size)

  def loss(p, x0, c, key):
    x_t, t, noise = diffusion_lib.noised(dm, x0, key)
    pred = diffusion_lib.guided_prediction(dm, p, x_t, t, c, guidance)
    return jnp.mean(jnp.sum(jnp.square(noise - pred).reshape(x0.shape[0], -1), axis=-1))

  def add(p, acc, x0, c, key):
    g = jax.grad(loss)(p, x0, c, key)
    if clip:
      g = optax.clip_by_global_norm(clip).update(g, optax.EmptyState())[0]
    return jax.tree.map(jnp.add, acc, g)

  @jax.jit
  def batches(x, y, rng):
    xb, yb = split_lib.batch_arrays((x, y), bs, None, drop_remainder=False)
    return xb, yb, jax.random.split(rng, yb.shape[0])

  xb, yb, keys = batches(forget.x, forget.y, rng)
  zeros = jax.tree.map(jnp.zeros_like, params)
  if diffusion_lib.resolve_loop(loop) == "scan":
    total = jax.jit(lambda p, z, seqs: jax.lax.scan(lambda acc, inp: (add(p, acc, *inp), None), z, seqs)[0])(
        params, zeros, (xb, yb, keys))
  else:  # one jitted batch gradient per step (conv backward passes inside a scan are slow on XLA:CPU)
    step = jax.jit(lambda p, acc, xb, yb, keys, i: add(p, acc, xb[i], yb[i], keys[i]), donate_argnums=1)
    total = zeros
    for i in range(yb.shape[0]):
      total = step(params, total, xb, yb, keys, i)
  return jax.tree.map(jnp.abs, total)


def esd_pool(dm, params: Pytree, labels: jax.Array, *, rng: jax.Array, image_shape, steps: int,
             guidance: float, eta: float = 1.0) -> split_lib.Split:
  """ESD's training inputs: for each label, the frozen model's DDIM trajectory stopped at a uniform random step.

  Returns a `Split` with ``x = {'x_t', 't'}`` and ``y = labels``.
  """
  sample = diffusion_lib.make_sampler(dm, image_shape=image_shape, steps=steps, eta=eta, guidance=guidance,
                                      trajectory=True)
  sample_key, stop_key = jax.random.split(rng)
  _, xs, ts = sample(params, labels, sample_key)
  stop = jax.random.randint(stop_key, labels.shape, 0, ts.shape[0])
  x_t = xs[stop, jnp.arange(labels.shape[0])]
  return split_lib.Split(x={"x_t": x_t, "t": ts[stop]}, y=jnp.asarray(labels, jnp.int32))


# ---------------------------------------------------------------------------------------------------------------
# Methods.
# ---------------------------------------------------------------------------------------------------------------
def _run(params, state, forget, retain, objective: loop.Objective, opts, rng, *, mask=None):
  """Adam (or ``opts.optimizer``) with norm clipping, one retain + one forget batch per step; `loop.unlearn_loop`
  (``opts.loop='scan'``) or its step-per-batch twin `python_unlearn_loop` (``'python'``, the default on CPU, see
  `unlearn_jax.diffusion.resolve_loop`)."""
  bs = opts.batch_size
  joint = objective.forget is not None and objective.retain is not None
  anchor = retain if objective.retain is not None else forget
  steps = anchor.num_batches(min(bs, anchor.size))
  tx = train_lib.make_optimizer(opts, steps)
  if opts.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(opts.grad_clip), tx)
  run = python_unlearn_loop if diffusion_lib.resolve_loop(opts.loop) == "python" else loop.unlearn_loop
  return run(None, params, state, forget, retain, objective=objective, tx=tx, epochs=opts.epochs, batch_size=bs,
             rng=rng, schedule="joint" if joint else "sequential", mask=mask)


def python_unlearn_loop(model, params, state, forget, retain, *, objective: loop.Objective, tx, epochs: int,
                        batch_size: int, rng: jax.Array, schedule: str = "sequential", mask=None):
  """`loop.unlearn_loop` (no mesh, augmentation or forget-only epochs; retain-anchored joint steps; ``'freeze'``
  mask) with one jitted, donating step per batch called from Python instead of a whole-epoch scan.

  Same keys and batches as the scan: epoch keys ``split(rng, epochs)``, one key per phase, the joint phase's
  ``split(key, 3)`` into the retain shuffle, the cycled forget batches and the step keys (a sequential phase:
  ``split(key)`` into the shuffle and the step keys), the same `loop.term_step`. Losses stay on device until the
  epoch's end. Returns ``(params, state, history)`` with per-epoch mean ``<phase>_loss``.
  """
  del model
  tx = loop.masked_optimizer(tx, mask)
  params, state = train_lib.fresh_copy((params, state))
  opt_state = tx.init(params)
  phases = []
  if schedule == "joint" and objective.forget is not None and objective.retain is not None:
    rbs, fbs = min(batch_size, retain.size), min(batch_size, forget.size)

    def joint_loss(params, state, batches, rng, epoch):
      k1, k2 = jax.random.split(rng)  # as loop.unlearn_loop's joint step
      lf, (state, _) = objective.forget(params, state, batches[0], k1, epoch)
      lr, (state, _) = objective.retain(params, state, batches[1], k2, epoch)
      return lf + lr, (state, {})

    def joint_batches(fx, fy, rx, ry, rng):
      anchor_rng, cycled_rng, step_rng = jax.random.split(rng, 3)
      rb = split_lib.batch_arrays((rx, ry), rbs, anchor_rng)
      fb = loop.cycled_batches((fx, fy), fbs, rb[1].shape[0], cycled_rng)
      return (fb, rb), jax.random.split(step_rng, rb[1].shape[0])

    phases.append(("joint", joint_loss, joint_batches, (forget.x, forget.y, retain.x, retain.y)))
  else:
    for name, term, split in (("forget", objective.forget, forget), ("retain", objective.retain, retain)):
      if term is not None:
        def one_batches(x, y, rng, bs=min(batch_size, split.size)):
          perm_rng, step_rng = jax.random.split(rng)
          xb, yb = split_lib.batch_arrays((x, y), bs, perm_rng)
          return ((xb, yb),), jax.random.split(step_rng, yb.shape[0])
        phases.append((name, term, one_batches, (split.x, split.y)))

  def make_step(term):
    step = loop.term_step(term, tx, None)
    return jax.jit(lambda p, s, o, seqs, keys, i, epoch: step(p, s, o, jax.tree.map(lambda a: a[i], seqs),
                                                              keys[i], epoch), donate_argnums=(0, 1, 2))

  phases = [(name, make_step(term), jax.jit(batches), arrays) for name, term, batches, arrays in phases]
  history: dict[str, list] = {}
  for epoch, key in enumerate(jax.random.split(rng, epochs)):
    outputs = []
    for (name, step, batches, arrays), pkey in zip(phases, jax.random.split(key, len(phases))):
      seqs, keys = batches(*arrays, pkey)
      losses = []
      for i in range(keys.shape[0]):
        params, state, opt_state, loss, _ = step(params, state, opt_state, seqs, keys, i, jnp.int32(epoch))
        losses.append(loss)
      outputs.append((name, jnp.stack(losses)))
    for name, losses in jax.device_get(outputs):  # the one host sync of the epoch
      train_lib.check_finite(np.asarray(losses), epoch, what=f"{name} loss")
      history.setdefault(f"{name}_loss", []).append(float(np.mean(losses)))
  return params, state, history


RELABEL_DEFAULTS = dict(LOOP_DEFAULTS, alpha=1e-3, target="next")


def _check(opts, key: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"option {key}={value!r}: choose one of {allowed}")


def _relabel(dm, params, state, forget, retain, opts, rng, mask=None):
  _check(opts, "target", opts.target, TARGETS)
  objective = loop.Objective(forget=relabel_term(dm, cond_drop=opts.cond_drop, target=opts.target),
                             retain=objectives.scaled(diffusion_term(dm, cond_drop=opts.cond_drop), opts.alpha))
  params, state, _ = _run(params, state, forget, retain, objective, opts, rng, mask=mask)
  return params, state


@register_generation("salun", **RELABEL_DEFAULTS, fraction=0.5, saliency_guidance=2.0, saliency_batch_size=128)
def salun(dm, params, state, forget, retain, *, config, rng):
  """SalUn for generation: relabelling + ``α``·retain loss on the top-``fraction`` salient weights."""
  opts = generation_options(config, "salun")
  mask_key, run_key = jax.random.split(rng)
  grads = diffusion_saliency(dm, params, forget, rng=mask_key, batch_size=opts.saliency_batch_size,
                             guidance=opts.saliency_guidance, clip=opts.grad_clip, loop=opts.loop)
  mask = saliency.saliency_mask(grads, fraction=opts.fraction)
  return _relabel(dm, params, state, forget, retain, opts, run_key, mask=mask)


@register_generation("rl", **RELABEL_DEFAULTS)
def relabel(dm, params, state, forget, retain, *, config, rng):
  """RL for generation: SalUn's objective on every weight."""
  return _relabel(dm, params, state, forget, retain, generation_options(config, "rl"), rng)


@register_generation("ga", **{**LOOP_DEFAULTS, "alpha": 1e-3})
def gradient_ascent(dm, params, state, forget, retain, *, config, rng):
  """GA: ``−L_diffusion(forget) + α·L_diffusion(retain)`` (``alpha=0``: pure ascent, no retain term)."""
  opts = generation_options(config, "ga")
  objective = loop.Objective(forget=objectives.negated(diffusion_term(dm, cond_drop=opts.cond_drop)),
                             retain=(objectives.scaled(diffusion_term(dm, cond_drop=opts.cond_drop), opts.alpha)
                                     if opts.alpha else None))
  params, state, _ = _run(params, state, forget, retain if opts.alpha else None, objective, opts, rng)
  return params, state


@register_generation("esd", **{**LOOP_DEFAULTS, "lr": 5e-5, "grad_clip": 0.0, "epochs": 1, "eta": 1.0,
                               "xt_source": "sample", "pool_size": 0, "sample_steps": 50, "sample_guidance": 2.0})
def esd(dm, params, state, forget, retain, *, config, rng):
  """ESD negative guidance against the frozen Original; ``x_t`` from its own samples (``pool_size`` of them,
  0: as many as forget images; ``sample_steps`` DDIM steps, guidance ``sample_guidance``) or from the data."""
  del retain
  opts = generation_options(config, "esd")
  _check(opts, "xt_source", opts.xt_source, XT_SOURCES)
  pool_key, run_key = jax.random.split(rng)
  if opts.xt_source == "sample":
    n = opts.pool_size or forget.size
    labels = jnp.resize(forget.y, (n,))
    forget = esd_pool(dm, params, labels, rng=pool_key, image_shape=forget.x.shape[1:], steps=opts.sample_steps,
                      guidance=opts.sample_guidance)
  objective = loop.Objective(forget=negative_guidance_term(dm, eta=opts.eta, from_data=opts.xt_source == "data"))
  params, out_state, _ = _run(params, {**state, "frozen": params}, forget, None, objective, opts, run_key)
  del out_state
  return params, state
