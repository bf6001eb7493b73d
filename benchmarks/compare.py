r"""Our JAX train / eval steps against the PyTorch peer, interleaved in ONE run (ratios).

For each setting, one JAX worker per --jax_variants entry (a process with its XLA_FLAGS) and,
where the setting has a PyTorch equivalent, one peer worker (benchmarks/peer_pytorch.py under
--peer_python) are started; after their warm-up the driver alternates single steps between them
for --rounds rounds. Prints one JSON line per (setting, worker) -- clips/s, frames/s, step ms,
compile s, achieved GFLOP/s (analytic FLOPs of what the step executes, sta_cnn_jax/flops.py) --
one line per setting with the per-round time ratios, and the machine's fp32 matmul GFLOP/s
measured by the same workers in between.

Settings (SETTINGS; names for --settings):
  baseline        TS(1,1) RGB, 12 videos            peer: TSN step, 1 segment, 12 videos
  tsn3            TSN N=3 average, 4 videos x 3     peer: TSN step, 4 x 3
  tsn3_flow       the same, flow (10 channels)      peer: TSN flow step
  tam_masked      TAM-TS(3x3,3x1), 2 x 9, masked    peer: literal Algorithm 1 (masked, full bwd)
  tam_recompute   the same, tam_backward=recompute  peer: literal Algorithm 1
  tam_reuse       the same, tam_backward=reuse      peer: literal Algorithm 1
  sta_rgb         STA-TS(3x3,3x1) RGB, 2 x 9        (no peer)
  sta_flow        STA-TS(3x3,3x1) flow, 2 x 9       (no peer)

  python -m benchmarks.compare --settings tsn3,tam_masked+tam_recompute --rounds 5 \
      [--jax_variants default,ynnpack] [--peer_python /work/venv-peer/bin/python] [--dtype float32]
      [--baseline_tree /tmp/base]   # A/B of a change: `git worktree add /tmp/base HEAD~1`
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

# UCF101 (the paper's main data set).
NUM_CLASSES = 101
# Environment of the JAX workers. 'default': what the program applies itself
# (sta_cnn_jax/xla_defaults.py: YNNPACK library fusion off, so convolutions run on XLA's Eigen
# kernels); 'eigen': the same flag set by hand; 'ynnpack': XLA:CPU's own defaults (YNNPACK
# convolutions), the program's defaults switched off; 'vector512': the defaults plus XLA:CPU's
# generated loops (fusions) on 512-bit vectors where the CPU has them (XLA's default: 256).
JAX_VARIANTS = {
    'default': {},
    'eigen': {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type='},
    'ynnpack': {'STA_CNN_XLA_DEFAULTS': '0'},
    'vector512': {'XLA_FLAGS': '--xla_cpu_prefer_vector_width=512'},
}


def jax_variant_env(variant: str) -> dict:
  """A JAX worker's environment for `variant` (the parent's XLA_FLAGS kept in front)."""
  env = dict(JAX_VARIANTS[variant])
  env['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + env.get('XLA_FLAGS', '')).strip()
  return env


PEER_ENV = {'OMP_WAIT_POLICY': 'PASSIVE'}  # see benchmarks/conv_layers.py
BASELINE = 'jax_baseline'  # the worker running --baseline_tree's code


@dataclasses.dataclass(frozen=True)
class Setting:
  row: str                 # configs/base.py row
  modality: str
  batch: int               # videos per step
  tam_backward: str = 'masked'
  peer: dict | None = None  # peer_pytorch.Step kwargs (None: no PyTorch equivalent)
  eval: bool = False


SETTINGS = {
    'baseline': Setting('baseline', 'rgb', 12, peer=dict(step='tsn', batch=12, segments=1)),
    'tsn3': Setting('tsn3', 'rgb', 4, peer=dict(step='tsn', batch=4, segments=3)),
    'tsn3_flow': Setting('tsn3', 'flow', 4, peer=dict(step='tsn', mode='flow', batch=4,
                                                      segments=3)),
    'tam_masked': Setting('tam_ts3x3_3x1', 'rgb', 2, 'masked',
                          peer=dict(step='tam', batch=2, segments=9, tam_top=1, tam_groups=3)),
    'tam_recompute': Setting('tam_ts3x3_3x1', 'rgb', 2, 'recompute',
                             peer=dict(step='tam', batch=2, segments=9, tam_top=1,
                                       tam_groups=3)),
    'tam_reuse': Setting('tam_ts3x3_3x1', 'rgb', 2, 'reuse',
                         peer=dict(step='tam', batch=2, segments=9, tam_top=1, tam_groups=3)),
    'sta_rgb': Setting('sta_ts3x3_3x1', 'rgb', 2, 'recompute'),
    'sta_flow': Setting('sta_ts3x3_3x1', 'flow', 2, 'recompute'),
}


# ------------------------------------------------------------------------------------------
# JAX worker: the real train step of sta_cnn_jax.train.
# ------------------------------------------------------------------------------------------


def make_config(s: Setting, size: int, dtype: str):
  from configs import base  # pylint: disable=g-import-not-at-top
  config = base.get_base_config(s.modality)
  base.apply_row(config, s.row)
  config.num_classes = NUM_CLASSES
  config.batch_size = s.batch
  config.input.crop_size = size
  config.temporal.tam_backward = s.tam_backward
  config.dtype = dtype
  config.parallel = 'pmap'
  return config


def step_flops(s: Setting, config) -> tuple[int, int]:
  """(forward FLOPs of one snippet, FLOPs one step executes)."""
  from sta_cnn_jax import flops  # pylint: disable=g-import-not-at-top
  m, t = config.model, config.temporal
  fwd = flops.stacnn_flops(NUM_CLASSES, s.modality, m.spatial_attention, m.aux_classifier,
                           m.san_widths, config.input.crop_size, config.input.crop_size)
  snippets = t.num_segments * t.snippets_per_segment
  selected = None
  if t.consensus == 'tam':
    selected = t.top_n * (t.num_segments if t.snippets_per_segment > 1 else 1)
  return fwd, flops.train_step_flops(fwd, s.batch, snippets, selected, s.tam_backward)


def build_step(setting: str, size: int, dtype: str):
  """The real pmapped train step of `setting` on a synthetic uint8 batch already on the device.

  Returns (run_one, info): run_one() runs one step (state carried over, blocks until done);
  info has init_s, first_s (compile + one step), forward and step FLOPs, finite.
  """
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sta_cnn_jax import parallel, train  # pylint: disable=g-import-not-at-top

  s = SETTINGS[setting]
  config = make_config(s, size, dtype)
  model = train.create_model(config, NUM_CLASSES)
  rng = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  train_state = train.create_train_state(rng, config, model, train.input_shape(config))
  init_s = time.perf_counter() - t0
  step = parallel.make_parallel_step(functools.partial(train.train_step, config=config),
                                     'pmap', out_replicated=True)
  snippets = config.temporal.num_segments * config.temporal.snippets_per_segment
  shape = (1, s.batch, snippets) + train.input_shape(config)
  frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  batch = parallel.shard_batch_for_mode(
      {'frames': frames, 'label': np.arange(s.batch, dtype=np.int32)[None] % NUM_CLASSES},
      'pmap')
  state = {'p_state': parallel.replicate(train_state, 'pmap')}
  p_rng = parallel.replicate(rng, 'pmap')

  def run_one():
    state['p_state'], metrics = step(state['p_state'], batch, p_rng)
    jax.block_until_ready((state['p_state'], metrics))
    state['metrics'] = metrics

  t0 = time.perf_counter()
  run_one()
  first_s = time.perf_counter() - t0
  fwd, work = step_flops(s, config)
  return run_one, {'init_s': init_s, 'first_s': first_s, 'forward_flops': fwd,
                   'step_flops': work,
                   'finite': bool(np.asarray(state['metrics']['finite']).all())}


def _jax_worker():
  import jax  # pylint: disable=g-import-not-at-top

  state = {}

  def step_setup(setting, size, dtype, warmup):
    run_one, info = build_step(setting, size, dtype)
    state['run_one'] = run_one
    warm = common.time_calls(run_one, max(warmup, 1))
    return {'framework': 'jax', 'version': jax.__version__,
            'xla_flags': os.environ.get('XLA_FLAGS', ''), 'init_s': round(info['init_s'], 1),
            'compile_s': round(info['first_s'] - min(warm), 1),
            'forward_flops': info['forward_flops'], 'step_flops': info['step_flops'],
            'finite': info['finite']}

  def step_time(reps):
    return common.time_calls(state['run_one'], reps)

  def matmul(reps):
    fn, flop = common.matmul_task('jax')
    return {'times': common.time_calls(fn, reps, warmup=1), 'flop': flop}

  common.serve({'step_setup': step_setup, 'step_time': step_time, 'matmul': matmul})


# ------------------------------------------------------------------------------------------
# Driver.
# ------------------------------------------------------------------------------------------


def start_jax(variant: str, tree: str = common.REPO_ROOT, name: str = '') -> common.Worker:
  """A JAX worker of `variant` running the code of the checkout `tree` (`-m` puts its cwd
  first on sys.path)."""
  return common.Worker(name or f'jax_{variant}', [sys.executable, '-m', 'benchmarks.compare',
                                                  '--serve_jax'],
                       jax_variant_env(variant), cwd=tree)


def start_peer(peer_python: str) -> common.Worker:
  return common.Worker('torch', [peer_python, os.path.join(common.REPO_ROOT, 'benchmarks',
                                                           'peer_pytorch.py'), '--serve'],
                       PEER_ENV)


def run_setting(names: list[str], a, matmul_rates: dict) -> None:
  """Benchmarks the settings `names` together: all their workers interleaved in one run."""
  workers, requests, infos, of = [], {}, {}, {}
  try:
    def add(w: common.Worker, name: str, info: dict) -> None:
      infos[w.name] = info
      workers.append(w)
      of[w.name] = name
      requests[w.name] = ('step_time', {'reps': 1})

    def add_jax(w: common.Worker, name: str) -> None:
      add(w, name, w.call('step_setup', setting=name, size=a.size, dtype=a.dtype,
                          warmup=a.warmup))

    for name in names:
      for v in a.jax_variants:
        w = start_jax(v)
        if len(names) > 1:
          w.name = f'{w.name}:{name}'
        add_jax(w, name)
      if a.baseline_tree:
        add_jax(start_jax('default', a.baseline_tree, f'{BASELINE}:{name}'), name)
    peer_setting = next((n for n in names if SETTINGS[n].peer is not None), None)
    if peer_setting and a.peer_python:
      w = start_peer(a.peer_python)
      add(w, peer_setting, w.call('step_setup', warmup=a.warmup, size=a.size,
                                  classes=NUM_CLASSES, dtype=a.dtype,
                                  **SETTINGS[peer_setting].peer))
    times = common.interleave(workers, requests, a.rounds)
    # The machine's matmul rate, measured by the same workers right after.
    for w in workers:
      mm = w.call('matmul', reps=3)
      matmul_rates.setdefault(w.name, []).append(mm['flop'] / min(mm['times']) / 1e9)
    for w in workers:
      s = SETTINGS[of[w.name]]
      info = infos[w.name]
      med = statistics.median(times[w.name])
      if w.name == 'torch':
        frames = s.peer['batch'] * s.peer['segments']
        work = info['forward_flops'] * frames * 3
      else:
        config = make_config(s, a.size, a.dtype)
        frames = s.batch * config.temporal.num_segments * config.temporal.snippets_per_segment
        work = info['step_flops']
      common.emit({
          'bench': 'compare', 'setting': of[w.name], 'worker': w.name, 'row': s.row,
          'modality': s.modality, 'tam_backward': s.tam_backward if w.name != 'torch' else
          ('masked' if s.peer.get('step') == 'tam' else None), 'dtype': a.dtype,
          'videos': s.batch, 'frames': frames, 'size': a.size,
          'clips_per_s': common.rate(s.batch, med, 3),
          'frames_per_s': common.rate(frames, med, 3), 'step_ms_median': round(1e3 * med, 1),
          'step_ms_min': round(1e3 * min(times[w.name]), 1),
          'compile_s': info.get('compile_s'),
          'gflop_per_step': round(work / 1e9, 2),
          'achieved_gflops': common.rate(work / 1e9, med, 1),
          'matmul_gflops': round(matmul_rates[w.name][-1], 1),
          **{k: info[k] for k in ('version', 'xla_flags', 'finite') if k in info}})
    # Per-round ratios (same-round pairs): every JAX worker against the peer (speed ratio,
    # >1 = we are faster) and, when several settings run together, step-time ratios of each
    # worker to the first one (e.g. recompute / masked).
    if 'torch' in times:
      for w in workers:
        if w.name != 'torch':
          r = common.round_ratios(times['torch'], times[w.name])
          common.emit({'bench': 'compare', 'setting': of[w.name], 'ratio': f'{w.name}/torch',
                       'speed_ratio_median': r['median'], 'q25': r['q25'], 'q75': r['q75'],
                       'rounds': r['n'], 'load_avg': common.load_average(),
                       'note': 'per-round torch step time / our step time (>1: we are faster)'})
    # Against the other checkout (--baseline_tree): each worker of this tree against the
    # baseline worker of its own setting.
    for w in workers if a.baseline_tree else []:
      base = f'{BASELINE}:{of[w.name]}'
      if w.name not in (base, 'torch'):
        r = common.round_ratios(times[w.name], times[base])
        common.emit({'bench': 'compare', 'setting': of[w.name], 'ratio': f'{w.name} / {base}',
                     'step_time_ratio_median': r['median'], 'q25': r['q25'], 'q75': r['q75'],
                     'rounds': r['n'], 'baseline_tree': a.baseline_tree,
                     'note': 'per-round step time ratio (<1: this checkout is faster)'})
    if len(names) > 1:
      first = workers[0].name
      for w in workers[1:]:
        if w.name != 'torch' and not w.name.startswith(BASELINE):
          r = common.round_ratios(times[w.name], times[first])
          common.emit({'bench': 'compare', 'ratio': f'{w.name} / {first}',
                       'step_time_ratio_median': r['median'], 'q25': r['q25'],
                       'q75': r['q75'], 'rounds': r['n'],
                       'note': 'per-round step time ratio (<1: the first is slower)'})
  finally:
    for w in workers:
      w.close()


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--settings', default='tsn3,tam_masked+tam_recompute',
                  help="comma list; settings joined by '+' are interleaved in one run")
  ap.add_argument('--jax_variants', default='default')
  ap.add_argument('--peer_python', default=common.peer_python_default(),
                  help="PyTorch peer interpreter ('' = JAX only)")
  ap.add_argument('--baseline_tree', default='',
                  help='another checkout (e.g. `git worktree add /tmp/base HEAD~1`): one more '
                       'JAX worker (default variant) runs its code, interleaved with ours, and '
                       'each setting gets a step-time ratio against it')
  ap.add_argument('--size', type=int, default=224)
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--warmup', type=int, default=2)
  ap.add_argument('--serve_jax', action='store_true', help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.serve_jax:
    return _jax_worker()
  a.jax_variants = a.jax_variants.split(',')
  for v in a.jax_variants:
    if v not in JAX_VARIANTS:
      raise SystemExit(f'benchmarks/compare.py: unknown --jax_variants {v!r}; one of '
                       f'{list(JAX_VARIANTS)}')
  if a.peer_python and not os.path.exists(a.peer_python):
    print(f'benchmarks/compare.py: peer interpreter {a.peer_python} not found; JAX only',
          file=sys.stderr)
    a.peer_python = ''
  matmul_rates = {}
  for group in a.settings.split(','):
    names = group.split('+')
    for name in names:
      if name not in SETTINGS:
        raise SystemExit(f'benchmarks/compare.py: unknown setting {name!r}; one of '
                         f'{list(SETTINGS)}')
    run_setting(names, a, matmul_rates)


if __name__ == '__main__':
  main()
