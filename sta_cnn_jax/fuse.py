r"""Two-/three-stream fusion of saved per-video scores (paper Table 4; TSN's weighted softmax fusion).

Each stream's `--mode=eval` writes `<workdir>/eval_scores.npz` (video ids, labels, per-video AVE and
DCW scores, each a distribution over classes). Fusion is the weighted mean of those distributions,
aligned by video id, Σ_i w_i s_i / Σ_i w_i (`weighted_mean`, also `sta_cnn_jax.predict`'s); TSN
weights RGB : flow : warped flow = 1 : 1.5 : 1. Dividing by Σ_i w_i keeps a distribution and
does not change the ranking (nor any accuracy) of TSN's weighted sum Σ_i w_i s_i.

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
# TSN's fusion weight of each modality (RGB : flow : warped flow = 1 : 1.5 : 1, modalities.py);
# --weights overrides them. DEFAULT_WEIGHTS: the same for streams given in that order.
MODALITY_WEIGHTS = dict(modalities.FUSION_WEIGHTS)
DEFAULT_WEIGHTS = tuple(MODALITY_WEIGHTS[m] for m in modalities.MODALITIES)


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


def check_weights(weights: Sequence[float], num_streams: int) -> list[float]:
  """`weights` as floats; ValueError unless they are `num_streams` numbers >= 0, sum > 0."""
  weights = [float(w) for w in weights]
  if len(weights) != num_streams:
    raise ValueError(f"{num_streams} streams but {len(weights)} fusion weights {weights}")
  if min(weights) < 0 or sum(weights) <= 0:
    raise ValueError(f"fusion weights {weights} must be {num_streams} non-negative numbers with "
                     "a positive sum")
  return weights


def weighted_mean(scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
  """Fused scores Σ_i w_i s_i / Σ_i w_i (float64) of the streams' scores s_i `(..., C)`.

  Each s_i is a distribution over the C classes (AVE, or DCW Eq. 11 normalised:
  metrics.video_scores), so the fused scores are one too.
  """
  weights = check_weights(weights, len(scores))
  total = sum(w * np.asarray(s, np.float64) for w, s in zip(weights, scores))
  return total / sum(weights)


def fuse_streams(streams: Sequence[dict], weights: Sequence[float]) -> dict[str, np.ndarray]:
  """`weighted_mean` of the streams' per-video scores, for AVE and DCW: `(V, C)` each."""
  return {m: weighted_mean([s[m] for s in streams], weights) for m in METHODS}


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
