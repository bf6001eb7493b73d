"""Integrity of a prepared output: damage detection and verification.

`file_digest` (size + SHA-256, recorded for every shard when it is written), `count_records`
(the TFRecord framing alone) and `scan_records` (every record's CRCs) find damaged shards;
`shard_damage` says why a shard differs from what was recorded for it; `verify_output`
(`prepare --verify`) checks an output against its manifest.json and `.progress/` summaries
without writing anything; `repair_command` rebuilds, from `.progress/options.json`, the command
line that repairs an output (a re-run keeps intact shards and redoes damaged ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import struct

from data_prep import layout

# TFRecord framing: uint64 length, uint32 masked CRC of the length, data, uint32 masked CRC.
_TFRECORD_LENGTH_BYTES = 8
_TFRECORD_CRC_BYTES = 4
# Read size for checksums.
_HASH_CHUNK_BYTES = 8 << 20


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
  with layout.gfile().GFile(str(path), "rb") as f:
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
  with layout.gfile().GFile(str(path), "rb") as f:
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
  gfile = layout.gfile()
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
  for name, key in (("bytes", layout.SHARD_BYTES_KEY), ("records", layout.SHARD_RECORDS_KEY),
                    ("sha256", layout.SHARD_SHA256_KEY)):
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
      problems.append(Damage(layout.MANIFEST_FILE, f"lists {name}, which has no summary in "
                             f"{layout.PROGRESS_DIR}/ (not written by this output's runs)"))
      continue
    if name not in listed:
      problems.append(Damage(layout.MANIFEST_FILE, f"does not list {name}"))
      continue
    recorded = manifest_shard_records(manifest, name)
    for field, value in (("records", summary["num_videos"]), ("bytes", summary.get("bytes")),
                         ("sha256", summary.get("sha256"))):
      if value is not None and field in recorded and recorded[field] != value:
        problems.append(Damage(layout.MANIFEST_FILE,
                               f"{field} of {name} is {recorded[field]!r}, its summary in "
                               f"{layout.PROGRESS_DIR}/ says {value!r} (edited?)"))
  for split, count in (manifest.get("num_videos") or {}).items():
    total = sum(m["num_videos"] for m in summaries.values() if m["split"] == split)
    if summaries and count != total:
      problems.append(Damage(layout.MANIFEST_FILE, f"num_videos[{split!r}] is {count}, its "
                             f"shards hold {total} (edited?)"))
  return problems


def read_summary(out_dir: str, filename: str) -> dict | None:
  """The `.progress` summary of shard `filename`, or None (absent or unreadable)."""
  try:
    return layout.read_json(layout.join(out_dir, layout.PROGRESS_DIR, filename + ".json"))
  except Exception:  # pylint: disable=broad-except  # missing / unreadable: no summary
    return None


def _summaries(out_dir: str) -> dict[str, dict]:
  """{shard filename: summary} of the `.progress` folder (empty if there is none)."""
  gfile = layout.gfile()
  folder = layout.join(out_dir, layout.PROGRESS_DIR)
  out = {}
  if gfile.isdir(folder):
    for name in sorted(gfile.listdir(folder)):
      if name.endswith(".tfrecord.json") and not name.startswith("."):
        summary = layout.read_json(layout.join(folder, name))
        out[summary["filename"]] = summary
  return out


def verify_output(out_dir: str, checksums: bool = True) -> tuple[list[Damage], int]:
  """Checks a prepared output without writing anything: (damages, shards checked).

  Every shard listed in manifest.json must exist with the recorded size, record count and (with
  `checksums`) SHA-256; every `*.tfrecord` present must be listed; the manifest's per-shard
  records must agree with the shard summaries in `.progress/`. Without a manifest (missing or
  unreadable) the shards are checked against their summaries.
  """
  gfile = layout.gfile()
  out_dir = str(out_dir)
  damages: list[Damage] = []
  manifest_path = layout.join(out_dir, layout.MANIFEST_FILE)
  manifest = None
  if not gfile.exists(manifest_path):
    damages.append(Damage(layout.MANIFEST_FILE, "missing (the run that prepared this output did "
                          "not finish, or the file was removed)"))
  else:
    try:
      manifest = layout.read_json(manifest_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      damages.append(Damage(layout.MANIFEST_FILE, f"not valid JSON ({e})"))
  summaries = _summaries(out_dir)
  if manifest is not None:
    expected = {name: manifest_shard_records(manifest, name)
                for names in (manifest.get("shards") or {}).values() for name in names}
    damages += _manifest_problem(manifest, summaries) if summaries else []
  else:
    expected = {name: {"bytes": m.get("bytes"), "records": m["num_videos"],
                       "sha256": m.get("sha256")} for name, m in summaries.items()}
  present = {os.path.basename(p) for p in gfile.glob(layout.join(out_dir, "*.tfrecord"))}
  for name in sorted(expected):
    damage = shard_damage(layout.join(out_dir, name), expected[name], checksums)
    if damage is None and checksums and not expected[name].get("sha256"):
      damage = scan_records(layout.join(out_dir, name), expected[name].get("records"))
    if damage:
      damages.append(Damage(name, damage))
  if manifest is not None or summaries:
    for name in sorted(present - set(expected)):
      damages.append(Damage(name, f"not listed in {layout.MANIFEST_FILE} (training would read it)"))
  return damages, len(expected)


def repair_command(out_dir: str) -> str:
  """The `python -m data_prep.prepare` command that repairs `out_dir` (rebuilt from
  .progress/options.json): a re-run keeps the intact shards, redoes damaged or missing ones and
  rewrites manifest.json. A generic instruction when the options are not recorded."""
  path = layout.join(out_dir, layout.PROGRESS_DIR, layout.OPTIONS_FILE)
  try:
    options = layout.read_json(path)
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
