"""Tests of sta_cnn_jax.predict / inference / video_inputs on real clips (shared/testdata) with
tiny exported streams.

Two randomly initialised STACNN streams (RGB with spatial attention, flow) at 64 px crops of
64x96 frames are exported with checkpoints.export_inference; the test protocol runs with 5
segments and the centre view only. Every expected value is recomputed here with NumPy from the
per-stream outputs (AVE, DCW Eq. 11, α = 1/H, the weighted fusion) or from independently
computed flow (FLOW_METHODS + the TSN test-offset formula written out).

The same runs are also pinned to the numbers the code gave before the predict / inference split
(issue 12): tests/data/predict_pinned.json, written by `python -m tests.test_predict
--write-pinned` (its '_provenance' entry names the commit that produced it).
"""
# pylint: disable=redefined-outer-name  (pytest fixtures)

import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import demo as demo_config
from data_prep import flow as flow_lib
from data_prep import shards as shards_lib
from data_prep import video as video_lib
from sta_cnn_jax import checkpoints
from sta_cnn_jax import inference
from sta_cnn_jax import modalities
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import snippets
from sta_cnn_jax import predict
from sta_cnn_jax import train
from sta_cnn_jax import video_inputs
# jax_cache_dir is a fixture (one XLA compilation cache shared with the CLI subprocesses).
from tests.train_utils import REPO_ROOT, cache_env, jax_cache_dir  # pylint: disable=unused-import

CLASSES = ("Archery", "Basketball", "SoccerJuggling", "ApplyEyeMakeup", "wave")
FRAME_HW = (64, 96)
CROP = 64
SAN_WIDTHS = (4, 4, 4, 4, 8, 8, 8, 8, 8, 8)
SEGMENTS = 5
DCW_TOP_K = 3
TOP = 5
ROWS = {"rgb": "rgb,sta_ts3x3_3x1", "flow": "flow,tam_ts3x3_3x1",
        "warpflow": "warpflow,tam_ts3x3_3x1"}
# Same constant as temporal.MIN_ENTROPY (α = 1/max(H, ε)), restated for the NumPy reference.
MIN_ENTROPY = 1e-6
# JPEG (quality 95) of a quantised flow plane: codes move by at most a few levels.
MAX_JPEG_CODE_ERROR = 8
SCORE_RTOL, SCORE_ATOL = 1e-5, 1e-6
# Classifier scale of the random streams, so that segment predictions are neither one-hot (0-255
# RGB input makes He-initialised logits huge) nor uniform: α and the DCW selection then vary.
FC_SCALE = {"rgb": 0.02, "flow": 0.3}

# Pinned outputs of the pre-refactor code (module doc); per-stream and fused scores to PIN_ATOL.
PINNED_FILE = pathlib.Path(__file__).parent / "data" / "predict_pinned.json"
PIN_ATOL = 1e-5

AVI = "videos/ucf101/v_Archery_g01_c01.avi"
MP4 = "videos/other/mmaction2_demo.mp4"
DIVX = "videos/hmdb51/RATRACE_wave_f_nm_np1_fr_goo_37.avi"


def _config(modality: str, data_dir: str):
  config = demo_config.get_config(ROWS[modality])
  config.data_dir = data_dir
  config.num_classes = len(CLASSES)
  config.input.frame_size = FRAME_HW
  config.input.crop_size = CROP
  config.model.san_widths = SAN_WIDTHS
  config.eval.num_segments = SEGMENTS
  config.eval.num_views = 1
  config.eval.dcw_top_k = DCW_TOP_K
  return config


def _recipe(modality: str) -> str:
  return "rgb" if modality == "rgb" else "flow"


def _random_variables(model, channels: int, seed: int, fc_scale: float) -> dict:
  """He-normal kernels (classifier x fc_scale), BN identity statistics: a random STACNN without
  compiling its init."""
  abstract = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, CROP, CROP, channels), jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = [p.key for p in path]
    if names[-1] in ("kernel", "w"):
      fan_in = int(np.prod(leaf.shape[:-1]))
      std = np.sqrt(2.0 / fan_in) * (fc_scale if "fc" in names else 1.0)
      return rng.normal(0.0, std, leaf.shape).astype(leaf.dtype)
    if names[-1] in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _write_manifest(folder, classes=CLASSES):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "manifest.json").write_text(json.dumps({
      "classes": list(classes), "frame_size": list(FRAME_HW),
      "rgb": {"format": "jpeg", "quality": 95},
      "flow": {"method": "dis", "bound": 20.0, "format": "jpeg", "quality": 95}}))
  return str(folder)


