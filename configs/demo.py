"""Demo: the full code path, small enough for 2 CPU cores (~1-2 minutes of training per model).

`--config=configs/demo.py:<row>` or `configs/demo.py:<modality>,<row>` with the rows of
configs/base.py (the demo runs `baseline` and the STA rows). Differences from the paper's
recipe, all for speed or because the demo starts from random weights on synthetic data:

- 96x128 (HxW) frames, 64x64 crops (BN-Inception / SAN grid K = 2), a narrow SAN;
- a small batch, a fixed short schedule (num_train_steps) with a higher learning rate;
- no partial BN: with random init the frozen BN statistics (mean 0, var 1) would be
  meaningless, so every BN trains (partial BN presumes ImageNet-initialised statistics);
- lower dropout (the tiny data set is learnt in a few dozen steps).
The test protocol (25 segments, DCW top-15) is kept; views are the centre crop only.
"""

import ml_collections

from configs import base

# Synthetic data set of data_prep.synthetic (the demo writes it to data_dir).
DATA_DIR = 'demo_out/data'
FRAME_SIZE = (96, 128)
CROP_SIZE = 64
# Narrow SAN: ten conv widths conv1 .. conv6_1 (FlowNetS: 64 ... 1024).
SAN_WIDTHS = (16, 32, 32, 32, 64, 64, 64, 64, 128, 128)


def get_config(arg: str = 'rgb,sta_ts3x3_3x1') -> ml_collections.ConfigDict:
  modality, row = base.parse_arg(arg)
  config = base.get_base_config(modality)
  config.dataset = 'synthetic'
  config.data_dir = DATA_DIR
  config.num_classes = -1                       # from the synthetic manifest

  config.input.frame_size = FRAME_SIZE
  config.input.crop_size = CROP_SIZE
  config.input.shuffle_buffer = 64
  config.model.san_widths = SAN_WIDTHS
  config.model.partial_bn = False
  config.model.dropout_rate = 0.5

  config.batch_size = 4
  config.learning_rate = 0.01
  config.num_epochs = 30
  config.lr_decay_epochs = 20
  config.num_train_steps = 60
  config.grad_clip_norm = 20.0

  config.eval.num_views = 1
  config.eval.batch_size = 4

  config.checkpoint.every_steps = 30
  config.checkpoint.keep = 1
  config.log_every_steps = 10

  config.san_pretrain.num_steps = 30
  config.san_pretrain.batch_size = 4
  config.san_pretrain.num_segments = 2
  config.san_pretrain.learning_rate = 1e-3
  config.san_pretrain.checkpoint_every_steps = 30
  return base.apply_row(config, row)
