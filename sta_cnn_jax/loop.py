"""The training loop both trainers run (train.train_and_evaluate, pretrain_san.pretrain_san):
step, buffer the device metrics, fetch and check them, summarise them, save checkpoints.

Non-finite values: each step returns a `finite` flag in its metrics (loss, gradient norm and the
updated weights' norm all finite), with no host sync inside the step. The loop fetches the
buffered per-step metrics at every log interval and before every checkpoint, so a NaN / Inf is
found within `log_every` steps, training stops with an error naming the first bad step, and a
state that went through a non-finite step is never saved.
"""

import collections
import threading
from typing import Any, Callable, Iterator, Optional

from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
import tqdm

from sta_cnn_jax import checkpoints
from sta_cnn_jax import dataset_files
from sta_cnn_jax import parallel
from sta_cnn_jax import workdir_lock


def begin(config: ml_collections.ConfigDict, workdir: str, what: str) -> None:
  """Before a trainer writes anything: one trainer per workdir (`what` is recorded in the lock),
  a known parallel mode, accelerators kept for JAX (tf.data only), and damaged training shards
  named now rather than mid-run."""
  if jax.process_index() == 0:
    workdir_lock.acquire(workdir, what)
  parallel.check_mode(config.parallel)
  tf.config.set_visible_devices([], 'GPU')
  dataset_files.verify_shards(config.data_dir, config.train_split,
                              config.input.verify_checksums, jax.process_index(),
                              jax.process_count())


def release_in_background(holder: list) -> None:
  """Drops the last reference to `holder`'s object in a daemon thread.

  A tf.data iterator's destructor joins its autotuning thread (tf.data's Model::OptimizeLoop),
  which only notices between optimisation rounds; after a few hundred steps of training those
  rounds are up to a minute apart. Measured with gdb on the miniature's flow run (configs/
  demo.py, 300 steps, one core): the process sat idle for 55-57 s in
  RootDataset::Iterator::~Iterator after its last checkpoint, in 3 of 3 runs (RGB: 4-54 s).
  Nothing waits for the thread; the iterator is not used again.
  """
  threading.Thread(target=holder.clear, daemon=True, name='release_iterator').start()


def prefetch(iterator: Iterator[Any], size: int, mode: str) -> Iterator[Any]:
  """Places host batches on the devices (`parallel.shard_batch_for_mode`), `size` ahead. When
  the generator is finished or closed, the iterator is released in the background
  (`release_in_background`)."""
  queue = collections.deque()
  put = lambda batch: parallel.shard_batch_for_mode(batch, mode)
  source = [iterator]
  del iterator

  def enqueue(n):
    for _ in range(n):
      try:
        queue.append(put(next(source[0])))
      except StopIteration:
        return
  try:
    enqueue(max(size, 1))
    while queue:
      yield queue.popleft()
      enqueue(1)
  finally:
    queue.clear()
    release_in_background(source)


def with_finite_flag(metrics: dict, params: Any) -> dict:
  """Inside a step: `metrics` (replicated: loss, grad_norm) with the updated weights' norm
  'param_norm' and the 'finite' flag the loop checks (loss, gradient and update all finite;
  the weights' norm catches a finite loss whose update overflowed: the state after such a step
  would not be safe to save). No host sync."""
  metrics = dict(metrics, param_norm=optax.global_norm(params))
  metrics['finite'] = (jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm']) &
                       jnp.isfinite(metrics['param_norm']))
  return metrics


def check_finite(history: list[tuple[int, dict]], manager: Any) -> None:
  """Raises FloatingPointError naming the first step whose loss, gradient or update was not
  finite, after letting pending checkpoint writes finish."""
  for step, metrics in history:
    if not bool(metrics['finite']):
      manager.wait_until_finished()
      last = manager.latest_step()
      where = (f'the last good checkpoint is step {last} in {manager.directory}' if last
               is not None else 'no checkpoint was written')
      values = ', '.join(f'{k}={float(metrics[k])}' for k in ('loss', 'grad_norm', 'param_norm')
                         if k in metrics)
      raise FloatingPointError(
          f'non-finite training loss or gradient at step {step} ({values}); training stopped, '
          f'{where} (a state that went through a non-finite step is never saved).')


