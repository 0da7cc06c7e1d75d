r"""LoRA against full fine-tuning for NPO and GradDiff on the fictitious-facts study (``lm_unlearning``).

Runs the study twice in one workdir (the Original and the Retrain are trained once and restored the second time):
NPO and GradDiff with every weight trained, then with LoRA adapters (``--rank``, ``--alpha``, ``--targets``) and
the learning rate scaled by ``--lr_scale`` (adapters move slowly at full fine-tuning's rate; 10x is the usual
ratio between peft's and full fine-tuning's learning rates). Prints, and writes to ``workdir/lora_table.md``,
forget quality, model utility, forget ROUGE-L, the trained parameters, the optimiser state and the run time.

  python benchmarks/lm_lora.py --workdir=/tmp/lm_lora            # CPU benchmark config (~25 min on 2 cores)
  python benchmarks/lm_lora.py --workdir=/tmp/lm_lora_t --arg=tiny_test
"""
from __future__ import annotations

import pathlib

from absl import app
from absl import flags

from unlearn_jax import evaluation
from unlearn_jax import run as run_lib
from unlearn_jax.studies import language

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lm_lora", "Study workdir (the Original/Retrain cache is reused).")
_ARG = flags.DEFINE_string("arg", None, "Config argument: none (the CPU benchmark) or 'tiny_test'.")
_RANK = flags.DEFINE_integer("rank", 8, "LoRA rank.")
_ALPHA = flags.DEFINE_float("alpha", 16.0, "LoRA alpha (scale alpha / rank).")
_TARGETS = flags.DEFINE_list("targets", ["q", "k", "v", "o", "gate", "up", "down"], "LoRA target modules.")
_LR_SCALE = flags.DEFINE_float("lr_scale", 10.0, "LoRA learning rate = this x the full fine-tuning one.")
_VARIANTS = flags.DEFINE_list("variants", ["full", "lora"], "Which runs: full fine-tuning and/or LoRA.")
METHODS = ("npo", "graddiff")
COLUMNS = (("forget_quality", "Forget quality", "{:.4f}"), ("model_utility", "Model utility", "{:.3f}"),
           ("forget_rouge", "Forget ROUGE-L", "{:.3f}"), ("retain_rouge", "Retain ROUGE-L", "{:.3f}"),
           ("trainable_params", "Trained params", "{:,.0f}"), ("opt_state_mib", "AdamW state MiB", "{:.2f}"),
           ("seconds", "Run time s", "{:.1f}"))


def lora_vs_full(arg, workdir) -> dict[str, dict]:
  """``{row: metrics}``: Original, Retrain, then each method with full fine-tuning and with LoRA."""
  rows = {}
  for variant in _VARIANTS.value:
    config = language.lm_config(METHODS[0], arg, compare=METHODS)
    config.eval.sae = False
    if variant == "lora":
      for name in METHODS:
        m = config.methods[name]
        m.update(lora_rank=_RANK.value, lora_alpha=_ALPHA.value, lora_targets=tuple(_TARGETS.value),
                 lr=m.lr * _LR_SCALE.value)
    results = run_lib.run(config, workdir)["results"]
    for row, metrics in results.items():
      if row in ("Original", "Retrain"):
        rows.setdefault(row, metrics)
      else:
        lora = f"LoRA r={_RANK.value}, lr x{_LR_SCALE.value:g}"
        rows[f"{row} ({lora if variant == 'lora' else 'full'})"] = metrics
  return rows


def format_table(rows: dict[str, dict]) -> str:
  lines = ["| Model | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
  for row, m in rows.items():
    cells = [fmt.format(m[k]) if k in m else "—" for k, _, fmt in COLUMNS]
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  table = format_table(lora_vs_full(_ARG.value, _WORKDIR.value))
  evaluation.atomic_write(str(pathlib.Path(_WORKDIR.value) / "lora_table.md"), table)
  print(table)


if __name__ == "__main__":
  app.run(main)
