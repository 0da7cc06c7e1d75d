"""Writing files so that a reader never sees a half-written one, and one run per working directory.

* `atomic_file` writes next to the target and renames, with the mode an ordinary ``open`` would give (the
  process umask applied to 0o666), not `tempfile.mkstemp`'s 0600.
* `user_cache_dir`: where the library keeps its user caches (compiled programs, generated data).
* `workdir_lock` holds an advisory ``fcntl.flock`` lock on ``<workdir>/.lock`` (which records the holder's pid)
  for the length of a run, so a second run on a busy working directory stops at once with one line naming the
  first one's pid instead of racing it (two runs would train the same stages twice and remove each other's
  temporary checkpoint directories). The lock dies with its process (``kill -9`` included): a stale ``.lock``
  file never blocks a new run.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from typing import Callable, Iterator

LOCK_NAME = ".lock"


class WorkdirError(OSError):
  """A working directory that cannot be used (a file, unwritable, or busy with another run): one line naming it."""


def umask() -> int:
  """The process umask (read without changing it for longer than the call)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_file(path: str | os.PathLike, write: Callable[[str], None]) -> str:
  """Calls ``write(tmp)`` on a temporary path next to ``path``, then renames it over ``path``; returns ``path``.

  If ``write`` raises (or the process is interrupted), the temporary file is removed and an existing ``path`` is
  left as it was. The file gets mode ``0o666 & ~umask``, as ``open(path, 'w')`` would give it.
  """
  path = os.fspath(path)
  directory, name = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~umask())
  finally:
    os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # say where (a full disk...)
      raise OSError(e.errno, e.strerror or str(e), path) from e
    raise
  return path


def _why(error: OSError) -> str:
  return error.strerror or str(error)


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[str]:
  """Holds the run lock of ``workdir`` (created if missing) for the ``with`` block; yields its absolute path.

  On leaving, the lock file is removed, and so is ``workdir`` if this call created it and nothing else was
  written there (a run refused before any work leaves nothing behind).

  Raises:
    WorkdirError: ``workdir`` is empty, a file, cannot be created or written (read-only, no permission, full), or
      another process holds its lock (the message names that pid).
  """
  if not os.fspath(workdir):
    raise WorkdirError(errno.EINVAL, "workdir: empty; give a directory (--workdir=DIR)")
  workdir = os.path.abspath(os.fspath(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(errno.ENOTDIR, f"workdir {workdir}: is a file, not a directory")
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(e.errno, f"workdir {workdir}: cannot create it ({_why(e)})") from e
  path = os.path.join(workdir, LOCK_NAME)
  fd = None
  try:
    while True:
      try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
      except OSError as e:
        raise WorkdirError(e.errno, f"workdir {workdir}: cannot write there ({_why(e)})") from e
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        fd = None  # not ours: left in place
        raise WorkdirError(errno.EBUSY, f"workdir {workdir}: in use by another run (pid {other}); wait for it or "
                                        "choose another --workdir") from None
      try:  # the holder before us may have removed the file after we opened it: lock the one that is there
        same = os.path.samestat(os.fstat(fd), os.stat(path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
      fd = None
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
      raise WorkdirError(e.errno, f"workdir {workdir}: cannot write there ({_why(e)})") from e
    yield workdir
  finally:
    if fd is not None:
      with contextlib.suppress(OSError):
        os.unlink(path)
      os.close(fd)  # releases the lock
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # only if empty


def user_cache_dir(*parts: str) -> str:
  """``$XDG_CACHE_HOME/unlearn_jax/<parts>`` (``~/.cache/unlearn_jax/<parts>``): compiled programs, generated data."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "unlearn_jax", *parts)
