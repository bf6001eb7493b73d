"""sta_cnn_jax.train: optimizer and schedule (numpy references), the Algorithm 1 step (numpy
reference of Eq. 1-2 / Alg. 1 / Eq. 10), the real STA-CNN step on 8 devices == 1 device, the
loop's NaN stop, clear input errors, kill -9 / resume, and SAN pre-training."""

import functools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
import optax
import pytest

from sta_cnn_jax import (checkpoints, input_pipeline, optim, parallel, pretrain_san, pretrained,
                         train, train_loss)
from tests.train_utils import (TEST_CROP, StandIn, cache_env, jax_cache_dir,  # noqa: F401
                               random_batch, read_stderr, run_python, standin_create_model,
                               tiny_config,
                               tiny_dataset)

# fp32 comparisons of the same computation under different reduction orders.
RTOL, ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------------------------------------
# Schedule and optimizer.
# ---------------------------------------------------------------------------------------------


def test_learning_rate_schedule_of_section_4_1():
  from configs import ucf101  # pylint: disable=g-import-not-at-top
  rgb = optim.create_learning_rate_fn(ucf101.get_config('rgb,baseline'), steps_per_epoch=10)
  for step, lr in [(0, 1e-3), (199, 1e-3), (200, 1e-4), (399, 1e-4), (400, 1e-5), (499, 1e-5)]:
    np.testing.assert_allclose(float(rgb(step)), lr, rtol=1e-6)
  flow = optim.create_learning_rate_fn(ucf101.get_config('flow,baseline'), steps_per_epoch=3)
  for step, lr in [(0, 5e-3), (359, 5e-3), (360, 5e-4), (720, 5e-5), (899, 5e-5)]:
    np.testing.assert_allclose(float(flow(step)), lr, rtol=1e-6)


def _standin_params():
  model = StandIn(3, aux=True)
  return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 6)), train=False)


