"""TOFU / MUSE / WMDP loaders (unlearn_jax.data.lm_benchmarks) on small directories written here in the published
schemas (JSON Lines, JSON lists, parquet), tokenised by a tokenizer.json the `tokenizers` package writes; and the
TOFU and MUSE directories through the lm_unlearning study end to end."""
import json
import os
import re

import jax
import numpy as np
import pytest

from unlearn_jax.data import lm_benchmarks as lmb

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def _sentence(rng, n):
  return " ".join(rng.choice(WORDS, n))


def _write_jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def _write_tokenizer(directory, texts):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  specials = ["<pad>", "<s>", "</s>", "<unk>"]
  words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(specials)
  tok.save(os.path.join(directory, "tokenizer.json"))


def write_tofu(directory, seed=0):
  """forget10 (4 QAs), retain90 (12), their perturbed files, holdout10, real authors and world facts."""
  rng = np.random.default_rng(seed)
  qa = lambda n: [{"question": _sentence(rng, 4) + " ?", "answer": _sentence(rng, 3)} for _ in range(n)]
  pert = lambda rows, k: [{**r, "paraphrased_answer": _sentence(rng, 3),
                           "perturbed_answer": [_sentence(rng, 3) for _ in range(k)]} for r in rows]
  forget, retain = qa(4), qa(12)
  files = {"forget10": forget, "forget10_perturbed": pert(forget, 3), "retain90": retain,
           "retain_perturbed": pert(retain[:5], 3), "holdout10": qa(4),
           "real_authors_perturbed": [{**r, "perturbed_answer": [_sentence(rng, 2)] * 3,
                                       "option1": "x"} for r in qa(3)],
           "world_facts_perturbed": [{**r, "perturbed_answer": [_sentence(rng, 2)] * 4} for r in qa(3)]}
  for name, rows in files.items():
    _write_jsonl(os.path.join(directory, f"{name}.json"), rows)
  texts = [v for rows in files.values() for r in rows for v in r.values() if isinstance(v, str)]
  texts += [a for rows in files.values() for r in rows for a in r.get("perturbed_answer", [])]
  _write_tokenizer(directory, texts + ["Question: Answer:"])
  return files


