"""Shared STA-CNN training recipe (paper §4.1, TSN where the paper is silent;
docs/design.md, "Interpretations").

Every hyper-parameter the code reads is named here. Dataset files (ucf101.py, hmdb51.py, demo.py)
call `get_base_config(modality)` and `apply_row(config, row)`; a config is selected on the command
line as `--config=configs/ucf101.py:<modality>,<row>`, e.g. `configs/ucf101.py:rgb,sta_ts3x3_3x1`.

Rows (Tables 1-3, Fig. 6 of the paper). `N` = temporal.num_segments, `M` =
temporal.snippets_per_segment, `top_n` = temporal.top_n (top_m when M > 1):

  baseline        BN-Inception, TS(1, 1): one snippet per video, no attention.
  tsn3            TSN: N = 3, averaged logits (segmental consensus), no attention.
  tam_ts<N>_<k>   TAM-TS(N, k): N segments, the k most confident snippets get gradient (Alg. 1).
  tam_ts3x3_3x<k> TAM-TS(3×3, 3×k): 3 segments × 3 snippets, top-k inside each segment.
  sam_cnn1        SAM-CNN1: N = 1, spatial attention + auxiliary loss (Eq. 10).
  sam_cnn2        SAM-CNN2: N = 3 averaged, spatial attention, no auxiliary loss.
  sam_cnn3        SAM-CNN3: N = 3 averaged, spatial attention + auxiliary loss.
  sta_ts6_1, sta_ts9_3, sta_ts3x3_3x1   STA-CNN: both attentions (+ auxiliary loss).
"""

import dataclasses

import ml_collections

from sta_cnn_jax import modalities

MODALITIES = modalities.MODALITIES


@dataclasses.dataclass(frozen=True)
class Row:
  """One experiment row: its temporal strategy and attention switches (the config fields)."""
  num_segments: int                # N: temporal.num_segments
  snippets_per_segment: int        # M: temporal.snippets_per_segment
  top_n: int                       # temporal.top_n (top_m per segment when M > 1)
  consensus: str                   # temporal.consensus: 'tam' (Algorithm 1) | 'average' (TSN)
  paper_name: str                  # row_name
  spatial_attention: bool = False  # model.spatial_attention (SAL + WSP, Eq. 7-9)
  aux_classifier: bool = False     # model.aux_classifier (Eq. 5-6, the λ term of Eq. 10)


ROWS = {
    'baseline': Row(1, 1, 1, 'average', 'BN-Inception TS(1,1)'),
    'tsn3': Row(3, 1, 3, 'average', 'TSN N=3 (average)'),
    'tam_ts3_1': Row(3, 1, 1, 'tam', 'TAM-TS(3,1)'),
    'tam_ts6_1': Row(6, 1, 1, 'tam', 'TAM-TS(6,1)'),
    'tam_ts9_1': Row(9, 1, 1, 'tam', 'TAM-TS(9,1)'),
    'tam_ts9_3': Row(9, 1, 3, 'tam', 'TAM-TS(9,3)'),
    'tam_ts9_6': Row(9, 1, 6, 'tam', 'TAM-TS(9,6)'),
    'tam_ts9_9': Row(9, 1, 9, 'tam', 'TAM-TS(9,9)'),
    'tam_ts3x3_3x1': Row(3, 3, 1, 'tam', 'TAM-TS(3x3,3x1)'),
    'tam_ts3x3_3x2': Row(3, 3, 2, 'tam', 'TAM-TS(3x3,3x2)'),
    'tam_ts3x3_3x3': Row(3, 3, 3, 'tam', 'TAM-TS(3x3,3x3)'),
    'sam_cnn1': Row(1, 1, 1, 'average', 'SAM-CNN1', spatial_attention=True, aux_classifier=True),
    'sam_cnn2': Row(3, 1, 3, 'average', 'SAM-CNN2', spatial_attention=True),
    'sam_cnn3': Row(3, 1, 3, 'average', 'SAM-CNN3', spatial_attention=True, aux_classifier=True),
    'sta_ts6_1': Row(6, 1, 1, 'tam', 'STA-TS(6,1)', spatial_attention=True, aux_classifier=True),
    'sta_ts9_3': Row(9, 1, 3, 'tam', 'STA-TS(9,3)', spatial_attention=True, aux_classifier=True),
    'sta_ts3x3_3x1': Row(3, 3, 1, 'tam', 'STA-TS(3x3,3x1)', spatial_attention=True,
                         aux_classifier=True),
}

