"""Two processes on localhost with jax.distributed (CPU, gloo collectives), each reading its own
shards, train through `train.train_and_evaluate`: both end with identical weights, equal to one
process that feeds its 2 devices the two hosts' batch streams. Two processes evaluating their
own test shards gather the per-video scores: their metrics equal one process's over the same
videos.

The network is a small stand-in (tests/train_utils.StandIn, with dropout and a synchronised
first BatchNorm): this test is about the multi-host loop, input sharding, collectives and
Orbax checkpoints, not the network (the real STA-CNN's multi-device step is test_train's).
"""

import json
import socket

import numpy as np
import pytest

from tests.test_input_pipeline import write_dataset
from tests.train_utils import (cache_env, jax_cache_dir, read_stderr, run_python,  # noqa: F401
                               tiny_dataset)

STEPS = 3
MODES = ('pmap', 'shard_map')
# Identical programs on identical data; only the cross-process reduction order may differ.
RTOL, ATOL = 1e-5, 1e-6

_COMMON = r'''
import numpy as np
from flax import traverse_util
from tests.train_utils import standin_create_model, tiny_config

def make_config(mode):
  return tiny_config(DATA, row='rgb,tam_ts3x3_3x1', **{
      'batch_size': 2, 'num_train_steps': STEPS, 'checkpoint.every_steps': 2,
      'log_every_steps': 1, 'model.dropout_rate': 0.5, 'parallel': mode})

def save(path, state):
  flat = traverse_util.flatten_dict({'params': state.params, 'batch_stats': state.batch_stats},
                                    sep='/')
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})
'''

# Both parallel modes, one after the other, in the same two processes.
_WORKER = _COMMON + r'''
from sta_cnn_jax import parallel
assert parallel.initialize_distributed()
import jax
from sta_cnn_jax import train
train.create_model = standin_create_model
assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
for mode in MODES:
  state = train.train_and_evaluate(make_config(mode), TMP + f'/wd_{mode}')
  save(TMP + f'/{mode}_{jax.process_index()}.npz', state)
print('DONE', jax.process_index())
'''

_REFERENCE = _COMMON + r'''
import functools, jax
from sta_cnn_jax import input_pipeline, optim, parallel, train
assert jax.device_count() == 2
config = make_config('pmap')
model = standin_create_model(config, 2)
num_classes, steps_per_epoch = train.dataset_facts(config)
lr = optim.create_learning_rate_fn(config, steps_per_epoch)
init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))   # as train_and_evaluate
state = train.create_train_state(init_rng, config, model, train.input_shape(config), lr)
hosts = [input_pipeline.create_train_dataset(config, process_index=i, process_count=2,
                                                 num_devices=1)
         for i in range(2)]
step = parallel.make_parallel_step(functools.partial(train.train_step, config=config,
                                                     learning_rate_fn=lr), 'pmap',
                                   out_replicated=True)
p_state, p_rng = parallel.replicate(state, 'pmap'), parallel.replicate(step_rng, 'pmap')
differ = False
for _ in range(STEPS):
  b0, b1 = next(hosts[0]), next(hosts[1])
  differ |= not np.array_equal(b0['frames'], b1['frames'])
  p_state, _ = step(p_state, {k: np.concatenate([b0[k], b1[k]]) for k in b0}, p_rng)
assert differ, 'the two hosts read the same videos'
save(OUT + '.npz', jax.device_get(parallel.unreplicate(p_state, 'pmap')))
print('DONE ref')
'''


