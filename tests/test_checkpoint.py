"""Checkpoints: round trip, config-keyed cache, mismatches, and saves killed half-way."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from unlearn_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = {"Dense_0": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
STATE = {"batch_stats": {"bn": {"mean": jnp.full((3,), 0.5), "var": jnp.ones(3)}}}


def assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_round_trip_with_abstract_target(tmp_path):
  checkpoint.save(tmp_path / "ck", PARAMS, STATE, {"seconds": 1.5, "history": {"loss": [2.0, 1.0]}})
  like = jax.eval_shape(lambda: (PARAMS, STATE))
  params, state, meta = checkpoint.restore(tmp_path / "ck", like)
  assert_tree_equal(params, PARAMS)
  assert_tree_equal(state, STATE)
  assert meta == {"seconds": 1.5, "history": {"loss": [2.0, 1.0]}}


def test_missing_and_mismatched(tmp_path):
  assert checkpoint.restore(tmp_path / "nothing", (PARAMS, STATE)) is None
  checkpoint.save(tmp_path / "ck", PARAMS, STATE)
  wrong = {"Dense_0": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}, "Dense_1": {"bias": jnp.zeros(1)}}
  with pytest.raises(ValueError, match="does not match"):
    checkpoint.restore(tmp_path / "ck", (wrong, STATE))


def test_config_hash_is_order_free_and_value_sensitive():
  a = ml_collections.ConfigDict({"lr": 0.1, "epochs": 3})
  b = ml_collections.ConfigDict({"epochs": 3, "lr": 0.1})
  assert checkpoint.config_hash(a, 1) == checkpoint.config_hash(b, 1)
  assert checkpoint.config_hash(a, 1) != checkpoint.config_hash(a, 2)
  b.lr = 0.2
  assert checkpoint.config_hash(a) != checkpoint.config_hash(b)


def test_cached_builds_once(tmp_path):
  calls = []

  def build():
    calls.append(1)
    return PARAMS, STATE, {"n": len(calls)}

  *_, restored = checkpoint.cached(tmp_path / "c", build, like=(PARAMS, STATE))
  assert not restored
  params, _, meta, restored = checkpoint.cached(tmp_path / "c", build, like=(PARAMS, STATE))
  assert restored and calls == [1] and meta == {"n": 1}
  assert_tree_equal(params, PARAMS)


def test_cached_places_fresh_results_as_restored_ones_so_jit_compiles_once(tmp_path):
  """Fresh (uncommitted) and restored (committed) arrays would lower two programs; `cached` gives both one placement."""
  fresh = jax.tree.map(lambda x: x + 0, PARAMS)  # uncommitted, as a training loop's output on one device
  step = jax.jit(lambda p: jax.tree.map(lambda x: 2 * x, p))
  for i in range(2):  # i = 0: built now; i = 1: restored
    params, _, _, restored = checkpoint.cached(tmp_path / "c", lambda: (fresh, {}, {}), like=(PARAMS, {}))
    assert restored == bool(i)
    assert_tree_equal(step(params), jax.tree.map(lambda x: 2 * x, PARAMS))
  assert step._cache_size() == 1, "fresh and restored results compiled different programs"


KILLED_SAVE = textwrap.dedent("""
    import sys, jax.numpy as jnp
    from unlearn_jax import checkpoint
    big = {"w": jnp.ones((64, 1024, 1024), jnp.float32)}  # 256 MiB: the save takes a while
    print("saving", flush=True)
    checkpoint.save(sys.argv[1], big, {})
    print("saved", flush=True)
