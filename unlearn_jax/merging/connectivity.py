"""Linear mode connectivity: interpolation paths, loss and accuracy barriers, BatchNorm reset, REPAIR, temperature.

Two networks ``A`` and ``B`` (of the same architecture, ``B`` possibly permuted to align with ``A``) are joined by
the straight line ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B``. Along it we measure loss and accuracy
at ``num_points`` values of ``alpha`` in ``[0, 1]`` (25 by default). The **loss barrier** is
``max_alpha L(theta(alpha)) - ((1 - alpha) L(theta_A) + alpha L(theta_B))``, the largest excess over the linear
interpolation of the end losses; the accuracy barrier is the same with the accuracy deficit.

Interpolated models may be corrected before they are scored:

- ``'reset_bn'``: the BatchNorm running statistics are recomputed on training data (`reset_batch_norm`);
- ``'repair'``: every hidden affine layer (Dense/Conv with bias, or a normalisation's scale and bias) is rescaled
  so each channel's mean and standard deviation equal the interpolation of the endpoints' (`repair`).

With ``calibrate=True`` each interpolated model also gets its own softmax temperature, fitted by minimising the
NLL (`fit_temperature`), and the calibrated loss barrier is reported: the part of the barrier that a single
scalar cannot explain. `layerwise_connectivity` checks, layer by layer, whether the merged model's outputs are
an exponentially weighted sum of the endpoints' (LEWC), which is why a temperature can close the barrier of
wide models without any permutation.

Example:
    >>> curve = barrier(model, (params_a, state_a), (params_b_aligned, state_b), test_split)
    >>> curve['loss_barrier'], curve['accuracy_barrier']
    >>> curves(model, a, b, {'train': train, 'test': test}, correction='repair', correction_split=train,
    ...        layers=hidden_layers(spec), calibrate=True)

References:
    Frankle, Dziugaite, Roy and Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020.
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023
    (barrier curves, BatchNorm reset, the width study with temperature calibration).
    Jordan, Sedghi, Saukh, Entezari and Neyshabur, "REPAIR: REnormalizing Permuted Activations for
    Interpolation Repair", ICLR 2023.
    Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML 2017 (temperature scaling).
    Ito, Yamada, Chijiwa and Kumagai, "Do We Really Need Permutations? Impact of Width Expansion on Linear Mode
    Connectivity", arXiv:2510.08023, 2025 (LEWC).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from unlearn_jax.data import split as split_lib
from unlearn_jax.data.split import Split
from unlearn_jax.evaluation import metrics
from unlearn_jax.merging.permutation import spec as spec_lib
from unlearn_jax.model import Model
from unlearn_jax.progress import progress

Pytree = Any
Endpoint = tuple  # (params, state)

CORRECTIONS = ("none", "reset_bn", "repair")
DEFAULT_POINTS = 25


# ----------------------------------------------------------------------------------------------------------------
# Interpolation and barriers.


def check_same_structure(tree_a: Pytree, tree_b: Pytree, names=("a", "b"), fn: str = "interpolate") -> None:
  """Raises ValueError naming the first key path where the two pytrees differ in keys or shapes."""
  flat_a, flat_b = spec_lib.flatten(tree_a), spec_lib.flatten(tree_b)
  for path in list(flat_a) + list(flat_b):
    if path not in flat_a or path not in flat_b:
      has, lacks = (names[0], names[1]) if path in flat_a else (names[1], names[0])
      raise ValueError(f"{fn}: key {path!r} is in {has} but missing from {lacks}")
    if np.shape(flat_a[path]) != np.shape(flat_b[path]):
      raise ValueError(f"{fn}: key {path!r} has shape {np.shape(flat_a[path])} in {names[0]} but "
                       f"{np.shape(flat_b[path])} in {names[1]}")


@jax.jit
def _lerp(tree_a, tree_b, alpha):
  def one(a, b):
    if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
      return a
    return (a + alpha * (b - a)).astype(jnp.result_type(a))  # exactly a when b == a
  return jax.tree.map(one, tree_a, tree_b)


def interpolate(params_a: Pytree, params_b: Pytree, alpha) -> Pytree:
  """``(1 - alpha) * params_a + alpha * params_b``, leaf by leaf (non-float leaves are taken from ``a``).

  Works for any pytree (parameters or BatchNorm state); ``alpha`` is traced, so a sweep compiles once.

  Raises:
    ValueError: naming the first key path where the two trees differ.

  Example:
    >>> mid = interpolate(params_a, params_b, 0.5)
  """
  check_same_structure(params_a, params_b)
  return _lerp(params_a, params_b, jnp.float32(alpha))


def barrier_height(alphas: Sequence[float], values: Sequence[float], *, higher_is_better: bool = False) -> float:
  """The largest deviation of ``values`` from the line joining its end points, in the bad direction.

  For losses (``higher_is_better=False``) this is ``max(values - line)``; for accuracies
  ``max(line - values)``. It is 0 for a straight or convex-below curve and never negative.

  Example:
    >>> barrier_height([0, .5, 1], [0.1, 0.9, 0.2])   # 0.9 - 0.15
    0.75
  """
  a, v = np.asarray(alphas, np.float64), np.asarray(values, np.float64)
  if a.shape != v.shape or a.ndim != 1 or a.size < 2:
    raise ValueError(f"barrier_height: alphas {a.shape} and values {v.shape} must be 1-D of equal length >= 2")
  line = v[0] + a * (v[-1] - v[0])
  excess = (line - v) if higher_is_better else (v - line)
  return float(max(0.0, np.max(excess)))


# ----------------------------------------------------------------------------------------------------------------
# Scoring and temperature.


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
  z = np.asarray(logits, np.float64) / temperature
  return float(np.mean(special.logsumexp(z, axis=1) - z[np.arange(z.shape[0]), np.asarray(labels)]))


@jax.jit
def _squared_distances(params_a: Pytree, params_b: Pytree) -> list[jax.Array]:
  return [jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))
          for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b))
          if jnp.issubdtype(jnp.result_type(a), jnp.floating)]


def l2_distance(params_a: Pytree, params_b: Pytree) -> float:
  """The Euclidean distance ``||a - b||_2`` between two parameter pytrees, all float leaves as one vector.

  Ito et al. (arXiv:2402.04051) observe that weight matching barely reduces this distance between independently
  trained models although it removes most of their loss barrier: it aligns the dominant singular directions of
  the weights instead (see `unlearn_jax.merging.permutation.singular_alignment`).

  Raises:
    ValueError: naming the first key path where the two trees differ.

  Example:
    >>> before = l2_distance(params_a, params_b)
    >>> after = l2_distance(params_a, apply_permutation(spec, weight_matching(spec, params_a, params_b, rng=key),
    ...                                                 params_b))
  """
  check_same_structure(params_a, params_b, fn="l2_distance")
  return float(np.sqrt(sum(float(s) for s in _squared_distances(params_a, params_b))))


def evaluate(model: Model, params: Pytree, state: Pytree, split: Split, *, batch_size: int = 1024,
             temperature: float = 1.0) -> dict[str, float]:
  """``{'loss': mean cross-entropy, 'accuracy'}`` of the eval-mode model on ``split`` (logits divided by
  ``temperature``)."""
  logits = metrics.predict(model, params, state, split, batch_size=batch_size)
  y = np.asarray(split.y)
  return {"loss": _nll(logits, y, temperature), "accuracy": float(np.mean(np.argmax(logits, 1) == y))}


@functools.partial(jax.jit, static_argnames=("iters",))
def _golden_section(logits, labels, log_lo, log_hi, iters: int):
  logits = logits.astype(jnp.float32)

  def nll(log_t):
    z = logits / jnp.exp(log_t)
    return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, labels[:, None], axis=1)[:, 0])

  inv_phi = (jnp.sqrt(5.0) - 1.0) / 2.0

  def body(_, bounds):
    lo, hi = bounds
    c, d = hi - inv_phi * (hi - lo), lo + inv_phi * (hi - lo)
    keep_left = nll(c) < nll(d)
    return jnp.where(keep_left, lo, c), jnp.where(keep_left, d, hi)

  lo, hi = jax.lax.fori_loop(0, iters, body, (log_lo, log_hi))
  return jnp.exp((lo + hi) / 2.0)


def fit_temperature(logits, labels, *, lower: float = 1e-2, upper: float = 1e2, iters: int = 64) -> float:
  """The softmax temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on ``labels``.

  A golden-section search over ``log T`` in ``[log lower, log upper]``: the NLL is convex in ``1/T``, hence
  unimodal in ``log T``, so the bracket shrinks onto the minimiser (to a relative precision ~1e-12 after 64
  steps). A minimiser outside the bracket returns the nearer bound.

  Args:
    logits: ``(n, num_classes)`` held-out logits.
    labels: ``(n,)`` integer labels.
    lower, upper: the bracket for ``T``.
    iters: golden-section steps.

  Returns:
    ``T`` as a Python float; scaling the logits by ``s`` scales it by ``s``.

  References:
    Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.

  Example:
    >>> t = fit_temperature(logits, y)
    >>> calibrated = jax.nn.softmax(logits / t)
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"fit_temperature: logits {logits.shape} and labels {labels.shape} must be (n, C) and (n,)")
  if not 0 < lower < upper:
    raise ValueError(f"fit_temperature: need 0 < lower < upper, got lower={lower}, upper={upper}")
  return float(_golden_section(logits, labels.astype(jnp.int32), jnp.log(jnp.float32(lower)),
                               jnp.log(jnp.float32(upper)), iters))


