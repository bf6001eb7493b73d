"""Checkpoints (Orbax): the manager for {state, rng, step}, shape-checked resume, and the
inference export. (Grafting converted weights into a new state is pretrained.py.)

Layout of a training workdir:
  <workdir>/checkpoints/<step>/   Orbax checkpoints (`save` / `restore_latest`)
  <workdir>/export/               `export_inference`: variables/ (params + batch_stats),
                                  config.json and dataset.json (the dataset's classes and flow
                                  settings, `load_dataset_info`)
A checkpoint item is `{'state': flax state dict of the TrainState, 'rng': uint32 key data,
'step': int64}`, all host numpy arrays (written once, by the primary host, in multi-host runs).

Integrity: `restore_latest` tries the checkpoints newest first. In training (`fallback=True`) a
checkpoint that does not restore (truncated or missing file, unreadable metadata) is logged in
one line (step, path, reason), moved to `<checkpoints>/corrupt/<step>-<UTC time>` (a folder Orbax
ignores; nothing is deleted) and the newest checkpoint that restores is used. For inference
(`fallback=False`) nothing is moved: a corrupt latest checkpoint is an error that says which
older one restores. If none restores, `CheckpointCorruptError` says so in one line and leaves
every file in place. A shape mismatch (another config) is never taken for corruption. A write
that fails (folder removed during an async save, disk full) is one `CheckpointWriteError` naming
the step and the last complete checkpoint.
"""

import json
import os
import re
import sys
import time
from typing import Any, Mapping, Optional

from absl import logging
import flax
from flax import traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


