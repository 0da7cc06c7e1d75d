"""Compile once: JAX's persistent compilation cache for the runner, and a counter of real XLA compilations.

The experiment runner (`experiments.main`, flag ``--compilation_cache``) turns the cache on by default, in
`default_dir`, so a second run, and a run that differs only in a learning rate or a method's main coefficient
(both enter the jitted programs as arguments: `unlearn_jax.train.make_optimizer`, `unlearn_jax.unlearning.loop`;
for the language-model methods, `unlearn_jax.unlearning.language.COEFS`),
loads its compiled programs instead of compiling them again.

Example:
    >>> compilation.enable_cache()               # ~/.cache/unlearn_jax/xla, or $JAX_COMPILATION_CACHE_DIR
    >>> with compilation.count() as compiled:
    ...   run.run(config, workdir)
    >>> compiled.misses                          # programs XLA really compiled (not loaded from the cache)
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os

import jax
from jax import monitoring

from unlearn_jax import files

OFF = ("off", "none", "false", "0", "")
# Programs compiling faster than this are not written. 0: every program is, the tiny ones too (a shuffle, a
# gather, a mask): `make demo`'s second run on a quiet 2-core CPU loads ~60 of them instead of compiling them,
# 6.3 s instead of 7.7 s (2026-12-07), for about 1-2 s more in the first run, which writes them.
MIN_COMPILE_SECONDS = 0.0


def default_dir() -> str:
  """``$JAX_COMPILATION_CACHE_DIR`` if set (the test suite's session cache), else
  ``$XDG_CACHE_HOME/unlearn_jax/xla`` (``~/.cache/unlearn_jax/xla``)."""
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or files.user_cache_dir("xla")


def enable_cache(directory: str | None = None) -> str | None:
  """Turns JAX's persistent compilation cache on in ``directory`` (default `default_dir`); ``'off'`` turns it
  off. Call before the first compilation. Returns the directory used, or None when off.

  Raises:
    ValueError: if ``directory`` exists and is not a directory.
  """
  directory = default_dir() if directory is None else str(directory)
  if directory.strip().lower() in OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  directory = os.path.expanduser(directory)
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise ValueError(f"--compilation_cache={directory}: not a directory")
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return directory


@dataclasses.dataclass
class Compilations:
  """What `count` saw: ``misses`` programs compiled by XLA (the persistent cache did not have them), ``hits``
  programs loaded from it, ``requests`` lowered programs handed to the compiler in all, and ``traced`` how many
  times each function was traced for `jax.jit` (by name; a program the in-memory jit cache holds is not traced)."""
  misses: int = 0
  hits: int = 0
  requests: int = 0
  traced: collections.Counter = dataclasses.field(default_factory=collections.Counter)


_EVENTS = {"/jax/compilation_cache/cache_misses": "misses", "/jax/compilation_cache/cache_hits": "hits",
           "/jax/core/compile/backend_compile_duration": "requests"}
_ACTIVE: list[Compilations] = []


_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


def _on_event(event: str, *args, **kwargs) -> None:
  del args
  if event == _TRACE_EVENT:
    for counter in _ACTIVE:
      counter.traced[kwargs.get("fun_name", "?")] += 1
    return
  field = _EVENTS.get(event)
  if field is not None:
    for counter in _ACTIVE:
      setattr(counter, field, getattr(counter, field) + 1)


_registered = []


@contextlib.contextmanager
def count():
  """Counts, inside the ``with`` block, the programs XLA compiles and those the persistent cache serves (JAX's
  monitoring events; ``misses``/``hits`` need the cache on). A program the in-memory jit cache already holds is
  neither."""
  if not _registered:
    monitoring.register_event_listener(_on_event)
    monitoring.register_event_duration_secs_listener(_on_event)
    _registered.append(True)
  counter = Compilations()
  _ACTIVE.append(counter)
  try:
    yield counter
  finally:
    _ACTIVE.remove(counter)
