r"""The whole STA-CNN job on an embedded default, in a few minutes on 2 CPU cores.

    python -m sta_cnn_jax.demo [--workdir=demo_out] [--rows=sta_ts3x3_3x1] [--steps=N]

1. writes a small synthetic video dataset in the UCF101 on-disk layout (`data_prep.synthetic`);
2. prepares TFRecord shards of RGB frames and optical flow (`data_prep.prepare`);
3. pre-trains the SAN + Expanded Part on that flow with the relaxed MSE (Eq. 4) and reports its
   flow end-point error before and after;
4. trains each row of `configs/demo.py` (the miniature recipe: a narrow BN-Inception from random
   weights) for the RGB and the flow stream, with the same train step, input pipeline and
   checkpoints as real training;
5. evaluates each with the test protocol (25 segments, AVE and DCW top-15) and fuses the two
   streams (TSN weights RGB 1 : flow 1.5);
6. measures the attention against the synthetic videos' ground truth: DCW precision (its top-15
   segments inside the evidence window, against the window's base rate), TAM precision on the
   training videos, spatial attention mass inside the object's box (against the box's area);
7. writes attention figures and prints a results table (also `results.md` / `results.json`):
   every accuracy with its 95% interval and the chance level.

Every step resumes: re-running skips the dataset, the shards and finished training runs.
"""

import json
import os
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import tqdm

from configs import demo as demo_config
from data_prep import prepare as prepare_lib
from data_prep import synthetic
from sta_cnn_jax import experiment
from sta_cnn_jax import job_pool
from sta_cnn_jax import mechanism
from sta_cnn_jax import metrics

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where everything is written.")
_ROWS = flags.DEFINE_list("rows", ["sta_ts3x3_3x1"],
                          "Rows of configs/demo.py to train, each for RGB and flow (any row of "
                          "configs/base.py, e.g. baseline,sta_ts3x3_3x1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic dataset and of training.")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps per run (0: configs/demo.py's "
                              "DEMO_STEPS; the miniature recipe itself trains SCHEDULE's steps).")

_JOBS = flags.DEFINE_integer("jobs", 0, "Runs side by side, one core each (0: one per core on "
                             "a CPU host, 1 on an accelerator; sta_cnn_jax/job_pool.py).")

SYNTHETIC_DIR = "synthetic"
SHARDS_DIR = "data"
FIGURES_DIR = "figures"
SAN_DIR = "san_pretrain"
STREAMS = ("rgb", "flow")
# Videos whose attention maps / confidences are drawn.
NUM_FIGURE_VIDEOS = 3
# Demo dataset: 10 classes (chance 10%; RGB alone can reach 50%: a pair's two classes differ
# only in motion), 24 training and 4 test videos each, the object in 80% of the frames (the
# miniature's 50% needs more training than the demo's minutes; docs/miniature.md).
DATASET = dict(num_classes=10, videos_per_class=28, test_per_class=4, frames=48,
               evidence_fraction=0.8)


def make_dataset(workdir: str, seed: int) -> tuple[str, str]:
  """Synthetic videos + TFRecord shards (skipped when already there). Returns (videos, shards)."""
  videos = os.path.join(workdir, SYNTHETIC_DIR)
  shards = os.path.join(workdir, SHARDS_DIR)
  height, width = demo_config.FRAME_SIZE
  if not os.path.isfile(os.path.join(videos, synthetic.BOXES_FILE)):
    logging.info("writing the synthetic dataset to %s", videos)
    synthetic.generate(videos, size=(width, height), seed=seed,
                       object_fraction=demo_config.OBJECT_FRACTION, **DATASET)
  if not os.path.isfile(os.path.join(shards, "manifest.json")):
    options = prepare_lib.PrepareOptions(
        out=shards, dataset="ucf101", videos=os.path.join(videos, synthetic.VIDEOS_DIR),
        splits=os.path.join(videos, synthetic.SPLITS_DIR), split=1, modalities=STREAMS,
        flow=demo_config.FLOW_METHOD, frame_width=width, frame_height=height,
        workers=os.cpu_count() or 1)
    prepare_lib.prepare(options)
  return videos, shards


def row_config(row: str, modality: str, shards: str, seed: int = 0, steps: int = 0):
  return demo_config.run_config(modality, row, shards, seed, steps, demo=True, san_steps=steps)


def _ratio(value, chance, best=None) -> str:
  if value is None:
    return "—"
  return f"{value:.2f} ({chance:.2f}" + (f"; {best:.2f})" if best is not None else ")")


def _static_share(share: Optional[float]) -> str:
  return "" if share is None else f"; static {share:.2f}"


def format_table(entries: Sequence[dict]) -> str:
  """Markdown: accuracies with 95% Wilson intervals and chance; mechanism metrics vs chance."""
  lines = ["| model | stream | DCW top-1 [95% CI] | AVE top-1 [95% CI] | chance | "
           "DCW precision (base rate; best) | TAM precision (base rate; best) | "
           "attention in box (area); static share |",
           "|---|---|---|---|---|---|---|---|"]
  for e in entries:
    n = e["num_test_videos"]
    lines.append(
        f"| {e.get('row_name') or e['row']} | {e['modality']} | "
        f"{metrics.format_accuracy(e['dcw_top1'], n)} | "
        f"{metrics.format_accuracy(e['ave_top1'], n)} | {e['chance']:.1%} | "
        f"{_ratio(e['dcw_precision'], e['dcw_base_rate'], e['dcw_best_precision'])} | "
        f"{_ratio(e['tam_precision'], e['tam_base_rate'], e['tam_best_precision'])} | "
        f"{_ratio(e['attention_in_box'], e['box_area_fraction'])}"
        f"{_static_share(e.get('attention_static_share'))} |")
  return "\n".join(lines)


