r"""BatchNorm's per-channel batch sums on XLA:CPU: reductions against ones-vector matmuls.

    python -m benchmarks.batch_sums [--batch=12] [--reps=15]

One JSON line per activation shape of BN-Inception at 224 px (conv1's 112² x 64 first; under
TSN partial BN it is the only BN that trains) and of the miniature (configs/demo.py, 96 px,
width 0.25): the milliseconds of the two sums a training-mode BN takes in each direction
(forward Σx and Σx², backward Σdy and Σdy·x) written as `jnp.sum` over (N, H, W), which
XLA:CPU turns into trees of reduce-windows, and as `models.layers.channel_sum` (a (1, N·H·W)
ones vector times the (N·H·W, C) activations), and the whole training-mode BN forward + VJP
of flax.linen.BatchNorm against `models.layers.BatchNorm`. Medians of --reps calls after one
warm-up; ratios within one line are measured in the same process, minutes apart at most.
"""

from __future__ import annotations

import argparse
import os
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from sta_cnn_jax.models import layers

# (label, H = W, C) of BN inputs: the full network at 224 px, then the miniature at 96 px.
SHAPES = (('conv1 224px', 112, 64), ('conv2 224px', 56, 192), ('inception_3 224px', 28, 256),
          ('inception_5 224px', 7, 1024), ('conv1 miniature', 48, 16),
          ('inception_3 miniature', 12, 64))


def _median_ms(fn, args, reps: int) -> float:
  times = common.time_calls(lambda: jax.block_until_ready(fn(*args)), reps, warmup=1)
  return round(1e3 * statistics.median(times), 3)


def _bn_step(module: nn.Module):
  """jit of a training-mode BN's output, new statistics and gradients for a cotangent dy."""
  def run(variables, x, dy):
    def f(x, params):
      y, state = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              use_running_average=False, mutable=['batch_stats'])
      return jnp.vdot(y, dy), state
    return jax.grad(f, (0, 1), has_aux=True)(x, variables['params'])
  return jax.jit(run)


def measure(label: str, size: int, channels: int, batch: int, reps: int) -> dict:
  rng = np.random.default_rng(0)
  shape = (batch, size, size, channels)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  dy = jnp.asarray(rng.standard_normal(shape, np.float32))
  axes = (0, 1, 2)
  reduce_fwd = jax.jit(lambda x: (jnp.sum(x, axes), jnp.sum(x * x, axes)))
  matmul_fwd = jax.jit(lambda x: (layers.channel_sum(x), layers.channel_sum(x * x)))
  reduce_bwd = jax.jit(lambda x, dy: (jnp.sum(dy, axes), jnp.sum(dy * x, axes)))
  matmul_bwd = jax.jit(lambda x, dy: (layers.channel_sum(dy), layers.channel_sum(dy * x)))
  for want, got in ((reduce_fwd(x), matmul_fwd(x)), (reduce_bwd(x, dy), matmul_bwd(x, dy))):
    for a, b in zip(want, got):  # the same sums, or the timings compare different work
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4,
                                 atol=1e-4 * float(np.abs(np.asarray(a)).max()))
  variables = nn.BatchNorm().init(jax.random.PRNGKey(0), x, use_running_average=False)
  record = {'bench': 'batch_sums', 'shape': label, 'nhwc': list(shape),
            'fwd_sums_reduce_ms': _median_ms(reduce_fwd, (x,), reps),
            'fwd_sums_matmul_ms': _median_ms(matmul_fwd, (x,), reps),
            'bwd_sums_reduce_ms': _median_ms(reduce_bwd, (x, dy), reps),
            'bwd_sums_matmul_ms': _median_ms(matmul_bwd, (x, dy), reps),
            'bn_train_flax_ms': _median_ms(_bn_step(nn.BatchNorm()), (variables, x, dy), reps),
            'bn_train_ours_ms': _median_ms(_bn_step(layers.BatchNorm()), (variables, x, dy),
                                           reps)}
  record['bn_train_ours_over_flax'] = round(
      record['bn_train_ours_ms'] / record['bn_train_flax_ms'], 3)
  return record


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--batch', type=int, default=12, help='N of the (N, H, W, C) activations')
  ap.add_argument('--reps', type=int, default=15, help='timed calls per measurement')
  a = ap.parse_args(argv)
  for label, size, channels in SHAPES:
    record = measure(label, size, channels, a.batch, a.reps)
    record.update(devices=jax.device_count(), xla_flags=os.environ.get('XLA_FLAGS', ''),
                  load_avg=common.load_average())
    common.emit(record)


if __name__ == '__main__':
  main()
