"""Temporal Attention Mechanism (paper §3.1) and test-time weighting (§4.1, Eq. 11).

Shapes: S snippets per video (S = N for TS(N, top_n); S = N * M for TS(N×M, N×top_m), ordered
segment-major: snippet s = n * M + m), C classes.

- `segment_confidence`   Eq. 1–2: α = 1 / H(softmax(logits)), one value per snippet.
- `temporal_attention_mask`  hard top-k selection β (Algorithm 1, both segment strategies).
- `dcw_predict`          Eq. 11: Σ β α p over the top-k most confident segments.
- `ave_predict`          the usual average of segment predictions (TSN).
"""

from typing import Optional

import jax
import jax.numpy as jnp

# Entropy floor for α = 1/H (Eq. 1). A one-hot prediction has H = 0 (α = ∞); we cap α at 1/MIN_ENTROPY
# so α stays finite and ordering among confident snippets is kept down to this resolution.
MIN_ENTROPY = 1e-6

# Eq. 11: the paper scores 25 test segments and keeps the 15 most confident.
DCW_TOP_K = 15


def _entropy_from_log_probs(log_probs: jnp.ndarray) -> jnp.ndarray:
  """H = -Σ_c p_c log p_c for one distribution `(C,)` given as log-probabilities (Eq. 2).

  Terms with p_c = 0 contribute 0 (the limit of p log p), also when log p_c = -inf.
  """
  probs = jnp.exp(log_probs)
  terms = jnp.where(probs > 0, probs * log_probs, 0.0)
  return -jnp.sum(terms, axis=-1)


def _vmap_over_snippets(fn, x: jnp.ndarray) -> jnp.ndarray:
  """Applies `fn: (C,) -> ()` to every snippet of `x` `(..., C)` under `jax.vmap`; returns `(...)`."""
  lead = x.shape[:-1]
  flat = x.reshape((-1, x.shape[-1]))
  return jax.vmap(fn)(flat).reshape(lead)


def _confidence(entropy: jnp.ndarray) -> jnp.ndarray:
  """α = 1 / H (Eq. 1), with H floored at MIN_ENTROPY so near-one-hot predictions stay finite."""
  return 1.0 / jnp.maximum(entropy, MIN_ENTROPY)


def segment_confidence(logits: jnp.ndarray) -> jnp.ndarray:
  """Discriminative confidence α of each snippet from its logits (Eq. 1–2).

  Args:
    logits: `(..., C)` unnormalised class scores, one row per snippet.

  Returns:
    α `(...)`: 1 / H(p) with p = softmax(logits) over the last axis, computed per snippet under
    `jax.vmap`; finite for H → 0 (see MIN_ENTROPY).
  """
  def one(snippet_logits):
    return _confidence(_entropy_from_log_probs(jax.nn.log_softmax(snippet_logits)))
  return _vmap_over_snippets(one, logits.astype(jnp.float32))


def confidence_from_probs(probs: jnp.ndarray) -> jnp.ndarray:
  """α = 1 / H(p) (Eq. 1–2) from probabilities `(..., C)` (e.g. crop-averaged softmax scores)."""
  def one(p):
    log_p = jnp.log(jnp.where(p > 0, p, 1.0))
    return _confidence(-jnp.sum(jnp.where(p > 0, p * log_p, 0.0)))
  return _vmap_over_snippets(one, probs.astype(jnp.float32))


def temporal_attention_mask(alpha: jnp.ndarray, top_n: int,
                            num_segments: Optional[int] = None) -> jnp.ndarray:
  """Hard temporal attention β (Algorithm 1): 1 for the most confident snippets, else 0.

  Args:
    alpha: `(..., S)` discriminative confidences.
    top_n: how many snippets to keep: of all S (TS(S, top_n)), or of each segment (TS(N×M, N×top_m)).
    num_segments: None for TS(S, top_n). N for TS(N×M, N×top_m): the last axis holds N contiguous
      groups of M = S / N snippets and top_n is chosen inside each group.

  Returns:
    `(..., S)` 0/1 mask, dtype of alpha, with no gradient. Ties keep the earlier snippet.
  """
  num_snippets = alpha.shape[-1]
  groups = 1 if num_segments is None else int(num_segments)
  if groups <= 0 or num_snippets % groups:
    raise ValueError(f"num_segments={num_segments} must divide the number of snippets {num_snippets}")
  per_group = num_snippets // groups
  if not 1 <= top_n <= per_group:
    raise ValueError(f"top_n={top_n} must be in [1, {per_group}] (snippets per "
                     f"{'segment' if num_segments else 'video'})")
  grouped = jax.lax.stop_gradient(alpha).reshape(alpha.shape[:-1] + (groups, per_group))
  _, top_idx = jax.lax.top_k(grouped, top_n)                       # (..., N, top_n)
  mask = jax.nn.one_hot(top_idx, per_group, dtype=alpha.dtype).sum(axis=-2)  # (..., N, M)
  return mask.reshape(alpha.shape)


def dcw_predict(probs: jnp.ndarray, top_k: int = DCW_TOP_K) -> jnp.ndarray:
  """Discriminative Confidence Weighted prediction (Eq. 11): p_dcw = Σ_n β_n α_n p(s_n).

  Args:
    probs: `(..., S, C)` per-segment class probabilities (for the 10-crop protocol: crop-averaged).
    top_k: β keeps the top_k most confident segments; clipped to S when a video has fewer.

  Returns:
    `(..., C)` unnormalised scores as printed in Eq. 11 (argmax = the prediction). Divide by their
    sum for a distribution (e.g. before fusing streams).
  """
  alpha = confidence_from_probs(probs)                               # (..., S)
  beta = temporal_attention_mask(alpha, min(top_k, probs.shape[-2]))
  return jnp.einsum("...s,...sc->...c", beta * alpha, probs.astype(jnp.float32))


def ave_predict(probs: jnp.ndarray) -> jnp.ndarray:
  """Average of segment predictions `(..., S, C) -> (..., C)` (TSN's test-time consensus, 'AVE')."""
  return jnp.mean(probs.astype(jnp.float32), axis=-2)
