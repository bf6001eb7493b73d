"""BN-Inception (ACN), SAN + Expanded Part and STACNN: structure, counts, numerics.

Big models are built with `jax.eval_shape` (no compile) and filled with NumPy values
(`numpy_variables`), since compiling a random `init` of these trees costs tens of seconds
on a small CPU; only a few forward passes are compiled.
"""

import functools
import math

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from sta_cnn_jax.models import bn_inception, sta_cnn
from sta_cnn_jax.models import (STACNN, BNInception, SpatialAttentionNetwork,
                                cross_modality_init, input_channels, is_frozen_bn_param)

# ---------------------------------------------------------------------------------------
# BN-Inception layer table, written out independently of bn_inception.py (docs/design.md and
# TSN's bn_inception: every conv has a bias and is followed by BN).
# (name, kernel, in channels, out channels)
STEM_TABLE = [('conv1_7x7_s2', 7, 3, 64), ('conv2_3x3_reduce', 1, 64, 64),
              ('conv2_3x3', 3, 64, 192)]
# block: (in, 1x1, 3x3 reduce, 3x3, double reduce, double, pool proj); 0 = branch absent.
BLOCK_TABLE = {
    '3a': (192, 64, 64, 64, 64, 96, 32), '3b': (256, 64, 64, 96, 64, 96, 64),
    '3c': (320, 0, 128, 160, 64, 96, 0), '4a': (576, 224, 64, 96, 96, 128, 128),
    '4b': (576, 192, 96, 128, 96, 128, 128), '4c': (576, 160, 128, 160, 128, 160, 128),
    '4d': (608, 96, 128, 192, 160, 192, 128), '4e': (608, 0, 128, 192, 192, 256, 0),
    '5a': (1056, 352, 192, 320, 160, 224, 128), '5b': (1024, 352, 192, 320, 192, 224, 128),
}
PUBLISHED_PARAMS_1000 = 11_295_240  # shared/peer/bninception_torch.py, PyTorch parameters()
PUBLISHED_CONV_BIASES = 10_016      # docs/design.md: redundant conv biases before BN
FEATURES = 1024


def table_convs(in_channels=3):
  convs = [(n, k, in_channels if n == 'conv1_7x7_s2' else ci, co) for n, k, ci, co in STEM_TABLE]
  for blk, (cin, c1, c3r, c3, cdr, cd, cp) in BLOCK_TABLE.items():
    p = f'inception_{blk}_'
    if c1:
      convs.append((p + '1x1', 1, cin, c1))
    convs += [(p + '3x3_reduce', 1, cin, c3r), (p + '3x3', 3, c3r, c3),
              (p + 'double_3x3_reduce', 1, cin, cdr), (p + 'double_3x3_1', 3, cdr, cd),
              (p + 'double_3x3_2', 3, cd, cd)]
    if cp:
      convs.append((p + 'pool_proj', 1, cin, cp))
  return convs


def table_param_count(num_classes, in_channels=3):
  """Trainable parameters: conv kernel + conv bias + BN scale & shift; fc kernel + bias.

  BN running mean/var (2 per channel) are NOT parameters (PyTorch buffers, Flax
  'batch_stats'), matching PyTorch's parameters() count.
  """
  convs = table_convs(in_channels)
  kernels = sum(k * k * ci * co for _, k, ci, co in convs)
  biases = sum(co for *_, co in convs)
  bn_affine = 2 * biases
  return kernels + biases + bn_affine + FEATURES * num_classes + num_classes


FLOWNETS_TABLE = [(7, 6, 64), (5, 64, 128), (5, 128, 256), (3, 256, 256), (3, 256, 512),
                  (3, 512, 512), (3, 512, 512), (3, 512, 512), (3, 512, 1024),
                  (3, 1024, 1024)]  # (kernel, in, out) conv1..conv6_1, all with bias
EXPAND_TABLE = [(3, 1024, 512), (3, 512, 256), (3, 256, 128), (3, 128, 64), (3, 64, 2)]


