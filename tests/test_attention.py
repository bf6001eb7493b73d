"""Spatial Attention Layer (Eq. 7-8) and Weighted Spatial Pooling (Eq. 9) vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sta_cnn_jax.models import attention

N, K, M, D = 3, 4, 6, 5  # snippets, grid side, SAL channels, ACN channels
RTOL, ATOL = 1e-5, 1e-6  # float32 sums of a few dozen terms


def np_softmax(a):
  e = np.exp(a - a.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def np_sal(x, w, b):
  """Eq. 7-8 literally: a_ni = sum_m w_i^m x_ni^m + b_i over row-major locations i."""
  n, kh, kw, m = x.shape
  a = np.zeros((n, kh * kw))
  for i in range(kh * kw):
    a[:, i] = x[:, i // kw, i % kw, :] @ w[i] + b[i]
  return np_softmax(a).reshape(n, kh, kw)


def np_wsp(f, a, normalisation):
  """Eq. 9: sum_i a_i f_i (softmax) or (1/K^2) sum_i a_i f_i (paper)."""
  n, kh, kw, d = f.shape
  out = np.zeros((n, d))
  for i in range(kh * kw):
    out += a[:, i // kw, i % kw, None] * f[:, i // kw, i % kw, :]
  return out / (kh * kw) if normalisation == 'paper' else out


def sal_variables(w, b):
  return {'params': {'w': jnp.asarray(w, jnp.float32), 'bias': jnp.asarray(b, jnp.float32)}}


def test_sal_matches_numpy_eq7_eq8():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, K, K, M)).astype(np.float32)
  w = rng.normal(size=(K * K, M)).astype(np.float32)
  b = rng.normal(size=(K * K,)).astype(np.float32)
  got = attention.SpatialAttentionLayer().apply(sal_variables(w, b), x)
  assert got.shape == (N, K, K) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_sal(x, w, b), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.sum(got, axis=(1, 2)), 1.0, rtol=1e-6)


def test_sal_weights_are_per_location():
  # Identical features at every location: a shared weight vector (1x1 conv) would give a
  # uniform map; Eq. 7's per-location w_i must not.
  rng = np.random.default_rng(1)
  x = np.broadcast_to(rng.normal(size=(N, 1, 1, M)), (N, K, K, M)).astype(np.float32)
  w = rng.normal(size=(K * K, M)).astype(np.float32)
  got = np.asarray(attention.SpatialAttentionLayer().apply(sal_variables(w, np.zeros(K * K)), x))
  np.testing.assert_allclose(got, np_sal(x, w, np.zeros(K * K)), rtol=RTOL, atol=ATOL)
  assert np.ptp(got.reshape(N, -1), axis=1).min() > 1e-3


def test_sal_init_is_zero_so_map_is_uniform():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(N, K, K, M)), jnp.float32)
  sal = attention.SpatialAttentionLayer()
  variables = sal.init(jax.random.key(0), x)
  assert variables['params']['w'].shape == (K * K, M)
  assert variables['params']['bias'].shape == (K * K,)
  np.testing.assert_array_equal(variables['params']['w'], 0.0)
  np.testing.assert_allclose(sal.apply(variables, x), 1.0 / (K * K), rtol=1e-6)


def test_sal_other_grid_raises():
  sal = attention.SpatialAttentionLayer()
  variables = sal.init(jax.random.key(0), jnp.zeros((1, K, K, M)))
  with pytest.raises(ValueError, match=r'attention\.py.*16 locations.*2x2 grid'):
    sal.apply(variables, jnp.zeros((1, 2, 2, M)))


def test_sal_bfloat16_map_is_float32_and_normalised():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(N, K, K, M)), jnp.bfloat16)
  w = rng.normal(size=(K * K, M))
  got = attention.SpatialAttentionLayer(dtype=jnp.bfloat16).apply(
      sal_variables(w, np.zeros(K * K)), x)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.sum(got, axis=(1, 2)), 1.0, rtol=1e-6)
  # bf16 has 8 mantissa bits: logits carry ~1% relative error.
  np.testing.assert_allclose(got, np_sal(np.asarray(x, np.float32), w, np.zeros(K * K)),
                             rtol=0.1, atol=1e-2)


@pytest.mark.parametrize('normalisation', ['softmax', 'paper'])
def test_wsp_matches_numpy_eq9(normalisation):
  rng = np.random.default_rng(4)
  f = rng.normal(size=(N, K, K, D)).astype(np.float32)
  a = np_softmax(rng.normal(size=(N, K * K))).reshape(N, K, K).astype(np.float32)
  got = attention.weighted_spatial_pooling(f, a, normalisation)
  assert got.shape == (N, D)
  np.testing.assert_allclose(got, np_wsp(f, a, normalisation), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('k', [4, 7])
def test_uniform_map_wsp_equals_gap(k):
  f = np.random.default_rng(5).normal(size=(N, k, k, D)).astype(np.float32)
  uniform = np.full((N, k, k), 1.0 / (k * k), np.float32)
  gap = attention.global_average_pool(f)
  np.testing.assert_allclose(gap, f.mean(axis=(1, 2)), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(attention.weighted_spatial_pooling(f, uniform, 'softmax'), gap,
                             rtol=1e-6, atol=1e-7)
  # The printed form scales GAP by 1/K^2.
  np.testing.assert_allclose(attention.weighted_spatial_pooling(f, uniform, 'paper'),
                             gap / (k * k), rtol=1e-6, atol=1e-7)


def test_near_one_hot_map_picks_that_location():
  rng = np.random.default_rng(6)
  f = rng.normal(size=(N, K, K, D)).astype(np.float32)
  logits = np.zeros((N, K * K), np.float32)
  picks = [0, 5, K * K - 1]
  logits[np.arange(N), picks] = 40.0  # softmax weight elsewhere ~ 15 * e^-40
  a = jax.nn.softmax(jnp.asarray(logits), axis=-1).reshape(N, K, K)
  got = attention.weighted_spatial_pooling(f, a, 'softmax')
  want = np.stack([f[n, p // K, p % K] for n, p in enumerate(picks)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_wsp_rejects_bad_inputs():
  f = jnp.zeros((N, K, K, D))
  with pytest.raises(ValueError, match='normalisation'):
    attention.weighted_spatial_pooling(f, jnp.zeros((N, K, K)), 'mean')
  with pytest.raises(ValueError, match='does not match'):
    attention.weighted_spatial_pooling(f, jnp.zeros((N, K + 1, K + 1)))
