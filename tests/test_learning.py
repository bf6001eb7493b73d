"""Learning does not break: the miniature recipe (configs/demo.py) from random weights

* overfits a tiny fixed set with every kind of row (baseline, TAM, SAM, STA);
* keeps eval-mode predictions sane after a short run (PreciseBN: no collapse to one class, no
  saturated softmax);
* learns a spatial attention map that concentrates where the class evidence is.

These run the real train step (train.train_step under parallel.make_parallel_step) on batches
built in memory, so each is a few compiles and a few dozen steps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import parallel
from sta_cnn_jax import train

CROP = 64
NUM_CLASSES = 2
VIDEOS = 8


def _config(row, modality='rgb', crop=CROP):
  config = demo.get_config(f'{modality},{row}')
  config.num_classes = NUM_CLASSES
  config.input.crop_size = crop
  config.model.width_multiplier = 0.125
  config.warmup_steps = 0
  config.lr_schedule = 'step'            # constant lr for these short runs
  config.batch_size = VIDEOS
  return config


def _train(config, batches, steps):
  """Runs `steps` train steps cycling over `batches`; returns (state, last metrics)."""
  model = train.create_model(config, NUM_CLASSES)
  state = train.create_train_state(jax.random.PRNGKey(config.seed), config, model,
                                   train.input_shape(config))
  step = parallel.make_parallel_step(functools.partial(train.train_step, config=config),
                                     config.parallel, out_replicated=True)
  p_state = parallel.replicate(state, config.parallel)
  rng = parallel.replicate(jax.random.PRNGKey(1), config.parallel)
  metrics = None
  for i in range(steps):
    batch = jax.tree_util.tree_map(lambda x: x[None], batches[i % len(batches)])
    p_state, metrics = step(p_state, batch, rng)
  return (jax.device_get(parallel.unreplicate(p_state, config.parallel)),
          jax.device_get(parallel.unreplicate(metrics, config.parallel)), model)


def _eval_logits(config, state, model, frames):
  """Eval-mode logits (V, S, C) and attention of (V, S, H, W, C_in) uint8 snippets."""
  x = input_pipeline.normalize(frames.reshape((-1,) + frames.shape[2:]), config.modality,
                               config.input.mean, config.input.std, config.input.bgr)
  out = model.clone(bn_axis_name=None).apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, x, train=False)
  v, s = frames.shape[:2]
  attention = None if out['attention'] is None else np.asarray(out['attention'])
  return np.asarray(out['logits']).reshape(v, s, -1), attention


def _noise_videos(config, seed=0):
  rng = np.random.default_rng(seed)
  s = config.temporal.num_segments * config.temporal.snippets_per_segment
  shape = (VIDEOS, s) + train.input_shape(config)
  return {'frames': rng.integers(0, 256, shape, dtype=np.uint8),
          'label': np.arange(VIDEOS, dtype=np.int32) % NUM_CLASSES}


@pytest.mark.slow
@pytest.mark.parametrize('row', ['baseline', 'tam_ts3x3_3x1', 'sam_cnn3', 'sta_ts3x3_3x1'])
def test_every_kind_of_row_overfits_a_tiny_set(row):
  config = _config(row)
  batch = _noise_videos(config)
  state, metrics, model = _train(config, [batch], steps=40)
  assert float(metrics['accuracy']) >= 0.95, (row, float(metrics['loss']))
  logits, _ = _eval_logits(config, state, model, batch['frames'])
  assert np.mean(np.argmax(logits.mean(1), -1) == batch['label']) >= 0.95


def _region_videos(config, num_videos, seed):
  """Class = the colour (red / blue) of the top-left quadrant of both frames; every other pixel
  is uniform noise, so one region of the image carries the class."""
  rng = np.random.default_rng(seed)
  s = config.temporal.num_segments * config.temporal.snippets_per_segment
  h = w = config.input.crop_size
  frames = rng.integers(0, 256, (num_videos, s, h, w, 6), dtype=np.uint8)
  labels = np.arange(num_videos, dtype=np.int32) % NUM_CLASSES
  colours = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
  for v in range(num_videos):
    frames[v, :, :h // 2, :w // 2] = np.tile(colours[labels[v]], 2)
  return {'frames': frames, 'label': labels}


@pytest.mark.slow
def test_spatial_attention_concentrates_on_the_region_that_carries_the_class():
  config = _config('sam_cnn1', crop=64)           # K = 2: four locations
  train_batches = [_region_videos(config, VIDEOS, seed) for seed in range(4)]
  state, _, model = _train(config, train_batches, steps=60)
  held_out = _region_videos(config, VIDEOS, seed=99)
  logits, attention = _eval_logits(config, state, model, held_out['frames'])
  maps = attention.reshape(attention.shape[0], -1)                         # (V*S, K^2)
  entropy = -np.sum(maps * np.log(np.maximum(maps, 1e-12)), axis=-1)
  k2 = maps.shape[-1]
  # Uniform (the SAL's initial map) has entropy log K^2.
  assert np.mean(entropy) < 0.75 * np.log(k2), np.mean(entropy)
  assert np.mean(np.argmax(logits.mean(1), -1) == held_out['label']) >= 0.9


@pytest.mark.slow
def test_no_collapse_in_eval_mode_after_a_short_run():
  """PreciseBN keeps eval-mode logits on the scale of training-mode logits, so held-out
  predictions neither collapse to one class nor saturate the softmax."""
  config = _config('tsn3')
  config.precise_bn.num_batches = 4
  train_batches = [_region_videos(config, VIDEOS, seed) for seed in range(4)]
  state, _, model = _train(config, train_batches, steps=30)
  # PreciseBN as the loop runs it (train.recompute_batch_stats), on training batches.
  batches = iter(jax.tree_util.tree_map(lambda x: x[None], b) for b in train_batches)
  from sta_cnn_jax import precise_bn  # pylint: disable=g-import-not-at-top
  stats = precise_bn.precise_batch_stats(state, config, batches, 4, config.parallel)
  state = state.replace(batch_stats=stats)
  held_out = _region_videos(config, VIDEOS, seed=7)
  logits, _ = _eval_logits(config, state, model, held_out['frames'])
  probs = jax.nn.softmax(jnp.asarray(logits), -1)
  assert len(np.unique(np.argmax(logits.mean(1), -1))) > 1
  assert float(jnp.mean(jnp.max(probs, -1))) < 0.999
  assert np.abs(logits).max() < 50
