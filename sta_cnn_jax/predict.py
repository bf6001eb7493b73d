r"""Classify one raw video file with exported STA-CNN streams (paper §4.1 test protocol, Eq. 11).

  python -m sta_cnn_jax.predict --video=v_Archery_g01_c01.avi \
      --checkpoint=/runs/rgb/export,/runs/flow/export[,/runs/warp/export] [--weights=1,1.5,1] \
      [--flow=dis|tvl1|tvl1_jax] [--num_segments=25] [--num_views=10|1] [--dcw_top_k=15] \
      [--top=5] [--figures=OUT_DIR] [--classes=FILE]

Each --checkpoint is an `export_inference` directory (`--mode=export`; a workdir holding
`export/` is accepted too) of one stream; its config.json gives the modality, frame size, crop,
normalisation and test protocol. Per stream:

1. every frame is decoded (data_prep.video) and resized to the stream's `input.frame_size`;
2. TSN test sampling (sampling.test_offsets, snippet_frame_indices): one snippet at the centre of
   each of S segments, over the n frames (RGB) or the n-1 flow fields (flow, warped flow);
3. the video becomes a one-video test shard (CONTRACT.md features, data_prep.shards): RGB frames
   JPEG-encoded; flow fields (data_prep.flow.FLOW_METHODS, camera-motion-compensated for
   'warpflow') quantised to uint8 and encoded as x / y planes (encode_flow_planes), with the
   bound, format and quality of the stream's dataset manifest (data_prep.prepare's defaults if
   it is not found). Only the frames the test sampling reads are encoded and only those flow
   fields computed (the same sampling.py functions pick them);
4. that shard is read by the public eval pipeline (input_pipeline.create_eval_dataset), so the
   network sees exactly what `--mode=eval` feeds it: `(S, V, crop, crop, C_in)` uint8;
5. evaluate.eval_step (jit) gives the view-averaged p(s_n) `(S, C)` and the centre-view spatial
   attention maps; metrics.video_scores gives AVE and DCW (Eq. 11, normalised to a distribution),
   as in eval_scores.npz.

Streams are fused as a weighted mean of their AVE / DCW distributions (TSN weights
RGB : flow : warped flow = 1 : 1.5 : 1): Σ w_i s_i / Σ w_i, the ranking of sta_cnn_jax.fuse
(which does not divide by Σ w_i), kept a distribution so the printed scores read as
probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import tempfile
from typing import Any, Optional, Sequence, Union

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from data_prep import flow as flow_lib
from data_prep import shards as shards_lib
from data_prep import video as video_lib
from sta_cnn_jax import checkpoints as checkpoints_lib
from sta_cnn_jax import evaluate
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import metrics
from sta_cnn_jax import sampling
from sta_cnn_jax import temporal
from sta_cnn_jax import train
from sta_cnn_jax import visualize

METHODS = ("dcw", "ave")
FLOW_MODALITIES = ("flow", "warpflow")
# data_prep.flow's default method (closest fast method to TV-L1), used when the stream's manifest
# does not say which flow it was trained on.
DEFAULT_FLOW_METHOD = "dis"
DEFAULT_TOP = 5
# TSN fusion weights RGB : flow : warped flow (= sta_cnn_jax.fuse.DEFAULT_WEIGHTS, per modality).
DEFAULT_MODALITY_WEIGHTS = {"rgb": 1.0, "flow": 1.5, "warpflow": 1.0}
# Segments per jitted call: bounds memory (25 segments x 10 views of BN-Inception at 224 px) and
# keeps one compiled shape per stream (the last call is padded by repeating a segment).
SEGMENTS_PER_STEP = 5
# (frames per snippet T, TSN new_length L) per modality (sampling.py; DESIGN.md §3).
SNIPPET_LAYOUT = {
    "rgb": (sampling.RGB_FRAMES_PER_SNIPPET, sampling.RGB_NEW_LENGTH),
    "flow": (sampling.FLOW_FRAMES_PER_SNIPPET, sampling.FLOW_NEW_LENGTH),
    "warpflow": (sampling.FLOW_FRAMES_PER_SNIPPET, sampling.FLOW_NEW_LENGTH),
}
# RGB frames are always JPEG in the shards (data_prep.prepare.process_video); flow planes are
# JPEG unless prepared with another --flow_format (data_prep.prepare's default).
RGB_FORMAT = "jpeg"
DEFAULT_FLOW_FORMAT = "jpeg"
GENERIC_CLASS_NAME = "class_{}"
# `--classes` files may be UCF101 classInd.txt style: "<1-based index> <name>" on every line.
_INDEXED_LINE = re.compile(r"^\d+\s+(\S.*)$")


class PredictError(ValueError):
  """Inputs that cannot be predicted together (bad checkpoint, class lists, arguments)."""


# ---------------------------------------------------------------------------------------------
# Streams: exported variables + config, class names, and how their shards stored frames.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardCodec:
  """How the stream's TFRecord shards stored frames (manifest.json 'rgb' / 'flow' entries).

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
    rgb = manifest.get("rgb") or {}
    flow = manifest.get("flow") or {}
    default = cls()
    return cls(rgb_quality=int(rgb.get("quality") or default.rgb_quality),
               flow_format=flow.get("format") or default.flow_format,
               flow_quality=int(flow.get("quality") or default.flow_quality),
               flow_bound=float(flow.get("bound") or default.flow_bound),
               flow_method=flow.get("method"), source=source)