# Paper §4.1 (RGB: lr 1e-3 ÷10 every 20 epochs, 50 epochs; flow: lr 5e-3 ÷10 every 120 epochs,
# 300 epochs); TSN: dropout 0.8 RGB / 0.7 flow, Caffe gradient clip 40 RGB / 20 flow.
_RECIPE = {
    'rgb': dict(learning_rate=1e-3, lr_decay_epochs=20, num_epochs=50, dropout_rate=0.8,
                grad_clip_norm=40.0),
    'flow': dict(learning_rate=5e-3, lr_decay_epochs=120, num_epochs=300, dropout_rate=0.7,
                 grad_clip_norm=20.0),
}

# TSN multi-scale crop scales (tsn-pytorch GroupMultiScaleCrop): RGB and flow.
_SCALES = {'rgb': (1.0, 0.875, 0.75, 0.66), 'flow': (1.0, 0.875, 0.75)}


def _recipe_key(modality: str) -> str:
  return 'flow' if modalities.is_flow(modality) else 'rgb'


def parse_arg(arg: str, default_modality: str = 'rgb') -> tuple[str, str]:
  """'<modality>,<row>' (or just '<row>') -> (modality, row); ValueError names what is allowed."""
  parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
  if len(parts) == 1:
    parts = [default_modality] + parts
  if len(parts) != 2:
    raise ValueError(f"config argument {arg!r}: expected '<modality>,<row>' with modality in "
                     f"{MODALITIES} and row in {sorted(ROWS)}")
  modality, row = parts
  if modality not in MODALITIES:
    raise ValueError(f"config argument {arg!r}: unknown modality {modality!r}; "
                     f"expected one of {MODALITIES}")
  if row not in ROWS:
    raise ValueError(f"config argument {arg!r}: unknown row {row!r}; "
                     f"expected one of {sorted(ROWS)}")
  return modality, row


