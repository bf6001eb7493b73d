"""The paper's test protocol (§4.1 "Test"): 25 segments × 10 crops, AVE and DCW (Eq. 11).

Per video: one snippet at the centre of each of 25 equal segments, 10 views each (4 corners +
centre and their flips, TSN's GroupOverSample); per segment the views' softmax scores are
averaged, giving p(s_n) `(S, C)`; the video is scored by AVE (mean over segments) and DCW (the 15
most confident segments weighted by α = 1/H). Reports top-1 and mean class accuracy for both, saves
the confusion matrices and the per-video scores (for `sta_cnn_jax.fuse`) in the workdir.
"""

import json
import os
from typing import Any, Iterable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from sta_cnn_jax import input_pipeline
from sta_cnn_jax import metrics
from sta_cnn_jax import parallel
from sta_cnn_jax.augment import EVAL_VIEW_NAMES

SCORES_FILE = "eval_scores.npz"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
# Attention maps of the centre view are kept for figures (paper Fig. 1/7 show the centre crop).
CENTER_VIEW = EVAL_VIEW_NAMES.index("center")


def center_view(num_views: int) -> int:
  """Index of the centre crop among the eval views: 10-view oversampling, or the single view."""
  return CENTER_VIEW if num_views == len(EVAL_VIEW_NAMES) else 0


def eval_step(variables, frames: jnp.ndarray, *, model, config: ml_collections.ConfigDict) -> dict:
  """Per-device forward pass of the test protocol.

  Args:
    variables: {'params', 'batch_stats'} of the model.
    frames: `(B, S, V, H, W, C_in)` uint8 snippets (S segments, V views).

  Returns:
    'probs' `(B, S, C)` view-averaged softmax scores p(s_n);
    'attention' `(B, S, K, K)` centre-view spatial attention maps (zeros without spatial attention).
  """
  b, s, v = frames.shape[:3]
  x = input_pipeline.normalize(frames.reshape((b * s * v,) + frames.shape[3:]), config.modality,
                               config.input.mean, config.input.std, config.input.bgr)
  out = model.apply(variables, x.astype(model.dtype), train=False)
  probs = jax.nn.softmax(out["logits"].astype(jnp.float32)).reshape(b, s, v, -1).mean(axis=2)
  if out.get("attention") is not None:
    attention = out["attention"].astype(jnp.float32).reshape((b, s, v) + out["attention"].shape[1:])
    attention = attention[:, :, center_view(v)]
  else:
    k = out["features"].shape[1]
    attention = jnp.zeros((b, s, k, k), jnp.float32)
  return {"probs": probs, "attention": attention}


def predict_segments(variables, batches: Iterable[dict], step, *,
                     keep_frames: int = 0) -> dict[str, np.ndarray]:
  """Runs `step` over eval batches; gathers per-video p(s_n), attention maps, ids and labels.

  Args:
    variables: replicated model variables (as `step` expects them).
    batches: eval batches from `input_pipeline.create_eval_dataset` (device-shaped, with 'valid').
    step: the parallel eval step (`parallel.make_parallel_step(eval_step, ...)`).
    keep_frames: keep the centre-view frames of the first `keep_frames` videos (for figures).
  """
  out = {"video_id": [], "label": [], "segment_probs": [], "attention": [], "frames": []}
  for batch in tqdm.tqdm(batches, desc="eval", unit="batch", leave=False):
    result = jax.device_get(step(variables, batch["frames"]))
    valid = np.asarray(batch["valid"]).reshape(-1)
    out["video_id"].extend(np.asarray(batch["video_id"]).reshape(-1)[valid])
    out["label"].append(np.asarray(batch["label"]).reshape(-1)[valid])
    out["segment_probs"].append(result["probs"].reshape((-1,) + result["probs"].shape[2:])[valid])
    out["attention"].append(
        result["attention"].reshape((-1,) + result["attention"].shape[2:])[valid])
    kept = sum(len(f) for f in out["frames"])
    if kept < keep_frames:
      frames = np.asarray(batch["frames"]).reshape((-1,) + batch["frames"].shape[2:])[valid]
      out["frames"].append(frames[: keep_frames - kept, :, center_view(frames.shape[2])])
  if not out["label"]:
    raise ValueError("the eval split holds no videos")
  return {
      "video_id": np.array([v.decode() if isinstance(v, bytes) else str(v)
                            for v in out["video_id"]]),
      "label": np.concatenate(out["label"]).astype(np.int64),
      "segment_probs": np.concatenate(out["segment_probs"]),
      "attention": np.concatenate(out["attention"]),
      "frames": (np.concatenate(out["frames"]) if out["frames"]
                 else np.zeros((0,), np.uint8)),
  }


