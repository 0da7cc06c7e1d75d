"""Tests for unlearn_jax.evaluation.language: TOFU / MUSE metrics against independent NumPy / by-hand values.

The stand-in LM is a bigram model: the logits at position t are row ``input_ids[t]`` of ``params['table']``, so
``log P(token t | prefix) = log_softmax(table[ids[t-1]])[ids[t]]`` can be recomputed in plain NumPy, and its
greedy generation follows the arg-max of the last token's row.
"""
import math
import types
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from unlearn_jax import language
from unlearn_jax.evaluation import language as lm_eval

PAD, BOS, EOS, SEP = 0, 1, 2, 3
WORDS = ["<pad>", "<bos>", "<eos>", "<sep>", "<unk>", "sun", "red", "cat", "dog", "sat", "mat", "cup"]
CAT, SAT = WORDS.index("cat"), WORDS.index("sat")
V, T, TQ, P = len(WORDS), 9, 4, 3


def decode(ids) -> str:
  return " ".join(WORDS[int(i)] for i in ids if int(i) > 4)


def bigram_lm(traces=None) -> language.LanguageModel:
  def logits(params, input_ids):
    if traces is not None:
      traces.append(input_ids.shape)
    return params["table"][input_ids]

  def generate(params, prompt_ids, prompt_len, max_new_tokens):
    prev = prompt_ids[jnp.arange(prompt_ids.shape[0]), prompt_len - 1]
    done = jnp.zeros(prompt_ids.shape[0], bool)
    out = []
    for _ in range(max_new_tokens):
      nxt = jnp.argmax(params["table"][prev], axis=-1).astype(jnp.int32)
      out.append(jnp.where(done, PAD, nxt))
      done = done | (nxt == EOS)
      prev = nxt
    return jnp.stack(out, axis=1)

  return language.LanguageModel(logits=logits, generate=generate, num_layers=1, pad_id=PAD, eos_id=EOS)


def make_table(seed: int) -> dict:
  table = np.random.default_rng(seed).normal(size=(V, V)).astype(np.float32) * 1.5
  table[SEP, CAT] = table[CAT, SAT] = table[SAT, EOS] = 8.0  # greedy answer after SEP: "cat sat"
  return {"table": jnp.asarray(table)}


def np_logprob(table, ids, mask):
  """Sum of target log-probabilities and target count of one row, by a plain loop."""
  table = np.asarray(table, np.float64)
  total = 0.0
  for t in range(1, len(ids)):
    if mask[t]:
      row = table[ids[t - 1]]
      total += row[ids[t]] - np.log(np.sum(np.exp(row)))
  return total, float(np.sum(mask))


def np_token_logprobs(table, ids):
  table = np.asarray(table, np.float64)
  out = np.zeros(len(ids))
  for t in range(1, len(ids)):
    row = table[ids[t - 1]]
    out[t] = row[ids[t]] - np.log(np.sum(np.exp(row)))
  return out


def np_generate(table, prompt, max_new_tokens):
  table = np.asarray(table)
  prev, out = prompt[-1], []
  for _ in range(max_new_tokens):
    prev = int(np.argmax(table[prev]))
    if prev == EOS:
      break
    out.append(prev)
  return decode(out)


def lcs_recall(generation: str, reference: str) -> float:
  a, b = generation.split(), reference.split()
  dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i in range(len(a)):
    for j in range(len(b)):
      dp[i + 1][j + 1] = dp[i][j] + 1 if a[i] == b[j] else max(dp[i][j + 1], dp[i + 1][j])
  return dp[-1][-1] / len(b) if b else 0.0


def qa_row(question, answer):
  ids = [BOS, *question, SEP, *answer, EOS]
  mask = [0] * (len(question) + 2) + [1] * (len(answer) + 1)
  return ids + [PAD] * (T - len(ids)), mask + [0] * (T - len(mask))


