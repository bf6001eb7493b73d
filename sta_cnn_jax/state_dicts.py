"""Published weights as state dicts: reading them (.npz, or PyTorch with torch installed), the
layout changes PyTorch / Caffe -> Flax, the error that lists every mismatch, and the files
`convert` writes (an .npz or Orbax directory of {'params', 'batch_stats'} and its meta JSON).

Layouts: PyTorch/Caffe conv weights are (O, I, kh, kw) cross-correlation kernels; Flax `nn.Conv`
kernels are (kh, kw, I, O) and also cross-correlate, so the import is a transpose (no flip).
Dense weights (out, in) become (in, out). BatchNorm weight/bias/running_mean/running_var become
`params/<bn>/scale`, `params/<bn>/bias`, `batch_stats/<bn>/mean`, `batch_stats/<bn>/var`.
"""

import json
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from flax import traverse_util
import numpy as np

Array = np.ndarray
StateDict = Dict[str, Array]
Tree = Dict[str, Any]

BN_FIELDS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
# PyTorch BatchNorm bookkeeping, not a weight.
IGNORED_FIELDS = ('num_batches_tracked',)


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


def coerce(name: str, array: Array, expected: Tuple[int, ...], problems: List[str]) -> Array:
  """Returns `array` with shape `expected`, allowing only extra singleton axes (Caffe stores BN
  vectors as (1, C, 1, 1)); otherwise records a shape problem."""
  if tuple(array.shape) == tuple(expected):
    return array
  squeezed = tuple(d for d in array.shape if d != 1)
  if squeezed == tuple(d for d in expected if d != 1) and array.size == int(np.prod(expected)):
    return array.reshape(expected)
  problems.append(f'{name}: expected shape {tuple(expected)}, got {tuple(array.shape)}')
  return array


def mismatch_error(source: str, what: str, missing: Sequence[str], unexpected: Sequence[str],
           shapes: Sequence[str]) -> ConversionError:
  lines = [f'{source}: does not match {what}:']
  if missing:
    lines.append(f'  missing keys ({len(missing)}): ' + ', '.join(sorted(missing)))
  if unexpected:
    lines.append(f'  unexpected keys ({len(unexpected)}): ' + ', '.join(sorted(unexpected)))
  if shapes:
    lines.append(f'  shape mismatches ({len(shapes)}): ' + '; '.join(shapes))
  return ConversionError('\n'.join(lines))


def as_float32(tree: Tree) -> Tree:
  return traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(tree).items()})


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