def _numpy_sgd_reference(params, grads_seq, lr, momentum, wd, clip, frozen, decayed):
  """Caffe/TSN SGD: clip the trainable gradients' global norm, add wd * w where decayed,
  momentum trace, frozen params untouched. Flat dicts {path: array}."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  trace = {k: np.zeros_like(v) for k, v in params.items()}
  for grads in grads_seq:
    norm = np.sqrt(sum(np.sum(np.square(g)) for k, g in grads.items() if k not in frozen))
    scale = 1.0 if norm < clip else clip / norm
    for k in params:
      if k in frozen:
        continue
      g = grads[k] * scale + (wd * params[k] if k in decayed else 0.0)
      trace[k] = momentum * trace[k] + g
      params[k] = params[k] - lr * trace[k]
  return params


def test_optimizer_matches_numpy_reference():
  config = tiny_config(**{'model.partial_bn': True, 'grad_clip_norm': 0.5, 'weight_decay': 0.1,
                          'momentum': 0.9})
  _, variables = _standin_params()
  params = variables['params']
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  rng = np.random.RandomState(0)
  grads_seq = [{k: rng.randn(*v.shape).astype(np.float32) for k, v in flat.items()}
               for _ in range(2)]
  frozen = {k for k in flat if k.startswith('conv2_3x3_bn/')}
  decayed = {k for k in flat if k.endswith('/kernel')}
  assert frozen and decayed and 'conv1_7x7_s2_bn/scale' not in frozen
  expected = _numpy_sgd_reference(flat, grads_seq, 0.01, 0.9, 0.1, 0.5, frozen, decayed)

  tx = optim.create_optimizer(config, optax.constant_schedule(0.01))
  state = tx.init(params)
  p = params
  for grads in grads_seq:
    g = traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in grads.items()})
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  got = {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(p).items()}
  for k in flat:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-7, err_msg=k)
    if k in frozen:
      np.testing.assert_array_equal(got[k], flat[k])


def test_weight_decay_and_partial_bn_masks():
  _, variables = _standin_params()
  decay = traverse_util.flatten_dict(optim.weight_decay_mask(variables['params']), sep='/')
  assert decay == {'conv1_7x7_s2/kernel': True, 'conv1_7x7_s2/bias': False,
                   'conv1_7x7_s2_bn/scale': False, 'conv1_7x7_s2_bn/bias': False,
                   'conv2_3x3_bn/scale': False, 'conv2_3x3_bn/bias': False,
                   'fc/kernel': True, 'fc/bias': False, 'aux_fc/kernel': True,
                   'aux_fc/bias': False}
  labels = traverse_util.flatten_dict(optim.partial_bn_labels(variables['params']), sep='/')
  assert {k for k, v in labels.items() if v == optim.FROZEN} == {'conv2_3x3_bn/scale',
                                                                 'conv2_3x3_bn/bias'}


# ---------------------------------------------------------------------------------------------
# The train step against a numpy reference of Eq. 1-2, Algorithm 1 and Eq. 10.
# ---------------------------------------------------------------------------------------------


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_loss(logits, aux, labels, config):
  """numpy: (loss, alpha (B, S), mask (B, S)) for the row's consensus."""
  t = config.temporal
  lam = config.aux_loss_weight
  logp = _log_softmax(logits.astype(np.float64))                      # (B, S, C)
  entropy = -np.sum(np.exp(logp) * logp, -1)
  alpha = 1.0 / np.maximum(entropy, 1e-6)
  b, s = alpha.shape
  if t.consensus == 'average':
    mask = np.ones_like(alpha)
    mean = _log_softmax(logits.mean(1).astype(np.float64))
    loss = -mean[np.arange(b), labels]
    if aux is not None:
      loss = loss - lam * _log_softmax(aux.mean(1).astype(np.float64))[np.arange(b), labels]
    return loss.mean(), alpha, mask
  groups = t.num_segments if t.snippets_per_segment > 1 else 1
  grouped = alpha.reshape(b, groups, s // groups)
  mask = np.zeros_like(grouped)
  for i in range(b):
    for g in range(groups):
      mask[i, g, np.argsort(-grouped[i, g], kind='stable')[:t.top_n]] = 1.0
  mask = mask.reshape(b, s)
  ce = -np.take_along_axis(logp, labels[:, None, None], -1)[..., 0]   # (B, S)
  if aux is not None:
    ce = ce - lam * np.take_along_axis(_log_softmax(aux.astype(np.float64)),
                                       labels[:, None, None], -1)[..., 0]
  return np.sum(mask * ce) / np.sum(mask), alpha, mask


@pytest.mark.parametrize('row', ['tam_ts3x3_3x2', 'sta_ts9_3', 'sam_cnn3', 'tam_ts6_1'])
def test_train_step_matches_numpy_reference(row):
  config = tiny_config(row='rgb,' + row, **{'model.partial_bn': True, 'weight_decay': 0.0,
                                             'grad_clip_norm': 1e9, 'learning_rate': 0.5})
  num_classes, b = 4, 3
  s = config.temporal.num_segments * config.temporal.snippets_per_segment
  model = StandIn(num_classes, bn_axis_name='batch', aux=config.model.aux_classifier)
  plain = StandIn(num_classes, aux=config.model.aux_classifier)
  variables = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 6)), train=False)
  # Non-zero classifier weights so the snippets' confidences differ clearly.
  params = jax.tree_util.tree_map(lambda x: x, variables['params'])
  params['fc']['kernel'] = jax.random.normal(jax.random.PRNGKey(2), params['fc']['kernel'].shape)
  state = train.TrainState.create(
      apply_fn=model.apply, params=params, batch_stats=variables['batch_stats'],
      tx=optim.create_optimizer(config, optax.constant_schedule(config.learning_rate)))
  batch = random_batch(np.random.RandomState(3), 1, b, s, 32, 6, num_classes)
  one = [jax.devices()[0]]
  step = parallel.make_parallel_step(
      functools.partial(train.train_step, config=config), 'pmap', donate=False,
      out_replicated=True, devices=one)
  new_state, metrics = jax.device_get(parallel.unreplicate(step(
      parallel.replicate(state, 'pmap', one), batch,
      parallel.replicate(jax.random.PRNGKey(0), 'pmap', one)), 'pmap'))

  # Reference: logits of the same network (BN in batch-statistics mode over the B*S snippets).
  x = train.normalize_batch(jnp.asarray(batch['frames'][0]).reshape((b * s, 32, 32, 6)), config)
  variables_in = {'params': params, 'batch_stats': variables['batch_stats']}
  out, _ = plain.apply(variables_in, x, train=True, mutable=['batch_stats'])
  logits = np.asarray(out['logits']).reshape(b, s, -1)
  aux = None if out['aux_logits'] is None else np.asarray(out['aux_logits']).reshape(b, s, -1)
  labels = batch['label'][0]
  loss, alpha, mask = _reference_loss(logits, aux, labels, config)

  np.testing.assert_allclose(metrics['loss'], loss, rtol=RTOL)
  np.testing.assert_allclose(metrics['selected_fraction'], mask.mean(0), atol=1e-7)
  np.testing.assert_allclose(metrics['alpha_selected'],
                             np.sum(alpha * mask) / np.sum(mask), rtol=RTOL)
  if mask.min() == 0:
    np.testing.assert_allclose(metrics['alpha_unselected'],
                               np.sum(alpha * (1 - mask)) / np.sum(1 - mask), rtol=RTOL)
  assert bool(metrics['finite'])
  np.testing.assert_allclose(metrics['accuracy'],
                             np.mean(np.argmax(logits.mean(1), -1) == labels), atol=1e-7)
  # Gradient of the reference loss (its own jnp version, mask fixed) -> SGD first step.
  jmask = jnp.asarray(mask, jnp.float32)

  def ref_loss(p):
    o, _ = plain.apply({'params': p, 'batch_stats': variables['batch_stats']}, x, train=True,
                       mutable=['batch_stats'])
    lg = jax.nn.log_softmax(o['logits'].reshape(b, s, -1))
    if config.temporal.consensus == 'average':
      l = -jax.nn.log_softmax(o['logits'].reshape(b, s, -1).mean(1))[jnp.arange(b), labels]
      if o['aux_logits'] is not None:
        l -= config.aux_loss_weight * jax.nn.log_softmax(
            o['aux_logits'].reshape(b, s, -1).mean(1))[jnp.arange(b), labels]
      return l.mean()
    ce = -jnp.take_along_axis(lg, labels[:, None, None], -1)[..., 0]
    if o['aux_logits'] is not None:
      ce -= config.aux_loss_weight * jnp.take_along_axis(
          jax.nn.log_softmax(o['aux_logits'].reshape(b, s, -1)), labels[:, None, None], -1)[..., 0]
    return jnp.sum(jmask * ce) / jnp.sum(jmask)

  grads = jax.grad(ref_loss)(params)
  # Partial BN: frozen BN parameters have no gradient (train_loss.frozen_as_constants), so the
  # gradient norm covers the trainable parameters only.
  trainable = jax.tree_util.tree_map(
      lambda label, g: g * (label == optim.TRAINABLE), optim.partial_bn_labels(params), grads)
  np.testing.assert_allclose(metrics['grad_norm'], float(optax.global_norm(trainable)),
                             rtol=1e-4)
  labels = traverse_util.flatten_dict(optim.partial_bn_labels(params), sep='/')
  flat_grads = traverse_util.flatten_dict(grads, sep='/')
  got = traverse_util.flatten_dict(new_state.params, sep='/')
  for k, p in traverse_util.flatten_dict(params, sep='/').items():
    # First SGD step (no clip, no decay): p - lr * g; partial BN leaves frozen BNs alone.
    expected = p if labels[k] == optim.FROZEN else p - config.learning_rate * flat_grads[k]
    np.testing.assert_allclose(got[k], expected, rtol=1e-4, atol=1e-6, err_msg=k)


