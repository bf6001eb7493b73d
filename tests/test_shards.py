"""data_prep.shards and data_prep.prepare end to end: Example encoding, shard plan, round trip of
real clips, broken files, kill-and-resume, damaged-shard repair and --verify, Beam DirectRunner,
TFDS mock."""

import dataclasses
import hashlib
import json
import os
import pathlib
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_prep import flow as flow_lib
from data_prep import integrity
from data_prep import layout
from data_prep import prepare as prep
from data_prep import process
from data_prep import shards
from data_prep import synthetic
from data_prep import video
from data_prep.sources import VideoItem

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# JPEG q95 of natural 340x256 frames: mean |decoded - original| per pixel stays below this.
RGB_JPEG_MEAN_TOLERANCE = 2.0
FLOW_JPEG_MEAN_TOLERANCE = 1.0  # quantised grey levels, q95 on smooth flow planes


def test_encode_example_matches_tensorflow_serialisation():
  tf = pytest.importorskip("tensorflow")
  features = {"video_id": b"v_Archery_g01_c01", "label": 83, "height": 256, "width": 340,
              "num_frames": 3, "num_flow": 0, "big": 2**40 + 7, "zero": 0,
              "rgb": [b"\xff\xd8abc", b"", bytes(range(256)) * 3], "flow_x": []}
  reference = tf.train.Example(features=tf.train.Features(feature={
      k: (tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) if isinstance(v, int) else
          tf.train.Feature(bytes_list=tf.train.BytesList(
              value=v if isinstance(v, list) else [v])))
      for k, v in features.items()}))
  assert shards.encode_example(features) == reference.SerializeToString(deterministic=True)
  parsed = shards.parse_example(shards.encode_example(features))
  assert parsed["label"] == [83] and parsed["rgb"] == features["rgb"] and parsed["flow_x"] == []


def _items(n, split="train"):
  return [VideoItem(f"/x/{i}.avi", i % 3, f"v_{i:03d}", split) for i in range(n)]


def test_plan_is_deterministic_and_sorted():
  items = _items(7) + _items(3, "test")
  shuffled = list(items)
  random.Random(0).shuffle(shuffled)
  plan = shards.plan_shards(items, 3, ("rgb", "flow"))
  assert plan == shards.plan_shards(shuffled, 3, ("rgb", "flow"))
  assert [s.filename for s in plan] == [
      "train-rgb+flow-00000-of-00003.tfrecord", "train-rgb+flow-00001-of-00003.tfrecord",
      "train-rgb+flow-00002-of-00003.tfrecord", "test-rgb+flow-00000-of-00001.tfrecord"]
  assert [len(s.items) for s in plan] == [3, 3, 1, 3]
  ids = [i.video_id for s in plan if s.split == "train" for i in s.items]
  assert ids == sorted(ids)


# ----------------------------------------------------------------------------------------------
# Real clips → shards → back


@pytest.fixture(scope="module")
def ucf_prepared(tmp_path_factory, testdata_dir):
  out = tmp_path_factory.mktemp("ucf_prepared")
  options = prep.PrepareOptions(
      out=str(out), dataset="ucf101", videos=str(testdata_dir / "videos" / "ucf101"),
      splits=str(testdata_dir / "splits" / "ucf101"), split=1, workers=1, shard_size=2,
      progress=False, max_videos=1)
  return options, prep.prepare(options)


def test_manifest_has_contract_keys(ucf_prepared):
  options, manifest = ucf_prepared
  for key in ("dataset", "split", "classes", "num_videos", "modalities", "frame_size", "flow",
              "skipped", "missing", "shards", "created_with"):
    assert key in manifest, key
  assert manifest["dataset"] == "ucf101" and manifest["split"] == 1
  assert manifest["classes"][83] == "SoccerJuggling"
  assert manifest["frame_size"] == [256, 340]
  assert {k: manifest["flow"][k] for k in ("method", "bound", "format")} == {
      "method": "dis", "bound": 20.0, "format": "jpeg"}
  assert manifest["num_videos"] == {"train": 1, "test": 1}
  assert manifest["shards"] == {"train": ["train-rgb+flow-00000-of-00001.tfrecord"],
                                "test": ["test-rgb+flow-00000-of-00001.tfrecord"]}
  assert len(manifest["missing"]) == 9537 + 3783 - 5  # all but the 5 testdata clips
  on_disk = json.loads((pathlib.Path(options.out) / "manifest.json").read_text())
  assert on_disk == manifest


