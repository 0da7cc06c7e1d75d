"""Resuming interrupted training: `fit` from a progress checkpoint, and a run killed during Retrain."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tests import subprocesses
from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import model as model_lib
from unlearn_jax import train
from unlearn_jax.data.split import Split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.BatchNorm(use_running_average=not train)(x)  # non-trained state that must resume too
    return nn.Dense(3)(x)


def blobs(n=120, d=5, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  x = rng.normal(size=(3, d))[y] * 2 + rng.normal(size=(n, d))
  return Split(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.arange(n))


class Killed(Exception):
  pass


class KilledAfter(checkpoint.EpochCheckpoints):
  """Progress checkpoints that 'kill' the run right after saving epoch ``stop``."""

  def __init__(self, directory, stop, **kwargs):
    super().__init__(directory, **kwargs)
    self.stop = stop

  def save(self, epoch, tree, metadata):
    super().save(epoch, tree, metadata)
    if epoch == self.stop:
      raise Killed(epoch)


def setup_fit(epochs=6):
  split = blobs()
  model = model_lib.from_linen(MLP())
  _, params, state = model_lib.init(MLP(), jax.random.key(0), split.x[:1])
  # momentum + cosine schedule: the optimiser state and step count must be restored, not re-initialised
  cfg = config_lib.train_config(epochs=epochs, batch_size=32, lr=0.1, momentum=0.9, schedule="cosine")
  return model, params, state, split, cfg


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_resumed_at_epoch_k_equals_uninterrupted(tmp_path, stop=4, every=2):
  model, params, state, split, cfg = setup_fit()
  rng = jax.random.key(7)
  full_p, full_s, full_h = train.fit(model, params, state, split, cfg, rng=rng)

  with KilledAfter(tmp_path / "progress", stop, every=every) as progress:
    with pytest.raises(Killed):
      train.fit(model, params, state, split, cfg, rng=rng, checkpoints=progress)
  # epochs 2 and 4 were saved, only the newest kept
  assert sorted(os.listdir(tmp_path / "progress")) == [str(stop)]
  lines = []
  with checkpoint.EpochCheckpoints(tmp_path / "progress", every=every) as progress:
    p, s, h = train.fit(model, params, state, split, cfg, rng=rng, checkpoints=progress, log=lines.append)
  assert lines[0] == f"resumed after epoch {stop}/{cfg.epochs}"
  assert len(lines) == 1 + cfg.epochs - stop  # only the remaining epochs ran
  assert h["resumed_from_epoch"] == stop and h["loss"] == full_h["loss"] and h["accuracy"] == full_h["accuracy"]
  assert_trees_equal(p, full_p)
  assert_trees_equal(s, full_s)


def test_resume_rejects_a_progress_checkpoint_of_another_run(tmp_path):
  model, params, state, split, cfg = setup_fit()
  with KilledAfter(tmp_path / "progress", 1, every=1) as progress:
    with pytest.raises(Killed):
      train.fit(model, params, state, split, cfg, rng=jax.random.key(0), checkpoints=progress)
  cfg.epochs = 9  # another schedule length: its per-epoch keys differ
  with pytest.raises(ValueError, match="progress.*6 epochs"):
    train.fit(model, params, state, split, cfg, rng=jax.random.key(0),
              checkpoints=checkpoint.EpochCheckpoints(tmp_path / "progress"))
  cfg.epochs = 6
  cfg.momentum = 0.0  # no momentum trace: the optimiser state has another tree
  with pytest.raises(ValueError, match=r"progress.*opt_state"):
    train.fit(model, params, state, split, cfg, rng=jax.random.key(0),
              checkpoints=checkpoint.EpochCheckpoints(tmp_path / "progress"))


def _main(workdir, *overrides):
  cmd = subprocesses.main_command("configs/retrain.py", workdir, "--config.model.hidden=32,",
                                  "--config.train.epochs=2", "--config.retrain.epochs=25",
                                  "--config.retrain.checkpoint_min_seconds=0", *overrides)
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))


def _progress_steps(workdir) -> list[int]:
  cache = workdir / "cache"
  dirs = list(cache.glob("retrain-*/progress")) if cache.is_dir() else []
  return sorted(int(p.name) for d in dirs for p in d.iterdir() if p.name.isdigit())


def _finish(proc, timeout=300):
  _, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]


def test_run_killed_during_retrain_resumes_to_the_same_results(tmp_path):
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  proc = _main(killed)
  deadline = time.monotonic() + 240
  while not _progress_steps(killed) and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  steps = _progress_steps(killed)
  assert steps, "the run ended before Retrain wrote a progress checkpoint"
  assert not any(p.name.isdigit() for p in killed.glob("cache/retrain-*/*")), "killed after Retrain finished"
  assert not (killed / "results.json").exists()
  assert json.loads((killed / "run.json").read_text())["end_time"] is None  # the record of the killed run

  # the uninterrupted run, side by side with the resumed one; started only now, it loads the programs the killed
  # run compiled from the session's compilation cache instead of compiling them a second time alongside it
  reference = _main(clean)
  _finish(_main(killed))
  _finish(reference)
  info = json.loads((killed / "run.json").read_text())
  assert info["restored"] == {"Original": True, "Retrain": False}
  assert info["resumed"] == {"Retrain": steps[-1]} and 1 <= steps[-1] < 25
  assert not list(killed.glob("cache/*/progress"))  # removed once the final checkpoint exists
  got = json.loads((killed / "results.json").read_text())
  want = json.loads((clean / "results.json").read_text())
  assert list(got) == list(want) == ["Retrain", "Original"]
  for row in want:
    assert set(got[row]) == set(want[row])
    for key, value in want[row].items():
      if key != "RTE":  # wall time
        assert got[row][key] == pytest.approx(value, abs=1e-6), (row, key)


def test_a_flipped_byte_in_a_cached_and_a_progress_checkpoint_warns_once_each_and_rebuilds(tmp_path, monkeypatch,
                                                                                           caplog):
  from tests.test_checkpoint import flip_one_byte  # pylint: disable=g-import-not-at-top
  from unlearn_jax import run  # pylint: disable=g-import-not-at-top
  config = config_lib.method_experiment("retrain")
  config.model.hidden = (16,)
  for section in (config.train, config.retrain):
    section.update(epochs=2, checkpoint_every=1, checkpoint_min_seconds=0.0)
  exp = run.setup(config)
  work = tmp_path / "work"
  clean = [run.original(exp, work)[:2], run.retrain(exp, tmp_path / "clean")[:2]]
  (cache,) = work.glob("cache/original-*")
  flip_one_byte(cache)
  save = checkpoint.EpochCheckpoints.save

  def save_and_die(self, epoch, tree, metadata):  # Retrain killed right after its first progress checkpoint
    save(self, epoch, tree, metadata)
    raise Killed(epoch)

  monkeypatch.setattr(checkpoint.EpochCheckpoints, "save", save_and_die)
  with pytest.raises(Killed):
    run.retrain(exp, work)
  monkeypatch.undo()
  (progress,) = work.glob("cache/retrain-*/progress")
  flip_one_byte(progress / "1")

  caplog.clear()
  run.check_caches(exp, work)  # corrupt is not a mismatch: the run goes on
  got = [run.original(exp, work), run.retrain(exp, work)]
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 2, warnings
  assert warnings[0].startswith(f"checkpoint {cache}") and "building it again" in warnings[0]
  assert warnings[1].startswith(f"checkpoint {progress}") and "training from epoch 0" in warnings[1]
  assert not got[0][3] and not got[1][3]  # rebuilt, not restored
  for (params, state, *_), want in zip(got, clean):
    assert_trees_equal((params, state), want)
