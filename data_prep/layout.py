"""What a prepared output directory holds and how its JSON files are read and written.

The names every data_prep module shares: `.progress/` (one summary per finished shard, plus
`options.json`, the options that determine the bytes) and `manifest.json`, with the manifest's
per-shard integrity keys; and gfile I/O for those JSON files (`write_json_atomic` writes
`.<name>.tmp`, then renames it over the target, so a killed run never leaves a half file).
docs/design.md "Shard format" describes the files.
"""

from __future__ import annotations

import json
import os

PROGRESS_DIR = ".progress"
OPTIONS_FILE = "options.json"
MANIFEST_FILE = "manifest.json"
# Manifest keys of the per-shard integrity records (shard_num_videos is the record count).
SHARD_BYTES_KEY, SHARD_SHA256_KEY, SHARD_RECORDS_KEY = (
    "shard_bytes", "shard_sha256", "shard_num_videos")


def gfile():
  """tf.io.gfile (TensorFlow is imported on first use only)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def join(*parts: str) -> str:
  return os.path.join(*[str(p) for p in parts])


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to `.<name>.tmp` beside `path`, then renames it over `path`."""
  io = gfile()
  directory, name = os.path.split(str(path))
  tmp = join(directory, f".{name}.tmp")
  with io.GFile(tmp, "w") as f:
    f.write(json.dumps(obj, indent=1, sort_keys=True) + "\n")
  io.rename(tmp, str(path), overwrite=True)


def gfile_exists(path: str) -> bool:
  return gfile().exists(str(path))


def read_json(path: str):
  with gfile().GFile(str(path), "r") as f:
    return json.loads(f.read())
