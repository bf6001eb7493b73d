"""Fast XLA settings, applied by the program itself (nobody has to set XLA_FLAGS by hand).

XLA reads `XLA_FLAGS` once, when JAX first initialises its backends, so `apply` runs on import
of the `sta_cnn_jax` package (before any device is touched) and sets `os.environ['XLA_FLAGS']`;
child processes inherit it. A process that changes its own CPU affinity before JAX starts
(job_pool's workers, pinned to one core each) calls `apply` again: the flags this module added
are recorded in `APPLIED_ENV`, removed, and chosen anew for the cores the process now has.

Rules, in order:
  1. `STA_CNN_XLA_DEFAULTS=0` in the environment: nothing is added (to measure XLA's own
     defaults, or to debug).
  2. A flag the user names in XLA_FLAGS, with any value: left as it is (the user wins).
  3. Otherwise each flag of `cpu_flags(num_cpus)` is appended.

The flags are XLA:CPU options: they change how the CPU backend compiles and nothing on GPU or
TPU (there the CPU backend only runs host-side computations). Each, with the measurements that
chose it (x86 CPU, jax 0.10.2, fp32, train-step medians; docs/performance.md has the commands):

`--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK library fusions), applied when the
process may run on at least `EIGEN_MIN_CPUS` cores: convolutions and their gradients then run on
XLA's Eigen kernels instead of YNNPACK's.
  * 2 cores: full BN-Inception, TSN N=3, 4 videos x 3 at 224 px (benchmarks/compare.py tsn3):
    2239 -> 1386 ms (1.62x faster). The miniature (configs/demo.py, batch 16): TAM-TS(3x3,3x1)
    RGB 375 -> 329 ms, STA-TS(3x3,3x1) flow 447 -> 391 ms (1.14x faster); the baseline TS(1,1)
    RGB, the cheapest row, 79 -> 86 ms (1.09x slower).
  * 1 core (a job_pool worker): the miniature at batch 8, STA-TS(3x3,3x1) RGB 457 -> 547 ms,
    flow 320 -> 420 ms (1.2-1.3x SLOWER; measured twice with the cores swapped), and its
    compile 56-65 -> 68-79 s. Eigen's gain is in its threading; on one core YNNPACK's kernels
    are faster, so one-core processes keep XLA's default.
  Cores beyond 2 are not measured here.
Numerics: a different float32 summation order only (tests compare against NumPy / lax
references with explicit tolerances).
"""

from __future__ import annotations

import os
import re
from typing import MutableMapping, Optional

OPT_OUT_ENV = 'STA_CNN_XLA_DEFAULTS'
APPLIED_ENV = 'STA_CNN_XLA_DEFAULTS_APPLIED'  # the flags `apply` added (space-separated)
XLA_FLAGS_ENV = 'XLA_FLAGS'
YNN_FUSION_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
EIGEN_MIN_CPUS = 2


def available_cores() -> list[int]:
  """The CPU cores this process may run on (its affinity mask where the OS has one)."""
  if hasattr(os, 'sched_getaffinity'):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def cpu_flags(num_cpus: int) -> dict[str, str]:
  """flag name -> value of the defaults for a process with `num_cpus` cores (module doc)."""
  return {YNN_FUSION_FLAG: ''} if num_cpus >= EIGEN_MIN_CPUS else {}


def named_flags(xla_flags: str) -> set[str]:
  """Names of the flags in an XLA_FLAGS string ('--a=1 --b' -> {'a', 'b'})."""
  return set(re.findall(r'(?:^|\s)--?([A-Za-z0-9_]+)', xla_flags))


def _without(xla_flags: str, added: str) -> str:
  """`xla_flags` without the tokens of `added` (flags an earlier `apply` appended)."""
  remove = set(added.split())
  return ' '.join(t for t in xla_flags.split() if t not in remove)


def apply(environ: Optional[MutableMapping[str, str]] = None,
          num_cpus: Optional[int] = None) -> str:
  """Sets XLA_FLAGS in `environ` (os.environ) by the rules of the module doc for a process with
  `num_cpus` cores (this process's); returns the new XLA_FLAGS."""
  environ = os.environ if environ is None else environ
  num_cpus = len(available_cores()) if num_cpus is None else num_cpus
  current = _without(environ.get(XLA_FLAGS_ENV, ''), environ.pop(APPLIED_ENV, ''))
  added = []
  if environ.get(OPT_OUT_ENV, '1') != '0':
    named = named_flags(current)
    added = [f'--{name}={value}' for name, value in cpu_flags(num_cpus).items()
             if name not in named]
  flags = ' '.join([current] + added).strip()
  if flags:
    environ[XLA_FLAGS_ENV] = flags
  else:
    environ.pop(XLA_FLAGS_ENV, None)
  if added:
    environ[APPLIED_ENV] = ' '.join(added)
  return flags