# ----------------------------------------------------------------------------------------------------------------
# Batching helpers (every example counts once: the last batch is zero-padded and masked).


def masked_batches(split: Split, batch_size: int):
  """``(xb, wb)``: ``split.x`` as ``(num_batches, batch_size, ...)`` zero-padded batches and 0/1 row weights."""
  n = split.x.shape[0]
  split_lib.num_batches(n, batch_size)  # checks batch_size > 0 and n > 0
  size = min(batch_size, n)
  nb = split_lib.num_batches(n, size, drop_remainder=False)
  pad = nb * size - n
  x = jnp.pad(jnp.asarray(split.x), [(0, pad)] + [(0, 0)] * (split.x.ndim - 1))
  w = jnp.pad(jnp.ones((n,), jnp.float32), (0, pad))
  return x.reshape((nb, size) + x.shape[1:]), w.reshape(nb, size)


def intermediate_key(module: str) -> str:
  """The key of a module's output in `Model.intermediates`: ``'a/b' -> "['a']['b']['__call__'][0]"``."""
  return "".join(f"['{p}']" for p in module.split("/")) + "['__call__'][0]"


def select_activations(model: Model, params, state, x, modules: Sequence[str]) -> dict[str, jax.Array]:
  """``{module: output}`` of the named modules, from ``model.intermediates``; ValueError naming a missing one."""
  if model.intermediates is None:
    raise ValueError("this Model has no intermediates function; build it with unlearn_jax.model.from_linen")
  inter = model.intermediates(params, state, x)
  out = {}
  for m in modules:
    key = intermediate_key(m)
    if key not in inter:
      raise ValueError(f"module {m!r}: no intermediate output {key} (available: {sorted(inter)[:8]}...)")
    out[m] = inter[key]
  return out


