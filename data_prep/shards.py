"""TFRecord shards of whole videos, resumable, plus manifest.json (docs/design.md "Shard format").

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
  * `write_manifest` (atomic) aggregates the summaries at the end. It has no timestamps or host
    names, so identical inputs give an identical manifest.

Integrity: every summary, and the manifest, records each shard's byte size, record count and
SHA-256 (of the file as written, read back before the rename). A re-run checks every finished
shard against its summary (`shard_damage`) and redoes the ones that differ; `verify_output`
(`prepare --verify`) checks an output against its manifest without writing anything;
`repair_command` rebuilds the command line that repairs an output from `.progress/options.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import struct
from typing import Iterable, Iterator, Sequence

import numpy as np

from data_prep.sources import VideoItem

PROGRESS_DIR = ".progress"
OPTIONS_FILE = "options.json"
MANIFEST_FILE = "manifest.json"
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
# TFRecord framing: uint64 length, uint32 masked CRC of the length, data, uint32 masked CRC.
_TFRECORD_LENGTH_BYTES = 8
_TFRECORD_CRC_BYTES = 4
# Read size for checksums.
_HASH_CHUNK_BYTES = 8 << 20
# Manifest keys of the per-shard integrity records (shard_num_videos is the record count).
SHARD_BYTES_KEY, SHARD_SHA256_KEY, SHARD_RECORDS_KEY = (
    "shard_bytes", "shard_sha256", "shard_num_videos")


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


def _split_rank(split: str) -> tuple[int, str]:
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
  for split in sorted(by_split, key=_split_rank):
    ordered = sorted(by_split[split], key=lambda item: item.video_id)
    num_shards = math.ceil(len(ordered) / shard_size)
    for index in range(num_shards):
      filename = SHARD_PATTERN.format(split=split, modalities=modalities_tag(modalities),
                                      index=index, num_shards=num_shards)
      specs.append(ShardSpec(split, index, num_shards, filename,
                             tuple(ordered[index * shard_size:(index + 1) * shard_size])))
  return specs


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def _join(*parts: str) -> str:
  return os.path.join(*[str(p) for p in parts])


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to `.<name>.tmp` beside `path`, then renames it over `path`."""
  gfile = _gfile()
  directory, name = os.path.split(str(path))
  tmp = _join(directory, f".{name}.tmp")
  with gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(obj, indent=1, sort_keys=True) + "\n")
  gfile.rename(tmp, str(path), overwrite=True)


def gfile_exists(path: str) -> bool:
  return _gfile().exists(str(path))


def read_json(path: str):
  with _gfile().GFile(str(path), "r") as f:
    return json.loads(f.read())


def progress_path(out_dir: str, spec: ShardSpec) -> str:
  return _join(out_dir, PROGRESS_DIR, spec.filename + ".json")


def check_options(out_dir: str, options: dict) -> None:
  """Records `options` for this output directory, or refuses if it was prepared differently."""
  gfile = _gfile()
  gfile.makedirs(_join(out_dir, PROGRESS_DIR))
  path = _join(out_dir, PROGRESS_DIR, OPTIONS_FILE)
  canonical = json.loads(json.dumps(options, sort_keys=True))
  if gfile.exists(path):
    previous = read_json(path)
    if previous != canonical:
      changed = sorted(k for k in set(previous) | set(canonical)
                       if previous.get(k) != canonical.get(k))
      raise ValueError(f"{out_dir} holds shards prepared with other options (differing: "
                       f"{changed}; see {path}); use a new --out or delete that directory")
  else:
    write_json_atomic(path, canonical)


