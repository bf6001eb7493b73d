r"""Imports published PyTorch / Caffe weights into the STA-CNN variable tree.

Two pretrained parts of STA-CNN (paper §3.3, §4.1) come from published models:

- the Action Classification Network (ACN) is BN-Inception pretrained on ImageNet. The weights
  users have are TSN's Caffe model (layer names `conv1/7x7_s2`, `inception_3a/1x1_bn`, ...,
  `fc` / `fc-action`), its PyTorch ports (tsn-pytorch's `tf_model_zoo` loader, Cadene's
  `pretrainedmodels`: `conv1_7x7_s2.weight`, `inception_3a_1x1_bn.running_mean`, ...,
  `fc` / `last_linear`) and trained TSN checkpoints (`module.base_model.*`, `module.new_fc.*`);
- the Spatial Attention Network (SAN, Fig. 4) is the FlowNetS encoder. The widely used PyTorch
  FlowNetS checkpoint (ClementPinard/FlowNetPytorch, `flownets_EPE1.951.pth.tar`) has keys
  `conv1.0.weight`, ..., `conv6_1.0.bias` (conv followed by LeakyReLU 0.1) and a decoder
  (`deconv*`, `predict_flow*`, `upsampled_flow*`) that STA-CNN replaces by its Expanded Part.

Layouts: PyTorch/Caffe conv weights are (O, I, kh, kw) cross-correlation kernels; Flax `nn.Conv`
kernels are (kh, kw, I, O) and also cross-correlate, so the import is a transpose (no flip).
Dense weights (out, in) become (in, out). BatchNorm weight/bias/running_mean/running_var become
`params/<bn>/scale`, `params/<bn>/bias`, `batch_stats/<bn>/mean`, `batch_stats/<bn>/var`.
Conv biases are kept one to one (the published BN-Inception has them before every BN).

Usage:
  python -m sta_cnn_jax.convert --kind=bninception --input=bn_inception.npz --output=acn.npz
  python -m sta_cnn_jax.convert --kind=flownets --input=flownets.npz --output=/abs/san_ckpt \
      --san_input=bninception   # conv1 rewritten for the ACN's BGR 0-255 input (RGB stream)

The output is an `.npz` (flat keys `params/conv1_7x7_s2/kernel`, ...) or, for any other
`--output`, an Orbax checkpoint directory holding {'params', 'batch_stats'}. The input
normalisation the weights expect is written beside it as `<output>.meta.json`.
`.pth`/`.pt`/`.tar` inputs need PyTorch (not a project dependency) and are read with
`torch.load(weights_only=True)`; `.npz` inputs are read with `allow_pickle=False`.
"""

import json
import os
import pathlib
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
from flax import traverse_util
import numpy as np

from sta_cnn_jax.models import bn_inception
from sta_cnn_jax.models import san

Array = np.ndarray
StateDict = Dict[str, Array]
Tree = Dict[str, Any]

# Layer tables come from the models (bn_inception.STEM / INCEPTION_BLOCKS, san.ENCODER_LAYERS);
# here we only add the input channels each conv sees, which the state dict shapes need.
BN_INCEPTION_IMAGENET_CLASSES = 1000
BN_SUFFIX = bn_inception.BN_SUFFIX
CLASSIFIER = 'fc'  # BNInception's classifier submodule
# Names the classifier has in the ports: Cadene `last_linear`, tsn-pytorch `new_fc`, TSN Caffe
# `fc-action` (after `-` -> `_`).
_CLASSIFIER_ALIASES = ('last_linear', 'new_fc', 'fc_action')
# Wrappers in saved training checkpoints: DataParallel `module.`, TSN `base_model.`,
# mmaction `backbone.`.
_WRAPPER_PREFIXES = ('module.', 'base_model.', 'backbone.')
# Caffe blob order (TSN's parse_caffe.py): conv 0 weight, 1 bias; BN 0 scale, 1 shift, 2 mean,
# 3 var.
_CAFFE_BLOB_FIELDS = {'0': 'weight', '1': 'bias', '2': 'running_mean', '3': 'running_var'}
_BN_FIELDS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
# PyTorch BatchNorm bookkeeping, not a weight.
_IGNORED_FIELDS = ('num_batches_tracked',)
BN_EPSILON = bn_inception.BN_EPSILON  # eps of every BatchNorm here (PyTorch default 1e-5).

# Input normalisation the weights expect (recorded in meta). BN-Inception (Caffe / TSN / Cadene
# `pretrained_settings`): BGR, 0-255, minus [104, 117, 128], std 1; TSN flow nets: minus 128.
BN_INCEPTION_INPUT = {'input_space': 'BGR', 'input_range': [0, 255],
                      'mean': [104.0, 117.0, 128.0], 'std': [1.0, 1.0, 1.0]}
