"""Settings of the test session: the tests' tiny configs spend most of their time in XLA:CPU compilation.

* XLA compiles with most optimisations off (``JAX_DISABLE_MOST_OPTIMIZATIONS=1``: backend optimisation level 0 and
  LLVM's expensive passes skipped), except for the tests of `OPTIMISED_FILES`, which compile at level 1 (below).
  On tiny configs a program runs a few steps, so compiling it faster wins: the whole suite in one process, level 0
  against level 1 for every file, both at once, one pinned to each core (2026-12-08, 2-core AMD EPYC): 593.5 s
  against 722.9 s; every file faster (test_eight_devices 68.8 s against 106.6 s, test_diffusion 20.8 against 41.4,
  test_train 19.9 against 30.6) but test_lmc_study, which trains CIFAR ResNet-20s for epochs: 105.6 s against 30.7 s.
  Kept if the variable is already set; the subprocesses the tests start inherit it.
* XLA:CPU compiles at backend optimisation level 1 instead of 2 where optimisations are on: the same HLO programs,
  compiled faster, which wins on 8x8 digits and a few steps (``tests/test_run.py``: 59 s → 38 s with the cache
  below). A level already given in ``XLA_FLAGS`` is kept.
* XLA:CPU's fusion emitters are off (``--xla_cpu_use_fusion_emitters=false``: fusions are emitted by the older
  loop emitter, which compiles faster): 98-100 s → 78-80 s wall for test_unlearning, test_models, test_gpt,
  test_diffusion_study and test_language_objectives under ``-n 2``, measured both ways round (2026-12-04). Kept
  unless ``XLA_FLAGS`` already sets it.
* XLA:CPU emits each program as one LLVM module (``--xla_cpu_parallel_codegen_split_count=1``) instead of splitting it
  into parts compiled on a thread pool: under ``-n 2`` both cores are already busy with a worker each, so the split
  only adds per-part work. Two single-process runs of test_unlearning, test_models and test_language_objectives at
  the same time, one pinned to each core, with and without the flag, sides swapped (2026-12-07, 2-core AMD EPYC):
  113.6 s against 128.6 s and 95.2 s against 107.6 s (user CPU 107.0 against 121.5 and 91.1 against 102.4).
  ``--xla_llvm_disable_expensive_passes`` on top of it measured equal (98.3 against 95.7, 107.0 against 107.0) and
  is not set. Kept unless ``XLA_FLAGS`` already sets it.
* One persistent compilation cache per session (``JAX_COMPILATION_CACHE_DIR``, a fresh temporary directory unless
  one is set), shared by both pytest-xdist workers and every subprocess the tests start (they inherit the
  environment), so a program compiled by one test is loaded by the next. It starts empty, so a session measures
  from scratch, and it is removed at the end. Its keys include the compile options, so a program compiled at one
  optimisation level is never loaded at the other.

All are environment variables set before JAX is imported; the library itself sets none of them.

One more setting is the test processes' own: Python's cyclic garbage collector runs less often
(``gc.set_threshold(50_000, 20, 1000)`` instead of ``(700, 10, 10)``), and what collection imported is frozen out of
its scans (``gc.freeze``). Tracing and lowering allocate millions of short-lived objects, so with the default
thresholds a worker spent ~5 s of every two minutes in about 3,000 collections, 17 of them over the whole heap. Paired
runs (2026-12-07, 2-core AMD EPYC, both at once, one pinned to each core): 117.5 s against 111.5 s (test_unlearning,
test_models, test_language_objectives, test_merging) and 124.2 s against 120.8 s (test_diffusion, test_lmc_study,
test_gpt, test_run), the collector's own time 5.2 s against 1.5 s and 5.3 s against 2.3 s.
"""
from __future__ import annotations

import gc
import os
import shutil
import tempfile

import pytest

from tests import subprocesses

FAST_COMPILE_FLAGS = {"xla_backend_optimization_level": "--xla_backend_optimization_level=1",
                      "xla_cpu_use_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
                      "xla_cpu_parallel_codegen_split_count": "--xla_cpu_parallel_codegen_split_count=1"}
_OWNED_CACHE: list[str] = []


def _configure_environment() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  missing = [flag for name, flag in FAST_COMPILE_FLAGS.items() if name not in flags]
  os.environ["XLA_FLAGS"] = " ".join((flags, *missing)).strip()
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the xdist controller creates it; workers inherit it
    _OWNED_CACHE.append(tempfile.mkdtemp(prefix="unlearn_jax_test_xla_cache_"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWNED_CACHE[0]
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


_configure_environment()
gc.set_threshold(*subprocesses.GC_THRESHOLD)

# The files whose tests compile with XLA's optimisations on (level 1) when the session has most of them off:
# test_lmc_study trains CIFAR ResNet-20s for whole epochs (3.4x slower at level 0), and test_permutation checks a
# float32 sum of squares against NumPy's float64 norm to 1e-6, which the unoptimised reduction misses (4e-6).
OPTIMISED_FILES = ("test_lmc_study.py", "test_permutation.py")
_SESSION_DISABLES = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("y", "yes", "t", "true", "on", "1")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Before a test and its fixtures: the session's optimisation setting, or level 1 for `OPTIMISED_FILES`. On a
  change every in-memory compiled program is dropped, so no test runs a program compiled under the other setting
  (a file's tests all run in one worker, so this happens only where such a file starts or ends)."""
  import jax  # pylint: disable=import-outside-toplevel  (after _configure_environment)
  disable = _SESSION_DISABLES and item.path.name not in OPTIMISED_FILES
  if jax.config.read("jax_disable_most_optimizations") != disable:
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", disable)


def pytest_collection_finish(session):
  del session
  gc.collect()
  gc.freeze()  # the modules and objects of collection live to the end: not scanned again


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
  del config
  # Before pytest's own unconfigure collects garbage (a full collection over a worker's heap of traced programs took
  # about 3 s at the end of each worker): what the session left is not scanned.
  gc.freeze()
  for path in _OWNED_CACHE:
    shutil.rmtree(path, ignore_errors=True)


# The slowest files, slowest first, by the sum of their tests' durations in one single-process run of the suite
# (2026-12-08, a 2-core AMD EPYC, most optimisations off but for `OPTIMISED_FILES`): test_eight_devices.py 69 s (one
# 8-device process), then 31 to 8 s. With ``--no-loadscope-reorder`` (make test) pytest-xdist's ``--dist loadfile``
# hands out files in collection order as workers free up, so starting with the long ones keeps the two workers'
# totals even (longest-processing-time-first); by default it would order files by their number of tests and leave
# the few-but-slow ones for the end. The other files keep their order, and every file its tests' order.
SLOWEST_FILES = ("test_eight_devices.py", "test_lmc_study.py", "test_language_study.py", "test_models.py",
                 "test_resume.py", "test_diffusion_study.py", "test_diffusion.py", "test_train.py", "test_notebook.py",
                 "test_language_objectives.py", "test_unlearning.py", "test_run.py", "test_unlearning_oneshot.py",
                 "test_merging.py", "test_cli.py", "test_benchmark_study.py", "test_gpt.py",
                 "test_unlearning_teachers.py", "test_attribution.py", "test_population.py", "test_sweep.py",
                 "test_laf.py", "test_lm_benchmarks.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FILES)))
