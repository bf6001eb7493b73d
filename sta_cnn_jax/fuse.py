r"""Two-/three-stream fusion of saved per-video scores (paper Table 4; TSN's weighted softmax fusion).

Each stream's `--mode=eval` writes `<workdir>/eval_scores.npz` (video ids, labels, per-video AVE and
DCW scores, each a distribution over classes). Fusion is a weighted sum of those distributions,
aligned by video id; TSN weights RGB : flow = 1 : 1.5.

  python -m sta_cnn_jax.fuse --scores=/runs/s1_rgb,/runs/s1_flow --weights=1,1.5
  python -m sta_cnn_jax.fuse --weights=1,1.5,1 \
      --split=1:/runs/s1_rgb,/runs/s1_flow,/runs/s1_warp \
      --split=2:/runs/s2_rgb,/runs/s2_flow,/runs/s2_warp \
      --split=3:/runs/s3_rgb,/runs/s3_flow,/runs/s3_warp   # per split and the 3-split mean
"""

import json
import os
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from sta_cnn_jax import metrics
from sta_cnn_jax import modalities

SCORES_FILE = modalities.SCORES_FILE
METHODS = ("ave", "dcw")
# TSN's fusion weights RGB : flow (: warped flow); configurable with --weights.
DEFAULT_WEIGHTS = tuple(modalities.FUSION_WEIGHTS[m] for m in modalities.MODALITIES)



def define_flags() -> None:
  """CLI flags, defined only when run as a program (importers keep their own flags)."""
  flags.DEFINE_list("scores", [], "Workdirs or eval_scores.npz files, one per stream.")
  flags.DEFINE_multi_string(
      "split", [], "NAME:path,path[,path] — one split's streams; repeat for several splits.")
  flags.DEFINE_list("weights", None, "Fusion weight per stream (default TSN 1,1.5,1).")
  flags.DEFINE_string("out", "", "Optional JSON file for the report.")


def load_scores(path: str) -> dict:
  """Loads a stream's eval scores from a workdir or an .npz file (clear error if missing)."""
  file = os.path.join(path, SCORES_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise FileNotFoundError(f"no eval scores at {file}: run `--mode=eval` for that stream first")
  with np.load(file, allow_pickle=False) as data:
    return {key: data[key] for key in data.files}


def align(streams: Sequence[dict]) -> tuple[np.ndarray, list[dict]]:
  """Reorders every stream to the first stream's video order; checks ids and labels agree."""
  ref_ids = [str(v) for v in streams[0]["video_id"]]
  ref_set = set(ref_ids)
  aligned = []
  for index, stream in enumerate(streams):
    ids = [str(v) for v in stream["video_id"]]
    missing, extra = sorted(ref_set - set(ids)), sorted(set(ids) - ref_set)
    if missing or extra:
      raise ValueError(f"stream {index} covers other videos than stream 0: missing {missing[:5]}"
                       f" ({len(missing)} in all), extra {extra[:5]} ({len(extra)} in all)")
    order = np.array([ids.index(v) for v in ref_ids]) if ids != ref_ids else np.arange(len(ids))
    picked = {key: value[order] if value.ndim and len(value) == len(ids) else value
              for key, value in stream.items()}
    if not np.array_equal(picked["label"], streams[0]["label"]):
      raise ValueError(f"stream {index} has other labels for the same videos than stream 0")
    aligned.append(picked)
  return streams[0]["label"], aligned


def fuse_streams(streams: Sequence[dict], weights: Sequence[float]) -> dict[str, np.ndarray]:
  """Weighted sum of the streams' per-video score distributions, for AVE and DCW: `(V, C)` each."""
  if len(weights) != len(streams):
    raise ValueError(f"{len(streams)} streams but {len(weights)} weights")
  return {m: sum(w * s[m] for w, s in zip(weights, streams)) for m in METHODS}


def fusion_report(paths: Sequence[str], weights: Sequence[float]) -> dict:
  """Accuracy of each stream alone and of their fusion, for one split."""
  labels, streams = align([load_scores(p) for p in paths])
  num_classes = streams[0]["ave"].shape[-1]
  report = {"streams": {p: metrics.summarize({m: s[m] for m in METHODS}, labels, num_classes)
                        for p, s in zip(paths, streams)},
            "weights": list(weights), "num_videos": int(len(labels))}
  report["fused"] = metrics.summarize(fuse_streams(streams, weights), labels, num_classes)
  return report


def mean_over_splits(reports: dict[str, dict]) -> dict:
  """The fused metrics averaged over splits (the paper's 'average over three splits')."""
  first = next(iter(reports.values()))["fused"]
  return {m: {k: float(np.mean([r["fused"][m][k] for r in reports.values()])) for k in first[m]}
          for m in first}


def format_report(reports: dict[str, dict]) -> str:
  """Markdown table: one row per split (fused), plus the mean over splits."""
  lines = ["| split | DCW top-1 | DCW mean-class | AVE top-1 | AVE mean-class |", "|---|---|---|---|---|"]
  rows = dict((name, r["fused"]) for name, r in reports.items())
  if len(reports) > 1:
    rows["mean"] = mean_over_splits(reports)
  for name, fused in rows.items():
    lines.append(f"| {name} | {fused['dcw']['top1']:.2%} | {fused['dcw']['mean_class_accuracy']:.2%}"
                 f" | {fused['ave']['top1']:.2%} | {fused['ave']['mean_class_accuracy']:.2%} |")
  return "\n".join(lines)


def _parse_splits(split_flags: Sequence[str], scores: Sequence[str]) -> dict[str, list[str]]:
  if split_flags:
    out = {}
    for item in split_flags:
      name, sep, paths = item.partition(":")
      if not sep or not paths:
        raise app.UsageError(f"--split={item!r}: expected NAME:path,path[,path]")
      out[name] = paths.split(",")
    return out
  if not scores:
    raise app.UsageError("give --scores=a,b[,c] or one --split=NAME:a,b[,c] per split")
  return {"split": list(scores)}


def main(argv):
  del argv
  f = flags.FLAGS
  splits = _parse_splits(f.split, f.scores)
  num_streams = len(next(iter(splits.values())))
  weights = [float(w) for w in f.weights] if f.weights else list(DEFAULT_WEIGHTS[:num_streams])
  reports = {name: fusion_report(paths, weights) for name, paths in splits.items()}
  print(format_report(reports))
  if f.out:
    with open(f.out, "w") as out:
      json.dump({"splits": reports,
                 "mean": mean_over_splits(reports) if len(reports) > 1 else None}, out, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