def _rows(act: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Activations ``(batch, ..., n)`` as rows ``(batch * positions, n)`` with each row's example weight."""
  act = act.astype(jnp.float32)
  positions = int(np.prod(act.shape[1:-1])) if act.ndim > 2 else 1
  return act.reshape(-1, act.shape[-1]), jnp.repeat(w, positions)


@functools.partial(jax.jit, static_argnames=("model", "modules"))
def channel_moments(model: Model, modules: tuple[str, ...], params, state, xb, wb):
  """``{module: (count, sum, sum of squares)}`` of each output channel over every position of every example.

  ``xb``/``wb`` are `masked_batches`; the batches are scanned, so memory is one batch of activations.
  """

  def one(x, w):
    out = {}
    for m, act in select_activations(model, params, state, x, modules).items():
      rows, rw = _rows(act, w)
      out[m] = (jnp.sum(rw), rw @ rows, rw @ jnp.square(rows))
    return out

  def body(total, inputs):
    return jax.tree.map(jnp.add, total, one(*inputs)), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, xb[0], wb[0]))
  return jax.lax.scan(body, zeros, (xb, wb))[0]


def _mean_std(moments, eps: float = 0.0):
  count, total, squares = moments
  mean = total / count
  var = jnp.maximum(squares / count - jnp.square(mean), 0.0)
  return mean, jnp.sqrt(var + eps)


# ----------------------------------------------------------------------------------------------------------------
# BatchNorm reset and REPAIR.


