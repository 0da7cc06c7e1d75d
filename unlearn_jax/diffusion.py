"""Class-conditional DDPM: the noise schedule, the ε-prediction loss and the DDPM / DDIM samplers.

A `DiffusionModel` bundles an ε-prediction function ``eps(params, x_t, t, c, *, rng=None)`` (``rng`` given:
train mode, dropout on), the `Schedule` and the number of classes; label ``num_classes`` is the null class of
classifier-free guidance. Everything here is a pure function of arrays and PRNG keys:

* `linear_schedule`: ``β_t`` linear from ``beta_start`` to ``beta_end`` over ``T`` steps, ``ᾱ_t = Π_{s<=t}(1-β_s)``.
* `diffusion_loss`: ``E‖ε − ε_θ(√ᾱ_t x₀ + √(1-ᾱ_t) ε, t, c̃)‖²`` summed over pixels and averaged over the batch,
  with ``c̃`` the label replaced by the null class with probability ``cond_drop``, and antithetic timesteps
  (``t`` and ``T-1-t`` in pairs), as the SalUn DDPM code computes it (``functions/losses.py``).
* `ddpm_step` (ancestral, ``σ_t² = β_t``, the "fixedlarge" variance, ``x̂₀`` clipped to [-1, 1]) and `ddim_step`
  (``η`` interpolating between DDIM, ``η=0``, and the DDPM-like ``η=1``), both over a sub-sequence of timesteps.
* `guided_eps`: ``(1+w)·ε(x, c) − w·ε(x, ∅)`` (the SalUn/Selective-Amnesia convention; ``w=0`` is the plain
  conditional prediction, and a diffusers-style scale ``s`` is ``w = s-1``).
* `make_sampler`: a jitted ``sample(params, labels, rng)`` that scans the chosen step over the timesteps.

Defaults follow the SalUn CIFAR-10 DDPM (``DDPM/configs/cifar10_*.yml``, ``sample.py``): ``T=1000``, β from 1e-4
to 0.02, condition dropout 0.1, the "generalized" (DDIM) sampler with ``η=1`` over uniformly skipped timesteps
and guidance scale ``w=2``.

References:
  Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (schedule, loss, ancestral step);
  Song, Meng and Ermon, "Denoising Diffusion Implicit Models", ICLR 2021 (the η-step);
  Ho and Salimans, "Classifier-Free Diffusion Guidance", 2022; Fan et al., "SalUn", ICLR 2024 (their ``DDPM/``).

Example:
    >>> dm = from_unet(UNet(channels=(32, 64)), linear_schedule())
    >>> loss = diffusion_loss(dm, params, x0, labels, jax.random.key(0))
    >>> sample = make_sampler(dm, image_shape=(8, 8, 1), steps=50, guidance=2.0)
    >>> images = sample(params, jnp.arange(10), jax.random.key(1))   # (10, 8, 8, 1) in [-1, 1]
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import train as train_lib

Pytree = Any
# eps(params, x_t, t, c, *, rng=None) -> ε prediction shaped like x_t; rng given: train mode (dropout).
EpsFn = Callable[..., jax.Array]
SAMPLERS = ("ddim", "ddpm")


class Schedule(NamedTuple):
  """The forward process: ``betas`` ``(T,)`` and ``alphas_cumprod`` ``ᾱ_t = Π_{s<=t}(1-β_s)`` ``(T,)``, float32."""
  betas: jax.Array
  alphas_cumprod: jax.Array

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


class DiffusionModel(NamedTuple):
  """An ε-prediction network with its schedule; label ``num_classes`` is the null (unconditional) class."""
  eps: EpsFn
  schedule: Schedule
  num_classes: int

  @property
  def null_class(self) -> int:
    return self.num_classes


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
  """DDPM's linear β schedule (``np.linspace(beta_start, beta_end, T)``, computed in float64, stored float32).

  Raises:
    ValueError: if ``num_timesteps < 1`` or the betas are not in (0, 1) with ``beta_start <= beta_end``.
  """
  if int(num_timesteps) != num_timesteps or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
  if not 0 < beta_start <= beta_end < 1:
    raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
  betas = np.linspace(beta_start, beta_end, int(num_timesteps), dtype=np.float64)
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))


def from_unet(module, schedule: Schedule) -> DiffusionModel:
  """Wraps a `unlearn_jax.models.diffusion.UNet` (any Linen module ``(x, t, c, train)``) as a `DiffusionModel`."""

  def eps(params, x, t, c, *, rng=None):
    rngs = None if rng is None else {"dropout": rng}
    return module.apply({"params": params}, x, t, c, train=rng is not None, rngs=rngs)

  return DiffusionModel(eps, schedule, int(module.num_classes))


def _per_example(a: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  return a[t].reshape((-1,) + (1,) * (ndim - 1))


def alpha_bar(schedule: Schedule, t: jax.Array) -> jax.Array:
  """``ᾱ_t`` with ``ᾱ_{-1} = 1`` (the clean image), for integer ``t`` in ``[-1, T)``."""
  padded = jnp.concatenate([jnp.ones((1,), jnp.float32), schedule.alphas_cumprod])
  return padded[jnp.asarray(t) + 1]


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """``x_t = √ᾱ_t·x₀ + √(1-ᾱ_t)·ε`` for per-example timesteps ``t`` ``(B,)``."""
  a = _per_example(schedule.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def antithetic_timesteps(rng: jax.Array, n: int, num_timesteps: int) -> jax.Array:
  """``n`` timesteps: ``n//2 + 1`` uniform draws ``t`` followed by ``T-1-t``, cut to ``n`` (the SalUn / DDIM code's
  variance reduction)."""
  t = jax.random.randint(rng, (n // 2 + 1,), 0, num_timesteps)
  return jnp.concatenate([t, num_timesteps - 1 - t])[:n]


def drop_condition(rng: jax.Array, c: jax.Array, prob: float, null_class: int) -> jax.Array:
  """``c`` with each label replaced by ``null_class`` with probability ``prob`` (classifier-free training)."""
  if prob <= 0:
    return c
  return jnp.where(jax.random.bernoulli(rng, prob, c.shape), null_class, c)


def noised(dm: DiffusionModel, x0: jax.Array, rng: jax.Array):
  """``(x_t, t, ε)``: ``x0`` noised at antithetic timesteps with fresh noise."""
  t_key, e_key = jax.random.split(rng)
  t = antithetic_timesteps(t_key, x0.shape[0], dm.schedule.num_timesteps)
  noise = jax.random.normal(e_key, x0.shape, jnp.float32)
  return q_sample(dm.schedule, x0, t, noise), t, noise


def diffusion_loss(dm: DiffusionModel, params: Pytree, x0: jax.Array, c: jax.Array, rng: jax.Array, *,
                   cond_drop: float = 0.1, train: bool = True) -> jax.Array:
  """``mean_batch Σ_pixels (ε − ε_θ(x_t, t, c̃))²`` with antithetic ``t`` and condition dropout ``cond_drop``.

  ``train``: run the network in train mode (dropout), as the reference does for training and unlearning.
  """
  noise_key, drop_key, net_key = jax.random.split(rng, 3)
  x_t, t, noise = noised(dm, x0, noise_key)
  c = drop_condition(drop_key, c, cond_drop, dm.null_class)
  pred = dm.eps(params, x_t, t, c, rng=net_key if train else None)
  return jnp.mean(jnp.sum(jnp.square(noise - pred).reshape(x0.shape[0], -1), axis=-1))


def diffusion_loss_fn(dm: DiffusionModel, *, cond_drop: float = 0.1):
  """The training loss in `unlearn_jax.train`'s form: ``loss_fn(params, state, (x0, c), rng)``."""

  def loss_fn(params, state, batch, rng):
    x0, c = batch
    return diffusion_loss(dm, params, x0, c, rng, cond_drop=cond_drop), (state, {})

  return loss_fn


