"""The linear datamodeling score (LDS): how well an attribution ranks the outputs of held-out subset models.

For each target, the attribution predicts the outputs of M held-out models trained on α-subsets S_m (TRAK:
``Σ_{i∈S_m} τ_i``; datamodels: ``θᵀ1_{S_m} + b``); the LDS of the target is the Spearman rank correlation between
those predictions and the models' actual outputs; the LDS of the attribution is its mean over targets. A constant
shift or a positive scale of a target's predictions leaves it unchanged.

References:
  Park, Georgiev, Ilyas, Leclerc and Madry, "TRAK: Attributing Model Behavior at Scale", ICML 2023 (Definition
  of the LDS, Section 2.2; the reference evaluates it with ``scipy.stats.spearmanr`` per target).

Example:
    >>> score = lds(predicted, actual)        # both [M, T]
"""
from __future__ import annotations

import numpy as np


def spearman_per_target(predicted, actual) -> np.ndarray:
  """Spearman correlation over the models (axis 0) of every target column: [T] (NaN where a column is constant).

  Ties get average ranks, as ``scipy.stats.spearmanr``.
  """
  p, a = np.asarray(predicted, np.float64), np.asarray(actual, np.float64)
  if p.shape != a.shape or p.ndim != 2:
    raise ValueError(f"predicted: shape {p.shape} must equal actual's {a.shape}, both [num_models, num_targets]")
  if p.shape[0] < 3:
    raise ValueError(f"predicted: {p.shape[0]} held-out models; a rank correlation needs at least 3")
  from scipy import stats  # pylint: disable=g-import-not-at-top  (scipy.stats costs 0.4 s to import)
  rp = stats.rankdata(p, axis=0) - (p.shape[0] + 1) / 2
  ra = stats.rankdata(a, axis=0) - (a.shape[0] + 1) / 2
  denom = np.sqrt(np.sum(rp * rp, 0) * np.sum(ra * ra, 0))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denom > 0, np.sum(rp * ra, 0) / np.where(denom > 0, denom, 1.0), np.nan)


def lds(predicted, actual) -> float:
  """Mean over targets of `spearman_per_target` (targets with a constant column are skipped)."""
  return float(np.nanmean(spearman_per_target(predicted, actual)))