def _export(root, modality: str, data_dir: str, seed: int) -> str:
  config = _config(modality, data_dir)
  model = train.create_model(config, len(CLASSES))
  channels = 6 if modality == "rgb" else 10
  variables = _random_variables(model, channels, seed, FC_SCALE[_recipe(modality)])
  return checkpoints.export_inference(variables, config,
                                      str(root / f"export_{modality}"))


def _make_exports(root) -> dict:
  data_dir = _write_manifest(root / "data")
  return {"rgb": _export(root, "rgb", data_dir, seed=1),
          "flow": _export(root, "flow", data_dir, seed=2), "root": root}


def _warp_export(exports) -> str:
  return _export(exports["root"], "warpflow", str(exports["root"] / "data"), seed=4)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, jax_cache_dir):
  del jax_cache_dir  # compiled programs are shared with the CLI subprocesses
  return _make_exports(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def streams(exports):
  return [inference.load_stream(exports["rgb"]), inference.load_stream(exports["flow"])]


# ---------------------------------------------------------------------------------------------
# The runs pinned in PINNED_FILE (same calls in the tests and in --write-pinned).
# ---------------------------------------------------------------------------------------------

REAL_CLIP_CASES = [  # (clip, flow plane format override or None = the manifest's, figures)
    (AVI, None, False),   # Xvid, manifest codec (JPEG)
    (MP4, "png", True),   # H.264, lossless flow planes
    (DIVX, None, False),  # DivX, 560x240 source
]
WEIGHTS = [1.0, 1.5]


def _case_name(clip, flow_format) -> str:
  return f"{pathlib.Path(clip).stem}:{flow_format or 'manifest'}"


def _codec(flow_format):
  return None if flow_format is None else video_inputs.ShardCodec(flow_format=flow_format)


def _run_real_clip(testdata_dir, streams, clip, flow_format, figures_dir=None) -> dict:
  return inference.predict_video(str(testdata_dir / clip), streams, WEIGHTS, "dis", top=TOP,
                               codec=_codec(flow_format), figures_dir=figures_dir,
                               return_inputs=True)


def _run_three_streams(testdata_dir, streams, warp) -> dict:
  return inference.predict_video(testdata_dir / MP4, streams + [warp], top=TOP)


THREE_STREAMS_CASE = "mmaction2_demo:three_streams"


def _pinned_record(result: dict) -> dict:
  """What PINNED_FILE keeps of a predict_video result: per stream and fused scores, top-k."""
  def top(entries):
    return {m: [e["index"] for e in entries[m]] for m in ("dcw", "ave")}

  def scores(values):
    return {m: np.asarray(values[m], np.float64).tolist() for m in ("dcw", "ave")}

  return {"streams": [{"name": s["name"], "frame_indices": np.asarray(s["frame_indices"]).tolist(),
                       "segment_probs": np.asarray(s["segment_probs"], np.float64).tolist(),
                       "scores": scores(s["scores"]), "top": top(s["top"])}
                      for s in result["streams"]],
          "scores": scores(result["scores"]), "top": top(result["top"])}


def _assert_pinned(case: str, result: dict) -> None:
  """`result` gives PINNED_FILE's top-k (same indices, same order) and scores (to PIN_ATOL)."""
  pinned = json.loads(PINNED_FILE.read_text())["cases"][case]
  got = _pinned_record(result)
  assert [s["name"] for s in got["streams"]] == [s["name"] for s in pinned["streams"]]
  for g, p in zip(got["streams"], pinned["streams"]):
    np.testing.assert_array_equal(g["frame_indices"], p["frame_indices"])
    np.testing.assert_allclose(g["segment_probs"], p["segment_probs"], rtol=0, atol=PIN_ATOL)
    for m in ("dcw", "ave"):
      np.testing.assert_allclose(g["scores"][m], p["scores"][m], rtol=0, atol=PIN_ATOL)
    assert g["top"] == p["top"], (case, g["name"])
  for m in ("dcw", "ave"):
    np.testing.assert_allclose(got["scores"][m], pinned["scores"][m], rtol=0, atol=PIN_ATOL)
  assert got["top"] == pinned["top"], case


def write_pinned(testdata_dir: pathlib.Path) -> None:
  """Runs the pinned cases with the code as it is and writes PINNED_FILE (see the module doc)."""
  import tempfile  # pylint: disable=import-outside-toplevel
  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
  with tempfile.TemporaryDirectory() as root:
    made = _make_exports(pathlib.Path(root))
    loaded = [inference.load_stream(made["rgb"]), inference.load_stream(made["flow"])]
    cases = {_case_name(clip, fmt): _pinned_record(_run_real_clip(testdata_dir, loaded, clip, fmt))
             for clip, fmt, _ in REAL_CLIP_CASES}
    warp = inference.load_stream(_warp_export(made))
    cases[THREE_STREAMS_CASE] = _pinned_record(_run_three_streams(testdata_dir, loaded, warp))
  PINNED_FILE.parent.mkdir(parents=True, exist_ok=True)
  PINNED_FILE.write_text(_compact_json({
      "_provenance": (f"python -m tests.test_predict --write-pinned at commit {commit} "
                      "(sta_cnn_jax/predict.py before the inference.py split of issue 12), "
                      f"testdata {testdata_dir}; JAX {jax.__version__} on "
                      f"{jax.devices()[0].platform}"),
      "cases": cases}) + "\n")


def _compact_json(value) -> str:
  """JSON with every innermost list of numbers on one line."""
  text = json.dumps(value, indent=1)
  return re.sub(r"\[[^\[\]{}\"]*\]", lambda m: " ".join(m.group(0).split()), text)


# ---------------------------------------------------------------------------------------------
# NumPy references.
# ---------------------------------------------------------------------------------------------


def _np_alpha(probs):
  safe = np.where(probs > 0, probs, 1.0)
  entropy = -np.sum(np.where(probs > 0, probs * np.log(safe), 0.0), axis=-1)
  return 1.0 / np.maximum(entropy, MIN_ENTROPY)


def _np_scores(probs, top_k):
  """AVE and normalised DCW (Eq. 11) of (S, C) segment probabilities."""
  alpha = _np_alpha(probs.astype(np.float64))
  keep = np.argsort(-alpha, kind="stable")[:min(top_k, len(probs))]
  dcw = (alpha[keep, None] * probs[keep]).sum(0)
  return {"ave": probs.mean(0), "dcw": dcw / dcw.sum()}, alpha, keep


def _np_test_indices(num_frames, frames_per_snippet, new_length):
  """tsn-pytorch _get_test_indices + consecutive frames clamped to n - 1, written out."""
  tick = (num_frames - new_length + 1) / float(SEGMENTS)
  offsets = np.array([max(int(tick / 2.0 + tick * k), 0) for k in range(SEGMENTS)])
  return np.minimum(offsets[:, None] + np.arange(frames_per_snippet)[None], num_frames - 1)


def _centre(x):
  """Centre CROP x CROP of (..., H, W, C) (torchvision CenterCrop: round((side - crop) / 2))."""
  y0 = int(round((x.shape[-3] - CROP) / 2))
  x0 = int(round((x.shape[-2] - CROP) / 2))
  return x[..., y0:y0 + CROP, x0:x0 + CROP, :]


def _interleave(planes):
  """(S*T, h, w, Cf) -> (S, h, w, T*Cf), frame-major channels (x0, y0, x1, y1, ...)."""
  st, h, w, cf = planes.shape
  t = st // SEGMENTS
  return planes.reshape(SEGMENTS, t, h, w, cf).transpose(0, 2, 3, 1, 4).reshape(
      SEGMENTS, h, w, t * cf)


def _reference_flow(path):
  frames = video_lib.read_video(path, width=FRAME_HW[1], height=FRAME_HW[0])
  grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
  fields = _np_test_indices(len(frames) - 1, 5, 5).reshape(-1)
  return flow_lib.FLOW_METHODS["dis"](grey[fields], grey[fields + 1]), frames


def _reference_codes(flow, codec):
  """`(P, H, W, 2)` float flow -> uint8 codes as the shards store them: quantised x / y planes
  (data_prep.flow.encode_flow_planes) decoded by OpenCV (TF's accurate IDCT decodes the same)."""
  xs, ys = flow_lib.encode_flow_planes(flow, codec.flow_bound, codec.flow_format,
                                       codec.flow_quality)
  return np.stack([np.stack([flow_lib.decode_image(x, grayscale=True),
                             flow_lib.decode_image(y, grayscale=True)], axis=-1)
                   for x, y in zip(xs, ys)])


def _assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
  image = cv2.imread(path)
  assert image is not None and image.shape[0] > 50 and image.shape[1] > 50, path
  assert image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50, (
      f"{path} looks blank")


# ---------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip, flow_format, figures", REAL_CLIP_CASES)
def test_predict_real_clip(testdata_dir, streams, exports, tmp_path, clip, flow_format, figures):
  path = str(testdata_dir / clip)
  weights = WEIGHTS
  codec = _codec(flow_format)
  result = _run_real_clip(testdata_dir, streams, clip, flow_format,
                          str(tmp_path) if figures else None)
  _assert_pinned(_case_name(clip, flow_format), result)
  assert result["classes"] == list(CLASSES)
  rgb, flow = result["streams"]
  assert (rgb["modality"], flow["modality"]) == ("rgb", "flow")
  assert rgb["class_source"].endswith("manifest.json")

  # Per stream: p(s_n) rows are distributions; AVE, DCW and α match the NumPy reference.
  for stream in (rgb, flow):
    probs = stream["segment_probs"]
    assert probs.shape == (SEGMENTS, len(CLASSES))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert probs.max() < 0.999 and np.ptp(stream["alpha"]) > 0  # a non-degenerate check
    scores, alpha, keep = _np_scores(probs, DCW_TOP_K)
    np.testing.assert_allclose(stream["alpha"], alpha, rtol=1e-4)
    np.testing.assert_array_equal(np.flatnonzero(stream["selected"]), np.sort(keep))
    for method in ("ave", "dcw"):
      np.testing.assert_allclose(stream["scores"][method], scores[method], rtol=SCORE_RTOL,
                                 atol=SCORE_ATOL)
  # Fused = Σ w s / Σ w of the stream scores.
  for method in ("ave", "dcw"):
    expected = (weights[0] * _np_scores(rgb["segment_probs"], DCW_TOP_K)[0][method]
                + weights[1] * _np_scores(flow["segment_probs"], DCW_TOP_K)[0][method])
    expected = expected / sum(weights)
    np.testing.assert_allclose(result["scores"][method], expected, rtol=SCORE_RTOL,
                               atol=SCORE_ATOL)
    # Top-5: the 5 largest fused scores, best first, summing to at most 1.
    top = result["top"][method]
    assert [e["rank"] for e in top] == list(range(1, TOP + 1))
    np.testing.assert_array_equal([e["index"] for e in top], np.argsort(-expected)[:TOP])
    np.testing.assert_allclose([e["score"] for e in top], np.sort(expected)[::-1][:TOP],
                               rtol=SCORE_RTOL, atol=SCORE_ATOL)
    assert [e["class"] for e in top] == [CLASSES[e["index"]] for e in top]
    assert sum(e["score"] for e in top) <= 1.0 + 1e-6
    for stream in (rgb, flow):
      assert sum(e["score"] for e in stream["top"][method]) <= 1.0 + 1e-6

  # The flow stream's input is the shards' encoding of the (independently computed) DIS flow.
  reference, frames = _reference_flow(path)
  inputs = flow["inputs"]  # (S, V=1, 64, 64, 10) uint8
  assert inputs.shape == (SEGMENTS, 1, CROP, CROP, 10) and inputs.dtype == np.uint8
  expected_codes = _interleave(_centre(_reference_codes(reference, codec or streams[1].codec)))
  np.testing.assert_array_equal(inputs[:, 0], expected_codes)
  quantised = _interleave(_centre(flow_lib.quantize_flow(reference, 20.0)))
  if codec is not None:  # lossless planes: the network sees dequantise(quantise(flow)) exactly
    np.testing.assert_array_equal(flow_lib.dequantize_flow(inputs[:, 0], 20.0),
                                  flow_lib.dequantize_flow(quantised, 20.0))
  else:
    assert np.abs(inputs[:, 0].astype(int) - quantised.astype(int)).max() <= MAX_JPEG_CODE_ERROR

  # RGB snippets: frames t and t+1 at each segment's centre, JPEG q95 as in the shards (OpenCV
  # decodes them here; TF's accurate IDCT in the pipeline gives the same pixels), centre crop.
  rgb_indices = _np_test_indices(len(frames), 2, 1)
  np.testing.assert_array_equal(rgb["frame_indices"], rgb_indices)
  stored = np.stack([flow_lib.decode_image(flow_lib.encode_image(f, "jpeg", 95))
                     for f in frames[rgb_indices.reshape(-1)]])  # as the shards hold them
  np.testing.assert_array_equal(rgb["inputs"][:, 0], _interleave(_centre(stored)))
  assert rgb["attention"].shape == (SEGMENTS, 2, 2) and flow["attention"] is None

  if figures:
    names = sorted(os.path.basename(p) for p in result["figures"])
    stem = os.path.splitext(os.path.basename(clip))[0]
    assert names == sorted([f"{stem}_rgb_confidence.png", f"{stem}_rgb_attention.png",
                            f"{stem}_flow_confidence.png"])
    for figure in result["figures"]:
      _assert_png(figure)


@pytest.mark.parametrize("num_frames", [3, 9, 40, 131])
@pytest.mark.parametrize("modality, frames_per_snippet, new_length", [("rgb", 2, 1),
                                                                      ("flow", 5, 5)])
def test_eval_snippet_indices_are_tsn_test_sampling(num_frames, modality, frames_per_snippet,
                                                    new_length):
  np.testing.assert_array_equal(
      snippets.eval_snippet_indices(num_frames, modality, SEGMENTS),
      _np_test_indices(num_frames, frames_per_snippet, new_length))


def _pipeline_views(data_dir, example, modality, num_views):
  """`example` as a one-video test shard read by create_eval_dataset (what --mode=eval reads)."""
  name = shards_lib.SHARD_PATTERN.format(split="test", modalities=modality, index=0,
                                         num_shards=1)
  with tf.io.TFRecordWriter(os.path.join(data_dir, name)) as writer:
    writer.write(example)
  with open(os.path.join(data_dir, "manifest.json"), "w") as f:
    json.dump({"modalities": [modality], "frame_size": list(FRAME_HW),
               "num_videos": {"test": 1}}, f)
  config = ml_collections.ConfigDict({
      "data_dir": str(data_dir), "eval_split": "test", "modality": modality,
      "eval": {"num_segments": SEGMENTS, "num_views": num_views, "batch_size": 1},
      "input": {"crop_size": CROP}})
  batches = input_pipeline.create_eval_dataset(config, num_devices=1)
  return next(iter(batches))["frames"][0, 0]  # (D=1, B=1, S, V, ...) -> (S, V, ...)


@pytest.mark.parametrize("modality, num_views", [("rgb", 10), ("warpflow", 1)])
def test_in_memory_views_are_the_eval_datasets(testdata_dir, tmp_path, modality, num_views):
  frames = video_lib.read_video(testdata_dir / AVI, width=FRAME_HW[1], height=FRAME_HW[0])[:30]
  gray = flow_lib.to_gray(frames) if modality != "rgb" else None
  example, _, _ = video_inputs.video_example(frames, modality, SEGMENTS,
                                             video_inputs.ShardCodec(), gray=gray,
                                             flow_method="dis")
  views = snippets.eval_views_from_example(example, modality=modality,
                                                 num_segments=SEGMENTS, num_views=num_views,
                                                 out_size=CROP)
  channels = modalities.input_channels(modality)
  assert views.shape == (SEGMENTS, num_views, CROP, CROP, channels) and views.dtype == np.uint8
  np.testing.assert_array_equal(views, _pipeline_views(tmp_path, example, modality, num_views))


@pytest.mark.parametrize("warped", [False, True])
def test_selected_flow_equals_whole_video_flow(testdata_dir, warped):
  frames = video_lib.read_video(testdata_dir / AVI, width=FRAME_HW[1], height=FRAME_HW[0])[:24]
  grey = flow_lib.to_gray(frames)
  fields = [0, 1, 2, 7, 8, 15, 22]  # runs of consecutive fields and single ones (22 = last)
  got, fallbacks = video_inputs.selected_flow(grey, fields, "dis", warped)
  if warped:
    whole, whole_fallbacks = flow_lib.compute_warped_flow(grey, "dis")
    assert fallbacks <= whole_fallbacks
  else:
    whole = flow_lib.compute_flow(grey, "dis")
  assert sorted(got) == fields
  for t in fields:
    np.testing.assert_array_equal(got[t], whole[t])


def test_three_streams_default_tsn_weights(testdata_dir, exports, streams):
  warp = inference.load_stream(_warp_export(exports))
  result = _run_three_streams(testdata_dir, streams, warp)
  _assert_pinned(THREE_STREAMS_CASE, result)
  assert result["weights"] == [1.0, 1.5, 1.0]  # TSN RGB : flow : warped flow
  assert [s["modality"] for s in result["streams"]] == ["rgb", "flow", "warpflow"]
  for method in ("ave", "dcw"):
    expected = sum(w * _np_scores(s["segment_probs"], DCW_TOP_K)[0][method]
                   for w, s in zip((1.0, 1.5, 1.0), result["streams"])) / 3.5
    np.testing.assert_allclose(result["scores"][method], expected, rtol=SCORE_RTOL,
                               atol=SCORE_ATOL)


def test_truncated_video_is_kept_with_a_warning(testdata_dir, streams):
  path = testdata_dir / "bad" / "truncated_30pct_v_Archery_g01_c01.avi"
  result = inference.predict_video(path, streams)
  assert result["num_frames"] == 40  # testdata README §5
  assert any("header" in w for w in result["warnings"])
  assert result["weights"] == [1.0, 1.5]  # TSN default RGB : flow


@pytest.mark.parametrize("name", ["empty.avi", "text_renamed.mp4",
                                  "truncated_30pct_mmaction2_demo.mp4"])
def test_corrupt_video_names_the_file(testdata_dir, streams, name):
  path = str(testdata_dir / "bad" / name)
  with pytest.raises(video_lib.VideoError) as error:
    inference.predict_video(path, streams)
  assert path in str(error.value)


def test_checkpoint_without_export(tmp_path, streams):
  with pytest.raises(inference.PredictError) as error:
    inference.predict_video("unused.avi", [str(tmp_path)])
  message = str(error.value)
  assert str(tmp_path) in message and "config.json" in message and "variables" in message


def test_streams_with_other_classes_refuse_to_fuse(exports, streams, tmp_path):
  other_classes = CLASSES[:3] + ("Biking", "Diving")
  other = _export(tmp_path, "flow", _write_manifest(tmp_path / "other", other_classes), seed=3)
  with pytest.raises(inference.PredictError, match="different class lists") as error:
    inference.predict_video("unused.avi", [streams[0], other])
  assert "'ApplyEyeMakeup' vs 'Biking'" in str(error.value)
  with pytest.raises(inference.PredictError, match="3 class names"):
    inference.load_stream(exports["flow"], class_names=CLASSES[:3])


def _with_dataset_json(export_dir, **facts):
  info = {"classes": list(OTHER_CLASSES), "num_classes": len(OTHER_CLASSES),
          "frame_size": [72, 96], "modalities": ["rgb", "flow"],
          "flow": {"method": "farneback", "bound": 15.0, "format": "png", "quality": None}}
  info.update(facts)
  with open(os.path.join(export_dir, inference.DATASET_JSON), "w") as f:
    json.dump(info, f)
  return export_dir


OTHER_CLASSES = ("Biking", "Diving", "Fencing", "Punch", "Rowing")


def test_export_dataset_json_comes_first(testdata_dir, tmp_path):
  # data_dir's manifest says CLASSES and dis flow; the exports' dataset.json says otherwise.
  data_dir = _write_manifest(tmp_path / "data")
  rgb = _with_dataset_json(_export(tmp_path, "rgb", data_dir, seed=1))
  flow = _with_dataset_json(_export(tmp_path, "flow", data_dir, seed=2))
  stream = inference.load_stream(flow)
  assert stream.classes == list(OTHER_CLASSES)
  assert stream.class_source == os.path.join(flow, inference.DATASET_JSON)
  assert stream.codec == video_inputs.ShardCodec(flow_format="png", flow_bound=15.0,
                                                 flow_method="farneback",
                                                 source=stream.class_source)
  result = inference.predict_video(testdata_dir / "bad" / "truncated_30pct_v_Archery_g01_c01.avi",
                                   f"{rgb},{flow}", top=2)
  assert result["classes"] == list(OTHER_CLASSES)
  assert result["streams"][1]["flow_method"] == "farneback"
  assert result["streams"][1]["codec"]["flow_format"] == "png"
  assert any("(72, 96)" in w and "input.frame_size is (64, 96)" in w for w in result["warnings"])


def test_read_dataset_info(tmp_path):
  assert inference.read_dataset_info(str(tmp_path)) is None
  _with_dataset_json(str(tmp_path), flow=None)
  info = inference.read_dataset_info(str(tmp_path))
  assert info["classes"] == list(OTHER_CLASSES) and info["flow"] is None
  _with_dataset_json(str(tmp_path), num_classes=4)
  with pytest.raises(inference.PredictError, match="5 classes but num_classes=4"):
    inference.read_dataset_info(str(tmp_path))
  (tmp_path / inference.DATASET_JSON).write_text("[1, 2")
  with pytest.raises(inference.PredictError, match="not readable JSON"):
    inference.read_dataset_info(str(tmp_path))


def test_read_class_names(tmp_path):
  plain = tmp_path / "names.txt"
  plain.write_text("kick_ball  \npunch\r\n\nsomersault   ")  # HMDB51 class_list.txt quirks
  assert predict.read_class_names(str(plain)) == ["kick_ball", "punch", "somersault"]
  indexed = tmp_path / "classInd.txt"
  indexed.write_text("1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n")  # UCF101 classInd.txt
  assert predict.read_class_names(str(indexed)) == ["ApplyEyeMakeup", "ApplyLipstick"]


def _run_cli(args, jax_cache):
  env = dict(os.environ, **cache_env(jax_cache))
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
  return subprocess.run([sys.executable, "-m", "sta_cnn_jax.predict"] + args, env=env,
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_cli_prints_top5_table(testdata_dir, exports, streams, tmp_path, jax_cache_dir):
  video = str(testdata_dir / AVI)
  out_json = tmp_path / "result.json"
  proc = _run_cli([f"--video={video}", f"--checkpoint={exports['rgb']},{exports['flow']}",
                   "--weights=1,1.5", "--flow=dis", f"--top={TOP}", f"--json={out_json}"],
                  jax_cache_dir)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "DCW", "class"])
  rows = [line.split() for line in lines[header + 1:header + 1 + TOP]]
  assert [r[0] for r in rows] == [str(i) for i in range(1, TOP + 1)]
  # Same ranking and scores as the in-process prediction of the same video.
  expected = inference.predict_video(video, streams, [1.0, 1.5], "dis", top=TOP)
  for row, dcw, ave in zip(rows, expected["top"]["dcw"], expected["top"]["ave"]):
    assert row[1:] == [dcw["class"], f"{dcw['score']:.4f}", ave["class"], f"{ave['score']:.4f}"]
  saved = json.loads(out_json.read_text())
  assert [e["class"] for e in saved["top"]["dcw"]] == [e["class"] for e in expected["top"]["dcw"]]


def test_cli_corrupt_video_exits_with_the_file_name(testdata_dir, exports, jax_cache_dir):
  video = str(testdata_dir / "bad" / "truncated_30pct_mmaction2_demo.mp4")
  proc = _run_cli([f"--video={video}", f"--checkpoint={exports['rgb']}"], jax_cache_dir)
  assert proc.returncode != 0
  assert video in proc.stderr and "Traceback" not in proc.stderr


if __name__ == "__main__":
  if sys.argv[1:] != ["--write-pinned"]:
    raise SystemExit("usage: python -m tests.test_predict --write-pinned")
  from tests.conftest import _testdata_path  # pylint: disable=import-outside-toplevel
  write_pinned(_testdata_path())
