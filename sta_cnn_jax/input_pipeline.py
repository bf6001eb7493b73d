"""tf.data input pipeline: TFRecord video shards -> TSN-sampled, augmented, device-shaped batches.

Reads the shards of data_prep (one tf.train.Example per video, CONTRACT.md), samples K = N*M
snippets per video (sampling.py, TSN), decodes only the sampled frames, applies TSN group
augmentation (augment.py) and yields numpy batches shaped for data parallelism:

  train: {'frames': (D, B, S, H, W, C_in) uint8, 'label': (D, B) int32}
  eval:  {'frames': (D, B, S, V, H, W, C_in) uint8, 'label': (D, B) int32,
          'valid': (D, B) bool, 'video_id': (D, B) object (bytes)}

D = local devices, B = videos per device, S = snippets (segment-major), V = views.
C_in = 6 for RGB (frame i RGB ++ frame i+1 RGB), 10 for flow (x0, y0, ..., x4, y4).
Frames stay uint8 and RGB on the host; `normalize` runs on device (jnp).

Integrity: before reading, `verify_shards` checks the split's shards against manifest.json (every
listed shard present and no unlisted one, sizes, record counts; SHA-256 on request), and a read
error in the middle of a run (tf DataLossError / NotFoundError from a truncated, overwritten or
deleted shard) is turned into a `ShardReadError` naming the damaged shard (found by re-checking
this host's shards at that point). Both name the command that repairs the shards.

Determinism: every random choice of a video comes from a stateless RNG keyed by
(seed, epoch, position of the video in the epoch's read order); the per-epoch shard order
and shuffle are seeded by (seed, epoch). Resuming at `start_step` jumps to the right epoch
and skips the consumed videos of that epoch (reading, not decoding, them), so a resumed
run sees exactly the batches an uninterrupted run would.
"""

import collections
import itertools
import json
import os
import re
import struct
from typing import Any, Dict, Iterator, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from data_prep import shards as shards_lib
from sta_cnn_jax import augment
from sta_cnn_jax import sampling

MODALITIES = ("rgb", "flow", "warpflow")
# tf.train.Example bytes_list features holding each modality's frames (CONTRACT.md).
MODALITY_FEATURES = {
    "rgb": ("rgb",),
    "flow": ("flow_x", "flow_y"),
    "warpflow": ("warpflow_x", "warpflow_y"),
}
RGB_CHANNELS = 3
# libjpeg's accurate integer IDCT (JDCT_ISLOW), the one PIL and OpenCV use, so frames match
# what tsn-pytorch decodes bit for bit; TF's default (INTEGER_FAST) is off by ~1 grey level.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
FLOW_PLANES = augment.FLOW_PLANES  # x, y
MANIFEST_NAME = "manifest.json"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "test"

# TSN test protocol (DESIGN.md §3): 25 segments x 10 views (GroupOverSample).
EVAL_NUM_SEGMENTS = 25
EVAL_NUM_VIEWS = 10
SUPPORTED_EVAL_VIEWS = (1, 10)  # tsn-pytorch test_models.py: "Only 1 and 10 crops"
DEFAULT_OUT_SIZE = 224  # TSN / BN-Inception input size
# Shuffle buffer in videos, holding only the sampled frames' JPEG bytes (not whole videos).
DEFAULT_SHUFFLE_BUFFER = 512
# Shards read concurrently (interleave cycle) during training.
DEFAULT_SHARD_CYCLE = 16
# Read buffer per open shard; one Example holds a whole video (megabytes of JPEGs).
READ_BUFFER_BYTES = 8 << 20
# RNG stream tags folded into the per-epoch key.
_SHUFFLE_TAG, _SHARD_ORDER_TAG, _VIDEO_TAG = 1, 2, 3
# Per-video random numbers, one stateless sub-key each.
_VIDEO_STREAMS = ("segments", "crop_pair", "crop_offset", "flip")

# Normalisation expected by TSN's Caffe BN-Inception weights (tsn-pytorch models.py for
# 'BNInception': input_mean = [104, 117, 128], input_std = [1], 0-255 input
# (`ToTorchFormatTensor(div=False)`), BGR channel order (`Stack(roll=True)`); Flow:
# input_mean = [128]). Means are in the order of the channels after the optional swap.
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)
CAFFE_RGB_STD = (1.0, 1.0, 1.0)
CAFFE_BGR = True
FLOW_MEAN = 128.0
FLOW_STD = 1.0

# TFRecord framing: uint64 length, uint32 crc(length), data, uint32 crc(data).
_TFRECORD_LENGTH_BYTES = 8
_TFRECORD_CRC_BYTES = 4


# ---------------------------------------------------------------------------------------
# Manifest and shards.
# ---------------------------------------------------------------------------------------


class ShardIntegrityError(ValueError):
  """Shards that differ from their manifest (missing, truncated, overwritten, unlisted).

  The one-line message names every damaged shard and the command that repairs them; `damaged`
  holds (path, reason) pairs.
  """

  def __init__(self, message: str, damaged: Sequence[tuple[str, str]] = ()):
    super().__init__(message)
    self.damaged = list(damaged)


