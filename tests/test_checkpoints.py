"""sta_cnn_jax.checkpoints: Orbax save/restore of {state, rng, step}, shape-checked restore,
inference export, and grafting of ImageNet ACN / pretrained SAN weights."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sta_cnn_jax import checkpoints, optim, pretrained, state_dicts, train
from sta_cnn_jax.models import BNInception, SpatialAttentionNetwork, bn_inception
from tests.train_utils import StandIn, tiny_config


def _standin_state(num_classes=3, seed=0, config=None):
  config = config or tiny_config()
  model = StandIn(num_classes)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 6)), train=False))(
      jax.random.PRNGKey(seed))
  return train.TrainState.create(apply_fn=model.apply, params=variables['params'],
                                 tx=optim.create_optimizer(config, optax.constant_schedule(0.1)),
                                 batch_stats=variables['batch_stats'])


def _perturbed(state, scale):
  """A state whose every array differs from the fresh one (params, momenta, step)."""
  grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, scale), state.params)
  return state.apply_gradients(grads=grads).replace(
      batch_stats=jax.tree_util.tree_map(lambda x: x + scale, state.batch_stats))


def test_save_restore_roundtrip(tmp_path):
  config = tiny_config()
  state = _perturbed(_standin_state(), 0.5)
  rng = jax.random.PRNGKey(7)
  manager = checkpoints.create_manager(str(tmp_path / 'ckpt'), config)
  checkpoints.save(manager, 5, state, rng)
  manager.wait_until_finished()
  fresh = _standin_state()
  new_state, new_rng, step = checkpoints.restore_latest(manager, fresh, jax.random.PRNGKey(0))
  assert step == 5 and int(new_state.step) == int(state.step) == 1
  np.testing.assert_array_equal(new_rng, np.asarray(rng))
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(new_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree_util.tree_structure(new_state.opt_state) == jax.tree_util.tree_structure(
      state.opt_state)


def test_no_checkpoint_returns_none(tmp_path):
  manager = checkpoints.create_manager(str(tmp_path / 'empty'), tiny_config())
  assert checkpoints.restore_latest(manager, _standin_state(), jax.random.PRNGKey(0)) is None


def test_keeps_the_newest(tmp_path):
  config = tiny_config(**{'checkpoint.keep': 2})
  manager = checkpoints.create_manager(str(tmp_path / 'ckpt'), config)
  state = _standin_state()
  for step in (1, 2, 3, 4):
    checkpoints.save(manager, step, state, jax.random.PRNGKey(0))
  manager.wait_until_finished()
  assert list(manager.all_steps()) == [3, 4]


def test_mismatch_names_every_path_and_both_shapes(tmp_path):
  config = tiny_config()
  manager = checkpoints.create_manager(str(tmp_path / 'ckpt'), config)
  checkpoints.save(manager, 1, _standin_state(num_classes=3), jax.random.PRNGKey(0))
  manager.wait_until_finished()
  with pytest.raises(checkpoints.CheckpointMismatchError) as err:
    checkpoints.restore_latest(manager, _standin_state(num_classes=5), jax.random.PRNGKey(0))
  message = str(err.value)
  # params, and the momentum of the trainable optimizer branch, of the classifier.
  assert 'state/params/fc/kernel: checkpoint shape (4, 3) != config shape (4, 5)' in message
  assert 'state/params/fc/bias: checkpoint shape (3,) != config shape (5,)' in message
  assert message.count('fc/kernel') == 2 and message.count('fc/bias') == 2
  assert 'conv1_7x7_s2' not in message


def _abstract_state(config, num_classes):
  return train.abstract_train_state(config, train.create_model(config, num_classes))


def test_real_state_roundtrip_restores_without_initialising(tmp_path):
  """A whole STA-CNN TrainState (partial-BN optimizer state included) saved and restored into
  the config's abstract state: what a resumed run does instead of initialising."""
  config = tiny_config(**{'model.partial_bn': True})
  model = train.create_model(config, 2)
  rng = np.random.RandomState(0)
  saved = jax.tree_util.tree_map(
      lambda s: (rng.randn(*s.shape).astype(s.dtype) if np.issubdtype(s.dtype, np.floating)
                 else np.full(s.shape, 11, s.dtype)), train.abstract_train_state(config, model))
  manager = checkpoints.create_manager(str(tmp_path / 'ckpt'), config)
  checkpoints.save(manager, 11, saved, jax.random.PRNGKey(5))
  manager.wait_until_finished()
  state, step_rng = train.restore_or_create_state(
      config, model, checkpoints.create_manager(str(tmp_path / 'ckpt'), config))
  np.testing.assert_array_equal(step_rng, np.asarray(jax.random.PRNGKey(5)))
  assert int(state.step) == 11 and state.apply_fn == model.apply
  flat_saved = jax.tree_util.tree_flatten_with_path(saved)[0]
  flat_state = jax.tree_util.tree_leaves(state)
  assert len(flat_saved) == len(flat_state) > 500
  for (path, a), b in zip(flat_saved, flat_state):
    np.testing.assert_array_equal(np.asarray(b), a, err_msg=jax.tree_util.keystr(path))


