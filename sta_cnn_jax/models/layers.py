"""Building blocks of BN-Inception that compile to fast XLA:CPU code.

Same parameters, names and results as the Flax / lax originals they replace (up to float32
summation order); only how XLA computes them, mostly their gradients, differs. Measured in
benchmarks/conv_layers.py and benchmarks/compare.py (see the performance notes there):

* `Conv`: `flax.linen.Conv` with explicit padding ('kernel' (kh, kw, C_in, C_out), 'bias').
  1x1 stride-1 convs run as one (N·H·W, C_in) @ (C_in, C_out) matmul with a custom VJP whose
  weight gradient is xᵀ·dy contracted over the leading N·H·W axis (XLA's convolution VJP first
  transposes the activations to (C, H, W, N), an expensive strided copy on CPU); the bias
  gradient is a ones-vector matmul of the materialised dy instead of a reduction XLA would fuse
  into (and recompute in) every consumer of dy.
* `max_pool` / `avg_pool_count_pad`: 3x3 pools as elementwise max / sums of the nine strided
  window slices. XLA:CPU expands reduce_window's gradient (select_and_scatter) into an index
  tracking reduce-window + scatter (about a third of a TSN training step at 224); the custom
  VJPs here route the gradient with nine masked, interior-padded copies (max) or apply the
  pool's own adjoint (avg, which is self-adjoint). `max_pool`'s gradient goes to the FIRST
  maximum of each window in row-major order, as PyTorch's and lax's select_and_scatter.
* `BatchNorm`: `flax.linen.BatchNorm` (same variables, statistics and running averages) whose
  per-channel sums over the batch, in the forward (mean, mean of squares) and in the backward
  (sum of dy, sum of dy·x), are ones-vector matmuls. XLA:CPU turns a reduction that keeps the
  minor (channel) axis into trees of reduce-windows, 3-7x slower than the matmul on the same
  data (docs/performance.md); these sums are where a training-mode BN spends its time.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = Any
Padding = Sequence[tuple[int, int]]

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
POOL_WINDOW = 3


# ------------------------------------------------------------------------------------------
# Convolutions.
# ------------------------------------------------------------------------------------------


@jax.custom_vjp
def pointwise_conv(x: Array, w: Array) -> Array:
  """1x1 stride-1 conv as a matmul: x (N, H, W, C_in), w (C_in, C_out) -> (N, H, W, C_out)."""
  n, h, wd, c = x.shape
  return (x.reshape(n * h * wd, c) @ w).reshape(n, h, wd, w.shape[1])


def _pointwise_fwd(x, w):
  return pointwise_conv(x, w), (x, w)


def _pointwise_bwd(res, dy):
  x, w = res
  c, o = w.shape
  dy2 = dy.reshape(-1, o)                                            # (N·H·W, C_out)
  dx = lax.dot_general(dy2, w, (((1,), (1,)), ((), ())))             # dy · wᵀ
  dw = lax.dot_general(x.reshape(-1, c), dy2, (((0,), (0,)), ((), ())))  # xᵀ · dy
  return dx.reshape(x.shape), dw


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


def channel_sum(x: Array) -> Array:
  """x (..., C) summed over every axis but the last -> (C,), as a ones-vector matmul."""
  flat = x.reshape(-1, x.shape[-1])
  return (jnp.ones((1, flat.shape[0]), x.dtype) @ flat).reshape(x.shape[-1])


@jax.custom_vjp
def bias_add(y: Array, b: Array) -> Array:
  """y (..., C) + b (C,); the bias gradient is a ones-vector matmul of dy (see module doc)."""
  return y + b


def _bias_add_fwd(y, b):
  return y + b, None


def _bias_add_bwd(_, dy):
  return dy, channel_sum(dy)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


def conv2d(x: Array, w: Array, strides: Sequence[int], padding: Padding) -> Array:
  """NHWC / HWIO convolution; 1x1 stride-1 unpadded convs as `pointwise_conv`."""
  if w.shape[:2] == (1, 1) and tuple(strides) == (1, 1) and all(
      tuple(p) == (0, 0) for p in padding):
    return pointwise_conv(x, w[0, 0])
  return lax.conv_general_dilated(x, w, tuple(strides), tuple(tuple(p) for p in padding),
                                  dimension_numbers=DIMENSION_NUMBERS)


class Conv(nn.Module):
  """`flax.linen.Conv` (NHWC, explicit padding) computed by `conv2d` and `bias_add`.

  Parameters 'kernel' (kh, kw, C_in, features) and 'bias' (features,), initialisers and dtype
  promotion as flax.linen.Conv's.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Padding = ((0, 0), (0, 0))
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding)
    return y if bias is None else bias_add(y, bias)


