r"""Offline preparation of a video dataset into TFRecord shards (RGB, flow, warped flow).

    python -m data_prep.prepare --dataset=ucf101 --videos=UCF-101 --splits=ucfTrainTestlist \
        --split=1 --out=/data/ucf101_s1 [--modalities=rgb,flow,warpflow] [--flow=dis]

Python API (used by the demo): `prepare(PrepareOptions(...)) -> manifest dict`.

Each video is one pure function call, `process.process_video(item, options)`, that returns a
`VideoResult` (the serialised tf.train.Example + facts for the manifest) or a `SkipRecord`
(path + reason). Videos are processed in parallel by a multiprocessing pool of `--workers`
processes (each with one OpenCV thread) and collected per shard; a shard is written atomically as
soon as all its videos are done, so a killed run resumes where it stopped (see shards.py;
manifest.json: manifest.py; damage checks: integrity.py). `--runner=beam` runs the same function
as an Apache Beam pipeline (beam.py).

Integrity: a re-run checks every finished shard against the size, record count and SHA-256
recorded when it was written, and redoes (and lists) the ones that differ, so a truncated or
overwritten shard is repaired by running the same command again (byte-identical to a clean run).
`--out=DIR --verify` only checks an output against its manifest.json, writes nothing, prints the
damaged files and the command that repairs them, and exits with status 1 if any.

Before starting, the flow cost is measured on real frames and the expected time printed
(estimate.py: per-pair speed × estimated frame pairs / workers). TV-L1 on a CPU core manages
~0.5–0.7 pairs/s at 340×256, i.e. days for UCF101 on a few cores: on a GPU/TPU use
`--flow=tvl1_jax`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging as std_logging
import multiprocessing
import os
import pathlib
import sys
import threading
from typing import Iterator, Sequence

import cv2
import numpy as np
from absl import app
from absl import flags
from absl import logging

from data_prep import estimate
from data_prep import flow as flow_lib
from data_prep import integrity
from data_prep import layout
from data_prep import manifest as manifest_lib
from data_prep import process
from data_prep import shards
from data_prep import sources
from data_prep import video as video_lib
from data_prep.shards import SkipRecord, VideoResult
from data_prep.sources import VideoItem
from sta_cnn_jax import modalities

DATASETS = ("ucf101", "hmdb51", "list", "tfds", "synthetic")
MODALITIES = modalities.MODALITIES
FLOW_MODALITIES = modalities.FLOW_MODALITIES
RUNNERS = ("local", "beam")
# Videos per shard: ~25 UCF101 videos at 340×256 with RGB + flow JPEGs ≈ 150–200 MB, the shard
# size tf.data recommends (100–200 MB).
DEFAULT_SHARD_SIZE = 25
# Tasks in flight per worker (bounds memory when frames are streamed from TFDS).
TASKS_IN_FLIGHT_PER_WORKER = 4


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Everything `prepare` needs; mirrors the command-line flags."""
  out: str
  dataset: str = "ucf101"
  videos: str | None = None
  splits: str | None = None
  split: int = 1
  modalities: tuple[str, ...] = ("rgb", "flow")
  flow: str = "dis"
  flow_bound: float = flow_lib.DEFAULT_BOUND
  flow_format: str = "jpeg"
  jpeg_quality: int = flow_lib.DEFAULT_JPEG_QUALITY
  frame_width: int = video_lib.DEFAULT_WIDTH
  frame_height: int = video_lib.DEFAULT_HEIGHT
  workers: int = os.cpu_count() or 1
  shard_size: int = DEFAULT_SHARD_SIZE
  runner: str = "local"
  max_videos: int = 0  # 0 = all; else this many per split, evenly spread over the sorted ids
  tfds_name: str = "ucf101"
  tfds_data_dir: str | None = None
  tfds_splits: tuple[str, ...] = ("train", "test")
  synthetic_seed: int = 0
  beam_args: tuple[str, ...] = ()
  progress: bool = True

  def validate(self) -> "PrepareOptions":
    checks = [
        (self.dataset in DATASETS, f"--dataset must be one of {DATASETS}"),
        (bool(self.modalities) and set(self.modalities) <= set(MODALITIES),
         f"--modalities must be a non-empty subset of {MODALITIES}"),
        (self.flow in flow_lib.FLOW_METHODS,
         f"--flow must be one of {sorted(flow_lib.FLOW_METHODS)}"),
        (self.flow_format in flow_lib.FLOW_FORMATS,
         f"--flow_format must be one of {flow_lib.FLOW_FORMATS}"),
        (0 < self.jpeg_quality <= 100, "--jpeg_quality must be in 1..100"),
        (self.flow_bound > 0, "--flow_bound must be > 0"),
        (self.frame_width > 0 and self.frame_height > 0, "frame size must be positive"),
        (self.workers >= 1 and self.shard_size >= 1, "--workers and --shard_size must be >= 1"),
        (self.runner in RUNNERS, f"--runner must be one of {RUNNERS}"),
        (self.max_videos >= 0, "--max_videos must be >= 0"),
        (bool(self.out), "--out is required"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f"{message} (got {self})")
    return self

  def content_options(self) -> dict:
    """The options that determine the bytes written (not out, workers, runner, progress)."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if k not in ("out", "workers", "runner", "progress", "beam_args")}


# ----------------------------------------------------------------------------------------------
# Local runner's task (the per-video function itself is process.process_video)


def _process_task(task: tuple[VideoItem, Sequence[bytes] | None],
                  options: PrepareOptions) -> VideoResult | SkipRecord:
  item, encoded_frames = task
  return process.process_video(item, options, encoded_frames)


def _init_worker() -> None:
  cv2.setNumThreads(1)  # one core per worker process


# ----------------------------------------------------------------------------------------------
# Sources and plan


def load_source(options: PrepareOptions) -> sources.Source:
  """The dataset's classes and items (for 'synthetic', generates it first under <out>/source)."""
  if options.dataset == "ucf101":
    return sources.ucf101_source(_required(options.videos, "--videos"),
                                 _required(options.splits, "--splits"), options.split)
  if options.dataset == "hmdb51":
    return sources.hmdb51_source(_required(options.videos, "--videos"),
                                 _required(options.splits, "--splits"), options.split)
  if options.dataset == "list":
    return sources.list_source(options.videos, _required(options.splits, "--splits"))
  if options.dataset == "tfds":
    return sources.tfds_source(options.tfds_name, options.tfds_splits, options.tfds_data_dir)
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(options.videos or pathlib.Path(options.out) / "source")
  if not (root / synthetic.SPLITS_DIR / synthetic.CLASS_INDEX).is_file():
    synthetic.generate(root, seed=options.synthetic_seed)
  source = sources.ucf101_source(root / synthetic.VIDEOS_DIR, root / synthetic.SPLITS_DIR, 1)
  return dataclasses.replace(source, dataset="synthetic",
                             info={**source.info, "boxes": str(root / synthetic.BOXES_FILE)})


def _required(value: str | None, flag: str) -> str:
  if not value:
    raise ValueError(f"{flag} is required for this --dataset")
  return value


def select_items(items: Sequence[VideoItem], max_videos: int) -> list[VideoItem]:
  """All items, or per split `max_videos` evenly spread over the id-sorted list (deterministic)."""
  if not max_videos:
    return list(items)
  chosen = []
  for split in sorted({item.split for item in items}):
    ordered = sorted((i for i in items if i.split == split), key=lambda i: i.video_id)
    if len(ordered) <= max_videos:
      chosen += ordered
    else:
      picks = np.linspace(0, len(ordered) - 1, max_videos).round().astype(int)
      chosen += [ordered[i] for i in picks]
  return chosen


def _iter_tasks(specs: Sequence[shards.ShardSpec], options: PrepareOptions
                ) -> Iterator[tuple[VideoItem, Sequence[bytes] | None]]:
  items = [item for spec in specs for item in spec.items]
  if items and sources.is_tfds_item(items[0]):
    yield from sources.iter_tfds_frames(items, options.tfds_data_dir)
  else:
    yield from ((item, None) for item in items)


# ----------------------------------------------------------------------------------------------
# Local runner


@contextlib.contextmanager
def _mapper(workers: int):
  """An ordered, lazy map over tasks: in-process for 1 worker, else a spawn-context Pool."""
  if workers == 1:
    yield map
    return
  context = multiprocessing.get_context("spawn")  # no fork of a process that may hold TF threads
  with context.Pool(workers, initializer=_init_worker) as pool:
    yield functools.partial(pool.imap, chunksize=1)


def _bounded(tasks: Iterator, semaphore: threading.Semaphore) -> Iterator:
  for task in tasks:
    semaphore.acquire()
    yield task


def run_local(out_dir: str, pending: Sequence[shards.ShardSpec], options: PrepareOptions,
              workers: int) -> None:
  """Processes the pending shards' videos in parallel and writes each shard when complete."""
  total = sum(len(spec.items) for spec in pending)
  semaphore = threading.Semaphore(max(1, workers * TASKS_IN_FLIGHT_PER_WORKER))
  task_fn = functools.partial(_process_task, options=options)
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  with _mapper(workers) as imap, tqdm(total=total, unit="video", smoothing=0.1,
                                      disable=not options.progress) as bar:
    results = imap(task_fn, _bounded(_iter_tasks(pending, options), semaphore))
    for spec in pending:
      shard_results = []
      for _ in spec.items:
        shard_results.append(next(results))
        semaphore.release()
        bar.update(1)
      shards.write_shard(out_dir, spec, shard_results)
      bar.set_postfix_str(f"shard {spec.filename}")


# ----------------------------------------------------------------------------------------------
# Entry point


def manifest_header(options: PrepareOptions, source: sources.Source) -> dict:
  """The manifest's dataset-level keys (everything but the per-shard aggregates)."""
  flows = [m for m in options.modalities if m in FLOW_MODALITIES]
  header = {
      "dataset": source.dataset,
      "split": source.info.get("split"),  # official split number; None for list / tfds
      "splits": sorted({item.split for item in source.items}),
      "classes": list(source.classes),
      "num_classes": len(source.classes),
      "modalities": list(options.modalities),
      "frame_size": [options.frame_height, options.frame_width],
      "rgb": {"format": "jpeg", "quality": options.jpeg_quality} if "rgb" in options.modalities
             else None,
      "flow": ({"method": options.flow, "params": flow_lib.flow_params(options.flow),
                "bound": options.flow_bound, "format": options.flow_format,
                "quality": options.jpeg_quality if options.flow_format == "jpeg" else None,
                "quantization": "q = round(255*(clip(v,-bound,bound)+bound)/(2*bound)); "
                                "v = q*2*bound/255 - bound",
                "warpflow": ({"homography": "ORB + BFMatcher(Hamming, crossCheck) + RANSAC",
                              "orb_features": flow_lib.ORB_FEATURES,
                              "ransac_reproj_threshold": flow_lib.RANSAC_REPROJ_THRESHOLD,
                              "min_inliers": flow_lib.MIN_HOMOGRAPHY_INLIERS}
                             if "warpflow" in flows else None)}
               if flows else None),
      "source": {"videos": options.videos, "splits": options.splits, **source.info},
      "max_videos": options.max_videos,
      "shard_size": options.shard_size,
  }
  return header


def find_pending(out_dir: str, specs: Sequence[shards.ShardSpec]
                 ) -> tuple[list[shards.ShardSpec], list[integrity.Damage]]:
  """(shards to (re)do, the finished ones among them that were damaged).

  Every finished shard is checked against its summary (size, record count, SHA-256): resume
  keeps only intact shards. Damaged ones are named in a warning and redone.
  """
  finished = sum(layout.gfile_exists(shards.progress_path(out_dir, spec)) for spec in specs)
  if finished:
    logging.info("checking %d finished shards (size, records, SHA-256)", finished)
  pending, damaged = [], []
  for spec in specs:
    complete, damage = shards.check_complete(out_dir, spec)
    if not complete:
      pending.append(spec)
    if damage:
      damaged.append(integrity.Damage(spec.filename, damage))
      logging.warning("%s/%s is damaged (%s): redoing it", out_dir, spec.filename, damage)
  return pending, damaged


def verify(out_dir: str, checksums: bool = True) -> list[integrity.Damage]:
  """`--verify`: checks a prepared output without writing anything; prints the verdict and,
  for damage, the command that repairs it. Returns the damaged files."""
  damages, checked = integrity.verify_output(out_dir, checksums)
  what = "size, records, SHA-256" if checksums else "size, records"
  if not damages:
    print(f"OK: {out_dir}: {checked} shards and manifest.json verified ({what})", flush=True)
    return damages
  print(f"DAMAGED: {out_dir}: {len(damages)} problem(s) ({checked} shards checked: {what}):",
        flush=True)
  for damage in damages:
    print(f"  {damage}", flush=True)
  print(f"repair (keeps intact shards, redoes damaged ones, rewrites manifest.json):\n  "
        f"{integrity.repair_command(out_dir)}", flush=True)
  return damages


def prepare(options: PrepareOptions | dict) -> dict:
  """Prepares (or resumes preparing) the dataset; writes and returns manifest.json's dict.

  `options` is a PrepareOptions or a mapping of its fields (e.g. a ConfigDict's to_dict()).
  """
  if not isinstance(options, PrepareOptions):
    options = PrepareOptions(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in dict(options).items()})
  options.validate()
  out_dir = str(options.out)
  os.makedirs(out_dir, exist_ok=True)
  source = load_source(options)
  items = select_items(source.items, options.max_videos)
  specs = shards.plan_shards(items, options.shard_size, options.modalities)
  shards.check_options(out_dir, options.content_options())
  shards.remove_stale_temporaries(out_dir)
  pending, damaged = find_pending(out_dir, specs)
  workers = options.workers
  if options.flow == "tvl1_jax" and workers > 1 and any(
      m in FLOW_MODALITIES for m in options.modalities):
    logging.info("--flow=tvl1_jax runs in this process (one accelerator); using 1 worker")
    workers = 1
  logging.info("%s: %d videos (%d missing) in %d shards; %d shards to do, %d already complete",
               source.dataset, len(items), len(source.missing), len(specs), len(pending),
               len(specs) - len(pending))
  pending_items = [item for spec in pending for item in spec.items]
  workers = max(1, min(workers, len(pending_items)))  # no idle processes for small runs
  message = estimate.estimate_time(pending_items, options, workers)
  if message:
    print(message, flush=True)
  if pending and options.runner == "beam":
    from data_prep import beam  # pylint: disable=g-import-not-at-top
    beam.run_beam(out_dir, pending, options)
  elif pending:
    run_local(out_dir, pending, options, workers)
  manifest = manifest_lib.build_manifest(out_dir, specs, manifest_header(options, source),
                                         source.missing)
  manifest_lib.write_manifest(out_dir, manifest)
  if damaged:
    print(f"repaired {len(damaged)} damaged shard(s): " + "; ".join(map(str, damaged)),
          flush=True)
  logging.info("wrote %s: %s videos, %d skipped, %d missing", out_dir, manifest["num_videos"],
               len(manifest["skipped"]), len(manifest["missing"]))
  return manifest


