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