def write_muse(directory, seed=1):
  """MUSE's layout: raw/ and privleak/ as JSON lists of strings and parquet, verbmem/ and knowmem/ as JSON."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  docs = lambda n: [_sentence(rng, 50) + " ." for _ in range(n)]
  raw = {"forget": docs(3), "retain1": docs(4), "holdout": docs(2)}
  for split, texts in raw.items():
    os.makedirs(os.path.join(directory, "raw"), exist_ok=True)
    with open(os.path.join(directory, "raw", f"{split}.json"), "w") as f:
      json.dump(texts, f)
  os.makedirs(os.path.join(directory, "privleak"))
  pq.write_table(pa.table({"text": docs(2)}), os.path.join(directory, "privleak", "holdout-00000-of-00001.parquet"))
  verbmem = [{"prompt": t[:40], "gt": t[40:]} for t in raw["forget"]]
  qa = lambda n: [{"question": _sentence(rng, 4) + " ?", "answer": _sentence(rng, 2)} for _ in range(n)]
  knowmem = {"forget_qa": qa(3), "retain_qa": qa(3), "retain_qa_icl": qa(2)}
  os.makedirs(os.path.join(directory, "verbmem"))
  with open(os.path.join(directory, "verbmem", "forget.json"), "w") as f:
    json.dump(verbmem, f)
  for split, rows in knowmem.items():
    _write_jsonl(os.path.join(directory, "knowmem", f"{split}.json"), rows)
  texts = [t for v in raw.values() for t in v] + [v for rows in knowmem.values() for r in rows for v in r.values()]
  texts += pq.read_table(os.path.join(directory, "privleak", "holdout-00000-of-00001.parquet"))["text"].to_pylist()
  _write_tokenizer(directory, texts + ["Question: Answer:"])
  return raw, verbmem, knowmem


def test_tofu_loader_lays_out_the_files(tmp_path):
  files = write_tofu(tmp_path)
  bench = lmb.load_benchmark("tofu", str(tmp_path), forget="forget10", max_length=64)
  tok, sets = bench.tokenizer, bench.splits("forget10")
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  forget = sets["forget"]
  assert len(forget) == 4 and len(sets["retain"]) == 5 and len(sets["train_retain"]) == 12
  assert len(sets["world"]) == 6 and len(sets["holdout"]) == 4
  row = files["forget10_perturbed"][1]
  ids, mask = forget.input_ids[1], forget.loss_mask[1]
  prompt = [tok.bos_id] + tok.encode(f"Question: {row['question']}\nAnswer:")
  answer = tok.encode(" " + row["answer"]) + [tok.eos_id]
  np.testing.assert_array_equal(ids[:len(prompt) + len(answer)], prompt + answer)
  positions = np.arange(len(ids))
  np.testing.assert_array_equal(mask, (positions >= len(prompt)) & (positions < len(prompt) + len(answer)))
  assert ids[len(prompt) + len(answer):].tolist() == [tok.pad_id] * (len(ids) - len(prompt) - len(answer))
  assert tok.decode(forget.para_input_ids[1][len(prompt):]) == row["paraphrased_answer"]
  assert [tok.decode(p[len(prompt):]) for p in forget.pert_input_ids[1]] == row["perturbed_answer"]
  np.testing.assert_array_equal(forget.prompt_ids[1][:forget.prompt_len[1]], prompt)
  assert forget.answers[1] == row["answer"]
  # TOFU's authors: 20 QAs each in full.json order (retain rows, then forget rows)
  assert forget.person.tolist() == [0, 0, 0, 0] and sets["holdout"].person.tolist() == [0] * 4
  # world facts have four perturbed answers, real authors three: the world set keeps the first three of each
  assert sets["world"].pert_input_ids.shape[1] == 3 and bench.extras["world_facts"].pert_input_ids.shape[1] == 4
  assert bench.train_set("forget10", include_forget=True).input_ids.shape == (16, bench.seq_len)
  with pytest.raises(ValueError, match="config.data.forget='forget05'"):
    bench.splits("forget05")


def test_muse_loader_reads_json_lists_and_parquet(tmp_path):
  raw, verbmem, knowmem = write_muse(tmp_path)
  bench = lmb.load_benchmark("muse", str(tmp_path), max_length=40)
  tok, sets = bench.tokenizer, bench.splits()
  # the corpora are cut into 39-token windows after a BOS, every token a target, no EOS
  windows = [w for t in raw["forget"] for w in np.split(tok.encode(t), range(39, 10 ** 4, 39)) if len(w)]
  train = sets["train_forget"]
  assert len(train) == len(windows) == 2 * len(raw["forget"])
  for i, w in enumerate(windows):
    np.testing.assert_array_equal(train.input_ids[i, :len(w) + 1], [tok.bos_id, *w])
    assert train.loss_mask[i].sum() == len(w) and train.loss_mask[i, 0] == 0
  assert sets["forget"].answers == [v["gt"] for v in verbmem]
  assert len(sets["holdout"]) >= 2   # privleak/holdout, from the parquet shard
  q = sets["retain"].questions[0]
  icl = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in knowmem["retain_qa_icl"])
  assert tok.decode(sets["retain"].prompt_ids[0]) == tok._tok.decode(tok.encode(icl + f"Question: {q}\nAnswer:"))
  assert bench.extras["knowmem_forget"].answers == [r["answer"] for r in knowmem["forget_qa"]]
  # the rows the study's VerbMem / KnowMem columns score, as the files hold them (no forget icl file: no shots)
  assert lmb.muse_records(str(tmp_path)) == {"verbmem_forget": (verbmem, []),
                                             "knowmem_forget": (knowmem["forget_qa"], []),
                                             "knowmem_retain": (knowmem["retain_qa"], knowmem["retain_qa_icl"])}


def test_wmdp_loader_multiple_choice_and_corpora(tmp_path):
  rng = np.random.default_rng(3)
  mc = [{"question": _sentence(rng, 5) + " ?", "choices": [_sentence(rng, 2) for _ in range(4)], "answer": a}
        for a in (2, 0, 3)]
  _write_jsonl(str(tmp_path / "wmdp-cyber" / "test.jsonl"), mc)
  docs = {k: [{"text": _sentence(rng, 12)} for _ in range(n)] for k, n in (("forget", 10), ("retain", 4))}
  for k, rows in docs.items():
    _write_jsonl(str(tmp_path / f"cyber-{k}-corpus.jsonl"), rows)
  _write_tokenizer(str(tmp_path), list(WORDS) + ["Question: Answer: ?"])
  bench = lmb.load_benchmark("wmdp", str(tmp_path), subject="cyber", max_length=32)
  forget = bench.sets["forget"]
  assert forget.answers == [r["choices"][r["answer"]] for r in mc]
  assert forget.pert_answers[0] == [c for j, c in enumerate(mc[0]["choices"]) if j != 2]
  assert len(bench.sets["holdout"]) == 1 and len(bench.train_forget) == 9   # the last tenth is held out
  with pytest.raises(ValueError, match="config.data.subject='chem'"):
    lmb.load_benchmark("wmdp", str(tmp_path), subject="chem")


def test_bad_directories_are_named(tmp_path):
  write_tofu(tmp_path)
  os.remove(tmp_path / "holdout10.json")
  with pytest.raises(ValueError, match=r"missing split 'holdout10'"):
    lmb.load_benchmark("tofu", str(tmp_path))
  write_tofu(tmp_path)
  rows = [json.loads(l) for l in open(tmp_path / "forget10_perturbed.json")]
  del rows[2]["perturbed_answer"]
  _write_jsonl(str(tmp_path / "forget10_perturbed.json"), rows)
  with pytest.raises(ValueError, match=r"forget10_perturbed\.json: row 2 has no list field 'perturbed_answer'"):
    lmb.load_benchmark("tofu", str(tmp_path))
  with pytest.raises(ValueError, match="config.data.tokenizer='/nowhere/tokenizer.json'"):
    lmb.load_benchmark("tofu", str(tmp_path), tokenizer="/nowhere/tokenizer.json")
  with pytest.raises(ValueError, match="config.data.dir='/no/such/dir'"):
    lmb.load_benchmark("muse", "/no/such/dir")


# ---------------------------------------------------------------------------------------------- the study
def _study_config(source, directory):
  from configs import lm_npo  # pylint: disable=g-import-not-at-top
  config = lm_npo.get_config("tiny_test")
  config.data.update(source=source, dir=str(directory), max_length=48)
  config.model.update(d_model=32, d_ff=64)
  config.compare = ("npo",)
  config.eval.update(sae=False, rouge_rows=2, max_new_tokens=4)
  for section in (config.train, config.retrain):
    section.update(epochs=2, batch_size=8)
  config.methods.npo.update(batch_size=4, lora_rank=2)
  return config


@pytest.mark.parametrize("source, write", [("tofu", write_tofu), ("muse", write_muse)])
def test_study_runs_on_benchmark_files(tmp_path, source, write):
  from unlearn_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  write(tmp_path / "data")
  out = run_lib.run(_study_config(source, tmp_path / "data"), tmp_path / "w")
  results = json.loads((tmp_path / "w" / "results.json").read_text())
  assert list(results) == ["Original", "Retrain", "NPO"]
  for row in results.values():
    for key in ("forget_quality", "model_utility", "forget_rouge", "privleak", "forget_truth_ratio"):
      assert np.isfinite(row[key]), (source, key, row)
  assert results["NPO"]["trainable_params"] == 2 * (32 * 2 + 2 * 32)   # LoRA on q and v of the one block
  assert "| NPO |" in out["table"]
  muse = source == "muse"  # MUSE's own memorisation columns (ROUGE-L F1), for its files only
  for row in results.values():
    for key in ("verbmem_forget", "knowmem_forget", "knowmem_retain"):
      assert (0.0 <= row[key] <= 1.0) if muse else key not in row, (source, key, row)
  assert ("MUSE memorisation" in out["table"]) == muse


def test_study_refuses_bad_benchmark_input(tmp_path):
  from unlearn_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from unlearn_jax.models import gpt, hf  # pylint: disable=g-import-not-at-top
  write_tofu(tmp_path / "data")
  os.remove(tmp_path / "data" / "retain_perturbed.json")
  with pytest.raises(ValueError, match="missing split 'retain_perturbed'"):
    run_lib.run(_study_config("tofu", tmp_path / "data"), tmp_path / "w")
  with pytest.raises(ValueError, match="config.data.dir"):
    run_lib.run(_study_config("tofu", tmp_path / "nothing"), tmp_path / "w")
  write_tofu(tmp_path / "data")
  cfg = gpt.gpt_config("tiny", vocab_size=8, num_layers=1, d_model=16, num_heads=2, d_ff=16)
  hf.save_hf_checkpoint(gpt.init_params(cfg, jax.random.key(0)), cfg, str(tmp_path / "ckpt"))
  config = _study_config("tofu", tmp_path / "data")
  config.model.hf_checkpoint = str(tmp_path / "ckpt")
  with pytest.raises(ValueError, match=r"config\.model\.hf_checkpoint=.*vocabulary \(8\) is smaller"):
    run_lib.run(config, tmp_path / "w")
  # a checkpoint whose max_len cannot hold a prompt and its answer: refused from its config.json, before training
  hf.save_hf_checkpoint(gpt.init_params(cfg.replace(vocab_size=512, max_len=8), jax.random.key(0)),
                        cfg.replace(vocab_size=512, max_len=8), str(tmp_path / "short"))
  config.model.hf_checkpoint = str(tmp_path / "short")
  with pytest.raises(ValueError, match=r"config\.eval\.max_new_tokens=\d+: the benchmark's prompts \(\d+ tokens\) "
                                       r"leave room for at most -?\d+ new tokens in the model's max_len=8 "
                                       r"\(model\.hf_checkpoint's config\.json\)"):
    run_lib.run(config, tmp_path / "w")
  from configs import lm_concept  # pylint: disable=g-import-not-at-top
  concept = lm_concept.get_config("tiny_test")
  concept.data.update(source="tofu", dir=str(tmp_path / "data"))
  with pytest.raises(ValueError, match=r"config\.data\.source='tofu': concept unlearning"):
    run_lib.run(concept, tmp_path / "w")
  assert not (tmp_path / "w").exists()
