r"""Turns the logs of ``benchmarks/gpu.sh`` into one markdown table (``gpu.sh`` calls it; no JAX needed).

  python benchmarks/gpu_table.py MANIFEST DEVICE > gpu.md

``MANIFEST`` has one tab-separated line per benchmark run: ``name, exit status, wall seconds, log file,
command``. From each log the figures the benchmark scripts print are read: ``<side>: ... <rate> images/s`` (or
tokens/s; a line without a side prefix is JAX's, as `train_step.py` prints it), the first (compile) epoch or step
seconds, ``MFU x%`` and ``ratio jax/torch = r``. The last markdown table a log holds (`merge.py`,
`weight_matching.py`) is copied below the main table.
"""
from __future__ import annotations

import re
import sys

_RATE = re.compile(r"([\d.,]+) (images|tokens)/s")
_FIRST = re.compile(r"first (?:epoch|step)[^\d]*([\d.]+) s")
_MFU = re.compile(r"MFU ([\d.]+%)")
_RATIO = re.compile(r"ratio jax/torch[^=]*= ([\d.]+)")
_SIDE = re.compile(r"^(jax|torch): ")


def parse(text: str) -> dict:
  """``{'jax': {...}, 'torch': {...}, 'ratio': str | None, 'table': [lines]}`` from one benchmark log."""
  out = {"jax": {}, "torch": {}, "ratio": None, "table": []}
  block: list[str] = []
  for line in text.splitlines():
    if line.startswith("|"):
      block.append(line)
      continue
    if block:
      out["table"], block = block, []
    match = _SIDE.match(line)
    side = match.group(1) if match else "jax"
    figures = out[side]
    for key, pattern in (("rate", _RATE), ("first", _FIRST), ("mfu", _MFU)):
      found = pattern.search(line)
      if found and key not in figures and (match or key != "mfu"):
        figures[key] = f"{found.group(1)} {found.group(2)}/s" if key == "rate" else found.group(1)
    ratio = _RATIO.search(line)
    if ratio:
      out["ratio"] = ratio.group(1)
  if block:
    out["table"] = block
  return out


def _cell(figures: dict) -> str:
  if "rate" not in figures:
    return "–"
  extra = [f"first {figures['first']} s" if "first" in figures else "", f"MFU {figures['mfu']}" if "mfu" in figures
           else ""]
  extra = [e for e in extra if e]
  return figures["rate"] + (f" ({', '.join(extra)})" if extra else "")


def render(manifest: str, device: str) -> str:
  rows, tables = [], []
  with open(manifest) as f:
    entries = [line.rstrip("\n").split("\t", 4) for line in f if line.strip()]
  for name, status, wall, log, command in entries:
    try:
      with open(log, errors="replace") as f:
        figures = parse(f.read())
    except OSError:
      figures = parse("")
    state = {"0": "ok", "124": "timed out", "137": "killed", "skipped": "skipped (time budget)"}.get(status,
                                                                                                   f"exit {status}")
    jax_cell = _cell(figures["jax"]) if figures["jax"] or not figures["table"] else "table below"
    rows.append(f"| {name} | `{command}` | {jax_cell} | {_cell(figures['torch'])} | {figures['ratio'] or '–'} | "
                f"{wall} | {state} |")
    if figures["table"]:
      tables.append(f"\n{name}:\n\n" + "\n".join(figures["table"]))
  head = [f"Device: {device}", "",
          "| benchmark | command | JAX | PyTorch | JAX / PyTorch | wall s | status |", "|---|---|---|---|---:|---:|---|"]
  return "\n".join(head + rows) + "\n" + "\n".join(tables) + "\n"


def main(argv):
  if len(argv) != 3:
    raise SystemExit(f"usage: {argv[0]} MANIFEST DEVICE")
  sys.stdout.write(render(argv[1], argv[2]))


if __name__ == "__main__":
  main(sys.argv)