def score_videos(segments: dict[str, np.ndarray], num_classes: int,
                 dcw_top_k: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Video scores (AVE, DCW) and the results dict: accuracies and confusion matrices."""
  scores = metrics.video_scores(segments["segment_probs"], dcw_top_k)
  labels = segments["label"]
  results = {"num_videos": int(len(labels)), "dcw_top_k": dcw_top_k,
             "metrics": metrics.summarize(scores, labels, num_classes),
             "confusion": {m: metrics.confusion_matrix(np.argmax(s, -1), labels,
                                                       num_classes).tolist()
                           for m, s in scores.items()}}
  return scores, results


def save_scores(workdir: str, segments: dict[str, np.ndarray], scores: dict[str, np.ndarray],
                classes) -> str:
  """Writes the per-video scores that `sta_cnn_jax.fuse` reads (atomically)."""
  path = os.path.join(workdir, SCORES_FILE)
  tmp = path + ".tmp.npz"
  np.savez(tmp, video_id=segments["video_id"], label=segments["label"],
           segment_probs=segments["segment_probs"].astype(np.float32), ave=scores["ave"],
           dcw=scores["dcw"], classes=np.array(list(classes)))
  os.replace(tmp, path)
  return path


def format_results(name: str, results: dict) -> str:
  """One Markdown row per video-level method."""
  lines = [f"### {name}", "", "| method | top-1 | mean class acc. | videos |", "|---|---|---|---|"]
  for method, m in results["metrics"].items():
    lines.append(f"| {method.upper()} | {m['top1']:.2%} | {m['mean_class_accuracy']:.2%} | "
                 f"{results['num_videos']} |")
  return "\n".join(lines)


def write_results(workdir: str, name: str, results: dict) -> None:
  """results.json (everything) and results.md (the table) in the workdir."""
  with open(os.path.join(workdir, RESULTS_JSON), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, RESULTS_MD), "w") as f:
    f.write(format_results(name, results) + "\n")


def evaluate(config: ml_collections.ConfigDict, workdir: str, variables, model, *,
             keep_frames: int = 0, num_devices: Optional[int] = None) -> dict:
  """Runs the full test protocol on `config.data_dir`'s eval split and writes the results.

  Args:
    config: the training config (its `eval`, `input`, `modality` fields are used).
    workdir: where the scores, results and confusion matrices go.
    variables: unreplicated {'params', 'batch_stats'}.
    model: the STACNN module the variables belong to.
    keep_frames: centre-view frames of this many videos are returned for figures.

  Returns:
    The results dict (also in results.json), with 'segments' (per-video arrays) added.
  """
  info = input_pipeline.dataset_info(config.data_dir)
  classes = info["classes"]
  mode = config.parallel
  num_devices = num_devices or jax.local_device_count()
  step = parallel.make_parallel_step(
      lambda v, f: eval_step(v, f, model=model, config=config), mode=mode, donate=False)
  replicated = parallel.replicate(variables, mode)
  batches = input_pipeline.create_eval_dataset(
      config.data_dir, modality=config.modality, split=config.eval_split,
      num_segments=config.eval.num_segments, num_views=config.eval.num_views,
      batch_size=config.eval.batch_size, num_devices=num_devices, out_size=config.input.crop_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  segments = predict_segments(replicated, batches, step, keep_frames=keep_frames)
  scores, results = score_videos(segments, len(classes), config.eval.dcw_top_k)
  results.update({"row": config.get("row", ""), "row_name": config.get("row_name", ""),
                  "modality": config.modality, "eval_split": config.eval_split})
  os.makedirs(workdir, exist_ok=True)
  save_scores(workdir, segments, scores, classes)
  write_results(workdir, config.get("row_name", "") or config.get("row", "model"), results)
  logging.info("eval %s: %s", config.get("row", ""), json.dumps(results["metrics"]))
  results["segments"] = segments
  return results