def get_base_config(modality: str = 'rgb') -> ml_collections.ConfigDict:
  """The shared recipe for one stream; dataset files fill in the dataset fields."""
  if modality not in MODALITIES:
    raise ValueError(f'unknown modality {modality!r}; expected one of {MODALITIES}')
  recipe = _RECIPE[_recipe_key(modality)]
  config = ml_collections.ConfigDict()

  # Dataset (TFRecord shards written by data_prep; docs/design.md, "Shard format").
  config.dataset = ''
  config.data_dir = ''               # folder holding manifest.json and <split>-*.tfrecord
  config.split = 1                   # official split 1-3 (recorded; the shards hold one split)
  config.train_split = 'train'
  config.eval_split = 'test'
  config.num_classes = -1            # -1: read from manifest.json
  config.modality = modality
  config.row = ''
  config.row_name = ''               # paper name of the row, e.g. 'STA-TS(3x3,3x1)'

  # Model (models.STACNN).
  config.model = ml_collections.ConfigDict()
  config.model.spatial_attention = False
  config.model.aux_classifier = False
  config.model.dropout_rate = recipe['dropout_rate']
  config.model.partial_bn = True     # TSN: only the first BN trains (batch statistics)
  config.model.san_widths = ml_collections.FieldReference(None, field_type=tuple)  # None = FlowNetS
  config.model.wsp_normalisation = 'softmax'   # Eq. 9: 'softmax' (uniform map == GAP) or 'paper' (1/K²)
  config.model.sal_weights = 'per_location'    # Eq. 7: 'per_location' (printed) or 'shared'
  config.model.sal_normalisation = 'none'      # Eq. 7 input: 'none' (printed) or 'layer_norm'
  config.model.width_multiplier = 1.0          # BN-Inception conv widths x this (1.0 = paper)
  config.model.fc_init_std = 0.001             # classifier init N(0, std) (tsn-pytorch)
  config.model.sync_batch_norm = True          # BN statistics averaged over the 'batch' axis
  # Training-mode BN sums over the batch: 'matmul' (ones-vector matmuls; TSN N=3 step at 224 px
  # 0.974x the time of 'reduce', docs/performance.md) or 'reduce' (flax.linen.BatchNorm).
  config.model.bn_batch_sums = 'matmul'

  # Temporal attention (§3.1, Algorithm 1).
  config.temporal = ml_collections.ConfigDict()
  config.temporal.num_segments = 1             # N
  config.temporal.snippets_per_segment = 1     # M
  config.temporal.top_n = 1                    # top_n, or top_m per segment when M > 1
  config.temporal.consensus = 'average'        # 'tam' (Alg. 1) | 'average' (TSN averaged logits)
  config.temporal.tam_backward = 'masked'      # 'masked': literal Algorithm 1 (masked loss, full
                                               # backward); 'recompute': score all, backprop top only;
                                               # 'reuse': masked's numbers, backward of the top only
                                               # (partial BN; sta_cnn_jax/reuse_backward.py)

  # Loss (Eq. 10).
  config.aux_loss_weight = 0.5                 # λ; not given in the paper

  # Optimiser (§4.1): SGD momentum, weight decay (not on biases / BN), piecewise-constant lr.
  config.batch_size = 128                      # global, videos
  config.learning_rate = recipe['learning_rate']
  config.lr_decay_epochs = recipe['lr_decay_epochs']
  config.lr_decay_factor = 0.1
  config.lr_schedule = 'step'                  # 'step' (§4.1) | 'cosine' (to 0 over the run)
  config.warmup_steps = 0                      # linear warm-up from 0 (none in the paper)
  config.num_epochs = recipe['num_epochs']
  config.num_train_steps = -1                  # -1: num_epochs * steps_per_epoch
  config.steps_per_epoch = -1                  # -1: num train videos // batch_size
  config.optimizer = 'sgd'                     # 'sgd' (§4.1, with momentum) | 'adam'
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.grad_clip_norm = recipe['grad_clip_norm']

  # PreciseBN (Wu & Johnson 2021; sta_cnn_jax/precise_bn.py): after the last step, BN running
  # statistics := equal-weight mean of this many training batches' statistics (0 = off, the
  # paper's recipe; with partial BN only the first BN is recomputed).
  config.precise_bn = ml_collections.ConfigDict()
  config.precise_bn.num_batches = 0

  # Input (TSN's sampling and augmentation; docs/design.md, "Interpretations"); frame_size is
  # (H, W).
  config.input = ml_collections.ConfigDict()
  # TSN's fixed augmentation choices (max aspect distortion 1, the 13 fixed crop offsets,
  # horizontal flip, snippet lengths) are constants of sta_cnn_jax/augment.py and sampling.py.
  config.input.frame_size = (256, 340)         # what data_prep resizes to; checked vs manifest
  config.input.crop_size = 224
  config.input.scales = _SCALES[_recipe_key(modality)]
  # Caffe BN-Inception (TSN model zoo) input: BGR, 0-255, mean [104, 117, 128], std 1; flow 128.
  normalisation = modalities.default_normalisation(modality)
  config.input.mean = normalisation['mean']
  config.input.std = normalisation['std']
  config.input.bgr = normalisation['bgr']
  config.input.shuffle_buffer = 512
  config.input.prefetch_to_device = 2
  # Shard integrity at training start: sizes and record counts are always checked against
  # manifest.json (cheap); True also reads this host's training shards for their SHA-256
  # (minutes for UCF101-sized data).
  config.input.verify_checksums = False

  # Evaluation (§4.1 Test, Eq. 11).
  config.eval = ml_collections.ConfigDict()
  config.eval.num_segments = 25
  config.eval.num_views = 10
  config.eval.dcw_top_k = 15
  config.eval.batch_size = 8                    # videos per batch on each host
  config.eval.at_end = True
  # Keep each test segment's per-grid-cell class scores (mechanism.cell_evidence): (S, K, K, C)
  # floats a video, ~0.5 MB at 224 px on UCF101 -- for small sets with ground truth only.
  config.eval.cell_evidence = False

  # Parallelism and precision.
  config.parallel = 'pmap'                      # 'pmap' | 'shard_map'
  config.dtype = 'float32'                      # 'float32' | 'bfloat16' (compute; params stay fp32)

  # Checkpoints (Orbax).
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 1000
  config.checkpoint.keep = 3
  config.checkpoint.async_save = True

  config.log_every_steps = 50
  config.seed = 0

  # Initialisation.
  config.init = ml_collections.ConfigDict()
  config.init.acn_weights = ''                  # converted ImageNet BN-Inception ('' = random)
  config.init.san_weights = ''                  # --mode=pretrain_san checkpoint dir ('' = none)
  config.init.cross_modality = True             # flow conv1 = mean of RGB conv1 over channels

  # SAN + Expanded Part pre-training on flow targets (Eq. 3-4), --mode=pretrain_san.
  # FlowNet (Dosovitskiy et al. 2015): Adam, lr 1e-4, weight decay 4e-4.
  config.san_pretrain = ml_collections.ConfigDict()
  config.san_pretrain.learning_rate = 1e-4
  config.san_pretrain.weight_decay = 4e-4
  config.san_pretrain.b1 = 0.9
  config.san_pretrain.b2 = 0.999
  config.san_pretrain.num_steps = 100_000
  config.san_pretrain.lr_decay_steps = 50_000   # lr halved every this many steps
  config.san_pretrain.lr_decay_factor = 0.5
  config.san_pretrain.batch_size = 8            # global, videos (each gives N snippets)
  config.san_pretrain.num_segments = 4          # snippets per video for pre-training
  config.san_pretrain.relaxation = 0.1353352832366127   # e^-2 (Eq. 4)
  config.san_pretrain.flow_stream = 'flow'      # which flow in the shards is the target
  config.san_pretrain.checkpoint_every_steps = 5000
  return config


