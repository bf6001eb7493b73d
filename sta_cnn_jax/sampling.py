"""TSN segment sampling: which frames of a video form each snippet (TF ops, graph-safe).

A video of `n` frames is cut into K = N*M equal segments (N segments x M sub-segments,
ordered segment-major: snippet s = n*M + m). One snippet is taken per segment; its first
frame index is the segment's *offset*. `new_length` L is the number of consecutive frames
the offset must leave room for when choosing it: L = 1 for RGB (the snippet's second frame
i+1 is clamped to n-1 rather than reserved, as tsn-pytorch's `get` does), L = 5 for flow.

Formulas replicate tsn-pytorch `TSNDataSet` (yjxiong/tsn-pytorch, dataset.py):

  train (`_sample_indices`):  avg = (n - L + 1) // K
      avg > 0:  offset_k = k*avg + randint(avg)
      n > K:    offsets  = sort(randint(n - L + 1, size=K))
      else:     offsets  = 0
  test (`_get_test_indices`): tick = (n - L + 1) / K,  offset_k = int(tick/2 + tick*k)

tsn-pytorch returns 1-based file numbers (`offsets + 1`); here indices are 0-based.
Randomness enters only through `uniform` (K values in [0, 1)): randint(h) := floor(u*h).
That keeps these functions pure, stateless-RNG friendly, and exactly comparable with a
NumPy reference fed the same `uniform`.
"""

import tensorflow as tf

from sta_cnn_jax import modalities

# Frames a snippet spans, and the `new_length` TSN reserves when choosing offsets (modalities.py).
RGB_FRAMES_PER_SNIPPET = modalities.RGB_FRAMES_PER_SNIPPET
RGB_NEW_LENGTH = modalities.RGB_NEW_LENGTH
FLOW_FRAMES_PER_SNIPPET = modalities.FLOW_FRAMES_PER_SNIPPET
FLOW_NEW_LENGTH = modalities.FLOW_NEW_LENGTH


def _randint(uniform, high):
  """floor(u*high) in [0, high) for u in [0, 1): NumPy `randint(high)` driven by `uniform`."""
  high = tf.cast(high, tf.float64)
  value = tf.floor(tf.cast(uniform, tf.float64) * high)
  return tf.cast(tf.minimum(value, high - 1.0), tf.int32)


def train_offsets(num_frames, num_snippets: int, new_length: int, uniform):
  """Random TSN training offsets, one per segment (tsn-pytorch `_sample_indices`).

  Args:
    num_frames: scalar int, frames (or flow fields) n in the video.
    num_snippets: K = N*M segments (Python int).
    new_length: L, frames reserved after the offset (1 RGB, 5 flow).
    uniform: (K,) float in [0, 1), the only source of randomness.

  Returns:
    (K,) int32 0-based offsets, non-decreasing, in [0, max(n - L, 0)].
  """
  n = tf.cast(num_frames, tf.int32)
  k = tf.range(num_snippets, dtype=tf.int32)
  span = n - new_length + 1  # valid start positions
  average_duration = tf.math.floordiv(span, num_snippets)

  def segment_wise():
    return k * average_duration + _randint(uniform, average_duration)

  def sorted_random():
    # span >= 1 whenever n > K >= 1 and L <= K + 1; guard for L > K + 1 (then span may be < 1).
    return tf.sort(_randint(uniform, tf.maximum(span, 1)))

  def zeros():
    return tf.zeros([num_snippets], tf.int32)

  return tf.case([(average_duration > 0, segment_wise), (n > num_snippets, sorted_random)],
                 default=zeros, exclusive=False)


def test_offsets(num_frames, num_snippets: int, new_length: int):
  """Deterministic centre-of-segment offsets (tsn-pytorch `_get_test_indices`).

  Returns (K,) int32 `int(tick/2 + tick*k)` with tick = (n - L + 1)/K, floored at 0 for
  videos shorter than L (where tsn-pytorch would index negative frames).
  """
  span = tf.cast(tf.cast(num_frames, tf.int32) - new_length + 1, tf.float64)
  tick = span / float(num_snippets)
  k = tf.range(num_snippets, dtype=tf.float64)
  # Python int() truncates toward zero: tf.cast(float -> int) does the same.
  offsets = tf.cast(tick / 2.0 + tick * k, tf.int32)
  return tf.maximum(offsets, 0)


def snippet_frame_indices(offsets, frames_per_snippet: int, num_frames):
  """Frame indices of each snippet: offset + t for t < T, clamped to n - 1.

  Args:
    offsets: (K,) int32 first frame of each snippet.
    frames_per_snippet: T (2 RGB, 5 flow).
    num_frames: scalar n.

  Returns:
    (K, T) int32 in [0, n - 1] (tsn-pytorch `get`: `if p < num_frames: p += 1`).
  """
  t = tf.range(frames_per_snippet, dtype=tf.int32)
  last = tf.maximum(tf.cast(num_frames, tf.int32) - 1, 0)
  return tf.minimum(offsets[:, None] + t[None, :], last)
