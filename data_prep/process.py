"""The per-video function shared by both runners: one video → its tf.train.Example.

`process_video(item, options)` returns a `VideoResult` (the serialised example, in the features of
docs/design.md "Shard format", plus facts for the manifest) or a `SkipRecord` (path + reason).
It is pure: the result depends only on the arguments (and the video file), which is what makes
shards reproducible, resumable and byte-identical between the local runner (prepare.py) and the
Beam runner (beam.py). Both import it from here; neither imports the other's module for it.

`options` is a `prepare.PrepareOptions`; only the fields of `VideoOptions` are read.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import cv2
import numpy as np

from data_prep import flow as flow_lib
from data_prep import shards
from data_prep import video as video_lib
from data_prep.shards import SkipRecord, VideoResult
from data_prep.sources import VideoItem
from sta_cnn_jax import modalities

FLOW_MODALITIES = modalities.FLOW_MODALITIES
# Flow pairs computed and encoded at a time (a multiple of every tvl1_jax batch), bounding memory.
FLOW_CHUNK = 4 * max(flow_lib.TVL1_JAX_BATCH.values())


class VideoOptions(Protocol):
  """The options that determine one video's example (a subset of prepare.PrepareOptions)."""
  modalities: tuple[str, ...]
  flow: str
  flow_bound: float
  flow_format: str
  jpeg_quality: int
  frame_width: int
  frame_height: int


def _decode(item: VideoItem, options: VideoOptions,
            encoded_frames: Sequence[bytes] | None) -> video_lib.DecodedVideo:
  if encoded_frames is not None:
    return video_lib.decode_encoded_frames(item.path, encoded_frames, options.frame_width,
                                           options.frame_height)
  return video_lib.decode_video(item.path, options.frame_width, options.frame_height)


def process_video(item: VideoItem, options: VideoOptions,
                  encoded_frames: Sequence[bytes] | None = None) -> VideoResult | SkipRecord:
  """One video → its tf.train.Example (docs/design.md "Shard format") or why it was skipped.

  Pure: the result depends only on the arguments (and the video file), so shards are
  reproducible. `encoded_frames` supplies the frames of a TFDS item instead of a file.
  """
  try:
    decoded = _decode(item, options, encoded_frames)
  except video_lib.VideoError as e:
    return SkipRecord(item.video_id, item.path, e.reason)
  frames = decoded.frames  # (n, H, W, 3) uint8 RGB
  n, height, width = frames.shape[:3]
  wants_flow = [m for m in options.modalities if m in FLOW_MODALITIES]
  features = {"video_id": item.video_id.encode(), "label": int(item.label),
              "height": height, "width": width, "num_frames": n,
              "num_flow": n - 1 if wants_flow else 0}
  warnings = list(decoded.warnings)
  if "rgb" in options.modalities:
    features["rgb"] = [flow_lib.encode_image(f, "jpeg", options.jpeg_quality) for f in frames]
  try:
    gray = flow_lib.to_gray(frames) if wants_flow else None  # (n, H, W)
    for modality in wants_flow:
      planes_x, planes_y, fallbacks = _encoded_flow(gray, modality, options)
      features[f"{modality}_x"], features[f"{modality}_y"] = planes_x, planes_y
      if fallbacks:
        warnings.append(f"warped flow: no homography for {fallbacks} of {n - 1} frame pairs "
                        "(identity used)")
  except cv2.error as e:
    return SkipRecord(item.video_id, item.path, f"OpenCV error while computing flow: {e}")
  return VideoResult(item.video_id, item.path, shards.encode_example(features), n,
                     tuple(warnings))


def _encoded_flow(gray: np.ndarray, modality: str,
                  options: VideoOptions) -> tuple[list[bytes], list[bytes], int]:
  """Flow or warped flow of (n, H, W) grey frames → n−1 x and y planes (encoded), fallbacks.

  Computed FLOW_CHUNK pairs at a time so that a long video never holds all its float flow.
  """
  planes_x, planes_y, fallbacks = [], [], 0
  for start in range(0, len(gray) - 1, FLOW_CHUNK):
    chunk = gray[start:start + FLOW_CHUNK + 1]  # FLOW_CHUNK pairs share their boundary frame
    if modality == "flow":
      field = flow_lib.compute_flow(chunk, options.flow)  # (pairs, H, W, 2)
    else:
      field, chunk_fallbacks = flow_lib.compute_warped_flow(chunk, options.flow)
      fallbacks += chunk_fallbacks
    xs, ys = flow_lib.encode_flow_planes(field, options.flow_bound, options.flow_format,
                                         options.jpeg_quality)
    planes_x += xs
    planes_y += ys
  return planes_x, planes_y, fallbacks