@functools.partial(jax.jit, static_argnames=("model",))
def _reset_bn(model: Model, params, state, xb, rng):
  floats = lambda t: jax.tree.map(lambda a: jnp.issubdtype(a.dtype, jnp.floating), t)
  is_float = floats(state)
  zeros = jax.tree.map(lambda a, f: jnp.zeros_like(a) if f else a, state, is_float)
  ones = jax.tree.map(lambda a, f: jnp.ones_like(a) if f else a, state, is_float)
  rng0 = None if rng is None else jax.random.fold_in(rng, 0)
  # Train mode updates each statistic s <- d * s + (1 - d) * batch_stat; probing from 0 and 1 gives d.
  n0 = model.apply(params, zeros, xb[0], train=True, rng=rng0)[1]
  n1 = model.apply(params, ones, xb[0], train=True, rng=rng0)[1]
  decay = jax.tree.map(lambda a, b: b - a, n0, n1)

  def body(total, inputs):
    i, x = inputs
    key = None if rng is None else jax.random.fold_in(rng, i)
    new = model.apply(params, zeros, x, train=True, rng=key)[1]
    return jax.tree.map(jnp.add, total, new), None

  total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, zeros), (jnp.arange(xb.shape[0]), xb))

  def finish(old, tot, d, f):
    if not f:
      return old
    updated = d < 1.0 - 1e-6
    return jnp.where(updated, tot / xb.shape[0] / jnp.where(updated, 1.0 - d, 1.0), old).astype(old.dtype)

  return jax.tree.map(finish, state, total, decay, is_float)


def reset_batch_norm(model: Model, params: Pytree, state: Pytree, split: Split, *, batch_size: int = 256,
                     rng: jax.Array | None = None) -> Pytree:
  """Recomputes the running statistics in ``state`` as their average over batches of ``split``.

  Runs the model in train mode on every batch (the last one filled by wrapping around) and averages the batch
  statistics each normalisation layer computes, as PyTorch's ``momentum=None`` reset does. The update rule
  ``s <- d * s + (1 - d) * batch_stat`` is read off the model itself (by probing with all-zero and all-one
  statistics), so any exponential-moving-average state works whatever its momentum; state the model does not
  update in train mode is returned unchanged.

  Args:
    model: the network; ``model.apply(..., train=True)`` must return the updated state.
    params: the (interpolated) parameters.
    state: the state whose statistics are recomputed; ``{}`` is returned as is.
    split: training data.
    batch_size: rows per batch (each batch's statistics count equally).
    rng: optional key for stochastic layers in train mode.

  Returns:
    The new state, same structure and dtypes.

  References:
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin", ICLR 2023 (BatchNorm statistics reset after
    interpolation); Jordan et al., "REPAIR", ICLR 2023, Sec. 3.

  Example:
    >>> state_mid = reset_batch_norm(model, interpolate(pa, pb, .5), interpolate(sa, sb, .5), train_split)
  """
  if not jax.tree.leaves(state):
    return state
  xb, _ = split.batches(min(batch_size, split.size), None, drop_remainder=False)
  return _reset_bn(model, params, state, xb, rng)


def _affine_leaves(flat: Mapping[str, Any], layer: str) -> tuple[str, str]:
  scale = next((f"{layer}/{k}" for k in ("kernel", "scale") if f"{layer}/{k}" in flat), None)
  bias = f"{layer}/bias"
  if scale is None or bias not in flat:
    raise ValueError(f"repair: layer {layer!r} needs '{layer}/bias' and '{layer}/kernel' or '{layer}/scale' in "
                     "params")
  return scale, bias


def _set_leaves(tree: Pytree, updates: Mapping[str, Any]) -> Pytree:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  new = [updates.get(spec_lib.path_str(p), leaf) for p, leaf in leaves]
  return jax.tree_util.tree_unflatten(treedef, new)


def endpoint_statistics(model: Model, params: Pytree, state: Pytree, split: Split, layers: Sequence[str], *,
                        batch_size: int = 1024) -> dict[str, tuple[jax.Array, jax.Array]]:
  """``{layer: (mean, std)}`` of each output channel of the named modules over ``split`` (eval mode)."""
  xb, wb = masked_batches(split, batch_size)
  moments = channel_moments(model, tuple(layers), params, state, xb, wb)
  return {m: _mean_std(moments[m]) for m in layers}


