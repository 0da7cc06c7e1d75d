"""Datamodels: a linear model per target of its output as a function of which training rows a model saw.

Given M models trained on random α-subsets S_m of n training rows (``masks`` [M, n], 1 where row i ∈ S_m) and
their outputs on T targets (``outputs`` [M, T], e.g. margins, or [M, T, C] logits), the datamodel of target t is

    f_t(S) ≈ θ_tᵀ 1_S + b_t,

fitted by least squares on the M pairs, for every target at once (targets are columns of one regression):

* ``method='lasso'`` (the paper; the default): ``min (1/2M)‖Xθ + b − y‖² + λ‖θ‖₁`` by FISTA (accelerated
  proximal gradient, soft-thresholding) in JAX, along a regularisation path as the reference ``fast_l1`` code:
  ``num_lambdas`` values ``λ_max · eps^(j/num_lambdas)`` (λ_max, per target, the smallest λ whose solution is 0),
  warm-started from the previous one; the λ of each target is chosen by the mean squared error on a held-out
  ``val_fraction`` of the models, then the path is run again on all models and each target keeps its chosen λ.
* ``method='ridge'``: ``min (1/2M)‖Xθ + b − y‖² + (λ/2)‖θ‖²`` in closed form through the eigendecomposition of
  the M×M Gram matrix (cheap when M ≪ n), with λ chosen per target from ``num_lambdas`` values the same way.

The intercept is unpenalised (X and y are centred). ``θ_t[i]`` estimates how much including row i changes target
t's output; removing a set F from the full training set changes it by about ``−Σ_{i∈F} θ_t[i]`` (`removal_effect`).

References:
  Ilyas, Park, Engstrom, Leclerc and Madry, "Datamodels: Predicting Predictions from Training Data", ICML 2022
  (github.com/MadryLab/datamodels ``regression/compute_datamodels.py``: ``k`` lambdas down to ``eps·λ_max``,
  validation models pick λ; the CIFAR-10 example uses ``k=10``, ``eps=1e-2``).
  Beck and Teboulle, "A Fast Iterative Shrinkage-Thresholding Algorithm for Linear Inverse Problems", 2009.

Example:
    >>> dm = fit_datamodels(masks, margins)           # masks [M, n] bool, margins [M, T]
    >>> pred = predict(dm, heldout_masks)             # [M', T]
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("lasso", "ridge")


class Datamodels(NamedTuple):
  """``weight`` [n, *target_shape], ``bias`` [*target_shape] and the chosen ``lam`` [*target_shape]."""
  weight: jax.Array
  bias: jax.Array
  lam: jax.Array


def check_masks(masks, outputs=None, *, min_models: int = 2, name: str = "masks") -> None:
  """ValueError naming the argument if ``masks`` is not [M, n] with M ≥ ``min_models`` or ``outputs`` does not
  have M rows."""
  shape = tuple(np.shape(masks))
  if len(shape) != 2:
    raise ValueError(f"{name}: shape {shape}; expected [num_models, num_train]")
  if shape[0] < min_models:
    raise ValueError(f"{name}: {shape[0]} subset models; this regression needs at least {min_models}")
  if outputs is not None and (np.ndim(outputs) < 2 or np.shape(outputs)[0] != shape[0]):
    raise ValueError(f"outputs: shape {tuple(np.shape(outputs))} does not match {name} of shape {shape} "
                     f"(need [{shape[0]}, num_targets, ...])")


def _split_models(m: int, val_fraction: float, seed: int):
  n_val = max(1, int(round(val_fraction * m)))
  perm = np.random.default_rng(seed).permutation(m)
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit_datamodels(masks, outputs, *, method: str = "lasso", num_lambdas: int = 10, eps: float = 1e-2,
                   val_fraction: float = 0.1, steps: int = 300, seed: int = 0, target_chunk_size: int = 4096,
                   lambdas=None) -> Datamodels:
  """Fits one linear datamodel per target (column of ``outputs``), vectorised over targets.

  Args:
    masks: [M, n] 0/1 (or bool): which training rows each subset model saw.
    outputs: [M, T] or [M, T, C] outputs of those models on the targets (margins, logits...).
    method: ``'lasso'`` (default, the paper) or ``'ridge'``.
    num_lambdas: length of the regularisation path (the reference's ``k``).
    eps: lasso path from λ_max down to ``λ_max·eps`` (the reference's ``eps``); ignored by ridge.
    val_fraction: fraction of the models held out to choose λ per target (at least one).
    steps: FISTA iterations per λ (lasso).
    seed: which models are held out.
    target_chunk_size: targets regressed at once (memory ``n × chunk`` per iterate).
    lambdas: explicit λ grid (overrides the default path), e.g. one value to skip the selection.

  Returns:
    `Datamodels` with ``weight`` [n, T(, C)], ``bias`` and ``lam`` [T(, C)].

  Raises:
    ValueError: naming the argument, before any work: unknown method, masks not [M, n], too few models (ridge
      needs 2 to fit and 1 to validate, as lasso), outputs with a different number of models, bad path settings.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}: unknown; choose one of {METHODS}")
  check_masks(masks, outputs, min_models=3)
  if not 0 < val_fraction < 1:
    raise ValueError(f"val_fraction={val_fraction}: must be in (0, 1)")
  if int(num_lambdas) < 1 and lambdas is None:
    raise ValueError(f"num_lambdas={num_lambdas}: must be >= 1")
  if not 0 < eps < 1:
    raise ValueError(f"eps={eps}: must be in (0, 1)")
  if int(steps) < 1:
    raise ValueError(f"steps={steps}: must be >= 1")
  x = jnp.asarray(masks, jnp.float32)
  y = jnp.asarray(outputs, jnp.float32)
  m, n = x.shape
  tshape = y.shape[1:]
  y = y.reshape(m, -1)
  fit_rows, val_rows = _split_models(m, val_fraction, seed)
  if len(fit_rows) < 2:
    raise ValueError(f"masks: {m} subset models leave {len(fit_rows)} to fit after holding out {len(val_rows)} "
                     "for validation; need at least 2")
  grid = None if lambdas is None else jnp.atleast_1d(jnp.asarray(lambdas, jnp.float32))
  chunk = max(1, int(target_chunk_size))
  parts = []
  for s in range(0, y.shape[1], chunk):
    yc = y[:, s:s + chunk]
    if method == "lasso":
      parts.append(_lasso(x, yc, jnp.asarray(fit_rows), jnp.asarray(val_rows), grid, num_lambdas=int(num_lambdas),
                          eps=float(eps), steps=int(steps)))
    else:
      parts.append(_ridge(x, yc, jnp.asarray(fit_rows), jnp.asarray(val_rows), grid, num_lambdas=int(num_lambdas)))
  w, b, lam = (jnp.concatenate(p, axis=-1) for p in zip(*parts))
  return Datamodels(w.reshape((n,) + tshape), b.reshape(tshape), lam.reshape(tshape))


def _centre(x, y):
  xm, ym = x.mean(0), y.mean(0)
  return x - xm, y - ym, xm, ym


def _soft(v, t):
  return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)


