"""Spatial Attention Network (SAN) and its Expanded Part, paper §3.2.1 and Fig. 4 (Eq. 3).

The SAN is the FlowNetS encoder (Dosovitskiy et al. 2015; docs/design.md) run on the two RGB
frames of a snippet stacked (6 channels): ten convs, each followed by LeakyReLU(0.1), conv
names as in FlowNetS (`conv1` ... `conv6_1`) so published weights import by name. The
paper's "six downsamplings" would give a 4x4 grid at 224 while the ACN gives 7x7, so the
6th downsampling (conv6) has stride `last_stride` = 1 by default: five stride-2 convs,
features on the ACN's K = H/32 grid.

Expanded Part (Eq. 3, "four convolutional layers and four unpooling layers"): four times
[2x nearest-neighbour unpooling -> 3x3 conv -> LeakyReLU(0.1)] (`expand1`..`expand4`),
then a 3x3 conv to 2 channels (`predict_flow`): flow at 1/2 input resolution from the /32
features. We chose parameter-free unpooling + conv (the paper's wording, and free of the
checkerboard artefacts of transposed convs) over FlowNetS's 4x4/2 transposed convs.
Flow is a linear output in the units the flow loss (losses.relaxed_flow_mse) defines.

The Expanded Part's parameters sit directly in the SAN's tree (`share_scope`), so a
standalone SAN's params are exactly STACNN's params['san'] (grafting = dict assignment).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sta_cnn_jax import modalities

Array = Any

# FlowNetS encoder (docs/design.md, "Interpretations"): (name, kernel, stride); stride None = `last_stride`.
ENCODER_LAYERS = (
    ('conv1', 7, 2), ('conv2', 5, 2), ('conv3', 5, 2), ('conv3_1', 3, 1),
    ('conv4', 3, 2), ('conv4_1', 3, 1), ('conv5', 3, 2), ('conv5_1', 3, 1),
    ('conv6', 3, None), ('conv6_1', 3, 1),
)
FLOWNETS_WIDTHS = (64, 128, 256, 256, 512, 512, 512, 512, 1024, 1024)
# Expanded Part widths: FlowNetS decoder widths (deconv5..deconv2).
EXPANDED_WIDTHS = (512, 256, 128, 64)
EXPAND_KERNEL = 3
UNPOOL_FACTOR = 2
FLOW_CHANNELS = modalities.FLOW_PLANES  # the predicted flow's x, y
# FlowNetS: LeakyReLU(0.1) after every conv.
LEAKY_RELU_SLOPE = 0.1
# Strides of conv1..conv5 (five stride-2 convs).
ENCODER_STRIDE_WITHOUT_CONV6 = 32


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any,
          param_dtype: Any) -> nn.Conv:
  pad = kernel // 2  # symmetric, as FlowNetS's (k - 1) // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=True, name=name, dtype=dtype,
                 param_dtype=param_dtype)


def unpool(x: Array, factor: int = UNPOOL_FACTOR) -> Array:
  """Nearest-neighbour unpooling: (N, H, W, C) -> (N, factor*H, factor*W, C)."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class ExpandedPart(nn.Module):
  """f_exp (Eq. 3): (N, k, k, C) SAN features -> flow (N, 16k, 16k, 2)."""
  widths: Sequence[int] = EXPANDED_WIDTHS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i, width in enumerate(self.widths):
      x = unpool(x)
      x = _conv(width, EXPAND_KERNEL, 1, f'expand{i + 1}', self.dtype, self.param_dtype)(x)
      x = nn.leaky_relu(x, LEAKY_RELU_SLOPE)
    return _conv(FLOW_CHANNELS, EXPAND_KERNEL, 1, 'predict_flow', self.dtype,
                 self.param_dtype)(x)


class SpatialAttentionNetwork(nn.Module):
  """f_san (§3.2.1): FlowNetS encoder on a frame pair + the Expanded Part.

  Attributes:
    widths: the ten conv widths (None = FlowNetS's).
    last_stride: stride of conv6 (1 keeps the ACN's /32 grid; 2 = original FlowNetS).
    expand_widths: widths of expand1..expand4.
    dtype / param_dtype: compute / parameter dtypes.
  """
  widths: Sequence[int] | None = None
  last_stride: int = 1
  expand_widths: Sequence[int] = EXPANDED_WIDTHS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    widths = tuple(self.widths) if self.widths is not None else FLOWNETS_WIDTHS
    if len(widths) != len(ENCODER_LAYERS):
      raise ValueError(f'san.py: widths needs {len(ENCODER_LAYERS)} entries (conv1 .. '
                       f'conv6_1), got {len(widths)}: {widths}')
    self.encoder = [
        _conv(width, k, self.last_stride if stride is None else stride, name,
              self.dtype, self.param_dtype)
        for (name, k, stride), width in zip(ENCODER_LAYERS, widths)]
    self.expanded_part = ExpandedPart(self.expand_widths, self.dtype, self.param_dtype)
    nn.share_scope(self, self.expanded_part)

  @property
  def total_stride(self) -> int:
    return ENCODER_STRIDE_WITHOUT_CONV6 * self.last_stride

  def encode(self, x: Array) -> Array:
    """(N, H, W, 6) -> features (N, H/s, W/s, widths[-1]), s = 32 * last_stride."""
    if x.ndim != 4:
      raise ValueError(f'san.py: expected NHWC input (N, H, W, C), got {x.shape}')
    for side, size in (('height', x.shape[1]), ('width', x.shape[2])):
      if size <= 0 or size % self.total_stride:
        raise ValueError(f'san.py: input {side} {size} is not a positive multiple of '
                         f'{self.total_stride} (the SAN\'s total stride); the feature grid '
                         'would not match the ACN\'s.')
    for conv in self.encoder:
      x = nn.leaky_relu(conv(x), LEAKY_RELU_SLOPE)
    return x

  def __call__(self, x: Array, predict_flow: bool = True) -> tuple[Array, Array | None]:
    """Returns (features (N, K, K, C_san), flow (N, 16K, 16K, 2) or None).

    Initialise with predict_flow=True so the Expanded Part's parameters exist.
    """
    features = self.encode(x)
    flow = self.expanded_part(features) if predict_flow else None
    return features, flow
