"""Stream fusion: weighted softmax-score sums aligned by video id, per split and averaged."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sta_cnn_jax import fuse

from tests.conftest import REPO_ROOT


def write_stream(path, ids, labels, ave, dcw):
  np.savez(path, video_id=np.array(ids), label=np.array(labels), ave=ave, dcw=dcw)
  return str(path)


def random_dists(rng, v, c):
  x = rng.rand(v, c) ** 4
  return (x / x.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def two_streams(tmp_path):
  rng = np.random.RandomState(0)
  ids = [f"v{i}" for i in range(12)]
  labels = rng.randint(0, 4, size=12)
  rgb = {m: random_dists(rng, 12, 4) for m in fuse.METHODS}
  flow = {m: random_dists(rng, 12, 4) for m in fuse.METHODS}
  perm = rng.permutation(12)          # the flow stream stores videos in another order
  a = write_stream(tmp_path / "rgb.npz", ids, labels, rgb["ave"], rgb["dcw"])
  b = write_stream(tmp_path / "flow.npz", [ids[i] for i in perm], labels[perm],
                   flow["ave"][perm], flow["dcw"][perm])
  return a, b, labels, rgb, flow


def test_fusion_matches_numpy_after_alignment(two_streams):
  a, b, labels, rgb, flow = two_streams
  report = fuse.fusion_report([a, b], [1.0, 1.5])
  for m in fuse.METHODS:
    fused = rgb[m] + 1.5 * flow[m]
    assert report["fused"][m]["top1"] == pytest.approx(np.mean(fused.argmax(-1) == labels))
    assert report["streams"][b][m]["top1"] == pytest.approx(np.mean(flow[m].argmax(-1) == labels))


def test_mismatched_videos_are_named(tmp_path, two_streams):
  a, _, labels, rgb, _ = two_streams
  c = write_stream(tmp_path / "c.npz", [f"w{i}" for i in range(12)], labels, rgb["ave"], rgb["dcw"])
  with pytest.raises(ValueError, match="missing.*v0"):
    fuse.fusion_report([a, c], [1, 1])


def test_missing_scores_file_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / fuse.SCORES_FILE)):
    fuse.load_scores(str(tmp_path))


def test_cli_reports_splits_and_their_mean(tmp_path, two_streams):
  a, b, labels, rgb, flow = two_streams
  out = tmp_path / "report.json"
  proc = subprocess.run(
      [sys.executable, "-m", "sta_cnn_jax.fuse", f"--split=1:{a},{b}", f"--split=2:{b},{a}",
       "--weights=1,1", f"--out={out}"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
  assert "| mean |" in proc.stdout
  report = json.loads(out.read_text())
  fused = rgb["dcw"] + flow["dcw"]
  assert report["mean"]["dcw"]["top1"] == pytest.approx(np.mean(fused.argmax(-1) == labels))


def test_weighted_mean_is_tsns_weighted_sum_over_the_weight_total():
  rng = np.random.RandomState(1)
  a, b, c = (random_dists(rng, 7, 5) for _ in range(3))
  fused = fuse.weighted_mean([a, b, c], fuse.DEFAULT_WEIGHTS)
  a, b, c = (x.astype(np.float64) for x in (a, b, c))
  tsn_sum = 1.0 * a + 1.5 * b + 1.0 * c  # TSN: Σ w_i s_i
  np.testing.assert_allclose(fused, tsn_sum / 3.5, rtol=1e-12)
  np.testing.assert_allclose(fused.sum(-1), 1.0, rtol=1e-6)  # still a distribution (float32 s_i)
  np.testing.assert_array_equal(fused.argmax(-1), tsn_sum.argmax(-1))  # same ranking
  assert fuse.DEFAULT_WEIGHTS == (1.0, 1.5, 1.0)
  assert [fuse.MODALITY_WEIGHTS[m] for m in ("rgb", "flow", "warpflow")] == [1.0, 1.5, 1.0]


@pytest.mark.parametrize("weights, message", [
    ([1.0], "2 streams but 1 fusion weights"),
    ([1.0, -0.5], "non-negative"),
    ([0.0, 0.0], "positive sum"),
])
def test_bad_weights_are_refused(weights, message):
  rng = np.random.RandomState(2)
  with pytest.raises(ValueError, match=message):
    fuse.weighted_mean([random_dists(rng, 3, 4), random_dists(rng, 3, 4)], weights)
