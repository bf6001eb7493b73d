r"""Classify one video file with exported STA-CNN streams (paper §4.1 test protocol, Eq. 11).

Each stream is an `export_inference` directory (`--mode=export`; a workdir holding `export/` is
accepted too); its config.json gives the modality, frame size, crop, normalisation and test
protocol, and its dataset facts (class names, how the shards stored frames) come from
`<export>/dataset.json` when `--mode=export` wrote one, else from the dataset manifest. Per stream:

1. sta_cnn_jax.video_inputs turns the video into the eval views `(S, V, crop, crop, C_in)` uint8
   through the eval pipeline's own per-video functions (no shards, no temporary files);
2. evaluate.eval_step (jit) gives the view-averaged p(s_n) `(S, C)` and the centre-view spatial
   attention maps; metrics.video_scores gives AVE and DCW (Eq. 11, normalised to a
   distribution), as in eval_scores.npz; α = 1/H (Eq. 1-2) and β (DCW's top-k) for figures.

Streams are fused by sta_cnn_jax.fuse.weighted_mean, the fusion of `python -m sta_cnn_jax.fuse`:
Σ w_i s_i / Σ w_i of their AVE / DCW distributions (TSN weights RGB : flow : warped flow =
1 : 1.5 : 1), a distribution, so the printed scores read as probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_prep import flow as flow_lib
from sta_cnn_jax import checkpoints as checkpoints_lib
from sta_cnn_jax import evaluate
from sta_cnn_jax import fuse
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import metrics
from sta_cnn_jax import predict_report
from sta_cnn_jax import temporal
from sta_cnn_jax import train
from sta_cnn_jax import video_inputs
from sta_cnn_jax.video_inputs import ShardCodec

METHODS = ("dcw", "ave")
# The dataset facts `--mode=export` writes beside the weights: {"classes", "num_classes",
# "frame_size", "modalities", "rgb", "flow" (the manifest's entries or null)}.
DATASET_JSON = checkpoints_lib.DATASET_JSON
# data_prep.flow's default method (closest fast method to TV-L1), used when the stream's dataset
# does not say which flow it was trained on.
DEFAULT_FLOW_METHOD = "dis"
DEFAULT_TOP = 5
# Segments per jitted call: bounds memory (25 segments x 10 views of BN-Inception at 224 px) and
# keeps one compiled shape per stream (the last call is padded by repeating a segment).
SEGMENTS_PER_STEP = 5
GENERIC_CLASS_NAME = "class_{}"


class PredictError(ValueError):
  """Inputs that cannot be predicted together (bad checkpoint, class lists, arguments)."""


# ---------------------------------------------------------------------------------------------
# Streams: exported variables + config, class names, and how their shards stored frames.
# ---------------------------------------------------------------------------------------------


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
  dataset_frame_size: Optional[tuple[int, int]] = None  # (H, W) of its shards, when known

  @property
  def spatial_attention(self) -> bool:
    return self.modality == "rgb" and bool(self.config.model.spatial_attention)

  @property
  def frame_size(self) -> tuple[int, int]:
    """(H, W) frames are resized to: config.json's input.frame_size."""
    return tuple(int(s) for s in self.config.input.frame_size)


def read_dataset_info(export_dir: str) -> Optional[dict]:
  """`<export_dir>/dataset.json` (checkpoints.load_dataset_info), or None when the export has
  none.

  Raises:
    PredictError for a file that is not a JSON object or whose classes and num_classes differ.
  """
  try:
    return checkpoints_lib.load_dataset_info(export_dir)
  except ValueError as e:
    raise PredictError(str(e)) from e


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


def _dataset_facts(directory: str, config: ml_collections.ConfigDict
                   ) -> tuple[Optional[dict], Optional[str]]:
  """(facts, path) of the stream's dataset: `<export>/dataset.json`, else the manifest
  `<export>/manifest.json`, else `<config.data_dir>/manifest.json`; (None, None) if none."""
  info = read_dataset_info(directory)
  if info is not None:
    return info, os.path.join(directory, DATASET_JSON)
  candidates = [directory] + ([str(config.data_dir)] if config.get("data_dir") else [])
  for folder in candidates:
    path = os.path.join(folder, input_pipeline.MANIFEST_NAME)
    if os.path.isfile(path):
      return input_pipeline.read_manifest(folder), path
  return None, None


