r"""A video file -> one stream's eval views, through the eval pipeline's own per-video functions.

Per stream (paper §4.1 test protocol):

1. every frame is decoded (data_prep.video) and resized to the stream's frame size (`Video`);
2. TSN test sampling (snippets.eval_snippet_indices) takes one snippet at the centre of
   each of S segments, over the n frames (RGB) or the n-1 flow fields (flow, warped flow);
3. the video becomes the tf.train.Example a shard would hold (docs/design.md, "Shard format";
   data_prep.shards.encode_example), in memory: the sampled RGB frames JPEG-encoded; the sampled
   flow fields computed on the fly (data_prep.flow.FLOW_METHODS, camera-motion-compensated for
   'warpflow'), quantised to uint8 and encoded as x / y planes (encode_flow_planes) with the
   bound, format and quality of the stream's dataset (`ShardCodec`). List entries the sampling
   does not read stay empty;
4. that Example goes through snippets.eval_views_from_example, the per-video map of the
   eval dataset (parse, sampling, decode, GroupOverSample views, channel stacking), so the
   network sees exactly what `--mode=eval` feeds it: `(S, V, crop, crop, C_in)` uint8.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from data_prep import flow as flow_lib
from data_prep import shards as shards_lib
from data_prep import video as video_lib
from sta_cnn_jax import snippets

FLOW_MODALITIES = ("flow", "warpflow")
# RGB frames are always JPEG in the shards (data_prep.prepare.process_video); flow planes are
# JPEG unless prepared with another --flow_format (data_prep.prepare's default).
RGB_FORMAT = "jpeg"
DEFAULT_FLOW_FORMAT = "jpeg"
# The id and label of the in-memory Example (the pipeline parses them; nothing reads them back).
VIDEO_ID = b"predict"


@dataclasses.dataclass(frozen=True)
class ShardCodec:
  """How the stream's TFRecord shards stored frames (the manifest's 'rgb' / 'flow' entries).

  Defaults are data_prep.prepare's: JPEG at quality 95, flow bound 20 px.
  """
  rgb_quality: int = flow_lib.DEFAULT_JPEG_QUALITY
  flow_format: str = DEFAULT_FLOW_FORMAT
  flow_quality: int = flow_lib.DEFAULT_JPEG_QUALITY
  flow_bound: float = flow_lib.DEFAULT_BOUND
  flow_method: Optional[str] = None  # the flow the shards hold, when the manifest says
  source: str = "data_prep.prepare defaults"

  @classmethod
  def from_manifest(cls, manifest: dict, source: str) -> "ShardCodec":
    """From a manifest (or dataset.json) dict: its 'rgb' and 'flow' entries, either may be null."""
    rgb = manifest.get("rgb") or {}
    flow = manifest.get("flow") or {}
    default = cls()
    return cls(rgb_quality=int(rgb.get("quality") or default.rgb_quality),
               flow_format=flow.get("format") or default.flow_format,
               flow_quality=int(flow.get("quality") or default.flow_quality),
               flow_bound=float(flow.get("bound") or default.flow_bound),
               flow_method=flow.get("method"), source=source)


@dataclasses.dataclass
class Video:
  """One video file's decoded frames and grey frames per frame size (shared by its streams)."""
  path: str
  decoded: dict = dataclasses.field(default_factory=dict)
  gray: dict = dataclasses.field(default_factory=dict)

  def frames(self, frame_size: tuple[int, int]) -> video_lib.DecodedVideo:
    """Every frame, resized to `frame_size` (H, W): DecodedVideo.frames `(n, H, W, 3)` uint8."""
    if frame_size not in self.decoded:
      height, width = frame_size
      self.decoded[frame_size] = video_lib.decode_video(self.path, width=width, height=height)
    return self.decoded[frame_size]

  def grey(self, frame_size: tuple[int, int]) -> np.ndarray:
    """`(n, H, W)` uint8 grey frames (flow input)."""
    if frame_size not in self.gray:
      self.gray[frame_size] = flow_lib.to_gray(self.frames(frame_size).frames)
    return self.gray[frame_size]

  def first_decoded(self) -> video_lib.DecodedVideo:
    """The frames decoded first (frame count, fps, source size and decode warnings)."""
    return next(iter(self.decoded.values()))


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
  """Sorted unique ints -> inclusive runs of consecutive values [(first, last), ...]."""
  runs = []
  for i in indices:
    if runs and i == runs[-1][1] + 1:
      runs[-1] = (runs[-1][0], i)
    else:
      runs.append((i, i))
  return runs


