"""Tests for unlearn_jax.evaluation.population: U-LiRA, KLoM, the NeurIPS 2023 challenge score, CKA."""
import jax
import numpy as np
import pytest
from scipy import special
from scipy import stats

from unlearn_jax.evaluation import population as pop


def binary_logits(scores):
  """Two-class logits ``[0, s]``: with label 1 the logit-scaled confidence (and the margin) is exactly ``s``."""
  scores = np.asarray(scores, dtype=np.float64)
  return np.stack([np.zeros_like(scores), scores], axis=-1)


def test_logit_scaled_confidence_is_log_odds_of_the_true_class():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 4)) * 3
  y = rng.integers(0, 4, 5)
  p = special.softmax(logits, -1)[:, np.arange(5), y]
  want = np.log(p) - np.log(1 - p)
  np.testing.assert_allclose(pop.logit_scaled_confidence(logits, y), want, rtol=1e-10)
  np.testing.assert_allclose(pop.logit_scaled_confidence(logits, y, floor=1e-45), want, rtol=1e-10)
  # The competition's floor bounds the statistic where probabilities underflow: log(1) - log(1e-45) = 103.6.
  extreme = np.array([[[0.0, 2000.0]]])
  assert pop.logit_scaled_confidence(extreme, np.array([1]))[0, 0] == 2000.0
  np.testing.assert_allclose(pop.logit_scaled_confidence(extreme, np.array([1]), floor=1e-45)[0, 0],
                             -np.log(1e-45))


# ------------------------------------------------------------------------------------------------------ U-LiRA


def _populations(shift, n_models=100, n=40, seed=0):
  rng = np.random.default_rng(seed)
  centre = rng.normal(scale=3.0, size=n)  # per-example difficulty, shared by both populations
  u = centre + shift + rng.normal(size=(n_models, n))
  r = centre + rng.normal(size=(n_models, n))
  return binary_logits(u), binary_logits(r), np.ones(n, dtype=np.int32)


def test_ulira_is_at_chance_between_samples_of_one_distribution():
  u, r, y = _populations(shift=0.0)
  out = pop.ulira(u, r, y, rng=jax.random.key(0))
  decisions = 2 * 50 * 40  # num_targets = 100 // 2 from each population, 40 examples
  noise = 0.5 / np.sqrt(decisions)  # binomial standard deviation of the accuracy around 0.5
  assert abs(out["accuracy"] - 0.5) < 4 * noise
  assert abs(out["auc"] - 0.5) < 0.05
  assert out["tpr_at_1fpr"] < 0.05


def test_ulira_separates_well_separated_populations():
  u, r, y = _populations(shift=5.0)
  out = pop.ulira(u, r, y, rng=jax.random.key(1))
  assert out["accuracy"] > 0.99 and out["auc"] > 0.995 and out["tpr_at_1fpr"] > 0.9
  fixed = pop.ulira(u, r, y, rng=jax.random.key(1), fix_variance=True)
  assert fixed["accuracy"] > 0.99


def test_ulira_hand_case_and_target_split():
  # 4 unlearned and 4 retrained models, one example; num_targets=1 leaves 3 shadows on each side.
  u = binary_logits([[10.0], [11.0], [12.0], [13.0]])
  r = binary_logits([[0.0], [1.0], [2.0], [3.0]])
  out = pop.ulira(u, r, np.array([1]), rng=jax.random.key(0), num_targets=1)
  # Any target is far closer to its own population's Gaussian: both decisions right, AUC 1.
  assert out == {"accuracy": 1.0, "auc": 1.0, "tpr_at_1fpr": 1.0}
  a = pop.ulira(*_populations(0.3), rng=jax.random.key(3))
  assert a == pop.ulira(*_populations(0.3), rng=jax.random.key(3))  # the key fixes the split
  with pytest.raises(ValueError, match="num_targets"):
    pop.ulira(u, r, np.array([1]), rng=jax.random.key(0), num_targets=3)


