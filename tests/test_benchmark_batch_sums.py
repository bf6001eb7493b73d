"""benchmarks/batch_sums.py: one record per shape, comparing equal sums."""

from benchmarks import batch_sums


def test_measure_reports_both_ways_of_summing_for_one_shape():
  record = batch_sums.measure('tiny', 4, 3, batch=2, reps=1)
  assert record['nhwc'] == [2, 4, 4, 3]
  for key in ('fwd_sums_reduce_ms', 'fwd_sums_matmul_ms', 'bwd_sums_reduce_ms',
              'bwd_sums_matmul_ms', 'bn_train_flax_ms', 'bn_train_ours_ms'):
    assert record[key] > 0, key
  assert record['bn_train_ours_over_flax'] == round(
      record['bn_train_ours_ms'] / record['bn_train_flax_ms'], 3)