TSN_FLOW_INPUT = {'input_range': [0, 255], 'mean': [128.0], 'std': [1.0]}
# FlowNetPytorch run_inference.py: RGB image / 255, minus [0.411, 0.432, 0.45], std 1; the two
# frames stacked on channels (6 ch); flow targets were divided by div_flow = 20.
FLOWNETS_INPUT = {'input_space': 'RGB', 'input_range': [0, 1],
                  'mean': [0.411, 0.432, 0.45], 'std': [1.0, 1.0, 1.0],
                  'frames': 'frame t RGB ++ frame t+1 RGB (6 channels)'}
FLOWNETS_DIV_FLOW = 20.0

# The two RGB frames of a snippet, stacked (FlowNetS input, SAN input).
FLOWNETS_IN_CHANNELS = 6
# FlowNetS decoder layers: not used by STA-CNN (its Expanded Part differs); reported as ignored.
_FLOWNETS_DECODER = re.compile(r'^(deconv\d|predict_flow\d|upsampled_flow\d_to_\d)\.')

KINDS = ('bninception', 'bninception_caffe', 'flownets')


class ConversionError(ValueError):
  """A state dict does not match the expected architecture (all problems listed at once)."""


# ----------------------------------------------------------------------------------------------
# Reading state dicts.
# ----------------------------------------------------------------------------------------------
def _torch_to_numpy(value) -> Optional[Array]:
  import torch  # pylint: disable=g-import-not-at-top
  if not isinstance(value, torch.Tensor):
    return None
  value = value.detach().cpu()
  if value.dtype == torch.bfloat16:
    value = value.float()
  return value.numpy()


def _load_torch(path: pathlib.Path) -> StateDict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(
        f'{path}: reading a PyTorch checkpoint needs the `torch` package, which is not a '
        'dependency of this project. Either `pip install torch` (CPU build) or convert the file '
        'once, where torch is installed, to .npz:\n'
        '  python -c "import torch, numpy as np; d = torch.load(\'IN.pth\', map_location=\'cpu\', '
        'weights_only=True); d = d.get(\'state_dict\', d); '
        'np.savez(\'OUT.npz\', **{k: v.float().numpy() for k, v in d.items() '
        'if hasattr(v, \'numpy\')})"\n'
        'and pass OUT.npz as --input.') from e
  try:
    obj = torch.load(str(path), map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f'{path}: torch.load(weights_only=True) failed ({e}); only plain '
                          'tensor state dicts are read, never pickled objects.') from e
  if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
    obj = obj['state_dict']  # training checkpoints: {'arch', 'state_dict', 'epoch', ...}
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: expected a state dict (name -> tensor), got {type(obj)}')
  out = {}
  for key, value in obj.items():
    array = _torch_to_numpy(value)
    if array is not None:
      out[str(key)] = array
  return out


def load_state_dict(path) -> StateDict:
  """Reads a state dict `name -> array` from `.npz` (numpy) or `.pth`/`.pt`/`.tar` (PyTorch).

  `.npz` is read with `allow_pickle=False`; PyTorch files with `torch.load(weights_only=True)`,
  only if torch is importable. Arbitrary pickled objects are never loaded. A training checkpoint
  `{'state_dict': {...}, ...}` is unwrapped.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConversionError(f'{path}: no such file')
  if path.suffix == '.npz':
    try:
      with np.load(path, allow_pickle=False) as data:
        state = {key: np.asarray(data[key]) for key in data.files}
    except Exception as e:  # pylint: disable=broad-except
      raise ConversionError(f'{path}: not a readable .npz of plain arrays ({e})') from e
  elif path.suffix in ('.pth', '.pt', '.tar', '.ckpt'):
    state = _load_torch(path)
  else:
    raise ConversionError(f'{path}: unknown weight file type {path.suffix!r}; use .npz, or '
                          '.pth/.pt/.pth.tar with torch installed')
  if not state:
    raise ConversionError(f'{path}: holds no arrays')
  return state


# ----------------------------------------------------------------------------------------------
# Layout helpers.
# ----------------------------------------------------------------------------------------------
def conv_kernel_to_flax(weight: Array) -> Array:
  """(O, I, kh, kw) PyTorch/Caffe kernel -> (kh, kw, I, O) Flax kernel (both cross-correlate)."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def dense_kernel_to_flax(weight: Array) -> Array:
  """(out, in) PyTorch/Caffe InnerProduct weight -> (in, out) Flax Dense kernel."""
  return np.ascontiguousarray(weight.T)


