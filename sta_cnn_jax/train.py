"""STA-CNN training: model, train state, the per-device train step (Algorithm 1), the loop.

Style of flax examples/imagenet/train.py: `create_model`, `create_train_state`, `train_step`,
`train_and_evaluate`. The step is a per-device function (lax.pmean over 'batch' for gradients,
metrics and BatchNorm statistics) wrapped by `parallel.make_parallel_step` as pmap or jit +
shard_map (`config.parallel`). Its loss and gradients (Algorithm 1, Eq. 10) are train_loss.py,
the optimiser optim.py, the loop (metrics fetched, checked finite, summarised; checkpoints)
loop.py, which SAN pre-training (pretrain_san.py) runs too.

Training step (paper §3.1, Algorithm 1; Eq. 10):
  frames (B, S, H, W, C_in) uint8 -> normalise on device -> (B*S, H, W, C_in) -> STACNN ->
  logits (B, S, C) -> α (Eq. 1-2), β (top_n), L (Eq. 10) -> gradients averaged over devices.
"""

import functools
import os
from typing import Any, Optional

from absl import logging
from clu import metric_writers
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs import base as config_base
from sta_cnn_jax import checkpoints
from sta_cnn_jax import evaluate
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import loop
from sta_cnn_jax import optim
from sta_cnn_jax import parallel
from sta_cnn_jax import precise_bn
from sta_cnn_jax import pretrained
from sta_cnn_jax import train_loss
from sta_cnn_jax.models import STACNN, input_channels

AXIS = parallel.AXIS_NAME
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
CONSENSUS = ('tam', 'average')
# Algorithm 1's backward (config.temporal.tam_backward), see `train_loss.loss_and_grads`.
TAM_BACKWARD = ('masked', 'recompute', 'reuse')
# Initialisation runs once: compiling it without XLA backend optimisations saves most of its
# compile time (e.g. ~65 s -> ~20 s for BN-Inception on 2 CPU cores) at no cost that matters.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


class TrainState(train_state.TrainState):
  batch_stats: Any


