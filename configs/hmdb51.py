"""HMDB51 (51 classes), split 1 by default: `--config=configs/hmdb51.py:<modality>,<row>`.

Same recipe and rows as UCF101 (configs/base.py).
"""

import ml_collections

from configs import base

NUM_CLASSES = 51  # HMDB51 action classes


def get_config(arg: str = 'rgb,sta_ts3x3_3x1') -> ml_collections.ConfigDict:
  modality, row = base.parse_arg(arg)
  config = base.get_base_config(modality)
  config.dataset = 'hmdb51'
  config.num_classes = NUM_CLASSES
  config.data_dir = 'data/hmdb51_split1'
  return base.apply_row(config, row)
