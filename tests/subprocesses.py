"""Tests that need a fresh Python process: the command-line entry point, and 8 forced host CPU devices (the device
count is fixed when JAX starts)."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Python's garbage-collector thresholds in the test processes (pytest's, set by tests/conftest.py, and the 8-device
# runner's below) instead of the default (700, 10, 10): tracing allocates millions of short-lived objects.
GC_THRESHOLD = (50_000, 20, 1000)


def main_command(config: str, workdir, *overrides) -> list[str]:
  """``python -m experiments.main --config=<config> --workdir=<workdir> <overrides>``."""
  return [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_main(config: str, workdir, *overrides, timeout: int = 120) -> subprocess.CompletedProcess:
  """Runs the entry point from the repository root to completion; captures its output."""
  return subprocess.run(main_command(config, workdir, *overrides), cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


def eight_cpu_devices_env() -> dict[str, str]:
  """This process's environment with 8 forced host CPU devices added to its ``XLA_FLAGS`` (the session's compile
  flags of ``tests/conftest.py`` kept), the CPU platform and the repository on ``PYTHONPATH``."""
  flags = " ".join((os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8")).strip()
  return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu",
              PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH", "")])))


# Reads {name: source} as JSON on stdin, runs each source in a namespace of its own with its stdout captured (an
# exception ends only that script, its traceback becomes the end of its output), then writes {name: output} as JSON
# to the file named by its argument.
_RUN_SCRIPTS = f"import gc\ngc.set_threshold(*{GC_THRESHOLD!r})\n" + """
import contextlib, io, json, linecache, sys, traceback
outputs = {}
for name, source in json.load(sys.stdin).items():
  filename = f"<{name}>"
  linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # source lines in tracebacks
  captured = io.StringIO()
  with contextlib.redirect_stdout(captured):
    try:
      exec(compile(source, filename, "exec"), {"__name__": "__main__"})
    except Exception:  # pylint: disable=broad-except  (reported in this script's output, the others still run)
      traceback.print_exc(file=captured)
  outputs[name] = captured.getvalue()
with open(sys.argv[1], "w") as f:
  json.dump(outputs, f)
"""


def run_scripts_on_8_cpu_devices(scripts: dict[str, str], timeout: int = 600) -> dict[str, str]:
  """Runs ``scripts`` (``{name: source}``) one after another in one process with 8 CPU devices: one start-up and
  one import of JAX and the library for all of them. Each runs in a fresh namespace; a failing one ends with its
  traceback and does not stop the rest. Returns ``{name: what it printed}``; check each with `assert_printed`.

  Raises:
    AssertionError: with the process's stderr if it died (a crash or ``timeout``) before reporting.
  """
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "outputs.json")
    out = subprocess.run([sys.executable, "-c", _RUN_SCRIPTS, path], input=json.dumps(scripts),
                         env=eight_cpu_devices_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0 and os.path.exists(path), out.stdout[-3000:] + out.stderr[-5000:]
    with open(path) as f:
      return json.load(f)


def assert_printed(output: str, marker: str) -> str:
  """Asserts that a script of `run_scripts_on_8_cpu_devices` printed ``marker``; returns its ``output``."""
  assert marker in output, output[-5000:]
  return output
