r"""TOFU, MUSE and WMDP from a local directory in their published Hugging Face formats, tokenised by a local
``tokenizer.json``: the real benchmarks as `unlearn_jax.data.facts.QASet`\ s for the ``lm_unlearning`` study.

Nothing is downloaded: the directory holds the files of the dataset repository (or of the benchmark's own
GitHub data folder). A split ``S`` of a config ``C`` is read from the first of ``C/S.json``, ``C/S.jsonl``,
``C/S.parquet`` and ``C/S-*.parquet`` / ``C/S/*.parquet`` (the HF parquet export) that exists, or ``S.json`` /
``S.jsonl`` / ``S.parquet`` at the top when the repository has one config per file (TOFU). A JSON file is a list
of records or JSON Lines; a record is an object, or a bare string for the text-only MUSE splits.

* **TOFU** (``locuslab/TOFU``; open-unlearning's ``configs/data/datasets/TOFU_*.yaml``): ``forgetXX`` and
  ``retainYY`` (``question``, ``answer``; ``YY = 100 - XX``), ``forgetXX_perturbed`` and ``retain_perturbed``
  (also ``paraphrased_answer`` and the list ``perturbed_answer``), ``holdoutXX``, ``real_authors_perturbed`` and
  ``world_facts_perturbed`` (``question``, ``answer``, ``perturbed_answer``). The forget set is ``forgetXX`` with
  the truth-ratio answers of ``forgetXX_perturbed`` (the same questions in the same order), the retain set the
  400 rows of ``retain_perturbed``, the world set real authors + world facts (TOFU keeps the two apart in its
  harmonic mean; here they share the world terms of `unlearn_jax.evaluation.language.model_utility`), the
  holdout ``holdoutXX``. Unlearning retains on ``retainYY``; the Original trains on ``retainYY`` + ``forgetXX``
  (= ``full``), the Retrain on ``retainYY``. Authors are numbered by row (20 QAs each, TOFU's layout); TOFU marks
  no entity, so ``entity_mask`` covers the whole question. "I don't know" answers come from ``idontknow.jsonl``
  (one per line, the TOFU repository's file) when present, else `facts.IDK_ANSWERS`.
* **MUSE** (``muse-bench/MUSE-News`` or ``-Books``; MUSE's ``load_data.py`` layout): ``raw/{forget, retain1}``
  (``text``), ``verbmem/forget`` (``prompt``, ``gt``), ``knowmem/{retain_qa, forget_qa}`` (``question``,
  ``answer``) with the optional few-shot ``knowmem/{retain_qa_icl, forget_qa_icl}`` prepended to the questions as
  MUSE prompts them, and ``privleak/holdout`` (else ``raw/holdout``). The forget set is VerbMem (the prompt and
  its ground-truth continuation: ROUGE-L on it is VerbMem's, Min-K% against the holdout texts is PrivLeak's
  AUC); retain and world are both KnowMem's retain QA (MUSE's utility); KnowMem's forget QA is in ``extras``.
  Unlearning runs on the ``raw`` corpora (forget / retain1), the Original trains on both, the Retrain on retain1.
* **WMDP** (``cais/wmdp`` and ``cais/wmdp-corpora``): ``wmdp-<subject>/test`` (``question``, ``choices``,
  ``answer`` = the index of the right choice) and ``<subject>-forget-corpus`` / ``<subject>-retain-corpus``
  (``text``) for subject ``bio`` or ``cyber``. The forget set is the multiple-choice questions (the right choice
  as the answer, the other three as perturbed answers: ``forget_prob_options`` is the length-normalised choice
  probability); retain and world are continuations of retain-corpus documents; the holdout is the last tenth of
  the forget-corpus documents, which no model trains on. (PrivLeak is not a WMDP metric.)

Text corpora are cut into windows of ``seq_len - 1`` tokens after a BOS, every token a target. For the three
sets without wrong answers (MUSE's VerbMem and KnowMem, WMDP's continuations) the perturbed answers are the
answers of the next rows, so the truth-ratio columns are defined but are not the benchmark's own metrics.

A QA pair is laid out as ``BOS Question: q\nAnswer: a EOS PAD...`` (the prompt template of a base model; the
loss mask covers ``a`` and the EOS, the generation prompt stops after ``Answer:``), right-padded to one
``seq_len``: the longest row, at most ``max_length`` (an answer past it is cut; a question that leaves no room
for one token of answer is an error naming the file).

References:
  Maini et al., "TOFU", 2024 (huggingface.co/datasets/locuslab/TOFU); Shi et al., "MUSE", 2024
  (github.com/swj0419/muse_bench, ``load_data.py``); Li et al., "The WMDP Benchmark", 2024
  (huggingface.co/datasets/cais/wmdp, cais/wmdp-corpora); open-unlearning (github.com/locuslab/open-unlearning,
  ``configs/data/datasets/``); the ``tokenizers`` library's ``tokenizer.json``.

Example:
    >>> bench = load_benchmark("tofu", "/data/TOFU", forget="forget10")   # /data/TOFU/tokenizer.json
    >>> sets = bench.splits("forget10")        # forget, retain, world, holdout (+ train_forget, train_retain)
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Sequence

import numpy as np

from unlearn_jax.data import facts

SOURCES = ("tofu", "muse", "wmdp")
WMDP_SUBJECTS = ("bio", "cyber")
QA_TEMPLATE = "Question: {question}\nAnswer:"
TOFU_QA_PER_AUTHOR = 20
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|eot_id|>", "[SEP]")
PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>")
NUM_WRONG = 3          # perturbed answers taken from the next rows where a set has none
CONTINUATION_ROWS = 64  # retain-corpus documents turned into continuation QAs (WMDP)


# ------------------------------------------------------------------------------------------------ tokenizer
class TextTokenizer:
  """A ``tokenizers`` tokenizer read from a local ``tokenizer.json``, with the ids the LM contract needs.

  The special tokens are those of ``tokenizer_config.json`` beside it (``bos_token``, ``eos_token``,
  ``pad_token``), else the first known name found in the vocabulary (`BOS_NAMES`, `EOS_NAMES`, `PAD_NAMES`); a
  missing BOS or PAD falls back to the EOS (GPT-2's convention).

  Raises:
    ValueError: naming the file: missing, unreadable, or with no end-of-sequence token.
  """

  def __init__(self, path: str):
    import tokenizers  # pylint: disable=g-import-not-at-top
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise ValueError(f"config.data.tokenizer={path!r}: no such file (a tokenizers 'tokenizer.json')")
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust error type is not exported
      raise ValueError(f"config.data.tokenizer={path!r}: not a tokenizers file ({e})") from e
    self.path = path
    vocab = self._tok.get_vocab(with_added_tokens=True)
    named = {}
    config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if os.path.exists(config_path):
      with open(config_path) as f:
        tc = json.load(f)
      for key in ("bos_token", "eos_token", "pad_token"):
        value = tc.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value in vocab:
          named[key] = vocab[value]
    find = lambda names: next((vocab[n] for n in names if n in vocab), None)
    self.eos_id = named.get("eos_token", find(EOS_NAMES))
    if self.eos_id is None:
      raise ValueError(f"{path}: no end-of-sequence token (none of {EOS_NAMES}); name it as eos_token in "
                       "tokenizer_config.json beside it")
    self.bos_id = named.get("bos_token", find(BOS_NAMES))
    self.bos_id = self.eos_id if self.bos_id is None else self.bos_id
    self.pad_id = named.get("pad_token", find(PAD_NAMES))
    self.pad_id = self.eos_id if self.pad_id is None else self.pad_id

  @property
  def vocab_size(self) -> int:
    return int(self._tok.get_vocab_size(with_added_tokens=True))

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    """Text of ``ids`` up to the first EOS, without special tokens."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._tok.decode([i for i in ids if i not in (self.pad_id, self.bos_id)], skip_special_tokens=True)

  def batch_decode(self, ids) -> list[str]:
    return [self.decode(row) for row in np.asarray(ids)]

  def __repr__(self) -> str:
    return f"TextTokenizer({self.path!r}, vocab_size={self.vocab_size})"


# ------------------------------------------------------------------------------------------------ files
def find_split(directory: str, config: str | None, split: str) -> list[str]:
  """The file(s) holding ``config/split`` (see the module docstring); ValueError naming what was looked for."""
  base = os.path.join(directory, config) if config else directory
  for candidate in (f"{split}.json", f"{split}.jsonl", f"{split}.parquet"):
    if os.path.isfile(os.path.join(base, candidate)):
      return [os.path.join(base, candidate)]
  shards = sorted(glob.glob(os.path.join(glob.escape(base), f"{split}-*.parquet"))
                  or glob.glob(os.path.join(glob.escape(base), split, "*.parquet")))
  if shards:
    return shards
  where = f"{config}/{split}" if config else split
  raise ValueError(f"{directory}: missing split {where!r} (looked for {os.path.join(base, split)}"
                   "{.json,.jsonl,.parquet} and its parquet shards)")


def read_records(files: Sequence[str]) -> list:
  """The rows of JSON files (a list, or JSON Lines) or parquet files, in order."""
  rows = []
  for path in files:
    if path.endswith(".parquet"):
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
      rows += pq.read_table(path).to_pylist()
      continue
    with open(path) as f:
      text = f.read()
    try:
      data = json.loads(text)
      rows += data if isinstance(data, list) else [data]
      continue
    except json.JSONDecodeError:
      pass
    for i, line in enumerate(text.splitlines()):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}: line {i + 1} is not JSON ({e.msg})") from e
  return rows


