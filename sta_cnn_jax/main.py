r"""STA-CNN entry point (flax examples/imagenet/main.py style).

  python -m sta_cnn_jax.main --config=configs/ucf101.py:rgb,sta_ts3x3_3x1 --workdir=DIR \
      [--config.data_dir=... --config.batch_size=...] [--mode=train|eval|pretrain_san|export]

Multi-host: set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (or run under
SLURM / Open MPI); every process runs this same command.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

from sta_cnn_jax import checkpoints
from sta_cnn_jax import dataset_files
from sta_cnn_jax import parallel
from sta_cnn_jax import pretrain_san
from sta_cnn_jax import train
from sta_cnn_jax import workdir_lock

MODES = ('train', 'eval', 'pretrain_san', 'export')
# Errors that stop a run with their one-line message (exit status 1) instead of a traceback:
# damaged or missing data / checkpoints (FileNotFoundError: manifest, shards, no checkpoint), a
# checkpoint that could not be written, and a busy workdir.
INTEGRITY_ERRORS = (checkpoints.CheckpointCorruptError, checkpoints.CheckpointWriteError,
                    dataset_files.ShardIntegrityError, workdir_lock.WorkdirLockedError,
                    FileNotFoundError)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summaries and results.')
flags.DEFINE_enum('mode', 'train', MODES, 'train (resumes), eval (latest checkpoint, 25x10 '
                  'protocol), pretrain_san (Eq. 4 on flow), export (params + batch_stats).')
config_flags.DEFINE_config_file('config', None, 'Training configuration: '
                                'configs/<dataset>.py:<modality>,<row>.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  parallel.initialize_distributed()
  # tf.data only: keep GPUs / TPUs for JAX.
  tf.config.experimental.set_visible_devices([], 'GPU')
  logging.info('JAX process %d / %d, local devices %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  config, workdir = FLAGS.config, FLAGS.workdir
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(config, workdir)
    elif FLAGS.mode == 'eval':
      train.evaluate_checkpoint(config, workdir)
    elif FLAGS.mode == 'pretrain_san':
      out = pretrain_san.pretrain_san(config, workdir)
      logging.info('SAN exported to %s (set --config.init.san_weights=%s)', out, out)
    else:
      logging.info('exported to %s', train.export(config, workdir))
  except INTEGRITY_ERRORS as e:  # damaged data / checkpoints, busy workdir: one message, exit 1
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main)
