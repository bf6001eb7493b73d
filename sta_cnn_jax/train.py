"""STA-CNN training: train state, the per-device train step (Algorithm 1), and the loop.

Style of flax examples/imagenet/train.py. The step is a per-device function (lax.pmean over
'batch' for gradients, metrics and BatchNorm statistics) wrapped by `parallel.make_parallel_step`
as pmap or jit + shard_map (`config.parallel`).

Training step (paper §3.1, Algorithm 1; Eq. 10):
  frames (B, S, H, W, C_in) uint8 -> normalise on device -> (B*S, H, W, C_in) -> STACNN ->
  logits (B, S, C).
  consensus 'tam':     α = 1/H(softmax(logits)) per snippet (stop_gradient), β = top_n mask
                       (within each of the N segments when M > 1); L = Σ β·l(s) / Σ β with
                       l(s) = CE(ŷ_cla(s)) + λ·CE(ŷ_san(s)) (Eq. 10 per snippet).
  consensus 'average': TSN: L = CE(mean_S logits) + λ·CE(mean_S aux logits).

Non-finite values: each step returns a `finite` flag in its metrics (loss, gradient norm and the
updated weights' norm all finite), with no host sync inside the step. The host fetches the
buffered per-step metrics at every log interval and before every checkpoint, so a NaN / Inf is
found within `log_every_steps` steps, training stops with an error naming the first bad step,
and a state that went through a non-finite step is never saved.
"""

import collections
import functools
import os
from typing import Any, Iterator, Optional

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
import tqdm

from configs import base as config_base
from sta_cnn_jax import checkpoints
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import losses
from sta_cnn_jax import parallel
from sta_cnn_jax import precise_bn
from sta_cnn_jax import temporal
from sta_cnn_jax import workdir_lock
from sta_cnn_jax.models import STACNN, SpatialAttentionNetwork, input_channels, is_frozen_bn_param

AXIS = parallel.AXIS_NAME
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
CONSENSUS = ('tam', 'average')
# Algorithm 1's backward (config.temporal.tam_backward), see `loss_and_grads`.
TAM_BACKWARD = ('masked', 'recompute')
SAN_PRETRAIN_DIR = 'san_pretrain'
# Initialisation runs once: compiling it without XLA backend optimisations saves most of its
# compile time (e.g. ~65 s -> ~20 s for BN-Inception on 2 CPU cores) at no cost that matters.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}
# Labels of optax.multi_transform under partial BN.
TRAINABLE, FROZEN = 'trainable', 'frozen'
LR_SCHEDULES = ('step', 'cosine')
OPTIMIZERS = ('sgd', 'adam')


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
                bn_axis_name=AXIS if m.sync_batch_norm else None)


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


def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int,
                            num_steps: Optional[int] = None) -> optax.Schedule:
  """The learning rate per step (`config.lr_schedule`), after `config.warmup_steps` of linear
  warm-up from 0 (none in the paper's recipe):

    'step'    §4.1: lr ÷ (1/lr_decay_factor) every lr_decay_epochs epochs (piecewise constant).
    'cosine'  cosine decay from lr to 0 over the run's `num_steps` (the miniature recipe:
              a short run has no room for the paper's epoch-based steps).
  """
  warmup = config.warmup_steps
  if config.lr_schedule == 'step':
    boundaries = {int(round(e * steps_per_epoch)): config.lr_decay_factor
                  for e in range(config.lr_decay_epochs, config.num_epochs,
                                 config.lr_decay_epochs)
                  if e * steps_per_epoch > 0}
    main = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  elif config.lr_schedule == 'cosine':
    if not num_steps:
      raise ValueError("lr_schedule='cosine' needs the run's number of steps")
    main = optax.cosine_decay_schedule(config.learning_rate, max(num_steps - warmup, 1))
  else:
    raise ValueError(f'lr_schedule={config.lr_schedule!r}; expected one of {LR_SCHEDULES}')
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, warmup), main], [warmup])


