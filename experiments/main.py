r"""Entry point: ``python -m experiments.main --config=configs/<name>.py[:arg] [--config.x.y=v ...] [--workdir=W]``.

Parses flags and calls `unlearn_jax.run.run`. Each ``configs/<name>.py`` docstring gives its command, runtime and
result; any config value can be overridden with ``--config.<section>.<key>=value``.

Config sections:
  experiment      which pipeline runs: unlearning (default) or a study (benchmark, sweep, merge, rebasin, ...)
  seed            seeds the data splits, the initialisation and training
  dataset         name (digits | mnist1d | synthetic | cifar10 | ...), its size and augmentation
  forget          which rows are forgotten: kind (random | class | subclass | worst_case), fraction, classes
  model           network: name (mlp | cnn | cnn1d | resnet18 | ...), dtype, width, hidden
  train           optimiser and schedule of the Original (lr, epochs, batch_size, ...), from_checkpoint
  retrain         the same for Retrain, trained on the retain set only
  method          the unlearning method: name plus its own options (lr, epochs, batch_size, ...)
  eval            scoring: mia, kl, batch_size
  mesh            device mesh: data and fsdp axis sizes, multihost
  study sections  owned by a study pipeline, see its config file: benchmark; sweep; merge; merge_datasets; lmc
                  (rebasin, width_lmc); data, methods, compare, cache_dir, robustness (language-model studies);
                  diffusion, unet, classifier, sampling (diffusion study); attribution (LDS study);
                  population (population study)

Compiled programs: JAX's persistent compilation cache is on, in ``~/.cache/unlearn_jax/xla`` (or
``$JAX_COMPILATION_CACHE_DIR``); ``--compilation_cache=DIR`` moves it, ``--compilation_cache=off`` turns it off.
Learning rates and a method's main coefficient are arguments of the compiled programs, so a second run, or one with
another learning rate, loads them instead of compiling again.

Output: only the result table (and short progress bars on a terminal). Library INFO logs (Orbax, JAX) are hidden;
``--verbosity=0`` (or ``-v 0``) shows them, ``--verbosity=1`` adds debug logs.

Errors: a bad config value, an unknown key or a bad config path prints one line (``error: config.forget.fraction=
1.5: must be in (0, 1)``) and exits with status 2 before any work, as does a config file that fails to import
(``error: --config=x.py, line 3: SyntaxError: ...``), a stray argument or an empty ``--workdir=``. Faults print one
line and exit with status 1: a workdir that is a file, unwritable or busy with another run (``error: workdir W: in
use by another run (pid 123) ...``), a full disk or read-only mount (the temporary files of the write are removed),
a corrupt checkpoint brought in by ``from_checkpoint``; ``--verbosity`` keeps their traceback. Other errors show
their traceback.

Switching method: ``--config.method.name=X`` on a method config runs ``configs/X.py`` (same ``:arg``) instead, so X
starts from its own defaults and ``--config.method.<X option>=v`` works (a method without a config file starts from
the base config and its registered defaults).
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_dict
from ml_collections import config_flags

EXIT_CONFIG_ERROR = 2
EXIT_FAULT = 1
_METHOD_NAME = re.compile(r"^--?config\.method\.name=(.*)$")
_CONFIG_PATH = re.compile(r"^--?config=(.*)$")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def fail(message: str):
  """Prints ``error: <message>`` (one line) to stderr and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(EXIT_CONFIG_ERROR)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None):
  """Defines ``--config`` (a locked config file, overrides read from ``argv``) and ``--workdir``."""
  config = config_flags.DEFINE_config_file("config", None, "Path to a configs/<name>.py file (see the sections "
                                           "above).", flag_values=flag_values, lock_config=True, sys_argv=argv)
  workdir = flags.DEFINE_string("workdir", None, "Output directory (default: workdir/<config file name>).",
                                flag_values=flag_values)
  return config, workdir


def _config_arg(argv: list[str]) -> tuple[int, str, str | None] | None:
  """``(index, path, arg)`` of the ``--config=path[:arg]`` flag in ``argv``, or None."""
  for i, a in enumerate(argv):
    match = _CONFIG_PATH.match(a)
    if match:
      path, _, arg = match.group(1).partition(":")
      return i, path, arg or None
  return None