@dataclasses.dataclass
class Stream:
  """One exported stream, ready to run: `step(variables, frames (1, S', V, h, w, C_in))`."""
  name: str
  directory: str
  modality: str
  config: ml_collections.ConfigDict
  variables: Any
  model: Any
  step: Any
  classes: list[str]
  class_source: str
  codec: ShardCodec

  @property
  def spatial_attention(self) -> bool:
    return self.modality == "rgb" and bool(self.config.model.spatial_attention)


def _resolve_export_dir(directory: str) -> str:
  """An export dir, or a training workdir holding `export/` (--mode=export output)."""
  nested = os.path.join(directory, checkpoints_lib.EXPORT_DIR)
  if (not os.path.isfile(os.path.join(directory, checkpoints_lib.CONFIG_JSON))
      and os.path.isfile(os.path.join(nested, checkpoints_lib.CONFIG_JSON))):
    return nested
  return directory


def _num_classes(variables: dict, config: ml_collections.ConfigDict, directory: str) -> int:
  """C from the classifier's kernel (`params/acn/fc/kernel` (1024, C)); checked against config."""
  try:
    num_classes = int(np.shape(variables["params"]["acn"]["fc"]["kernel"])[-1])
  except (KeyError, TypeError) as e:
    raise PredictError(f"{directory}: exported variables have no classifier params/acn/fc/kernel "
                       "(not an STACNN export?)") from e
  configured = int(config.get("num_classes", -1) or -1)
  if configured > 0 and configured != num_classes:
    raise PredictError(f"{directory}: config.json says num_classes={configured} but the exported "
                       f"classifier has {num_classes} outputs")
  return num_classes


def _find_manifest(directory: str, config: ml_collections.ConfigDict
                   ) -> tuple[Optional[dict], Optional[str]]:
  """The dataset manifest of a stream: `<export>/manifest.json`, else `<config.data_dir>/...`."""
  candidates = [directory]
  if config.get("data_dir"):
    candidates.append(str(config.data_dir))
  for folder in candidates:
    path = os.path.join(folder, input_pipeline.MANIFEST_NAME)
    if os.path.isfile(path):
      return input_pipeline.read_manifest(folder), path
  return None, None


def read_class_names(path: str) -> list[str]:
  """Class names from a text file: one name per line, or UCF101 `classInd.txt` lines `1 Name`.

  Blank lines are skipped; CR (CRLF files) and surrounding spaces (HMDB51's class_list.txt) are
  stripped.
  """
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except OSError as e:
    raise PredictError(f"{path}: cannot read the class names file ({e})") from e
  names = [line.strip() for line in lines if line.strip()]
  if not names:
    raise PredictError(f"{path}: no class names (expected one name per line)")
  indexed = [_INDEXED_LINE.match(n) for n in names]
  if all(indexed):
    names = [m.group(1).strip() for m in indexed]
  return names


def _class_names(directory: str, config: ml_collections.ConfigDict, num_classes: int,
                 manifest: Optional[dict], manifest_path: Optional[str],
                 class_names: Optional[Sequence[str]]) -> tuple[list[str], str]:
  """(names, where they came from): given list > config 'classes' > manifest > generic names."""
  if class_names is not None:
    names, source = list(class_names), "--classes"
  elif config.get("classes"):
    names, source = list(config.classes), os.path.join(directory, checkpoints_lib.CONFIG_JSON)
  elif manifest is not None and manifest.get("classes"):
    names, source = list(manifest["classes"]), manifest_path
  else:
    return ([GENERIC_CLASS_NAME.format(i) for i in range(num_classes)],
            "none found (generic names; pass --classes=FILE)")
  if len(names) != num_classes:
    raise PredictError(f"{source} lists {len(names)} class names but the classifier of "
                       f"{directory} has {num_classes} outputs")
  return [str(n) for n in names], source


