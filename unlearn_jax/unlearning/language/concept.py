r"""Concept unlearning from names only: the model's own knowledge of a person, elicited as knowledge triplets and
explanatory sentences, becomes the forget set of an ordinary LM-unlearning objective (GA, GradDiff, NPO...).

Sentence-level unlearning needs the sentences to forget. Concept unlearning (Yamashita et al. 2025) is given only
the *target* (a person's name) and must remove the node and every edge of the model's knowledge graph about it.
The method asks the model itself what it knows, and unlearns that:

  1. `elicitation_prompts`: each relation's question template (``where was {e} born ?``...) filled with each
     target name — the relation schema, never the target's facts;
  2. `elicit`: the model's greedy answers (`unlearn_jax.evaluation.language.generate_answers`, the jitted KV-cache
     ``lm.generate``);
  3. `concept_texts`: each answer is read back into a triplet ``(target, relation, value)`` (`parse_triplet`, by
     the relation's statement templates) and written out as forget texts: the answer itself (``'answer'``), the
     triplet as text (``'triplet'``: ``name , birthplace , verlo .``) and explanatory sentences made by code from
     per-relation templates (``'explanation'``, `EXPLANATIONS`, worded differently from the benchmark's answers);
     an answer that matches no template keeps only the ``'answer'`` text;
  4. `forget_split`: the texts, each after its elicitation question (``BOS question SEP text EOS``, loss on the
     text), as the forget `Split` that `unlearn_jax.unlearning.language.unlearn_lm` takes.

`concept_forget_set` runs 1-4. In the paper the LLM writes the triplets and the explanations itself; a 1M-parameter
GPT trained only on QA pairs cannot follow such instructions, so here the decoding into triplets and the sentence
templates are code, and only the knowledge (the value) comes from the model. Nothing reads the benchmark's answers.

References:
  Yamashita, Yamanaka, Yamada, Miura, Shibahara, Iwata, "Concept Unlearning in Large Language Models via
  Self-Constructed Knowledge Triplets", arXiv:2509.15621, 2025.

Example:
    >>> forget, info = concept_forget_set(lm, params, ["alana brix"], bench.tokenizer, relations=attrs,
    ...                                   seq_len=bench.seq_len, prompt_len=bench.prompt_len, targets=[199])
    >>> params_u, _ = unlearn_lm("npo", lm, params, forget, retain, options={...}, rng=jax.random.key(0))
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from unlearn_jax import language
from unlearn_jax.data import facts
from unlearn_jax.data.split import Split
from unlearn_jax.evaluation import language as lm_eval

Pytree = Any
TEXT_KINDS = ("answer", "triplet", "explanation")
# How a triplet names each relation, and explanatory sentences per relation ({e} target, {v} value); only words of
# the benchmark's vocabulary, so nothing encodes to UNK (checked by the tests).
RELATION_PHRASES = {
    "birthplace": "birthplace", "birth_year": "birth year", "occupation": "job", "father": "job of the father",
    "mother": "job of the mother", "field": "field", "award": "award", "colour": "favourite colour",
    "food": "favourite food", "pet": "pet", "instrument": "instrument", "residence": "home", "siblings": "siblings",
}
EXPLANATIONS = {
    "birthplace": ("{e} was born in the city of {v} .", "the city {e} was born in is {v} ."),
    "birth_year": ("{e} was born in {v} .", "the year {e} was born is {v} ."),
    "occupation": ("{e} is a {v} .", "the job of {e} is {v} ."),
    "father": ("the father of {e} works as a {v} .", "the father of {e} is a {v} ."),
    "mother": ("the mother of {e} works as a {v} .", "the mother of {e} is a {v} ."),
    "field": ("{e} works in {v} .", "the work of {e} is in {v} ."),
    "award": ("{e} won the {v} .", "the award of {e} is the {v} ."),
    "colour": ("the colour {e} likes best is {v} .", "{e} likes {v} best ."),
    "food": ("the food {e} likes best is {v} .", "{e} likes {v} best ."),
    "pet": ("{e} has a pet {v} .", "the pet {e} keeps is a {v} ."),
    "instrument": ("the instrument {e} plays is the {v} .", "the {v} is what {e} plays ."),
    "residence": ("{e} lives in {v} now .", "the home of {e} now is {v} ."),
    "siblings": ("{e} has {v} siblings now .", "{v} is how many siblings {e} has ."),
}


class Prompts(NamedTuple):
  """Elicitation prompts, one per (target, relation), target-major.

  Attributes:
    prompt_ids: int32 ``[N, prompt_len]`` ``BOS question SEP`` right-padded; prompt_len: int32 ``[N]``.
    questions: the question texts.
    target: int32 ``[N]`` position of the target in ``names``; relation: the `facts.Attribute` of each row.
  """
  prompt_ids: np.ndarray
  prompt_len: np.ndarray
  questions: list[str]
  target: np.ndarray
  relation: list[facts.Attribute]


def elicitation_prompts(names: Sequence[str], relations: Sequence[facts.Attribute], tokenizer: facts.Tokenizer,
                        prompt_len: int) -> Prompts:
  """Every relation's question template filled with every target name (the only inputs: names and schema)."""
  if not names or not relations:
    raise ValueError(f"elicitation_prompts: needs names and relations, got {len(names)} and {len(relations)}")
  rows = [(t, attr) for t in range(len(names)) for attr in relations]
  questions = [attr.question.replace(facts.ENTITY, names[t]) for t, attr in rows]
  ids, lens = facts.encode_prompts(tokenizer, questions, prompt_len)
  return Prompts(ids, lens, questions, np.asarray([t for t, _ in rows], np.int32), [a for _, a in rows])


