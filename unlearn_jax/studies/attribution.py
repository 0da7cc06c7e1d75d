"""Attribution in the runs: the inputs DMM and oracle matching take from a run, built once and cached.

* ``dmm``: a population of ``method.num_models`` models, each trained with the Original's settings on a random
  ``method.alpha`` fraction of the training rows (`unlearn_jax.population`, one vmapped program), and their
  logits on every training row (`unlearn_jax.attribution.subsets`), cached under ``workdir/cache/subsets-<hash>``
  keyed by what determines them (seed, dataset, model, training settings, size, α) — not by the forget set, so
  every forget set, method setting and re-run of the same Original reuses it.
* ``oracle_matching``: the run's own Retrain (restored from its cache, or trained and cached).

Both are named in `unlearn_jax.run.METHOD_INPUTS`; `unlearn_jax.run.unlearn` builds them before the
method's clock starts and keeps their seconds apart (``exp.input_seconds``; for a cached population, the seconds
its training took when it was built).
"""
from __future__ import annotations

import pathlib
import time

import jax

from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import run as run_lib
from unlearn_jax.attribution import subsets


def check_alpha(alpha: float, key: str = "method.alpha") -> None:
  if not 0.0 < float(alpha) < 1.0:
    raise ValueError(f"{key}={alpha}: an α-subset fraction must be in (0, 1)")


def subset_population(exp: run_lib.Experiment, workdir, *, num_models: int, alpha: float, salt: int = 5,
                      key: str = "method"):
  """``(directory, seconds)``: the cached outputs of ``num_models`` α-subset models of ``exp``'s training set
  (trained and saved if absent); ``seconds`` is the time building them took."""
  check_alpha(alpha, f"{key}.alpha")
  if int(num_models) < 3:
    raise ValueError(f"{key}.num_models={num_models}: datamodels need at least 3 subset models")
  c = exp.config
  parts = (run_lib.CACHE_VERSION, c.seed, c.dataset, c.model, config_lib.training_fields(c.train), int(num_models),
           float(alpha), salt)
  directory = pathlib.Path(workdir) / "cache" / f"subsets-{checkpoint.config_hash(*parts)}"
  if checkpoint.exists(directory):
    return directory, float(subsets.load_outputs(directory)[1].get("seconds") or 0.0)
  from unlearn_jax import population  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  train = exp.dataset.train
  mask_rng, init_rng, fit_rng = jax.random.split(jax.random.fold_in(jax.random.key(c.seed), salt), 3)
  masks = population.subset_masks(train.size, int(num_models), float(alpha), mask_rng)
  module = run_lib.build_model(c, exp.dataset.num_classes)
  params, state = population.init(module, jax.random.split(init_rng, int(num_models)), train.x[:1])
  params, state, _ = population.fit(exp.model, params, state, train, c.train, rng=fit_rng, masks=masks,
                                    augment=exp.augment, desc="α-subset models")
  logits = subsets.population_logits(exp.model, params, state, train.x)
  seconds = time.perf_counter() - start
  subsets.save_outputs(directory, subsets.SubsetOutputs(masks, logits),
                       {"seconds": seconds, "num_models": int(num_models), "alpha": float(alpha)})
  return directory, seconds


def dmm_inputs(exp, workdir, params, state):
  """``({'attribution_dir': ...}, seconds)`` for ``dmm`` (see `subset_population`)."""
  del params, state
  m = exp.config.method
  directory, seconds = subset_population(exp, workdir, num_models=m.num_models, alpha=m.alpha)
  return {"attribution_dir": str(directory)}, seconds


def oracle_inputs(exp, workdir, params, state):
  """``({'oracle_dirs': (Retrain's checkpoint,)}, seconds)`` for ``oracle_matching``."""
  del params, state
  start = time.perf_counter()
  run_lib.retrain(exp, workdir)  # restored from the cache, or trained and cached
  return {"oracle_dirs": (str(run_lib.stage_dir(exp, workdir, "retrain")),)}, time.perf_counter() - start

