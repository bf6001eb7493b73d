"""TSN group augmentation in TF ops: multi-scale fixed-offset crops, flips, 10-view oversampling.

"Group" = one crop / flip shared by every frame of every snippet of a video (docs/design.md
"Interpretations").
Formulas replicate tsn-pytorch transforms.py (yjxiong/tsn-pytorch):

  GroupMultiScaleCrop._sample_crop_size (train):
      base = min(H, W); sizes = [int(base * s) for s in scales]
      a size within SNAP_PX of the output size is snapped to it (separately for h and w)
      (w, h) pairs: h = sizes_h[i], w = sizes_w[j] for all |i - j| <= max_distort, one chosen
      uniformly; then one of the fixed offsets (`fill_fix_offset`) chosen uniformly.
  fill_fix_offset(more_fix_crop, W, H, cw, ch): w_step = (W - cw)//4, h_step = (H - ch)//4,
      5 offsets (4 corners + centre) or 13 (+ 4 edge midpoints + 4 quarter points).
  GroupRandomHorizontalFlip(is_flow): flip every image; flow x planes inverted (255 - x).
  GroupOverSample (test): 5 fixed offsets without resize, plus their flips -> 10 views.

Offsets here are (y, x) pairs (TSN writes (w_offset, h_offset)). Randomness enters only
through uniform numbers in [0, 1) passed in, so every function is pure and NumPy-testable.
"""

from typing import Sequence

import tensorflow as tf

# tsn-pytorch GroupMultiScaleCrop defaults: RGB scales; flow drops .66 (tsn-pytorch
# models.py `get_augmentation`: [1, .875, .75] for Flow); max aspect distortion 1.
RGB_SCALES = (1.0, 0.875, 0.75, 0.66)
FLOW_SCALES = (1.0, 0.875, 0.75)
MAX_DISTORT = 1
# `_sample_crop_size`: crop sizes with abs(size - output) < 3 snap to the output size.
SNAP_PX = 3
# `fill_fix_offset`: the crop's free range is divided into quarters.
FIX_OFFSET_GRID = 4
# Eval: GroupOverSample views = fill_fix_offset(more_fix_crop=False) crops, then flips.
NUM_OVERSAMPLE_CROPS = 5
EVAL_VIEW_NAMES = ("upper_left", "upper_right", "lower_left", "lower_right", "center",
                   "upper_left_flip", "upper_right_flip", "lower_left_flip",
                   "lower_right_flip", "center_flip")
# Antialiased (PIL-like) down-scaling in resize_uint8; see there for the trade-off.
RESIZE_ANTIALIAS = False
# Quantised flow: zero motion is 128 and flipping negates x, i.e. q -> 255 - q.
UINT8_MAX = 255
FLOW_PLANES = 2  # x, y interleaved


def crop_size_pairs(num_scales: int, max_distort: int = MAX_DISTORT):
  """Static (i, j) scale-index pairs, |i - j| <= max_distort, in tsn-pytorch's loop order.

  Pair (i, j) means crop_h = sizes[i], crop_w = sizes[j] (outer loop over h, inner over w).
  """
  return [(i, j) for i in range(num_scales) for j in range(num_scales)
          if abs(i - j) <= max_distort]


def fixed_offsets(height, width, crop_h, crop_w, more_fix_crop: bool = True):
  """(13, 2) [or (5, 2)] int32 (y, x) crop offsets of tsn-pytorch `fill_fix_offset`.

  Order: upper-left, upper-right, lower-left, lower-right, centre, then (more_fix_crop)
  centre-left, centre-right, lower-centre, upper-centre, and the four quarter points.
  """
  w_step = tf.math.floordiv(tf.cast(width, tf.int32) - crop_w, FIX_OFFSET_GRID)
  h_step = tf.math.floordiv(tf.cast(height, tf.int32) - crop_h, FIX_OFFSET_GRID)
  grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]  # (h multiple, w multiple)
  if more_fix_crop:
    grid += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
  multiples = tf.constant(grid, tf.int32)  # (13, 2)
  return multiples * tf.stack([h_step, w_step])[None, :]


