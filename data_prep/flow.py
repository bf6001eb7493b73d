"""Optical flow, warped flow and flow quantisation for the flow streams.

`FLOW_METHODS[name](prev, next)` takes two stacks of grey frames `(P, H, W)` uint8 (frame t and
frame t+1 of each pair) and returns the flow from prev to next, `(P, H, W, 2)` float32 in pixels
(channel 0 = x / horizontal, 1 = y / vertical, OpenCV's convention):
  * 'tvl1'      cv2.optflow.DualTVL1OpticalFlow with OpenCV's defaults — the TV-L1 flow of TSN and
                of the paper (§4.1); ≈0.5–0.7 pairs/s/core at 340×256, so use it with many cores
                or use 'tvl1_jax' on an accelerator.
  * 'dis'       cv2.DISOpticalFlow, preset FAST (the default method). Chosen over ULTRAFAST and
                MEDIUM because it was the closest of the three to TV-L1 on real UCF101 frames
                (mean EPE vs TV-L1 on 4 pairs of v_SoccerJuggling_g23_c01 at 340×256: FAST 0.25,
                ULTRAFAST 0.38, MEDIUM 0.30 px; benchmarks/flow.py: FAST 0.28 px on 8 pairs) while
                ~2× faster than MEDIUM (≈100–300 pairs/s/core here, load-dependent).
  * 'dis_fine'  cv2.DISOpticalFlow, preset MEDIUM refined down to full resolution (finest scale
                0; the presets stop at 1/4 (FAST) or 1/2 (MEDIUM) of the frame). For small
                frames: at 128×96 FAST's finest flow is 32×24, which blurs a 24-px object into
                its surroundings. On the miniature's synthetic frames (128×96, data_prep.synthetic;
                24 pairs inside the evidence windows), the median error of the flow at the
                object's centre against the object's true displacement (~2 px/frame) was
                FAST 1.52 px (it misses the object), dis_fine 0.27, Farneback 0.41, OpenCV
                TV-L1 0.69 px, at 0.3 / 3.2 / 2.2 / 195 ms a pair (docs/miniature.md).
                At 340×256 use 'dis' or 'tvl1'.
  * 'farneback' cv2.calcOpticalFlowFarneback with the parameters of OpenCV's tutorial.
  * 'tvl1_jax'  `sta_cnn_jax.flow.tvl1.tvl1_flow` (TV-L1 in JAX; imported only when used).

Warped flow (iDT, Wang & Schmid 2013; TSN's third stream): the camera motion between frames t and
t+1 is a homography estimated from ORB matches with RANSAC; frame t+1 is warped onto frame t and
the flow recomputed, which removes the camera's motion. With fewer than
`MIN_HOMOGRAPHY_INLIERS` inliers the identity is used, and the fallback is counted.

Quantisation (docs/design.md "Shard format"; TSN): clip to ±bound,
q = round(255·(v + bound)/(2·bound)) uint8; decode v = q·2·bound/255 − bound. One quantum is
2·bound/255 (0.157 px at bound 20); the round trip error of an unclipped value is at most half a
quantum.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import cv2
import numpy as np

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

# TSN (docs/design.md "Shard format"): flow clipped to ±20 px before quantisation.
DEFAULT_BOUND = 20.0
QUANT_LEVELS = 255  # uint8 codes 0..255
DEFAULT_JPEG_QUALITY = 95  # TSN's denseflow writes JPEG flow planes; 95 is our default quality
FLOW_FORMATS = ("jpeg", "png")
_ENCODE_EXTENSION = {"jpeg": ".jpg", "png": ".png"}

# DIS preset (see module doc for the choice).
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_FAST
DIS_PRESET_NAME = "FAST"
# 'dis_fine': DIS preset MEDIUM with its coarse-to-fine search continued to full resolution.
DIS_FINE_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
DIS_FINE_PRESET_NAME = "MEDIUM"
DIS_FINE_FINEST_SCALE = 0
# calcOpticalFlowFarneback parameters of OpenCV's optical-flow tutorial.
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
                        poly_sigma=1.2, flags=0)
# Warped flow: ORB keypoints, Hamming brute-force matching with cross-check, RANSAC homography.
ORB_FEATURES = 1000
# iDT's DenseTrackStab.cpp: RANSAC reprojection threshold 1 px; homography kept if > 25 inliers.
RANSAC_REPROJ_THRESHOLD = 1.0
MIN_HOMOGRAPHY_INLIERS = 25
# tvl1_jax: pairs per call, fixed so that XLA compiles one shape per frame size. On CPU batching
# makes each pair slower (measured: batch 4 ran at 0.88 s/pair vs 0.34 s at batch 1, memory bound),
# on GPU/TPU it keeps the device busy.
TVL1_JAX_BATCH = {"cpu": 1, "accelerator": 16}


def default_method() -> str:
  """'tvl1_jax' (the paper's TV-L1, fast) when JAX sees a GPU/TPU, else 'dis' (fast on CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  return "dis" if jax.default_backend() == "cpu" else "tvl1_jax"


def tvl1_jax_batch() -> int:
  """Pairs per TV-L1 (JAX) call for the default JAX backend."""
  import jax  # pylint: disable=g-import-not-at-top
  return TVL1_JAX_BATCH["cpu" if jax.default_backend() == "cpu" else "accelerator"]


def to_gray(frames: np.ndarray) -> np.ndarray:
  """(n, H, W, 3) uint8 RGB → (n, H, W) uint8 grey (ITU-R BT.601 weights, as cv2)."""
  return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def _check_pairs(prev: np.ndarray, nxt: np.ndarray) -> None:
  if prev.shape != nxt.shape or prev.ndim != 3:
    raise ValueError(f"flow expects two (P, H, W) grey stacks of equal shape; got {prev.shape} "
                     f"and {nxt.shape}")


def _per_pair(calc: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> FlowFn:
  def flow_fn(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    _check_pairs(prev, nxt)
    out = np.empty(prev.shape + (2,), np.float32)  # (P, H, W, 2)
    for i, (a, b) in enumerate(zip(prev, nxt)):
      out[i] = calc(np.ascontiguousarray(a), np.ascontiguousarray(b))
    return out
  return flow_fn


def _tvl1_cv(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
  algorithm = cv2.optflow.DualTVL1OpticalFlow_create()
  return _per_pair(lambda a, b: algorithm.calc(a, b, None))(prev, nxt)


def _dis(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
  algorithm = cv2.DISOpticalFlow_create(DIS_PRESET)
  return _per_pair(lambda a, b: algorithm.calc(a, b, None))(prev, nxt)


def _dis_fine_algorithm():
  algorithm = cv2.DISOpticalFlow_create(DIS_FINE_PRESET)
  algorithm.setFinestScale(DIS_FINE_FINEST_SCALE)
  return algorithm


def _dis_fine(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
  algorithm = _dis_fine_algorithm()
  return _per_pair(lambda a, b: algorithm.calc(a, b, None))(prev, nxt)


def _farneback(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
  return _per_pair(
      lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK_PARAMS))(prev, nxt)


def _import_tvl1_jax():
  try:
    from sta_cnn_jax.flow.tvl1 import tvl1_flow  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("--flow=tvl1_jax needs sta_cnn_jax.flow.tvl1.tvl1_flow(frame0 (B,H,W), "
                      f"frame1 (B,H,W)) -> (B,H,W,2), which could not be imported: {e}") from e
  return tvl1_flow


def _tvl1_jax(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
  """TV-L1 in JAX, in fixed batches of `tvl1_jax_batch()` pairs (last batch padded by repetition)."""
  _check_pairs(prev, nxt)
  tvl1_flow = _import_tvl1_jax()
  batch = tvl1_jax_batch()
  pairs = prev.shape[0]
  out = []
  for start in range(0, pairs, batch):
    index = np.minimum(np.arange(start, start + batch), pairs - 1)
    flow = np.asarray(tvl1_flow(prev[index], nxt[index]), np.float32)  # (B, H, W, 2)
    out.append(flow[:min(batch, pairs - start)])
  return np.concatenate(out)


FLOW_METHODS: dict[str, FlowFn] = {
    "tvl1": _tvl1_cv,
    "dis": _dis,
    "dis_fine": _dis_fine,
    "farneback": _farneback,
    "tvl1_jax": _tvl1_jax,
}


def _getters(obj, names) -> dict:
  return {name: _plain(getattr(obj, "get" + name)()) for name in names}


def _plain(value):
  """JSON-ready: numpy scalars → Python, dataclasses (e.g. TVL1Params) → dicts."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
  return value.item() if isinstance(value, np.generic) else value


def flow_params(method: str) -> dict:
  """The parameters `method` runs with (recorded in manifest.json under flow.params)."""
  if method == "tvl1":
    return _getters(cv2.optflow.DualTVL1OpticalFlow_create(), (
        "Tau", "Lambda", "Theta", "ScalesNumber", "WarpingsNumber", "Epsilon",
        "InnerIterations", "OuterIterations", "ScaleStep", "Gamma", "MedianFiltering"))
  if method in ("dis", "dis_fine"):
    name, algorithm = ((DIS_PRESET_NAME, cv2.DISOpticalFlow_create(DIS_PRESET))
                       if method == "dis" else (DIS_FINE_PRESET_NAME, _dis_fine_algorithm()))
    return {"preset": name, **_getters(algorithm, (
        "FinestScale", "PatchSize", "PatchStride", "GradientDescentIterations",
        "VariationalRefinementIterations", "VariationalRefinementAlpha",
        "VariationalRefinementDelta", "VariationalRefinementGamma", "UseMeanNormalization",
        "UseSpatialPropagation"))}
  if method == "farneback":
    return dict(FARNEBACK_PARAMS)
  if method == "tvl1_jax":
    fn = _import_tvl1_jax()
    from sta_cnn_jax.flow.tvl1 import TVL1Params  # pylint: disable=g-import-not-at-top
    return {"function": f"{fn.__module__}.{fn.__name__}", "batch": tvl1_jax_batch(),
            **{k: _plain(v) for k, v in dataclasses.asdict(TVL1Params()).items()}}
  raise ValueError(f"unknown flow method {method!r}; choose from {sorted(FLOW_METHODS)}")


def get_flow_fn(method: str) -> FlowFn:
  if method not in FLOW_METHODS:
    raise ValueError(f"unknown flow method {method!r}; choose from {sorted(FLOW_METHODS)}")
  return FLOW_METHODS[method]


def compute_flow(gray: np.ndarray, method: str) -> np.ndarray:
  """(n, H, W) uint8 grey frames → (n−1, H, W, 2) float32 flow from frame t to t+1."""
  return get_flow_fn(method)(gray[:-1], gray[1:])


def estimate_homography(prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, bool]:
  """Homography mapping frame t+1's pixels onto frame t's: (3, 3) float64, and whether it was found.

  ORB keypoints + brute-force Hamming matching with cross-check + RANSAC (iDT thresholds). Falls
  back to the identity (second value False) with too few matches or inliers.
  """
  orb = cv2.ORB_create(nfeatures=ORB_FEATURES)
  kp0, des0 = orb.detectAndCompute(prev, None)
  kp1, des1 = orb.detectAndCompute(nxt, None)
  identity = np.eye(3)
  if des0 is None or des1 is None:
    return identity, False
  matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(des1, des0)
  if len(matches) <= MIN_HOMOGRAPHY_INLIERS:
    return identity, False
  src = np.float32([kp1[m.queryIdx].pt for m in matches])  # points in frame t+1
  dst = np.float32([kp0[m.trainIdx].pt for m in matches])  # the same points in frame t
  homography, inliers = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_REPROJ_THRESHOLD)
  if homography is None or int(inliers.sum()) <= MIN_HOMOGRAPHY_INLIERS:
    return identity, False
  return homography, True


def warp_onto(frame: np.ndarray, homography: np.ndarray) -> np.ndarray:
  """Warps frame t+1 (H, W) into frame t's coordinates (borders replicated)."""
  height, width = frame.shape[:2]
  return cv2.warpPerspective(frame, homography, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)


def compute_warped_flow(gray: np.ndarray, method: str) -> tuple[np.ndarray, int]:
  """Camera-motion-compensated flow (n−1, H, W, 2) float32, and the number of identity fallbacks."""
  warped, fallbacks = [], 0
  for prev, nxt in zip(gray[:-1], gray[1:]):
    homography, found = estimate_homography(prev, nxt)
    fallbacks += not found
    warped.append(warp_onto(nxt, homography) if found else nxt)
  return get_flow_fn(method)(gray[:-1], np.stack(warped)), fallbacks


def quantize_flow(v: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
  """Flow (any shape) → uint8: clip to ±bound, q = round(255·(v + bound) / (2·bound))."""
  # The literal formula, evaluated in place in float32 (same operations and order, so the same
  # codes as the one-liner, several times faster on (64, 256, 340, 2) fields).
  scaled = np.array(v, np.float32)  # a copy, also for scalars
  np.clip(scaled, -bound, bound, out=scaled)
  scaled += np.float32(bound)
  scaled *= np.float32(QUANT_LEVELS)
  scaled /= np.float32(2 * bound)
  return np.rint(scaled, out=scaled).astype(np.uint8)


def dequantize_flow(q: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
  """uint8 codes → float32 flow: v = q·2·bound/255 − bound."""
  return (np.asarray(q, np.float32) * (2 * bound) / QUANT_LEVELS - bound).astype(np.float32)


def encode_image(image: np.ndarray, fmt: str = "jpeg",
                 quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
  """(H, W) grey or (H, W, 3) RGB uint8 → JPEG/PNG bytes (colour stored as RGB, as usual)."""
  if fmt not in FLOW_FORMATS:
    raise ValueError(f"image format must be one of {FLOW_FORMATS}, got {fmt!r}")
  if image.ndim == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # cv2 encoders take BGR
  params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
  ok, data = cv2.imencode(_ENCODE_EXTENSION[fmt], image, params)
  if not ok:
    raise ValueError(f"cv2.imencode failed for an image of shape {image.shape}")
  return data.tobytes()


def decode_image(data: bytes, grayscale: bool = False) -> np.ndarray:
  """JPEG/PNG bytes → (H, W) grey or (H, W, 3) RGB uint8."""
  flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
  image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
  if image is None:
    raise ValueError("bytes are not a decodable JPEG/PNG image")
  return image if grayscale else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_flow_planes(flow: np.ndarray, bound: float = DEFAULT_BOUND, fmt: str = "jpeg",
                       quality: int = DEFAULT_JPEG_QUALITY) -> tuple[list[bytes], list[bytes]]:
  """(P, H, W, 2) float flow → (x planes, y planes), each P single-channel encoded images."""
  q = quantize_flow(flow, bound)  # (P, H, W, 2) uint8
  return ([encode_image(f[..., 0], fmt, quality) for f in q],
          [encode_image(f[..., 1], fmt, quality) for f in q])