def _column(rows: list, path: str, key: str, kind=str) -> list:
  """``row[key]`` of every row (a bare string is its own ``'text'``), checked against ``kind``."""
  out = []
  for i, row in enumerate(rows):
    value = row if (isinstance(row, str) and key == "text") else (row.get(key) if isinstance(row, dict) else None)
    ok = isinstance(value, kind) and (kind is not list or all(isinstance(v, str) for v in value))
    if not ok:
      raise ValueError(f"{path}: row {i} has no {kind.__name__} field {key!r} (has "
                       f"{sorted(row) if isinstance(row, dict) else type(row).__name__})")
    out.append(value)
  if not out:
    raise ValueError(f"{path}: no rows")
  return out


def _read(directory, config, split, *keys: tuple[str, type]) -> tuple[str, list[list]]:
  """``(path, columns)``: the ``(key, type)`` columns of ``config/split``, checked row by row."""
  files = find_split(directory, config, split)
  rows = read_records(files)
  return files[0], [_column(rows, files[0], key, kind) for key, kind in keys]


# ------------------------------------------------------------------------------------------------ encoding
@dataclasses.dataclass
class _Rows:
  """Tokenised rows before padding: prompts (BOS + question template) and answers, with their texts."""
  prompts: list[list[int]]
  answers: list[list[int]]
  questions: list[str]
  answer_texts: list[str]
  source: str

  def __len__(self):
    return len(self.prompts)


