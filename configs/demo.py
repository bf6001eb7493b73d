"""The MINIATURE recipe (demo and benchmarks/fidelity.py): STA-CNN from random weights on small
synthetic videos, in minutes on 2 CPU cores. Not the paper's network: the paper's rows are in
configs/ucf101.py and configs/hmdb51.py with the full BN-Inception.

`--config=configs/demo.py:<row>` or `configs/demo.py:<modality>,<row>` with the rows of
configs/base.py. Differences from the paper's recipe, each for speed or because training starts
from random weights (docs/miniature.md gives the measurements behind each choice):

- a NARROW BN-Inception (every conv at `WIDTH_MULTIPLIER` of its width) and a narrow SAN;
- 96x128 (HxW) frames and 96x96 crops, so the attention grid is K = 3 (K^2 = 9 locations);
- no partial BN (partial BN presumes ImageNet-initialised statistics) and PreciseBN after the
  last step (BN running averages lag far behind weights that move this fast);
- batch 16 videos (the demo: 8), Adam (SGD with momentum, the paper's, did not leave chance
  in the step budget from random weights), linear warm-up then cosine decay to 0;
- the SAL's Eq. 7 on layer-normalised features with weights shared over locations (named
  switches; the printed form stays available, see models/attention.py);
- lower dropout (0.5); test protocol kept (25 segments, DCW top-15) with the centre view only.
"""

import ml_collections

from configs import base

# Synthetic data set of data_prep.synthetic (the demo writes it to data_dir).
DATA_DIR = 'demo_out/data'
CROP_SIZE = 96
# Frames are 4:3 (HxW) with the crop's height: (96, 128) for 96-px crops.
FRAME_ASPECT = (3, 4)


def frame_size(crop_size: int) -> tuple[int, int]:
  """(H, W) of the synthetic frames for square crops of `crop_size` px (FRAME_ASPECT)."""
  return crop_size, crop_size * FRAME_ASPECT[1] // FRAME_ASPECT[0]


FRAME_SIZE = frame_size(CROP_SIZE)
# The synthetic videos the demo and benchmarks/fidelity.py generate: object side / frame height
# (data_prep.synthetic's default 0.15 is a 14-px object at 96 px, one the narrow network did not
# learn to find from random weights in the miniature's step budget; see docs/miniature.md).
OBJECT_FRACTION = 0.25
# data_prep.flow method of the miniature's shards: at 128x96 DIS FAST misses the 24-px object
# (docs/miniature.md); 'dis_fine' follows it.
FLOW_METHOD = 'dis_fine'
WIDTH_MULTIPLIER = 0.25
# Narrow SAN: ten conv widths conv1 .. conv6_1 (FlowNetS: 64 ... 1024).
SAN_WIDTHS = (16, 32, 32, 32, 64, 64, 64, 64, 128, 128)
# Per stream: (learning rate, training steps); batch BATCH_SIZE videos (docs/miniature.md).
SCHEDULE = {'rgb': (2e-3, 600), 'flow': (2e-3, 600)}
BATCH_SIZE = 16
# Adam with L2 weight decay added to the gradient: with the tiny data gradients of the first
# hundreds of steps the decay term dominates Adam's normalised update (docs/miniature.md).
WEIGHT_DECAY = 0.0
WARMUP_STEPS = 30
# Classifier init: TSN's N(0, 0.001) suits ImageNet features; from random weights it leaves the
# logits ~0 (loss = ln C) and the trunk without gradient for the first hundreds of steps.
FC_INIT_STD = 0.01
# Share of frames that show the object in the generated videos (data_prep.synthetic: 0.3).
EVIDENCE_FRACTION = 0.5
PRECISE_BN_BATCHES = 20


def _stream(modality: str) -> str:
  """The key of the per-stream tables (SCHEDULE, DEMO_STEPS): 'rgb' or 'flow' (flow and
  warped flow share the flow stream's values)."""
  return 'rgb' if modality == 'rgb' else 'flow'


