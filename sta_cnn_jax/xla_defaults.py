"""Fast XLA settings, applied by the program itself (nobody has to set XLA_FLAGS by hand).

XLA reads `XLA_FLAGS` once, when JAX first initialises its backends, so `apply` runs on import
of the `sta_cnn_jax` package (before any device is touched) and adds each flag of
`CPU_FLAGS` to `os.environ['XLA_FLAGS']`; worker processes (job_pool's spawned workers, Beam,
benchmark workers) inherit it.

Rules, in order:
  1. `STA_CNN_XLA_DEFAULTS=0` in the environment: nothing is added (to measure XLA's own
     defaults, or to debug).
  2. A flag the user already names in XLA_FLAGS, with any value: left as it is (the user wins).
  3. Otherwise the flag is appended.

The flags are XLA:CPU options: they change how the CPU backend compiles and nothing on GPU or
TPU (there the CPU backend only runs host-side computations). Each flag, with the measurement
that chose it (2-core x86 CPU, jax 0.10.2, fp32; docs/performance.md):

`--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK library fusions): convolutions
and their gradients run on XLA's Eigen kernels instead of YNNPACK's. Train step, median of
5-8 steps, one run per setting in one sitting:
  * full BN-Inception, TSN N=3, 4 videos x 3 at 224 px (benchmarks/compare.py, tsn3):
    2239 ms -> 1386 ms (1.62x faster);
  * the miniature (configs/demo.py, batch 16): TAM-TS(3x3,3x1) RGB 375 -> 329 ms, STA-TS(3x3,
    3x1) flow 447 -> 391 ms (1.14x faster); the baseline TS(1,1) RGB, the cheapest row,
    79 -> 86 ms (1.09x slower: one snippet a video is too little work for the Eigen
    kernels' threading to pay; the rows that dominate every run are faster).
Numerics: a different float32 summation order only (tests compare against NumPy / lax
references with explicit tolerances under both settings).
"""

from __future__ import annotations

import os
import re
from typing import MutableMapping

OPT_OUT_ENV = 'STA_CNN_XLA_DEFAULTS'
XLA_FLAGS_ENV = 'XLA_FLAGS'
# flag name -> value applied unless the user names the flag (see the module doc).
CPU_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def named_flags(xla_flags: str) -> set[str]:
  """Names of the flags in an XLA_FLAGS string ('--a=1 --b' -> {'a', 'b'})."""
  return set(re.findall(r'(?:^|\s)--?([A-Za-z0-9_]+)', xla_flags))


def with_defaults(xla_flags: str) -> str:
  """`xla_flags` with every CPU_FLAGS flag it does not name appended."""
  named = named_flags(xla_flags)
  added = [f'--{name}={value}' for name, value in CPU_FLAGS.items() if name not in named]
  return ' '.join([xla_flags.strip()] + added).strip()


def apply(environ: MutableMapping[str, str] | None = None) -> str:
  """Sets XLA_FLAGS in `environ` (os.environ) by the rules of the module doc; returns it."""
  environ = os.environ if environ is None else environ
  current = environ.get(XLA_FLAGS_ENV, '')
  if environ.get(OPT_OUT_ENV, '1') == '0':
    return current
  flags = with_defaults(current)
  if flags:
    environ[XLA_FLAGS_ENV] = flags
  return flags