def conv_count(table):
  return sum(k * k * ci * co + co for k, ci, co in table)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def numpy_variables(shapes, seed=0):
  """Concrete variables for an eval_shape'd tree: He-normal kernels, random biases and BN
  statistics (so a wrong statistic would change outputs), float32."""
  rng = np.random.default_rng(seed)

  def make(path, s):
    name = str(path[-1].key)
    if name == 'kernel':
      fan_in = int(np.prod(s.shape[:-1]))
      v = rng.normal(size=s.shape) * math.sqrt(2.0 / fan_in)
    elif name in ('scale', 'var'):
      v = 1.0 + 0.1 * rng.uniform(size=s.shape)
    else:  # bias, mean, SAL 'w'
      v = 0.1 * rng.normal(size=s.shape)
    return jnp.asarray(v, s.dtype)

  return jax.tree_util.tree_map_with_path(make, shapes)


def init_shapes(model, shape, **kwargs):
  return jax.eval_shape(functools.partial(model.init, train=False, **kwargs),
                        jax.random.key(0), jnp.zeros(shape, jnp.float32))


def init_and_output_shapes(model, shape, **kwargs):
  """(output, variables) shapes of `model.init_with_output` in one trace."""
  return jax.eval_shape(functools.partial(model.init_with_output, train=False, **kwargs),
                        jax.random.key(0), jnp.zeros(shape, jnp.float32))


@functools.lru_cache(maxsize=None)
def acn_features(size, channels, num_classes=1000):
  """(features shape, variable shapes) of BN-Inception at (size, size, channels)."""
  return init_and_output_shapes(BNInception(num_classes=num_classes), (2, size, size, channels),
                                method=BNInception.features)


# ---------------------------------------------------------------------------------------
# BN-Inception