class ShardReadError(ShardIntegrityError):
  """A shard could not be read in the middle of a run (truncated, corrupted or deleted)."""


def _repair_hint(data_dir: str) -> str:
  return (f"repair: {shards_lib.repair_command(data_dir)} (check first: python -m "
          f"data_prep.prepare --out={data_dir} --verify)")


def read_manifest(data_dir: str) -> Dict[str, Any]:
  """Loads `<data_dir>/manifest.json`; clear error if it is missing or not JSON."""
  path = os.path.join(data_dir, MANIFEST_NAME)
  prepared = tf.io.gfile.exists(os.path.join(data_dir, shards_lib.PROGRESS_DIR))
  if not tf.io.gfile.exists(path):
    hint = (f"; data_prep.prepare was run there but did not finish or the manifest was removed: "
            f"{_repair_hint(data_dir)}" if prepared else
            f" (data_dir={data_dir!r} must hold the output of data_prep.prepare)")
    raise FileNotFoundError(f"{path}: manifest not found{hint}")
  with tf.io.gfile.GFile(path, "r") as f:
    try:
      return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      hint = f"; {_repair_hint(data_dir)}" if prepared else ""
      raise ValueError(f"{path}: not valid JSON ({e}){hint}") from e


def _manifest_modalities(manifest: Dict[str, Any]) -> List[str]:
  modalities = manifest.get("modalities", [])
  if isinstance(modalities, str):  # tolerate 'rgb+flow'
    modalities = modalities.split("+")
  return list(modalities)


def dataset_info(data_dir: str) -> Dict[str, Any]:
  """Facts of a prepared dataset: classes, num_classes, num_videos, modalities, frame_size."""
  manifest = read_manifest(data_dir)
  classes = list(manifest.get("classes", []))
  return {
      "dataset": manifest.get("dataset"),
      "classes": classes,
      "num_classes": len(classes),
      "num_videos": dict(manifest.get("num_videos", {})),
      "modalities": _manifest_modalities(manifest),
      "frame_size": manifest.get("frame_size"),
      "flow": manifest.get("flow"),
  }


def check_modality(data_dir: str, modality: str, manifest: Optional[Dict[str, Any]] = None):
  """Raises ValueError unless `modality` is known and listed in the manifest."""
  if modality not in MODALITIES:
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
  manifest = read_manifest(data_dir) if manifest is None else manifest
  available = _manifest_modalities(manifest)
  if modality not in available:
    raise ValueError(f"modality {modality!r} not in the shards of "
                     f"{os.path.join(data_dir, MANIFEST_NAME)} (modalities: {available})")


def find_shards(data_dir: str, split: str) -> List[str]:
  """Sorted `<data_dir>/<split>-*.tfrecord`; FileNotFoundError naming the pattern if none."""
  pattern = os.path.join(data_dir, f"{split}-*.tfrecord")
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"no TFRecord shards for split {split!r} in {data_dir!r} "
                            f"(expected files matching {pattern})")
  return files


def host_shards(files: Sequence[str], process_index: int, process_count: int) -> List[str]:
  """Shard i goes to host i % process_count; error if this host gets none."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  mine = list(files[process_index::process_count])
  if not mine:
    raise ValueError(f"host {process_index} of {process_count} gets no shard: only "
                     f"{len(files)} shard(s) ({files[:3]}...); write at least "
                     f"{process_count} shards")
  return mine


def _shard_damages(files: Sequence[str], manifest: Dict[str, Any], checksums: bool,
                   records: bool = False) -> List[tuple[str, str]]:
  """(path, reason) of every file that differs from what the manifest records for it: size
  (a stat), record count (only with `records`: a walk over the record headers), SHA-256 (only
  with `checksums`: reads the file)."""
  damaged = []
  for path in files:
    expected = shards_lib.manifest_shard_records(manifest, os.path.basename(path))
    if not records:
      expected.pop("records", None)
    reason = shards_lib.shard_damage(path, expected, checksums=checksums)
    if reason:
      damaged.append((path, reason))
  return damaged


def _blame_manifest(data_dir: str, manifest: Dict[str, Any], path: str,
                    reason: str) -> tuple[str, str]:
  """(path, reason), or manifest.json's entry when the manifest's record of the shard differs
  from the summary data_prep wrote with it (.progress/<shard>.json) while the shard still has
  the summary's size: then the manifest was edited, not the shard."""
  name = os.path.basename(path)
  summary = shards_lib.read_summary(data_dir, name)
  if not summary or summary.get("bytes") is None:
    return path, reason
  recorded = shards_lib.manifest_shard_records(manifest, name)
  edited = any(key in recorded and recorded[key] != summary.get(key)
               for key in ("bytes", "sha256"))
  if (edited and tf.io.gfile.exists(path)
      and tf.io.gfile.stat(path).length == summary["bytes"]):
    return (os.path.join(data_dir, MANIFEST_NAME),
            f"its record of {name} differs from the summary data_prep wrote with the shard "
            f"({shards_lib.PROGRESS_DIR}/{name}.json), which the shard still matches "
            f"({reason}): edited?")
  return path, reason