def repair_to_targets(model: Model, params: Pytree, state: Pytree, split: Split, layers: Sequence[str],
                      targets: Mapping[str, tuple[jax.Array, jax.Array]], *, batch_size: int = 1024,
                      eps: float = 1e-5) -> Pytree:
  """Rescales each layer in turn so its output channels have the ``targets`` ``(mean, std)`` on ``split``.

  Layer ``l``'s output ``y = x @ kernel + bias`` (or a normalisation's ``... * scale + bias``) becomes
  ``(y - m) * t_std / s + t_mean`` with ``(m, s)`` measured after the earlier layers were corrected, by scaling
  the kernel's (scale's) last axis and rewriting the bias. Returns the new params.
  """
  xb, wb = masked_batches(split, batch_size)
  layers = tuple(layers)
  flat = spec_lib.flatten(params)
  for layer in layers:
    _affine_leaves(flat, layer)
  for layer in layers:
    flat = spec_lib.flatten(params)
    scale_key, bias_key = _affine_leaves(flat, layer)
    mean, std = _mean_std(channel_moments(model, layers, params, state, xb, wb)[layer])
    t_mean, t_std = targets[layer]
    ratio = t_std / (std + eps)
    params = _set_leaves(params, {scale_key: (flat[scale_key] * ratio).astype(flat[scale_key].dtype),
                                  bias_key: ((flat[bias_key] - mean) * ratio + t_mean).astype(flat[bias_key].dtype)})
  return params


def repair(model: Model, endpoint_a: Endpoint, endpoint_b: Endpoint, alpha: float, split: Split, *,
           layers: Sequence[str], batch_size: int = 1024, eps: float = 1e-5) -> tuple[Pytree, Pytree]:
  """REPAIR: the interpolated model at ``alpha`` with each hidden channel's statistics restored.

  For every layer in ``layers`` (in forward order), the interpolated network's output channels are rescaled and
  shifted so that their mean and standard deviation over ``split`` equal ``(1 - alpha)`` times those of ``A``
  plus ``alpha`` times those of ``B``, undoing the variance collapse that averaging decorrelated units causes.
  The correction is folded into the layer's kernel (or normalisation scale) and bias, so the result is an
  ordinary ``(params, state)`` of the same architecture.

  Args:
    model: the network (needs ``Model.intermediates``, e.g. from `unlearn_jax.model.from_linen`).
    endpoint_a: ``(params, state)`` of ``A``.
    endpoint_b: ``(params, state)`` of ``B``, already aligned to ``A``.
    alpha: the interpolation coefficient.
    split: training data for the statistics.
    layers: module paths of affine layers with a bias (`unlearn_jax.merging.permutation.hidden_layers`).
    batch_size: rows per forward pass.
    eps: added to the measured standard deviation.

  Returns:
    ``(params, state)`` of the repaired interpolated model.

  References:
    Jordan, Sedghi, Saukh, Entezari and Neyshabur, "REPAIR: REnormalizing Permuted Activations for
    Interpolation Repair", ICLR 2023.

  Example:
    >>> p, s = repair(model, (pa, sa), (pb_aligned, sb), 0.5, train_split, layers=hidden_layers(spec))
  """
  if not layers:
    raise ValueError("repair: layers is empty; give the module paths of the hidden affine layers")
  flat = spec_lib.flatten(endpoint_a[0])
  for layer in layers:
    _affine_leaves(flat, layer)
  stats_a = endpoint_statistics(model, *endpoint_a, split, layers, batch_size=batch_size)
  stats_b = endpoint_statistics(model, *endpoint_b, split, layers, batch_size=batch_size)
  return _repair_at(model, endpoint_a, endpoint_b, alpha, split, layers, stats_a, stats_b, batch_size, eps)


def _repair_at(model, endpoint_a, endpoint_b, alpha, split, layers, stats_a, stats_b, batch_size, eps):
  params = interpolate(endpoint_a[0], endpoint_b[0], alpha)
  state = interpolate(endpoint_a[1], endpoint_b[1], alpha)
  targets = {m: tuple((1 - alpha) * sa + alpha * sb for sa, sb in zip(stats_a[m], stats_b[m])) for m in layers}
  return repair_to_targets(model, params, state, split, layers, targets, batch_size=batch_size, eps=eps), state


# ----------------------------------------------------------------------------------------------------------------
# Curves.


