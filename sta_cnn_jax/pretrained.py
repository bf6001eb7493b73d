"""Pretrained weights into a new STA-CNN: grafting converted ImageNet BN-Inception weights under
'acn' (TSN's cross-modality init for flow streams) and a pretrained SAN under 'san'.

Sources: the output of `python -m sta_cnn_jax.convert` (state_dicts.save_converted) or an
inference export (checkpoints.export_inference, e.g. of --mode=pretrain_san). Used by
train.init_variables (config.init.acn_weights / san_weights).
"""

import os
from typing import Any, Dict, Mapping, Sequence, Tuple

from absl import logging
from flax import traverse_util
import numpy as np

from sta_cnn_jax import checkpoints
from sta_cnn_jax import state_dicts
from sta_cnn_jax.models import bn_inception

def _is_collections(tree: Mapping[str, Any]) -> bool:
  """True for a variable dict `{'params': ..., 'batch_stats': ...}` (not a bare params tree)."""
  return bool(tree) and all(k in checkpoints.COLLECTIONS for k in tree)


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
    state_dicts.ConversionError: listing each converted path absent from the target and each
      shape mismatch (expected = the model's shape, got = the converted one).
  """
  prefix = tuple(prefix)
  if _is_collections(params_tree) != _is_collections(converted):
    raise state_dicts.ConversionError(
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
    raise state_dicts.ConversionError('\n'.join(lines))
  out = dict(flat_target)
  for path, value in flat_source.items():
    out[path] = np.asarray(value, dtype=flat_target[path].dtype)
  kept = [p for p in flat_target if prefix == tuple(
      p[1:] if _is_collections(params_tree) else p)[:len(prefix)] and p not in flat_source]
  if kept:
    logging.info('graft: %d leaves under %s kept from the model, e.g. %s', len(kept),
                 '/'.join(prefix), ', '.join('/'.join(p) for p in kept[:6]))
  return traverse_util.unflatten_dict(out)


def _load_weights(path: str) -> dict:
  """{'params', 'batch_stats'} from an inference export dir or a convert.py output."""
  if os.path.isfile(os.path.join(path, checkpoints.CONFIG_JSON)):
    variables, _ = checkpoints.load_inference(path)
  else:
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: weights not found (expected a convert.py .npz / Orbax '
                              'directory or an export_inference directory)')
    variables, _ = state_dicts.load_converted(path)
  return {k: v for k, v in variables.items() if k in checkpoints.COLLECTIONS and v}


def graft_san_weights(variables: Mapping[str, Any], path: str) -> dict:
  """Replaces variables['params']['san'] with a pretrained SAN (--mode=pretrain_san export or
  convert.py --kind=flownets). Paths or shapes that do not fit raise, naming them."""
  if 'san' not in variables.get('params', {}):
    raise ValueError(f'init.san_weights={path!r} given but the model has no SAN '
                     '(RGB stream with model.spatial_attention=True only)')
  source = _load_weights(path)
  source = {'params': source['params']}
  logging.info('grafting SAN weights from %s', path)
  return graft(dict(variables), source, prefix=('san',))


def graft_acn_weights(variables: Mapping[str, Any], path: str, modality: str,
                      cross_modality: bool = True) -> dict:
  """Places converted ImageNet BN-Inception weights under 'acn'.

  The ImageNet classifier 'fc' is dropped when its shape differs from the model's (new
  classes keep their N(0, 0.001) init). For flow streams a 3-channel conv1 is turned into a
  10-channel one by TSN's cross-modality initialisation (mean over RGB, replicated) when
  `cross_modality`; otherwise the mismatch is reported.
  """
  source = _load_weights(path)
  target_params = variables['params']['acn']
  params = dict(source['params'])
  if 'fc' in params and (np.shape(params['fc']['kernel'])
                         != tuple(target_params['fc']['kernel'].shape)):
    logging.info('graft: dropping the pretrained classifier fc %s',
                 np.shape(params['fc']['kernel']))
    params.pop('fc')
  source_stats = dict(source.get('batch_stats', {}))
  conv1 = bn_inception.STEM[0][0]
  want = target_params[conv1]['kernel'].shape[2]
  have = np.shape(params[conv1]['kernel'])[2] if conv1 in params else want
  if have != want and modality != 'rgb' and cross_modality:
    logging.info('graft: cross-modality init of %s (%d -> %d input channels)', conv1, have, want)
    params = dict(bn_inception.cross_modality_init(params, in_channels=want))
  source = {'params': params}
  if source_stats:
    source['batch_stats'] = source_stats
  logging.info('grafting ACN weights from %s', path)
  return graft(dict(variables), source, prefix=('acn',))