# ------------------------------------------------------------------------------------------------------ KLoM


def test_klom_of_identical_samples_is_zero():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(50, 7, 5))
  y = rng.integers(0, 5, 7)
  np.testing.assert_allclose(pop.klom(logits, logits, y, binning="bench"), 0.0, atol=1e-12)
  # The same sample set in another order is the same histogram.
  np.testing.assert_allclose(pop.klom(logits, logits[::-1], y, binning="bench"), 0.0, atol=1e-12)
  # The a2d code floors *every* Retrain bin at eps and renormalises, so equal histograms with k empty slots give
  # sum_i p_i log(p_i / (p_i / (1 + k eps))) = log(1 + k eps): 0 up to the smoothing, at most log(1 + 20 eps).
  kl = pop.klom(logits, logits, y)
  assert np.all(kl > 0) and np.all(kl <= np.log(1 + 20 * 1e-5) + 1e-15)
  np.testing.assert_allclose(kl / np.log1p(1e-5), np.round(kl / np.log1p(1e-5)), atol=1e-3)  # k = integers
  assert np.all(pop.klom(logits + rng.normal(size=logits.shape), logits, y) > 0)


def _binned_gaussian_kl(edges, mu_p, mu_q, eps, slot0):
  """KL of two unit Gaussians integrated over the given bins, each renormalised to the binned range, with the
  Retrain probabilities floored at ``eps`` (all of them if ``slot0``: the a2d code's extra empty slot)."""
  p = np.diff(stats.norm.cdf(edges - mu_p))
  q = np.diff(stats.norm.cdf(edges - mu_q))
  p, q = p / p.sum(), q / q.sum()
  if slot0:
    p, q = np.concatenate([[0.0], p]), np.concatenate([[0.0], q])
    q = np.maximum(q, eps)
  else:
    q = np.where(p > 0, np.maximum(q, eps), q)
  q = q / q.sum()
  return np.sum(special.rel_entr(p, q))


@pytest.mark.parametrize("binning", pop.KLOM_BINNINGS)
def test_klom_of_shifted_gaussians_matches_the_binned_closed_form(binning):
  shifts = np.array([0.0, 0.5, 1.0])
  models = 20_000
  # Each population is the N quantiles of its Gaussian, (i + 1/2) / N, in a shuffled order: its histogram on any
  # bins is within 1/N of the bins' Gaussian probabilities, so the estimate has no sampling noise to allow for.
  quantiles = stats.norm.ppf((np.arange(models) + 0.5) / models)
  rng = np.random.default_rng(1)
  u_margins = np.stack([rng.permutation(quantiles) for _ in shifts], 1)  # N(0, 1) for every example
  r_margins = shifts + np.stack([rng.permutation(quantiles) for _ in shifts], 1)  # N(shift, 1)
  kl = pop.klom(binary_logits(u_margins), binary_logits(r_margins), np.ones(3, dtype=np.int32), binning=binning)
  for i, shift in enumerate(shifts):
    lo = min(u_margins[:, i].min(), r_margins[:, i].min())
    hi = max(u_margins[:, i].max(), r_margins[:, i].max())
    # a2d: 20 edges (19 intervals) + the always-empty slot 0; bench: 21 edges (20 intervals).
    edges = np.linspace(lo, hi, 20 if binning == "a2d" else 21)
    want = _binned_gaussian_kl(edges, 0.0, shift, 1e-5, slot0=binning == "a2d")
    np.testing.assert_allclose(kl[i], want, atol=2e-3)
  # Continuous KL of unit Gaussians is shift^2 / 2; binning loses a little of it.
  assert 0.10 < kl[1] < 0.125 + 0.01 and 0.45 < kl[2] < 0.5 + 0.01