def test_real_clip_round_trip_within_jpeg_tolerance(ucf_prepared, testdata_dir):
  options, _ = ucf_prepared
  examples = {e["video_id"][0]: e for e in shards.read_shard(
      pathlib.Path(options.out) / "test-rgb+flow-00000-of-00001.tfrecord")}
  # max_videos=1 takes the first id of the 3 present test clips.
  assert sorted(examples) == [b"v_Archery_g01_c01"]
  ex = examples[b"v_Archery_g01_c01"]
  frames = video.read_video(testdata_dir / "videos" / "ucf101" / "v_Archery_g01_c01.avi")
  n = len(frames)
  assert (ex["num_frames"], ex["num_flow"], ex["height"], ex["width"]) == ([n], [n - 1], [256],
                                                                           [340])
  assert ex["label"] == [2] and len(ex["rgb"]) == n
  assert len(ex["flow_x"]) == len(ex["flow_y"]) == n - 1 and "warpflow_x" not in ex
  decoded = np.stack([flow_lib.decode_image(b) for b in ex["rgb"]])
  assert np.abs(decoded.astype(int) - frames).mean() < RGB_JPEG_MEAN_TOLERANCE
  # Flow planes: compare with flow recomputed from the same frames, quantised; the second
  # window straddles the boundary of the chunks process_video computes flow in.
  for start in (0, process.FLOW_CHUNK - 2):
    gray = flow_lib.to_gray(frames[start:start + 5])
    expected = flow_lib.quantize_flow(flow_lib.compute_flow(gray, "dis"))  # (4, H, W, 2)
    got = np.stack([np.stack([flow_lib.decode_image(x, True), flow_lib.decode_image(y, True)],
                             -1) for x, y in zip(ex["flow_x"][start:start + 4],
                                                 ex["flow_y"][start:start + 4])])
    assert np.abs(got.astype(int) - expected).mean() < FLOW_JPEG_MEAN_TOLERANCE


def test_broken_files_are_skipped_and_listed(tmp_path, testdata_dir):
  bad = testdata_dir / "bad"
  listing = tmp_path / "list.txt"
  names = ["empty.avi", "text_renamed.mp4", "truncated_30pct_mmaction2_demo.mp4",
           "truncated_30pct_v_Archery_g01_c01.avi", "not_there.avi"]
  listing.write_text("".join(f"{name} 0\n" for name in names))
  manifest = prep.prepare(prep.PrepareOptions(
      out=str(tmp_path / "out"), dataset="list", videos=str(bad), splits=str(listing),
      modalities=("rgb",), frame_width=64, frame_height=48, workers=1, progress=False))
  skipped = {pathlib.Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
  assert set(skipped) == {"empty.avi", "text_renamed.mp4", "truncated_30pct_mmaction2_demo.mp4"}
  assert "empty" in skipped["empty.avi"] and "cannot open" in skipped["text_renamed.mp4"]
  assert [pathlib.Path(m["path"]).name for m in manifest["missing"]] == ["not_there.avi"]
  assert manifest["num_videos"] == {"all": 1}
  assert [w["video_id"] for w in manifest["warnings"]] == ["truncated_30pct_v_Archery_g01_c01"]
  (ex,) = list(shards.read_shard(tmp_path / "out" / manifest["shards"]["all"][0]))
  assert ex["num_frames"] == [40] and len(ex["rgb"]) == 40 and "flow_x" not in ex


# ----------------------------------------------------------------------------------------------
# Synthetic set: resume, workers, Beam


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_synthetic")
  synthetic.generate(root, num_classes=2, videos_per_class=4, test_per_class=1, frames=16,
                     size=(64, 48), seed=1)
  return root


def _options(root, out, **kwargs):
  base = dict(out=str(out), dataset="ucf101", videos=str(root / "videos"),
              splits=str(root / "splits"), modalities=("rgb", "flow", "warpflow"),
              frame_width=96, frame_height=64, shard_size=2, workers=1, progress=False)
  return prep.PrepareOptions(**{**base, **kwargs})


def _snapshot(out):
  """{file name: bytes} of the shards and the manifest."""
  out = pathlib.Path(out)
  return {p.name: p.read_bytes() for p in sorted(out.iterdir())
          if p.name.endswith(".tfrecord") or p.name == "manifest.json"}


@pytest.fixture(scope="module")
def reference_out(tmp_path_factory, tiny_synthetic):
  out = tmp_path_factory.mktemp("reference")
  manifest = prep.prepare(_options(tiny_synthetic, out))
  return out, manifest


@pytest.fixture(scope="module")
def reference_run(reference_out):
  out, manifest = reference_out
  return manifest, _snapshot(out)


def test_reference_run_layout(reference_run):
  manifest, files = reference_run
  assert manifest["num_videos"] == {"train": 6, "test": 2}
  assert sorted(files) == ["manifest.json", "test-rgb+flow+warpflow-00000-of-00001.tfrecord",
                           "train-rgb+flow+warpflow-00000-of-00003.tfrecord",
                           "train-rgb+flow+warpflow-00001-of-00003.tfrecord",
                           "train-rgb+flow+warpflow-00002-of-00003.tfrecord"]
  assert manifest["flow"]["warpflow"]["min_inliers"] == flow_lib.MIN_HOMOGRAPHY_INLIERS


def test_kill_and_resume_gives_identical_bytes(tmp_path, tiny_synthetic, reference_run):
  out = tmp_path / "killed"
  options = _options(tiny_synthetic, out, workers=2)
  # The command line, with a 2-process pool (spawned from a `-m` main module).
  command = [sys.executable, "-m", "data_prep.prepare", "--dataset=ucf101",
             f"--videos={options.videos}", f"--splits={options.splits}", f"--out={out}",
             "--modalities=" + ",".join(options.modalities), f"--frame_width={options.frame_width}",
             f"--frame_height={options.frame_height}", f"--shard_size={options.shard_size}",
             "--workers=2"]
  proc = subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  progress = out / layout.PROGRESS_DIR
  deadline = time.time() + 120
  try:
    while proc.poll() is None and time.time() < deadline:
      if progress.is_dir() and any(p.name.endswith(".tfrecord.json") for p in progress.iterdir()):
        os.killpg(proc.pid, signal.SIGKILL)  # kills the run and its pool workers, nothing else
        break
      time.sleep(0.005)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  killed = proc.returncode == -signal.SIGKILL
  assert killed or proc.returncode == 0, proc.stderr.read().decode()[-3000:]
  proc.stderr.close()
  if not killed or (out / "manifest.json").exists():
    # The run finished before the kill landed: simulate one (later shards and manifest gone,
    # a half-written temporary left behind).
    for name in list(_snapshot(out))[1:]:
      (out / name).unlink()
      (progress / f"{name}.json").unlink(missing_ok=True)
  (out / ".train-rgb+flow+warpflow-00002-of-00003.tfrecord.tmp").write_bytes(b"partial")
  done_before = {p.name for p in out.glob("*.tfrecord")}
  assert "manifest.json" not in done_before and len(done_before) < 4
  prep.prepare(dataclasses.replace(options, workers=1))  # resume (other worker count)
  assert _snapshot(out) == reference_run[1]
  assert not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------------------------
# Integrity: damaged shards are found on resume and by --verify, and repaired byte-identical


TRAIN_SHARDS = [f"train-rgb+flow+warpflow-{i:05d}-of-00003.tfrecord" for i in range(3)]
TEST_SHARD = "test-rgb+flow+warpflow-00000-of-00001.tfrecord"


def _copy_output(reference_out, dest):
  shutil.copytree(reference_out[0], dest)
  return pathlib.Path(dest)


def _tree(root):
  """{relative path: (bytes, mtime_ns)} of every file under root."""
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
          for p in sorted(root.rglob("*")) if p.is_file()}


