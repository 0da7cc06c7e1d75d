"""Tests that need a fresh Python process: the command-line entry point, and 8 forced host CPU devices (the device
count is fixed when JAX starts)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def run_on_8_cpu_devices(script: str, marker: str, timeout: int = 600) -> str:
  """Runs ``python -c script`` with 8 CPU devices; asserts it printed ``marker``; returns its stdout."""
  env = eight_cpu_devices_env()
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
  assert out.returncode == 0 and marker in out.stdout, out.stdout[-3000:] + out.stderr[-5000:]
  return out.stdout