def test_klom_hand_histogram():
  # One example, unlearned margins [0, 1, 2, 3, 4], retrain [0, 0, 0, 0, 4] (bench binning, 4 bins).
  # Edges linspace(0, 4, 5) = [0, 1, 2, 3, 4]; np.digitize gives unlearned [1, 2, 3, 4, 5], retrain [1, 1, 1, 1, 5];
  # indices 1..4 are counted, so the maximum (index 5) drops out: p = [1, 1, 1, 1] / 4, q = [4, 0, 0, 0] / 4.
  # q is floored at eps = 1e-5 where p > 0 -> [1, 1e-5, 1e-5, 1e-5], renormalised by 1 + 3e-5.
  u = binary_logits([[0.0], [1.0], [2.0], [3.0], [4.0]])
  r = binary_logits([[0.0], [0.0], [0.0], [0.0], [4.0]])
  z = 1 + 3e-5
  want = 0.25 * np.log(0.25 / (1 / z)) + 3 * 0.25 * np.log(0.25 / (1e-5 / z))
  np.testing.assert_allclose(pop.klom(u, r, np.array([1]), bins=4, binning="bench"), [want], rtol=1e-12)


# ------------------------------------------------------------------------------------------------------ challenge


HAND_U = np.array([[0, 1, 2, 3], [0, 0.1, 0.2, 0.3], [0, 1, 2, 3], [1, 1, 1, 1.001]], dtype=np.float64).T
HAND_R = np.array([[1.5, 2.5, 3.5, 4.5], [5, 5.1, 5.2, 5.3], [0, 1, 2, 3], [0, 1, 2, 3]], dtype=np.float64).T


def test_challenge_epsilons_and_forgetting_quality_by_hand():
  # Four forget examples, four unlearned (U) and four retrained (R) models; confidences are the columns above.
  eps = pop.challenge_epsilons(binary_logits(HAND_U), binary_logits(HAND_R), np.ones(4, dtype=np.int32))
  delta = 1e-5
  # Example 0: U = [0, 1, 2, 3], R = [1.5, 2.5, 3.5, 4.5]. R has the larger median, so R is "positive".
  #   1-sided thresholds t (predict R if conf >= t), FPR = share of U >= t, FNR = share of R < t:
  #     t in (1, 1.5]:  FPR 2/4, FNR 0    -> discarded (one rate is 0)
  #     t in (1.5, 2]:  FPR 2/4, FNR 1/4  -> max(log((1-d-1/2)/(1/4)), log((1-d-1/4)/(1/2))) = log(2 - 4d)
  #     t in (2, 2.5]:  FPR 1/4, FNR 1/4  -> log((1 - d - 1/4) / (1/4)) = log(3 - 4d)
  #     t in (2.5, 3]:  FPR 1/4, FNR 2/4  -> log(2 - 4d)
  #     t > 3:          FPR 0            -> discarded
  #   2-sided intervals [l, r] around the peakier population (equal ranges 3: U is taken): the best interval
  #   holds U {0, 1, 2} and R {1.5}: TPR 3/4, FPR 1/4 -> log(3 - 4d) again. So eps_0 = log(3 - 4d) = 1.0986.
  # Example 1: U = [0 .. 0.3], R = [5 .. 5.3]: a threshold at 3 separates them (FPR = FNR = 0) -> inf -> cap 50.
  # Example 2: identical populations: every attack has TPR = FPR, so both log terms are <= 0 -> eps_2 = 0.
  # Example 3: U's range 0.001 is < 1% of R's range 3 -> "peaky" -> cap 50 without any attack.
  np.testing.assert_allclose(eps, [np.log(3 - 4 * delta), 50.0, 0.0, 50.0], rtol=1e-12)
  # F with 4 models: buckets of 0.5 up to ceil(log(4 - 1)) = ceil(1.0986) = 2, i.e. [0, .5) [.5, 1) [1, 1.5)
  # [1.5, 2) worth 1, 1/2, 1/4, 1/8 (the paper's 2 / 2^n); eps >= 2 scores 0.
  # eps_0 = 1.0986 -> 1/4; eps_1 = 50 -> 0; eps_2 = 0 -> 1; eps_3 = 50 -> 0. F = (1/4 + 0 + 1 + 0) / 4 = 0.3125.
  assert pop.forgetting_quality(eps, num_models=4) == 0.3125
  assert pop.forgetting_quality(eps) == 0.3125  # no bucket limit: same F (no finite eps reaches log(3))
  # Score = F * RA_U / RA_R * TA_U / TA_R = 0.3125 * (0.9 / 0.95) * (0.8 / 0.85).
  score = pop.challenge_score(0.3125, ra_unlearned=0.9, ra_retrain=0.95, ta_unlearned=0.8, ta_retrain=0.85)
  np.testing.assert_allclose(score, 0.3125 * 0.9 / 0.95 * 0.8 / 0.85, rtol=1e-15)