def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def weight_decay_mask(params: Any) -> Any:
  """True where weight decay applies: conv / dense / SAL weights (ndim > 1); not on biases
  or BatchNorm scales and shifts (tsn-pytorch `get_optim_policies`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x.ndim > 1 and _path_names(path)[-1] not in ('bias', 'scale'), params)


def partial_bn_labels(params: Any) -> Any:
  """FROZEN for BN-Inception BN params other than the first (TSN partial BN), else TRAINABLE."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: FROZEN if is_frozen_bn_param(_path_names(path)) else TRAINABLE, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """clip_by_global_norm -> weight decay (masked, L2 added to the gradient) -> SGD momentum
  (`config.optimizer='sgd'`, the paper's) or Adam ('adam'); partial-BN params frozen.

  The gradient norm is taken over the trainable parameters only (frozen BN params have no
  gradient in tsn-pytorch).
  """
  if config.optimizer == 'sgd':
    update = optax.sgd(learning_rate_fn, momentum=config.momentum)
  elif config.optimizer == 'adam':
    update = optax.adam(learning_rate_fn)
  else:
    raise ValueError(f'optimizer={config.optimizer!r}; expected one of {OPTIMIZERS}')
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
      update)
  if config.model.partial_bn:
    tx = optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, partial_bn_labels)
  return tx


def init_variables(rng: jax.Array, config: ml_collections.ConfigDict, model: STACNN,
                   shape: tuple[int, ...]) -> dict:
  """Random init, then ImageNet ACN weights (cross-modality for flow) and a pretrained SAN."""
  variables = dict(initialized(rng, model, shape, train=False))
  if config.init.acn_weights:
    variables = checkpoints.graft_acn_weights(variables, config.init.acn_weights,
                                              config.modality, config.init.cross_modality)
  if config.init.san_weights:
    variables = checkpoints.graft_san_weights(variables, config.init.san_weights)
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
  tx = create_optimizer(config, learning_rate_fn)
  # One compiled program for the optimizer state (eagerly, every leaf's zeros would be its own).
  return TrainState(step=0, apply_fn=model.apply, params=params, tx=tx,
                    opt_state=jax.jit(tx.init)(params), batch_stats=batch_stats)


# ---------------------------------------------------------------------------------------------
# The train step (per device).
# ---------------------------------------------------------------------------------------------


def normalize_batch(frames: jnp.ndarray, config: ml_collections.ConfigDict) -> jnp.ndarray:
  """uint8 (..., C_in) -> normalised float in the compute dtype (input_pipeline.normalize)."""
  return input_pipeline.normalize(frames, config.modality, config.input.mean, config.input.std,
                                  config.input.bgr, dtype=DTYPES[config.dtype])


def temporal_selection(logits: jnp.ndarray, config: ml_collections.ConfigDict
                       ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """α (B, S) from the stop-gradient logits (Eq. 1-2) and the selection β (B, S) (Alg. 1).

  'average' consensus selects every snippet.
  """
  t = config.temporal
  alpha = temporal.segment_confidence(lax.stop_gradient(logits))          # (B, S)
  if t.consensus == 'average':
    return alpha, jnp.ones_like(alpha)
  groups = t.num_segments if t.snippets_per_segment > 1 else None         # TS(NxM, Nxtop_m)
  return alpha, temporal.temporal_attention_mask(alpha, t.top_n, num_segments=groups)


def compute_loss(logits: jnp.ndarray, aux_logits: Optional[jnp.ndarray], labels: jnp.ndarray,
                 mask: jnp.ndarray, config: ml_collections.ConfigDict) -> jnp.ndarray:
  """Algorithm 1 ('tam') or TSN averaged consensus ('average'), each with Eq. 10's aux term."""
  lam = config.aux_loss_weight
  if config.temporal.consensus == 'tam':
    return losses.tam_loss(logits, labels, mask, aux_logits, lam)
  return losses.average_consensus_loss(logits, labels, aux_logits, lam)


def compute_metrics(logits: jnp.ndarray, labels: jnp.ndarray, loss: jnp.ndarray,
                    alpha: jnp.ndarray, mask: jnp.ndarray) -> dict:
  """Per-device metrics (pmean'd by the caller). logits (B, S, C), alpha / mask (B, S)."""
  selected, unselected = mask, 1.0 - mask
  return {
      'loss': loss,
      # Video accuracy of the averaged logits (TSN consensus), and per snippet.
      'accuracy': jnp.mean(jnp.argmax(jnp.mean(logits, axis=1), -1) == labels),
      'snippet_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels[:, None]),
      'alpha_selected': jnp.sum(alpha * selected) / jnp.maximum(jnp.sum(selected), 1.0),
      'alpha_unselected': jnp.sum(alpha * unselected) / jnp.maximum(jnp.sum(unselected), 1.0),
      # Fraction of videos whose snippet at position s (= n*M + m) was selected.
      'selected_fraction': jnp.mean(mask, axis=0),                          # (S,)
  }


def selected_indices(mask: jnp.ndarray, count: int) -> jnp.ndarray:
  """(B, count) positions of the 1s of a 0/1 mask (B, S) with exactly `count` ones per row,
  in increasing order (`lax.top_k` is stable, so ties keep the earlier position)."""
  _, idx = lax.top_k(mask, count)
  return jnp.sort(idx, axis=-1)


def num_selected(config: ml_collections.ConfigDict) -> int:
  """Snippets per video that Algorithm 1 back-propagates: top_n, or N·top_m for TS(N×M)."""
  t = config.temporal
  return t.top_n * (t.num_segments if t.snippets_per_segment > 1 else 1)


def frozen_as_constants(params: Any, config: ml_collections.ConfigDict) -> Any:
  """Under partial BN, the frozen BN scales / shifts enter the network through stop_gradient:
  the optimizer keeps them fixed anyway (`create_optimizer`), and without a gradient XLA does
  not compute the two per-channel reductions per frozen BN (as requires_grad=False does in
  tsn-pytorch). Their gradient is then exactly 0."""
  if not config.model.partial_bn:
    return params
  return jax.tree_util.tree_map(lambda label, p: lax.stop_gradient(p) if label == FROZEN else p,
                                partial_bn_labels(params), params)


def _apply(state: TrainState, params: Any, x: jnp.ndarray, rng: jax.Array, b: int, s: int):
  """The network in training mode on (B*S, H, W, C) -> (logits (B, S, C), aux | None, state)."""
  outputs, new_model_state = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
      mutable=['batch_stats'], rngs={'dropout': rng})
  logits = outputs['logits'].reshape(b, s, -1)                              # (B, S, C)
  aux_logits = outputs['aux_logits']
  if aux_logits is not None:
    aux_logits = aux_logits.reshape(b, s, -1)
  return logits, aux_logits, new_model_state


