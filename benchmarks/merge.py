r"""Times every merge of `unlearn_jax.merging` on 8 random models of 100M parameters, and their peak memory.

  PYTHONPATH=. python benchmarks/merge.py [--k=8] [--methods=linear,ties,...] [--scale=1.0]

Each method runs in its own subprocess, so its peak memory is its own. The subprocess builds a base model and k
fine-tuned models (``base + 0.01 * noise``) as pytrees shaped like a 12-block ViT-B/BERT-base encoder (qkv, proj,
two MLP kernels, biases, LayerNorms) plus an embedding sized to reach 100.0M parameters (``--scale`` shrinks
every dimension for a quick try), and the statistics the method needs (random diagonal Fishers; for RegMean an
SPD Gram ``U U^T + d I`` per block kernel, the embedding being averaged). Then, per method:

- the merge is jitted with its options static and compiled ahead of time (``.lower().compile()``, whose
  ``memory_analysis()`` gives XLA's temporary and output buffer sizes) and called once; then up to three more
  calls are timed with ``block_until_ready`` (fewer once they pass 10 s) and their median is the merge time;
- before running, XLA's planned buffers are checked against ``MemAvailable``, and a method that would not fit
  is skipped with a message rather than pushing the machine into swap or the OOM killer;
- memory is the process's resident set: the baseline once every input exists, and the peak (Linux ``VmHWM``,
  reset through ``/proc/self/clear_refs`` right before the merge, so the peak of building the inputs does not
  count) over all calls. ``peak - baseline`` is what merging costs on top of holding the inputs.

Statistics collection (`merging.fisher_diag`, `merging.collect_grams`) needs a network and data and is not
timed here. SLERP merges two models (the first two). Prints one markdown table; the figures of one run are in
benchmarks/RESULTS.md.
"""
import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags

from unlearn_jax import merging

_K = flags.DEFINE_integer("k", 8, "Number of models merged.")
_METHODS = flags.DEFINE_list("methods", ["linear", "task_arithmetic", "ties", "dare", "della", "model_stock", "slerp",
                                         "fisher", "regmean", "negmerge"], "Merges to time.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies every dimension of the model (1.0: 100.0M parameters).")
_CHILD = flags.DEFINE_string("child", None, "Internal: run this one method and print its figures as JSON.")

WIDTH, MLP, BLOCKS, TARGET = 768, 3072, 12, 100_000_000
GIB = 2.0**30


