"""FlowNetS weights (the SAN's encoder, Fig. 4) as published -> the Flax params of models.san,
and the rewrite of a first conv for another input normalisation.

The widely used PyTorch FlowNetS checkpoint (ClementPinard/FlowNetPytorch,
`flownets_EPE1.951.pth.tar`) has keys `conv1.0.weight`, ..., `conv6_1.0.bias` (conv followed by
LeakyReLU 0.1) and a decoder (`deconv*`, `predict_flow*`, `upsampled_flow*`) that STA-CNN
replaces by its Expanded Part.
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from flax import traverse_util
import numpy as np

from sta_cnn_jax import state_dicts
from sta_cnn_jax.models import bn_inception
from sta_cnn_jax.models import san

Array = np.ndarray
StateDict = state_dicts.StateDict
Tree = state_dicts.Tree
BN_EPSILON = bn_inception.BN_EPSILON  # eps of every BatchNorm here (PyTorch default 1e-5).

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
      for field in state_dicts.BN_FIELDS:
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
  Note: STA-CNN's SAN runs conv6 with stride 1 (docs/design.md, "Interpretations"); the 3x3
  kernel imports unchanged.

  The RGB stream feeds the SAN the same normalised 6 channels as the ACN. With
  `input_normalisation` (e.g. `BN_INCEPTION_INPUT`: BGR 0-255 minus [104, 117, 128]) conv1 is
  rewritten by `adapt_first_conv` so the SAN takes that input instead of FlowNetS's own
  (RGB / 255 minus [0.411, 0.432, 0.45]); meta then records the adapted normalisation.

  Raises:
    state_dicts.ConversionError: listing every missing / unexpected key and every shape mismatch.
  """
  normalised: StateDict = {}
  originals: Dict[str, str] = {}
  ignored = []
  for key, value in state_dict.items():
    new = key
    while new.startswith('module.'):
      new = new[len('module.'):]
    if _FLOWNETS_DECODER.match(new) or new.rpartition('.')[2] in state_dicts.IGNORED_FIELDS:
      ignored.append(key)
      continue
    normalised[new], originals[new] = np.asarray(value), key
  batch_norm = 'conv1.1.running_mean' in normalised
  expected = flownets_state_shapes(batch_norm)
  missing = [k for k in expected if k not in normalised]
  unexpected = [originals[k] for k in normalised if k not in expected]
  shape_problems: List[str] = []
  arrays = {k: state_dicts.coerce(originals[k], normalised[k], shape, shape_problems)
            for k, shape in expected.items() if k in normalised}
  variant = 'FlowNetS-BN encoder' if batch_norm else 'FlowNetS encoder'
  if missing or unexpected or shape_problems:
    raise state_dicts.mismatch_error(source, variant, missing, unexpected, shape_problems)

  params: Tree = {}
  for name in flownets_encoder_shapes():
    weight = arrays[f'{name}.0.weight']
    if batch_norm:
      bn = (arrays[f'{name}.1.{f}'] for f in state_dicts.BN_FIELDS)
      weight, bias = _fold_batch_norm(weight, *bn)
    else:
      bias = arrays[f'{name}.0.bias']
    params[name] = {'kernel': state_dicts.conv_kernel_to_flax(weight), 'bias': bias}
  norm = dict(FLOWNETS_INPUT)
  if input_normalisation is not None:
    first = next(iter(params))
    params[first]['kernel'], params[first]['bias'] = adapt_first_conv(
        params[first]['kernel'], params[first]['bias'], FLOWNETS_INPUT, input_normalisation)
    norm = dict(input_normalisation, frames=FLOWNETS_INPUT['frames'],
                adapted_from=dict(FLOWNETS_INPUT))
  params = state_dicts.as_float32(params)
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