def loss_and_grads(state: TrainState, x: jnp.ndarray, labels: jnp.ndarray, rng: jax.Array,
                   config: ml_collections.ConfigDict) -> tuple[jnp.ndarray, Any, dict]:
  """Loss and (per-device) gradients of one step; x (B*S, H, W, C_in), labels (B,).

  Returns (loss, grads, aux) with aux = {'model_state', 'logits' (B, S, C) of every snippet,
  'alpha', 'mask' (B, S)}.

  `temporal.tam_backward` (consensus 'tam' only) chooses how Algorithm 1 is differentiated:
    'masked'    the literal algorithm: forward all B·S snippets with gradient tracking, mask the
                per-snippet losses with β; the backward pass still runs through every snippet
                (zero cotangents for the unselected ones) -- 3·S forwards of work per video.
    'recompute' forward all snippets WITHOUT gradient to score α and select β, then gather the
                selected B·N·top_m snippets (static count, jnp.take_along_axis) and forward +
                backward only those -- S + 3·selected forwards of work (0.67x for TS(3×3,3×1)).
  Partial BN's first layer (`conv1_7x7_s2_bn`, batch statistics in training) in each mode:
    'masked'    normalises with the statistics of all B·S snippets, gradients flow through them;
                running averages are updated from all B·S snippets.
    'recompute' the scoring pass normalises with the statistics of all B·S snippets and uses
                the same dropout key (so α and β are exactly those of 'masked'); its
                running-average update is the one kept (as in 'masked'); the gradient pass
                normalises the selected snippets with THEIR batch statistics (B·N·top_m of
                them) and its running-average update is discarded. Every other BN uses
                running statistics in both modes; dropout draws fresh masks in the gradient
                pass.
  Hence with BN in running-statistics mode and no dropout both give the same loss and
  gradients (tests/test_recompute.py); with partial BN they differ only through the first BN's
  statistics.
  """
  b = labels.shape[0]
  s = x.shape[0] // b
  t = config.temporal
  if t.consensus != 'tam' or t.tam_backward == 'masked':
    def loss_fn(params):
      params = frozen_as_constants(params, config)
      logits, aux_logits, new_model_state = _apply(state, params, x, rng, b, s)
      alpha, mask = temporal_selection(logits, config)
      loss = compute_loss(logits, aux_logits, labels, mask, config)
      return loss, {'model_state': new_model_state, 'logits': logits, 'alpha': alpha,
                    'mask': mask}
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss, grads, aux

  # 'recompute': scoring pass (no gradient is taken through it; the same dropout key as
  # 'masked', so α and β equal masked's also with dropout) ...
  grad_rng = jax.random.fold_in(rng, 1)
  logits, _, scored_model_state = _apply(state, lax.stop_gradient(state.params),
                                         lax.stop_gradient(x), rng, b, s)
  logits = lax.stop_gradient(logits)
  alpha, mask = temporal_selection(logits, config)
  k = num_selected(config)
  idx = selected_indices(mask, k)                                          # (B, K)
  x_sel = jnp.take_along_axis(x.reshape((b, s) + x.shape[1:]),
                              idx.reshape(idx.shape + (1,) * (x.ndim - 1)), axis=1)
  x_sel = x_sel.reshape((b * k,) + x.shape[1:])                            # (B*K, H, W, C_in)

  # ... then forward + backward of the selected snippets only (each has β = 1).
  def loss_fn(params):
    params = frozen_as_constants(params, config)
    sel_logits, sel_aux, _ = _apply(state, params, x_sel, grad_rng, b, k)
    return losses.tam_loss(sel_logits, labels, jnp.ones((b, k), jnp.float32), sel_aux,
                           config.aux_loss_weight)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return loss, grads, {'model_state': scored_model_state, 'logits': logits, 'alpha': alpha,
                       'mask': mask}