def _qa_rows(tok: TextTokenizer, questions: Sequence[str], answers: Sequence[str], source: str,
             prefix: str = "") -> _Rows:
  prompts = [[tok.bos_id, *tok.encode(prefix + QA_TEMPLATE.format(question=q))] for q in questions]
  return _Rows(prompts, [tok.encode(" " + a) for a in answers], list(questions), list(answers), source)


def _text_rows(tok: TextTokenizer, texts: Sequence[str], source: str, window: int) -> _Rows:
  """Each text cut into windows of ``window`` tokens: a bare BOS prompt and the window as the answer."""
  answers = []
  for text in texts:
    ids = tok.encode(text)
    answers += [ids[i:i + window] for i in range(0, len(ids), window) if ids[i:i + window]]
  return _Rows([[tok.bos_id]] * len(answers), answers, [""] * len(answers),
               [tok.decode(a) for a in answers], source)


def _continuation_rows(tok: TextTokenizer, texts: Sequence[str], source: str, prompt_tokens: int,
                       window: int) -> _Rows:
  """Documents as continuation QAs: the first ``prompt_tokens`` tokens prompt the next ones."""
  prompts, answers = [], []
  for text in texts:
    ids = tok.encode(text)
    if len(ids) > prompt_tokens:
      prompts.append([tok.bos_id, *ids[:prompt_tokens]])
      answers.append(ids[prompt_tokens:prompt_tokens + window])
  if not prompts:
    raise ValueError(f"{source}: no document is longer than {prompt_tokens} tokens")
  return _Rows(prompts, answers, [tok.decode(p) for p in prompts], [tok.decode(a) for a in answers], source)