""")


def test_save_killed_midway_leaves_no_valid_checkpoint(tmp_path):
  directory = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(directory)], stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "saving"
  time.sleep(0.3)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  like = {"w": jax.ShapeDtypeStruct((64, 1024, 1024), jnp.float32)}
  restored = checkpoint.restore(directory, (like, {}))
  # Either nothing restores, or (if the save had already committed) the whole array does.
  if restored is not None:
    np.testing.assert_array_equal(np.asarray(restored[0]["w"][::16, ::256, ::256]), 1.0)
  else:
    assert not checkpoint.exists(directory)


def test_save_overwrites_and_restores_onto_the_default_device(tmp_path):
  checkpoint.save(tmp_path / "ck", PARAMS, STATE, {"v": 1})
  doubled = jax.tree.map(lambda x: 2 * x, PARAMS)
  checkpoint.save(tmp_path / "ck", doubled, STATE, {"v": 2})
  params, _, meta = checkpoint.restore(tmp_path / "ck", jax.eval_shape(lambda: (PARAMS, STATE)))
  assert meta == {"v": 2}
  assert_tree_equal(params, doubled)
  fresh = jnp.zeros(3)
  assert all(leaf.sharding == fresh.sharding for leaf in jax.tree.leaves(params))


def test_mismatch_names_the_directory_and_first_leaf_before_reading(tmp_path):
  checkpoint.save(tmp_path / "ck", PARAMS, STATE)
  wider = {"Dense_0": {"kernel": jnp.zeros((2, 4)), "bias": jnp.zeros(3)}}
  with pytest.raises(ValueError, match=rf"{tmp_path / 'ck'}.*params/Dense_0/kernel: stored shape \(2, 3\), "
                                       rf"expected \(2, 4\)"):
    checkpoint.restore(tmp_path / "ck", (wider, STATE))
  missing = {"Dense_0": {"kernel": jnp.zeros((2, 3))}}
  with pytest.raises(ValueError, match="params/Dense_0/bias: in the checkpoint but not in the model"):
    checkpoint.check(tmp_path / "ck", (missing, STATE))
  more = {"batch_stats": {"bn": {**STATE["batch_stats"]["bn"], "count": jnp.ones(())}}}
  with pytest.raises(ValueError, match="state/batch_stats/bn/count: missing from the checkpoint"):
    checkpoint.check(tmp_path / "ck", (PARAMS, more))
  halves = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
  with pytest.raises(ValueError, match="params/Dense_0/bias: stored dtype float32, expected bfloat16"):
    checkpoint.check(tmp_path / "ck", (halves, STATE))
  with pytest.raises(ValueError, match="no complete checkpoint"):
    checkpoint.check(tmp_path / "absent", (PARAMS, STATE))
  checkpoint.check(tmp_path / "ck", jax.eval_shape(lambda: (PARAMS, STATE)))  # a match passes


def test_epoch_checkpoints_schedule_keep_and_round_trip(tmp_path):
  tree = {"params": PARAMS, "opt_state": (jnp.zeros((), jnp.int32), {"m": jnp.ones(3)})}
  ck = checkpoint.EpochCheckpoints(tmp_path / "p", every=2, keep=2)
  assert ck.latest(tree, 5) is None and not (tmp_path / "p").exists()  # nothing is created before a save
  assert [e for e in range(1, 6) if ck.due(e, 5)] == [2, 4]  # the last epoch is left to the final checkpoint
  for epoch in (2, 4):
    bumped = jax.tree.map(lambda x: x + epoch, tree)
    ck.save(epoch, bumped, {"epoch": epoch, "epochs": 6, "history": {"loss": [0.5] * epoch}})
  ck.save(6, tree, {"epoch": 6, "epochs": 6})
  assert sorted(int(p) for p in os.listdir(tmp_path / "p")) == [4, 6]  # keep=2
  ck.close()
  with pytest.raises(ValueError, match="'epoch'=3"):
    ck.save(3, tree, {"epochs": 6})
  ck.remove()
  assert not (tmp_path / "p").exists()

  ck = checkpoint.EpochCheckpoints(tmp_path / "q", every=1)
  ck.save(4, jax.tree.map(lambda x: x + 4, tree), {"epoch": 4, "epochs": 6, "history": {"loss": [0.25]}})
  ck.close()
  epoch, restored, meta = checkpoint.EpochCheckpoints(tmp_path / "q").latest(jax.eval_shape(lambda: tree), 6)
  assert epoch == 4 and meta["history"] == {"loss": [0.25]}
  assert_tree_equal(restored, jax.tree.map(lambda x: x + 4, tree))  # a tuple stays a tuple
  with pytest.raises(ValueError, match="6 epochs, this one has 7"):
    checkpoint.EpochCheckpoints(tmp_path / "q").latest(tree, 7)
  with pytest.raises(ValueError, match=r"q.*opt_state/1/m: stored shape \(3,\), expected \(4,\)"):
    checkpoint.EpochCheckpoints(tmp_path / "q").latest({**tree, "opt_state": (tree["opt_state"][0],
                                                                              {"m": jnp.ones(4)})}, 6)


def test_epoch_checkpoints_min_seconds_and_bad_arguments(tmp_path, monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
  ck = checkpoint.EpochCheckpoints(tmp_path / "p", every=1, min_seconds=10.0)
  assert not ck.due(1, 9)  # 0 s since the start
  clock[0] += 10.0
  assert ck.due(2, 9)
  ck.save(2, PARAMS, {"epoch": 2, "epochs": 9})
  clock[0] += 9.0
  assert not ck.due(3, 9)  # 9 s since the save
  clock[0] += 1.0
  assert ck.due(4, 9) and not checkpoint.EpochCheckpoints(tmp_path / "p", every=0).due(4, 9)
  ck.close()
  for kwargs in ({"every": -1}, {"min_seconds": -1.0}, {"keep": 0}):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
      checkpoint.EpochCheckpoints(tmp_path / "p", **kwargs)


def flip_one_byte(directory) -> list[str]:
  """Flips one bit in the middle of each array data file (``.../d/<hash>``) under ``directory`` (a checkpoint or
  one step); which of them Orbax reads depends on its size, so each gets one."""
  files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names if os.path.basename(d) == "d"]
  assert files, directory
  for path in files:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    with open(path, "wb") as f:
      f.write(bytes(data))
  return files


def test_digest_finds_a_flipped_bit_that_orbax_reads_without_complaint(tmp_path):
  params = {"w": np.arange(600.0, dtype=np.float32).reshape(20, 30), "b": jnp.ones(3, jnp.bfloat16)}
  checkpoint.save(tmp_path / "ck", params, STATE, {"seconds": 1.5})
  saved = checkpoint.digest({"params": params, "state": STATE})
  assert [name for name, _ in saved] == ["params/b", "params/w", "state/batch_stats/bn/mean",
                                         "state/batch_stats/bn/var"]
  # the digest is SHA-256 over dtype, shape and bytes, computed independently here
  import hashlib  # pylint: disable=g-import-not-at-top
  want = hashlib.sha256(b"float32(20, 30)" + params["w"].tobytes()).hexdigest()
  assert saved[1][1] == want
  p, s, meta = checkpoint.restore(tmp_path / "ck", (params, STATE))
  assert meta == {"seconds": 1.5} and p["b"].dtype == jnp.bfloat16  # the digest is not handed back
  flip_one_byte(tmp_path / "ck")
  with pytest.raises(checkpoint.CorruptCheckpointError, match=f"checkpoint {tmp_path / 'ck'}: "):
    checkpoint.restore(tmp_path / "ck", (params, STATE))
  # the JSON document is covered too
  checkpoint.save(tmp_path / "j", params, STATE, {"seconds": 1.5})
  meta_file = tmp_path / "j" / "0" / "meta" / "metadata"
  text = open(meta_file).read()
  assert '"seconds": 1.5' in text
  open(meta_file, "w").write(text.replace('"seconds": 1.5', '"seconds": 2.5'))
  with pytest.raises(checkpoint.CorruptCheckpointError, match="JSON metadata does not match"):
    checkpoint.restore(tmp_path / "j", (params, STATE))


def test_corrupt_newest_progress_step_resumes_from_the_older_one(tmp_path, caplog):
  tree = {"w": jnp.arange(400.0).reshape(20, 20)}
  with checkpoint.EpochCheckpoints(tmp_path / "p", keep=2) as ck:
    for epoch in (1, 2):
      ck.save(epoch, jax.tree.map(lambda x: x + epoch, tree), {"epoch": epoch, "epochs": 5})
  flip_one_byte(tmp_path / "p" / "2")
  with checkpoint.EpochCheckpoints(tmp_path / "p", keep=2) as ck:
    epoch, restored, _ = ck.latest(tree, 5)
    assert epoch == 1
    assert_tree_equal(restored, jax.tree.map(lambda x: x + 1, tree))
    ck.save(2, tree, {"epoch": 2, "epochs": 5})  # a fresh directory
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 1 and str(tmp_path / "p") in warnings[0] and "resuming after epoch 1" in warnings[0]
  assert sorted(os.listdir(tmp_path / "p")) == ["2"] and len(list(tmp_path.glob("p.corrupt-*"))) == 1


def test_a_save_that_fails_half_way_leaves_nothing_and_says_where(tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.serialization import serialization  # pylint: disable=g-import-not-at-top
  written = []

  def full_disk(array):  # Orbax's array write, in its background thread, where a real ENOSPC surfaces
    written.append(array.shape)
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(serialization, "estimate_write_memory_footprint", full_disk)
  with pytest.raises(checkpoint.CheckpointWriteError, match=f"cannot write checkpoint {tmp_path / 'ck'}: "
                                                            "OSError: .*No space left on device"):
    checkpoint.save(tmp_path / "ck", PARAMS, STATE)
  assert written  # the arrays were being written
  assert not (tmp_path / "ck").exists()  # the temporary step directory (and the empty checkpoint one) removed