def _fista(xc, yc, w0, lam, steps: int, lipschitz):
  """FISTA on ``(1/2M)‖xc w − yc‖² + lam‖w‖₁`` (``lam`` per column) from ``w0``."""
  m = xc.shape[0]
  step = 1.0 / lipschitz

  def body(_, carry):
    w, z, t = carry
    grad = xc.T @ (xc @ z - yc) / m
    w_new = _soft(z - step * grad, step * lam[None, :])
    t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
    z_new = w_new + ((t - 1) / t_new) * (w_new - w)
    return w_new, z_new, t_new

  w, _, _ = jax.lax.fori_loop(0, steps, body, (w0, w0, jnp.float32(1.0)))
  return w


def _lipschitz(xc):
  return jnp.linalg.norm(xc, ord=2) ** 2 / xc.shape[0] + 1e-12


@functools.partial(jax.jit, static_argnames=("num_lambdas", "eps", "steps"))
def _lasso(x, y, fit_rows, val_rows, grid, *, num_lambdas: int, eps: float, steps: int):
  def path_lams(xc, yc):
    if grid is not None:
      return jnp.broadcast_to(grid[:, None], (grid.shape[0], yc.shape[1]))
    lam_max = jnp.max(jnp.abs(xc.T @ yc), axis=0) / xc.shape[0] + 1e-12
    decay = eps ** (1.0 / num_lambdas)
    return lam_max[None, :] * decay ** jnp.arange(num_lambdas, dtype=jnp.float32)[:, None]

  def run_path(xc, yc, lams, score):
    lip = _lipschitz(xc)

    def one(w, lam):
      w = _fista(xc, yc, w, lam, steps, lip)
      return w, score(w)

    _, scores = jax.lax.scan(one, jnp.zeros((xc.shape[1], yc.shape[1]), jnp.float32), lams)
    return scores

  # 1. path on the fitting models, scored on the held-out ones
  xf, yf, xm, ym = _centre(x[fit_rows], y[fit_rows])
  lams = path_lams(xf, yf)
  xv, yv = x[val_rows], y[val_rows]
  val_mse = run_path(xf, yf, lams, lambda w: jnp.mean(((xv - xm) @ w + ym - yv) ** 2, axis=0))
  best = jnp.argmin(val_mse, axis=0)  # [T]
  # 2. the same path on all models; each target keeps its iterate at its chosen λ index
  xa, ya, xam, yam = _centre(x, y)
  lams_all = path_lams(xa, ya)
  lip = _lipschitz(xa)

  def one(carry, inp):
    w, keep = carry
    j, lam = inp
    w = _fista(xa, ya, w, lam, steps, lip)
    keep = jnp.where((best == j)[None, :], w, keep)
    return (w, keep), None

  zeros = jnp.zeros((xa.shape[1], ya.shape[1]), jnp.float32)
  (_, w), _ = jax.lax.scan(one, (zeros, zeros), (jnp.arange(lams_all.shape[0]), lams_all))
  chosen = jnp.take_along_axis(lams_all, best[None, :], axis=0)[0]
  return w, yam - xam @ w, chosen


