"""Tests for sta_cnn_jax.convert: published BN-Inception / FlowNetS weights -> STA-CNN tree.

State dicts are built with the real published key names and shapes, generated from the
model's own parameter tree (jax.eval_shape of STACNN), filled with random values. Layouts are
checked functionally against NumPy references of PyTorch's conv (OIHW cross-correlation),
BatchNorm (eval) and Linear.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sta_cnn_jax import (bninception_weights, convert, flownets_weights, pretrained,
                         state_dicts)
from sta_cnn_jax.models import STACNN
from sta_cnn_jax.models import san

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 5
SIZE = 64  # smallest multiple of 32 that exercises every stride
# BN-Inception with a 1000-way fc and conv biases (docs/design.md "Architecture tables"; the
# published PyTorch model's parameter count).
BN_INCEPTION_PARAMS_1000 = 11_295_240
# Literal layer names from TSN's Caffe deploy prototxt (models/ucf101/tsn_bn_inception_rgb_deploy).
CAFFE_NAMES = {
    'conv1/7x7_s2': 'conv1_7x7_s2', 'conv2/3x3_reduce_bn': 'conv2_3x3_reduce_bn',
    'inception_3a/double_3x3_1_bn': 'inception_3a_double_3x3_1_bn',
    'inception_3c/3x3': 'inception_3c_3x3', 'inception_5b/pool_proj': 'inception_5b_pool_proj',
    'fc-action': 'fc',
}
# FlowNetPytorch FlowNetS decoder keys / shapes (ConvTranspose2d weights are (in, out, k, k)).
FLOWNETS_DECODER = {
    'deconv5.0.weight': (1024, 512, 4, 4), 'deconv2.0.weight': (386, 64, 4, 4),
    'predict_flow6.weight': (2, 1024, 3, 3), 'predict_flow2.weight': (2, 194, 3, 3),
    'upsampled_flow6_to_5.weight': (2, 2, 4, 4),
}
ATOL = 1e-4


# ---------------------------------------------------------------------------------------------
# NumPy references (PyTorch semantics).
# ---------------------------------------------------------------------------------------------
def torch_conv2d(x_nchw, weight_oihw, bias, stride, pad):
  """PyTorch Conv2d: cross-correlation, zero padding, NCHW."""
  x = np.pad(x_nchw, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  _, _, kh, kw = weight_oihw.shape
  out_h = (x.shape[2] - kh) // stride + 1
  out_w = (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], weight_oihw.shape[0], out_h, out_w))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
      out += np.einsum('nchw,oc->nohw', patch, weight_oihw[:, :, i, j])
  return out + bias[None, :, None, None]


def torch_batchnorm_eval(x_nchw, weight, bias, mean, var, eps=1e-5):
  shape = (1, -1, 1, 1)
  return ((x_nchw - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * weight.reshape(shape)
          + bias.reshape(shape))


def flax_conv(kernel, bias, x_nhwc, stride, pad):
  conv = nn.Conv(kernel.shape[-1], kernel.shape[:2], (stride, stride),
                 padding=((pad, pad), (pad, pad)))
  return np.asarray(conv.apply({'params': {'kernel': kernel, 'bias': bias}}, x_nhwc))


def nchw(x):
  return np.transpose(x, (0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------
# State dicts with the real key names, generated from the model's parameter tree.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def model_shapes():
  """Variable shapes of an RGB STA-CNN at 64x64 (eval_shape: nothing is computed)."""
  model = STACNN(num_classes=NUM_CLASSES, modality='rgb')
  rngs = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}
  return jax.eval_shape(lambda: model.init(rngs, jnp.zeros((1, SIZE, SIZE, 6)), train=False))


def _random(rng, shape, positive=False):
  values = rng.standard_normal(shape, dtype=np.float32)
  return np.abs(values) + 0.5 if positive else values


def bninception_state_from_model(shapes, rng, fc_classes=1000):
  """tsn-pytorch / Cadene state dict for the model's 'acn' tree: conv OIHW, BN vectors, fc."""
  state = {}
  for name, leaves in shapes['params']['acn'].items():
    if name == 'fc':
      state['fc.weight'] = _random(rng, (fc_classes, leaves['kernel'].shape[0]))
      state['fc.bias'] = _random(rng, (fc_classes,))
    elif name.endswith('_bn'):
      channels = leaves['scale'].shape
      state[f'{name}.weight'] = _random(rng, channels, positive=True)
      state[f'{name}.bias'] = _random(rng, channels)
      state[f'{name}.running_mean'] = _random(rng, shapes['batch_stats']['acn'][name]['mean'].shape)
      state[f'{name}.running_var'] = _random(rng, shapes['batch_stats']['acn'][name]['var'].shape,
                                             positive=True)
      state[f'{name}.num_batches_tracked'] = np.zeros((), np.int64)
    else:
      kh, kw, cin, cout = leaves['kernel'].shape
      state[f'{name}.weight'] = _random(rng, (cout, cin, kh, kw)) * 0.1
      state[f'{name}.bias'] = _random(rng, (cout,))
  return state


