"""Settings of the test session: the tests' tiny configs spend most of their time in XLA:CPU compilation.

* XLA:CPU compiles at backend optimisation level 1 instead of 2: the same HLO programs, compiled faster, which wins
  on 8x8 digits and a few steps (``tests/test_run.py``: 59 s → 38 s with the cache below). Level 0 compiles no
  faster and runs a ResNet-20 epoch 4x slower. A level already given in ``XLA_FLAGS`` is kept.
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
  from scratch, and it is removed at the end.

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


_configure_environment()
gc.set_threshold(*subprocesses.GC_THRESHOLD)


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


# The slowest files, slowest first, by the sum of their tests' durations in one `make test` run (pytest
# --durations=0, 2026-12-07, a 2-core AMD EPYC): test_eight_devices.py 162 s (one 8-device process), then 60 to 19 s.
# With ``--no-loadscope-reorder`` (make test) pytest-xdist's ``--dist loadfile`` hands out files in collection order
# as workers free up, so starting with the long ones keeps the two workers' totals even
# (longest-processing-time-first); by default it would order files by their number of tests and leave the
# few-but-slow ones for the end. The other files keep their order, and every file its tests' order.
SLOWEST_FILES = ("test_eight_devices.py", "test_diffusion_study.py", "test_diffusion.py", "test_lmc_study.py",
                 "test_language_study.py", "test_train.py", "test_language_objectives.py", "test_unlearning.py",
                 "test_merging.py", "test_notebook.py", "test_run.py", "test_models.py", "test_unlearning_oneshot.py",
                 "test_resume.py", "test_gpt.py", "test_merge_datasets_study.py", "test_lm_benchmarks.py",
                 "test_population.py", "test_unlearning_teachers.py", "test_laf.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FILES)))