# ----------------------------------------------------------------------------------------------
# Command line (flags are defined only when run as a program, so importing this module for
# `prepare()` leaves the caller's absl flags alone).


def define_flags() -> None:
  flags.DEFINE_enum("dataset", "ucf101", DATASETS, "Dataset reader.")
  flags.DEFINE_string("videos", None, "Videos root (class folders or flat). For 'synthetic': "
                      "where to generate it (default <out>/source).")
  flags.DEFINE_string("splits", None, "Directory of split files (ucf101, hmdb51) or the list "
                      "file (list).")
  flags.DEFINE_integer("split", 1, "Official split 1, 2 or 3.")
  flags.DEFINE_string("out", None, "Output directory (shards + manifest.json).", required=True)
  flags.DEFINE_list("modalities", ["rgb", "flow"], f"Subset of {MODALITIES}.")
  flags.DEFINE_enum("flow", "auto", ["auto"] + sorted(flow_lib.FLOW_METHODS),
                    "Optical flow method; 'auto' = tvl1_jax when JAX has a GPU/TPU, else dis.")
  flags.DEFINE_float("flow_bound", flow_lib.DEFAULT_BOUND, "Flow clipped to +-bound (px).")
  flags.DEFINE_enum("flow_format", "jpeg", flow_lib.FLOW_FORMATS, "Flow plane encoding.")
  flags.DEFINE_integer("jpeg_quality", flow_lib.DEFAULT_JPEG_QUALITY, "JPEG quality.")
  flags.DEFINE_integer("frame_width", video_lib.DEFAULT_WIDTH, "Frame width after resize.")
  flags.DEFINE_integer("frame_height", video_lib.DEFAULT_HEIGHT, "Frame height after resize.")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes (1 = in-process).")
  flags.DEFINE_integer("shard_size", DEFAULT_SHARD_SIZE, "Videos per shard.")
  flags.DEFINE_enum("runner", "local", RUNNERS, "local multiprocessing or Apache Beam.")
  flags.DEFINE_integer("max_videos", 0, "Per split, at most this many videos (0 = all).")
  flags.DEFINE_string("tfds_name", "ucf101", "TFDS builder (e.g. ucf101/ucf101_2_256).")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (dataset must be prepared there).")
  flags.DEFINE_list("tfds_splits", ["train", "test"], "TFDS splits to prepare.")
  flags.DEFINE_integer("synthetic_seed", 0, "Seed of the generated synthetic dataset.")
  flags.DEFINE_bool("verify", False, "Only check an existing --out (every shard's size, record "
                    "count and SHA-256 against manifest.json) and print the damaged files with "
                    "the command that repairs them; writes nothing. Exit status 1 if damaged.")
  flags.DEFINE_list("beam_args", [], "Beam pipeline options, e.g. "
                    "--beam_args=--direct_num_workers=4,--direct_running_mode=multi_processing")


