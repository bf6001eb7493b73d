"""The program's own XLA settings (sta_cnn_jax/xla_defaults.py)."""

import os
import subprocess
import sys

import pytest

from sta_cnn_jax import job_pool
from sta_cnn_jax import xla_defaults

YNN = xla_defaults.YNN_FUSION_FLAG
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = '--xla_force_host_platform_device_count=8'


def test_named_flags():
  assert xla_defaults.named_flags('--a=1  --b_c --d=x=y -e') == {'a', 'b_c', 'd', 'e'}
  assert xla_defaults.named_flags('') == set()


def test_eigen_flag_from_two_cores_appended_to_user_flags():
  env = {'XLA_FLAGS': DEVICES}
  assert xla_defaults.apply(env, num_cpus=2) == f'{DEVICES} --{YNN}=' == env['XLA_FLAGS']
  assert env[xla_defaults.APPLIED_ENV] == f'--{YNN}='
  env = {}
  assert xla_defaults.apply(env, num_cpus=16) == f'--{YNN}='
  env = {}
  assert xla_defaults.apply(env, num_cpus=1) == ''
  assert env == {}


def test_a_pinned_child_re_decides_and_keeps_the_user_flags():
  """A process that inherited the 2-core choice and now runs on one core drops the flag this
  module added, and only that one."""
  env = {'XLA_FLAGS': DEVICES}
  xla_defaults.apply(env, num_cpus=2)
  assert xla_defaults.apply(env, num_cpus=1) == DEVICES == env['XLA_FLAGS']
  assert xla_defaults.APPLIED_ENV not in env
  assert xla_defaults.apply(env, num_cpus=2) == f'{DEVICES} --{YNN}='


def test_user_value_wins_and_opt_out():
  env = {'XLA_FLAGS': f'--{YNN}=dot,eltwise'}
  assert xla_defaults.apply(env, num_cpus=2) == f'--{YNN}=dot,eltwise'
  assert xla_defaults.APPLIED_ENV not in env
  xla_defaults.apply(env, num_cpus=1)
  assert env['XLA_FLAGS'] == f'--{YNN}=dot,eltwise'
  env = {'XLA_FLAGS': DEVICES, xla_defaults.OPT_OUT_ENV: '0'}
  assert xla_defaults.apply(env, num_cpus=2) == DEVICES
  env = {xla_defaults.OPT_OUT_ENV: '0'}
  xla_defaults.apply(env, num_cpus=2)
  assert 'XLA_FLAGS' not in env


def _child_flags(env_updates, cores=None):
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', xla_defaults.OPT_OUT_ENV, xla_defaults.APPLIED_ENV)}
  env.update(env_updates)
  code = 'import os, sta_cnn_jax, jax; jax.devices(); print(os.environ.get("XLA_FLAGS", ""))'
  argv = [sys.executable, '-c', code]
  if cores is not None:
    argv = ['taskset', '-c', cores] + argv
  out = subprocess.run(argv, env=env, cwd=REPO, check=True, capture_output=True, text=True)
  lines = out.stdout.strip().splitlines()
  return lines[-1] if lines else ''


def test_import_applies_before_the_backend_starts():
  """A fresh interpreter: importing the package sets the flags for its cores, and XLA accepts
  them (a flag XLA does not know aborts the backend start)."""
  expected = f'--{YNN}=' if len(xla_defaults.available_cores()) >= xla_defaults.EIGEN_MIN_CPUS else ''
  assert _child_flags({}) == expected
  assert _child_flags({xla_defaults.OPT_OUT_ENV: '0'}) == ''


def _worker_flags():
  return os.environ.get('XLA_FLAGS', '')


@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity') or job_pool.default_workers() < 2,
                    reason='needs two cores to pin workers')
def test_job_pool_workers_pinned_to_one_core_drop_the_eigen_flag(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', DEVICES)
  monkeypatch.delenv(xla_defaults.APPLIED_ENV, raising=False)
  xla_defaults.apply(num_cpus=2)
  jobs = [job_pool.Job(f'j{i}', _worker_flags, {}) for i in range(2)]
  results = job_pool.run_jobs(jobs, workers=2)
  assert results == {'j0': DEVICES, 'j1': DEVICES}