def get_config(arg: str = 'rgb,sta_ts3x3_3x1') -> ml_collections.ConfigDict:
  modality, row = base.parse_arg(arg)
  config = base.get_base_config(modality)
  config.dataset = 'synthetic'
  config.data_dir = DATA_DIR
  config.num_classes = -1                       # from the synthetic manifest

  config.input.frame_size = FRAME_SIZE
  config.input.crop_size = CROP_SIZE
  config.input.shuffle_buffer = 256
  config.model.width_multiplier = WIDTH_MULTIPLIER
  config.model.san_widths = SAN_WIDTHS
  config.model.partial_bn = False
  # Every BN trains here, on small maps: 'matmul' gave the same one-core step and 6 s more
  # compile per run (docs/performance.md), so the miniature keeps flax's reductions.
  config.model.bn_batch_sums = 'reduce'
  config.model.dropout_rate = 0.5
  config.model.fc_init_std = FC_INIT_STD
  config.model.sal_weights = 'shared'
  config.model.sal_normalisation = 'layer_norm'

  learning_rate, steps = SCHEDULE[_stream(modality)]
  config.batch_size = BATCH_SIZE
  config.weight_decay = WEIGHT_DECAY
  config.learning_rate = learning_rate
  config.optimizer = 'adam'
  config.lr_schedule = 'cosine'
  config.warmup_steps = WARMUP_STEPS
  config.num_train_steps = steps
  config.grad_clip_norm = 20.0
  config.precise_bn.num_batches = PRECISE_BN_BATCHES
  # Algorithm 1's selection, back-propagated through the selected snippets only (~0.6x the
  # step time; tests/test_recompute.py: same loss and gradients as the masked form when BN
  # uses running statistics). The recipe was chosen with it (docs/miniature.md).
  config.temporal.tam_backward = 'recompute'

  config.eval.num_views = 1
  config.eval.cell_evidence = True               # mechanism metrics (100-ish test videos)
  config.eval.batch_size = 8

  config.checkpoint.every_steps = 100
  config.checkpoint.keep = 2
  config.log_every_steps = 25

  config.san_pretrain.num_steps = 200
  config.san_pretrain.batch_size = 8
  config.san_pretrain.num_segments = 2
  config.san_pretrain.learning_rate = 1e-3
  config.san_pretrain.checkpoint_every_steps = 200
  return base.apply_row(config, row)


# `python -m sta_cnn_jax.demo` must finish in ~6 minutes on 2 CPU cores, its two streams side by
# side (sta_cnn_jax/job_pool.py): the RGB run waits for the SAN pre-training, so it trains fewer
# steps than the flow run. On a validation draw of the demo's data (--seed=1) 300 steps a stream
# gave RGB 40%, flow 25% DCW (35% AVE), fusion 65% (chance 10%, 40 videos; docs/miniature.md).
DEMO_STEPS = {'rgb': 200, 'flow': 300}
DEMO_SAN_STEPS = 50
DEMO_BATCH_SIZE = 8
DEMO_PRECISE_BN_BATCHES = 10


def get_demo_config(arg: str = 'rgb,sta_ts3x3_3x1') -> ml_collections.ConfigDict:
  """get_config(arg) shortened for the demo (fewer steps, batch 8)."""
  config = get_config(arg)
  config.num_train_steps = DEMO_STEPS[_stream(config.modality)]
  config.batch_size = DEMO_BATCH_SIZE
  config.san_pretrain.num_steps = DEMO_SAN_STEPS
  config.san_pretrain.checkpoint_every_steps = DEMO_SAN_STEPS
  config.precise_bn.num_batches = DEMO_PRECISE_BN_BATCHES
  return config


def run_config(modality: str, row: str, data_dir: str, seed: int = 0, steps: int = 0,
               demo: bool = False, san_steps: int = 0,
               crop_size: int = 0) -> ml_collections.ConfigDict:
  """The config of one run of the demo (`demo=True`) or of benchmarks/fidelity.py: shards in
  data_dir, a seed, optionally other step counts (training; SAN pre-training) and another crop
  size (`crop_size`, frames of `frame_size(crop_size)`: 128 gives the K = 4 grid). The
  pre-trained SAN of an RGB row with spatial attention is set when it exists
  (experiment.train_and_score's `san`)."""
  config = (get_demo_config if demo else get_config)(f'{modality},{row}')
  config.data_dir = data_dir
  config.seed = seed
  if crop_size:
    config.input.crop_size = crop_size
    config.input.frame_size = frame_size(crop_size)
  if steps:
    config.num_train_steps = steps
  if san_steps:
    config.san_pretrain.num_steps = san_steps
  return config