def _damage_message(data_dir: str, split: str, damaged: Sequence[tuple[str, str]],
                    prefix: str = "") -> str:
  listing = "; ".join(f"{path} ({reason})" for path, reason in damaged)
  return (f"{prefix}{len(damaged)} damaged shard(s) of split {split!r} in {data_dir}: "
          f"{listing}. {_repair_hint(data_dir)}")


def verify_shards(data_dir: str, split: str, checksums: bool = False, process_index: int = 0,
                  process_count: int = 1,
                  manifest: Optional[Dict[str, Any]] = None) -> List[str]:
  """Checks the shards of `split` against manifest.json before any is read; returns this
  host's shard files.

  Cheap (no shard is read): every shard the manifest lists for the split is present and no
  other `<split>-*.tfrecord` is (host i reads every process_count-th file of the sorted list,
  so one missing file would shift every host's share); this host's shards have the recorded
  byte sizes; the recorded per-shard record counts add up to the split's video count. With
  `checksums`, this host's shards are also read for their SHA-256. Manifests written before
  these records existed are checked as far as they allow.

  Raises:
    ShardIntegrityError naming every damaged shard and the command that repairs them.
  """
  manifest = read_manifest(data_dir) if manifest is None else manifest
  listed = (manifest.get("shards") or {}).get(split)
  try:
    files = find_shards(data_dir, split)
  except FileNotFoundError as e:
    if not listed:
      raise
    raise FileNotFoundError(f"{e}; {MANIFEST_NAME} lists {len(listed)} shard(s) of {split!r}, "
                            f"all missing: {_repair_hint(data_dir)}") from None
  damaged = []
  if listed is not None:
    present = {os.path.basename(f) for f in files}
    damaged += [(os.path.join(data_dir, name), "missing") for name in listed
                if name not in present]
    damaged += [(f, f"not listed in {MANIFEST_NAME}") for f in files
                if os.path.basename(f) not in set(listed)]
  mine = host_shards(files, process_index, process_count)
  already = {path for path, _ in damaged}
  damaged += [_blame_manifest(data_dir, manifest, path, reason) for path, reason in
              _shard_damages([f for f in mine if f not in already], manifest, checksums)]
  counts = manifest.get(shards_lib.SHARD_RECORDS_KEY) or {}
  total = (manifest.get("num_videos") or {}).get(split)
  names = listed if listed is not None else [os.path.basename(f) for f in files]
  if total is not None and names and all(n in counts for n in names):
    if sum(counts[n] for n in names) != total:
      damaged.append((os.path.join(data_dir, MANIFEST_NAME),
                      f"its per-shard record counts of {split!r} add up to "
                      f"{sum(counts[n] for n in names)}, not num_videos={total} (edited?)"))
  if damaged:
    raise ShardIntegrityError(_damage_message(data_dir, split, damaged), damaged)
  return mine


def locate_damage(data_dir: str, files: Sequence[str],
                  manifest: Optional[Dict[str, Any]] = None) -> List[tuple[str, str]]:
  """Which of `files` is damaged, after a read error: sizes and record framing first, then
  SHA-256 where the manifest has it, then a full read of every record (TFRecord CRCs)."""
  try:
    manifest = read_manifest(data_dir) if manifest is None else manifest
  except (FileNotFoundError, ValueError):
    manifest = {}
  damaged = _shard_damages(files, manifest, checksums=False, records=True)
  if not damaged and manifest.get(shards_lib.SHARD_SHA256_KEY):
    damaged = _shard_damages(files, manifest, checksums=True, records=True)
  if not damaged:
    damaged = [(f, reason) for f in files
               for reason in [shards_lib.scan_records(f)] if reason]
  return damaged


def _tf_cause(error: tf.errors.OpError) -> str:
  """TF's message without its function-node prefix and op suffix."""
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", shards_lib.first_line(error.message))
  return re.sub(r"\s*\[Op:.*$", "", text).strip()


def _guard_reads(iterator: Iterator[Any], data_dir: str, split: str,
                 files: Sequence[str]) -> Iterator[Any]:
  """`iterator`, with a tf.data read error (DataLossError from a truncated or overwritten
  record, NotFoundError from a deleted shard) turned into a ShardReadError naming the shard.

  Records of several shards are interleaved and TF's message names none, so the host's shards
  are re-checked (`locate_damage`) to find it.
  """
  try:
    yield from iterator
  except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
    damaged = locate_damage(data_dir, files)
    cause = _tf_cause(e)
    if not damaged:
      damaged = [(", ".join(files), f"one of these ({cause})")]
    raise ShardReadError(_damage_message(data_dir, split, damaged,
                                         prefix=f"read error ({cause}): "), damaged) from None


def _records_per_file(files: Sequence[str], manifest: Dict[str, Any]) -> List[int]:
  """Record counts of `files`: the manifest's (verified sizes make them exact), else counted."""
  counts = manifest.get(shards_lib.SHARD_RECORDS_KEY) or {}
  return [counts[os.path.basename(f)] if os.path.basename(f) in counts else count_records(f)
          for f in files]


