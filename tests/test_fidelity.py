"""benchmarks/fidelity.py's summaries: means over seeds, pooled Wilson intervals, the paper's
orderings with per-seed differences, and the Markdown table (on hand-made entries)."""

import os

import numpy as np
import pytest

from benchmarks import fidelity
from sta_cnn_jax import metrics


def _entry(row, modality, seed, dcw, ave, n=100):
  return {'row': row, 'modality': modality, 'seed': seed, 'num_test_videos': n, 'chance': 0.1,
          'dcw_top1': dcw, 'ave_top1': ave, 'tam_precision': None, 'tam_base_rate': None,
          'dcw_precision': 0.6, 'dcw_base_rate': 0.5, 'attention_in_box': None,
          'box_area_fraction': None, 'entropy_in_window': 1.0, 'entropy_outside_window': 2.0}


ENTRIES = [
    _entry('baseline', 'rgb', 0, 0.30, 0.28), _entry('baseline', 'rgb', 1, 0.20, 0.22),
    _entry('sta_ts3x3_3x1', 'rgb', 0, 0.40, 0.35), _entry('sta_ts3x3_3x1', 'rgb', 1, 0.05, 0.10),
]


def test_summary_means_and_pooled_interval():
  summary = {(s['row'], s['modality']): s for s in fidelity.summarize(ENTRIES)}
  base = summary[('baseline', 'rgb')]
  assert base['dcw_top1']['mean'] == pytest.approx(0.25)
  assert base['dcw_top1']['std'] == pytest.approx(np.std([0.30, 0.20]))
  assert base['dcw_top1_interval95'] == pytest.approx(list(metrics.wilson_interval(50, 200)))
  assert base['tam_precision'] is None and base['dcw_precision']['mean'] == pytest.approx(0.6)


def test_orderings_report_per_seed_differences_and_failures():
  checks = {c['claim']: c for c in fidelity.orderings(ENTRIES, ['baseline', 'sta_ts3x3_3x1'])}
  sta = checks['rgb: STA-TS(3x3,3x1) > baseline']
  assert sta['per_seed'] == pytest.approx([0.10, -0.15])
  assert sta['mean'] == pytest.approx(-0.025) and not sta['holds']
  dcw = checks['rgb sta_ts3x3_3x1: DCW >= AVE']
  assert dcw['per_seed'] == pytest.approx([0.05, -0.05]) and dcw['holds']
  table = fidelity.format_markdown(fidelity.summarize(ENTRIES), list(checks.values()), [], '#')
  assert '| rgb: STA-TS(3x3,3x1) > baseline | NO |' in table
  assert '[95% CI]' in table and '25.0 ± 5.0' in table


def test_report_fills_best_possible_precisions_from_saved_scores(tmp_path):
  """--report on an older results.json: each run's best-possible TAM / DCW precision from its
  saved video ids and the ground truth, equal to a direct count."""
  from sta_cnn_jax import experiment, mechanism, modalities  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  truth = {f'v{i}': {'num_frames': 48, 'window': (int(s), int(s) + 24), 'boxes': [None] * 48}
           for i, s in enumerate(rng.integers(0, 25, size=6))}
  ids = sorted(truth)
  row, modality = 'tam_ts3x3_3x1', 'rgb'
  run = fidelity.run_dir(str(tmp_path), (modality, row, 0))
  os.makedirs(os.path.join(run, experiment.TAM_PROBE_DIR))
  np.savez(os.path.join(run, modalities.SCORES_FILE), video_id=np.array(ids[:2]))
  np.savez(os.path.join(run, experiment.TAM_PROBE_DIR, modalities.SCORES_FILE),
           video_id=np.array(ids[2:]))
  entry = dict(_entry(row, modality, 0, 0.3, 0.3), tam_precision=0.6, tam_base_rate=0.5)
  fused = _entry(row, 'fusion', 0, 0.4, 0.4)
  fidelity.add_best_precisions([entry, fused], str(tmp_path), str(tmp_path), truth)
  train_inside, _ = mechanism.in_window(ids[2:], truth, 9, modality)
  test_inside, _ = mechanism.in_window(ids[:2], truth, 25, modality)
  per_segment = np.mean([train_inside[v, 3 * g:3 * g + 3].any()
                         for v in range(4) for g in range(3)])
  assert entry['tam_best_precision'] == pytest.approx(per_segment)
  assert entry['dcw_best_precision'] == pytest.approx(
      np.mean([min(15, test_inside[v].sum()) / 15 for v in range(2)]))
  assert 'tam_best_precision' not in fused