def _damage(out):
  """Truncates one shard, flips one byte inside a record of another, zero-fills a third (both
  same size), deletes the fourth and edits the manifest."""
  truncated, flipped, zeroed = (out / name for name in TRAIN_SHARDS)
  truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
  data = bytearray(flipped.read_bytes())
  data[len(data) // 2] ^= 0xFF
  flipped.write_bytes(bytes(data))
  zeroed.write_bytes(bytes(zeroed.stat().st_size))
  (out / TEST_SHARD).unlink()
  manifest = json.loads((out / "manifest.json").read_text())
  manifest["num_videos"]["train"] += 1
  (out / "manifest.json").write_text(json.dumps(manifest))


def test_resume_redoes_damaged_shards_byte_identical(tmp_path, tiny_synthetic, reference_out,
                                                     reference_run, capsys):
  out = _copy_output(reference_out, tmp_path / "out")
  _damage(out)
  assert _snapshot(out) != reference_run[1]
  prep.prepare(_options(tiny_synthetic, out))
  assert _snapshot(out) == reference_run[1]  # shards and manifest as a clean run wrote them
  printed = capsys.readouterr().out
  line = next(l for l in printed.splitlines() if l.startswith("repaired "))
  assert line.startswith("repaired 4 damaged shard(s): ")
  assert f"{TRAIN_SHARDS[0]}: truncated: " in line
  assert f"{TRAIN_SHARDS[1]}: content differs (SHA-256 mismatch)" in line
  assert f"{TRAIN_SHARDS[2]}: broken TFRecord framing" in line
  assert f"{TEST_SHARD}: missing" in line
  assert not list(out.glob(".*.tmp"))


def test_resume_upgrades_summaries_written_without_checksums(tmp_path, tiny_synthetic,
                                                             reference_out, reference_run):
  """Outputs prepared before integrity records: intact shards are read through (CRCs, record
  count) and kept, their summaries get size + SHA-256; a truncated one is redone."""
  out = _copy_output(reference_out, tmp_path / "out")
  progress = out / layout.PROGRESS_DIR
  for name in TRAIN_SHARDS:
    summary = json.loads((progress / f"{name}.json").read_text())
    del summary["bytes"], summary["sha256"]
    (progress / f"{name}.json").write_text(json.dumps(summary))
  kept = out / TRAIN_SHARDS[1]
  kept_mtime = kept.stat().st_mtime_ns
  damaged = out / TRAIN_SHARDS[0]
  damaged.write_bytes(damaged.read_bytes()[:-100])
  prep.prepare(_options(tiny_synthetic, out))
  assert _snapshot(out) == reference_run[1]
  assert kept.stat().st_mtime_ns == kept_mtime  # intact: not rewritten
  for name in TRAIN_SHARDS:
    summary = json.loads((progress / f"{name}.json").read_text())
    assert summary["sha256"] == reference_run[0]["shard_sha256"][name]


def test_manifest_records_size_records_and_sha256(reference_out):
  out, manifest = reference_out
  for name in TRAIN_SHARDS + [TEST_SHARD]:
    data = (out / name).read_bytes()
    assert manifest["shard_bytes"][name] == len(data)
    assert manifest["shard_sha256"][name] == hashlib.sha256(data).hexdigest()
    assert manifest["shard_num_videos"][name] == integrity.count_records(out / name) == 2


def test_verify_names_damage_writes_nothing_and_its_command_repairs(tmp_path, tiny_synthetic,
                                                                    reference_out,
                                                                    reference_run, capsys):
  out = _copy_output(reference_out, tmp_path / "out")
  assert prep.verify(str(out)) == []
  _damage(out)
  before = _tree(out)
  damages = prep.verify(str(out))
  assert _tree(out) == before  # nothing written, not even a timestamp
  found = {d.filename: d.reason for d in damages}
  assert found[TRAIN_SHARDS[0]].startswith("truncated: ")
  assert found[TRAIN_SHARDS[1]] == "content differs (SHA-256 mismatch)"
  assert found[TRAIN_SHARDS[2]].startswith("broken TFRecord framing")
  assert found[TEST_SHARD] == "missing"
  assert "num_videos['train'] is 7, its shards hold 6" in found["manifest.json"]
  assert len(damages) == 5

  verify = [sys.executable, "-m", "data_prep.prepare", f"--out={out}", "--verify"]
  proc = subprocess.run(verify, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith(f"DAMAGED: {out}: 5 problem(s)")
  command = lines[-1].strip()
  assert command.startswith(f"python -m data_prep.prepare --out={out} --dataset=ucf101 ")
  assert _tree(out) == before
  # The printed command is the repair: it reproduces the clean run's bytes.
  repair = subprocess.run([sys.executable] + shlex.split(command)[1:] + ["--workers=1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert repair.returncode == 0, repair.stderr[-3000:]
  assert _snapshot(out) == reference_run[1]
  assert prep.verify(str(out)) == []
  assert capsys.readouterr().out.startswith(f"OK: {out}: 4 shards and manifest.json verified")


def test_rerun_with_other_options_is_refused(tmp_path, tiny_synthetic):
  prep.prepare(_options(tiny_synthetic, tmp_path, modalities=("rgb",), max_videos=1))
  with pytest.raises(ValueError, match="other options.*jpeg_quality"):
    prep.prepare(_options(tiny_synthetic, tmp_path, modalities=("rgb",), max_videos=1,
                          jpeg_quality=80))


def test_beam_direct_runner_matches_local(tmp_path, tiny_synthetic, reference_run):
  pytest.importorskip("apache_beam")
  manifest = prep.prepare(_options(tiny_synthetic, tmp_path, runner="beam"))
  assert manifest == reference_run[0]
  assert _snapshot(tmp_path) == reference_run[1]


def test_tfds_mock_prepares_without_network(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=2):
    manifest = prep.prepare(prep.PrepareOptions(
        out=str(tmp_path), dataset="tfds", tfds_name="ucf101", frame_width=64, frame_height=64,
        workers=1, progress=False))
    labels = [int(ex["label"]) for ex in tfds.load("ucf101", split="test").as_numpy_iterator()]
  assert manifest["dataset"] == "tfds" and len(manifest["classes"]) == 101
  assert manifest["num_videos"] == {"train": 2, "test": 2}
  examples = list(shards.read_shard(tmp_path / manifest["shards"]["test"][0]))
  assert [e["video_id"][0] for e in examples] == [b"test_000000", b"test_000001"]
  assert [e["label"][0] for e in examples] == labels
  for e in examples:
    assert len(e["rgb"]) == e["num_frames"][0] and len(e["flow_x"]) == e["num_frames"][0] - 1
