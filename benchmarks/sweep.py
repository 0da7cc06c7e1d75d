r"""Times a vmapped sweep of 8 learning rates against 8 sequential runs of the same unlearning loop, in one run.

  PYTHONPATH=. python benchmarks/sweep.py [--method=salun] [--dataset=mnist1d] [--epochs=10] [--points=8]

Both sides include compilation (a researcher pays it once per sweep); the sequential side compiles each run's
epoch functions anew, as a loop over a method's calls does. Prints one markdown row.
"""
import argparse
import os
import time

import jax
import numpy as np

from unlearn_jax import data, model as model_lib, models, sweep, train, unlearning
from unlearn_jax.config import train_config


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--method", default="salun")
  p.add_argument("--dataset", default="mnist1d")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--points", type=int, default=8)
  a = p.parse_args()
  ds = data.load_dataset(a.dataset, seed=0)
  splits = data.make_unlearning_splits(ds, kind="random", fraction=0.1, seed=0)
  model, params, state = model_lib.init(models.get_model("mlp", ds.num_classes, features=(256, 256)),
                                        jax.random.key(0), ds.train.x[:1])
  params, state, _ = train.fit(model, params, state, ds.train, train_config(epochs=5), rng=jax.random.key(1))
  lrs = tuple(float(x) for x in np.geomspace(1e-3, 1e-1, a.points))
  opts, rng = {"epochs": a.epochs}, jax.random.key(2)
  start = time.perf_counter()
  grid, _, _, _ = sweep.sweep_method(a.method, model, params, state, splits.forget, splits.retain, options=opts,
                                     lrs=lrs, rng=rng)
  jax.block_until_ready(grid)
  vmapped = time.perf_counter() - start
  method = unlearning.get_method(a.method)
  start = time.perf_counter()
  for lr in lrs:
    jax.block_until_ready(method(model, params, state, splits.forget, splits.retain, config={**opts, "lr": lr},
                                 rng=rng))
  sequential = time.perf_counter() - start
  print("| method | dataset | grid points | epochs | vmapped (s) | sequential (s) | ratio | device | load avg |")
  print("|---|---|---|---|---|---|---|---|---|")
  print(f"| {a.method} | {a.dataset} | {a.points} | {a.epochs} | {vmapped:.2f} | {sequential:.2f} | "
        f"{sequential / vmapped:.2f}x | {jax.devices()[0].device_kind} ({os.cpu_count()} cores) | "
        f"{os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
  main()
