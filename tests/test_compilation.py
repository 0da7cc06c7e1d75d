"""Compile once: learning rates and a method's main coefficient are arguments of the compiled programs, so runs
that differ only in them load every program from the persistent compilation cache (conftest's session cache)."""
import os

import jax
import numpy as np
import pytest

from tests import method_checks
from unlearn_jax import compilation
from unlearn_jax import config as config_lib
from unlearn_jax import model as model_lib
from unlearn_jax import models
from unlearn_jax import sweep
from unlearn_jax import train
from unlearn_jax import unlearning


@pytest.fixture(autouse=True)
def write_every_program():
  """Every program is written to the cache (conftest skips those compiling in under 0.2 s)."""
  before = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


def _tiny():
  model, params, state, splits = method_checks.digits_setup()
  return model, params, state, splits.forget, splits.retain


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name,first,second", [
    ("salun", dict(lr=0.01), dict(lr=0.03)),                 # the learning rate
    ("neggrad_plus", dict(beta=0.9), dict(beta=0.7, lr=0.02)),  # the main coefficient, and the learning rate
])
def test_a_run_with_another_learning_rate_or_coefficient_compiles_nothing(name, first, second):
  model, params, state, forget, retain = _tiny()
  run = lambda **kw: getattr(unlearning, name)(model, params, state, forget, retain, rng=jax.random.key(0),
                                               epochs=1, batch_size=128, **kw)[0]
  a = run(**first)
  with compilation.count() as compiled:
    b = run(**second)
  assert compiled.requests > 0 and compiled.misses == 0, compiled
  assert _changed(a, b)  # the new value was used


@pytest.mark.parametrize("name,first,second", [
    ("npo", dict(lr=0.01), dict(lr=0.03)),                  # the learning rate (in AdamW's state)
    ("graddiff", dict(alpha=1.0), dict(alpha=0.5, lr=0.02)),  # the main coefficient (`COEFS`), and the lr
])
def test_a_language_model_run_with_another_lr_or_coefficient_compiles_nothing(name, first, second):
  from tests import test_language_objectives as lm_tests  # pylint: disable=g-import-not-at-top
  from unlearn_jax.unlearning import language as lmu  # pylint: disable=g-import-not-at-top
  params = lm_tests.init_params(0)
  forget, retain = lm_tests.qa_rows(8, 4, range(5, 10)), lm_tests.qa_rows(8, 5, range(10, 16))
  run = lambda **kw: getattr(lmu, name)(lm_tests.LM, params, forget, retain, rng=jax.random.key(0), epochs=1,
                                        batch_size=4, warmup_epochs=0.0, **kw)[0]
  a = run(**first)
  with compilation.count() as compiled:
    b = run(**second)
  assert compiled.requests > 0 and compiled.misses == 0, compiled
  assert _changed(a, b)


def test_every_point_of_a_sequential_sweep_reuses_the_programs():
  model, params, state, forget, retain = _tiny()
  kw = dict(options=dict(epochs=1, msteps=1, batch_size=128, forget_batch_size=64), rng=jax.random.key(0))
  sweep.sweep_sequential("scrub", model, params, state, forget, retain, lrs=(1e-3, 2e-3), **kw)
  with compilation.count() as compiled:
    out, _, settings, _ = sweep.sweep_sequential("scrub", model, params, state, forget, retain, lrs=(4e-3, 8e-3),
                                                 **kw)
  assert compiled.requests > 0 and compiled.misses == 0, compiled
  assert [s["lr"] for s in settings] == [4e-3, 8e-3] and _changed(sweep.grid_point(out, 0), sweep.grid_point(out, 1))


def test_training_with_another_learning_rate_compiles_nothing():
  model, params, state, forget, _ = _tiny()
  fit = lambda lr: train.fit(model, params, state, forget, config_lib.train_config(epochs=1, lr=lr, batch_size=64),
                             rng=jax.random.key(0))[0]
  a = fit(0.1)
  with compilation.count() as compiled:
    b = fit(0.05)
  assert compiled.requests > 0 and compiled.misses == 0, compiled
  assert _changed(a, b)


def test_a_second_run_traces_no_shuffle_and_a_second_init_compiles_nothing():
  """In one process, the shuffle program (`train.epoch_batches`, memoised) and a Linen module's init program (one per
  equal module) are traced once: a second run reuses them from the in-memory jit cache, not only from disk."""
  model, params, state, forget, retain = _tiny()
  assert train.epoch_batches(64) is train.epoch_batches(np.int64(64), None) is train.epoch_batches(64, mesh=None)
  assert train.epoch_batches(64) is not train.epoch_batches(32)
  run = lambda: unlearning.salun(model, params, state, forget, retain, rng=jax.random.key(0), epochs=1,
                                 batch_size=128)[0]
  a = run()
  with compilation.count() as compiled:
    b = run()
  assert compiled.traced["step"] == 1 and "prepare" not in compiled.traced, compiled  # the step is traced again
  jax.tree.map(np.testing.assert_array_equal, a, b)
  x = np.zeros((1, 8, 8, 1), np.float32)
  one = model_lib.init(models.get_model("mlp", 10, features=(17,)), jax.random.key(0), x)[1]
  with compilation.count() as again:  # an equal module, another key
    two = model_lib.init(models.get_model("mlp", 10, features=(17,)), jax.random.key(1), x)[1]
  assert again.requests == 0 and not again.traced, again
  assert _changed(one, two)  # the key was an argument of the shared program


def test_enable_cache_default_override_and_off(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "session"))
  assert compilation.default_dir() == str(tmp_path / "session")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation.default_dir() == os.path.join(str(tmp_path), "unlearn_jax", "xla")
  before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
  try:
    assert compilation.enable_cache("off") is None and not jax.config.jax_enable_compilation_cache
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
      compilation.enable_cache(str(tmp_path / "file"))
  finally:
    jax.config.update("jax_enable_compilation_cache", before[0])
    jax.config.update("jax_compilation_cache_dir", before[1])