def remove_stale_temporaries(out_dir: str) -> None:
  """Deletes `.*.tmp` files a killed run left behind."""
  gfile = _gfile()
  for directory in (out_dir, _join(out_dir, PROGRESS_DIR)):
    if gfile.isdir(directory):
      for name in gfile.listdir(directory):
        if name.startswith(".") and name.endswith(".tmp"):
          gfile.remove(_join(directory, name))


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
  gfile = _gfile()
  summary_path = progress_path(out_dir, spec)
  if not gfile.exists(summary_path):
    return False, None
  summary = read_json(summary_path)
  if summary["planned"] != [item.video_id for item in spec.items]:
    return False, None
  path = _join(out_dir, spec.filename)
  if "sha256" not in summary:  # legacy summary: verify the framing, then record the digest
    if not gfile.exists(path):
      return False, "missing"
    damage = scan_records(path, summary["num_videos"])
    if damage is None:
      write_json_atomic(summary_path, {**summary, **file_digest(path)})
      return True, None
    return False, damage
  damage = shard_damage(path, {"bytes": summary["bytes"], "records": summary["num_videos"],
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
  tmp = _join(out_dir, f".{spec.filename}.tmp")
  with tf.io.TFRecordWriter(tmp) as writer:
    for result in results:
      if isinstance(result, VideoResult):
        writer.write(result.example)
  digest = file_digest(tmp)  # of the bytes on disk, read back before they count as finished
  tf.io.gfile.rename(tmp, _join(out_dir, spec.filename), overwrite=True)
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
  write_json_atomic(progress_path(out_dir, spec), summary)
  return summary


# ----------------------------------------------------------------------------------------------
# Manifest


def created_with() -> dict:
  """Versions of what wrote the data (no timestamps, so re-runs give identical manifests)."""
  import cv2  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import sta_cnn_jax  # pylint: disable=g-import-not-at-top
  return {"sta_cnn_jax": sta_cnn_jax.__version__, "python": platform.python_version(),
          "numpy": np.__version__, "opencv": cv2.__version__, "tensorflow": tf.__version__,
          "writer": "data_prep.prepare"}


def build_manifest(out_dir: str, specs: Sequence[ShardSpec], header: dict,
                   missing: Sequence[dict]) -> dict:
  """Aggregates the shard summaries under `out_dir` into the manifest dict (the keys of
  docs/design.md "Shard format")."""
  summaries = [read_json(progress_path(out_dir, spec)) for spec in specs]
  splits = sorted({spec.split for spec in specs} | set(header.get("splits", ())), key=_split_rank)
  by_video = lambda record: (record["video_id"], record["path"])  # noqa: E731
  manifest = dict(header)
  manifest.pop("splits", None)
  manifest.update({
      "num_videos": {s: sum(m["num_videos"] for m in summaries if m["split"] == s)
                     for s in splits},
      "num_frames": {s: sum(m["num_frames"] for m in summaries if m["split"] == s)
                     for s in splits},
      "shards": {s: [m["filename"] for m in summaries if m["split"] == s] for s in splits},
      SHARD_RECORDS_KEY: {m["filename"]: m["num_videos"] for m in summaries},
      SHARD_BYTES_KEY: {m["filename"]: m["bytes"] for m in summaries},
      SHARD_SHA256_KEY: {m["filename"]: m["sha256"] for m in summaries},
      "skipped": sorted((r for m in summaries for r in m["skipped"]), key=by_video),
      "warnings": sorted((r for m in summaries for r in m["warnings"]), key=by_video),
      "missing": sorted(missing, key=lambda r: r["path"]),
      "created_with": created_with(),
  })
  return manifest


def write_manifest(out_dir: str, manifest: dict) -> str:
  path = _join(out_dir, MANIFEST_FILE)
  write_json_atomic(path, manifest)
  return path


# ----------------------------------------------------------------------------------------------
# Integrity: digests, checks, verification of an output, the repair command


@dataclasses.dataclass(frozen=True)
class Damage:
  """A damaged file of a prepared output: its name (relative to the output) and why."""
  filename: str
  reason: str

  def __str__(self) -> str:
    return f"{self.filename}: {self.reason}"


def file_digest(path: str) -> dict:
  """{'bytes': size, 'sha256': hex digest} of a file (streamed)."""
  sha = hashlib.sha256()
  size = 0
  with _gfile().GFile(str(path), "rb") as f:
    while True:
      chunk = f.read(_HASH_CHUNK_BYTES)
      if not chunk:
        break
      sha.update(chunk)
      size += len(chunk)
  return {"bytes": size, "sha256": sha.hexdigest()}


def count_records(path: str) -> int | None:
  """Records of a TFRecord file from its framing alone (headers, no payload read); None if
  the framing does not add up to the file's size (truncated or overwritten)."""
  count, position = 0, 0
  with _gfile().GFile(str(path), "rb") as f:
    size = f.size()
    while position < size:
      header = f.read(_TFRECORD_LENGTH_BYTES)
      if len(header) != _TFRECORD_LENGTH_BYTES:
        return None
      (length,) = struct.unpack("<Q", header)
      position += _TFRECORD_LENGTH_BYTES + 2 * _TFRECORD_CRC_BYTES + length
      if position > size:
        return None
      f.seek(position)
      count += 1
  return count


def scan_records(path: str, expected_records: int | None = None) -> str | None:
  """Reads every record with TensorFlow (length and data CRCs checked); the damage, or None."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  count = 0
  try:
    for _ in tf.data.TFRecordDataset(str(path)):
      count += 1
  except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
    return f"unreadable after {count} records ({first_line(e.message)})"
  if expected_records is not None and count != expected_records:
    return f"{count} records, expected {expected_records}"
  return None


def first_line(text: str) -> str:
  return str(text).strip().splitlines()[0] if str(text).strip() else ""


def shard_damage(path: str, expected: dict, checksums: bool = True) -> str | None:
  """Why the shard at `path` differs from `expected` ({'bytes', 'records', 'sha256'}, each
  optional), or None. Sizes and record counts cost a stat and a walk over the record headers;
  with `checksums` the whole file is read for its SHA-256."""
  gfile = _gfile()
  if not gfile.exists(str(path)):
    return "missing"
  size = gfile.stat(str(path)).length
  want = expected.get("bytes")
  if want is not None and size != want:
    if size < want:
      return f"truncated: {size} of {want} bytes"
    return f"{size} bytes, expected {want}"
  want_records = expected.get("records")
  if want_records is not None:
    records = count_records(path)
    if records is None:
      return "broken TFRecord framing (truncated or overwritten)"
    if records != want_records:
      return f"{records} records, expected {want_records}"
  if checksums and expected.get("sha256"):
    if file_digest(path)["sha256"] != expected["sha256"]:
      return "content differs (SHA-256 mismatch)"
  return None


def manifest_shard_records(manifest: dict, filename: str) -> dict:
  """{'bytes', 'records', 'sha256'} the manifest records for a shard (missing keys omitted)."""
  out = {}
  for name, key in (("bytes", SHARD_BYTES_KEY), ("records", SHARD_RECORDS_KEY),
                    ("sha256", SHARD_SHA256_KEY)):
    value = (manifest.get(key) or {}).get(filename)
    if value is not None:
      out[name] = value
  return out


def _manifest_problem(manifest: dict, summaries: dict[str, dict]) -> list[Damage]:
  """Differences between the manifest's per-shard aggregates and the shard summaries."""
  problems = []
  listed = {name: split for split, names in (manifest.get("shards") or {}).items()
            for name in names}
  for name in sorted(set(listed) | set(summaries)):
    summary = summaries.get(name)
    if summary is None:
      problems.append(Damage(MANIFEST_FILE, f"lists {name}, which has no summary in "
                             f"{PROGRESS_DIR}/ (not written by this output's runs)"))
      continue
    if name not in listed:
      problems.append(Damage(MANIFEST_FILE, f"does not list {name}"))
      continue
    recorded = manifest_shard_records(manifest, name)
    for field, value in (("records", summary["num_videos"]), ("bytes", summary.get("bytes")),
                         ("sha256", summary.get("sha256"))):
      if value is not None and field in recorded and recorded[field] != value:
        problems.append(Damage(MANIFEST_FILE, f"{field} of {name} is {recorded[field]!r}, its "
                               f"summary in {PROGRESS_DIR}/ says {value!r} (edited?)"))
  for split, count in (manifest.get("num_videos") or {}).items():
    total = sum(m["num_videos"] for m in summaries.values() if m["split"] == split)
    if summaries and count != total:
      problems.append(Damage(MANIFEST_FILE, f"num_videos[{split!r}] is {count}, its shards hold "
                             f"{total} (edited?)"))
  return problems


def read_summary(out_dir: str, filename: str) -> dict | None:
  """The `.progress` summary of shard `filename`, or None (absent or unreadable)."""
  try:
    return read_json(_join(out_dir, PROGRESS_DIR, filename + ".json"))
  except Exception:  # pylint: disable=broad-except  # missing / unreadable: no summary
    return None


def _summaries(out_dir: str) -> dict[str, dict]:
  """{shard filename: summary} of the `.progress` folder (empty if there is none)."""
  gfile = _gfile()
  folder = _join(out_dir, PROGRESS_DIR)
  out = {}
  if gfile.isdir(folder):
    for name in sorted(gfile.listdir(folder)):
      if name.endswith(".tfrecord.json") and not name.startswith("."):
        summary = read_json(_join(folder, name))
        out[summary["filename"]] = summary
  return out


def verify_output(out_dir: str, checksums: bool = True) -> tuple[list[Damage], int]:
  """Checks a prepared output without writing anything: (damages, shards checked).

  Every shard listed in manifest.json must exist with the recorded size, record count and (with
  `checksums`) SHA-256; every `*.tfrecord` present must be listed; the manifest's per-shard
  records must agree with the shard summaries in `.progress/`. Without a manifest (missing or
  unreadable) the shards are checked against their summaries.
  """
  gfile = _gfile()
  out_dir = str(out_dir)
  damages: list[Damage] = []
  manifest_path = _join(out_dir, MANIFEST_FILE)
  manifest = None
  if not gfile.exists(manifest_path):
    damages.append(Damage(MANIFEST_FILE, "missing (the run that prepared this output did not "
                          "finish, or the file was removed)"))
  else:
    try:
      manifest = read_json(manifest_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      damages.append(Damage(MANIFEST_FILE, f"not valid JSON ({e})"))
  summaries = _summaries(out_dir)
  if manifest is not None:
    expected = {name: manifest_shard_records(manifest, name)
                for names in (manifest.get("shards") or {}).values() for name in names}
    damages += _manifest_problem(manifest, summaries) if summaries else []
  else:
    expected = {name: {"bytes": m.get("bytes"), "records": m["num_videos"],
                       "sha256": m.get("sha256")} for name, m in summaries.items()}
  present = {os.path.basename(p) for p in gfile.glob(_join(out_dir, "*.tfrecord"))}
  for name in sorted(expected):
    damage = shard_damage(_join(out_dir, name), expected[name], checksums)
    if damage is None and checksums and not expected[name].get("sha256"):
      damage = scan_records(_join(out_dir, name), expected[name].get("records"))
    if damage:
      damages.append(Damage(name, damage))
  if manifest is not None or summaries:
    for name in sorted(present - set(expected)):
      damages.append(Damage(name, f"not listed in {MANIFEST_FILE} (training would read it)"))
  return damages, len(expected)


def repair_command(out_dir: str) -> str:
  """The `python -m data_prep.prepare` command that repairs `out_dir` (rebuilt from
  .progress/options.json): a re-run keeps the intact shards, redoes damaged or missing ones and
  rewrites manifest.json. A generic instruction when the options are not recorded."""
  path = _join(out_dir, PROGRESS_DIR, OPTIONS_FILE)
  try:
    options = read_json(path)
  except Exception:  # pylint: disable=broad-except  # missing or unreadable: say what to do
    return (f"re-run the data_prep.prepare command that wrote {out_dir} with the same options "
            "(intact shards are kept, damaged ones redone)")
  dataset = options.get("dataset")
  args = [f"--out={out_dir}"]
  for key in ("dataset", "videos", "splits", "split", "modalities", "flow", "flow_bound",
              "flow_format", "jpeg_quality", "frame_width", "frame_height", "shard_size",
              "max_videos", "tfds_name", "tfds_data_dir", "tfds_splits", "synthetic_seed"):
    value = options.get(key)
    if value is None or (key.startswith("tfds_") and dataset != "tfds") or (
        key == "synthetic_seed" and dataset != "synthetic") or (
            key == "split" and dataset not in ("ucf101", "hmdb51")):
      continue
    if isinstance(value, (list, tuple)):
      value = ",".join(str(v) for v in value)
    args.append(f"--{key}={value}")
  return "python -m data_prep.prepare " + " ".join(shlex.quote(a) for a in args)
