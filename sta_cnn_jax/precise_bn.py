"""PreciseBN: BatchNorm population statistics recomputed after training (`config.precise_bn`).

Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", §3: the exponential moving averages that
BatchNorm keeps during training lag behind the weights, badly so when the weights move fast
(a short run from random initialisation) or batches are small. In evaluation the stale
averages then mis-scale every layer and the error compounds with depth (measured on the demo:
eval-mode logit std 19 against 1.3 in training mode on the same batch, one class predicted for
every video). PreciseBN freezes the weights and replaces each BN's running mean / variance by
the EQUAL-WEIGHT average of the batch statistics over `num_batches` training batches (the same
input pipeline and augmentation as training, continuing the data stream after the last step).

Only the BatchNorms that use batch statistics in training are recomputed: under TSN's partial
BN the frozen layers keep the (ImageNet) statistics they were trained with.

How the batch statistics are read: Flax's BatchNorm updates `ra = m * ra + (1 - m) * batch`
(m = BN momentum); applied to a zero tree, the updated value is `(1 - m) * batch`, so dividing
by (1 - m) gives each batch's mean and (biased) variance exactly, with no change to the model.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from sta_cnn_jax import input_pipeline
from sta_cnn_jax import parallel
from sta_cnn_jax.models import is_frozen_bn_param
from sta_cnn_jax.models.bn_inception import BN_MOMENTUM


def batch_statistics(apply_fn: Callable, params: Any, batch_stats: Any, frames: jnp.ndarray,
                     config: ml_collections.ConfigDict, dtype: Any = jnp.float32) -> Any:
  """Per-device: the BN batch means / variances of one batch (B, S, H, W, C_in) uint8,
  averaged over the 'batch' axis (a tree shaped like batch_stats).

  Leaves of BNs that run on running averages in training (partial BN) come back as zeros.
  """
  x = input_pipeline.normalize(frames.reshape((-1,) + frames.shape[2:]), config.modality,
                               config.input.mean, config.input.std, config.input.bgr,
                               dtype=dtype)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, batch_stats)
  _, updated = apply_fn({'params': params, 'batch_stats': zeros}, x, train=True,
                        mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)})
  stats = jax.tree_util.tree_map(lambda v: v / (1.0 - BN_MOMENTUM), updated['batch_stats'])
  return lax.pmean(stats, parallel.AXIS_NAME)


def recomputed(batch_stats: Any, mean_stats: Any, partial_bn: bool) -> Any:
  """batch_stats with every BN that trains on batch statistics replaced by `mean_stats`."""
  def pick(path, old, new):
    keep = partial_bn and is_frozen_bn_param(path)
    return old if keep else np.asarray(new, np.asarray(old).dtype)
  return jax.tree_util.tree_map_with_path(pick, batch_stats, mean_stats)


def precise_batch_stats(state: Any, config: ml_collections.ConfigDict,
                        batches: Iterator[Any], num_batches: int, mode: str,
                        dtype: Any = jnp.float32) -> Any:
  """Equal-weight average of `num_batches` batches' BN statistics (host numpy tree).

  state: the (unreplicated) train state; batches: device-placed training batches as the train
  step gets them (`loop.prefetch(input_pipeline.create_train_dataset(...))`).
  """
  step = parallel.make_parallel_step(
      functools.partial(batch_statistics, state.apply_fn, config=config, dtype=dtype), mode,
      batch_argnums=(2,), out_replicated=True, donate=False)
  params = parallel.replicate(state.params, mode)
  stats = parallel.replicate(state.batch_stats, mode)
  total = None
  for _ in tqdm.trange(num_batches, desc='precise_bn', leave=False):
    batch = next(batches)
    out = jax.device_get(parallel.unreplicate(step(params, stats, batch['frames']), mode))
    total = out if total is None else jax.tree_util.tree_map(np.add, total, out)
  mean = jax.tree_util.tree_map(lambda t: t / num_batches, total)
  return recomputed(jax.device_get(state.batch_stats), mean, config.model.partial_bn)