def count_records(path: str) -> int:
  """Number of records in an uncompressed TFRecord file, by skipping over the payloads."""
  count = 0
  with tf.io.gfile.GFile(path, "rb") as f:
    size = f.size()
    position = 0
    while position < size:
      header = f.read(_TFRECORD_LENGTH_BYTES)
      if len(header) != _TFRECORD_LENGTH_BYTES:
        raise ValueError(f"{path}: truncated TFRecord header at byte {position}")
      (length,) = struct.unpack("<Q", header)
      position += _TFRECORD_LENGTH_BYTES + 2 * _TFRECORD_CRC_BYTES + length
      if position > size:
        raise ValueError(f"{path}: truncated TFRecord payload (record {count})")
      f.seek(position)
      count += 1
  return count


# ---------------------------------------------------------------------------------------
# Per-video parsing, sampling and decoding (graph functions).
# ---------------------------------------------------------------------------------------


def _snippet_layout(modality: str):
  """(frames per snippet T, TSN new_length L, channels per decoded image c)."""
  if modality == "rgb":
    return sampling.RGB_FRAMES_PER_SNIPPET, sampling.RGB_NEW_LENGTH, RGB_CHANNELS
  return sampling.FLOW_FRAMES_PER_SNIPPET, sampling.FLOW_NEW_LENGTH, 1


def input_channels(modality: str) -> int:
  """C_in of a snippet: 6 for rgb, 10 for flow / warpflow."""
  frames, _, channels = _snippet_layout(modality)
  return frames * channels * len(MODALITY_FEATURES[modality])


def _parse_video(serialized, modality: str):
  """Parses id, label and the modality's frame lists (bytes, undecoded) of one Example."""
  features = {
      "video_id": tf.io.FixedLenFeature([], tf.string),
      "label": tf.io.FixedLenFeature([], tf.int64),
  }
  for name in MODALITY_FEATURES[modality]:
    features[name] = tf.io.VarLenFeature(tf.string)
  parsed = tf.io.parse_single_example(serialized, features)
  planes = [parsed[name].values for name in MODALITY_FEATURES[modality]]
  # Frame count from the lists themselves (robust to a wrong num_frames / num_flow field).
  num_frames = tf.reduce_min(tf.stack([tf.size(p) for p in planes]))
  check = tf.debugging.Assert(num_frames > 0, [
      "video", parsed["video_id"], f"has no {modality} frames (empty or missing features "
      f"{'/'.join(MODALITY_FEATURES[modality])})"])
  with tf.control_dependencies([check]):
    num_frames = tf.identity(num_frames)
  return parsed["video_id"], tf.cast(parsed["label"], tf.int32), planes, num_frames


def _gather_snippet_bytes(planes, offsets, modality: str, num_frames):
  """Encoded images of the sampled snippets only: (P*K*T,) strings, plane-major.

  P = 1 (rgb) or 2 (flow x list, then flow y list); within a plane snippet-major.
  """
  frames_per_snippet, _, _ = _snippet_layout(modality)
  indices = tf.reshape(
      sampling.snippet_frame_indices(offsets, frames_per_snippet, num_frames), [-1])
  return tf.concat([tf.gather(p, indices) for p in planes], axis=0)


def _decode_images(encoded, modality: str):
  """(N,) JPEG or PNG strings (one format per video) -> (N, H, W, c) uint8.

  N = P*K*T is static, so the decodes are unrolled into N independent ops: TF runs them in
  parallel and without tf.map_fn's loop overhead (2x faster measured for RGB TS(3x3)).
  """
  _, _, channels = _snippet_layout(modality)
  num_images = encoded.shape[0]

  def decode_all(decode):
    return tf.stack([decode(encoded[i]) for i in range(num_images)])

  return tf.cond(
      tf.io.is_jpeg(encoded[0]),
      lambda: decode_all(lambda data: tf.io.decode_jpeg(data, channels=channels,
                                                        dct_method=JPEG_DCT_METHOD)),
      lambda: decode_all(lambda data: tf.io.decode_png(data, channels=channels)))


def _stack_snippet_channels(images, modality: str, num_snippets: int):
  """(P*K*T, *spatial, c) plane-major images -> (K, *spatial, C_in) snippets.

  Channels are frame-major: RGB [R0, G0, B0, R1, G1, B1]; flow [x0, y0, x1, y1, ..., y4]
  (CONTRACT.md). One transpose, done on the crops (train) or the views (eval): far cheaper
  than concatenating 1-channel uint8 planes along the channel axis in TF's CPU kernels.
  """
  frames_per_snippet, _, channels = _snippet_layout(modality)
  num_planes = len(MODALITY_FEATURES[modality])
  spatial = images.shape[1:-1].as_list()
  dynamic = tf.shape(images)[1:-1]
  images = tf.reshape(images, tf.concat(
      [[num_planes, num_snippets, frames_per_snippet], dynamic, [channels]], 0))
  # (P, K, T, *spatial, c) -> (K, *spatial, T, P, c)
  rank = len(spatial)
  perm = [1] + [3 + i for i in range(rank)] + [2, 0, 3 + rank]
  images = tf.transpose(images, perm)
  channels_in = input_channels(modality)
  stacked = tf.reshape(images, tf.concat([[num_snippets], dynamic, [channels_in]], 0))
  stacked.set_shape([num_snippets] + spatial + [channels_in])
  return stacked


