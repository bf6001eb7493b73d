"""STA-CNN per-snippet network: ACN + Spatial Attention Mechanism (paper §3.2, Fig. 3).

One stream (RGB, flow or warped flow) applied to a flat batch of snippets. The Temporal
Attention Mechanism (Eq. 1-2, 11) works on this network's per-snippet logits and lives in
`sta_cnn_jax.temporal`.

RGB stream: the ACN (BN-Inception) sees the first frame x[..., :3]; the SAN sees both
frames (6 channels) and yields its /32 features, the flow prediction of the Expanded Part
(Eq. 3) and, through the SAL (Eq. 7-8), the attention map used by WSP (Eq. 9) on the ACN
features. The auxiliary head `aux_fc` (Eq. 5-6) is GAP(SAN features) -> dense.
Flow / warped-flow streams: no separate SAN (docs/design.md, "Interpretations"): the SAL and the
auxiliary head read the ACN's own last features, so they cost almost nothing extra.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sta_cnn_jax import modalities
from sta_cnn_jax.models.attention import (WSP_NORMALISATIONS, SpatialAttentionLayer,
                                          global_average_pool, weighted_spatial_pooling)
from sta_cnn_jax.models.bn_inception import FC_INIT_STD, BNInception
from sta_cnn_jax.models.san import SpatialAttentionNetwork

Array = Any

# Snippet layout (modalities.py): an RGB snippet is 2 consecutive frames (the ACN sees the
# first, the SAN both); a flow snippet is 5 consecutive fields, x/y interleaved (TSN).
MODALITIES = modalities.MODALITIES
RGB_FRAMES_PER_SNIPPET = modalities.RGB_FRAMES_PER_SNIPPET
FLOW_FIELDS_PER_SNIPPET = modalities.FLOW_FRAMES_PER_SNIPPET
RGB_CHANNELS = modalities.RGB_CHANNELS
input_channels = modalities.input_channels


class STACNN(nn.Module):
  """STA-CNN for one stream. See module doc; docs/design.md, "Equations → modules".

  Attributes:
    num_classes: C.
    modality: 'rgb', 'flow' or 'warpflow'.
    spatial_attention: SAL + WSP (else TSN's global average pooling).
    aux_classifier: auxiliary GAP classifier `aux_fc` (Eq. 5-6); needs spatial_attention.
    dropout_rate: dropout before the classifier (TSN: 0.8 RGB, 0.7 flow).
    partial_bn: TSN partial BN in the ACN (see BNInception).
    san_widths: the SAN's ten conv widths (None = FlowNetS).
    wsp_normalisation: Eq. 9 variant, 'softmax' (uniform map == GAP) or 'paper' (1/K^2).
    sal_weights, sal_normalisation: Eq. 7 variants (attention.SAL_WEIGHTS,
      attention.SAL_NORMALISATIONS); the defaults are the printed form.
    width_multiplier: the ACN's conv widths x this (1.0 = BN-Inception; miniature only).
    fc_init_std: init std of the classifiers `fc` and `aux_fc` (TSN: 0.001).
    dtype: compute dtype (e.g. jnp.bfloat16); params and BN statistics stay float32.
    bn_axis_name: BatchNorm axis name for synchronized statistics (e.g. 'batch').
    bn_batch_sums: how the ACN's training-mode BNs sum over the batch (BNInception).
  """
  num_classes: int
  modality: str = 'rgb'
  spatial_attention: bool = True
  aux_classifier: bool = True
  dropout_rate: float = 0.8
  partial_bn: bool = True
  san_widths: Sequence[int] | None = None
  wsp_normalisation: str = 'softmax'
  sal_weights: str = 'per_location'
  sal_normalisation: str = 'none'
  width_multiplier: float = 1.0
  fc_init_std: float = FC_INIT_STD
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  param_dtype: Any = jnp.float32
  bn_batch_sums: str = 'matmul'

  def _check(self, x: Array) -> None:
    expected = input_channels(self.modality)
    if self.wsp_normalisation not in WSP_NORMALISATIONS:
      raise ValueError(f'sta_cnn.py: wsp_normalisation {self.wsp_normalisation!r} is not '
                       f'one of {WSP_NORMALISATIONS}')
    if self.aux_classifier and not self.spatial_attention:
      raise ValueError('sta_cnn.py: aux_classifier=True needs spatial_attention=True (the '
                       'auxiliary head belongs to the Spatial Attention Mechanism).')
    if x.ndim != 4 or x.shape[-1] != expected:
      raise ValueError(f'sta_cnn.py: {self.modality} snippets must be (N, H, W, {expected}), '
                       f'got {x.shape}')

  def _dense(self, name: str) -> nn.Dense:
    # Classifier init of TSN: N(0, 0.001), bias 0.
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.normal(self.fc_init_std),
                    bias_init=nn.initializers.zeros, name=name)

  @nn.compact
  def __call__(self, x: Array, train: bool) -> dict[str, Array | None]:
    """x: (N, H, W, C_in) normalised snippets, H and W multiples of 32.

    Returns {'logits' (N, C), 'aux_logits' (N, C) | None, 'attention' (N, K, K) | None,
    'flow' (N, H/2, W/2, 2) | None, 'features' (N, K, K, D)} with D = 1024 x width_multiplier,
    all float32. Unused
    outputs (e.g. 'flow' outside SAN pre-training) are removed by XLA under jit.
    """
    self._check(x)
    rgb = self.modality == 'rgb'
    acn = BNInception(self.num_classes, self.dropout_rate, self.partial_bn,
                      self.bn_axis_name, self.dtype, self.param_dtype,
                      width_multiplier=self.width_multiplier, fc_init_std=self.fc_init_std,
                      bn_batch_sums=self.bn_batch_sums, name='acn')
    features = acn.features(x[..., :RGB_CHANNELS] if rgb else x, train)  # (N, K, K, D)

    attention = aux_logits = flow = None
    if self.spatial_attention:
      if rgb:
        san = SpatialAttentionNetwork(self.san_widths, dtype=self.dtype,
                                      param_dtype=self.param_dtype, name='san')
        san_features, flow = san(x)  # (N, K, K, C_san), (N, H/2, W/2, 2)
        if san_features.shape[1:3] != features.shape[1:3]:
          raise ValueError(f'sta_cnn.py: SAN grid {san_features.shape[1:3]} differs from '
                           f'the ACN grid {features.shape[1:3]}')
      else:
        san_features = features  # flow streams: the ACN is its own SAN
      attention = SpatialAttentionLayer(self.dtype, self.param_dtype, self.sal_weights,
                                        self.sal_normalisation,
                                        name='sal')(san_features)  # (N, K, K)
      pooled = weighted_spatial_pooling(features, attention, self.wsp_normalisation)
      if self.aux_classifier:
        aux_logits = self._dense('aux_fc')(global_average_pool(san_features))  # Eq. 5
    else:
      pooled = global_average_pool(features)
    logits = acn.classify(pooled, train)

    as_f32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)
    return {'logits': as_f32(logits), 'aux_logits': as_f32(aux_logits),
            'attention': as_f32(attention), 'flow': as_f32(flow),
            'features': as_f32(features)}
