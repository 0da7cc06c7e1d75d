r"""Times N MNIST-1D MLPs trained as one population against N sequential `train.fit` runs of the same settings.

  PYTHONPATH=. python benchmarks/population.py [--models=32] [--epochs=30] [--loop=scan|steps] [--dataset=mnist1d]
      [--sequential=K]   # time only K members alone and scale to --models (N = 256 in benchmarks/gpu.sh)

One process, both sides including compilation (a researcher pays it once per population; the sequential side
compiles each run's epoch programs anew, as a loop over `train.fit` calls does). Member ``i`` and sequential run
``i`` use the same initialisation key, training key and rows, so they compute the same model (checked on the
first member). The sequential side runs first; peak memory is the process's maximum resident set size after each
side (``ru_maxrss``: the population's figure includes the sequential side's peak, so its increase over it is what
the population added), next to `population.plan_memory`'s estimate. Prints one markdown row.
"""
import argparse
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import data, model as model_lib, models, population, train
from unlearn_jax.config import train_config


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--models", type=int, default=32)
  p.add_argument("--epochs", type=int, default=30)
  p.add_argument("--loop", default=None, choices=(None, "scan", "steps"))
  p.add_argument("--dataset", default="mnist1d")
  p.add_argument("--sequential", type=int, default=None,
                 help="train only this many members alone and scale their time to --models (large populations)")
  a = p.parse_args()
  ds = data.load_dataset(a.dataset, seed=0)
  module = models.get_model("mlp", ds.num_classes, features=(256, 256))
  model = model_lib.from_linen(module)
  cfg = train_config(epochs=a.epochs)  # the study's Original: SGD 0.05, nesterov, cosine, batch 64
  keys = population.keys(jax.random.key(0), a.models)
  init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  base_rss = _rss_mib()

  start = time.perf_counter()
  alone = []
  timed = min(a.sequential or a.models, a.models)
  for i in range(timed):
    _, params, state = model_lib.init(module, init_keys[i], ds.train.x[:1])
    params, state, _ = train.fit(model, params, state, ds.train, cfg, rng=train_keys[i], loop=a.loop)
    jax.block_until_ready(params)
    alone.append(params if i == 0 else None)
  sequential = (time.perf_counter() - start) * a.models / timed
  seq_rss = _rss_mib()

  start = time.perf_counter()
  params, state = population.init(module, init_keys, ds.train.x[:1])
  plan = population.plan_memory(params, state, ds.train, cfg, model=model)
  params, state, _ = population.fit(model, params, state, ds.train, cfg, rng=train_keys, loop=a.loop)
  jax.block_until_ready(params)
  vmapped = time.perf_counter() - start
  pop_rss = _rss_mib()
  diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree.leaves(alone[0]), jax.tree.leaves(population.member(params, 0))))

  print("| models | epochs | loop | population (s) | sequential (s) | ratio | member 0 max diff | peak RSS after "
        "sequential / population (MiB) | plan (MiB) | device | load avg |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  scaled = f" ({timed} run, scaled)" if timed < a.models else ""
  print(f"| {a.models} | {a.epochs} | {a.loop or train.default_loop()} | {vmapped:.1f} | {sequential:.1f}{scaled} | "
        f"{sequential / vmapped:.2f}x | {diff:.1e} | {seq_rss - base_rss:.0f} / {pop_rss - base_rss:.0f} "
        f"(process base {base_rss:.0f}) | {plan.per_device / 2**20:.1f} | {jax.devices()[0].device_kind} "
        f"({os.cpu_count()} cores) | {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
  main()
