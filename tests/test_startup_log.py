"""Quiet by default (sta_cnn_jax/startup_log.py): no TensorFlow C++ start-up lines in the CLIs'
output, unless the user asks for them with absl's --verbosity / -v or TF_CPP_MIN_LOG_LEVEL."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from data_prep import synthetic
from sta_cnn_jax import startup_log

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# What TensorFlow's C++ side prints at start-up or on its first ops (seen on CPU and AVX-512 / CUDA
# machines): absl's banner, cpu_feature_guard / oneDNN notices, the AVX-512 DT_UINT8 error, CUDA
# and TensorRT registration lines, and any C++ log line ("I0000 00:00:... file.cc:123]").
STARTUP_PATTERNS = (
    r"absl::InitializeLog", r"cpu_feature_guard", r"This TensorFlow binary is optimized",
    r"oneDNN", r"AVX-512", r"TensorRT|TF-TRT", r"cuda_(dnn|fft|blas)|cuInit|Unable to register",
    r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+\.(cc|h):\d+\]",
)


def startup_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines()
          if any(re.search(p, line) for p in STARTUP_PATTERNS)]


def test_patterns_match_tensorflow_startup_lines():
  seen = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796115440.505801    4084 cpu_feature_guard.cc:227] This TensorFlow binary is optimized
E0000 00:00:1733915000.1    77 mkl_util.h:123] oneDNN supports DT_UINT8 only on platforms with AVX-512.
W0000 00:00:1796115837.790015   10159 local_rendezvous.cc:412] Local rendezvous is aborting
I1201 09:04:48.912273 140185960315776 prepare.py:416] ucf101: 6 videos (0 missing) in 2 shards"""
  assert len(startup_lines(seen)) == 4  # the last is this program's own (Python) log line


@pytest.mark.parametrize("argv, expected", [
    ([], None), (["--out=x"], None), (["--verbosity=1"], 1), (["--verbosity", "2"], 2),
    (["-v", "1"], 1), (["-v=1"], 1), (["--v=3"], 3), (["-verbosity=-1"], -1),
    (["--verbosity=1", "--verbosity=0"], 0), (["-v", "tests/x.py"], None),  # pytest's bare -v
    (["--", "--verbosity=1"], None), (["-v"], None), (["--verbose=1"], None),
])
def test_verbosity_from_argv(argv, expected):
  assert startup_log.verbosity_from_argv(argv) == expected


@pytest.mark.parametrize("argv, environ, level", [
    ([], {}, "3"),  # quiet by default
    (["--verbosity=0"], {}, "3"),  # absl's default verbosity (INFO) stays quiet
    (["--verbosity=1"], {}, "0"), (["-v", "2"], {}, "0"),  # asked for: TensorFlow's default
    ([], {"TF_CPP_MIN_LOG_LEVEL": "1"}, "1"),  # the user's variable wins...
    (["--verbosity=1"], {"TF_CPP_MIN_LOG_LEVEL": "2"}, "2"),  # ...over the flag too
])
def test_quiet_tensorflow_rules(argv, environ, level):
  assert startup_log.quiet_tensorflow(argv, environ) == level
  assert environ["TF_CPP_MIN_LOG_LEVEL"] == level


def test_packages_set_the_level_before_tensorflow_loads():
  assert "TF_CPP_MIN_LOG_LEVEL" in os.environ  # importing sta_cnn_jax / data_prep set it


