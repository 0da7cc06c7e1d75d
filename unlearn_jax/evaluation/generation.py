"""Metrics of class-conditional generation after unlearning: classifier accuracy, UA, Fréchet distance, sample grids.

A classifier trained on the real data labels ``N`` images generated with each class's condition:

- **UA** (unlearning accuracy) ``=`` fraction of the images generated for the forgotten class(es) that the
  classifier does *not* assign to their condition (SalUn, Table 4: "UA" of the class-wise DDPM forgetting);
- **Acc_remain**: fraction of the other classes' images classified as their condition;
- **FD**: Fréchet distance between Gaussians fitted to the classifier's penultimate features of generated and of
  real test images (the FID formula with the metric classifier standing in for Inception), per class and over
  the remaining classes together.

References:
  Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS
  2017 (the Fréchet distance); Fan et al., "SalUn", ICLR 2024 (UA and FID of class-wise DDPM forgetting).

Example:
    >>> fd = frechet_distance(*gaussian_stats(f_generated), *gaussian_stats(f_real))
    >>> scores = generation_scores(pred_labels, cond_labels, forget_classes=(0,))
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from scipy import linalg

from unlearn_jax import files


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """``(mean, covariance)`` of the rows of ``features`` ``(n, d)`` (covariance with ``n-1``, as ``np.cov``).

  Raises:
    ValueError: if ``features`` is not 2-D with at least two rows.
  """
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be (n >= 2, d), got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
  """``‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)`` with ``scipy.linalg.sqrtm``.

  As in the reference FID code, a non-finite square root is retried with ``eps·I`` added to both covariances and
  a small imaginary part from round-off is dropped.

  Raises:
    ValueError: if the shapes disagree.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
    raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
  covmean = linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    offset = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def feature_distance(generated, real) -> float:
  """`frechet_distance` of the Gaussians fitted to two feature matrices."""
  return frechet_distance(*gaussian_stats(generated), *gaussian_stats(real))


def generation_scores(predicted, conditions, *, forget_classes: Sequence[int]) -> dict[str, float]:
  """``UA`` and ``Acc_remain`` (fractions) plus ``Acc_<k>`` per class from classifier labels of generated images.

  Args:
    predicted: the classifier's label of each generated image ``(n,)``.
    conditions: the class each image was generated for ``(n,)``.
    forget_classes: the forgotten classes.

  Raises:
    ValueError: if the shapes differ or no image was generated for the forgotten or for the remaining classes.
  """
  predicted, conditions = np.asarray(predicted), np.asarray(conditions)
  if predicted.shape != conditions.shape or predicted.ndim != 1:
    raise ValueError(f"predicted {predicted.shape} and conditions {conditions.shape} must be equal 1-D shapes")
  forgotten = np.isin(conditions, np.asarray(forget_classes))
  if not forgotten.any() or forgotten.all():
    raise ValueError("need images generated for both the forgotten and the remaining classes")
  correct = predicted == conditions
  out = {"UA": float(1.0 - correct[forgotten].mean()), "Acc_remain": float(correct[~forgotten].mean())}
  for k in np.unique(conditions):
    out[f"Acc_{int(k)}"] = float(correct[conditions == k].mean())
  return out


def frechet_scores(gen_features, gen_labels, real_features, real_labels, *,
                   forget_classes: Sequence[int]) -> dict[str, float]:
  """``FD_<k>`` per class present in both sets, ``FD_remain`` over the remaining classes together and ``FD_all``
  over every class."""
  gen_features, real_features = np.asarray(gen_features), np.asarray(real_features)
  gen_labels, real_labels = np.asarray(gen_labels), np.asarray(real_labels)
  out = {}
  for k in np.unique(gen_labels):
    g, r = gen_features[gen_labels == k], real_features[real_labels == k]
    if len(g) >= 2 and len(r) >= 2:
      out[f"FD_{int(k)}"] = feature_distance(g, r)
  keep_g, keep_r = ~np.isin(gen_labels, forget_classes), ~np.isin(real_labels, forget_classes)
  out["FD_remain"] = feature_distance(gen_features[keep_g], real_features[keep_r])
  out["FD_all"] = feature_distance(gen_features, real_features)
  return out


def image_grid(images, *, columns: int) -> np.ndarray:
  """Tiles ``(n, H, W, C)`` images in [-1, 1] into one ``(rows·(H+1)-1, columns·(W+1)-1, C)`` array in [0, 1]
  (a 1-pixel white gap between tiles; a short last row is padded white)."""
  x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0
  n, h, w, c = x.shape
  rows = -(-n // columns)
  grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, columns)
    grid[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = x[i]
  return grid


def write_sample_grids(samples: Mapping[str, np.ndarray], path: str | os.PathLike, *, scale: int = 4) -> str:
  """One PNG: a panel per model (``samples[name]``: ``(num_classes, per_class, H, W, C)`` in [-1, 1]), each a grid
  with a row per class. Written atomically; needs matplotlib."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(samples)
  grids = [image_grid(np.reshape(s, (-1,) + s.shape[2:]), columns=s.shape[1]) for s in samples.values()]
  h, w = grids[0].shape[:2]
  fig, axes = plt.subplots(1, len(grids), figsize=(len(grids) * w * scale / 100 + 0.5, h * scale / 100 + 0.6),
                           squeeze=False)
  for ax, name, g in zip(axes[0], names, grids):
    ax.imshow(g[..., 0] if g.shape[-1] == 1 else g, cmap="gray" if g.shape[-1] == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(name, fontsize=8)
    ax.axis("off")
  fig.tight_layout()
  try:
    return files.atomic_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
  finally:
    plt.close(fig)
