r"""Test-protocol throughput: 25 segments x 10 views per video (paper §4.1), videos/s.

Times `sta_cnn_jax.evaluate.eval_step` (normalise uint8 on device -> STACNN forward in inference
mode -> softmax -> view average, per device) on synthetic uint8 videos, and -- interleaved in the
same run, when --peer_python is given -- the PyTorch peer's forward of the same number of frames
under no_grad (BN-Inception only: the peer has no SAN / attention). One JSON line per (model,
worker) with videos/s, frames/s, compile s and achieved GFLOP/s (analytic forward FLOPs,
sta_cnn_jax/flops.py), plus the per-round speed ratio to the peer.

  python -m benchmarks.eval [--models baseline_rgb,sta_rgb,sta_flow --videos_per_step 1
      --segments 25 --views 10 --rounds 3 --jax_variants default --peer_python ...]
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
from benchmarks import compare  # pylint: disable=g-import-not-at-top

NUM_CLASSES = compare.NUM_CLASSES
# name -> (configs/base.py row, modality, PyTorch peer mode or None)
MODELS = {
    'baseline_rgb': ('baseline', 'rgb', 'rgb'),
    'baseline_flow': ('baseline', 'flow', 'flow'),
    'sta_rgb': ('sta_ts3x3_3x1', 'rgb', None),
    'sta_flow': ('sta_ts3x3_3x1', 'flow', None),
}


def _jax_worker():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  from sta_cnn_jax import evaluate, flops, parallel, train  # pylint: disable=g-import-not-at-top

  state = {}

  def setup(model_name, videos, segments, views, size, dtype):
    row, modality, _ = MODELS[model_name]
    config = base.get_base_config(modality)
    base.apply_row(config, row)
    config.input.crop_size = size
    config.dtype = dtype
    config.parallel = 'pmap'
    model = train.create_model(config, NUM_CLASSES)
    variables = train.initialized(jax.random.PRNGKey(0), model, train.input_shape(config),
                                  train=False)
    step = parallel.make_parallel_step(
        lambda v, f: evaluate.eval_step(v, f, model=model, config=config), 'pmap', donate=False)
    shape = (1, videos, segments, views) + train.input_shape(config)
    frames = parallel.shard_batch_for_mode(
        np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), 'pmap')
    replicated = parallel.replicate(variables, 'pmap')
    run = lambda: jax.block_until_ready(step(replicated, frames))
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    warm = common.time_calls(run, 1)
    state['run'] = run
    m = config.model
    fwd = flops.stacnn_flops(NUM_CLASSES, modality, m.spatial_attention, m.aux_classifier,
                             m.san_widths, size, size)
    return {'framework': 'jax', 'version': jax.__version__, 'forward_flops': fwd,
            'compile_s': round(first - warm[0], 1),
            'xla_flags': os.environ.get('XLA_FLAGS', '')}

  def step_time(reps):
    return common.time_calls(state['run'], reps)

  common.serve({'setup': setup, 'step_time': step_time})


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--models', default='baseline_rgb,sta_rgb,sta_flow')
  ap.add_argument('--videos_per_step', type=int, default=1)
  ap.add_argument('--segments', type=int, default=25)
  ap.add_argument('--views', type=int, default=10)
  ap.add_argument('--size', type=int, default=224)
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--jax_variants', default='default')
  ap.add_argument('--peer_python', default=common.peer_python_default(),
                  help="PyTorch peer interpreter ('' = JAX only)")
  ap.add_argument('--serve_jax', action='store_true', help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.serve_jax:
    return _jax_worker()
  if a.peer_python and not os.path.exists(a.peer_python):
    print(f'benchmarks/eval.py: peer interpreter {a.peer_python} not found; JAX only',
          file=sys.stderr)
    a.peer_python = ''
  frames = a.videos_per_step * a.segments * a.views
  for name in a.models.split(','):
    if name not in MODELS:
      raise SystemExit(f'benchmarks/eval.py: unknown model {name!r}; one of {list(MODELS)}')
    workers, infos = [], {}
    try:
      for v in a.jax_variants.split(','):
        w = common.Worker(f'jax_{v}', [sys.executable, '-m', 'benchmarks.eval', '--serve_jax'],
                          compare.jax_variant_env(v))
        infos[w.name] = w.call('setup', model_name=name, videos=a.videos_per_step,
                               segments=a.segments, views=a.views, size=a.size, dtype=a.dtype)
        workers.append(w)
      peer_mode = MODELS[name][2]
      if peer_mode and a.peer_python:
        w = compare.start_peer(a.peer_python)
        infos[w.name] = w.call('step_setup', step='eval', mode=peer_mode, batch=1,
                               segments=frames, size=a.size, classes=NUM_CLASSES,
                               dtype=a.dtype, warmup=1)
        workers.append(w)
      times = common.interleave(workers, {w.name: ('step_time', {'reps': 1}) for w in workers},
                                a.rounds)
      for w in workers:
        med = statistics.median(times[w.name])
        fwd = infos[w.name]['forward_flops']
        common.emit({
            'bench': 'eval', 'model': name, 'worker': w.name, 'dtype': a.dtype,
            'segments': a.segments, 'views': a.views, 'frames_per_video': a.segments * a.views,
            'size': a.size, 'videos_per_s': common.rate(a.videos_per_step, med, 4),
            'frames_per_s': common.rate(frames, med, 2), 'step_s_median': round(med, 2),
            'step_s_min': round(min(times[w.name]), 2), 'compile_s': infos[w.name].get('compile_s'),
            'gflop_per_frame': round(fwd / 1e9, 3),
            'achieved_gflops': common.rate(fwd * frames / 1e9, med, 1),
            'version': infos[w.name].get('version'), 'load_avg': common.load_average()})
      if 'torch' in times:
        for w in workers:
          if w.name != 'torch':
            r = common.round_ratios(times['torch'], times[w.name])
            common.emit({'bench': 'eval', 'model': name, 'ratio': f'{w.name}/torch',
                         'speed_ratio_median': r['median'], 'q25': r['q25'], 'q75': r['q75'],
                         'rounds': r['n'],
                         'note': 'per-round torch time / our time (>1: we are faster)'})
    finally:
      for w in workers:
        w.close()


if __name__ == '__main__':
  main()
