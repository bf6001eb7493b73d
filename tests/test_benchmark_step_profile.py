"""benchmarks/step_profile.py's accounting of a trace (the profile itself is measured, not
tested): which events count, per step, by kind and group, and the rest of the thread time."""

import gzip
import json

import pytest

from benchmarks import step_profile


def _trace():
  meta = lambda tid, name: {'ph': 'M', 'name': 'thread_name', 'pid': 1, 'tid': tid,
                            'args': {'name': name}}
  event = lambda tid, name, us: {'ph': 'X', 'name': name, 'pid': 1, 'tid': tid, 'ts': 0,
                                 'dur': us}
  return {'traceEvents': [
      meta(7, 'tf_XLAEigen/123'), meta(8, 'tf_XLAEigen/456'), meta(9, 'python'),
      event(7, 'select_pad_fusion.3', 4000), event(8, 'select_pad_fusion.11', 2000),
      event(7, 'transpose_copy_fusion', 1000), event(8, 'multiply_bitcast_fusion.2', 3000),
      event(7, 'dot_general.5', 500), event(8, 'convolution.1', 100),
      event(7, 'ThunkExecutor::Execute', 90000),       # the executor, not a thunk
      event(9, 'fusion.1', 70000),                     # not on XLA's intra-op threads
      event(8, '$api.py:2479 block_until_ready', 80000),
  ]}


def test_thunk_totals_per_step_by_kind():
  ms, count, threads = step_profile.thunk_totals(_trace(), steps=2)
  assert threads == 2
  assert ms == pytest.approx({'select_pad_fusion': 3.0, 'transpose_copy_fusion': 0.5,
                              'multiply_bitcast_fusion': 1.5, 'dot_general': 0.25,
                              'convolution': 0.05})
  assert count['select_pad_fusion'] == pytest.approx(1.0)


def test_report_shares_groups_and_rest():
  ms, count, threads = step_profile.thunk_totals(_trace(), steps=1)
  records = list(step_profile.report('tsn3', 10.0, ms, count, threads, top=2))
  assert [r['kind'] for r in records[:2]] == ['select_pad_fusion', 'multiply_bitcast_fusion']
  assert records[0]['group'] == 'pool_gradient'
  assert records[0]['share_of_thread_time'] == pytest.approx(6.0 / 20.0)
  total = records[-1]
  assert total['thread_ms_named_thunks'] == pytest.approx(10.6)
  assert total['thread_ms_rest'] == pytest.approx(20.0 - 10.6)
  assert total['groups_thread_ms'] == {'pool_gradient': 6.0, 'elementwise': 3.0,
                                       'transpose': 1.0, 'matmul': 0.5, 'convolution': 0.1}


@pytest.mark.parametrize('kind,group', [('wrapped_reduce-window', 'reduction'),
                                        ('concatenate', 'data_movement'),
                                        ('add_maximum_fusion', 'elementwise'),
                                        ('all-reduce', 'reduction'), ('custom-call', 'other')])
def test_groups(kind, group):
  assert step_profile.group_of(kind) == group


def test_load_trace_reads_the_newest_gzip(tmp_path):
  run = tmp_path / 'plugins' / 'profile' / 'host'
  run.mkdir(parents=True)
  with gzip.open(run / 'host.trace.json.gz', 'wt', encoding='utf-8') as f:
    json.dump(_trace(), f)
  assert step_profile.load_trace(str(tmp_path)) == _trace()
  with pytest.raises(FileNotFoundError, match='no .*trace.json.gz'):
    step_profile.load_trace(str(tmp_path / 'plugins' / 'empty'))