def _lengths(groups: Sequence[_Rows], max_length: int) -> tuple[int, int]:
  """``(seq_len, prompt_len)``: the longest row and prompt over ``groups``, within ``max_length``."""
  longest = max(len(p) + len(a) + 1 for g in groups for p, a in zip(g.prompts, g.answers))
  prompt = max(len(p) for g in groups for p in g.prompts)
  for g in groups:
    for i, p in enumerate(g.prompts):
      if len(p) + 2 > max_length:
        raise ValueError(f"{g.source}: row {i}'s question is {len(p)} tokens with BOS; config.data.max_length="
                         f"{max_length} leaves no room for its answer")
  seq_len = min(max_length, 8 * -(-longest // 8))
  return seq_len, prompt


def _pad(seqs: list[list[int]], width: int, pad: int) -> np.ndarray:
  out = np.full((len(seqs), width), pad, np.int32)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out


def _encode(tok: TextTokenizer, rows: _Rows, seq_len: int, *, eos: bool = True):
  """``(input_ids, loss_mask)`` of prompt + answer (+ EOS), the answer cut to fit ``seq_len``."""
  seqs, masks = [], np.zeros((len(rows), seq_len), np.float32)
  for i, (p, a) in enumerate(zip(rows.prompts, rows.answers)):
    a = list(a[:seq_len - len(p) - int(eos)]) + ([tok.eos_id] if eos else [])
    seqs.append(p + a)
    masks[i, len(p):len(p) + len(a)] = 1.0
  return _pad(seqs, seq_len, tok.pad_id), masks


@dataclasses.dataclass
class _Group:
  """Rows and how to lay them out: authors, paraphrases and wrong answers (None / empty: see `_qaset`), and
  whether they are corpus windows (no EOS; every token an entity token)."""
  rows: _Rows
  person: np.ndarray | None = None
  para: _Rows | None = None
  wrong: Sequence[_Rows] = ()
  text: bool = False


def _qaset(tok: TextTokenizer, g: _Group, seq_len: int, prompt_len: int, idk: Sequence[str]) -> facts.QASet:
  """A `facts.QASet` of ``g``: paraphrases (default: the answers themselves), perturbed answers (default: the
  answers of the next `NUM_WRONG` rows), IdK answers cycled from ``idk``, person -1 unless given."""
  rows, n, eos = g.rows, len(g.rows), not g.text
  ids, mask = _encode(tok, rows, seq_len, eos=eos)
  para_ids, para_mask = (ids, mask) if g.para is None else _encode(tok, g.para, seq_len, eos=eos)
  wrong = list(g.wrong)
  if not wrong:
    shifts = range(1, min(NUM_WRONG, n - 1) + 1) if n > 1 else [0]
    wrong = [dataclasses.replace(rows, answers=[rows.answers[(i + s) % n] for i in range(n)],
                                 answer_texts=[rows.answer_texts[(i + s) % n] for i in range(n)]) for s in shifts]
  pert = [_encode(tok, w, seq_len, eos=eos) for w in wrong]
  idk_texts = [idk[i % len(idk)] for i in range(n)]
  idk_ids, idk_mask = _encode(tok, dataclasses.replace(rows, answers=[tok.encode(" " + t) for t in idk_texts]),
                              seq_len)
  entity_mask = mask.copy() if g.text else np.zeros_like(mask)
  if not g.text:   # TOFU marks no entity: the question's tokens (after BOS) stand in
    for i, p in enumerate(rows.prompts):
      entity_mask[i, 1:len(p)] = 1.0
  person = np.full(n, -1, np.int32) if g.person is None else np.asarray(g.person, np.int32)
  return facts.QASet(
      input_ids=ids, loss_mask=mask, entity_mask=entity_mask, person=person,
      prompt_ids=_pad(rows.prompts, prompt_len, tok.pad_id),
      prompt_len=np.array([len(p) for p in rows.prompts], np.int32), questions=list(rows.questions),
      answers=list(rows.answer_texts), para_input_ids=para_ids, para_loss_mask=para_mask,
      pert_input_ids=np.stack([p[0] for p in pert], 1), pert_loss_mask=np.stack([p[1] for p in pert], 1),
      idk_input_ids=idk_ids, idk_loss_mask=idk_mask, fact=np.zeros(n, np.int32),
      para_answers=list((g.para or rows).answer_texts),
      pert_answers=[[w.answer_texts[i] for w in wrong] for i in range(n)], idk_answers=idk_texts)


# ------------------------------------------------------------------------------------------------ benchmark
@dataclasses.dataclass(frozen=True, eq=False)
class LMBenchmark:
  """A loaded benchmark with the interface of `facts.FactsBenchmark` the study uses.

  Attributes:
    source: 'tofu', 'muse' or 'wmdp'.
    forget: the fold it was loaded for (TOFU's ``forgetXX``; None where the benchmark has one forget set).
    tokenizer: the `TextTokenizer`.
    seq_len, prompt_len: widths of every ``[.., T]`` token array and of ``prompt_ids``.
    sets: the evaluation sets ``forget``, ``retain``, ``world``, ``holdout``.
    train_forget, train_retain: what unlearning forgets and retains.
    extras: other sets of the benchmark (TOFU's ``real_authors`` / ``world_facts``, MUSE's ``knowmem_forget``).
    records: the rows the study scores as text, as the files hold them (MUSE's: `muse_records`; else empty).
  """
  source: str
  forget: str | None
  tokenizer: TextTokenizer
  seq_len: int
  prompt_len: int
  sets: dict[str, facts.QASet]
  train_forget: facts.QASet
  train_retain: facts.QASet
  extras: dict[str, facts.QASet]
  records: dict = dataclasses.field(default_factory=dict)

  def _check_fold(self, forget: str) -> None:
    if self.forget is not None and forget != self.forget:
      raise ValueError(f"config.data.forget={forget!r}: the {self.source} files were loaded for {self.forget!r}")

  def splits(self, forget: str | None = None) -> dict[str, facts.QASet]:
    """The evaluation sets plus ``train_forget`` / ``train_retain`` (the study's unlearning splits)."""
    self._check_fold(forget or self.forget)
    return {**self.sets, "train_forget": self.train_forget, "train_retain": self.train_retain}

  def train_set(self, forget: str | None = None, include_forget: bool = True) -> facts.QASet:
    """The Original's training rows (retain + forget) or the Retrain's (retain)."""
    self._check_fold(forget or self.forget)
    return facts.concat([self.train_retain, self.train_forget]) if include_forget else self.train_retain


def _assemble(source: str, forget: str | None, tok: TextTokenizer, max_length: int, evals: dict[str, _Group],
              train_forget: _Group, train_retain: _Group, extras: dict[str, _Group],
              idk: Sequence[str] = facts.IDK_ANSWERS, records: dict | None = None) -> LMBenchmark:
  """One ``seq_len`` / ``prompt_len`` over every group, then each group as a `facts.QASet`."""
  groups = [*evals.values(), train_forget, train_retain, *extras.values()]
  seq_len, prompt_len = _lengths([r for g in groups for r in (g.rows, g.para, *g.wrong) if r is not None],
                                 max_length)
  make = lambda g: _qaset(tok, g, seq_len, prompt_len, idk)
  return LMBenchmark(source=source, forget=forget, tokenizer=tok, seq_len=seq_len, prompt_len=prompt_len,
                     sets={k: make(g) for k, g in evals.items()}, train_forget=make(train_forget),
                     train_retain=make(train_retain), extras={k: make(g) for k, g in extras.items()},
                     records=records or {})


def _options(tok: TextTokenizer, path: str, questions: list[str], wrong_lists: list[list[str]]) -> list[_Rows]:
  """The ``j``-th perturbed answer of every row as one `_Rows` per ``j`` (as many as the shortest list)."""
  k = min(len(w) for w in wrong_lists)
  if k < 1:
    raise ValueError(f"{path}: a row has an empty 'perturbed_answer' list")
  return [_qa_rows(tok, questions, [w[j] for w in wrong_lists], path) for j in range(k)]


def load_tofu(directory: str, tokenizer: TextTokenizer, *, forget: str = "forget10",
              max_length: int = 256) -> LMBenchmark:
  """TOFU's files for fold ``forget`` (module docstring); ValueError naming a missing file or field."""
  if forget not in facts.FOLDS:
    raise ValueError(f"config.data.forget={forget!r}: choose one of {sorted(facts.FOLDS)}")
  tok, pct = tokenizer, forget.removeprefix("forget")
  qa = lambda split, *extra: _read(directory, None, split, ("question", str), ("answer", str), *extra)
  perturbed = (("perturbed_answer", list),)
  f_path, (fq, fa) = qa(forget)
  p_path, (pq, _, pp, pw) = qa(f"{forget}_perturbed", ("paraphrased_answer", str), *perturbed)
  if pq != fq:
    raise ValueError(f"{p_path}: its questions are not those of {f_path}, in the same order")
  r_path, (rq, ra) = qa(f"retain{100 - int(pct):02d}")
  e_path, (eq, ea, ep, ew) = qa("retain_perturbed", ("paraphrased_answer", str), *perturbed)
  h_path, (hq, ha) = qa(f"holdout{pct}")
  ra_path, (aq, aa, aw) = qa("real_authors_perturbed", *perturbed)
  wf_path, (wq, wa, ww) = qa("world_facts_perturbed", *perturbed)
  idk, idk_path = facts.IDK_ANSWERS, os.path.join(directory, "idontknow.jsonl")
  if os.path.exists(idk_path):
    with open(idk_path) as fh:
      idk = tuple(line.strip() for line in fh if line.strip()) or idk
  rows = functools.partial(_qa_rows, tok)
  authors = lambda start, n: (start + np.arange(n)) // TOFU_QA_PER_AUTHOR   # full.json order: retain, forget
  forget_group = _Group(rows(fq, fa, f_path), authors(len(rq), len(fq)), rows(fq, pp, p_path),
                        _options(tok, p_path, fq, pw))
  wk = min(min(len(w) for w in aw), min(len(w) for w in ww))   # real authors + world facts share one P
  evals = {
      "forget": forget_group,
      "retain": _Group(rows(eq, ea, e_path), authors(0, len(eq)), rows(eq, ep, e_path), _options(tok, e_path, eq, ew)),
      "world": _Group(rows(aq + wq, aa + wa, ra_path), wrong=_options(tok, wf_path, aq + wq,
                                                                      [w[:wk] for w in aw + ww])),
      "holdout": _Group(rows(hq, ha, h_path), authors(len(rq) + len(fq), len(hq))),
  }
  extras = {"real_authors": _Group(rows(aq, aa, ra_path), wrong=_options(tok, ra_path, aq, aw)),
            "world_facts": _Group(rows(wq, wa, wf_path), wrong=_options(tok, wf_path, wq, ww))}
  return _assemble("tofu", forget, tok, max_length, evals, forget_group,
                   _Group(rows(rq, ra, r_path), authors(0, len(rq))), extras, idk)


def load_muse(directory: str, tokenizer: TextTokenizer, *, max_length: int = 256) -> LMBenchmark:
  """A MUSE corpus's files (News or Books; module docstring); ValueError naming a missing file or field."""
  tok, window = tokenizer, max_length - 1

  def corpus(config, split):
    path, (texts,) = _read(directory, config, split, ("text", str))
    return _text_rows(tok, texts, path, window)

  try:
    holdout = corpus("privleak", "holdout")
  except ValueError:
    holdout = corpus("raw", "holdout")
  read = _muse_read(directory)
  v_path, verbmem_rows, _ = read["verbmem_forget"]
  prompts, gts = [r["prompt"] for r in verbmem_rows], [r["gt"] for r in verbmem_rows]
  verbmem = _Rows([[tok.bos_id, *tok.encode(p)] for p in prompts], [tok.encode(" " + g) for g in gts],
                  list(prompts), list(gts), v_path)

  def knowmem(split):
    path, rows, icl = read[f"knowmem_{split[:-3]}"]
    prefix = "".join(QA_TEMPLATE.format(question=r["question"]) + f" {r['answer']}\n\n" for r in icl)
    return _Group(_qa_rows(tok, [r["question"] for r in rows], [r["answer"] for r in rows], path, prefix))

  retain_qa = knowmem("retain_qa")
  evals = {"forget": _Group(verbmem), "retain": retain_qa, "world": retain_qa, "holdout": _Group(holdout, text=True)}
  return _assemble("muse", None, tok, max_length, evals, _Group(corpus("raw", "forget"), text=True),
                   _Group(corpus("raw", "retain1"), text=True), {"knowmem_forget": knowmem("forget_qa")},
                   records={k: (rows, icl) for k, (_, rows, icl) in read.items()})


def _muse_read(directory: str) -> dict[str, tuple[str, list[dict], list[dict]]]:
  """`muse_records` with the path of each file: ``{name: (path, rows, icl)}``."""

  def rows(config, split, *keys):
    path, columns = _read(directory, config, split, *((k, str) for k in keys))
    return path, [dict(zip(keys, values)) for values in zip(*columns)]

  def qa(split):
    try:
      icl = rows("knowmem", f"{split}_icl", "question", "answer")[1]
    except ValueError:
      icl = []
    return (*rows("knowmem", split, "question", "answer"), icl)

  return {"verbmem_forget": (*rows("verbmem", "forget", "prompt", "gt"), []), "knowmem_forget": qa("forget_qa"),
          "knowmem_retain": qa("retain_qa")}


def muse_records(directory: str) -> dict[str, tuple[list[dict], list[dict]]]:
  """MUSE's VerbMem and KnowMem rows as `unlearn_jax.evaluation.language.muse_memorization` scores them:
  ``{'verbmem_forget': (rows, []), 'knowmem_forget': (rows, icl), 'knowmem_retain': (rows, icl)}`` (``verbmem``
  rows ``{prompt, gt}``, ``knowmem`` rows and their ``*_icl`` few-shot rows ``{question, answer}``; no icl when
  that file is absent). ValueError naming a missing file or field. `load_muse` keeps them as ``records``."""
  return {k: (rows, icl) for k, (_, rows, icl) in _muse_read(directory).items()}


def load_wmdp(directory: str, tokenizer: TextTokenizer, *, subject: str = "bio",
              max_length: int = 256) -> LMBenchmark:
  """WMDP's questions and corpora for ``subject`` (module docstring); ValueError naming a missing file/field."""
  if subject not in WMDP_SUBJECTS:
    raise ValueError(f"config.data.subject={subject!r}: choose one of {WMDP_SUBJECTS}")
  tok, window = tokenizer, max_length - 1
  q_path, (questions, choices, answers) = _read(directory, f"wmdp-{subject}", "test", ("question", str),
                                                ("choices", list), ("answer", int))
  for i, (c, a) in enumerate(zip(choices, answers)):
    if len(c) < 2 or not 0 <= a < len(c):
      raise ValueError(f"{q_path}: row {i} has answer {a} for {len(c)} choices")
  wrong = [[x for j, x in enumerate(c) if j != a] for c, a in zip(choices, answers)]
  f_path, (forget_texts,) = _read(directory, None, f"{subject}-forget-corpus", ("text", str))
  r_path, (retain_texts,) = _read(directory, None, f"{subject}-retain-corpus", ("text", str))
  if len(forget_texts) < 2:
    raise ValueError(f"{f_path}: needs at least 2 documents (the last tenth is held out)")
  held = max(1, len(forget_texts) // 10)
  retain_qa = _Group(_continuation_rows(tok, retain_texts[:CONTINUATION_ROWS], r_path, max(1, window // 4),
                                        window // 2))
  evals = {"forget": _Group(_qa_rows(tok, questions, [c[a] for c, a in zip(choices, answers)], q_path),
                            wrong=_options(tok, q_path, questions, wrong)),
           "retain": retain_qa, "world": retain_qa,
           "holdout": _Group(_text_rows(tok, forget_texts[-held:], f_path, window), text=True)}
  return _assemble("wmdp", None, tok, max_length, evals,
                   _Group(_text_rows(tok, forget_texts[:-held], f_path, window), text=True),
                   _Group(_text_rows(tok, retain_texts, r_path, window), text=True), {})


def load_benchmark(source: str, directory: str, *, tokenizer: str | None = None, forget: str = "forget10",
                   max_length: int = 256, subject: str = "bio") -> LMBenchmark:
  """`load_tofu` / `load_muse` / `load_wmdp` of ``directory`` with the tokenizer at ``tokenizer`` (default
  ``directory/tokenizer.json``).

  Raises:
    ValueError: one line naming the key or file: an unknown source, a missing directory, file or field.
  """
  if source not in SOURCES:
    raise ValueError(f"config.data.source={source!r}: choose one of {('facts',) + SOURCES}")
  if not directory or not os.path.isdir(directory):
    raise ValueError(f"config.data.dir={directory!r}: no such directory")
  tok = TextTokenizer(tokenizer or os.path.join(directory, "tokenizer.json"))
  if source == "tofu":
    return load_tofu(directory, tok, forget=forget, max_length=max_length)
  if source == "muse":
    return load_muse(directory, tok, max_length=max_length)
  return load_wmdp(directory, tok, subject=subject, max_length=max_length)


__all__ = ["LMBenchmark", "SOURCES", "TextTokenizer", "find_split", "load_benchmark", "load_muse", "load_tofu",
           "load_wmdp", "muse_records", "read_records"]