def _coerce(name: str, array: Array, expected: Tuple[int, ...], problems: List[str]) -> Array:
  """Returns `array` with shape `expected`, allowing only extra singleton axes (Caffe stores BN
  vectors as (1, C, 1, 1)); otherwise records a shape problem."""
  if tuple(array.shape) == tuple(expected):
    return array
  squeezed = tuple(d for d in array.shape if d != 1)
  if squeezed == tuple(d for d in expected if d != 1) and array.size == int(np.prod(expected)):
    return array.reshape(expected)
  problems.append(f'{name}: expected shape {tuple(expected)}, got {tuple(array.shape)}')
  return array


def _error(source: str, what: str, missing: Sequence[str], unexpected: Sequence[str],
           shapes: Sequence[str]) -> ConversionError:
  lines = [f'{source}: does not match {what}:']
  if missing:
    lines.append(f'  missing keys ({len(missing)}): ' + ', '.join(sorted(missing)))
  if unexpected:
    lines.append(f'  unexpected keys ({len(unexpected)}): ' + ', '.join(sorted(unexpected)))
  if shapes:
    lines.append(f'  shape mismatches ({len(shapes)}): ' + '; '.join(shapes))
  return ConversionError('\n'.join(lines))


# ----------------------------------------------------------------------------------------------
# BN-Inception.
# ----------------------------------------------------------------------------------------------
def bninception_conv_shapes(in_channels: int = 3) -> Dict[str, Tuple[int, int, int, int]]:
  """Every BN-Inception conv as `name -> (O, I, kh, kw)` in TSN naming (each has a `<name>_bn`).

  Input channels follow the concatenations of DESIGN.md §1b: a block outputs
  1x1 + 3x3 + double 3x3 + (pool projection, or the pass-through pool of stride-2 blocks).
  """
  convs = {}
  channels = in_channels
  for name, out, k, _ in bn_inception.STEM:
    convs[name] = (out, channels, k, k)
    channels = out
  for blk, c1, c3r, c3, cdr, cd, _, cpool, _ in bn_inception.INCEPTION_BLOCKS:
    p = f'inception_{blk}_'
    if c1:
      convs[p + '1x1'] = (c1, channels, 1, 1)
    convs[p + '3x3_reduce'] = (c3r, channels, 1, 1)
    convs[p + '3x3'] = (c3, c3r, 3, 3)
    convs[p + 'double_3x3_reduce'] = (cdr, channels, 1, 1)
    convs[p + 'double_3x3_1'] = (cd, cdr, 3, 3)
    convs[p + 'double_3x3_2'] = (cd, cd, 3, 3)
    if cpool:
      convs[p + 'pool_proj'] = (cpool, channels, 1, 1)
    channels = c1 + c3 + cd + (cpool or channels)
  if channels != bn_inception.FEATURE_DIM:
    raise AssertionError(f'convert.py: BN-Inception table ends with {channels} channels')
  return convs


def bninception_state_shapes(in_channels: int = 3,
                             num_classes: Optional[int] = BN_INCEPTION_IMAGENET_CLASSES
                             ) -> Dict[str, Tuple[int, ...]]:
  """The PyTorch state-dict keys and shapes of BN-Inception (tsn-pytorch / Cadene naming)."""
  shapes = {}
  for name, (out, cin, kh, kw) in bninception_conv_shapes(in_channels).items():
    shapes[f'{name}.weight'] = (out, cin, kh, kw)
    shapes[f'{name}.bias'] = (out,)
    for field in _BN_FIELDS:
      shapes[f'{name}{BN_SUFFIX}.{field}'] = (out,)
  if num_classes:
    shapes[f'{CLASSIFIER}.weight'] = (num_classes, bn_inception.FEATURE_DIM)
    shapes[f'{CLASSIFIER}.bias'] = (num_classes,)
  return shapes


def normalize_bninception_key(key: str) -> str:
  """Maps any published BN-Inception key spelling to tsn-pytorch/Cadene naming.

  `module.base_model.inception_3a/1x1_bn.running_mean` -> `inception_3a_1x1_bn.running_mean`
  (wrapper prefixes dropped; Caffe `/` and `-` -> `_` as in TSN's parse_caffe.py); Caffe blob
  indices `.0`..`.3` -> weight/bias/running_mean/running_var; classifier aliases -> `fc`.
  """
  stripped = True
  while stripped:
    stripped = False
    for prefix in _WRAPPER_PREFIXES:
      if key.startswith(prefix):
        key, stripped = key[len(prefix):], True
  layer, _, field = key.rpartition('.')
  if not layer:  # no field separator: a raw Caffe name like 'conv1/7x7_s2/0'
    layer, _, field = key.rpartition('/')
  layer = layer.replace('/', '_').replace('-', '_')
  field = _CAFFE_BLOB_FIELDS.get(field, field)
  if layer in _CLASSIFIER_ALIASES:
    layer = CLASSIFIER
  return f'{layer}.{field}'


