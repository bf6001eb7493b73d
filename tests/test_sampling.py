"""TSN sampling (sampling.py) and crop geometry (augment.py) vs NumPy references.

The references transcribe tsn-pytorch (yjxiong/tsn-pytorch) dataset.py `_sample_indices`,
`_get_test_indices`, `get` and transforms.py `_sample_crop_size` / `fill_fix_offset`, with
every `randint(h)` / `random.choice` driven by the same uniform numbers u: floor(u*h).
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from sta_cnn_jax import augment
from sta_cnn_jax import sampling

LENGTHS = {"rgb": (sampling.RGB_NEW_LENGTH, sampling.RGB_FRAMES_PER_SNIPPET),
           "flow": (sampling.FLOW_NEW_LENGTH, sampling.FLOW_FRAMES_PER_SNIPPET)}


# ---------------------------------------------------------------- NumPy references


def np_randint(u, high):
  return np.minimum(np.floor(np.asarray(u, np.float64) * high), high - 1).astype(np.int64)


def np_sample_indices(n, k, new_length, u):
  """tsn-pytorch `_sample_indices`, 0-based."""
  average_duration = (n - new_length + 1) // k
  if average_duration > 0:
    return np.arange(k) * average_duration + np_randint(u, average_duration)
  if n > k:
    return np.sort(np_randint(u, max(n - new_length + 1, 1)))
  return np.zeros(k, np.int64)


def np_test_indices(n, k, new_length):
  """tsn-pytorch `_get_test_indices`, 0-based (floored at 0)."""
  tick = (n - new_length + 1) / float(k)
  return np.maximum(np.array([int(tick / 2.0 + tick * x) for x in range(k)]), 0)


def np_snippet_frames(offsets, frames_per_snippet, n):
  """tsn-pytorch `get`: p, p+1, ... stopping at the last frame."""
  out = []
  for p in offsets:
    frames = []
    for _ in range(frames_per_snippet):
      frames.append(p)
      if p < n - 1:
        p += 1
    out.append(frames)
  return np.array(out)


def np_fill_fix_offset(more_fix_crop, image_w, image_h, crop_w, crop_h):
  """transforms.py `fill_fix_offset`, returned as (y, x)."""
  w_step = (image_w - crop_w) // 4
  h_step = (image_h - crop_h) // 4
  ret = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step),
         (2 * w_step, 2 * h_step)]
  if more_fix_crop:
    ret += [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step),
            (2 * w_step, 0), (1 * w_step, 1 * h_step), (3 * w_step, 1 * h_step),
            (1 * w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
  return [(y, x) for x, y in ret]


def np_crop_pairs(image_w, image_h, out_size, scales, max_distort=1):
  """transforms.py `_sample_crop_size` candidate (w, h) pairs, in its loop order."""
  base_size = min(image_w, image_h)
  crop_sizes = [int(base_size * x) for x in scales]
  crop_h = [out_size if abs(x - out_size) < 3 else x for x in crop_sizes]
  crop_w = [out_size if abs(x - out_size) < 3 else x for x in crop_sizes]
  return [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w)
          if abs(i - j) <= max_distort]


def np_crop_window(image_h, image_w, out_size, scales, u_pair, u_offset):
  pairs = np_crop_pairs(image_w, image_h, out_size, scales)
  w, h = pairs[int(np_randint(u_pair, len(pairs)))]
  offsets = np_fill_fix_offset(True, image_w, image_h, w, h)
  y, x = offsets[int(np_randint(u_offset, len(offsets)))]
  return np.array([y, x, h, w])


# ---------------------------------------------------------------- sampling


# (n, K) cases covering every branch: avg > 0, n > K with avg == 0, n <= K, n < L.
CASES = [(1, 1), (2, 1), (3, 3), (4, 9), (7, 9), (9, 9), (10, 9), (12, 9), (13, 9),
         (20, 9), (33, 9), (100, 3), (101, 25), (250, 25), (5, 3), (6, 3), (8, 3)]


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_train_offsets_match_tsn_reference(modality):
  new_length, frames_per_snippet = LENGTHS[modality]
  rng = np.random.default_rng(0)
  for n, k in CASES:
    for _ in range(5):
      u = rng.random(k)
      got = sampling.train_offsets(n, k, new_length, tf.constant(u)).numpy()
      want = np_sample_indices(n, k, new_length, u)
      np.testing.assert_array_equal(got, want, err_msg=f"n={n} K={k} L={new_length}")
      frames = sampling.snippet_frame_indices(tf.constant(got, tf.int32), frames_per_snippet,
                                              n).numpy()
      np.testing.assert_array_equal(frames, np_snippet_frames(want, frames_per_snippet, n))
      assert frames.min() >= 0 and frames.max() <= n - 1


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_train_offsets_cover_each_segment(modality):
  """With avg > 0, snippet k lies in segment k and every position of it is reachable."""
  new_length, _ = LENGTHS[modality]
  n, k = 40, 4
  avg = (n - new_length + 1) // k
  edges = np.array([[0.0] * k, [1.0 - 1e-12] * k])
  lo, hi = (sampling.train_offsets(n, k, new_length, tf.constant(e)).numpy() for e in edges)
  np.testing.assert_array_equal(lo, np.arange(k) * avg)
  np.testing.assert_array_equal(hi, np.arange(k) * avg + avg - 1)


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_test_offsets_exact(modality):
  new_length, _ = LENGTHS[modality]
  for n, k in CASES:
    got = sampling.test_offsets(n, k, new_length).numpy()
    np.testing.assert_array_equal(got, np_test_indices(n, k, new_length),
                                  err_msg=f"n={n} K={k}")


def test_test_offsets_ucf_like_clip():
  """Hand check: 131 frames, 25 segments, RGB: tick = 5.24, offsets int(2.62 + 5.24k)."""
  got = sampling.test_offsets(131, 25, 1).numpy()
  assert got[0] == 2 and got[1] == 7 and got[24] == int(2.62 + 5.24 * 24)


# ---------------------------------------------------------------- crops


@pytest.mark.parametrize("height,width,out_size,scales", [
    (256, 340, 224, augment.RGB_SCALES),
    (256, 340, 224, augment.FLOW_SCALES),
    (48, 64, 32, augment.RGB_SCALES),
    (240, 320, 224, augment.RGB_SCALES),
    (340, 256, 224, augment.RGB_SCALES),  # portrait
])
def test_multiscale_crop_window_matches_tsn(height, width, out_size, scales):
  rng = np.random.default_rng(1)
  pairs = np_crop_pairs(width, height, out_size, scales)
  window = tf.function(lambda up, uo: augment.multiscale_crop_window(
      height, width, out_size, scales, up, uo))
  seen_pairs, seen_offsets = set(), set()
  for _ in range(300):
    u_pair, u_offset = rng.random(2)
    got = window(tf.constant(u_pair, tf.float64), tf.constant(u_offset, tf.float64)).numpy()
    np.testing.assert_array_equal(got, np_crop_window(height, width, out_size, scales,
                                                      u_pair, u_offset))
    y, x, h, w = got
    assert (w, h) in pairs
    assert (y, x) in np_fill_fix_offset(True, width, height, w, h)
    assert 0 <= y and y + h <= height and 0 <= x and x + w <= width
    seen_pairs.add((w, h))
    seen_offsets.add(np_fill_fix_offset(True, width, height, w, h).index((y, x)))
  assert seen_pairs == set(pairs) and seen_offsets == set(range(13))


def test_crop_sizes_for_340x256():
  """TSN facts at 340x256 -> 224: sizes 256, 224, 192, 168 and 10 (w, h) pairs (RGB)."""
  pairs = augment.crop_size_pairs(len(augment.RGB_SCALES))
  assert len(pairs) == 10 and all(abs(i - j) <= 1 for i, j in pairs)
  sizes = {w for w, _ in np_crop_pairs(340, 256, 224, augment.RGB_SCALES)}
  assert sizes == {256, 224, 192, 168}


def test_fixed_offsets_13_and_5():
  for height, width, ch, cw in [(256, 340, 224, 224), (256, 340, 168, 192), (48, 64, 36, 42)]:
    got = augment.fixed_offsets(height, width, ch, cw, more_fix_crop=True).numpy()
    assert [tuple(o) for o in got] == np_fill_fix_offset(True, width, height, cw, ch)
    got5 = augment.oversample_offsets(height, width, ch).numpy() if ch == cw else None
    if got5 is not None:
      assert [tuple(o) for o in got5] == np_fill_fix_offset(False, width, height, cw, ch)


def test_center_offset_is_torchvision_center_crop():
  for height, width, out in itertools.product([224, 240, 256, 257], [224, 320, 340, 341],
                                              [224]):
    got = augment.center_offset(height, width, out).numpy()
    assert tuple(got) == (int(round((height - out) / 2.0)), int(round((width - out) / 2.0)))


def test_horizontal_flip_inverts_flow_x_only():
  rng = np.random.default_rng(2)
  frames = rng.integers(0, 256, size=(3, 4, 5, 10), dtype=np.uint8)
  flow = augment.horizontal_flip(tf.constant(frames), is_flow=True).numpy()
  mirrored = frames[:, :, ::-1, :]
  np.testing.assert_array_equal(flow[..., 0::2], 255 - mirrored[..., 0::2])
  np.testing.assert_array_equal(flow[..., 1::2], mirrored[..., 1::2])
  rgb = augment.horizontal_flip(tf.constant(frames[..., :6]), is_flow=False).numpy()
  np.testing.assert_array_equal(rgb, mirrored[..., :6])


def test_flip_if_matches_uint8_flip():
  """The train-path flip on rounded floats equals flipping / inverting the uint8 image."""
  rng = np.random.default_rng(5)
  frames = rng.integers(0, 256, size=(2, 4, 5, 10), dtype=np.uint8)
  for is_flow in (True, False):
    for flip in (True, False):
      got = augment.flip_if(tf.constant(frames, tf.float32), tf.constant(flip), is_flow)
      want = augment.horizontal_flip(tf.constant(frames), is_flow) if flip else frames
      np.testing.assert_array_equal(tf.cast(got, tf.uint8).numpy(), np.asarray(want))


def test_resize_uint8_identity_and_constant():
  rng = np.random.default_rng(3)
  frames = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(augment.resize_uint8(tf.constant(frames), 32).numpy(), frames)
  const = np.full((1, 40, 50, 1), 77, np.uint8)
  np.testing.assert_array_equal(augment.resize_uint8(tf.constant(const), 32).numpy(),
                                np.full((1, 32, 32, 1), 77, np.uint8))


@pytest.mark.parametrize("crop", [168, 192, 224])
def test_resize_upscale_within_one_level_of_pil(crop):
  """tsn-pytorch resizes crops with PIL BILINEAR; PIL is an independent reference here."""
  image_module = pytest.importorskip("PIL.Image")
  rng = np.random.default_rng(6)
  coarse = rng.integers(0, 256, size=(1, crop // 8, crop // 8, 3)).astype(np.float32)
  smooth = tf.image.resize(coarse, (crop, crop), method="bicubic")
  image = tf.cast(tf.clip_by_value(smooth + rng.normal(0, 8, smooth.shape), 0, 255),
                  tf.uint8).numpy()
  pil = np.asarray(image_module.fromarray(image[0]).resize((224, 224),
                                                           image_module.BILINEAR))
  ours = augment.resize_uint8(tf.constant(image), 224).numpy()[0]
  diff = np.abs(ours.astype(int) - pil.astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.3  # PIL fixed-point rounding
