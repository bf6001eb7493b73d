"""input_pipeline: shards -> sampled, augmented, device-shaped batches.

Shards are written here (independent of data_prep) in the format of docs/design.md "Shard
format", with synthetic frames
whose pixels encode what they are, stored as lossless PNG so values survive exactly:
  RGB frame f:  R = f (constant), G = 4*y, B = 4*x   (pixel row y, column x)
  flow field f: x plane = FLOW_X_BASE + f (constant), y plane = 4*x (column gradient)
From the output we recover which frames each snippet took (R / flow x), where the crop
was and how large (G / B / flow y are linear in position; bilinear resizing preserves
that away from the borders) and whether it was flipped (the B / flow-y gradient's sign).
"""

import json
import os
import threading

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import base as config_base
from sta_cnn_jax import augment
from sta_cnn_jax import dataset_files
from sta_cnn_jax import input_pipeline as ip
from sta_cnn_jax import loop
from tests import test_sampling as ref
from tests.conftest import run_multidevice
from tests.train_utils import set_fields

HEIGHT, WIDTH, OUT = 48, 64, 32
POS_SCALE = 4  # G = 4*y, B = 4*x
FLOW_X_BASE = 30
# Frame counts per video (label = video index): all TSN branches for K = 9 and K = 3.
TRAIN_FRAMES = (3, 7, 12, 20, 33, 10)
TEST_FRAMES = (5, 26, 40, 9, 30)


# ---------------------------------------------------------------- shard writer


def _png(array):
  return tf.io.encode_png(array).numpy()


def _rgb_frame(f):
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
  return np.stack([np.full_like(y, f), POS_SCALE * y, POS_SCALE * x], -1).astype(np.uint8)


def _flow_planes(f):
  _, x = np.mgrid[0:HEIGHT, 0:WIDTH]
  return (np.full((HEIGHT, WIDTH, 1), FLOW_X_BASE + f, np.uint8),
          (POS_SCALE * x)[..., None].astype(np.uint8))


