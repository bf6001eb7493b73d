"""Integrity of what training reads and writes: damaged shards are named before and during a run,
a corrupt checkpoint is moved aside and training resumes from the previous one (equal to an
uninterrupted run), a run with no restorable checkpoint stops with one message and deletes
nothing, a failed restore prints no 'Event loop is closed' storm, and a second trainer in a busy
workdir is refused. (Prepare-side repair and --verify: tests/test_shards.py.)"""

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sta_cnn_jax import (checkpoints, dataset_files, input_pipeline, predict, train,
                         workdir_lock)
from tests.train_utils import (REPO_ROOT, TEST_CROP, cache_env, jax_cache_dir,  # noqa: F401
                               run_python, standin_create_model, tiny_config, tiny_dataset)
from tests.test_checkpoints import _perturbed, _standin_state

TRAIN_SHARD = 'train-rgb+flow-00001-of-00004.tfrecord'
# Tries of a corrupt checkpoint's restore to see Orbax's event-loop storm at least once.
STORM_TRIES = 5


@pytest.fixture
def shards_copy(tiny_dataset, tmp_path):  # noqa: F811
  """A private copy of the tiny dataset (shards, manifest, .progress) to damage."""
  out = tmp_path / 'data'
  shutil.copytree(tiny_dataset, out)
  return out


def _truncate(path, keep=0.5):
  data = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(data[:int(len(data) * keep)])


def _loop_config(data_dir, **overrides):
  values = {'batch_size': jax.device_count(), 'num_train_steps': 6,
            'checkpoint.every_steps': 2, 'checkpoint.keep': 5, 'log_every_steps': 1,
            'model.dropout_rate': 0.5}
  values.update(overrides)
  return tiny_config(data_dir, row='rgb,tam_ts3x3_3x1', **values)


def _files(root):
  """{relative path: bytes} of every file under root."""
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
          if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Shards: verification before reading, read errors during a run.
# ---------------------------------------------------------------------------------------------


def test_verify_shards_names_each_damage_and_the_repair_command(shards_copy):
  files = dataset_files.verify_shards(str(shards_copy), 'train')
  assert [os.path.basename(f) for f in files] == [
      f'train-rgb+flow-{i:05d}-of-00004.tfrecord' for i in range(4)]
  _truncate(shards_copy / TRAIN_SHARD)
  with pytest.raises(dataset_files.ShardIntegrityError) as err:
    dataset_files.verify_shards(str(shards_copy), 'train')
  message = str(err.value)
  assert '\n' not in message
  assert f'{shards_copy / TRAIN_SHARD} (truncated: ' in message
  assert f'repair: python -m data_prep.prepare --out={shards_copy} --dataset=synthetic ' in message
  ((path, reason),) = err.value.damaged
  assert path == str(shards_copy / TRAIN_SHARD) and reason.startswith('truncated: ')
  # The other split is intact.
  assert dataset_files.verify_shards(str(shards_copy), 'test')


def test_verify_shards_same_size_damage_needs_checksums(shards_copy):
  path = shards_copy / TRAIN_SHARD
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF  # inside a record: size and framing unchanged
  path.write_bytes(bytes(data))
  dataset_files.verify_shards(str(shards_copy), 'train')  # the cheap check cannot see it
  with pytest.raises(dataset_files.ShardIntegrityError, match=r'SHA-256 mismatch') as err:
    dataset_files.verify_shards(str(shards_copy), 'train', checksums=True)
  assert err.value.damaged == [(str(path), 'content differs (SHA-256 mismatch)')]


