"""Optical flow on the accelerator (TV-L1 in JAX)."""
