r"""The whole STA-CNN job on an embedded default, in a few minutes on 2 CPU cores.

    python -m sta_cnn_jax.demo [--workdir=demo_out] [--rows=baseline,sta_ts3x3_3x1] [--steps=N]

1. writes a small synthetic video dataset in the UCF101 on-disk layout (`data_prep.synthetic`);
2. prepares TFRecord shards of RGB frames and optical flow (`data_prep.prepare`);
3. pre-trains the SAN + Expanded Part on that flow with the relaxed MSE (Eq. 4) when a row uses
   spatial attention;
4. trains each row of `configs/demo.py` (the same train step, input pipeline and checkpoints as
   real training, on small frames);
5. evaluates each with the test protocol (25 segments, AVE and DCW top-15);
6. writes attention figures (Fig. 1/7 style maps, Fig. 2 style segment confidences) and reports
   how much spatial attention falls inside the synthetic object's box against chance;
7. prints a results table (also `results.md` / `results.json` in the workdir).

Every step resumes: re-running skips the dataset, the shards and finished training runs.
"""

import json
import os
import time
from typing import Sequence

# Quiet TensorFlow's C++ start-up chatter (tf.data only runs on the host here).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from configs import demo as demo_config
from data_prep import prepare as prepare_lib
from data_prep import synthetic
from sta_cnn_jax import evaluate as evaluate_lib
from sta_cnn_jax import temporal
from sta_cnn_jax import train
from sta_cnn_jax import visualize

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where everything is written.")
_ROWS = flags.DEFINE_list("rows", ["baseline", "sta_ts3x3_3x1"],
                          "Rows of configs/demo.py to train and compare (any row of "
                          "configs/base.py, e.g. add tam_ts3x3_3x1).")
