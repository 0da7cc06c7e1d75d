r"""LAF: label-agnostic forgetting — unlearning at the representation level without labels.

LAF changes the feature extractor ``e = features(θ, x)`` (the penultimate embedding) so that forget embeddings
become unlike what the extractor produced for them, while the retain embeddings stay where the Original put them.
No label of the forget set (nor, by default, of the retain set) is read. Stages, as in the authors' code:

1. **VAE training.** Two small VAEs are fitted to the frozen Original's embeddings ``e₀ = features(θ₀, x)``:
   ``s_vae`` on the whole training set (forget ∪ retain; the paper's approximation of the remaining-data
   distribution by the training distribution) and ``u_vae`` on the forget set. Loss per batch of ``B``
   embeddings (`vae_loss`)::

       Σᵢ ‖dec(zᵢ) − eᵢ‖² / B + β · Σᵢ KL(N(μᵢ, σᵢ²) ‖ N(0, I)) / B,   zᵢ = μᵢ + σᵢ ⊙ εᵢ,   β = ``kld_weight``

   trained with Adam(``vae_lr``) for ``vae_epochs`` epochs of shuffled batches of ``batch_size``.
2. **Extractor unlearning (UE) and representation alignment (RA), alternated every step** for ``epochs``
   epochs. Each step takes one forget batch and one retain batch; an epoch has as many steps as there are forget
   batches (the reference zips the forget loader with the retain loader, so the shorter forget set sets the
   length). With ``m = ‖dec(z) − e‖²`` the VAE reconstruction error of an embedding ``e = features(θ, x)`` (``z``
   sampled from the encoder, gradients flow into θ through both the VAE input and the target):

   * UE, one Adam(``lr_ue``) step on θ (`extractor_loss`)::

         L_UE = Σ_retain exp(m/(m+1)) [s_vae] − Σ_forget exp(m/(m+1)) [u_vae]

     (retain embeddings stay reconstructible by the training-data VAE, forget embeddings leave the manifold the
     forget VAE learnt);
   * then, at the updated θ, RA, one Adam(``lr_ra``) step with its own Adam state (`alignment_loss`), with
     ``d = 1 − cos(features(θ, x), features(θ₀, x))``::

         L_RA = Σ_r log[ exp(d_r) / Σ_f exp(d_f / temp) ] = Σ_r d_r − B_r · log Σ_f exp(d_f / temp)

     (retain embeddings are pulled back to the Original's, forget embeddings pushed away from theirs).
3. **Classifier fine-tune (LAF+R, optional, uses retain labels).** With ``classifier_epochs > 0`` the
   classifier head (every parameter the embedding does not depend on, found from the jaxpr of
   ``model.features``) is fine-tuned with cross-entropy on the retain set, Adam(``classifier_lr``), network in
   eval mode. This is the reference's ``classifier_unlearning``, which the paper uses only when some labels are
   available; the supervision-free LAF of the paper's tables stops after stage 2, and so does the default here.

The network runs in eval mode throughout (BatchNorm statistics are used, never updated, and ``state`` is
returned unchanged), as in the reference, whose model is left in eval mode by the evaluation that precedes
unlearning. Classifier parameters receive exactly zero gradient in stages 1–2 (the embedding does not depend on
them), so Adam leaves them bit-identical.

Defaults are the reference's for its MNIST/Fashion-MNIST CNN with random-data forgetting (``hyperparameter.md``
and ``Train.py``): latent 8, VAE hidden widths (128, 32), sigmoid decoder output, ``kld_weight`` 0.025, VAE Adam
1e-3 for 10 epochs, batch 32, 20 unlearning epochs, ``lr_ue`` 5e-5, ``lr_ra`` 1e-4, ``temp`` 5 (20 for class
unlearning; CIFAR-10/SVHN ResNet: latent 16, 40 epochs, 1e-5 / 4e-5, temp 20 or 5).

Differences from the reference code:

* The embedding is ``Model.features`` of our networks, the input of the classifier (after the last ReLU); the
  reference's CNN embeds with a linear layer and classifies with two more linear layers. The VAE width follows the
  embedding size of the network (the reference hard-codes 256).
* Batches are full-sized: the last forget batch of an epoch is filled by wrapping around to the start of the
  shuffled order instead of being short; retain batches are drawn from fresh permutations, cycled if the retain
  set is smaller than the forget set. The VAE epochs drop the last short batch.
* The KL term uses ``log σ² `` exactly (the reference computes ``log(σ² + 1e-8)``).
* LAF+R's head fine-tune runs a full pass over the retain set per epoch (the reference stops after as many
  batches as the forget set has).

References:
  Shen, Zhang, Zhao, Bialkowski, Chen and Xu, "Label-Agnostic Forgetting: A Supervision-Free Unlearning in Deep
  Models", ICLR 2024 (github.com/ShaofeiShen768/LAF: ``Train.vae_train``, ``VUnlearning.extractor_unlearning``,
  ``VUnlearning.classifier_unlearning``, ``hyperparameter.md``).

Example:
    >>> params, state = unlearn_jax.unlearning.laf(model, params, state, forget, retain,
    ...                                            rng=jax.random.key(0), epochs=20, temp=5.0)
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
import optax
from flax import linen as nn

from unlearn_jax import train as train_lib
from unlearn_jax.data import split as split_lib
from unlearn_jax.model import Model
from unlearn_jax.unlearning import checked_options, loop, register

Pytree = Any

DECODER_OUTPUTS = ("sigmoid", "linear")
COSINE_EPS = 1e-12  # torch.nn.CosineEmbeddingLoss's epsilon under the square root of the squared norms

LAF_DEFAULTS = dict(
    latent_dims=8, vae_hidden=(128, 32), decoder_output="sigmoid", kld_weight=0.025, vae_epochs=10, vae_lr=1e-3,
    epochs=20, lr_ue=5e-5, lr_ra=1e-4, temp=5.0, batch_size=32, classifier_epochs=0, classifier_lr=1e-4)


class TorchLinear(nn.Module):
  """Dense layer initialised as ``torch.nn.Linear``: kernel and bias uniform in ``±1/sqrt(fan_in)``."""
  features: int

  @nn.compact
  def __call__(self, x):
    bound = 1.0 / np.sqrt(x.shape[-1])
    init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    kernel = self.param("kernel", init, (x.shape[-1], self.features))
    bias = self.param("bias", init, (self.features,))
    return x @ kernel + bias


class EmbeddingVAE(nn.Module):
  """A small fully connected VAE over embedding vectors.

  Encoder: Dense+ReLU layers of widths ``hidden``, then two Dense heads giving ``μ`` and ``log σ²`` of a
  ``latent_dims``-dimensional Gaussian. Decoder: Dense+ReLU layers of the reversed widths, then a Dense layer back
  to ``features`` dimensions (through a sigmoid with ``output='sigmoid'``, as the reference's decoder). Layers are
  initialised as PyTorch's ``nn.Linear`` (`TorchLinear`), like the reference's VAE.

  The reparameterisation noise ``eps`` is an argument, so the module is a pure function of its inputs.

  Attributes:
    features: size of the embeddings it models.
    latent_dims: latent size.
    hidden: encoder widths (the decoder mirrors them).
    output: ``'sigmoid'`` or ``'linear'`` decoder output.

  Example:
    >>> vae = EmbeddingVAE(features=256)
    >>> p = vae.init(key, e, jnp.zeros((e.shape[0], vae.latent_dims)))['params']
    >>> recon, mu, logvar = vae.apply({'params': p}, e, eps)
  """
  features: int
  latent_dims: int = 8
  hidden: Sequence[int] = (128, 32)
  output: str = "sigmoid"

  @nn.compact
  def __call__(self, e, eps):
    """``(reconstruction, μ, log σ²)`` of embeddings ``e`` (batch, features) with noise ``eps`` (batch, latent)."""
    h = e
    for i, width in enumerate(self.hidden):
      h = nn.relu(TorchLinear(width, name=f"enc_{i}")(h))
    mu = TorchLinear(self.latent_dims, name="mu")(h)
    logvar = TorchLinear(self.latent_dims, name="logvar")(h)
    z = mu + jnp.exp(0.5 * logvar) * eps
    for i, width in enumerate(reversed(tuple(self.hidden))):
      z = nn.relu(TorchLinear(width, name=f"dec_{i}")(z))
    out = TorchLinear(self.features, name="out")(z)
    return (nn.sigmoid(out) if self.output == "sigmoid" else out), mu, logvar


def vae_loss(recon: jax.Array, e: jax.Array, mu: jax.Array, logvar: jax.Array, kld_weight: float) -> jax.Array:
  """The reference's VAE loss: batch-mean of the summed squared error + ``kld_weight`` · batch-mean KL to N(0, I).

  ``KL(N(μ, σ²) ‖ N(0, 1)) = −½ (log σ² + 1 − μ² − σ²)`` per latent dimension, summed over dimensions.
  """
  b = e.shape[0]
  sse = jnp.sum(jnp.square(recon - e)) / b
  kld = -0.5 * jnp.sum(logvar + 1.0 - jnp.square(mu) - jnp.exp(logvar)) / b
  return sse + kld_weight * kld


def reconstruction_energy(vae: EmbeddingVAE, vae_params, e: jax.Array, eps: jax.Array) -> jax.Array:
  """``Σᵢ exp(mᵢ / (mᵢ + 1))`` with ``mᵢ = ‖dec(zᵢ) − eᵢ‖²``: the bounded reconstruction term of `extractor_loss`."""
  recon, _, _ = vae.apply({"params": vae_params}, e, eps)
  m = jnp.sum(jnp.square(recon - e), axis=-1)
  return jnp.sum(jnp.exp(m / (m + 1.0)))


def extractor_loss(vae: EmbeddingVAE, s_vae_params, u_vae_params, e_retain, e_forget, eps_retain, eps_forget):
  """L_UE: reconstruction energy of retain embeddings under ``s_vae`` minus that of forget ones under ``u_vae``."""
  return (reconstruction_energy(vae, s_vae_params, e_retain, eps_retain)
          - reconstruction_energy(vae, u_vae_params, e_forget, eps_forget))


def cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise ``1 − cos(a, b)``, with torch's CosineEmbeddingLoss epsilon (zero rows give distance 1)."""
  dot = jnp.sum(a * b, axis=-1)
  norms = jnp.sqrt((jnp.sum(a * a, axis=-1) + COSINE_EPS) * (jnp.sum(b * b, axis=-1) + COSINE_EPS))
  return 1.0 - dot / norms


def alignment_loss(e_retain, e_retain0, e_forget, e_forget0, temp: float) -> jax.Array:
  """L_RA = ``Σ_r d_r − B_r · log Σ_f exp(d_f / temp)`` with ``d = 1 − cos(e, e₀)`` (see the module docstring)."""
  d_r = cosine_distance(e_retain, e_retain0)
  d_f = cosine_distance(e_forget, e_forget0)
  return jnp.sum(d_r) - d_r.shape[0] * jax.nn.logsumexp(d_f / temp)


def head_mask(model: Model, params: Pytree, state: Pytree, x: jax.Array) -> Pytree:
  """Bool arrays shaped like ``params``: True in the leaves ``model.features`` does not read (the classifier head).

  Found structurally from the jaxpr of ``features(params, state, x)``: a parameter leaf is part of the head when
  no equation uses it, so the answer does not depend on values (a dead ReLU does not make a weight "head").
  """
  if model.features is None:
    raise ValueError("head_mask: the model exposes no features(params, state, x)")
  closed = jax.make_jaxpr(model.features)(params, state, x)
  used = set()
  for eqn in closed.jaxpr.eqns:
    used.update(id(v) for v in eqn.invars if isinstance(v, jex_core.Var))
  used.update(id(v) for v in closed.jaxpr.outvars if isinstance(v, jex_core.Var))
  leaves, treedef = jax.tree.flatten(params)
  invars = closed.jaxpr.invars[:len(leaves)]
  return jax.tree.unflatten(treedef, [jnp.full(jnp.shape(leaf), id(v) not in used, jnp.bool_)
                                     for leaf, v in zip(leaves, invars)])


@functools.lru_cache(maxsize=64)
def _embed_fn(model: Model, batch_size: int):
  """Jitted ``embed(params, state, x)``: eval-mode embeddings of all rows of ``x`` in fixed-size batches."""

  def embed(params, state, x):
    n = x.shape[0]
    xb, = split_lib.batch_arrays((x,), min(batch_size, n), None, drop_remainder=False)
    out = jax.lax.map(lambda xs: model.features(params, state, xs), xb)
    return out.reshape((-1,) + out.shape[2:])[:n]

  return jax.jit(embed)


@functools.lru_cache(maxsize=64)
def _vae_fit_fn(vae: EmbeddingVAE, epochs: int, batch_size: int):
  """Jitted ``fit(vae_params, embeddings, lr, kld_weight, rng) -> (vae_params, losses (epochs, steps))``.

  Learning rate and KL weight are traced, so one compile serves every value (one per data shape).
  """

  def fit(p, embeddings, lr, kld_weight, rng):
    tx = optax.adam(lr)
    bs = min(batch_size, embeddings.shape[0])

    def loss_fn(p, e, key):
      eps = jax.random.normal(key, (e.shape[0], vae.latent_dims), e.dtype)
      recon, mu, logvar = vae.apply({"params": p}, e, eps)
      return vae_loss(recon, e, mu, logvar, kld_weight)

    def epoch(carry, key):
      perm_rng, step_rng = jax.random.split(key)
      eb, = split_lib.batch_arrays((embeddings,), bs, perm_rng)

      def step(carry, inp):
        p, opt = carry
        e, k = inp
        loss, grads = jax.value_and_grad(loss_fn)(p, e, k)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

      return jax.lax.scan(step, carry, (eb, jax.random.split(step_rng, eb.shape[0])))

    (p, _), losses = jax.lax.scan(epoch, (p, tx.init(p)), jax.random.split(rng, epochs))
    return p, losses

  return jax.jit(fit)


@functools.lru_cache(maxsize=64)
def _vae_init_fn(vae: EmbeddingVAE):
  return jax.jit(lambda rng: vae.init(rng, jnp.zeros((1, vae.features)), jnp.zeros((1, vae.latent_dims)))["params"])


def train_vae(vae: EmbeddingVAE, embeddings: jax.Array, *, epochs: int, lr: float, batch_size: int,
              kld_weight: float, rng: jax.Array):
  """Fits ``vae`` to ``embeddings`` (rows) with Adam(``lr``) over ``epochs`` epochs of shuffled batches.

  The last short batch of an epoch is dropped. Returns ``(vae_params, losses)``, the per-step losses of shape
  ``(epochs, steps_per_epoch)``.

  Raises:
    FloatingPointError: if a loss is not finite.
  """
  init_rng, fit_rng = jax.random.split(rng)
  fit = _vae_fit_fn(vae, int(epochs), int(batch_size))
  vae_params, losses = fit(_vae_init_fn(vae)(init_rng), embeddings, jnp.float32(lr), jnp.float32(kld_weight),
                           fit_rng)
  _check_finite(losses, "LAF VAE loss")
  return vae_params, losses


def _check_finite(losses, what: str) -> None:
  """FloatingPointError naming the epoch and step of the first non-finite entry of ``(epochs, steps)`` losses."""
  losses = np.asarray(jax.device_get(losses))
  bad = np.argwhere(~np.isfinite(losses))
  if bad.size:
    epoch, step = (int(i) for i in bad[0])
    raise FloatingPointError(f"non-finite {what} {losses[epoch, step]} at epoch {epoch}, step {step}")


@functools.lru_cache(maxsize=64)
def _unlearning_fn(model: Model, vae: EmbeddingVAE, *, epochs: int, batch_size: int, retain_batch_size: int):
  """Jitted stage 2: ``epochs`` epochs of alternating UE / RA steps, one forget and one retain batch per step.

  ``run(params, state, s_vae, u_vae, fx, fe0, rx, re0, lr_ue, lr_ra, temp, rng) -> (params, (ue, ra losses))``,
  losses of shape ``(epochs, steps_per_epoch)``; learning rates and temperature are traced (no recompilation).
  """

  def run(params, state, s_vae, u_vae, fx, fe0, rx, re0, lr_ue, lr_ra, temp, rng):
    tx_ue, tx_ra = optax.adam(lr_ue), optax.adam(lr_ra)
    nf, nr = fx.shape[0], rx.shape[0]

    def step(carry, inp):
      params, opt_ue, opt_ra = carry
      xf, rowf, xr, rowr, key = inp
      kr, kf = jax.random.split(key)
      eps_r = jax.random.normal(kr, (xr.shape[0], vae.latent_dims))
      eps_f = jax.random.normal(kf, (xf.shape[0], vae.latent_dims))

      def ue(p):
        er, ef = model.features(p, state, xr), model.features(p, state, xf)
        return extractor_loss(vae, s_vae, u_vae, er, ef, eps_r, eps_f)

      loss_ue, grads = jax.value_and_grad(ue)(params)
      updates, opt_ue = tx_ue.update(grads, opt_ue, params)
      params = optax.apply_updates(params, updates)

      def ra(p):
        er, ef = model.features(p, state, xr), model.features(p, state, xf)
        return alignment_loss(er, re0[rowr], ef, fe0[rowf], temp)

      loss_ra, grads = jax.value_and_grad(ra)(params)
      updates, opt_ra = tx_ra.update(grads, opt_ra, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_ue, opt_ra), (loss_ue, loss_ra)

    def epoch(carry, key):
      f_rng, r_rng, step_rng = jax.random.split(key, 3)
      fxb, frows = split_lib.batch_arrays((fx, jnp.arange(nf)), batch_size, f_rng, drop_remainder=False)
      rxb, rrows = loop.cycled_batches((rx, jnp.arange(nr)), retain_batch_size, fxb.shape[0], r_rng)
      keys = jax.random.split(step_rng, fxb.shape[0])
      return jax.lax.scan(step, carry, (fxb, frows, rxb, rrows, keys))

    carry = (params, tx_ue.init(params), tx_ra.init(params))
    (params, _, _), losses = jax.lax.scan(epoch, carry, jax.random.split(rng, epochs))
    return params, losses

  return jax.jit(run)


def _eval_cross_entropy(model: Model):
  """Retain cross-entropy with the network in eval mode (LAF+R's head fine-tune; ``state`` never changes)."""

  def term(params, state, batch, rng, epoch):
    del rng, epoch
    x, y = batch
    logits, _ = model.apply(params, state, x, train=False)
    return train_lib.cross_entropy(logits, y), (state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)})

  return term