# ---------------------------------------------------------------------------------------------
# The real STA-CNN step on 8 devices (pmap and shard_map) == one device on the whole batch.
# ---------------------------------------------------------------------------------------------

_REAL_EQUIVALENCE = r'''
import functools, jax, numpy as np
from sta_cnn_jax import optim, parallel, train
from tests.train_utils import random_batch, tiny_config
# Flow STA-CNN (SAL + aux head on the ACN features, TS(3x3, 3x1)), TSN's partial BN (the first
# BN in batch-statistics mode, synchronised); 64 px crops: a 2x2 grid, so the spatial
# attention map is not trivially 1.
config = tiny_config(row='flow,sta_ts3x3_3x1', **{'model.dropout_rate': 0.0,
                                                  'model.partial_bn': True,
                                                  'input.crop_size': 64})
S = config.temporal.num_segments * config.temporal.snippets_per_segment
model = train.create_model(config, 2)
lr = optim.create_learning_rate_fn(config, 10)
state = train.create_train_state(jax.random.PRNGKey(0), config, model,
                                 train.input_shape(config), lr)
D = jax.device_count()
batch = random_batch(np.random.RandomState(0), D, 1, S, config.input.crop_size, 10, 2)
whole = {k: v.reshape((1, -1) + v.shape[2:]) for k, v in batch.items()}
step = functools.partial(train.train_step, config=config, learning_rate_fn=lr)
key = jax.random.PRNGKey(1)

def run(mode, devices, b):
  f = parallel.make_parallel_step(step, mode, donate=False, out_replicated=True, devices=devices)
  out = f(parallel.replicate(state, mode, devices), b, parallel.replicate(key, mode, devices))
  return jax.device_get(parallel.unreplicate(out, mode))

one = run('pmap', [jax.devices()[0]], whole)
results = {'pmap': run('pmap', None, batch), 'shard_map': run('shard_map', None, batch)}
(s1, m1) = one
assert bool(m1['finite'])
for mode, (s8, m8) in results.items():
  for name, a, b in [('params', s1.params, s8.params),
                     ('batch_stats', s1.batch_stats, s8.batch_stats)]:
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                            jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(y, x, rtol=RTOL, atol=ATOL,
                                 err_msg=f'{mode} {name} {jax.tree_util.keystr(path)}')
  for k in ('loss', 'accuracy', 'alpha_selected', 'alpha_unselected', 'selected_fraction',
            'grad_norm'):
    np.testing.assert_allclose(m8[k], m1[k], rtol=RTOL, atol=ATOL, err_msg=f'{mode} metric {k}')
# The step moved the weights and the first BN's statistics; the frozen BNs stayed put.
assert not np.allclose(s1.params['acn']['fc']['kernel'], state.params['acn']['fc']['kernel'])
assert not np.array_equal(s1.params['sal']['w'], state.params['sal']['w'])
first, frozen = 'conv1_7x7_s2_bn', 'inception_5b_pool_proj_bn'
assert not np.allclose(s1.batch_stats['acn'][first]['mean'],
                       state.batch_stats['acn'][first]['mean'])
np.testing.assert_array_equal(s1.params['acn'][frozen]['scale'],
                              state.params['acn'][frozen]['scale'])
np.testing.assert_array_equal(s1.batch_stats['acn'][frozen]['mean'],
                              state.batch_stats['acn'][frozen]['mean'])
print('OK', D, float(m1['loss']))
'''.replace('RTOL', repr(RTOL)).replace('ATOL', repr(ATOL))


