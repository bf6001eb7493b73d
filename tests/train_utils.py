"""Helpers shared by the training tests (test_train, test_checkpoints, test_distributed, ...).

* `tiny_dataset` (session fixture): a tiny real dataset — data_prep.synthetic videos prepared
  into TFRecord shards by data_prep.prepare (2 classes, 8 train videos in 4 shards, 64x80
  frames, RGB + DIS flow).
* `jax_cache_dir` (session fixture): one persistent XLA compilation cache for every test
  process, so the same program compiled in several subprocesses (and in the single- and
  8-device passes of CI) is compiled once: BN-Inception takes tens of seconds to compile on
  2 busy cores. Default `$XDG_CACHE_HOME/sta-cnn-jax/jax-test-cache` (~/.cache/...); set
  STA_CNN_JAX_CACHE to use another folder (e.g. an empty one for cold timings).
* `tiny_config`: the demo config shrunk for tests (32 px crops).
* `StandIn`: a small Flax model with STACNN's output dict, for tests of the loop logic.
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import flax.linen as nn
from flax import traverse_util
import jax.numpy as jnp
import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# One model configuration for every test that runs the real STACNN, so their compiled
# programs are shared through the compilation cache.
TEST_ROW = 'rgb,sta_ts3x3_3x1'
# 32 px crops (grid K = 1): a quarter of the work of 64 px; the compile time, which dominates
# these tests on 2 CPU cores, is the same.
TEST_CROP = 32
TEST_FRAME_HW = (64, 80)
TEST_CLASSES = 2
# Videos per batch of the test runs (the miniature trains with 16; 8 keeps these runs short).
TEST_BATCH = 8


def tiny_config(data_dir: str = '', row: str = TEST_ROW, **overrides):
  """configs/demo.py:<row> for tests: TEST_CROP crops, 64x80 frames, no final eval."""
  from configs import base, demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config(row)
  config.data_dir = str(data_dir)
  config.num_classes = TEST_CLASSES
  config.input.frame_size = TEST_FRAME_HW
  config.input.crop_size = TEST_CROP
  config.input.shuffle_buffer = 8
  config.input.prefetch_to_device = 1
  config.eval.at_end = False
  config.checkpoint.async_save = True
  # The paper's network and optimiser (full-width BN-Inception, printed SAL, SGD, step schedule,
  # no PreciseBN): these tests check the paper's code path; tests/test_learning.py checks the
  # miniature recipe's switches.
  config.model.width_multiplier = 1.0
  config.model.fc_init_std = 0.001
  config.model.sal_weights = 'per_location'
  config.model.sal_normalisation = 'none'
  config.optimizer = 'sgd'
  config.weight_decay = base.get_base_config(config.modality).weight_decay
  config.lr_schedule = 'step'
  config.warmup_steps = 0
  config.temporal.tam_backward = 'masked'   # the literal Algorithm 1
  config.precise_bn.num_batches = 0
  config.batch_size = TEST_BATCH
  return set_fields(config, overrides)


def set_fields(config, fields: dict):
  """Sets dotted config fields ({'eval.batch_size': 2, ...}); returns the config."""
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def cache_env(cache_dir: str) -> dict:
  """Environment variables that make a JAX process use the shared compilation cache."""
  return {'JAX_COMPILATION_CACHE_DIR': str(cache_dir),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
          'TF_CPP_MIN_LOG_LEVEL': '2'}


def use_cache_in_process(cache_dir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', str(cache_dir))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@pytest.fixture(scope='session')
def jax_cache_dir():
  default = pathlib.Path(os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache'))
  path = os.environ.get('STA_CNN_JAX_CACHE') or str(default / 'sta-cnn-jax' / 'jax-test-cache')
  os.makedirs(path, exist_ok=True)
  for key, value in cache_env(path).items():
    os.environ.setdefault(key, value)
  use_cache_in_process(path)
  return path


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory) -> pathlib.Path:
  """data_prep.synthetic -> data_prep.prepare: 8 train videos in 4 shards, 2 test videos."""
  from data_prep import prepare, synthetic  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('tiny_dataset')
  source, out = root / 'source', root / 'shards'
  synthetic.generate(source, num_classes=TEST_CLASSES, videos_per_class=5, test_per_class=1,
                     frames=12, size=(96, 72), seed=0)
  prepare.prepare(prepare.PrepareOptions(
      out=str(out), dataset='synthetic', videos=str(source), modalities=('rgb', 'flow'),
      flow='dis', frame_width=TEST_FRAME_HW[1], frame_height=TEST_FRAME_HW[0], workers=1,
      shard_size=2, progress=False))
  return out


def run_python(code: str | None, env_extra: dict, timeout: float = 600, num_devices: int = 1,
               check: bool = True, wait: bool = True, module: str | None = None,
               args: tuple = ()):
  """Runs `code` (or `python -m module args`) in a fresh Python with `num_devices` CPU devices.

  Returns the CompletedProcess (failing the test on a non-zero exit when `check`), or the
  Popen when not `wait`.
  """
  env = dict(os.environ)
  env.update(env_extra)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  command = ([sys.executable, '-m', module] if module else
             [sys.executable, '-c', textwrap.dedent(code)]) + [str(a) for a in args]
  if not wait:
    # stderr (absl / Orbax logs) goes to a file: a full pipe would block the child while the
    # test waits on another process. Read it back with `read_stderr(proc)`.
    log = tempfile.TemporaryFile(mode='w+')
    proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=log, text=True)
    proc.stderr_file = log
    return proc
  proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    pytest.fail(f'subprocess failed (rc={proc.returncode}):\n--- stdout ---\n'
                f'{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-6000:]}')
  return proc


def read_stderr(proc, tail: int = 6000) -> str:
  """The end of a `run_python(..., wait=False)` child's stderr."""
  proc.stderr_file.seek(0)
  return proc.stderr_file.read()[-tail:]


