"""Checkpoints: the only module that touches Orbax.

Two kinds of checkpoint live here:

* A *model checkpoint* (`save` / `restore` / `cached`) holds ``params``, ``state`` and JSON ``metadata``.
  `cached` keys a checkpoint directory by a hash of the config fields that determine the model, so a second
  run with the same fields restores instead of training.
* *Progress checkpoints* (`EpochCheckpoints`) hold everything a training loop needs to continue after epoch
  ``k``: ``params``, ``state``, ``opt_state`` and JSON ``{epoch, epochs, history, seconds}``. They are written
  every ``every`` epochs (and at most once per ``min_seconds``) into a ``progress`` directory next to the final
  checkpoint and removed once the final one exists. Because the per-epoch PRNG keys are
  ``jax.random.fold_in(rng, epoch)`` and the restored arrays are bit-exact copies, training resumed after
  epoch ``k`` reproduces an uninterrupted run exactly on a deterministic backend (CPU).

Atomicity: Orbax writes each step into a temporary directory and renames it when complete, so a save that is
killed half-way leaves nothing that `restore` accepts, and an older step stays valid until the newer one is
committed. Saves are synchronous: the training loop donates its buffers to the next epoch right after a save.

Integrity: every save stores, in its JSON document, a SHA-256 digest of each array (its bytes, dtype and shape)
and of the JSON metadata (`digest`); every restore recomputes it, so a flipped bit that Orbax/TensorStore reads
without complaint (it checks no sums of uncompressed chunks) is found as surely as a truncated file. A
checkpoint whose metadata or arrays cannot be read, or do not match their digest, raises
`CorruptCheckpointError`, a ValueError naming the directory (and the leaf). `cached` then moves it aside to
``<directory>.corrupt-<UTC time>`` with a one-line warning and builds the model again (nothing is deleted, and the
new checkpoint is committed atomically as any other); for progress checkpoints the newest step that passes is
resumed from (the older ones a ``keep > 1`` manager kept), the directory is moved aside the same way, and with no
good step training starts from epoch 0. A checkpoint saved without a digest (by an older version, or with arrays
spread over several processes, which one process cannot hash) is restored unchecked.

Compatibility: before any array is read, the stored tree (names, shapes, dtypes, from Orbax's metadata) is
compared with the expected one; the first difference raises a `ValueError` naming the directory and the leaf
path, e.g. ``params/Dense_0/kernel: stored shape (64, 256), expected (64, 128)``.

References:
  Orbax checkpointing, ``CheckpointManager`` and ``StandardSave``/``StandardRestore``
  (https://orbax.readthedocs.io/en/latest/guides/checkpoint/checkpointing_pytrees.html).

Example:
    >>> key = config_hash(config.dataset, config.model, config.train, config.seed)
    >>> params, state, meta, restored = cached(workdir / f"original-{key}", build_fn, like=(params0, state0))
    >>> with EpochCheckpoints(workdir / f"original-{key}" / "progress", every=1) as progress:
    ...   params, state, history = train.fit(model, params0, state0, split, cfg, rng=rng, checkpoints=progress)
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging as pylogging
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

Pytree = Any
_STEP = 0
_ITEMS = ("model", "meta")  # every checkpoint here is one array tree plus one JSON document


def _canonical(obj):
  if hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  if isinstance(obj, dict):
    return {str(k): _canonical(v) for k, v in sorted(obj.items())}
  if isinstance(obj, (list, tuple)):
    return [_canonical(v) for v in obj]
  if isinstance(obj, (np.generic,)):
    return obj.item()
  return obj


def config_hash(*parts) -> str:
  """A short, stable hash of ConfigDicts / dicts / scalars (key order does not matter)."""
  text = json.dumps([_canonical(p) for p in parts], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _manager(directory: str | os.PathLike, *, keep: int = 1, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, cleanup_tmp_directories=create)
  handlers = {"model": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options, item_handlers=handlers)


# The key of the JSON document under which `_save_step` stores `digest` (removed again by every restore).
DIGEST_KEY = "_sha256"


def _json_digest(metadata: dict) -> str:
  return hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()


def digest(tree: Pytree) -> list[list[str]] | None:
  """``[[leaf path, SHA-256 hex], ...]`` in leaf order, each over a leaf's dtype, shape and bytes; None when a leaf
  is an array that this process cannot read whole (spread over several processes)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for _, x in leaves):
    return None
  out = []
  for (path, _), x in zip(leaves, jax.device_get([x for _, x in leaves])):
    x = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{np.dtype(x.dtype)}{x.shape}".encode())
    h.update(x.reshape(-1).view(np.uint8).data if x.size else b"")
    out.append([_path_name(path), h.hexdigest()])
  return out


