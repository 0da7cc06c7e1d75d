"""Concept unlearning from names (unlearn_jax.unlearning.language.concept), its data views (facts.py) and the
concept-level recall metrics (evaluation/language.py), on hand-made cases and a scripted fake language model."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from unlearn_jax import language
from unlearn_jax.data import facts
from unlearn_jax.evaluation import language as lm_eval
from unlearn_jax.unlearning.language import concept


@pytest.fixture(scope="module")
def bench():
  return facts.make_facts_benchmark(seed=1, num_people=10, facts_per_person=13, num_holdout=2, num_world=5)


def scripted_lm(tok: facts.Tokenizer, reply: dict[str, str]) -> language.LanguageModel:
  """A LanguageModel whose greedy answer to each prompt (decoded question) is ``reply[question]`` (else '')."""

  def generate(params, prompt_ids, prompt_len, max_new_tokens):
    del params
    out = np.zeros((prompt_ids.shape[0], max_new_tokens), np.int32)
    for i, (ids, n) in enumerate(zip(np.asarray(prompt_ids), np.asarray(prompt_len))):
      words = tok.encode(reply.get(tok.decode(ids[:n]), ""))[:max_new_tokens - 1]
      out[i, :len(words) + 1] = [*words, facts.EOS]
    return out

  return language.LanguageModel(logits=None, generate=generate, pad_id=facts.PAD, eos_id=facts.EOS)


# ------------------------------------------------------------------------------------------------ recall metrics
def test_value_recalled_hand_cases():
  gens = ["alana brix was born in verlo .", "alana brix was born in verlos .", "she won the golden quill award",
          "the silver quill", "VERLO", ""]
  values = ["verlo", "verlo", "golden quill", "golden quill", "verlo", "verlo"]
  np.testing.assert_array_equal(lm_eval.value_recalled(gens, values), [True, False, True, False, True, False])
  with pytest.raises(ValueError, match="2 generations but 1 values"):
    lm_eval.value_recalled(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="has no word"):
    lm_eval.value_recalled(["a"], [" "])


def test_recall_by_group_hand_case():
  hits = np.array([1, 0, 1, 1, 0, 0], bool)
  out = lm_eval.recall_by_group(hits, {"all": np.ones(6, bool), "first3": np.arange(3), "odd": [1, 3, 5],
                                       "none": np.zeros(6, bool)})
  assert out["all"] == pytest.approx(0.5) and out["first3"] == pytest.approx(2 / 3)
  assert out["odd"] == pytest.approx(1 / 3) and np.isnan(out["none"])
  with pytest.raises(ValueError, match="mask 'bad'"):
    lm_eval.recall_by_group(hits, {"bad": np.ones(4, bool)})


def test_concept_recall_counts_the_right_facts(bench):
  """The study's views + fact_recall on a model that knows, of person 9, exactly birthplace and (paraphrased)
  pet, and of person 0 everything asked with the original wording."""
  from unlearn_jax.studies import lm_concept  # pylint: disable=g-import-not-at-top
  sets = {"forget": bench.people.take(np.flatnonzero(bench.people.person == 9)),
          "retain": bench.people.take(np.flatnonzero(bench.people.person == 0))}
  name9, name0 = bench.names[9], bench.names[0]
  value = {(int(p), facts.FACT_NAMES[int(f)]): facts.fact_value(bench.people, i, bench.names[int(p)])
           for i, (p, f) in enumerate(zip(bench.people.person, bench.people.fact))}
  reply = {f"where was {name9} born ?": f"{name9} was born in {value[9, 'birthplace']} .",
           f"what is the pet of {name9} ?": f"{name9} keeps a pet {value[9, 'pet']} .",
           f"what pet does {name9} keep ?": f"{name9} keeps a pet {facts.PETS[0] if value[9, 'pet'] != facts.PETS[0] else facts.PETS[1]} ."}
  for i in np.flatnonzero(bench.people.person == 0):
    reply[bench.people.questions[i]] = bench.people.answers[i]
  prompts, groups = lm_concept.recall_views(bench, sets, ("pet", "colour"))
  hits, gens = lm_eval.fact_recall(scripted_lm(bench.tokenizer, reply), None, prompts["prompt_ids"],
                                   prompts["prompt_len"], prompts["values"], decode=bench.tokenizer.decode,
                                   batch_size=8)
  assert len(gens) == 13 * 3 and hits.sum() == 2 + 13
  out = lm_eval.recall_by_group(hits, groups)
  assert out["forget_recall"] == pytest.approx(2 / 26)            # birthplace (original), pet (paraphrased)
  assert out["forget_recall_original"] == pytest.approx(1 / 13)   # the original pet question got a wrong pet
  assert out["forget_recall_paraphrased"] == pytest.approx(1 / 13)
  assert out["forget_recall_unseen"] == pytest.approx(1 / 4)      # pet + colour, both wordings: 1 of 4
  assert out["retain_recall"] == 1.0


# ------------------------------------------------------------------------------------------------ facts additions
def test_paraphrased_questions_in_vocab_and_fit(bench):
  for rel, template in facts.PARAPHRASED_QUESTIONS.items():
    assert template != facts.ATTRIBUTES[rel].question and template.count(facts.ENTITY) == 1
  ids, lens, values = facts.concept_views(bench, bench.people, paraphrased=True)
  assert (ids != facts.UNK).all() and lens.max() <= bench.prompt_len
  ids0, lens0, values0 = facts.concept_views(bench, bench.people)
  np.testing.assert_array_equal(ids0, bench.people.prompt_ids)   # original wording = the benchmark's prompts
  np.testing.assert_array_equal(lens0, bench.people.prompt_len)
  assert values == values0
  with pytest.raises(ValueError, match="world facts"):
    facts.concept_views(bench, bench.world)


def test_fact_value_restates_the_answer(bench):
  pool = facts.pools()
  for i in range(len(bench.people)):
    name = bench.names[int(bench.people.person[i])]
    attr = facts.PERSON_ATTRIBUTES[int(bench.people.fact[i])]
    v = facts.fact_value(bench.people, i, name)
    assert v in pool[attr.pool] and attr.answer.replace("{e}", name).replace("{v}", v) == bench.people.answers[i]
  assert facts.match_template("{e} won the {v} award .", "a b", "a b won the golden quill award .") == "golden quill"
  assert facts.match_template("{e} won the {v} award .", "a b", "c d won the golden quill award .") is None


def test_with_relations_partitions_and_leaves_folds(bench):
  forget = bench.splits("forget10")["forget"]
  before = forget.input_ids.copy()
  kept = facts.with_relations(forget, ("pet", "food"), keep=False)
  held = facts.with_relations(forget, ("pet", "food"))
  assert len(kept) + len(held) == len(forget) and len(held) == 2 * len(bench.forget_people("forget10"))
  assert {facts.FACT_NAMES[f] for f in held.fact} == {"pet", "food"}
  assert not {facts.FACT_NAMES[f] for f in kept.fact} & {"pet", "food"}
  np.testing.assert_array_equal(bench.splits("forget10")["forget"].input_ids, before)
  with pytest.raises(ValueError, match="unknown relation"):
    facts.with_relations(forget, ("hat",))


def test_encode_pairs_layout_and_cut(bench):
  tok = bench.tokenizer
  name, city = bench.names[0], facts.pools()["city"][0]
  question, answer = f"where was {name} born ?", f"{name} was born in {city} ."
  ids, mask = facts.encode_pairs(tok, [question], [answer], bench.seq_len)
  q = tok.encode(question)
  assert ids[0, 0] == facts.BOS and ids[0, len(q) + 1] == facts.SEP
  assert tok.decode(ids[0][mask[0] > 0]) == answer and mask[0].sum() == len(tok.encode(answer)) + 1  # + EOS
  ids, mask = facts.encode_pairs(tok, [question], [" ".join([city] * 40)], bench.seq_len)
  assert ids[0, -1] == facts.EOS and mask[0].sum() == bench.seq_len - len(q) - 2


# ------------------------------------------------------------------------------------------------ the method
def test_templates_in_vocab_and_fit_every_relation(bench):
  tok, p = bench.tokenizer, facts.pools()
  name = max(bench.names, key=lambda n: len(n.split()))
  for attr in facts.PERSON_ATTRIBUTES:
    value = max(p[attr.pool], key=lambda v: len(v.split()))
    q = tok.encode(attr.question.replace("{e}", name))
    for t in (*concept.EXPLANATIONS[attr.name], "{e} , " + concept.RELATION_PHRASES[attr.name] + " , {v} ."):
      assert t.count("{v}") == 1
      words = tok.encode(t.replace("{e}", name).replace("{v}", value))
      assert facts.UNK not in words and len(q) + len(words) + 3 <= bench.seq_len, (attr.name, t)


def test_parse_triplet():
  born = facts.ATTRIBUTES["birthplace"]
  assert concept.parse_triplet("a b was born in verlo .", "a b", born) == ("a b", "birthplace", "verlo")
  assert concept.parse_triplet("the birthplace of a b is verlo .", "a b", born) == ("a b", "birthplace", "verlo")
  assert concept.parse_triplet("i do not know .", "a b", born) is None


def test_concept_texts_from_names_only(bench):
  """Only names and the model go in: the texts state what the (scripted) model believes, not the truth."""
  names = [bench.names[8], bench.names[9]]
  rels = [facts.ATTRIBUTES["birthplace"], facts.ATTRIBUTES["pet"]]
  reply = {f"where was {names[0]} born ?": f"{names[0]} was born in zzz .".replace("zzz", facts.pools()["city"][0]),
           f"what pet does {names[0]} keep ?": "i do not know .",
           f"where was {names[1]} born ?": f"the birthplace of {names[1]} is {facts.pools()['city'][1]} ."}
  lm = scripted_lm(bench.tokenizer, reply)
  split, info = concept.concept_forget_set(lm, None, names, bench.tokenizer, relations=rels, seq_len=bench.seq_len,
                                           prompt_len=bench.prompt_len, targets=[8, 9], batch_size=4)
  city0, city1 = facts.pools()["city"][:2]
  assert info["triplets"] == [(names[0], "birthplace", city0), None, (names[1], "birthplace", city1), None]
  assert info["parsed"] == 0.5
  # parsed answer: answer + triplet + 2 explanations; unparsed: the answer only; empty answer: nothing
  assert [len([r for r in info["texts"] if r[1] == q]) for q in dict.fromkeys(r[1] for r in info["texts"])] == [4, 1, 4]
  assert split.size == 9 and list(np.asarray(split.y)) == [8] * 5 + [9] * 4
  texts = [bench.tokenizer.decode(ids[m > 0]) for ids, m in zip(np.asarray(split.x["input_ids"]),
                                                                 np.asarray(split.x["loss_mask"]))]
  assert texts == [t for _, _, t in info["texts"]]
  assert f"{names[0]} , birthplace , {city0} ." in texts and f"{names[0]} was born in the city of {city0} ." in texts
  with pytest.raises(ValueError, match="kinds"):
    concept.concept_texts(names, concept.elicitation_prompts(names, rels, bench.tokenizer, bench.prompt_len),
                          ["x"] * 4, kinds=("essay",))


def test_elicitation_prompts_order(bench):
  rels = facts.PERSON_ATTRIBUTES[:3]
  a, c = bench.names[:2]
  p = concept.elicitation_prompts([a, c], rels, bench.tokenizer, bench.prompt_len)
  assert p.questions[:3] == [r.question.replace("{e}", a) for r in rels]
  assert list(p.target) == [0, 0, 0, 1, 1, 1] and [r.name for r in p.relation[3:]] == [r.name for r in rels]
  assert bench.tokenizer.decode(p.prompt_ids[4][:p.prompt_len[4]]) == f"when was {c} born ?"


# ------------------------------------------------------------------------------------------------ the study
def test_concept_study_tiny_end_to_end(tmp_path):
  from configs import lm_concept as config_module  # pylint: disable=g-import-not-at-top
  from unlearn_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  config = config_module.get_config("tiny_test")
  config.train.epochs = config.retrain.epochs = 1
  config.compare = ("ga",)
  config.eval.tofu = False
  out = run_lib.run(config, tmp_path)
  assert list(out["results"]) == ["Original", "Retrain", "GA (sentence)", "GA (concept)"]
  sentence = out["results"]["GA (sentence)"]
  assert sentence["forget_rows"] == 4 * 9  # 4 forget people x 10 relations, 'pet' held out
  assert out["results"]["GA (concept)"]["forget_rows"] == len(out["concept_info"]["texts"])
  for row in out["results"].values():
    for key in ("forget_recall", "forget_recall_paraphrased", "forget_recall_unseen", "retain_recall"):
      assert 0.0 <= row[key] <= 1.0
  assert "| GA (concept) |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("key,value,match", [
    ("forget.kind", "paragraph", "config.forget.kind='paragraph'"),
    ("forget.holdout_relations", ("hat",), "'hat' is not one of"),
    ("forget.texts", ("essay",), "config.forget.texts"),
    ("compare", ("rmu",), "text-only objectives"),
    ("data.forget", "forget50", "config.data.forget='forget50'"),
])
def test_bad_concept_config_fails_before_any_work(tmp_path, key, value, match):
  from configs import lm_concept as config_module  # pylint: disable=g-import-not-at-top
  from unlearn_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  config = config_module.get_config("tiny_test")
  section, field = (config, key) if "." not in key else (config[key.split(".")[0]], key.split(".")[1])
  section[field] = value
  with pytest.raises(ValueError, match=match):
    run_lib.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_a_checkpoint_too_short_for_the_answers_fails_before_any_work(tmp_path):
  """``eval.max_new_tokens`` against an HF checkpoint's max_len (its config.json), before the Original trains."""
  from configs import lm_concept as config_module  # pylint: disable=g-import-not-at-top
  from unlearn_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from unlearn_jax.models import gpt, hf  # pylint: disable=g-import-not-at-top
  cfg = gpt.gpt_config("tiny", vocab_size=4096, num_layers=1, d_model=16, num_heads=2, d_ff=16, max_len=8)
  hf.save_hf_checkpoint(gpt.init_params(cfg, jax.random.key(0)), cfg, str(tmp_path / "ckpt"))
  config = config_module.get_config("tiny_test")
  config.model.hf_checkpoint = str(tmp_path / "ckpt")
  with pytest.raises(ValueError, match=r"^config\.eval\.max_new_tokens=\d+: the benchmark's prompts \(\d+ tokens\) "
                                       r"leave room for at most -\d+ new tokens in the model's max_len=8 "
                                       r"\(model\.hf_checkpoint's config\.json\)$"):
    run_lib.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()
