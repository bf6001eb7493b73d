"""Input-pipeline throughput: training clips/s vs a plain tf.io.decode_jpeg loop.

Writes its own shards (340x256 frames, JPEG quality 95 like TSN's dense_flow extraction)
into a temporary folder, then for RGB and flow and for TS(3x3) and TS(1,1) measures
  * train_pipeline: clips/s out of `create_train_dataset` (decode + TSN crop/resize/flip +
    batching, tf.data parallel on all cores), and
  * decode_loop: clips/s of decoding the same number of JPEG frames per clip
    (K*2 RGB frames or K*5*2 flow planes) with tf.io.decode_jpeg in a Python loop,
  * decode_tfdata_parallel: the same decodes as a parallel tf.data map (all cores, no
    augmentation): the ceiling for a pipeline that must decode those frames,
and one eval (25 segments x 10 views) measurement. One JSON line per measurement, each rate
also per core (the cores this process may use), and per modality and strategy a 'ratios' line:
the pipeline over both decode baselines and, with --step_jsonl (the output of
benchmarks.compare), over the clip rate of the program's train step with the same modality and
snippets per clip -- how many such steps one host keeps fed.

Frames come from a real 340x256 clip of shared/testdata (mmaction2 demo) when present,
flow from OpenCV DIS on it, quantised to +-20 like data_prep; otherwise synthetic frames.

  python -m benchmarks.input_pipeline [--videos 48 --frames 64 --batches 12]   # from the repo root
      [--step_jsonl <benchmarks.compare output>]
"""

import argparse
import json
import os
import pathlib
import tempfile
import time

import numpy as np
import tensorflow as tf

from configs import base as config_base
from sta_cnn_jax import augment
from sta_cnn_jax import dataset_files
from sta_cnn_jax import input_pipeline as ip
from sta_cnn_jax import xla_defaults

FRAME_H, FRAME_W = 256, 340  # TSN frame size (docs/design.md "Interpretations")
JPEG_QUALITY = 95  # cv2.imwrite default, used by TSN's dense_flow
FLOW_BOUND = 20.0  # quantisation bound (docs/design.md "Shard format")
CLIP = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "testdata" / "videos" /
        "other" / "mmaction2_tests_test.mp4")
STRATEGIES = {"TS(3x3)": (3, 3), "TS(1,1)": (1, 1)}


def _source_frames(num_frames):
  """(F, 256, 340, 3) uint8 RGB frames and (F-1, 256, 340, 2) float flow; source name."""
  import cv2
  frames = []
  if CLIP.is_file():
    cap = cv2.VideoCapture(str(CLIP))
    while len(frames) < num_frames:
      ok, bgr = cap.read()
      if not ok:
        break
      frames.append(cv2.cvtColor(cv2.resize(bgr, (FRAME_W, FRAME_H)), cv2.COLOR_BGR2RGB))
    source = f"real clip {CLIP.name}"
  if len(frames) < 2:
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (32, 43, 3), np.uint8), (FRAME_W, FRAME_H))
    frames = [np.roll(base, 2 * i, axis=1) for i in range(num_frames)]
    source = "synthetic"
  dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
  grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
  flow = [dis.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])]
  return np.stack(frames), np.stack(flow), source


def _jpeg(image):
  import cv2
  ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
  assert ok
  return data.tobytes()


def _quantize(v):
  return np.round(255.0 * (np.clip(v, -FLOW_BOUND, FLOW_BOUND) + FLOW_BOUND) /
                  (2 * FLOW_BOUND)).astype(np.uint8)