def test_bn_inception_parameter_count_and_names():
  shapes = init_shapes(BNInception(num_classes=1000), (1, 64, 64, 3))
  params = shapes['params']
  assert table_param_count(1000) == PUBLISHED_PARAMS_1000
  assert count(params) == PUBLISHED_PARAMS_1000
  convs = table_convs()
  assert sum(co for *_, co in convs) == PUBLISHED_CONV_BIASES
  want = {n for n, *_ in convs} | {n + '_bn' for n, *_ in convs} | {'fc'}
  assert set(params) == want
  for name, k, ci, co in convs:  # every conv keeps its bias (weights import one to one)
    assert params[name]['kernel'].shape == (k, k, ci, co)
    assert params[name]['bias'].shape == (co,)
    assert params[name + '_bn']['scale'].shape == (co,)
  assert params['fc']['kernel'].shape == (FEATURES, 1000)
  assert count(shapes['batch_stats']) == 2 * PUBLISHED_CONV_BIASES  # mean + var per channel
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize('size,channels', [(224, 3), (224, 10), (160, 3), (160, 10)])
def test_bn_inception_feature_shapes(size, channels):
  feats, variables = acn_features(size, channels)
  assert feats.shape == (2, size // 32, size // 32, FEATURES)
  trunk = table_param_count(0, channels)  # `features` creates no fc
  assert count(variables['params']) == trunk


@pytest.mark.parametrize('shape,side', [((1, 112, 112, 3), 'height 112'),
                                        ((1, 224, 200, 3), 'width 200')])
def test_bn_inception_rejects_sizes_not_multiple_of_32(shape, side):
  with pytest.raises(ValueError, match=rf'bn_inception\.py: input {side} .*multiple of 32'):
    init_shapes(BNInception(), shape)


def np_max_pool_ceil(x, stride, pad):
  """PyTorch MaxPool2d(3, stride, pad, ceil_mode=True) on (H, W), written from its docs."""
  def out_size(n):
    o = -(-(n + 2 * pad - 3) // stride) + 1
    return o - 1 if (o - 1) * stride >= n + pad else o
  h, w = x.shape
  out = np.empty((out_size(h), out_size(w)), x.dtype)
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      r0, c0 = i * stride - pad, j * stride - pad
      out[i, j] = x[max(r0, 0):min(r0 + 3, h), max(c0, 0):min(c0 + 3, w)].max()
  return out


@pytest.mark.parametrize('size,stride,pad', [(9, 2, 0), (10, 2, 0), (8, 2, 0), (7, 1, 1),
                                             (6, 1, 1)])
def test_max_pool_is_ceil_mode(size, stride, pad):
  x = np.random.default_rng(size).normal(size=(size, size + 1)).astype(np.float32)
  got = bn_inception.max_pool_ceil(jnp.asarray(x)[None, :, :, None], stride, pad)[0, :, :, 0]
  np.testing.assert_array_equal(got, np_max_pool_ceil(x, stride, pad))


def test_ceil_mode_pool_sizes_of_the_trunk():
  # Floor mode would give 55 and 27 for the first two.
  for size, want in [(112, 56), (56, 28), (28, 14), (14, 7), (80, 40), (40, 20)]:
    assert bn_inception.max_pool_ceil(jnp.zeros((1, size, size, 1)), 2).shape[1] == want


def test_avg_pool_counts_padding():
  x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
  padded = np.pad(x, 1)
  want = np.array([[padded[i:i + 3, j:j + 3].sum() / 9.0 for j in range(6)] for i in range(5)])
  got = bn_inception.avg_pool_count_pad(jnp.asarray(x)[None, :, :, None])[0, :, :, 0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert abs(float(got[0, 0]) - x[:2, :2].sum() / 9.0) < 1e-6  # corner: 4 values / 9


def test_is_frozen_bn_param():
  assert not is_frozen_bn_param(('acn', 'conv1_7x7_s2_bn', 'scale'))
  assert is_frozen_bn_param(('params', 'acn', 'inception_3a_1x1_bn', 'bias'))
  assert is_frozen_bn_param(('conv2_3x3_bn', 'scale'))
  assert not is_frozen_bn_param(('acn', 'inception_3a_1x1', 'bias'))
  assert not is_frozen_bn_param(('san', 'conv1', 'kernel'))
  params = acn_features(224, 3)[1]['params']
  frozen = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
            if is_frozen_bn_param(p)]  # jax key-path entries are accepted too
  assert len(frozen) == 2 * (len(table_convs()) - 1)


def test_cross_modality_init():
  rgb = numpy_variables(acn_features(224, 3)[1])['params']
  flow = cross_modality_init({'acn': rgb}, in_channels=10)['acn']
  kernel = np.asarray(rgb['conv1_7x7_s2']['kernel'])  # (7, 7, 3, 64)
  want = np.repeat(kernel.mean(axis=2, keepdims=True), 10, axis=2)
  np.testing.assert_allclose(flow['conv1_7x7_s2']['kernel'], want, rtol=1e-6)
  flow['conv1_7x7_s2'].pop('kernel')
  rgb_rest = dict(rgb, conv1_7x7_s2={'bias': rgb['conv1_7x7_s2']['bias']})
  jax.tree_util.tree_map(np.testing.assert_array_equal, flow, rgb_rest)
  assert rgb['conv1_7x7_s2']['kernel'].shape == (7, 7, 3, 64)  # input left untouched
  with pytest.raises(ValueError, match='conv1_7x7_s2'):
    cross_modality_init({'fc': {}})


# ---------------------------------------------------------------------------------------
# SAN + Expanded Part


@pytest.mark.parametrize('size', [224, 160, 64])
def test_san_grid_equals_acn_grid(size):
  model = SpatialAttentionNetwork()
  (feats, flow), _ = jax.eval_shape(model.init_with_output, jax.random.key(0),
                                    jnp.zeros((2, size, size, 6)))
  acn_feats, _ = acn_features(size, 3)
  assert feats.shape == (2, size // 32, size // 32, 1024)
  assert feats.shape[1:3] == acn_feats.shape[1:3]
  assert flow.shape == (2, size // 2, size // 2, 2)


def test_san_parameters_follow_flownets():
  params = jax.eval_shape(SpatialAttentionNetwork().init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 6)))['params']
  names = ['conv1', 'conv2', 'conv3', 'conv3_1', 'conv4', 'conv4_1', 'conv5', 'conv5_1',
           'conv6', 'conv6_1']
  expand = ['expand1', 'expand2', 'expand3', 'expand4', 'predict_flow']
  assert list(params) == names + expand
  for name, (k, ci, co) in zip(names + expand, FLOWNETS_TABLE + EXPAND_TABLE):
    assert params[name]['kernel'].shape == (k, k, ci, co)
  assert count(params) == conv_count(FLOWNETS_TABLE) + conv_count(EXPAND_TABLE)


def test_san_options():
  model = SpatialAttentionNetwork(widths=(8, 8, 8, 8, 8, 8, 8, 8, 16, 16), last_stride=2,
                                  expand_widths=(8, 8, 8, 8))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 6)))
  feats, flow = jax.eval_shape(model.apply, shapes, jnp.zeros((1, 128, 128, 6)))
  assert feats.shape == (1, 2, 2, 16) and flow.shape == (1, 32, 32, 2)
  with pytest.raises(ValueError, match=r'san\.py: input height 96 .*multiple of 64'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 96, 128, 6)))
  with pytest.raises(ValueError, match=r'san\.py: widths needs 10'):
    jax.eval_shape(SpatialAttentionNetwork(widths=(8, 8)).init, jax.random.key(0),
                   jnp.zeros((1, 64, 64, 6)))


