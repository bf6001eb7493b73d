"""Temporal attention (Eq. 1–2, Algorithm 1's two segment strategies) and DCW (Eq. 11) vs NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sta_cnn_jax import temporal


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_entropy(p):
  with np.errstate(divide="ignore", invalid="ignore"):
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)


def np_confidence(p):
  return 1.0 / np.maximum(np_entropy(p), temporal.MIN_ENTROPY)


def np_topn_mask_flat(alpha, top_n):
  """Reference β: stable sort descending (ties keep the earlier index), first top_n set to 1."""
  mask = np.zeros_like(alpha)
  for idx in np.ndindex(alpha.shape[:-1]):
    order = sorted(range(alpha.shape[-1]), key=lambda s: (-alpha[idx][s], s))
    mask[idx][order[:top_n]] = 1.0
  return mask


def np_topn_mask(alpha, top_n, num_segments=None):
  if num_segments is None:
    return np_topn_mask_flat(alpha, top_n)
  n = num_segments
  m = alpha.shape[-1] // n
  grouped = alpha.reshape(alpha.shape[:-1] + (n, m))
  return np_topn_mask_flat(grouped, top_n).reshape(alpha.shape)


class TestSegmentConfidence:

  def test_matches_numpy_eq1_eq2(self):
    logits = np.random.RandomState(0).randn(4, 9, 11).astype(np.float32) * 3
    alpha = temporal.segment_confidence(jnp.asarray(logits))
    chex.assert_shape(alpha, (4, 9))
    np.testing.assert_allclose(alpha, np_confidence(np_softmax(logits.astype(np.float64))),
                               rtol=1e-5)

  def test_uniform_prediction_has_confidence_one_over_log_c(self):
    num_classes = 101
    alpha = temporal.segment_confidence(jnp.zeros((3, num_classes)))
    np.testing.assert_allclose(alpha, np.full(3, 1.0 / np.log(num_classes)), rtol=1e-6)

  def test_near_one_hot_is_finite_and_most_confident(self):
    logits = np.zeros((3, 5), np.float32)
    logits[0, 2] = 1e4     # p is one-hot in float32: H = 0 exactly → capped
    logits[1, 2] = 8.0     # confident but not one-hot
    alpha = np.asarray(temporal.segment_confidence(jnp.asarray(logits)))
    assert np.all(np.isfinite(alpha))
    assert alpha[0] == pytest.approx(1.0 / temporal.MIN_ENTROPY)
    assert alpha[0] > alpha[1] > alpha[2]
    np.testing.assert_allclose(alpha[1], np_confidence(np_softmax(logits[1].astype(np.float64))),
                               rtol=1e-4)

  def test_gradient_is_finite_for_one_hot(self):
    grad = jax.grad(lambda x: temporal.segment_confidence(x).sum())(
        jnp.array([[1e4, 0.0, 0.0], [1.0, 2.0, 3.0]]))
    assert np.all(np.isfinite(grad))

  def test_from_probs_agrees_with_from_logits(self):
    logits = np.random.RandomState(1).randn(6, 7).astype(np.float32)
    np.testing.assert_allclose(temporal.confidence_from_probs(jax.nn.softmax(logits)),
                               temporal.segment_confidence(logits), rtol=1e-5)


class TestTemporalAttentionMask:

  @pytest.mark.parametrize("num_snippets,top_n", [(3, 1), (6, 1), (9, 1), (9, 3), (9, 6), (9, 9)])
  def test_ts_n_topn_matches_numpy(self, num_snippets, top_n):
    alpha = np.random.RandomState(num_snippets + top_n).rand(5, num_snippets).astype(np.float32)
    mask = temporal.temporal_attention_mask(jnp.asarray(alpha), top_n)
    np.testing.assert_array_equal(mask, np_topn_mask(alpha, top_n))
    np.testing.assert_array_equal(np.asarray(mask).sum(-1), top_n)

  @pytest.mark.parametrize("top_m", [1, 2, 3])
  def test_ts_nxm_topm_inside_each_segment(self, top_m):
    n, m = 3, 3
    alpha = np.random.RandomState(top_m).rand(4, n * m).astype(np.float32)
    mask = np.asarray(temporal.temporal_attention_mask(jnp.asarray(alpha), top_m, num_segments=n))
    np.testing.assert_array_equal(mask, np_topn_mask(alpha, top_m, num_segments=n))
    np.testing.assert_array_equal(mask.reshape(4, n, m).sum(-1), top_m)

  def test_segment_strategy_differs_from_global(self):
    # All the confidence sits in segment 0: TS(9,3) picks all three there, TS(3×3,3×1) one per segment.
    alpha = np.array([[9.0, 8.0, 7.0, 1.0, 0.5, 0.2, 0.3, 0.1, 0.6]], np.float32)
    glob = temporal.temporal_attention_mask(alpha, 3)
    seg = temporal.temporal_attention_mask(alpha, 1, num_segments=3)
    np.testing.assert_array_equal(glob, [[1, 1, 1, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(seg, [[1, 0, 0, 1, 0, 0, 0, 0, 1]])

  def test_uniform_ties_keep_earliest(self):
    mask = temporal.temporal_attention_mask(jnp.ones((2, 6)), 2, num_segments=2)
    np.testing.assert_array_equal(mask, [[1, 1, 0, 1, 1, 0]] * 2)

  def test_under_jit_and_no_gradient(self):
    alpha = jnp.array([[0.3, 0.9, 0.1]])
    grad = jax.grad(lambda a: jnp.sum(jax.jit(
        temporal.temporal_attention_mask, static_argnums=1)(a, 1) * a))(alpha)
    # d/da Σ β a = β (β itself has no gradient).
    np.testing.assert_array_equal(grad, [[0.0, 1.0, 0.0]])

  def test_bad_arguments(self):
    with pytest.raises(ValueError, match="divide"):
      temporal.temporal_attention_mask(jnp.ones((1, 9)), 1, num_segments=2)
    with pytest.raises(ValueError, match="top_n"):
      temporal.temporal_attention_mask(jnp.ones((1, 9)), 4, num_segments=3)


class TestDCW:

  def test_eq11_matches_numpy(self):
    rng = np.random.RandomState(3)
    probs = np_softmax(rng.randn(2, 25, 10) * rng.rand(2, 25, 1) * 4).astype(np.float32)
    got = temporal.dcw_predict(jnp.asarray(probs), top_k=15)
    alpha = np_confidence(probs.astype(np.float64))
    beta = np_topn_mask(alpha, 15)
    want = np.einsum("bs,bsc->bc", beta * alpha, probs)
    np.testing.assert_allclose(got, want, rtol=1e-5)

  def test_ave_is_mean(self):
    probs = np_softmax(np.random.RandomState(4).randn(3, 25, 5)).astype(np.float32)
    np.testing.assert_allclose(temporal.ave_predict(probs), probs.mean(1), rtol=1e-6)

  def test_dcw_ignores_confused_segments(self):
    # 5 confident segments say class 1; 20 uncertain segments lean to class 0. AVE is outvoted by
    # the many uncertain segments; DCW weights the confident ones by α = 1/H.
    confident = np.tile([0.02, 0.96, 0.02], (5, 1))
    confused = np.tile([0.70, 0.15, 0.15], (20, 1))
    probs = np.concatenate([confused, confident])[None].astype(np.float32)
    assert int(np.argmax(temporal.ave_predict(probs))) == 0
    assert int(np.argmax(temporal.dcw_predict(probs, top_k=15))) == 1

  def test_all_uniform_dcw_equals_scaled_ave(self):
    probs = np.full((1, 25, 4), 0.25, np.float32)
    dcw = temporal.dcw_predict(probs, 15)
    np.testing.assert_allclose(dcw, 15 / np.log(4) * probs.mean(1), rtol=1e-5)

  def test_top_k_clipped_to_segments(self):
    probs = np_softmax(np.random.RandomState(5).randn(1, 4, 3)).astype(np.float32)
    alpha = np_confidence(probs.astype(np.float64))
    want = np.einsum("bs,bsc->bc", alpha, probs)
    np.testing.assert_allclose(temporal.dcw_predict(probs, 15), want, rtol=1e-5)