def write_shards(out_dir, num_videos, frames_per_video, num_shards=4):
  """Videos are windows of the source frames (JPEG-encoded once, reused)."""
  import cv2
  frames, flow, source = _source_frames(max(frames_per_video * 2, 96))
  rgb = [_jpeg(cv2.cvtColor(f, cv2.COLOR_RGB2BGR)) for f in frames]
  fx = [_jpeg(_quantize(f[..., 0])) for f in flow]
  fy = [_jpeg(_quantize(f[..., 1])) for f in flow]
  span = len(frames) - frames_per_video
  writers = [tf.io.TFRecordWriter(os.path.join(out_dir, f"train-rgb+flow-{s:05d}-of-"
                                               f"{num_shards:05d}.tfrecord"))
             for s in range(num_shards)]
  for v in range(num_videos):
    start = (7 * v) % max(span, 1)
    sl = slice(start, start + frames_per_video)
    sf = slice(start, start + frames_per_video - 1)
    feat = {
        "video_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"v%d" % v])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[v % 5])),
        "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[FRAME_H])),
        "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[FRAME_W])),
        "num_frames": tf.train.Feature(int64_list=tf.train.Int64List(
            value=[frames_per_video])),
        "num_flow": tf.train.Feature(int64_list=tf.train.Int64List(
            value=[frames_per_video - 1])),
        "rgb": tf.train.Feature(bytes_list=tf.train.BytesList(value=rgb[sl])),
        "flow_x": tf.train.Feature(bytes_list=tf.train.BytesList(value=fx[sf])),
        "flow_y": tf.train.Feature(bytes_list=tf.train.BytesList(value=fy[sf])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feat))
    writers[v % num_shards].write(example.SerializeToString())
  for w in writers:
    w.close()
  manifest = {"dataset": "benchmark", "classes": [f"c{i}" for i in range(5)],
              "num_videos": {"train": num_videos, "test": num_videos},
              "modalities": ["rgb", "flow"], "frame_size": [FRAME_H, FRAME_W],
              "flow": {"method": "dis", "bound": FLOW_BOUND, "format": "jpeg"}}
  with open(os.path.join(out_dir, ip.MANIFEST_NAME), "w") as f:
    json.dump(manifest, f)
  for s in range(num_shards):  # the same videos as a test split, for the eval measurement
    name = f"train-rgb+flow-{s:05d}-of-{num_shards:05d}.tfrecord"
    tf.io.gfile.copy(os.path.join(out_dir, name),
                     os.path.join(out_dir, name.replace("train-", "test-")), overwrite=True)
  return {"source": source, "rgb_jpeg_kb": float(np.mean([len(b) for b in rgb]) / 1024),
          "flow_jpeg_kb": float(np.mean([len(b) for b in fx + fy]) / 1024)}


def _time_iterator(iterator, warmup, batches):
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return time.perf_counter() - start


def _pipeline_config(data_dir, modality, out_size):
  """The base config of `modality` reading `data_dir` with `out_size` crops, seed 0."""
  config = config_base.get_base_config(modality)
  config.data_dir, config.input.crop_size, config.seed = data_dir, out_size, 0
  return config


def bench_train(data_dir, modality, strategy, args):
  n, m = STRATEGIES[strategy]
  config = _pipeline_config(data_dir, modality, args.out_size)
  config.temporal.num_segments, config.temporal.snippets_per_segment = n, m
  config.batch_size, config.input.shuffle_buffer = args.batch_size, args.batch_size * 2
  iterator = ip.create_train_dataset(config, process_index=0, process_count=1, num_devices=1)
  seconds = _time_iterator(iterator, args.warmup, args.batches)
  return args.batches * args.batch_size / seconds


def _encoded_frames(data_dir, modality, strategy):
  """(JPEG planes of one video, planes decoded per clip, channels) for the decode baselines."""
  n, m = STRATEGIES[strategy]
  per_clip = n * m * (2 if modality == "rgb" else 5 * 2)
  record = next(iter(tf.data.TFRecordDataset(dataset_files.find_shards(data_dir, "train")[:1])))
  keys = ("rgb",) if modality == "rgb" else ("flow_x", "flow_y")
  parsed = tf.io.parse_single_example(record, {k: tf.io.VarLenFeature(tf.string)
                                               for k in keys})
  frames = tf.concat([parsed[k].values for k in keys], 0)
  return frames, per_clip, 3 if modality == "rgb" else 1


