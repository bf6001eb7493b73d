"""One video's tf.train.Example -> its snippets: TF graph functions, per video.

Parse (`parse_video`), TSN sampling (sampling.py), decoding of only the sampled frames, and the
views of each mode: the train crops (`train_sample` + `train_augment`, TSN group augmentation
of augment.py), the eval views (`eval_video`: 10 or 1 views of every test segment) and SAN
pre-training's RGB pairs with their flow (`san_pretrain_example`, Eq. 4). The input pipeline
maps them over the shards; inference maps the same functions over the frames of one video.

Shard features: docs/design.md, "Shard format"; stream facts (features, snippet layout,
channels): modalities.py.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf

from sta_cnn_jax import augment
from sta_cnn_jax import modalities
from sta_cnn_jax import sampling

MODALITY_FEATURES = modalities.MODALITY_FEATURES
input_channels = modalities.input_channels
# libjpeg's accurate integer IDCT (JDCT_ISLOW), the one PIL and OpenCV use, so frames match
# what tsn-pytorch decodes bit for bit; TF's default (INTEGER_FAST) is off by ~1 grey level.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
# TSN's 10-view oversampling (GroupOverSample): 5 crops and their mirror images.
OVERSAMPLE_VIEWS = 10
# Per-video random numbers, one stateless sub-key each.
_VIDEO_STREAMS = ("segments", "crop_pair", "crop_offset", "flip")


def snippet_layout(modality: str):
  """(frames per snippet T, TSN new_length L, channels per decoded image c)."""
  return modalities.snippet_layout(modality)


def parse_video(serialized, modality: str):
  """Parses id, label and the modality's frame lists (bytes, undecoded) of one Example."""
  features = {
      "video_id": tf.io.FixedLenFeature([], tf.string),
      "label": tf.io.FixedLenFeature([], tf.int64),
  }
  for name in MODALITY_FEATURES[modality]:
    features[name] = tf.io.VarLenFeature(tf.string)
  parsed = tf.io.parse_single_example(serialized, features)
  planes = [parsed[name].values for name in MODALITY_FEATURES[modality]]
  # Frame count from the lists themselves (robust to a wrong num_frames / num_flow field).
  num_frames = tf.reduce_min(tf.stack([tf.size(p) for p in planes]))
  check = tf.debugging.Assert(num_frames > 0, [
      "video", parsed["video_id"], f"has no {modality} frames (empty or missing features "
      f"{'/'.join(MODALITY_FEATURES[modality])})"])
  with tf.control_dependencies([check]):
    num_frames = tf.identity(num_frames)
  return parsed["video_id"], tf.cast(parsed["label"], tf.int32), planes, num_frames


def gather_snippet_bytes(planes, offsets, modality: str, num_frames):
  """Encoded images of the sampled snippets only: (P*K*T,) strings, plane-major.

  P = 1 (rgb) or 2 (flow x list, then flow y list); within a plane snippet-major.
  """
  frames_per_snippet, _, _ = snippet_layout(modality)
  indices = tf.reshape(
      sampling.snippet_frame_indices(offsets, frames_per_snippet, num_frames), [-1])
  return tf.concat([tf.gather(p, indices) for p in planes], axis=0)


def decode_images(encoded, modality: str):
  """(N,) JPEG or PNG strings (one format per video) -> (N, H, W, c) uint8.

  N = P*K*T is static, so the decodes are unrolled into N independent ops: TF runs them in
  parallel and without tf.map_fn's loop overhead (2x faster measured for RGB TS(3x3)).
  """
  _, _, channels = snippet_layout(modality)
  num_images = encoded.shape[0]

  def decode_all(decode):
    return tf.stack([decode(encoded[i]) for i in range(num_images)])

  return tf.cond(
      tf.io.is_jpeg(encoded[0]),
      lambda: decode_all(lambda data: tf.io.decode_jpeg(data, channels=channels,
                                                        dct_method=JPEG_DCT_METHOD)),
      lambda: decode_all(lambda data: tf.io.decode_png(data, channels=channels)))


def stack_snippet_channels(images, modality: str, num_snippets: int):
  """(P*K*T, *spatial, c) plane-major images -> (K, *spatial, C_in) snippets.

  Channels are frame-major: RGB [R0, G0, B0, R1, G1, B1]; flow [x0, y0, x1, y1, ..., y4]
  (docs/design.md, "Shard format"). One transpose, done on the crops (train) or the views
  (eval): far cheaper than concatenating 1-channel uint8 planes along the channel axis in TF's
  CPU kernels.
  """
  frames_per_snippet, _, channels = snippet_layout(modality)
  num_planes = len(MODALITY_FEATURES[modality])
  spatial = images.shape[1:-1].as_list()
  dynamic = tf.shape(images)[1:-1]
  images = tf.reshape(images, tf.concat(
      [[num_planes, num_snippets, frames_per_snippet], dynamic, [channels]], 0))
  # (P, K, T, *spatial, c) -> (K, *spatial, T, P, c)
  rank = len(spatial)
  perm = [1] + [3 + i for i in range(rank)] + [2, 0, 3 + rank]
  images = tf.transpose(images, perm)
  channels_in = input_channels(modality)
  stacked = tf.reshape(images, tf.concat([[num_snippets], dynamic, [channels_in]], 0))
  stacked.set_shape([num_snippets] + spatial + [channels_in])
  return stacked


