"""TV-L1 optical flow in JAX, computed the way OpenCV's `cv2.optflow.DualTVL1OpticalFlow` does.

The duality-based TV-L1 solver of Zach, Pock & Bischof (DAGM 2007) with the refinements of
Wedel et al. (2009), as described in full by Sánchez, Meinhardt-Llopis & Facciolo, "TV-L1
Optical Flow Estimation", IPOL 2013, and as implemented in opencv_contrib
`modules/optflow/src/tvl1flow.cpp` (the CPU path; the facts below were read from that file and
checked numerically against the installed cv2 5.0).

Energy (IPOL Eq. 8, γ = 0):  E(u) = Σ |∇u1| + |∇u2| + λ |ρ(u)|,
  ρ(u) = I1(x + u0) + ∇I1(x + u0)·(u − u0) − I0(x)           (linearised residual, IPOL Eq. 5)
  [with γ > 0 an illumination term γ·u3 is added to ρ and |∇u3| to the TV, Chambolle-Pock style]
Per warp, for n = 0, 1, ... (IPOL Algorithm 1):
  v = TH(u)                                  thresholding, λθ                 (IPOL Eq. 12)
  u = v + θ div p                            primal update                   (IPOL Eq. 13)
  p = (p + τ/θ ∇u) / (1 + τ/θ |∇u|)          dual update                     (IPOL Eq. 15)
with TH(u) = u + λθ ∇I1      if ρ(u) < −λθ|∇I1|²
             u − λθ ∇I1      if ρ(u) >  λθ|∇I1|²
             u − ρ(u) ∇I1/|∇I1|²  otherwise (unchanged where |∇I1|² <= FLT_EPSILON).

Discretisation and schedule exactly as OpenCV:
* input: uint8 values as float32 (0..255).  Pyramid: scale s+1 = cv::resize(scale s, fx=fy=0.8,
  INTER_LINEAR) -- NO Gaussian pre-smoothing (IPOL smooths; OpenCV does not); a scale whose side
  would be < 16 px is dropped.  Coarsest flow starts at 0; flow is carried to the next finer scale
  by INTER_LINEAR resize and multiplied by 1/0.8.  The dual variable p restarts at 0 on each scale
  and carries over between the warps of a scale.
* ∇I1: centred differences, half one-sided differences on the border (= replicate padding).
  ∇u: forward differences, 0 on the last column/row.  div p: backward differences with
  p = 0 outside the image (adjoint of ∇).
* warping: cv::remap(INTER_CUBIC, BORDER_CONSTANT 0) of I1, I1x, I1y at x + u (cubic convolution,
  a = −0.75; cv2 5.0 uses the exact float coordinates -- checked, no 1/32 quantisation).
* per warp: up to `outer_iterations` outer iterations, each starting with a 5x5 median filter of
  (u1, u2) (cv::medianBlur, replicate border), then up to `inner_iterations` inner iterations;
  both stop once Σ_pixels |u^{n+1} − u^n|² <= ε² · (#pixels) (the ε-stop).

The ε-stop is implemented with `lax.while_loop`; under `vmap` each frame pair keeps its own stop
(JAX selects the finished pairs' state unchanged), so batched results equal per-pair results; the
batch runs as long as its slowest pair.  `epsilon=0` gives the fixed count
num_scales x num_warps x outer x inner iterations.

Public API: `TVL1Params`, `tvl1_flow`, `tvl1_flow_sharded`; lower-level pieces (`pyramid_shapes`,
`resize_linear`, `remap_bicubic`, `median_filter`, `centered_gradient`, `forward_gradient`,
`divergence`, `warping_step`) are exposed for tests.
"""

import dataclasses
import functools
import itertools
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

_FILE = "sta_cnn_jax/flow/tvl1.py"

