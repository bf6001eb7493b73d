"""Offline preparation of videos into TFRecord shards (RGB frames, optical flow, warped flow)."""

from sta_cnn_jax import startup_log as _startup_log

_startup_log.quiet_tensorflow()  # before any module imports TensorFlow (see startup_log.py)
_startup_log.filter_tensorflow_import()  # the lines TensorFlow writes before it reads the level