def _check_laf_options(opts) -> None:
  """LAF's option values, in the validation pass (`unlearn_jax.unlearning.register`'s ``check``): ``decoder_output``
  one of `DECODER_OUTPUTS`, the epoch counts >= 0, ``latent_dims`` and ``batch_size`` integers >= 1, ``vae_hidden``
  positive widths, ``kld_weight`` >= 0, ``temp`` > 0."""
  if opts.decoder_output not in DECODER_OUTPUTS:
    raise ValueError(f"method.decoder_output={opts.decoder_output!r}: choose one of {DECODER_OUTPUTS}")
  for key in ("epochs", "vae_epochs", "classifier_epochs"):
    if opts[key] < 0:
      raise ValueError(f"method.{key}={opts[key]!r}: must be >= 0")
  for key in ("latent_dims", "batch_size"):
    if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
      raise ValueError(f"method.{key}={opts[key]!r}: must be an integer >= 1")
  if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in opts.vae_hidden):
    raise ValueError(f"method.vae_hidden={tuple(opts.vae_hidden)!r}: must be positive integer widths")
  if not opts.kld_weight >= 0:
    raise ValueError(f"method.kld_weight={opts.kld_weight!r}: must be >= 0 (a loss weight)")
  if not opts.temp > 0:
    raise ValueError(f"method.temp={opts.temp!r}: must be positive")


