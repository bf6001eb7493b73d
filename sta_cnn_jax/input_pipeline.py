"""tf.data input pipeline: TFRecord video shards -> TSN-sampled, augmented, device-shaped batches.

Reads the shards of data_prep (one tf.train.Example per video; docs/design.md, "Shard format"),
samples K = N*M snippets per video (sampling.py, TSN), decodes only the sampled frames, applies
TSN group augmentation (augment.py) and yields numpy batches shaped for data parallelism. Each
mode is one function of the whole training config (as flax examples/imagenet's
`create_split`, but reading its fields from the config; the fields each mode reads are listed
in its docstring):

  create_train_dataset: {'frames': (D, B, S, H, W, C_in) uint8, 'label': (D, B) int32}
  create_eval_dataset:  {'frames': (D, B, S, V, H, W, C_in) uint8, 'label': (D, B) int32,
                         'valid': (D, B) bool, 'video_id': (D, B) object (bytes)}
  create_san_pretrain_dataset: {'frames': (D, B, S, h, w, 6) uint8 RGB pairs,
                                'flow': (D, B, S, h, w, 2) float32} (Eq. 4's targets)

D = local devices, B = videos per device, S = snippets (segment-major), V = views.
C_in = 6 for RGB (frame i RGB ++ frame i+1 RGB), 10 for flow (x0, y0, ..., x4, y4)
(modalities.py). Frames stay uint8 and RGB on the host; `normalize` runs on device (jnp).

Integrity (dataset_files.py): the split's shards are checked against manifest.json before they
are read, and a read error in the middle of a run is a `ShardReadError` naming the shard.

Determinism: every random choice of a video comes from a stateless RNG keyed by
(seed, epoch, position of the video in the epoch's read order); the per-epoch shard order
and shuffle are seeded by (seed, epoch). Resuming at `start_step` jumps to the right epoch
and skips the consumed videos of that epoch (reading, not decoding, them), so a resumed
run sees exactly the batches an uninterrupted run would.
"""

from typing import Any, Dict, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from sta_cnn_jax import augment
from sta_cnn_jax import dataset_files
from sta_cnn_jax import modalities
from sta_cnn_jax import snippets
# The dataset-file API the pipeline's callers use (its errors are raised by the iterators).
from sta_cnn_jax.dataset_files import (MANIFEST_NAME, ShardIntegrityError,  # noqa: F401
                                       ShardReadError, dataset_info, read_manifest)

MODALITIES = modalities.MODALITIES
JPEG_DCT_METHOD = snippets.JPEG_DCT_METHOD
TRAIN_SPLIT = "train"
EVAL_SPLIT = "test"
# TSN test protocol (docs/design.md, "Interpretations"): 25 segments x 10 views
# (GroupOverSample).
EVAL_NUM_SEGMENTS = 25
EVAL_NUM_VIEWS = snippets.OVERSAMPLE_VIEWS
SUPPORTED_EVAL_VIEWS = (1, EVAL_NUM_VIEWS)  # tsn-pytorch test_models.py: "Only 1 and 10 crops"
DEFAULT_OUT_SIZE = 224  # TSN / BN-Inception input size
# Shards read concurrently (interleave cycle) during training.
DEFAULT_SHARD_CYCLE = 16
# Read buffer per open shard; one Example holds a whole video (megabytes of JPEGs).
READ_BUFFER_BYTES = 8 << 20
# RNG stream tags folded into the per-epoch key.
_SHUFFLE_TAG, _SHARD_ORDER_TAG, _VIDEO_TAG = 1, 2, 3
# Folded into the seed of SAN pre-training's video stream.
_SAN_PRETRAIN_TAG = 1



# ---------------------------------------------------------------------------------------
# Batching helpers.
# ---------------------------------------------------------------------------------------


def _check_batch(batch_size: int, num_devices: int):
  if num_devices < 1 or batch_size < 1 or batch_size % num_devices:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                     f"num_devices={num_devices}")


def host_batch_size(global_batch: int, process_count: int, num_devices: int) -> int:
  """Videos per host of a global batch, which must split evenly over all the devices
  (process_count hosts with num_devices local devices each)."""
  devices = process_count * num_devices
  if global_batch < 1 or global_batch % devices:
    raise ValueError(f"batch_size={global_batch} is not divisible by the {devices} devices "
                     "(global batch = per-device batch x device count)")
  return global_batch // process_count


def _this_host(process_index: Optional[int], process_count: Optional[int],
               num_devices: Optional[int]) -> tuple[int, int, int]:
  """(process_index, process_count, local devices): this process's unless given (tests pass
  them to rebuild another host's stream)."""
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count,
          jax.local_device_count() if num_devices is None else num_devices)