def options_from_flags(flag_values: flags.FlagValues) -> PrepareOptions:
  return PrepareOptions(
      out=flag_values.out, dataset=flag_values.dataset, videos=flag_values.videos,
      splits=flag_values.splits, split=flag_values.split,
      modalities=tuple(flag_values.modalities), flow=(flow_lib.default_method() if flag_values.flow == "auto"
                                             else flag_values.flow),
      flow_bound=flag_values.flow_bound, flow_format=flag_values.flow_format,
      jpeg_quality=flag_values.jpeg_quality, frame_width=flag_values.frame_width,
      frame_height=flag_values.frame_height, workers=flag_values.workers,
      shard_size=flag_values.shard_size, runner=flag_values.runner,
      max_videos=flag_values.max_videos, tfds_name=flag_values.tfds_name,
      tfds_data_dir=flag_values.tfds_data_dir, tfds_splits=tuple(flag_values.tfds_splits),
      synthetic_seed=flag_values.synthetic_seed, beam_args=tuple(flag_values.beam_args))


def main(argv: Sequence[str]) -> None:
  del argv
  std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
  if flags.FLAGS.verify:
    sys.exit(1 if verify(flags.FLAGS.out) else 0)
  manifest = prepare(options_from_flags(flags.FLAGS))
  print(f"done: {manifest['num_videos']} videos, {len(manifest['skipped'])} skipped, "
        f"{len(manifest['missing'])} missing -> {flags.FLAGS.out}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
