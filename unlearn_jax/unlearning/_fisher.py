"""Fisher forgetting (one-shot noise scaled by the inverse retain-set Fisher) and the mnemonic-code variant.

**Fisher forgetting** ('fisher'). The retain set's diagonal Fisher information
``F = (1/n) Σ_i E_{c ~ p(·|x_i)} (∂ log p(c|x_i) / ∂θ)²`` says which weights the retain set pins down. Each weight
then gets Gaussian noise whose variance is ``α / F``, clamped, so weights the retain set does not constrain
(where the forget set's information may live) move a lot and the others hardly at all::

    var = α · min(1 / (F + 1e-8), 1e3)          (1e2 for the classifier layer)
    θ'  = θ + sqrt(var) · N(0, I)

followed by the reference's shaping rules (each optional, see `noise_variance`): the variance of a kernel is
averaged over its fan-in for each output unit, the classifier layer and the 1-D parameters (biases, norms) get 10×
the variance, and for class-wise forgetting the classifier's weights of a forgotten class are set to 0 with
variance 1e-4. The defaults (``alpha=3e-6``, the clamps, 10×, 1e-4) are those of Golatkar et al.'s notebook
(``hessian`` / ``get_mean_var(p, is_base_dist=False, alpha=3e-6)`` in ``Forgetting.ipynb``; its "Fisher Noise in
Weights" cell then passes ``alpha=1e-6``), which the Unlearn-Sparse / SalUn benchmark also runs as ``fisher_new``
with a tuned ``--alpha``. Per-example gradients come from ``jax.vmap(jax.grad(...))``.

Which labels define the Fisher (``labels``):

* ``'sampled'`` (default): one label per example drawn from the model's own softmax,
  ``jax.random.categorical(rng, logits)`` — an unbiased one-sample estimate of the true Fisher;
* ``'expected'``: the exact expectation over classes, ``Σ_c p(c|x) (∂ log p(c|x)/∂θ)²``, as the reference's
  ``hessian`` computes it (one backward pass per class, so ``num_classes`` times the cost);
* ``'true'``: the dataset labels (the "empirical Fisher" of Unlearn-Sparse's older ``fisher``).

**Mnemonic codes** (Yamashita, Yamada & Shibata 2024). Each class gets a fixed random image, its *mnemonic code*
(`mnemonic_codes`); while the Original is trained, each training example is replaced by its class's code with
probability ``t_mix`` (`replace_with_codes`, `mnemonic_loss`). To forget classes, the Fisher of each class is
computed from its code alone (`code_fisher`), and every weight moves by ``± s · F_forget / F_remain`` with ``s =
min(λ₁, λ₂ / max(F_forget / F_remain))`` per tensor (`mnemonic_shift`); both signs are tried and the one whose
model best misclassifies the forgotten codes while still classifying the others is kept (`mnemonic_forget`). It
needs the Original to have been trained with the codes, which `unlearn_jax.run` does not do, so it is not a
registered method: see `mnemonic_unlearn`.

References:
  Golatkar, Achille and Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks",
  CVPR 2020 (github.com/AdityaGolatkar/SelectiveForgetting).
  Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023 (github.com/OPTML-Group/Unlearn-Sparse,
  ``unlearn/fisher.py``).
  Yamashita, Yamada and Shibata, "One-Shot Machine Unlearning with Mnemonic Code", ACML 2024
  (github.com/tomyamkum/OneShotMU-with-MNCode).

Example:
    >>> params, state = fisher_forgetting(model, params, state, forget, retain,
    ...                                   config={'alpha': 3e-6}, rng=jax.random.key(0))
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from unlearn_jax import sharding
from unlearn_jax.data import split as split_lib
from unlearn_jax.unlearning import one_shot, options, register

Pytree = Any

LABELS = ("sampled", "expected", "true")


# --------------------------------------------------------------------------------------------------------------
# Batching and per-example gradients, shared with `ssd` and `influence`.


def weighted_batches(arrays: tuple, batch_size: int):
  """Batches covering every row exactly once: ``(*batched arrays, weights, rows)``, each ``(nb, bs, ...)``.

  Rows are taken in order; a last partial batch is filled by wrapping around to the first rows, which get weight 0,
  so a weighted mean over a batch is the mean over its real rows (a PyTorch DataLoader's short last batch). ``rows``
  holds each slot's row number. ``bs = min(batch_size, n)``.
  """
  n = arrays[0].shape[0]
  bs = min(int(batch_size), n)
  *batched, rows = split_lib.batch_arrays((*arrays, jnp.arange(n)), bs, None, drop_remainder=False)
  weights = (jnp.arange(rows.size).reshape(rows.shape) < n).astype(jnp.float32)
  return (*batched, weights, rows)


def accumulator(params: Pytree) -> Pytree:
  """float32 zeros laid out like ``params`` (their sharding included): the carry of a scan summing statistics."""
  return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params)


def accumulate(acc: Pytree, update: Pytree) -> Pytree:
  """``acc + update`` per leaf, ``update`` resharded like ``acc`` so that a scan carry keeps its type under an
  FSDP mesh (gradients of gathered weights may come back laid out differently)."""
  return jax.tree.map(jnp.add, acc, sharding.reshard_like(update, acc))


def example_fn(model, state, fn):
  """``f(params, x, *args) -> fn(logits, *args)`` on ONE example ``x`` (no batch axis), model in eval mode."""

  def f(params, x, *args):
    logits, _ = model.apply(params, state, x[None], train=False)
    return fn(logits[0].astype(jnp.float32), *args)

  return f


def per_example_grads(f, params, *batch):
  """``jax.vmap(jax.grad(f))`` over the leading axis of every ``batch`` array; ``f(params, *example) -> scalar``."""
  return jax.vmap(jax.grad(f), in_axes=(None,) + (0,) * len(batch))(params, *batch)


def weighted_sum(weights, tree):
  """``Σ_b weights[b] · leaf[b]`` for each leaf of ``tree`` (leading axis ``b``)."""
  return jax.tree.map(lambda g: jnp.einsum("b,b...->...", weights, g, precision=jax.lax.Precision.HIGHEST), tree)


def batched_logits(model, params, state, xb):
  """Eval-mode float32 logits of batched inputs ``(nb, bs, ...)`` → ``(nb, bs, K)``, one batch at a time."""
  return jax.lax.map(lambda xs: model.apply(params, state, xs, train=False)[0].astype(jnp.float32), xb)


# --------------------------------------------------------------------------------------------------------------
# The diagonal Fisher.


@functools.partial(jax.jit, static_argnames=("model", "labels", "batch_size"))
def fisher_diagonal(model, params, state, split: split_lib.Split, rng=None, *, labels: str = "sampled",
                    batch_size: int = 128) -> Pytree:
  """Diagonal Fisher information ``(1/n) Σ_i Σ_c w_ic (∂ log p(c|x_i)/∂θ)²`` over ``split``, eval mode.

  Args:
    model: the network.
    params, state: where the Fisher is evaluated.
    split: the examples (the retain set for Fisher forgetting).
    rng: key for ``labels='sampled'``: the labels are ``jax.random.categorical(rng, logits)`` with ``logits`` the
      ``(n, K)`` eval-mode logits of ``split.x``; unused otherwise.
    labels: ``'sampled'`` (``w_ic = 1[c = ĉ_i]``, ``ĉ_i`` drawn from the softmax), ``'expected'`` (``w_ic =
      p(c|x_i)``) or ``'true'`` (``w_ic = 1[c = y_i]``).
    batch_size: examples per vmapped batch (memory only: the result does not depend on it).

  Returns:
    A float32 pytree like ``params``.
  """
  if labels not in LABELS:
    raise ValueError(f"labels: unknown {labels!r}; choose one of {LABELS}")
  n = split.x.shape[0]
  xb, yb, wb, rows = weighted_batches((split.x, split.y), batch_size)
  logp = example_fn(model, state, lambda logits, c: jax.nn.log_softmax(logits)[c])
  zeros = accumulator(params)

  if labels == "sampled":
    if rng is None:
      raise ValueError("labels='sampled' needs an rng")
    logits = batched_logits(model, params, state, xb)
    logits = logits.reshape(rows.size, logits.shape[-1])[:n]
    sampled = jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    yb = sampled[rows]

  if labels in ("sampled", "true"):

    def body(acc, inp):
      xs, ys, ws = inp
      g = per_example_grads(logp, params, xs, ys)
      return accumulate(acc, weighted_sum(ws, jax.tree.map(jnp.square, g))), None

    total, _ = jax.lax.scan(body, zeros, (xb, yb, wb))
  else:  # expected: every class, weighted by the model's probability

    def body(acc, inp):
      xs, ws = inp
      probs = jax.nn.softmax(model.apply(params, state, xs, train=False)[0].astype(jnp.float32), axis=-1)

      def per_class(acc, c):
        g = per_example_grads(logp, params, xs, jnp.full(xs.shape[:1], c, jnp.int32))
        return accumulate(acc, weighted_sum(ws * probs[:, c], jax.tree.map(jnp.square, g))), None

      acc, _ = jax.lax.scan(per_class, acc, jnp.arange(probs.shape[-1]))
      return acc, None

    total, _ = jax.lax.scan(body, zeros, (xb, wb))
  return jax.tree.map(lambda t: t / n, total)


# --------------------------------------------------------------------------------------------------------------
# Fisher forgetting.


def is_head(leaf, num_classes: int) -> bool:
  """The reference's test for the classifier layer, in Flax layout: the last axis has ``num_classes`` entries.

  (PyTorch weights are ``(out, in)``, so the reference tests ``p.size(0) == num_classes``; Flax kernels are
  ``(..., in, out)``.) A hidden layer exactly ``num_classes`` wide is caught too, as in the reference.
  """
  return leaf.ndim >= 1 and leaf.shape[-1] == num_classes


def noise_variance(fisher: Pytree, *, alpha: float, num_classes: int, eps: float = 1e-8, var_max: float = 1e3,
                   head_var_max: float = 1e2, fan_in_mean: bool = True, head_scale: float = 10.0,
                   vector_scale: float = 10.0, removed_classes=(), removed_var: float = 1e-4):
  """The variance of the Fisher noise, and which entries are reset to 0: ``(var, zero)`` pytrees.

  Per leaf, in the reference's order (``get_mean_var``):

  1. ``v = min(1 / (F + eps), var_max)``, and ``min(v, head_var_max)`` for the classifier (`is_head`);
  2. ``v = alpha · v``;
  3. if ``fan_in_mean`` and the leaf is a kernel (``ndim > 1``): ``v`` averaged over the fan-in axis (``-2`` in
     Flax layout) for each output unit, broadcast back;
  4. classifier entries of ``removed_classes`` (last-axis index): mean 0 (``zero`` True) and ``v = removed_var``;
  5. ``v *= head_scale`` for the classifier, else ``v *= vector_scale`` for 1-D leaves.

  With ``fan_in_mean=False``, ``head_scale = vector_scale = 1`` and no removed class, ``var = alpha / F`` wherever
  ``F + eps >= 1 / var_max`` (``1 / head_var_max`` in the classifier).
  """
  removed = tuple(int(c) for c in np.asarray(removed_classes, np.int32).reshape(-1))
  return _noise_variance(fisher, alpha, num_classes=int(num_classes), eps=float(eps), var_max=float(var_max),
                         head_var_max=float(head_var_max), fan_in_mean=bool(fan_in_mean),
                         head_scale=float(head_scale), vector_scale=float(vector_scale), removed_classes=removed,
                         removed_var=float(removed_var))


@functools.partial(jax.jit, static_argnames=("num_classes", "eps", "var_max", "head_var_max", "fan_in_mean",
                                             "head_scale", "vector_scale", "removed_classes", "removed_var"))
def _noise_variance(fisher, alpha, *, num_classes, eps, var_max, head_var_max, fan_in_mean, head_scale,
                    vector_scale, removed_classes, removed_var):
  """`noise_variance` as one program: ``alpha`` traced (a sweep reuses it), the shaping options static."""
  removed = jnp.asarray(removed_classes, jnp.int32)

  def leaf(f):
    head = is_head(f, num_classes)
    v = jnp.minimum(1.0 / (f.astype(jnp.float32) + eps), var_max)
    if head:
      v = jnp.minimum(v, head_var_max)
    v = alpha * v
    if fan_in_mean and f.ndim > 1:
      v = jnp.broadcast_to(jnp.mean(v, axis=-2, keepdims=True), v.shape)
    zero = jnp.zeros(f.shape, bool)
    if head and removed.size:
      zero = jnp.broadcast_to(jnp.isin(jnp.arange(f.shape[-1]), removed), f.shape)
      v = jnp.where(zero, removed_var, v)
    if head:
      v = v * head_scale
    elif f.ndim == 1:
      v = v * vector_scale
    return v, zero

  pairs = jax.tree.map(leaf, fisher)
  is_pair = lambda t: isinstance(t, tuple)
  return (jax.tree.map(lambda t: t[0], pairs, is_leaf=is_pair), jax.tree.map(lambda t: t[1], pairs, is_leaf=is_pair))


@jax.jit
def add_noise(params: Pytree, var: Pytree, zero: Pytree, rng: jax.Array) -> Pytree:
  """``θ' = where(zero, 0, θ) + sqrt(var) · ε``, ``ε ~ N(0, I)`` drawn as one flat vector, in each leaf's dtype."""
  flat, unravel = ravel_pytree(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  eps = unravel(jax.random.normal(rng, flat.shape, jnp.float32))

  def leaf(p, v, z, e):
    return (jnp.where(z, 0.0, p.astype(jnp.float32)) + jnp.sqrt(v) * e).astype(p.dtype)

  return jax.tree.map(leaf, params, var, zero, eps)


def removed_classes(forget: split_lib.Split, retain: split_lib.Split) -> tuple[int, ...]:
  """Classes that occur in ``forget`` and nowhere in ``retain`` (class-wise forgetting); () otherwise."""
  return tuple(int(c) for c in np.setdiff1d(np.unique(np.asarray(forget.y)), np.unique(np.asarray(retain.y))))


FISHER_DEFAULTS = dict(alpha=3e-6, labels="sampled", batch_size=128, eps=1e-8, var_max=1e3, head_var_max=1e2,
                       fan_in_mean=True, head_scale=10.0, vector_scale=10.0, remove_classes=True)


def _check_fisher_options(opts) -> None:
  """``labels`` and ``alpha`` >= 0, in the validation pass (the method checks them too)."""
  if opts.labels not in LABELS:
    raise ValueError(f"method.labels={opts.labels!r}: choose one of {LABELS}")
  if not opts.alpha >= 0:
    raise ValueError(f"method.alpha={opts.alpha!r}: must be >= 0")


@one_shot("fisher", "alpha", check=_check_fisher_options, **FISHER_DEFAULTS)
def fisher_forgetting(model, params, state, forget, retain, opts, rng):
  """Fisher forgetting: Gaussian noise with variance ``alpha / F_retain`` (clamped, shaped; see `noise_variance`).

  Options (``config``): ``alpha`` (3e-6, Golatkar's ``get_mean_var`` default; tune it per task),
  ``labels`` (``'sampled'`` | ``'expected'`` | ``'true'``, see `fisher_diagonal`), ``batch_size`` (memory only),
  ``eps``, ``var_max``, ``head_var_max``, ``fan_in_mean``, ``head_scale``, ``vector_scale`` (`noise_variance`),
  ``remove_classes`` (class-wise forgetting: zero the classifier weights of classes absent from ``retain``). A
  sweep varies ``alpha`` on the same Fisher and the same noise draw.

  Returns:
    ``(params, state)``: noisy parameters of the same structure and dtypes; ``state`` unchanged.

  Raises:
    ValueError: for an unknown option, a bad ``labels``, a negative ``alpha`` or a missing retain set.
  """
  if retain is None:
    raise ValueError("method 'fisher': needs a retain set (the Fisher is computed on it)")
  if opts.labels not in LABELS:
    raise ValueError(f"method.labels={opts.labels!r}: choose one of {LABELS}")
  if opts.alpha < 0:
    raise ValueError(f"method.alpha={opts.alpha}: must be >= 0")
  label_rng, noise_rng = jax.random.split(rng)
  fisher = fisher_diagonal(model, params, state, retain, label_rng, labels=opts.labels,
                           batch_size=int(opts.batch_size))
  num_classes = int(jax.eval_shape(lambda: model.apply(params, state, retain.x[:1], train=False)[0]).shape[-1])
  removed = removed_classes(forget, retain) if opts.remove_classes else ()

  def apply(alpha):
    var, zero = noise_variance(fisher, alpha=alpha, num_classes=num_classes, eps=opts.eps,
                               var_max=opts.var_max, head_var_max=opts.head_var_max, fan_in_mean=opts.fan_in_mean,
                               head_scale=opts.head_scale, vector_scale=opts.vector_scale, removed_classes=removed)
    return add_noise(params, var, zero, noise_rng), state

  return apply


# --------------------------------------------------------------------------------------------------------------
# Mnemonic codes.


def mnemonic_codes(rng: jax.Array, num_classes: int, shape: tuple, dtype=jnp.float32) -> jax.Array:
  """One random image per class, uniform in [0, 1): ``(num_classes, *shape)`` (the reference's ``torch.rand``)."""
  return jax.random.uniform(rng, (num_classes, *shape), dtype)


def replace_with_codes(rng: jax.Array, x: jax.Array, y: jax.Array, codes: jax.Array, *, t_mix: float) -> jax.Array:
  """Each row of ``x`` replaced by its class's code ``codes[y]`` with probability ``t_mix`` (labels unchanged)."""
  swap = jax.random.bernoulli(rng, t_mix, x.shape[:1]).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.where(swap, codes[y].astype(x.dtype), x)


def mnemonic_loss(model, codes: jax.Array, *, t_mix: float):
  """A `unlearn_jax.train.LossFn`: cross-entropy in train mode on batches whose rows are swapped for codes.

  Use it with `unlearn_jax.train.make_epoch_fn` to train an Original that `mnemonic_forget` can act on.
  """

  def loss_fn(params, state, batch, rng):
    x, y = batch
    code_rng, drop_rng = jax.random.split(rng)
    x = replace_with_codes(code_rng, x, y, codes, t_mix=t_mix)
    logits, new_state = model.apply(params, state, x, train=True, rng=drop_rng)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
    return ce, (new_state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)})

  return loss_fn


@functools.partial(jax.jit, static_argnames=("model",))
def code_fisher(model, params, state, codes: jax.Array, forget_mask: jax.Array):
  """``(F_forget, F_remain)``: mean squared cross-entropy gradients of the codes of each group of classes.

  ``F_group = (1e-16 + Σ_{c in group} (∂ CE(f(code_c), c)/∂θ)²) / |group|`` (eval mode, one code per class), the
  reference's ``get_fishers`` including its 1e-16 floor. ``forget_mask[c]`` is True for the classes to forget.
  """
  ce = example_fn(model, state, lambda logits, c: -jax.nn.log_softmax(logits)[c])
  g2 = jax.tree.map(jnp.square, per_example_grads(ce, params, codes, jnp.arange(codes.shape[0])))
  m = forget_mask.astype(jnp.float32)

  def group(w):
    return jax.tree.map(lambda s: (1e-16 + s) / jnp.sum(w), weighted_sum(w, g2))

  return group(m), group(1.0 - m)


@jax.jit
def mnemonic_shift(forget_fisher: Pytree, remain_fisher: Pytree, lambda1, lambda2) -> Pytree:
  """The reference's perturbation per tensor: ``r · min(λ₁, λ₂ / max r)`` with ``r = F_forget / F_remain``.

  ``r`` is formed as ``exp(log F_f − log F_r)``; NaN entries become ``exp(0) = 1`` and infinite ones the largest
  finite log-ratio, as in the reference.
  """

  def leaf(ff, fr):
    d = jnp.log(ff) - jnp.log(fr)
    d = jnp.where(jnp.isnan(d), 0.0, d)
    finite_max = jnp.max(jnp.where(jnp.isinf(d), -jnp.inf, d))
    r = jnp.exp(jnp.where(jnp.isinf(d), finite_max, d))
    return jnp.minimum(lambda1, lambda2 / jnp.max(r)) * r

  return jax.tree.map(leaf, forget_fisher, remain_fisher)


def mnemonic_forget(model, params, state, codes: jax.Array, forget_classes, *, lambda1: float = 1e-3,
                    lambda2: float = 10.0):
  """Forgets whole classes of an Original trained with `mnemonic_loss`: ``(params, info)``.

  Both ``θ + shift`` and ``θ − shift`` (`mnemonic_shift`) are scored on the codes: the one with the larger
  ``(1 − acc(forgotten codes)) + acc(remaining codes)`` is returned (``θ − shift`` on a tie, as in the reference).
  Defaults ``lambda1=1e-3``, ``lambda2=10`` are the reference's MNIST MLP values (CIFAR-10 ResNet-18: 1e-5, 1e4).

  Returns:
    ``(params, info)`` with ``info = {'sign': ±1, 'scores': {+1: ..., -1: ...}}``.
  """
  num_classes = codes.shape[0]
  forget_mask = jnp.isin(jnp.arange(num_classes), jnp.asarray(forget_classes))
  if not bool(forget_mask.any()) or bool(forget_mask.all()):
    raise ValueError(f"forget_classes={forget_classes}: must name some, but not all, of {num_classes} classes")
  ff, fr = code_fisher(model, params, state, codes, forget_mask)
  shift = mnemonic_shift(ff, fr, lambda1, lambda2)
  candidates, scores = {}, {}
  for sign in (1, -1):
    p = jax.tree.map(lambda w, s: (w + sign * s).astype(w.dtype), params, shift)
    correct = jnp.argmax(model.apply(p, state, codes, train=False)[0], -1) == jnp.arange(num_classes)
    fm = np.asarray(forget_mask)
    c = np.asarray(correct)
    candidates[sign], scores[sign] = p, float((1.0 - c[fm].mean()) + c[~fm].mean())
  sign = 1 if scores[1] > scores[-1] else -1
  return candidates[sign], {"sign": sign, "scores": scores}


MNEMONIC_DEFAULTS = dict(lambda1=1e-3, lambda2=10.0, code_seed=0)


@register("fisher_mnemonic", **MNEMONIC_DEFAULTS)
def mnemonic_unlearn(model, params, state, forget, retain, *, config, rng):
  """The mnemonic-code method with the standard signature (registered as ``fisher_mnemonic``).

  The Original must have been trained with the codes: in the runner, ``config.train.mnemonic_t_mix > 0`` does
  that (with ``config.train.mnemonic_code_seed`` equal to ``config.method.code_seed``; see
  `configs/fisher_mnemonic.py`). Regenerates the codes from ``config.code_seed`` (``mnemonic_codes(jax.random.key(code_seed), K, x.shape[1:])``),
  which must be the codes the Original was trained with (`mnemonic_loss`), and forgets the classes of ``forget``.
  ``retain`` is only checked (the method needs no data but the codes); ``rng`` is unused (the method is
  deterministic).

  Raises:
    ValueError: if ``forget`` is not whole classes (a forgotten class also occurs in ``retain``).
  """
  del rng
  opts = options(config, "fisher_mnemonic", **MNEMONIC_DEFAULTS)
  classes = np.unique(np.asarray(forget.y))
  if retain is not None and np.isin(classes, np.asarray(retain.y)).any():
    raise ValueError("mnemonic-code forgetting removes whole classes; the forget set shares classes with retain")
  num_classes = int(jax.eval_shape(lambda: model.apply(params, state, forget.x[:1], train=False)[0]).shape[-1])
  codes = mnemonic_codes(jax.random.key(int(opts.code_seed)), num_classes, forget.x.shape[1:], forget.x.dtype)
  new_params, _ = mnemonic_forget(model, params, state, codes, classes, lambda1=opts.lambda1,
                                  lambda2=opts.lambda2)
  return new_params, state
