"""STA-CNN in JAX/Flax.

Yang et al., "STA-CNN: Convolutional Spatial-Temporal Attention Learning for Action
Recognition", IEEE TIP 2020. See docs/design.md for the equation-to-module map.
"""

from sta_cnn_jax import startup_log as _startup_log
from sta_cnn_jax import xla_defaults as _xla_defaults

_startup_log.quiet_tensorflow()  # before any module imports TensorFlow (see startup_log.py)
_startup_log.filter_tensorflow_import()  # the lines TensorFlow writes before it reads the level
_xla_defaults.apply()  # before JAX initialises a backend (see xla_defaults.py)

__version__ = "0.1.0"
