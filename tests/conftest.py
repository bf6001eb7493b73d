"""Shared test fixtures: the real test material and multi-device subprocess runs."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_TESTDATA = REPO_ROOT.parent / "shared" / "testdata"

# XLA compiles of BN-Inception dominate the suite's time on CPU: share compiled executables between
# test files and the subprocesses they start (same shapes recur) through JAX's persistent cache.
# Every compile is kept, also the many sub-second ones (JAX's default keeps only those of 1 s or
# more): measured 2026-12-02 on 2 cores, cold cache, `pytest -n auto`: 957 s with a 2 s threshold,
# 707 s with none (the 8-device pass: 254 s either way).
# Set before JAX initialises; subprocesses inherit the environment.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path.home() / ".cache" / "sta-cnn-jax" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


# Tests whose own work already runs side by side on every core (job_pool workers: the learning
# runs, the demo). Under pytest-xdist (`pytest -n auto`, pyproject's --dist loadgroup) they share
# one worker and are collected first, so the other workers' one-core tests fill the cores
# around them instead of two of them doubling up at the end.
SELF_PARALLEL_GROUP = "self_parallel"
SELF_PARALLEL = pytest.mark.xdist_group(name=SELF_PARALLEL_GROUP)


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Runs the SELF_PARALLEL tests first (a stable sort: the rest keep their order)."""
  def is_self_parallel(item) -> bool:
    marker = item.get_closest_marker("xdist_group")
    return marker is not None and marker.kwargs.get("name") == SELF_PARALLEL_GROUP
  items.sort(key=lambda item: not is_self_parallel(item))


def _testdata_path() -> pathlib.Path:
  return pathlib.Path(os.environ.get("STA_CNN_TESTDATA", DEFAULT_TESTDATA))


@pytest.fixture(scope="session")
def testdata_dir() -> pathlib.Path:
  """shared/testdata (env STA_CNN_TESTDATA). Skips when absent; under CI=true it must exist."""
  path = _testdata_path()
  if not (path / "README.md").is_file():
    reason = (f"real test material not found at {path} "
              "(set STA_CNN_TESTDATA to the shared/testdata folder)")
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(reason + " -- it is required under CI=true")
    pytest.skip(reason)
  return path


def run_multidevice(code: str, num_devices: int = 8, timeout: float = 600) -> str:
  """Runs `code` in a fresh Python with `num_devices` fake CPU devices; returns its stdout.

  JAX fixes the device count when it initialises, so a test that needs several devices runs
  its body in a subprocess. Fails the calling test with the child's stderr if it exits non-zero.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={num_devices}").strip()
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    pytest.fail(f"multi-device subprocess failed (rc={proc.returncode}):\n"
                f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
  return proc.stdout