def _save_step(mngr: ocp.CheckpointManager, step: int, tree: Pytree, metadata: dict | None) -> None:
  if step in mngr.all_steps():  # overwrite: a re-run replaces the previous checkpoint
    mngr.delete(step)
  meta = _canonical(metadata or {})
  meta[DIGEST_KEY] = {"arrays": digest(tree), "meta": _json_digest(meta)}
  threads = set(threading.enumerate())
  try:
    with _quiet_orbax_errors():
      mngr.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
                force=True)
      mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  (a full disk, a read-only mount: TensorStore wraps them)
    directory = os.fspath(mngr.directory)
    _quiet_closed_loops()
    with contextlib.suppress(Exception), _quiet_orbax_errors():
      mngr.close()  # the caller drops mngr
      deadline = time.monotonic() + 30
      for thread in set(threading.enumerate()) - threads:  # Orbax's threads of this save are done with the
        thread.join(timeout=max(0.0, deadline - time.monotonic()))  # temporary directory before it goes
    pattern = os.path.join(glob.escape(directory), f"{step}.orbax-checkpoint-tmp*")
    for _ in range(20):  # nothing half-written stays behind; TensorStore's own (C++) threads may still be
      for tmp in glob.glob(pattern):  # finishing writes that were under way: remove until none comes back
        shutil.rmtree(tmp, ignore_errors=True)
      time.sleep(0.05)
      if not glob.glob(pattern):
        break
    with contextlib.suppress(OSError):
      os.rmdir(directory)  # if it holds nothing else now
    raise CheckpointWriteError(errno.EIO, f"cannot write checkpoint {directory}: {_first_line(e)}") from e


def _verify(directory, tree: Pytree, meta: dict) -> dict:
  """``meta`` without its digest; CorruptCheckpointError naming ``directory`` and the first leaf (or the JSON
  document) whose digest differs from the stored one."""
  stored = meta.pop(DIGEST_KEY, None)
  if not isinstance(stored, dict):  # saved without a digest: nothing to check
    return meta
  if stored.get("meta") != _json_digest(meta):
    raise CorruptCheckpointError(f"checkpoint {directory}: its JSON metadata does not match its SHA-256 digest "
                                 "(changed after it was written)")
  want = stored.get("arrays")
  have = digest(tree) if want is not None else None
  if have is not None:
    if len(have) != len(want):
      raise CorruptCheckpointError(f"checkpoint {directory}: {len(have)} arrays, its digest lists {len(want)}")
    for (name, h), (_, w) in zip(have, want):
      if h != w:
        raise CorruptCheckpointError(f"checkpoint {directory}: {name} does not match its SHA-256 digest (the "
                                     "data changed after it was written)")
  return meta


def save(directory, params: Pytree, state: Pytree, metadata: dict | None = None) -> None:
  """Saves ``params``, ``state`` and JSON-serialisable ``metadata`` as one checkpoint in ``directory``."""
  with _manager(directory) as mngr:
    _save_step(mngr, _STEP, {"params": params, "state": state}, metadata)


def _abstract(tree: Pytree) -> Pytree:
  def leaf(x):
    # Without a target sharding, restore onto the default device, where freshly created arrays live; `cached`
    # commits its fresh results there too, so both share one placement and jitted steps do not compile twice.
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


def _path_name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _leaf_specs(tree: Pytree) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(p): (tuple(x.shape), str(np.dtype(x.dtype))) for p, x in leaves}


def _compare(directory, stored: Pytree, expected: Pytree) -> None:
  """Raises ValueError naming ``directory`` and the first leaf where ``stored`` and ``expected`` differ."""
  have, want = _leaf_specs(stored), _leaf_specs(expected)
  for name, (shape, dtype) in want.items():
    if name not in have:
      why = "missing from the checkpoint"
    elif have[name][0] != shape:
      why = f"stored shape {have[name][0]}, expected {shape}"
    elif have[name][1] != dtype:
      why = f"stored dtype {have[name][1]}, expected {dtype}"
    else:
      continue
    raise ValueError(f"checkpoint {directory} does not match the model: {name}: {why}")
  extra = [name for name in have if name not in want]
  if extra:
    raise ValueError(f"checkpoint {directory} does not match the model: {extra[0]}: in the checkpoint but not "
                     f"in the model")


