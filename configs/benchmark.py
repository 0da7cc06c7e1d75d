r"""The benchmark study: every unlearning method vs Retrain on the same splits, mean ± std over 3 seeds.

Command (2-core CPU, digits, MLP, 10% random forget, seeds 0,1,2; about 15 minutes from scratch):

  python -m experiments.main --config=configs/benchmark.py --workdir=workdir/benchmark

Writes results.json (mean and std per method), per_seed.json, results.md (the table, Retrain first, with
Avg. Gap) and gaps.png.

The tuned MNIST-1D study (every method, each with the reference code's defaults except the learning rate and its
main coefficient, chosen from 24 settings, 8 learning rates for SCRUB/bad teacher/boundary/LAF, by Avg. Gap on
seed 100's forget set, then reported on seeds 0, 1, 2; see `unlearn_jax.studies.sweep`):

  python -m experiments.main --config=configs/benchmark.py:mnist1d --workdir=workdir/benchmark_mnist1d
  python -m experiments.main --config=configs/benchmark.py:mnist1d_class --workdir=workdir/benchmark_mnist1d_class

(``:mnist1d,salun,ft`` for a subset.) Besides the table it writes settings.json (the chosen settings, also listed
under the table) and selection/<method>.md (every grid point). Per-method options: ``--config.benchmark.options.salun.lr=0.05``; a subset:
``--config=configs/benchmark.py:salun,rl,ft``. Each method runs with the digits options of its own
``configs/<method>.py`` (or, for methods without one, `ITERATIVE_DIGITS` below). Measured figures are in
benchmarks/RESULTS.md.
"""
import importlib

from unlearn_jax import config as config_lib
from unlearn_jax.studies import benchmark

# Learning rates tuned on digits (seed 0, 5 epochs) for the iterative methods without a config of their own.
ITERATIVE_DIGITS = {
    "ft": dict(lr=0.05),
    "ga": dict(lr=0.05),
    "neggrad_plus": dict(lr=0.05),
    "rl": dict(lr=0.05),
    "l1_sparse": dict(lr=0.05),
    "salun_soft": dict(lr=0.05),
}
WITH_CONFIG = ("salun", "ssd", "fisher", "influence", "scrub", "bad_teacher", "boundary_shrink",
               "boundary_expanding", "laf")
METHODS = ("ft", "ga", "neggrad_plus", "rl", "l1_sparse", "salun", "salun_soft") + WITH_CONFIG[1:]
# Presets that may lead the config argument: the tuned MNIST-1D study (every method's learning rate / coefficient
# chosen by `unlearn_jax.studies.sweep.select` on seed 100, reported on seeds 0, 1, 2) with a 10% random forget
# set, or with class 0 forgotten.
PRESETS = ("mnist1d", "mnist1d_class")
TUNED_METHODS = METHODS[:8] + ("lfssd",) + METHODS[8:] + ("dmm", "oracle_matching")


def digits_options(name: str) -> dict:
  """The digits options of a method: its config file's ``method`` section, or `ITERATIVE_DIGITS`."""
  if name in ITERATIVE_DIGITS:
    return ITERATIVE_DIGITS[name]
  method = importlib.import_module(f"configs.{name}").get_config().method.to_dict()
  method.pop("name")
  return method


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.experiment = "benchmark"
  tokens = tuple(arg.split(",")) if arg else ()
  preset = tokens[0] if tokens and tokens[0] in PRESETS else None
  methods = tokens[1 if preset else 0:] or (TUNED_METHODS if preset else METHODS)
  if preset is None:
    config.benchmark = benchmark.benchmark_section(methods, seeds=(0, 1, 2),
                                                   **{name: digits_options(name) for name in methods})
    return config
  config.dataset.name = "mnist1d"
  if preset == "mnist1d_class":
    config.forget.kind, config.forget.classes = "class", (0,)
  config.benchmark = benchmark.benchmark_section(methods, seeds=(0, 1, 2), tune=True, selection_seed=100)
  return config
