"""BN-Inception weights (the ACN, pretrained on ImageNet; §3.3, §4.1) as published -> the
Flax variables of models.bn_inception.

The weights users have are TSN's Caffe model (layer names `conv1/7x7_s2`,
`inception_3a/1x1_bn`, ..., `fc` / `fc-action`), its PyTorch ports (tsn-pytorch's
`tf_model_zoo` loader, Cadene's `pretrainedmodels`: `conv1_7x7_s2.weight`,
`inception_3a_1x1_bn.running_mean`, ..., `fc` / `last_linear`) and trained TSN checkpoints
(`module.base_model.*`, `module.new_fc.*`). Conv biases are kept one to one (the published
BN-Inception has them before every BN).
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

from flax import traverse_util
import numpy as np

from sta_cnn_jax import modalities
from sta_cnn_jax import state_dicts
from sta_cnn_jax.models import bn_inception

Array = np.ndarray
StateDict = state_dicts.StateDict
Tree = state_dicts.Tree

# Layer tables come from the models (bn_inception.STEM / INCEPTION_BLOCKS); here we only add
# the input channels each conv sees, which the state dict shapes need.
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
BN_EPSILON = bn_inception.BN_EPSILON  # eps of every BatchNorm here (PyTorch default 1e-5).

# Input normalisation the weights expect (recorded in meta). BN-Inception (Caffe / TSN / Cadene
# `pretrained_settings`): BGR, 0-255, minus [104, 117, 128], std 1; TSN flow nets: minus 128.
BN_INCEPTION_INPUT = {'input_space': 'BGR', 'input_range': [0, 255],
                      'mean': list(modalities.CAFFE_BGR_MEAN),
                      'std': list(modalities.CAFFE_RGB_STD)}
TSN_FLOW_INPUT = {'input_range': [0, 255], 'mean': [modalities.FLOW_MEAN],
                  'std': [modalities.FLOW_STD]}


# ----------------------------------------------------------------------------------------------
# BN-Inception.
# ----------------------------------------------------------------------------------------------
def bninception_conv_shapes(in_channels: int = 3) -> Dict[str, Tuple[int, int, int, int]]:
  """Every BN-Inception conv as `name -> (O, I, kh, kw)` in TSN naming (each has a `<name>_bn`).

  Input channels follow the concatenations of bn_inception.INCEPTION_BLOCKS: a block outputs
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
    for field in state_dicts.BN_FIELDS:
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
    state_dicts.ConversionError: listing every missing / unexpected key and every shape mismatch.
  """
  if input_space not in ('BGR', 'RGB'):
    raise ValueError(f'input_space must be BGR or RGB, got {input_space!r}')
  normalised: StateDict = {}
  originals: Dict[str, str] = {}
  ignored, duplicates = [], []
  for key, value in state_dict.items():
    new = normalize_bninception_key(key)
    if new.rpartition('.')[2] in state_dicts.IGNORED_FIELDS:
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
  arrays = {k: state_dicts.coerce(originals[k], normalised[k], shape, shape_problems)
            for k, shape in expected.items() if k in normalised}
  if missing or unexpected or shape_problems or duplicates:
    raise state_dicts.mismatch_error(source, f'BN-Inception ({kind})', missing,
                                     unexpected + duplicates, shape_problems)

  params: Tree = {}
  batch_stats: Tree = {}
  for name in bninception_conv_shapes(ckpt_in):
    params[name] = {'kernel': state_dicts.conv_kernel_to_flax(arrays[f'{name}.weight']),
                    'bias': arrays[f'{name}.bias']}
    bn = name + BN_SUFFIX
    for field, (collection, flax_name) in state_dicts.BN_FIELDS.items():
      target = params if collection == 'params' else batch_stats
      target.setdefault(bn, {})[flax_name] = arrays[f'{bn}.{field}']
  if not drop_fc:
    fc_kernel = state_dicts.dense_kernel_to_flax(arrays[f'{CLASSIFIER}.weight'])
    params[CLASSIFIER] = {'kernel': fc_kernel, 'bias': arrays[f'{CLASSIFIER}.bias']}

  conv1_name = bn_inception.STEM[0][0]
  if input_space == 'RGB':
    if ckpt_in != 3:
      raise state_dicts.ConversionError(
          f'{source}: input_space=RGB needs a 3-channel conv1, got {ckpt_in}')
    params[conv1_name]['kernel'] = np.ascontiguousarray(params[conv1_name]['kernel'][:, :, ::-1])
  target_in = in_channels or ckpt_in
  if target_in != ckpt_in:
    if ckpt_in != 3:
      raise state_dicts.ConversionError(
          f'{source}: conv1 has {ckpt_in} input channels; cannot make {target_in} '
          '(cross-modality init starts from 3 RGB channels)')
    params = bn_inception.cross_modality_init(params, target_in)  # TSN, mean over RGB

  params = state_dicts.as_float32(params)
  batch_stats = state_dicts.as_float32(batch_stats)
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