def test_forgetting_quality_buckets():
  # 32 models: buckets up to ceil(log 31) = ceil(3.43) = 4, so 8 buckets worth 1, 1/2, ..., 1/128.
  eps = np.array([0.0, 0.49, 0.5, 1.2, 3.99, 4.0, 50.0, np.nan])
  # buckets 0, 0, 1, 2, 7, (none), (none), (none)
  want = (1 + 1 + 0.5 + 0.25 + 2.0 ** -7) / 8
  assert pop.forgetting_quality(eps, num_models=32) == pytest.approx(want)
  # Two models: ceil(log 1) = 0, no bucket at all (the reference's loop never runs): F = 0.
  assert pop.forgetting_quality(np.array([0.0]), num_models=2) == 0.0
  # Without num_models every bucket below the cap counts: 4.0 is bucket 8, worth 2^-8.
  assert pop.forgetting_quality(eps) == pytest.approx(want + 2.0 ** -8 / 8)


def _reference_epsilon(u, r, delta, per_unit, cap=50.0):
  """The competition's per-example procedure written out threshold by threshold, with explicit comparisons."""
  pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
  pos_diff, neg_diff = np.ptp(pos), np.ptp(neg)
  if min(pos_diff, neg_diff) / max(pos_diff, neg_diff) < 0.01:
    return cap

  def epsilons(tpr, fpr):  # one value per attack; NaN = discarded
    fnr = 1 - tpr
    out = np.full(tpr.shape, np.nan)
    for i, (fp, fn) in enumerate(zip(fpr, fnr)):
      if fp == 0 and fn == 0:
        out[i] = np.inf
      elif fp > 0 and fn > 0:
        terms = [np.log(1 - delta - a) - np.log(b) for a, b in ((fp, fn), (fn, fp)) if 1 - delta - a > 0]
        out[i] = max(max(terms), 0.0) if terms else np.nan
    return out

  found = []
  both = np.concatenate([pos, neg])
  t = np.linspace(both.min(), both.max(), int(np.ceil((both.max() - both.min()) * per_unit)))[:, None]
  found.append(epsilons(np.mean(pos >= t, 1), np.mean(neg >= t, 1)))
  peaky, broad = (neg, pos) if pos_diff >= neg_diff else (pos, neg)
  width = min(pos_diff, neg_diff)
  lo, hi = peaky.min() + width - 2, peaky.max() + 2
  for right in np.linspace(lo, hi, int(np.ceil((hi - lo) * per_unit))):
    left = np.linspace(right - width - 2, right - width + 2, int(np.ceil(4 * per_unit)))[:, None]
    rates = [np.mean((left <= v) & (v <= right), 1) for v in (peaky, broad)]
    # Many intervals share their rates; score each distinct (TPR, FPR) pair once.
    found.append(epsilons(*np.unique(np.stack(rates), axis=1)))
  found = np.concatenate(found)
  return float(np.clip(np.nanmax(found), 0, cap)) if np.any(~np.isnan(found)) else 0.0


