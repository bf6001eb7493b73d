"""data_prep.synthetic: UCF101 layout, boxes.json, class design, determinism."""

import collections
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from data_prep import sources
from data_prep import synthetic
from data_prep import video
from sta_cnn_jax import mechanism

NUM_CLASSES, PER_CLASS, TEST_PER_CLASS, FRAMES, SIZE = 4, 3, 1, 20, (96, 72)
# The centre of a present object's box has the mean colour of its two stripe colours (MJPG's
# chroma subsampling blends the thin stripes) within this L1 distance over RGB.
COLOUR_TOLERANCE = 45


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  info = synthetic.generate(root, NUM_CLASSES, PER_CLASS, TEST_PER_CLASS, FRAMES, SIZE, seed=3)
  return root, info


def test_ucf101_layout_and_split_files(dataset):
  root, info = dataset
  split_files = sorted(p.name for p in (root / "splits").iterdir())
  assert split_files == ["classInd.txt", "testlist01.txt", "trainlist01.txt"]
  for name in split_files:
    raw = (root / "splits" / name).read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") > 0  # CRLF, like the official files
  src = sources.ucf101_source(root / "videos", root / "splits", split=1)
  assert src.missing == () and list(src.classes) == info["classes"]
  assert collections.Counter(i.split for i in src.items) == {
      "train": NUM_CLASSES * (PER_CLASS - TEST_PER_CLASS), "test": NUM_CLASSES * TEST_PER_CLASS}
  groups = collections.defaultdict(set)
  for item in src.items:
    name = info["classes"][item.label]
    match = re.fullmatch(rf"v_{name}_g(\d\d)_c(\d\d)", item.video_id)
    assert match and item.path.endswith(f"videos/{name}/{item.video_id}.avi")
    groups[item.split].add(match.group(1))
    assert info["videos"][item.video_id]["split"] == item.split
  assert not groups["train"] & groups["test"]  # groups never straddle train and test
  decoded = video.decode_video(src.items[0].path, *SIZE)
  assert decoded.frames.shape == (FRAMES, SIZE[1], SIZE[0], 3) and decoded.warnings == ()


def _mirror_ranges(ranges):
  """Direction ranges (centre, half width) under a horizontal flip: θ -> 180° - θ."""
  return sorted(((180 - c) % 360, h) for c, h in ranges)


def test_class_pairs_share_appearance_differ_in_motion_and_are_mirror_invariant():
  specs = synthetic.class_specs(6)
  for a, b in zip(specs[::2], specs[1::2]):
    assert a.appearance == b.appearance and a.motion != b.motion
  assert len({s.appearance for s in specs}) == 3 and len({s.name for s in specs}) == 6
  for spec in synthetic.class_specs(2 * len(synthetic.APPEARANCES)):
    # A flipped video of the class is again a video of the class (TSN flips training clips).
    assert _mirror_ranges(spec.direction_ranges) == sorted(
        (c % 360, h) for c, h in spec.direction_ranges), spec.name
  # The flip maps motions onto themselves, never onto the pair's other motion.
  rising, falling = synthetic.class_specs(2)
  assert _mirror_ranges(rising.direction_ranges) != sorted(falling.direction_ranges)
  with pytest.raises(ValueError, match="num_classes"):
    synthetic.class_specs(2 * len(synthetic.APPEARANCES) + 1)


