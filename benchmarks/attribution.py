r"""Times TRAK's per-example gradients and features (vmapped, chunked) against a per-example loop of jax.grad.

  PYTHONPATH=. python benchmarks/attribution.py [--proj_dim=2048] [--chunk_size=N] [--loop_rows=256]
      [--loop_feature_rows=96] [--repeats=3]

MNIST-1D's 4,000 training rows, the benchmark MLP (256-256, 78,858 parameters, trained 2 epochs), in one process:

* per-example margin gradients of every row, two ways, each producing the [rows, P] gradients chunk by chunk:
  a Python loop of one jitted ``jax.grad`` call per row (the loop a PyTorch user writes without ``functorch``;
  timed on the first ``loop_rows`` rows after a warm-up call, extrapolated linearly to 4,000 rows), and one jitted
  ``jax.vmap(jax.grad)`` program per chunk of rows, the chunks featurize uses (``chunk_size``, by default as many
  rows as fit in 128 MiB of gradients: 400 here), timed warm over all rows;
* the full TRAK features φ = Rᵀ∇f/√P (k = ``proj_dim``) by `unlearn_jax.attribution.featurize` (one program:
  R's Rademacher blocks drawn once each and held (``projection_mib``), then per chunk of rows the vmapped
  gradients computed once and multiplied by R), first call (with compilation) and warm, against
  the per-example loop of features: per row one jitted ``jax.grad`` call and one jitted projection of that gradient
  by the same matrix R (materialised once beforehand, not timed), timed on ``loop_feature_rows`` rows and
  extrapolated; both give the same φ (checked).

Every warm time is the best of ``repeats`` (the loops: the best per-row time of ``repeats`` consecutive groups of
their rows), as ``timeit`` reports, so that a burst of load on a shared machine hits both sides alike.

Memory: XLA's plan for the featurize program (``memory_analysis()``: arguments, outputs and temporaries), and the
process's peak resident set (Linux ``VmHWM``) right after featurizing, before the loop runs (it includes the
Python/JAX runtime and the dataset). Prints a markdown table.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import attribution, data, model as model_lib, models, train
from unlearn_jax.attribution import trak
from unlearn_jax.config import train_config


def peak_rss_gib() -> float:
  try:
    for line in open("/proc/self/status"):
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 2 ** 20
  except OSError:
    pass
  return float("nan")


def best_seconds(fn, repeats: int) -> float:
  """The fewest seconds of ``repeats`` calls of ``fn()`` (each waited for)."""
  times = []
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def best_per_row(fn, rows: int, groups: int):
  """``([fn(i) for i in range(rows)], seconds)``: the calls made in ``groups`` consecutive groups of rows (each
  waited for), and the fewest seconds per row of a group."""
  out, best = [], float("inf")
  bounds = np.linspace(0, rows, max(1, min(groups, rows)) + 1).astype(int)
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    start = time.perf_counter()
    part = [fn(i) for i in range(lo, hi)]
    jax.block_until_ready(part)
    best = min(best, (time.perf_counter() - start) / (hi - lo))
    out += part
  return out, best


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--proj_dim", type=int, default=2048)
  p.add_argument("--chunk_size", type=int, default=None)
  p.add_argument("--block_size", type=int, default=512)
  p.add_argument("--projection_mib", type=float, default=1024)
  p.add_argument("--loop_rows", type=int, default=256)
  p.add_argument("--loop_feature_rows", type=int, default=96)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  load0 = os.getloadavg()[0]
  ds = data.load_dataset("mnist1d", seed=0)
  model, params, state = model_lib.init(models.get_model("mlp", ds.num_classes, features=(256, 256)),
                                        jax.random.key(0), ds.train.x[:1])
  params, state, _ = train.fit(model, params, state, ds.train, train_config(epochs=2), rng=jax.random.key(1))
  x, y = ds.train.x, ds.train.y
  n = int(y.shape[0])
  num_params = model_lib.num_params(params)
  opts = dict(proj_dim=a.proj_dim, chunk_size=a.chunk_size, block_size=a.block_size, projection_mib=a.projection_mib)

  start = time.perf_counter()
  feats = attribution.featurize(model, params, state, x, y, **opts)
  jax.block_until_ready(feats)
  cold = time.perf_counter() - start
  warm = best_seconds(lambda: attribution.featurize(model, params, state, x, y, **opts), a.repeats)
  rss = peak_rss_gib()
  chunk = trak.chunk_rows(n, num_params, a.chunk_size)
  key = jax.random.fold_in(jax.random.key(0), 0)
  mem = trak._featurize.lower(model, params, state, x, y, key, output=trak.margin, proj_dim=a.proj_dim,  # pylint: disable=protected-access
                              projection="rademacher", block_size=a.block_size, chunk=chunk,
                              projection_mib=a.projection_mib).compile()
  mem = mem.memory_analysis()
  plan = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2 ** 30

  flat, grads_fn = trak._output_grads_fn(model, params, state, trak.margin)  # pylint: disable=protected-access
  vmapped = jax.jit(lambda f, xc, yc: grads_fn(f, xc, yc))
  jax.block_until_ready(vmapped(flat, x[:chunk], y[:chunk]))
  vmapped_seconds = best_seconds(lambda: [vmapped(flat, x[s:s + chunk], y[s:s + chunk])
                                          for s in range(0, n - chunk + 1, chunk)], a.repeats)
  vmapped_seconds *= n / (chunk * (n // chunk))

  _, unravel = jax.flatten_util.ravel_pytree(params)
  grad_one = jax.jit(jax.grad(lambda f, xi, yi: trak.margin(model.apply(unravel(f), state, xi[None],
                                                                        train=False)[0], yi[None])[0]))
  rows = min(a.loop_rows, n)
  jax.block_until_ready(grad_one(flat, x[0], y[0]))  # warm-up: the loop is timed without compilation
  out, per_row = best_per_row(lambda i: grad_one(flat, x[i], y[i]), rows, a.repeats)
  looped = jnp.stack(out)
  loop_seconds = per_row * n
  np.testing.assert_allclose(np.asarray(looped[:chunk]), np.asarray(vmapped(flat, x[:chunk], y[:chunk]))[:rows],
                             rtol=1e-4, atol=1e-6)
  del looped, out

  # the per-example loop of features: each row's gradient, then its own projection by the same R, materialised
  # once beforehand (not timed): a matrix-vector product per row where featurize multiplies matrices
  bs, nblocks = trak._blocks(a.proj_dim, a.block_size)  # pylint: disable=protected-access
  r = jnp.concatenate([trak._draw("rademacher")(jax.random.fold_in(key, b), (num_params, bs))  # pylint: disable=protected-access
                       for b in range(nblocks)], axis=1)[:, :a.proj_dim]
  proj_one = jax.jit(lambda g, r: (g / jnp.sqrt(jnp.float32(num_params))) @ r)
  jax.block_until_ready(proj_one(grad_one(flat, x[0], y[0]), r))
  feat_rows = min(a.loop_feature_rows, n)
  phis, per_row = best_per_row(lambda i: proj_one(grad_one(flat, x[i], y[i]), r), feat_rows, a.repeats)
  phis = jnp.stack(phis)
  loop_feature_seconds = per_row * n
  np.testing.assert_allclose(np.asarray(phis), np.asarray(feats.phi[:feat_rows]), rtol=1e-3, atol=1e-5)

  device = f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)"
  print(f"{n} MNIST-1D rows, MLP {num_params:,} params, k={a.proj_dim}, chunks of {chunk} rows, projection blocks "
        f"of {a.block_size} columns; {device}, load avg {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end; warm times: best of {a.repeats}")
  print("| what | way | seconds | rows/s | ratio |")
  print("|---|---|---|---|---|")
  print(f"| per-example gradients | Python loop of jax.grad (timed on {rows} rows, x{n / rows:.1f}) | "
        f"{loop_seconds:.1f} | {n / loop_seconds:.0f} | 1.0x |")
  print(f"| per-example gradients | vmapped, {chunk}-row chunks (warm) | {vmapped_seconds:.2f} | "
        f"{n / vmapped_seconds:.0f} | {loop_seconds / vmapped_seconds:.1f}x |")
  print(f"| TRAK features (k={a.proj_dim}) | Python loop: jax.grad then its projection, per row (timed on "
        f"{feat_rows} rows, x{n / feat_rows:.1f}) | {loop_feature_seconds:.1f} | {n / loop_feature_seconds:.0f} | 1.0x |")
  print(f"| TRAK features (k={a.proj_dim}) | featurize, first call (with compilation) | {cold:.1f} | "
        f"{n / cold:.0f} | {loop_feature_seconds / cold:.1f}x |")
  print(f"| TRAK features (k={a.proj_dim}) | featurize, warm | {warm:.1f} | {n / warm:.0f} | "
        f"{loop_feature_seconds / warm:.1f}x |")
  print(f"\nmemory: XLA plan of the featurize program {plan:.2f} GiB (arguments + outputs + temporaries); "
        f"process peak RSS after featurizing {rss:.2f} GiB")


if __name__ == "__main__":
  main()
