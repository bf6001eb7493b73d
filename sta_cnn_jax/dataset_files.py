"""The files of a prepared dataset, as its readers see them: manifest.json, this host's shards,
their check against the manifest, and naming the damaged shard when a read fails mid-run.

Integrity: before reading, `verify_shards` checks the split's shards against manifest.json (every
listed shard present and no unlisted one, sizes, record counts; SHA-256 on request), and a read
error in the middle of a run (tf DataLossError / NotFoundError from a truncated, overwritten or
deleted shard) is turned into a `ShardReadError` naming the damaged shard (`guard_reads`, which
re-checks this host's shards at that point). Both name the command that repairs the shards.
The shard format is docs/design.md, "Shard format".
"""

import json
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence

import tensorflow as tf

from data_prep import integrity
from data_prep import layout
from sta_cnn_jax import modalities

MANIFEST_NAME = "manifest.json"


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
  return (f"repair: {integrity.repair_command(data_dir)} (check first: python -m "
          f"data_prep.prepare --out={data_dir} --verify)")


def read_manifest(data_dir: str) -> Dict[str, Any]:
  """Loads `<data_dir>/manifest.json`; clear error if it is missing or not JSON."""
  path = os.path.join(data_dir, MANIFEST_NAME)
  prepared = tf.io.gfile.exists(os.path.join(data_dir, layout.PROGRESS_DIR))
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
  """Facts of a prepared dataset: classes, num_classes, num_videos, modalities, frame_size and
  the manifest's rgb (JPEG) and flow settings."""
  manifest = read_manifest(data_dir)
  classes = list(manifest.get("classes", []))
  return {
      "dataset": manifest.get("dataset"),
      "classes": classes,
      "num_classes": len(classes),
      "num_videos": dict(manifest.get("num_videos", {})),
      "modalities": _manifest_modalities(manifest),
      "frame_size": manifest.get("frame_size"),
      "rgb": manifest.get("rgb"),
      "flow": manifest.get("flow"),
  }


def check_modality(data_dir: str, modality: str, manifest: Optional[Dict[str, Any]] = None):
  """Raises ValueError unless `modality` is known and listed in the manifest."""
  modalities.check(modality)
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
    expected = integrity.manifest_shard_records(manifest, os.path.basename(path))
    if not records:
      expected.pop("records", None)
    reason = integrity.shard_damage(path, expected, checksums=checksums)
    if reason:
      damaged.append((path, reason))
  return damaged


def _blame_manifest(data_dir: str, manifest: Dict[str, Any], path: str,
                    reason: str) -> tuple[str, str]:
  """(path, reason), or manifest.json's entry when the manifest's record of the shard differs
  from the summary data_prep wrote with it (.progress/<shard>.json) while the shard still has
  the summary's size: then the manifest was edited, not the shard."""
  name = os.path.basename(path)
  summary = integrity.read_summary(data_dir, name)
  if not summary or summary.get("bytes") is None:
    return path, reason
  recorded = integrity.manifest_shard_records(manifest, name)
  edited = any(key in recorded and recorded[key] != summary.get(key)
               for key in ("bytes", "sha256"))
  if (edited and tf.io.gfile.exists(path)
      and tf.io.gfile.stat(path).length == summary["bytes"]):
    return (os.path.join(data_dir, MANIFEST_NAME),
            f"its record of {name} differs from the summary data_prep wrote with the shard "
            f"({layout.PROGRESS_DIR}/{name}.json), which the shard still matches "
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
  counts = manifest.get(layout.SHARD_RECORDS_KEY) or {}
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
  if not damaged and manifest.get(layout.SHARD_SHA256_KEY):
    damaged = _shard_damages(files, manifest, checksums=True, records=True)
  if not damaged:
    damaged = [(f, reason) for f in files
               for reason in [integrity.scan_records(f)] if reason]
  return damaged


def _tf_cause(error: tf.errors.OpError) -> str:
  """TF's message without its function-node prefix and op suffix."""
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", integrity.first_line(error.message))
  return re.sub(r"\s*\[Op:.*$", "", text).strip()


def guard_reads(iterator: Iterator[Any], data_dir: str, split: str,
                 files: Sequence[str]) -> Iterator[Any]:
  """`iterator`, with a tf.data read error (DataLossError from a truncated or overwritten
  record, NotFoundError from a deleted shard) turned into a ShardReadError naming the shard.

  Records of several shards are interleaved and TF's message names none, so the host's shards
  are re-checked (`locate_damage`) to find it.
  """
  try:
    yield from iterator
  except GeneratorExit:
    # close() (the consumer stopped, or garbage collection at interpreter exit, when `tf`
    # may already be torn down): nothing was read wrong.
    raise
  except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
    damaged = locate_damage(data_dir, files)
    cause = _tf_cause(e)
    if not damaged:
      damaged = [(", ".join(files), f"one of these ({cause})")]
    raise ShardReadError(_damage_message(data_dir, split, damaged,
                                         prefix=f"read error ({cause}): "), damaged) from None


def records_per_file(files: Sequence[str], manifest: Dict[str, Any]) -> List[int]:
  """Record counts of `files`: the manifest's (verified sizes make them exact); a manifest
  written before it recorded them: counted by data_prep.integrity.count_records."""
  counts = manifest.get(layout.SHARD_RECORDS_KEY) or {}
  out = []
  for f in files:
    name = os.path.basename(f)
    count = counts[name] if name in counts else integrity.count_records(f)
    if count is None:
      raise ValueError(f"{f}: truncated TFRecord (its record framing does not fit its size)")
    out.append(count)
  return out