def _video_uniforms(key, num_snippets: int):
  """Per-video uniform numbers in [0, 1), one stateless stream each."""
  keys = tf.random.experimental.stateless_split(key, len(_VIDEO_STREAMS))
  shapes = {"segments": [num_snippets], "crop_pair": [], "crop_offset": [], "flip": []}
  return {name: tf.random.stateless_uniform(shapes[name], seed=keys[i], dtype=tf.float64)
          for i, name in enumerate(_VIDEO_STREAMS)}


def _train_sample(serialized, key, *, modality: str, num_snippets: int):
  """Parse + TSN train sampling; keeps only the sampled frames' bytes (cheap to shuffle)."""
  _, label, planes, num_frames = _parse_video(serialized, modality)
  _, new_length, _ = _snippet_layout(modality)
  uniforms = _video_uniforms(key, num_snippets)
  offsets = sampling.train_offsets(num_frames, num_snippets, new_length, uniforms["segments"])
  encoded = _gather_snippet_bytes(planes, offsets, modality, num_frames)
  return {"encoded": encoded, "label": label, "key": key}


def _train_augment(item, *, modality: str, num_snippets: int, out_size: int,
                   scales: Sequence[float]):
  """Decode + GroupMultiScaleCrop + resize + GroupRandomHorizontalFlip -> (S, H, W, C_in)."""
  uniforms = _video_uniforms(item["key"], num_snippets)
  images = _decode_images(item["encoded"], modality)  # (P*K*T, H, W, c)
  shape = tf.shape(images)
  y, x, h, w = tf.unstack(augment.multiscale_crop_window(
      shape[1], shape[2], out_size, scales, uniforms["crop_pair"], uniforms["crop_offset"]))
  # Stack channels before resizing: one C_in-channel resize is cheaper than P*T small ones,
  # and resizing is per channel, so the order does not change the result.
  crops = _stack_snippet_channels(images[:, y:y + h, x:x + w, :], modality, num_snippets)
  rounded = augment.resize_rounded(crops, out_size)  # (K, out, out, C_in) float
  flip = augment.should_flip(uniforms["flip"])
  snippets = tf.cast(augment.flip_if(rounded, flip, is_flow=modality != "rgb"), tf.uint8)
  snippets = tf.ensure_shape(
      snippets, [num_snippets, out_size, out_size, input_channels(modality)])
  return {"frames": snippets, "label": item["label"]}


def _eval_views(images, out_size: int, num_views: int):
  """(N, H, W, c) -> (N, V', out, out, c): the 5 GroupOverSample crops, or the centre crop."""
  shape = tf.shape(images)
  if num_views == 1:
    offsets = augment.center_offset(shape[1], shape[2], out_size)[None, :]
  else:
    offsets = augment.oversample_offsets(shape[1], shape[2], out_size)
  crops = [images[:, offsets[v, 0]:offsets[v, 0] + out_size,
                  offsets[v, 1]:offsets[v, 1] + out_size, :]
           for v in range(offsets.shape[0])]
  return tf.stack(crops, axis=1)


def _eval_video(serialized, *, modality: str, num_snippets: int, num_views: int,
                out_size: int):
  """Parse + TSN test sampling + views -> (S, V, out, out, C_in) uint8 and metadata."""
  video_id, label, planes, num_frames = _parse_video(serialized, modality)
  _, new_length, _ = _snippet_layout(modality)
  offsets = sampling.test_offsets(num_frames, num_snippets, new_length)
  encoded = _gather_snippet_bytes(planes, offsets, modality, num_frames)
  images = _decode_images(encoded, modality)  # (P*K*T, H, W, c)
  shape = tf.shape(images)
  check = tf.debugging.Assert(tf.minimum(shape[1], shape[2]) >= out_size, [
      "video", video_id, "frames of size", shape[1:3],
      f"are smaller than the eval out_size={out_size}"])
  with tf.control_dependencies([check]):
    images = tf.identity(images)
  views = _stack_snippet_channels(_eval_views(images, out_size, num_views), modality,
                                  num_snippets)  # (K, V', out, out, C_in)
  if num_views == EVAL_NUM_VIEWS:
    views = tf.concat([views, augment.horizontal_flip(views, modality != "rgb")], axis=1)
  views = tf.ensure_shape(
      views, [num_snippets, num_views, out_size, out_size, input_channels(modality)])
  return {"frames": views, "label": label, "valid": tf.constant(True),
          "video_id": video_id}


# ---------------------------------------------------------------------------------------
# Batching helpers.
# ---------------------------------------------------------------------------------------


def _check_batch(batch_size: int, num_devices: int):
  if num_devices < 1 or batch_size < 1 or batch_size % num_devices:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                     f"num_devices={num_devices}")