def curves(model: Model, endpoint_a: Endpoint, endpoint_b: Endpoint, splits: Mapping[str, Split], *,
           num_points: int = DEFAULT_POINTS, alphas: Sequence[float] | None = None, correction: str = "none",
           correction_split: Split | None = None, layers: Sequence[str] | None = None, calibrate: bool = False,
           batch_size: int = 1024, rng: jax.Array | None = None) -> dict[str, dict]:
  """Loss and accuracy along the linear path from ``A`` to ``B`` on each split, with their barriers.

  Args:
    model: the network.
    endpoint_a: ``(params, state)`` of ``A`` (``alpha = 0``).
    endpoint_b: ``(params, state)`` of ``B`` (``alpha = 1``), aligned to ``A`` or not.
    splits: ``{name: Split}`` to score every interpolated model on, e.g. ``{'train': ..., 'test': ...}``.
    num_points: the number of evenly spaced ``alpha`` in ``[0, 1]`` (ignored if ``alphas`` is given).
    alphas: explicit interpolation coefficients (sorted, first 0 and last 1 for a meaningful barrier).
    correction: ``'none'``, ``'reset_bn'`` (`reset_batch_norm`) or ``'repair'`` (`repair`), applied to every
      point, the end points included.
    correction_split: the training data the correction measures statistics on (required unless ``'none'``).
    layers: the layers REPAIR rescales (required for ``'repair'``).
    calibrate: also fit a temperature per model and split (`fit_temperature`) and report the calibrated loss.
    batch_size: rows per forward pass.
    rng: optional key for stochastic layers during the BatchNorm reset.

  Returns:
    ``{split name: {'alpha', 'loss', 'accuracy', 'loss_barrier', 'accuracy_barrier'}}`` (lists of floats and
    floats), plus ``'temperature'``, ``'calibrated_loss'`` and ``'calibrated_loss_barrier'`` when
    ``calibrate``.

  Example:
    >>> out = curves(model, (pa, sa), (pb, sb), {'test': test}, correction='reset_bn', correction_split=train)
  """
  if correction not in CORRECTIONS:
    raise ValueError(f"curves: correction must be one of {CORRECTIONS}, got {correction!r}")
  if correction != "none" and correction_split is None:
    raise ValueError(f"curves: correction={correction!r} needs correction_split (training data)")
  if correction == "repair" and not layers:
    raise ValueError("curves: correction='repair' needs layers (e.g. permutation.hidden_layers(spec))")
  if not splits:
    raise ValueError("curves: splits is empty")
  check_same_structure(endpoint_a[0], endpoint_b[0], ("endpoint_a params", "endpoint_b params"), "curves")
  check_same_structure(endpoint_a[1], endpoint_b[1], ("endpoint_a state", "endpoint_b state"), "curves")
  alphas = np.linspace(0.0, 1.0, num_points) if alphas is None else np.asarray(alphas, np.float64)
  if alphas.ndim != 1 or alphas.size < 2:
    raise ValueError(f"curves: need at least 2 alphas, got {alphas.size}")
  if correction == "repair":
    flat = spec_lib.flatten(endpoint_a[0])
    for layer in layers:
      _affine_leaves(flat, layer)
    stats_a = endpoint_statistics(model, *endpoint_a, correction_split, layers, batch_size=batch_size)
    stats_b = endpoint_statistics(model, *endpoint_b, correction_split, layers, batch_size=batch_size)
  out = {name: {"alpha": [float(a) for a in alphas], "loss": [], "accuracy": []} for name in splits}
  if calibrate:
    for row in out.values():
      row.update(temperature=[], calibrated_loss=[])
  for alpha in progress(alphas, desc=f"interpolation ({correction})", unit="point"):
    alpha = float(alpha)
    if correction == "repair":
      params, state = _repair_at(model, endpoint_a, endpoint_b, alpha, correction_split, tuple(layers), stats_a,
                                 stats_b, batch_size, 1e-5)
    else:
      params = interpolate(endpoint_a[0], endpoint_b[0], alpha)
      state = interpolate(endpoint_a[1], endpoint_b[1], alpha)
      if correction == "reset_bn":
        state = reset_batch_norm(model, params, state, correction_split, batch_size=min(batch_size, 256), rng=rng)
    for name, split in splits.items():
      logits = metrics.predict(model, params, state, split, batch_size=batch_size)
      y = np.asarray(split.y)
      row = out[name]
      row["loss"].append(_nll(logits, y))
      row["accuracy"].append(float(np.mean(np.argmax(logits, 1) == y)))
      if calibrate:
        t = fit_temperature(logits, y)
        row["temperature"].append(t)
        row["calibrated_loss"].append(_nll(logits, y, t))
  for row in out.values():
    row["loss_barrier"] = barrier_height(alphas, row["loss"])
    row["accuracy_barrier"] = barrier_height(alphas, row["accuracy"], higher_is_better=True)
    if calibrate:
      row["calibrated_loss_barrier"] = barrier_height(alphas, row["calibrated_loss"])
  return out


