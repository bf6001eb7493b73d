"""How a prediction of sta_cnn_jax.inference.predict_video is shown: table, JSON, figures.

- `format_table`: the report `python -m sta_cnn_jax.predict` prints (streams, then the fused
  top-k of DCW and AVE side by side);
- `json_ready`: the result without its bulky arrays, as JSON-ready Python values (`--json`);
- `write_figures`: per stream the Fig. 2 segment confidences α = 1/H (Eq. 1) with DCW's top-k
  marked (Eq. 11), and for RGB streams with spatial attention the Fig. 7 attention maps
  (sta_cnn_jax.visualize).
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import numpy as np

from sta_cnn_jax import evaluate
from sta_cnn_jax import visualize

# Per-stream entries left out of the JSON report: (S, K, K) maps and (S, V, h, w, C_in) inputs.
BULKY_KEYS = ("attention", "inputs")


def write_figures(runs: Sequence[tuple[dict, dict]], classes: Sequence[str], out_dir: str,
                  video_path: str, fused_top: dict) -> list[str]:
  """Fig. 2 per stream; Fig. 7 for streams with attention maps. Returns the PNG paths.

  Args:
    runs: per stream (its result entry, its inputs): inference.run_stream's output.
    classes: class names.
    out_dir: folder for `<video stem>_<stream>_{confidence,attention}.png`.
    video_path: the video (its stem names the files).
    fused_top: the fused top-k {'dcw', 'ave'} (the titles name the fused DCW class).
  """
  stem = pathlib.Path(video_path).stem
  paths = []
  for result, inputs in runs:
    tag = result["name"].replace("#", "")
    predictions = np.argmax(result["segment_probs"], axis=-1)
    title = (f"{stem} - {result['name']}: DCW {result['top']['dcw'][0]['class']} "
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


def _stream_line(stream: dict, weight: float) -> str:
  flow = f", flow {stream['flow_method']}" if stream["flow_method"] else ""
  dcw, ave = stream["top"]["dcw"][0], stream["top"]["ave"][0]
  return (f"stream {stream['name']:<9} weight {weight:g}: {stream['num_segments']} segments x "
          f"{stream['num_views']} views{flow}; top-1 DCW {dcw['class']} {dcw['score']:.4f}, "
          f"AVE {ave['class']} {ave['score']:.4f}  [{stream['checkpoint']}]")


def format_table(result: dict) -> str:
  """The report the CLI prints: streams, then the fused top-k of DCW and AVE side by side."""
  width = max([len("class")] + [len(e["class"]) for top in result["top"].values() for e in top])
  lines = [f"video: {result['video']} ({result['num_frames']} frames, {result['fps']:.2f} fps, "
           f"source {result['source_size'][1]}x{result['source_size'][0]})"]
  lines += [f"warning: {w}" for w in result["warnings"]]
  lines += [_stream_line(s, w) for s, w in zip(result["streams"], result["weights"])]
  label = "fused (weighted mean)" if len(result["streams"]) > 1 else result["streams"][0]["name"]
  lines.append(f"top-{len(result['top']['dcw'])} {label}:")
  lines.append(f"{'rank':>4}  {'DCW class':<{width}}  {'score':>6}  {'AVE class':<{width}}  "
               f"{'score':>6}")
  for d, a in zip(result["top"]["dcw"], result["top"]["ave"]):
    lines.append(f"{d['rank']:>4}  {d['class']:<{width}}  {d['score']:6.4f}  "
                 f"{a['class']:<{width}}  {a['score']:6.4f}")
  lines += [f"figure: {path}" for path in result["figures"]]
  return "\n".join(lines)


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
  streams = [{k: v for k, v in s.items() if k not in BULKY_KEYS} for s in result["streams"]]
  return _plain({**result, "streams": streams})