def paired_comparisons(entries: Sequence[dict]) -> list[dict]:
  """Per row: its fusion against each stream (DCW), and DCW against AVE in each entry, on the
  same test videos: the top-1 difference, the videos only the first gets right (won) / only
  the second (lost), and the exact McNemar p-value of those counts."""
  out = []
  def add(name, a, b, method_a, method_b):
    counts = metrics.discordant_pairs(a[f"{method_a}_correct"], b[f"{method_b}_correct"])
    out.append({"comparison": name, "diff": a[f"{method_a}_top1"] - b[f"{method_b}_top1"],
                **metrics.paired_test(*counts)})
  for e in entries:
    if e["modality"] == experiment.FUSION:
      for s in entries:
        if s["row"] == e["row"] and s["modality"] != experiment.FUSION:
          add(f"{e.get('row_name') or e['row']}: fusion > {s['modality']} (DCW)", e, s,
              "dcw", "dcw")
  for e in entries:
    add(f"{e.get('row_name') or e['row']} {e['modality']}: DCW >= AVE", e, e, "dcw", "ave")
  return out


def format_paired(comparisons: Sequence[dict], num_videos: int) -> str:
  lines = [f"| paired on the same {num_videos} test videos | top-1 diff | videos won / lost | "
           "McNemar p |", "|---|---|---|---|"]
  for c in comparisons:
    lines.append(f"| {c['comparison']} | {100 * c['diff']:+.1f} pts | {c['videos_won']} / "
                 f"{c['videos_lost']} | {c['mcnemar_p']:.3f} |")
  return "\n".join(lines)


def run(workdir: str, rows: Sequence[str], seed: int = 0, steps: int = 0,
        workers: int = 0) -> dict:
  """The demo as a function (the CLI and the end-to-end test call it). workers: runs side by
  side, one core each (0: job_pool.default_workers())."""
  os.makedirs(workdir, exist_ok=True)
  experiment.use_compilation_cache(workdir)
  start = time.time()
  videos, shards = make_dataset(workdir, seed)
  with open(os.path.join(shards, "manifest.json")) as f:
    classes = json.load(f)["classes"]
  truth = mechanism.load_ground_truth(os.path.join(videos, synthetic.BOXES_FILE),
                                      demo_config.FRAME_SIZE)
  run_configs = {(m, r, seed): row_config(r, m, shards, seed, steps)
                 for r in rows for m in STREAMS}
  san_configs = experiment.san_pretraining_configs(run_configs)
  jobs = experiment.experiment_jobs(
      run_configs, san_configs, {k: os.path.join(workdir, f"{k[0]}_{k[1]}") for k in run_configs},
      {seed: os.path.join(workdir, SAN_DIR)}, classes, truth,
      {k: os.path.join(workdir, FIGURES_DIR, f"{k[0]}_{k[1]}") for k in run_configs},
      NUM_FIGURE_VIDEOS)
  workers = min(workers or job_pool.default_workers(), len(jobs))
  with tqdm.tqdm(total=len(jobs), desc=f"runs ({workers} side by side)", unit="run") as bar:
    results = job_pool.run_jobs(
        jobs, workers, (experiment.prepare_worker, (workdir, logging.get_verbosity())),
        lambda job, result, seconds: bar.update(1), release_after_jobs=True)
  entries = experiment.collect_entries(results, rows, STREAMS, [seed], len(classes))
  san_report = results[experiment.san_name(seed)][1] if san_configs else None
  comparisons = paired_comparisons(entries)
  table = (format_table(entries) + "\n\n" +
           format_paired(comparisons, entries[0]["num_test_videos"]))
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  result = {"entries": entries, "paired": comparisons, "san_pretraining": san_report,
            "wall_seconds": round(time.time() - start, 1),
            "devices": [str(d) for d in jax.devices()]}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # progress bars + the final table; --verbosity=0 for logs
  start = time.time()
  result = run(_WORKDIR.value, _ROWS.value, _SEED.value, _STEPS.value, _JOBS.value)
  entries = result["entries"]
  print(f"\nSTA-CNN demo: a MINIATURE (narrow BN-Inception x{demo_config.WIDTH_MULTIPLIER}, "
        f"{demo_config.CROP_SIZE}px crops, random init) on synthetic videos; test split of "
        f"{entries[0]['num_test_videos']} videos, 25 segments, DCW = Eq. 11 top-15, "
        "fusion = RGB 1 : flow 1.5\n")
  print(format_table(entries))
  print()
  print(format_paired(result["paired"], entries[0]["num_test_videos"]))
  san = result["san_pretraining"]
  if san:
    print(f"\nSAN pre-training (Eq. 4, {san['steps']} steps): flow EPE {san['epe_before']:.2f} px "
          f"-> {san['epe_after']:.2f} px (zero flow: {san['zero_flow_epe']:.2f} px)")
  print("\n95% CI: Wilson interval over the test videos. Precision = share of the selected "
        "segments inside the evidence window, next to the share of all segments there and "
        "the best a perfect selection of the same shape reaches; "
        "attention in box = attention mass on the object, next to its share of the crop; "
        "static share = how much of the maps' departure from uniform is one fixed map "
        "(1: the same map for every frame, a location prior that cannot follow the object). "
        "Paired: videos won / lost = test videos only the first / only the second gets right; "
        "McNemar p >= 0.05 means these videos do not tell the two apart.")
  print(f"\nworkdir: {os.path.abspath(_WORKDIR.value)}  (figures in {FIGURES_DIR}/, "
        f"TensorBoard logs per run)  wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