def barrier(model: Model, endpoint_a: Endpoint, endpoint_b: Endpoint, split: Split, **options) -> dict:
  """`curves` on one split: ``{'alpha', 'loss', 'accuracy', 'loss_barrier', 'accuracy_barrier', ...}``.

  Example:
    >>> barrier(model, (pa, sa), (pa, sa), test)['loss_barrier']   # a model with itself
    0.0
  """
  return curves(model, endpoint_a, endpoint_b, {"eval": split}, **options)["eval"]


# ----------------------------------------------------------------------------------------------------------------
# Layerwise exponentially weighted connectivity (LEWC).


def _flat_rows(act: jax.Array, w: jax.Array) -> jax.Array:
  """A module output ``(batch, ...)`` as ``(batch, features)`` float32 rows, zeroed where ``w`` is 0 (padding)."""
  return act.astype(jnp.float32).reshape(act.shape[0], -1) * w[:, None]


@functools.partial(jax.jit, static_argnames=("model", "modules"))
def _lewc_sums(model: Model, modules: tuple[str, ...], merged, end_a, end_b, xb, wb, coefs):
  """Per module: the Gram entries of ``(a, b, m)`` and the squared residuals of each ``coefs`` row.

  ``coefs`` is ``{module: (r, 2)}``: the residual ``||m - c_a a - c_b b||^2`` is summed for each row ``(c_a, c_b)``.
  """

  def one(x, w):
    acts = [select_activations(model, *e, x, modules) for e in (merged, end_a, end_b)]
    out = {}
    hi = jax.lax.Precision.HIGHEST
    for mod in modules:
      m, a, b = (_flat_rows(act[mod], w) for act in acts)
      stacked = jnp.stack([a, b])  # (2, rows, features)
      gram = jnp.einsum("irf,jrf->ij", stacked, stacked, precision=hi)
      rhs = jnp.einsum("irf,rf->i", stacked, m, precision=hi)
      residual = m[None] - jnp.einsum("ci,irf->crf", coefs[mod], stacked, precision=hi)
      out[mod] = (gram, rhs, jnp.sum(jnp.square(m)), jnp.sum(jnp.square(residual), axis=(1, 2)))
    return out

  def body(total, inputs):
    return jax.tree.map(jnp.add, total, one(*inputs)), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, xb[0], wb[0]))
  return jax.lax.scan(body, zeros, (xb, wb))[0]


