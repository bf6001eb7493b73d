"""Analytic FLOPs of the STA-CNN networks, from the layer tables in `sta_cnn_jax.models`.

Convention (the one of the published PyTorch BN-Inception's counts, fvcore and most papers'
"GFLOPs x 2"):
a convolution costs 2·k²·C_in·C_out·H_out·W_out, a dense layer 2·F_in·F_out per example;
BatchNorm, ReLU, pooling, biases and softmaxes are not counted (< 1 % here). BN-Inception at
224 x 224 with a 1000-way classifier is 4.065 GFLOP forward (2.03 G multiply-adds).

A training step costs about 3x the forward: the backward pass computes a gradient for the input
and one for the weights of every layer, each as costly as the forward (TRAIN_FLOPS_FACTOR).
Temporal attention (Algorithm 1) changes which snippets pay what:
  'masked'    every one of the S snippets is forwarded and back-propagated (3·S forwards);
  'recompute' S forwards without gradient to score α, then forward + backward of the
              selected ones again (S + 3·selected forwards);
  'reuse'     S forwards with gradient tracking, the backward of the selected ones only
              (S + 2·selected forwards).
`train_step_flops` returns what a step executes, so achieved GFLOP/s are honest for both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence

from sta_cnn_jax.models import bn_inception
from sta_cnn_jax.models import san as san_lib
from sta_cnn_jax.models import sta_cnn

# Forward + backward (input and weight gradients) ~= 3 forwards (see module doc).
TRAIN_FLOPS_FACTOR = 3
TAM_BACKWARD_MODES = ('masked', 'recompute', 'reuse')


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """One convolution at a given input size (NHWC, symmetric padding k // 2)."""
  name: str
  height: int        # input H
  width: int         # input W
  in_channels: int
  out_channels: int
  kernel: int
  stride: int

  @property
  def out_height(self) -> int:
    return (self.height + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

  @property
  def out_width(self) -> int:
    return (self.width + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

  @property
  def flops(self) -> int:
    """2·k²·C_in·C_out·H_out·W_out for one example."""
    return (2 * self.kernel * self.kernel * self.in_channels * self.out_channels *
            self.out_height * self.out_width)

  @property
  def shape_key(self) -> tuple[int, int, int, int, int, int]:
    """(H, W, C_in, C_out, k, stride): layers with equal keys run the same kernel."""
    return (self.height, self.width, self.in_channels, self.out_channels, self.kernel,
            self.stride)


def dense_flops(in_features: int, out_features: int) -> int:
  """2·F_in·F_out for one example."""
  return 2 * in_features * out_features


def _ceil_pool(size: int, stride: int) -> int:
  """Output side of BN-Inception's 3x3 ceil-mode pools without padding."""
  return math.ceil((size - bn_inception.POOL_WINDOW) / stride) + 1


def bn_inception_layers(height: int, width: int, in_channels: int = 3) -> tuple[ConvLayer, ...]:
  """Every conv of BN-Inception in forward order, with its input size (docs/design.md
  "Architecture tables")."""
  bn_inception.check_input_size(height, width, where='flops.py')
  layers = []
  h, w, c = height, width, in_channels
  for name, out, k, stride in bn_inception.STEM:
    layer = ConvLayer(name, h, w, c, out, k, stride)
    layers.append(layer)
    h, w, c = layer.out_height, layer.out_width, out
    if name in bn_inception.STEM_POOL_AFTER:
      h, w = _ceil_pool(h, 2), _ceil_pool(w, 2)
  for blk, c1, c3r, c3, cdr, cd, _, cpool, stride in bn_inception.INCEPTION_BLOCKS:
    p = f'inception_{blk}_'
    units = []
    if c1:
      units.append([(p + '1x1', c1, 1, 1)])
    units.append([(p + '3x3_reduce', c3r, 1, 1), (p + '3x3', c3, 3, stride)])
    units.append([(p + 'double_3x3_reduce', cdr, 1, 1), (p + 'double_3x3_1', cd, 3, 1),
                  (p + 'double_3x3_2', cd, 3, stride)])
    if cpool:
      units.append([(p + 'pool_proj', cpool, 1, 1)])
    out_channels = 0 if cpool else c  # stride-2 blocks pass the max-pooled input through
    for branch in units:
      bh, bw, bc = h, w, c
      for name, out, k, s in branch:
        layer = ConvLayer(name, bh, bw, bc, out, k, s)
        layers.append(layer)
        bh, bw, bc = layer.out_height, layer.out_width, out
      out_channels += bc
    h, w, c = bh, bw, out_channels
  if c != bn_inception.FEATURE_DIM:
    raise AssertionError(f'flops.py: BN-Inception table ends with {c} channels, expected '
                         f'{bn_inception.FEATURE_DIM}')
  return tuple(layers)


def san_layers(height: int, width: int, widths: Sequence[int] | None = None,
               last_stride: int = 1, expanded_part: bool = False,
               in_channels: int = sta_cnn.RGB_FRAMES_PER_SNIPPET * sta_cnn.RGB_CHANNELS
               ) -> tuple[ConvLayer, ...]:
  """The SAN's ten FlowNetS convs (and optionally the Expanded Part's five), forward order."""
  widths = tuple(widths) if widths is not None else san_lib.FLOWNETS_WIDTHS
  layers, h, w, c = [], height, width, in_channels
  for (name, k, stride), out in zip(san_lib.ENCODER_LAYERS, widths):
    layer = ConvLayer(name, h, w, c, out, k, last_stride if stride is None else stride)
    layers.append(layer)
    h, w, c = layer.out_height, layer.out_width, out
  if expanded_part:
    for i, out in enumerate(san_lib.EXPANDED_WIDTHS):
      h, w = h * san_lib.UNPOOL_FACTOR, w * san_lib.UNPOOL_FACTOR
      layers.append(ConvLayer(f'expand{i + 1}', h, w, c, out, san_lib.EXPAND_KERNEL, 1))
      c = out
    layers.append(ConvLayer('predict_flow', h, w, c, san_lib.FLOW_CHANNELS,
                            san_lib.EXPAND_KERNEL, 1))
  return tuple(layers)


def conv_flops(layers: Sequence[ConvLayer]) -> int:
  return sum(layer.flops for layer in layers)


def bn_inception_flops(height: int = 224, width: int = 224, in_channels: int = 3,
                       num_classes: int = 1000) -> int:
  """Forward FLOPs of one BN-Inception example: convs + fc (4.065e9 at 224, 3 ch, 1000)."""
  return (conv_flops(bn_inception_layers(height, width, in_channels)) +
          dense_flops(bn_inception.FEATURE_DIM, num_classes))


def san_flops(height: int = 224, width: int = 224, widths: Sequence[int] | None = None,
              last_stride: int = 1, expanded_part: bool = False) -> int:
  """Forward FLOPs of one SAN example (encoder, plus the Expanded Part if asked)."""
  return conv_flops(san_layers(height, width, widths, last_stride, expanded_part))


def stacnn_flops(num_classes: int, modality: str = 'rgb', spatial_attention: bool = True,
                 aux_classifier: bool = True, san_widths: Sequence[int] | None = None,
                 height: int = 224, width: int = 224, expanded_part: bool = False) -> int:
  """Forward FLOPs of one STACNN snippet (arguments as models.STACNN).

  The Expanded Part only runs in SAN pre-training (its output is unused, and removed by XLA,
  in the classification step), so it is excluded unless `expanded_part`.
  """
  rgb = modality == 'rgb'
  acn_in = sta_cnn.RGB_CHANNELS if rgb else sta_cnn.input_channels(modality)
  acn = bn_inception_layers(height, width, acn_in)
  total = conv_flops(acn) + dense_flops(bn_inception.FEATURE_DIM, num_classes)
  if not spatial_attention:
    return total
  grid = (acn[-1].out_height, acn[-1].out_width)
  locations = grid[0] * grid[1]
  if rgb:
    san = san_layers(height, width, san_widths, expanded_part=expanded_part)
    total += conv_flops(san)
    san_channels = san_lib.FLOWNETS_WIDTHS[-1] if san_widths is None else san_widths[-1]
  else:
    san_channels = bn_inception.FEATURE_DIM
  total += 2 * locations * san_channels            # SAL, Eq. 7: <w_i, x_i> per location
  total += 2 * locations * bn_inception.FEATURE_DIM  # WSP, Eq. 9
  if aux_classifier:
    total += dense_flops(san_channels, num_classes)  # aux_fc, Eq. 5
  return total


def train_step_flops(forward_flops: int, num_videos: int, num_snippets: int,
                     num_selected: int | None = None, tam_backward: str = 'masked') -> int:
  """FLOPs a training step executes for `num_videos` videos of `num_snippets` snippets.

  forward_flops: one snippet's forward (e.g. `stacnn_flops(...)`).
  num_selected: snippets per video that Algorithm 1 back-propagates (top_n, or N·top_m);
    None = all (TSN consensus). See the module doc for the `tam_backward` modes.
  """
  if tam_backward not in TAM_BACKWARD_MODES:
    raise ValueError(f'flops.py: tam_backward={tam_backward!r}; expected one of '
                     f'{TAM_BACKWARD_MODES}')
  if num_selected is None or tam_backward == 'masked':
    return TRAIN_FLOPS_FACTOR * forward_flops * num_videos * num_snippets
  if tam_backward == 'reuse':  # one forward of all, the backward (2 forwards) of the selected
    return forward_flops * num_videos * (num_snippets + (TRAIN_FLOPS_FACTOR - 1) * num_selected)
  return forward_flops * num_videos * (num_snippets + TRAIN_FLOPS_FACTOR * num_selected)


def distinct_shapes(layers: Sequence[ConvLayer]) -> Iterator[tuple[ConvLayer, int]]:
  """(first layer, how many layers share it) for each distinct conv shape, in forward order."""
  counts: dict[tuple, list] = {}
  for layer in layers:
    counts.setdefault(layer.shape_key, [layer, 0])[1] += 1
  for layer, count in counts.values():
    yield layer, count