def _class_names(directory: str, config: ml_collections.ConfigDict, num_classes: int,
                 facts: Optional[dict], facts_path: Optional[str],
                 class_names: Optional[Sequence[str]]) -> tuple[list[str], str]:
  """(names, where they came from): given list > dataset.json > config 'classes' > manifest >
  generic names."""
  from_export = facts_path is not None and facts_path.endswith(DATASET_JSON)
  if class_names is not None:
    names, source = list(class_names), "--classes"
  elif from_export and facts.get("classes"):
    names, source = list(facts["classes"]), facts_path
  elif config.get("classes"):
    names, source = list(config.classes), os.path.join(directory, checkpoints_lib.CONFIG_JSON)
  elif facts is not None and facts.get("classes"):
    names, source = list(facts["classes"]), facts_path
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
  facts, facts_path = _dataset_facts(directory, config)
  classes, class_source = _class_names(directory, config, num_classes, facts, facts_path,
                                       class_names)
  codec = ShardCodec.from_manifest(facts, facts_path) if facts else ShardCodec()
  frame_size = (facts or {}).get("frame_size")
  model = train.create_model(config, num_classes)
  step = jax.jit(functools.partial(evaluate.eval_step, model=model, config=config))
  return Stream(name=name or modality, directory=directory, modality=modality, config=config,
                variables=jax.device_put(variables), model=model, step=step, classes=classes,
                class_source=class_source, codec=codec,
                dataset_frame_size=tuple(int(s) for s in frame_size) if frame_size else None)


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
# Network and scores of one stream.
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
  """α = 1/H per segment (Eq. 1-2) `(S,)` and the 0/1 mask β `(S,)` of the DCW's top-k
  segments (Eq. 11) of p(s_n) `(S, C)`."""
  alpha = temporal.confidence_from_probs(jnp.asarray(probs))
  selected = temporal.temporal_attention_mask(alpha, min(dcw_top_k, probs.shape[0]))
  return np.asarray(alpha), np.asarray(selected)


def top_classes(scores: np.ndarray, classes: Sequence[str], k: int) -> list[dict]:
  """The k best classes of `(C,)` scores, best first (ties: lower index first)."""
  order = np.argsort(-np.asarray(scores), kind="stable")[:k]
  return [{"rank": r + 1, "index": int(i), "class": classes[i], "score": float(scores[i])}
          for r, i in enumerate(order)]


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
  crop = int(stream.config.input.crop_size)
  if min(stream.frame_size) < crop:
    raise PredictError(f"{stream.directory}: crop_size {crop} exceeds input.frame_size "
                       f"{stream.frame_size}")
  return int(s), int(v), int(k)


def _flow_method(stream: Stream, requested: Optional[str], warnings: list) -> Optional[str]:
  """The flow a flow stream computes (None for RGB): requested, else its dataset's, else dis."""
  if stream.modality not in video_inputs.FLOW_MODALITIES:
    return None
  method = requested or stream.codec.flow_method or DEFAULT_FLOW_METHOD
  if method not in flow_lib.FLOW_METHODS:
    raise PredictError(f"unknown flow method {method!r}; choose from "
                       f"{sorted(flow_lib.FLOW_METHODS)}")
  trained = stream.codec.flow_method
  if trained and trained != method:
    warnings.append(f"{stream.name}: trained on {trained!r} flow ({stream.codec.source}) but "
                    f"computing {method!r} flow")
  return method


def _input_warnings(stream: Stream, inputs: dict) -> list[str]:
  """What differs from `--mode=eval`: homography fallbacks, another frame size than the shards."""
  warnings = []
  if inputs["homography_fallbacks"]:
    warnings.append(f"{stream.name}: no homography for {inputs['homography_fallbacks']} of the "
                    "sampled frame pairs (identity used)")
  if stream.dataset_frame_size and stream.dataset_frame_size != stream.frame_size:
    warnings.append(f"{stream.name}: its shards' frames are {stream.dataset_frame_size} "
                    f"({stream.codec.source}) but config input.frame_size is "
                    f"{stream.frame_size}; frames are resized to the latter")
  return warnings


