"""TFRecord shards of whole videos: Example encoding, the shard plan, atomic writing, progress
summaries and the resume check (docs/design.md "Shard format").

One `tf.train.Example` per video (features: video_id, label, height, width, num_frames, num_flow,
rgb, flow_x, flow_y, warpflow_x, warpflow_y — see docs/design.md "Shard format"). Examples are
serialised here without TensorFlow (`encode_example`, byte-identical to
`tf.train.Example.SerializeToString(deterministic=True)`, tested), so worker processes stay light
(cv2 + numpy only); TensorFlow is imported only to write the TFRecord framing (its CRC32C).

Work plan and resumability:
  * `plan_shards` sorts each split's videos by video_id and cuts them into shards of
    `shard_size` videos: `<split>-<modalities>-SSSSS-of-NNNNN.tfrecord`. The assignment depends
    only on the item list and shard_size, so a re-run plans the same shards.
  * A shard is one unit of work. `write_shard` writes `.<name>.tmp`, renames it to `<name>`, then
    writes its summary `.progress/<name>.json` the same way; the summary's presence marks the
    shard complete. A re-run after a kill skips complete shards and redoes the others; since
    every video's example is a pure function of (item, options), the final shards and manifest
    are byte-identical to an uninterrupted run.
  * `.progress/options.json` records the options that determine the bytes; re-running into the
    same directory with different options is refused.

Every summary records its shard's byte size, record count and SHA-256 (of the file as written,
read back before the rename); `check_complete` keeps a finished shard on resume only if it still
matches (integrity.py checks it). The manifest that aggregates the summaries is manifest.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from data_prep import integrity
from data_prep import layout
from data_prep.sources import VideoItem

SHARD_PATTERN = "{split}-{modalities}-{index:05d}-of-{num_shards:05d}.tfrecord"
SPLIT_ORDER = ("train", "test", "all")
MODALITY_SEPARATOR = "+"

# Protocol-buffer wire format (developers.google.com/protocol-buffers/docs/encoding).
_WIRE_LENGTH_DELIMITED = 2
_VARINT_MASK64 = (1 << 64) - 1
# Field numbers in tensorflow/core/example/{example,feature}.proto.
_EXAMPLE_FEATURES = 1
_FEATURES_MAP = 1
_MAP_KEY, _MAP_VALUE = 1, 2
_FEATURE_BYTES_LIST, _FEATURE_INT64_LIST = 1, 3
_LIST_VALUE = 1


@dataclasses.dataclass(frozen=True)
class VideoResult:
  """A prepared video: its serialised tf.train.Example and facts for the manifest."""
  video_id: str
  path: str
  example: bytes
  num_frames: int
  warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SkipRecord:
  """A video that could not be prepared (listed in manifest 'skipped')."""
  video_id: str
  path: str
  reason: str


@dataclasses.dataclass(frozen=True)
class ShardSpec:
  split: str
  index: int
  num_shards: int
  filename: str
  items: tuple[VideoItem, ...]


# ----------------------------------------------------------------------------------------------
# tf.train.Example encoding


def _varint(value: int) -> bytes:
  value &= _VARINT_MASK64
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field: tag, length, payload."""
  return _varint(number << 3 | _WIRE_LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _feature(value) -> bytes:
  """bytes / list of bytes → BytesList; int / list of ints → packed Int64List."""
  values = value if isinstance(value, (list, tuple)) else [value]
  if all(isinstance(v, (bytes, bytearray)) for v in values):
    inner = b"".join(_field(_LIST_VALUE, bytes(v)) for v in values)
    return _field(_FEATURE_BYTES_LIST, inner)
  if all(isinstance(v, (int, np.integer)) for v in values):
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(_FEATURE_INT64_LIST, _field(_LIST_VALUE, packed) if packed else b"")
  raise TypeError(f"feature values must be all bytes or all ints, got {value!r:.80}")


def encode_example(features: dict) -> bytes:
  """{name: bytes | int | list} → serialised tf.train.Example (keys sorted: deterministic=True)."""
  entries = b"".join(
      _field(_FEATURES_MAP, _field(_MAP_KEY, key.encode()) + _field(_MAP_VALUE, _feature(value)))
      for key, value in sorted(features.items()))
  return _field(_EXAMPLE_FEATURES, entries)


def parse_example(data: bytes) -> dict:
  """Serialised tf.train.Example → {name: list of bytes | list of ints} (via TensorFlow)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  example = tf.train.Example.FromString(data)
  out = {}
  for key, feature in example.features.feature.items():
    kind = feature.WhichOneof("kind")
    out[key] = list(getattr(feature, kind).value) if kind else []
  return out


def read_shard(path: str | os.PathLike) -> Iterator[dict]:
  """Parsed examples of one shard, in file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
    yield parse_example(record)


# ----------------------------------------------------------------------------------------------
# Plan, write, resume


def modalities_tag(modalities: Sequence[str]) -> str:
  return MODALITY_SEPARATOR.join(modalities)


def split_rank(split: str) -> tuple[int, str]:
  return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def plan_shards(items: Iterable[VideoItem], shard_size: int,
                modalities: Sequence[str]) -> list[ShardSpec]:
  """Deterministic shards: per split, videos sorted by video_id, cut every `shard_size`."""
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}")
  by_split: dict[str, list[VideoItem]] = {}
  for item in items:
    by_split.setdefault(item.split, []).append(item)
  specs = []
  for split in sorted(by_split, key=split_rank):
    ordered = sorted(by_split[split], key=lambda item: item.video_id)
    num_shards = math.ceil(len(ordered) / shard_size)
    for index in range(num_shards):
      filename = SHARD_PATTERN.format(split=split, modalities=modalities_tag(modalities),
                                      index=index, num_shards=num_shards)
      specs.append(ShardSpec(split, index, num_shards, filename,
                             tuple(ordered[index * shard_size:(index + 1) * shard_size])))
  return specs