# tvl1flow.cpp: a pyramid scale with fewer columns or rows than this is not built.
MIN_PYRAMID_SIDE = 16
# cv::remap INTER_CUBIC uses Keys' cubic convolution with a = -0.75 (imgwarp.cpp interpolateCubic).
CUBIC_A = -0.75
# tvl1flow.cpp estimateV: the "ρ/|∇I1|²" branch needs |∇I1|² > FLT_EPSILON.
FLT_EPSILON = float(np.finfo(np.float32).eps)
# tvl1flow.cpp starts each iteration loop with error = FLT_MAX (so at least one iteration runs).
FLT_MAX = float(np.finfo(np.float32).max)
# cv::medianBlur supports only these apertures for float32 images (1 = filter off).
SUPPORTED_MEDIAN_SIZES = (0, 1, 3, 5)
# Name of the device-mesh axis the batch of frame pairs is split over.
BATCH_AXIS = "batch"


@dataclasses.dataclass(frozen=True)
class TVL1Params:
  """TV-L1 hyper-parameters; defaults are `cv2.optflow.DualTVL1OpticalFlow_create()`'s.

  Attributes (OpenCV getter in brackets):
    tau: dual step size τ (getTau).
    lambda_: data-term weight λ (getLambda); thresholds use λθ.
    theta: coupling θ between u and v (getTheta); dual step uses τ/θ.
    gamma: illumination-term weight γ (getGamma); 0 disables the third field u3.
    num_scales: pyramid scales (getScalesNumber).
    num_warps: warps per scale (getWarpingsNumber).
    epsilon: stopping threshold ε on the mean squared flow update (getEpsilon); 0 = fixed count.
    inner_iterations: iterations between median filters (getInnerIterations).
    outer_iterations: median-filter rounds per warp (getOuterIterations).
    scale_step: pyramid down-scaling factor (getScaleStep).
    median_filtering: median aperture applied to the flow each outer iteration; <= 1 = off
      (getMedianFiltering).
  """
  tau: float = 0.25
  lambda_: float = 0.15
  theta: float = 0.3
  gamma: float = 0.0
  num_scales: int = 5
  num_warps: int = 5
  epsilon: float = 0.01
  inner_iterations: int = 30
  outer_iterations: int = 10
  scale_step: float = 0.8
  median_filtering: int = 5

  def __post_init__(self):
    positive = dict(tau=self.tau, lambda_=self.lambda_, theta=self.theta)
    for name, value in positive.items():
      if not value > 0:
        raise ValueError(f"{_FILE}: TVL1Params.{name} must be > 0, got {value}")
    counts = dict(num_scales=self.num_scales, num_warps=self.num_warps,
                  inner_iterations=self.inner_iterations, outer_iterations=self.outer_iterations)
    for name, value in counts.items():
      if int(value) != value or value < 1:
        raise ValueError(f"{_FILE}: TVL1Params.{name} must be an integer >= 1, got {value}")
    if not 0 < self.scale_step < 1:
      raise ValueError(f"{_FILE}: TVL1Params.scale_step must be in (0, 1), got {self.scale_step}")
    if self.epsilon < 0 or self.gamma < 0:
      raise ValueError(f"{_FILE}: TVL1Params.epsilon and gamma must be >= 0, "
                       f"got {self.epsilon}, {self.gamma}")
    if self.median_filtering not in SUPPORTED_MEDIAN_SIZES:
      raise ValueError(f"{_FILE}: TVL1Params.median_filtering must be one of "
                       f"{SUPPORTED_MEDIAN_SIZES} (cv::medianBlur on float32), "
                       f"got {self.median_filtering}")

  @property
  def num_fields(self) -> int:
    """Number of primal fields: (u1, u2), plus u3 when the illumination term γ is on."""
    return 3 if self.gamma != 0 else 2


def opencv_tvl1(params: TVL1Params = TVL1Params()):
  """The `cv2.optflow.DualTVL1OpticalFlow` with the same parameters (for tests and benchmarks)."""
  import cv2  # pylint: disable=g-import-not-at-top  (optional dependency, reference only)
  return cv2.optflow.DualTVL1OpticalFlow_create(
      tau=params.tau, lambda_=params.lambda_, theta=params.theta, nscales=params.num_scales,
      # (sic: the cv2 binding spells the keyword "innnerIterations")
      warps=params.num_warps, epsilon=params.epsilon, innnerIterations=params.inner_iterations,
      outerIterations=params.outer_iterations, scaleStep=params.scale_step, gamma=params.gamma,
      medianFiltering=params.median_filtering, useInitialFlow=False)


