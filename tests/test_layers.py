"""models/layers.py against the Flax / lax operations it replaces: same parameters, values and
gradients (up to float32 summation order), also with ties in max pooling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sta_cnn_jax.models import layers
from sta_cnn_jax.models.bn_inception import _pool_padding

RTOL = 1e-5


def _close(a, b, rtol=RTOL):
  scale = max(float(np.abs(np.asarray(b)).max()), 1e-6)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize('kernel,stride', [(1, 1), (3, 1), (3, 2), (7, 2)])
def test_conv_equals_flax_conv(kernel, stride):
  pad = ((kernel // 2, kernel // 2),) * 2
  ref = nn.Conv(5, (kernel, kernel), (stride, stride), padding=pad)
  ours = layers.Conv(5, (kernel, kernel), (stride, stride), padding=pad)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
  variables = ref.init(jax.random.PRNGKey(0), x)
  mine = ours.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(variables)
  for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
  _close(ours.apply(variables, x), ref.apply(variables, x))
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  g_ours = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
    _close(a, b)


def test_pointwise_conv_is_a_matmul_in_both_directions():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 3, 4, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((2, 3, 4, 6)), jnp.float32)
  y, vjp = jax.vjp(layers.pointwise_conv, x, w)
  xn, wn, dyn = (np.asarray(a, np.float64) for a in (x, w, dy))
  _close(y, np.einsum('nhwc,co->nhwo', xn, wn))
  dx, dw = vjp(dy)
  _close(dx, np.einsum('nhwo,co->nhwc', dyn, wn))
  _close(dw, np.einsum('nhwc,nhwo->co', xn, dyn))
  b = jnp.asarray(rng.standard_normal(6), jnp.float32)
  _, vjp = jax.vjp(layers.bias_add, y, b)
  _close(vjp(dy)[1], dyn.sum((0, 1, 2)))


@pytest.mark.parametrize('size,stride,pad', [(16, 2, 0), (7, 1, 1), (14, 2, 0), (13, 2, 0),
                                             ((13, 16), 2, 0), ((9, 6), 1, 1), ((11, 8), 3, 1)])
def test_max_pool_equals_reduce_window_with_ties(size, stride, pad):
  rng = np.random.default_rng(2)
  # ReLU-like input rounded to one decimal: many windows hold tied maxima (zeros and equal
  # values); the gradient must go to the first maximum in row-major order, as lax's.
  h, w = size if isinstance(size, tuple) else (size, size)
  x = jnp.asarray(np.maximum(rng.standard_normal((2, h, w, 3)), 0).round(1), jnp.float32)
  padding = (_pool_padding(h, stride, pad), _pool_padding(w, stride, pad))
  ref = lambda x: nn.max_pool(x, (3, 3), (stride, stride), padding)
  ours = lambda x: layers.max_pool(x, stride, padding)
  y_ref, vjp_ref = jax.vjp(ref, x)
  y, vjp = jax.vjp(ours, x)
  np.testing.assert_array_equal(y, y_ref)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  _close(vjp(dy)[0], vjp_ref(dy)[0])


def test_avg_pool_equals_flax_counting_padding():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
  ref = lambda x: nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=True)
  y_ref, vjp_ref = jax.vjp(ref, x)
  y, vjp = jax.vjp(layers.avg_pool_count_pad, x)
  _close(y, y_ref)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  _close(vjp(dy)[0], vjp_ref(dy)[0])


def _bn_input(seed, shape=(6, 5, 4, 7)):
  rng = np.random.default_rng(seed)
  # Channels with different means and spreads (a mean far from 0 tests E[x²] - E[x]²).
  x = rng.standard_normal(shape) * np.linspace(0.5, 3, shape[-1]) + np.linspace(-2, 4, shape[-1])
  return jnp.asarray(x, jnp.float32), jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _bn_params(channels):
  return {'scale': jnp.linspace(0.5, 2.0, channels), 'bias': jnp.linspace(-1.0, 1.0, channels)}


def _bn_outputs(module, variables, x, dy, train):
  """(y, new batch_stats, d/dx, d/dparams) of <y, dy> through `module`."""
  def f(x, params):
    y, state = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                            use_running_average=not train, mutable=['batch_stats'])
    return jnp.vdot(y, dy), (y, state['batch_stats'])
  (_, (y, stats)), grads = jax.value_and_grad(f, (0, 1), has_aux=True)(x, variables['params'])
  return y, stats, grads


@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_equals_flax_batch_norm(train):
  x, dy = _bn_input(4)
  ref = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  ours = layers.BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = ref.init(jax.random.PRNGKey(0), x, use_running_average=False)
  mine = ours.init(jax.random.PRNGKey(0), x, use_running_average=False)
  assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(variables)
  for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(a, b)  # same names, shapes, initial values; init updates none
  variables = {'params': _bn_params(x.shape[-1]),
               'batch_stats': {'mean': jnp.linspace(-1, 1, 7), 'var': jnp.linspace(0.5, 2, 7)}}
  got = _bn_outputs(ours, variables, x, dy, train)
  want = _bn_outputs(ref, variables, x, dy, train)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    _close(a, b, rtol=1e-5)


def test_batch_norm_training_against_numpy():
  """Training-mode forward and backward against the closed form in float64."""
  x, dy = _bn_input(5)
  params = _bn_params(x.shape[-1])
  variables = {'params': params, 'batch_stats': {'mean': jnp.zeros(7), 'var': jnp.ones(7)}}
  y, stats, (dx, dparams) = _bn_outputs(layers.BatchNorm(momentum=0.9), variables, x, dy, True)
  xn, dyn = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  gamma, beta = (np.asarray(params[k], np.float64) for k in ('scale', 'bias'))
  m = xn.size // xn.shape[-1]
  mean, var = xn.mean((0, 1, 2)), xn.var((0, 1, 2))
  inv = 1 / np.sqrt(var + 1e-5)
  xhat = (xn - mean) * inv
  _close(y, xhat * gamma + beta)
  _close(stats['mean'], 0.1 * mean)
  _close(stats['var'], 0.9 + 0.1 * var)
  sum_dy, sum_dy_xhat = dyn.sum((0, 1, 2)), (dyn * xhat).sum((0, 1, 2))
  _close(dparams['bias'], sum_dy)
  _close(dparams['scale'], sum_dy_xhat, rtol=1e-4)
  # dL/dx = γ·inv/M · (M·dy - Σdy - x̂·Σ(dy·x̂)).
  _close(dx, gamma * inv / m * (m * dyn - sum_dy - xhat * sum_dy_xhat), rtol=1e-4)


def test_synchronised_batch_norm_equals_flax_under_pmap():
  """axis_name: statistics averaged over devices and their gradient (JAX's own transpose of
  the pmean) as flax's, on every local device (8 in the suite's multi-device pass)."""
  n = jax.local_device_count()
  x, dy = _bn_input(6, (n, 4, 3, 3, 5))
  variables = {'params': _bn_params(5),
               'batch_stats': {'mean': jnp.zeros(5), 'var': jnp.ones(5)}}

  def run(module):
    step = jax.pmap(lambda x, dy: _bn_outputs(module, variables, x, dy, True), axis_name='b')
    return step(x, dy)
  got = run(layers.BatchNorm(momentum=0.9, axis_name='b'))
  want = run(nn.BatchNorm(momentum=0.9, axis_name='b'))
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    _close(a, b, rtol=1e-4)


def test_batch_norm_choice():
  assert isinstance(layers.batch_norm('matmul', momentum=0.9), layers.BatchNorm)
  assert isinstance(layers.batch_norm('reduce', momentum=0.9), nn.BatchNorm)
  with pytest.raises(ValueError, match='bn_batch_sums'):
    layers.batch_norm('sum')
