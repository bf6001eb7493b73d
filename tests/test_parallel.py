"""sta_cnn_jax.parallel: pmap and jit + shard_map give the single-device result.

A small Dense + synchronised BatchNorm model trained one SGD step on 8 fake CPU devices must
equal the same step on one device over the whole batch (params and BN statistics), for both
modes; per-device outputs come back as (D, B, ...); replicate / unreplicate round-trip.
"""

import numpy as np
import pytest

from sta_cnn_jax import parallel
from tests.conftest import run_multidevice

# fp32, a few ops per value: relative agreement of a reordered reduction.
RTOL, ATOL = 1e-5, 1e-6

_EQUIVALENCE = r'''
import jax, jax.numpy as jnp, numpy as np, optax
import flax.linen as nn
from sta_cnn_jax import parallel

class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(5)(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name='batch', momentum=0.5)(x)
    return nn.Dense(3)(nn.relu(x))

net = Net()
rng = np.random.RandomState(0)
D, B = jax.device_count(), 2
x = rng.randn(D, B, 4).astype(np.float32)
y = rng.randint(0, 3, (D, B)).astype(np.int32)
tx = optax.sgd(0.1, momentum=0.9)

def step(state, batch):
  params, stats, opt = state
  def loss_fn(p):
    logits, new = net.apply({'params': p, 'batch_stats': stats}, batch['x'], train=True,
                            mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']).mean(), new
  (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  grads = jax.lax.pmean(grads, 'batch')
  updates, opt = tx.update(grads, opt, params)
  new_state = (optax.apply_updates(params, updates), new['batch_stats'], opt)
  return new_state, jax.lax.pmean(loss, 'batch')

def eval_step(state, xb):
  return net.apply({'params': state[0], 'batch_stats': state[1]}, xb, train=False)

v = jax.jit(lambda k: net.init(k, jnp.zeros((1, 4)), train=False))(jax.random.PRNGKey(0))
state0 = (v['params'], v['batch_stats'], tx.init(v['params']))
results = {}
for mode in parallel.MODES:
  # Single device, whole batch: the same code path on a 1-device mesh.
  one = [jax.devices()[0]]
  s1, l1 = parallel.make_parallel_step(step, mode, donate=False, out_replicated=True,
                                       devices=one)(
      parallel.replicate(state0, mode, devices=one),
      {'x': x.reshape(1, D * B, 4), 'y': y.reshape(1, D * B)})
  s8, l8 = parallel.make_parallel_step(step, mode, donate=False, out_replicated=True)(
      parallel.replicate(state0, mode), {'x': x, 'y': y})
  s1 = jax.device_get(parallel.unreplicate((s1, l1), mode))
  s8 = jax.device_get(parallel.unreplicate((s8, l8), mode))
  e8 = jax.device_get(parallel.make_parallel_step(eval_step, mode, donate=False)(
      parallel.replicate(s8[0], mode), x))
  results[mode] = dict(one=s1, many=s8, eval=e8)
  np.testing.assert_allclose(e8.reshape(D * B, 3), np.asarray(net.apply(
      {'params': s8[0][0], 'batch_stats': s8[0][1]}, x.reshape(D * B, 4), train=False)),
      rtol=1e-5, atol=1e-6)

for mode, r in results.items():
  (p1, b1, _), l1 = r['one']
  (p8, b8, _), l8 = r['many']
  for a, b in zip(jax.tree.leaves((p1, b1, l1)), jax.tree.leaves((p8, b8, l8))):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
  # The step changed something (guards against a no-op wrapper).
  assert not np.allclose(jax.tree.leaves(p8)[0], jax.tree.leaves(state0[0])[0])
  assert r['eval'].shape == (D, B, 3), r['eval'].shape
# Both modes agree with each other.
for a, b in zip(jax.tree.leaves(results['pmap']['many'][0]),
                jax.tree.leaves(results['shard_map']['many'][0])):
  np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
print('OK', D)
'''.replace('RTOL', repr(RTOL)).replace('ATOL', repr(ATOL))


@pytest.mark.multidevice
def test_pmap_and_shard_map_equal_single_device_step():
  out = run_multidevice(_EQUIVALENCE, num_devices=8)
  assert 'OK 8' in out


def test_replicate_unreplicate_roundtrip():
  tree = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.int32(7)}
  for mode in parallel.MODES:
    back = parallel.unreplicate(parallel.replicate(tree, mode), mode)
    np.testing.assert_array_equal(np.asarray(back['a']), tree['a'])
    assert int(back['b']) == 7


def test_replicated_forms():
  import jax  # pylint: disable=g-import-not-at-top
  x = np.ones((2, 3), np.float32)
  assert parallel.replicate(x, 'pmap').shape == (jax.local_device_count(), 2, 3)
  assert parallel.replicate(x, 'shard_map').shape == (2, 3)


def test_unknown_mode_and_bad_batch_are_named():
  with pytest.raises(ValueError, match="unknown parallel mode 'spmd'"):
    parallel.make_parallel_step(lambda s, b: s, 'spmd')
  import jax  # pylint: disable=g-import-not-at-top
  wrong = jax.local_device_count() + 1
  with pytest.raises(ValueError, match=f'leading axis {wrong} != .* local devices'):
    parallel.shard_batch_for_mode({'x': np.zeros((wrong, 2))}, 'pmap')


def test_initialize_distributed_single_process_is_noop(monkeypatch):
  for key in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID,
              parallel.TPU_HOSTS_ENV) + parallel.CLUSTER_SIZE_ENV:
    monkeypatch.delenv(key, raising=False)
  assert parallel.initialize_distributed() is False


def test_initialize_distributed_needs_process_count(monkeypatch):
  monkeypatch.setenv(parallel.ENV_COORDINATOR, 'localhost:1234')
  monkeypatch.delenv(parallel.ENV_NUM_PROCESSES, raising=False)
  monkeypatch.delenv(parallel.ENV_PROCESS_ID, raising=False)
  with pytest.raises(ValueError, match='JAX_NUM_PROCESSES'):
    parallel.initialize_distributed()
