"""UCF101 (101 classes), split 1 by default: `--config=configs/ucf101.py:<modality>,<row>`.

E.g. `configs/ucf101.py:rgb,sta_ts3x3_3x1` or `configs/ucf101.py:flow,tam_ts9_3`; rows and the
shared recipe are in configs/base.py.
"""

import ml_collections

from configs import base

NUM_CLASSES = 101  # UCF101 classInd.txt


def get_config(arg: str = 'rgb,sta_ts3x3_3x1') -> ml_collections.ConfigDict:
  return base.get_dataset_config(arg, 'ucf101', NUM_CLASSES, 'data/ucf101_split1')