def train_step(state: TrainState, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict,
               learning_rate_fn: Optional[optax.Schedule] = None) -> tuple[TrainState, dict]:
  """One SGD step on this device's batch {'frames': (B, S, H, W, C_in) uint8, 'label': (B,)}.

  rng: replicated key data; dropout uses fold_in(rng, step, device index).
  Returns the new state (identical on all devices) and pmean'd metrics, including `finite`.
  Algorithm 1's backward follows config.temporal.tam_backward (`loss_and_grads`).
  """
  frames, labels = batch['frames'], batch['label']
  b, s = frames.shape[:2]
  x = normalize_batch(frames.reshape((b * s,) + frames.shape[2:]), config)  # (B*S, H, W, C_in)
  dropout_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(AXIS))
  loss, grads, aux = loss_and_grads(state, x, labels, dropout_rng, config)
  logits, alpha, mask = aux['logits'], aux['alpha'], aux['mask']
  grads = lax.pmean(grads, AXIS)
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=aux['model_state'].get('batch_stats', {}))
  metrics = compute_metrics(logits, labels, loss, alpha, mask)
  metrics['grad_norm'] = optax.global_norm(grads)
  if learning_rate_fn is not None:
    metrics['learning_rate'] = learning_rate_fn(state.step)
  metrics = lax.pmean(metrics, AXIS)
  # Replicated already: the norm of the updated weights catches a finite loss whose update
  # overflowed (the state after this step would not be safe to save).
  metrics['param_norm'] = optax.global_norm(new_state.params)
  metrics['finite'] = (jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm']) &
                       jnp.isfinite(metrics['param_norm']))
  return new_state, metrics


# ---------------------------------------------------------------------------------------------
# Input.
# ---------------------------------------------------------------------------------------------


