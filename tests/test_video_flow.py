"""data_prep.video (decoding real clips and broken files) and data_prep.flow (flow, warped flow,
quantisation)."""

import sys
import types

import cv2
import numpy as np
import pytest

from data_prep import flow as flow_lib
from data_prep import video

W, H = 340, 256


def _independent_decode(path):
  """Reference: OpenCV frames read until failure, resized, BGR→RGB with numpy slicing."""
  capture = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    frames.append(cv2.resize(frame, (W, H), interpolation=cv2.INTER_LINEAR)[..., ::-1])
  return np.stack(frames)


def test_decode_real_ucf101_clip(testdata_dir):
  path = testdata_dir / "videos" / "ucf101" / "v_Archery_g01_c01.avi"
  decoded = video.decode_video(path, W, H)
  assert decoded.frames.shape == (131, H, W, 3) and decoded.frames.dtype == np.uint8
  assert decoded.source_size == (240, 320) and decoded.warnings == ()
  np.testing.assert_array_equal(decoded.frames, _independent_decode(path))


def test_divx_clip_decodes_72_not_header_73(testdata_dir):
  path = testdata_dir / "videos" / "hmdb51" / "RATRACE_wave_f_nm_np1_fr_goo_37.avi"
  decoded = video.decode_video(path, W, H)
  assert decoded.header_frames == 73
  assert decoded.frames.shape == (72, H, W, 3)  # resized from 560x240 regardless of aspect
  assert decoded.source_size == (240, 560)
  assert decoded.warnings == ()  # off by one is the normal DivX case, not a warning


@pytest.mark.parametrize("name, reason", [
    ("empty.avi", "empty file"),
    ("text_renamed.mp4", "cannot open"),
    ("truncated_30pct_mmaction2_demo.mp4", "cannot open"),
])
def test_broken_files_raise_video_error_naming_the_file(testdata_dir, name, reason):
  path = testdata_dir / "bad" / name
  with pytest.raises(video.VideoError, match=reason) as info:
    video.decode_video(path)
  assert info.value.path == str(path) and str(path) in str(info.value)


def test_truncated_clip_keeps_decodable_frames_with_warning(testdata_dir):
  decoded = video.decode_video(testdata_dir / "bad" / "truncated_30pct_v_Archery_g01_c01.avi")
  assert decoded.frames.shape[0] == 40 and decoded.header_frames == 131
  assert len(decoded.warnings) == 1 and "131" in decoded.warnings[0]


def test_too_short_and_missing_videos(tmp_path):
  path = tmp_path / "one.avi"
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
  writer.write(np.zeros((32, 32, 3), np.uint8))
  writer.release()
  with pytest.raises(video.VideoError, match="only 1 decodable frame"):
    video.decode_video(path)
  with pytest.raises(video.VideoError, match="file not found"):
    video.decode_video(tmp_path / "absent.avi")


def test_encoded_frames_decode_like_files():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
  encoded = [flow_lib.encode_image(f, "png") for f in frames]
  decoded = video.decode_encoded_frames("x", encoded, 30, 20)
  np.testing.assert_array_equal(decoded.frames, frames)  # PNG is lossless, RGB order kept
  with pytest.raises(video.VideoError, match="only 1"):
    video.decode_encoded_frames("x", encoded[:1], 30, 20)


# ----------------------------------------------------------------------------------------------
# Quantisation and encoding


def test_quantisation_round_trip_within_one_quantum_and_clipping():
  bound = flow_lib.DEFAULT_BOUND
  quantum = 2 * bound / 255
  v = np.random.default_rng(1).uniform(-1.5 * bound, 1.5 * bound, 100_000).astype(np.float32)
  q = flow_lib.quantize_flow(v, bound)
  assert q.dtype == np.uint8
  back = flow_lib.dequantize_flow(q, bound)
  error = np.abs(back - np.clip(v, -bound, bound))
  assert error.max() <= quantum / 2 + 1e-5  # rounding: within half a quantum
  # Clipping at ±bound: the extreme codes decode to exactly ±bound.
  assert (q[v >= bound] == 255).all() and (q[v <= -bound] == 0).all()
  np.testing.assert_allclose(flow_lib.dequantize_flow(np.array([0, 255]), bound), [-bound, bound])
  # Zero flow sits between codes 127 and 128 (TSN's "128 ≈ zero flow"), monotone codes.
  assert flow_lib.quantize_flow(np.float32(0.0), bound) in (127, 128)
  order = np.argsort(v)
  assert (np.diff(q[order].astype(int)) >= 0).all()
  # Other bounds scale the same way.
  np.testing.assert_allclose(flow_lib.dequantize_flow(flow_lib.quantize_flow(3.0, 5.0), 5.0),
                             3.0, atol=5.0 / 255)