def _split_devices(batch, num_devices: int):
  """(B, ...) -> (D, B // D, ...) for every leaf."""

  def split(x):
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[num_devices, shape[0] // num_devices], shape[1:]], 0))

  return tf.nest.map_structure(split, batch)


def _pad_batch(batch, batch_size: int):
  """Pads a (possibly short) batch to batch_size with zeros / valid=False / b''."""

  def pad(x):
    missing = batch_size - tf.shape(x)[0]
    paddings = tf.concat([[[0, missing]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], 0)
    constant = "" if x.dtype == tf.string else tf.zeros([], x.dtype)
    padded = tf.pad(x, paddings, constant_values=constant)
    padded.set_shape([batch_size] + x.shape[1:].as_list())
    return padded

  return tf.nest.map_structure(pad, batch)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # threading.max_intra_op_parallelism stays at TF's default: setting it to 1 (as flax
  # examples/imagenet does) measured 20 vs 35 clips/s here (RGB TS(3x3), 2 cores), since
  # resizes and transposes of a clip then run single-threaded.
  return options


def _key(seed: int):
  """Root stateless key from a Python int (any size)."""
  seed = int(seed) % (1 << 63)
  return tf.constant([seed, 0], tf.int64)


def _fold(key, data):
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))



# ---------------------------------------------------------------------------------------
# Train.
# ---------------------------------------------------------------------------------------


def _train_records(files: Sequence[str], *, seed: int, process_index: int, start_epoch: int,
                   skip_in_epoch: int, shuffle_buffer: int, modality: str,
                   num_snippets: int) -> tf.data.Dataset:
  """Epoch after epoch: seeded shard order, interleaved reads, per-video sampling, shuffle."""
  # Hosts read different videos; folding in the host keeps their augmentations independent.
  root = _fold(_key(seed), process_index)
  files_t = tf.constant(files)
  cycle = min(len(files), DEFAULT_SHARD_CYCLE)

  def epoch_dataset(epoch):
    epoch_key = _fold(root, epoch)
    order = tf.argsort(tf.random.stateless_uniform(
        [len(files)], seed=_fold(epoch_key, _SHARD_ORDER_TAG)))
    records = tf.data.Dataset.from_tensor_slices(tf.gather(files_t, order)).interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=READ_BUFFER_BYTES),
        cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    video_key = _fold(epoch_key, _VIDEO_TAG)
    records = records.enumerate().map(
        lambda i, rec: snippets.train_sample(rec, _fold(video_key, i), modality=modality,
                                     num_snippets=num_snippets),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    shuffle_seed = _fold(epoch_key, _SHUFFLE_TAG)[0]
    records = records.shuffle(shuffle_buffer, seed=shuffle_seed,
                              reshuffle_each_iteration=False)
    return records.skip(tf.where(epoch == start_epoch, tf.constant(skip_in_epoch, tf.int64),
                                 tf.constant(0, tf.int64)))

  return tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_dataset)