def fetch_and_check(pending: list[tuple[int, Any]], mode: str, manager: Any
                    ) -> list[tuple[int, dict]]:
  """Device metrics of the pending steps -> host numpy, checked for non-finite values."""
  host = [(step, jax.device_get(parallel.unreplicate(m, mode))) for step, m in pending]
  check_finite(host, manager)
  return host


def summarize(history: list[tuple[int, dict]], prefix: str = 'train') -> dict:
  """Means over the buffered steps; the per-position selection vector as separate scalars."""
  out = {}
  for name in history[0][1]:
    if name == 'finite':
      continue
    value = np.mean([np.asarray(m[name], np.float64) for _, m in history], axis=0)
    if np.ndim(value):
      out.update({f'selection/{name}_pos{i}': float(v) for i, v in enumerate(value)})
    else:
      out[f'{prefix}/{name}'] = float(value)
  return out


def _next_batch(batches: Iterator[Any], step: int, manager: Any) -> Any:
  """The next batch; a shard damaged during the run stops it with the shard, the step and the
  last checkpoint named."""
  try:
    return next(batches)
  except dataset_files.ShardReadError as e:
    raise dataset_files.ShardReadError(
        f'{e} Training stopped at step {step}; {checkpoints.last_checkpoint_note(manager)}.',
        e.damaged) from None


def _postfix(scalars: dict, prefix: str) -> dict:
  shown = {'loss': (f'{prefix}/loss', '.3f'), 'acc': (f'{prefix}/accuracy', '.2f')}
  return {name: format(scalars[key], spec) for name, (key, spec) in shown.items()
          if key in scalars}


def run(p_state: Any, p_step: Callable[[Any, Any], tuple[Any, dict]], batches: Iterator[Any],
        *, start_step: int, num_steps: int, log_every: int, save_every: int, mode: str,
        manager: Any, writer: Any, rng: Any, prefix: str = 'train', desc: str = 'train',
        before_last_save: Optional[Callable[[Any], Any]] = None) -> Any:
  """Steps start_step + 1 .. num_steps of `p_step(p_state, batch) -> (p_state, metrics)`.

  Metrics are fetched (and checked finite, `check_finite`) every `log_every` steps and before
  every checkpoint; their means go to `writer` as `<prefix>/<name>` every `log_every` steps and
  at the last. A checkpoint {state, rng, step} is saved every `save_every` steps and at the
  last, after `before_last_save(p_state)` (e.g. PreciseBN) when given. Returns the replicated
  state after the last step, with every checkpoint written.
  """
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  # Only process 0 draws; otherwise tqdm's own default (TQDM_DISABLE: job_pool's workers).
  quiet = {'disable': True} if jax.process_index() > 0 else {}
  progress = tqdm.tqdm(total=num_steps, initial=start_step, desc=desc, unit='step',
                       dynamic_ncols=True, **quiet)
  pending = []   # (step, device metrics) not yet fetched
  checked = []   # (step, host metrics) fetched and finite, not yet summarised
  try:
    for step in range(start_step + 1, num_steps + 1):
      p_state, metrics = p_step(p_state, _next_batch(batches, step, manager))
      pending.append((step, metrics))
      report(step)
      progress.update(1)
      is_last = step == num_steps
      log_now = step % log_every == 0 or is_last
      save_now = step % save_every == 0 or is_last
      if log_now or save_now:
        checked += fetch_and_check(pending, mode, manager)
        pending = []
      if log_now:
        scalars = summarize(checked, prefix)
        checked = []
        writer.write_scalars(step, scalars)
        progress.set_postfix(_postfix(scalars, prefix))
      if is_last and before_last_save is not None:
        p_state = before_last_save(p_state)
      if save_now:
        checkpoints.save(manager, step, parallel.unreplicate(p_state, mode), rng)
  finally:
    progress.close()
  manager.wait_until_finished()
  writer.flush()
  return p_state