# ------------------------------------------------------------------------------------------
# BatchNorm.
# ------------------------------------------------------------------------------------------


@jax.custom_vjp
def channel_moments(x: Array) -> tuple[Array, Array]:
  """x (..., C) -> (E[x], E[x²]) per channel over every other axis, both (C,)."""
  count = x.size // x.shape[-1]
  return channel_sum(x) / count, channel_sum(x * x) / count


def _moments_fwd(x):
  return channel_moments(x), x


def _moments_bwd(x, cotangents):
  d_mean, d_mean2 = cotangents                                    # (C,) each
  count = x.size // x.shape[-1]
  return ((d_mean + 2 * x * d_mean2) / count,)


channel_moments.defvjp(_moments_fwd, _moments_bwd)


def _affine_normalize(x, mean, var, scale, bias, epsilon):
  return (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def batch_normalize(x: Array, mean: Array, var: Array, scale: Array, bias: Array,
                    epsilon: float) -> Array:
  """(x - mean) · rsqrt(var + ε) · scale + bias over the last axis of x (flax's _normalize).

  Its VJP takes the two per-channel sums over the batch it needs (Σ dy, Σ dy·x) as
  `channel_sum` matmuls; everything else is elementwise.
  """
  return _affine_normalize(x, mean, var, scale, bias, epsilon)


def _normalize_fwd(x, mean, var, scale, bias, epsilon):
  return batch_normalize(x, mean, var, scale, bias, epsilon), (x, mean, var, scale)


def _normalize_bwd(epsilon, res, dy):
  x, mean, var, scale = res
  inv = lax.rsqrt(var + epsilon)                                  # (C,)
  sum_dy = channel_sum(dy)                                        # Σ dy
  centred = channel_sum(dy * x) - mean * sum_dy                   # Σ dy·(x - mean)
  d_x = dy * (inv * scale)
  d_mean = -inv * scale * sum_dy
  d_var = -0.5 * scale * inv ** 3 * centred
  return d_x, d_mean, d_var, inv * centred, sum_dy


batch_normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over the last axis (the same variables: params 'scale', 'bias';
  batch_stats 'mean', 'var'), computed by `channel_moments` and `batch_normalize`.

  Training mode: mean and var = E[x²] - E[x]² (clipped at 0) of this batch, averaged over
  `axis_name` when given (synchronised BN), in float32 at least; running averages
  momentum·old + (1 - momentum)·new, not updated while initialising. The gradient flows
  through the batch statistics as in flax's (autodiff of the same functions; the pmean of
  the statistics is differentiated by JAX itself).
  """
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, stats_dtype),
                            features)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, stats_dtype), features)
    scale = self.param('scale', nn.initializers.ones, features, self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, features, self.param_dtype)
    dtype = nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
    if use_running_average:
      # A fixed affine map per channel: plain autodiff (no batch sums; under partial BN the
      # frozen scale and bias get no gradient at all).
      y = _affine_normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
      return jnp.asarray(y, dtype)
    mean, mean2 = channel_moments(x.astype(stats_dtype))
    if self.axis_name is not None and not self.is_initializing():
      mean, mean2 = lax.pmean(jnp.stack([mean, mean2]), self.axis_name)
    var = jnp.maximum(0.0, mean2 - mean * mean)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return jnp.asarray(batch_normalize(x, mean, var, scale, bias, self.epsilon), dtype)


# How a BatchNorm in training mode takes its per-channel sums over the batch (`batch_norm`).
BN_BATCH_SUMS = ('matmul', 'reduce')


def batch_norm(batch_sums: str, **kwargs) -> nn.Module:
  """A BatchNorm module: 'matmul' -> `BatchNorm` (sums as ones-vector matmuls), 'reduce' ->
  flax.linen.BatchNorm (XLA's reductions). Same variables and results either way."""
  if batch_sums == 'matmul':
    return BatchNorm(**kwargs)
  if batch_sums == 'reduce':
    return nn.BatchNorm(**kwargs)
  raise ValueError(f'layers.py: bn_batch_sums={batch_sums!r}; expected one of {BN_BATCH_SUMS}')


# ------------------------------------------------------------------------------------------
# Pools (3x3 windows).
# ------------------------------------------------------------------------------------------


def _out_size(size: int, pad: tuple[int, int], stride: int) -> int:
  return (size + pad[0] + pad[1] - POOL_WINDOW) // stride + 1


def _window(xp: Array, i: int, j: int, stride: int, out_hw: tuple[int, int]) -> Array:
  """The (i, j) element of every window: xp[:, i::stride, j::stride] cut to out_hw."""
  n, _, _, c = xp.shape
  return lax.slice(xp, (0, i, j, 0),
                   (n, i + (out_hw[0] - 1) * stride + 1, j + (out_hw[1] - 1) * stride + 1, c),
                   (1, stride, stride, 1))


def _offsets():
  return [(i, j) for i in range(POOL_WINDOW) for j in range(POOL_WINDOW)]


def _pad(x: Array, padding: Padding, value) -> Array:
  return jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)),
                 constant_values=value)