# Multi-host eval: 5 test videos in 2 shards (host 0: 3 videos, host 1: 2 and a filler batch).
_EVAL = r'''
from sta_cnn_jax import parallel
parallel.initialize_distributed()   # before anything initialises the XLA backend
import json, jax, numpy as np
from sta_cnn_jax import evaluate, train
from tests.train_utils import standin_create_model, tiny_config
config = tiny_config(DATA, row='rgb,tam_ts3x3_3x1', **{
    'eval.batch_size': 1, 'eval.num_segments': 3, 'eval.num_views': 10})
model = standin_create_model(config, NUM_CLASSES)
variables = train.initialized(jax.random.PRNGKey(0), model, train.input_shape(config),
                              train=False)
results = evaluate.evaluate(config, WORKDIR, variables, model)
segments = results['segments']
order = np.argsort(segments['video_id'])
np.savez(OUT + f'_{jax.process_index()}.npz', video_id=segments['video_id'][order],
         label=segments['label'][order], segment_probs=segments['segment_probs'][order],
         attention=segments['attention'][order])
print('METRICS', jax.process_count(), jax.process_index(), json.dumps(results['metrics']))
print('DONE', jax.process_index())
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _code(template: str, **values) -> str:
  for key, value in values.items():
    template = template.replace(key, repr(value))
  return template

def _run_all(procs: dict) -> dict:
  """Waits for every child; fails naming the first that did not print DONE."""
  try:
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
  for name, proc in procs.items():
    assert proc.returncode == 0 and 'DONE' in outputs[name], (
        f'{name} failed (rc={proc.returncode}):\n{outputs[name][-2000:]}\n{read_stderr(proc)}')
  return outputs


def _two_workers(code: str, env: dict) -> dict:
  """Two processes of one jax.distributed run (1 CPU device each), both running `code`."""
  port = _free_port()
  return {f'worker {i}': run_python(code, dict(env, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                                               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)),
                                    num_devices=1, wait=False)
          for i in range(2)}


@pytest.mark.slow
def test_two_processes_match_each_other_and_one_process(tiny_dataset, tmp_path, jax_cache_dir):
  env = cache_env(jax_cache_dir)
  data = str(tiny_dataset)
  # All three processes at once: the reference and the two workers of the 2-process run.
  procs = {'ref': run_python(_code(_REFERENCE, DATA=data, STEPS=STEPS, OUT=str(tmp_path / 'ref')),
                             env, num_devices=2, wait=False)}
  procs.update(_two_workers(_code(_WORKER, DATA=data, STEPS=STEPS, MODES=MODES,
                                  TMP=str(tmp_path)), env))
  _run_all(procs)

  expected = np.load(tmp_path / 'ref.npz')
  for mode in MODES:
    results = [np.load(tmp_path / f'{mode}_{i}.npz') for i in range(2)]
    assert sorted(results[0].files) == sorted(expected.files)
    for key in expected.files:
      np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=f'{mode} {key}')
      np.testing.assert_allclose(results[0][key], expected[key], rtol=RTOL, atol=ATOL,
                                 err_msg=f'{mode} {key} vs single process')
    # One checkpoint set, written once for both processes.
    assert (tmp_path / f'wd_{mode}' / 'checkpoints' / str(STEPS)).is_dir()


def _metrics(output: str) -> dict:
  line = next(l for l in output.splitlines() if l.startswith('METRICS'))
  return json.loads(line.split(' ', 3)[3])


@pytest.mark.slow
def test_two_process_eval_gathers_the_metrics_of_one_process(tmp_path, jax_cache_dir):
  data = write_dataset(tmp_path / 'shards', {'test': (5, 26, 40, 9, 30)}, num_shards=2)
  env = cache_env(jax_cache_dir)
  values = dict(DATA=data, NUM_CLASSES=5)  # labels 0-4: the model's outputs cover them
  procs = {'single': run_python(_code(_EVAL, WORKDIR=str(tmp_path / 'one'),
                                      OUT=str(tmp_path / 'one'), **values),
                                env, num_devices=1, wait=False)}
  procs.update(_two_workers(_code(_EVAL, WORKDIR=str(tmp_path / 'two'),
                                  OUT=str(tmp_path / 'two'), **values), env))
  outputs = _run_all(procs)

  expected = _metrics(outputs['single'])
  print('1 process:', expected)
  assert expected['ave']['top1'] > 0  # (seed 0) so that equal metrics are not 0 == 0
  one = np.load(tmp_path / 'one_0.npz')
  assert len(one['video_id']) == 5
  for i in range(2):
    gathered = _metrics(outputs[f'worker {i}'])
    print(f'2 processes, process {i}:', gathered)
    assert gathered == expected
    two = np.load(tmp_path / f'two_{i}.npz')
    np.testing.assert_array_equal(two['video_id'], one['video_id'])
    np.testing.assert_array_equal(two['label'], one['label'])
    np.testing.assert_allclose(two['segment_probs'], one['segment_probs'], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(two['attention'], one['attention'], rtol=RTOL, atol=ATOL)
  # Process 0 wrote the results of all five videos.
  results = json.loads((tmp_path / 'two' / 'results.json').read_text())
  assert results['num_videos'] == 5 and results['metrics'] == expected
  assert len(np.load(tmp_path / 'two' / 'eval_scores.npz')['video_id']) == 5