def guided_eps(eps_cond: jax.Array, eps_uncond: jax.Array, scale: float) -> jax.Array:
  """Classifier-free guidance ``(1+w)·ε_c − w·ε_∅`` (``w=scale``; ``w=0`` gives ``ε_c``)."""
  return (1.0 + scale) * eps_cond - scale * eps_uncond


def guided_prediction(dm: DiffusionModel, params: Pytree, x: jax.Array, t: jax.Array, c: jax.Array,
                      scale: float) -> jax.Array:
  """`guided_eps` of the conditional and null-class predictions, computed in one batched (eval-mode) call."""
  if scale == 0:
    return dm.eps(params, x, t, c)
  both = dm.eps(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                jnp.concatenate([c, jnp.full_like(c, dm.null_class)]))
  eps_c, eps_u = jnp.split(both, 2)
  return guided_eps(eps_c, eps_u, scale)


def timestep_sequence(num_timesteps: int, steps: int) -> np.ndarray:
  """The sampled timesteps, ascending: ``range(0, T, T // steps)`` (the reference's uniform skip)."""
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
  return np.arange(0, num_timesteps, num_timesteps // steps, dtype=np.int32)


def ddpm_step(schedule: Schedule, x: jax.Array, eps: jax.Array, t, t_prev, noise: jax.Array, *,
              clip: bool = True) -> jax.Array:
  """One ancestral step ``x_t → x_{t_prev}`` (``t_prev = -1``: the last step, no noise added).

  With ``β = 1 − ᾱ_t/ᾱ_{t_prev}``: ``x̂₀ = (x − √(1-ᾱ_t)·ε)/√ᾱ_t`` (clipped to [-1, 1] if ``clip``), the posterior
  mean ``(√ᾱ_{t_prev}·β·x̂₀ + √(1-β)·(1-ᾱ_{t_prev})·x)/(1-ᾱ_t)`` and standard deviation ``√β``. For consecutive
  timesteps without clipping this is DDPM's ``(x − β_t/√(1-ᾱ_t)·ε)/√α_t + σ_t z``.
  """
  at, ap = alpha_bar(schedule, t), alpha_bar(schedule, t_prev)
  beta = 1.0 - at / ap
  x0 = (x - jnp.sqrt(1.0 - at) * eps) / jnp.sqrt(at)
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  mean = (jnp.sqrt(ap) * beta * x0 + jnp.sqrt(1.0 - beta) * (1.0 - ap) * x) / (1.0 - at)
  return mean + jnp.where(jnp.asarray(t_prev) >= 0, jnp.sqrt(beta), 0.0) * noise


def ddim_step(schedule: Schedule, x: jax.Array, eps: jax.Array, t, t_prev, noise: jax.Array, *,
              eta: float = 0.0) -> jax.Array:
  """One DDIM step ``x_t → x_{t_prev}``: ``√ᾱ_{prev}·x̂₀ + σ·z + √(1-ᾱ_{prev}-σ²)·ε`` with
  ``σ = η·√((1-ᾱ_prev)/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_prev))`` and ``x̂₀ = (x − √(1-ᾱ_t)·ε)/√ᾱ_t`` (Song et al., eq. 12)."""
  at, ap = alpha_bar(schedule, t), alpha_bar(schedule, t_prev)
  x0 = (x - jnp.sqrt(1.0 - at) * eps) / jnp.sqrt(at)
  sigma = eta * jnp.sqrt((1.0 - at / ap) * (1.0 - ap) / (1.0 - at))
  return jnp.sqrt(ap) * x0 + sigma * noise + jnp.sqrt(jnp.maximum(1.0 - ap - sigma ** 2, 0.0)) * eps


def make_sampler(dm: DiffusionModel, *, image_shape: tuple[int, ...], steps: int = 1000, sampler: str = "ddim",
                 eta: float = 1.0, guidance: float = 2.0, clip: bool = True, trajectory: bool = False):
  """A jitted ``sample(params, labels, rng)``: images for ``labels`` ``(B,)``, from pure noise, in [-1, 1].

  Args:
    dm: the model.
    image_shape: ``(H, W, C)``.
    steps: number of denoising steps over `timestep_sequence` (the reference uses all 1000).
    sampler: ``'ddim'`` (the reference's "generalized" steps, with ``eta``) or ``'ddpm'`` (ancestral).
    eta: DDIM's η (reference default 1.0).
    guidance: classifier-free guidance scale ``w`` of `guided_eps` (reference default 2.0).
    clip: clip the returned images (and DDPM's ``x̂₀``) to [-1, 1].
    trajectory: also return ``(xs, ts)``: the input ``x`` of every step ``(steps, B, H, W, C)`` and its timestep
      ``(steps,)``, in sampling order (noisiest first), for objectives that train on the model's own ``x_t`` (ESD).

  The loop over timesteps is one `jax.lax.scan`; each step uses a key folded from ``rng`` and the step index.

  Raises:
    ValueError: for an unknown ``sampler`` or ``steps`` outside ``[1, T]``.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler: unknown {sampler!r}; choose one of {SAMPLERS}")
  seq = timestep_sequence(dm.schedule.num_timesteps, steps)
  ts = jnp.asarray(seq[::-1].copy())
  prev = jnp.asarray(np.concatenate([[-1], seq[:-1]])[::-1].copy())
  shape = tuple(image_shape)

  def sample(params, labels, rng):
    labels = jnp.asarray(labels, jnp.int32)
    init_key, step_key = jax.random.split(rng)
    x = jax.random.normal(init_key, (labels.shape[0],) + shape, jnp.float32)

    def body(x, inp):
      i, t, t_prev = inp
      tb = jnp.full(labels.shape, t, jnp.int32)
      eps = guided_prediction(dm, params, x, tb, labels, guidance)
      noise = jax.random.normal(jax.random.fold_in(step_key, i), x.shape, jnp.float32)
      if sampler == "ddpm":
        x_next = ddpm_step(dm.schedule, x, eps, t, t_prev, noise, clip=clip)
      else:
        x_next = ddim_step(dm.schedule, x, eps, t, t_prev, noise, eta=eta)
      return x_next, (x if trajectory else None)

    x, xs = jax.lax.scan(body, x, (jnp.arange(ts.shape[0]), ts, prev))
    if clip:
      x = jnp.clip(x, -1.0, 1.0)
    return (x, xs, ts) if trajectory else x

  return jax.jit(sample)


LOOPS = ("scan", "python")


def resolve_loop(loop: str | None) -> str:
  """``loop`` checked, with ``None`` / ``'auto'`` resolved: ``'python'`` on the CPU backend, else ``'scan'``.

  Why: on XLA:CPU (jax 0.10.2, this project's 2-core machine) the backward pass of a convolution inside any while
  loop (`jax.lax.scan`, `fori_loop`) runs about 48x slower than the same step jitted alone and called from a
  Python loop (4 conv layers, batch 128 of 8x8 images: 1.9 s per step in the scan, 0.04 s per step in the Python
  loop). XLA flags and ``unroll=2`` did not help; only a program with no loop left is fast. Forward-only programs
  (sampling) are not affected, and on GPU the scan is the fast path.
  """
  loop = "python" if loop in (None, "auto") and jax.default_backend() == "cpu" else loop
  loop = "scan" if loop in (None, "auto") else loop
  if loop not in LOOPS:
    raise ValueError(f"loop: unknown {loop!r}; choose one of {LOOPS + ('auto',)}")
  return loop


def fit_diffusion(dm: DiffusionModel, params: Pytree, split, cfg, *, rng: jax.Array, cond_drop: float = 0.1,
                  grad_clip: float = 1.0, log: Callable[[str], None] | None = None, checkpoints=None,
                  desc: str = "train", loop: str | None = "auto"):
  """Trains ``params`` on ``split`` (images in [-1, 1], labels) by the project's one loop; returns ``(params, history)``.

  `unlearn_jax.train.make_epoch_fn` with `diffusion_loss_fn` (whole-epoch scan, donated buffers; ``loop='scan'``)
  or its step-per-batch form (``loop='python'``, `make_epoch_fn`'s ``loop='steps'``, the default on CPU: see
  `resolve_loop`, XLA:CPU runs conv backward passes inside a scan ~48x slower), and `unlearn_jax.train.run_epochs` (one host sync
  per epoch, progress checkpoints); the optimiser is `unlearn_jax.train.make_optimizer` of ``cfg`` after
  global-norm clipping to ``grad_clip`` (0: none), as the SalUn DDPM training clips to 1.0. Not done: the
  reference's CIFAR-10 training keeps an EMA of the weights (rate 0.9999) and samples from it; here the raw
  weights are used.
  """
  batch_size = min(int(cfg.batch_size), split.size)
  tx = train_lib.make_optimizer(cfg, split.num_batches(batch_size))
  if grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  epoch_fn = train_lib.make_epoch_fn(diffusion_loss_fn(dm, cond_drop=cond_drop), tx, batch_size=batch_size,
                                     loop="steps" if resolve_loop(loop) == "python" else "scan")
  params, _, history = train_lib.run_epochs(epoch_fn, tx, params, {}, (split.x, split.y), int(cfg.epochs), rng=rng,
                                            log=log, checkpoints=checkpoints, desc=desc)
  return params, history