CHECKPOINT_DIR = 'checkpoints'
EXPORT_DIR = 'export'
VARIABLES_DIR = 'variables'
CONFIG_JSON = 'config.json'
# Beside an export: the facts of the dataset it was trained on (`dataset_json`).
DATASET_JSON = 'dataset.json'
DATASET_KEYS = ('classes', 'num_classes', 'frame_size', 'modalities', 'rgb', 'flow')
COLLECTIONS = ('params', 'batch_stats')
# Where checkpoints that do not restore are moved (inside the checkpoint directory; Orbax only
# lists folders named by a step number).
CORRUPT_DIR = 'corrupt'
# Longest reason quoted from a failed restore.
REASON_CHARS = 300


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the state the config builds."""


class CheckpointCorruptError(RuntimeError):
  """No usable checkpoint: the one-line message names each step, its path and why it failed."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (its folder removed, disk full, ...); the one-line
  message names the step and the last complete checkpoint, which is kept."""


class _UnreadableCheckpoint(Exception):
  """A checkpoint whose metadata cannot be read."""


# ---------------------------------------------------------------------------------------------
# Training checkpoints.
# ---------------------------------------------------------------------------------------------


class _Manager(ocp.CheckpointManager):
  """Orbax's CheckpointManager; a failed write surfaces as one CheckpointWriteError.

  An async save fails in Orbax's background thread and is re-raised, with Orbax's own
  traceback, by the next `save` or `wait_until_finished` (save calls it first).
  """

  _writing: Optional[int] = None  # the step whose (async) write may still be in flight

  def save(self, step: int, *args, **kwargs) -> bool:
    self.wait_until_finished()  # a failure of the previous write is reported as that step's
    self._writing = int(step)
    try:
      return super().save(step, *args, **kwargs)
    except CheckpointWriteError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any failure of the write
      raise self._write_error(e) from None

  def wait_until_finished(self) -> None:
    try:
      super().wait_until_finished()
    except CheckpointWriteError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any failure of the write
      raise self._write_error(e) from None

  def _write_error(self, error: BaseException) -> CheckpointWriteError:
    # Let Orbax's background threads end now: left running, they fail again at interpreter exit
    # ('cannot schedule new futures after shutdown') after the message.
    for part in ('_checkpointer', '_non_blocking_metadata_store', '_blocking_metadata_store',
                 '_checkpoint_deleter'):
      try:
        getattr(self, part).close()
      except Exception:  # pylint: disable=broad-except  # best effort: they failed already
        pass
    try:
      self.reload()
      last = self.latest_step()
    except Exception:  # pylint: disable=broad-except  # the folder itself may be gone
      last = None
    kept = (f'the last complete checkpoint, step {last}, is kept' if last is not None
            else 'no complete checkpoint is left')
    return CheckpointWriteError(
        f'writing checkpoint step {self._writing} in {self.directory} failed ({_reason(error)}; '
        f'folder removed, disk full or not writable?); {kept}: resume with the same command '
        'once the cause is fixed')


def create_manager(directory: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Orbax manager: keeps `config.checkpoint.keep`, async saves if `config.checkpoint.async_save`.

  The loop decides when to save (every `config.checkpoint.every_steps` and at the end), so the
  manager's own save interval is 1.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpoint.keep, save_interval_steps=1, create=True,
      enable_async_checkpointing=config.checkpoint.async_save)
  # The handler is named up front so a new process can read a checkpoint's metadata (shapes)
  # before restoring anything.
  return _Manager(os.path.abspath(directory), options=options,
                  item_handlers=ocp.StandardCheckpointHandler())


def _host(x: Any) -> Any:
  """Host numpy copy of an array leaf; abstract leaves (jax.ShapeDtypeStruct) unchanged."""
  return x if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(jax.device_get(x))


def _item(state: Any, rng: Any, step: int) -> dict:
  """The saved pytree: host numpy copies (safe with async saves and donated device buffers)."""
  return {'state': jax.tree_util.tree_map(_host, flax.serialization.to_state_dict(state)),
          'rng': _host(rng) if isinstance(rng, jax.ShapeDtypeStruct) else np.asarray(
              jax.device_get(rng), np.uint32),
          'step': np.asarray(step, np.int64)}


def save(manager: ocp.CheckpointManager, step: int, state: Any, rng: jax.Array) -> None:
  """Saves an unreplicated (single-copy) state; async when the manager is."""
  manager.save(int(step), args=ocp.args.StandardSave(_item(state, rng, step)))


def _flat_shapes(tree: Any) -> dict:
  """{'a/b/c': shape} for every array leaf of a nested dict (metadata or arrays)."""
  flat = traverse_util.flatten_dict(tree, sep='/') if isinstance(tree, Mapping) else {}
  return {k: tuple(getattr(v, 'shape', ())) for k, v in flat.items()
          if not (isinstance(v, Mapping) and not v)}


def check_shapes(expected: Mapping[str, tuple], found: Mapping[str, tuple], what: str,
                 expected_name: str = 'config', found_name: str = 'checkpoint') -> None:
  """Raises CheckpointMismatchError naming every differing path with both shapes."""
  problems = []
  for path in sorted(set(expected) | set(found)):
    if path not in found:
      problems.append(f'  {path}: missing in the {found_name} ({expected_name} shape '
                      f'{expected[path]})')
    elif path not in expected:
      problems.append(f'  {path}: not in the {expected_name} ({found_name} shape {found[path]})')
    elif tuple(expected[path]) != tuple(found[path]):
      problems.append(f'  {path}: {found_name} shape {tuple(found[path])} != '
                      f'{expected_name} shape {tuple(expected[path])}')
  if problems:
    raise CheckpointMismatchError(
        f'{what} does not match the state built from the config ({len(problems)} '
        'difference(s)); was it written with another config (num_classes, modality, '
        'spatial_attention, aux_classifier, san_widths, crop_size)?\n' + '\n'.join(problems))


def _is_closed_loop_noise(unraisable: Any) -> bool:
  error = getattr(unraisable, 'exc_value', None)
  return isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'


def silence_closed_loop_callbacks() -> None:
  """Drops the 'Event loop is closed' storm that follows a failed Orbax restore.

  Orbax reads a checkpoint's arrays concurrently (asyncio.gather over tensorstore reads) in an
  event loop it closes as soon as the first read fails. Every read still in flight then
  completes into `loop.call_soon_threadsafe` on the closed loop, and Python prints each
  RuntimeError('Event loop is closed') through sys.unraisablehook: dozens of tracebacks after
  the real error (one per array for a full model). This wraps the current hook so that exactly
  those are dropped and everything else still reaches it. Idempotent.
  """
  if getattr(sys.unraisablehook, 'drops_closed_loop_noise', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_noise(unraisable):
      previous(unraisable)

  hook.drops_closed_loop_noise = True
  sys.unraisablehook = hook


def step_path(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _reason(error: BaseException) -> str:
  """`Type: first line of the message`, without tensorstore's spec dump, at most REASON_CHARS."""
  lines = str(error).strip().splitlines()
  text = re.sub(r"\s*\[tensorstore_spec=.*", '', lines[0] if lines else '').strip()
  if len(text) > REASON_CHARS:
    text = text[:REASON_CHARS - 3] + '...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _restore_step(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
  """One checkpoint, shape-checked against `target`; any failure other than a shape mismatch
  means the checkpoint is unreadable."""
  metadata = manager.item_metadata(step)
  tree = getattr(metadata, 'tree', metadata)
  if tree is None:
    raise _UnreadableCheckpoint('no readable metadata')
  check_shapes(_flat_shapes(target), _flat_shapes(dict(tree)),
               f'checkpoint {step_path(manager, step)}')
  return manager.restore(step, args=ocp.args.StandardRestore(target))


