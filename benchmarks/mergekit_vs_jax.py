r"""The same mergekit YAML merges run by the `mergekit` package (``mergekit-yaml``, CPU) and by
``python -m experiments.merge``, one process each: wall time, peak RSS and the largest difference of the outputs.

The script writes a GPT-2-small-shaped base (124M parameters: 12 layers, d=768, vocabulary 50257, fp32, random
weights) and k fine-tunes (base + small noise) as local safetensors checkpoints, then runs each method's YAML by
both tools under ``/usr/bin/time`` (wall time and maximum resident set size of the whole process, imports and
compilation included).

Command (about 25 minutes on a loaded 2-core CPU; needs ~3 GB of disk and the test extra's mergekit):

  PYTHONPATH=. python benchmarks/mergekit_vs_jax.py --dir=/tmp/mk_bench [--methods=linear,ties] [--k=4]

Results: benchmarks/RESULTS.md ("mergekit vs unlearn_jax on mergekit YAML").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from unlearn_jax.models import hf

_DIR = flags.DEFINE_string("dir", "/tmp/mk_bench", "Working directory (checkpoints, YAMLs, outputs).")
_K = flags.DEFINE_integer("k", 4, "Fine-tuned models per merge (slerp takes 1 and the base).")
_METHODS = flags.DEFINE_list("methods", ["linear", "task_arithmetic", "ties", "dare_ties", "della", "model_stock",
                                         "slerp", "breadcrumbs", "sce"], "Methods to run.")
_LAYERS = flags.DEFINE_integer("layers", 12, "GPT-2 layers (12: 124M parameters).")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANDOM = ("dare_ties", "della")  # random masks: mergekit's torch draws differ from ours


def _write_models(root: str, k: int, layers: int) -> None:
  config = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=768, n_layer=layers, n_head=12,
                n_positions=1024, vocab_size=50257)
  rng = np.random.default_rng(0)
  shapes = hf.hf_shapes(hf.config_from_hf(config), "transformer.")
  base = None
  for name in ["base"] + [f"ft{i}" for i in range(k)]:
    path = os.path.join(root, name)
    if os.path.exists(os.path.join(path, "model.safetensors")):
      continue
    if base is None:
      base = {n: (0.02 * rng.standard_normal(s, dtype=np.float32)) for n, s in shapes.items()}
    tensors = base if name == "base" else {
        n: v + np.float32(0.002) * rng.standard_normal(v.shape, dtype=np.float32) for n, v in base.items()}
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(config, f)
    print("wrote", path, flush=True)


def _yaml(method: str, root: str, k: int) -> str:
  fts = [os.path.join(root, f"ft{i}") for i in range(k)]
  base = os.path.join(root, "base")
  per_model = {"linear": "{weight: 1.0}", "task_arithmetic": "{weight: 0.5}", "ties": "{weight: 1.0, density: 0.5}",
               "dare_ties": "{weight: 1.0, density: 0.5}", "della": "{weight: 1.0, density: 0.5, epsilon: 0.1}",
               "breadcrumbs": "{weight: 1.0, density: 0.9, gamma: 0.01}"}.get(method)
  if method == "slerp":
    return f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {fts[0]}\n" \
           "parameters: {t: 0.5}\ndtype: float32\n"
  lines = [f"merge_method: {method}"] + ([] if method == "linear" else [f"base_model: {base}"]) + ["models:"]
  for ft in fts:
    lines.append(f"  - model: {ft}")
    if per_model:
      lines.append(f"    parameters: {per_model}")
  if method == "sce":
    lines.append("parameters: {select_topk: 0.5}")
  lines.append("dtype: float32")
  return "\n".join(lines) + "\n"


def _timed(cmd: list[str], log: str) -> tuple[float, float, int]:
  """(wall s, peak RSS GiB, return code) of ``cmd`` under /usr/bin/time."""
  start = time.time()
  with open(log, "w") as f:
    rc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M"] + cmd, stdout=f, stderr=subprocess.STDOUT,
                        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}).returncode
  wall = time.time() - start
  rss = [line for line in open(log) if line.startswith("MAXRSS")]
  return wall, (int(rss[-1].split()[1]) / 2**20 if rss else float("nan")), rc


def _outputs(path: str) -> dict[str, np.ndarray]:
  out = {}
  for file in sorted(os.listdir(path)):
    if file.endswith(".safetensors"):
      out.update(load_file(os.path.join(path, file)))
  return out


def main(argv):
  del argv
  root = os.path.abspath(_DIR.value)
  os.makedirs(root, exist_ok=True)
  _write_models(root, _K.value, _LAYERS.value)
  bin_dir = os.path.dirname(sys.executable)
  rows = []
  for method in _METHODS.value:
    config = os.path.join(root, f"{method}.yml")
    with open(config, "w") as f:
      f.write(_yaml(method, root, _K.value))
    mk_out, our_out = os.path.join(root, f"out_{method}_mergekit"), os.path.join(root, f"out_{method}_ours")
    mk = _timed([os.path.join(bin_dir, "mergekit-yaml"), config, mk_out, "--no-copy-tokenizer", "--quiet",
                 "--random-seed", "0"], os.path.join(root, f"{method}_mergekit.log"))
    ours = _timed([sys.executable, "-m", "experiments.merge", f"--config={config}", f"--out={our_out}"],
                  os.path.join(root, f"{method}_ours.log"))
    diff = "random masks"
    if mk[2] or ours[2]:
      diff = f"failed (rc {mk[2]} / {ours[2]})"
    elif method not in RANDOM:
      a, b = _outputs(our_out), _outputs(mk_out)
      diff = "keys differ" if set(a) != set(b) else f"{max(float(np.max(np.abs(a[n] - b[n]))) for n in a):.1e}"
    rows.append((method, mk[0], ours[0], mk[1], ours[1], diff))
    print(f"| {method} | {mk[0]:.1f} | {ours[0]:.1f} | {mk[0] / ours[0]:.2f} | {mk[1]:.2f} | {ours[1]:.2f} | "
          f"{diff} |", flush=True)
  print("\n| method | mergekit (s) | ours (s) | speed-up | mergekit peak RSS (GiB) | ours peak RSS (GiB) | "
        "max abs diff |\n|---|---|---|---|---|---|---|")
  for method, mt, ot, mr, orss, diff in rows:
    print(f"| {method} | {mt:.1f} | {ot:.1f} | {mt / ot:.2f} | {mr:.2f} | {orss:.2f} | {diff} |")


if __name__ == "__main__":
  app.run(main)