@pytest.mark.multidevice
@pytest.mark.slow
def test_real_step_on_8_devices_equals_one_device(jax_cache_dir):
  proc = run_python(_REAL_EQUIVALENCE, cache_env(jax_cache_dir), num_devices=8)
  assert 'OK 8' in proc.stdout


# ---------------------------------------------------------------------------------------------
# The loop: NaN stop, input errors (stand-in model: the loop logic, not the network).
# ---------------------------------------------------------------------------------------------


def _loop_config(data_dir, **overrides):
  devices = jax.device_count()
  values = {'batch_size': devices, 'num_train_steps': 8, 'checkpoint.every_steps': 2,
            'log_every_steps': 1, 'model.dropout_rate': 0.5, 'row': None}
  values.update(overrides)
  values.pop('row')
  return tiny_config(data_dir, row='rgb,tam_ts3x3_3x1', **values)


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path,
                                                                    monkeypatch, jax_cache_dir):
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  # After the first lr "epoch" (8 train videos / batch steps) the lr jumps to 1e34: that
  # update overflows the weights' norm (float32), the first non-finite step.
  steps_per_epoch = 8 // jax.device_count()
  config = _loop_config(tiny_dataset, **{'lr_decay_epochs': 1, 'num_epochs': 2,
                                         'lr_decay_factor': 1e36,
                                         'num_train_steps': steps_per_epoch + 3,
                                         'checkpoint.every_steps': 1})
  bad_step = steps_per_epoch + 1
  with pytest.raises(FloatingPointError) as err:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(err.value)
  assert f'non-finite training loss or gradient at step {bad_step}' in message
  assert f'the last good checkpoint is step {bad_step - 1}' in message
  manager = checkpoints.create_manager(str(tmp_path / 'checkpoints'), config)
  assert manager.latest_step() == bad_step - 1
  restored = manager.restore(bad_step - 1)
  leaves = jax.tree_util.tree_leaves(restored['state']['params'])
  assert leaves and all(np.all(np.isfinite(x)) for x in leaves)