def prefetch(iterator: Iterator[Any], size: int, mode: str) -> Iterator[Any]:
  """Places host batches on the devices (`parallel.shard_batch_for_mode`), `size` ahead."""
  queue = collections.deque()
  put = lambda batch: parallel.shard_batch_for_mode(batch, mode)

  def enqueue(n):
    for _ in range(n):
      try:
        queue.append(put(next(iterator)))
      except StopIteration:
        return
  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)


def local_batch_size(global_batch: int, process_count: Optional[int] = None) -> int:
  """Videos per host; the global batch must split evenly over all devices."""
  if global_batch % jax.device_count():
    raise ValueError(f'batch_size={global_batch} is not divisible by the {jax.device_count()} '
                     'devices (global batch = per-device batch x device count)')
  return global_batch // (jax.process_count() if process_count is None else process_count)


def create_input_iter(config: ml_collections.ConfigDict, start_step: int = 0,
                      process_index: Optional[int] = None, process_count: Optional[int] = None,
                      num_devices: Optional[int] = None) -> Iterator[dict]:
  """This host's training batches from step `start_step` on (numpy, (D_local, B, S, ...)).

  process_index / process_count / num_devices default to this process's; tests pass them to
  rebuild another host's stream.
  """
  process_count = jax.process_count() if process_count is None else process_count
  return input_pipeline.create_train_dataset(
      config.data_dir, modality=config.modality, num_segments=config.temporal.num_segments,
      snippets_per_segment=config.temporal.snippets_per_segment,
      batch_size=local_batch_size(config.batch_size, process_count),
      num_devices=jax.local_device_count() if num_devices is None else num_devices,
      out_size=config.input.crop_size, seed=config.seed,
      process_index=jax.process_index() if process_index is None else process_index,
      process_count=process_count, scales=config.input.scales,
      shuffle_buffer=config.input.shuffle_buffer, start_step=start_step)


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
# The loop.
# ---------------------------------------------------------------------------------------------


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), then evaluates.

  Returns the final (unreplicated) TrainState.
  """
  if jax.process_index() == 0:  # one trainer per workdir, refused before anything is written
    workdir_lock.acquire(workdir, 'train')
  check_config(config)
  mode = config.parallel
  tf.config.set_visible_devices([], 'GPU')  # tf.data only; keep accelerators for JAX
  input_pipeline.verify_shards(config.data_dir, config.train_split,  # damaged shards: named now
                               config.input.verify_checksums, jax.process_index(),
                               jax.process_count())
  num_classes, steps_per_epoch = dataset_facts(config)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else config.num_epochs * steps_per_epoch)
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch, num_steps)

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

  train_iter = prefetch(create_input_iter(config, start_step), config.input.prefetch_to_device,
                        mode)
  p_train_step = parallel.make_parallel_step(
      functools.partial(train_step, config=config, learning_rate_fn=learning_rate_fn), mode,
      out_replicated=True)
  p_state = parallel.replicate(state, mode)
  p_rng = parallel.replicate(step_rng, mode)

  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  progress = tqdm.tqdm(total=num_steps, initial=start_step, desc=config.row or 'train',
                       unit='step', disable=jax.process_index() > 0, dynamic_ncols=True)
  pending = []   # (step, device metrics) not yet fetched
  checked = []   # (step, host metrics) fetched and finite, not yet summarised
  try:
    for step in range(start_step + 1, num_steps + 1):
      try:
        batch = next(train_iter)
      except input_pipeline.ShardReadError as e:  # a shard damaged during the run
        raise input_pipeline.ShardReadError(
            f'{e} Training stopped at step {step}; {checkpoints.last_checkpoint_note(manager)}.',
            e.damaged) from None
      p_state, metrics = p_train_step(p_state, batch, p_rng)
      pending.append((step, metrics))
      report(step)
      progress.update(1)
      is_last = step == num_steps
      log_now = step % config.log_every_steps == 0 or is_last
      save_now = step % config.checkpoint.every_steps == 0 or is_last
      if log_now or save_now:
        checked += fetch_and_check(pending, mode, manager)
        pending = []
      if log_now:
        scalars = summarize(checked)
        checked = []
        writer.write_scalars(step, scalars)
        progress.set_postfix(loss=f'{scalars["train/loss"]:.3f}',
                             acc=f'{scalars["train/accuracy"]:.2f}')
      if is_last and config.precise_bn.num_batches > 0:
        p_state = recompute_batch_stats(p_state, config, num_steps, mode)
      if save_now:
        checkpoints.save(manager, step, parallel.unreplicate(p_state, mode), step_rng)
  finally:
    progress.close()
  manager.wait_until_finished()
  writer.flush()
  state = jax.device_get(parallel.unreplicate(p_state, mode))
  if config.eval.at_end:
    evaluate_state(config, workdir, state, model)
  return state


def recompute_batch_stats(p_state: TrainState, config: ml_collections.ConfigDict,
                          num_steps: int, mode: str) -> TrainState:
  """PreciseBN (sta_cnn_jax.precise_bn) over `config.precise_bn.num_batches` training batches
  that continue the data stream after the last step; returns the state with the new stats."""
  state = jax.device_get(parallel.unreplicate(p_state, mode))
  batches = prefetch(create_input_iter(config, num_steps), config.input.prefetch_to_device, mode)
  stats = precise_bn.precise_batch_stats(state, config, batches, config.precise_bn.num_batches,
                                         mode, DTYPES[config.dtype])
  return parallel.replicate(state.replace(batch_stats=stats), mode)


def evaluate_state(config: ml_collections.ConfigDict, workdir: str, state: TrainState,
                   model: STACNN) -> dict:
  """The test protocol (sta_cnn_jax.evaluate: 25 segments x 10 views, AVE and DCW)."""
  from sta_cnn_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return evaluate_lib.evaluate(config, workdir, variables, model)


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


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: the latest checkpoint through the test protocol."""
  state, model = restore_for_inference(config, workdir)
  return evaluate_state(config, workdir, state, model)