def test_verify_shards_missing_unlisted_and_edited_manifest(shards_copy):
  original = (shards_copy / TRAIN_SHARD).read_bytes()
  (shards_copy / TRAIN_SHARD).unlink()
  with pytest.raises(dataset_files.ShardIntegrityError,
                     match=re.escape(TRAIN_SHARD) + r' \(missing\).*repair: python -m '
                           r'data_prep.prepare'):
    dataset_files.verify_shards(str(shards_copy), 'train')
  (shards_copy / TRAIN_SHARD).write_bytes(original)
  shutil.copy(shards_copy / TRAIN_SHARD, shards_copy / 'train-extra.tfrecord')
  with pytest.raises(dataset_files.ShardIntegrityError,
                     match=r'train-extra.tfrecord \(not listed in manifest.json\)'):
    dataset_files.verify_shards(str(shards_copy), 'train')
  (shards_copy / 'train-extra.tfrecord').unlink()
  manifest = json.loads((shards_copy / 'manifest.json').read_text())
  manifest['num_videos']['train'] += 1
  (shards_copy / 'manifest.json').write_text(json.dumps(manifest))
  with pytest.raises(dataset_files.ShardIntegrityError,
                     match=r"manifest.json \(its per-shard record counts of 'train' add up to 8, "
                           r"not num_videos=9"):
    dataset_files.verify_shards(str(shards_copy), 'train')
  # A size edited in the manifest: the shard still matches data_prep's summary, so the
  # manifest is named, not the shard.
  manifest['num_videos']['train'] -= 1
  manifest['shard_bytes'][TRAIN_SHARD] += 10
  (shards_copy / 'manifest.json').write_text(json.dumps(manifest))
  with pytest.raises(dataset_files.ShardIntegrityError) as err:
    dataset_files.verify_shards(str(shards_copy), 'train')
  ((path, reason),) = err.value.damaged
  assert path == str(shards_copy / 'manifest.json')
  assert reason.startswith(f'its record of {TRAIN_SHARD} differs from the summary data_prep '
                           f'wrote with the shard (.progress/{TRAIN_SHARD}.json), which the shard '
                           'still matches (truncated: ')


def test_read_error_during_a_run_names_the_shard(shards_copy, monkeypatch):
  """The shard is damaged after the start-of-run verification: tf.data's DataLossError (which
  names no file) becomes a ShardReadError naming it."""
  verify = dataset_files.verify_shards

  def verify_then_damage(*args, **kwargs):
    files = verify(*args, **kwargs)
    _truncate(shards_copy / TRAIN_SHARD, 0.7)
    return files

  monkeypatch.setattr(dataset_files, 'verify_shards', verify_then_damage)
  config = tiny_config(shards_copy, row='rgb,baseline', batch_size=2,
                       **{'input.shuffle_buffer': 8})
  batches = input_pipeline.create_train_dataset(config, process_index=0, process_count=1,
                                                num_devices=1)
  with pytest.raises(input_pipeline.ShardReadError) as err:
    for _ in range(8):
      next(batches)
  message = str(err.value)
  assert message.startswith('read error (') and '\n' not in message
  assert [path for path, _ in err.value.damaged] == [str(shards_copy / TRAIN_SHARD)]
  assert 'repair: python -m data_prep.prepare' in message


def test_closing_a_batch_iterator_is_quiet_when_tf_is_gone(monkeypatch):
  """A consumer that stops early (or the garbage collector at interpreter exit, when module
  globals such as `tf` are already None) closes the iterator: that is no read error, and it
  must not print 'Exception ignored ... AttributeError' from the except clause."""
  guarded = dataset_files.guard_reads(iter([1, 2, 3]), 'data', 'train', ['shard'])
  assert next(guarded) == 1
  monkeypatch.setattr(dataset_files, 'tf', None)   # as at interpreter shutdown
  guarded.close()                                  # raised AttributeError before the fix
  with pytest.raises(StopIteration):
    next(guarded)


def test_training_names_a_damaged_shard_before_writing(shards_copy, tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  _truncate(shards_copy / TRAIN_SHARD)
  workdir = tmp_path / 'wd'
  with pytest.raises(dataset_files.ShardIntegrityError, match=re.escape(TRAIN_SHARD)):
    train.train_and_evaluate(_loop_config(shards_copy), str(workdir))
  assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_NAME]  # no checkpoint, no summary