def test_real_config_mismatch_is_named(tmp_path):
  """A checkpoint of one STA-CNN config restored under another (classes, SAN widths)."""
  config = tiny_config()
  saved = _abstract_state(config, 2)
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), saved)
  manager = checkpoints.create_manager(str(tmp_path / 'ckpt'), config)
  checkpoints.save(manager, 3, zeros, jax.random.PRNGKey(0))
  manager.wait_until_finished()
  other = tiny_config(**{'model.san_widths': (8, 16, 16, 16, 32, 32, 32, 32, 64, 64)})
  with pytest.raises(checkpoints.CheckpointMismatchError) as err:
    checkpoints.restore_latest(manager, _abstract_state(other, 3), jax.random.PRNGKey(0))
  message = str(err.value)
  assert ('state/params/acn/fc/kernel: checkpoint shape (1024, 2) != config shape (1024, 3)'
          in message)
  assert ('state/params/san/conv1/kernel: checkpoint shape (7, 7, 6, 16) != config shape '
          '(7, 7, 6, 8)' in message)
  assert 'state/params/aux_fc/kernel: checkpoint shape (128, 2) != config shape (64, 3)' in message
  assert str(tmp_path / 'ckpt' / '3') in message


def test_export_and_load_inference(tmp_path):
  config = tiny_config()
  state = _perturbed(_standin_state(), 0.25)
  out = checkpoints.export_inference(state, config, str(tmp_path / 'export'))
  variables, loaded = checkpoints.load_inference(out)
  assert set(variables) == {'params', 'batch_stats'}
  for a, b in zip(jax.tree_util.tree_leaves({'params': state.params,
                                             'batch_stats': state.batch_stats}),
                  jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert loaded.row == config.row and tuple(loaded.model.san_widths) == tuple(
      config.model.san_widths)
  assert 'opt_state' not in variables
  assert checkpoints.load_dataset_info(out) is None  # exported without its dataset
  info = {'classes': ['a', 'b'], 'num_classes': 2, 'frame_size': (64, 80),
          'modalities': ['rgb'], 'rgb': {'format': 'jpeg', 'quality': 90}, 'flow': None,
          'dataset': 'x', 'num_videos': {'test': 1}}
  checkpoints.export_inference(state, config, out, dataset=info)
  assert checkpoints.load_dataset_info(out) == {
      'classes': ['a', 'b'], 'num_classes': 2, 'frame_size': [64, 80], 'modalities': ['rgb'],
      'rgb': {'format': 'jpeg', 'quality': 90}, 'flow': None}
  with open(os.path.join(out, checkpoints.DATASET_JSON), 'w') as f:
    f.write('{"classes": ["a"], "num_classes": 2}')
  with pytest.raises(ValueError, match=r'dataset.json: 1 classes but num_classes=2'):
    checkpoints.load_dataset_info(out)
  with pytest.raises(FileNotFoundError, match='not an inference export'):
    checkpoints.load_inference(str(tmp_path))


def _random_like(tree, seed):
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: rng.randn(*s.shape).astype(np.float32), tree)


