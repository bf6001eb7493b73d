"""Offline preparation of videos into TFRecord shards (RGB frames, optical flow, warped flow)."""