# ----------------------------------------------------------------------------------------------
# Image pyramid (cv::resize INTER_LINEAR).


def pyramid_shapes(height: int, width: int, params: TVL1Params) -> Tuple[Tuple[int, int], ...]:
  """(h, w) of each scale, finest first: round(side * scale_step) per step, as cv::resize with
  fx = fy = scale_step; stops before a scale with a side < MIN_PYRAMID_SIDE (tvl1flow.cpp)."""
  shapes = [(height, width)]
  for _ in range(1, params.num_scales):
    h, w = shapes[-1]
    # cv::resize: dsize = saturate_cast<int>(side * f), i.e. round half to even (like round()).
    h, w = round(h * params.scale_step), round(w * params.scale_step)
    if h < MIN_PYRAMID_SIDE or w < MIN_PYRAMID_SIDE:
      break
    shapes.append((h, w))
  return tuple(shapes)


def _linear_resize_matrix(size_in: int, size_out: int, scale: float) -> np.ndarray:
  """(size_out, size_in) matrix of cv::resize INTER_LINEAR along one axis.

  Output pixel d samples src at f = (d + 0.5) * scale - 0.5 (float32), taps floor(f) and
  floor(f) + 1 weighted 1 - frac, frac; samples outside the image clamp to the edge pixel.
  `scale` is src/dst as OpenCV computes it (1 / inv_scale).
  """
  matrix = np.zeros((size_out, size_in), np.float32)
  for d in range(size_out):
    f = np.float32((d + 0.5) * scale - 0.5)
    s = int(np.floor(f))
    frac = np.float32(f - np.float32(s))
    if s < 0:
      s, frac = 0, np.float32(0)
    if s >= size_in - 1:
      s, frac = size_in - 1, np.float32(0)
    matrix[d, s] += np.float32(1) - frac
    matrix[d, min(s + 1, size_in - 1)] += frac
  return matrix


