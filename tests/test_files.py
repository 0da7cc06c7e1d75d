"""unlearn_jax.files: atomic writes with the umask's mode, and the working-directory lock."""
import errno
import os
import stat

import pytest

from unlearn_jax import files


def test_atomic_file_gets_the_umask_mode_and_leaves_nothing_on_failure(tmp_path):
  old = os.umask(0o027)
  try:
    path = files.atomic_file(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # 0o666 & ~0o027, as open() gives
  finally:
    os.umask(old)

  def full_disk(tmp):
    open(tmp, "w").write("half")
    raise OSError(errno.ENOSPC, "No space left on device")

  with pytest.raises(OSError, match="No space left") as info:
    files.atomic_file(tmp_path / "b.txt", full_disk)
  assert info.value.filename == str(tmp_path / "b.txt")  # the error says where
  assert sorted(os.listdir(tmp_path)) == ["a.txt"]  # no temporary file left


def test_workdir_lock_names_the_holder_and_cleans_up(tmp_path):
  work = tmp_path / "w"
  with files.workdir_lock(work) as held:
    assert held == str(work) and open(work / ".lock").read() == f"{os.getpid()}\n"
    with pytest.raises(files.WorkdirError, match=rf"workdir {work}: in use by another run \(pid {os.getpid()}\)"):
      with files.workdir_lock(work):
        pass
    assert (work / ".lock").exists()  # the refused one leaves the holder's lock alone
    (work / "out.txt").write_text("result")
  assert sorted(os.listdir(work)) == ["out.txt"]  # the lock file goes, the results stay
  with files.workdir_lock(tmp_path / "fresh"):
    pass
  assert not (tmp_path / "fresh").exists()  # created for nothing: removed again
  (tmp_path / "file").write_text("")
  with pytest.raises(files.WorkdirError, match="is a file, not a directory"):
    with files.workdir_lock(tmp_path / "file"):
      pass
  with pytest.raises(files.WorkdirError, match="empty"):
    with files.workdir_lock(""):
      pass


def test_a_stale_lock_file_of_a_dead_process_does_not_block(tmp_path):
  work = tmp_path / "w"
  work.mkdir()
  (work / ".lock").write_text("999999\n")  # left by a run killed with -9: no process holds its lock
  with files.workdir_lock(work):
    assert open(work / ".lock").read() == f"{os.getpid()}\n"