def _bytes_feature(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int_feature(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(video_id, label, num_frames, modalities=("rgb", "flow"), encode=_png):
  rgb = [encode(_rgb_frame(f)) for f in range(num_frames)]
  flow = [_flow_planes(f) for f in range(num_frames - 1)]
  feature = {
      "video_id": _bytes_feature([video_id.encode()]),
      "label": _int_feature(label),
      "height": _int_feature(HEIGHT), "width": _int_feature(WIDTH),
      "num_frames": _int_feature(num_frames),
      "num_flow": _int_feature(num_frames - 1 if "flow" in modalities else 0),
  }
  if "rgb" in modalities:
    feature["rgb"] = _bytes_feature(rgb)
  if "flow" in modalities:
    feature["flow_x"] = _bytes_feature(encode(x) for x, _ in flow)
    feature["flow_y"] = _bytes_feature(encode(y) for _, y in flow)
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_dataset(out_dir, splits, num_shards=3, modalities=("rgb", "flow"),
                  frame_size=(HEIGHT, WIDTH)):
  """splits: {split: [num_frames per video]} -> shards + manifest.json; returns out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  tag = "+".join(modalities)
  shards = {}
  for split, frame_counts in splits.items():
    names = [f"{split}-{tag}-{s:05d}-of-{num_shards:05d}.tfrecord" for s in range(num_shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(out_dir, n)) for n in names]
    for v, n in enumerate(frame_counts):
      writers[v % num_shards].write(make_example(f"{split}_v{v:03d}", v, n, modalities))
    for w in writers:
      w.close()
    shards[split] = names
  manifest = {"dataset": "synthetic-test", "classes": [f"c{i}" for i in range(50)],
              "num_videos": {s: len(c) for s, c in splits.items()},
              "modalities": list(modalities), "frame_size": list(frame_size),
              "flow": {"method": "synthetic", "params": {}, "bound": 20, "format": "png"},
              "skipped": [], "missing": [], "shards": shards, "created_with": {}}
  with open(os.path.join(out_dir, ip.MANIFEST_NAME), "w") as f:
    json.dump(manifest, f)
  return str(out_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_dataset(tmp_path_factory.mktemp("shards"),
                       {"train": TRAIN_FRAMES, "test": TEST_FRAMES})


def pipeline_config(data_dir, modality="rgb", **fields):
  """The base config of `modality` reading `data_dir` with OUT-pixel crops; `fields` set
  dotted config fields ('temporal.num_segments': 2, ...)."""
  config = config_base.get_base_config(modality if modality in ip.MODALITIES else "rgb")
  config.modality, config.data_dir, config.input.crop_size = modality, str(data_dir), OUT
  return set_fields(config, fields)


def train_iter(data_dir, modality="rgb", n=3, m=3, batch=2, devices=1, seed=0,
               process_index=0, process_count=1, start_step=0):
  """Training batches of `batch` videos per host."""
  config = pipeline_config(data_dir, modality, seed=seed, batch_size=batch * process_count,
                           **{"temporal.num_segments": n, "temporal.snippets_per_segment": m})
  return ip.create_train_dataset(config, start_step=start_step, process_index=process_index,
                                 process_count=process_count, num_devices=devices)


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def flat_videos(batches):
  """Concatenates (D, B, ...) batches into per-video arrays."""
  return {k: np.concatenate([b[k].reshape((-1,) + b[k].shape[2:]) for b in batches])
          for k in batches[0]}


# ---------------------------------------------------------------- geometry decoding


def fit_axis(values):
  """Crop start and size along one axis from a resized linear ramp POS_SCALE*position.

  Interior output pixel o samples input coordinate start - .5 + (o + .5) * size / OUT.
  """
  o = np.arange(OUT)
  inner = slice(3, OUT - 3)
  slope, intercept = np.polyfit(o[inner], values[inner] / POS_SCALE, 1)
  size = slope * OUT
  start = intercept + 0.5 - 0.5 * slope
  return start, size


def decode_rgb_crop(frame):
  """(OUT, OUT, 3) uint8 frame -> (y, x, h, w, flipped) of its crop, in input pixels."""
  b_row = frame[OUT // 2, :, 2].astype(np.float64)
  flipped = b_row[-4] < b_row[3]
  y, h = fit_axis(frame[:, OUT // 2, 1].astype(np.float64))
  x, w = fit_axis(b_row[::-1] if flipped else b_row)
  return np.array([y, x, h, w]), flipped


def assert_tsn_crop(window, scales, height=HEIGHT, width=WIDTH):
  """The fitted window is one of TSN's (size pair x 13 fixed offsets) candidates."""
  rounded = np.round(window).astype(int)
  np.testing.assert_allclose(window, rounded, atol=0.35)
  y, x, h, w = rounded
  assert (w, h) in ref.np_crop_pairs(width, height, OUT, scales)
  assert (y, x) in ref.np_fill_fix_offset(True, width, height, w, h)
  return tuple(rounded)


def assert_train_offsets(offsets, n, k, new_length):
  """offsets (K,) are a possible draw of tsn-pytorch `_sample_indices`."""
  avg = (n - new_length + 1) // k
  if avg > 0:
    np.testing.assert_array_less(np.arange(k) * avg - 1, offsets)
    np.testing.assert_array_less(offsets, (np.arange(k) + 1) * avg)
  elif n > k:
    assert np.all(np.diff(offsets) >= 0) and offsets.min() >= 0
    assert offsets.max() <= max(n - new_length, 0)
  else:
    np.testing.assert_array_equal(offsets, 0)


# ---------------------------------------------------------------- train


@pytest.mark.parametrize("n,m", [(3, 3), (1, 1)])
def test_train_rgb_sampling_crop_flip(data_dir, n, m):
  k = n * m
  videos = flat_videos(take(train_iter(data_dir, n=n, m=m, batch=3), 6))
  frames, labels = videos["frames"], videos["label"]
  assert frames.dtype == np.uint8 and frames.shape[1:] == (k, OUT, OUT, 6)
  crops, flips = set(), set()
  for clip, label in zip(frames, labels):
    num_frames = TRAIN_FRAMES[label]
    # R is constant per frame: channel 0 = frame i, channel 3 = frame i+1 (clamped).
    first = clip[..., 0].reshape(k, -1)
    second = clip[..., 3].reshape(k, -1)
    assert np.all(first == first[:, :1]) and np.all(second == second[:, :1])
    offsets = first[:, 0].astype(int)
    np.testing.assert_array_equal(second[:, 0], np.minimum(offsets + 1, num_frames - 1))
    assert_train_offsets(offsets, num_frames, k, 1)
    # One crop and flip for every frame of every snippet (G, B planes identical).
    for plane in (1, 2, 4, 5):
      np.testing.assert_array_equal(clip[..., plane], np.broadcast_to(
          clip[:1, ..., plane], clip[..., plane].shape))
    np.testing.assert_array_equal(clip[..., 1:3], clip[..., 4:6])  # frame i vs i+1
    window, flipped = decode_rgb_crop(clip[0, ..., :3])
    crops.add(assert_tsn_crop(window, augment.RGB_SCALES))
    flips.add(bool(flipped))
  assert len(crops) > 1 and flips == {True, False}  # randomness is actually used


def test_train_flow_sampling_flip_inverts_x(data_dir):
  k = 9
  videos = flat_videos(take(train_iter(data_dir, modality="flow", batch=3), 6))
  frames, labels = videos["frames"], videos["label"]
  assert frames.shape[1:] == (k, OUT, OUT, 10)
  flips = set()
  for clip, label in zip(frames, labels):
    num_flow = TRAIN_FRAMES[label] - 1
    y_row = clip[0, OUT // 2, :, 1].astype(np.float64)  # flow y of field 0: column ramp
    flipped = y_row[-4] < y_row[3]
    flips.add(bool(flipped))
    x_planes = clip[..., 0::2].reshape(k, -1, 5)  # (K, pixels, 5 fields)
    assert np.all(x_planes == x_planes[:, :1])  # x planes are constant
    fields = x_planes[:, 0, :].astype(int)
    fields = 255 - fields - FLOW_X_BASE if flipped else fields - FLOW_X_BASE
    offsets = fields[:, 0]
    np.testing.assert_array_equal(fields, np.minimum(offsets[:, None] + np.arange(5),
                                                     num_flow - 1))
    assert_train_offsets(offsets, num_flow, k, 5)
    # y planes are never inverted: every y plane equals the (mirrored or not) column ramp.
    y_planes = clip[..., 1::2]
    np.testing.assert_array_equal(y_planes, np.broadcast_to(y_planes[:1, ..., :1],
                                                            y_planes.shape))
    _, w = fit_axis(y_row[::-1] if flipped else y_row)
    assert round(w) in {s for s, _ in ref.np_crop_pairs(WIDTH, HEIGHT, OUT,
                                                        augment.FLOW_SCALES)}
  assert flips == {True, False}


@pytest.mark.parametrize("devices", [1, 2])
def test_train_batch_shapes(data_dir, devices):
  batch = next(train_iter(data_dir, batch=4, devices=devices, n=2, m=1))
  per_device = 4 // devices
  assert batch["frames"].shape == (devices, per_device, 2, OUT, OUT, 6)
  assert batch["label"].shape == (devices, per_device) and batch["label"].dtype == np.int32
  with pytest.raises(ValueError, match="batch_size=3 is not divisible by the 2 devices"):
    train_iter(data_dir, batch=3, devices=2)


def test_train_deterministic_and_resumable(data_dir):
  # 6 videos, batch 4: epochs end mid-batch, so resume must cross epoch boundaries.
  full = take(train_iter(data_dir, batch=4, n=2, m=1, seed=7), 5)
  again = take(train_iter(data_dir, batch=4, n=2, m=1, seed=7), 5)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["label"], b["label"])
  other = take(train_iter(data_dir, batch=4, n=2, m=1, seed=8), 5)
  assert any(not np.array_equal(a["frames"], b["frames"]) for a, b in zip(full, other))
  for start in (1, 3):
    resumed = take(train_iter(data_dir, batch=4, n=2, m=1, seed=7, start_step=start),
                   5 - start)
    for a, b in zip(full[start:], resumed):
      np.testing.assert_array_equal(a["frames"], b["frames"])
      np.testing.assert_array_equal(a["label"], b["label"])
  # Each epoch visits every video exactly once (24 videos = 4 epochs of 6).
  labels = np.concatenate([b["label"].ravel() for b in full[:6]])
  for epoch in range(len(labels) // len(TRAIN_FRAMES)):
    chunk = labels[epoch * len(TRAIN_FRAMES):(epoch + 1) * len(TRAIN_FRAMES)]
    assert sorted(chunk) == list(range(len(TRAIN_FRAMES)))


def test_train_hosts_read_disjoint_videos(data_dir):
  # 3 shards hold videos {0, 3}, {1, 4}, {2, 5}: host 0 reads shards 0 and 2, host 1 shard 1.
  per_host = []
  for host in range(2):
    batches = take(train_iter(data_dir, batch=2, n=1, m=1, process_index=host,
                              process_count=2), 2 if host == 0 else 1)
    per_host.append(set(np.concatenate([b["label"].ravel() for b in batches]).tolist()))
  assert per_host == [{0, 2, 3, 5}, {1, 4}]


# ---------------------------------------------------------------- eval


def eval_iter(data_dir, modality="rgb", batch=2, devices=1, num_segments=25, num_views=10,
              out_size=OUT, process_index=0, process_count=1):
  config = pipeline_config(data_dir, modality, **{
      "eval.batch_size": batch, "eval.num_segments": num_segments, "eval.num_views": num_views,
      "input.crop_size": out_size})
  return ip.create_eval_dataset(config, process_index=process_index,
                                process_count=process_count, num_devices=devices)


def eval_batches(data_dir, modality="rgb", batch=2, devices=1, **kw):
  return list(eval_iter(data_dir, modality, batch, devices, **kw))


def test_eval_rgb_views_exact(data_dir):
  batches = eval_batches(data_dir, batch=2)
  assert len(batches) == 3
  b0 = batches[0]
  assert b0["frames"].shape == (1, 2, 25, 10, OUT, OUT, 6)
  videos = flat_videos(batches)
  valid = videos["valid"]
  np.testing.assert_array_equal(valid, [True] * 5 + [False])
  ids = videos["video_id"][valid]
  assert sorted(ids) == [f"test_v{v:03d}".encode() for v in range(5)]
  assert videos["video_id"][~valid][0] == b"" and np.all(videos["frames"][~valid] == 0)
  offsets = ref.np_fill_fix_offset(False, WIDTH, HEIGHT, OUT, OUT)
  for clip, label in zip(videos["frames"][valid], videos["label"][valid]):
    n = TEST_FRAMES[label]
    want = ref.np_test_indices(n, 25, 1)
    np.testing.assert_array_equal(clip[:, :, 0, 0, 0], np.broadcast_to(want[:, None], (25, 10)))
    np.testing.assert_array_equal(clip[:, :, 0, 0, 3],
                                  np.broadcast_to(np.minimum(want + 1, n - 1)[:, None],
                                                  (25, 10)))
    for v, (y, x) in enumerate(offsets):  # crops are exact slices, flips exact mirrors
      expected = _rgb_frame(0)[y:y + OUT, x:x + OUT, 1:]
      np.testing.assert_array_equal(clip[:, v, ..., 1:3], np.broadcast_to(
          expected, (25, OUT, OUT, 2)))
      np.testing.assert_array_equal(clip[:, v + 5], clip[:, v, :, ::-1])
    # TSN centre crop of 48x64 -> 32: offset (2 * (48-32)//4, 2 * (64-32)//4) = (8, 16).
    assert offsets[4] == (8, 16)
    assert clip[0, 4, 0, 0, 1] == POS_SCALE * 8 and clip[0, 4, 0, 0, 2] == POS_SCALE * 16
  again = eval_batches(data_dir, batch=2)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["frames"], b["frames"])


def test_eval_flow_flips_invert_x(data_dir):
  videos = flat_videos(eval_batches(data_dir, modality="flow", batch=5, num_segments=4))
  assert videos["frames"].shape == (5, 4, 10, OUT, OUT, 10)
  for clip, label in zip(videos["frames"], videos["label"]):
    n = TEST_FRAMES[label] - 1
    want = ref.np_test_indices(n, 4, 5)
    fields = np.minimum(want[:, None] + np.arange(5), n - 1)
    np.testing.assert_array_equal(clip[:, 0, 0, 0, 0::2], FLOW_X_BASE + fields)
    np.testing.assert_array_equal(clip[:, 5, 0, 0, 0::2], 255 - FLOW_X_BASE - fields)
    np.testing.assert_array_equal(clip[:, 5, ..., 1::2], clip[:, 0, :, ::-1, 1::2])


def test_eval_one_view_and_two_devices(data_dir):
  batches = eval_batches(data_dir, batch=4, devices=2, num_views=1, num_segments=3)
  assert [b["frames"].shape for b in batches] == [(2, 2, 3, 1, OUT, OUT, 6)] * 2
  assert batches[1]["valid"].tolist() == [[True, False], [False, False]]
  assert batches[1]["video_id"].dtype == object


def test_eval_multihost_padding_same_steps(tmp_path):
  data_dir = write_dataset(tmp_path / "d", {"test": (4, 5, 6, 7, 8)}, num_shards=3)
  # shards hold videos {0,3}, {1,4}, {2}; 2 hosts: host 0 -> shards 0, 2 (3 videos), host 1
  # -> shard 1 (2 videos); batch 2 -> both hosts yield 2 batches.
  seen = []
  for host in range(2):
    batches = eval_batches(data_dir, batch=2, num_segments=2, process_index=host,
                           process_count=2)
    assert len(batches) == 2
    videos = flat_videos(batches)
    seen += list(videos["video_id"][videos["valid"]])
  assert sorted(seen) == [f"test_v{v:03d}".encode() for v in range(5)]


def test_eval_out_size_too_large(tmp_path):
  data_dir = write_dataset(tmp_path / "d", {"test": (4,)}, num_shards=1)
  with pytest.raises(ValueError, match="exceeds the frame size"):
    eval_iter(data_dir, batch=1, out_size=HEIGHT + 1)


# ---------------------------------------------------------------- shards and errors


def test_host_shards_disjoint_and_covering():
  files = [f"train-{i:05d}" for i in range(7)]
  for count in range(1, 8):
    parts = [dataset_files.host_shards(files, h, count) for h in range(count)]
    assert sorted(sum(parts, [])) == files
    for h, part in enumerate(parts):
      assert all(files.index(f) % count == h for f in part)
  with pytest.raises(ValueError, match="gets no shard"):
    dataset_files.host_shards(files, 7, 8)


def test_records_per_file_from_the_manifest_or_counted(data_dir):
  files = dataset_files.find_shards(data_dir, "train")
  assert dataset_files.records_per_file(files, {}) == [2, 2, 2]  # counted (old manifests)
  counts = {os.path.basename(f): 5 for f in files}
  assert dataset_files.records_per_file(files, {"shard_num_videos": counts}) == [5, 5, 5]


def test_missing_shards_and_manifest(tmp_path, data_dir):
  empty = write_dataset(tmp_path / "empty", {}, num_shards=1)
  with pytest.raises(FileNotFoundError, match=r"train-\*\.tfrecord"):
    train_iter(empty)
  with pytest.raises(FileNotFoundError, match="manifest"):
    train_iter(str(tmp_path))


def test_wrong_modality(tmp_path, data_dir):
  with pytest.raises(ValueError, match="warpflow"):
    train_iter(data_dir, modality="warpflow")
  with pytest.raises(ValueError, match="unknown modality"):
    train_iter(data_dir, modality="depth")
  rgb_only = write_dataset(tmp_path / "rgb", {"test": (4,)}, num_shards=1,
                           modalities=("rgb",))
  with pytest.raises(ValueError, match="'flow' not in the shards"):
    eval_iter(rgb_only, modality="flow", batch=1)


def test_video_without_frames_names_the_video(tmp_path):
  data_dir = write_dataset(tmp_path / "d", {"test": (4,)}, num_shards=1)
  empty = tf.train.Example(features=tf.train.Features(feature={
      "video_id": _bytes_feature([b"v_broken"]), "label": _int_feature(0)}))
  with tf.io.TFRecordWriter(os.path.join(data_dir, "test-zz-00000-of-00001.tfrecord")) as w:
    w.write(empty.SerializeToString())
  manifest_path = os.path.join(data_dir, ip.MANIFEST_NAME)
  with open(manifest_path) as f:
    manifest = json.load(f)
  manifest["shards"]["test"].append("test-zz-00000-of-00001.tfrecord")  # listed: not "damaged"
  with open(manifest_path, "w") as f:
    json.dump(manifest, f)
  with pytest.raises(tf.errors.InvalidArgumentError, match="v_broken"):
    eval_batches(data_dir, batch=2, num_segments=2)


def test_dataset_info(data_dir):
  info = ip.dataset_info(data_dir)
  assert info["num_classes"] == 50 and info["modalities"] == ["rgb", "flow"]
  assert info["num_videos"] == {"train": len(TRAIN_FRAMES), "test": len(TEST_FRAMES)}
  assert info["frame_size"] == [HEIGHT, WIDTH]


# ---------------------------------------------------------------- real JPEG frames


def test_real_jpeg_frames_eval_center_crop(tmp_path, testdata_dir):
  """mmaction2's real 320x240 JPEG frames: the centre view is the frame's exact crop."""
  import cv2
  folder = testdata_dir / "rawframes" / "mmaction2_tests_imgs"
  rgb = [(folder / f"img_{i:05d}.jpg").read_bytes() for i in range(1, 7)]
  flow_x = [(folder / f"x_{i:05d}.jpg").read_bytes() for i in range(1, 6)]
  flow_y = [(folder / f"y_{i:05d}.jpg").read_bytes() for i in range(1, 6)]
  feature = {"video_id": _bytes_feature([b"imgs"]), "label": _int_feature(3),
             "height": _int_feature(240), "width": _int_feature(320),
             "num_frames": _int_feature(6), "num_flow": _int_feature(5),
             "rgb": _bytes_feature(rgb), "flow_x": _bytes_feature(flow_x),
             "flow_y": _bytes_feature(flow_y)}
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  os.makedirs(tmp_path / "real")
  with tf.io.TFRecordWriter(str(tmp_path / "real" / "test-rgb+flow-00000-of-00001.tfrecord")) as w:
    w.write(example.SerializeToString())
  with open(tmp_path / "real" / ip.MANIFEST_NAME, "w") as f:
    json.dump({"classes": ["a"] * 5, "modalities": ["rgb", "flow"], "frame_size": [240, 320],
               "num_videos": {"test": 1}}, f)
  out = 224
  (y, x) = ref.np_fill_fix_offset(False, 320, 240, out, out)[4]
  batch = next(eval_iter(tmp_path / "real", batch=1, num_segments=3, out_size=out))
  want_idx = ref.np_test_indices(6, 3, 1)
  for s, i in enumerate(want_idx):
    frame = cv2.cvtColor(cv2.imread(str(folder / f"img_{i + 1:05d}.jpg")), cv2.COLOR_BGR2RGB)
    got = batch["frames"][0, 0, s, 4, ..., :3].astype(int)
    # Same libjpeg accurate IDCT as OpenCV / PIL: bit-exact.
    np.testing.assert_array_equal(got, frame[y:y + out, x:x + out])
  flow = next(eval_iter(tmp_path / "real", "flow", batch=1, num_segments=1, out_size=out))
  fx = cv2.imread(str(folder / "x_00001.jpg"), cv2.IMREAD_GRAYSCALE)[y:y + out, x:x + out]
  got_x, got_x_flip = flow["frames"][0, 0, 0, 4, ..., 0], flow["frames"][0, 0, 0, 9, ..., 0]
  np.testing.assert_array_equal(got_x, fx)
  np.testing.assert_array_equal(got_x_flip, 255 - got_x[:, ::-1])


# ---------------------------------------------------------------- normalize / prefetch


def test_normalize_rgb_and_flow_vs_numpy():
  rng = np.random.default_rng(4)
  frames = rng.integers(0, 256, size=(2, 3, 4, 4, 6), dtype=np.uint8)
  x = frames.astype(np.float64).reshape(2, 3, 4, 4, 2, 3)
  caffe = (x[..., ::-1] - np.array([104.0, 117.0, 128.0])) / 1.0
  np.testing.assert_allclose(ip.normalize(frames, "rgb"), caffe.reshape(frames.shape),
                             atol=1e-5)
  mean, std = (0.485 * 255, 0.456 * 255, 0.406 * 255), (58.4, 57.1, 57.4)
  rgb = (x - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(ip.normalize(frames, "rgb", mean, std, bgr=False),
                             rgb.reshape(frames.shape), rtol=1e-6, atol=1e-5)
  no_swap_default = x - np.array([128.0, 117.0, 104.0])
  np.testing.assert_allclose(ip.normalize(frames, "rgb", bgr=False),
                             no_swap_default.reshape(frames.shape), atol=1e-5)
  flow = rng.integers(0, 256, size=(2, 4, 4, 10), dtype=np.uint8)
  np.testing.assert_allclose(ip.normalize(flow, "flow"), flow.astype(np.float64) - 128.0,
                             atol=1e-5)
  np.testing.assert_allclose(ip.normalize(flow, "warpflow", std=2.0),
                             (flow.astype(np.float64) - 128.0) / 2.0, atol=1e-5)
  with pytest.raises(ValueError, match="multiple of 3"):
    ip.normalize(flow, "rgb")


def test_prefetch_releases_its_iterator_off_the_calling_thread():
  """A tf.data iterator's destructor can wait up to a minute for its autotuning thread
  (loop.release_in_background): closing the prefetch generator must not wait for it. The
  destructor here blocks until the test opens `gate` after close() returned; run on the calling
  thread it would return only at the timeout, from the wrong thread."""
  gate, released = threading.Event(), threading.Event()
  where = []

  class SlowToDelete:
    def __init__(self):
      self.items = iter([{'frames': np.zeros((jax.local_device_count(), 1, 2), np.uint8)}] * 5)

    def __iter__(self):
      return self

    def __next__(self):
      return next(self.items)

    def __del__(self):
      gate.wait(10.0)
      where.append(threading.current_thread().name)
      released.set()

  batches = loop.prefetch(SlowToDelete(), 1, 'pmap')
  assert float(np.asarray(next(batches)['frames']).sum()) == 0.0
  batches.close()
  assert not released.is_set()               # close() did not run the destructor itself
  gate.set()
  assert released.wait(10.0)                 # ... which still ran, in the background
  assert where == ['release_iterator']


@pytest.mark.multidevice
def test_prefetch_feeds_pmap():
  out = run_multidevice("""
    import jax, numpy as np
    from sta_cnn_jax import loop
    d = jax.local_device_count()
    batches = [{'frames': np.full((d, 2, 3), i, np.uint8), 'label': np.arange(2 * d).reshape(d, 2),
                'video_id': np.array([[b'a', b'b']] * d, dtype=object)} for i in range(3)]
    total = jax.pmap(lambda f, l: jax.lax.psum(f.astype('float32').sum() + l.sum(), 'batch'),
                     axis_name='batch')
    for i, b in enumerate(loop.prefetch(iter(batches), 2, 'pmap')):
      assert isinstance(b['video_id'], np.ndarray) and b['video_id'].dtype == object
      assert len(b['frames'].sharding.device_set) == d
      assert float(total(b['frames'], b['label'])[0]) == i * 6 * d + sum(range(2 * d))
    print('ok', d)
  """, num_devices=2)
  word, count = out.split()[:2]
  assert word == "ok" and int(count) >= 2