@pytest.fixture(scope='module')
def bni_state(model_shapes):
  return bninception_state_from_model(model_shapes, np.random.default_rng(0))


@pytest.fixture(scope='module')
def bni_converted(bni_state):
  return bninception_weights.bninception_to_flax(bni_state, drop_fc=False)


@pytest.fixture(scope='module')
def flownets_state(model_shapes):
  """FlowNetPytorch `flownets` state dict: encoder from the model's 'san' tree + decoder keys."""
  rng = np.random.default_rng(1)
  state = {}
  for name, leaves in model_shapes['params']['san'].items():
    if name.startswith('conv'):
      kh, kw, cin, cout = leaves['kernel'].shape
      state[f'{name}.0.weight'] = _random(rng, (cout, cin, kh, kw)) * 0.05
      state[f'{name}.0.bias'] = _random(rng, (cout,))
  for key, shape in FLOWNETS_DECODER.items():
    state[key] = _random(rng, shape)
  return state


# ---------------------------------------------------------------------------------------------
# BN-Inception.
# ---------------------------------------------------------------------------------------------
def test_key_table_matches_model_and_published_count(bni_state):
  expected = bninception_weights.bninception_state_shapes(in_channels=3, num_classes=1000)
  from_model = {k: v.shape for k, v in bni_state.items() if not k.endswith('num_batches_tracked')}
  assert expected == from_model
  running = sum(int(np.prod(s)) for k, s in expected.items() if '.running_' in k)
  assert sum(int(np.prod(s)) for s in expected.values()) - running == BN_INCEPTION_PARAMS_1000


def test_conv_kernel_layout_matches_pytorch_cross_correlation(bni_state, bni_converted):
  params, _, _ = bni_converted
  rng = np.random.default_rng(2)
  # conv1 7x7/2 pad 3 with the converted random (asymmetric) kernel.
  x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
  got = flax_conv(params['conv1_7x7_s2']['kernel'], params['conv1_7x7_s2']['bias'], x, 2, 3)
  want = torch_conv2d(nchw(x), bni_state['conv1_7x7_s2.weight'], bni_state['conv1_7x7_s2.bias'],
                      stride=2, pad=3)
  np.testing.assert_allclose(nchw(got), want, atol=ATOL, rtol=1e-4)
  # A one-hot asymmetric kernel (tap at row 0, column 2 of input channel 1): no flip, no swap.
  weight = np.zeros((2, 3, 3, 3), np.float32)
  weight[1, 1, 0, 2] = 1.0
  kernel = state_dicts.conv_kernel_to_flax(weight)
  x = rng.standard_normal((1, 5, 6, 3)).astype(np.float32)
  got = flax_conv(kernel, np.zeros(2, np.float32), x, 1, 1)
  np.testing.assert_allclose(nchw(got), torch_conv2d(nchw(x), weight, np.zeros(2), 1, 1),
                             atol=1e-6)
  np.testing.assert_array_equal(got[0, 1:, :-1, 1], x[0, :-1, 1:, 1])  # shifted by (-1, +1)


def test_every_layer_lands_in_the_right_field(bni_state, bni_converted):
  params, batch_stats, _ = bni_converted
  for name, (out, cin, kh, kw) in bninception_weights.bninception_conv_shapes().items():
    kernel = params[name]['kernel']
    assert kernel.shape == (kh, kw, cin, out), name
    o, c, i, j = out - 1, cin // 2, kh - 1, 0
    assert kernel[i, j, c, o] == bni_state[f'{name}.weight'][o, c, i, j], name
    np.testing.assert_array_equal(params[name]['bias'], bni_state[f'{name}.bias'])
    bn = name + '_bn'
    np.testing.assert_array_equal(params[bn]['scale'], bni_state[f'{bn}.weight'])
    np.testing.assert_array_equal(params[bn]['bias'], bni_state[f'{bn}.bias'])
    np.testing.assert_array_equal(batch_stats[bn]['mean'], bni_state[f'{bn}.running_mean'])
    np.testing.assert_array_equal(batch_stats[bn]['var'], bni_state[f'{bn}.running_var'])
  assert set(batch_stats) == {n + '_bn' for n in bninception_weights.bninception_conv_shapes()}