def load_stream(directory: str, class_names: Optional[Sequence[str]] = None,
                name: Optional[str] = None) -> Stream:
  """Loads an exported stream (checkpoints.load_inference) and jits its eval step."""
  directory = _resolve_export_dir(os.path.abspath(str(directory)))
  try:
    variables, config = checkpoints_lib.load_inference(directory)
  except (FileNotFoundError, checkpoints_lib.CheckpointCorruptError) as e:
    raise PredictError(f"--checkpoint {e}") from e
  modality = config.get("modality")
  if modality not in input_pipeline.MODALITIES:
    raise PredictError(f"{directory}/{checkpoints_lib.CONFIG_JSON}: modality {modality!r} is "
                       f"not one of {input_pipeline.MODALITIES}")
  num_classes = _num_classes(variables, config, directory)
  manifest, manifest_path = _find_manifest(directory, config)
  classes, class_source = _class_names(directory, config, num_classes, manifest, manifest_path,
                                       class_names)
  codec = ShardCodec.from_manifest(manifest, manifest_path) if manifest else ShardCodec()
  model = train.create_model(config, num_classes)
  step = jax.jit(functools.partial(evaluate.eval_step, model=model, config=config))
  return Stream(name=name or modality, directory=directory, modality=modality, config=config,
                variables=jax.device_put(variables), model=model, step=step, classes=classes,
                class_source=class_source, codec=codec)


def check_same_classes(streams: Sequence[Stream]) -> None:
  """Streams are fused class by class: refuse unless their class lists are identical."""
  first = streams[0]
  for other in streams[1:]:
    if other.classes == first.classes:
      continue
    where = next((i for i, (a, b) in enumerate(zip(first.classes, other.classes)) if a != b),
                 min(len(first.classes), len(other.classes)))
    a = first.classes[where] if where < len(first.classes) else "<none>"
    b = other.classes[where] if where < len(other.classes) else "<none>"
    raise PredictError(
        f"cannot fuse streams with different class lists: {first.directory} "
        f"({len(first.classes)} classes from {first.class_source}) and {other.directory} "
        f"({len(other.classes)} classes from {other.class_source}); first difference at index "
        f"{where}: {a!r} vs {b!r}. Use streams trained on the same dataset (or --classes=FILE if "
        "only the names are missing).")


# ---------------------------------------------------------------------------------------------
# Frames -> the eval pipeline's snippets.
# ---------------------------------------------------------------------------------------------


def snippet_indices(num_frames: int, modality: str, num_segments: int) -> np.ndarray:
  """`(S, T)` frame (RGB) or flow-field indices of the TSN test snippets (sampling.py)."""
  frames_per_snippet, new_length = SNIPPET_LAYOUT[modality]
  offsets = sampling.test_offsets(num_frames, num_segments, new_length)
  return np.asarray(sampling.snippet_frame_indices(offsets, frames_per_snippet, num_frames))


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


def _decode(data: bytes, channels: int) -> np.ndarray:
  """One stored image as the eval pipeline decodes it (libjpeg's accurate IDCT; PNG)."""
  if tf.io.is_jpeg(data):
    image = tf.io.decode_jpeg(data, channels=channels, dct_method=input_pipeline.JPEG_DCT_METHOD)
  else:
    image = tf.io.decode_png(data, channels=channels, dtype=tf.uint8)
  return np.asarray(image)


def flow_codes(flow: np.ndarray, codec: ShardCodec = ShardCodec()) -> np.ndarray:
  """`(P, H, W, 2)` float flow -> the `(P, H, W, 2)` uint8 codes the network is fed.

  Quantised (clip to ±bound, q = round(255 (v + bound) / (2 bound))) and encoded as x / y planes
  by data_prep.flow.encode_flow_planes (as the shards store them), then decoded as the eval
  pipeline decodes them. With a lossless format ('png')
  `dequantize_flow(codes) == dequantize_flow(quantize_flow(flow))` exactly; the network's
  normalised input (q - 128) is an affine function of that dequantised flow.
  """
  xs, ys = flow_lib.encode_flow_planes(np.asarray(flow, np.float32), codec.flow_bound,
                                       codec.flow_format, codec.flow_quality)
  return np.stack([np.concatenate([_decode(x, 1), _decode(y, 1)], axis=-1)
                   for x, y in zip(xs, ys)])


