"""STA-CNN models: ACN (BN-Inception), SAN + Expanded Part, SAL / WSP, the full network."""

from sta_cnn_jax.models.attention import (SpatialAttentionLayer, global_average_pool,
                                          weighted_spatial_pooling)
from sta_cnn_jax.models.bn_inception import (BNInception, cross_modality_init,
                                             is_frozen_bn_param)
from sta_cnn_jax.models.san import ExpandedPart, SpatialAttentionNetwork
from sta_cnn_jax.models.sta_cnn import (FLOW_FIELDS_PER_SNIPPET, MODALITIES,
                                        RGB_FRAMES_PER_SNIPPET, STACNN, input_channels)

__all__ = [
    'BNInception', 'ExpandedPart', 'FLOW_FIELDS_PER_SNIPPET', 'MODALITIES',
    'RGB_FRAMES_PER_SNIPPET', 'STACNN', 'SpatialAttentionLayer', 'SpatialAttentionNetwork',
    'cross_modality_init', 'global_average_pool', 'input_channels', 'is_frozen_bn_param',
    'weighted_spatial_pooling',
]