def export(config: ml_collections.ConfigDict, workdir: str) -> str:
  """--mode=export: params + batch_stats of the latest checkpoint and the config JSON."""
  state, _ = restore_for_inference(config, workdir)
  return checkpoints.export_inference(state, config,
                                      os.path.join(workdir, checkpoints.EXPORT_DIR))


# ---------------------------------------------------------------------------------------------
# SAN pre-training on flow targets (§3.2.1, Eq. 3-4): --mode=pretrain_san.
# ---------------------------------------------------------------------------------------------


def _dequantize(q: tf.Tensor, bound: float) -> tf.Tensor:
  """CONTRACT.md flow quantisation: v = q * 2 * bound / 255 - bound."""
  return tf.cast(q, tf.float32) * (2.0 * bound / 255.0) - bound


def _san_pretrain_example(serialized, key, *, flow_feature: str, num_snippets: int,
                          crop_size: int, bound: float):
  """One video -> RGB pairs (S, h, w, 6) uint8 and their flow (S, h, w, 2) float32 (pixels).

  Snippet s is frames (t, t+1) with flow field t between them (data_prep writes n-1 fields
  for n frames). Random crop of crop_size (no resize, so flow values stay in pixels) and a
  random horizontal flip (image mirrored, flow x negated).
  """
  features = {'rgb': tf.io.VarLenFeature(tf.string),
              f'{flow_feature}_x': tf.io.VarLenFeature(tf.string),
              f'{flow_feature}_y': tf.io.VarLenFeature(tf.string)}
  parsed = tf.io.parse_single_example(serialized, features)
  rgb = parsed['rgb'].values
  fx, fy = parsed[f'{flow_feature}_x'].values, parsed[f'{flow_feature}_y'].values
  num_fields = tf.minimum(tf.size(fx), tf.size(rgb) - 1)
  tf.debugging.assert_positive(num_fields, message=f'a video has no {flow_feature} fields '
                               '(--mode=pretrain_san needs shards with flow)')
  keys = tf.random.experimental.stateless_split(key, 4)
  t = tf.cast(tf.random.stateless_uniform([num_snippets], keys[0]) *
              tf.cast(num_fields, tf.float32), tf.int32)
  t = tf.minimum(t, num_fields - 1)
  decode = lambda data, ch: tf.map_fn(
      lambda d: tf.ensure_shape(tf.io.decode_image(d, channels=ch, expand_animations=False),
                                [None, None, ch]), data,
      fn_output_signature=tf.TensorSpec([None, None, ch], tf.uint8))
  first, second = decode(tf.gather(rgb, t), 3), decode(tf.gather(rgb, t + 1), 3)
  flow = tf.concat([_dequantize(decode(tf.gather(fx, t), 1), bound),
                    _dequantize(decode(tf.gather(fy, t), 1), bound)], axis=-1)
  pairs = tf.concat([first, second], axis=-1)                              # (S, H, W, 6)
  shape = tf.shape(pairs)
  y0 = tf.cast(tf.random.stateless_uniform([], keys[1]) *
               tf.cast(shape[1] - crop_size + 1, tf.float32), tf.int32)
  x0 = tf.cast(tf.random.stateless_uniform([], keys[2]) *
               tf.cast(shape[2] - crop_size + 1, tf.float32), tf.int32)
  pairs = pairs[:, y0:y0 + crop_size, x0:x0 + crop_size]
  flow = flow[:, y0:y0 + crop_size, x0:x0 + crop_size]
  if_flip = tf.random.stateless_uniform([], keys[3]) < 0.5
  pairs = tf.where(if_flip, pairs[:, :, ::-1], pairs)
  flow = tf.where(if_flip, flow[:, :, ::-1] * tf.constant([-1.0, 1.0]), flow)
  return {'frames': tf.ensure_shape(pairs, [num_snippets, crop_size, crop_size, 6]),
          'flow': tf.ensure_shape(flow, [num_snippets, crop_size, crop_size, 2])}