def test_batchnorm_and_fc_match_pytorch_eval(bni_state, bni_converted):
  params, batch_stats, _ = bni_converted
  rng = np.random.default_rng(3)
  bn = 'inception_4c_double_3x3_1_bn'
  x = rng.standard_normal((2, 3, 3, params[bn]['scale'].shape[0])).astype(np.float32)
  got = nn.BatchNorm(use_running_average=True, epsilon=bninception_weights.BN_EPSILON).apply(
      {'params': params[bn], 'batch_stats': batch_stats[bn]}, x)
  want = torch_batchnorm_eval(nchw(x), *(bni_state[f'{bn}.{f}'] for f in
                                         ('weight', 'bias', 'running_mean', 'running_var')))
  np.testing.assert_allclose(nchw(np.asarray(got)), want, atol=ATOL, rtol=1e-4)
  features = rng.standard_normal((4, 1024)).astype(np.float32)
  got = nn.Dense(1000).apply({'params': params['fc']}, features)
  want = features @ bni_state['fc.weight'].T.astype(np.float64) + bni_state['fc.bias']
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-3, rtol=1e-4)


def _caffe_name(name):
  """tsn-pytorch name -> TSN Caffe layer name (inverse of parse_caffe's '/' -> '_')."""
  if name.startswith('inception_'):
    return name[:len('inception_3a')] + '/' + name[len('inception_3a_'):]
  if name == 'fc':
    return 'fc-action'
  return name[:len('conv1')] + '/' + name[len('conv1_'):]


@pytest.mark.parametrize('spelling', ['cadene', 'tsn_checkpoint', 'caffe', 'caffe_blobs'])
def test_published_spellings_convert_identically(bni_state, bni_converted, spelling):
  assert {_caffe_name(v) for v in CAFFE_NAMES.values()} == set(CAFFE_NAMES)
  state = {}
  for key, value in bni_state.items():
    layer, field = key.rsplit('.', 1)
    if field == 'num_batches_tracked' and spelling.startswith('caffe'):
      continue
    if spelling == 'cadene':
      key = key.replace('fc.', 'last_linear.')
    elif spelling == 'tsn_checkpoint':
      key = ('module.new_fc.' + field if layer == 'fc' else f'module.base_model.{key}')
    else:
      if layer.endswith('_bn'):
        value = value.reshape(1, -1, 1, 1)  # Caffe BN blobs are (1, C, 1, 1)
      if spelling == 'caffe':
        key = f'{_caffe_name(layer)}.{field}'
      else:
        blob = {'weight': 0, 'bias': 1, 'running_mean': 2, 'running_var': 3}[field]
        key = f'{_caffe_name(layer)}/{blob}'
    state[key] = value
  params, batch_stats, meta = bninception_weights.bninception_to_flax(state, drop_fc=False,
                                                          kind='bninception_caffe')
  want_params, want_stats, _ = bni_converted
  for tree, want in ((params, want_params), (batch_stats, want_stats)):
    flat, flat_want = traverse_util.flatten_dict(tree), traverse_util.flatten_dict(want)
    assert flat.keys() == flat_want.keys()
    for path in flat:
      np.testing.assert_array_equal(flat[path], flat_want[path], err_msg=str(path))
  assert meta['normalisation'] == {'input_space': 'BGR', 'input_range': [0, 255],
                                   'mean': [104.0, 117.0, 128.0], 'std': [1.0, 1.0, 1.0]}


def test_drop_fc_and_meta(bni_state):
  params, _, meta = bninception_weights.bninception_to_flax(bni_state)  # drop_fc=True by default
  assert 'fc' not in params
  assert {'fc.weight', 'fc.bias'} <= set(meta['ignored'])
  assert meta['fc'] == 'dropped' and meta['in_channels'] == 3
  assert meta['num_params'] == BN_INCEPTION_PARAMS_1000 - 1000 * 1024 - 1000
  json.dumps(meta)  # serialisable


