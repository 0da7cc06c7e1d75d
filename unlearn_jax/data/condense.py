"""Dataset condensation: a few learned images per class that stand in for a training set.

Two procedures, each a jitted ``jax.lax.scan`` over outer iterations with explicit PRNG keys; both learn the
synthetic images against freshly initialised networks of the given architecture (never a trained model), and
return a small `Split` of ``num_classes * images_per_class`` examples, ``y`` = each image's class:

* `condense_gradient_matching` (DC, Zhao, Mopuri and Bilen 2021): every outer iteration draws a new network;
  ``outer_loop`` times it updates the images to make the per-class gradients of the loss on the synthetic images
  match those on a real batch of that class (`gradient_matching_distance`, the paper's layer-wise measure), and
  between those updates trains the network on the synthetic set for ``inner_loop`` steps.
* `condense_distribution_matching` (DM, Zhao and Bilen 2023): every iteration draws a new network and moves
  each class's synthetic images so that the mean of their embeddings (the classifier input) equals the mean
  embedding of a real batch of that class (the MMD with a linear kernel, `distribution_matching_loss`).

Defaults are the reference code's where they apply (DC: ``lr_images=0.1`` SGD with momentum 0.5, ``lr_net=0.01``,
``batch_real=256``, outer/inner loops (1, 1) / (10, 50) / (50, 10) for 1 / 10 / 50 images per class, images
initialised from random real ones, biases left out of the distance; DM: ``lr_images=1.0`` with momentum 0.5,
``batch_real=256``, real initialisation). The number of outer iterations is an argument: the reference runs
1,000 (DC) and 20,000 (DM), far more than a CPU run here affords; `unlearn_jax.studies.merge_datasets` sets
its own. Real batches of a class are drawn without replacement, ``min(batch_real, smallest class)`` rows each.
Networks run in eval mode (no BatchNorm statistics are updated; the reference ConvNet uses instance norm).

Example:
    >>> model, params, state = model_lib.init(MLP((64,), 10), key, ds.train.x[:1])
    >>> init_fn = linen_init_fn(MLP((64,), 10), ds.train.x.shape[1:])
    >>> syn = condense_gradient_matching(model, init_fn, ds.train, num_classes=10, images_per_class=10,
    ...                                  rng=jax.random.key(0), iterations=100)
    >>> syn.x.shape   # (100, 8, 8, 1)

References:
    Zhao, Mopuri and Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021.
    Zhao and Bilen, "Dataset Condensation with Distribution Matching", WACV 2023.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax.data.split import Split
from unlearn_jax.model import Model

Pytree = Any
InitFn = Callable[[jax.Array], tuple[Pytree, Pytree]]  # key -> (params, state) of a fresh network
INITS = ("real", "noise")

# (images per class -> (outer_loop, inner_loop)) of the DC reference code; other sizes use the nearest entry.
_DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def default_loops(images_per_class: int) -> tuple[int, int]:
  """``(outer_loop, inner_loop)`` of the gradient-matching reference code for ``images_per_class``."""
  nearest = min(_DC_LOOPS, key=lambda k: (abs(k - images_per_class), k))
  return _DC_LOOPS[nearest]


def _linen_init(module, input_shape, key):
  params_key, dropout_key = jax.random.split(key)
  variables = dict(module.init({"params": params_key, "dropout": dropout_key}, jnp.zeros((1,) + input_shape),
                               train=False))
  return variables.pop("params", {}), variables


def linen_init_fn(module, input_shape: tuple[int, ...]) -> InitFn:
  """A hashable ``key -> (params, state)`` initialiser of a Linen ``module`` for inputs of ``input_shape``.

  Example:
    >>> init_fn = linen_init_fn(MLP((64,), 10), (8, 8, 1))
  """
  return functools.partial(_linen_init, module, tuple(int(d) for d in input_shape))


# ----------------------------------------------------------------------------------------------------------------
# Objectives.


def _layer_distance(g_real: jax.Array, g_syn: jax.Array, eps: float) -> jax.Array:
  if g_real.ndim <= 1:  # biases (and scalars) are left out, as in the reference code
    return jnp.zeros((), jnp.float32)
  # Flax kernels put the output nodes last: (in, out) for Dense, (..., in, out) for convolutions.
  a = g_real.reshape(-1, g_real.shape[-1]).astype(jnp.float32)
  b = g_syn.reshape(-1, g_syn.shape[-1]).astype(jnp.float32)
  cos = jnp.sum(a * b, axis=0) / (_safe_norm(a) * _safe_norm(b) + eps)
  return jnp.sum(1.0 - cos)


def _safe_norm(a: jax.Array) -> jax.Array:
  """Column norms whose gradient is 0 (not NaN) at an all-zero column (e.g. a dead ReLU unit's gradient)."""
  squares = jnp.sum(a * a, axis=0)
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def gradient_matching_distance(grads_real: Pytree, grads_syn: Pytree, *, eps: float = 1e-6) -> jax.Array:
  """The layer-wise gradient distance of DC: ``sum_layers sum_out (1 - cos(g_real[:, out], g_syn[:, out]))``.

  Each kernel's gradient is flattened to ``(fan_in, out)`` (Flax puts the output nodes on the last axis; the
  reference's PyTorch ``(out, fan_in)`` rows are these columns), the cosine similarity is taken per output
  node, and ``1 - cos`` is summed over output nodes and layers. Gradients of biases (1-D leaves) count 0, as in
  the reference code.

  Args:
    grads_real: gradient pytree on real data.
    grads_syn: gradient pytree on synthetic data, same structure and shapes.
    eps: added to the product of the norms.

  Returns:
    A float32 scalar in ``[0, 2 * total output nodes]``.

  Raises:
    ValueError: if the two trees differ in structure or a leaf's shape (naming the leaf).

  References:
    Zhao, Mopuri and Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021, Eq. 7 (``dis_metric='ours'``).

  Example:
    >>> d = gradient_matching_distance(jax.grad(loss)(params, x_real), jax.grad(loss)(params, x_syn))
  """
  if jax.tree.structure(grads_real) != jax.tree.structure(grads_syn):
    raise ValueError(f"gradient_matching_distance: trees differ: {jax.tree.structure(grads_real)} vs "
                     f"{jax.tree.structure(grads_syn)}")

  def leaf(path, a, b):
    if a.shape != b.shape:
      raise ValueError(f"gradient_matching_distance: leaf {jax.tree_util.keystr(path)} has shapes {a.shape} "
                       f"and {b.shape}")
    return _layer_distance(a, b, eps)

  distances = jax.tree_util.tree_map_with_path(leaf, grads_real, grads_syn)
  return sum(jax.tree.leaves(distances), jnp.zeros((), jnp.float32))


def _class_loss(model: Model, params, state, x, label):
  logits, _ = model.apply(params, state, x, train=False)
  labels = jnp.full((x.shape[0],), label, jnp.int32)
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def gradient_matching_loss(model: Model, params: Pytree, state: Pytree, x_real: jax.Array, x_syn: jax.Array, *,
                           eps: float = 1e-6) -> jax.Array:
  """DC's matching loss of one network: ``sum_c D(grad L(real_c), grad L(syn_c))`` (`gradient_matching_distance`).

  Args:
    model: the network.
    params, state: one (freshly initialised or partly trained) network.
    x_real: ``(C, b, ...)``: a real batch per class (row ``c`` holds class ``c``).
    x_syn: ``(C, ipc, ...)``: the synthetic images per class.
    eps: see `gradient_matching_distance`.

  Returns:
    The summed distance; differentiable in ``x_syn`` (the real gradients are constants).
  """
  labels = jnp.arange(x_real.shape[0])
  grad = jax.grad(_class_loss, argnums=1)
  g_real = jax.lax.stop_gradient(jax.vmap(lambda x, c: grad(model, params, state, x, c))(x_real, labels))
  g_syn = jax.vmap(lambda x, c: grad(model, params, state, x, c))(x_syn, labels)
  per_class = jax.vmap(functools.partial(gradient_matching_distance, eps=eps))(g_real, g_syn)
  return jnp.sum(per_class)


def _embed(model: Model, params, state, x):
  if model.features is None:
    raise ValueError("distribution matching needs Model.features (the embedding before the classifier); this "
                     "model does not expose it (see unlearn_jax.model.from_linen)")
  return model.features(params, state, x).reshape(x.shape[0], -1).astype(jnp.float32)


def distribution_matching_loss(model: Model, params: Pytree, state: Pytree, x_real: jax.Array,
                               x_syn: jax.Array) -> jax.Array:
  """DM's loss of one network: ``sum_c || mean_i phi(real_c,i) - mean_j phi(syn_c,j) ||^2``.

  ``phi`` is ``model.features`` (the classifier input), flattened per example.

  Args:
    model: the network (``Model.features`` is required).
    params, state: a freshly initialised network.
    x_real: ``(C, b, ...)``: a real batch per class.
    x_syn: ``(C, ipc, ...)``: the synthetic images per class.

  Returns:
    The summed squared distance of mean embeddings.

  Raises:
    ValueError: if ``model.features`` is None.
  """
  def mean_embedding(x):
    return jnp.mean(_embed(model, params, state, x), axis=0)

  real = jax.lax.stop_gradient(jax.vmap(mean_embedding)(x_real))
  return jnp.sum((real - jax.vmap(mean_embedding)(x_syn)) ** 2)


# ----------------------------------------------------------------------------------------------------------------
# Sampling.


def _class_table(y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """``(rows (C, max count), counts (C,))``: the row numbers of each class, padded with 0."""
  y = np.asarray(y)
  groups = [np.flatnonzero(y == c) for c in range(num_classes)]
  empty = [c for c, g in enumerate(groups) if not len(g)]
  if empty:
    raise ValueError(f"condense: class(es) {empty} have no examples in the real split")
  width = max(len(g) for g in groups)
  rows = np.zeros((num_classes, width), np.int32)
  for c, g in enumerate(groups):
    rows[c, :len(g)] = g
  return rows, np.asarray([len(g) for g in groups], np.int32)


def _sample_rows(key, rows: jax.Array, counts: jax.Array, n: int) -> jax.Array:
  """``(C, n)`` row numbers: ``n`` distinct random rows of each class (``n`` <= every count)."""
  u = jax.random.uniform(key, rows.shape)
  u = jnp.where(jnp.arange(rows.shape[1])[None, :] < counts[:, None], u, jnp.inf)
  picks = jnp.argsort(u, axis=1)[:, :n]
  return jnp.take_along_axis(rows, picks, axis=1)


def _initial_images(key, x: jax.Array, rows, counts, ipc: int, init: str) -> jax.Array:
  if init == "real":
    return x[_sample_rows(key, rows, counts, ipc)]
  return jax.random.normal(key, (rows.shape[0], ipc) + x.shape[1:], x.dtype)


def _check(real: Split, num_classes: int, images_per_class: int, iterations: int, init: str,
           batch_real: int) -> tuple[np.ndarray, np.ndarray, int]:
  if images_per_class < 1:
    raise ValueError(f"condense: images_per_class must be at least 1, got {images_per_class}")
  if iterations < 1:
    raise ValueError(f"condense: iterations must be at least 1, got {iterations}")
  if batch_real < 1:
    raise ValueError(f"condense: batch_real must be at least 1, got {batch_real}")
  if init not in INITS:
    raise ValueError(f"condense: init must be one of {INITS}, got {init!r}")
  y = np.asarray(real.y)
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"condense: labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
  rows, counts = _class_table(y, num_classes)
  if init == "real" and images_per_class > counts.min():
    raise ValueError(f"condense: images_per_class={images_per_class} exceeds the {counts.min()} examples of the "
                     "smallest class (init='real' starts from distinct real images)")
  return rows, counts, int(min(batch_real, counts.min()))


def _as_split(syn: jax.Array) -> Split:
  c, ipc = syn.shape[:2]
  return Split(syn.reshape((c * ipc,) + syn.shape[2:]), jnp.repeat(jnp.arange(c, dtype=jnp.int32), ipc))


# ----------------------------------------------------------------------------------------------------------------
# Gradient matching.


@functools.partial(jax.jit, static_argnames=("model", "init_fn", "ipc", "iterations", "outer_loop", "inner_loop",
                                             "batch", "init"))
def _dc(model, init_fn, x, rows, counts, key, *, ipc, iterations, outer_loop, inner_loop, batch, init, lr_images,
        momentum, lr_net):
  start_key, loop_key = jax.random.split(key)
  syn = _initial_images(start_key, x, rows, counts, ipc, init)
  tx_img, tx_net = optax.sgd(lr_images, momentum=momentum), optax.sgd(lr_net)
  num_classes = rows.shape[0]
  labels = jnp.repeat(jnp.arange(num_classes), ipc)

  def net_loss(params, state, xs):
    logits, _ = model.apply(params, state, xs.reshape((-1,) + xs.shape[2:]), train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()

  def iteration(carry, it_key):
    syn, img_state = carry
    net_key, batch_key = jax.random.split(it_key)
    params, state = init_fn(net_key)

    def outer(ol, inner_carry):
      syn, img_state, params, net_state, total = inner_carry
      x_real = x[_sample_rows(jax.random.fold_in(batch_key, ol), rows, counts, batch)]
      loss, g = jax.value_and_grad(lambda s: gradient_matching_loss(model, params, state, x_real, s))(syn)
      updates, img_state = tx_img.update(g, img_state, syn)
      syn = optax.apply_updates(syn, updates)

      def train_net(params_and_state):  # the network learns on the (now fixed) synthetic set
        def step(_, ps):
          p, s = ps
          u, s = tx_net.update(jax.grad(net_loss)(p, state, jax.lax.stop_gradient(syn)), s, p)
          return optax.apply_updates(p, u), s
        return jax.lax.fori_loop(0, inner_loop, step, params_and_state)

      # as the reference, the network is not trained after the last image update of an outer iteration
      params, net_state = jax.lax.cond(ol < outer_loop - 1, train_net, lambda ps: ps, (params, net_state))
      return syn, img_state, params, net_state, total + loss

    syn, img_state, _, _, total = jax.lax.fori_loop(
        0, outer_loop, outer, (syn, img_state, params, tx_net.init(params), jnp.zeros((), jnp.float32)))
    return (syn, img_state), total / outer_loop

  (syn, _), losses = jax.lax.scan(iteration, (syn, tx_img.init(syn)), jax.random.split(loop_key, iterations))
  return syn, losses


def condense_gradient_matching(model: Model, init_fn: InitFn, real: Split, *, num_classes: int,
                               images_per_class: int = 10, rng: jax.Array, iterations: int = 1000,
                               outer_loop: int | None = None, inner_loop: int | None = None,
                               lr_images: float = 0.1, momentum: float = 0.5, lr_net: float = 0.01,
                               batch_real: int = 256, init: str = "real", return_losses: bool = False):
  """Dataset condensation with gradient matching (DC): a synthetic `Split` of ``images_per_class`` per class.

  Each of ``iterations`` outer iterations draws a network ``init_fn(key)``; then ``outer_loop`` times: a real
  batch per class is drawn, the images take one SGD step (``lr_images``, ``momentum``) down
  `gradient_matching_loss`, and (except after the last) the network takes ``inner_loop`` full-batch SGD steps
  (``lr_net``) of cross-entropy on the synthetic set. All of it is one jitted ``lax.scan``.

  Args:
    model: the network (its ``apply``).
    init_fn: ``key -> (params, state)`` of a fresh network of the architecture; must be hashable (a module-level
      function or ``functools.partial``) since it is a static argument of the jitted loop.
    real: the real training data.
    num_classes: number of classes; labels must lie in ``[0, num_classes)``.
    images_per_class: synthetic images per class.
    rng: PRNG key (initial images, networks, real batches).
    iterations: outer iterations (fresh networks); the reference runs 1,000.
    outer_loop, inner_loop: as the reference (`default_loops` of ``images_per_class`` when None).
    lr_images, momentum: SGD on the images (reference: 0.1, 0.5).
    lr_net: SGD on the network between image updates (reference: 0.01).
    batch_real: real examples per class and step (capped at the smallest class).
    init: ``'real'`` (random real images of each class, the reference default) or ``'noise'`` (standard normal).
    return_losses: also return the per-iteration mean matching loss, shape ``(iterations,)``.

  Returns:
    The synthetic `Split` (``x`` ``(num_classes * images_per_class, ...)``, ``y`` each image's class, no
    ``index``), or ``(split, losses)``.

  Raises:
    ValueError: for a bad count, an unknown ``init``, an empty class, labels out of range, or (``init='real'``)
      more images per class than the smallest class holds.

  References:
    Zhao, Mopuri and Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021, Algorithm 1.

  Example:
    >>> syn = condense_gradient_matching(model, init_fn, train, num_classes=10, rng=jax.random.key(0),
    ...                                  iterations=200)
  """
  rows, counts, batch = _check(real, num_classes, images_per_class, iterations, init, batch_real)
  default_outer, default_inner = default_loops(images_per_class)
  outer_loop = default_outer if outer_loop is None else int(outer_loop)
  inner_loop = default_inner if inner_loop is None else int(inner_loop)
  if outer_loop < 1 or inner_loop < 0:
    raise ValueError(f"condense_gradient_matching: outer_loop must be >= 1 and inner_loop >= 0, got "
                     f"{outer_loop}, {inner_loop}")
  syn, losses = _dc(model, init_fn, real.x, jnp.asarray(rows), jnp.asarray(counts), rng, ipc=int(images_per_class),
                    iterations=int(iterations), outer_loop=outer_loop, inner_loop=inner_loop, batch=batch, init=init,
                    lr_images=float(lr_images), momentum=float(momentum), lr_net=float(lr_net))
  out = _as_split(syn)
  return (out, losses) if return_losses else out


# ----------------------------------------------------------------------------------------------------------------
# Distribution matching.


@functools.partial(jax.jit, static_argnames=("model", "init_fn", "ipc", "iterations", "batch", "init"))
def _dm(model, init_fn, x, rows, counts, key, *, ipc, iterations, batch, init, lr_images, momentum):
  start_key, loop_key = jax.random.split(key)
  syn = _initial_images(start_key, x, rows, counts, ipc, init)
  tx = optax.sgd(lr_images, momentum=momentum)

  def iteration(carry, it_key):
    syn, opt_state = carry
    net_key, batch_key = jax.random.split(it_key)
    params, state = init_fn(net_key)
    x_real = x[_sample_rows(batch_key, rows, counts, batch)]
    loss, g = jax.value_and_grad(lambda s: distribution_matching_loss(model, params, state, x_real, s))(syn)
    updates, opt_state = tx.update(g, opt_state, syn)
    return (optax.apply_updates(syn, updates), opt_state), loss

  (syn, _), losses = jax.lax.scan(iteration, (syn, tx.init(syn)), jax.random.split(loop_key, iterations))
  return syn, losses


def condense_distribution_matching(model: Model, init_fn: InitFn, real: Split, *, num_classes: int,
                                   images_per_class: int = 10, rng: jax.Array, iterations: int = 20000,
                                   lr_images: float = 1.0, momentum: float = 0.5, batch_real: int = 256,
                                   init: str = "real", return_losses: bool = False):
  """Dataset condensation with distribution matching (DM): a synthetic `Split` of ``images_per_class`` per class.

  Each of ``iterations`` steps draws a network ``init_fn(key)`` and a real batch per class and takes one SGD
  step on the images down `distribution_matching_loss` (mean embeddings per class). One jitted ``lax.scan``.

  Args:
    model: the network; ``model.features`` gives the embedding.
    init_fn: ``key -> (params, state)`` of a fresh network (hashable; see `condense_gradient_matching`).
    real: the real training data.
    num_classes: number of classes.
    images_per_class: synthetic images per class.
    rng: PRNG key.
    iterations: steps (fresh networks); the reference runs 20,000.
    lr_images, momentum: SGD on the images (reference: 1.0, 0.5).
    batch_real: real examples per class and step (capped at the smallest class).
    init: ``'real'`` (reference default) or ``'noise'``.
    return_losses: also return the per-step loss, shape ``(iterations,)``.

  Returns:
    The synthetic `Split`, or ``(split, losses)``.

  Raises:
    ValueError: as `condense_gradient_matching`, or if ``model.features`` is None.

  References:
    Zhao and Bilen, "Dataset Condensation with Distribution Matching", WACV 2023, Eq. 4.

  Example:
    >>> syn = condense_distribution_matching(model, init_fn, train, num_classes=10, rng=jax.random.key(0),
    ...                                      iterations=2000)
  """
  rows, counts, batch = _check(real, num_classes, images_per_class, iterations, init, batch_real)
  if model.features is None:
    raise ValueError("condense_distribution_matching: model.features is None; DM needs the embedding before the "
                     "classifier (a Linen module whose __call__ takes features=True, see from_linen)")
  syn, losses = _dm(model, init_fn, real.x, jnp.asarray(rows), jnp.asarray(counts), rng, ipc=int(images_per_class),
                    iterations=int(iterations), batch=batch, init=init, lr_images=float(lr_images),
                    momentum=float(momentum))
  out = _as_split(syn)
  return (out, losses) if return_losses else out