def make_set(seed: int, n: int = 5):
  """A stand-in QASet; rows 0 and 1 answer "cat sat" and "cat" (what the stand-in LM generates)."""
  rng = np.random.default_rng(seed)
  words = np.arange(5, V)
  fields = {k: [] for k in ("input_ids", "loss_mask", "para_input_ids", "para_loss_mask", "pert_input_ids",
                            "pert_loss_mask", "prompt_ids", "prompt_len", "answers", "questions")}
  for i in range(n):
    question = list(rng.choice(words, size=1 + i % 2))
    answer = [[CAT, SAT], [CAT]][i] if i < 2 else list(rng.choice(words, size=1 + i % 3))
    ids, mask = qa_row(question, answer)
    fields["input_ids"].append(ids), fields["loss_mask"].append(mask)
    ids, mask = qa_row(question, list(rng.choice(words, size=2)))
    fields["para_input_ids"].append(ids), fields["para_loss_mask"].append(mask)
    perts = [qa_row(question, list(rng.choice(words, size=1 + j))) for j in range(P)]
    fields["pert_input_ids"].append([p[0] for p in perts]), fields["pert_loss_mask"].append([p[1] for p in perts])
    prompt = [BOS, *question, SEP]
    fields["prompt_ids"].append(prompt + [PAD] * (TQ - len(prompt))), fields["prompt_len"].append(len(prompt))
    fields["answers"].append(decode(answer)), fields["questions"].append(decode(question))
  out = {k: (v if k in ("answers", "questions") else np.asarray(v, np.float32 if "mask" in k else np.int32))
         for k, v in fields.items()}
  out["entity_mask"] = np.zeros_like(out["loss_mask"])
  out["person"] = np.arange(n, dtype=np.int32)
  return types.SimpleNamespace(**out)


def make_sets():
  return {"forget": make_set(1), "retain": make_set(2, n=6), "world": make_set(3, n=4), "holdout": make_set(4)}


