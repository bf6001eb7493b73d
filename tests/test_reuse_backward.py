"""temporal.tam_backward='reuse' (sta_cnn_jax/reuse_backward.py): the pullback restricted to
the selected rows equals the pullback of those rows alone, and the reuse step's loss,
gradients, selection and BN update equal the literal Algorithm 1 ('masked') on the real
STACNN under partial BN, with dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sta_cnn_jax import optim, reuse_backward, train
from tests.train_utils import (TEST_CROP, assert_grads_close, loss_and_grads_in_mode,
                               random_batch, tiny_config)

NUM_CLASSES = 3


def _per_row(w, v, x):
  """A per-row function whose residuals keep the rows in different places: merged with a
  spatial axis ((n·4, 3) @ w), transposed ((3, n·4)), on their own axis (x * v), and a
  row-free residual (w)."""
  n = x.shape[0]
  h = jnp.tanh(x.reshape(n * 4, 3) @ w)                      # (n·4, 5)
  g = jnp.sin(x.reshape(n * 4, 3).T)                          # (3, n·4)
  y = (h.reshape(n, 4, 5) * v).sum(1) + (g.T.reshape(n, 4, 3) ** 2).sum(1).sum(-1)[:, None]
  return jnp.cos(y * x.reshape(n, 12)[:, :1])                  # (n, 5)


def test_restricted_pullback_equals_the_pullback_of_the_rows():
  rng = np.random.RandomState(0)
  w, v = jnp.asarray(rng.randn(3, 5)), jnp.asarray(rng.randn(4, 5))
  x = jnp.asarray(rng.randn(7, 4, 3))
  rows = jnp.array([1, 4, 6])
  ct = jnp.asarray(rng.randn(3, 5))
  _, full = jax.vjp(_per_row, w, v, x)
  _, template = jax.vjp(_per_row, w, v, jnp.zeros((3, 4, 3)))
  got = reuse_backward.restricted_pullback(full, template, 7, rows)(ct)
  _, direct = jax.vjp(_per_row, w, v, x[rows])
  want = direct(ct)
  for g, e in zip(got, want):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
  # ... and the weights' part equals the full pullback with zero cotangents elsewhere ('masked').
  masked = full(jnp.zeros((7, 5)).at[rows].set(ct))
  for g, e in zip(got[:2], masked[:2]):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got[2], masked[2][rows], rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(got[0]).max()) > 0


def test_restricted_pullback_names_a_residual_without_a_row_axis():
  # Two axes change with the rows: no one axis holds them.
  _, full = jax.vjp(jnp.sin, jnp.ones((6, 2)))
  _, template = jax.vjp(jnp.sin, jnp.ones((4, 3)))
  with pytest.raises(ValueError, match='residual'):
    reuse_backward.restricted_pullback(full, template, 6, jnp.arange(4))


@pytest.mark.parametrize('row', ['rgb,sta_ts3x3_3x1', 'flow,tam_ts3x3_3x1'])
def test_reuse_equals_masked_on_stacnn_with_partial_bn(row):
  config = tiny_config(row=row, **{
      'model.partial_bn': True, 'model.sync_batch_norm': False, 'model.dropout_rate': 0.5,
      'aux_loss_weight': 0.5, 'num_classes': NUM_CLASSES})
  train.check_config(config)
  model = train.create_model(config, NUM_CLASSES)
  shape = train.input_shape(config)
  variables = train.initialized(jax.random.PRNGKey(0), model, shape, train=False)
  params = dict(variables['params'])
  # A non-trivial classifier so that the snippets' confidences differ.
  acn = dict(params['acn'])
  acn['fc'] = dict(acn['fc'], kernel=0.05 * jax.random.normal(
      jax.random.PRNGKey(1), acn['fc']['kernel'].shape))
  params['acn'] = acn
  state = train.TrainState.create(
      apply_fn=model.apply, params=params, batch_stats=variables['batch_stats'],
      tx=optim.create_optimizer(config, optax.constant_schedule(config.learning_rate)))
  s = config.temporal.num_segments * config.temporal.snippets_per_segment
  batch = random_batch(np.random.RandomState(2), 1, 3, s, TEST_CROP, shape[-1], NUM_CLASSES)

  loss_m, grads_m, aux_m = loss_and_grads_in_mode(config, state, batch, 'masked')
  loss_r, grads_r, aux_r = loss_and_grads_in_mode(config, state, batch, 'reuse')
  np.testing.assert_array_equal(aux_m['mask'], aux_r['mask'])
  assert 0 < float(np.mean(aux_m['mask'])) < 1
  np.testing.assert_allclose(aux_r['alpha'], aux_m['alpha'], rtol=1e-5)
  np.testing.assert_allclose(loss_r, loss_m, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(aux_r['model_state']),
                  jax.tree_util.tree_leaves(aux_m['model_state'])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  flat_m = assert_grads_close(grads_r, grads_m, rtol=1e-4, atol_scale=1e-5)
  # The first conv's gradient comes through the stem's batch statistics from every snippet.
  assert float(np.abs(flat_m['acn/conv1_7x7_s2/kernel']).max()) > 0


def test_reuse_needs_partial_bn():
  config = tiny_config(row='rgb,tam_ts3x3_3x1', **{'model.partial_bn': False,
                                                   'temporal.tam_backward': 'reuse'})
  with pytest.raises(ValueError, match='partial_bn'):
    train.check_config(config)
