"""Spatial Attention Layer (Eq. 7-8) and Weighted Spatial Pooling (Eq. 9), paper §3.2.3-3.2.4.

Features are NHWC (N, K, K, D); the K x K grid is flattened row-major into K^2 locations
i = 1..K^2, the order of X_n = [x_n1, ..., x_nK^2] in the paper.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any

# Eq. 9 variants: 'softmax' = sum_i a_i f_i (uniform map == GAP),
# 'paper' = (1/K^2) sum_i a_i f_i as printed.
WSP_NORMALISATIONS = ('softmax', 'paper')
# Eq. 7 weights: 'per_location' = one w_i per location as printed; 'shared' = one w for every
# location (a 1x1 conv: what is learnt about the object at one place applies everywhere).
SAL_WEIGHTS = ('per_location', 'shared')
# Features entering Eq. 7: 'none' as printed; 'layer_norm' = each location's feature vector
# standardised over its M channels (zero mean, unit variance, no parameters), so the
# logits' scale does not depend on the SAN features' scale (which shrinks during flow
# pre-training) and the map can leave uniform at a normal learning rate.
SAL_NORMALISATIONS = ('none', 'layer_norm')
SAL_NORM_EPSILON = 1e-5


def global_average_pool(features: Array) -> Array:
  """GAP over the grid: (N, K, K, D) -> (N, D)."""
  return jnp.mean(features, axis=(1, 2))


def weighted_spatial_pooling(features: Array, attention: Array,
                             normalisation: str = 'softmax') -> Array:
  """Eq. 9: pools (N, K, K, D) features with a (N, K, K) attention map -> (N, D).

  'softmax': f = sum_i a_i f_i  (the map sums to 1, so a uniform map is exactly GAP).
  'paper':   f = (1/K^2) sum_i a_i f_i, as printed in Eq. 9.
  Computed in the promoted dtype of the two inputs (float32 for a float32 map).
  """
  if normalisation not in WSP_NORMALISATIONS:
    raise ValueError(f'attention.py: wsp normalisation {normalisation!r} is not one of '
                     f'{WSP_NORMALISATIONS}')
  if attention.shape != features.shape[:3]:
    raise ValueError(f'attention.py: attention map {attention.shape} does not match the '
                     f'feature grid {features.shape[:3]} (N, K, K)')
  pooled = jnp.einsum('nhwd,nhw->nd', features, attention)  # (N, D)
  if normalisation == 'paper':
    pooled = pooled / (features.shape[1] * features.shape[2])
  return pooled


class SpatialAttentionLayer(nn.Module):
  """SAL, Eq. 7-8: one weight vector per location, softmax over the K^2 locations.

  a_i = <w_i, x_i> + b_i (Eq. 7; a per-location bias b_i, which the paper neither prints nor excludes),
  A = softmax_i(a) (Eq. 8). Parameters: 'w' (K^2, M) and 'bias' (K^2,); K is inferred from
  the features at init, and applying the layer to another grid raises ValueError.

  Both are initialised to zero: the map is then uniform, so Weighted Spatial Pooling starts
  out identical to TSN's global average pooling (the ImageNet-initialised classifier sees
  the same input), while d a_i / d w_i = x_i is non-zero, so the weights still learn.

  Named deviations from the printed form (both off by default, see SAL_WEIGHTS and
  SAL_NORMALISATIONS): `weights='shared'` learns one w (shape (1, M)) for all locations, and
  `normalisation='layer_norm'` standardises each x_i over its channels before Eq. 7.

  Input (N, K, K, M) -> map (N, K, K), float32 (softmax in float32 also under bf16).
  """
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  weights: str = 'per_location'
  normalisation: str = 'none'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.weights not in SAL_WEIGHTS or self.normalisation not in SAL_NORMALISATIONS:
      raise ValueError(f'attention.py: SAL weights={self.weights!r} / normalisation='
                       f'{self.normalisation!r}; expected one of {SAL_WEIGHTS} / '
                       f'{SAL_NORMALISATIONS}')
    n, kh, kw, m = x.shape
    locations = kh * kw
    rows = locations if self.weights == 'per_location' else 1
    if self.has_variable('params', 'w'):
      expected = self.get_variable('params', 'w').shape
      if expected != (rows, m):
        raise ValueError(
            f'attention.py: SpatialAttentionLayer has weights for {expected[0]} locations x '
            f'{expected[1]} channels but got features on a {kh}x{kw} grid x {m} channels; '
            'the input size must stay the one the model was initialised with.')
    w = self.param('w', nn.initializers.zeros, (rows, m), self.param_dtype)
    b = self.param('bias', nn.initializers.zeros, (locations,), self.param_dtype)
    x_flat = jnp.reshape(x, (n, locations, m)).astype(self.dtype)  # (N, K^2, M)
    if self.normalisation == 'layer_norm':
      x_flat = x_flat.astype(jnp.float32)
      mean = jnp.mean(x_flat, axis=-1, keepdims=True)
      var = jnp.var(x_flat, axis=-1, keepdims=True)
      x_flat = ((x_flat - mean) * jax.lax.rsqrt(var + SAL_NORM_EPSILON)).astype(self.dtype)
    w = jnp.broadcast_to(w, (locations, m)).astype(self.dtype)
    logits = jnp.einsum('nlm,lm->nl', x_flat, w)  # Eq. 7, (N, K^2)
    logits = logits.astype(jnp.float32) + b.astype(jnp.float32)
    return jnp.reshape(jax.nn.softmax(logits, axis=-1), (n, kh, kw))  # Eq. 8
