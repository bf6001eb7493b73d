r"""Train-step throughput: one JSON line per measurement (compile time, step time, videos/s).

  python -m benchmarks.train_step --config=configs/ucf101.py:rgb,sta_ts3x3_3x1 \
      [--config.parallel=shard_map --config.dtype=bfloat16] [--batch_per_device=4 --steps=10]

Feeds synthetic uint8 batches of the config's shape straight to the parallel step (no input
pipeline), so it measures the network + Algorithm 1 + the optimizer on the devices present.
"""

import functools
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from benchmarks import common
from sta_cnn_jax import parallel, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/ucf101.py:rgb,sta_ts3x3_3x1',
                                'Training configuration.')
flags.DEFINE_integer('batch_per_device', 2, 'Videos per device.')
flags.DEFINE_integer('steps', 5, 'Timed steps (after one compile + warm-up step).')
flags.DEFINE_integer('num_classes', 101, 'Classifier size.')


def main(argv):
  del argv
  config = FLAGS.config
  mode = config.parallel
  devices = jax.local_device_count()
  s = config.temporal.num_segments * config.temporal.snippets_per_segment
  h, w, c = train.input_shape(config)
  model = train.create_model(config, FLAGS.num_classes)
  lr = train.create_learning_rate_fn(config, steps_per_epoch=100)
  state = train.create_train_state(jax.random.PRNGKey(config.seed), config, model, (h, w, c), lr)
  step = parallel.make_parallel_step(
      functools.partial(train.train_step, config=config, learning_rate_fn=lr), mode,
      out_replicated=True)
  rng = np.random.RandomState(0)
  batch = parallel.shard_batch_for_mode({
      'frames': rng.randint(0, 256, (devices, FLAGS.batch_per_device, s, h, w, c)).astype(np.uint8),
      'label': rng.randint(0, FLAGS.num_classes,
                           (devices, FLAGS.batch_per_device)).astype(np.int32),
  }, mode)
  p_state, p_rng = parallel.replicate(state, mode), parallel.replicate(jax.random.PRNGKey(0), mode)
  start = time.perf_counter()
  p_state, metrics = step(p_state, batch, p_rng)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  holder = {'state': p_state}

  def one_step():
    holder['state'], out = step(holder['state'], batch, p_rng)
    jax.block_until_ready(out)

  timing = common.summary(common.time_calls(one_step, FLAGS.steps))
  global_batch = FLAGS.batch_per_device * jax.device_count()
  common.emit({
      'benchmark': 'train_step', 'row': config.row, 'modality': config.modality,
      'parallel': mode, 'dtype': config.dtype, 'device': jax.devices()[0].device_kind,
      'devices': jax.device_count(), 'global_batch_videos': global_batch, 'snippets': s,
      'crop': h, 'compile_and_first_step_s': round(compile_s, 3),
      'step_ms_median': round(1e3 * timing['median_s'], 3), 'steps_timed': timing['n'],
      'videos_per_s': common.rate(global_batch, timing['median_s']),
      'snippets_per_s': common.rate(global_batch * s, timing['median_s']),
  })


if __name__ == '__main__':
  app.run(main)