def run_stream(video: video_inputs.Video, stream: Stream, protocol: tuple[int, int, int],
               flow_method: Optional[str], top: int) -> tuple[dict, dict]:
  """One stream on one video: (its result entry of `predict_video`, its inputs)."""
  s, v, k = protocol
  inputs = video_inputs.stream_views(video, stream.modality, stream.frame_size,
                                     int(stream.config.input.crop_size), stream.codec, s, v,
                                     flow_method)
  probs, attention = segment_predictions(stream, inputs["views"])
  scores = {m: x[0] for m, x in metrics.video_scores(probs[None], k).items()}
  alpha, selected = segment_attention(probs, k)
  result = {
      "name": stream.name, "checkpoint": stream.directory, "modality": stream.modality,
      "num_segments": s, "num_views": v, "dcw_top_k": k, "flow_method": flow_method,
      "class_source": stream.class_source, "codec": dataclasses.asdict(stream.codec),
      "frame_indices": inputs["indices"], "segment_probs": probs, "alpha": alpha,
      "selected": selected, "attention": attention if stream.spatial_attention else None,
      "scores": scores, "top": {m: top_classes(scores[m], stream.classes, top) for m in METHODS},
  }
  return result, inputs


# ---------------------------------------------------------------------------------------------
# One video, one to three streams, fused.
# ---------------------------------------------------------------------------------------------


def _stream_names(streams: Sequence[Stream]) -> list[str]:
  """'rgb', 'flow', ...; a repeated modality gets '#2', '#3'."""
  names, seen = [], {}
  for stream in streams:
    seen[stream.modality] = seen.get(stream.modality, 0) + 1
    count = seen[stream.modality]
    names.append(stream.modality if count == 1 else f"{stream.modality}#{count}")
  return names


def _as_streams(checkpoints, classes) -> list[Stream]:
  """Export dirs (a comma-separated string or a list) and/or loaded streams -> named streams."""
  if isinstance(checkpoints, (str, os.PathLike)):
    checkpoints = [d for d in str(checkpoints).split(",") if d]
  if not checkpoints:
    raise PredictError("give at least one --checkpoint (an export dir of --mode=export)")
  streams = [c if isinstance(c, Stream) else load_stream(c, classes) for c in checkpoints]
  return [dataclasses.replace(s, name=n) for s, n in zip(streams, _stream_names(streams))]


def _fusion_weights(streams: Sequence[Stream], weights: Optional[Sequence[float]]) -> list[float]:
  """The given weights, else TSN's per modality (fuse.MODALITY_WEIGHTS); checked by fuse."""
  if weights is None:
    weights = [fuse.MODALITY_WEIGHTS[s.modality] for s in streams]
  try:
    return fuse.check_weights(weights, len(streams))
  except ValueError as e:
    raise PredictError(str(e)) from None


def _fused(results: Sequence[dict], weights: Sequence[float], classes: Sequence[str],
           top: int) -> tuple[dict, dict]:
  """(fused scores {'dcw', 'ave'} `(C,)` by fuse.weighted_mean, their top-k)."""
  scores = {m: fuse.weighted_mean([r["scores"][m] for r in results], weights) for m in METHODS}
  return scores, {m: top_classes(scores[m], classes, top) for m in METHODS}


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
    flow_method: a data_prep.flow.FLOW_METHODS name; default the dataset's, else 'dis'.
    num_segments, num_views, dcw_top_k: test protocol; default each stream's config.eval
      (the paper: 25 segments, 10 views, top-15).
    top: how many classes to list.
    classes: class names (index = label) for every stream, overriding what the exports say.
    figures_dir: write the Fig. 2 segment-confidence plot per stream and, for RGB streams with
      spatial attention, the attention-map figure there.
    codec: overrides how every stream's shards stored frames (default: its dataset's).
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
  weights = _fusion_weights(streams, weights)
  video = video_inputs.Video(os.fspath(video_path))
  warnings, runs = [], []
  for stream in streams:
    protocol = _protocol(stream, num_segments, num_views, dcw_top_k)
    if codec is not None:
      stream = dataclasses.replace(stream, codec=codec)
    method = _flow_method(stream, flow_method, warnings)
    result, inputs = run_stream(video, stream, protocol, method, top)
    warnings += _input_warnings(stream, inputs)
    if return_inputs:
      result["inputs"] = inputs["views"]
    runs.append((result, inputs))
  decoded = video.first_decoded()
  results = [r for r, _ in runs]
  fused, fused_top = _fused(results, weights, streams[0].classes, top)
  out = {
      "video": video.path, "num_frames": int(len(decoded.frames)), "fps": decoded.fps,
      "source_size": decoded.source_size, "warnings": list(decoded.warnings) + warnings,
      "classes": streams[0].classes, "weights": weights, "streams": results, "scores": fused,
      "top": fused_top, "figures": [],
  }
  if figures_dir:
    out["figures"] = predict_report.write_figures(runs, out["classes"], figures_dir, video.path,
                                                  fused_top)
  return out
