"""HMDB51 (51 classes), split 1 by default: `--config=configs/hmdb51.py:<modality>,<row>`.

Same recipe and rows as UCF101 (configs/base.py).
"""

import ml_collections

from configs import base

NUM_CLASSES = 51  # HMDB51 action classes


def get_config(arg: str = 'rgb,sta_ts3x3_3x1') -> ml_collections.ConfigDict:
  return base.get_dataset_config(arg, 'hmdb51', NUM_CLASSES, 'data/hmdb51_split1')