def resize_linear(image: jnp.ndarray, size_out: Tuple[int, int],
                  inv_scale: Optional[float] = None) -> jnp.ndarray:
  """cv::resize(image, INTER_LINEAR) over the last two axes `(..., h, w) -> (..., H, W)`.

  inv_scale: the fx = fy OpenCV was given (dsize derived from it); None = dsize given explicitly,
  in which case OpenCV uses inv_scale = dst/src per axis.
  """
  h, w = image.shape[-2:]
  out_h, out_w = size_out
  scale_y = 1.0 / (inv_scale if inv_scale is not None else out_h / h)
  scale_x = 1.0 / (inv_scale if inv_scale is not None else out_w / w)
  rows = jnp.asarray(_linear_resize_matrix(h, out_h, scale_y))  # (H, h)
  cols = jnp.asarray(_linear_resize_matrix(w, out_w, scale_x))  # (W, w)
  # HIGHEST: no TF32/bf16 passes on accelerators; the pyramid must be exact float32.
  return jnp.einsum("Hh,...hw,Ww->...HW", rows, image, cols,
                    precision=jax.lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------------------------
# Finite differences (tvl1flow.cpp centeredGradient, forwardGradient, divergence).


def centered_gradient(image: jnp.ndarray) -> jnp.ndarray:
  """∇I of `(h, w)` by centred differences, replicate border: returns `(2, h, w)` = (dx, dy)."""
  padded = jnp.pad(image, 1, mode="edge")
  dx = 0.5 * (padded[1:-1, 2:] - padded[1:-1, :-2])
  dy = 0.5 * (padded[2:, 1:-1] - padded[:-2, 1:-1])
  return jnp.stack([dx, dy])


def forward_gradient(u: jnp.ndarray) -> jnp.ndarray:
  """∇u of `(..., h, w)` by forward differences, 0 on the last column / row: `(2, ..., h, w)`."""
  zero_col = jnp.zeros_like(u[..., :, :1])
  zero_row = jnp.zeros_like(u[..., :1, :])
  ux = jnp.concatenate([u[..., :, 1:] - u[..., :, :-1], zero_col], axis=-1)
  uy = jnp.concatenate([u[..., 1:, :] - u[..., :-1, :], zero_row], axis=-2)
  return jnp.stack([ux, uy])


def divergence(p: jnp.ndarray) -> jnp.ndarray:
  """div p of `p = (px, py)`, `(2, ..., h, w)`: backward differences, p = 0 outside the image
  (the negative adjoint of `forward_gradient`): `(..., h, w)`."""
  px, py = p[0], p[1]
  px_prev = jnp.concatenate([jnp.zeros_like(px[..., :, :1]), px[..., :, :-1]], axis=-1)
  py_prev = jnp.concatenate([jnp.zeros_like(py[..., :1, :]), py[..., :-1, :]], axis=-2)
  return (px - px_prev) + (py - py_prev)


# ----------------------------------------------------------------------------------------------
# Warping (cv::remap INTER_CUBIC, BORDER_CONSTANT 0) and median filter (cv::medianBlur).


def _cubic_weights(t: jnp.ndarray) -> jnp.ndarray:
  """Keys' cubic convolution weights of taps -1, 0, 1, 2 at fraction t: `(4, ...)`."""
  a = CUBIC_A
  w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
  w1 = ((a + 2) * t - (a + 3)) * t * t + 1
  w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
  return jnp.stack([w0, w1, w2, 1.0 - w0 - w1 - w2])


def remap_bicubic(images: jnp.ndarray, map_x: jnp.ndarray, map_y: jnp.ndarray) -> jnp.ndarray:
  """Samples `images (K, h, w)` at float coordinates `(map_x, map_y)`, each `(h', w')`.

  Bicubic over the 4x4 neighbourhood; taps outside the image read 0 (BORDER_CONSTANT).
  Returns `(K, h', w')`.
  """
  h, w = images.shape[-2:]
  # Beyond these bounds every tap is outside; clipping keeps the int conversion finite.
  map_x = jnp.clip(map_x, -4.0, w + 3.0)
  map_y = jnp.clip(map_y, -4.0, h + 3.0)
  x0, y0 = jnp.floor(map_x), jnp.floor(map_y)
  taps = jnp.arange(-1, 3)[:, None, None]
  ix = x0.astype(jnp.int32)[None] + taps  # (4, h', w')
  iy = y0.astype(jnp.int32)[None] + taps
  wx = _cubic_weights(map_x - x0) * ((ix >= 0) & (ix < w))
  wy = _cubic_weights(map_y - y0) * ((iy >= 0) & (iy < h))
  ix, iy = jnp.clip(ix, 0, w - 1), jnp.clip(iy, 0, h - 1)
  values = images[:, iy[:, None], ix[None, :]]  # (K, 4, 4, h', w')
  return jnp.einsum("kabhw,ahw,bhw->khw", values, wy, wx,
                    precision=jax.lax.Precision.HIGHEST)


def _median_network(n: int) -> Tuple[Tuple[int, int, bool, bool], ...]:
  """Compare-exchange network selecting the median (rank n // 2) of n values.

  Batcher's odd-even merge sort on the next power of two (the padding wires hold +inf and never
  move, so comparators touching them are dropped), pruned backwards to the comparators the median
  depends on. Returns (i, j, need_min, need_max) with min -> wire i, max -> wire j.
  """
  size = 1 << (n - 1).bit_length()
  comparators = []

  def merge(lo, length, step):
    double = step * 2
    if double < length:
      merge(lo, length, double)
      merge(lo + step, length, double)
      for i in range(lo + step, lo + length - step, double):
        comparators.append((i, i + step))
    else:
      comparators.append((lo, lo + step))

  def sort(lo, length):
    if length > 1:
      half = length // 2
      sort(lo, half)
      sort(lo + half, half)
      merge(lo, length, 1)

  sort(0, size)
  needed = {n // 2}
  network = []
  for i, j in reversed([c for c in comparators if c[1] < n]):
    need_min, need_max = i in needed, j in needed
    if need_min or need_max:
      network.append((i, j, need_min, need_max))
      needed |= {i, j}
  return tuple(reversed(network))


def median_filter(u: jnp.ndarray, size: int) -> jnp.ndarray:
  """cv::medianBlur of each `(..., h, w)` plane with a `size` x `size` window, replicate border."""
  if size <= 1:
    return u
  r = size // 2
  h, w = u.shape[-2:]
  pad = [(0, 0)] * (u.ndim - 2) + [(r, r), (r, r)]
  padded = jnp.pad(u, pad, mode="edge")
  wires = [padded[..., dy:dy + h, dx:dx + w] for dy, dx in itertools.product(range(size), repeat=2)]
  for i, j, need_min, need_max in _median_network(size * size):
    lo, hi = wires[i], wires[j]
    if need_min:
      wires[i] = jnp.minimum(lo, hi)
    if need_max:
      wires[j] = jnp.maximum(lo, hi)
  return wires[(size * size) // 2]


# ----------------------------------------------------------------------------------------------
# One scale of the solver (tvl1flow.cpp procOneScale).


def _threshold_step(u, i1w_grad, grad_sq, rho_c, params: TVL1Params):
  """v = TH(u) (IPOL Eq. 12; OpenCV estimateV). u `(C, h, w)` -> v `(C, h, w)`."""
  l_t = params.lambda_ * params.theta
  rho = rho_c + i1w_grad[0] * u[0] + i1w_grad[1] * u[1]
  direction = [i1w_grad[0], i1w_grad[1]]
  if params.num_fields == 3:
    rho = rho + params.gamma * u[2]
    direction.append(jnp.full_like(u[2], params.gamma))
  threshold = l_t * grad_sq
  divisible = grad_sq > FLT_EPSILON
  step = jnp.where(divisible, -rho / jnp.where(divisible, grad_sq, 1.0), 0.0)
  step = jnp.where(rho > threshold, -l_t, step)
  step = jnp.where(rho < -threshold, l_t, step)
  return u + step[None] * jnp.stack(direction)


def _iteration(u, p, i1w_grad, grad_sq, rho_c, params: TVL1Params):
  """One inner iteration: TH, primal (IPOL Eq. 13), dual (IPOL Eq. 15).

  u `(C, h, w)`, p `(2, C, h, w)`; returns (u, p, Σ|Δu|²).
  """
  v = _threshold_step(u, i1w_grad, grad_sq, rho_c, params)
  u_new = v + params.theta * divergence(p)
  error = jnp.sum(jnp.square(u_new - u))
  du = forward_gradient(u_new)  # (2, C, h, w)
  tau_theta = params.tau / params.theta
  norm = jnp.sqrt(jnp.square(du[0]) + jnp.square(du[1]))
  p_new = (p + tau_theta * du) / (1.0 + tau_theta * norm)[None]
  return u_new, p_new, error


def warping_step(i0: jnp.ndarray, i1: jnp.ndarray, i1_grad: jnp.ndarray, u: jnp.ndarray,
                 p: jnp.ndarray, params: TVL1Params) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """One warp at one scale: warp I1 and ∇I1 by u, then the median-filtered primal-dual loop.

  Args:
    i0, i1: `(h, w)` float32 frames (0..255).
    i1_grad: `(2, h, w)` = centered_gradient(i1).
    u: `(C, h, w)` flow (u1 = x, u2 = y[, u3 illumination]).  p: `(2, C, h, w)` dual variable.
  Returns: (u, p) after at most outer x inner iterations (ε-stop as OpenCV).
  """
  h, w = i0.shape
  map_x = jnp.arange(w, dtype=jnp.float32)[None, :] + u[0]
  map_y = jnp.arange(h, dtype=jnp.float32)[:, None] + u[1]
  i1w, i1wx, i1wy = remap_bicubic(jnp.concatenate([i1[None], i1_grad]), map_x, map_y)
  i1w_grad = jnp.stack([i1wx, i1wy])
  grad_sq = jnp.square(i1wx) + jnp.square(i1wy)
  rho_c = i1w - i1wx * u[0] - i1wy * u[1] - i0  # constant part of ρ (IPOL Eq. 5)
  scaled_epsilon = jnp.float32(params.epsilon * params.epsilon * h * w)

  def inner_cond(state):
    n, _, _, error = state
    return (error > scaled_epsilon) & (n < params.inner_iterations)

  def inner_body(state):
    n, u, p, _ = state
    u, p, error = _iteration(u, p, i1w_grad, grad_sq, rho_c, params)
    return n + 1, u, p, error

  def outer_cond(state):
    n, _, _, error = state
    return (error > scaled_epsilon) & (n < params.outer_iterations)

  def outer_body(state):
    n, u, p, error = state
    flow = median_filter(u[:2], params.median_filtering)  # u3 is not filtered
    u = jnp.concatenate([flow, u[2:]])
    _, u, p, error = jax.lax.while_loop(inner_cond, inner_body, (0, u, p, error))
    return n + 1, u, p, error

  _, u, p, _ = jax.lax.while_loop(outer_cond, outer_body, (0, u, p, jnp.float32(FLT_MAX)))
  return u, p


def _solve_scale(i0, i1, u, params: TVL1Params):
  """All warps at one scale; p restarts at 0 (procOneScale). u `(C, h, w)` -> `(C, h, w)`."""
  i1_grad = centered_gradient(i1)
  p = jnp.zeros((2,) + u.shape, jnp.float32)

  def warp(_, state):
    return warping_step(i0, i1, i1_grad, *state, params)

  u, _ = jax.lax.fori_loop(0, params.num_warps, warp, (u, p))
  return u


def _tvl1_pair(frame0: jnp.ndarray, frame1: jnp.ndarray, params: TVL1Params) -> jnp.ndarray:
  """Coarse-to-fine TV-L1 of one pair `(H, W)` (0..255) -> flow `(H, W, 2)` (x, y)."""
  i0, i1 = frame0.astype(jnp.float32), frame1.astype(jnp.float32)
  shapes = pyramid_shapes(*i0.shape, params)
  pyramid = [jnp.stack([i0, i1])]  # (2, h, w) per scale
  for shape in shapes[1:]:  # static: one entry per scale (distinct shapes)
    pyramid.append(resize_linear(pyramid[-1], shape, inv_scale=params.scale_step))
  u = jnp.zeros((params.num_fields,) + shapes[-1], jnp.float32)
  for s in reversed(range(len(shapes))):
    u = _solve_scale(pyramid[s][0], pyramid[s][1], u, params)
    if s > 0:
      u = resize_linear(u, shapes[s - 1])
      u = u.at[:2].multiply(np.float32(1.0 / params.scale_step))  # u3 is not rescaled
  return jnp.moveaxis(u[:2], 0, -1)


def _tvl1_batch(frames0: jnp.ndarray, frames1: jnp.ndarray, params: TVL1Params) -> jnp.ndarray:
  """vmap of `_tvl1_pair`: `(B, H, W)` x 2 -> `(B, H, W, 2)`."""
  return jax.vmap(functools.partial(_tvl1_pair, params=params))(frames0, frames1)


_tvl1_batch_jit = jax.jit(_tvl1_batch, static_argnames=("params",))


# ----------------------------------------------------------------------------------------------
# Public API.


def _check_frames(frame0, frame1) -> Tuple[np.ndarray, np.ndarray, bool]:
  """Validates grayscale frames; returns `(B, H, W)` arrays and whether the input was `(H, W)`."""
  frame0, frame1 = (f if isinstance(f, jax.Array) else np.asarray(f) for f in (frame0, frame1))
  shapes = (np.shape(frame0), np.shape(frame1))
  if shapes[0] != shapes[1]:
    raise ValueError(f"{_FILE}: frame0 and frame1 must have the same shape, got {shapes}")
  if len(shapes[0]) not in (2, 3):
    raise ValueError(f"{_FILE}: frames must be grayscale (H, W) or (B, H, W), got shape "
                     f"{shapes[0]}")
  for frame in (frame0, frame1):
    dtype = np.dtype(frame.dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
      raise ValueError(f"{_FILE}: frames must be uint8 or float (0..255), got dtype {dtype}")
  height, width = shapes[0][-2:]
  if height < MIN_PYRAMID_SIDE or width < MIN_PYRAMID_SIDE:
    raise ValueError(f"{_FILE}: frames must be at least {MIN_PYRAMID_SIDE}x{MIN_PYRAMID_SIDE} "
                     f"grayscale, got (H, W) = ({height}, {width}) (colour frames must be "
                     "converted to grayscale first)")
  single = len(shapes[0]) == 2
  if single:
    frame0, frame1 = frame0[None], frame1[None]
  return frame0, frame1, single


def tvl1_flow(frame0, frame1, params: TVL1Params = TVL1Params()) -> jax.Array:
  """TV-L1 flow from frame0 to frame1, as cv2 DualTVL1OpticalFlow: frame0(x) ≈ frame1(x + flow).

  Args:
    frame0, frame1: grayscale `(B, H, W)` or `(H, W)`, uint8 or float on the 0..255 scale
      (unlike cv2, float input is NOT multiplied by 255).  H, W >= 16.
    params: TVL1Params (static; one compilation per frame size, batch size, dtype and params).
  Returns:
    float32 flow `(B, H, W, 2)` (or `(H, W, 2)` for `(H, W)` input); [..., 0] = x, [..., 1] = y.
  """
  frames0, frames1, single = _check_frames(frame0, frame1)
  flow = _tvl1_batch_jit(frames0, frames1, params=params)
  return flow[0] if single else flow


def _as_mesh(mesh_or_devices: Union[Mesh, Sequence[jax.Device], None]) -> Mesh:
  if isinstance(mesh_or_devices, Mesh):
    if mesh_or_devices.axis_names != (BATCH_AXIS,):
      raise ValueError(f"{_FILE}: the mesh must be 1-D with axis '{BATCH_AXIS}', got axes "
                       f"{mesh_or_devices.axis_names}")
    return mesh_or_devices
  devices = jax.devices() if mesh_or_devices is None else list(mesh_or_devices)
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


@functools.partial(jax.jit, static_argnames=("params", "mesh"))
def _tvl1_sharded_jit(frames0, frames1, params: TVL1Params, mesh: Mesh):
  spec = PartitionSpec(BATCH_AXIS)
  # shard_map: every device runs its own while-loops (no cross-device sync per iteration).
  # check_vma=False: the loop carries start device-invariant (zeros) and become per-device; the
  # body has no collectives, so there is nothing for the varying-axis check to protect.
  return jax.shard_map(functools.partial(_tvl1_batch, params=params), mesh=mesh,
                       in_specs=(spec, spec), out_specs=spec, check_vma=False)(frames0, frames1)


def tvl1_flow_sharded(frames0, frames1, params: TVL1Params = TVL1Params(),
                      mesh_or_devices: Union[Mesh, Sequence[jax.Device], None] = None
                      ) -> jax.Array:
  """`tvl1_flow` with the batch split over devices (a 1-D mesh named 'batch').

  frames0, frames1: `(B, H, W)` (or `(H, W)`); the batch is zero-padded to a multiple of the
  device count (blank pairs stop after one iteration) and the padding is dropped from the result.
  mesh_or_devices: a Mesh with the single axis 'batch', a list of devices, or None (all devices).
  Returns `(B, H, W, 2)` float32 sharded over 'batch' (before the padding is sliced off).
  """
  frames0, frames1, single = _check_frames(frame0=frames0, frame1=frames1)
  mesh = _as_mesh(mesh_or_devices)
  batch = frames0.shape[0]
  padded = -(-batch // mesh.size) * mesh.size
  if padded != batch:
    pad = [(0, padded - batch), (0, 0), (0, 0)]
    xp = jnp if isinstance(frames0, jax.Array) else np  # keep host arrays on the host
    frames0, frames1 = xp.pad(frames0, pad), xp.pad(frames1, pad)
  flow = _tvl1_sharded_jit(frames0, frames1, params=params, mesh=mesh)[:batch]
  return flow[0] if single else flow