def _run(args, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env.update(env_extra or {})
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A 2-video synthetic set prepared by the CLI with 2 worker processes; its stderr."""
  root = tmp_path_factory.mktemp("quiet")
  synthetic.generate(root / "source", num_classes=2, videos_per_class=2, test_per_class=1,
                     frames=6, size=(64, 48), seed=0)
  out = root / "out"
  stderr = _run(["-m", "data_prep.prepare", "--dataset=ucf101",
                 f"--videos={root / 'source' / synthetic.VIDEOS_DIR}",
                 f"--splits={root / 'source' / synthetic.SPLITS_DIR}", f"--out={out}",
                 "--modalities=rgb,flow", "--flow=dis", "--frame_width=64", "--frame_height=48",
                 "--max_videos=1", "--workers=2"])  # 1 train + 1 test video
  return out, stderr


def test_prepare_and_its_workers_are_quiet(prepared):
  out, stderr = prepared
  assert (out / "manifest.json").is_file()
  assert startup_lines(stderr) == [], stderr


def test_library_import_then_tensorflow_is_quiet():
  stderr = _run(["-c", "import sta_cnn_jax, tensorflow as tf; tf.constant(1) + 1"])
  assert startup_lines(stderr) == [], stderr


def test_verbosity_flag_or_user_variable_shows_them(prepared):
  out, _ = prepared
  verify = ["-m", "data_prep.prepare", f"--out={out}", "--verify"]
  shown = startup_lines(_run(verify, {"TF_CPP_MIN_LOG_LEVEL": "0"}))
  if not shown:
    pytest.skip("this TensorFlow prints no start-up lines on this machine")
  assert startup_lines(_run(verify + ["--verbosity=1"])) != []
  assert startup_lines(_run(verify)) == []


LOGGED_AT_IMPORT = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796175261.849360    8224 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796175350.749946    8326 cpu_feature_guard.cc:227] This TensorFlow binary is optimized
To enable the following instructions: AVX2 AVX512F, in other operations, rebuild TensorFlow.
W0000 00:00:1796115837.790015   10159 local_rendezvous.cc:412] Local rendezvous is aborting
E0000 00:00:1733915000.1    77 mkl_util.h:123] oneDNN supports DT_UINT8 only on AVX-512.
/x/y.py:3: UserWarning: a Python warning
  warnings.warn("a Python warning")
plain text
"""


@pytest.mark.parametrize("level, kept", [
    (0, LOGGED_AT_IMPORT.splitlines()),
    (1, ["W0000", "E0000", "/x/y.py", "  warnings", "plain"]),
    (2, ["E0000", "/x/y.py", "  warnings", "plain"]),
    (3, ["/x/y.py", "  warnings", "plain"]),
])
def test_filter_log_text_drops_lines_below_the_level_with_their_continuations(level, kept):
  out = startup_log.filter_log_text(LOGGED_AT_IMPORT, level).splitlines()
  assert [line[:len(k)] for line, k in zip(out, kept)] == kept and len(out) == len(kept)


def test_filtered_stderr_fd_filters_what_cpp_writes_and_passes_all_on_failure():
  code = textwrap.dedent("""
      import os, sys
      from sta_cnn_jax import startup_log
      with startup_log.filtered_stderr_fd(3):
        os.write(2, b"kept line\\n")
        os.write(2, b"I0000 00:00:1.0    1 port.cc:153] hidden\\n")
        os.write(2, b"its continuation, hidden too\\n")
      try:
        with startup_log.filtered_stderr_fd(3):
          os.write(2, b"I0000 00:00:1.0    1 port.cc:153] shown, the block failed\\n")
          raise RuntimeError("boom")
      except RuntimeError:
        pass
      """)
  stderr = _run(["-c", code])
  assert "hidden" not in stderr, stderr
  assert "kept line" in stderr and "shown, the block failed" in stderr


def test_the_import_hook_wraps_only_the_first_tensorflow_import():
  code = textwrap.dedent("""
      import sys
      import sta_cnn_jax
      from sta_cnn_jax import startup_log
      assert any(isinstance(f, startup_log.TensorFlowImportFilter) for f in sys.meta_path)
      import numpy                               # another package: untouched
      assert not isinstance(numpy.__loader__, startup_log._FilteredLoader)
      import tensorflow as tf
      assert isinstance(tf.__loader__, startup_log._FilteredLoader), tf.__loader__
      assert not any(isinstance(f, startup_log.TensorFlowImportFilter) for f in sys.meta_path)
      assert int(tf.constant(1) + 1) == 2
      """)
  _run(["-c", code])
