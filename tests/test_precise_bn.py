"""PreciseBN (sta_cnn_jax.precise_bn) against statistics computed independently in NumPy from the
BN inputs that the network produces in training mode."""

import jax
import numpy as np
import optax
import pytest

from configs import demo
from flax.training import train_state
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import parallel
from sta_cnn_jax import precise_bn
from sta_cnn_jax import train
from sta_cnn_jax.models import STACNN
from sta_cnn_jax.models import layers

CROP = 32
NUM_BATCHES = 3


class _State(train_state.TrainState):
  batch_stats: dict


def _setup(partial_bn):
  config = demo.get_config('flow,baseline')
  config.input.crop_size = CROP
  config.model.partial_bn = partial_bn
  model = STACNN(num_classes=3, modality='flow', spatial_attention=False, aux_classifier=False,
                 dropout_rate=0.0, partial_bn=partial_bn, width_multiplier=0.125,
                 bn_axis_name=parallel.AXIS_NAME)
  variables = train.initialized(jax.random.PRNGKey(0), model, (CROP, CROP, 10), train=False)
  # Non-trivial running statistics, so "kept" and "replaced" are told apart.
  stats = jax.tree_util.tree_map(lambda x: x + 0.5, variables['batch_stats'])
  state = _State.create(apply_fn=model.apply, params=variables['params'], tx=optax.sgd(0.1),
                        batch_stats=stats)
  rng = np.random.default_rng(0)
  devices = jax.local_device_count()   # also under 8 fake CPU devices (CI's second pass)
  batches = [rng.integers(0, 256, (devices, 2, 2, CROP, CROP, 10), dtype=np.uint8)
             for _ in range(NUM_BATCHES)]                                  # (D, B, S, H, W, C)
  return config, model, state, batches


def _numpy_reference(config, model, state, batches):
  """Per BN: mean over batches of the (biased) mean / variance of its input, from the conv
  outputs captured in training mode."""
  sums = {}
  # One compiled forward for every batch (op by op, the forward took ~90 s on 2 CPU cores).
  forward = jax.jit(lambda variables, x: model.clone(bn_axis_name=None).apply(
      variables, x, train=True, mutable=['batch_stats', 'intermediates'],
      capture_intermediates=lambda mdl, _: isinstance(mdl, layers.Conv))[1])
  for frames in batches:
    x = input_pipeline.normalize(frames.reshape((-1,) + frames.shape[3:]), 'flow',
                                 config.input.mean, config.input.std, config.input.bgr)
    inter = forward({'params': state.params, 'batch_stats': state.batch_stats}, x)
    for name, out in inter['intermediates']['acn'].items():
      y = np.asarray(out['__call__'][0], np.float64)
      stats = (y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2)))
      prev = sums.get(name, (0, 0))
      sums[name] = (prev[0] + stats[0], prev[1] + stats[1])
  return {name + '_bn': (m / len(batches), v / len(batches)) for name, (m, v) in sums.items()}


@pytest.mark.parametrize('partial_bn', [False, True])
def test_precise_stats_are_the_mean_of_batch_statistics(partial_bn):
  config, model, state, batches = _setup(partial_bn)
  stats = precise_bn.precise_batch_stats(state, config, iter({'frames': b} for b in batches),
                                        NUM_BATCHES, 'pmap')
  reference = _numpy_reference(config, model, state, batches)
  assert set(reference) == set(stats['acn'])
  for name, (mean, var) in reference.items():
    got = stats['acn'][name]
    old = state.batch_stats['acn'][name]
    if partial_bn and name != 'conv1_7x7_s2_bn':
      # Frozen BNs (TSN partial BN) keep the statistics they were trained with.
      np.testing.assert_array_equal(got['mean'], old['mean'])
      np.testing.assert_array_equal(got['var'], old['var'])
    else:
      np.testing.assert_allclose(got['mean'], mean, rtol=2e-4, atol=2e-4, err_msg=name)
      np.testing.assert_allclose(got['var'], var, rtol=2e-3, atol=2e-4, err_msg=name)