def video_example(frames: np.ndarray, modality: str, num_segments: int, codec: ShardCodec,
                  gray: Optional[np.ndarray] = None, flow_method: str = DEFAULT_FLOW_METHOD
                  ) -> tuple[bytes, np.ndarray, int]:
  """The stream's modality of one video as a shard `tf.train.Example` (CONTRACT.md features).

  Only what the test sampling reads is computed: the sampled RGB frames are JPEG-encoded, the
  sampled flow fields computed, quantised and encoded (data_prep.prepare's encoders). The other
  list entries are empty strings, never decoded by the pipeline: were its sampling ever to differ
  from sampling.test_offsets, decoding one fails loudly instead of feeding made-up frames.

  Args:
    frames: `(n, H, W, 3)` uint8 RGB frames at the stream's frame size.
    modality: 'rgb', 'flow' or 'warpflow'.
    num_segments: S.
    codec: how the stream's shards store frames.
    gray: `(n, H, W)` grey frames (flow streams).
    flow_method: a data_prep.flow.FLOW_METHODS name (flow streams).

  Returns:
    (serialised Example, `(S, T)` sampled frame / field indices, homography fallbacks).
  """
  n, height, width = frames.shape[:3]
  features = {"video_id": b"predict", "label": 0, "height": height, "width": width,
              "num_frames": n, "num_flow": 0 if modality == "rgb" else n - 1}
  if modality == "rgb":
    indices = snippet_indices(n, modality, num_segments)  # (S, 2) frames
    encoded = [b""] * n
    for i in np.unique(indices):
      encoded[i] = flow_lib.encode_image(frames[i], RGB_FORMAT, codec.rgb_quality)
    features["rgb"] = encoded
    return shards_lib.encode_example(features), indices, 0
  indices = snippet_indices(n - 1, modality, num_segments)  # (S, 5) flow fields
  fields, fallbacks = selected_flow(gray, np.unique(indices), flow_method,
                                    warped=modality == "warpflow")
  planes_x, planes_y = [b""] * (n - 1), [b""] * (n - 1)
  for t, field in fields.items():
    (planes_x[t],), (planes_y[t],) = flow_lib.encode_flow_planes(
        field[None], codec.flow_bound, codec.flow_format, codec.flow_quality)
  features[f"{modality}_x"], features[f"{modality}_y"] = planes_x, planes_y
  return shards_lib.encode_example(features), indices, fallbacks


def eval_views(example: bytes, modality: str, frame_size: Sequence[int], num_segments: int,
               num_views: int, crop_size: int) -> np.ndarray:
  """One video's Example through the eval input pipeline -> `(S, V, crop, crop, C_in)` uint8.

  Written as a one-video test shard (+ manifest) in a temporary folder and read back with
  input_pipeline.create_eval_dataset: the same parsing, sampling, decoding, channel stacking and
  GroupOverSample views as `--mode=eval`.
  """
  with tempfile.TemporaryDirectory(prefix="sta_cnn_predict_") as data_dir:
    name = shards_lib.SHARD_PATTERN.format(
        split=input_pipeline.EVAL_SPLIT, modalities=shards_lib.modalities_tag([modality]),
        index=0, num_shards=1)
    with tf.io.TFRecordWriter(os.path.join(data_dir, name)) as writer:
      writer.write(example)
    with open(os.path.join(data_dir, input_pipeline.MANIFEST_NAME), "w") as f:
      json.dump({"modalities": [modality], "frame_size": list(frame_size),
                 "num_videos": {input_pipeline.EVAL_SPLIT: 1}}, f)
    config = ml_collections.ConfigDict({
        "data_dir": data_dir, "modality": modality, "eval_split": input_pipeline.EVAL_SPLIT,
        "eval": {"num_segments": num_segments, "num_views": num_views, "batch_size": 1},
        "input": {"crop_size": crop_size}})
    batches = input_pipeline.create_eval_dataset(config, num_devices=1)
    batch = next(iter(batches))
  return np.asarray(batch["frames"][0, 0])  # (D=1, B=1, S, V, ...) -> (S, V, ...)