def test_missing_unexpected_and_shape_errors_are_listed_together(bni_state):
  state = dict(bni_state)
  removed = ['inception_4c_3x3.weight', 'inception_5b_pool_proj_bn.running_var',
             'conv1_7x7_s2.bias']
  for key in removed:
    del state[key]
  state['inception_3b_3x3.weight'] = np.zeros((96, 64, 5, 5), np.float32)
  state['extra_head.weight'] = np.zeros((3, 3), np.float32)
  with pytest.raises(state_dicts.ConversionError) as err:
    bninception_weights.bninception_to_flax(state, source='ckpt.npz')
  message = str(err.value)
  assert message.startswith('ckpt.npz')
  for key in removed + ['extra_head.weight']:
    assert key in message
  assert 'inception_3b_3x3.weight: expected shape (96, 64, 3, 3), got (96, 64, 5, 5)' in message


def test_kept_fc_must_have_num_classes(bni_state):
  with pytest.raises(state_dicts.ConversionError, match=r'fc\.weight: expected shape \(7, 1024\), '
                     r'got \(1000, 1024\)'):
    bninception_weights.bninception_to_flax(bni_state, num_classes=7, drop_fc=False)


def test_rgb_input_space_and_cross_modality(bni_state, bni_converted):
  params_bgr = bni_converted[0]
  params_rgb, _, meta = bninception_weights.bninception_to_flax(bni_state, input_space='RGB')
  assert meta['normalisation']['input_space'] == 'RGB'
  rng = np.random.default_rng(4)
  rgb = rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
  bgr = rgb[..., ::-1]
  conv = lambda p, x: flax_conv(p['conv1_7x7_s2']['kernel'], p['conv1_7x7_s2']['bias'], x, 2, 3)
  np.testing.assert_allclose(
      conv(params_rgb, rgb - np.array(meta['normalisation']['mean'], np.float32)),
      conv(params_bgr, bgr - np.array([104, 117, 128], np.float32)), atol=1e-2, rtol=1e-5)
  params_flow, _, meta = bninception_weights.bninception_to_flax(bni_state, in_channels=10)
  kernel = params_flow['conv1_7x7_s2']['kernel']
  assert kernel.shape == (7, 7, 10, 64) and meta['normalisation']['mean'] == [128.0]
  mean_rgb = bni_state['conv1_7x7_s2.weight'].mean(axis=1)  # (O, kh, kw)
  for channel in range(10):
    np.testing.assert_allclose(kernel[:, :, channel, :], mean_rgb.transpose(1, 2, 0), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------
def test_npz_round_trip_and_meta_file(tmp_path, bni_state, bni_converted):
  source = tmp_path / 'bn_inception.npz'
  np.savez(source, **bni_state)
  state = state_dicts.load_state_dict(source)
  assert state.keys() == bni_state.keys()
  out = tmp_path / 'out' / 'acn.npz'
  meta = convert.convert_file('bninception', source, out, drop_fc=False)
  variables, meta_read = state_dicts.load_converted(out)
  assert meta_read == json.loads(json.dumps(meta))
  assert state_dicts.meta_path(out) == tmp_path / 'out' / 'acn.meta.json'
  assert meta_read['normalisation']['mean'] == [104.0, 117.0, 128.0]
  want = {'params': bni_converted[0], 'batch_stats': bni_converted[1]}
  flat, flat_want = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(want)
  assert flat.keys() == flat_want.keys()
  for path in flat:
    np.testing.assert_array_equal(flat[path], flat_want[path])


def test_orbax_output(tmp_path, flownets_state):
  source = tmp_path / 'flownets.npz'
  np.savez(source, **flownets_state)
  out = tmp_path / 'san_ckpt'
  convert.convert_file('flownets', source, out)
  variables, meta = state_dicts.load_converted(out)
  assert meta['kind'] == 'flownets' and out.is_dir()
  np.testing.assert_array_equal(variables['params']['conv3_1']['kernel'],
                                flownets_state['conv3_1.0.weight'].transpose(2, 3, 1, 0))


def test_cli_writes_weights_and_meta(tmp_path, bni_state):
  source = tmp_path / 'bni.npz'
  np.savez(source, **bni_state)
  out = tmp_path / 'acn.npz'
  proc = subprocess.run([sys.executable, '-m', 'sta_cnn_jax.convert', '--kind=bninception',
                         f'--input={source}', f'--output={out}'], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.is_file() and (tmp_path / 'acn.meta.json').is_file()
  bad = tmp_path / 'bad.npz'
  np.savez(bad, **{k: v for k, v in bni_state.items() if not k.startswith('inception_4d')})
  proc = subprocess.run([sys.executable, '-m', 'sta_cnn_jax.convert', '--kind=bninception',
                         f'--input={bad}', f'--output={tmp_path / "x.npz"}'], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert str(bad) in proc.stderr and 'inception_4d_pool_proj_bn.running_mean' in proc.stderr


def test_pth_without_torch_is_a_clear_error(tmp_path):
  if importlib.util.find_spec('torch') is not None:
    pytest.skip('torch is installed; the no-torch message cannot be observed')
  path = tmp_path / 'flownets_EPE1.951.pth.tar'
  path.write_bytes(b'not read')
  with pytest.raises(state_dicts.ConversionError, match=r'torch.*\.npz') as err:
    state_dicts.load_state_dict(path)
  assert str(path) in str(err.value)


def test_npz_with_pickled_objects_is_refused(tmp_path):
  path = tmp_path / 'evil.npz'
  np.savez(path, payload=np.array([{'a': 1}], dtype=object))
  with pytest.raises(state_dicts.ConversionError, match='evil.npz'):
    state_dicts.load_state_dict(path)


# ---------------------------------------------------------------------------------------------
# FlowNetS.
# ---------------------------------------------------------------------------------------------
def test_flownets_encoder_imported_decoder_ignored(flownets_state, model_shapes):
  params, meta = flownets_weights.flownets_to_flax(flownets_state)
  assert list(params) == [name for name, _, _ in san.ENCODER_LAYERS]
  assert sorted(meta['ignored']) == sorted(FLOWNETS_DECODER)
  assert meta['normalisation']['input_space'] == 'RGB'
  assert meta['normalisation']['mean'] == [0.411, 0.432, 0.45]
  rng = np.random.default_rng(5)
  x = rng.standard_normal((1, 16, 16, 6)).astype(np.float32)
  got = flax_conv(params['conv1']['kernel'], params['conv1']['bias'], x, 2, 3)
  want = torch_conv2d(nchw(x), flownets_state['conv1.0.weight'], flownets_state['conv1.0.bias'],
                      2, 3)
  np.testing.assert_allclose(nchw(got), want, atol=ATOL, rtol=1e-4)
  grafted = pretrained.graft(model_shapes['params'], params, prefix=('san',))
  np.testing.assert_array_equal(grafted['san']['conv6_1']['bias'],
                                flownets_state['conv6_1.0.bias'])
  assert isinstance(grafted['san']['expand1']['kernel'], jax.ShapeDtypeStruct)  # kept


def test_flownets_missing_and_wrong_shape(flownets_state):
  state = {('module.' + k): v for k, v in flownets_state.items() if k != 'conv4_1.0.bias'}
  state['module.conv2.0.weight'] = np.zeros((128, 64, 3, 3), np.float32)
  with pytest.raises(state_dicts.ConversionError) as err:
    flownets_weights.flownets_to_flax(state, source='flownets.npz')
  message = str(err.value)
  assert 'conv4_1.0.bias' in message and 'deconv5' not in message
  assert 'expected shape (128, 64, 5, 5), got (128, 64, 3, 3)' in message


def test_flownets_bn_variant_is_folded_exactly():
  rng = np.random.default_rng(6)
  state = {}
  for name, (out, cin, kh, kw) in flownets_weights.flownets_encoder_shapes().items():
    state[f'{name}.0.weight'] = _random(rng, (out, cin, kh, kw)) * 0.05
    state[f'{name}.1.weight'] = _random(rng, (out,), positive=True)
    state[f'{name}.1.bias'] = _random(rng, (out,))
    state[f'{name}.1.running_mean'] = _random(rng, (out,))
    state[f'{name}.1.running_var'] = _random(rng, (out,), positive=True)
    state[f'{name}.1.num_batches_tracked'] = np.zeros((), np.int64)
  params, meta = flownets_weights.flownets_to_flax(state)
  assert meta['batch_norm_folded']
  x = rng.standard_normal((1, 8, 8, 64)).astype(np.float32)
  got = flax_conv(params['conv2']['kernel'], params['conv2']['bias'], x, 2, 2)
  conv = torch_conv2d(nchw(x), state['conv2.0.weight'], np.zeros(128), 2, 2)
  want = torch_batchnorm_eval(conv, *(state[f'conv2.1.{f}'] for f in
                                      ('weight', 'bias', 'running_mean', 'running_var')))
  np.testing.assert_allclose(nchw(got), want, atol=ATOL, rtol=1e-4)


def test_adapt_first_conv_to_bninception_input(flownets_state):
  params, meta = flownets_weights.flownets_to_flax(flownets_state,
                                          input_normalisation=bninception_weights.BN_INCEPTION_INPUT)
  original, _ = flownets_weights.flownets_to_flax(flownets_state)
  assert meta['normalisation']['input_space'] == 'BGR'
  rng = np.random.default_rng(7)
  pixels = rng.uniform(0, 255, (1, 24, 24, 6)).astype(np.float32)  # two RGB frames
  flownet_input = pixels / 255 - np.tile([0.411, 0.432, 0.45], 2).astype(np.float32)
  bgr = np.concatenate([pixels[..., 2::-1], pixels[..., 5:2:-1]], axis=-1)
  acn_input = bgr - np.tile([104, 117, 128], 2).astype(np.float32)
  got = flax_conv(params['conv1']['kernel'], params['conv1']['bias'], acn_input, 2, 3)
  want = flax_conv(original['conv1']['kernel'], original['conv1']['bias'], flownet_input, 2, 3)
  inner = slice(2, -2)  # outputs whose 7x7 window lies inside the frame (pad 3, stride 2)
  np.testing.assert_allclose(got[:, inner, inner], want[:, inner, inner], atol=1e-3, rtol=1e-4)
  assert not np.allclose(got, want, atol=1e-3)  # the border differs (documented)


def test_bninception_normalisation_is_what_the_input_pipeline_does():
  """The meta we record (and `--san_input=bninception` adapts to) = input_pipeline defaults."""
  from sta_cnn_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(8)
  pixels = rng.integers(0, 256, (2, 4, 4, 6), dtype=np.uint8)  # two RGB frames per snippet
  norm = bninception_weights.BN_INCEPTION_INPUT
  assert norm['input_space'] == 'BGR' and norm['input_range'] == [0, 255]
  bgr = np.concatenate([pixels[..., 2::-1], pixels[..., 5:2:-1]], axis=-1).astype(np.float32)
  want = (bgr - np.tile(norm['mean'], 2)) / np.tile(norm['std'], 2)
  got = np.asarray(input_pipeline.normalize(pixels, 'rgb'))
  np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Grafting.
# ---------------------------------------------------------------------------------------------
def test_graft_variables_and_errors(model_shapes, bni_state):
  params, batch_stats, _ = bninception_weights.bninception_to_flax(bni_state)  # new classifier kept
  grafted = pretrained.graft(model_shapes, {'params': params, 'batch_stats': batch_stats})
  acn = grafted['params']['acn']
  np.testing.assert_array_equal(acn['inception_5a_3x3']['kernel'],
                                params['inception_5a_3x3']['kernel'])
  np.testing.assert_array_equal(grafted['batch_stats']['acn']['conv1_7x7_s2_bn']['var'],
                                bni_state['conv1_7x7_s2_bn.running_var'])
  assert isinstance(acn['fc']['kernel'], jax.ShapeDtypeStruct)  # model's new classifier
  assert isinstance(grafted['params']['sal'], dict)
  flat_in = traverse_util.flatten_dict(model_shapes)
  assert traverse_util.flatten_dict(grafted).keys() == flat_in.keys()

  wrong = {'params': dict(params, conv2_3x3={'kernel': np.zeros((3, 3, 64, 100), np.float32),
                                             'bias': params['conv2_3x3']['bias']},
                          extra={'kernel': np.zeros((1,), np.float32)}),
           'batch_stats': batch_stats}
  with pytest.raises(state_dicts.ConversionError) as err:
    pretrained.graft(model_shapes, wrong)
  message = str(err.value)
  assert 'params/acn/extra/kernel' in message
  assert 'params/acn/conv2_3x3/kernel: expected (3, 3, 64, 192) (model), got (3, 3, 64, 100)' \
      in message
  with pytest.raises(state_dicts.ConversionError, match='both'):
    pretrained.graft(model_shapes, params)