def bench_decode_loop(data_dir, modality, strategy, args):
  """Decodes K*T frames (flow: x and y planes) per clip, one tf.io.decode_jpeg call each."""
  frames, per_clip, channels = _encoded_frames(data_dir, modality, strategy)
  clips = max(1, args.batches * args.batch_size // 2)
  for i in range(per_clip):  # warm-up
    tf.io.decode_jpeg(frames[i % len(frames)], channels=channels,
                      dct_method=ip.JPEG_DCT_METHOD)
  start = time.perf_counter()
  for c in range(clips):
    for i in range(per_clip):
      tf.io.decode_jpeg(frames[(c + i) % len(frames)], channels=channels,
                        dct_method=ip.JPEG_DCT_METHOD)
  return clips / (time.perf_counter() - start)


def bench_decode_tfdata(data_dir, modality, strategy, args):
  """The same decodes as decode_loop, as a parallel tf.data map over all cores (no augment)."""
  frames, per_clip, channels = _encoded_frames(data_dir, modality, strategy)
  ds = tf.data.Dataset.from_tensor_slices(frames).repeat().map(
      lambda b: tf.io.decode_jpeg(b, channels=channels, dct_method=ip.JPEG_DCT_METHOD),
      num_parallel_calls=tf.data.AUTOTUNE).batch(per_clip).prefetch(tf.data.AUTOTUNE)
  iterator = iter(ds)
  clips = max(1, args.batches * args.batch_size // 2)
  seconds = _time_iterator(iterator, args.warmup, clips)
  return clips / seconds


def bench_eval(data_dir, args):
  batch = 2
  config = _pipeline_config(data_dir, "rgb", args.out_size)
  config.eval.batch_size = batch
  iterator = ip.create_eval_dataset(config, process_index=0, process_count=1, num_devices=1)
  count, start = 0, None
  for i, _ in enumerate(iterator):
    if i == 0:
      start = time.perf_counter()
    else:
      count += batch
  return count / (time.perf_counter() - start)


def step_rates(path):
  """{(modality, snippets per clip): (setting, clips/s)}: the fastest train step of the JAX
  worker with the program's default settings ('jax_default...') in a benchmarks.compare
  output file, per modality and snippets per clip."""
  out = {}
  with open(path) as f:
    for line in f:
      d = json.loads(line)
      if not str(d.get("worker", "")).startswith("jax_default") or "videos" not in d:
        continue
      key = (d["modality"], d["frames"] // d["videos"])
      if key not in out or d["clips_per_s"] > out[key][1]:
        out[key] = (d["setting"], d["clips_per_s"])
  return out


def ratio_line(rates, modality, strategy, snippets, steps):
  """The train pipeline against the decode baselines (and the train step, where measured)."""
  line = {"benchmark": "input_pipeline", "what": "ratios", "modality": modality,
          "strategy": strategy,
          "pipeline_over_decode_loop": round(rates["train_pipeline"] / rates["decode_loop"], 3),
          "pipeline_over_parallel_decode": round(
              rates["train_pipeline"] / rates["decode_tfdata_parallel"], 3)}
  if (modality, snippets) in steps:
    setting, step_rate = steps[(modality, snippets)]
    line.update(step_setting=setting, step_clips_per_s=step_rate,
                pipeline_over_step=round(rates["train_pipeline"] / step_rate, 2))
  return line


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--videos", type=int, default=48)
  parser.add_argument("--frames", type=int, default=64, help="frames per video")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--batches", type=int, default=12)
  parser.add_argument("--out_size", type=int, default=224)
  parser.add_argument("--skip_eval", action="store_true")
  parser.add_argument("--step_jsonl", default="",
                      help="benchmarks.compare output: each train_pipeline line then also gives "
                           "its ratio to the clip rate of the JAX train step with the same "
                           "modality and snippets per clip")
  args = parser.parse_args()
  steps = step_rates(args.step_jsonl) if args.step_jsonl else {}
  cores = len(xla_defaults.available_cores())
  common = {"benchmark": "input_pipeline", "frame_size": [FRAME_H, FRAME_W],
            "out_size": args.out_size, "batch_size": args.batch_size,
            "cpu_cores": cores, "tf": tf.__version__,
            "jpeg_dct": ip.JPEG_DCT_METHOD, "resize_antialias": augment.RESIZE_ANTIALIAS}
  with tempfile.TemporaryDirectory() as data_dir:
    common.update(write_shards(data_dir, args.videos, args.frames))
    for modality in ("rgb", "flow"):
      for strategy, (n, m) in STRATEGIES.items():
        frames_per_clip = n * m * (2 if modality == "rgb" else 10)
        rates = {}
        for what, fn in (("train_pipeline", bench_train), ("decode_loop", bench_decode_loop),
                         ("decode_tfdata_parallel", bench_decode_tfdata)):
          load = os.getloadavg()[0]
          rate = rates[what] = fn(data_dir, modality, strategy, args)
          print(json.dumps({**common, "what": what, "modality": modality,
                            "strategy": strategy, "jpegs_per_clip": frames_per_clip,
                            "clips_per_s": round(rate, 2),
                            "clips_per_s_per_core": round(rate / cores, 2),
                            "jpegs_per_s": round(rate * frames_per_clip, 1),
                            "loadavg_1min_before": round(load, 2)}), flush=True)
        print(json.dumps(ratio_line(rates, modality, strategy, n * m, steps)), flush=True)
    if not args.skip_eval:
      load = os.getloadavg()[0]
      rate = bench_eval(data_dir, args)
      print(json.dumps({**common, "what": "eval_pipeline", "modality": "rgb",
                        "strategy": "25x10", "jpegs_per_clip": 50,
                        "clips_per_s": round(rate, 2), "jpegs_per_s": round(rate * 50, 1),
                        "loadavg_1min_before": round(load, 2)}), flush=True)


if __name__ == "__main__":
  main()
