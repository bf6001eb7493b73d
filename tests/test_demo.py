"""End to end: the demo's whole path (synthetic videos → shards → SAN pre-training → training →
25-segment eval with AVE/DCW → figures → table) on a couple of training steps."""

import json
import os

import matplotlib.image
import numpy as np
import pytest

from sta_cnn_jax import demo


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
  workdir = str(tmp_path / "demo")
  entries = demo.run(workdir, ["baseline", "sta_ts3x3_3x1"], steps=2)
  assert [e["row"] for e in entries] == ["baseline", "sta_ts3x3_3x1"]
  manifest = json.load(open(os.path.join(workdir, demo.SHARDS_DIR, "manifest.json")))
  num_test = manifest["num_videos"]["test"]
  for entry in entries:
    results = json.load(open(os.path.join(workdir, f"rgb_{entry['row']}", "results.json")))
    assert results["num_videos"] == num_test
    for method in ("dcw", "ave"):
      assert 0.0 <= entry[f"{method}_top1"] <= 1.0
      assert entry[f"{method}_top1"] == results["metrics"][method]["top1"]
    for path in entry["figures"]:
      image = matplotlib.image.imread(path)
      assert image.shape[0] > 100 and image.shape[1] > 100 and np.std(image) > 0.01
  sta = entries[1]
  # Attention mass inside the object's box is a fraction, and chance is the box's area fraction.
  assert 0.0 <= sta["attention_mass_in_box"] <= 1.0
  assert 0.0 < sta["box_area_fraction"] < 1.0
  assert sta["num_segments_with_object"] > 0
  assert any(p.endswith("_attention.png") for p in sta["figures"])
  table = open(os.path.join(workdir, "results.md")).read()
  assert "STA-TS(3x3,3x1)" in table and "BN-Inception TS(1,1)" in table