def create_train_dataset(config: ml_collections.ConfigDict, *, start_step: int = 0,
                         process_index: Optional[int] = None,
                         process_count: Optional[int] = None,
                         num_devices: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """This host's infinite iterator of training batches (numpy), repeating epochs.

  Reads from `config`: data_dir, train_split ('train'; 'all' for list datasets), modality,
  temporal.num_segments / snippets_per_segment (N, M: S = N*M snippets per video), batch_size
  (global; this host reads batch_size / process_count videos per batch), seed (shard order,
  shuffle, sampling, crops, flips), input.crop_size (side of the square output),
  input.scales (multi-scale crop scales; None: TSN's per stream), input.shuffle_buffer
  (videos).

  Args:
    start_step: batches already consumed (resume): the iterator starts at batch start_step.
    process_index, process_count, num_devices: this process's unless given (shard i goes to
      host i % process_count).

  Yields:
    {'frames': (D, B/D, S, out, out, C_in) uint8, 'label': (D, B/D) int32}.
  """
  modality, t = config.modality, config.temporal
  process_index, process_count, num_devices = _this_host(process_index, process_count,
                                                         num_devices)
  batch_size = host_batch_size(config.batch_size, process_count, num_devices)
  if t.num_segments < 1 or t.snippets_per_segment < 1:
    raise ValueError(f"num_segments={t.num_segments} and snippets_per_segment="
                     f"{t.snippets_per_segment} must be >= 1")
  data_dir, split = config.data_dir, config.train_split
  manifest = read_manifest(data_dir)
  dataset_files.check_modality(data_dir, modality, manifest)
  files = dataset_files.verify_shards(data_dir, split, process_index=process_index,
                                      process_count=process_count, manifest=manifest)
  start_epoch, skip_in_epoch = 0, 0
  if start_step:
    videos_per_epoch = sum(dataset_files.records_per_file(files, manifest))
    if not videos_per_epoch:
      raise ValueError(f"shards {files} of host {process_index} hold no videos")
    start_epoch, skip_in_epoch = divmod(int(start_step) * batch_size, videos_per_epoch)
  num_snippets = t.num_segments * t.snippets_per_segment
  scales = config.input.scales
  if scales is None:
    scales = augment.FLOW_SCALES if modalities.is_flow(modality) else augment.RGB_SCALES
  scales = tuple(float(s) for s in scales)
  out_size = config.input.crop_size
  ds = _train_records(files, seed=config.seed, process_index=process_index,
                      start_epoch=start_epoch, skip_in_epoch=skip_in_epoch,
                      shuffle_buffer=config.input.shuffle_buffer, modality=modality,
                      num_snippets=num_snippets)
  ds = ds.map(lambda item: snippets.train_augment(
      item, modality=modality, num_snippets=num_snippets, out_size=out_size, scales=scales),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _device_batches(ds, batch_size, num_devices, data_dir, split, files)


def _device_batches(ds: tf.data.Dataset, batch_size: int, num_devices: int, data_dir: str,
                    split: str, files: Sequence[str], padded: bool = False,
                    filler_batches: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of `batch_size` (the last one padded if `padded`, else dropped if short), then
  `filler_batches` all-zero (all-invalid) ones, split over the devices; numpy, with a read
  error naming the damaged shard."""
  ds = ds.batch(batch_size, drop_remainder=not padded)
  if padded:
    ds = ds.map(lambda b: _pad_batch(b, batch_size))
  if filler_batches:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(tf.nest.map_structure(
        lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)).repeat(filler_batches))
  ds = ds.map(lambda b: _split_devices(b, num_devices))
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return dataset_files.guard_reads(ds.as_numpy_iterator(), data_dir, split, files)


# ---------------------------------------------------------------------------------------
# Eval.
# ---------------------------------------------------------------------------------------


def _check_eval_frame_size(data_dir: str, manifest: Dict[str, Any], out_size: int):
  frame_size = manifest.get("frame_size")
  if frame_size and min(frame_size) < out_size:
    raise ValueError(f"eval out_size={out_size} exceeds the frame size {frame_size} recorded "
                     f"in {data_dir}/{MANIFEST_NAME}; use out_size <= {min(frame_size)}")


def _eval_filler_batches(data_dir: str, split: str, manifest: Dict[str, Any], batch_size: int,
                         process_index: int, process_count: int) -> int:
  """All-invalid batches this host adds so that every host runs as many eval steps as the
  host with the most videos."""
  if process_count == 1:
    return 0
  all_files = dataset_files.find_shards(data_dir, split)
  per_host = [sum(dataset_files.records_per_file(
      dataset_files.host_shards(all_files, h, process_count), manifest))
              for h in range(process_count)]
  steps = [-(-n // batch_size) for n in per_host]
  return max(steps) - steps[process_index]


def create_eval_dataset(config: ml_collections.ConfigDict, *,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None,
                        num_devices: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """One deterministic pass over this host's share of a split: TSN 25 segments x 10 views.

  Reads from `config`: data_dir, eval_split, modality, eval.num_segments (S), eval.num_views
  (V: 10, or 1 for the centre crop), eval.batch_size (videos per batch on this host),
  input.crop_size (side of the views).

  Views (V=10): corners + centre of `out_size` cut from the frame as stored (no resize;
  augment.EVAL_VIEW_NAMES), then the same 5 flipped (flow x inverted). V=1: centre crop.
  The last batch is padded (valid=False, label 0, video_id b''); with several hosts, hosts
  with fewer videos add all-invalid batches so every host yields the same number of batches.

  Yields:
    {'frames': (D, B/D, S, V, out, out, C_in) uint8, 'label': (D, B/D) int32,
     'valid': (D, B/D) bool, 'video_id': (D, B/D) object array of bytes}.
  """
  modality, e, out_size = config.modality, config.eval, config.input.crop_size
  process_index, process_count, num_devices = _this_host(process_index, process_count,
                                                         num_devices)
  data_dir, split = config.data_dir, config.eval_split
  manifest = read_manifest(data_dir)
  dataset_files.check_modality(data_dir, modality, manifest)
  _check_batch(e.batch_size, num_devices)
  if e.num_views not in SUPPORTED_EVAL_VIEWS:
    raise ValueError(f"num_views={e.num_views} not supported; use one of "
                     f"{SUPPORTED_EVAL_VIEWS} (centre crop, or 5 crops + flips)")
  if e.num_segments < 1:
    raise ValueError(f"num_segments={e.num_segments} must be >= 1")
  _check_eval_frame_size(data_dir, manifest, out_size)
  files = dataset_files.verify_shards(data_dir, split, process_index=process_index,
                                      process_count=process_count, manifest=manifest)
  # Sequential read: a fixed order, every video exactly once.
  ds = tf.data.TFRecordDataset(files, buffer_size=READ_BUFFER_BYTES)
  ds = ds.map(lambda rec: snippets.eval_video(rec, modality=modality, num_snippets=e.num_segments,
                                      num_views=e.num_views, out_size=out_size),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  filler = _eval_filler_batches(data_dir, split, manifest, e.batch_size, process_index,
                                process_count)
  return _device_batches(ds, e.batch_size, num_devices, data_dir, split, files, padded=True,
                         filler_batches=filler)


# ---------------------------------------------------------------------------------------
# SAN pre-training (Eq. 4): RGB pairs and the flow between them.
# ---------------------------------------------------------------------------------------


def create_san_pretrain_dataset(config: ml_collections.ConfigDict, *, start_step: int = 0,
                                process_index: Optional[int] = None,
                                process_count: Optional[int] = None,
                                num_devices: Optional[int] = None
                                ) -> Iterator[Dict[str, np.ndarray]]:
  """This host's infinite iterator of RGB pairs and their flow (the targets of Eq. 4), from
  batch `start_step` on (resume).

  Reads from `config`: data_dir, train_split, seed, input.crop_size (random crops, no resize:
  flow stays in pixels), input.shuffle_buffer, san_pretrain.batch_size (global),
  san_pretrain.num_segments (snippets per video), san_pretrain.flow_stream (the target flow).

  Yields:
    {'frames': (D, B/D, S, h, w, 6) uint8, 'flow': (D, B/D, S, h, w, 2) float32 (pixels)}.
  """
  p = config.san_pretrain
  process_index, process_count, num_devices = _this_host(process_index, process_count,
                                                         num_devices)
  batch_size = host_batch_size(p.batch_size, process_count, num_devices)
  data_dir, split = config.data_dir, config.train_split
  manifest = read_manifest(data_dir)
  dataset_files.check_modality(data_dir, p.flow_stream, manifest)
  bound = float((manifest.get("flow") or {}).get("bound", 20.0))
  files = dataset_files.host_shards(dataset_files.find_shards(data_dir, split), process_index,
                                    process_count)
  root = tf.constant([config.seed, _SAN_PRETRAIN_TAG], tf.int64)
  ds = tf.data.TFRecordDataset(files).repeat().shuffle(
      config.input.shuffle_buffer, seed=config.seed).enumerate().skip(start_step * batch_size)
  ds = ds.map(lambda i, rec: snippets.san_pretrain_example(
      rec, _fold(root, i), flow_feature=p.flow_stream, num_snippets=p.num_segments,
      crop_size=config.input.crop_size, bound=bound),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _device_batches(ds, batch_size, num_devices, data_dir, split, files)


# ---------------------------------------------------------------------------------------
# On-device normalisation.
# ---------------------------------------------------------------------------------------


def normalize(frames, modality: str, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, bgr: Optional[bool] = None,
              dtype=jnp.float32):
  """uint8 snippets (..., C_in) -> normalised float on device (fusable into the first conv).

  RGB (C_in = 3*T): each 3-channel frame is optionally swapped RGB -> BGR, then
  (x - mean) / std per channel. Defaults = TSN Caffe BN-Inception: bgr=True, 0-255,
  mean CAFFE_BGR_MEAN (104, 117, 128) in BGR order, std 1. `mean`/`std` are given in the
  channel order after the optional swap; with bgr=False and mean=None the Caffe mean is
  reordered to RGB.
  Flow (C_in = 2*T): (x - FLOW_MEAN) / FLOW_STD (128, 1) unless mean / std are given
  (scalars or per-channel).
  """
  x = jnp.asarray(frames).astype(jnp.float32)
  channels = x.shape[-1]
  if modality == "rgb":
    if channels % modalities.RGB_CHANNELS:
      raise ValueError(f"rgb frames need a multiple of 3 channels, got shape {x.shape}")
    bgr = modalities.CAFFE_BGR if bgr is None else bgr
    if mean is None:
      mean = modalities.CAFFE_BGR_MEAN if bgr else modalities.CAFFE_BGR_MEAN[::-1]
    std = modalities.CAFFE_RGB_STD if std is None else std
    x = x.reshape(x.shape[:-1] + (channels // modalities.RGB_CHANNELS, modalities.RGB_CHANNELS))
    if bgr:
      x = x[..., ::-1]
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    x = x.reshape(x.shape[:-2] + (channels,))
  elif modalities.is_flow(modality):
    if channels % modalities.FLOW_PLANES:
      raise ValueError(f"flow frames need an even channel count, got shape {x.shape}")
    mean = modalities.FLOW_MEAN if mean is None else mean
    std = modalities.FLOW_STD if std is None else std
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  else:
    modalities.check(modality)
  return x.astype(dtype)