def layerwise_connectivity(model: Model, endpoint_a: Endpoint, endpoint_b: Endpoint, split: Split, *,
                           layers: Sequence[str], alpha: float = 0.5, merged: Endpoint | None = None,
                           batch_size: int = 1024) -> dict[str, dict]:
  """LEWC check: is each layer of the merged model an exponentially weighted sum of the endpoints' layers?

  Layerwise exponentially weighted connectivity says that for the merged weights ``(1 - alpha) A + alpha B`` the
  output ``z_l`` of the ``l``-th layer satisfies ``z_l(merged) ~ (1 - alpha)^l z_l(A) + alpha^l z_l(B)``: each
  affine layer multiplies the weight carried by each endpoint's signal by its coefficient, when the two models'
  units do not respond to each other's features (as in wide, independently trained networks), so the merged
  logits are those of the endpoints' ensemble scaled by ``2^(1-L)`` at the midpoint, which a softmax temperature
  undoes. This function measures, per layer, how true that is on ``split``:

  - the **fitted weights** ``(c_a, c_b)`` minimising ``||z(merged) - c_a z(A) - c_b z(B)||^2`` over every example
    and feature (ordinary least squares, closed form on the 2 x 2 Gram matrix; the minimum-norm solution when
    ``z(A)`` and ``z(B)`` are collinear, e.g. equal endpoints), with its **relative residual**
    ``||z(merged) - c_a z(A) - c_b z(B)|| / ||z(merged)||`` (0: the merged layer is exactly such a sum);
  - the fitted **exponents** ``log c_a / log(1 - alpha)`` and ``log c_b / log alpha`` (LEWC predicts ``l``; None
    when a weight is not positive or ``alpha`` is 0 or 1);
  - the relative residual with LEWC's own weights ``((1 - alpha)^l, alpha^l)`` (``lewc_residual``).

  Choices (the paper states LEWC for the outputs of each layer; where we had to choose): a layer's output is the
  module's output as Flax captures it, i.e. the affine (Dense/Conv) output before its ReLU; the depth ``l`` of
  ``layers[i]`` is ``i + 1``, so pass every affine layer in forward order (the classifier last, e.g.
  `unlearn_jax.merging.permutation.kernel_layers`). The first layer is affine in the weights, so its fitted
  weights are exactly ``(1 - alpha, alpha)`` with residual 0 for any two endpoints.

  Args:
    model: the network (needs ``Model.intermediates``, e.g. from `unlearn_jax.model.from_linen`).
    endpoint_a: ``(params, state)`` of ``A``.
    endpoint_b: ``(params, state)`` of ``B`` (aligned to ``A`` or not).
    split: the data (every example counts once).
    layers: module paths in forward order.
    alpha: the interpolation coefficient of ``B``.
    merged: ``(params, state)`` of the merged model; by default the interpolation at ``alpha`` (state included).
    batch_size: rows per forward pass.

  Returns:
    ``{layer: {'depth', 'weight_a', 'weight_b', 'residual', 'exponent_a', 'exponent_b', 'lewc_weight_a',
    'lewc_weight_b', 'lewc_residual'}}`` (Python floats / ints / None).

  References:
    Ito, Yamada, Chijiwa and Kumagai, "Do We Really Need Permutations? Impact of Width Expansion on Linear Mode
    Connectivity", arXiv:2510.08023, 2025 (LEWC).

  Example:
    >>> rows = layerwise_connectivity(model, (pa, sa), (pb, sb), test_split, layers=('Dense_0', 'Dense_1',
    ...                               'Dense_2'))
    >>> rows['Dense_2']['weight_a'], rows['Dense_2']['lewc_weight_a']   # fitted vs 0.5 ** 3
  """
  layers = tuple(layers)
  if not layers:
    raise ValueError("layerwise_connectivity: layers is empty; give the module paths in forward order")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"layerwise_connectivity: alpha must be in [0, 1], got {alpha}")
  check_same_structure(endpoint_a[0], endpoint_b[0], ("endpoint_a params", "endpoint_b params"),
                       "layerwise_connectivity")
  if merged is None:
    merged = (interpolate(endpoint_a[0], endpoint_b[0], alpha), interpolate(endpoint_a[1], endpoint_b[1], alpha))
  xb, wb = masked_batches(split, batch_size)
  lewc = {m: ((1.0 - alpha) ** (i + 1), alpha ** (i + 1)) for i, m in enumerate(layers)}
  placeholder = {m: jnp.asarray([v, v], jnp.float32) for m, v in lewc.items()}
  sums = jax.device_get(_lewc_sums(model, layers, merged, endpoint_a, endpoint_b, xb, wb, placeholder))
  fitted = {}
  for m in layers:
    gram, rhs = np.asarray(sums[m][0], np.float64), np.asarray(sums[m][1], np.float64)
    fitted[m] = np.linalg.lstsq(gram, rhs, rcond=1e-6)[0]
  # second pass: residuals measured directly (no cancellation in ||m||^2 - 2 c.r + c'Gc)
  coefs = {m: jnp.asarray([fitted[m], lewc[m]], jnp.float32) for m in layers}
  sums = jax.device_get(_lewc_sums(model, layers, merged, endpoint_a, endpoint_b, xb, wb, coefs))

  def exponent(c, base):
    return float(np.log(c) / np.log(base)) if c > 0 and 0.0 < base < 1.0 else None

  out = {}
  for i, m in enumerate(layers):
    norm = max(float(sums[m][2]), 1e-30)
    res_fit, res_lewc = (float(np.sqrt(max(float(r), 0.0) / norm)) for r in sums[m][3])
    c_a, c_b = (float(c) for c in fitted[m])
    out[m] = {"depth": i + 1, "weight_a": c_a, "weight_b": c_b, "residual": res_fit,
              "exponent_a": exponent(c_a, 1.0 - alpha), "exponent_b": exponent(c_b, alpha),
              "lewc_weight_a": lewc[m][0], "lewc_weight_b": lewc[m][1], "lewc_residual": res_lewc}
  return out