def test_each_seed_pretrains_the_san_of_its_first_rgb_spatial_attention_run():
  from configs import demo  # pylint: disable=g-import-not-at-top
  from sta_cnn_jax import experiment  # pylint: disable=g-import-not-at-top
  runs = {(m, r, s): demo.run_config(m, r, '/shards', s) for s in (0, 1)
          for r in ('baseline', 'sam_cnn3', 'sta_ts3x3_3x1') for m in ('rgb', 'flow')}
  san = experiment.san_pretraining_configs(runs)
  assert sorted(san) == [0, 1]
  assert all(c is runs[('rgb', 'sam_cnn3', s)] for s, c in san.items())
  assert experiment.san_pretraining_configs(
      {k: c for k, c in runs.items() if k[1] == 'baseline' or k[0] == 'flow'}) == {}


def test_table_prints_the_static_share_beside_attention_in_box():
  entries = [dict(_entry('sam_cnn3', 'rgb', s, 0.3, 0.3), attention_in_box=box,
                  box_area_fraction=0.05, attention_static_share=share)
             for s, (box, share) in enumerate([(0.10, 0.9), (0.06, 0.7)])]
  summary = fidelity.summarize(entries)
  assert summary[0]['attention_static_share']['mean'] == pytest.approx(0.8)
  table = fidelity.format_markdown(summary, [], [], '#')
  assert '| 0.080 ± 0.020 (0.050 ± 0.000); 0.80 |' in table
  # Entries written before the metric existed (no key) print the cell without it.
  old = [{k: v for k, v in e.items() if k != 'attention_static_share'} for e in entries]
  assert '| 0.080 ± 0.020 (0.050 ± 0.000) |' in fidelity.format_markdown(
      fidelity.summarize(old), [], [], '#')


def test_train_video_top1_of_tam_rows_is_averaged_and_tabled():
  """The TAM probe's top-1 on the training videos: mean over seeds, its own column, and '—' for
  rows without the probe (and for results.json files written before it existed)."""
  entries = [dict(_entry('tam_ts3x3_3x1', 'rgb', s, 0.3, 0.3), tam_probe_train_top1=v)
             for s, v in ((0, 0.40), (1, 0.30))] + ENTRIES[:2]
  summary = {(s['row'], s['modality']): s for s in fidelity.summarize(entries)}
  assert summary[('tam_ts3x3_3x1', 'rgb')]['tam_probe_train_top1']['mean'] == pytest.approx(0.35)
  assert summary[('baseline', 'rgb')]['tam_probe_train_top1'] is None
  table = fidelity.format_markdown(list(summary.values()), [], [], '#').splitlines()
  tam = next(line for line in table if line.startswith('| tam_ts3x3_3x1 |'))
  base = next(line for line in table if line.startswith('| baseline |'))
  assert tam.endswith('| 35.0 ± 5.0 |') and base.endswith('| — |')
  assert len(tam.split('|')) == len(table[2].split('|'))   # as many cells as the header


def test_wall_time_adds_up_over_the_invocations_of_a_resumed_run(tmp_path):
  """A run that died and was resumed on the same --out reports both parts' seconds; one
  invocation recording twice (after each job) counts once, with its latest seconds."""
  import time  # pylint: disable=g-import-not-at-top
  first = time.time() - 100.0
  parts = fidelity.record_wall_seconds(str(tmp_path), first)
  assert sum(parts.values()) == pytest.approx(100.0, abs=1.0)
  second = time.time() - 30.0
  fidelity.record_wall_seconds(str(tmp_path), second)
  parts = fidelity.record_wall_seconds(str(tmp_path), second)
  assert sum(parts.values()) == pytest.approx(130.0, abs=1.0)
  assert len(parts) == 2


def _with_outcomes(entry, dcw, ave, videos='abc123'):
  return dict(entry, test_videos=videos, dcw_correct=dcw, ave_correct=ave)


