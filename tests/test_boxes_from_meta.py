"""data_prep.boxes_from_meta: another generator's meta file -> boxes.json the mechanism reads."""

import json

import numpy as np
import pytest

from data_prep import boxes_from_meta
from sta_cnn_jax import mechanism


def _meta():
  return {"classes": ["SquareOrbit", "DiscPulse"], "size": [320, 240],
          "videos": {
              "SquareOrbit/v_SquareOrbit_g08_c01.avi": {
                  "label": 1, "frames": 4, "informative": [1, 3],
                  "boxes": [None, [10, 20, 46, 56], [12, 22, 48, 58], None]},
              "DiscPulse/v_DiscPulse_g01_c02.avi": {
                  "label": 2, "frames": 3, "informative": [0, 1],
                  "boxes": [[100, 50, 130, 80], None, None]}}}


def test_convert_matches_the_meta_and_reads_back_rescaled(tmp_path):
  meta_path = tmp_path / "meta.json"
  meta_path.write_text(json.dumps(_meta()))
  out = tmp_path / "boxes.json"
  boxes = boxes_from_meta.convert_file(meta_path, out)
  assert boxes["frame_size"] == [240, 320]
  assert set(boxes["videos"]) == {"v_SquareOrbit_g08_c01", "v_DiscPulse_g01_c02"}
  orbit = boxes["videos"]["v_SquareOrbit_g08_c01"]
  assert (orbit["label"], orbit["class"], orbit["evidence_frames"]) == (0, "SquareOrbit", [1, 3])
  assert boxes["videos"]["v_DiscPulse_g01_c02"]["label"] == 1
  # The mechanism metrics read it, rescaled to prepared frames of 96 x 128 (factor 0.4).
  truth = mechanism.load_ground_truth(str(out), (96, 128))
  assert truth["v_SquareOrbit_g08_c01"]["window"] == (1, 3)
  assert truth["v_SquareOrbit_g08_c01"]["boxes"][0] is None
  np.testing.assert_allclose(truth["v_SquareOrbit_g08_c01"]["boxes"][1],
                             np.array([10, 20, 46, 56]) * 0.4, rtol=1e-12)
  np.testing.assert_allclose(truth["v_DiscPulse_g01_c02"]["boxes"][0],
                             np.array([100, 50, 130, 80]) * 0.4, rtol=1e-12)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("size"), "no 'size'"),
    (lambda m: m["videos"]["DiscPulse/v_DiscPulse_g01_c02.avi"].pop("informative"),
     "has no informative"),
    (lambda m: m["videos"]["DiscPulse/v_DiscPulse_g01_c02.avi"].update(informative=[2, 5]),
     r"\[2, 5\) is not inside its 3 frames"),
    (lambda m: m["videos"]["DiscPulse/v_DiscPulse_g01_c02.avi"].update(label=3),
     "label 3 is not in 1..2"),
])
def test_bad_meta_is_named(edit, message):
  meta = _meta()
  edit(meta)
  with pytest.raises(ValueError, match=message):
    boxes_from_meta.convert(meta, "x/meta.json")


def test_missing_meta_file_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    boxes_from_meta.convert_file(tmp_path / "nope.json", tmp_path / "boxes.json")
