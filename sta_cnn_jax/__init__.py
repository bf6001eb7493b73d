"""STA-CNN in JAX/Flax.

Yang et al., "STA-CNN: Convolutional Spatial-Temporal Attention Learning for Action
Recognition", IEEE TIP 2020. See shared/DESIGN.md for the equation-to-module map.
"""

__version__ = "0.1.0"