def _max_pool_of(x: Array, stride: int, padding: Padding) -> Array:
  xp = _pad(x, padding, -jnp.inf)
  out_hw = (_out_size(x.shape[1], padding[0], stride), _out_size(x.shape[2], padding[1], stride))
  return functools.reduce(jnp.maximum, [_window(xp, i, j, stride, out_hw) for i, j in _offsets()])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: Array, stride: int, padding: Padding) -> Array:
  """3x3 max pool of x (N, H, W, C) with -inf `padding` ((top, bottom), (left, right))."""
  return _max_pool_of(x, stride, padding)


def _max_pool_fwd(x, stride, padding):
  return _max_pool_of(x, stride, padding), (x,)


def _max_pool_bwd(stride, padding, res, dy):
  # Each window's maximum is found by exact comparison with y, so y is recomputed here from
  # the residual x itself rather than kept from the forward pass: XLA may fuse x's producer
  # (e.g. BN + ReLU) separately into the fusion that computed y and into the ones that read x,
  # and the copies can round differently, and a window whose stored y matches none of its x
  # loses its gradient. Found with tam_backward='reuse' (tests/test_reuse_backward.py).
  (x,) = res
  y = _max_pool_of(x, stride, padding)
  xp = _pad(x, padding, -jnp.inf)
  hp, wp = xp.shape[1:3]
  out_h, out_w = y.shape[1:3]
  zero = jnp.zeros((), dy.dtype)
  taken = dxp = None
  for i, j in _offsets():  # row-major: the first maximum of a window takes its gradient
    hit = _window(xp, i, j, stride, (out_h, out_w)) == y
    first = hit if taken is None else hit & ~taken
    taken = hit if taken is None else taken | hit
    placed = lax.pad(jnp.where(first, dy, zero), zero, (
        (0, 0, 0),
        (i, hp - i - (out_h - 1) * stride - 1, stride - 1),
        (j, wp - j - (out_w - 1) * stride - 1, stride - 1),
        (0, 0, 0)))
    dxp = placed if dxp is None else dxp + placed
  (top, _), (left, _) = padding
  return (lax.slice(dxp, (0, top, left, 0),
                    (x.shape[0], top + x.shape[1], left + x.shape[2], x.shape[3])),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _sum_pool_pad1(x: Array) -> Array:
  """3x3/1 window sums with zero padding 1, divided by 9 (count_include_pad)."""
  xp = _pad(x, ((1, 1), (1, 1)), 0)
  total = functools.reduce(jnp.add, [_window(xp, i, j, 1, x.shape[1:3]) for i, j in _offsets()])
  return total / (POOL_WINDOW * POOL_WINDOW)


@jax.custom_vjp
def avg_pool_count_pad(x: Array) -> Array:
  """3x3/1 pad-1 average pool counting the padding. x (N, H, W, C) -> same shape."""
  return _sum_pool_pad1(x)


def _avg_fwd(x):
  return _sum_pool_pad1(x), None


def _avg_bwd(_, dy):
  # A symmetric 3x3 box filter with zero padding is its own adjoint.
  return (_sum_pool_pad1(dy),)


avg_pool_count_pad.defvjp(_avg_fwd, _avg_bwd)