def test_read_error_mid_run_stops_and_keeps_the_last_checkpoint(tiny_dataset, tmp_path,  # noqa: F811
                                                                monkeypatch, jax_cache_dir):  # noqa: F811
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  create = input_pipeline.create_train_dataset
  damaged = [(str(tiny_dataset / TRAIN_SHARD), 'truncated: 1 of 2 bytes')]

  def failing_iter(config, **kwargs):
    real = create(config, **kwargs)
    for _ in range(3):
      yield next(real)
    raise input_pipeline.ShardReadError('read error (truncated record at 7): 1 damaged shard',
                                        damaged)

  monkeypatch.setattr(input_pipeline, 'create_train_dataset', failing_iter)
  config = _loop_config(tiny_dataset, **{'input.prefetch_to_device': 1})
  with pytest.raises(input_pipeline.ShardReadError) as err:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(err.value)
  assert err.value.damaged == damaged
  # prefetch holds one batch ahead: batches 1-3 reach steps 1-3, step 4 finds the error.
  assert 'Training stopped at step 4; the last checkpoint, step 2 in ' in message
  manager = checkpoints.create_manager(str(tmp_path / 'checkpoints'), config)
  assert manager.all_steps() == [2]
  assert int(manager.restore(2)['step']) == 2


# ---------------------------------------------------------------------------------------------
# Checkpoints: fall back past a corrupt one; nothing restorable; no event-loop storm.
# ---------------------------------------------------------------------------------------------


def _corrupt(step_dir, largest_only=False):
  """Halves every array data file (Orbax OCDBT `d/` files) of a checkpoint, or the largest."""
  data = [p for p in pathlib.Path(step_dir).rglob('*') if p.is_file() and p.parent.name == 'd']
  assert data, list(pathlib.Path(step_dir).rglob('*'))
  if largest_only:
    data = [max(data, key=lambda p: p.stat().st_size)]
  for path in data:
    _truncate(path)


class _Crash(Exception):
  pass


def _crash_after_saving(monkeypatch, crash_step):
  """checkpoints.save that stops the run right after `crash_step` is on disk."""
  save = checkpoints.save

  def save_then_crash(manager, step, state, rng):
    save(manager, step, state, rng)
    if step == crash_step:
      manager.wait_until_finished()
      raise _Crash(step)

  monkeypatch.setattr(checkpoints, 'save', save_then_crash)


def _raw(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step),
                                                         'default'))


def test_corrupt_latest_checkpoint_is_moved_aside_and_resume_equals_uninterrupted(
    tiny_dataset, tmp_path, monkeypatch, caplog, jax_cache_dir):  # noqa: F811
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  config = _loop_config(tiny_dataset)
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  train.train_and_evaluate(config, str(straight))

  with monkeypatch.context() as m:
    _crash_after_saving(m, 4)
    with pytest.raises(_Crash):
      train.train_and_evaluate(config, str(resumed))
  ckpt = resumed / 'checkpoints'
  assert sorted(p.name for p in ckpt.iterdir()) == ['2', '4']
  _corrupt(ckpt / '4')
  corrupt_files = _files(ckpt / '4')
  checkpoints.silence_closed_loop_callbacks()
  with pytest.raises(Exception):
    _raw(str(resumed), 4)

  caplog.set_level('WARNING')
  state = train.train_and_evaluate(config, str(resumed))
  assert int(state.step) == 6
  # One line: step, path, reason, where it went, where training resumed.
  (line,) = [r.getMessage() for r in caplog.records if 'does not restore' in r.getMessage()]
  assert line.startswith(f'checkpoint step 4 at {ckpt / "4"} does not restore (ValueError: ')
  assert line.endswith(', resuming from step 2') and '\n' not in line
  (moved,) = list((ckpt / checkpoints.CORRUPT_DIR).iterdir())
  assert moved.name.startswith('4-') and f'moved it to {moved}' in line
  assert _files(moved) == corrupt_files  # moved, not deleted or changed
  assert sorted(p.name for p in ckpt.iterdir()) == ['2', '4', '6', checkpoints.CORRUPT_DIR]
  for step in (4, 6):
    a, b = _raw(str(straight), step), _raw(str(resumed), step)
    np.testing.assert_array_equal(a['rng'], b['rng'])
    flat_a = jax.tree_util.tree_flatten_with_path(a['state'])[0]
    flat_b = jax.tree_util.tree_leaves(b['state'])
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
      np.testing.assert_array_equal(y, x, err_msg=f'step {step} {jax.tree_util.keystr(path)}')
  mid = _raw(str(straight), 2)
  assert not np.allclose(mid['state']['params']['fc']['kernel'],
                         _raw(str(resumed), 6)['state']['params']['fc']['kernel'])


