"""Facts of the input streams, in one place: names, snippet layout, channels, normalisation.

Pure Python constants and functions (no jax, TensorFlow or numpy), so `data_prep` imports them
too. Every module that needs one of these facts imports it from here (configs, input pipeline,
models, data_prep, training, conversion of published weights, fusion).

Streams (paper §3, TSN): 'rgb' frames, TV-L1 'flow' and 'warpflow' (flow after camera-motion
compensation, TSN's warped flow). The shard features holding each stream's frames are
docs/design.md, "Shard format".
"""

RGB, FLOW, WARPFLOW = 'rgb', 'flow', 'warpflow'
MODALITIES = (RGB, FLOW, WARPFLOW)
FLOW_MODALITIES = (FLOW, WARPFLOW)

# tf.train.Example bytes_list features holding each stream's encoded frames (one image per
# frame; flow as an x plane list and a y plane list).
MODALITY_FEATURES = {
    RGB: ('rgb',),
    FLOW: ('flow_x', 'flow_y'),
    WARPFLOW: ('warpflow_x', 'warpflow_y'),
}

RGB_CHANNELS = 3  # channels of one decoded RGB frame
FLOW_PLANES = 2   # x, y (interleaved in a snippet: x0, y0, x1, y1, ...)

# Frames a snippet spans, and the `new_length` L TSN reserves when choosing offsets.
# RGB: frame i (the ACN's input) and i + 1 (the SAN's second frame); TSN new_length = 1 (the
# second frame is clamped to the last one rather than reserved).
RGB_FRAMES_PER_SNIPPET = 2
RGB_NEW_LENGTH = 1
# Flow: 5 consecutive fields (TSN new_length = 5 for Flow), 2 planes each -> 10 channels.
FLOW_FRAMES_PER_SNIPPET = 5
FLOW_NEW_LENGTH = 5

# Input normalisation of TSN's Caffe BN-Inception weights (tsn-pytorch models.py for
# 'BNInception': input_mean = [104, 117, 128], input_std = [1], 0-255 input
# (`ToTorchFormatTensor(div=False)`), BGR channel order (`Stack(roll=True)`); Flow:
# input_mean = [128]). Means are in the order of the channels after the optional swap.
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)
CAFFE_RGB_STD = (1.0, 1.0, 1.0)
CAFFE_BGR = True
FLOW_MEAN = 128.0
FLOW_STD = 1.0

# TSN's two-/three-stream fusion weights (RGB : flow : warped flow = 1 : 1.5 : 1), and the file
# each stream's evaluation writes its per-video scores to, which fusion reads.
FUSION_WEIGHTS = {RGB: 1.0, FLOW: 1.5, WARPFLOW: 1.0}
SCORES_FILE = 'eval_scores.npz'


def check(modality: str) -> str:
  """`modality`, or ValueError naming the known ones."""
  if modality not in MODALITIES:
    raise ValueError(f'unknown modality {modality!r}; expected one of {MODALITIES}')
  return modality


def is_flow(modality: str) -> bool:
  """True for the flow streams (flow, warpflow), whose x planes a horizontal flip negates."""
  return check(modality) in FLOW_MODALITIES


def snippet_layout(modality: str) -> tuple[int, int, int]:
  """(frames per snippet T, TSN new_length L, channels per decoded image c)."""
  if is_flow(modality):
    return FLOW_FRAMES_PER_SNIPPET, FLOW_NEW_LENGTH, 1
  return RGB_FRAMES_PER_SNIPPET, RGB_NEW_LENGTH, RGB_CHANNELS


def input_channels(modality: str) -> int:
  """C_in of a snippet: 6 for rgb (frame i RGB ++ frame i+1 RGB), 10 for flow / warpflow."""
  frames, _, channels = snippet_layout(modality)
  return frames * channels * len(MODALITY_FEATURES[modality])


def default_normalisation(modality: str) -> dict:
  """The config's input normalisation of a stream: {'mean', 'std', 'bgr'} (Caffe BN-Inception).

  Flow's mean / std are 1-tuples (one value for every channel).
  """
  if is_flow(modality):
    return {'mean': (FLOW_MEAN,), 'std': (FLOW_STD,), 'bgr': False}
  return {'mean': CAFFE_BGR_MEAN, 'std': CAFFE_RGB_STD, 'bgr': CAFFE_BGR}
