"""The up-front time estimate of a preparation run, printed before any video is processed.

The flow cost is measured on real frames (one core, the run's method, frame size and encodings)
and scaled by the mean video length from a sample of container headers: expected time = (flow
pairs / measured pairs/s + frames x measured seconds per frame for decoding and encoding) /
workers. TV-L1 on a CPU core manages ~0.5–0.7 pairs/s at 340×256, i.e. days for UCF101 on a few
cores, which the message says (on a GPU/TPU: `--flow=tvl1_jax`).

`options` below is the run's `prepare.PrepareOptions` (flow, modalities, frame size, encodings).
"""

from __future__ import annotations

import time
from typing import Sequence

import cv2
import numpy as np

from data_prep import flow as flow_lib
from data_prep import sources
from data_prep import video as video_lib
from data_prep.sources import VideoItem
from sta_cnn_jax import modalities

FLOW_MODALITIES = modalities.FLOW_MODALITIES
# Time estimate: container headers of this many videos give the mean length; flow speed is
# timed on this many frame pairs (fewer for TV-L1 on CPU, which is slow).
ESTIMATE_SAMPLE_VIDEOS = 20
ESTIMATE_PAIRS = {"tvl1": 2, "dis": 10, "dis_fine": 5, "farneback": 5, "tvl1_jax": 2}
SECONDS_PER_HOUR = 3600.0


def _measure_costs(frames: np.ndarray, options) -> tuple[float, float]:
  """(flow pairs/s, seconds per frame for the rest: JPEG encoding, homographies) on one core."""
  gray = flow_lib.to_gray(frames)
  fn = flow_lib.get_flow_fn(options.flow)
  threads = cv2.getNumThreads()
  cv2.setNumThreads(1)
  try:
    fn(gray[:1], gray[1:2])  # warm-up (JIT compile for tvl1_jax)
    start = time.perf_counter()
    field = fn(gray[:-1], gray[1:])  # (pairs, H, W, 2)
    flow_done = time.perf_counter()
    if "rgb" in options.modalities:
      _ = [flow_lib.encode_image(f, "jpeg", options.jpeg_quality) for f in frames]
    for modality in options.modalities:
      if modality in FLOW_MODALITIES:
        flow_lib.encode_flow_planes(field, options.flow_bound, options.flow_format,
                                    options.jpeg_quality)
      if modality == "warpflow":
        _ = [flow_lib.estimate_homography(a, b) for a, b in zip(gray[:-1], gray[1:])]
    other_done = time.perf_counter()
  finally:
    cv2.setNumThreads(threads)
  return (len(gray) - 1) / (flow_done - start), (other_done - flow_done) / len(frames)


def _sample_frames(items: Sequence[VideoItem], options,
                   pairs: int) -> tuple[np.ndarray, float]:
  """pairs + 1 frames of the first decodable item, and its decoding time per frame."""
  for item in items[:ESTIMATE_SAMPLE_VIDEOS]:
    if sources.is_tfds_item(item):
      break
    start = time.perf_counter()
    try:
      frames = video_lib.read_video(item.path, options.frame_width, options.frame_height)
    except video_lib.VideoError:
      continue
    if len(frames) > pairs:
      return frames[:pairs + 1], (time.perf_counter() - start) / len(frames)
  rng = np.random.default_rng(0)  # no usable video: a textured stand-in of the same size
  base = rng.integers(0, 256, (options.frame_height + pairs, options.frame_width + pairs, 3))
  return np.stack([base[i:i + options.frame_height, i:i + options.frame_width]
                   for i in range(pairs + 1)]).astype(np.uint8), 0.0


def _duration(seconds: float) -> str:
  if seconds < 2 * 60:
    return f"{seconds:.0f} s"
  if seconds < 2 * SECONDS_PER_HOUR:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / SECONDS_PER_HOUR:.1f} h"


def estimate_time(items: Sequence[VideoItem], options, workers: int) -> str | None:
  """The measured flow speed and the expected time of the run (None without flow).

  expected = (flow pairs / measured pairs/s + frames x measured seconds/frame for decoding and
  encoding) / workers, with the mean video length from the headers of a sample of videos.
  """
  flows = [m for m in options.modalities if m in FLOW_MODALITIES]
  if not flows or not items:
    return None
  step = max(1, len(items) // ESTIMATE_SAMPLE_VIDEOS)
  sample = [i for i in items[::step] if not sources.is_tfds_item(i)][:ESTIMATE_SAMPLE_VIDEOS]
  counts = [c for c in (video_lib.probe_frame_count(i.path) for i in sample) if c > 1]
  frames, decode_seconds = _sample_frames(sample or list(items), options,
                                          ESTIMATE_PAIRS[options.flow])
  speed, other_seconds = _measure_costs(frames, options)
  message = (f"flow={options.flow}: {speed:.1f} frame pairs/s per worker at "
             f"{options.frame_width}x{options.frame_height}")
  if counts:
    mean_frames = float(np.mean(counts))
    pairs = (mean_frames - 1) * len(items) * len(flows)
    flow_seconds = pairs / speed / workers
    total = flow_seconds + mean_frames * len(items) * (decode_seconds + other_seconds) / workers
    message += (f"; {len(items)} videos x ~{mean_frames:.0f} frames = ~{pairs:,.0f} flow pairs "
                f"on {workers} workers -> expected ~{_duration(total)} "
                f"(flow ~{_duration(flow_seconds)})")
  if options.flow == "tvl1":
    message += (". TV-L1 on CPU is the paper's flow but slow; on a GPU/TPU use --flow=tvl1_jax "
                "(the same algorithm in JAX).")
  return message