def bninception_to_flax(state_dict: Mapping[str, Array], num_classes: Optional[int] = None,
                        drop_fc: bool = True, in_channels: Optional[int] = None,
                        input_space: str = 'BGR', kind: str = 'bninception',
                        source: str = '<state dict>') -> Tuple[Tree, Tree, Dict[str, Any]]:
  """Converts a BN-Inception state dict to Flax `(params, batch_stats, meta)` (ACN, §4.1).

  Args:
    state_dict: `name -> array` in any naming `normalize_bninception_key` understands.
    num_classes: with `drop_fc=False`, the classifier must have this many outputs.
    drop_fc: leave the ImageNet classifier out (the model initialises a new one, N(0, 0.001)).
    in_channels: conv1 input channels wanted. None keeps the checkpoint's (3 for ImageNet, 10
      for TSN flow nets); 10 from a 3-channel checkpoint applies TSN's cross-modality init
      (`bn_inception.cross_modality_init`).
    input_space: 'BGR' keeps the published kernels (input BGR 0-255 minus [104, 117, 128]);
      'RGB' reverses conv1's colour axis so the net takes RGB minus [128, 117, 104] (exactly the
      same function). RGB checkpoints only.
    kind: recorded in meta ('bninception' | 'bninception_caffe').
    source: file name used in error messages.

  Returns:
    params: `{'conv1_7x7_s2': {'kernel' (kh,kw,I,O), 'bias'}, 'conv1_7x7_s2_bn': {'scale',
      'bias'}, ..., 'fc': {'kernel' (1024, C), 'bias'}}` (no 'fc' when dropped);
    batch_stats: `{'<conv>_bn': {'mean', 'var'}}`;
    meta: input normalisation and what was imported (JSON-serialisable).

  Raises:
    ConversionError: listing every missing / unexpected key and every shape mismatch.
  """
  if input_space not in ('BGR', 'RGB'):
    raise ValueError(f'input_space must be BGR or RGB, got {input_space!r}')
  normalised: StateDict = {}
  originals: Dict[str, str] = {}
  ignored, duplicates = [], []
  for key, value in state_dict.items():
    new = normalize_bninception_key(key)
    if new.rpartition('.')[2] in _IGNORED_FIELDS:
      ignored.append(key)
      continue
    if new in normalised:
      duplicates.append(f'{key} (same as {originals[new]})')
      continue
    normalised[new], originals[new] = np.asarray(value), key

  dropped = []
  if drop_fc:  # the classifier is consumed, whatever its size, and not imported
    for field in ('weight', 'bias'):
      if normalised.pop(f'{CLASSIFIER}.{field}', None) is not None:
        dropped.append(originals[f'{CLASSIFIER}.{field}'])
  conv1 = normalised.get('conv1_7x7_s2.weight')
  ckpt_in = conv1.shape[1] if conv1 is not None and conv1.ndim == 4 else 3
  fc_weight = normalised.get(f'{CLASSIFIER}.weight')
  ckpt_classes = fc_weight.shape[0] if fc_weight is not None and fc_weight.ndim == 2 else None
  expected = bninception_state_shapes(
      ckpt_in, num_classes=None if drop_fc else (num_classes or ckpt_classes or
                                                 BN_INCEPTION_IMAGENET_CLASSES))

  missing = [k for k in expected if k not in normalised]
  unexpected = [f'{originals[k]}' + (f' (read as {k})' if originals[k] != k else '')
                for k in normalised if k not in expected]
  shape_problems: List[str] = []
  arrays = {k: _coerce(originals[k], normalised[k], shape, shape_problems)
            for k, shape in expected.items() if k in normalised}
  if missing or unexpected or shape_problems or duplicates:
    raise _error(source, f'BN-Inception ({kind})', missing, unexpected + duplicates,
                 shape_problems)

  params: Tree = {}
  batch_stats: Tree = {}
  for name in bninception_conv_shapes(ckpt_in):
    params[name] = {'kernel': conv_kernel_to_flax(arrays[f'{name}.weight']),
                    'bias': arrays[f'{name}.bias']}
    bn = name + BN_SUFFIX
    for field, (collection, flax_name) in _BN_FIELDS.items():
      target = params if collection == 'params' else batch_stats
      target.setdefault(bn, {})[flax_name] = arrays[f'{bn}.{field}']
  if not drop_fc:
    params[CLASSIFIER] = {'kernel': dense_kernel_to_flax(arrays[f'{CLASSIFIER}.weight']),
                          'bias': arrays[f'{CLASSIFIER}.bias']}

  conv1_name = bn_inception.STEM[0][0]
  if input_space == 'RGB':
    if ckpt_in != 3:
      raise ConversionError(f'{source}: input_space=RGB needs a 3-channel conv1, got {ckpt_in}')
    params[conv1_name]['kernel'] = np.ascontiguousarray(params[conv1_name]['kernel'][:, :, ::-1])
  target_in = in_channels or ckpt_in
  if target_in != ckpt_in:
    if ckpt_in != 3:
      raise ConversionError(f'{source}: conv1 has {ckpt_in} input channels; cannot make '
                            f'{target_in} (cross-modality init starts from 3 RGB channels)')
    params = bn_inception.cross_modality_init(params, target_in)  # TSN, mean over RGB

  params = _as_float32(params)
  batch_stats = _as_float32(batch_stats)
  if target_in == 3:
    norm = dict(BN_INCEPTION_INPUT)
    if input_space == 'RGB':
      norm.update(input_space='RGB', mean=norm['mean'][::-1])
  else:
    norm = dict(TSN_FLOW_INPUT)
  meta = {
      'kind': kind,
      'architecture': 'BN-Inception (TSN)',
      'normalisation': norm,
      'in_channels': int(target_in),
      'cross_modality_init': bool(target_in != ckpt_in),
      'bn_epsilon': BN_EPSILON,
      'conv_bias': 'kept (one to one, before BN)',
      'fc': ('dropped' if drop_fc else f'kept ({params[CLASSIFIER]["kernel"].shape[1]} classes)'),
      'ignored': sorted(ignored + dropped),
      'num_params': int(sum(a.size for a in traverse_util.flatten_dict(params).values())),
  }
  return params, batch_stats, meta