def video_uniforms(key, num_snippets: int):
  """Per-video uniform numbers in [0, 1), one stateless stream each."""
  keys = tf.random.experimental.stateless_split(key, len(_VIDEO_STREAMS))
  shapes = {"segments": [num_snippets], "crop_pair": [], "crop_offset": [], "flip": []}
  return {name: tf.random.stateless_uniform(shapes[name], seed=keys[i], dtype=tf.float64)
          for i, name in enumerate(_VIDEO_STREAMS)}


def train_sample(serialized, key, *, modality: str, num_snippets: int):
  """Parse + TSN train sampling; keeps only the sampled frames' bytes (cheap to shuffle)."""
  _, label, planes, num_frames = parse_video(serialized, modality)
  _, new_length, _ = snippet_layout(modality)
  uniforms = video_uniforms(key, num_snippets)
  offsets = sampling.train_offsets(num_frames, num_snippets, new_length, uniforms["segments"])
  encoded = gather_snippet_bytes(planes, offsets, modality, num_frames)
  return {"encoded": encoded, "label": label, "key": key}


def train_augment(item, *, modality: str, num_snippets: int, out_size: int,
                   scales: Sequence[float]):
  """Decode + GroupMultiScaleCrop + resize + GroupRandomHorizontalFlip -> (S, H, W, C_in)."""
  uniforms = video_uniforms(item["key"], num_snippets)
  images = decode_images(item["encoded"], modality)  # (P*K*T, H, W, c)
  shape = tf.shape(images)
  y, x, h, w = tf.unstack(augment.multiscale_crop_window(
      shape[1], shape[2], out_size, scales, uniforms["crop_pair"], uniforms["crop_offset"]))
  # Stack channels before resizing: one C_in-channel resize is cheaper than P*T small ones,
  # and resizing is per channel, so the order does not change the result.
  crops = stack_snippet_channels(images[:, y:y + h, x:x + w, :], modality, num_snippets)
  rounded = augment.resize_rounded(crops, out_size)  # (K, out, out, C_in) float
  flip = augment.should_flip(uniforms["flip"])
  snippets = tf.cast(augment.flip_if(rounded, flip, is_flow=modalities.is_flow(modality)), tf.uint8)
  snippets = tf.ensure_shape(
      snippets, [num_snippets, out_size, out_size, input_channels(modality)])
  return {"frames": snippets, "label": item["label"]}


def eval_views(images, out_size: int, num_views: int):
  """(N, H, W, c) -> (N, V', out, out, c): the 5 GroupOverSample crops, or the centre crop."""
  shape = tf.shape(images)
  if num_views == 1:
    offsets = augment.center_offset(shape[1], shape[2], out_size)[None, :]
  else:
    offsets = augment.oversample_offsets(shape[1], shape[2], out_size)
  crops = [images[:, offsets[v, 0]:offsets[v, 0] + out_size,
                  offsets[v, 1]:offsets[v, 1] + out_size, :]
           for v in range(offsets.shape[0])]
  return tf.stack(crops, axis=1)


def eval_video(serialized, *, modality: str, num_snippets: int, num_views: int,
                out_size: int):
  """Parse + TSN test sampling + views -> (S, V, out, out, C_in) uint8 and metadata."""
  video_id, label, planes, num_frames = parse_video(serialized, modality)
  _, new_length, _ = snippet_layout(modality)
  offsets = sampling.test_offsets(num_frames, num_snippets, new_length)
  encoded = gather_snippet_bytes(planes, offsets, modality, num_frames)
  images = decode_images(encoded, modality)  # (P*K*T, H, W, c)
  shape = tf.shape(images)
  check = tf.debugging.Assert(tf.minimum(shape[1], shape[2]) >= out_size, [
      "video", video_id, "frames of size", shape[1:3],
      f"are smaller than the eval out_size={out_size}"])
  with tf.control_dependencies([check]):
    images = tf.identity(images)
  views = stack_snippet_channels(eval_views(images, out_size, num_views), modality,
                                  num_snippets)  # (K, V', out, out, C_in)
  if num_views == OVERSAMPLE_VIEWS:
    views = tf.concat([views, augment.horizontal_flip(views, modalities.is_flow(modality))], axis=1)
  views = tf.ensure_shape(
      views, [num_snippets, num_views, out_size, out_size, input_channels(modality)])
  return {"frames": views, "label": label, "valid": tf.constant(True),
          "video_id": video_id}


def dequantize(q: tf.Tensor, bound: float) -> tf.Tensor:
  """Flow quantisation (docs/design.md, "Shard format"): v = q * 2 * bound / 255 - bound."""
  return tf.cast(q, tf.float32) * (2.0 * bound / 255.0) - bound