def test_graft_acn_with_cross_modality_init(tmp_path):
  """ImageNet BN-Inception (RGB conv1, 1000-way fc) into a flow STA-CNN."""
  imagenet = jax.eval_shape(lambda k: BNInception(num_classes=1000).init(
      k, jnp.zeros((1, 64, 64, 3)), train=False), jax.random.PRNGKey(0))
  converted = _random_like(dict(imagenet), 1)
  path = tmp_path / 'bninception.npz'
  state_dicts.save_converted(path, converted, {'kind': 'test'})

  config = tiny_config(row='flow,sta_ts6_1')
  model = train.create_model(config, 2)
  target = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 64, 64, 10)), train=False),
                          jax.random.PRNGKey(0))
  grafted = pretrained.graft_acn_weights(dict(target), str(path), 'flow')
  conv1 = grafted['params']['acn']['conv1_7x7_s2']['kernel']
  rgb_conv1 = converted['params']['conv1_7x7_s2']['kernel']           # (7, 7, 3, 64)
  assert conv1.shape == (7, 7, 10, 64)
  np.testing.assert_allclose(conv1, np.repeat(rgb_conv1.mean(axis=2, keepdims=True), 10, axis=2),
                             rtol=1e-6)
  np.testing.assert_array_equal(grafted['params']['acn']['inception_5b_1x1']['kernel'],
                                converted['params']['inception_5b_1x1']['kernel'])
  np.testing.assert_array_equal(grafted['batch_stats']['acn']['inception_3a_1x1_bn']['mean'],
                                converted['batch_stats']['inception_3a_1x1_bn']['mean'])
  # The 1000-way ImageNet classifier does not fit 2 classes: the model's own init stays.
  assert isinstance(grafted['params']['acn']['fc']['kernel'], jax.ShapeDtypeStruct)
  assert grafted['params']['acn']['fc']['kernel'].shape == (1024, 2)
  # Without cross-modality init the channel mismatch is an error naming the path.
  with pytest.raises(state_dicts.ConversionError, match='acn/conv1_7x7_s2/kernel'):
    pretrained.graft_acn_weights(dict(target), str(path), 'flow', cross_modality=False)


def test_graft_san_from_pretrain_export(tmp_path):
  config = tiny_config()
  san = SpatialAttentionNetwork(tuple(config.model.san_widths))
  san_params = _random_like(jax.eval_shape(
      lambda k: san.init(k, jnp.zeros((1, 64, 64, 6))), jax.random.PRNGKey(0))['params'], 2)
  export = checkpoints.export_inference({'params': san_params}, config, str(tmp_path / 'san'))
  model = train.create_model(config, 2)
  target = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 64, 64, 6)), train=False),
                          jax.random.PRNGKey(0))
  grafted = pretrained.graft_san_weights(dict(target), export)
  for a, b in zip(jax.tree_util.tree_leaves(grafted['params']['san']),
                  jax.tree_util.tree_leaves(san_params)):
    np.testing.assert_array_equal(a, b)
  assert isinstance(grafted['params']['acn']['fc']['kernel'], jax.ShapeDtypeStruct)

  narrow = tiny_config(**{'model.san_widths': (8,) * 10})
  narrow_model = train.create_model(narrow, 2)
  narrow_target = jax.eval_shape(
      lambda k: narrow_model.init(k, jnp.zeros((1, 64, 64, 6)), train=False),
      jax.random.PRNGKey(0))
  with pytest.raises(state_dicts.ConversionError, match=r'san/conv1/kernel: expected \(7, 7, 6, 8\)'):
    pretrained.graft_san_weights(dict(narrow_target), export)
  flow_model = train.create_model(tiny_config(row='flow,sta_ts6_1'), 2)
  flow_target = jax.eval_shape(
      lambda k: flow_model.init(k, jnp.zeros((1, 64, 64, 10)), train=False),
      jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='has no SAN'):
    pretrained.graft_san_weights(dict(flow_target), export)


def test_partial_bn_first_bn_is_the_only_trainable_bn():
  assert not bn_inception.is_frozen_bn_param(('acn', 'conv1_7x7_s2_bn', 'scale'))
  assert bn_inception.is_frozen_bn_param(('acn', 'inception_3a_1x1_bn', 'bias'))


def test_restore_in_a_new_manager_reads_metadata(tmp_path):
  """A resumed process opens a new manager: shapes are checked before anything is restored."""
  config = tiny_config()
  directory = str(tmp_path / 'ckpt')
  first = checkpoints.create_manager(directory, config)
  checkpoints.save(first, 2, _perturbed(_standin_state(), 0.5), jax.random.PRNGKey(3))
  first.wait_until_finished()
  second = checkpoints.create_manager(directory, config)
  state, rng, step = checkpoints.restore_latest(second, _standin_state(), jax.random.PRNGKey(0))
  assert step == 2 and int(state.step) == 1
  np.testing.assert_array_equal(rng, np.asarray(jax.random.PRNGKey(3)))
  with pytest.raises(checkpoints.CheckpointMismatchError, match='fc/kernel'):
    checkpoints.restore_latest(checkpoints.create_manager(directory, config),
                               _standin_state(num_classes=4), jax.random.PRNGKey(0))