class StandIn(nn.Module):
  """Conv -> BN -> ReLU -> GAP -> Dense: STACNN's output dict at a fraction of the cost.

  Its BatchNorm is named like BN-Inception's first BN (`conv1_7x7_s2_bn`, trains under
  partial BN) and a second one like a frozen one (`conv2_3x3_bn`).
  """
  num_classes: int
  bn_axis_name: str | None = None
  dropout_rate: float = 0.0
  aux: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), (4, 4), name='conv1_7x7_s2')(x[..., :3])
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name,
                     name='conv1_7x7_s2_bn')(x)
    x = nn.relu(x)
    x = nn.BatchNorm(use_running_average=True, name='conv2_3x3_bn')(x)
    return standin_head(x, self.num_classes, self.dropout_rate, self.aux, train)


def standin_head(x, num_classes: int, dropout_rate: float, aux: bool, train: bool) -> dict:
  """GAP → dropout → 'fc' (and an 'aux_fc' head), returned in STACNN's output dict.

  Call from inside a stand-in's `nn.compact` method: the Dense layers become its submodules.
  """
  pooled = jnp.mean(x, axis=(1, 2))
  logits = nn.Dense(num_classes, name='fc')(
      nn.Dropout(dropout_rate)(pooled, deterministic=not train))
  aux_logits = nn.Dense(num_classes, name='aux_fc')(pooled) if aux else None
  return {'logits': logits, 'aux_logits': aux_logits, 'attention': None, 'flow': None,
          'features': x}


def standin_create_model(config, num_classes):
  """Drop-in for train.create_model returning a StandIn (monkeypatch in loop tests)."""
  return StandIn(num_classes, bn_axis_name='batch' if config.model.sync_batch_norm else None,
                 dropout_rate=config.model.dropout_rate, aux=config.model.aux_classifier)


def random_batch(rng: np.random.RandomState, devices: int, per_device: int, snippets: int,
                 size: int, channels: int, num_classes: int) -> dict:
  return {'frames': rng.randint(0, 256, (devices, per_device, snippets, size, size, channels)
                                ).astype(np.uint8),
          'label': rng.randint(0, num_classes, (devices, per_device)).astype(np.int32)}


def assert_grads_close(got, want, rtol: float, atol_scale: float) -> dict:
  """Every leaf of the gradient tree `got` equals `want`'s (same keys; atol = atol_scale x the
  largest |want|), and `want` is not all zero. Returns `want` flattened with '/' keys."""
  flat_w = traverse_util.flatten_dict(want, sep='/')
  flat_g = traverse_util.flatten_dict(got, sep='/')
  assert flat_w.keys() == flat_g.keys()
  scale = max(float(np.abs(g).max()) for g in flat_w.values())
  assert scale > 0
  for k in flat_w:
    np.testing.assert_allclose(flat_g[k], flat_w[k], rtol=rtol, atol=atol_scale * scale,
                               err_msg=k)
  return flat_w


def loss_and_grads_in_mode(config, state, batch, mode: str):
  """Jitted `train_loss.loss_and_grads` of device 0's part of `batch` with
  temporal.tam_backward = mode: (loss, grads, aux)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sta_cnn_jax import train, train_loss  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.temporal.tam_backward = mode
  b, s = batch['frames'].shape[1:3]
  x = train.normalize_batch(jnp.asarray(batch['frames'][0]).reshape(
      (b * s,) + batch['frames'].shape[3:]), config)
  fn = jax.jit(
      lambda st, x, y: train_loss.loss_and_grads(st, x, y, jax.random.PRNGKey(0), config))
  return fn(state, x, jnp.asarray(batch['label'][0]))
