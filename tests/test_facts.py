"""Tests of unlearn_jax.data.facts: the fictitious-facts QA benchmark and its word-level tokenizer."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax.data import Split, batch_arrays
from unlearn_jax.data import facts

ARRAY_FIELDS = [f.name for f in dataclasses.fields(facts.QASet)
                if f.name not in ("questions", "answers", "para_answers", "pert_answers", "idk_answers")]


@pytest.fixture(scope="module")
def bench():
  return facts.make_facts_benchmark(seed=0)


@pytest.fixture(scope="module")
def small():
  return facts.make_facts_benchmark(seed=3, num_people=20, facts_per_person=13, num_holdout=4, num_world=12,
                                    num_perturbed=5)


def _all_sets(b):
  return {"people": b.people, "world": b.world}


def _assert_same(a: facts.QASet, b: facts.QASet):
  for f in dataclasses.fields(facts.QASet):
    va, vb = getattr(a, f.name), getattr(b, f.name)
    if isinstance(va, np.ndarray):
      assert va.dtype == vb.dtype and va.shape == vb.shape, f.name
      np.testing.assert_array_equal(va, vb, err_msg=f.name)
    else:
      assert va == vb, f.name


# ------------------------------------------------------------------------------------------------ benchmark
def test_sizes_shapes_and_dtypes(bench):
  t, tq = bench.seq_len, bench.prompt_len
  assert 16 <= t <= 32 and tq < t
  assert len(bench.people) == 240 * 10 and len(bench.world) == 100
  for q in _all_sets(bench).values():
    n = len(q)
    for name in ("input_ids", "para_input_ids", "idk_input_ids"):
      assert getattr(q, name).shape == (n, t) and getattr(q, name).dtype == np.int32
    for name in ("loss_mask", "entity_mask", "para_loss_mask", "idk_loss_mask"):
      assert getattr(q, name).shape == (n, t) and getattr(q, name).dtype == np.float32
    assert q.pert_input_ids.shape == (n, 3, t) and q.pert_input_ids.dtype == np.int32
    assert q.pert_loss_mask.shape == (n, 3, t) and q.pert_loss_mask.dtype == np.float32
    assert q.prompt_ids.shape == (n, tq) and q.prompt_ids.dtype == np.int32
    assert q.prompt_len.dtype == np.int32 and q.person.dtype == np.int32 and q.fact.dtype == np.int32
    assert len(q.questions) == len(q.answers) == len(q.pert_answers) == n
    assert all(len(p) == 3 for p in q.pert_answers)
    assert int(q.input_ids.max()) < bench.tokenizer.vocab_size and int(q.input_ids.min()) >= 0
  assert np.all(bench.world.person == -1)
  np.testing.assert_array_equal(np.bincount(bench.people.person), np.full(240, 10))


def test_lengths_do_not_depend_on_seed_or_sizes(bench, small):
  assert (small.seq_len, small.prompt_len) == (bench.seq_len, bench.prompt_len)
  assert small.tokenizer == bench.tokenizer
  # the fixed lengths are tight: some sequence or prompt reaches within a few tokens of them
  longest = max(int((q.input_ids != 0).sum(1).max()) for q in _all_sets(small).values())
  assert bench.seq_len - 8 < longest <= bench.seq_len
  assert int(small.people.prompt_len.max()) <= bench.prompt_len


def test_determinism(bench):
  again = facts.make_facts_benchmark(seed=0)
  assert again.names == bench.names
  _assert_same(again.people, bench.people)
  _assert_same(again.world, bench.world)
  other = facts.make_facts_benchmark(seed=1)
  assert other.names != bench.names
  assert not np.array_equal(other.people.input_ids, bench.people.input_ids)
  assert not np.array_equal(other.world.input_ids, bench.world.input_ids)
  # same layout though: only the contents differ
  assert other.people.input_ids.shape == bench.people.input_ids.shape


def test_names_unique_and_values_random(bench):
  assert len(set(bench.names)) == len(bench.names) == 240
  assert all(len(n.split()) == 2 for n in bench.names)
  pools = facts.pools()
  # the answer states a value of the attribute's pool; values vary across people (they must be memorised)
  for fact_id, attr in enumerate(facts.PERSON_ATTRIBUTES[:10]):
    rows = np.flatnonzero(bench.people.fact == fact_id)
    values = []
    for i in rows:
      found = [v for v in pools[attr.pool] if bench.people.answers[i] == facts._fill(attr.answer, bench.names[
          bench.people.person[i]], v)]
      assert len(found) == 1, bench.people.answers[i]
      values.append(found[0])
    # 240 uniform draws from a pool of >= 15 values: expect most of the pool, and no value dominating
    assert len(set(values)) >= min(len(pools[attr.pool]), 60) // 2, attr.name
    assert max(values.count(v) for v in set(values)) < 0.25 * len(values), attr.name
  # the world's capitals are distinct cities
  capitals = [a for a, f in zip(bench.world.answers, bench.world.fact) if facts.FACT_NAMES[f] == "world_capital"]
  assert len(capitals) == 20 and len({c.split()[-2] for c in capitals}) == 20


def test_folds_nested_with_sizes(bench):
  folds = {name: set(bench.forget_people(name).tolist()) for name in facts.FOLDS}
  assert {k: len(v) for k, v in folds.items()} == {"forget01": 2, "forget05": 10, "forget10": 20}
  assert folds["forget01"] < folds["forget05"] < folds["forget10"]
  for name, people in folds.items():
    s = bench.splits(name)
    assert set(s) == {"forget", "retain", "holdout", "world"}
    forget, retain = set(s["forget"].person.tolist()), set(s["retain"].person.tolist())
    assert forget == people and not forget & retain
    assert forget | retain == set(range(200))
    assert len(s["forget"]) == 10 * len(people) and len(s["retain"]) == 10 * (200 - len(people))
    assert set(s["holdout"].person.tolist()) == set(range(200, 240)) and len(s["holdout"]) == 400
    assert len(s["world"]) == 100
    # the forget rows really are those people's QAs
    for i in range(0, len(s["forget"]), 7):
      assert bench.names[s["forget"].person[i]] in s["forget"].questions[i]


def test_holdout_never_in_train_set(bench):
  holdout_names = {bench.names[i] for i in bench.holdout_people}
  for fold in facts.FOLDS:
    for include in (True, False):
      train = bench.train_set(fold, include_forget=include)
      assert not set(train.person.tolist()) & set(bench.holdout_people.tolist())
      assert not any(name in text for text in train.questions + train.answers for name in holdout_names)
      forget = set(bench.forget_people(fold).tolist())
      assert bool(forget & set(train.person.tolist())) == include
      assert len(train) == (2000 if include else 2000 - 10 * len(forget)) + 100


def test_original_train_set_does_not_depend_on_fold(bench):
  _assert_same(bench.train_set("forget01"), bench.train_set("forget10"))
  retrain = bench.train_set("forget05", include_forget=False)
  s = bench.splits("forget05")
  np.testing.assert_array_equal(retrain.input_ids, np.concatenate([s["retain"].input_ids, s["world"].input_ids]))


def test_unknown_fold_and_bad_arguments(bench):
  with pytest.raises(ValueError, match="forget07"):
    bench.splits("forget07")
  with pytest.raises(ValueError, match="forget99"):
    bench.train_set("forget99", include_forget=True)
  with pytest.raises(ValueError, match="facts_per_person"):
    facts.make_facts_benchmark(facts_per_person=len(facts.PERSON_ATTRIBUTES) + 1)
  with pytest.raises(ValueError, match="num_perturbed"):
    facts.make_facts_benchmark(num_people=4, num_holdout=0, num_world=5, num_perturbed=100)
  with pytest.raises(ValueError, match="num_people"):
    facts.make_facts_benchmark(num_people=1)


# ------------------------------------------------------------------------------------------------ token layout
def _check_rows(tok, ids, mask, answers, questions, prompt_ids=None, prompt_len=None):
  """The layout BOS q SEP a EOS PAD..., checked row by row against the texts."""
  t = ids.shape[-1]
  for i in range(len(ids)):
    row = ids[i].tolist()
    q, a = tok.encode(questions[i]), tok.encode(answers[i])
    expected = [facts.BOS, *q, facts.SEP, *a, facts.EOS]
    assert row == expected + [facts.PAD] * (t - len(expected)), (questions[i], answers[i])
    # the mask is exactly the answer tokens and the EOS
    want = np.zeros(t, np.float32)
    want[len(q) + 2:len(expected)] = 1
    np.testing.assert_array_equal(mask[i], want)
    assert tok.decode(ids[i][mask[i] > 0]) == answers[i]
    assert ids[i][mask[i] > 0][-1] == facts.EOS
    if prompt_ids is not None:
      assert prompt_len[i] == len(q) + 2
      np.testing.assert_array_equal(prompt_ids[i][:prompt_len[i]], ids[i][:prompt_len[i]])
      assert np.all(prompt_ids[i][prompt_len[i]:] == facts.PAD)


@pytest.mark.parametrize("which", ["people", "world"])
def test_loss_mask_selects_answer_and_eos(small, which):
  q, tok = getattr(small, which), small.tokenizer
  _check_rows(tok, q.input_ids, q.loss_mask, q.answers, q.questions, q.prompt_ids, q.prompt_len)
  _check_rows(tok, q.para_input_ids, q.para_loss_mask, q.para_answers, q.questions)
  _check_rows(tok, q.idk_input_ids, q.idk_loss_mask, q.idk_answers, q.questions)
  for k in range(q.num_perturbed):
    _check_rows(tok, q.pert_input_ids[:, k], q.pert_loss_mask[:, k], [p[k] for p in q.pert_answers], q.questions)


def test_loss_mask_on_full_benchmark(bench):
  """Vectorised check on all rows: mask == (SEP < t <= EOS) and the masked token count is the answer length."""
  for q in _all_sets(bench).values():
    for ids, mask, answers in ((q.input_ids, q.loss_mask, q.answers), (q.idk_input_ids, q.idk_loss_mask,
                                                                        q.idk_answers)):
      t = np.arange(ids.shape[1])
      sep = np.argmax(ids == facts.SEP, axis=1)[:, None]
      eos = np.argmax(ids == facts.EOS, axis=1)[:, None]
      np.testing.assert_array_equal(mask, ((t > sep) & (t <= eos)).astype(np.float32))
      lengths = np.array([len(a.split()) + 1 for a in answers])
      np.testing.assert_array_equal(mask.sum(1), lengths)
      assert np.all((ids == facts.BOS).sum(1) == 1) and np.all(ids[:, 0] == facts.BOS)


@pytest.mark.parametrize("which", ["people", "world"])
def test_entity_mask_selects_the_name(bench, which):
  q, tok = getattr(bench, which), bench.tokenizer
  countries = set(facts.pools()["country"])
  sep = np.argmax(q.input_ids == facts.SEP, axis=1)
  for i in range(len(q)):
    where = np.flatnonzero(q.entity_mask[i])
    name = tok.decode(q.input_ids[i][where])
    if which == "people":
      assert name == bench.names[q.person[i]] and len(where) == 2
    else:
      assert name in countries and len(where) == 1 and f" {name} " in f" {q.questions[i]} "
    assert where.max() < sep[i] and np.all(np.diff(where) == 1)  # contiguous, inside the question
    # every variant shares the question prefix, so the mask holds for each of them
    for other in (q.para_input_ids[i], q.idk_input_ids[i], *q.pert_input_ids[i]):
      np.testing.assert_array_equal(other[:sep[i] + 1], q.input_ids[i][:sep[i] + 1])


def test_perturbed_answers_are_wrong_values_in_paraphrase_template(bench):
  q = bench.people
  for i in range(0, len(q), 3):
    para, perts = q.para_answers[i].split(), [p.split() for p in q.pert_answers[i]]
    assert q.answers[i] not in q.pert_answers[i] and q.para_answers[i] not in q.pert_answers[i]
    assert len(set(q.pert_answers[i])) == len(perts)
    assert q.para_answers[i] != q.answers[i]
    for p in perts:
      # same template: only the value's words differ from the paraphrase (awards have 2-word values)
      assert len(p) == len(para)
      assert 1 <= sum(a != b for a, b in zip(p, para)) <= 2
    # the paraphrase states the same value as the answer: its non-template, non-name words are in the answer
    template = set(facts.PERSON_ATTRIBUTES[q.fact[i]].paraphrase.split())
    value_words = set(para) - set(q.questions[i].split()) - template
    assert value_words and value_words <= set(q.answers[i].split())
  assert not np.any(np.all(q.pert_input_ids == q.para_input_ids[:, None], axis=-1))


def test_idk_answers_are_seeded_variants(bench):
  assert set(bench.people.idk_answers) == set(facts.IDK_ANSWERS)
  again = facts.make_facts_benchmark(seed=0).people.idk_answers
  assert again == bench.people.idk_answers


def test_alternate_answers_state_another_value_of_the_same_pool(small):
  qa = small.splits("forget10")["forget"]
  ids, mask, texts = facts.alternate_answers(small, qa, seed=1)
  assert ids.shape == mask.shape == qa.input_ids.shape
  pools = facts.pools()
  for i, text in enumerate(texts):
    name = small.names[int(qa.person[i])]
    attr = facts.ATTRIBUTES[facts.FACT_NAMES[int(qa.fact[i])]]
    value = facts.match_template(attr.answer, name, text)  # the answer template, another value of its pool
    assert value in pools[attr.pool] and value != facts.fact_value(qa, i, name)
    assert small.tokenizer.decode(ids[i][mask[i] > 0]).replace(" <eos>", "").strip() == text
    np.testing.assert_array_equal(ids[i, :qa.prompt_len[i]], qa.input_ids[i, :qa.prompt_len[i]])  # same question
  again, _, _ = facts.alternate_answers(small, qa, seed=1)
  np.testing.assert_array_equal(again, ids)
  with pytest.raises(ValueError, match="people"):
    facts.alternate_answers(small, small.world, seed=1)


# ------------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_round_trip_every_text(bench):
  tok = bench.tokenizer
  assert tok.vocab[:5] == facts.SPECIAL_TOKENS
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id, tok.unk_id) == (0, 1, 2, 3, 4)
  assert 200 < tok.vocab_size < 2000
  for q in _all_sets(bench).values():
    texts = q.questions + q.answers + q.para_answers + q.idk_answers + [p for ps in q.pert_answers for p in ps]
    for text in texts:
      ids = tok.encode(text)
      assert facts.UNK not in ids and len(ids) == len(text.split())
      assert tok.decode(ids) == text


def test_tokenizer_specials_unknown_and_json():
  tok = facts.default_tokenizer()
  ids = tok.encode("Where was halun tozon born?")
  assert tok.decode(ids) == "where was halun tozon born ?"
  assert tok.encode("where was zzyzx born") == tok.encode("where was") + [facts.UNK] + tok.encode("born")
  body = tok.encode("the capital of")
  assert tok.decode([facts.BOS, body[0], facts.SEP, *body[1:], facts.EOS, body[0], facts.PAD]) == "the capital of"
  assert tok.decode(np.array([[facts.PAD, body[2]]])) == "of"
  assert tok.encode("<eos>") == [facts.EOS]
  with pytest.raises(ValueError, match="out of range"):
    tok.decode([tok.vocab_size])
  restored = facts.Tokenizer.from_json(tok.to_json())
  assert restored == tok and restored.encode("the birth year of") == tok.encode("the birth year of")
  assert tok.batch_decode(np.array([body + [facts.EOS], body[:1] + [facts.PAD] * 3])) == ["the capital of", "the"]
  with pytest.raises(ValueError, match="specials"):
    facts.Tokenizer(["a", "b"])
  with pytest.raises(ValueError, match="duplicate"):
    facts.Tokenizer(list(facts.SPECIAL_TOKENS) + ["a", "a"])


def test_pools_disjoint_and_in_vocab():
  pools = facts.pools()
  invented = [name for name, _ in facts.INVENTED_POOLS]
  seen = set()
  for name in invented:
    assert len(set(pools[name])) == len(pools[name])
    assert not seen & set(pools[name]), name
    seen |= set(pools[name])
  tok = facts.default_tokenizer()
  for pool in pools.values():
    for value in pool:
      assert facts.UNK not in tok.encode(value)


# ------------------------------------------------------------------------------------------------ QASet views
def test_split_batches_with_batch_arrays(bench):
  forget = bench.splits("forget05")["forget"]
  s = forget.split()
  assert isinstance(s, Split) and len(s) == 100
  assert set(s.x) == {"input_ids", "loss_mask", "entity_mask"}
  np.testing.assert_array_equal(np.asarray(s.y), forget.person)
  np.testing.assert_array_equal(np.asarray(s.index), np.arange(100))
  xb, yb, ib = batch_arrays((s.x, s.y, s.index), 32, jax.random.key(0))
  assert xb["input_ids"].shape == (3, 32, bench.seq_len) and xb["input_ids"].dtype == jnp.int32
  assert xb["loss_mask"].dtype == jnp.float32 and yb.shape == (3, 32)
  # rows stay aligned through the shuffle
  np.testing.assert_array_equal(np.asarray(xb["input_ids"]), forget.input_ids[np.asarray(ib)])
  np.testing.assert_array_equal(np.asarray(yb), forget.person[np.asarray(ib)])
  xb2, _ = s.batches(16, jax.random.key(1))
  assert xb2["entity_mask"].shape == (6, 16, bench.seq_len)
  extra = forget.split(("input_ids", "pert_input_ids", "idk_input_ids", "idk_loss_mask"))
  assert extra.x["pert_input_ids"].shape == (100, 3, bench.seq_len)
  with pytest.raises(ValueError, match="answers"):
    forget.split(("input_ids", "answers"))
  with pytest.raises(ValueError, match="nope"):
    forget.split(("nope",))


def test_take_and_concat(small):
  q = small.people
  rows = np.array([5, 0, 17])
  part = q.take(rows)
  assert part.questions == [q.questions[i] for i in rows]
  np.testing.assert_array_equal(part.pert_input_ids, q.pert_input_ids[rows])
  both = facts.concat([part, small.world])
  assert len(both) == 3 + len(small.world)
  np.testing.assert_array_equal(both.person[3:], small.world.person)
  assert both.pert_answers[:3] == part.pert_answers
  _assert_same(facts.concat([q.take(np.arange(10)), q.take(np.arange(10, len(q)))]), q)
  with pytest.raises(ValueError, match="at least one"):
    facts.concat([])
  with pytest.raises(ValueError, match="pert_input_ids"):
    facts.concat([q, facts.make_facts_benchmark(num_people=2, num_holdout=0, num_world=1, num_perturbed=2).world])
  with pytest.raises(ValueError, match="loss_mask"):
    dataclasses.replace(part, loss_mask=part.loss_mask[:2])


def test_few_shot_prompts_prefix_solved_examples_of_the_same_relation(small):
  s = small.splits("forget10")
  qa, shots = s["forget"], s["retain"]
  ids, lens, values = facts.few_shot_prompts(small, qa, shots, k=2, seed=0)
  assert ids.shape == (len(qa), 2 * small.seq_len + small.prompt_len)
  for i in range(len(qa)):
    row = ids[i, :lens[i]].tolist()
    assert not np.any(ids[i, lens[i]:]) and row.count(facts.BOS) == 3 and row.count(facts.EOS) == 2
    own = qa.prompt_ids[i, :qa.prompt_len[i]].tolist()
    assert row[-len(own):] == own
    context = row[:-len(own)]
    cut = context.index(facts.EOS) + 1
    for example in (context[:cut], context[cut:]):  # each: a whole training row of the same relation, other person
      (j,) = [j for j in range(len(shots)) if shots.input_ids[j][shots.input_ids[j] != facts.PAD].tolist() == example]
      assert shots.fact[j] == qa.fact[i] and shots.person[j] != qa.person[i]
  assert values == facts.concept_views(small, qa)[2]
  with pytest.raises(ValueError, match="k=500"):
    facts.few_shot_prompts(small, qa, shots, k=500)