def test_only_checkpoint_corrupt_is_one_error_and_nothing_is_deleted(tiny_dataset, tmp_path,  # noqa: F811
                                                                    monkeypatch, jax_cache_dir):  # noqa: F811
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  config = _loop_config(tiny_dataset, num_train_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  _corrupt(tmp_path / 'checkpoints' / '2')
  before = _files(tmp_path / 'checkpoints')

  longer = _loop_config(tiny_dataset, num_train_steps=4)
  with pytest.raises(checkpoints.CheckpointCorruptError) as err:
    train.train_and_evaluate(longer, str(tmp_path))
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith(f'no checkpoint in {tmp_path / "checkpoints"} restores: step 2 at '
                            f'{tmp_path / "checkpoints" / "2"} (ValueError: ')
  assert 'Nothing was moved or deleted' in message
  assert _files(tmp_path / 'checkpoints') == before

  # Eval and export say the same, and move nothing either.
  for run in (train.evaluate_checkpoint, train.export):
    with pytest.raises(checkpoints.CheckpointCorruptError, match='^no checkpoint in .* restores'):
      run(config, str(tmp_path))
  assert _files(tmp_path / 'checkpoints') == before


def test_inference_does_not_fall_back_silently(tmp_path):
  config = tiny_config(**{'checkpoint.keep': 3})
  manager = checkpoints.create_manager(str(tmp_path / 'ckpt'), config)
  for step in (1, 2):
    checkpoints.save(manager, step, _perturbed(_standin_state(), 0.1 * step),
                     jax.random.PRNGKey(step))
  manager.wait_until_finished()
  _corrupt(tmp_path / 'ckpt' / '2')
  before = _files(tmp_path / 'ckpt')
  with pytest.raises(checkpoints.CheckpointCorruptError) as err:
    checkpoints.restore_latest(manager, _standin_state(), jax.random.PRNGKey(0), fallback=False)
  message = str(err.value)
  assert message.startswith(f'the latest checkpoint does not restore: step 2 at '
                            f'{tmp_path / "ckpt" / "2"} (ValueError: ')
  assert 'the newest one that restores is step 1' in message and '\n' not in message
  assert _files(tmp_path / 'ckpt') == before
  # Training falls back to step 1 and moves step 2 aside.
  _, _, step = checkpoints.restore_latest(manager, _standin_state(), jax.random.PRNGKey(0))
  assert step == 1 and manager.all_steps() == [1]
  assert [p.name.split('-')[0] for p in (tmp_path / 'ckpt' / 'corrupt').iterdir()] == ['2']


def test_failed_restore_prints_no_event_loop_storm(tmp_path, monkeypatch):
  """A whole STA-CNN state (hundreds of arrays read concurrently): Orbax closes its event loop at
  the first failed read and every other read then reports 'Event loop is closed' through
  sys.unraisablehook -- unless checkpoints drops exactly those."""
  config = tiny_config()
  model = train.create_model(config, 2)
  abstract = train.abstract_train_state(config, model)
  rng = np.random.RandomState(0)  # incompressible: the reads take long enough to overlap
  saved = jax.tree_util.tree_map(lambda s: np.asarray(rng.randn(*s.shape), s.dtype), abstract)
  manager = checkpoints.create_manager(str(tmp_path / 'ckpt'), config)
  checkpoints.save(manager, 3, saved, jax.random.PRNGKey(0))
  manager.wait_until_finished()
  _corrupt(tmp_path / 'ckpt' / '3', largest_only=True)  # most reads succeed, slowly
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', lambda u: seen.append(repr(u.exc_value)))

  def settle(seconds=1.0):
    time.sleep(seconds)
    import gc  # pylint: disable=g-import-not-at-top
    gc.collect()

  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  target = checkpoints._item(abstract, jax.random.PRNGKey(0), 0)  # pylint: disable=protected-access
  # Orbax on its own: the storm this guards against (it needs reads still in flight when the
  # failing one fails, so it can take a few tries).
  for _ in range(STORM_TRIES):
    with pytest.raises(Exception):
      manager.restore(3, args=ocp.args.StandardRestore(target))
    settle()
    if any('Event loop is closed' in s for s in seen):
      break
  assert any('Event loop is closed' in s for s in seen), seen
  settle(3.0)  # stragglers of Orbax's own failed restores land before the count restarts
  seen.clear()
  for _ in range(2):
    with pytest.raises(checkpoints.CheckpointCorruptError):
      checkpoints.restore_latest(manager, abstract, jax.random.PRNGKey(0))
  settle()
  assert not [s for s in seen if 'Event loop is closed' in s]


def test_failed_checkpoint_write_is_one_error_naming_the_last_complete_one(tmp_path,
                                                                           monkeypatch):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{'checkpoint.keep': 3})
  directory = tmp_path / 'ckpt'
  manager = checkpoints.create_manager(str(directory), config)
  state = _standin_state()
  checkpoints.save(manager, 1, state, jax.random.PRNGKey(0))
  manager.wait_until_finished()
  # Step 2's (temporary) folder is removed while it is being written, and the write fails.
  async_save = ocp.StandardCheckpointHandler.async_save

  async def removed_while_saving(self, item_dir, *args, **kwargs):
    for future in await async_save(self, item_dir, *args, **kwargs) or []:
      future.result()
    shutil.rmtree(pathlib.Path(item_dir).parent)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(item_dir))

  monkeypatch.setattr(ocp.StandardCheckpointHandler, 'async_save', removed_while_saving)
  with pytest.raises(checkpoints.CheckpointWriteError) as err:
    checkpoints.save(manager, 2, state, jax.random.PRNGKey(0))
    manager.wait_until_finished()
  message = str(err.value)
  assert message.startswith(f'writing checkpoint step 2 in {directory} failed (') and (
      'the last complete checkpoint, step 1, is kept' in message) and '\n' not in message
  assert manager.latest_step() == 1


