r"""Runs a mergekit YAML file: ``python -m experiments.merge --config=merge.yml --out=DIR [--seed=0]``.

Reads mergekit's YAML schema (see `unlearn_jax.merging.mergekit`), merges the local Hugging Face checkpoints it
names tensor group by tensor group, and writes ``DIR`` (``model.safetensors``, ``config.json``, the tokenizer
files, ``mergekit_config.yml``), which ``transformers``' ``from_pretrained`` loads. ``DIR`` appears only once
complete. A bad file, key, model, tensor or shape prints one line (``error: models[1].model: './x' has no
config.json``) and exits with status 2 before anything is written.

Example (two tiny GPT-2 checkpoints, a few seconds on a 2-core CPU):

  python -m experiments.merge --config=examples/ties.yml --out=/tmp/merged
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

_CONFIG = flags.DEFINE_string("config", None, "A mergekit YAML file.")
_OUT = flags.DEFINE_string("out", None, "The output directory (replaced atomically if it exists).")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the random drops of DARE and DELLA.")


def _fail(message: str):
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected argument {argv[1]!r}; use --config=FILE --out=DIR")
  if not _CONFIG.value:
    _fail("--config: give a mergekit YAML file")
  if not _OUT.value:
    _fail("--out: give the output directory")
  logging.set_verbosity(logging.WARNING)  # results, not machinery: no INFO logs from jax
  from unlearn_jax.merging import mergekit  # after flag parsing: importing jax is the slow part
  try:
    with open(_CONFIG.value) as f:
      text = f.read()
  except OSError as e:
    _fail(f"--config={_CONFIG.value}: {e.strerror}")
  try:
    config = mergekit.parse_config(text)
    out = mergekit.merge_config(config, _OUT.value, seed=_SEED.value)
  except ValueError as e:
    _fail(f"{_CONFIG.value}: {e}")
  print(out)


if __name__ == "__main__":
  app.run(main)
