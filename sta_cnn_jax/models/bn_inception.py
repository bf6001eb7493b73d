"""BN-Inception, the Action Classification Network (ACN) of STA-CNN (paper §3.2.4).

Inception with Batch Normalization (Ioffe & Szegedy 2015) exactly as shipped with TSN
(tsn-pytorch / Caffe model zoo); layer table below (docs/design.md). Numeric conventions
that make published weights import one to one:

* every conv is conv -> BatchNorm(eps 1e-5) -> ReLU, and the convs KEEP their bias
  (10,016 redundant parameters in front of BN, as in the published weights; we keep them
  rather than folding them into BN's shift, so `convert.py` copies tensors one to one);
* convs use explicit symmetric padding k//2 (not 'SAME', which pads stride-2 convs
  asymmetrically);
* stride-2 max pools are 3x3 in CEIL mode (pad bottom/right with -inf as needed);
* in-block average pools are 3x3/1 pad 1 and count the padding (always divide by 9);
  block 5b's pool branch is a 3x3/1 pad 1 max pool.

Submodule names are the tsn-pytorch state-dict names (`conv1_7x7_s2`, `conv1_7x7_s2_bn`,
`inception_3a_double_3x3_reduce`, ..., classifier `fc`).

Input sides must be multiples of 32: only then do the ceil-mode pools and the padded
stride-2 convs of blocks 3c and 4e produce equal branch sizes (224, 160, 128, 96, 64 work;
112 does not: block 4e would concatenate 4x4 with 3x3).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sta_cnn_jax.models import layers
from sta_cnn_jax.models.attention import global_average_pool

Array = Any

# BatchNorm: eps 1e-5 (Caffe/PyTorch); PyTorch momentum 0.1 == Flax momentum 0.9 (TSN).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
# Classifier init N(0, 0.001), bias 0 (tsn-pytorch `TSN._prepare_base_model`).
FC_INIT_STD = 1e-3
# Output channels of the last Inception block (5b).
FEATURE_DIM = 1024
# Total downsampling of the trunk; input sides must be multiples of it (see module doc).
INPUT_MULTIPLE = 32
# The one BatchNorm that keeps training under TSN's partial BN.
FIRST_BN = 'conv1_7x7_s2_bn'
BN_SUFFIX = '_bn'
# Pool windows: every pool is 3x3 (stride 2 between stages, stride 1 inside blocks).
POOL_WINDOW = 3

# Stem convs: (name, out channels, kernel, stride); a ceil-mode 3x3/2 max pool follows
# conv1_7x7_s2 (pool1) and conv2_3x3 (pool2).
STEM = (
    ('conv1_7x7_s2', 64, 7, 2),
    ('conv2_3x3_reduce', 64, 1, 1),
    ('conv2_3x3', 192, 3, 1),
)
STEM_POOL_AFTER = ('conv1_7x7_s2', 'conv2_3x3')

# Inception blocks (docs/design.md): (name, 1x1, 3x3 reduce, 3x3, double reduce, double 3x3,
# pool type, pool projection, stride). Stride-2 blocks (3c, 4e) have no 1x1 branch and a
# projection-free ceil-mode max pool; their 3x3 convs carry the stride.
INCEPTION_BLOCKS = (
    ('3a', 64, 64, 64, 64, 96, 'avg', 32, 1),
    ('3b', 64, 64, 96, 64, 96, 'avg', 64, 1),
    ('3c', 0, 128, 160, 64, 96, 'max', 0, 2),
    ('4a', 224, 64, 96, 96, 128, 'avg', 128, 1),
    ('4b', 192, 96, 128, 96, 128, 'avg', 128, 1),
    ('4c', 160, 128, 160, 128, 160, 'avg', 128, 1),
    ('4d', 96, 128, 192, 160, 192, 'avg', 128, 1),
    ('4e', 0, 128, 192, 192, 256, 'max', 0, 2),
    ('5a', 352, 192, 320, 160, 224, 'avg', 128, 1),
    ('5b', 352, 192, 320, 192, 224, 'max', 128, 1),
)


def scaled_width(channels: int, width_multiplier: float = 1.0) -> int:
  """Channels of a conv in a BN-Inception narrowed by `width_multiplier` (1.0: the paper's)."""
  if width_multiplier <= 0:
    raise ValueError(f'bn_inception.py: width_multiplier must be > 0, got {width_multiplier}')
  return max(1, int(round(channels * width_multiplier)))


def conv_units(width_multiplier: float = 1.0) -> tuple[tuple[str, int, int, int], ...]:
  """All conv->BN->ReLU units as (name, out channels, kernel, stride), in forward order.

  width_multiplier scales every conv's output channels (a narrower network for miniature
  experiments; 1.0 is BN-Inception as published, the only width published weights fit).
  """
  if width_multiplier != 1.0:
    return tuple((name, scaled_width(c, width_multiplier), k, s)
                 for name, c, k, s in conv_units())
  units = list(STEM)
  for blk, c1, c3r, c3, cdr, cd, _, cpool, stride in INCEPTION_BLOCKS:
    p = f'inception_{blk}_'
    if c1:
      units.append((p + '1x1', c1, 1, 1))
    units += [(p + '3x3_reduce', c3r, 1, 1), (p + '3x3', c3, 3, stride),
              (p + 'double_3x3_reduce', cdr, 1, 1), (p + 'double_3x3_1', cd, 3, 1),
              (p + 'double_3x3_2', cd, 3, stride)]
    if cpool:
      units.append((p + 'pool_proj', cpool, 1, 1))
  return tuple(units)


def check_input_size(height: int, width: int, where: str = 'bn_inception.py') -> None:
  """Raises ValueError unless both sides are positive multiples of 32 (see module doc)."""
  for side, size in (('height', height), ('width', width)):
    if size <= 0 or size % INPUT_MULTIPLE:
      raise ValueError(
          f'{where}: input {side} {size} is not a positive multiple of {INPUT_MULTIPLE}. '
          'BN-Inception\'s ceil-mode 3x3/2 pools and padded stride-2 convs (blocks 3c, 4e) '
          'give branches of equal size only for multiples of 32 (224, 160, 128, 96, 64 '
          'work; 112 does not). Resize or crop the input.')


def _pool_padding(size: int, stride: int, pad: int) -> tuple[int, int]:
  """(low, high) padding of a 3-wide pool in PyTorch ceil mode (extra rows bottom/right)."""
  out = math.ceil((size + 2 * pad - POOL_WINDOW) / stride) + 1
  if (out - 1) * stride >= size + pad:  # the last window must start inside the input
    out -= 1
  extra = max((out - 1) * stride + POOL_WINDOW - (size + 2 * pad), 0)
  return pad, pad + extra


def max_pool_ceil(x: Array, stride: int, pad: int = 0) -> Array:
  """3x3 max pool, ceil mode, padding with -inf. x: (N, H, W, C).

  Computed by `layers.max_pool` (same values as nn.max_pool; a gradient XLA:CPU runs ~5x
  faster, still routed to the first maximum of each window).
  """
  padding = (_pool_padding(x.shape[1], stride, pad), _pool_padding(x.shape[2], stride, pad))
  return layers.max_pool(x, stride, padding)


def avg_pool_count_pad(x: Array) -> Array:
  """3x3/1 pad 1 average pool counting the zero padding (divides by 9). x: (N, H, W, C).

  `layers.avg_pool_count_pad`: nn.avg_pool(count_include_pad=True)'s values, faster on CPU.
  """
  return layers.avg_pool_count_pad(x)


def _path_names(path: Sequence[Any]) -> list[str]:
  # Accepts plain strings or jax.tree_util path entries (DictKey/GetAttrKey).
  return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def is_frozen_bn_param(path: Sequence[Any]) -> bool:
  """True for a leaf under any BN-Inception BatchNorm except the first (TSN partial BN).

  `path` is a key path into a params tree (strings, or jax.tree_util path entries), with or
  without leading 'params'/'acn' keys, e.g. ('acn', 'inception_3a_1x1_bn', 'scale').
  train.py uses it to mask these scales/shifts out of the optimizer.
  """
  return any(n.endswith(BN_SUFFIX) and n != FIRST_BN for n in _path_names(path))


def cross_modality_init(rgb_acn_params: Mapping[str, Any],
                        in_channels: int = 10) -> Mapping[str, Any]:
  """TSN cross-modality pre-training: RGB conv1 -> `in_channels`-channel conv1.

  Returns a copy of the tree in which every `conv1_7x7_s2` kernel (7, 7, 3, 64) is
  replaced by its mean over the input-channel axis replicated `in_channels` times,
  (7, 7, in_channels, 64). All other leaves are returned unchanged. Works on the ACN tree
  or any tree containing it (e.g. {'acn': ...}).
  """
  if in_channels < 1:
    raise ValueError(f'bn_inception.py: cross_modality_init needs in_channels >= 1, got '
                     f'{in_channels}')
  found = []

  def convert(tree):
    out = {}
    for key, value in tree.items():
      if key == STEM[0][0] and isinstance(value, Mapping):
        kernel = value['kernel']  # (7, 7, C_rgb, 64)
        mean = jnp.mean(kernel, axis=2, keepdims=True)
        out[key] = dict(value, kernel=jnp.repeat(mean, in_channels, axis=2))
        found.append(key)
      elif isinstance(value, Mapping):
        out[key] = convert(value)
      else:
        out[key] = value
    return type(tree)(out) if not isinstance(tree, dict) else out

  result = convert(rgb_acn_params)
  if not found:
    raise ValueError(f'bn_inception.py: cross_modality_init found no {STEM[0][0]!r} '
                     'kernel in the given parameter tree.')
  return result


class BNInception(nn.Module):
  """BN-Inception trunk + TSN head (dropout -> fc). Inputs (N, H, W, C_in), NHWC.

  Attributes:
    num_classes: classes of the classifier `fc`.
    dropout_rate: dropout before `fc` (TSN: 0.8 RGB, 0.7 flow).
    partial_bn: TSN partial BN; in training only `conv1_7x7_s2_bn` uses batch statistics
      and updates its running averages, every other BN uses (frozen) running averages.
    bn_axis_name: axis name for synchronized BN under pmap / shard_map (None = local).
    dtype: compute dtype (e.g. bfloat16); params stay in `param_dtype`.
    width_multiplier: scales every conv's width (1.0 = BN-Inception; < 1 only for the
      clearly labelled miniature configs: published weights do not fit a narrower network).
    fc_init_std: classifier init N(0, std) (TSN: 0.001, made for fine-tuning ImageNet
      features; from random weights such a small fc starves the trunk of gradient).
    bn_batch_sums: how training-mode BNs sum over the batch, `layers.BN_BATCH_SUMS`
      ('matmul': `layers.BatchNorm`; 'reduce': flax.linen.BatchNorm); same results.
  """
  num_classes: int = 1000
  dropout_rate: float = 0.8
  partial_bn: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  width_multiplier: float = 1.0
  fc_init_std: float = FC_INIT_STD
  bn_batch_sums: str = 'matmul'

  def setup(self):
    convs, bns = {}, {}
    for name, features, k, stride in conv_units(self.width_multiplier):
      pad = k // 2  # explicit symmetric padding, not 'SAME'
      # layers.Conv == nn.Conv (same parameters); 1x1 convs run as matmuls (faster on CPU).
      convs[name] = layers.Conv(
          features, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)),
          use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
      bns[name] = layers.batch_norm(
          self.bn_batch_sums, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
          axis_name=self.bn_axis_name,
          dtype=self.dtype, param_dtype=self.param_dtype, name=name + BN_SUFFIX)
    self.convs, self.bns = convs, bns
    self.dropout = nn.Dropout(self.dropout_rate)
    self.fc = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                       kernel_init=nn.initializers.normal(self.fc_init_std),
                       bias_init=nn.initializers.zeros)

  def _unit(self, name: str, x: Array, train: bool) -> Array:
    """conv -> BN -> ReLU; BN in batch-statistics mode only where training updates it."""
    frozen = self.partial_bn and name + BN_SUFFIX != FIRST_BN
    x = self.convs[name](x)
    x = self.bns[name](x, use_running_average=(not train) or frozen)
    return nn.relu(x)

  def _inception(self, x: Array, block: tuple, train: bool) -> Array:
    blk, c1, _, _, _, _, pool, cpool, stride = block
    p = f'inception_{blk}_'
    branches = []
    if c1:
      branches.append(self._unit(p + '1x1', x, train))
    b3 = self._unit(p + '3x3_reduce', x, train)
    branches.append(self._unit(p + '3x3', b3, train))
    bd = self._unit(p + 'double_3x3_reduce', x, train)
    bd = self._unit(p + 'double_3x3_1', bd, train)
    branches.append(self._unit(p + 'double_3x3_2', bd, train))
    if stride == 2:
      branches.append(max_pool_ceil(x, stride=2))
    else:
      pooled = avg_pool_count_pad(x) if pool == 'avg' else max_pool_ceil(x, stride=1, pad=1)
      branches.append(self._unit(p + 'pool_proj', pooled, train))
    return jnp.concatenate(branches, axis=-1)

  def features(self, x: Array, train: bool) -> Array:
    """(N, H, W, C_in) -> last conv features (N, H/32, W/32, 1024 x width_multiplier)."""
    if x.ndim != 4:
      raise ValueError(f'bn_inception.py: expected NHWC input (N, H, W, C), got {x.shape}')
    check_input_size(x.shape[1], x.shape[2])
    for name, _, _, _ in STEM:
      x = self._unit(name, x, train)
      if name in STEM_POOL_AFTER:
        x = max_pool_ceil(x, stride=2)
    for block in INCEPTION_BLOCKS:
      x = self._inception(x, block, train)
    return x

  def classify(self, pooled: Array, train: bool) -> Array:
    """TSN head: dropout -> fc. pooled: (N, 1024) -> logits (N, num_classes)."""
    return self.fc(self.dropout(pooled, deterministic=not train))

  def __call__(self, x: Array, train: bool) -> Array:
    """Plain TSN BN-Inception: features -> global average pool -> dropout -> fc."""
    return self.classify(global_average_pool(self.features(x, train)), train)