def multiscale_crop_window(height, width, out_size: int, scales: Sequence[float],
                           uniform_pair, uniform_offset, max_distort: int = MAX_DISTORT):
  """One GroupMultiScaleCrop window: (offset_y, offset_x, crop_h, crop_w) int32.

  Args:
    height, width: frame size (scalar ints).
    out_size: square output side the crop is later resized to (TSN `input_size`).
    scales: crop scales relative to min(H, W).
    uniform_pair, uniform_offset: scalars in [0, 1) choosing the (w, h) pair and the offset.
    max_distort: max |i - j| between the h and w scale indices.

  Returns:
    (4,) int32 window [y, x, h, w]. Crops are clamped to the frame (only matters when
    snapping to out_size would exceed a frame side smaller than out_size).
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  base = tf.cast(tf.minimum(height, width), tf.float64)
  # Python `int(base * x)` on float64; floor == truncation for positive values.
  sizes = tf.cast(tf.floor(base * tf.constant(scales, tf.float64)), tf.int32)
  snapped = tf.where(tf.abs(sizes - out_size) < SNAP_PX, out_size, sizes)
  pairs = tf.constant(crop_size_pairs(len(scales), max_distort), tf.int32)  # (P, 2)
  num_pairs = pairs.shape[0]
  pick = tf.minimum(tf.cast(tf.floor(uniform_pair * num_pairs), tf.int32), num_pairs - 1)
  crop_h = tf.minimum(snapped[pairs[pick, 0]], height)
  crop_w = tf.minimum(snapped[pairs[pick, 1]], width)
  offsets = fixed_offsets(height, width, crop_h, crop_w, more_fix_crop=True)
  num_offsets = offsets.shape[0]
  which = tf.minimum(tf.cast(tf.floor(uniform_offset * num_offsets), tf.int32),
                     num_offsets - 1)
  return tf.stack([offsets[which, 0], offsets[which, 1], crop_h, crop_w])


def flow_x_channel_mask(num_channels: int, planes_per_frame: int):
  """(C,) bool, True on x planes of interleaved flow channels (x0, y0, x1, y1, ...)."""
  return tf.range(num_channels) % planes_per_frame == 0


def horizontal_flip(frames, is_flow: bool):
  """Mirror (..., H, W, C) uint8 frames; for flow also invert x: 255 - x (i.e. -v).

  Channels must be interleaved x0, y0, x1, y1, ... for flow (even channels are x).
  """
  flipped = tf.reverse(frames, axis=[-2])
  if not is_flow:
    return flipped
  # 255 - q == q XOR 255 for uint8 (a cheaper elementwise op than a select).
  invert = tf.where(flow_x_channel_mask(frames.shape[-1], FLOW_PLANES),
                    tf.constant(UINT8_MAX, tf.uint8), tf.constant(0, tf.uint8))
  return tf.bitwise.bitwise_xor(flipped, invert)


def should_flip(uniform_flip):
  """GroupRandomHorizontalFlip: flip iff uniform_flip < 0.5 (`random.random() < 0.5`)."""
  return uniform_flip < 0.5


def flip_if(rounded, flip, is_flow: bool):
  """GroupRandomHorizontalFlip on float (..., H, W, C) resized values iff scalar bool flip.

  Flow x channels (even, interleaved x0, y0, ...) become 255 - q: the inversion of the
  rounded uint8 image that tsn-pytorch applies after resizing.
  """

  def flipped():
    mirrored = tf.reverse(rounded, axis=[-2])
    if not is_flow:
      return mirrored
    is_x = flow_x_channel_mask(rounded.shape[-1], FLOW_PLANES)
    scale = tf.where(is_x, -1.0, 1.0)
    offset = tf.where(is_x, float(UINT8_MAX), 0.0)
    return mirrored * scale + offset

  return tf.cond(flip, flipped, lambda: rounded)


def resize_rounded(frames, out_size: int):
  """Bilinear resize (N, h, w, C) uint8 -> (N, out, out, C) float32 of integers 0..255.

  Rounds half up like PIL. Half-pixel-centred 2-tap bilinear: within 1 grey level of
  PIL's BILINEAR (tsn-pytorch `img.resize(..., Image.BILINEAR)`; PIL's fixed-point weights
  round differently on 10-20% of pixels) when up-scaling, i.e. for every TSN crop smaller
  than out_size. For the down-scale at 340x256 (a 256 crop side -> 224, factor 1.14) PIL
  widens its triangle filter by the factor; without that a real frame differs by 0.3 grey
  levels on average (max 13). RESIZE_ANTIALIAS=True matches PIL there too (max 1) but the
  tf.image.resize antialias path costs ~8x more CPU, so it is off.
  Returned as float so that the flip and flow inversion run on float (TF's CPU kernels
  handle uint8 elementwise ops slowly); cast to uint8 once at the end.
  """
  resized = tf.image.resize(frames, (out_size, out_size), method="bilinear",
                            antialias=RESIZE_ANTIALIAS)
  return tf.clip_by_value(tf.floor(resized + 0.5), 0.0, UINT8_MAX)


def resize_uint8(frames, out_size: int):
  """resize_rounded cast to uint8."""
  return tf.cast(resize_rounded(frames, out_size), tf.uint8)


def oversample_offsets(height, width, out_size: int):
  """(5, 2) (y, x) offsets of the GroupOverSample crops: 4 corners + centre."""
  return fixed_offsets(height, width, out_size, out_size, more_fix_crop=False)


def center_offset(height, width, out_size: int):
  """(y, x) of torchvision CenterCrop: int(round((side - out) / 2)) (TSN 1-crop test)."""
  dy = tf.round(tf.cast(tf.cast(height, tf.int32) - out_size, tf.float64) / 2.0)
  dx = tf.round(tf.cast(tf.cast(width, tf.int32) - out_size, tf.float64) / 2.0)
  return tf.cast(tf.stack([dy, dx]), tf.int32)