def test_boxes_mark_the_object_in_a_temporal_window(dataset):
  root, info = dataset
  boxes_on_disk = json.loads((root / "boxes.json").read_text())
  assert boxes_on_disk == info and info["frame_size"] == [SIZE[1], SIZE[0]]
  specs = synthetic.class_specs(NUM_CLASSES)
  for video_id, entry in info["videos"].items():
    boxes = entry["boxes"]
    start, stop = entry["evidence_frames"]
    assert len(boxes) == FRAMES and 0 < stop - start < FRAMES  # only some frames
    assert all((b is not None) == (start <= t < stop) for t, b in enumerate(boxes))
    spec = specs[entry["label"]]
    frames = video.read_video(root / "videos" / spec.name / f"{video_id}.avi", *SIZE)
    _, _, colour_a, colour_b = spec.appearance
    for t in (start, stop - 1):
      x0, y0, x1, y1 = boxes[t]
      assert 0 <= x0 < x1 <= SIZE[0] and 0 <= y0 < y1 <= SIZE[1]
      inner = frames[t, int(np.ceil(y0)) + 2:int(y1) - 2, int(np.ceil(x0)) + 2:int(x1) - 2]
      mean_colour = inner.reshape(-1, 3).mean(0)
      expected = (np.array(colour_a) + colour_b) / 2
      assert np.abs(mean_colour - expected).sum() < COLOUR_TOLERANCE, (video_id, t, mean_colour)
    # The box moves in a direction of the class's motion (image y points down).
    dx, dy = np.array(boxes[stop - 1][:2]) - np.array(boxes[start][:2])
    assert np.hypot(dx, dy) > 0
    degrees = np.rad2deg(np.arctan2(-dy, dx))
    assert any(abs((degrees - c + 180) % 360 - 180) <= h + 1 for c, h in spec.direction_ranges)


def test_deterministic_by_seed(tmp_path):
  kwargs = dict(num_classes=2, videos_per_class=2, test_per_class=1, frames=6, size=(32, 32))
  a = synthetic.generate(tmp_path / "a", seed=5, **kwargs)
  b = synthetic.generate(tmp_path / "b", seed=5, **kwargs)
  c = synthetic.generate(tmp_path / "c", seed=6, **kwargs)
  assert a == b and a != c
  files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.avi"))
  assert len(files) == 4
  for rel in files:
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()


def test_boxes_file_reads_back_rescaled_to_prepared_frames(dataset):
  """The boxes.json the generator writes is what sta_cnn_jax.mechanism reads (its one reader)."""
  root, info = dataset
  video_id, entry = next(iter(info["videos"].items()))
  t = entry["evidence_frames"][0]
  truth = mechanism.load_ground_truth(str(root / "boxes.json"), frame_size=(256, 340))
  scaled = truth[video_id]["boxes"][t]
  x0, y0, x1, y1 = entry["boxes"][t]
  np.testing.assert_allclose(scaled, [x0 * 340 / SIZE[0], y0 * 256 / SIZE[1],
                                      x1 * 340 / SIZE[0], y1 * 256 / SIZE[1]])
  assert truth[video_id]["window"] == tuple(entry["evidence_frames"])
  assert mechanism.load_ground_truth(str(root / "boxes.json"))[video_id]["boxes"] == entry["boxes"]


def test_invalid_arguments(tmp_path):
  with pytest.raises(ValueError, match="test_per_class"):
    synthetic.generate(tmp_path, videos_per_class=2, test_per_class=2)


def test_command_line_matches_generate(tmp_path):
  args = dict(num_classes=2, videos_per_class=2, test_per_class=1, frames=4, size=(32, 24), seed=7,
              object_fraction=0.3, evidence_fraction=0.5)
  subprocess.run([sys.executable, "-m", "data_prep.synthetic", f"--out={tmp_path / 'cli'}",
                  "--num_classes=2", "--videos_per_class=2", "--test_per_class=1", "--frames=4",
                  "--size=32x24", "--seed=7", "--object_fraction=0.3", "--evidence_fraction=0.5"],
                 check=True, capture_output=True,
                 cwd=pathlib.Path(__file__).resolve().parents[1])
  synthetic.generate(tmp_path / "api", **args)
  def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
  cli, api = files(tmp_path / "cli"), files(tmp_path / "api")
  assert cli == api and len(cli) == 4 + 3 + 1  # videos, split files, boxes.json
  for rel in cli:
    assert (tmp_path / "cli" / rel).read_bytes() == (tmp_path / "api" / rel).read_bytes()
