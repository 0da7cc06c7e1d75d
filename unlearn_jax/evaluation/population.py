"""Population metrics: U-LiRA, KLoM, the NeurIPS 2023 unlearning-challenge score, and their Retrain noise floor.

One unlearned model and one Retrain model are each a single draw of a random variable (training seeds, data order,
the unlearning run's own randomness). The metrics here compare the *distributions*: each takes the outputs of a
population of ``N`` unlearned models and of ``M`` Retrain models on the same ``n`` examples, as logits of shape
``(N, n, C)`` and ``(M, n, C)`` with the labels ``(n,)``, and works per example, vectorised over examples.

- `ulira`: the per-example likelihood-ratio attack of Hayes et al. that tells an unlearned model from a retrained
  one (attack accuracy, AUC, TPR at 1% FPR); 0.5 accuracy is a perfect unlearner.
- `klom`: per example, the KL divergence between the histograms of the unlearned and the Retrain models' margins
  (Georgiev et al.); 0 is a perfect unlearner. `evaluate` reports its median and 95th percentile per split.
- `challenge_epsilons` / `forgetting_quality` / `challenge_score`: the NeurIPS 2023 Machine Unlearning
  competition's per-example ``(epsilon, delta)`` estimate from threshold attacks, its bucketed forgetting quality
  ``F`` and the final ``F * RA_U/RA_R * TA_U/TA_R``.
- `noise_floor`: all of the above between two independent Retrain populations -- what a perfect unlearner scores
  with populations of that size.
- `evaluate`: every metric in one flat dict from ``{split: logits}`` mappings.
- `linear_cka`: linear CKA of two feature matrices, and `relearn_time`: fine-tuning epochs on the forget set
  until its accuracy is back to a target (cheaper per-model companions).

The per-example statistic all three attacks read is the *logit-scaled confidence* of the true class,
``log p_y - log(1 - p_y) = z_y - logsumexp_{j != y} z_j`` (LiRA's statistic, also called the margin), see
`logit_scaled_confidence`.

Example:
    >>> row = evaluate({'forget': u_f, 'retain': u_r, 'test': u_t}, {'forget': r_f, 'retain': r_r, 'test': r_t},
    ...                {'forget': y_f, 'retain': y_r, 'test': y_t}, rng=jax.random.key(0))
    >>> row['ulira_accuracy'], row['klom_p95_forget'], row['challenge_score']

References:
    Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact Unlearning Needs More Careful Evaluations to
    Avoid a False Sense of Privacy", arXiv:2403.01218 (U-LiRA).
    Georgiev, Rinberg, Park, Garg, Ilyas, Madry, Neel, "Attribute-to-Delete: Machine Unlearning via Datamodel
    Matching", arXiv:2410.23232 (KLoM; code in github.com/RoyRin/data-unlearning-bench,
    ``unlearning/auditors/direct.py`` and ``src/eval.py``).
    Triantafillou et al., "Are we making progress in unlearning? Findings from the first NeurIPS unlearning
    competition", arXiv:2406.09073 (code: github.com/google-deepmind/unlearning_evaluation, ``metric.py``).
    Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022 (LiRA).
    Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations Revisited", ICML 2019 (CKA).
    Golatkar, Achille, Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks",
    CVPR 2020 (relearn time).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np
from scipy import special

SPLITS = ("forget", "retain", "test")

# The competition's metric.py constants.
CHALLENGE_DELTA = 1e-5
CHALLENGE_EPSILON_CAP = 50.0
CHALLENGE_THRESHOLDS_PER_UNIT = 100
CHALLENGE_BUCKET = 0.5
_CHALLENGE_FLOOR = 1e-45  # metric.compute_logit_scaled_confidence: log(p + 1e-45)
_LIRA_STD_FLOOR = 1e-30  # LiRA's score.py: norm.logpdf(x, mean, std + 1e-30)
KLOM_BINNINGS = ("a2d", "bench")


# --------------------------------------------------------------------------------------------------------------
# Inputs


def _population(name: str, logits) -> np.ndarray:
  logits = np.asarray(logits, dtype=np.float64)
  if logits.ndim != 3:
    raise ValueError(f"{name}: expected logits of shape (models, examples, classes), got {logits.shape}")
  if logits.shape[0] < 2:
    raise ValueError(f"{name}: a population needs at least 2 models, got {logits.shape[0]}")
  if logits.shape[1] == 0:
    raise ValueError(f"{name}: no examples")
  if not np.all(np.isfinite(logits)):
    raise ValueError(f"{name}: logits are not all finite")
  return logits


def _populations(unlearned_logits, retrain_logits, labels):
  u = _population("unlearned_logits", unlearned_logits)
  r = _population("retrain_logits", retrain_logits)
  if u.shape[1:] != r.shape[1:]:
    raise ValueError(f"unlearned_logits {u.shape} and retrain_logits {r.shape} must share (examples, classes)")
  y = np.asarray(labels)
  if y.shape != (u.shape[1],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels: expected integer labels of shape ({u.shape[1]},), got {y.dtype} {y.shape}")
  if y.min() < 0 or y.max() >= u.shape[2]:
    raise ValueError(f"labels: values must lie in [0, {u.shape[2]}), got [{y.min()}, {y.max()}]")
  return u, r, y


def logit_scaled_confidence(logits, labels, *, floor: float | None = None) -> np.ndarray:
  """``log p_y - log(1 - p_y)`` of every model on every example, in float64.

  Args:
    logits: ``(..., n, C)``.
    labels: ``(n,)`` integer labels.
    floor: None (default): the exact value ``z_y - logsumexp_{j != y} z_j`` (the margin of the KLoM code and
      LiRA's numerically stable form). A number: the competition's ``metric.compute_logit_scaled_confidence``,
      ``log(p_y + floor) - log(sum_{j != y} p_j + floor)`` after a float64 softmax (it uses ``1e-45``, which bounds
      the statistic to about +-103.6 where the probabilities underflow).

  Returns:
    float64 array ``(..., n)``.
  """
  z = np.asarray(logits, dtype=np.float64)
  y = np.asarray(labels)
  onehot = np.arange(z.shape[-1]) == y[:, None]
  z_true = np.sum(np.where(onehot, z, 0.0), axis=-1)
  if floor is None:
    return z_true - special.logsumexp(np.where(onehot, -np.inf, z), axis=-1)
  p = special.softmax(z, axis=-1)
  p_true = np.sum(np.where(onehot, p, 0.0), axis=-1)
  p_wrong = np.sum(np.where(onehot, 0.0, p), axis=-1)
  return np.log(p_true + floor) - np.log(p_wrong + floor)


def _permutation(rng, n: int) -> np.ndarray:
  return np.asarray(jax.random.permutation(rng, n))


# --------------------------------------------------------------------------------------------------------------
# U-LiRA


def ulira(unlearned_logits, retrain_logits, labels, *, rng: jax.Array, num_targets: int | None = None,
          fix_variance: bool = False, target_fpr: float = 0.01) -> dict[str, float]:
  """U-LiRA: a per-example likelihood-ratio attack telling unlearned models from retrained ones.

  Each population is split at random (by ``rng``) into *target* members (``num_targets`` of each) and *shadow*
  members (the rest). Per example, a Gaussian is fitted to the shadow unlearned models' logit-scaled confidences
  and one to the shadow Retrain models'; every target member's confidence on the example is then scored by the
  log likelihood ratio ``log N(s; mu_U, sigma_U) - log N(s; mu_R, sigma_R)`` and called "unlearned" when it is
  positive (the ratio ``p_U / (p_U + p_R) > 0.5`` of the reference). With ``num_targets`` targets from each
  population the attack faces a balanced set of ``2 * num_targets * n`` (model, example) decisions.

  Fidelity: Hayes et al. release no code; this follows the paper's description with the choices of the
  re-implementation by the KLoM authors (``unlearning/auditors/ulira`` of data-unlearning-bench): the margin as the
  statistic, mean and ``np.std`` (ddof 0) per example, decision at likelihood ratio 1/2. Their populations carry a
  per-model forget set (each example is forgotten by some models and never seen by others); here every unlearned
  model forgot the same examples, so the roles are per model instead of per (model, example). AUC and TPR at
  ``target_fpr`` are computed over the pooled log likelihood ratios as LiRA's code does (TPR at the largest
  threshold with FPR strictly below ``target_fpr``); LiRA's ``1e-30`` is added to every standard deviation.

  Args:
    unlearned_logits: ``(N, n, C)`` logits of the unlearned population.
    retrain_logits: ``(M, n, C)`` logits of the Retrain population on the same examples.
    labels: ``(n,)`` labels.
    rng: PRNG key choosing the target members.
    num_targets: target members taken from each population (default ``min(N, M) // 2``); at least 2 shadow
      members must remain in each.
    fix_variance: fit one standard deviation per population over all examples (LiRA's ``fix_variance`` option)
      instead of one per example.
    target_fpr: the false-positive rate of the reported TPR.

  Returns:
    ``{'accuracy': float, 'auc': float, 'tpr_at_1fpr': float}`` (``tpr_at_1fpr`` is the TPR at ``target_fpr``).

  Example:
    >>> ulira(u_logits, r_logits, y, rng=jax.random.key(0))['accuracy']   # ~0.5 for a perfect unlearner
  """
  u, r, y = _populations(unlearned_logits, retrain_logits, labels)
  n_u, n_r = u.shape[0], r.shape[0]
  t = min(n_u, n_r) // 2 if num_targets is None else int(num_targets)
  if t < 1 or n_u - t < 2 or n_r - t < 2:
    raise ValueError(f"num_targets={t}: needs 1 <= num_targets and at least 2 shadow models left in each "
                     f"population (unlearned {n_u}, retrain {n_r})")
  if not 0.0 < target_fpr < 1.0:
    raise ValueError(f"target_fpr must lie in (0, 1), got {target_fpr}")
  su, sr = logit_scaled_confidence(u, y), logit_scaled_confidence(r, y)  # (N, n), (M, n)
  ku, kr = jax.random.split(rng)
  pu, pr = _permutation(ku, n_u), _permutation(kr, n_r)
  target_u, shadow_u = su[pu[:t]], su[pu[t:]]
  target_r, shadow_r = sr[pr[:t]], sr[pr[t:]]
  mean_u, mean_r = shadow_u.mean(0), shadow_r.mean(0)
  std_u = np.full_like(mean_u, shadow_u.std()) if fix_variance else shadow_u.std(0)
  std_r = np.full_like(mean_r, shadow_r.std()) if fix_variance else shadow_r.std(0)

  from scipy import stats  # pylint: disable=g-import-not-at-top  (scipy.stats costs 0.4 s to import)

  def llr(s):
    return (stats.norm.logpdf(s, mean_u, std_u + _LIRA_STD_FLOOR)
            - stats.norm.logpdf(s, mean_r, std_r + _LIRA_STD_FLOOR))

  scores = np.concatenate([llr(target_u).ravel(), llr(target_r).ravel()])
  truth = np.concatenate([np.ones(target_u.size), np.zeros(target_r.size)])
  scores = np.nan_to_num(scores, nan=0.0)  # both densities underflowed: no evidence either way
  from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top  (here: see evaluation.mia)
  fpr, tpr, _ = sk_metrics.roc_curve(truth, scores)
  below = np.flatnonzero(fpr < target_fpr)
  return {"accuracy": float(np.mean((scores > 0) == (truth == 1))),
          "auc": float(sk_metrics.auc(fpr, tpr)),
          "tpr_at_1fpr": float(tpr[below[-1]]) if below.size else 0.0}


# --------------------------------------------------------------------------------------------------------------
# KLoM


def _histogram(values: np.ndarray, edges: np.ndarray, slots: int) -> np.ndarray:
  """``counts[j, i] = #{models: np.digitize(values[:, j], edges[j]) == i}`` for ``i < slots``; ``(n, slots)``."""
  index = np.sum(values[:, :, None] >= edges[None, :, :], axis=-1)  # np.digitize, right=False: (models, n)
  return np.sum(index[:, :, None] == np.arange(slots), axis=0).astype(np.float64)


def klom(unlearned_logits, retrain_logits, labels, *, bins: int = 20, eps: float = 1e-5, clip: float = 100.0,
         binning: str = "a2d") -> np.ndarray:
  """KLoM: per example, ``KL(unlearned margins || Retrain margins)`` between histograms over the population.

  For each example the margins (`logit_scaled_confidence`) of the ``N`` unlearned and the ``M`` Retrain models are
  binned on edges spanning their pooled range, and the KL divergence of the two histograms is taken
  (``scipy.stats.entropy(p, q)``, which renormalises ``q`` after the smoothing). Smaller is better; 0 when the
  histograms agree. ``binning`` picks one of the two public versions of the reference code:

  * ``'a2d'`` (default, the Attribute-to-Delete code ``unlearning/auditors/direct.py::compute_binned_KL_div``):
    the unlearned margins are clipped to ``[-clip, clip]`` (the Retrain margins are not); ``bins`` edges
    ``linspace(min, max, bins)``; ``np.digitize`` and the counts of indices ``0 .. bins-1`` -- so the histogram
    has ``bins - 1`` intervals plus an always-empty slot 0, and the margins equal to the pooled maximum fall in
    index ``bins`` and are not counted; every Retrain probability is floored at ``eps``.
  * ``'bench'`` (data-unlearning-bench ``src/eval.py``): both populations clipped; ``bins + 1`` edges (``bins``
    intervals; a constant pooled sample gets the range ``[v, v + 1]``), counts of indices ``1 .. bins``; the
    Retrain probability is floored at ``eps`` only where the unlearned histogram has mass.

  Where every unlearned margin equals the pooled maximum (so none is counted) the reference divides by zero;
  the result is NaN here too.

  Args:
    unlearned_logits: ``(N, n, C)``.
    retrain_logits: ``(M, n, C)`` on the same examples.
    labels: ``(n,)``.
    bins: the reference's ``bin_count``.
    eps: the probability floor of the Retrain histogram.
    clip: margins are clipped to ``[-clip, clip]`` (see ``binning``).
    binning: ``'a2d'`` or ``'bench'``.

  Returns:
    float64 array ``(n,)`` of KL divergences (nats).

  Example:
    >>> kl = klom(u_logits, r_logits, y); np.percentile(kl, 95)
  """
  if binning not in KLOM_BINNINGS:
    raise ValueError(f"binning: unknown {binning!r}; choose one of {KLOM_BINNINGS}")
  if bins < 2:
    raise ValueError(f"bins must be at least 2, got {bins}")
  u, r, y = _populations(unlearned_logits, retrain_logits, labels)
  p_arr = np.clip(logit_scaled_confidence(u, y), -clip, clip)
  q_arr = logit_scaled_confidence(r, y)
  if binning == "bench":
    q_arr = np.clip(q_arr, -clip, clip)
  start = np.minimum(p_arr.min(0), q_arr.min(0))
  end = np.maximum(p_arr.max(0), q_arr.max(0))
  if binning == "a2d":
    edges = np.linspace(start, end, bins, axis=-1)
    p_counts, q_counts = _histogram(p_arr, edges, bins), _histogram(q_arr, edges, bins)
  else:
    end = np.where(start >= end, start + 1.0, end)
    edges = np.linspace(start, end, bins + 1, axis=-1)
    p_counts = _histogram(p_arr, edges, bins + 1)[:, 1:]
    q_counts = _histogram(q_arr, edges, bins + 1)[:, 1:]
  with np.errstate(invalid="ignore", divide="ignore"):
    p = p_counts / p_counts.sum(-1, keepdims=True)
    q = q_counts / q_counts.sum(-1, keepdims=True)
    q = np.maximum(q, eps) if binning == "a2d" else np.where(p > 0, np.maximum(q, eps), q)
    q = q / q.sum(-1, keepdims=True)  # scipy.stats.entropy normalises qk
    return np.sum(special.rel_entr(p, q), axis=-1)


# --------------------------------------------------------------------------------------------------------------
# NeurIPS 2023 challenge


def _rates_epsilon(fpr, fnr, delta):
  """Per-threshold epsilon of ``metric._get_epsilons``: inf where FPR = FNR = 0, NaN (discarded) where exactly one
  of them is 0, else ``max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR)`` clipped at 0."""
  with np.errstate(invalid="ignore", divide="ignore"):
    eps = np.clip(np.fmax(np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr)), 0, None)
  eps = np.where(fpr * fnr == 0, np.nan, eps)
  return np.where((fpr == 0) & (fnr == 0), np.inf, eps)


def _max_epsilon(tp, fp, valid, n_pos, n_neg, delta):
  """Largest per-threshold epsilon over the valid thresholds of each row; NaN where none survives.

  ``tp`` / ``fp`` ``(E, T)`` count the positive / negative models a threshold calls positive. A threshold's
  epsilon depends only on that pair of counts, so the pairs that occur are marked (one bincount) and the epsilon
  of each possible pair is computed once: ``(E, K+1, K+1)`` logarithms instead of ``(E, T)``.
  """
  e = tp.shape[0]
  k = int(max(n_pos.max(), n_neg.max())) + 1
  slots = k * k + 1  # the last slot collects invalid thresholds
  code = np.where(valid, tp * k + fp, k * k) + (np.arange(e, dtype=np.int32) * slots)[:, None]
  seen = np.bincount(code.ravel(), minlength=e * slots).reshape(e, slots)[:, :-1].reshape(e, k, k) > 0
  a = np.arange(k, dtype=np.float64)
  fnr = (n_pos[:, None, None] - a[None, :, None]) / n_pos[:, None, None]
  fpr = a[None, None, :] / n_neg[:, None, None]
  return _nanmax(np.where(seen, _rates_epsilon(fpr, fnr, delta), np.nan).reshape(e, -1))


def _linspace(lo, hi, count, size):
  """Row ``e`` holds ``np.linspace(lo[e], hi[e], count[e])`` in its first ``count[e]`` of ``size`` columns."""
  i = np.arange(size)
  step = (hi - lo) / np.maximum(count - 1, 1)
  grid = lo[:, None] + i * step[:, None]
  return np.where((i == count[:, None] - 1) & (count[:, None] > 1), hi[:, None], grid)


def _single_threshold_eps(pos, neg, n_pos, n_neg, delta, per_unit):
  """Max epsilon over ``metric._get_single_threshold_rates``: predict 'positive' when the statistic >= t, for
  ``ceil(range * per_unit)`` thresholds evenly spaced over the pooled range. ``(E,)``, NaN if none survives."""
  lo = np.fmin(np.nanmin(pos, 1), np.nanmin(neg, 1))
  hi = np.fmax(np.nanmax(pos, 1), np.nanmax(neg, 1))
  count = np.ceil((hi - lo) * per_unit).astype(np.int64)
  size = max(int(count.max()), 1)
  thresholds = _linspace(lo, hi, count, size)

  def at_least(values):  # NaN padding never counts
    return np.sum(values[:, None, :] >= thresholds[:, :, None], axis=-1)

  valid = np.arange(size) < count[:, None]
  return _max_epsilon(at_least(pos), at_least(neg), valid, n_pos, n_neg, delta)


def _count_below_grid(values, starts, steps, size):
  """``#{v in values[e]: v < starts[e, j] + k * steps[e, j]}`` for ``k < size`` -> ``(E, J, size)``.

  One bincount over each value's first grid index above it, then a cumulative sum: ``O(J * (N + size))`` per
  example instead of ``O(J * N * size)`` comparisons. NaN values (padding) never count.
  """
  e, j = starts.shape
  with np.errstate(invalid="ignore"):
    first = np.floor((values[:, None, :] - starts[:, :, None]) / steps[:, :, None]) + 1  # (E, J, N)
  first = np.where(np.isnan(first), size, np.clip(first, 0, size)).astype(np.int64)
  rows = np.arange(e * j).reshape(e, j, 1)
  hist = np.bincount((rows * (size + 1) + first).ravel(), minlength=e * j * (size + 1)).astype(np.int32)
  return np.cumsum(hist.reshape(e, j, size + 1)[..., :size], axis=-1, dtype=np.int32)


def _double_threshold_eps(pos, neg, n_pos, n_neg, delta, per_unit):
  """Max epsilon over ``metric._get_double_threshold_rates``: predict the peakier population (the smaller range)
  when ``left <= statistic <= right``; ``ceil((max_ - min_) * per_unit)`` right thresholds over
  ``[min + width - 2, max + 2]`` of that population, each with ``ceil(4 * per_unit)`` left thresholds over
  ``[right - width - 2, right - width + 2]`` (``width`` = its range). ``(E,)``, NaN if none survives."""
  buffer = 2.0
  pos_diff = np.nanmax(pos, 1) - np.nanmin(pos, 1)
  neg_diff = np.nanmax(neg, 1) - np.nanmin(neg, 1)
  swap = pos_diff >= neg_diff  # the reference makes the peakier population the positive one
  peaky = np.where(swap[:, None], neg, pos)
  broad = np.where(swap[:, None], pos, neg)
  n_peaky, n_broad = np.where(swap, n_neg, n_pos), np.where(swap, n_pos, n_neg)
  width = np.where(swap, neg_diff, pos_diff)
  lo = np.nanmin(peaky, 1) + width - buffer
  hi = np.nanmax(peaky, 1) + buffer
  count = np.ceil((hi - lo) * per_unit).astype(np.int64)
  size = int(count.max())
  right = _linspace(lo, hi, count, size)  # (E, R)
  num_left = int(math.ceil(2 * buffer * per_unit))
  left_start = right - width[:, None] - buffer
  left_step = np.full_like(right, 2 * buffer / (num_left - 1))

  def inside(values):  # #{left <= v <= right}: (E, R * L)
    at_most_right = np.sum(values[:, None, :] <= right[:, :, None], axis=-1, dtype=np.int32)
    below_left = _count_below_grid(values, left_start, left_step, num_left)
    return np.maximum(at_most_right[:, :, None] - below_left, 0).reshape(len(values), -1)

  valid = np.repeat(np.arange(size) < count[:, None], num_left, axis=1)
  return _max_epsilon(inside(peaky), inside(broad), valid, n_peaky, n_broad, delta)


def _nanmax(a):
  """Row-wise max ignoring NaN; NaN for an all-NaN row (without numpy's warning)."""
  filled = np.where(np.isnan(a), -np.inf, a)
  out = filled.max(-1) if a.shape[-1] else np.full(a.shape[:-1], -np.inf)
  return np.where(np.isneginf(out), np.nan, out)


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([a, np.full((rows - a.shape[0],) + a.shape[1:], np.nan)]) if rows > a.shape[0] else a


def challenge_epsilons(unlearned_logits, retrain_logits, labels, *, delta: float = CHALLENGE_DELTA,
                       epsilon_cap: float = CHALLENGE_EPSILON_CAP,
                       thresholds_per_unit: int = CHALLENGE_THRESHOLDS_PER_UNIT,
                       chunk_size: int = 16) -> np.ndarray:
  """Per-example ``epsilon`` of the NeurIPS 2023 unlearning competition (``metric.py`` of its evaluation code).

  The statistic is the competition's logit-scaled confidence (`logit_scaled_confidence` with ``floor=1e-45``).
  Per example, the *positive* population is the one with the larger median (ties: the unlearned one); the
  attacks are every threshold of two decision-rule families (see ``_single_threshold_eps`` and
  ``_double_threshold_eps``: 1-sided thresholds over the pooled range, and 2-sided intervals around the peakier
  population, at ``thresholds_per_unit`` per unit of the statistic). Each attack's FPR and FNR give
  ``max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR)`` clipped at 0; an attack with FPR = FNR = 0
  (perfect separation) gives infinity; one where only one of FPR, FNR is 0 is discarded (the reference reads it as
  too few samples). The example's epsilon is the largest, clipped to ``[0, epsilon_cap]``. An example whose
  smaller range is below 1% of the larger (one population almost constant) gets ``epsilon_cap`` outright, as in
  the reference.

  Fidelity: the reference evaluates the same threshold grids; here the rates are computed by counting instead of
  by comparing every model with every threshold, which differs only when a statistic lies exactly on a 2-sided
  grid point (up to rounding). Where no attack survives (e.g. the two populations give identical constant
  statistics) the reference fails an assertion; epsilon is 0 here (no attack distinguishes them). The reference
  takes equal population sizes; unequal ``N`` and ``M`` are allowed here (rates are fractions of each population).

  Args:
    unlearned_logits: ``(N, n, C)`` -- for the competition, the forget-set logits of the unlearned models.
    retrain_logits: ``(M, n, C)`` on the same examples.
    labels: ``(n,)``.
    delta: the ``delta`` of ``(epsilon, delta)`` (reference: ``DELTA = 1e-05``).
    epsilon_cap: the reference's ``EPSILON_CAP``.
    thresholds_per_unit: the reference's ``NUM_THRESHOLDS_PER_UNIT``.
    chunk_size: examples evaluated together (memory grows as ``chunk_size * 160,000`` floats).

  Returns:
    float64 array ``(n,)`` of epsilons in ``[0, epsilon_cap]``.

  Example:
    >>> eps = challenge_epsilons(u_forget_logits, r_forget_logits, y_forget)
    >>> forgetting_quality(eps, num_models=len(u_forget_logits))
  """
  if not 0.0 <= delta < 1.0:
    raise ValueError(f"delta must lie in [0, 1), got {delta}")
  if thresholds_per_unit < 1 or chunk_size < 1:
    raise ValueError(f"thresholds_per_unit and chunk_size must be positive, got {thresholds_per_unit}, "
                     f"{chunk_size}")
  u, r, y = _populations(unlearned_logits, retrain_logits, labels)
  su = logit_scaled_confidence(u, y, floor=_CHALLENGE_FLOOR).T  # (n, N)
  sr = logit_scaled_confidence(r, y, floor=_CHALLENGE_FLOOR).T  # (n, M)
  rows = max(su.shape[1], sr.shape[1])
  su, sr = _pad(su.T, rows).T, _pad(sr.T, rows).T  # NaN-padded to a common width
  n_u, n_r = float(u.shape[0]), float(r.shape[0])
  out = []
  for s in range(0, su.shape[0], chunk_size):
    cu, cr = su[s:s + chunk_size], sr[s:s + chunk_size]
    retrain_positive = np.nanmedian(cr, 1) > np.nanmedian(cu, 1)
    pos = np.where(retrain_positive[:, None], cr, cu)
    neg = np.where(retrain_positive[:, None], cu, cr)
    n_pos = np.where(retrain_positive, n_r, n_u)
    n_neg = np.where(retrain_positive, n_u, n_r)
    eps = np.fmax(_single_threshold_eps(pos, neg, n_pos, n_neg, delta, thresholds_per_unit),
                  _double_threshold_eps(pos, neg, n_pos, n_neg, delta, thresholds_per_unit))
    eps = np.clip(np.nan_to_num(eps, nan=0.0, posinf=epsilon_cap), 0, epsilon_cap)
    pos_diff = np.nanmax(pos, 1) - np.nanmin(pos, 1)
    neg_diff = np.nanmax(neg, 1) - np.nanmin(neg, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
      peaky = np.fmin(pos_diff, neg_diff) / np.fmax(pos_diff, neg_diff) < 0.01
    out.append(np.where(peaky, epsilon_cap, eps))
  return np.concatenate(out)


def forgetting_quality(eps, *, num_models: int | None = None, bucket_size: float = CHALLENGE_BUCKET,
                       epsilon_cap: float = CHALLENGE_EPSILON_CAP) -> float:
  """The competition's forgetting quality ``F``: the mean over examples of ``2^-k`` for epsilon in bucket ``k``.

  Buckets are ``[k * bucket_size, (k + 1) * bucket_size)``, ``k = 0, 1, ...`` (the paper's ``2 / 2^n`` with the
  1-based bucket ``n``); an epsilon past the last bucket scores 0. The reference
  (``compute_forget_score_from_confs``) keeps the buckets that end at or below ``ceil(log(num_models - 1))``,
  "the max value of epsilon" attainable with ``num_models`` models; give ``num_models`` to reproduce it exactly.
  Without it every bucket below ``epsilon_cap`` counts, which gives the same ``F`` whenever both populations have
  ``num_models`` members (a finite epsilon cannot reach ``log(num_models - 1)`` then; a capped one scores 0
  either way).

  Args:
    eps: per-example epsilons (`challenge_epsilons`).
    num_models: the number of unlearned models the epsilons came from (the reference's ``num_models``).
    bucket_size: the reference's ``bucket_size``.
    epsilon_cap: epsilons at or above it score 0 when ``num_models`` is None.

  Returns:
    ``F`` in ``[0, 1]`` (1: every example's epsilon below ``bucket_size``).

  Example:
    >>> forgetting_quality(np.array([0.2, 1.1, 50.0]), num_models=4)   # (1 + 1/4 + 0) / 3
  """
  eps = np.asarray(eps, dtype=np.float64)
  if eps.ndim != 1 or eps.size == 0:
    raise ValueError(f"eps: expected a non-empty 1-D array, got shape {eps.shape}")
  if bucket_size <= 0:
    raise ValueError(f"bucket_size must be positive, got {bucket_size}")
  if num_models is not None:
    if num_models < 2:
      raise ValueError(f"num_models must be at least 2, got {num_models}")
    buckets = int(np.ceil(np.log(num_models - 1)) // bucket_size)
  else:
    buckets = int(math.ceil(epsilon_cap / bucket_size))
  with np.errstate(invalid="ignore"):
    k = np.floor(eps / bucket_size)
  valid = (k < buckets) & (k >= 0)
  if num_models is None:
    valid &= eps < epsilon_cap
  return float(np.mean(np.where(valid, 2.0 ** -np.where(valid, k, 0), 0.0)))


def challenge_score(F: float, *, ra_unlearned: float, ra_retrain: float, ta_unlearned: float,
                    ta_retrain: float) -> float:
  """The competition's final score ``F * (RA_U / RA_R) * (TA_U / TA_R)``.

  The accuracies are means over each population's members (``main.py`` of the competition code: retain and test
  accuracy of every unlearned and every retrained model, averaged per population).

  Example:
    >>> challenge_score(0.5, ra_unlearned=0.9, ra_retrain=1.0, ta_unlearned=0.8, ta_retrain=0.8)   # 0.45
  """
  for name, value in (("ra_retrain", ra_retrain), ("ta_retrain", ta_retrain)):
    if not value > 0:
      raise ValueError(f"{name} must be positive, got {value}")
  return float(F * (ra_unlearned / ra_retrain) * (ta_unlearned / ta_retrain))


# --------------------------------------------------------------------------------------------------------------
# All of it


def _population_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Accuracy of every member, averaged over members."""
  return float(np.mean(np.argmax(logits, axis=-1) == labels[None, :]))


def _split_inputs(name, mapping) -> dict:
  if not isinstance(mapping, Mapping):
    raise ValueError(f"{name}: expected a mapping {{split: array}}, got {type(mapping).__name__}")
  missing = [s for s in SPLITS if s not in mapping]
  if missing:
    raise ValueError(f"{name}: missing split(s) {missing} (needs {', '.join(SPLITS)})")
  return {s: mapping[s] for s in SPLITS}


def evaluate(unlearned: Mapping, retrain: Mapping, labels: Mapping, *, rng: jax.Array,
             ulira_options: Mapping | None = None, klom_options: Mapping | None = None,
             challenge_options: Mapping | None = None) -> dict[str, float]:
  """Every population metric of an unlearned population against a Retrain population, as one flat row.

  Args:
    unlearned: ``{'forget', 'retain', 'test'}`` -> ``(N, n_split, C)`` logits of the unlearned models.
    retrain: the same for the ``M`` Retrain models.
    labels: ``{'forget', 'retain', 'test'}`` -> ``(n_split,)`` labels.
    rng: PRNG key (U-LiRA's choice of target members).
    ulira_options, klom_options, challenge_options: keywords for `ulira`, `klom` and `challenge_epsilons`.

  Returns:
    ``ulira_accuracy``, ``ulira_auc``, ``ulira_tpr_at_1fpr`` (U-LiRA on the forget set);
    ``klom_p50_<split>`` and ``klom_p95_<split>`` for each split; ``challenge_eps_median``, ``challenge_F``
    (forget set, ``num_models = N`` as in the reference) and ``challenge_score``; and the accuracies it uses,
    ``ra_unlearned``, ``ra_retrain``, ``ta_unlearned``, ``ta_retrain`` (means over members).

  Example:
    >>> row = evaluate(u, r, y, rng=jax.random.key(0)); floor = noise_floor(r_a, r_b, y, rng=jax.random.key(0))
  """
  unlearned, retrain = _split_inputs("unlearned", unlearned), _split_inputs("retrain", retrain)
  labels = {s: np.asarray(v) for s, v in _split_inputs("labels", labels).items()}
  row = {f"ulira_{k}": v for k, v in ulira(unlearned["forget"], retrain["forget"], labels["forget"], rng=rng,
                                           **(ulira_options or {})).items()}
  for split in SPLITS:
    kl = klom(unlearned[split], retrain[split], labels[split], **(klom_options or {}))
    row[f"klom_p50_{split}"] = float(np.percentile(kl, 50))
    row[f"klom_p95_{split}"] = float(np.percentile(kl, 95))
  eps = challenge_epsilons(unlearned["forget"], retrain["forget"], labels["forget"], **(challenge_options or {}))
  cap = (challenge_options or {}).get("epsilon_cap", CHALLENGE_EPSILON_CAP)
  f = forgetting_quality(eps, num_models=np.shape(unlearned["forget"])[0], epsilon_cap=cap)
  acc = {f"{a}_{who}": _population_accuracy(np.asarray(pop[split]), labels[split])
         for a, split in (("ra", "retain"), ("ta", "test")) for who, pop in (("unlearned", unlearned),
                                                                             ("retrain", retrain))}
  row.update(challenge_eps_median=float(np.median(eps)), challenge_F=f, challenge_score=challenge_score(f, **acc))
  row.update(acc)
  return row


def noise_floor(retrain_a: Mapping, retrain_b: Mapping, labels: Mapping, *, rng: jax.Array,
                **options) -> dict[str, float]:
  """`evaluate` between two independent Retrain populations: what a perfect unlearner scores.

  ``retrain_a`` plays the unlearned population. A method's row is only meaningful next to the floor of
  populations of the *same sizes*: U-LiRA's and KLoM's sampling noise and the competition's attainable epsilon
  (about ``log(N - 1)``) all depend on ``N`` and ``M``.

  Args:
    retrain_a, retrain_b: ``{split: (N, n_split, C)}`` logits of two Retrain populations (different seeds).
    labels: ``{split: (n_split,)}``.
    rng: PRNG key.
    **options: `evaluate`'s options.

  Returns:
    The columns of `evaluate`.
  """
  return evaluate(retrain_a, retrain_b, labels, rng=rng, **options)


# --------------------------------------------------------------------------------------------------------------
# Per-model companions


def linear_cka(feats_a, feats_b) -> float:
  """Linear CKA between two representations of the same ``n`` examples (Kornblith et al., 2019, Eq. 5).

  ``CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred ``X (n, d1)``, ``Y (n, d2)``: 1 for
  identical features, invariant to orthogonal transforms and isotropic scaling of either side.

  Example:
    >>> linear_cka(unlearned_penultimate_forget, retrain_penultimate_forget)
  """
  x = np.asarray(feats_a, dtype=np.float64)
  y = np.asarray(feats_b, dtype=np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
    raise ValueError(f"linear_cka: expected (n, d1) and (n, d2) features with n >= 2, got {x.shape} and {y.shape}")
  x = x - x.mean(0)
  y = y - y.mean(0)
  denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
  if denom == 0:
    raise ValueError("linear_cka: a representation is constant over the examples")
  return float(np.linalg.norm(y.T @ x) ** 2 / denom)


def relearn_time(model, params: Any, state: Any, forget, *, target_accuracy: float, lr: float, max_epochs: int,
                 batch_size: int, rng: jax.Array, momentum: float = 0.0, eval_batch_size: int = 1024) -> int | None:
  """Epochs of fine-tuning on the forget set until its accuracy is back to ``target_accuracy``.

  The fine-tuning is the one unlearning loop (`unlearn_jax.unlearning.loop.unlearn_loop`) with the cross-entropy
  term on the forget split (what the ``ft`` method does on retain) and ``optax.sgd(lr, momentum)``; after every
  epoch the eval-mode accuracy on the whole forget split is measured and the loop stops at the first epoch that
  reaches the target. A model that forgot little relearns at once; the Original's forget accuracy is the usual
  target (Golatkar et al. count epochs to a loss threshold instead).

  Args:
    model: the `Model`.
    params, state: the (unlearned) model to fine-tune; not modified.
    forget: the forget `Split`.
    target_accuracy: accuracy in ``(0, 1]`` to reach, e.g. the Original's accuracy on ``forget``.
    lr: SGD learning rate.
    max_epochs: the most epochs to run.
    batch_size: rows per step.
    rng: PRNG key (shuffling).
    momentum: SGD momentum (0: plain SGD).
    eval_batch_size: rows per forward call of the accuracy evaluation.

  Returns:
    0 if the model is already at the target, else the number of epochs after which it first was; None if
    ``max_epochs`` were not enough.

  Example:
    >>> relearn_time(model, params_u, state_u, splits.forget, target_accuracy=0.99, lr=0.01, max_epochs=20,
    ...              batch_size=32, rng=jax.random.key(0))
  """
  # Imported here: unlearn_jax.unlearning imports evaluation modules (language metrics) itself.
  import optax  # pylint: disable=g-import-not-at-top
  from unlearn_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  from unlearn_jax.unlearning import loop, objectives  # pylint: disable=g-import-not-at-top

  if not 0.0 < target_accuracy <= 1.0:
    raise ValueError(f"target_accuracy must lie in (0, 1], got {target_accuracy}")
  if max_epochs < 1 or batch_size < 1 or not lr > 0:
    raise ValueError(f"max_epochs, batch_size and lr must be positive, got {max_epochs}, {batch_size}, {lr}")
  labels = np.asarray(forget.y)

  def reached(p, s) -> bool:
    return metrics.accuracy(metrics.predict(model, p, s, forget, batch_size=eval_batch_size),
                            labels) >= target_accuracy

  if reached(params, state):
    return 0
  epochs_run = []

  def on_epoch(epoch, p, s):
    if reached(p, s):
      epochs_run.append(epoch + 1)
      return True
    return False

  objective = loop.Objective(forget=objectives.cross_entropy(model))
  tx = optax.sgd(lr, momentum=momentum or None)
  loop.unlearn_loop(model, params, state, forget, None, objective=objective, tx=tx, epochs=max_epochs,
                    batch_size=batch_size, rng=rng, on_epoch=on_epoch, desc="relearn")
  return epochs_run[0] if epochs_run else None