def get_dataset_config(arg: str, dataset: str, num_classes: int,
                       data_dir: str) -> ml_collections.ConfigDict:
  """The config of '<modality>,<row>' (`parse_arg`) for one dataset: the shared recipe, the
  dataset's fields, then the row."""
  modality, row = parse_arg(arg)
  config = get_base_config(modality)
  config.dataset = dataset
  config.num_classes = num_classes
  config.data_dir = data_dir
  return apply_row(config, row)


def apply_row(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """Sets the temporal strategy and attention switches of a table row (see module docstring)."""
  if row not in ROWS:
    raise ValueError(f'unknown row {row!r}; expected one of {sorted(ROWS)}')
  spec = ROWS[row]
  config.row = row
  config.row_name = spec.paper_name
  config.temporal.num_segments = spec.num_segments
  config.temporal.snippets_per_segment = spec.snippets_per_segment
  config.temporal.top_n = spec.top_n
  config.temporal.consensus = spec.consensus
  config.model.spatial_attention = spec.spatial_attention
  config.model.aux_classifier = spec.aux_classifier
  return config


def num_snippets(config: ml_collections.ConfigDict) -> int:
  """S = N * M snippets per training video."""
  return config.temporal.num_segments * config.temporal.snippets_per_segment


def flat_hparams(config: ml_collections.ConfigDict) -> dict:
  """{'a.b': value} with TensorBoard-friendly scalar values (others as strings)."""
  out = {}

  def visit(prefix, node):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, ml_collections.ConfigDict):
        visit(name + '.', value)
      elif isinstance(value, (bool, int, float, str)):
        out[name] = value
      else:
        out[name] = str(value)
  visit('', config)
  return out