# ----------------------------------------------------------------------------------------------
# Input normalisation.
# ----------------------------------------------------------------------------------------------
_COLOUR_SPACES = ('RGB', 'BGR')
_PIXEL_MAX = 255.0  # 8-bit frames


def _per_channel(norm: Mapping[str, Any], field: str, channels: int) -> np.ndarray:
  values = np.asarray(norm[field], np.float64).reshape(-1)
  return np.broadcast_to(values, (channels,)) if values.size == 1 else values


def adapt_first_conv(kernel: Array, bias: Array, weights_norm: Mapping[str, Any],
                     input_norm: Mapping[str, Any]) -> Tuple[Array, Array]:
  """Rewrites a first conv trained on `weights_norm` inputs to take `input_norm` inputs.

  A normalisation maps an 8-bit pixel p of colour c to x = (p * r / 255 - mean) / std, with
  r = input_range[1] and the channels in `input_space` order ('RGB' / 'BGR'), repeated for
  stacked frames (I = 3 * frames). The weights expect x_w[c] = a_c x_in[pi(c)] + b_c for the
  model's actual input x_in, so kernel'[.., pi(c), o] = a_c kernel[.., c, o] and
  bias' = bias + sum_c b_c sum_hw kernel[.., c, o]. Exact away from the zero padding (within
  kernel // 2 pixels of the border the padded value differs: there it is 0 in x_in, b_c in x_w).

  Args:
    kernel: (kh, kw, I, O) Flax kernel, I a multiple of 3.
    bias: (O,).
    weights_norm / input_norm: dicts with 'input_space', 'input_range', 'mean', 'std'.

  Returns:
    (kernel', bias') for the model's input normalisation.
  """
  channels = kernel.shape[2]
  if channels % 3:
    raise ValueError(f'adapt_first_conv: {channels} input channels are not RGB frames')
  spaces = (weights_norm['input_space'], input_norm['input_space'])
  if any(space not in _COLOUR_SPACES for space in spaces):
    raise ValueError(f'adapt_first_conv: input_space must be RGB or BGR, got {spaces}')
  frames = channels // 3
  # pi(c): the input channel holding the colour the weights' channel c expects.
  colour_index = [input_norm['input_space'].index(colour) for colour in weights_norm['input_space']]
  perm = np.concatenate([np.asarray(colour_index) + 3 * f for f in range(frames)])
  scale_w = weights_norm['input_range'][1] / _PIXEL_MAX
  scale_in = input_norm['input_range'][1] / _PIXEL_MAX
  mean_w = np.tile(_per_channel(weights_norm, 'mean', 3), frames)
  std_w = np.tile(_per_channel(weights_norm, 'std', 3), frames)
  mean_in = np.tile(_per_channel(input_norm, 'mean', 3), frames)[perm]
  std_in = np.tile(_per_channel(input_norm, 'std', 3), frames)[perm]
  gain = scale_w * std_in / (scale_in * std_w)  # a_c
  offset = (scale_w * mean_in / scale_in - mean_w) / std_w  # b_c
  kernel = np.asarray(kernel, np.float64)
  new_kernel = np.zeros_like(kernel)
  new_kernel[:, :, perm, :] = kernel * gain[None, None, :, None]
  new_bias = np.asarray(bias, np.float64) + np.einsum('hwio,i->o', kernel, offset)
  return new_kernel.astype(np.float32), new_bias.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# FlowNetS.
