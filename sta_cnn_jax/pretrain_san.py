"""SAN pre-training (§3.2.1): the SAN + Expanded Part learns to predict the optical flow between
the two frames of an RGB snippet with the relaxed MSE of Eq. 4 (Eq. 3: the Expanded Part's
flow prediction); --mode=pretrain_san.

Data: input_pipeline.create_san_pretrain_dataset (RGB pairs and the stored flow between them).
Loop: loop.run, the one train.train_and_evaluate runs. Output: <workdir>/san_pretrain/export,
the weights `init.san_weights` grafts into STACNN's params['san'] (pretrained.py).
"""

import functools
import os

from clu import metric_writers
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import optax

from sta_cnn_jax import checkpoints
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import loop
from sta_cnn_jax import modalities
from sta_cnn_jax import losses
from sta_cnn_jax import optim
from sta_cnn_jax import parallel
from sta_cnn_jax import train
from sta_cnn_jax.models import SpatialAttentionNetwork

AXIS = parallel.AXIS_NAME
SAN_PRETRAIN_DIR = 'san_pretrain'
# The SAN sees both RGB frames of a snippet, stacked on channels (6).
PAIR_CHANNELS = modalities.input_channels(modalities.RGB)


def create_san_model(config: ml_collections.ConfigDict) -> SpatialAttentionNetwork:
  """A standalone SAN + Expanded Part; its params are exactly STACNN's params['san']."""
  widths = config.model.san_widths
  return SpatialAttentionNetwork(tuple(widths) if widths is not None else None,
                                 dtype=train.DTYPES[config.dtype])


def create_san_pretrain_state(rng: jax.Array, config: ml_collections.ConfigDict,
                              model: SpatialAttentionNetwork) -> train.TrainState:
  """Adam (FlowNet) with L2 weight decay on kernels, lr halved every lr_decay_steps."""
  p = config.san_pretrain
  size = config.input.crop_size
  params = train.initialized(rng, model, (size, size, PAIR_CHANNELS))['params']
  schedule = optax.exponential_decay(p.learning_rate, p.lr_decay_steps, p.lr_decay_factor,
                                     staircase=True)
  tx = optax.chain(optax.add_decayed_weights(p.weight_decay, mask=optim.weight_decay_mask),
                   optax.adam(schedule, b1=p.b1, b2=p.b2))
  return train.TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats={})


def pretrain_san_step(state: train.TrainState, batch: dict, config: ml_collections.ConfigDict
                      ) -> tuple[train.TrainState, dict]:
  """Eq. 4 on this device's RGB pairs (B, S, h, w, 6) against their flow (B, S, h, w, 2)."""
  frames, flow = batch['frames'], batch['flow']
  n = frames.shape[0] * frames.shape[1]
  x = input_pipeline.normalize(frames.reshape((n,) + frames.shape[2:]), 'rgb',
                               config.input.mean, config.input.std, config.input.bgr,
                               dtype=train.DTYPES[config.dtype])
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
  return new_state, loop.with_finite_flag(metrics, new_state.params)


def pretrain_san(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains the SAN + Expanded Part with Eq. 4; exports to <workdir>/san_pretrain/export.

  Resumes from the latest checkpoint of <workdir>/san_pretrain/checkpoints. Point
  `init.san_weights` of an RGB spatial-attention config at the returned directory.
  """
  loop.begin(config, workdir, 'pretrain_san')
  mode = config.parallel
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
  batches = loop.prefetch(
      input_pipeline.create_san_pretrain_dataset(config, start_step=start_step),
      config.input.prefetch_to_device, mode)
  p_state = loop.run(parallel.replicate(state, mode), p_step, batches, start_step=start_step,
                     num_steps=p.num_steps, log_every=config.log_every_steps,
                     save_every=p.checkpoint_every_steps, mode=mode, manager=manager,
                     writer=writer, rng=rng, prefix='san_pretrain', desc='pretrain_san')
  state = jax.device_get(parallel.unreplicate(p_state, mode))
  return checkpoints.export_inference({'params': state.params}, config,
                                      os.path.join(root, checkpoints.EXPORT_DIR))
