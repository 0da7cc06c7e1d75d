r"""The population study: every vectorisable unlearning method judged by populations of models (U-LiRA, KLoM, the
NeurIPS 2023 challenge score, Avg. Gap), against the Retrain-vs-Retrain noise floor.

Command (MNIST-1D, MLP 256-256, 32 Originals, 32 + 32 Retrains per forget kind, random 10% and class 0):

  python -m experiments.main --config=configs/population.py --workdir=workdir/population

Settings: each method's learning rate / coefficient is the tuned benchmark's choice, read from
``configs/settings/benchmark_mnist1d.json`` (random) and ``configs/settings/benchmark_mnist1d_class.json``
(class 0): verbatim copies of the ``settings.json`` that ``python -m experiments.main
--config=configs/benchmark.py:mnist1d --workdir=workdir/benchmark_mnist1d`` (and ``:mnist1d_class``) write, the
choices of `unlearn_jax.studies.sweep.select` on seed 100 (listed under the tuned tables of benchmarks/RESULTS.md;
the study's own selection re-chose exactly these for every vectorised method). Each file is schema-checked on load
(`unlearn_jax.studies.population.load_settings`). Another benchmark run's file:
``--config.population.settings.random=workdir/benchmark_mnist1d/settings.json``; ``--config.population.settings.random=''``
re-runs the selection here instead (seed 100, the same grids, about 17 minutes per kind on the loaded CPU; cached
in ``<workdir>/selection_<kind>/``).

Options: ``--config.population.size=8`` (models per population), ``--config.population.kinds='("random",)'``,
``--config.population.loop=steps`` (the CPU's per-step loop; the default here is the whole-epoch scan, which trains
MLP populations 1.8x faster per epoch, benchmarks/population.py). ``:dmm`` adds DMM and oracle matching (each member's
matching set and targets built in turn, the fine-tuning one program over the model axis; DMM's α-subset population
of 64 models is built once, cached, and its time reported apart; oracle matching's oracle for member i is member i
of the second Retrain population, independent of the Retrains that judge it). ``:tiny_test`` is the test's shrunken version.

Measured (benchmarks/RESULTS.md, "Population study"; the command above from scratch, one process, fresh
workdir and empty compilation cache): 6 min 39 s wall, 615 s CPU, peak RSS 6.3 GiB on a quiet 2-core AMD EPYC
(30 min 6 s on the same machine shared with other jobs at load average 7-14). Result: the floor (Retrain vs Retrain) has
U-LiRA accuracy 0.50 / 0.49 (random / class) and challenge score 0.18 / 0.20; for random forgetting FT, NegGrad+
and l1-sparse come closest (U-LiRA 0.67), while SalUn, SalUn-soft and RL, which lead on Avg. Gap, are told from
Retrain 77-81% of the time (the Original: 84%); class-wise every method is told from Retrain 88-100% of the time
although eight have an Avg. Gap under 1.5. With ``:dmm`` and the 500-step options of RESULTS (random): oracle matching
reaches the floor (U-LiRA 0.51), DMM has the lowest forget-set KLoM median of the other methods.

Methods: those of the tuned benchmark (`configs/benchmark.TUNED_METHODS`) that run over the model axis in one
program: every Plan and every one-shot method. Writes results.md, results.json and klom_<kind>.png; measured
figures and their reading are in benchmarks/RESULTS.md ("Population study").
"""
import pathlib

from configs import benchmark as benchmark_config
from unlearn_jax import config as config_lib
from unlearn_jax import sweep
from unlearn_jax.studies import population

METHODS = tuple(m for m in benchmark_config.TUNED_METHODS if sweep.kind(m) != "sequential")
# The tuned benchmark's chosen settings (its settings.json, copied verbatim; see the docstring).
SETTINGS = {kind: str(pathlib.Path(__file__).parent / "settings" / f"{name}.json")
            for kind, name in (("random", "benchmark_mnist1d"), ("class", "benchmark_mnist1d_class"))}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.experiment = "population"
  config.dataset.name = "mnist1d"
  if arg == "tiny_test":
    config.dataset.num_samples = 500
    config.model.hidden = (16,)
    for section in (config.train, config.retrain):
      section.update(epochs=2, batch_size=64)
    config.eval.batch_size = 256
    methods = ("salun", "ssd")
    config.population = population.population_section(
        methods, size=4, kinds=("random",), gap_members=1, member_batch=2, options={"salun": dict(epochs=2)},
        grids={"salun": dict(lrs=(0.05,), coefs=(0.5,)), "ssd": dict(coefs=(1.0, 10.0))})
    return config
  if arg not in (None, "", "dmm"):
    raise ValueError(f"configs/population.py: unknown argument {arg!r} (use dmm or tiny_test)")
  methods = METHODS + (population.INPUT_METHODS if arg == "dmm" else ())
  config.population = population.population_section(methods, settings=SETTINGS, loop="scan")
  return config