def shapes(scale: float = 1.0) -> dict:
  """A ViT-B-like pytree of shapes with an embedding sized so the total is ``TARGET`` (at scale 1)."""
  width, mlp = max(8, int(WIDTH * scale)), max(8, int(MLP * scale))
  block = {"qkv": {"kernel": (width, 3 * width), "bias": (3 * width,)},
           "proj": {"kernel": (width, width), "bias": (width,)},
           "mlp1": {"kernel": (width, mlp), "bias": (mlp,)},
           "mlp2": {"kernel": (mlp, width), "bias": (width,)},
           "ln1": {"scale": (width,), "bias": (width,)}, "ln2": {"scale": (width,), "bias": (width,)}}
  tree = {f"block_{i:02d}": block for i in range(BLOCKS)}
  rest = int(TARGET * scale**2) - count(tree)
  tree["embed"] = {"embedding": (max(1, -(-rest // width)), width)}
  return tree


def count(tree) -> int:
  return sum(math.prod(s) for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, tuple)))


def _rss() -> dict[str, float]:
  """Current (VmRSS) and peak (VmHWM) resident memory of this process, in GiB."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(("VmRSS:", "VmHWM:")):
        key, value, _ = line.split()
        out[key[:-1]] = int(value) * 1024 / GIB
  return out


def _available_gib() -> float:
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024 / GIB
  return float("inf")


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def child(method: str, k: int, scale: float) -> dict:
  """Builds the inputs, compiles and runs ``method`` twice; returns its figures."""
  tree = shapes(scale)
  is_shape = lambda x: isinstance(x, tuple)
  treedef = jax.tree.structure(tree, is_leaf=is_shape)
  leaves = jax.tree.leaves(tree, is_leaf=is_shape)

  @jax.jit
  def random_model(key, base=None, noise=1.0):
    keys = jax.random.split(key, len(leaves))
    new = [noise * jax.random.normal(kk, s, jnp.float32) for kk, s in zip(keys, leaves)]
    if base is not None:
      new = [b + n for b, n in zip(jax.tree.leaves(base), new)]
    return jax.tree.unflatten(treedef, new)

  key = jax.random.key(0)
  base = random_model(jax.random.fold_in(key, 0))
  models = [random_model(jax.random.fold_in(key, i + 1), base, 0.01) for i in range(k)]
  stats = None
  if method == "fisher":
    squared = jax.jit(lambda kk: jax.tree.map(jnp.square, random_model(kk)))
    stats = [squared(jax.random.fold_in(key, 100 + i)) for i in range(k)]
  elif method == "regmean":

    @jax.jit
    def grams(kk):
      out = {}
      for j, (name, block) in enumerate(sorted((n, b) for n, b in tree.items() if n.startswith("block_"))):
        out[name] = {}
        for i, layer in enumerate(("qkv", "proj", "mlp1", "mlp2")):
          n = block[layer]["kernel"][0]
          u = jax.random.normal(jax.random.fold_in(kk, 4 * j + i), (n, 64), jnp.float32)
          out[name][layer] = {"kernel": u @ u.T + n * jnp.eye(n, dtype=jnp.float32)}
      return out

    stats = [grams(jax.random.fold_in(key, 200 + i)) for i in range(k)]
  jax.block_until_ready((base, models, stats))
  num_params = count(tree)

  rng = jax.random.key(1)
  fns = {
      "linear": lambda ms, b, s, r: merging.linear(ms),
      "task_arithmetic": lambda ms, b, s, r: merging.task_arithmetic(ms, base=b, scale=0.3),
      "ties": lambda ms, b, s, r: merging.ties(ms, base=b, density=0.2),
      "dare": lambda ms, b, s, r: merging.dare(ms, base=b, density=0.5, rng=r, combine="ties"),
      "della": lambda ms, b, s, r: merging.della(ms, base=b, density=0.5, epsilon=0.1, rng=r),
      "model_stock": lambda ms, b, s, r: merging.model_stock(ms, base=b),
      "slerp": lambda ms, b, s, r: merging.slerp(ms[0], ms[1], t=0.5),
      "fisher": lambda ms, b, s, r: merging.fisher(ms, s),
      "regmean": lambda ms, b, s, r: merging.regmean(ms, s, alpha=0.9),
      "negmerge": lambda ms, b, s, r: merging.negmerge(ms, base=b, scale=1.0),
  }
  args = (models[:2] if method == "slerp" else models, base, stats, rng)
  start = time.perf_counter()
  compiled = jax.jit(fns[method]).lower(*args).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  need = (getattr(analysis, "temp_size_in_bytes", 0) + getattr(analysis, "output_size_in_bytes", 0)) / GIB
  if need > _available_gib() - 1.0:
    raise MemoryError(f"{method}: XLA plans {need:.1f} GiB of buffers but only {_available_gib():.1f} GiB is "
                      "available; not running it")
  baseline = _rss()["VmRSS"]
  reset = _reset_peak()
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  first_s = time.perf_counter() - start
  del out
  times = []
  while len(times) < 3 and sum(times) < 10.0:  # fast merges are noisy: the median of up to 3 calls
    out = None  # the previous output is freed before the next call, as after the first
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  second_s = sorted(times)[(len(times) - 1) // 2]
  finite = bool(all(jnp.isfinite(x).all() for x in jax.tree.leaves(out)))
  peak = _rss()["VmHWM"]
  return {"method": method, "k": 2 if method == "slerp" else k, "params": num_params,
          "input_gib": sum(x.nbytes for x in jax.tree.leaves((base, models, stats))) / GIB,
          "compile_s": compile_s, "first_s": first_s, "second_s": second_s,
          "baseline_gib": baseline, "peak_gib": peak, "peak_reset": reset, "finite": finite,
          "xla_temp_gib": getattr(analysis, "temp_size_in_bytes", 0) / GIB,
          "xla_output_gib": getattr(analysis, "output_size_in_bytes", 0) / GIB,
          "device": jax.devices()[0].device_kind, "cpus": os.cpu_count()}


def main(argv):
  del argv
  if _CHILD.value:
    print("RESULT " + json.dumps(child(_CHILD.value, _K.value, _SCALE.value)), flush=True)
    return
  rows = []
  for method in _METHODS.value:
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={method}", f"--k={_K.value}",
           f"--scale={_SCALE.value}"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"{method}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
      continue
    rows.append(json.loads(lines[-1][len("RESULT "):]))
    r = rows[-1]
    print(f"{method}: {r['second_s']:.3f} s (compile {r['compile_s']:.1f} s), peak {r['peak_gib']:.2f} GiB",
          file=sys.stderr, flush=True)
  if not rows:
    return
  r0 = rows[0]
  print(f"\n{r0['params'] / 1e6:.1f}M parameters per model (fp32), {_K.value} models, device {r0['device']}, "
        f"{r0['cpus']} CPUs\n")
  ref = next((r["second_s"] for r in rows if r["method"] == "task_arithmetic"), None)
  print("| Method | k | Merge (s) | / task_arithmetic | First call (s) | Compile (s) | Inputs (GiB) | RSS before (GiB) "
        "| Peak RSS (GiB) | Peak − before (GiB) | XLA temp (GiB) | Finite |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    ratio = f"{r['second_s'] / ref:.1f}" if ref else "–"
    print(f"| {r['method']} | {r['k']} | {r['second_s']:.3f} | {ratio} | {r['first_s']:.2f} | {r['compile_s']:.2f} "
          f"| {r['input_gib']:.2f} | {r['baseline_gib']:.2f} | {r['peak_gib']:.2f} "
          f"| {r['peak_gib'] - r['baseline_gib']:.2f} | {r['xla_temp_gib']:.2f} | {r['finite']} |")


if __name__ == "__main__":
  app.run(main)