@dataclasses.dataclass
class _Video:
  """Decoded frames and their grey versions per frame size (one video, shared by streams)."""
  path: str
  decoded: dict = dataclasses.field(default_factory=dict)
  gray: dict = dataclasses.field(default_factory=dict)

  def frames(self, frame_size: tuple[int, int]) -> video_lib.DecodedVideo:
    if frame_size not in self.decoded:
      height, width = frame_size
      self.decoded[frame_size] = video_lib.decode_video(self.path, width=width, height=height)
    return self.decoded[frame_size]

  def grey(self, frame_size: tuple[int, int]) -> np.ndarray:
    if frame_size not in self.gray:
      self.gray[frame_size] = flow_lib.to_gray(self.frames(frame_size).frames)
    return self.gray[frame_size]


def stream_inputs(video: _Video, stream: Stream, num_segments: int, num_views: int,
                  flow_method: Optional[str]) -> dict:
  """The stream's test snippets `(S, V, crop, crop, C_in)` uint8 and where they come from."""
  frame_size = tuple(int(s) for s in stream.config.input.frame_size)
  crop = int(stream.config.input.crop_size)
  if min(frame_size) < crop:
    raise PredictError(f"{stream.directory}: crop_size {crop} exceeds input.frame_size "
                       f"{frame_size}")
  frames = video.frames(frame_size).frames  # (n, H, W, 3)
  flow = stream.modality in FLOW_MODALITIES
  example, indices, fallbacks = video_example(
      frames, stream.modality, num_segments, stream.codec,
      gray=video.grey(frame_size) if flow else None, flow_method=flow_method)
  views = eval_views(example, stream.modality, frame_size, num_segments, num_views, crop)
  # Field t starts at frame t: the first frame of each snippet shows the segment.
  return {"views": views, "indices": indices, "thumbnails": frames[indices[:, 0]],
          "homography_fallbacks": fallbacks}


# ---------------------------------------------------------------------------------------------
# Network, scores, fusion.
# ---------------------------------------------------------------------------------------------


