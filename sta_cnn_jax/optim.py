"""The optimiser of the paper's recipe (§4.1): learning-rate schedule, weight decay on weights
only, TSN partial BN, SGD momentum (or Adam for the miniature recipe).

Style of flax examples/imagenet (`create_learning_rate_fn`); used by train.py and, for its
weight-decay mask, by pretrain_san.py.
"""

from typing import Any, Optional

import jax
import ml_collections
import optax

from sta_cnn_jax.models import is_frozen_bn_param

# Labels of optax.multi_transform under partial BN.
TRAINABLE, FROZEN = 'trainable', 'frozen'
LR_SCHEDULES = ('step', 'cosine')
OPTIMIZERS = ('sgd', 'adam')


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