def move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Renames checkpoint `step` to <directory>/corrupt/<step>-<UTC time> (process 0 only);
  returns the new path. Nothing is deleted."""
  root = os.path.join(str(manager.directory), CORRUPT_DIR)
  stamp = time.strftime('%Y%m%d-%H%M%S', time.gmtime())
  dest = os.path.join(root, f'{step}-{stamp}')
  suffix = 1
  while os.path.exists(dest):
    dest = os.path.join(root, f'{step}-{stamp}-{suffix}')
    suffix += 1
  if jax.process_index() == 0:
    os.makedirs(root, exist_ok=True)
    os.rename(step_path(manager, step), dest)
  return dest


def restore_latest(manager: ocp.CheckpointManager, state: Any, rng: jax.Array,
                   fallback: bool = True) -> Optional[tuple[Any, jax.Array, int]]:
  """Restores the newest checkpoint that restores into `state`'s structure; None if there is
  no checkpoint at all.

  `state` is the freshly initialised (unreplicated) state the config builds; the checkpoint's
  array shapes are checked against it first and a mismatch raises CheckpointMismatchError
  naming each path and both shapes.

  Checkpoints that do not restore: with `fallback` (training) each is logged in one line (step,
  path, reason) and moved to <directory>/corrupt/ (`move_aside`), and the newest one that
  restores is returned. Without `fallback` (eval, export) nothing is moved and a corrupt latest
  checkpoint raises CheckpointCorruptError naming the newest one that does restore. If none
  restores, CheckpointCorruptError lists them all; nothing is moved or deleted.
  """
  manager.reload()  # the steps on disk now
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  target = _item(state, rng, 0)
  directory = str(manager.directory)
  silence_closed_loop_callbacks()
  failed, restored = [], None
  for step in steps:
    try:
      restored = _restore_step(manager, step, target)
      break
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any read error: unusable checkpoint
      failed.append((step, _reason(e)))
  listing = '; '.join(f'step {s} at {step_path(manager, s)} ({r})' for s, r in failed)
  if restored is None:
    manager.wait_until_finished()
    raise CheckpointCorruptError(
        f'no checkpoint in {directory} restores: {listing}. Nothing was moved or deleted; '
        f'repair or restore those files, or start over with another --workdir.')
  good = int(restored['step'])
  if failed and not fallback:
    raise CheckpointCorruptError(
        f'the latest checkpoint does not restore: {listing}; the newest one that restores is '
        f'step {good}. Nothing was moved or deleted: run --mode=train with this --workdir to '
        f'move the corrupt one(s) aside and resume from step {good}, or move '
        f'{step_path(manager, failed[0][0])} away yourself to use step {good} as it is.')
  for step, reason in failed:
    dest = move_aside(manager, step)
    logging.warning('checkpoint step %d at %s does not restore (%s); moved it to %s, resuming '
                    'from step %d', step, step_path(manager, step), reason, dest, good)
  if failed:
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes('sta_cnn_jax_corrupt_checkpoints_moved')
    manager.reload()
  new_state = flax.serialization.from_state_dict(state, restored['state'])
  logging.info('restored checkpoint %s (step %d)', step_path(manager, good), good)
  return new_state, np.asarray(restored['rng'], np.uint32), good


def last_checkpoint_note(manager: ocp.CheckpointManager) -> str:
  """Waits for pending saves; 'the last checkpoint, step N in DIR, is kept' (or that there is
  none): for messages of a run that stops on an error."""
  manager.wait_until_finished()
  last = manager.latest_step()
  if last is None:
    return f'no checkpoint was written in {manager.directory}'
  return (f'the last checkpoint, step {last} in {manager.directory}, is kept: resume with the '
          'same command once the cause is fixed')


# ---------------------------------------------------------------------------------------------
# Inference export.
# ---------------------------------------------------------------------------------------------


def dataset_json(info: Mapping[str, Any]) -> dict:
  """What an export records of its dataset (DATASET_KEYS of dataset_files.dataset_info:
  'classes', 'num_classes', 'frame_size' [H, W], 'modalities', and 'rgb' / 'flow', the
  manifest's JPEG and flow settings or None)."""
  out = {key: info.get(key) for key in DATASET_KEYS}
  if out['frame_size'] is not None:
    out['frame_size'] = list(out['frame_size'])
  return out


def export_inference(variables_or_state: Any, config: ml_collections.ConfigDict,
                     out_dir: str, dataset: Optional[Mapping[str, Any]] = None) -> str:
  """Writes params + batch_stats (no optimizer state) and the config as JSON to `out_dir`, and
  with `dataset` (dataset_files.dataset_info of the training data) DATASET_JSON beside them
  (`dataset_json`).

  Accepts a TrainState (uses .params / .batch_stats) or a variables dict. Returns out_dir.
  """
  if hasattr(variables_or_state, 'params'):
    variables = {'params': variables_or_state.params,
                 'batch_stats': getattr(variables_or_state, 'batch_stats', {})}
  else:
    variables = {k: variables_or_state.get(k, {}) for k in COLLECTIONS}
  variables = jax.device_get({k: v for k, v in variables.items() if v})
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.join(out_dir, VARIABLES_DIR)
  checkpointer.save(path, variables, force=True)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, CONFIG_JSON), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    if dataset is not None:
      with open(os.path.join(out_dir, DATASET_JSON), 'w') as f:
        json.dump(dataset_json(dataset), f, indent=2)
  return out_dir


