r"""Per-layer convolution speed: XLA:CPU (several implementations / flags) vs PyTorch (oneDNN).

For every distinct conv shape of BN-Inception at --size (45 at 224; `flops.distinct_shapes`),
times the three passes of training separately -- forward, input gradient (dx), weight gradient
(dw) -- and prints one JSON line per (shape, variant) with GFLOP/s of each pass and of their sum
("train" = fwd + dx + dw; the first conv has no dx: its input needs no gradient), weighted by how
many layers share the shape; then one total line per variant (the whole trunk at --batch), and
the per-shape ratio to PyTorch for the top layers by time.

Variants (comma list --variants; each is one worker process, all interleaved round by round):
  torch          PyTorch eager, channels-last (oneDNN), under --peer_python
  torch_bf16     the same in bfloat16 (autocast-free: bf16 weights and activations)
  xla            jax.lax.conv_general_dilated, XLA:CPU's own flags (YNNPACK convolutions)
  xla_eigen      the same with YNNPACK library fusion off (--xla_cpu_experimental_ynn_fusion_type=)
  xla_dot        1x1 convs as einsum (a matmul), k>1 convs as xla; dw of every conv as an
                 im2col matmul (patches (N·Ho·Wo, k²·C_in)ᵀ @ dy)
  xla_bf16       xla in bfloat16
  xla_ours       what the model runs: models/layers.conv2d (1x1 as matmuls) with YNNPACK off
  ... see VARIANTS.

  python -m benchmarks.conv_layers [--size 224 --batch 12 --rounds 5 --reps 3
      --variants torch,xla,xla_eigen,xla_dot --shapes 0,5,9 --peer_python /work/venv-peer/bin/python]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

PASSES = ('fwd', 'dx', 'dw')
# variant -> (framework, env, worker options)
YNN_OFF = '--xla_cpu_experimental_ynn_fusion_type='
# XLA:CPU's own defaults (YNNPACK convolutions): the program's defaults (xla_defaults.py) off.
XLA_OWN = {'STA_CNN_XLA_DEFAULTS': '0'}
# OpenMP threads of PyTorch spin-wait by default: on a shared, oversubscribed machine that
# costs PyTorch up to 6x (and steals the cores of whatever runs next). PASSIVE is the peer's
# best setting here (override with --peer_omp_wait_policy).
PEER_ENV = {'OMP_WAIT_POLICY': 'PASSIVE'}
VARIANTS = {
    'torch': ('torch', PEER_ENV, {'dtype': 'float32'}),
    'torch_bf16': ('torch', PEER_ENV, {'dtype': 'bfloat16'}),
    'xla': ('jax', XLA_OWN, {'dtype': 'float32', 'impl': 'lax'}),
    'xla_eigen': ('jax', {'XLA_FLAGS': YNN_OFF}, {'dtype': 'float32', 'impl': 'lax'}),
    'xla_dot': ('jax', XLA_OWN, {'dtype': 'float32', 'impl': 'dot'}),
    'xla_dot_eigen': ('jax', {'XLA_FLAGS': YNN_OFF}, {'dtype': 'float32', 'impl': 'dot'}),
    'xla_bf16': ('jax', XLA_OWN, {'dtype': 'bfloat16', 'impl': 'lax'}),
    'xla_dot_bf16': ('jax', XLA_OWN, {'dtype': 'bfloat16', 'impl': 'dot'}),
    'xla_eigen_bf16': ('jax', {'XLA_FLAGS': YNN_OFF}, {'dtype': 'bfloat16', 'impl': 'lax'}),
    'xla_ours': ('jax', {'XLA_FLAGS': YNN_OFF}, {'dtype': 'float32', 'impl': 'ours'}),
}


def conv_shapes(size: int) -> list[tuple[dict, int]]:
  """[(shape dict, layers sharing it)] of BN-Inception's distinct convs at size x size."""
  from sta_cnn_jax import flops  # pylint: disable=g-import-not-at-top
  out = []
  for layer, count in flops.distinct_shapes(flops.bn_inception_layers(size, size)):
    out.append(({'name': layer.name, 'hw': layer.height, 'cin': layer.in_channels,
                 'cout': layer.out_channels, 'k': layer.kernel, 'stride': layer.stride,
                 'flops': layer.flops, 'first': layer.name == 'conv1_7x7_s2'}, count))
  return out


# ------------------------------------------------------------------------------------------
# JAX worker.
# ------------------------------------------------------------------------------------------


