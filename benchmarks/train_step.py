r"""Train-step throughput of every benchmark setting: one JSON line per (setting, worker).

Each line: clips/s, frames/s, step ms (median and min of --rounds interleaved steps), compile
s, analytic GFLOP per step (sta_cnn_jax/flops.py: what the step executes, so 'recompute' is
credited only with the work it does) and achieved GFLOP/s, and the machine's fp32 2048² matmul
GFLOP/s measured by the same worker right after its steps. Settings (benchmarks/compare.py
SETTINGS): baseline TS(1,1), TSN N=3 (RGB, flow), TAM-TS(3x3,3x1) masked and recompute, STA
RGB and flow. The synthetic uint8 batch is already on the device (no input pipeline).

This is benchmarks/compare.py without the PyTorch peer by default; pass --peer_python to add
the peer side by side (ratios in the same run).

  python -m benchmarks.train_step [--settings baseline,tsn3,tam_masked,tam_recompute,sta_rgb,
      sta_flow --jax_variants default --rounds 5 --dtype float32 --peer_python '']
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import compare  # pylint: disable=g-import-not-at-top

DEFAULT_SETTINGS = ','.join(compare.SETTINGS)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if not any(a.startswith('--settings') for a in argv):
    argv += ['--settings', DEFAULT_SETTINGS]
  if not any(a.startswith('--peer_python') for a in argv):
    argv += ['--peer_python', '']
  compare.main(argv)


if __name__ == '__main__':
  main()