# ----------------------------------------------------------------------------------------------
def flownets_encoder_shapes() -> Dict[str, Tuple[int, int, int, int]]:
  """FlowNetS encoder convs `name -> (O, I, kh, kw)` (san.ENCODER_LAYERS, FlowNetS widths)."""
  shapes, channels = {}, FLOWNETS_IN_CHANNELS
  for (name, k, _), out in zip(san.ENCODER_LAYERS, san.FLOWNETS_WIDTHS):
    shapes[name] = (out, channels, k, k)
    channels = out
  return shapes


def flownets_state_shapes(batch_norm: bool = False) -> Dict[str, Tuple[int, ...]]:
  """FlowNetPytorch encoder keys and shapes (`conv(...)` = Sequential(conv[, BN], LeakyReLU))."""
  shapes = {}
  for name, shape in flownets_encoder_shapes().items():
    shapes[f'{name}.0.weight'] = shape
    if batch_norm:
      for field in _BN_FIELDS:
        shapes[f'{name}.1.{field}'] = shape[:1]
    else:
      shapes[f'{name}.0.bias'] = shape[:1]
  return shapes


def _fold_batch_norm(weight: Array, scale: Array, shift: Array, mean: Array, var: Array
                     ) -> Tuple[Array, Array]:
  """conv (no bias) -> BN (eval) is one conv: f = g / sqrt(v + eps), w' = w f, b' = beta - m f."""
  factor = scale / np.sqrt(var + BN_EPSILON)
  return weight * factor[:, None, None, None], shift - mean * factor


def flownets_to_flax(state_dict: Mapping[str, Array], source: str = '<state dict>',
                     input_normalisation: Optional[Mapping[str, Any]] = None
                     ) -> Tuple[Tree, Dict[str, Any]]:
  """Converts a FlowNetPytorch FlowNetS state dict to the SAN encoder params (Fig. 4).

  Returns `(params, meta)` with `params = {'conv1': {'kernel' (7,7,6,64), 'bias'}, ...,
  'conv6_1': {...}}`. Decoder keys (deconv*, predict_flow*, upsampled_flow*) are not used by
  STA-CNN's Expanded Part and are listed in `meta['ignored']`. The `flownets_bn` variant
  (conv without bias + BatchNorm) is folded into conv kernel and bias (exact in eval mode).
  Note: STA-CNN's SAN runs conv6 with stride 1 (DESIGN.md §1); the 3x3 kernel imports unchanged.

  The RGB stream feeds the SAN the same normalised 6 channels as the ACN. With
  `input_normalisation` (e.g. `BN_INCEPTION_INPUT`: BGR 0-255 minus [104, 117, 128]) conv1 is
  rewritten by `adapt_first_conv` so the SAN takes that input instead of FlowNetS's own
  (RGB / 255 minus [0.411, 0.432, 0.45]); meta then records the adapted normalisation.

  Raises:
    ConversionError: listing every missing / unexpected key and every shape mismatch.
  """
  normalised: StateDict = {}
  originals: Dict[str, str] = {}
  ignored = []
  for key, value in state_dict.items():
    new = key
    while new.startswith('module.'):
      new = new[len('module.'):]
    if _FLOWNETS_DECODER.match(new) or new.rpartition('.')[2] in _IGNORED_FIELDS:
      ignored.append(key)
      continue
    normalised[new], originals[new] = np.asarray(value), key
  batch_norm = 'conv1.1.running_mean' in normalised
  expected = flownets_state_shapes(batch_norm)
  missing = [k for k in expected if k not in normalised]
  unexpected = [originals[k] for k in normalised if k not in expected]
  shape_problems: List[str] = []
  arrays = {k: _coerce(originals[k], normalised[k], shape, shape_problems)
            for k, shape in expected.items() if k in normalised}
  variant = 'FlowNetS-BN encoder' if batch_norm else 'FlowNetS encoder'
  if missing or unexpected or shape_problems:
    raise _error(source, variant, missing, unexpected, shape_problems)

  params: Tree = {}
  for name in flownets_encoder_shapes():
    weight = arrays[f'{name}.0.weight']
    if batch_norm:
      weight, bias = _fold_batch_norm(weight, *(arrays[f'{name}.1.{f}'] for f in _BN_FIELDS))
    else:
      bias = arrays[f'{name}.0.bias']
    params[name] = {'kernel': conv_kernel_to_flax(weight), 'bias': bias}
  norm = dict(FLOWNETS_INPUT)
  if input_normalisation is not None:
    first = next(iter(params))
    params[first]['kernel'], params[first]['bias'] = adapt_first_conv(
        params[first]['kernel'], params[first]['bias'], FLOWNETS_INPUT, input_normalisation)
    norm = dict(input_normalisation, frames=FLOWNETS_INPUT['frames'],
                adapted_from=dict(FLOWNETS_INPUT))
  params = _as_float32(params)
  meta = {
      'kind': 'flownets',
      'architecture': variant + ' (FlowNetPytorch), LeakyReLU 0.1 after each conv',
      'normalisation': norm,
      'div_flow': FLOWNETS_DIV_FLOW,
      'batch_norm_folded': batch_norm,
      'conv6_stride_note': 'SAN uses stride 1 for conv6 (kernel unchanged)',
      'ignored': sorted(ignored),
      'num_params': int(sum(a.size for a in traverse_util.flatten_dict(params).values())),
  }
  return params, meta


