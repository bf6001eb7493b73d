"""benchmarks/input_pipeline.py's ratio lines (the throughput itself is measured, not tested)."""

import json

from benchmarks import input_pipeline


def test_step_rates_take_the_fastest_default_jax_step(tmp_path):
  lines = [
      {'setting': 'tam_masked', 'worker': 'jax_default:tam_masked', 'modality': 'rgb',
       'videos': 2, 'frames': 18, 'clips_per_s': 1.0},
      {'setting': 'tam_recompute', 'worker': 'jax_default:tam_recompute', 'modality': 'rgb',
       'videos': 2, 'frames': 18, 'clips_per_s': 1.5},
      {'setting': 'tam_recompute', 'worker': 'jax_ynnpack:tam_recompute', 'modality': 'rgb',
       'videos': 2, 'frames': 18, 'clips_per_s': 9.0},
      {'setting': 'tam_masked', 'worker': 'torch', 'modality': 'rgb', 'videos': 2,
       'frames': 18, 'clips_per_s': 9.0},
      {'setting': 'baseline', 'worker': 'jax_default', 'modality': 'rgb', 'videos': 12,
       'frames': 12, 'clips_per_s': 8.0},
      {'setting': 'tsn3', 'ratio': 'jax_default/torch', 'speed_ratio_median': 0.9},
  ]
  path = tmp_path / 'steps.jsonl'
  path.write_text(''.join(json.dumps(line) + '\n' for line in lines))
  assert input_pipeline.step_rates(str(path)) == {('rgb', 9): ('tam_recompute', 1.5),
                                                  ('rgb', 1): ('baseline', 8.0)}


def test_ratio_line():
  rates = {'train_pipeline': 30.0, 'decode_loop': 20.0, 'decode_tfdata_parallel': 120.0}
  line = input_pipeline.ratio_line(rates, 'rgb', 'TS(3x3)', 9, {('rgb', 9): ('tam', 1.5)})
  assert line['pipeline_over_decode_loop'] == 1.5
  assert line['pipeline_over_parallel_decode'] == 0.25
  assert line['pipeline_over_step'] == 20.0 and line['step_setting'] == 'tam'
  assert 'pipeline_over_step' not in input_pipeline.ratio_line(rates, 'flow', 'TS(3x3)', 9, {})
