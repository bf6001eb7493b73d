"""The program's own XLA settings (sta_cnn_jax/xla_defaults.py)."""

import os
import subprocess
import sys

from sta_cnn_jax import xla_defaults

YNN = 'xla_cpu_experimental_ynn_fusion_type'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_named_flags():
  assert xla_defaults.named_flags('--a=1  --b_c --d=x=y -e') == {'a', 'b_c', 'd', 'e'}
  assert xla_defaults.named_flags('') == set()


def test_defaults_appended_to_user_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  out = xla_defaults.apply(env)
  assert out == env['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=8 --{YNN}='
  env = {}
  assert xla_defaults.apply(env) == f'--{YNN}=' == env['XLA_FLAGS']


def test_user_value_wins_and_opt_out():
  env = {'XLA_FLAGS': f'--{YNN}=dot,eltwise'}
  assert xla_defaults.apply(env) == f'--{YNN}=dot,eltwise'
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         xla_defaults.OPT_OUT_ENV: '0'}
  assert xla_defaults.apply(env) == '--xla_force_host_platform_device_count=2'
  env = {xla_defaults.OPT_OUT_ENV: '0'}
  xla_defaults.apply(env)
  assert 'XLA_FLAGS' not in env


def _child_flags(env_updates):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', xla_defaults.OPT_OUT_ENV)}
  env.update(env_updates)
  code = 'import os, sta_cnn_jax, jax; jax.devices(); print(os.environ.get("XLA_FLAGS", ""))'
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO, check=True,
                       capture_output=True, text=True)
  return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ''


def test_import_applies_before_the_backend_starts():
  """A fresh interpreter: importing the package sets the flag, and XLA accepts it (a flag XLA
  does not know aborts the backend start)."""
  assert _child_flags({}) == f'--{YNN}='
  assert _child_flags({xla_defaults.OPT_OUT_ENV: '0'}) == ''