# ---------------------------------------------------------------------------------------
# STACNN

NUM_CLASSES = 5


def test_input_channels_and_snippet_lengths():
  assert input_channels('rgb') == 3 * sta_cnn.RGB_FRAMES_PER_SNIPPET == 6
  assert input_channels('flow') == input_channels('warpflow') == 2 * sta_cnn.FLOW_FIELDS_PER_SNIPPET
  assert input_channels('flow') == 10
  with pytest.raises(ValueError, match='modality'):
    input_channels('depth')


def test_flow_stream_has_only_sal_and_aux_beyond_bn_inception():
  c = 101
  params = init_shapes(STACNN(c, 'flow'), (1, 224, 224, 10))['params']
  assert set(params) == {'acn', 'sal', 'aux_fc'}  # no 'san': the ACN is its own SAN
  k = 7
  assert count(params['acn']) == table_param_count(c, in_channels=10)
  assert count(params['sal']) == k * k * FEATURES + k * k
  assert count(params['aux_fc']) == FEATURES * c + c
  assert count(params) == table_param_count(c, 10) + k * k * FEATURES + k * k + FEATURES * c + c


def test_rgb_parameter_tree():
  c = 101
  sta = init_shapes(STACNN(c, 'rgb'), (1, 224, 224, 6))['params']
  assert set(sta) == {'acn', 'san', 'sal', 'aux_fc'}
  assert count(sta['acn']) == table_param_count(c)
  assert sta['sal']['w'].shape == (49, 1024)
  # Grafting a standalone SAN is a dict assignment: identical structure and shapes.
  alone = jax.eval_shape(SpatialAttentionNetwork().init, jax.random.key(0),
                         jnp.zeros((1, 64, 64, 6)))['params']  # SAN params: any size
  assert jax.tree_util.tree_structure(alone) == jax.tree_util.tree_structure(sta['san'])
  assert jax.tree_util.tree_map(lambda a: a.shape, alone) == jax.tree_util.tree_map(
      lambda a: a.shape, sta['san'])
  assert count(sta) == (table_param_count(c) + conv_count(FLOWNETS_TABLE + EXPAND_TABLE)
                        + 49 * 1024 + 49 + 1024 * c + c)


def test_baseline_is_plain_bn_inception():
  model = STACNN(NUM_CLASSES, 'rgb', spatial_attention=False, aux_classifier=False)
  out, variables = init_and_output_shapes(model, (3, 64, 64, 6))
  assert set(variables['params']) == {'acn'}
  assert count(variables['params']) == table_param_count(NUM_CLASSES)
  assert out['logits'].shape == (3, NUM_CLASSES)
  assert out['features'].shape == (3, 2, 2, FEATURES)
  assert out['attention'] is None and out['aux_logits'] is None and out['flow'] is None


def test_stacnn_rejects_bad_configs():
  with pytest.raises(ValueError, match='aux_classifier'):
    init_shapes(STACNN(3, 'rgb', spatial_attention=False, aux_classifier=True), (1, 64, 64, 6))
  with pytest.raises(ValueError, match=r'\(N, H, W, 10\)'):
    init_shapes(STACNN(3, 'flow'), (1, 64, 64, 6))
  with pytest.raises(ValueError, match='modality'):
    init_shapes(STACNN(3, 'depth'), (1, 64, 64, 6))
  with pytest.raises(ValueError, match='wsp_normalisation'):
    init_shapes(STACNN(3, 'rgb', wsp_normalisation='mean'), (1, 64, 64, 6))
  with pytest.raises(ValueError, match='height 112'):
    init_shapes(STACNN(3, 'rgb'), (1, 112, 112, 6))


@pytest.fixture(scope='module')
def rgb_run():
  """RGB STACNN at 64x64 (K = 2), one training-mode forward (partial BN, no dropout)."""
  model = STACNN(NUM_CLASSES, 'rgb', dropout_rate=0.0)
  variables = numpy_variables(init_shapes(model, (1, 64, 64, 6)), seed=2)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 64, 64, 6)), jnp.float32)
  forward = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  out, updates = forward(variables, x)
  return forward, variables, x, out, updates


