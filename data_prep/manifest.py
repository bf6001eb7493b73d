"""manifest.json: the shard summaries of a finished run aggregated into one file (the keys of
docs/design.md "Shard format"), written atomically at the end of every run.

It has no timestamps or host names (`created_with` records only versions), so identical inputs
give an identical manifest. Its per-shard size, record count and SHA-256 are what
`integrity.verify_output` (`prepare --verify`) and training check the shards against.
"""

from __future__ import annotations

import platform
from typing import Sequence

import numpy as np

from data_prep import layout
from data_prep import shards


def created_with() -> dict:
  """Versions of what wrote the data (no timestamps, so re-runs give identical manifests)."""
  import cv2  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import sta_cnn_jax  # pylint: disable=g-import-not-at-top
  return {"sta_cnn_jax": sta_cnn_jax.__version__, "python": platform.python_version(),
          "numpy": np.__version__, "opencv": cv2.__version__, "tensorflow": tf.__version__,
          "writer": "data_prep.prepare"}


def build_manifest(out_dir: str, specs: Sequence[shards.ShardSpec], header: dict,
                   missing: Sequence[dict]) -> dict:
  """Aggregates the shard summaries under `out_dir` into the manifest dict (the keys of
  docs/design.md "Shard format")."""
  summaries = [layout.read_json(shards.progress_path(out_dir, spec)) for spec in specs]
  splits = sorted({spec.split for spec in specs} | set(header.get("splits", ())),
                  key=shards.split_rank)
  by_video = lambda record: (record["video_id"], record["path"])  # noqa: E731
  manifest = dict(header)
  manifest.pop("splits", None)
  manifest.update({
      "num_videos": {s: sum(m["num_videos"] for m in summaries if m["split"] == s)
                     for s in splits},
      "num_frames": {s: sum(m["num_frames"] for m in summaries if m["split"] == s)
                     for s in splits},
      "shards": {s: [m["filename"] for m in summaries if m["split"] == s] for s in splits},
      layout.SHARD_RECORDS_KEY: {m["filename"]: m["num_videos"] for m in summaries},
      layout.SHARD_BYTES_KEY: {m["filename"]: m["bytes"] for m in summaries},
      layout.SHARD_SHA256_KEY: {m["filename"]: m["sha256"] for m in summaries},
      "skipped": sorted((r for m in summaries for r in m["skipped"]), key=by_video),
      "warnings": sorted((r for m in summaries for r in m["warnings"]), key=by_video),
      "missing": sorted(missing, key=lambda r: r["path"]),
      "created_with": created_with(),
  })
  return manifest


def write_manifest(out_dir: str, manifest: dict) -> str:
  path = layout.join(out_dir, layout.MANIFEST_FILE)
  layout.write_json_atomic(path, manifest)
  return path
