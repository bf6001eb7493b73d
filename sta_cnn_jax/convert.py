r"""CLI: imports published PyTorch / Caffe weights into the STA-CNN variable tree.

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

The conversions are library modules this CLI only calls: bninception_weights.py,
flownets_weights.py, state_dicts.py (reading state dicts, layouts, the output files); grafting
the output into a model is pretrained.py.

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
from typing import Any, Dict, Optional, Sequence

from absl import app
from absl import flags

from sta_cnn_jax import bninception_weights
from sta_cnn_jax import flownets_weights
from sta_cnn_jax import state_dicts

KINDS = ('bninception', 'bninception_caffe', 'flownets')


# What the SAN's conv1 can be adapted to (`--san_input`): FlowNetS's own normalisation, or the
# ACN's (BN-Inception) so both networks of the RGB stream share one normalised input.
SAN_INPUTS = {'flownets': None, 'bninception': bninception_weights.BN_INCEPTION_INPUT}


def convert_file(kind: str, input_path, output_path, num_classes: Optional[int] = None,
                 drop_fc: bool = True, in_channels: Optional[int] = None,
                 input_space: str = 'BGR', san_input: str = 'flownets') -> Dict[str, Any]:
  """Reads `input_path`, converts it as `kind`, writes `output_path` + meta. Returns meta."""
  if kind not in KINDS:
    raise ValueError(f'--kind must be one of {KINDS}, got {kind!r}')
  state = state_dicts.load_state_dict(input_path)
  source = str(input_path)
  if kind == 'flownets':
    if san_input not in SAN_INPUTS:
      raise ValueError(f'san_input must be one of {sorted(SAN_INPUTS)}, got {san_input!r}')
    params, meta = flownets_weights.flownets_to_flax(state, source=source,
                                    input_normalisation=SAN_INPUTS[san_input])
    variables = {'params': params}
  else:
    params, batch_stats, meta = bninception_weights.bninception_to_flax(
        state, num_classes=num_classes, drop_fc=drop_fc, in_channels=in_channels,
        input_space=input_space, kind=kind, source=source)
    variables = {'params': params, 'batch_stats': batch_stats}
  meta = dict(meta, source=os.path.basename(source),
              output_tree='san' if kind == 'flownets' else 'acn')
  state_dicts.save_converted(output_path, variables, meta)
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
  except state_dicts.ConversionError as e:
    raise SystemExit(f'error: {e}') from None
  print(json.dumps({'output': f.output, 'meta': str(state_dicts.meta_path(f.output)),
                    'num_params': meta['num_params'], 'ignored': len(meta['ignored'])}))


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['kind', 'input', 'output'])
  app.run(main)