def segment_predictions(stream: Stream, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(S, V, h, w, C_in)` uint8 -> p(s_n) `(S, C)` and centre-view attention `(S, K, K)`.

  evaluate.eval_step on SEGMENTS_PER_STEP segments at a time (exact: it averages views within a
  segment only); the last chunk is padded by repeating the last segment.
  """
  num_segments = views.shape[0]
  chunk = min(SEGMENTS_PER_STEP, num_segments)
  padded = -(-num_segments // chunk) * chunk
  index = np.minimum(np.arange(padded), num_segments - 1)
  probs, attention = [], []
  for start in range(0, padded, chunk):
    out = jax.device_get(stream.step(stream.variables, views[None, index[start:start + chunk]]))
    probs.append(out["probs"][0])
    attention.append(out["attention"][0])
  return (np.concatenate(probs)[:num_segments].astype(np.float32),
          np.concatenate(attention)[:num_segments].astype(np.float32))


def segment_attention(probs: np.ndarray, dcw_top_k: int) -> tuple[np.ndarray, np.ndarray]:
  """α = 1/H per segment (Eq. 1-2) and the 0/1 mask β of the DCW's top-k segments (Eq. 11)."""
  alpha = temporal.confidence_from_probs(jnp.asarray(probs))
  selected = temporal.temporal_attention_mask(alpha, min(dcw_top_k, probs.shape[0]))
  return np.asarray(alpha), np.asarray(selected)


def fuse_scores(stream_scores: Sequence[dict], weights: Sequence[float]) -> dict:
  """Weighted mean Σ w_i s_i / Σ w_i of the streams' AVE and DCW distributions `(C,)`."""
  total = float(sum(weights))
  if len(weights) != len(stream_scores) or total <= 0 or min(weights) < 0:
    raise PredictError(f"fusion weights {list(weights)} must be {len(stream_scores)} non-negative "
                       "numbers with a positive sum")
  return {m: sum(w * np.asarray(s[m], np.float64) for w, s in zip(weights, stream_scores)) / total
          for m in METHODS}


def top_classes(scores: np.ndarray, classes: Sequence[str], k: int) -> list[dict]:
  """The k best classes, best first (ties: lower index first)."""
  order = np.argsort(-np.asarray(scores), kind="stable")[:k]
  return [{"rank": r + 1, "index": int(i), "class": classes[i], "score": float(scores[i])}
          for r, i in enumerate(order)]


def _stream_names(streams: Sequence[Stream]) -> list[str]:
  """'rgb', 'flow', ...; a repeated modality gets '#2', '#3'."""
  names, seen = [], {}
  for stream in streams:
    seen[stream.modality] = seen.get(stream.modality, 0) + 1
    count = seen[stream.modality]
    names.append(stream.modality if count == 1 else f"{stream.modality}#{count}")
  return names


def _protocol(stream: Stream, num_segments, num_views, dcw_top_k) -> tuple[int, int, int]:
  """(S, V, DCW top-k): the arguments, else the stream's config.eval, else the paper's."""
  eval_config = stream.config.get("eval") or {}
  s = num_segments or eval_config.get("num_segments") or input_pipeline.EVAL_NUM_SEGMENTS
  v = num_views or eval_config.get("num_views") or input_pipeline.EVAL_NUM_VIEWS
  k = dcw_top_k or eval_config.get("dcw_top_k") or temporal.DCW_TOP_K
  if v not in input_pipeline.SUPPORTED_EVAL_VIEWS:
    raise PredictError(f"num_views={v}: use one of {input_pipeline.SUPPORTED_EVAL_VIEWS} "
                       "(centre crop, or 4 corners + centre and their flips)")
  if s < 1 or k < 1:
    raise PredictError(f"num_segments={s} and dcw_top_k={k} must be >= 1")
  return int(s), int(v), int(k)


def _flow_method(stream: Stream, requested: Optional[str], warnings: list) -> str:
  method = requested or stream.codec.flow_method or DEFAULT_FLOW_METHOD
  if method not in flow_lib.FLOW_METHODS:
    raise PredictError(f"unknown flow method {method!r}; choose from "
                       f"{sorted(flow_lib.FLOW_METHODS)}")
  trained = stream.codec.flow_method
  if trained and trained != method:
    warnings.append(f"{stream.name}: trained on {trained!r} flow ({stream.codec.source}) but "
                    f"computing {method!r} flow")
  return method


def _as_streams(checkpoints, classes) -> list[Stream]:
  """Export dirs (a comma-separated string or a list) and/or loaded streams -> named streams."""
  if isinstance(checkpoints, (str, os.PathLike)):
    checkpoints = [d for d in str(checkpoints).split(",") if d]
  if not checkpoints:
    raise PredictError("give at least one --checkpoint (an export dir of --mode=export)")
  streams = [c if isinstance(c, Stream) else load_stream(c, classes) for c in checkpoints]
  return [dataclasses.replace(s, name=n) for s, n in zip(streams, _stream_names(streams))]


def predict_video(video_path: Union[str, os.PathLike],
                  checkpoints: Union[str, Sequence[Union[str, Stream]]],
                  weights: Optional[Sequence[float]] = None,
                  flow_method: Optional[str] = None, *,
                  num_segments: Optional[int] = None, num_views: Optional[int] = None,
                  dcw_top_k: Optional[int] = None, top: int = DEFAULT_TOP,
                  classes: Optional[Sequence[str]] = None,
                  figures_dir: Optional[str] = None, codec: Optional[ShardCodec] = None,
                  return_inputs: bool = False) -> dict:
  """Classifies one video file with one to three exported streams (see the module doc).

  Args:
    video_path: any file cv2 decodes (.avi Xvid/DivX, .mp4 H.264, ...).
    checkpoints: export dirs (comma-separated string or a list) or `load_stream`
      results (to reuse their compiled steps over several videos).
    weights: fusion weight per stream; default TSN's per modality (RGB 1, flow 1.5, warp 1).
    flow_method: a data_prep.flow.FLOW_METHODS name; default the manifest's, else 'dis'.
    num_segments, num_views, dcw_top_k: test protocol; default each stream's config.eval
      (the paper: 25 segments, 10 views, top-15).
    top: how many classes to list.
    classes: class names (index = label) for every stream, overriding what the exports say.
    figures_dir: write the Fig. 2 segment-confidence plot per stream and, for RGB streams with
      spatial attention, the attention-map figure there.
    codec: overrides how every stream's shards stored frames (default: its manifest).
    return_inputs: also return each stream's network input `(S, V, crop, crop, C_in)` uint8.

  Returns:
    {'video', 'num_frames', 'fps', 'source_size', 'warnings', 'classes', 'weights',
     'streams': [{'name', 'checkpoint', 'modality', 'num_segments', 'num_views', 'dcw_top_k',
                  'flow_method', 'class_source', 'codec', 'frame_indices' (S, T),
                  'segment_probs' (S, C), 'alpha' (S,), 'selected' (S,),
                  'attention' (S, K, K) | None, 'scores' {'dcw', 'ave'} (C,),
                  'top' {'dcw', 'ave'} [{'rank', 'index', 'class', 'score'}], 'inputs'?}],
     'scores' {'dcw', 'ave'} (C,) fused, 'top' {'dcw', 'ave'} fused, 'figures' [paths]}.

  Raises:
    data_prep.video.VideoError naming the file when it cannot be decoded; PredictError for a
    directory that is not an export, streams whose class lists differ, and bad arguments.
  """
  if top < 1:
    raise PredictError(f"top={top} must be >= 1")
  streams = _as_streams(checkpoints, classes)
  check_same_classes(streams)
  weights = ([float(w) for w in weights] if weights is not None
             else [DEFAULT_MODALITY_WEIGHTS[s.modality] for s in streams])
  if len(weights) != len(streams):
    raise PredictError(f"{len(streams)} streams but {len(weights)} fusion weights {weights}")
  video = _Video(os.fspath(video_path))
  warnings, results = [], []
  for stream in streams:
    s, v, k = _protocol(stream, num_segments, num_views, dcw_top_k)
    if codec is not None:
      stream = dataclasses.replace(stream, codec=codec)
    method = _flow_method(stream, flow_method, warnings) if stream.modality != "rgb" else None
    inputs = stream_inputs(video, stream, s, v, method)
    if inputs["homography_fallbacks"]:
      warnings.append(f"{stream.name}: no homography for {inputs['homography_fallbacks']} of the "
                      "sampled frame pairs (identity used)")
    probs, attention = segment_predictions(stream, inputs["views"])
    scores = {m: x[0] for m, x in metrics.video_scores(probs[None], k).items()}
    alpha, selected = segment_attention(probs, k)
    result = {
        "name": stream.name, "checkpoint": stream.directory, "modality": stream.modality,
        "num_segments": s, "num_views": v, "dcw_top_k": k, "flow_method": method,
        "class_source": stream.class_source, "codec": dataclasses.asdict(stream.codec),
        "frame_indices": inputs["indices"], "segment_probs": probs, "alpha": alpha,
        "selected": selected, "attention": attention if stream.spatial_attention else None,
        "scores": scores,
        "top": {m: top_classes(scores[m], stream.classes, top) for m in METHODS},
    }
    if return_inputs:
      result["inputs"] = inputs["views"]
    results.append((stream, result, inputs))
  decoded = next(iter(video.decoded.values()))
  warnings = list(decoded.warnings) + warnings
  fused = fuse_scores([r["scores"] for _, r, _ in results], weights)
  classes_ = streams[0].classes
  out = {
      "video": video.path, "num_frames": int(len(decoded.frames)), "fps": decoded.fps,
      "source_size": decoded.source_size, "warnings": warnings, "classes": classes_,
      "weights": weights, "streams": [r for _, r, _ in results], "scores": fused,
      "top": {m: top_classes(fused[m], classes_, top) for m in METHODS}, "figures": [],
  }
  if figures_dir:
    out["figures"] = write_figures(results, classes_, figures_dir, video.path, out["top"])
  return out


# ---------------------------------------------------------------------------------------------
# Figures and the printed table.
# ---------------------------------------------------------------------------------------------


def write_figures(results, classes: Sequence[str], out_dir: str, video_path: str,
                  fused_top: dict) -> list[str]:
  """Per stream: Fig. 2 segment confidences; RGB with spatial attention: Fig. 7 attention maps."""
  stem = pathlib.Path(video_path).stem
  paths = []
  for stream, result, inputs in results:
    tag = stream.name.replace("#", "")
    predictions = np.argmax(result["segment_probs"], axis=-1)
    title = (f"{stem} - {stream.name}: DCW {result['top']['dcw'][0]['class']} "
             f"(fused DCW {fused_top['dcw'][0]['class']})")
    paths.append(visualize.plot_segment_confidence(
        result["alpha"], result["selected"], pathlib.Path(out_dir) / f"{stem}_{tag}_confidence.png",
        class_names=classes, predictions=predictions, frames=inputs["thumbnails"], title=title))
    if result["attention"] is not None:
      centre = inputs["views"][:, evaluate.center_view(result["num_views"]), ..., :3]
      titles = [f"#{s + 1} {classes[p]}" for s, p in enumerate(predictions)]
      paths.append(visualize.plot_attention_maps(
          centre, result["attention"], pathlib.Path(out_dir) / f"{stem}_{tag}_attention.png",
          titles=titles))
  return [str(p) for p in paths]


def format_table(result: dict) -> str:
  """The report the CLI prints: streams, then the fused top-k of DCW and AVE side by side."""
  width = max([len("class")] + [len(e["class"]) for m in METHODS for e in result["top"][m]])
  lines = [f"video: {result['video']} ({result['num_frames']} frames, {result['fps']:.2f} fps, "
           f"source {result['source_size'][1]}x{result['source_size'][0]})"]
  for w in result["warnings"]:
    lines.append(f"warning: {w}")
  for s, weight in zip(result["streams"], result["weights"]):
    flow = f", flow {s['flow_method']}" if s["flow_method"] else ""
    lines.append(f"stream {s['name']:<9} weight {weight:g}: {s['num_segments']} segments x "
                 f"{s['num_views']} views{flow}; top-1 DCW {s['top']['dcw'][0]['class']} "
                 f"{s['top']['dcw'][0]['score']:.4f}, AVE {s['top']['ave'][0]['class']} "
                 f"{s['top']['ave'][0]['score']:.4f}  [{s['checkpoint']}]")
  label = "fused (weighted mean)" if len(result["streams"]) > 1 else result["streams"][0]["name"]
  lines.append(f"top-{len(result['top']['dcw'])} {label}:")
  lines.append(f"{'rank':>4}  {'DCW class':<{width}}  {'score':>6}  {'AVE class':<{width}}  "
               f"{'score':>6}")
  for d, a in zip(result["top"]["dcw"], result["top"]["ave"]):
    lines.append(f"{d['rank']:>4}  {d['class']:<{width}}  {d['score']:6.4f}  "
                 f"{a['class']:<{width}}  {a['score']:6.4f}")
  for path in result["figures"]:
    lines.append(f"figure: {path}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------


def define_flags() -> None:
  """CLI flags; defined only when run as a program (importing this module defines none)."""
  flags.DEFINE_string("video", None, "Video file to classify (any format cv2 decodes).",
                      required=True)
  flags.DEFINE_list("checkpoint", None, "Export dirs (--mode=export), one per stream.",
                    required=True)
  flags.DEFINE_list("weights", None, "Fusion weight per stream (default TSN: RGB 1, flow 1.5, "
                    "warped flow 1).")
  flags.DEFINE_enum("flow", None, sorted(flow_lib.FLOW_METHODS),
                    "Optical flow for flow streams (default: the manifest's, else dis).")
  flags.DEFINE_integer("num_segments", None, "Test segments (default config.eval: 25).")
  flags.DEFINE_integer("num_views", None, "Views per segment, 10 or 1 (default config.eval).")
  flags.DEFINE_integer("dcw_top_k", None, "Segments DCW keeps (default config.eval: 15).")
  flags.DEFINE_integer("top", DEFAULT_TOP, "Classes to print.")
  flags.DEFINE_string("figures", None, "Folder for the segment-confidence / attention PNGs.")
  flags.DEFINE_string("classes", None, "Class names file (one per line, or classInd.txt).")
  flags.DEFINE_string("json", None, "Also write the top-k and scores as JSON to this file.")


def parse_weights(values: Sequence[str]) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError as e:
    raise PredictError(f"--weights={','.join(values)}: expected numbers, e.g. 1,1.5,1") from e


def _plain(value: Any) -> Any:
  """numpy arrays / scalars (also nested in dicts, lists) -> JSON-ready Python values."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


def json_ready(result: dict) -> dict:
  """predict_video's result without the bulky arrays (attention maps, network inputs)."""
  streams = [{k: v for k, v in s.items() if k not in ("attention", "inputs")}
             for s in result["streams"]]
  return _plain({**result, "streams": streams})


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep Orbax's restore messages out of the report
  try:
    classes = read_class_names(f.classes) if f.classes else None
    result = predict_video(
        f.video, f.checkpoint, weights=parse_weights(f.weights) if f.weights else None,
        flow_method=f.flow, num_segments=f.num_segments, num_views=f.num_views,
        dcw_top_k=f.dcw_top_k, top=f.top, classes=classes, figures_dir=f.figures)
  except (video_lib.VideoError, PredictError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  print(format_table(result))
  if f.json:
    with open(f.json, "w") as out:
      json.dump(json_ready(result), out, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