def load_dataset_info(export_dir: str) -> Optional[dict]:
  """The DATASET_JSON an export carries (see `dataset_json`), or None for an export without
  one (written before exports carried it, or a SAN pre-training export).

  Raises:
    ValueError naming the file when it is not a JSON object or its classes and num_classes
    differ.
  """
  path = os.path.join(export_dir, DATASET_JSON)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not readable JSON ({e})') from e
  if not isinstance(info, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(info).__name__}')
  classes, count = info.get('classes'), info.get('num_classes')
  if classes is not None and count is not None and len(classes) != int(count):
    raise ValueError(f'{path}: {len(classes)} classes but num_classes={count}')
  return info


def load_inference(directory: str) -> tuple[dict, ml_collections.ConfigDict]:
  """Reads what `export_inference` wrote: ({'params', 'batch_stats'}, config)."""
  directory = os.path.abspath(directory)
  path = os.path.join(directory, VARIABLES_DIR)
  config_path = os.path.join(directory, CONFIG_JSON)
  if not os.path.isdir(path) or not os.path.isfile(config_path):
    raise FileNotFoundError(f'{directory}: not an inference export (expected {VARIABLES_DIR}/ '
                            f'and {CONFIG_JSON}, written by export_inference / --mode=export)')
  silence_closed_loop_callbacks()
  try:
    variables = ocp.StandardCheckpointer().restore(path)
    with open(config_path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except Exception as e:  # pylint: disable=broad-except  # any read error: unusable export
    raise CheckpointCorruptError(
        f'the inference export {directory} does not restore ({_reason(e)}); export it again '
        '(--mode=export with its training --workdir, whose checkpoints are untouched)') from None
  variables = {k: variables.get(k, {}) for k in COLLECTIONS}
  return variables, config