def create_san_pretrain_iter(config: ml_collections.ConfigDict,
                             start_step: int = 0) -> Iterator[dict]:
  """This host's infinite iterator of {'frames': (D, B, S, h, w, 6) uint8, 'flow': (D, B, S,
  h, w, 2) float32} from the training shards (the pipeline has no RGB-pair + flow mode),
  from batch `start_step` on (resume)."""
  p = config.san_pretrain
  manifest = input_pipeline.read_manifest(config.data_dir)
  input_pipeline.check_modality(config.data_dir, p.flow_stream, manifest)
  bound = float((manifest.get('flow') or {}).get('bound', 20.0))
  files = input_pipeline.host_shards(
      input_pipeline.find_shards(config.data_dir, config.train_split), jax.process_index(),
      jax.process_count())
  devices = jax.local_device_count()
  batch = local_batch_size(p.batch_size)
  input_pipeline._check_batch(batch, devices)  # pylint: disable=protected-access
  root = tf.constant([config.seed, 1], tf.int64)
  ds = tf.data.TFRecordDataset(files).repeat().shuffle(
      config.input.shuffle_buffer, seed=config.seed).enumerate().skip(start_step * batch)
  ds = ds.map(lambda i, rec: _san_pretrain_example(
      rec, tf.random.experimental.stateless_fold_in(root, i), flow_feature=p.flow_stream,
      num_snippets=p.num_segments, crop_size=config.input.crop_size, bound=bound),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.map(lambda b: tf.nest.map_structure(
      lambda x: tf.reshape(x, tf.concat([[devices, batch // devices], tf.shape(x)[1:]], 0)), b))
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def create_san_model(config: ml_collections.ConfigDict) -> SpatialAttentionNetwork:
  """A standalone SAN + Expanded Part; its params are exactly STACNN's params['san']."""
  widths = config.model.san_widths
  return SpatialAttentionNetwork(tuple(widths) if widths is not None else None,
                                 dtype=DTYPES[config.dtype])


def create_san_pretrain_state(rng: jax.Array, config: ml_collections.ConfigDict,
                              model: SpatialAttentionNetwork) -> TrainState:
  """Adam (FlowNet) with L2 weight decay on kernels, lr halved every lr_decay_steps."""
  p = config.san_pretrain
  size = config.input.crop_size
  params = initialized(rng, model, (size, size, 2 * 3))['params']
  schedule = optax.exponential_decay(p.learning_rate, p.lr_decay_steps, p.lr_decay_factor,
                                     staircase=True)
  tx = optax.chain(optax.add_decayed_weights(p.weight_decay, mask=weight_decay_mask),
                   optax.adam(schedule, b1=p.b1, b2=p.b2))
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats={})


def pretrain_san_step(state: TrainState, batch: dict, config: ml_collections.ConfigDict
                      ) -> tuple[TrainState, dict]:
  """Eq. 4 on this device's RGB pairs (B, S, h, w, 6) against their flow (B, S, h, w, 2)."""
  frames, flow = batch['frames'], batch['flow']
  n = frames.shape[0] * frames.shape[1]
  x = input_pipeline.normalize(frames.reshape((n,) + frames.shape[2:]), 'rgb',
                               config.input.mean, config.input.std, config.input.bgr,
                               dtype=DTYPES[config.dtype])
  target = flow.reshape((n,) + flow.shape[2:]).astype(jnp.float32)        # (B*S, h, w, 2)

  def loss_fn(params):
    _, pred = state.apply_fn({'params': params}, x)                        # (B*S, h/2, w/2, 2)
    pred = pred.astype(jnp.float32)
    return losses.relaxed_flow_mse(pred, target, config.san_pretrain.relaxation), pred

  (loss, pred), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, AXIS)
  new_state = state.apply_gradients(grads=grads)
  resized = losses.resize_flow(target, pred.shape[1:3])
  metrics = lax.pmean({'loss': loss, 'epe': jnp.mean(jnp.linalg.norm(pred - resized, axis=-1)),
                       'grad_norm': optax.global_norm(grads)}, AXIS)
  metrics['param_norm'] = optax.global_norm(new_state.params)
  metrics['finite'] = (jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm']) &
                       jnp.isfinite(metrics['param_norm']))
  return new_state, metrics


def pretrain_san(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains the SAN + Expanded Part with Eq. 4; exports to <workdir>/san_pretrain/export.

  Point `init.san_weights` of an RGB spatial-attention config at the returned directory.
  """
  if jax.process_index() == 0:  # one trainer per workdir, refused before anything is written
    workdir_lock.acquire(workdir, 'pretrain_san')
  mode = config.parallel
  parallel.check_mode(mode)
  tf.config.set_visible_devices([], 'GPU')
  input_pipeline.verify_shards(config.data_dir, config.train_split,
                               config.input.verify_checksums, jax.process_index(),
                               jax.process_count())
  root = os.path.join(workdir, SAN_PRETRAIN_DIR)
  p = config.san_pretrain
  model = create_san_model(config)
  rng = jax.random.PRNGKey(config.seed)
  state = create_san_pretrain_state(rng, config, model)
  manager = checkpoints.create_manager(os.path.join(root, checkpoints.CHECKPOINT_DIR), config)
  restored = checkpoints.restore_latest(manager, state, rng)
  if restored is not None:
    state = restored[0]
  start_step = int(state.step)
  writer = metric_writers.create_default_writer(root, just_logging=jax.process_index() > 0)
  p_step = parallel.make_parallel_step(functools.partial(pretrain_san_step, config=config),
                                       mode, out_replicated=True)
  p_state = parallel.replicate(state, mode)
  batches = prefetch(create_san_pretrain_iter(config, start_step),
                     config.input.prefetch_to_device, mode)
  pending = []
  for step in tqdm.trange(start_step + 1, p.num_steps + 1, initial=start_step,
                          total=p.num_steps, desc='pretrain_san',
                          disable=jax.process_index() > 0):
    p_state, metrics = p_step(p_state, next(batches))
    pending.append((step, metrics))
    is_last = step == p.num_steps
    save_now = step % p.checkpoint_every_steps == 0 or is_last
    if step % config.log_every_steps == 0 or save_now:
      writer.write_scalars(step, summarize(fetch_and_check(pending, mode, manager),
                                           prefix='san_pretrain'))
      pending = []
    if save_now:
      checkpoints.save(manager, step, parallel.unreplicate(p_state, mode), rng)
  manager.wait_until_finished()
  state = jax.device_get(parallel.unreplicate(p_state, mode))
  return checkpoints.export_inference({'params': state.params}, config,
                                      os.path.join(root, checkpoints.EXPORT_DIR))