def elicit(lm: language.LanguageModel, params: Pytree, prompts: Prompts, *, decode: Callable[[np.ndarray], str],
           max_new_tokens: int = 16, batch_size: int = 128) -> list[str]:
  """The model's greedy answer to each prompt, decoded (what it believes about the target)."""
  return lm_eval.generate_answers(lm, params, prompts.prompt_ids, prompts.prompt_len, decode=decode,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)


def parse_triplet(answer: str, name: str, relation: facts.Attribute) -> tuple[str, str, str] | None:
  """``(name, relation.name, value)`` if ``answer`` reads as one of the relation's statement templates (its answer
  or paraphrase form) about ``name``, else None."""
  for template in (relation.answer, relation.paraphrase):
    value = facts.match_template(template, name, answer)
    if value:
      return name, relation.name, value
  return None


def _fill(template: str, name: str, value: str) -> str:
  return template.replace(facts.ENTITY, name).replace(facts.VALUE, value)


def concept_texts(names: Sequence[str], prompts: Prompts, answers: Sequence[str], *,
                  kinds: Sequence[str] = TEXT_KINDS) -> tuple[list[tuple[int, str, str]], list]:
  """The forget texts of every elicited answer.

  Args:
    names: the target names (``prompts.target`` indexes them).
    prompts: the `elicitation_prompts`.
    answers: the model's answers (`elicit`), one per prompt.
    kinds: which texts to write, a subset of `TEXT_KINDS`.

  Returns:
    ``(rows, triplets)``: rows ``(target, question, text)`` in prompt order, and the parsed triplets
    ``(name, relation, value)`` (None where an answer matched no template).
  """
  bad = [k for k in kinds if k not in TEXT_KINDS]
  if bad or not kinds:
    raise ValueError(f"concept_texts: kinds {tuple(kinds)} must be a non-empty subset of {TEXT_KINDS}")
  if len(answers) != len(prompts.questions):
    raise ValueError(f"concept_texts: {len(answers)} answers for {len(prompts.questions)} prompts")
  rows, triplets = [], []
  for target, question, relation, answer in zip(prompts.target, prompts.questions, prompts.relation, answers):
    name = names[int(target)]
    triplet = parse_triplet(answer, name, relation)
    triplets.append(triplet)
    texts = [answer] if "answer" in kinds and answer.strip() else []
    if triplet is not None:
      value = triplet[2]
      if "triplet" in kinds:
        texts.append(f"{name} , {RELATION_PHRASES[relation.name]} , {value} .")
      if "explanation" in kinds:
        texts += [_fill(t, name, value) for t in EXPLANATIONS[relation.name]]
    rows += [(int(target), question, text) for text in texts]
  return rows, triplets


def forget_split(rows: Sequence[tuple[int, str, str]], tokenizer: facts.Tokenizer, seq_len: int,
                 targets: Sequence[int] | None = None) -> Split:
  """The forget `Split` of ``(target, question, text)`` rows: ``x = {input_ids, loss_mask}`` (loss on the text),
  ``y`` = ``targets[target]`` (the person ids; default the target positions)."""
  if not rows:
    raise ValueError("forget_split: no forget texts (the model answered nothing parsable?)")
  ids, mask = facts.encode_pairs(tokenizer, [q for _, q, _ in rows], [t for _, _, t in rows], seq_len)
  who = np.asarray([r[0] for r in rows], np.int32)
  if targets is not None:
    who = np.asarray(targets, np.int32)[who]
  return Split(x={"input_ids": jnp.asarray(ids), "loss_mask": jnp.asarray(mask)}, y=jnp.asarray(who),
               index=jnp.arange(len(rows), dtype=jnp.int32))


def concept_forget_set(lm: language.LanguageModel, params: Pytree, names: Sequence[str], tokenizer: facts.Tokenizer,
                       *, relations: Sequence[facts.Attribute], seq_len: int, prompt_len: int,
                       targets: Sequence[int] | None = None, kinds: Sequence[str] = TEXT_KINDS,
                       max_new_tokens: int = 16, batch_size: int = 128) -> tuple[Split, dict]:
  """Steps 1-4 of the module docstring: the forget `Split` of targets ``names`` from the model ``params`` alone.

  Returns:
    ``(split, info)``; ``info`` has the ``answers``, ``triplets``, ``texts`` (the rows) and ``parsed`` (the share
    of answers read back into a triplet).
  """
  prompts = elicitation_prompts(names, relations, tokenizer, prompt_len)
  answers = elicit(lm, params, prompts, decode=tokenizer.decode, max_new_tokens=max_new_tokens,
                   batch_size=batch_size)
  rows, triplets = concept_texts(names, prompts, answers, kinds=kinds)
  parsed = float(np.mean([t is not None for t in triplets]))
  return forget_split(rows, tokenizer, seq_len, targets), {"answers": answers, "triplets": triplets, "texts": rows,
                                                           "parsed": parsed}
