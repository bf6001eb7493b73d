"""TV-L1 flow benchmark: OpenCV (CPU threads) vs JAX (sta_cnn_jax.flow.tvl1), DIS for reference.

Prints one JSON line per measurement:
  * speed: pairs/s at 340x256 (TSN's frame size) for cv2 DualTVL1OpticalFlow (1 and 2 threads),
    JAX TV-L1 on the default JAX backend per batch size (compile time reported separately), and
    cv2 DIS (preset FAST);
  * accuracy: per real test clip, mean EPE (px) of JAX TV-L1 and of DIS against cv2 TV-L1.

    python benchmarks/flow_tvl1.py [--testdata DIR] [--pairs-per-clip 4] [--batch-sizes 1 4 8]
                                   [--parts speed accuracy]

Frames are decoded from shared/testdata/videos (README there), converted to grey and resized to
340x256 (INTER_AREA when shrinking, INTER_LINEAR otherwise); pairs are consecutive frames spread
evenly over each clip.
"""

import argparse
import json
import os
import pathlib
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from sta_cnn_jax.flow import tvl1  # pylint: disable=g-import-not-at-top,wrong-import-position

# TSN frame size (W, H) = 340 x 256 (docs/design.md "Shard format").
FRAME_SIZE_WH = (340, 256)
DEFAULT_TESTDATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "testdata"
VIDEO_SUFFIXES = (".avi", ".mp4")


def emit(**record):
  # loadavg_1m: the machine may be shared; speed numbers are only meaningful with it.
  print(json.dumps({"benchmark": "flow_tvl1", **record,
                    "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)


def load_pairs(path: pathlib.Path, num_pairs: int):
  """`num_pairs` (frame t, frame t+1) grey pairs at FRAME_SIZE_WH, spread over the clip."""
  cap = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, bgr = cap.read()
    if not ok:
      break
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    shrink = grey.shape[1] > FRAME_SIZE_WH[0]
    frames.append(cv2.resize(grey, FRAME_SIZE_WH,
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR))
  cap.release()
  if len(frames) < 2:
    raise ValueError(f"benchmarks/flow_tvl1.py: {path} decoded to {len(frames)} frames")
  starts = np.linspace(0, len(frames) - 2, num_pairs).round().astype(int)
  return np.stack([frames[t] for t in starts]), np.stack([frames[t + 1] for t in starts])


def cv2_flows(make, frames0, frames1):
  algorithm = make()
  return np.stack([algorithm.calc(a, b, None) for a, b in zip(frames0, frames1)])


def make_cv2_tvl1():
  return tvl1.opencv_tvl1(tvl1.TVL1Params())


def make_dis():
  return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)


def mean_epe(a, b):
  return float(np.sqrt(((np.asarray(a, np.float64) - b) ** 2).sum(-1)).mean())


def bench_cv2(name, make, frames0, frames1, threads, repeats):
  cv2.setNumThreads(threads)
  cv2_flows(make, frames0[:1], frames1[:1])  # warm-up
  start = time.perf_counter()
  for _ in range(repeats):
    cv2_flows(make, frames0, frames1)
  seconds = time.perf_counter() - start
  pairs = repeats * len(frames0)
  emit(method=name, threads=threads, size_wh=FRAME_SIZE_WH, pairs=pairs,
       pairs_per_s=pairs / seconds, s_per_pair=seconds / pairs)


def bench_jax(frames0, frames1, batch, repeats):
  """Runs the pairs in calls of `batch` (the first call per shape compiles)."""
  chunks = [(frames0[i:i + batch], frames1[i:i + batch]) for i in range(0, len(frames0), batch)]
  start = time.perf_counter()
  jax.block_until_ready(tvl1.tvl1_flow(*chunks[0]))  # compile + first run
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(repeats):
    for chunk in chunks:
      jax.block_until_ready(tvl1.tvl1_flow(*chunk))
  seconds = (time.perf_counter() - start) / repeats
  pairs = len(frames0)
  emit(method="jax_tvl1", backend=jax.default_backend(), devices=jax.device_count(),
       cpu_count=os.cpu_count(), batch=batch, size_wh=FRAME_SIZE_WH, pairs=pairs,
       repeats=repeats, compile_s=first - seconds * batch / pairs,
       s_per_batch=seconds * batch / pairs, pairs_per_s=pairs / seconds, s_per_pair=seconds / pairs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--testdata", type=pathlib.Path,
                      default=pathlib.Path(os.environ.get("STA_CNN_TESTDATA", DEFAULT_TESTDATA)))
  parser.add_argument("--pairs-per-clip", type=int, default=4)  # = a batch size: no extra compile
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
  parser.add_argument("--cv2-threads", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--speed-pairs", type=int, default=4,
                      help="pairs timed per method (JAX: rounded up to a multiple of the batch)")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--speed-clip", default="videos/other/mmaction2_demo.mp4",
                      help="clip (relative to --testdata) the speed measurements use")
  parser.add_argument("--parts", nargs="+", choices=("speed", "accuracy"),
                      default=["speed", "accuracy"])
  args = parser.parse_args()

  clips = sorted(p for p in (args.testdata / "videos").rglob("*") if p.suffix in VIDEO_SUFFIXES)
  if not clips:
    raise SystemExit(f"benchmarks/flow_tvl1.py: no clips under {args.testdata / 'videos'}")

  if "speed" in args.parts:  # 340x256
    num = max([args.speed_pairs] + args.batch_sizes)
    frames0, frames1 = load_pairs(args.testdata / args.speed_clip, num)
    n = args.speed_pairs  # every method times the same first pairs (ε-stop: cost varies by pair)
    for threads in args.cv2_threads:
      bench_cv2("opencv_tvl1", make_cv2_tvl1, frames0[:n], frames1[:n], threads, args.repeats)
      bench_cv2("opencv_dis_fast", make_dis, frames0[:n], frames1[:n], threads, 10 * args.repeats)
    for batch in args.batch_sizes:
      m = -(-n // batch) * batch
      bench_jax(frames0[:m], frames1[:m], batch, args.repeats)

  # Accuracy against cv2 TV-L1, per clip (cv2 with every thread it likes).
  cv2.setNumThreads(-1)
  for clip in clips if "accuracy" in args.parts else []:
    frames0, frames1 = load_pairs(clip, args.pairs_per_clip)
    reference = cv2_flows(make_cv2_tvl1, frames0, frames1)
    magnitude = float(np.sqrt((reference ** 2).sum(-1)).mean())
    flows = {"jax_tvl1": np.asarray(tvl1.tvl1_flow(frames0, frames1)),
             "opencv_dis_fast": cv2_flows(make_dis, frames0, frames1)}
    for method, flow in flows.items():
      emit(metric="mean_epe_vs_opencv_tvl1", method=method,
           clip=str(clip.relative_to(args.testdata)), pairs=len(frames0), size_wh=FRAME_SIZE_WH,
           epe_px=mean_epe(flow, reference), opencv_tvl1_mean_flow_px=magnitude)


if __name__ == "__main__":
  main()
