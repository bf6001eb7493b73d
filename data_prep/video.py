"""Video decoding: every frame, resized to the TSN frame size, as uint8 RGB.

Frames are read with `cv2.VideoCapture` until `read()` fails. The container's frame count is
never trusted: HMDB51's DivX (DX50) clips report one frame more than they hold (packed
B-frames), and a truncated file can report its full length while decoding only a part of it
(both seen on real clips, tests/test_video_flow.py). A header count that exceeds the decoded
count by more than `HEADER_COUNT_TOLERANCE` frames is returned as a warning (the video is kept);
files that give fewer than `MIN_FRAMES` frames raise `VideoError`.

All frames are resized to `width × height` regardless of aspect ratio (TSN resizes every video
to 340×256), with bilinear interpolation (OpenCV's default, as TSN's `denseflow` tool).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import cv2
import numpy as np

# TSN frame size (W × H) used by the paper (§4.1: "frames resized to 340 × 256").
DEFAULT_WIDTH, DEFAULT_HEIGHT = 340, 256
# Two frames are the least a video can have: an RGB snippet is 2 frames and flow needs a pair.
MIN_FRAMES = 2
# DivX packed B-frames make the AVI header count one too high (HMDB51's DX50 clips); more than
# that is reported as a possible truncation.
HEADER_COUNT_TOLERANCE = 1
RESIZE_INTERPOLATION = cv2.INTER_LINEAR


class VideoError(Exception):
  """A video that cannot be used; `path` and `reason` are recorded in the manifest."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = str(path)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
  """frames: (n, H, W, 3) uint8 RGB after resizing; source_size: (h, w) before resizing."""
  frames: np.ndarray
  source_size: tuple[int, int]
  header_frames: int
  fps: float
  warnings: tuple[str, ...] = ()


def resize_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
  """(h, w, C) → (height, width, C) with bilinear interpolation (no-op if already that size)."""
  if frame.shape[:2] == (height, width):
    return frame
  return cv2.resize(frame, (width, height), interpolation=RESIZE_INTERPOLATION)


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise VideoError(path, "file not found")
  if not os.path.isfile(path):
    raise VideoError(path, "not a regular file")
  if os.path.getsize(path) == 0:
    raise VideoError(path, "empty file (0 bytes)")


def _check_count(path: str, frames: list[np.ndarray]) -> None:
  if len(frames) < MIN_FRAMES:
    raise VideoError(path, f"only {len(frames)} decodable frame(s); at least {MIN_FRAMES} are "
                     "needed (an RGB snippet and a flow field take two frames)")


def decode_video(path: str | os.PathLike, width: int = DEFAULT_WIDTH,
                 height: int = DEFAULT_HEIGHT) -> DecodedVideo:
  """Decodes every frame of `path` (until read fails), resized to (height, width), RGB uint8.

  Raises VideoError for a missing, empty, unreadable or <2-frame file.
  """
  path = str(path)
  _check_file(path)
  capture = cv2.VideoCapture(path)
  try:
    if not capture.isOpened():
      raise VideoError(path, "OpenCV cannot open it (not a video, unsupported codec, or a "
                       "container without its index / moov atom)")
    header_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    frames, source_size = [], None
    while True:
      ok, bgr = capture.read()
      if not ok or bgr is None:
        break
      source_size = source_size or bgr.shape[:2]
      frames.append(cv2.cvtColor(resize_frame(bgr, width, height), cv2.COLOR_BGR2RGB))
  finally:
    capture.release()
  _check_count(path, frames)
  warnings = ()
  if header_frames - len(frames) > HEADER_COUNT_TOLERANCE:
    warnings = (f"decoded {len(frames)} frames but the container header says {header_frames} "
                "(truncated or damaged file?); kept with the decodable frames",)
  return DecodedVideo(np.stack(frames), tuple(source_size), header_frames, fps, warnings)


def read_video(path: str | os.PathLike, width: int = DEFAULT_WIDTH,
               height: int = DEFAULT_HEIGHT) -> np.ndarray:
  """(n, height, width, 3) uint8 RGB frames of `path`; see `decode_video`."""
  return decode_video(path, width, height).frames


def decode_encoded_frames(name: str, encoded: Sequence[bytes], width: int = DEFAULT_WIDTH,
                          height: int = DEFAULT_HEIGHT) -> DecodedVideo:
  """Frames stored as encoded images (TFDS video features) → DecodedVideo (RGB, resized)."""
  frames, source_size = [], None
  for i, data in enumerate(encoded):
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
      raise VideoError(name, f"frame {i} is not a decodable image")
    source_size = source_size or bgr.shape[:2]
    frames.append(cv2.cvtColor(resize_frame(bgr, width, height), cv2.COLOR_BGR2RGB))
  _check_count(name, frames)
  return DecodedVideo(np.stack(frames), tuple(source_size), len(encoded), 0.0)


def probe_frame_count(path: str | os.PathLike) -> int:
  """The container's (approximate) frame count, for time estimates only; 0 if unreadable."""
  capture = cv2.VideoCapture(str(path))
  try:
    return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if capture.isOpened() else 0
  finally:
    capture.release()