def test_rgb_outputs(rgb_run):
  _, variables, _, out, updates = rgb_run
  assert out['logits'].shape == out['aux_logits'].shape == (3, NUM_CLASSES)
  assert out['attention'].shape == (3, 2, 2)
  assert out['flow'].shape == (3, 32, 32, 2)
  assert out['features'].shape == (3, 2, 2, FEATURES)
  np.testing.assert_allclose(np.sum(out['attention'], axis=(1, 2)), 1.0, rtol=1e-6)
  assert np.ptp(np.asarray(out['attention'])) > 1e-3  # random SAL weights: not uniform
  # Classifier reads WSP(ACN features, SAL map) (Eq. 9): recompute from the outputs.
  fc = variables['params']['acn']['fc']
  pooled = np.einsum('nhwd,nhw->nd', out['features'], out['attention'])
  np.testing.assert_allclose(out['logits'], pooled @ fc['kernel'] + fc['bias'],
                             rtol=1e-4, atol=1e-4)


def changed_bn_stats(before, after):
  """Names of the BNs whose running mean or variance moved."""
  return {name for name, stats in after.items()
          if not (np.allclose(stats['mean'], before[name]['mean'])
                  and np.allclose(stats['var'], before[name]['var']))}


def test_partial_bn_updates_only_the_first_bn(rgb_run):
  # STACNN(partial_bn=True) in train mode: only conv1_7x7_s2_bn uses batch statistics.
  _, variables, _, _, updates = rgb_run
  assert changed_bn_stats(variables['batch_stats']['acn'],
                          updates['batch_stats']['acn']) == {'conv1_7x7_s2_bn'}


def test_rgb_acn_sees_first_frame_and_san_sees_both(rgb_run):
  forward, variables, x, out, _ = rgb_run
  out2, _ = forward(variables, x.at[..., 3:].set(0.0))  # change only the second frame
  np.testing.assert_allclose(out2['features'], out['features'], rtol=1e-6)
  assert not np.allclose(out2['attention'], out['attention'])
  assert not np.allclose(out2['flow'], out['flow'])


def test_bfloat16_compute_keeps_float32_params():
  model = STACNN(NUM_CLASSES, 'flow', dtype=jnp.bfloat16)
  shapes = init_shapes(model, (1, 32, 32, 10))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
  variables = numpy_variables(shapes, seed=4)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 32, 32, 10)), jnp.float32)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  for key in ('logits', 'aux_logits', 'attention', 'features'):
    assert out[key].dtype == jnp.float32 and np.all(np.isfinite(out[key]))
  assert out['flow'] is None
  np.testing.assert_allclose(np.sum(out['attention'], axis=(1, 2)), 1.0, rtol=1e-6)
  # Training-mode BN statistics stay float32 too (shapes only: no second compile).
  _, updates = jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=['batch_stats'],
                        rngs={'dropout': jax.random.key(0)}), variables, x)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(updates))


def count_primitive(jaxpr, name):
  """Occurrences of primitive `name` in a jaxpr, sub-jaxprs included."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == name
    total += sum(count_primitive(sub, name) for sub in jax_core.jaxprs_in_params(eqn.params))
  return total


@pytest.mark.parametrize('partial_bn', [True, False])
def test_sync_bn_averages_statistics_of_training_bns(partial_bn):
  # bn_axis_name reaches BatchNorm: every BN that trains on batch statistics all-reduces them
  # over the named axis (one psum per BN). Partial BN: only the first; else all of them.
  model = STACNN(NUM_CLASSES, 'flow', partial_bn=partial_bn, bn_axis_name='batch')
  variables = init_shapes(model, (1, 32, 32, 10))
  forward = functools.partial(model.apply, train=True, mutable=['batch_stats'],
                              rngs={'dropout': jax.random.key(0)})
  jaxpr = jax.make_jaxpr(forward, axis_env=[('batch', 8)])(variables, jnp.zeros((1, 32, 32, 10)))
  assert count_primitive(jaxpr.jaxpr, 'psum') == (1 if partial_bn else len(table_convs()))
  with pytest.raises(NameError, match='batch'):  # outside pmap/shard_map the name is unbound
    jax.eval_shape(forward, variables, jnp.zeros((1, 32, 32, 10)))