def test_missing_data_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  config = _loop_config(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='manifest.json: manifest not found'):
    train.train_and_evaluate(config, str(tmp_path / 'wd'))


def test_missing_shards_are_named(tiny_dataset, tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  empty = tmp_path / 'manifest_only'
  empty.mkdir()
  (empty / 'manifest.json').write_text((tiny_dataset / 'manifest.json').read_text())
  config = _loop_config(empty)
  with pytest.raises(FileNotFoundError,
                     match=r"no TFRecord shards for split 'train'.*train-\*\.tfrecord"):
    train.train_and_evaluate(config, str(tmp_path / 'wd'))


def test_wrong_modality_is_named(tiny_dataset, tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  config = _loop_config(tiny_dataset, row=None)
  config.modality = 'warpflow'
  with pytest.raises(ValueError,
                     match=r"modality 'warpflow' not in the shards of .*\['rgb', 'flow'\]"):
    train.train_and_evaluate(config, str(tmp_path / 'wd'))


def test_batch_not_divisible_by_devices_is_named():
  assert input_pipeline.host_batch_size(8, 1, 4) == 8
  assert input_pipeline.host_batch_size(8, 2, 2) == 4
  with pytest.raises(ValueError, match='batch_size=6 is not divisible by the 4 devices'):
    input_pipeline.host_batch_size(6, 2, 2)


# ---------------------------------------------------------------------------------------------
# kill -9 / resume == uninterrupted (main.py CLI, real shards, stand-in network).
# ---------------------------------------------------------------------------------------------

# python -m sta_cnn_jax.main with the stand-in network (the loop, not the network, is under test:
# dropout RNG, BatchNorm statistics, partial-BN optimizer state, data position). With HANG_AT
# set, the run stops just before saving that step, after training through it, and waits to be
# killed: the work since the last checkpoint is lost, as in a real crash.
_STANDIN_MAIN = r"""
import sys, time
sys.argv = ['sta_cnn_jax.main'] + ARGS
from absl import app
import jax
from sta_cnn_jax import checkpoints, main, train
from tests.train_utils import standin_create_model
train.create_model = standin_create_model
if HANG_AT:
  save = checkpoints.save
  def hanging_save(manager, step, state, rng):
    if step == HANG_AT:
      manager.wait_until_finished()
      print('HANGING', step, flush=True)
      time.sleep(600)
    save(manager, step, state, rng)
  checkpoints.save = hanging_save
jax.config.config_with_absl()
app.run(main.main)
"""

KILL_STEP = 2


def _cli_args(data_dir, workdir, steps, row='rgb,tam_ts3x3_3x1'):
  return [f'--config=configs/demo.py:{row}', f'--workdir={workdir}',
          f'--config.data_dir={data_dir}', '--config.num_classes=2',
          '--config.input.frame_size=(64,80)', f'--config.input.crop_size={TEST_CROP}',
          '--config.batch_size=2', f'--config.num_train_steps={steps}',
          f'--config.checkpoint.every_steps={KILL_STEP}', '--config.checkpoint.keep=5',
          '--config.model.partial_bn=True', '--config.log_every_steps=1',
          '--config.eval.at_end=False', '--config.input.shuffle_buffer=8',
          '--config.input.prefetch_to_device=1']


def _standin_main(args, env, hang_at=0, **kwargs):
  code = _STANDIN_MAIN.replace('ARGS', repr(list(map(str, args)))).replace(
      'HANG_AT', str(hang_at))
  return run_python(code, env, **kwargs)


def _restore_raw(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step),
                                                         'default'))


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tiny_dataset, tmp_path, jax_cache_dir):
  env = cache_env(jax_cache_dir)
  total = 2 * KILL_STEP
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  # The uninterrupted run and the run to be killed, side by side.
  reference = _standin_main(_cli_args(tiny_dataset, straight, total), env, num_devices=2,
                            wait=False)
  proc = _standin_main(_cli_args(tiny_dataset, killed, total), env, hang_at=total,
                       num_devices=2, wait=False)
  try:
    line = ''
    while 'HANGING' not in line and proc.poll() is None:
      line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    reference.communicate(timeout=600)
  finally:
    for p in (proc, reference):
      if p.poll() is None:
        p.kill()
  assert reference.returncode == 0, read_stderr(reference)
  assert f'HANGING {total}' in line, read_stderr(proc)
  assert proc.returncode == -signal.SIGKILL
  saved = sorted(int(p.name) for p in (killed / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved == [KILL_STEP], saved

  _standin_main(_cli_args(tiny_dataset, killed, total), env, num_devices=2)
  a, b = _restore_raw(str(straight), total), _restore_raw(str(killed), total)
  assert int(a['step']) == int(b['step']) == total
  np.testing.assert_array_equal(a['rng'], b['rng'])
  flat_a = jax.tree_util.tree_flatten_with_path(a['state'])[0]
  flat_b = jax.tree_util.tree_leaves(b['state'])
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(y, x, err_msg=jax.tree_util.keystr(path))
  # Training moved the weights after the checkpoint the resume started from, and the
  # partial-BN frozen BN stayed put.
  mid = _restore_raw(str(straight), KILL_STEP)
  assert not np.allclose(mid['state']['params']['fc']['kernel'],
                         a['state']['params']['fc']['kernel'])
  np.testing.assert_array_equal(mid['state']['params']['conv2_3x3_bn']['scale'],
                                a['state']['params']['conv2_3x3_bn']['scale'])
  assert [f for f in os.listdir(killed) if f.startswith('events.out.tfevents')]


# ---------------------------------------------------------------------------------------------
# SAN pre-training (Eq. 4) on RGB pairs against their flow.
# ---------------------------------------------------------------------------------------------


def test_san_pretrain_input_pairs_frames_with_their_flow(tiny_dataset):
  config = tiny_config(tiny_dataset, **{'san_pretrain.batch_size': jax.device_count(),
                                        'san_pretrain.num_segments': 2})
  batch = next(input_pipeline.create_san_pretrain_dataset(config))
  d, b, c = jax.local_device_count(), 1, config.input.crop_size
  assert batch['frames'].shape == (d, b, 2, c, c, 6) and batch['frames'].dtype == np.uint8
  assert batch['flow'].shape == (d, b, 2, c, c, 2) and batch['flow'].dtype == np.float32
  manifest = json.loads((tiny_dataset / 'manifest.json').read_text())
  bound = manifest['flow']['bound']
  assert np.abs(batch['flow']).max() <= bound + 1e-4
  # Quantisation grid (docs/design.md "Shard format"): v = q * 2 * bound / 255 - bound (up to
  # the flip's sign).
  q = (np.abs(batch['flow']) + bound) * 255.0 / (2 * bound)
  q2 = (-np.abs(batch['flow']) + bound) * 255.0 / (2 * bound)
  on_grid = np.minimum(np.abs(q - np.round(q)), np.abs(q2 - np.round(q2)))
  assert on_grid.max() < 1e-3


@pytest.mark.slow
def test_pretrain_san_cli_exports_a_graftable_san(tiny_dataset, tmp_path, jax_cache_dir):
  args = _cli_args(tiny_dataset, tmp_path, 2, row='rgb,sta_ts3x3_3x1') + [
      '--mode=pretrain_san', '--config.san_pretrain.num_steps=2',
      '--config.san_pretrain.batch_size=2', '--config.san_pretrain.num_segments=2',
      '--config.san_pretrain.checkpoint_every_steps=2']
  run_python(None, cache_env(jax_cache_dir), module='sta_cnn_jax.main', args=args)
  export = tmp_path / pretrain_san.SAN_PRETRAIN_DIR / checkpoints.EXPORT_DIR
  variables, _ = checkpoints.load_inference(str(export))
  config = tiny_config()
  model = train.create_model(config, 2)
  target = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, TEST_CROP, TEST_CROP, 6)),
                                               train=False), jax.random.PRNGKey(0))
  grafted = pretrained.graft_san_weights(dict(target), str(export))
  np.testing.assert_array_equal(grafted['params']['san']['conv1']['kernel'],
                                variables['params']['conv1']['kernel'])
  assert (tmp_path / pretrain_san.SAN_PRETRAIN_DIR / 'checkpoints' / '2').is_dir()


