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

TF_ENABLE_ONEDNN_OPTS is deliberately left alone: it changes numerics, not just logging.
"""

from __future__ import annotations

import os
import re
import sys
from typing import MutableMapping, Sequence

ENV_VAR = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "3"  # hide INFO (0), WARNING (1) and ERROR (2) C++ lines
VERBOSE_LEVEL = "0"  # TensorFlow's default: show every line
# absl's verbosity at which TensorFlow's lines are shown (1 = DEBUG; app.run's default is 0).
VERBOSE_FROM = 1
# absl's `verbosity` flag, its short name `v`, with one or two dashes and an optional `=value`.
_VERBOSITY_FLAG = re.compile(r"^--?(?:verbosity|v)(?:=(.*))?$")


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