def _split_devices(batch, num_devices: int):
  """(B, ...) -> (D, B // D, ...) for every leaf."""

  def split(x):
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[num_devices, shape[0] // num_devices], shape[1:]], 0))

  return tf.nest.map_structure(split, batch)


def _pad_batch(batch, batch_size: int):
  """Pads a (possibly short) batch to batch_size with zeros / valid=False / b''."""

  def pad(x):
    missing = batch_size - tf.shape(x)[0]
    paddings = tf.concat([[[0, missing]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], 0)
    constant = "" if x.dtype == tf.string else tf.zeros([], x.dtype)
    padded = tf.pad(x, paddings, constant_values=constant)
    padded.set_shape([batch_size] + x.shape[1:].as_list())
    return padded

  return tf.nest.map_structure(pad, batch)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # threading.max_intra_op_parallelism stays at TF's default: setting it to 1 (as flax
  # examples/imagenet does) measured 20 vs 35 clips/s here (RGB TS(3x3), 2 cores), since
  # resizes and transposes of a clip then run single-threaded.
  return options


def _key(seed: int):
  """Root stateless key from a Python int (any size)."""
  seed = int(seed) % (1 << 63)
  return tf.constant([seed, 0], tf.int64)


def _fold(key, data):
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


# ---------------------------------------------------------------------------------------
# Train.
# ---------------------------------------------------------------------------------------


def build_train_dataset(data_dir: str, *, modality: str, num_segments: int,
                        snippets_per_segment: int, batch_size: int, num_devices: int,
                        out_size: int = DEFAULT_OUT_SIZE, seed: int = 0,
                        process_index: int = 0, process_count: int = 1,
                        scales: Optional[Sequence[float]] = None,
                        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                        start_step: int = 0, split: str = TRAIN_SPLIT) -> tf.data.Dataset:
  """The infinite training tf.data.Dataset behind `create_train_dataset`."""
  manifest = read_manifest(data_dir)
  check_modality(data_dir, modality, manifest)
  _check_batch(batch_size, num_devices)
  if num_segments < 1 or snippets_per_segment < 1:
    raise ValueError(f"num_segments={num_segments} and snippets_per_segment="
                     f"{snippets_per_segment} must be >= 1")
  files = verify_shards(data_dir, split, process_index=process_index,
                        process_count=process_count, manifest=manifest)
  num_snippets = num_segments * snippets_per_segment
  if scales is None:
    scales = augment.RGB_SCALES if modality == "rgb" else augment.FLOW_SCALES
  scales = tuple(float(s) for s in scales)

  start_epoch, skip_in_epoch = 0, 0
  start_example = int(start_step) * batch_size
  if start_example:
    videos_per_epoch = sum(_records_per_file(files, manifest))
    if not videos_per_epoch:
      raise ValueError(f"shards {files} of host {process_index} hold no videos")
    start_epoch, skip_in_epoch = divmod(start_example, videos_per_epoch)

  # Hosts read different videos; folding in the host keeps their augmentations independent.
  root = _fold(_key(seed), process_index)
  files_t = tf.constant(files)
  cycle = min(len(files), DEFAULT_SHARD_CYCLE)

  def epoch_dataset(epoch):
    epoch_key = _fold(root, epoch)
    order = tf.argsort(tf.random.stateless_uniform(
        [len(files)], seed=_fold(epoch_key, _SHARD_ORDER_TAG)))
    records = tf.data.Dataset.from_tensor_slices(tf.gather(files_t, order)).interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=READ_BUFFER_BYTES),
        cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    video_key = _fold(epoch_key, _VIDEO_TAG)
    records = records.enumerate().map(
        lambda i, rec: _train_sample(rec, _fold(video_key, i), modality=modality,
                                     num_snippets=num_snippets),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    shuffle_seed = _fold(epoch_key, _SHUFFLE_TAG)[0]
    records = records.shuffle(shuffle_buffer, seed=shuffle_seed,
                              reshuffle_each_iteration=False)
    return records.skip(tf.where(epoch == start_epoch, tf.constant(skip_in_epoch, tf.int64),
                                 tf.constant(0, tf.int64)))

  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_dataset)
  ds = ds.map(lambda item: _train_augment(item, modality=modality, num_snippets=num_snippets,
                                          out_size=out_size, scales=scales),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(lambda b: _split_devices(b, num_devices))
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def create_train_dataset(data_dir: str, *, modality: str, num_segments: int,
                         snippets_per_segment: int, batch_size: int, num_devices: int,
                         out_size: int = DEFAULT_OUT_SIZE, seed: int = 0,
                         process_index: int = 0, process_count: int = 1,
                         scales: Optional[Sequence[float]] = None,
                         shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                         start_step: int = 0,
                         split: str = TRAIN_SPLIT) -> Iterator[Dict[str, np.ndarray]]:
  """Infinite iterator of training batches (numpy), repeating epochs.

  Args:
    data_dir: folder with manifest.json and `train-*.tfrecord` shards.
    modality: 'rgb' | 'flow' | 'warpflow'.
    num_segments, snippets_per_segment: N and M of TS(NxM, .); S = N*M snippets per video.
    batch_size: videos per batch on this host (all its local devices together).
    num_devices: local devices D; batch_size must be a multiple of D.
    out_size: side of the square output crop.
    seed: data seed (shard order, shuffle, sampling, crops, flips).
    process_index, process_count: this host and the host count (shard i -> host i % count).
    scales: multi-scale crop scales (default TSN: RGB (1, .875, .75, .66), flow (1, .875, .75)).
    shuffle_buffer: videos in the shuffle buffer.
    start_step: batches already consumed (resume): the iterator starts at batch start_step.
    split: shard prefix to train on ('train'; 'all' for list datasets).

  Yields:
    {'frames': (D, B/D, S, out, out, C_in) uint8, 'label': (D, B/D) int32}.
  """
  dataset = build_train_dataset(
      data_dir, modality=modality, num_segments=num_segments,
      snippets_per_segment=snippets_per_segment, batch_size=batch_size,
      num_devices=num_devices, out_size=out_size, seed=seed, process_index=process_index,
      process_count=process_count, scales=scales, shuffle_buffer=shuffle_buffer,
      start_step=start_step, split=split)
  files = host_shards(find_shards(data_dir, split), process_index, process_count)
  return _guard_reads(dataset.as_numpy_iterator(), data_dir, split, files)


# ---------------------------------------------------------------------------------------
# Eval.
# ---------------------------------------------------------------------------------------


def _check_eval_frame_size(data_dir: str, manifest: Dict[str, Any], out_size: int):
  frame_size = manifest.get("frame_size")
  if frame_size and min(frame_size) < out_size:
    raise ValueError(f"eval out_size={out_size} exceeds the frame size {frame_size} recorded "
                     f"in {os.path.join(data_dir, MANIFEST_NAME)}; use out_size <= "
                     f"{min(frame_size)}")


def build_eval_dataset(data_dir: str, *, modality: str, split: str = EVAL_SPLIT,
                       num_segments: int = EVAL_NUM_SEGMENTS,
                       num_views: int = EVAL_NUM_VIEWS, batch_size: int,
                       num_devices: int, out_size: int = DEFAULT_OUT_SIZE,
                       process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
  """The one-pass eval tf.data.Dataset behind `create_eval_dataset`."""
  manifest = read_manifest(data_dir)
  check_modality(data_dir, modality, manifest)
  _check_batch(batch_size, num_devices)
  if num_views not in SUPPORTED_EVAL_VIEWS:
    raise ValueError(f"num_views={num_views} not supported; use one of "
                     f"{SUPPORTED_EVAL_VIEWS} (centre crop, or 5 crops + flips)")
  if num_segments < 1:
    raise ValueError(f"num_segments={num_segments} must be >= 1")
  _check_eval_frame_size(data_dir, manifest, out_size)
  all_files = find_shards(data_dir, split)
  files = verify_shards(data_dir, split, process_index=process_index,
                        process_count=process_count, manifest=manifest)

  # Sequential read: a fixed order, every video exactly once.
  ds = tf.data.TFRecordDataset(files, buffer_size=READ_BUFFER_BYTES)
  ds = ds.map(lambda rec: _eval_video(rec, modality=modality, num_snippets=num_segments,
                                      num_views=num_views, out_size=out_size),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=False)
  ds = ds.map(lambda b: _pad_batch(b, batch_size))
  if process_count > 1:
    # Every host must run the same number of eval steps: pad with all-invalid batches.
    per_host = [sum(_records_per_file(host_shards(all_files, h, process_count), manifest))
                for h in range(process_count)]
    steps = [-(-n // batch_size) for n in per_host]
    extra = max(steps) - steps[process_index]
    if extra:
      filler = tf.data.Dataset.from_tensors(tf.nest.map_structure(
          lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)).repeat(extra)
      ds = ds.concatenate(filler)
  ds = ds.map(lambda b: _split_devices(b, num_devices))
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def create_eval_dataset(data_dir: str, *, modality: str, split: str = EVAL_SPLIT,
                        num_segments: int = EVAL_NUM_SEGMENTS,
                        num_views: int = EVAL_NUM_VIEWS, batch_size: int, num_devices: int,
                        out_size: int = DEFAULT_OUT_SIZE, process_index: int = 0,
                        process_count: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """One deterministic pass over a split: TSN 25 segments x 10 views per video.

  Views (V=10): corners + centre of `out_size` cut from the frame as stored (no resize;
  augment.EVAL_VIEW_NAMES), then the same 5 flipped (flow x inverted). V=1: centre crop.
  The last batch is padded (valid=False, label 0, video_id b''); with several hosts, hosts
  with fewer videos add all-invalid batches so every host yields the same number of batches.

  Yields:
    {'frames': (D, B/D, S, V, out, out, C_in) uint8, 'label': (D, B/D) int32,
     'valid': (D, B/D) bool, 'video_id': (D, B/D) object array of bytes}.
  """
  dataset = build_eval_dataset(
      data_dir, modality=modality, split=split, num_segments=num_segments,
      num_views=num_views, batch_size=batch_size, num_devices=num_devices,
      out_size=out_size, process_index=process_index, process_count=process_count)
  files = host_shards(find_shards(data_dir, split), process_index, process_count)
  return _guard_reads(dataset.as_numpy_iterator(), data_dir, split, files)


# ---------------------------------------------------------------------------------------
# On-device normalisation and prefetch.
# ---------------------------------------------------------------------------------------


def normalize(frames, modality: str, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, bgr: Optional[bool] = None,
              dtype=jnp.float32):
  """uint8 snippets (..., C_in) -> normalised float on device (fusable into the first conv).

  RGB (C_in = 3*T): each 3-channel frame is optionally swapped RGB -> BGR, then
  (x - mean) / std per channel. Defaults = TSN Caffe BN-Inception: bgr=True, 0-255,
  mean CAFFE_BGR_MEAN (104, 117, 128) in BGR order, std 1. `mean`/`std` are given in the
  channel order after the optional swap; with bgr=False and mean=None the Caffe mean is
  reordered to RGB.
  Flow (C_in = 2*T): (x - FLOW_MEAN) / FLOW_STD (128, 1) unless mean / std are given
  (scalars or per-channel).
  """
  x = jnp.asarray(frames).astype(jnp.float32)
  channels = x.shape[-1]
  if modality == "rgb":
    if channels % RGB_CHANNELS:
      raise ValueError(f"rgb frames need a multiple of 3 channels, got shape {x.shape}")
    bgr = CAFFE_BGR if bgr is None else bgr
    if mean is None:
      mean = CAFFE_BGR_MEAN if bgr else CAFFE_BGR_MEAN[::-1]
    std = CAFFE_RGB_STD if std is None else std
    x = x.reshape(x.shape[:-1] + (channels // RGB_CHANNELS, RGB_CHANNELS))
    if bgr:
      x = x[..., ::-1]
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    x = x.reshape(x.shape[:-2] + (channels,))
  elif modality in ("flow", "warpflow"):
    if channels % FLOW_PLANES:
      raise ValueError(f"flow frames need an even channel count, got shape {x.shape}")
    mean = FLOW_MEAN if mean is None else mean
    std = FLOW_STD if std is None else std
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  else:
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
  return x.astype(dtype)


def _is_numeric(x) -> bool:
  return isinstance(x, (np.ndarray, jax.Array)) and np.dtype(x.dtype).kind in "biuf"


def prefetch_to_device(iterator: Iterator[Any], size: int,
                       devices: Optional[Sequence[Any]] = None) -> Iterator[Any]:
  """Keeps `size` batches in flight on `devices` (flax.jax_utils.prefetch_to_device-like).

  Numeric leaves (D, ...) are placed one slice per device (NamedSharding over a 1-D 'batch'
  mesh, accepted by jax.pmap and by jit/shard_map). Non-numeric leaves (eval 'video_id')
  stay numpy on the host.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))

  def put(x):
    if not _is_numeric(x):
      return x
    if x.shape[0] != len(devices):
      raise ValueError(f"leading axis {x.shape[0]} != {len(devices)} devices")
    return jax.device_put(x, sharding)

  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(jax.tree_util.tree_map(put, batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


# ---------------------------------------------------------------------------------------
# One video in memory (sta_cnn_jax.video_inputs: a video file's eval views, no shards).
# ---------------------------------------------------------------------------------------


def eval_snippet_indices(num_frames: int, modality: str, num_segments: int) -> np.ndarray:
  """`(S, T)` indices of what the eval pipeline reads from a video: TSN test sampling.

  Indices of frames (rgb, T = 2) or of flow fields (flow / warpflow, T = 5) among `num_frames`
  of them: `sampling.test_offsets` and `snippet_frame_indices` with this modality's layout, as
  `_eval_video` samples a parsed Example.
  """
  frames_per_snippet, new_length, _ = _snippet_layout(modality)
  offsets = sampling.test_offsets(num_frames, num_segments, new_length)
  return np.asarray(sampling.snippet_frame_indices(offsets, frames_per_snippet, num_frames))


def eval_views_from_example(serialized: bytes, *, modality: str, num_segments: int,
                            num_views: int, out_size: int) -> np.ndarray:
  """One video's serialised tf.train.Example -> its eval views `(S, V, out, out, C_in)` uint8.

  The per-video map of the eval dataset (`_eval_video`: parse, TSN test sampling, decode,
  GroupOverSample views, channel stacking) on one in-memory record, so the views are exactly
  what `--mode=eval` feeds the network for that video. `num_views` is 1 or 10
  (SUPPORTED_EVAL_VIEWS); frames smaller than `out_size` fail the pipeline's own check.
  """
  record = tf.data.Dataset.from_tensors(tf.constant(serialized, tf.string))
  views = record.map(lambda r: _eval_video(r, modality=modality, num_snippets=num_segments,
                                           num_views=num_views, out_size=out_size))
  return views.get_single_element()["frames"].numpy()