# ---------------------------------------------------------------------------------------------
# Train -> final evaluation (sta_cnn_jax.evaluate) -> --mode=eval / export on the checkpoint.
# ---------------------------------------------------------------------------------------------


def _event_scalars(workdir, prefix: str = 'eval/') -> dict:
  """{tag: [(step, value), ...]} of the `prefix` scalars in `workdir`'s TensorBoard events."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(workdir)):
    if name.startswith('events.out.tfevents'):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for value in event.summary.value:
          if value.tag.startswith(prefix):
            number = (tf.make_ndarray(value.tensor).item() if value.HasField('tensor')
                      else value.simple_value)
            out.setdefault(value.tag, []).append((event.step, number))
  return out


def test_train_then_eval_and_export(tiny_dataset, tmp_path, monkeypatch, jax_cache_dir):
  """--mode=train, then --mode=eval (the lead's 25-segment protocol) and --mode=export on the
  checkpoint it left."""
  monkeypatch.setattr(train, 'create_model', standin_create_model)
  config = _loop_config(tiny_dataset, **{'num_train_steps': 2, 'eval.at_end': True,
                                         'eval.batch_size': jax.device_count()})
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  results = train.evaluate_checkpoint(config, str(tmp_path))
  assert results['num_videos'] == 2 and results['row'] == config.row
  assert json.loads((tmp_path / 'results.json').read_text())['metrics'] == results['metrics']
  # AVE / DCW accuracies reach TensorBoard, from the end of training and from --mode=eval.
  scalars = _event_scalars(tmp_path)
  for method in ('ave', 'dcw'):
    for name in ('top1', 'mean_class_accuracy'):
      assert scalars[f'eval/{method}_{name}'] == [(2, results['metrics'][method][name])] * 2
  out = train.export(config, str(tmp_path))
  manifest = json.loads((tiny_dataset / 'manifest.json').read_text())
  assert checkpoints.load_dataset_info(out) == {
      'classes': manifest['classes'], 'num_classes': len(manifest['classes']),
      'frame_size': manifest['frame_size'], 'modalities': manifest['modalities'],
      'rgb': manifest['rgb'], 'flow': manifest['flow']}
  variables, loaded = checkpoints.load_inference(out)
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(
      {'params': state.params, 'batch_stats': state.batch_stats})):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert loaded.row == config.row
