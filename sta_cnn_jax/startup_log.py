"""Quiet by default: TensorFlow's C++ start-up lines are hidden unless asked for.

TensorFlow (used here for tf.data, TFRecords and gfile) logs from C++ as soon as it loads or
runs its first op: the "All log messages before absl::InitializeLog() is called" banner, the
cpu_feature_guard / oneDNN notices, CUDA / TensorRT registration warnings and, on AVX-512 CPUs,
an error-level "oneDNN supports DT_UINT8 only on platforms with AVX-512" line. None of them says
anything about this program's results. They are filtered by the environment variable
`TF_CPP_MIN_LOG_LEVEL`, which TensorFlow reads once, when it first logs; so `quiet_tensorflow`
runs on import of the `sta_cnn_jax` and `data_prep` packages, before any module imports
TensorFlow, and sets it in `os.environ`, which worker processes (multiprocessing spawn, Beam)
inherit.

Rules, in order:
  1. `TF_CPP_MIN_LOG_LEVEL` set by the user: left as it is (the user wins).
  2. absl's verbosity flag on the command line (`--verbosity=N`, `--verbosity N`, `-v N`,
     `-v=N`, `--v=N`) with N >= 1: `0`, TensorFlow's own default (everything shown).
  3. Otherwise `3`: TensorFlow's C++ INFO, WARNING and ERROR lines are hidden. Failures still
     reach the user as Python exceptions. (XLA, inside JAX, reads the same variable.)

Some lines ignore the variable: TensorFlow 2.21 writes them through absl's C++ logging while
its libraries load, before absl is initialised (measured on an AVX-512 / AMX Xeon: the absl
banner and "oneDNN custom operations are on", twice, with TF_CPP_MIN_LOG_LEVEL=3). So the
packages also install `TensorFlowImportFilter`: the first `import tensorflow` runs with file
descriptor 2 sent to a temporary file, and what TensorFlow wrote is then passed on to stderr
minus the C++ log lines below the level (`filter_log_text`): the variable's meaning, applied
to the lines TensorFlow does not filter itself. If the import fails, everything it wrote is
passed on.

TF_ENABLE_ONEDNN_OPTS is deliberately left alone: it changes numerics, not just logging.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator, MutableMapping, Sequence

ENV_VAR = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "3"  # hide INFO (0), WARNING (1) and ERROR (2) C++ lines
VERBOSE_LEVEL = "0"  # TensorFlow's default: show every line
# absl's verbosity at which TensorFlow's lines are shown (1 = DEBUG; app.run's default is 0).
VERBOSE_FROM = 1
# absl's `verbosity` flag, its short name `v`, with one or two dashes and an optional `=value`.
_VERBOSITY_FLAG = re.compile(r"^--?(?:verbosity|v)(?:=(.*))?$")
# A C++ log line of absl / TensorFlow: severity letter, date, time, thread, file:line].
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\]")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# Python's warnings.showwarning format: "file:line: SomeWarning: message".
_PYTHON_WARNING = re.compile(r"^\S.*:\d+: \w*(Warning|Error)\b")
# absl's notice that logging is not initialised yet: a WARNING about logging itself.
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"


def verbosity_from_argv(argv: Sequence[str]) -> int | None:
  """absl's `--verbosity` / `-v` value on a command line (the last one wins), or None."""
  value = None
  for index, arg in enumerate(argv):
    if arg == "--":
      break
    match = _VERBOSITY_FLAG.match(arg)
    if not match:
      continue
    text = match.group(1)
    if text is None:
      text = argv[index + 1] if index + 1 < len(argv) else ""
    try:
      value = int(text)
    except ValueError:
      continue  # not absl's flag (e.g. pytest's bare -v)
  return value


def quiet_tensorflow(argv: Sequence[str] | None = None,
                     environ: MutableMapping[str, str] | None = None) -> str:
  """Sets TF_CPP_MIN_LOG_LEVEL by the rules of the module doc (unless set); returns its value."""
  environ = os.environ if environ is None else environ
  if ENV_VAR not in environ:
    argv = getattr(sys, "argv", [])[1:] if argv is None else argv
    verbosity = verbosity_from_argv(argv)
    verbose = verbosity is not None and verbosity >= VERBOSE_FROM
    environ[ENV_VAR] = VERBOSE_LEVEL if verbose else QUIET_LEVEL
  return environ[ENV_VAR]


def filter_log_text(text: str, min_level: int) -> str:
  """`text` without the C++ log lines (and the lines that continue them) whose severity is below
  `min_level` (TF_CPP_MIN_LOG_LEVEL: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL), nor absl's banner
  when warnings are hidden. Every other line is kept."""
  kept, keep = [], True
  for line in text.splitlines(keepends=True):
    match = _LOG_LINE.match(line)
    if match:
      keep = _SEVERITY[match.group(1)] >= min_level
    elif line.startswith(_ABSL_BANNER):
      keep = min_level < 1
    elif _PYTHON_WARNING.match(line):
      keep = True                      # a Python warning, not a continuation of a log line
    if keep:
      kept.append(line)
  return "".join(kept)


def min_log_level(environ: MutableMapping[str, str] | None = None) -> int:
  """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (unset or not a number: 0)."""
  environ = os.environ if environ is None else environ
  try:
    return int(environ.get(ENV_VAR, "0"))
  except ValueError:
    return 0


@contextlib.contextmanager
def filtered_stderr_fd(min_level: int) -> Iterator[None]:
  """Sends file descriptor 2 (C++ and Python stderr) to a temporary file for the block, then
  writes what arrived to stderr through `filter_log_text` (everything, if the block raised)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as capture:
    os.dup2(capture.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode("utf-8", errors="replace")
      sys.stderr.write(text if failed else filter_log_text(text, min_level))
      sys.stderr.flush()


class _FilteredLoader(importlib.abc.Loader):
  """Runs the wrapped loader's exec_module inside `filtered_stderr_fd`."""

  def __init__(self, loader: importlib.abc.Loader, min_level: int):
    self._loader, self._min_level = loader, min_level

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    with filtered_stderr_fd(self._min_level):
      self._loader.exec_module(module)

  def __getattr__(self, name):         # get_resource_reader, is_package, ... of the original
    return getattr(self._loader, name)


class TensorFlowImportFilter(importlib.abc.MetaPathFinder):
  """A one-shot import hook: the first `import tensorflow` of the process runs under
  `filtered_stderr_fd` at the level TF_CPP_MIN_LOG_LEVEL has then."""

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    level = min_log_level()
    if spec is None or spec.loader is None or level <= 0:
      return spec
    spec.loader = _FilteredLoader(spec.loader, level)
    return spec


def filter_tensorflow_import() -> None:
  """Installs `TensorFlowImportFilter` unless TensorFlow is loaded or the hook is there."""
  if "tensorflow" in sys.modules:
    return
  if not any(isinstance(f, TensorFlowImportFilter) for f in sys.meta_path):
    sys.meta_path.insert(0, TensorFlowImportFilter())