@pytest.mark.parametrize("n_u,n_r", [(6, 6), (5, 8)])
def test_challenge_epsilons_match_a_loop_over_every_threshold(n_u, n_r):
  rng = np.random.default_rng(n_u + n_r)
  n = 6
  u = rng.normal(size=(n_u, n)) + np.array([0, 0, 0.5, 1, 2, 4])
  r = rng.normal(size=(n_r, n)) * np.array([1, 0.5, 1, 2, 1, 1])
  y = np.ones(n, dtype=np.int32)
  got = pop.challenge_epsilons(binary_logits(u), binary_logits(r), y, thresholds_per_unit=10, chunk_size=4)
  want = [_reference_epsilon(u[:, i], r[:, i], 1e-5, 10) for i in range(n)]
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_challenge_epsilons_default_grid_on_a_small_population():
  rng = np.random.default_rng(7)
  u = rng.normal(size=(8, 2)) + [0.0, 1.5]
  r = rng.normal(size=(8, 2))
  got = pop.challenge_epsilons(binary_logits(u), binary_logits(r), np.ones(2, dtype=np.int32))
  want = [_reference_epsilon(u[:, i], r[:, i], 1e-5, 100) for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-12)


# ------------------------------------------------------------------------------------------------------ evaluate


def _split_populations(rng, n_models, shift=0.0):
  sizes = {"forget": 12, "retain": 20, "test": 16}
  return {s: rng.normal(size=(n_models, k, 3)) + shift * (np.arange(3) == 0) for s, k in sizes.items()}


def test_evaluate_and_noise_floor_assemble_the_metrics():
  rng = np.random.default_rng(0)
  labels = {s: rng.integers(0, 3, k) for s, k in {"forget": 12, "retain": 20, "test": 16}.items()}
  unlearned = _split_populations(rng, 10, shift=1.0)
  retrain_a, retrain_b = _split_populations(rng, 10), _split_populations(rng, 10)
  key = jax.random.key(0)
  row = pop.evaluate(unlearned, retrain_a, labels, rng=key)
  u_ulira = pop.ulira(unlearned["forget"], retrain_a["forget"], labels["forget"], rng=key)
  assert row["ulira_accuracy"] == u_ulira["accuracy"] and row["ulira_auc"] == u_ulira["auc"]
  for split in pop.SPLITS:
    kl = pop.klom(unlearned[split], retrain_a[split], labels[split])
    assert row[f"klom_p50_{split}"] == np.median(kl) and row[f"klom_p95_{split}"] == np.percentile(kl, 95)
  eps = pop.challenge_epsilons(unlearned["forget"], retrain_a["forget"], labels["forget"])
  assert row["challenge_F"] == pop.forgetting_quality(eps, num_models=10)
  accuracy = lambda logits, y: np.mean([np.mean(np.argmax(m, -1) == y) for m in logits])
  assert row["ra_unlearned"] == pytest.approx(accuracy(unlearned["retain"], labels["retain"]))
  assert row["ta_retrain"] == pytest.approx(accuracy(retrain_a["test"], labels["test"]))
  want = row["challenge_F"] * row["ra_unlearned"] / row["ra_retrain"] * row["ta_unlearned"] / row["ta_retrain"]
  assert row["challenge_score"] == pytest.approx(want)
  floor = pop.noise_floor(retrain_a, retrain_b, labels, rng=key)
  assert floor.keys() == row.keys()
  assert floor["klom_p50_forget"] < row["klom_p50_forget"]  # the shifted population is further from Retrain
  with pytest.raises(ValueError, match="missing split"):
    pop.evaluate({"forget": unlearned["forget"]}, retrain_a, labels, rng=key)


def test_bad_populations_fail_before_work():
  y = np.array([1, 0])
  good = np.zeros((3, 2, 2))
  with pytest.raises(ValueError, match="at least 2 models"):
    pop.klom(np.zeros((1, 2, 2)), good, y)
  with pytest.raises(ValueError, match="share"):
    pop.klom(good, np.zeros((3, 3, 2)), y)
  with pytest.raises(ValueError, match="labels"):
    pop.challenge_epsilons(good, good, np.array([0, 2]))
  with pytest.raises(ValueError, match="finite"):
    pop.klom(good + np.nan, good, y)
  with pytest.raises(ValueError, match="binning"):
    pop.klom(good, good, y, binning="numpy")
  with pytest.raises(ValueError, match="ra_retrain"):
    pop.challenge_score(1.0, ra_unlearned=1, ra_retrain=0, ta_unlearned=1, ta_retrain=1)