def test_flow_planes_png_lossless_and_jpeg_close():
  rng = np.random.default_rng(2)
  field = cv2.GaussianBlur(rng.normal(0, 6, (64, 80, 2)).astype(np.float32), (0, 0), 3)[None]
  for fmt, tolerance in (("png", 0), ("jpeg", 2.0)):
    xs, ys = flow_lib.encode_flow_planes(field, 20.0, fmt, 95)
    q = np.stack([flow_lib.decode_image(xs[0], True), flow_lib.decode_image(ys[0], True)], -1)
    assert q.shape == (64, 80, 2)
    diff = np.abs(q.astype(int) - flow_lib.quantize_flow(field[0], 20.0).astype(int))
    assert diff.mean() <= tolerance / 2 and (fmt == "jpeg" or diff.max() == 0)


# ----------------------------------------------------------------------------------------------
# Flow methods


def _textured(size=(96, 128), seed=0):
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (size[0] // 4, size[1] // 4)).astype(np.uint8)
  return cv2.GaussianBlur(cv2.resize(coarse, size[::-1], interpolation=cv2.INTER_NEAREST),
                          (0, 0), 1.0)


def _shift(image, dx, dy):
  """Content moved by (+dx, +dy): pixel (x, y) of the result is image(x − dx, y − dy)."""
  matrix = np.float32([[1, 0, dx], [0, 1, dy]])
  return cv2.warpAffine(image, matrix, image.shape[::-1], borderMode=cv2.BORDER_REFLECT)


# Median error allowed per method (px): DIS FAST estimates on a coarse patch grid (finest scale
# 2) and is measured here at up to ~0.3 px off on a clean translation.
@pytest.mark.parametrize("method, atol", [("dis", 0.4), ("dis_fine", 0.25), ("farneback", 0.25),
                                          ("tvl1", 0.25)])
def test_flow_methods_recover_a_translation(method, atol):
  base = _textured()
  frames = np.stack([_shift(base, 2 * t, -1 * t) for t in range(3)])  # (3, H, W)
  field = flow_lib.compute_flow(frames, method)
  assert field.shape == (2, 96, 128, 2) and field.dtype == np.float32  # n − 1 fields
  interior = field[:, 16:-16, 16:-16]
  np.testing.assert_allclose(np.median(interior, axis=(1, 2)), [[2, -1]] * 2, atol=atol)


def _small_object_pair(dx, dy, side=24):
  """Two 128x96 grey frames: a static textured background and a `side`-px textured square
  moved by (dx, dy); returns (frames (2, H, W), the square's centre in frame 0)."""
  rng = np.random.default_rng(3)
  background = cv2.GaussianBlur(rng.integers(0, 256, (96, 128)).astype(np.uint8), (0, 0), 1.5)
  texture = cv2.resize(rng.integers(0, 256, (side // 4, side // 4)).astype(np.uint8),
                       (side, side), interpolation=cv2.INTER_NEAREST)
  frames = []
  for t in range(2):
    frame = background.copy()
    y, x = 36 + dy * t, 52 + dx * t
    frame[y:y + side, x:x + side] = texture
    frames.append(frame)
  return np.stack(frames), (36 + side // 2, 52 + side // 2)


def test_dis_fine_follows_a_small_object_that_dis_fast_blurs():
  """At 128x96 DIS FAST's finest flow is 32x24; 'dis_fine' refines to full resolution and
  follows a 24-px object moving (2, -1) px over a static background."""
  frames, (cy, cx) = _small_object_pair(2, -1)
  def object_motion(method):
    field = flow_lib.compute_flow(frames, method)[0]
    return np.median(field[cy - 4:cy + 4, cx - 4:cx + 4].reshape(-1, 2), axis=0)
  np.testing.assert_allclose(object_motion("dis_fine"), [2, -1], atol=0.3)
  assert np.linalg.norm(object_motion("dis") - [2, -1]) > np.linalg.norm(
      object_motion("dis_fine") - [2, -1])


def test_warped_flow_removes_a_camera_pan():
  base = _textured(seed=3)
  pan = (3.0, 2.0)
  frames = np.stack([_shift(base, pan[0] * t, pan[1] * t) for t in range(3)])
  plain = flow_lib.compute_flow(frames, "farneback")[:, 16:-16, 16:-16]
  warped, fallbacks = flow_lib.compute_warped_flow(frames, "farneback")
  warped = warped[:, 16:-16, 16:-16]
  assert fallbacks == 0
  np.testing.assert_allclose(np.median(plain, axis=(1, 2)), [pan] * 2, atol=0.25)
  assert np.abs(np.median(warped, axis=(1, 2))).max() < 0.25
  assert np.linalg.norm(warped, axis=-1).mean() < 0.2 * np.linalg.norm(plain, axis=-1).mean()


def test_homography_falls_back_to_identity_on_flat_frames():
  flat = np.full((64, 64), 128, np.uint8)
  homography, found = flow_lib.estimate_homography(flat, flat)
  assert not found and np.array_equal(homography, np.eye(3))
  _, fallbacks = flow_lib.compute_warped_flow(np.stack([flat] * 3), "dis")
  assert fallbacks == 2


def test_real_frames_rgb_and_flow_counts(testdata_dir):
  frames = video.read_video(testdata_dir / "videos" / "hmdb51" /
                            "TrumanShow_wave_f_nm_np1_fr_med_26.avi", 170, 128)
  gray = flow_lib.to_gray(frames)
  field = flow_lib.compute_flow(gray, "dis")
  assert gray.shape == (48, 128, 170) and field.shape == (47, 128, 170, 2)


def test_tvl1_jax_missing_module_gives_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "sta_cnn_jax.flow.tvl1", None)
  frames = np.zeros((2, 8, 8), np.uint8)
  with pytest.raises(ImportError, match="sta_cnn_jax.flow.tvl1"):
    flow_lib.compute_flow(frames, "tvl1_jax")


def test_tvl1_jax_is_called_in_fixed_size_batches(monkeypatch):
  batch_sizes = []

  def fake_tvl1_flow(frame0, frame1):  # stand-in with the agreed signature
    batch_sizes.append(frame0.shape[0])
    diff = frame1.astype(np.float32) - frame0.astype(np.float32)
    return np.stack([diff, -diff], -1)

  module = types.ModuleType("sta_cnn_jax.flow.tvl1")
  module.tvl1_flow = fake_tvl1_flow
  monkeypatch.setitem(sys.modules, "sta_cnn_jax.flow.tvl1", module)
  monkeypatch.setattr(flow_lib, "tvl1_jax_batch", lambda: 4)
  n = 2 * 4 + 2                            # 9 frame pairs: batches of 4, 4 and 1 (padded)
  frames = np.random.default_rng(0).integers(0, 256, (n, 6, 7)).astype(np.uint8)
  field = flow_lib.compute_flow(frames, "tvl1_jax")
  diff = frames[1:].astype(np.float32) - frames[:-1]
  np.testing.assert_array_equal(field, np.stack([diff, -diff], -1))
  assert batch_sizes == [4] * 3          # fixed batch shape: the last batch padded by repetition


def test_flow_params_are_recorded():
  assert flow_lib.flow_params("dis")["preset"] == "FAST"
  fine = flow_lib.flow_params("dis_fine")
  assert fine["preset"] == "MEDIUM" and fine["FinestScale"] == 0
  tvl1 = flow_lib.flow_params("tvl1")
  assert tvl1["Tau"] == pytest.approx(0.25) and tvl1["Lambda"] == pytest.approx(0.15)
  assert flow_lib.flow_params("farneback")["winsize"] == 15
  with pytest.raises(ValueError, match="unknown flow method"):
    flow_lib.flow_params("nope")