def _joined(argv: list[str]) -> list[str]:
  """``argv`` with ``--config PATH`` and ``--config.method.name X`` written as ``--config=PATH``, ``...=X``."""
  out, i = [], 0
  while i < len(argv):
    if argv[i].lstrip("-") in ("config", "config.method.name") and argv[i].startswith("-") and i + 1 < len(argv):
      out.append(f"{argv[i]}={argv[i + 1]}")
      i += 2
    else:
      out.append(argv[i])
      i += 1
  return out


def load_config_file(path: str, arg: str | None = None):
  """``get_config(arg)`` of the config file ``path`` (as ``--config=path[:arg]`` loads it)."""
  if not os.path.isfile(path):
    fail(f"--config={path}: no such config file (see configs/*.py)")
  spec = importlib.util.spec_from_file_location(f"_config_{os.path.splitext(os.path.basename(path))[0]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def check_config_file(path: str, arg: str | None = None) -> None:
  """Loads the config file ``path`` once; if it fails to import or its ``get_config`` raises, exits via `fail`
  with one line: the file, the line in it and the error (a ValueError naming ``config...`` as it is)."""
  try:
    load_config_file(path, arg)
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except  (whatever the user's file raises)
    if isinstance(e, ValueError) and str(e).startswith("config"):
      fail(e)
    line = e.lineno if isinstance(e, SyntaxError) else None
    if line is None:
      tb = e.__traceback__
      while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
          line = tb.tb_lineno
        tb = tb.tb_next
    message = e.msg if isinstance(e, SyntaxError) else str(e)
    fail(f"--config={path}" + (f", line {line}" if line else "") + f": {type(e).__name__}: {message}")


def switch_method(argv: list[str]) -> list[str]:
  """``argv`` with ``--config=configs/A.py[:arg]`` replaced by ``configs/X.py[:arg]`` when it also holds
  ``--config.method.name=X`` for another method X, so X starts from its own config file's defaults.

  Only method configs (``experiment='unlearning'``) switch; an unknown X fails with one line. Without a config
  file for X next to A's, this file's `get_config` gives the base config with X's registered defaults.
  """
  argv = _joined(argv)
  names = [m.group(1) for m in map(_METHOD_NAME.match, argv) if m]
  found = _config_arg(argv)
  if not names or found is None:
    return list(argv)
  index, path, arg = found
  name = names[-1]
  from unlearn_jax import unlearning  # pylint: disable=g-import-not-at-top
  if name not in unlearning.names():
    fail(f"config.method.name={name!r}: unknown method; choose one of {', '.join(unlearning.names())}")
  if os.path.isfile(path):
    check_config_file(path, arg)
  config = load_config_file(path, arg)
  method = config.get("method")
  if config.get("experiment", "unlearning") != "unlearning" or method is None or method.get("name") == name:
    return list(argv)
  target = os.path.join(os.path.dirname(path), f"{name}.py")
  if not os.path.isfile(target):  # no config file: the base config with X's registered defaults (`get_config`)
    target, arg = os.path.abspath(__file__), name + (f":{arg}" if arg is not None else "")
  argv = list(argv)
  argv[index] = f"--config={target}" + (f":{arg}" if arg is not None else "")
  return argv


def get_config(arg: str):
  """This file as a config file, for a method without ``configs/<name>.py``: ``arg = 'name[:config arg]'`` gives
  `unlearn_jax.config.method_experiment` (the base config and the method's registered defaults)."""
  from unlearn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  name, _, rest = arg.partition(":")
  return config_lib.method_experiment(name, rest or None)


def _paths(config, prefix="") -> list[str]:
  out = []
  for key, value in config.items():
    out.append(prefix + key)
    if isinstance(value, config_dict.ConfigDict):
      out += _paths(value, f"{prefix}{key}.")
  return out


def unknown_key(config, argv: list[str]) -> str | None:
  """``unknown key config.<path> (did you mean ...?)`` for the first override in ``argv`` that ``config``
  lacks, or None if every override names an existing key."""
  for a in argv:
    match = _OVERRIDE.match(a)
    if not match:
      continue
    path, node = match.group(1), config
    for part in path.split("."):
      if not isinstance(node, config_dict.ConfigDict) or part not in node:
        close = difflib.get_close_matches(path, _paths(config), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join('config.' + c for c in close)}?)" if close else ""
        if path.startswith("method."):
          hint += (f"; config.method has {', '.join(sorted(config.method))}: set --config.method.name first "
                   "to use another method's options")
        return f"unknown key config.{path}{hint}"
      node = node[part]
  return None


def _flag_error(error: BaseException) -> str:
  """The message of a flag error: the config file's own error where it raised one (``config...``), else the
  flag parser's (``flag --config.x=v: ...``)."""
  inner = error
  while inner.__cause__ is not None or inner.__context__ is not None:
    inner = inner.__cause__ or inner.__context__
  return str(inner) if str(inner).startswith("config") else str(error)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses ``argv`` into ``flag_values`` (where `define_flags` ran); a config error exits via `fail`.

  Returns the remaining arguments, as absl's parser does.
  """
  found = _config_arg(argv)
  if found is not None and not os.path.isfile(found[1]):
    fail(f"--config={found[1]}: no such config file (see configs/*.py)")
  if found is not None:
    check_config_file(*found[1:])
  try:
    return flag_values(argv)
  except (AttributeError, KeyError) as e:  # an override of a key the locked config lacks
    message = unknown_key(load_config_file(found[1], found[2]), argv) if found is not None else None
    if message is None:
      raise
    fail(message)
  except flags.Error as e:
    fail(_flag_error(e))
  return []


def fault(error: BaseException):
  """A fault of the machine or the files (full disk, read-only or busy workdir, a corrupt checkpoint): prints
  ``error: <what and where>`` (one line) to stderr and exits with status 1; ``--verbosity`` keeps the traceback."""
  if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present:
    raise error
  if isinstance(error, OSError) and error.strerror:
    message = error.strerror + (f": {error.filename}" if error.filename else "")
  else:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(EXIT_FAULT)


def is_config_error(error: BaseException) -> bool:
  """Whether ``error`` is a bad config value (a ValueError naming ``config.<key>``), not a runtime failure."""
  message = str(error)
  return isinstance(error, ValueError) and (message.startswith("config.") or message.startswith("unknown config key"))


def execute(config, workdir: str | None, config_path: str) -> dict:
  """Runs ``config`` (default workdir ``workdir/<config file name>``); config errors exit via `fail`."""
  from unlearn_jax import checkpoint, run  # pylint: disable=g-import-not-at-top
  if workdir == "":
    fail("--workdir=: empty; give a directory, or leave the flag out for workdir/<config name>")
  if workdir is None:
    same = os.path.abspath(config_path) == os.path.abspath(__file__)  # the `get_config` fallback: name the method
    name = config.method.name if same else os.path.splitext(os.path.basename(config_path))[0]
    workdir = os.path.join("workdir", name)
  try:
    return run.run(config, workdir)
  except checkpoint.CorruptCheckpointError as e:
    fault(e)
  except ValueError as e:
    if is_config_error(e):
      fail(e)
    raise
  except OSError as e:
    fault(e)


def quiet_logging() -> None:
  """Library INFO logs hidden unless ``--verbosity``/``-v`` was given (absl would otherwise switch to INFO)."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # also marks the flag as set, so absl keeps it


def cli(argv: list[str] | None = None) -> None:
  """The command line: method switching, flag parsing with one-line config errors, quiet logs, `run.run`."""
  argv = switch_method(list(sys.argv if argv is None else argv))
  config, workdir = define_flags(flags.FLAGS, argv)
  flags.mark_flags_as_required(["config"])
  cache = flags.DEFINE_string(
      "compilation_cache", None, "JAX's persistent compilation cache directory (default: $JAX_COMPILATION_CACHE_DIR "
      "or ~/.cache/unlearn_jax/xla); 'off' turns it off.")

  def parser(args):
    rest = parse_flags(args)
    quiet_logging()
    return rest

  def main(rest):
    if len(rest) > 1:
      fail(f"unexpected argument {rest[1]!r}: give options as --config.<key>=<value> or --workdir=<dir>")
    from unlearn_jax import compilation  # pylint: disable=g-import-not-at-top
    try:
      compilation.enable_cache(cache.value)
    except ValueError as e:
      fail(e)
    execute(config.value, workdir.value, flags.FLAGS["config"].config_filename)

  app.run(main, argv=argv, flags_parser=parser)


if __name__ == "__main__":
  cli()