@register("laf", check=_check_laf_options, **LAF_DEFAULTS)
def laf(model: Model, params, state, forget: split_lib.Split, retain: split_lib.Split | None, *, config, rng):
  """LAF: VAE training, then alternating extractor unlearning / representation alignment (+ optional LAF+R).

  Args:
    model: the network; it must expose ``model.features`` (every Linen model of `unlearn_jax.models` does).
    params, state: the Original; not modified.
    forget: the data to forget (its labels are never read).
    retain: the remaining data (its labels are read only by the optional ``classifier_epochs`` stage).
    config: options (defaults in ``LAF_DEFAULTS``, see the module docstring): ``latent_dims``, ``vae_hidden``,
      ``decoder_output`` ('sigmoid' | 'linear'), ``kld_weight``, ``vae_epochs``, ``vae_lr``, ``epochs``,
      ``lr_ue``, ``lr_ra``, ``temp``, ``batch_size``, ``classifier_epochs``, ``classifier_lr``.
    rng: PRNG key (VAE initialisation, VAE sampling, batch order).

  Returns:
    ``(params, state)``: the unlearned parameters (same tree structure) and the unchanged ``state``.

  Raises:
    ValueError: for a model without ``features``, a missing retain split, or a bad option value.
    FloatingPointError: if a loss is not finite (names the stage and epoch).
  """
  opts = checked_options(config, "laf")
  if model.features is None:
    raise ValueError("laf needs model.features (the penultimate embedding); this model exposes none")
  if retain is None:
    raise ValueError("laf needs the retain split (retain embeddings are kept and aligned)")
  s_rng, u_rng, un_rng, cl_rng = jax.random.split(rng, 4)
  bs = int(opts.batch_size)

  # Stage 1: the Original's embeddings (frozen teacher) and the two VAEs.
  embed = _embed_fn(model, 256)
  fe0, re0 = embed(params, state, forget.x), embed(params, state, retain.x)
  vae = EmbeddingVAE(features=int(fe0.shape[-1]), latent_dims=int(opts.latent_dims),
                     hidden=tuple(int(h) for h in opts.vae_hidden), output=opts.decoder_output)
  vae_kw = dict(epochs=int(opts.vae_epochs), lr=opts.vae_lr, batch_size=bs, kld_weight=opts.kld_weight)
  s_vae, _ = train_vae(vae, jnp.concatenate([fe0, re0]), rng=s_rng, **vae_kw)
  u_vae, _ = train_vae(vae, fe0, rng=u_rng, **vae_kw)

  # Stage 2: alternating extractor unlearning and representation alignment, one compiled program.
  if opts.epochs:
    fn = _unlearning_fn(model, vae, epochs=int(opts.epochs), batch_size=min(bs, forget.size),
                        retain_batch_size=min(bs, retain.size))
    hyper = (jnp.float32(opts.lr_ue), jnp.float32(opts.lr_ra), jnp.float32(opts.temp))
    params, (l_ue, l_ra) = fn(params, state, s_vae, u_vae, forget.x, fe0, retain.x, re0, *hyper, un_rng)
    _check_finite(l_ue, "LAF extractor-unlearning loss")
    _check_finite(l_ra, "LAF representation-alignment loss")

  # Stage 3 (LAF+R, optional): fine-tune the classifier head on the retain labels.
  if opts.classifier_epochs:
    mask = head_mask(model, params, state, retain.x[:1])
    objective = loop.Objective(retain=_eval_cross_entropy(model))
    params, _, _ = loop.unlearn_loop(model, params, state, None, retain, objective=objective,
                                     tx=optax.adam(opts.classifier_lr), epochs=int(opts.classifier_epochs),
                                     batch_size=bs, rng=cl_rng, mask=mask)
  return params, state
