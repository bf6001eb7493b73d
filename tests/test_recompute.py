"""temporal.tam_backward='recompute' (score all snippets without gradient, back-propagate the
selected ones) against 'masked' (the literal Algorithm 1): same loss and gradients when BN uses
running statistics, and the same accuracy after a short training run on synthetic data."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sta_cnn_jax import optim, parallel, train, train_loss
from tests.train_utils import (assert_grads_close, loss_and_grads_in_mode, random_batch,
                               standin_head, tiny_config)

NUM_CLASSES = 3
CROP = 32


class RunningStatsNet(nn.Module):
  """conv -> BN (running statistics) -> ReLU -> conv -> BN -> ReLU -> GAP -> dropout -> fc,
  STACNN's output dict. Both BNs normalise with their running averages also in training (a
  fully frozen-BN network), the case in which both backward modes must agree exactly."""
  num_classes: int
  dropout_rate: float = 0.0
  aux: bool = False

  @nn.compact
  def __call__(self, x, train: bool):  # pylint: disable=redefined-outer-name
    x = nn.relu(nn.BatchNorm(use_running_average=True, name='conv1_7x7_s2_bn')(
        nn.Conv(8, (3, 3), (2, 2), name='conv1_7x7_s2')(x[..., :3])))
    x = nn.relu(nn.BatchNorm(use_running_average=True, name='conv2_3x3_bn')(
        nn.Conv(8, (3, 3), (2, 2), name='conv2_3x3')(x)))
    return standin_head(x, self.num_classes, self.dropout_rate, self.aux, train)


def _state(config, model, seed=1):
  variables = train.initialized(jax.random.PRNGKey(seed), model, (CROP, CROP, 6), train=False)
  params = dict(variables['params'])
  # A non-trivial classifier so that the snippets' confidences differ.
  params['fc'] = dict(params['fc'], kernel=jax.random.normal(
      jax.random.PRNGKey(seed + 1), params['fc']['kernel'].shape))
  batch_stats = jax.tree_util.tree_map(lambda v: v + 0.1, variables['batch_stats'])
  return train.TrainState.create(
      apply_fn=model.apply, params=params, batch_stats=batch_stats,
      tx=optim.create_optimizer(config, optax.constant_schedule(config.learning_rate)))


@pytest.mark.parametrize('row,aux', [('tam_ts3x3_3x1', False), ('tam_ts3x3_3x2', False),
                                     ('tam_ts9_3', True)])
def test_recompute_equals_masked_with_running_statistics(row, aux):
  config = tiny_config(row='rgb,' + row, **{'aux_loss_weight': 0.5})
  model = RunningStatsNet(NUM_CLASSES, aux=aux)
  state = _state(config, model)
  s = config.temporal.num_segments * config.temporal.snippets_per_segment
  batch = random_batch(np.random.RandomState(0), 1, 4, s, CROP, 6, NUM_CLASSES)
  loss_m, grads_m, aux_m = loss_and_grads_in_mode(config, state, batch, 'masked')
  loss_r, grads_r, aux_r = loss_and_grads_in_mode(config, state, batch, 'recompute')
  # The selection is the same, and it is a real selection (not every snippet).
  np.testing.assert_array_equal(aux_m['mask'], aux_r['mask'])
  assert 0 < float(np.mean(aux_m['mask'])) < 1
  np.testing.assert_allclose(aux_m['logits'], aux_r['logits'], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(loss_r, loss_m, rtol=1e-6)
  assert_grads_close(grads_r, grads_m, rtol=1e-5, atol_scale=1e-6)


def test_selected_indices_are_the_mask_positions():
  mask = jnp.array([[0, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1]], jnp.float32)
  np.testing.assert_array_equal(train_loss.selected_indices(mask, 2), [[1, 3], [0, 5]])
  config = tiny_config(row='rgb,tam_ts3x3_3x2')
  assert train_loss.num_selected(config) == 6
  assert train_loss.num_selected(tiny_config(row='rgb,tam_ts9_3')) == 3


def _synthetic_batch(rng, videos, snippets, informative=1):
  """Class c = a bright patch in colour channel c, present in `informative` random snippets
  of each segment of 3; the other snippets are noise (what the temporal attention skips)."""
  labels = rng.randint(0, NUM_CLASSES, videos)
  frames = rng.randint(0, 96, (videos, snippets, CROP, CROP, 6)).astype(np.uint8)
  group = snippets // 3 if snippets >= 3 else 1
  for v, c in enumerate(labels):
    for g in range(snippets // group):
      for s in rng.choice(group, informative, replace=False):
        frames[v, g * group + s, 8:24, 8:24, c] = 255
  return {'frames': frames[None], 'label': labels[None].astype(np.int32)}


def _train(mode, steps=40):
  config = tiny_config(row='rgb,tam_ts3x3_3x1', **{
      'learning_rate': 0.05, 'weight_decay': 0.0, 'model.partial_bn': False,
      'temporal.tam_backward': mode, 'input.std': (64.0, 64.0, 64.0)})
  model = RunningStatsNet(NUM_CLASSES, dropout_rate=0.0)
  variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, CROP, CROP, 6)), train=False)
  state = train.TrainState.create(
      apply_fn=model.apply, params=variables['params'], batch_stats=variables['batch_stats'],
      tx=optim.create_optimizer(config, optax.constant_schedule(config.learning_rate)))
  one = [jax.devices()[0]]
  step = parallel.make_parallel_step(functools.partial(train.train_step, config=config),
                                     'pmap', out_replicated=True, devices=one)
  p_state = parallel.replicate(state, 'pmap', one)
  p_rng = parallel.replicate(jax.random.PRNGKey(0), 'pmap', one)
  rng = np.random.RandomState(0)
  for _ in range(steps):
    p_state, _ = step(p_state, _synthetic_batch(rng, 6, 9), p_rng)
  final = parallel.unreplicate(p_state, 'pmap')
  test = _synthetic_batch(np.random.RandomState(1), 60, 9)
  b, s = test['frames'].shape[1:3]
  x = train.normalize_batch(jnp.asarray(test['frames'][0]).reshape((b * s, CROP, CROP, 6)),
                            config)
  out = model.apply({'params': final.params, 'batch_stats': final.batch_stats}, x, train=False)
  probs = jax.nn.softmax(out['logits']).reshape(b, s, -1).mean(1)
  return float(np.mean(np.argmax(probs, -1) == test['label'][0]))


def test_recompute_trains_to_the_same_accuracy():
  untrained = _train('masked', steps=0)
  masked, recompute = _train('masked'), _train('recompute')
  assert untrained <= 0.6, untrained  # chance is 1/3: the runs did learn
  assert masked >= 0.9, masked
  assert recompute >= 0.9, recompute
  assert abs(masked - recompute) <= 0.05, (masked, recompute)


def test_recompute_selects_what_masked_selects_with_dropout():
  # Same dropout key in the scoring pass: α, β and the metrics' logits equal masked's.
  config = tiny_config(row='rgb,tam_ts3x3_3x1')
  state = _state(config, RunningStatsNet(NUM_CLASSES, dropout_rate=0.5))
  batch = random_batch(np.random.RandomState(4), 1, 4, 9, CROP, 6, NUM_CLASSES)
  _, _, aux_m = loss_and_grads_in_mode(config, state, batch, 'masked')
  _, _, aux_r = loss_and_grads_in_mode(config, state, batch, 'recompute')
  np.testing.assert_array_equal(aux_m['mask'], aux_r['mask'])
  np.testing.assert_allclose(aux_m['alpha'], aux_r['alpha'], rtol=1e-6)
