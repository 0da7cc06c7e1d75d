"""Executes notebooks/quickstart.ipynb top to bottom, as Colab would but without a Jupyter kernel.

The .ipynb JSON is parsed with `json`; every code cell runs in order in one namespace in a fresh Python
subprocess, in a temporary working directory, with ``QUICKSTART_SMALL=1``. IPython magics (``%pip``,
``!git``) only appear inside the Colab-only install block; they become ``pass`` here. The run must finish in under
3 minutes and leave the SalUn table, the merge table, the barriers and the PNG files behind.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
LIMIT_S = 180
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Runs the cells given as a JSON list in argv[1], in one namespace, reporting each cell's time.
RUNNER = r"""
import json, sys, time
cells = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, source in enumerate(cells):
  start = time.perf_counter()
  exec(compile(source, f"<quickstart cell {i}>", "exec"), namespace)
  print(f"@@ cell {i} done in {time.perf_counter() - start:.1f} s", flush=True)
"""


def strip_magics(source: str) -> str:
  """``source`` with each IPython magic / shell line (``%...``, ``!...``) replaced by ``pass`` at its indent."""
  if source.lstrip().startswith("%%"):
    raise ValueError("cell magics (%%) cannot run outside IPython")
  lines = []
  for line in source.splitlines():
    stripped = line.lstrip()
    lines.append(line[:len(line) - len(stripped)] + "pass" if stripped[:1] in ("%", "!") else line)
  return "\n".join(lines) + "\n"


def load_cells(path: str = NOTEBOOK) -> tuple[dict, list[str]]:
  with open(path) as f:
    notebook = json.load(f)
  code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
  return notebook, code


def test_strip_magics_keeps_blocks_valid():
  source = 'import sys\nif "google.colab" in sys.modules:\n  %pip install x\n  !ls -l\nx = 1\n'
  out = strip_magics(source)
  assert out == 'import sys\nif "google.colab" in sys.modules:\n  pass\n  pass\nx = 1\n'
  compile(out, "<test>", "exec")
  with pytest.raises(ValueError, match="cell magics"):
    strip_magics("%%bash\nls\n")


def test_notebook_is_clean_nbformat4_with_guarded_installs():
  notebook, code = load_cells()
  assert notebook["nbformat"] == 4 and notebook["metadata"]["kernelspec"]["language"] == "python"
  for cell in notebook["cells"]:
    assert cell["cell_type"] in ("markdown", "code")
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, "commit the notebook without outputs"
  assert len(code) >= 4
  magics = [(i, line) for i, src in enumerate(code) for line in src.splitlines() if line.lstrip()[:1] in ("%", "!")]
  assert any("pip install" in line for _, line in magics), "the Colab install cell is missing"
  for i, line in magics:  # every magic sits in an indented block under the Colab guard
    assert line.startswith(" "), line
    assert re.search(r'^if "google\.colab" in sys\.modules:', code[i], re.M), code[i]
  for i, src in enumerate(code):
    compile(strip_magics(src), f"<cell {i}>", "exec")


def test_quickstart_runs_in_under_three_minutes(tmp_path):
  _, code = load_cells()
  cells_file = tmp_path / "cells.json"
  cells_file.write_text(json.dumps([strip_magics(src) for src in code]))
  runner = tmp_path / "runner.py"
  runner.write_text(RUNNER)
  work = tmp_path / "cwd"
  work.mkdir()
  # a user's run: default XLA flags and no compilation cache (not the test session's, tests/conftest.py)
  env = {k: v for k, v in os.environ.items()
         if k not in ("QUICKSTART_WORKDIR", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
  env.update(QUICKSTART_SMALL="1", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, UNLEARN_JAX_PROGRESS="0")
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, str(runner), str(cells_file)], cwd=work, env=env, capture_output=True,
                        text=True, timeout=LIMIT_S + 60)
  seconds = time.perf_counter() - start
  out = proc.stdout
  assert proc.returncode == 0, f"notebook failed:\n{out[-4000:]}\n{proc.stderr[-8000:]}"
  assert seconds < LIMIT_S, f"the quickstart took {seconds:.0f} s (limit {LIMIT_S} s)"
  assert out.count("@@ cell") == len(code)
  assert "small=True" in out

  # The SalUn table: Retrain first, then the Original and the method, and results.json behind it.
  outputs = work / "workdir" / "quickstart"
  salun_dir = outputs / "salun"
  table = [line for line in out.splitlines() if line.startswith("| ")]
  names = [line.split("|")[1].strip() for line in table]
  assert names[:4] == ["Method", "Retrain", "Original", "salun"], names
  results = json.loads((salun_dir / "results.json").read_text())
  assert list(results) == ["Retrain", "Original", "salun"]
  for row in results.values():
    assert all(0.0 <= row[k] <= 1.0 for k in ("UA", "RA", "TA", "MIA")), row
  # the Original's forget rows all look like members; SalUn (at the swept digits setting, which barely moves UA)
  # makes some of them look like non-members
  assert results["Original"]["MIA"] < results["salun"]["MIA"]

  # The merge table and both barrier plots.
  merge_rows = {line.split("|")[1].strip(): line for line in table}
  for row in ("Base (2 epochs)", "Input 1", "Input 2", "ties", "linear"):
    assert row in merge_rows, row
  barriers = {name: float(value) for name, value in
              re.findall(r"^\s*(two fine-tunes|naive|weight matching): test loss barrier (-?[\d.]+)", out, re.M)}
  assert set(barriers) == {"two fine-tunes", "naive", "weight matching"}, out[-2000:]
  # Git Re-Basin's finding, by a wide margin on digits: aligning the hidden units flattens the path between two
  # independently trained networks, and fine-tunes of one base share a basin from the start.
  assert barriers["weight matching"] < 0.5 * barriers["naive"], barriers
  assert barriers["two fine-tunes"] < 0.5 * barriers["naive"], barriers
  pngs = [salun_dir / name for name in ("tradeoff.png", "method_bars.png", "gaps.png")]
  pngs += [outputs / name for name in ("barrier_finetuned.png", "barrier_rebasin.png")]
  for png in pngs:
    assert png.exists(), png
    assert png.read_bytes()[:8] == PNG_SIGNATURE, png