def _as_float32(tree: Tree) -> Tree:
  return traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(tree).items()})


# ----------------------------------------------------------------------------------------------
# Grafting into a STACNN variable tree.
# ----------------------------------------------------------------------------------------------
_COLLECTIONS = ('params', 'batch_stats')


def _is_collections(tree: Mapping[str, Any]) -> bool:
  """True for a variable dict `{'params': ..., 'batch_stats': ...}` (not a bare params tree)."""
  return bool(tree) and all(k in _COLLECTIONS for k in tree)


def _shape(leaf) -> Tuple[int, ...]:
  return tuple(getattr(leaf, 'shape', np.shape(leaf)))


def graft(params_tree: Mapping[str, Any], converted: Mapping[str, Any],
          prefix: Sequence[str] = ('acn',)) -> Dict[str, Any]:
  """Returns a copy of `params_tree` with the converted leaves placed under `prefix`.

  Either both trees are variable dicts `{'params': ..., 'batch_stats': ...}` (each collection of
  `converted` goes to the same collection of the target, under `prefix`), or both are plain
  params trees. Every converted leaf must exist in the target with the same shape; target leaves
  the converted tree does not cover (e.g. a new classifier, 'sal', 'aux_fc') are kept. Grafted
  leaves are numpy arrays in the target leaf's dtype (targets may be arrays or
  `jax.ShapeDtypeStruct`s from `jax.eval_shape`).

  Raises:
    ConversionError: listing each converted path absent from the target and each shape mismatch
      (expected = the model's shape, got = the converted one).
  """
  prefix = tuple(prefix)
  if _is_collections(params_tree) != _is_collections(converted):
    raise ConversionError(
        'graft: pass both as variable dicts {"params", "batch_stats"} or both as params trees '
        f'(model keys {sorted(params_tree)[:4]}, converted keys {sorted(converted)[:4]})')
  flat_target = traverse_util.flatten_dict(dict(params_tree))
  if _is_collections(converted):
    flat_source = {(col,) + prefix + path: value
                   for col, tree in converted.items()
                   for path, value in traverse_util.flatten_dict(dict(tree)).items()}
  else:
    flat_source = {prefix + path: value
                   for path, value in traverse_util.flatten_dict(dict(converted)).items()}
  absent, shapes = [], []
  for path, value in flat_source.items():
    name = '/'.join(path)
    if path not in flat_target:
      absent.append(name)
    elif _shape(flat_target[path]) != _shape(value):
      shapes.append(f'{name}: expected {_shape(flat_target[path])} (model), '
                    f'got {_shape(value)} (converted)')
  if absent or shapes:
    lines = ['graft: converted weights do not fit the model tree under '
             f'{"/".join(prefix) or "<root>"}:']
    if absent:
      lines.append(f'  not in the model ({len(absent)}): ' + ', '.join(sorted(absent)))
    if shapes:
      lines.append(f'  shape mismatches ({len(shapes)}): ' + '; '.join(shapes))
    raise ConversionError('\n'.join(lines))
  out = dict(flat_target)
  for path, value in flat_source.items():
    out[path] = np.asarray(value, dtype=flat_target[path].dtype)
  kept = [p for p in flat_target if prefix == tuple(
      p[1:] if _is_collections(params_tree) else p)[:len(prefix)] and p not in flat_source]
  if kept:
    logging.info('graft: %d leaves under %s kept from the model, e.g. %s', len(kept),
                 '/'.join(prefix), ', '.join('/'.join(p) for p in kept[:6]))
  return traverse_util.unflatten_dict(out)


# ----------------------------------------------------------------------------------------------
# Saving / loading converted weights.
# ----------------------------------------------------------------------------------------------
def meta_path(output) -> pathlib.Path:
  """`<output minus .npz>.meta.json`, beside the weights."""
  output = pathlib.Path(output)
  stem = output.name[:-len('.npz')] if output.name.endswith('.npz') else output.name
  return output.with_name(stem + '.meta.json')