def progress_path(out_dir: str, spec: ShardSpec) -> str:
  return layout.join(out_dir, layout.PROGRESS_DIR, spec.filename + ".json")


def check_options(out_dir: str, options: dict) -> None:
  """Records `options` for this output directory, or refuses if it was prepared differently."""
  gfile = layout.gfile()
  gfile.makedirs(layout.join(out_dir, layout.PROGRESS_DIR))
  path = layout.join(out_dir, layout.PROGRESS_DIR, layout.OPTIONS_FILE)
  canonical = json.loads(json.dumps(options, sort_keys=True))
  if gfile.exists(path):
    previous = layout.read_json(path)
    if previous != canonical:
      changed = sorted(k for k in set(previous) | set(canonical)
                       if previous.get(k) != canonical.get(k))
      raise ValueError(f"{out_dir} holds shards prepared with other options (differing: "
                       f"{changed}; see {path}); use a new --out or delete that directory")
  else:
    layout.write_json_atomic(path, canonical)


def remove_stale_temporaries(out_dir: str) -> None:
  """Deletes `.*.tmp` files a killed run left behind."""
  gfile = layout.gfile()
  for directory in (out_dir, layout.join(out_dir, layout.PROGRESS_DIR)):
    if gfile.isdir(directory):
      for name in gfile.listdir(directory):
        if name.startswith(".") and name.endswith(".tmp"):
          gfile.remove(layout.join(directory, name))


def is_complete(out_dir: str, spec: ShardSpec) -> bool:
  """True if the shard and its summary exist, the summary covers exactly the planned videos and
  the shard matches the summary (size, records, SHA-256; see `check_complete`)."""
  return check_complete(out_dir, spec)[0]


def check_complete(out_dir: str, spec: ShardSpec) -> tuple[bool, str | None]:
  """(complete, damage): whether a finished shard can be kept on resume.

  damage is None, or why a shard that was finished must be redone: the file is missing or its
  size, record count or SHA-256 differ from its summary. A summary written before integrity
  records existed (no sha256) is checked by reading every record (TFRecord CRCs, count) and, if
  the shard is intact, upgraded with its size and SHA-256.
  """
  gfile = layout.gfile()
  summary_path = progress_path(out_dir, spec)
  if not gfile.exists(summary_path):
    return False, None
  summary = layout.read_json(summary_path)
  if summary["planned"] != [item.video_id for item in spec.items]:
    return False, None
  path = layout.join(out_dir, spec.filename)
  if "sha256" not in summary:  # legacy summary: verify the framing, then record the digest
    if not gfile.exists(path):
      return False, "missing"
    damage = integrity.scan_records(path, summary["num_videos"])
    if damage is None:
      layout.write_json_atomic(summary_path, {**summary, **integrity.file_digest(path)})
      return True, None
    return False, damage
  damage = integrity.shard_damage(path, {"bytes": summary["bytes"],
                                         "records": summary["num_videos"],
                                         "sha256": summary["sha256"]}, checksums=True)
  return damage is None, damage


def write_shard(out_dir: str, spec: ShardSpec,
                results: Sequence[VideoResult | SkipRecord]) -> dict:
  """Writes the shard atomically (examples in video_id order), then its summary; returns it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  results = sorted(results, key=lambda r: r.video_id)
  planned = [item.video_id for item in spec.items]
  if [r.video_id for r in results] != planned:
    raise ValueError(f"{spec.filename}: results for {[r.video_id for r in results]} do not match "
                     f"the planned videos {planned}")
  tmp = layout.join(out_dir, f".{spec.filename}.tmp")
  with tf.io.TFRecordWriter(tmp) as writer:
    for result in results:
      if isinstance(result, VideoResult):
        writer.write(result.example)
  # Of the bytes on disk, read back before they count as finished.
  digest = integrity.file_digest(tmp)
  tf.io.gfile.rename(tmp, layout.join(out_dir, spec.filename), overwrite=True)
  videos = [r for r in results if isinstance(r, VideoResult)]
  summary = {
      "filename": spec.filename,
      "split": spec.split,
      "planned": planned,
      "num_videos": len(videos),
      "bytes": digest["bytes"],
      "sha256": digest["sha256"],
      "num_frames": sum(r.num_frames for r in videos),
      "skipped": [{"path": r.path, "video_id": r.video_id, "reason": r.reason}
                  for r in results if isinstance(r, SkipRecord)],
      "warnings": [{"path": r.path, "video_id": r.video_id, "warning": w}
                   for r in videos for w in r.warnings],
  }
  layout.write_json_atomic(progress_path(out_dir, spec), summary)
  return summary