def _jax_worker():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from benchmarks import conv_impl as conv_lib  # pylint: disable=g-import-not-at-top

  state = {}

  def setup(shapes, batch, dtype, impl):
    dt = jnp.dtype(dtype)
    rng = np.random.default_rng(0)
    fns, compile_s = [], 0.0
    for s in shapes:
      k, st, hw = s['k'], s['stride'], s['hw']
      ho = (hw + 2 * (k // 2) - k) // st + 1
      x = jnp.asarray(rng.standard_normal((batch, hw, hw, s['cin'])), dt)
      w = jnp.asarray(rng.standard_normal((k, k, s['cin'], s['cout'])) * 0.05, dt)
      dy = jnp.asarray(rng.standard_normal((batch, ho, ho, s['cout'])), dt)
      conv = conv_lib.make_conv(impl, (st, st), ((k // 2, k // 2),) * 2)
      f = {'fwd': jax.jit(conv),
           'dx': jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
           'dw': jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])}
      args = {'fwd': (x, w), 'dx': (x, w, dy), 'dw': (x, w, dy)}
      compiled = {}
      for p in PASSES:
        t = time.perf_counter()
        compiled[p] = f[p].lower(*args[p]).compile()
        compile_s += time.perf_counter() - t
        jax.block_until_ready(compiled[p](*args[p]))
      fns.append((compiled, args))
    state['fns'] = fns
    return {'compile_s': round(compile_s, 2), 'jax': jax.__version__,
            'xla_flags': os.environ.get('XLA_FLAGS', '')}

  def time_pass(index, pass_, reps):
    compiled, args = state['fns'][index]
    f, a = compiled[pass_], args[pass_]
    return common.time_calls(lambda: jax.block_until_ready(f(*a)), reps, warmup=1)

  def matmul(reps):
    fn, flop = common.matmul_task('jax')
    return {'times': common.time_calls(fn, reps, warmup=1), 'flop': flop}

  common.serve({'setup': setup, 'time': time_pass, 'matmul': matmul})


# ------------------------------------------------------------------------------------------
# Driver.
# ------------------------------------------------------------------------------------------


def start_worker(variant: str, peer_python: str) -> common.Worker:
  framework, env, _ = VARIANTS[variant]
  if framework == 'torch':
    argv = [peer_python, os.path.join(common.REPO_ROOT, 'benchmarks', 'peer_pytorch.py'),
            '--serve']
  else:
    argv = [sys.executable, '-m', 'benchmarks.conv_layers', '--serve_jax']
  return common.Worker(variant, argv, env)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--size', type=int, default=224)
  ap.add_argument('--batch', type=int, default=12, help='images per conv call (4 videos x 3)')
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--reps', type=int, default=2, help='timed calls per worker per round')
  ap.add_argument('--variants', default='torch,xla,xla_eigen,xla_dot')
  ap.add_argument('--shapes', default='', help='comma list of shape indices (default all)')
  ap.add_argument('--passes', default=','.join(PASSES))
  ap.add_argument('--peer_python', default=common.peer_python_default())
  ap.add_argument('--serve_jax', action='store_true', help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.serve_jax:
    return _jax_worker()

  shapes = conv_shapes(a.size)
  index = [int(i) for i in a.shapes.split(',')] if a.shapes else list(range(len(shapes)))
  passes = a.passes.split(',')
  variants = a.variants.split(',')
  for v in variants:
    if v not in VARIANTS:
      raise SystemExit(f'benchmarks/conv_layers.py: unknown variant {v!r}; one of {list(VARIANTS)}')
  workers = [start_worker(v, a.peer_python) for v in variants]
  try:
    chosen = [shapes[i][0] for i in index]
    for w, v in zip(workers, variants):
      info = w.call('setup', shapes=chosen, batch=a.batch, **VARIANTS[v][2])
      common.emit({'bench': 'conv_layers', 'event': 'setup', 'variant': v, **info})
    # Per shape and pass: interleave the workers round by round.
    per = {}  # (shape i, pass, variant) -> median seconds
    for j, i in enumerate(index):
      s, count = shapes[i]
      for p in passes:
        if p == 'dx' and s['first']:
          continue
        times = common.interleave(workers, {v: ('time', {'index': j, 'pass_': p,
                                                        'reps': a.reps}) for v in variants},
                                  a.rounds)
        for v in variants:
          per[(i, p, v)] = statistics.median(times[v])
      for v in variants:
        rec = {'bench': 'conv_layers', 'variant': v, 'shape': i, 'layer': s['name'],
               'count': count, 'hw': s['hw'], 'cin': s['cin'], 'cout': s['cout'], 'k': s['k'],
               'stride': s['stride'], 'batch': a.batch}
        total = 0.0
        for p in passes:
          if (i, p, v) in per:
            rec[f'{p}_gflops'] = common.rate(s['flops'] * a.batch / 1e9, per[(i, p, v)], 1)
            total += per[(i, p, v)]
        rec['ms_weighted'] = round(1e3 * total * count, 2)
        common.emit(rec)
    # Totals over the trunk (layers weighted by their count).
    for v in variants:
      tot_s = {p: sum(per.get((i, p, v), 0.0) * shapes[i][1] for i in index) for p in passes}
      tot_f = {p: sum(shapes[i][0]['flops'] * shapes[i][1] * a.batch for i in index
                      if (i, p, v) in per) for p in passes}
      rec = {'bench': 'conv_layers', 'variant': v, 'total': True, 'batch': a.batch,
             'load_avg': common.load_average()}
      for p in passes:
        rec[f'{p}_gflops'] = common.rate(tot_f[p] / 1e9, tot_s[p], 1)
      rec['train_s'] = round(sum(tot_s.values()), 3)
      rec['train_gflops'] = common.rate(sum(tot_f.values()) / 1e9, sum(tot_s.values()), 1)
      common.emit(rec)
  finally:
    for w in workers:
      w.close()


if __name__ == '__main__':
  main()