def _ridge_dual(xc, yc, lam):
  """``α = (xc xcᵀ + M λ I)⁻¹ yc`` for a λ per column (through the eigendecomposition of the M×M Gram matrix), so
  that ``θ = xcᵀ α``."""
  m = xc.shape[0]
  evals, evecs = jnp.linalg.eigh(xc @ xc.T)
  return evecs @ ((evecs.T @ yc) / (jnp.maximum(evals, 0.0)[:, None] + m * lam[None, :]))


@functools.partial(jax.jit, static_argnames=("num_lambdas",))
def _ridge(x, y, fit_rows, val_rows, grid, *, num_lambdas: int):
  xf, yf, xm, ym = _centre(x[fit_rows], y[fit_rows])
  if grid is None:  # around the per-row variance of the mask columns (≈ α(1−α))
    scale = jnp.mean(jnp.sum(xf * xf, axis=0)) / xf.shape[0] + 1e-12
    grid = scale * jnp.logspace(-3.0, 2.0, num_lambdas, dtype=jnp.float32)
  xv, yv = x[val_rows], y[val_rows]

  kernel = (xv - xm) @ xf.T  # validation predictions are kernel @ α: θ is never formed for the grid

  def val_mse(lam):
    alpha = _ridge_dual(xf, yf, jnp.full((yf.shape[1],), lam))
    return jnp.mean((kernel @ alpha + ym - yv) ** 2, axis=0)

  best = jnp.argmin(jax.lax.map(val_mse, grid), axis=0)
  lam = grid[best]
  xa, ya, xam, yam = _centre(x, y)
  w = xa.T @ _ridge_dual(xa, ya, lam)
  return w, yam - xam @ w, lam


def predict(datamodels: Datamodels, masks) -> jax.Array:
  """``masks @ θ + b``: the datamodels' outputs for models trained on the subsets ``masks`` [M, n]."""
  w = datamodels.weight
  masks = jnp.asarray(masks, jnp.float32)
  if masks.ndim != 2 or masks.shape[1] != w.shape[0]:
    raise ValueError(f"masks: shape {tuple(masks.shape)}; expected [num_models, {w.shape[0]}]")
  return jnp.tensordot(masks, w, axes=1) + datamodels.bias


def removal_effect(datamodels: Datamodels, rows) -> jax.Array:
  """``Σ_{i∈rows} θ[i]``: the predicted drop of every target's output when ``rows`` leave the training set."""
  rows = jnp.asarray(rows)
  n = datamodels.weight.shape[0]
  if rows.ndim != 1 or (rows.size and (int(rows.min()) < 0 or int(rows.max()) >= n)):
    raise ValueError(f"rows: must be a 1-D array of training-row indices in [0, {n})")
  return jnp.sum(datamodels.weight[rows], axis=0)