# ------------------------------------------------------------------------------------------------ answer_scores


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_answer_scores_match_numpy(batch_size):
  params, qa = make_table(0), make_set(5)
  lm = bigram_lm()
  got = lm_eval.answer_scores(lm, params, qa.input_ids, qa.loss_mask, batch_size=batch_size)
  want = np.array([np_logprob(params["table"], i, m) for i, m in zip(qa.input_ids, qa.loss_mask)])
  np.testing.assert_allclose(got.logprob, want[:, 0], rtol=1e-5)
  np.testing.assert_array_equal(got.count, want[:, 1])
  np.testing.assert_allclose(got.token_logprobs, [np_token_logprobs(params["table"], i) for i in qa.input_ids],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(lm_eval.length_normalised_prob(got.logprob, got.count),
                             np.exp(want[:, 0] / want[:, 1]), rtol=1e-5)
  pert = lm_eval.answer_scores(lm, params, qa.pert_input_ids, qa.pert_loss_mask, batch_size=batch_size)
  assert pert.logprob.shape == (5, P) and pert.token_logprobs.shape == (5, P, T)
  want = [[np_logprob(params["table"], i, m)[0] for i, m in zip(ids, masks)]
          for ids, masks in zip(qa.pert_input_ids, qa.pert_loss_mask)]
  np.testing.assert_allclose(pert.logprob, want, rtol=1e-5)


def test_answer_scores_compile_once_per_shape():
  traces = []
  lm, params, qa = bigram_lm(traces), make_table(0), make_set(5)
  lm_eval.answer_scores(lm, params, qa.input_ids, qa.loss_mask, batch_size=4)
  lm_eval.answer_scores(lm, params, qa.pert_input_ids, qa.pert_loss_mask, batch_size=4)
  lm_eval.answer_scores(lm, params, qa.input_ids[:3], qa.loss_mask[:3], batch_size=4)
  assert traces == [(4, T)]


def test_answer_scores_and_probabilities_reject_bad_input():
  lm, params, qa = bigram_lm(), make_table(0), make_set(5)
  with pytest.raises(ValueError, match="loss_mask"):
    lm_eval.answer_scores(lm, params, qa.input_ids, qa.loss_mask[:, :-1])
  with pytest.raises(ValueError, match="no target"):
    lm_eval.length_normalised_prob(np.array([-1.0, -2.0]), np.array([1.0, 0.0]))


# -------------------------------------------------------------------------------- truth ratio, utility, quality


def test_truth_ratio_by_hand():
  # Row 0: correct 0.25 per token (2 tokens); wrong 0.5 (1 token) and 0.125 (3 tokens): geomean 0.25 -> R = 1.
  # Row 1: correct 0.5 (1 token); wrong 0.1 and 0.4 per token: geomean 0.2 -> R = 0.4.
  correct_lp, correct_n = np.array([2 * np.log(0.25), np.log(0.5)]), np.array([2.0, 1.0])
  wrong_lp = np.array([[np.log(0.5), 3 * np.log(0.125)], [2 * np.log(0.1), np.log(0.4)]])
  wrong_n = np.array([[1.0, 3.0], [2.0, 1.0]])
  ratios = lm_eval.truth_ratio(correct_lp, correct_n, wrong_lp, wrong_n)
  np.testing.assert_allclose(ratios, [1.0, 0.4], rtol=1e-12)
  assert lm_eval.closer_to_one(ratios) == pytest.approx((1.0 + 0.4) / 2)
  assert lm_eval.closer_to_one([2.5, 0.4]) == pytest.approx(0.4)  # min(R, 1/R) is symmetric
  assert lm_eval.true_better(ratios) == pytest.approx((0.0 + 0.6) / 2)
  assert lm_eval.true_better([3.0, 0.25]) == pytest.approx((0.0 + 0.75) / 2)  # clipped at 0
  with pytest.raises(ValueError, match="truth_ratio"):
    lm_eval.truth_ratio(correct_lp, correct_n, wrong_lp[0], wrong_n[0])


def test_option_normalised_prob_by_hand():
  got = lm_eval.option_normalised_prob([0.5, 0.2], [[0.25, 0.25], [0.1, 0.7]])
  np.testing.assert_allclose(got, [0.5, 0.2 / 1.0])
  with pytest.raises(ValueError, match="wrong_probs"):
    lm_eval.option_normalised_prob([0.5], [0.25])


def test_model_utility_is_harmonic_mean():
  scores = dict(zip(lm_eval.UTILITY_KEYS, [0.5, 0.25, 1.0, 0.8, 0.4, 0.2]))
  want = 6 / sum(1 / v for v in scores.values())
  assert lm_eval.model_utility(scores) == pytest.approx(want, rel=1e-12)
  assert lm_eval.model_utility({**scores, "retain_rouge": 0.0}) == 0.0
  with pytest.raises(ValueError, match="world_rouge"):
    lm_eval.model_utility({k: v for k, v in scores.items() if k != "world_rouge"})
  with pytest.raises(ValueError, match="non-negative"):
    lm_eval.model_utility({**scores, "retain_prob": -0.1})


def test_forget_quality_ks_pvalue():
  sample = np.array([0.3, 1.2, 0.7, 2.0, 0.9])
  assert lm_eval.forget_quality(sample, sample.copy()) == pytest.approx(1.0)
  # Disjoint samples of 5 and 5: exact two-sided p-value = 2 / C(10, 5).
  assert lm_eval.forget_quality(sample, sample + 10.0) == pytest.approx(2 / math.comb(10, 5))
  # The KS p-value is the same for R and 1/R (TOFU tests 1/R, open-unlearning R).
  other = np.array([0.5, 0.6, 3.0, 1.1, 0.2, 0.8])
  assert lm_eval.forget_quality(sample, other) == pytest.approx(lm_eval.forget_quality(1 / sample, 1 / other))
  with pytest.raises(ValueError, match="empty"):
    lm_eval.forget_quality(sample, [])


# ----------------------------------------------------------------------------------------------- Min-K, AUC, leak


def test_min_k_scores_by_hand():
  logp = np.array([[0.0, -1.0, -5.0, -3.0, -2.0, -4.0],
                   [0.0, -1.0, -5.0, -3.0, -2.0, -4.0],
                   [0.0, -0.5, -2.5, 0.0, 0.0, 0.0],
                   [0.0, -1.0, -1.0, 0.0, 0.0, 0.0]])
  mask = np.array([[0, 1, 1, 1, 1, 1],   # n=5 -> 2 lowest: -5, -4
                   [0, 1, 0, 1, 1, 0],   # n=3 -> 1 lowest: -3
                   [0, 1, 1, 0, 0, 0],   # n=2 -> floor(0.8)=0 -> at least 1: -2.5
                   [0, 0, 0, 0, 0, 0]])  # no token -> 0
  np.testing.assert_allclose(lm_eval.min_k_scores(logp, mask), [4.5, 3.0, 2.5, 0.0])
  np.testing.assert_allclose(lm_eval.min_k_scores(logp, mask, k=1.0), [3.0, 2.0, 1.5, 0.0])
  with pytest.raises(ValueError, match="k must"):
    lm_eval.min_k_scores(logp, mask, k=0.0)


def test_min_k_auc_and_privleak_by_hand():
  assert lm_eval.min_k_auc([1.0, 2.0], [3.0, 4.0]) == 0.0  # forget far more likely: memorised
  assert lm_eval.min_k_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
  forget, holdout = np.array([1.0, 3.0, 5.0]), np.array([2.0, 3.0])
  pairs = [(f, h) for f in forget for h in holdout]
  by_hand = sum((h < f) + 0.5 * (h == f) for f, h in pairs) / len(pairs)
  assert lm_eval.min_k_auc(forget, holdout) == pytest.approx(by_hand)  # = 3.5 / 6
  assert lm_eval.privleak(0.25, 0.5) == pytest.approx(-50.0)
  assert lm_eval.privleak(0.6, 0.4) == pytest.approx(50.0)
  with pytest.raises(ValueError, match="retrain_auc"):
    lm_eval.privleak(0.3, 0.0)


# ---------------------------------------------------------------------------------------------- generation, ROUGE


def test_rouge_l_recall_on_hand_strings():
  got = lm_eval.rouge_l_recall(["the cat sat", "the mat sat", "cats running", "", "dog"],
                               ["the cat sat on the mat", "the cat sat", "cat run", "cat", "dog"])
  np.testing.assert_allclose(got, [0.5, 2 / 3, 1.0, 0.0, 1.0])  # stemmed: cats -> cat, running -> run
  with pytest.raises(ValueError, match="generations"):
    lm_eval.rouge_l_recall(["a"], [])


@pytest.mark.parametrize("batch_size", [2, 8])
def test_generate_answers_matches_greedy_numpy(batch_size):
  params, qa = make_table(7), make_set(5)
  got = lm_eval.generate_answers(bigram_lm(), params, qa.prompt_ids, qa.prompt_len, decode=decode,
                                 max_new_tokens=4, batch_size=batch_size)
  want = [np_generate(params["table"], list(p[:n]), 4) for p, n in zip(qa.prompt_ids, qa.prompt_len)]
  assert got == want and got[0] == "cat sat"
  with pytest.raises(ValueError, match="generate"):
    lm_eval.generate_answers(bigram_lm()._replace(generate=None), params, qa.prompt_ids, qa.prompt_len,
                             decode=decode)


# ---------------------------------------------------------------------------------------------------- evaluate_lm


def expected_row(params, sets, rows=None):
  """Every metric of `evaluate_lm`, recomputed with NumPy loops."""
  table = params["table"]
  row, tr, mink = {}, {}, {}

  def probs(ids, masks):
    lp = np.array([np_logprob(table, i, m) for i, m in zip(ids.reshape(-1, T), masks.reshape(-1, T))])
    return lp[:, 0].reshape(ids.shape[:-1]), np.exp(lp[:, 0] / lp[:, 1]).reshape(ids.shape[:-1])

  for split, qa in sets.items():
    lp, p = probs(qa.input_ids, qa.loss_mask)
    row[f"{split}_prob"], row[f"{split}_logprob"] = p.mean(), lp.mean()
    answer_mask = qa.loss_mask * (qa.input_ids != EOS)
    mink[split] = []
    for ids, m in zip(qa.input_ids, answer_mask):
      lowest = sorted(v for v, keep in zip(np_token_logprobs(table, ids), m) if keep)
      num = max(1, int(len(lowest) * 0.4))
      mink[split].append(-sum(lowest[:num]) / num)
    if split == "holdout":
      continue
    _, wrong = probs(qa.pert_input_ids, qa.pert_loss_mask)
    row[f"{split}_prob_options"] = np.mean(p / (p + wrong.sum(1)))
    correct = p if split == "world" else probs(qa.para_input_ids, qa.para_loss_mask)[1]
    tr[split] = np.exp(np.log(wrong).mean(1)) / correct
    row[f"{split}_truth_ratio"] = (np.mean(np.minimum(tr[split], 1 / tr[split])) if split == "forget"
                                   else np.mean(np.maximum(0, 1 - tr[split])))
    gens = [np_generate(table, list(pr[:n]), 4) for pr, n in zip(qa.prompt_ids[:rows], qa.prompt_len[:rows])]
    row[f"{split}_rouge"] = np.mean([lcs_recall(g, a) for g, a in zip(gens, qa.answers[:rows])])
  vals = [row[k] for k in lm_eval.UTILITY_KEYS]
  row["model_utility"] = len(vals) / sum(1 / v for v in vals)
  pairs = [(f, h) for f in mink["forget"] for h in mink["holdout"]]
  row["mink_auc"] = sum((h < f) + 0.5 * (h == f) for f, h in pairs) / len(pairs)
  return row, tr


def test_evaluate_lm_end_to_end_matches_numpy():
  traces = []
  lm, sets = bigram_lm(traces), make_sets()
  retrain_params, params = make_table(11), make_table(12)
  retrain = lm_eval.evaluate_lm(lm, retrain_params, sets, decode=decode, batch_size=4, max_new_tokens=4)
  got = lm_eval.evaluate_lm(lm, params, sets, decode=decode, reference=retrain.samples, batch_size=4,
                            max_new_tokens=4, rouge_rows=3)
  assert traces == [(4, T)]  # one compiled forward for every set, field and both models

  want_rt, tr_rt = expected_row(retrain_params, sets)
  want, tr = expected_row(params, sets, rows=3)
  assert set(retrain.metrics) == set(want_rt)
  for key, value in want_rt.items():
    assert retrain.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
  for key, value in want.items():
    assert got.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
  assert 0.0 < want["retain_rouge"] and 0.0 < want["model_utility"]  # the checks are not vacuous
  assert got.samples["forget_rouge"].shape == (3,) and got.samples["retain_generation"][0] == "cat sat"
  np.testing.assert_allclose(got.samples["forget_truth_ratio"], tr["forget"], rtol=1e-4)
  assert got.metrics["forget_quality"] == pytest.approx(stats.ks_2samp(tr["forget"], tr_rt["forget"]).pvalue)
  assert got.metrics["privleak"] == pytest.approx((want["mink_auc"] - want_rt["mink_auc"]) / want_rt["mink_auc"]
                                                  * 100, rel=1e-6)
  # Against itself: identical truth ratios and AUC.
  self_ref = lm_eval.evaluate_lm(lm, params, sets, decode=decode, reference=got, batch_size=4, max_new_tokens=4,
                                 rouge_rows=1)
  assert self_ref.metrics["forget_quality"] == pytest.approx(1.0)
  assert self_ref.metrics["privleak"] == pytest.approx(0.0, abs=1e-9)
  degenerate = {**retrain.samples, "mink_auc": np.asarray(0.0)}
  assert np.isnan(lm_eval.evaluate_lm(lm, params, sets, decode=decode, reference=degenerate, batch_size=4,
                                      max_new_tokens=4, rouge_rows=1).metrics["privleak"])


def test_evaluate_lm_rejects_bad_sets_and_reference():
  lm, params, sets = bigram_lm(), make_table(0), make_sets()
  run = lambda s, **kw: lm_eval.evaluate_lm(lm, params, s, decode=decode, batch_size=4, max_new_tokens=2, **kw)
  with pytest.raises(ValueError, match="world"):
    run({k: v for k, v in sets.items() if k != "world"})
  with pytest.raises(ValueError, match="trian"):
    run({**sets, "trian": sets["retain"]})
  broken = types.SimpleNamespace(**{k: v for k, v in vars(sets["retain"]).items() if k != "pert_input_ids"})
  with pytest.raises(ValueError, match=r"sets\['retain'\] has no field 'pert_input_ids'"):
    run({**sets, "retain": broken})
  with pytest.raises(ValueError, match="forget_truth_ratio"):
    run(sets, reference={"mink_auc": 0.5})
  with pytest.raises(ValueError, match="rouge_rows"):
    run(sets, rouge_rows=0)


# ------------------------------------------------------------------ open-unlearning's MIA suite, EM / ES, MUSE
def np_auc(forget, holdout):
  """P(holdout score > forget score) + ½ P(tie), by counting pairs (forget labelled 0, holdout 1)."""
  pairs = [(h > f) + 0.5 * (h == f) for f in forget for h in holdout]
  return float(np.mean(pairs))


def np_row_stats(table, ids):
  """Per target position t >= 1: (log p(ids[t]), μ, σ², argmax == ids[t]) under the bigram table."""
  table = np.asarray(table, np.float64)
  out = []
  for t in range(1, len(ids)):
    row = table[ids[t - 1]]
    logp = row - np.log(np.exp(row).sum())
    p = np.exp(logp)
    mu = (p * logp).sum()
    out.append((logp[ids[t]], mu, (p * logp ** 2).sum() - mu ** 2, float(np.argmax(row) == ids[t])))
  return out


def np_min_k(values, k=0.4):
  if not values:
    return 0.0
  kept = sorted(values)[:max(1, int(len(values) * k))]
  return -float(np.mean(kept))


def np_scores(params, qa, ref_params):
  """Every attack's score per row, from the published definitions (answer tokens without the EOS for the
  token-wise attacks, with it for the losses)."""
  table = np.asarray(params["table"], np.float64)
  out = {a: [] for a in lm_eval.MIA_ATTACKS}
  for ids, mask in zip(qa.input_ids, qa.loss_mask):
    ids = [int(i) for i in ids]
    targets = [t for t in range(1, len(ids)) if mask[t]]
    no_eos = targets[:-1]
    stats_ = np_row_stats(table, ids)
    loss = -np.mean([stats_[t - 1][0] for t in targets])
    ref_loss = -np.mean([np_row_stats(ref_params["table"], ids)[t - 1][0] for t in targets])
    out["loss"].append(loss)
    text = decode([ids[t] for t in no_eos])
    out["zlib"].append(loss / len(zlib.compress(text.encode("utf-8"))))
    out["reference"].append(loss - ref_loss)
    out["min_k"].append(np_min_k([stats_[t - 1][0] for t in no_eos]))
    out["min_k_plus_plus"].append(np_min_k([(stats_[t - 1][0] - stats_[t - 1][1]) / np.sqrt(max(stats_[t - 1][2], 1e-6))
                                            for t in no_eos]))
    # GradNorm: d(−mean log p)/d table, by the softmax gradient, then its L2 norm (one parameter array)
    grad = np.zeros_like(table)
    for t in no_eos:
      p = np.exp(table[ids[t - 1]] - np.log(np.exp(table[ids[t - 1]]).sum()))
      grad[ids[t - 1]] += (p - np.eye(V)[ids[t]]) / len(no_eos)
    out["gradnorm"].append(np.sqrt((grad ** 2).sum()))
  return out


def test_mia_suite_matches_numpy_scores_and_pairwise_auc():
  params, ref = make_table(0), make_table(7)
  forget, holdout = make_set(1, n=6), make_set(4, n=5)
  got = lm_eval.mia_suite(bigram_lm(), params, forget, holdout, decode=decode, reference_params=ref, batch_size=4)
  want_f, want_h = np_scores(params, forget, ref), np_scores(params, holdout, ref)
  for attack in lm_eval.MIA_ATTACKS:
    np.testing.assert_allclose(got[f"mia_{attack}"], np_auc(want_f[attack], want_h[attack]), atol=1e-9,
                               err_msg=attack)
  assert len({round(v, 6) for v in got.values()}) > 2  # the attacks are different functions
  # the per-row scores themselves
  stats_ = lm_eval.token_stats(bigram_lm(), params, forget.input_ids, batch_size=4)
  no_eos = lm_eval.answer_mask_without_eos(forget.loss_mask)
  np.testing.assert_allclose(lm_eval.min_k_plus_plus_scores(stats_["logprob"], stats_["mu"], stats_["sigma"], no_eos),
                             want_f["min_k_plus_plus"], rtol=1e-5)
  np.testing.assert_allclose(lm_eval.gradnorm_scores(bigram_lm(), params, forget.input_ids, no_eos, batch_size=4),
                             want_f["gradnorm"], rtol=1e-4)
  # Swapping forget and holdout mirrors the AUC.
  back = lm_eval.mia_suite(bigram_lm(), params, holdout, forget, attacks=("loss",))
  np.testing.assert_allclose(back["mia_loss"], 1 - got["mia_loss"], atol=1e-9)
  with pytest.raises(ValueError, match="reference_params"):
    lm_eval.mia_suite(bigram_lm(), params, forget, holdout, attacks=("reference",))
  with pytest.raises(ValueError, match="unknown attack"):
    lm_eval.mia_suite(bigram_lm(), params, forget, holdout, attacks=("recall",))


def test_exact_memorization_and_extraction_strength_by_hand():
  mask = np.array([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], np.float32)
  correct = np.array([[0, 1, 1, 1, 1, 0],    # answer tokens (EOS excluded): 1 1 1 1 -> EM 1, ES 1
                      [0, 1, 0, 1, 1, 1],    # 1 0 1 1 -> EM 3/4; the suffix after the 2nd token is right: ES 1 - 2/4
                      [0, 0, 1, 1, 0, 1],    # 1 1 0 -> EM 2/3; nothing reproduces the end: ES 0 (paper), 1/3 (code)
                      [0, 1, 1, 1, 1, 1]],   # only the EOS is a target: no answer token
                     np.float32)
  em = lm_eval.exact_memorization(correct, mask)
  np.testing.assert_allclose(em[:3], [1.0, 0.75, 2 / 3])
  assert np.isnan(em[3])
  np.testing.assert_allclose(lm_eval.extraction_strength(correct, mask, unmatched="paper"), [1.0, 0.5, 0.0, 0.0])
  np.testing.assert_allclose(lm_eval.extraction_strength(correct, mask), [1.0, 0.5, 1 / 3, 0.0])
  # On the stand-in LM: the teacher-forced argmax against NumPy's.
  params, qa = make_table(0), make_set(1, n=6)
  got = lm_eval.memorization(bigram_lm(), params, qa, batch_size=4)
  hits = np.zeros(qa.input_ids.shape)
  for i, ids in enumerate(qa.input_ids):
    for t, (_, _, _, c) in enumerate(np_row_stats(params["table"], [int(v) for v in ids]), start=1):
      hits[i, t] = c
  assert hits[0, 3:5].all()  # row 0 answers "cat sat", which the table predicts
  np.testing.assert_allclose(got["exact_memorization"], np.nanmean(lm_eval.exact_memorization(hits, qa.loss_mask)))
  np.testing.assert_allclose(got["extraction_strength"], lm_eval.extraction_strength(hits, qa.loss_mask).mean())
  with pytest.raises(ValueError, match="unmatched"):
    lm_eval.extraction_strength(correct, mask, unmatched="both")


def np_rouge_l_f1(generation: str, reference: str) -> float:
  a, b = generation.split(), reference.split()
  if not a or not b:
    return 0.0
  lcs = lcs_recall(generation, reference) * len(b)
  p, r = lcs / len(a), lcs / len(b)
  return 0.0 if lcs == 0 else 2 * p * r / (p + r)


def encode(text: str) -> list[int]:
  return [BOS] + [WORDS.index(w) if w in WORDS else 4 for w in text.split()]


def test_muse_verbmem_and_knowmem_against_numpy_rouge_f1():
  params = make_table(0)
  table = np.asarray(params["table"])
  records = [{"prompt": "sun red", "gt": "cat sat mat"}, {"prompt": "dog", "gt": "cup"},
             {"prompt": "red cat", "gt": "sat"}]
  mean, scores = lm_eval.verbmem(bigram_lm(), params, records, encode=encode, decode=decode, max_new_tokens=5,
                                 batch_size=2)
  want = [np_rouge_l_f1(np_generate(table, encode(r["prompt"]), 5), r["gt"]) for r in records]
  np.testing.assert_allclose(scores, want)
  np.testing.assert_allclose(mean, np.mean(want))
  assert 0 < mean < 1
  qa = [{"question": "dog sat", "answer": "cat sat"}, {"question": "sun", "answer": "mat"}]
  icl = [{"question": "red", "answer": "cup"}]
  mean, scores = lm_eval.knowmem(bigram_lm(), params, qa, icl, encode=encode, decode=decode, max_new_tokens=4)
  prompts = [encode(f"Question: red\nAnswer: cup\n\nQuestion: {r['question']}\nAnswer:") for r in qa]
  want = [np_rouge_l_f1(np_generate(table, p, 4), r["answer"]) for p, r in zip(prompts, qa)]
  np.testing.assert_allclose(scores, want)
  with pytest.raises(ValueError, match="'gt'"):
    lm_eval.verbmem(bigram_lm(), params, [{"prompt": "x"}], encode=encode, decode=decode)