def selected_flow(gray: np.ndarray, fields: Sequence[int], method: str,
                  warped: bool) -> tuple[dict[int, np.ndarray], int]:
  """Flow fields `fields` (field t: frame t -> t+1) of `(n, H, W)` grey frames.

  Computed run by run with data_prep.flow's own functions (compute_flow / compute_warped_flow,
  as data_prep.prepare does); a field depends only on its two frames, so this equals the whole
  video's flow at those indices. Returns ({t: (H, W, 2) float32}, warped-flow homography
  fallbacks).
  """
  flow_lib.get_flow_fn(method)  # clear error for an unknown method
  by_index, fallbacks = {}, 0
  for first, last in _runs(sorted({int(i) for i in fields})):
    chunk = gray[first:last + 2]
    if warped:
      field, missed = flow_lib.compute_warped_flow(chunk, method)
      fallbacks += missed
    else:
      field = flow_lib.compute_flow(chunk, method)
    by_index.update(zip(range(first, last + 1), field))
  return by_index, fallbacks


def _rgb_features(frames: np.ndarray, indices: np.ndarray, codec: ShardCodec) -> dict:
  """The 'rgb' list: the sampled frames of `(n, H, W, 3)` as JPEG, b'' elsewhere."""
  encoded = [b""] * len(frames)
  for i in np.unique(indices):
    encoded[i] = flow_lib.encode_image(frames[i], RGB_FORMAT, codec.rgb_quality)
  return {"rgb": encoded}


def _flow_features(gray: np.ndarray, indices: np.ndarray, modality: str, codec: ShardCodec,
                   flow_method: str) -> tuple[dict, int]:
  """The '<modality>_x' / '_y' lists: the sampled fields of `(n, H, W)` grey frames as
  quantised planes, b'' elsewhere; and the homography fallbacks (warped flow)."""
  fields, fallbacks = selected_flow(gray, np.unique(indices), flow_method,
                                    warped=modality == "warpflow")
  planes_x, planes_y = [b""] * (len(gray) - 1), [b""] * (len(gray) - 1)
  for t, field in fields.items():
    (planes_x[t],), (planes_y[t],) = flow_lib.encode_flow_planes(
        field[None], codec.flow_bound, codec.flow_format, codec.flow_quality)
  return {f"{modality}_x": planes_x, f"{modality}_y": planes_y}, fallbacks


def video_example(frames: np.ndarray, modality: str, num_segments: int, codec: ShardCodec,
                  gray: Optional[np.ndarray] = None, flow_method: Optional[str] = None
                  ) -> tuple[bytes, np.ndarray, int]:
  """The stream's modality of one video as a shard's `tf.train.Example` (module doc, step 3).

  Only what the test sampling reads is computed. The other list entries are empty strings,
  never decoded by the pipeline: were its sampling ever to differ from
  snippets.eval_snippet_indices, decoding one fails loudly instead of feeding made-up
  frames.

  Args:
    frames: `(n, H, W, 3)` uint8 RGB frames at the stream's frame size.
    modality: 'rgb', 'flow' or 'warpflow'.
    num_segments: S.
    codec: how the stream's shards store frames.
    gray: `(n, H, W)` grey frames (flow streams).
    flow_method: a data_prep.flow.FLOW_METHODS name (flow streams).

  Returns:
    (serialised Example, `(S, T)` sampled frame (T = 2) / flow-field (T = 5) indices,
    homography fallbacks).
  """
  n, height, width = frames.shape[:3]
  flow = modality in FLOW_MODALITIES
  indices = snippets.eval_snippet_indices(n - 1 if flow else n, modality, num_segments)
  features = {"video_id": VIDEO_ID, "label": 0, "height": height, "width": width,
              "num_frames": n, "num_flow": n - 1 if flow else 0}
  if flow:
    planes, fallbacks = _flow_features(gray, indices, modality, codec, flow_method)
  else:
    planes, fallbacks = _rgb_features(frames, indices, codec), 0
  return shards_lib.encode_example({**features, **planes}), indices, fallbacks


def stream_views(video: Video, modality: str, frame_size: tuple[int, int], crop_size: int,
                 codec: ShardCodec, num_segments: int, num_views: int,
                 flow_method: Optional[str]) -> dict:
  """One stream's eval views of `video` and where they come from.

  Returns:
    {'views': `(S, V, crop, crop, C_in)` uint8, 'indices': `(S, T)` sampled frames / fields,
     'thumbnails': `(S, H, W, 3)` the first frame of each snippet (field t starts at frame t),
     'homography_fallbacks': int}.
  """
  frames = video.frames(frame_size).frames  # (n, H, W, 3)
  gray = video.grey(frame_size) if modality in FLOW_MODALITIES else None
  example, indices, fallbacks = video_example(frames, modality, num_segments, codec, gray=gray,
                                              flow_method=flow_method)
  views = snippets.eval_views_from_example(
      example, modality=modality, num_segments=num_segments, num_views=num_views,
      out_size=crop_size)
  return {"views": views, "indices": indices, "thumbnails": frames[indices[:, 0]],
          "homography_fallbacks": fallbacks}
