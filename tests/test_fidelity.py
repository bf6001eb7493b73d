"""benchmarks/fidelity.py's summaries: means over seeds, pooled Wilson intervals, the paper's
orderings with per-seed differences, and the Markdown table (on hand-made entries)."""

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