def san_pretrain_example(serialized, key, *, flow_feature: str, num_snippets: int,
                          crop_size: int, bound: float):
  """One video -> RGB pairs (S, h, w, 6) uint8 and their flow (S, h, w, 2) float32 (pixels).

  Snippet s is frames (t, t+1) with flow field t between them (data_prep writes n-1 fields
  for n frames). Random crop of crop_size (no resize, so flow values stay in pixels) and a
  random horizontal flip (image mirrored, flow x negated): the targets of Eq. 4.
  """
  fx_name, fy_name = MODALITY_FEATURES[flow_feature]
  (rgb_name,) = MODALITY_FEATURES["rgb"]
  parsed = tf.io.parse_single_example(serialized, {
      name: tf.io.VarLenFeature(tf.string) for name in (rgb_name, fx_name, fy_name)})
  rgb, fx, fy = (parsed[name].values for name in (rgb_name, fx_name, fy_name))
  num_fields = tf.minimum(tf.size(fx), tf.size(rgb) - 1)
  tf.debugging.assert_positive(num_fields, message=f"a video has no {flow_feature} fields "
                               "(--mode=pretrain_san needs shards with flow)")
  keys = tf.random.experimental.stateless_split(key, 4)
  t = tf.cast(tf.random.stateless_uniform([num_snippets], keys[0]) *
              tf.cast(num_fields, tf.float32), tf.int32)
  t = tf.minimum(t, num_fields - 1)
  decode = lambda data, ch: tf.map_fn(
      lambda d: tf.ensure_shape(tf.io.decode_image(d, channels=ch, expand_animations=False),
                                [None, None, ch]), data,
      fn_output_signature=tf.TensorSpec([None, None, ch], tf.uint8))
  first, second = decode(tf.gather(rgb, t), 3), decode(tf.gather(rgb, t + 1), 3)
  flow = tf.concat([dequantize(decode(tf.gather(fx, t), 1), bound),
                    dequantize(decode(tf.gather(fy, t), 1), bound)], axis=-1)
  pairs = tf.concat([first, second], axis=-1)                              # (S, H, W, 6)
  shape = tf.shape(pairs)
  y0 = tf.cast(tf.random.stateless_uniform([], keys[1]) *
               tf.cast(shape[1] - crop_size + 1, tf.float32), tf.int32)
  x0 = tf.cast(tf.random.stateless_uniform([], keys[2]) *
               tf.cast(shape[2] - crop_size + 1, tf.float32), tf.int32)
  pairs = pairs[:, y0:y0 + crop_size, x0:x0 + crop_size]
  flow = flow[:, y0:y0 + crop_size, x0:x0 + crop_size]
  if_flip = tf.random.stateless_uniform([], keys[3]) < 0.5
  pairs = tf.where(if_flip, pairs[:, :, ::-1], pairs)
  flow = tf.where(if_flip, flow[:, :, ::-1] * tf.constant([-1.0, 1.0]), flow)
  return {"frames": tf.ensure_shape(pairs, [num_snippets, crop_size, crop_size, 6]),
          "flow": tf.ensure_shape(flow, [num_snippets, crop_size, crop_size, 2])}


# ---------------------------------------------------------------------------------------
# One video in memory (sta_cnn_jax.video_inputs: a video file's eval views, no shards).
# ---------------------------------------------------------------------------------------


def eval_snippet_indices(num_frames: int, modality: str, num_segments: int) -> np.ndarray:
  """`(S, T)` indices of what the eval pipeline reads from a video: TSN test sampling.

  Indices of frames (rgb, T = 2) or of flow fields (flow / warpflow, T = 5) among `num_frames`
  of them: `sampling.test_offsets` and `snippet_frame_indices` with this modality's layout, as
  `eval_video` samples a parsed Example.
  """
  frames_per_snippet, new_length, _ = snippet_layout(modality)
  offsets = sampling.test_offsets(num_frames, num_segments, new_length)
  return np.asarray(sampling.snippet_frame_indices(offsets, frames_per_snippet, num_frames))


def eval_views_from_example(serialized: bytes, *, modality: str, num_segments: int,
                            num_views: int, out_size: int) -> np.ndarray:
  """One video's serialised tf.train.Example -> its eval views `(S, V, out, out, C_in)` uint8.

  The per-video map of the eval dataset (`eval_video`: parse, TSN test sampling, decode,
  GroupOverSample views, channel stacking) on one in-memory record, so the views are exactly
  what `--mode=eval` feeds the network for that video. `num_views` is 1 or 10
  (SUPPORTED_EVAL_VIEWS); frames smaller than `out_size` fail the pipeline's own check.
  """
  record = tf.data.Dataset.from_tensors(tf.constant(serialized, tf.string))
  views = record.map(lambda r: eval_video(r, modality=modality, num_snippets=num_segments,
                                           num_views=num_views, out_size=out_size))
  return views.get_single_element()["frames"].numpy()