def save_converted(output, variables: Mapping[str, Tree], meta: Mapping[str, Any]
                   ) -> pathlib.Path:
  """Writes `{'params', 'batch_stats'}` as `.npz` (keys 'params/conv1/kernel') or an Orbax dir,
  and the meta JSON beside it. Returns the meta path."""
  output = pathlib.Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  if output.suffix == '.npz':
    flat = traverse_util.flatten_dict({k: v for k, v in variables.items() if v}, sep='/')
    np.savez(output, **{k: np.asarray(v) for k, v in flat.items()})
  else:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(output.absolute(), {k: v for k, v in variables.items() if v})
    checkpointer.wait_until_finished()
  path = meta_path(output)
  path.write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + '\n')
  return path


def load_converted(path) -> Tuple[Dict[str, Tree], Dict[str, Any]]:
  """Reads what `save_converted` wrote: `({'params': ..., 'batch_stats': ...}, meta)`."""
  path = pathlib.Path(path)
  if path.suffix == '.npz':
    with np.load(path, allow_pickle=False) as data:
      variables = traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep='/')
  elif path.is_dir():
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    variables = ocp.StandardCheckpointer().restore(path.absolute())
  else:
    raise ConversionError(f'{path}: neither a converted .npz nor an Orbax checkpoint directory')
  meta_file = meta_path(path)
  meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
  return dict(variables), meta


# What the SAN's conv1 can be adapted to (`--san_input`): FlowNetS's own normalisation, or the
# ACN's (BN-Inception) so both networks of the RGB stream share one normalised input.
SAN_INPUTS = {'flownets': None, 'bninception': BN_INCEPTION_INPUT}


def convert_file(kind: str, input_path, output_path, num_classes: Optional[int] = None,
                 drop_fc: bool = True, in_channels: Optional[int] = None,
                 input_space: str = 'BGR', san_input: str = 'flownets') -> Dict[str, Any]:
  """Reads `input_path`, converts it as `kind`, writes `output_path` + meta. Returns meta."""
  if kind not in KINDS:
    raise ValueError(f'--kind must be one of {KINDS}, got {kind!r}')
  state = load_state_dict(input_path)
  source = str(input_path)
  if kind == 'flownets':
    if san_input not in SAN_INPUTS:
      raise ValueError(f'san_input must be one of {sorted(SAN_INPUTS)}, got {san_input!r}')
    params, meta = flownets_to_flax(state, source=source,
                                    input_normalisation=SAN_INPUTS[san_input])
    variables = {'params': params}
  else:
    params, batch_stats, meta = bninception_to_flax(
        state, num_classes=num_classes, drop_fc=drop_fc, in_channels=in_channels,
        input_space=input_space, kind=kind, source=source)
    variables = {'params': params, 'batch_stats': batch_stats}
  meta = dict(meta, source=os.path.basename(source),
              output_tree='san' if kind == 'flownets' else 'acn')
  save_converted(output_path, variables, meta)
  return meta


# ----------------------------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------------------------
def define_flags() -> None:
  """CLI flags, defined only when run as a program (importers keep their own flags)."""
  flags.DEFINE_enum('kind', None, list(KINDS), 'Which published weights the input holds.')
  flags.DEFINE_string('input', None, 'State dict: .npz, or .pth/.pt/.pth.tar with torch installed.')
  flags.DEFINE_string('output', None, 'OUT.npz, or a directory path for an Orbax checkpoint.')
  flags.DEFINE_integer('num_classes', None, 'With --nodrop_fc: required classifier size.')
  flags.DEFINE_bool('drop_fc', True, 'Leave out the ImageNet classifier (BN-Inception).')
  flags.DEFINE_integer('in_channels', None,
                       'conv1 input channels (10 = flow: TSN cross-modality init). Default: stored.')
  flags.DEFINE_enum('input_space', 'BGR', ['BGR', 'RGB'],
                    'RGB reverses conv1 colour axis so the ACN takes RGB (BN-Inception only).')
  flags.DEFINE_enum('san_input', 'flownets', sorted(SAN_INPUTS),
                    'FlowNetS only: normalisation the SAN will receive; "bninception" rewrites conv1 '
                    'for the ACN\'s BGR 0-255 minus [104, 117, 128] input (RGB stream shares it).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  try:
    meta = convert_file(f.kind, f.input, f.output, num_classes=f.num_classes, drop_fc=f.drop_fc,
                        in_channels=f.in_channels, input_space=f.input_space,
                        san_input=f.san_input)
  except ConversionError as e:
    raise SystemExit(f'error: {e}') from None
  print(json.dumps({'output': f.output, 'meta': str(meta_path(f.output)),
                    'num_params': meta['num_params'], 'ignored': len(meta['ignored'])}))


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['kind', 'input', 'output'])
  app.run(main)
