"""Losses vs NumPy: CE, Algorithm 1's masked loss (with its gradient), Eq. 4 and Eq. 10."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sta_cnn_jax import losses, temporal


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_ce(logits, labels):
  return -np.take_along_axis(np_log_softmax(logits), labels[..., None], -1)[..., 0]


def test_cross_entropy_matches_numpy():
  logits = np.random.RandomState(0).randn(5, 7).astype(np.float32)
  labels = np.array([0, 3, 6, 2, 2])
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), np_ce(logits, labels), rtol=1e-5)


def test_tam_loss_is_mean_over_selected_with_eq10_aux():
  rng = np.random.RandomState(1)
  logits, aux = rng.randn(2, 2, 6, 5).astype(np.float32)
  labels = np.array([1, 4])
  mask = np.array([[1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 1, 0]], np.float32)
  lam = 0.5
  per = np_ce(logits, labels[:, None].repeat(6, 1)) + lam * np_ce(aux, labels[:, None].repeat(6, 1))
  want = (per * mask).sum() / mask.sum()
  got = losses.tam_loss(logits, labels, mask, aux_logits=aux, aux_weight=lam)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_joint_loss_eq10():
  np.testing.assert_allclose(losses.joint_loss(jnp.array(2.0), jnp.array(3.0), 0.25), 2.75)


def test_average_consensus_matches_numpy():
  logits = np.random.RandomState(2).randn(3, 3, 4).astype(np.float32)
  labels = np.array([0, 1, 3])
  np.testing.assert_allclose(losses.average_consensus_loss(logits, labels),
                             np_ce(logits.mean(1), labels).mean(), rtol=1e-5)


def test_tam_gradient_zero_exactly_for_unselected_snippets():
  """Algorithm 1: with TAM on, unselected snippets get exactly zero gradient; selected ones do not."""
  rng = np.random.RandomState(3)
  b, n, m, d, c = 3, 3, 3, 8, 5
  x = jnp.asarray(rng.randn(b, n * m, d).astype(np.float32))
  w = jnp.asarray(rng.randn(d, c).astype(np.float32))
  labels = jnp.array([0, 2, 4])

  def loss_fn(inputs):
    logits = jnp.tanh(inputs) @ w                    # a per-snippet network
    alpha = temporal.segment_confidence(jax.lax.stop_gradient(logits))
    mask = temporal.temporal_attention_mask(alpha, 1, num_segments=n)
    return losses.tam_loss(logits, labels, mask), mask

  grads, mask = jax.grad(loss_fn, has_aux=True)(x)
  per_snippet_norm = np.abs(np.asarray(grads)).sum(-1)   # (B, S)
  mask = np.asarray(mask)
  assert mask.sum() == b * n
  assert np.all(per_snippet_norm[mask == 0] == 0.0)
  assert np.all(per_snippet_norm[mask == 1] > 0.0)


# --- Eq. 4 -------------------------------------------------------------------------------------

def np_relaxed_mse(pred, target):
  theta = np.exp(-2.0) * np.abs(target)
  return (np.maximum(np.abs(pred - target) - theta, 0.0) ** 2).sum(axis=(1, 2, 3)).mean()


def test_relaxed_flow_mse_matches_numpy_same_grid():
  rng = np.random.RandomState(4)
  target = rng.randn(2, 6, 8, 2).astype(np.float32) * 5
  pred = target + rng.randn(2, 6, 8, 2).astype(np.float32)
  np.testing.assert_allclose(losses.relaxed_flow_mse(pred, target), np_relaxed_mse(pred, target),
                             rtol=1e-5)


def test_relaxed_flow_mse_ignores_errors_below_threshold():
  target = np.full((1, 4, 4, 2), 10.0, np.float32)
  inside = target + 0.9 * np.exp(-2.0) * 10.0      # |error| < θ everywhere
  assert float(losses.relaxed_flow_mse(inside, target)) == 0.0
  outside = target + 2.0 * np.exp(-2.0) * 10.0     # excess = θ
  expected = 4 * 4 * 2 * (np.exp(-2.0) * 10.0) ** 2
  np.testing.assert_allclose(losses.relaxed_flow_mse(outside, target), expected, rtol=1e-5)


def test_resize_flow_scales_displacements():
  target = np.zeros((1, 16, 32, 2), np.float32)
  target[..., 0], target[..., 1] = 8.0, -4.0      # constant field: (8, -4) px at 32×16
  small = losses.resize_flow(jnp.asarray(target), (4, 8))
  chex.assert_shape(small, (1, 4, 8, 2))
  np.testing.assert_allclose(small[..., 0], 2.0, rtol=1e-6)    # 8 · 8/32
  np.testing.assert_allclose(small[..., 1], -1.0, rtol=1e-6)   # -4 · 4/16


def test_relaxed_flow_mse_resizes_target():
  target = np.zeros((1, 16, 16, 2), np.float32)
  target[..., 0] = 4.0
  pred = np.zeros((1, 8, 8, 2), np.float32)
  pred[..., 0] = 2.0                                  # exactly the resized target
  assert float(losses.relaxed_flow_mse(pred, target)) == pytest.approx(0.0, abs=1e-10)
  assert float(losses.relaxed_flow_mse(pred * 0, target)) > 0.0