# ------------------------------------------------------------------------------------------------------ CKA


def _hsic_cka(x, y):
  """CKA from its definition: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T, H the centring."""
  n = x.shape[0]
  h = np.eye(n) - np.ones((n, n)) / n
  hsic = lambda k, l: np.trace(k @ h @ l @ h) / (n - 1) ** 2
  k, l = x @ x.T, y @ y.T
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_linear_cka_invariants_and_hsic_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 6))
  y = x @ rng.normal(size=(6, 9)) + 0.5 * rng.normal(size=(40, 9))
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  assert pop.linear_cka(x, x) == pytest.approx(1.0)
  assert pop.linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0)  # orthogonal, scale, offset
  value = pop.linear_cka(x, y)
  assert 0.0 < value < 1.0
  assert value == pytest.approx(_hsic_cka(x, y), rel=1e-10)
  q9, _ = np.linalg.qr(rng.normal(size=(9, 9)))
  assert pop.linear_cka(0.1 * x @ q, 7.0 * y @ q9) == pytest.approx(value, rel=1e-10)
  assert pop.linear_cka(x, y) == pytest.approx(pop.linear_cka(y, x))
  with pytest.raises(ValueError, match="linear_cka"):
    pop.linear_cka(x, y[:10])


# ------------------------------------------------------------------------------------------------------ relearn


def test_relearn_time_on_a_digits_mlp():
  import optax  # pylint: disable=g-import-not-at-top
  from method_checks import digits_setup  # pylint: disable=g-import-not-at-top
  from unlearn_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  from unlearn_jax.unlearning import loop, objectives  # pylint: disable=g-import-not-at-top

  model, params, state, splits = digits_setup()
  forget = splits.forget
  accuracy = lambda p, s: metrics.accuracy(metrics.predict(model, p, s, forget), np.asarray(forget.y))
  fine_tune = loop.Objective(forget=objectives.cross_entropy(model))
  run = lambda p, s, objective, epochs, seed, **kw: loop.unlearn_loop(
      model, p, s, forget, None, objective=objective, tx=optax.sgd(0.1), epochs=epochs, batch_size=32,
      rng=jax.random.key(seed), **kw)
  learned, learned_state, _ = run(params, state, fine_tune, 20, 0)  # the "Original" on the forget set
  target = accuracy(learned, learned_state)
  assert target > 0.9
  common = dict(lr=0.1, max_epochs=12, batch_size=32, rng=jax.random.key(2))
  assert pop.relearn_time(model, learned, learned_state, forget, target_accuracy=target, **common) == 0
  ga = loop.Objective(forget=objectives.negated(objectives.cross_entropy(model)))
  damaged, damaged_state, _ = run(learned, learned_state, ga, 3, 1)  # gradient ascent wipes the forget set
  assert accuracy(damaged, damaged_state) < 0.3
  epochs = pop.relearn_time(model, damaged, damaged_state, forget, target_accuracy=target, **common)
  # The same fine-tuning, recording every epoch's forget accuracy: relearn time is the first epoch at target.
  trajectory = []
  run(damaged, damaged_state, fine_tune, 12, 2, on_epoch=lambda e, p, s: trajectory.append(accuracy(p, s)))
  assert len(trajectory) == 12 and epochs is not None and epochs >= 1
  assert epochs == 1 + next(i for i, a in enumerate(trajectory) if a >= target)
  assert pop.relearn_time(model, damaged, damaged_state, forget, target_accuracy=1.0, lr=0.1, max_epochs=1,
                          batch_size=32, rng=jax.random.key(2)) is None  # one epoch cannot reach 100%