_MODALITY = flags.DEFINE_enum("modality", "rgb", ["rgb", "flow"], "Stream to train.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic dataset.")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps per row (0: configs/demo.py's).")

SYNTHETIC_DIR = "synthetic"
SHARDS_DIR = "data"
FIGURES_DIR = "figures"
# Videos whose attention maps / confidences are drawn.
NUM_FIGURE_VIDEOS = 4
# Demo dataset size: small enough to prepare in well under a minute on 2 cores.
DATASET = dict(num_classes=6, videos_per_class=12, test_per_class=4, frames=48)


def make_dataset(workdir: str, seed: int) -> tuple[str, str]:
  """Synthetic videos + TFRecord shards (skipped when already there). Returns (videos, shards)."""
  videos = os.path.join(workdir, SYNTHETIC_DIR)
  shards = os.path.join(workdir, SHARDS_DIR)
  height, width = demo_config.FRAME_SIZE
  if not os.path.isfile(os.path.join(videos, synthetic.BOXES_FILE)):
    logging.info("writing the synthetic dataset to %s", videos)
    synthetic.generate(videos, size=(width, height), seed=seed, **DATASET)
  if not os.path.isfile(os.path.join(shards, "manifest.json")):
    options = prepare_lib.PrepareOptions(
        out=shards, dataset="ucf101", videos=os.path.join(videos, synthetic.VIDEOS_DIR),
        splits=os.path.join(videos, synthetic.SPLITS_DIR), split=1, modalities=("rgb", "flow"),
        flow="dis", frame_width=width, frame_height=height, workers=os.cpu_count() or 1)
    prepare_lib.prepare(options)
  return videos, shards


def row_config(row: str, modality: str, shards: str, san_weights: str = "", steps: int = 0):
  config = demo_config.get_config(f"{modality},{row}")
  config.data_dir = shards
  if steps:
    config.num_train_steps = steps
    config.san_pretrain.num_steps = steps
  config.eval.at_end = False            # the demo evaluates itself, keeping frames for figures
  if config.model.spatial_attention and modality == "rgb":
    config.init.san_weights = san_weights
  return config


def segment_boxes(boxes: Sequence, num_segments: int, crop_offset: tuple[int, int]) -> list:
  """The object box (crop pixels) in each eval segment's first frame, or None where absent."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from sta_cnn_jax import sampling  # pylint: disable=g-import-not-at-top
  offsets = sampling.test_offsets(tf.constant(len(boxes)), num_segments, 1).numpy()
  dy, dx = crop_offset
  out = []
  for frame in offsets:
    box = boxes[int(frame)]
    out.append(None if box is None else [box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy])
  return out


def attention_in_boxes(segments: dict, boxes_by_video: dict, config) -> dict:
  """Mean fraction of spatial attention mass inside the object's box vs. the box's area (chance)."""
  from sta_cnn_jax import augment  # pylint: disable=g-import-not-at-top
  crop = config.input.crop_size
  height, width = config.input.frame_size
  crop_offset = tuple(int(v) for v in augment.center_offset(height, width, crop).numpy())
  mass, chance = [], []
  for video_id, attention in zip(segments["video_id"], segments["attention"]):
    for att, box in zip(attention, segment_boxes(boxes_by_video[video_id], len(attention),
                                                 crop_offset)):
      if box is None:
        continue
      clipped = [max(box[0], 0), max(box[1], 0), min(box[2], crop), min(box[3], crop)]
      if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        continue                       # the object is outside the centre crop
      mass.append(visualize.attention_mass_in_box(att, clipped, (crop, crop)))
      chance.append(visualize.box_area_fraction(clipped, (crop, crop)))
  return {"attention_mass_in_box": float(np.mean(mass)) if mass else float("nan"),
          "box_area_fraction": float(np.mean(chance)) if chance else float("nan"),
          "num_segments_with_object": len(mass)}


def write_figures(segments: dict, config, out_dir: str, classes: Sequence[str]) -> list[str]:
  """Fig. 1/7 (attention-weighted frames) and Fig. 2 (segment confidence) for a few test videos."""
  os.makedirs(out_dir, exist_ok=True)
  written = []
  probs = segments["segment_probs"]
  alpha = np.asarray(temporal.confidence_from_probs(probs))
  top_k = min(config.eval.dcw_top_k, probs.shape[1])
  beta = np.asarray(temporal.temporal_attention_mask(alpha, top_k))
  for v in range(min(NUM_FIGURE_VIDEOS, len(segments["frames"]))):
    video_id = segments["video_id"][v]
    frames = segments["frames"][v][..., :3]                      # (S, H, W, 3): frame t
    predictions = np.argmax(probs[v], axis=-1)
    written.append(str(visualize.plot_segment_confidence(
        alpha[v], beta[v], os.path.join(out_dir, f"{video_id}_confidence.png"),
        class_names=classes, predictions=predictions, frames=frames,
        title=f"{video_id} (label {classes[segments['label'][v]]})")))
    if config.model.spatial_attention:
      chosen = np.argsort(-alpha[v], kind="stable")[:NUM_FIGURE_VIDEOS]
      written.append(str(visualize.plot_attention_maps(
          frames[chosen], segments["attention"][v][chosen],
          os.path.join(out_dir, f"{video_id}_attention.png"),
          titles=[f"segment {s}" for s in chosen])))
  return written


def run_row(row: str, modality: str, workdir: str, shards: str, san_weights: str,
            boxes_by_video: dict, classes: Sequence[str], steps: int = 0) -> dict:
  """Trains (or resumes) one row, evaluates it, draws its figures; returns its table entry."""
  config = row_config(row, modality, shards, san_weights, steps)
  row_dir = os.path.join(workdir, f"{modality}_{row}")
  start = time.time()
  state = train.train_and_evaluate(config, row_dir)
  train_seconds = time.time() - start
  model = train.create_model(config, len(classes))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  results = evaluate_lib.evaluate(config, row_dir, variables, model,
                                  keep_frames=NUM_FIGURE_VIDEOS)
  segments = results.pop("segments")
  entry = {"row": row, "name": config.row_name, "modality": modality,
           "train_seconds": round(train_seconds, 1), "train_steps": config.num_train_steps,
           **{f"{m}_{k}": v for m, r in results["metrics"].items() for k, v in r.items()}}
  if config.model.spatial_attention:
    entry.update(attention_in_boxes(segments, boxes_by_video, config))
  entry["figures"] = write_figures(segments, config, os.path.join(workdir, FIGURES_DIR, row),
                                   classes)
  return entry


def format_table(entries: Sequence[dict]) -> str:
  lines = ["| model | DCW top-1 | AVE top-1 | DCW mean-class | AVE mean-class | attention in box "
           "(chance) | train s |", "|---|---|---|---|---|---|---|"]
  for e in entries:
    box = (f"{e['attention_mass_in_box']:.2f} ({e['box_area_fraction']:.2f})"
           if "attention_mass_in_box" in e else "—")
    lines.append(f"| {e['name']} | {e['dcw_top1']:.1%} | {e['ave_top1']:.1%} | "
                 f"{e['dcw_mean_class_accuracy']:.1%} | {e['ave_mean_class_accuracy']:.1%} | "
                 f"{box} | {e['train_seconds']:.0f} |")
  return "\n".join(lines)


def run(workdir: str, rows: Sequence[str], modality: str = "rgb", seed: int = 0,
        steps: int = 0) -> list[dict]:
  """The demo as a function (the CLI and the end-to-end test call it)."""
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  videos, shards = make_dataset(workdir, seed)
  with open(os.path.join(shards, "manifest.json")) as f:
    classes = json.load(f)["classes"]
  height, width = demo_config.FRAME_SIZE
  boxes_by_video = synthetic.load_boxes(os.path.join(videos, synthetic.BOXES_FILE),
                                        (height, width))
  san_weights = ""
  attention_rows = [r for r in rows if row_config(r, modality, shards).model.spatial_attention]
  if modality == "rgb" and attention_rows:
    san_weights = train.pretrain_san(row_config(attention_rows[0], modality, shards, steps=steps),
                                     workdir)
  entries = [run_row(row, modality, workdir, shards, san_weights, boxes_by_video, classes, steps)
             for row in rows]
  table = format_table(entries)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"entries": entries, "wall_seconds": round(time.time() - start, 1),
               "devices": [str(d) for d in jax.devices()]}, f, indent=2)
  return entries


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # progress bars + the final table; --verbosity=0 for logs
  start = time.time()
  entries = run(_WORKDIR.value, _ROWS.value, _MODALITY.value, _SEED.value, _STEPS.value)
  print("\nSTA-CNN demo on synthetic videos (test split, 25 segments; DCW = Eq. 11 top-15)\n")
  print(format_table(entries))
  print(f"\nworkdir: {os.path.abspath(_WORKDIR.value)}  (figures in {FIGURES_DIR}/, "
        f"TensorBoard logs per row)  wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
