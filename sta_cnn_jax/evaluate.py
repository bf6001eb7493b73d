"""The paper's test protocol (§4.1 "Test"): 25 segments × 10 crops, AVE and DCW (Eq. 11).

Per video: one snippet at the centre of each of 25 equal segments, 10 views each (4 corners +
centre and their flips, TSN's GroupOverSample); per segment the views' softmax scores are
averaged, giving p(s_n) `(S, C)`; the video is scored by AVE (mean over segments) and DCW (the 15
most confident segments weighted by α = 1/H). Reports top-1 and mean class accuracy for both (also
to the metric writer, for TensorBoard), saves the confusion matrices and the per-video scores (for
`sta_cnn_jax.fuse`) in the workdir.

Multi-host: each process scores the videos of its own shards; `gather_segments` then collects every
process's per-video scores (padded to one length, with a validity mask) so that every process
computes the metrics of the whole split, and process 0 writes the files.
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

from jax.experimental import multihost_utils

from sta_cnn_jax import input_pipeline
from sta_cnn_jax import metrics
from sta_cnn_jax import modalities
from sta_cnn_jax import parallel
from sta_cnn_jax.augment import EVAL_VIEW_NAMES

SCORES_FILE = modalities.SCORES_FILE
# Per-video arrays every process contributes to the metrics (figures' frames stay local).
GATHERED = ("label", "segment_probs", "attention", "cell_probs")
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
    'attention' `(B, S, K, K)` centre-view spatial attention maps (zeros without spatial attention);
    'cell_probs' `(B, S, K, K, C)` (only with `config.eval.cell_evidence`, for models with
      STACNN's classifier `acn/fc`) centre view: the classifier (fc, no dropout at test)
      applied to each grid cell's features f_i alone, softmaxed -- what one location says
      about the class (mechanism.cell_evidence).
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
  result = {"probs": probs, "attention": attention}
  fc = variables["params"].get("acn", {}).get("fc")   # STACNN's classifier (not stand-ins')
  wanted = config.get("eval") is not None and config.eval.get("cell_evidence", False)
  if wanted and fc is not None:
    features = out["features"].reshape((b, s, v) + out["features"].shape[1:])[:, :,
                                                                             center_view(v)]
    cell_logits = jnp.einsum("bshwd,dc->bshwc", features.astype(jnp.float32),
                             fc["kernel"].astype(jnp.float32)) + fc["bias"].astype(jnp.float32)
    result["cell_probs"] = jax.nn.softmax(cell_logits)
  return result


def cell_logit_input_gradients(features_fn, fc_kernel: jnp.ndarray, x: jnp.ndarray,
                               labels: jnp.ndarray) -> jnp.ndarray:
  """|d (cell (i, j)'s true-class logit) / d x|, summed over x's channels, for every grid cell.

  The cell's logit is the classifier applied to that cell's features alone (as 'cell_probs' of
  `eval_step`, without the bias, which has no gradient): f_ij . w_label. The inputs are
  independent in eval mode, so one backward pass per cell (K² of them, under vmap) gives the
  gradients of all N inputs at once.

  Args:
    features_fn: x -> (N, K, K, D) grid features (e.g. the model's 'features' in eval mode).
    fc_kernel: (D, C) classifier weights; x: (N, H, W, C_in) normalised inputs; labels: (N,).
  Returns:
    (N, K, K, H, W) float32 (mechanism.own_cell_gradient_share reads it).
  """
  def cell_logits(inputs):
    weights = jnp.take(fc_kernel, labels, axis=1).T                          # (N, D)
    return jnp.einsum('nhwd,nd->nhw', features_fn(inputs).astype(jnp.float32), weights)

  logits, pullback = jax.vjp(cell_logits, x)                                   # (N, K, K)
  n, k = logits.shape[:2]
  one_hot = jnp.eye(k * k, dtype=logits.dtype).reshape(k * k, 1, k, k)
  grads = jax.vmap(lambda ct: pullback(ct)[0])(
      jnp.broadcast_to(one_hot, (k * k, n, k, k)))                             # (K², N, H, W, C)
  grads = jnp.abs(grads.astype(jnp.float32)).sum(axis=-1)
  return jnp.moveaxis(grads, 0, 1).reshape((n, k, k) + x.shape[1:3])


def predict_segments(variables, batches: Iterable[dict], step, *,
                     keep_frames: int = 0) -> dict[str, np.ndarray]:
  """Runs `step` over eval batches; gathers per-video p(s_n), attention maps, ids and labels.

  Args:
    variables: replicated model variables (as `step` expects them).
    batches: eval batches from `input_pipeline.create_eval_dataset` (device-shaped, with 'valid').
    step: the parallel eval step (`parallel.make_parallel_step(eval_step, ...)`).
    keep_frames: keep the centre-view frames of the first `keep_frames` videos (for figures).
  """
  out = {"video_id": [], "label": [], "segment_probs": [], "attention": [], "cell_probs": [],
         "frames": []}
  for batch in tqdm.tqdm(batches, desc="eval", unit="batch", leave=False):
    result = jax.device_get(step(variables, batch["frames"]))
    valid = np.asarray(batch["valid"]).reshape(-1)
    out["video_id"].extend(np.asarray(batch["video_id"]).reshape(-1)[valid])
    out["label"].append(np.asarray(batch["label"]).reshape(-1)[valid])
    out["segment_probs"].append(result["probs"].reshape((-1,) + result["probs"].shape[2:])[valid])
    for key in ("attention", "cell_probs"):
      if key in result:
        out[key].append(result[key].reshape((-1,) + result[key].shape[2:])[valid])
    kept = sum(len(f) for f in out["frames"])
    if kept < keep_frames:
      frames = np.asarray(batch["frames"]).reshape((-1,) + batch["frames"].shape[2:])[valid]
      out["frames"].append(frames[: keep_frames - kept, :, center_view(frames.shape[2])])
  if not out["label"]:
    raise ValueError("the eval split holds no videos")
  optional = {"cell_probs": np.concatenate(out["cell_probs"])} if out["cell_probs"] else {}
  return {
      **optional,
      "video_id": np.array([v.decode() if isinstance(v, bytes) else str(v)
                            for v in out["video_id"]]),
      "label": np.concatenate(out["label"]).astype(np.int64),
      "segment_probs": np.concatenate(out["segment_probs"]),
      "attention": np.concatenate(out["attention"]),
      "frames": (np.concatenate(out["frames"]) if out["frames"]
                 else np.zeros((0,), np.uint8)),
  }


def _pad_to(x: np.ndarray, length: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((length - len(x),) + x.shape[1:], x.dtype)])


def _encode_ids(ids: np.ndarray, width: int) -> np.ndarray:
  """Video ids -> (N, width) uint8 (UTF-8, zero-padded), for a collective."""
  out = np.zeros((len(ids), width), np.uint8)
  for i, video_id in enumerate(ids):
    data = str(video_id).encode()
    out[i, :len(data)] = np.frombuffer(data, np.uint8)
  return out


def gather_segments(segments: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's per-video results, concatenated in process order (multi-host eval).

  Each process pads its arrays to the longest process's video count and all are gathered with
  `multihost_utils.process_allgather`; the padding is dropped with the gathered counts (the
  validity mask). 'frames' (for figures) stay this process's. One process: `segments` itself.
  """
  if jax.process_count() == 1:
    return segments
  count = len(segments["label"])
  width = max([len(str(v).encode()) for v in segments["video_id"]] + [1])
  counts, widths = multihost_utils.process_allgather(
      (np.asarray(count, np.int64), np.asarray(width, np.int64)))
  length, width = int(np.max(counts)), int(np.max(widths))
  local = {k: _pad_to(np.asarray(segments[k]), length) for k in GATHERED if k in segments}
  local["video_id"] = _pad_to(_encode_ids(segments["video_id"], width), length)
  gathered = multihost_utils.process_allgather(local)          # leaves (P, length, ...)
  valid = np.arange(length)[None, :] < np.asarray(counts)[:, None]  # (P, length)
  out = {k: np.asarray(v)[valid] for k, v in gathered.items()}
  out["video_id"] = np.array([bytes(row).rstrip(b"\0").decode() for row in out["video_id"]])
  out["frames"] = segments["frames"]
  return out


def eval_scalars(results: dict) -> dict[str, float]:
  """{'eval/<method>_top1', 'eval/<method>_mean_class_accuracy'} for AVE and DCW."""
  return {f"eval/{method}_{name}": float(value)
          for method, values in results["metrics"].items() for name, value in values.items()}


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
             keep_frames: int = 0, num_devices: Optional[int] = None,
             writer: Optional[Any] = None, step: int = 0) -> dict:
  """Runs the full test protocol on `config.data_dir`'s eval split and writes the results.

  Args:
    config: the training config (its `eval`, `input`, `modality` fields are used).
    workdir: where the scores, results and confusion matrices go (written by process 0).
    variables: unreplicated {'params', 'batch_stats'}.
    model: the STACNN module the variables belong to.
    keep_frames: centre-view frames of this many videos (of this process) are returned for
      figures.
    writer: a clu metric writer: AVE / DCW top-1 and mean class accuracy go to it at `step`.

  Returns:
    The results dict (also in results.json), over the videos of every process, with
    'segments' (per-video arrays) added.
  """
  info = input_pipeline.dataset_info(config.data_dir)
  classes = info["classes"]
  mode = config.parallel
  step_fn = parallel.make_parallel_step(
      lambda v, f: eval_step(v, f, model=model, config=config), mode=mode, donate=False)
  replicated = parallel.replicate(variables, mode)
  batches = input_pipeline.create_eval_dataset(config, num_devices=num_devices)
  segments = gather_segments(predict_segments(replicated, batches, step_fn,
                                              keep_frames=keep_frames))
  scores, results = score_videos(segments, len(classes), config.eval.dcw_top_k)
  results.update({"row": config.get("row", ""), "row_name": config.get("row_name", ""),
                  "modality": config.modality, "eval_split": config.eval_split})
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    save_scores(workdir, segments, scores, classes)
    write_results(workdir, config.get("row_name", "") or config.get("row", "model"), results)
  if writer is not None:
    writer.write_scalars(step, eval_scalars(results))
    writer.flush()
  logging.info("eval %s: %s", config.get("row", ""), json.dumps(results["metrics"]))
  results["segments"] = segments
  return results
