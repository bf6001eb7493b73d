r"""Where a train step's time goes: XLA:CPU's own per-thunk profile of the real step, by kind.

Traces --steps steps of a benchmarks/compare.py setting (the real pmapped train step on a
synthetic batch already on the device) with `jax.profiler` and sums the events of XLA's
thunks on XLA:CPU's intra-op (Eigen) threads by kind: an instruction name without its number
(`select_pad_fusion.12` -> `select_pad_fusion`), so every fusion of one shape of computation
counts together. Prints one JSON line per (setting, kind) -- thread-ms per step, events per
step, share of the step's thread time (wall x threads) -- for the --top kinds, then one total
line per setting: wall ms per step, thread-ms in named thunks, and the rest. The rest is
mostly the convolutions: XLA:CPU runs them as Eigen contraction tasks that emit no per-op
event (their thunks' own events are only their dispatch); idle threads count there too.

Groups (`group` in each line) gather kinds into what they are, for a quick read:
  pool_gradient   select_pad / select_multiply / slice_select fusions (max-pool gradient routing)
  transpose       transpose_copy fusions (layouts for convolution weight gradients)
  reduction       reduce-window / reduce (BN statistics, bias gradients, sums), all-reduce
  data_movement   copy, concatenate, slice, pad, dynamic-update-slice (inception concatenations)
  matmul          dot / dot_general (1x1 convolutions as matmuls, the classifier)
  convolution     convolution thunks (dispatch only, see above)
  elementwise     every other fusion (BN, ReLU, bias, optimizer updates)
  other           the rest

  python -m benchmarks.step_profile [--settings tsn3,tam_recompute --steps 3 --size 224
      --top 20 --trace_dir /tmp/step_profile]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Iterable, Mapping

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common, compare  # pylint: disable=g-import-not-at-top

# XLA:CPU's intra-op thread pool (its threads are named tf_XLAEigen/<id> in the trace).
XLA_THREAD_PREFIX = 'tf_XLAEigen'
# Host-side events (Python frames, the executor's own bookkeeping) are not thunks.
NOT_A_THUNK = re.compile(r'^\$|Execute|PjitFunction|PjRt')  # Execute: ThunkExecutor's too
GROUPS = (  # (group, pattern on the kind), first match wins
    ('pool_gradient', re.compile(r'^(select_pad|select_multiply|slice_select)')),
    ('transpose', re.compile(r'transpose')),
    ('reduction', re.compile(r'reduce')),
    ('data_movement', re.compile(r'^(copy|concatenate|slice|pad|wrapped_pad|'
                                 r'dynamic-update-slice|bitcast_slice|bitcast_pad)')),
    ('matmul', re.compile(r'^dot')),
    ('convolution', re.compile(r'^conv')),
    ('elementwise', re.compile(r'fusion$')),
)


def kind_of(name: str) -> str:
  """An XLA instruction name without its number: 'transpose_copy_fusion.91' -> its kind."""
  return re.sub(r'\.\d+$', '', name)


def group_of(kind: str) -> str:
  return next((g for g, pattern in GROUPS if pattern.search(kind)), 'other')


def thunk_totals(trace: Mapping[str, Any], steps: int) -> tuple[dict, dict, int]:
  """Per-step thread-ms and event counts by kind, summed over XLA's intra-op threads of a
  Chrome-format trace ({'traceEvents': [...]}); also the number of those threads."""
  names = {(e['pid'], e['tid']): e.get('args', {}).get('name', '')
           for e in trace['traceEvents']
           if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  ms, count, threads = collections.Counter(), collections.Counter(), set()
  for e in trace['traceEvents']:
    if e.get('ph') != 'X' or NOT_A_THUNK.search(e['name']):
      continue
    thread = (e['pid'], e['tid'])
    if not names.get(thread, '').startswith(XLA_THREAD_PREFIX):
      continue
    threads.add(thread)
    kind = kind_of(e['name'])
    ms[kind] += e['dur'] / 1e3 / steps                # trace durations are microseconds
    count[kind] += 1 / steps
  return dict(ms), dict(count), len(threads)


def load_trace(trace_dir: str) -> dict:
  files = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)
  if not files:
    raise FileNotFoundError(f'{trace_dir}: jax.profiler wrote no *.trace.json.gz')
  with gzip.open(max(files, key=os.path.getmtime), 'rt', encoding='utf-8') as f:
    return json.load(f)


def report(setting: str, wall_ms: float, ms: Mapping[str, float], count: Mapping[str, float],
           threads: int, top: int) -> Iterable[dict]:
  """The JSON records of one setting: its --top kinds, then the total."""
  capacity = wall_ms * max(threads, 1)
  for kind, t in sorted(ms.items(), key=lambda kv: -kv[1])[:top]:
    yield {'bench': 'step_profile', 'setting': setting, 'kind': kind, 'group': group_of(kind),
           'thread_ms_per_step': round(t, 2), 'events_per_step': round(count[kind], 1),
           'share_of_thread_time': round(t / capacity, 4)}
  by_group = collections.Counter()
  for kind, t in ms.items():
    by_group[group_of(kind)] += t
  named = sum(ms.values())
  yield {'bench': 'step_profile', 'setting': setting, 'total': True,
         'wall_ms_per_step': round(wall_ms, 1), 'threads': threads,
         'thread_ms_named_thunks': round(named, 1),
         'thread_ms_rest': round(capacity - named, 1),
         'groups_thread_ms': {g: round(t, 1) for g, t in by_group.most_common()},
         'note': 'rest = convolutions (Eigen contraction tasks emit no per-op event) + idle'}


def profile_setting(setting: str, a) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  run_one, _ = compare.build_step(setting, a.size, 'float32')
  common.time_calls(run_one, a.warmup)
  trace_dir = os.path.join(a.trace_dir or tempfile.mkdtemp(prefix='step_profile_'), setting)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(a.steps):
      run_one()
    wall_ms = (time.perf_counter() - t0) * 1e3 / a.steps
  ms, count, threads = thunk_totals(load_trace(trace_dir), a.steps)
  for record in report(setting, wall_ms, ms, count, threads, a.top):
    common.emit(record)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--settings', default='tsn3', help=f'comma list of {list(compare.SETTINGS)}')
  ap.add_argument('--steps', type=int, default=3, help='steps traced (per-step averages)')
  ap.add_argument('--warmup', type=int, default=2, help='untraced steps after the compile')
  ap.add_argument('--size', type=int, default=224)
  ap.add_argument('--top', type=int, default=20, help='kinds printed per setting')
  ap.add_argument('--trace_dir', default='', help='keep the traces here (default: a temp dir)')
  a = ap.parse_args(argv)
  for name in a.settings.split(','):
    if name not in compare.SETTINGS:
      raise SystemExit(f'benchmarks/step_profile.py: unknown setting {name!r}; one of '
                       f'{list(compare.SETTINGS)}')
  for name in a.settings.split(','):
    profile_setting(name, a)


if __name__ == '__main__':
  main()
