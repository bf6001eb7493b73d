"""Convolution implementations compared by benchmarks/conv_layers.py (prototypes).

All take NHWC inputs and HWIO kernels and compute exactly lax.conv_general_dilated's result.
  'lax'  lax.conv_general_dilated; its VJP is XLA's (transposed convs).
  'ours' sta_cnn_jax.models.layers.conv2d, what BN-Inception uses: 1x1 stride-1 convs as
         matmuls with a transpose-free custom VJP, other convs as 'lax'.
  'dot'  custom VJP: 1x1 stride-1 convs as matmuls (forward, dx and dw); k>1 convs forward and
         dx as XLA convs; every dw as one im2col matmul: patches(x)ᵀ (k²·C_in, N·Ho·Wo) @ dy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def lax_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DIMENSION_NUMBERS)


def patches(x, kernel, strides, padding):
  """im2col: (N, H, W, C) -> (N, Ho, Wo, kh·kw·C), channels ordered (kh, kw, C) like HWIO."""
  kh, kw = kernel
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho = (xp.shape[1] - kh) // strides[0] + 1
  wo = (xp.shape[2] - kw) // strides[1] + 1
  cols = [lax.slice(xp, (0, i, j, 0),
                    (xp.shape[0], i + (ho - 1) * strides[0] + 1, j + (wo - 1) * strides[1] + 1,
                     xp.shape[3]), (1, strides[0], strides[1], 1))
          for i in range(kh) for j in range(kw)]
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _is_pointwise(w, strides, padding):
  return w.shape[:2] == (1, 1) and tuple(strides) == (1, 1) and all(
      p == (0, 0) for p in padding)


def _dot_forward(x, w, strides, padding):
  if _is_pointwise(w, strides, padding):
    return jnp.einsum('nhwc,co->nhwo', x, w[0, 0])
  return lax_conv(x, w, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dot_conv(x, w, strides, padding):
  return _dot_forward(x, w, strides, padding)


def _dot_fwd(x, w, strides, padding):
  return _dot_forward(x, w, strides, padding), (x, w)


def _dot_bwd(strides, padding, res, dy):
  x, w = res
  if _is_pointwise(w, strides, padding):
    dx = jnp.einsum('nhwo,co->nhwc', dy, w[0, 0])
  else:
    dx = jax.vjp(lambda x: lax_conv(x, w, strides, padding), x)[1](dy)[0]
  cols = patches(x, w.shape[:2], strides, padding)                  # (N, Ho, Wo, k²C)
  dw = jnp.einsum('nhwk,nhwo->ko', cols, dy).reshape(w.shape)
  return dx, dw


dot_conv.defvjp(_dot_fwd, _dot_bwd)


def make_conv(impl, strides, padding):
  strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
  if impl == 'lax':
    return lambda x, w: lax_conv(x, w, strides, padding)
  if impl == 'ours':
    from sta_cnn_jax.models import layers  # pylint: disable=g-import-not-at-top
    return lambda x, w: layers.conv2d(x, w, strides, padding)
  if impl == 'dot':
    return lambda x, w: dot_conv(x, w, strides, padding)
  raise ValueError(f'benchmarks/conv_impl.py: unknown conv implementation {impl!r}')
