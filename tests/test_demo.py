"""End to end: the demo's whole path (synthetic videos → shards → SAN pre-training → RGB and flow
training → 25-segment eval with AVE/DCW → fusion → mechanism metrics → figures → table) on a
couple of training steps."""

import json
import os

import matplotlib.image
import numpy as np
import pytest

from sta_cnn_jax import demo
from sta_cnn_jax import metrics
from tests.conftest import SELF_PARALLEL


@pytest.mark.slow
@SELF_PARALLEL   # its runs go side by side on every core
def test_demo_runs_end_to_end(tmp_path, monkeypatch):
  workdir = str(tmp_path / "demo")
  # The demo's own data set, smaller (the path is the same).
  monkeypatch.setattr(demo, "DATASET", dict(num_classes=4, videos_per_class=6, test_per_class=2,
                                            frames=48, evidence_fraction=0.8))
  result = demo.run(workdir, ["sta_ts3x3_3x1"], steps=2)
  entries = result["entries"]
  assert [(e["row"], e["modality"]) for e in entries] == [
      ("sta_ts3x3_3x1", "rgb"), ("sta_ts3x3_3x1", "flow"), ("sta_ts3x3_3x1", "fusion")]
  manifest = json.load(open(os.path.join(workdir, demo.SHARDS_DIR, "manifest.json")))
  num_test = manifest["num_videos"]["test"]
  rgb, flow, fused = entries
  for entry in (rgb, flow):
    results = json.load(open(os.path.join(workdir, f"{entry['modality']}_sta_ts3x3_3x1",
                                          "results.json")))
    assert results["num_videos"] == num_test == entry["num_test_videos"]
    for method in ("dcw", "ave"):
      assert entry[f"{method}_top1"] == results["metrics"][method]["top1"]
    # Mechanism metrics are fractions beside their chance levels.
    for key in ("tam_precision", "tam_base_rate", "dcw_precision", "dcw_base_rate",
                "attention_in_box", "box_area_fraction"):
      assert 0.0 <= entry[key] <= 1.0, key
    # No selection beats a perfect one of its shape; a perfect one beats chance.
    for what in ("tam", "dcw"):
      assert entry[f"{what}_precision"] <= entry[f"{what}_best_precision"] + 1e-9
      assert entry[f"{what}_best_precision"] >= entry[f"{what}_base_rate"]
    assert 0.0 < entry["box_area_fraction"] < 1.0
    for path in entry["figures"]:
      image = matplotlib.image.imread(path)
      assert image.shape[0] > 100 and image.shape[1] > 100 and np.std(image) > 0.01
    assert any(p.endswith("_attention.png") for p in entry["figures"])
  assert fused["chance"] == pytest.approx(1 / len(manifest["classes"]))
  # Per-video outcomes (for paired tests between rows) agree with the accuracies, and every
  # entry covers the same test videos.
  for entry in entries:
    assert entry["test_videos"] == rgb["test_videos"]
    for method in ("dcw", "ave"):
      outcome = entry[f"{method}_correct"]
      assert len(outcome) == num_test and set(outcome) <= {"0", "1"}
      assert outcome.count("1") / num_test == pytest.approx(entry[f"{method}_top1"])
  assert result["san_pretraining"]["epe_after"] >= 0
  table = open(os.path.join(workdir, "results.md")).read()
  # Every accuracy is printed with its 95% interval.
  assert metrics.format_accuracy(fused["dcw_top1"], num_test) in table
  assert "STA-TS(3x3,3x1) | fusion" in table


def test_table_prints_static_share_only_for_spatial_rows():
  base = {'row': 'sta_ts3x3_3x1', 'row_name': 'STA', 'modality': 'rgb', 'num_test_videos': 40,
          'dcw_top1': 0.3, 'ave_top1': 0.25, 'chance': 0.1, 'dcw_precision': 0.8,
          'dcw_base_rate': 0.7, 'dcw_best_precision': 1.0, 'tam_precision': 0.8,
          'tam_base_rate': 0.7, 'tam_best_precision': 1.0, 'attention_in_box': 0.07,
          'box_area_fraction': 0.06}
  table = demo.format_table([dict(base, attention_static_share=0.934),
                             dict(base, modality='fusion', attention_in_box=None,
                                  box_area_fraction=None)])
  rows = table.splitlines()
  assert 'static share' in rows[0]
  assert rows[2].endswith('; static 0.93 |')
  assert 'static' not in rows[3]


def test_paired_comparisons_count_the_videos_only_one_side_gets_right():
  def entry(modality, dcw, ave):
    return {'row': 'sta_ts3x3_3x1', 'row_name': 'STA', 'modality': modality,
            'dcw_correct': dcw, 'ave_correct': ave, 'dcw_top1': dcw.count('1') / len(dcw),
            'ave_top1': ave.count('1') / len(ave)}
  entries = [entry('rgb', '110000', '100000'), entry('flow', '001100', '001110'),
             entry('fusion', '111110', '111100')]
  got = {c['comparison']: c for c in demo.paired_comparisons(entries)}
  rgb = got['STA: fusion > rgb (DCW)']
  assert (rgb['videos_won'], rgb['videos_lost']) == (3, 0)
  assert rgb['diff'] == pytest.approx(3 / 6)
  assert rgb['mcnemar_p'] == pytest.approx(metrics.mcnemar_exact(3, 0)) == 0.25
  flow = got['STA flow: DCW >= AVE']
  assert (flow['videos_won'], flow['videos_lost'], flow['mcnemar_p']) == (0, 1, 1.0)
  table = demo.format_paired(list(got.values()), 6)
  assert '| STA: fusion > rgb (DCW) | +50.0 pts | 3 / 0 | 0.250 |' in table