def test_orderings_pool_the_paired_videos_of_every_seed_into_a_mcnemar_test():
  entries = [
      _with_outcomes(_entry('baseline', 'rgb', 0, 0.25, 0.25), '1100', '1010'),
      _with_outcomes(_entry('sta_ts3x3_3x1', 'rgb', 0, 0.75, 0.5), '1011', '1110'),
      _with_outcomes(_entry('baseline', 'rgb', 1, 0.0, 0.25), '0000', '0001'),
      _with_outcomes(_entry('sta_ts3x3_3x1', 'rgb', 1, 0.5, 0.25), '0110', '0001'),
  ]
  checks = {c['claim']: c for c in fidelity.orderings(entries, ['baseline', 'sta_ts3x3_3x1'])}
  sta = checks['rgb: STA-TS(3x3,3x1) > baseline']      # DCW: seed 0 won 2 lost 1, seed 1 2 / 0
  assert (sta['videos_won'], sta['videos_lost']) == (4, 1)
  assert sta['mcnemar_p'] == pytest.approx(metrics.mcnemar_exact(4, 1))
  dcw = checks['rgb baseline: DCW >= AVE']              # seed 0: 1 / 1, seed 1: 0 / 1
  assert (dcw['videos_won'], dcw['videos_lost'], dcw['mcnemar_p']) == (1, 2, 1.0)
  table = fidelity.format_markdown(fidelity.summarize(entries), list(checks.values()), [], '#')
  assert f"| 4 / 1 | {metrics.mcnemar_exact(4, 1):.3f} |" in table
  # Other test videos in one seed, or entries without per-video outcomes: no paired test.
  entries[3] = dict(entries[3], test_videos='other')
  checks = {c['claim']: c for c in fidelity.orderings(entries, ['baseline', 'sta_ts3x3_3x1'])}
  assert checks['rgb: STA-TS(3x3,3x1) > baseline']['mcnemar_p'] is None
  checks = fidelity.orderings(ENTRIES, ['baseline', 'sta_ts3x3_3x1'])
  assert all(c['videos_won'] is None for c in checks)
  assert '| — | — |' in fidelity.format_markdown(fidelity.summarize(ENTRIES), checks, [], '#')


def test_report_fills_per_video_outcomes_of_streams_and_fusion_from_saved_scores(tmp_path):
  from sta_cnn_jax import experiment, fuse  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  ids, labels = np.array(['v2', 'v0', 'v1', 'v3']), np.array([0, 1, 2, 0])
  saved = {}
  for modality in fidelity.STREAMS:
    run = fidelity.run_dir(str(tmp_path), (modality, 'baseline', 0))
    os.makedirs(run)
    z = {m: rng.dirichlet(np.ones(3), size=4) for m in fuse.METHODS}
    np.savez(os.path.join(run, 'eval_scores.npz'), video_id=ids, label=labels, **z)
    saved[modality] = dict(z, video_id=ids, label=labels)
  entries = [_entry('baseline', m, 0, 0.5, 0.5) for m in fidelity.STREAMS + (fidelity.FUSION,)]
  fidelity.add_paired_outcomes(entries, str(tmp_path))
  for e in entries[:2]:
    z = saved[e['modality']]
    assert e['dcw_correct'] == metrics.correct_string(z['dcw'], labels, ids)
    assert e['test_videos'] == metrics.video_set_digest(['v0', 'v1', 'v2', 'v3'])
  fused = experiment.fusion_entry('baseline', 0, [saved[m] for m in fidelity.STREAMS], 10)
  assert entries[2]['ave_correct'] == fused['ave_correct']
  assert entries[2]['dcw_correct'] == fused['dcw_correct']
  assert entries[2]['test_videos'] == entries[0]['test_videos']


def test_crop_size_switch_sets_crop_and_frames_together():
  """--crop_size: the run configs crop `crop_size` px from 4:3 frames of its height (K = 4 at
  128); the default is the miniature's 96-px crop of 96x128 frames."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  default = demo.run_config('rgb', 'sta_ts3x3_3x1', '/shards')
  assert (default.input.crop_size, tuple(default.input.frame_size)) == (96, (96, 128))
  assert demo.FRAME_SIZE == (96, 128)
  large = demo.run_config('flow', 'sta_ts3x3_3x1', '/shards', crop_size=128)
  assert (large.input.crop_size, tuple(large.input.frame_size)) == (128, (128, 170))
  assert fidelity.parse_args(['--out=x']).crop_size == 96
  assert fidelity.parse_args(['--out=x', '--crop_size=128']).crop_size == 128


def test_an_out_prepared_at_another_crop_stops_with_both_frame_sizes(tmp_path):
  """Resuming (or --report on) an --out whose shards were made for 128-px crops with the
  default 96 would pair 128x170 frames with 96x128 ground truth: a clear error instead, naming
  the manifest; the matching crop goes through."""
  import json  # pylint: disable=g-import-not-at-top
  from sta_cnn_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  shards = tmp_path / 'shards'
  shards.mkdir()
  (shards / input_pipeline.MANIFEST_NAME).write_text(json.dumps(
      {'classes': ['A', 'B'], 'frame_size': [128, 170], 'modalities': ['rgb', 'flow']}))
  argv = [f'--out={tmp_path}', f'--videos={tmp_path}', f'--splits={tmp_path}']
  with pytest.raises(ValueError, match=r'manifest\.json holds frames of \(128, 170\).*'
                                       r'--crop_size=96 needs \(96, 128\)'):
    fidelity.prepare_data(fidelity.parse_args(argv))
  data = fidelity.prepare_data(fidelity.parse_args(argv + ['--crop_size=128']))
  assert data['classes'] == ['A', 'B'] and data['shards'] == str(shards)