def test_corrupt_export_is_one_message_for_predict(tmp_path):
  out = checkpoints.export_inference(_perturbed(_standin_state(), 0.25), tiny_config(),
                                     str(tmp_path / 'export'))
  _corrupt(pathlib.Path(out) / checkpoints.VARIABLES_DIR)
  with pytest.raises(checkpoints.CheckpointCorruptError,
                     match=r'^the inference export .* does not restore \(ValueError: .*export it '
                           r'again'):
    checkpoints.load_inference(out)
  with pytest.raises(predict.PredictError, match=r'^--checkpoint the inference export '):
    predict.load_stream(out)


# ---------------------------------------------------------------------------------------------
# One trainer per workdir.
# ---------------------------------------------------------------------------------------------

_HOLD_LOCK = r"""
import sys, time
from sta_cnn_jax import workdir_lock
workdir_lock.acquire(sys.argv[1], 'train')
print('LOCKED', flush=True)
time.sleep(600)
"""


def test_second_trainer_in_the_same_workdir_is_refused_before_writing(tiny_dataset, tmp_path,  # noqa: F811
                                                                     jax_cache_dir):  # noqa: F811
  workdir = tmp_path / 'wd'
  workdir_lock.acquire(str(workdir), 'train')
  try:
    args = [f'--config=configs/demo.py:rgb,tam_ts3x3_3x1', f'--workdir={workdir}',
            f'--config.data_dir={tiny_dataset}', '--config.num_train_steps=2']
    proc = run_python(None, cache_env(jax_cache_dir), module='sta_cnn_jax.main', args=args,
                      check=False, timeout=300)
  finally:
    workdir_lock.release(str(workdir))
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: workdir {workdir} is in use by pid {os.getpid()} on ')
  assert 'Traceback' not in proc.stderr
  assert os.listdir(workdir) == [workdir_lock.LOCK_NAME]  # nothing written


def test_lock_of_a_killed_process_is_released(tmp_path):
  workdir = str(tmp_path / 'wd')
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  holder = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, workdir], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'LOCKED'
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf'in use by pid {holder.pid} on .*--mode=train'):
      workdir_lock.acquire(workdir, 'train')
    assert not workdir_lock.holds(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  finally:
    if holder.poll() is None:
      holder.kill()
  # The lock file is still there (with the dead owner's pid), but the lock is free.
  assert str(holder.pid) in (tmp_path / 'wd' / workdir_lock.LOCK_NAME).read_text()
  assert workdir_lock.acquire(workdir, 'train')
  assert workdir_lock.acquire(workdir, 'train')  # re-entrant within a process
  workdir_lock.release(workdir)
  assert (tmp_path / 'wd' / workdir_lock.LOCK_NAME).read_text() == ''
