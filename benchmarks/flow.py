r"""Optical-flow speed and accuracy on real frames (one JSON line per measurement).

    python -m benchmarks.flow [--video=.../v_SoccerJuggling_g23_c01.avi] [--pairs=8]
        [--methods=tvl1,dis,farneback] [--workers=1,0]   (0 = os.cpu_count())

Speed: flow fields per second at --frame_width x --frame_height (340x256, TSN) computed by N
worker processes with one OpenCV thread each, every worker computing the same --pairs frame
pairs, repeated for at least MIN_SECONDS (throughput = fields computed / wall time).
Accuracy: mean / median end-point error (px) of each method against TV-L1 (the paper's flow)
on the same pairs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import time
from typing import Sequence

import numpy as np
from absl import app
from absl import flags

from data_prep import flow as flow_lib
from data_prep import video

DEFAULT_VIDEO = (pathlib.Path(os.environ.get(
    "STA_CNN_TESTDATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "testdata"))
                 / "videos" / "ucf101" / "v_SoccerJuggling_g23_c01.avi")
# Pairs are taken every FRAME_STRIDE frames so they span the clip.
FRAME_STRIDE = 10
# Each worker repeats its pairs until at least this long has passed (fast methods).
MIN_SECONDS = 2.0

FLAGS = flags.FLAGS
flags.DEFINE_string("video", str(DEFAULT_VIDEO), "Real clip to take frames from.")
flags.DEFINE_integer("pairs", 8, "Frame pairs per worker and method.")
flags.DEFINE_list("methods", ["tvl1", "dis", "farneback"], "Flow methods.")
flags.DEFINE_list("workers", ["1", "0"], "Worker counts to time (0 = os.cpu_count()).")
flags.DEFINE_string("reference", "tvl1", "Method the EPE is measured against.")
flags.DEFINE_integer("frame_width", video.DEFAULT_WIDTH, "Frame width.")
flags.DEFINE_integer("frame_height", video.DEFAULT_HEIGHT, "Frame height.")


def _init_worker() -> None:
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)


def _run(args: tuple[str, np.ndarray, np.ndarray]) -> np.ndarray:
  method, prev, nxt = args
  return flow_lib.get_flow_fn(method)(prev, nxt)


def _run_timed(args: tuple[str, np.ndarray, np.ndarray, float]) -> int:
  """Repeats the pairs until `min_seconds` passed; returns the number of fields computed."""
  method, prev, nxt, min_seconds = args
  start, done = time.perf_counter(), 0
  while done == 0 or time.perf_counter() - start < min_seconds:
    _run((method, prev, nxt))
    done += len(prev)
  return done


def frame_pairs(path: str, pairs: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
  """(pairs, H, W) grey frames t and t+1, with t every FRAME_STRIDE frames of the clip."""
  gray = flow_lib.to_gray(video.read_video(path, width, height))
  starts = (np.arange(pairs) * FRAME_STRIDE) % (len(gray) - 1)
  return gray[starts], gray[starts + 1]


def time_method(method: str, prev: np.ndarray, nxt: np.ndarray, workers: int) -> float:
  """Flow fields per second with `workers` processes each computing all pairs."""
  context = multiprocessing.get_context("spawn")
  with context.Pool(workers, initializer=_init_worker) as pool:
    pool.map(_run, [(method, prev[:1], nxt[:1])] * workers)  # start-up and warm-up
    start = time.perf_counter()
    fields = sum(pool.map(_run_timed, [(method, prev, nxt, MIN_SECONDS)] * workers))
    elapsed = time.perf_counter() - start
  return fields / elapsed


def end_point_error(field: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Per-pixel ||field − reference||₂, (P, H, W)."""
  return np.linalg.norm(field - reference, axis=-1)


def main(argv: Sequence[str]) -> None:
  del argv
  prev, nxt = frame_pairs(FLAGS.video, FLAGS.pairs, FLAGS.frame_width, FLAGS.frame_height)
  common = {"frame_size": [FLAGS.frame_height, FLAGS.frame_width], "pairs": FLAGS.pairs,
            "video": pathlib.Path(FLAGS.video).name, "cpu_count": os.cpu_count()}
  for method in FLAGS.methods:
    for workers in (int(w) or os.cpu_count() for w in FLAGS.workers):
      speed = time_method(method, prev, nxt, workers)
      print(json.dumps({"benchmark": "flow_speed", "method": method, "workers": workers,
                        "fields_per_s": round(speed, 3),
                        "fields_per_s_per_worker": round(speed / workers, 3), **common}),
            flush=True)
  _init_worker()
  reference = _run((FLAGS.reference, prev, nxt))
  magnitude = float(np.linalg.norm(reference, axis=-1).mean())
  for method in FLAGS.methods:
    if method == FLAGS.reference:
      continue
    epe = end_point_error(_run((method, prev, nxt)), reference)
    print(json.dumps({"benchmark": "flow_epe", "method": method, "reference": FLAGS.reference,
                      "epe_mean": round(float(epe.mean()), 4),
                      "epe_median": round(float(np.median(epe)), 4),
                      "reference_mean_magnitude": round(magnitude, 4), **common}), flush=True)


if __name__ == "__main__":
  app.run(main)