# ---------------------------------------------------------------------------------------------
# Model and train state.
# ---------------------------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for settings the step cannot honour."""
  t = config.temporal
  if t.consensus not in CONSENSUS:
    raise ValueError(f'temporal.consensus={t.consensus!r}; expected one of {CONSENSUS}')
  if t.tam_backward not in TAM_BACKWARD:
    raise NotImplementedError(f'temporal.tam_backward={t.tam_backward!r}; implemented: '
                              f'{TAM_BACKWARD}')
  if t.tam_backward == 'reuse' and not config.model.partial_bn:
    raise ValueError("temporal.tam_backward='reuse' needs model.partial_bn=True: it reuses "
                     'the forward pass row by row after the first BatchNorm, which batch '
                     "statistics in later BNs would couple across snippets (use 'recompute' "
                     "or 'masked')")
  per_group = t.snippets_per_segment if t.snippets_per_segment > 1 else t.num_segments
  if t.consensus == 'tam' and not 1 <= t.top_n <= per_group:
    raise ValueError(f'temporal.top_n={t.top_n} must be in [1, {per_group}] for TS('
                     f'{t.num_segments}x{t.snippets_per_segment})')
  if config.dtype not in DTYPES:
    raise ValueError(f'dtype={config.dtype!r}; expected one of {sorted(DTYPES)}')
  parallel.check_mode(config.parallel)


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> STACNN:
  """The STACNN of `config` (BatchNorm synchronised over 'batch' if model.sync_batch_norm)."""
  m = config.model
  san_widths = tuple(m.san_widths) if m.san_widths is not None else None
  return STACNN(num_classes=num_classes, modality=config.modality,
                spatial_attention=m.spatial_attention, aux_classifier=m.aux_classifier,
                dropout_rate=m.dropout_rate, partial_bn=m.partial_bn, san_widths=san_widths,
                wsp_normalisation=m.wsp_normalisation, sal_weights=m.sal_weights,
                sal_normalisation=m.sal_normalisation, width_multiplier=m.width_multiplier,
                fc_init_std=m.fc_init_std,
                dtype=DTYPES[config.dtype],
                bn_axis_name=AXIS if m.sync_batch_norm else None,
                bn_batch_sums=m.bn_batch_sums)


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C_in) of one snippet."""
  size = config.input.crop_size
  return (size, size, input_channels(config.modality))


def initialized(rng: jax.Array, model: Any, shape: tuple[int, ...], **kwargs) -> dict:
  """Variables of `model` for one input of `shape` (float32 params); kwargs go to __call__
  (STACNN: train=False)."""
  x = jnp.zeros((1,) + tuple(shape), jnp.float32)
  init = jax.jit(functools.partial(model.init, **kwargs))
  if isinstance(rng, jax.core.Tracer):  # under jax.eval_shape / another transformation
    return init(rng, x)
  return init.lower(rng, x).compile(compiler_options=INIT_COMPILER_OPTIONS)(rng, x)


def init_variables(rng: jax.Array, config: ml_collections.ConfigDict, model: STACNN,
                   shape: tuple[int, ...]) -> dict:
  """Random init, then ImageNet ACN weights (cross-modality for flow) and a pretrained SAN."""
  variables = dict(initialized(rng, model, shape, train=False))
  if config.init.acn_weights:
    variables = pretrained.graft_acn_weights(variables, config.init.acn_weights,
                                             config.modality, config.init.cross_modality)
  if config.init.san_weights:
    variables = pretrained.graft_san_weights(variables, config.init.san_weights)
  return variables


def create_train_state(rng: jax.Array, config: ml_collections.ConfigDict, model: STACNN,
                       input_shape: tuple[int, ...],  # pylint: disable=redefined-outer-name
                       learning_rate_fn: Optional[optax.Schedule] = None) -> TrainState:
  """Initial TrainState (float32 params, BN statistics, optimizer state).

  learning_rate_fn defaults to the constant config.learning_rate.
  """
  variables = init_variables(rng, config, model, input_shape)
  if learning_rate_fn is None:
    learning_rate_fn = optax.constant_schedule(config.learning_rate)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), variables['params'])
  batch_stats = jax.tree_util.tree_map(jnp.asarray, variables.get('batch_stats', {}))
  tx = optim.create_optimizer(config, learning_rate_fn)
  # One compiled program for the optimizer state (eagerly, every leaf's zeros would be its own).
  return TrainState(step=0, apply_fn=model.apply, params=params, tx=tx,
                    opt_state=jax.jit(tx.init)(params), batch_stats=batch_stats)


def abstract_train_state(config: ml_collections.ConfigDict, model: STACNN,
                         learning_rate_fn: Optional[optax.Schedule] = None) -> TrainState:
  """The TrainState's structure and shapes (jax.ShapeDtypeStruct leaves), with no compile
  and no weight files read: the restore target when a checkpoint exists."""
  bare = config.copy_and_resolve_references()
  bare.init.acn_weights = bare.init.san_weights = ''
  return jax.eval_shape(
      lambda rng: create_train_state(rng, bare, model, input_shape(config), learning_rate_fn),
      jax.random.PRNGKey(0))


def restore_or_create_state(config: ml_collections.ConfigDict, model: STACNN, manager: Any,
                            learning_rate_fn: Optional[optax.Schedule] = None,
                            fallback: bool = True) -> tuple[TrainState, np.ndarray]:
  """(state, step rng): the newest checkpoint of `manager` that restores, else a fresh state
  from the config's seed (split into an init key and the dropout key of the steps).

  Checkpoints that do not restore are moved aside with a one-line warning (`fallback`, training)
  or raise CheckpointCorruptError (inference); see checkpoints.restore_latest.
  """
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  if manager.latest_step() is None:
    return create_train_state(init_rng, config, model, input_shape(config),
                              learning_rate_fn), step_rng
  state, step_rng, _ = checkpoints.restore_latest(
      manager, abstract_train_state(config, model, learning_rate_fn), step_rng,
      fallback=fallback)
  return state, step_rng


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str
                          ) -> tuple[TrainState, STACNN]:
  """The latest checkpoint of `workdir` (shape-checked against the config) and its model."""
  num_classes, _ = dataset_facts(config)
  model = create_model(config, num_classes)
  manager = checkpoints.create_manager(os.path.join(workdir, checkpoints.CHECKPOINT_DIR), config)
  if manager.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory} (train first: --mode=train)')
  state, _ = restore_or_create_state(config, model, manager, fallback=False)
  return state, model


# ---------------------------------------------------------------------------------------------
# The train step (per device).
# ---------------------------------------------------------------------------------------------


def normalize_batch(frames: jnp.ndarray, config: ml_collections.ConfigDict) -> jnp.ndarray:
  """uint8 (..., C_in) -> normalised float in the compute dtype (input_pipeline.normalize)."""
  return input_pipeline.normalize(frames, config.modality, config.input.mean, config.input.std,
                                  config.input.bgr, dtype=DTYPES[config.dtype])


def train_step(state: TrainState, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict,
               learning_rate_fn: Optional[optax.Schedule] = None) -> tuple[TrainState, dict]:
  """One SGD step on this device's batch {'frames': (B, S, H, W, C_in) uint8, 'label': (B,)}.

  rng: replicated key data; dropout uses fold_in(rng, step, device index).
  Returns the new state (identical on all devices) and pmean'd metrics, including `finite`.
  Algorithm 1's backward follows config.temporal.tam_backward (train_loss.loss_and_grads).
  """
  frames, labels = batch['frames'], batch['label']
  b, s = frames.shape[:2]
  x = normalize_batch(frames.reshape((b * s,) + frames.shape[2:]), config)  # (B*S, H, W, C_in)
  dropout_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(AXIS))
  loss, grads, aux = train_loss.loss_and_grads(state, x, labels, dropout_rng, config)
  logits, alpha, mask = aux['logits'], aux['alpha'], aux['mask']
  grads = lax.pmean(grads, AXIS)
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=aux['model_state'].get('batch_stats', {}))
  metrics = train_loss.compute_metrics(logits, labels, loss, alpha, mask)
  metrics['grad_norm'] = optax.global_norm(grads)
  if learning_rate_fn is not None:
    metrics['learning_rate'] = learning_rate_fn(state.step)
  return new_state, loop.with_finite_flag(lax.pmean(metrics, AXIS), new_state.params)


# ---------------------------------------------------------------------------------------------
# Input and the loop.
# ---------------------------------------------------------------------------------------------


def dataset_facts(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(num_classes, steps_per_epoch) from manifest.json and the config."""
  info = input_pipeline.dataset_info(config.data_dir)
  num_classes = config.num_classes if config.num_classes > 0 else info['num_classes']
  if info['num_classes'] and info['num_classes'] != num_classes:
    raise ValueError(f'config.num_classes={num_classes} but {config.data_dir}/manifest.json '
                     f'lists {info["num_classes"]} classes')
  if config.modality not in info['modalities']:
    raise ValueError(f'modality {config.modality!r} not in the shards of {config.data_dir} '
                     f'(manifest.json modalities: {info["modalities"]})')
  frame_size = info.get('frame_size')
  if frame_size and tuple(frame_size) != tuple(config.input.frame_size):
    logging.warning('frames in %s are %s, config.input.frame_size is %s', config.data_dir,
                    frame_size, tuple(config.input.frame_size))
  steps_per_epoch = config.steps_per_epoch
  if steps_per_epoch <= 0:
    num_videos = info['num_videos'].get(config.train_split, 0)
    steps_per_epoch = max(num_videos // config.batch_size, 1)
  return num_classes, steps_per_epoch


# ---------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), then evaluates.

  Returns the final (unreplicated) TrainState.
  """
  check_config(config)
  loop.begin(config, workdir, 'train')
  mode = config.parallel
  num_classes, steps_per_epoch = dataset_facts(config)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else config.num_epochs * steps_per_epoch)
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch, num_steps)

  model = create_model(config, num_classes)
  manager = checkpoints.create_manager(os.path.join(workdir, checkpoints.CHECKPOINT_DIR), config)
  state, step_rng = restore_or_create_state(config, model, manager, learning_rate_fn)
  start_step = int(state.step)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(config_base.flat_hparams(config))
  logging.info('training %s for %d steps (%d per epoch) from step %d, %s on %d devices',
               config.row or 'model', num_steps, steps_per_epoch, start_step, mode,
               jax.device_count())

  batches = loop.prefetch(input_pipeline.create_train_dataset(config, start_step=start_step),
                          config.input.prefetch_to_device, mode)
  p_train_step = parallel.make_parallel_step(
      functools.partial(train_step, config=config, learning_rate_fn=learning_rate_fn), mode,
      out_replicated=True)
  p_rng = parallel.replicate(step_rng, mode)
  precise = ((lambda p: recompute_batch_stats(p, config, num_steps, mode))
             if config.precise_bn.num_batches > 0 else None)
  p_state = loop.run(parallel.replicate(state, mode), lambda s, b: p_train_step(s, b, p_rng),
                     batches, start_step=start_step, num_steps=num_steps,
                     log_every=config.log_every_steps, save_every=config.checkpoint.every_steps,
                     mode=mode, manager=manager, writer=writer, rng=step_rng,
                     desc=config.row or 'train', before_last_save=precise)
  state = jax.device_get(parallel.unreplicate(p_state, mode))
  if config.eval.at_end:
    evaluate_state(config, workdir, state, model, writer)
  return state


def recompute_batch_stats(p_state: TrainState, config: ml_collections.ConfigDict,
                          num_steps: int, mode: str) -> TrainState:
  """PreciseBN (sta_cnn_jax.precise_bn) over `config.precise_bn.num_batches` training batches
  that continue the data stream after the last step; returns the state with the new stats."""
  state = jax.device_get(parallel.unreplicate(p_state, mode))
  batches = loop.prefetch(input_pipeline.create_train_dataset(config, start_step=num_steps),
                          config.input.prefetch_to_device, mode)
  stats = precise_bn.precise_batch_stats(state, config, batches, config.precise_bn.num_batches,
                                         mode, DTYPES[config.dtype])
  return parallel.replicate(state.replace(batch_stats=stats), mode)


# ---------------------------------------------------------------------------------------------
# --mode=eval and --mode=export.
# ---------------------------------------------------------------------------------------------


def evaluate_state(config: ml_collections.ConfigDict, workdir: str, state: TrainState,
                   model: STACNN, writer: Optional[Any] = None) -> dict:
  """The test protocol (sta_cnn_jax.evaluate: 25 segments x 10 views, AVE and DCW, Eq. 11);
  its accuracies also go to `writer` at the state's step."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return evaluate.evaluate(config, workdir, variables, model, writer=writer,
                           step=int(state.step))


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: the latest checkpoint through the test protocol; results in the workdir
  (JSON, Markdown, scores) and in its TensorBoard summaries."""
  state, model = restore_for_inference(config, workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  results = evaluate_state(config, workdir, state, model, writer)
  writer.flush()
  return results


def export(config: ml_collections.ConfigDict, workdir: str) -> str:
  """--mode=export: params + batch_stats of the latest checkpoint, the config JSON and the
  dataset's classes and flow settings (checkpoints.export_inference)."""
  state, _ = restore_for_inference(config, workdir)
  return checkpoints.export_inference(state, config,
                                      os.path.join(workdir, checkpoints.EXPORT_DIR),
                                      dataset=input_pipeline.dataset_info(config.data_dir))