class CheckpointWriteError(OSError):
  """A checkpoint that could not be written (full disk, read-only mount...); its temporary directory is removed."""


class CorruptCheckpointError(ValueError):
  """A checkpoint directory whose metadata or arrays cannot be read (not a mismatch with the model)."""


def _first_line(error: BaseException) -> str:
  """``Type: first line`` of the innermost error of ``error``'s chain (TensorStore wraps the useful one)."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  line = (str(error).strip().splitlines() or [""])[0].split(" [tensorstore_spec=")[0]  # not TensorStore's spec
  return f"{type(error).__name__}: " + (line if len(line) <= 400 else line[:400] + "...")


class _DropOrbaxErrors(pylogging.Filter):

  def filter(self, record: pylogging.LogRecord) -> bool:
    return not (record.levelno >= pylogging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


@contextlib.contextmanager
def _quiet_orbax_errors():
  """While Orbax reads or writes here, its own ERROR logs (each a traceback of the failure, from its threads) are
  dropped when absl logs at WARNING or above (the command line's default): the failure reaches the caller as
  one `CheckpointWriteError` / `CorruptCheckpointError` line instead. ``--verbosity=0`` keeps them."""
  if logging.get_verbosity() >= logging.INFO:
    yield
    return
  _quiet_closed_loops()
  logger, drop = pylogging.getLogger("absl"), _DropOrbaxErrors()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def _closed_loop_noise(unraisable) -> bool:
  return unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"


def _quiet_closed_loops() -> None:
  """Drops the ``RuntimeError: Event loop is closed`` tracebacks that TensorStore reads still in flight print
  (through `sys.unraisablehook`, from their threads, possibly after the call has returned) once a failed read or
  write made Orbax close its event loop; any other unraisable exception reaches the previous hook. Installed
  once, by the first quiet Orbax call (`_quiet_orbax_errors`) or corrupt checkpoint, so that a failure reads as
  the one line it is."""
  previous = sys.unraisablehook
  if getattr(previous, "_drops_closed_loops", False):
    return

  def hook(unraisable):
    if not _closed_loop_noise(unraisable):
      previous(unraisable)

  hook._drops_closed_loops = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _check_step(directory, mngr: ocp.CheckpointManager, step: int, expected: Pytree) -> None:
  try:
    with _quiet_orbax_errors():
      stored = mngr.item_metadata(step)["model"]
  except (ValueError, KeyError, TypeError, OSError) as e:
    _quiet_closed_loops()
    raise CorruptCheckpointError(f"checkpoint {directory}: cannot read its metadata ({_first_line(e)})") from e
  if stored is None:
    raise CorruptCheckpointError(f"checkpoint {directory}: holds no model arrays (not written by "
                                 "unlearn_jax.checkpoint)")
  _compare(directory, getattr(stored, "tree", stored), expected)


def _restore_step(directory, mngr: ocp.CheckpointManager, step: int, expected: Pytree) -> tuple[Pytree, dict]:
  _check_step(directory, mngr, step, expected)
  try:
    with _quiet_orbax_errors():
      out = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(_abstract(expected)),
                                                       meta=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except  (the tree matched: TensorStore / JSON cannot read it)
    _quiet_closed_loops()
    raise CorruptCheckpointError(f"checkpoint {directory}: cannot read it ({_first_line(e)})") from e
  return out.model, _verify(directory, out.model, dict(out.meta or {}))


def move_aside(directory, error: BaseException | None = None, then: str = "building it again") -> str:
  """Renames ``directory`` to ``<directory>.corrupt-<UTC time>`` (process 0) with a one-line warning (``<error>;
  moved it to <path> and <then>``); returns the new path. Used for a corrupt cache, so that it is rebuilt while
  its files stay for inspection."""
  directory = os.path.abspath(os.fspath(directory))
  target = f"{directory}.corrupt-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
  if jax.process_index() == 0 and os.path.isdir(directory):
    n = 1
    while os.path.exists(target if n == 1 else f"{target}-{n}"):
      n += 1
    target = target if n == 1 else f"{target}-{n}"
    os.rename(directory, target)
  logging.warning("%s; moved it to %s and %s", str(error).splitlines()[0] if error else
                  f"checkpoint {directory} is corrupt", target, then)
  return target


def exists(directory) -> bool:
  """True if ``directory`` holds a complete checkpoint."""
  if not os.path.isdir(directory):
    return False
  with _manager(directory, create=False) as mngr:
    return mngr.latest_step() is not None


def check(directory, like: tuple[Pytree, Pytree]) -> None:
  """Checks, without reading arrays, that the checkpoint in ``directory`` fits ``like = (params, state)``.

  Raises:
    ValueError: if ``directory`` holds no complete checkpoint, or names the first leaf (``params/...`` or
      ``state/...``) whose presence, shape or dtype differs.
  """
  if not exists(directory):
    raise ValueError(f"checkpoint {directory}: no complete checkpoint there")
  with _manager(directory, create=False) as mngr:
    _check_step(directory, mngr, mngr.latest_step(), {"params": like[0], "state": like[1]})


def restore(directory, like: tuple[Pytree, Pytree]) -> tuple[Pytree, Pytree, dict] | None:
  """Restores ``(params, state, metadata)``, or None if ``directory`` holds no complete checkpoint.

  Args:
    directory: the checkpoint directory given to `save`.
    like: ``(params, state)`` with arrays or `jax.ShapeDtypeStruct` leaves; restored leaves take their
      shapes, dtypes and shardings.

  Raises:
    ValueError: if the stored tree does not match ``like`` (names the directory and the first leaf).
  """
  if not exists(directory):
    return None
  with _manager(directory, create=False) as mngr:
    model, meta = _restore_step(directory, mngr, mngr.latest_step(), {"params": like[0], "state": like[1]})
  return model["params"], model["state"], meta


def restore_stored(directory) -> tuple[Pytree, Pytree, dict] | None:
  """Restores ``(params, state, metadata)`` with the names, shapes and dtypes the checkpoint itself records (no
  ``like``; onto the default device), or None if ``directory`` holds no complete checkpoint. For array trees whose
  shapes the reader does not know in advance (e.g. an attribution cache of any number of models)."""
  if not exists(directory):
    return None
  with _manager(directory, create=False) as mngr:
    step = mngr.latest_step()
    try:
      stored = mngr.item_metadata(step)["model"]
    except (ValueError, KeyError, TypeError, OSError) as e:
      _quiet_closed_loops()
      raise CorruptCheckpointError(f"checkpoint {directory}: cannot read its metadata ({_first_line(e)})") from e
    stored = dict(getattr(stored, "tree", stored) or {})
    like = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)), stored.get(k) or {})
            for k in ("params", "state")}
    model, meta = _restore_step(directory, mngr, step, like)
  return model["params"], model["state"], meta


def cached(directory, build: Callable[[], tuple[Pytree, Pytree, dict]], like: tuple[Pytree, Pytree]):
  """Restores the checkpoint in ``directory`` if complete, else calls ``build()`` and saves its result.

  A corrupt checkpoint there (`CorruptCheckpointError`) is moved aside (`move_aside`, one warning) and rebuilt;
  one that does not match ``like`` raises ValueError.

  A freshly built result that lives on one device is returned placed as a restore would place it (committed to
  the sharding ``like`` gives, by default the default device), so a run on a fresh result and a run on the
  restored one lower the same jitted programs and share compilations; leaves spread over several devices are
  returned as built (never gathered).

  Returns:
    ``(params, state, metadata, restored)`` where ``restored`` says whether the checkpoint was reused.
  """
  try:
    found = restore(directory, like)
  except CorruptCheckpointError as e:
    move_aside(directory, e)
    found = None
  if found is not None:
    return (*found, True)
  params, state, metadata = build()
  save(directory, params, state, metadata)
  params, state = _placed_as_restored((params, state), like)
  return params, state, metadata, False


def _placed_as_restored(tree: Pytree, like: Pytree) -> Pytree:
  """``tree``'s one-device leaves committed to the sharding a restore onto ``like`` gives them (same device: no copy)."""
  def leaf(x, target):
    if not isinstance(x, jax.Array) or len(x.sharding.device_set) != 1 or len(target.sharding.device_set) != 1:
      return x
    return jax.device_put(x, target.sharding)
  return jax.tree.map(leaf, tree, _abstract(like))


class EpochCheckpoints:
  """Progress checkpoints of one training run, for `unlearn_jax.train.run_epochs` (``checkpoints=``).

  Step ``k`` of the Orbax manager in ``directory`` holds the training tree after ``k`` completed epochs and
  the JSON ``{'epoch': k, 'epochs': total, 'history': ..., 'seconds': ...}``; the last ``keep`` steps are kept.

  Args:
    directory: where the steps go (created on the first save).
    every: save after every ``every``-th epoch; 0 never saves. The last epoch is never saved here: the caller
      writes the final checkpoint.
    min_seconds: skip a due save if the previous one (or the start) was less than this many seconds ago, so
      runs with short epochs pay nothing; in a multi-process run process 0's clock decides for all.
    keep: how many steps to keep.

  Raises:
    ValueError: for a negative ``every``/``min_seconds`` or ``keep < 1``.
  """

  def __init__(self, directory, *, every: int = 1, min_seconds: float = 0.0, keep: int = 1):
    if int(every) < 0:
      raise ValueError(f"every={every}: must be >= 0")
    if float(min_seconds) < 0:
      raise ValueError(f"min_seconds={min_seconds}: must be >= 0")
    if int(keep) < 1:
      raise ValueError(f"keep={keep}: must be >= 1")
    self.directory = os.path.abspath(os.fspath(directory))
    self.every, self.min_seconds, self.keep = int(every), float(min_seconds), int(keep)
    self._mngr: ocp.CheckpointManager | None = None
    self._last = time.monotonic()

  def _manager(self, create: bool) -> ocp.CheckpointManager | None:
    if self._mngr is None:
      if not create and not os.path.isdir(self.directory):
        return None
      self._mngr = _manager(self.directory, keep=self.keep, create=True)
    return self._mngr

  def latest_epoch(self) -> int | None:
    """The number of completed epochs of the newest complete step, or None."""
    mngr = self._manager(create=False)
    return None if mngr is None else mngr.latest_step()

  def check(self, like: Pytree) -> None:
    """Raises ValueError naming the directory and first mismatching leaf if the newest step does not fit."""
    step = self.latest_epoch()
    if step is not None:
      _check_step(self.directory, self._mngr, step, like)

  def latest(self, like: Pytree, epochs: int) -> tuple[int, Pytree, dict] | None:
    """Restores the newest good step as ``(epoch, tree, metadata)``, or None if there is none.

    A corrupt step (unreadable, or not matching its digest) is skipped for the next older one; if there was one,
    the directory is moved aside (`move_aside`, one warning naming it and the epoch resumed from) and later
    saves start a fresh one.

    Args:
      like: the training tree (e.g. ``(params, state, opt_state)``) with array or `jax.ShapeDtypeStruct`
        leaves; restored leaves take their structure, shapes, dtypes and shardings.
      epochs: the total epochs of the run being resumed; must equal the stored one.

    Raises:
      ValueError: naming the directory, if the stored tree or epoch count does not match.
    """
    mngr = self._manager(create=False)
    found, corrupt = None, None
    for step in sorted(mngr.all_steps() if mngr is not None else (), reverse=True):
      try:
        found = (step, *_restore_step(self.directory, mngr, step, like))
        break
      except CorruptCheckpointError as e:
        corrupt = corrupt or e
    if corrupt is not None:
      self.close()
      move_aside(self.directory, corrupt, f"resuming after epoch {found[0]}" if found else "training from epoch 0")
    if found is None:
      return None
    step, tree, meta = found
    if meta.get("epochs") != epochs or meta.get("epoch") != step:
      raise ValueError(f"checkpoint {self.directory}: step {step} belongs to a run of {meta.get('epochs')} "
                       f"epochs, this one has {epochs}")
    self._last = time.monotonic()
    return step, tree, meta

  def due(self, epoch: int, epochs: int) -> bool:
    """Whether to save after ``epoch`` completed epochs of ``epochs``."""
    ok = bool(self.every) and epoch < epochs and epoch % self.every == 0 and \
        time.monotonic() - self._last >= self.min_seconds
    if jax.process_count() > 1 and self.every and self.min_seconds:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      ok = bool(multihost_utils.broadcast_one_to_all(np.asarray(ok)))
    return ok

  def save(self, epoch: int, tree: Pytree, metadata: dict) -> None:
    """Saves ``tree`` and ``metadata`` (which must hold ``epoch`` and ``epochs``) as step ``epoch``."""
    if metadata.get("epoch") != epoch or "epochs" not in metadata:
      raise ValueError(f"metadata must hold 'epoch'={epoch} and 'epochs', got keys {sorted(metadata)}")
    try:
      _save_step(self._manager(create=True), epoch, tree, metadata)
    except CheckpointWriteError:
      self._mngr = None  # closed by the failed save
      raise
    self._last = time.monotonic()

  def close(self) -> None:
    if self._mngr is not None:
      self._mngr.close()
      self._mngr = None

  def remove(self) -> None:
    """Closes the manager and deletes ``directory`` (once the final checkpoint is safely written)."""
    self.close()
    if jax.process_index() == 0:
      shutil.rmtree(self.directory, ignore_errors=True)

  def __enter__(self) -> EpochCheckpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
