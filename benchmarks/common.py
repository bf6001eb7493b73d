"""Shared benchmark helpers: JSON lines, timing, the machine's matmul rate, interleaved workers.

Imports only the standard library and NumPy at module level, so the PyTorch peer
(benchmarks/peer_pytorch.py, run under its own virtualenv without JAX) uses it too.

Why workers: the 2-core machine is shared, so absolute times drift by 2x within minutes. Every
ratio we report is measured in ONE run with the variants interleaved: each variant (a JAX
process with its own XLA_FLAGS, the PyTorch peer, ...) is a long-lived worker process that
compiles / warms up once and then answers "time this task n times" requests; the driver
alternates between workers round by round (`interleave`), so load changes hit all variants
alike. Ratios are taken per round and summarised by their median.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

# A reply line on a worker's stdout starts with this (libraries may print other lines).
REPLY_PREFIX = '@@bench-reply '
# fp32 matmul (2048²) used as the machine's reference rate.
MATMUL_SIZE = 2048
MATMUL_REPEATS = 5
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emit(record: Mapping[str, Any]) -> None:
  """Prints one JSON line (the benchmarks' output format) and flushes."""
  print(json.dumps(dict(record), sort_keys=False), flush=True)


def time_calls(fn: Callable[[], Any], steps: int, warmup: int = 0) -> list[float]:
  """Wall-clock seconds of `steps` calls of `fn` (which must block until its work is done)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def summary(times: Sequence[float]) -> dict:
  """Median (what we report), min and count of a list of seconds."""
  return {'median_s': statistics.median(times), 'min_s': min(times), 'n': len(times)}


def rate(amount: float, seconds: float, digits: int = 2) -> float:
  return round(amount / seconds, digits)


# ------------------------------------------------------------------------------------------
# The machine's fp32 matmul rate, measured in the same process as the benchmark.
# ------------------------------------------------------------------------------------------


def matmul_task(framework: str, size: int = MATMUL_SIZE) -> tuple[Callable[[], Any], float]:
  """(blocking fn, FLOPs) of an fp32 size² matmul in 'jax', 'numpy' or 'torch'."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = rng.standard_normal((size, size), np.float32)
  b = rng.standard_normal((size, size), np.float32)
  flop = 2.0 * size ** 3
  if framework == 'numpy':
    return (lambda: a @ b), flop
  if framework == 'torch':
    import torch  # pylint: disable=g-import-not-at-top
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return (lambda: ta @ tb), flop
  if framework == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    ja, jb = jax.device_put(a), jax.device_put(b)
    mm = jax.jit(lambda u, v: u @ v)
    mm(ja, jb).block_until_ready()
    return (lambda: mm(ja, jb).block_until_ready()), flop
  raise ValueError(f'benchmarks/common.py: unknown matmul framework {framework!r}')


def matmul_gflops(framework: str = 'jax', repeats: int = MATMUL_REPEATS) -> dict:
  """{'gflops_median', 'gflops_max'} of the fp32 2048² matmul (max = least disturbed)."""
  fn, flop = matmul_task(framework)
  times = time_calls(fn, repeats, warmup=1)
  return {'gflops_median': rate(flop / 1e9, statistics.median(times), 1),
          'gflops_max': rate(flop / 1e9, min(times), 1)}


# ------------------------------------------------------------------------------------------
# Worker processes: a server loop (in the worker) and a client (in the driver).
# ------------------------------------------------------------------------------------------


def serve(handlers: Mapping[str, Callable[..., Any]]) -> None:
  """Worker main loop: one JSON request {'cmd', 'args'} per stdin line, one reply per request.

  A reply is REPLY_PREFIX + JSON {'ok': result} or {'error': message}; 'quit' ends the loop.
  """
  out = sys.stdout
  for line in sys.stdin:
    if not line.strip():
      continue
    request = json.loads(line)
    if request['cmd'] == 'quit':
      break
    try:
      reply = {'ok': handlers[request['cmd']](**request.get('args', {}))}
    except Exception as e:  # pylint: disable=broad-except
      reply = {'error': f'{type(e).__name__}: {e}'}
    out.write(REPLY_PREFIX + json.dumps(reply) + '\n')
    out.flush()


class Worker:
  """A benchmark worker subprocess speaking the `serve` protocol."""

  def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
               cwd: str = REPO_ROOT):
    self.name = name
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO_ROOT, full_env.get('PYTHONPATH', '')) if p)
    self._proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=full_env, cwd=cwd, bufsize=1)

  def call(self, cmd: str, **args) -> Any:
    """Sends one request and waits for its reply; RuntimeError if the worker failed."""
    self._proc.stdin.write(json.dumps({'cmd': cmd, 'args': args}) + '\n')
    self._proc.stdin.flush()
    for line in self._proc.stdout:
      if line.startswith(REPLY_PREFIX):
        reply = json.loads(line[len(REPLY_PREFIX):])
        if 'error' in reply:
          raise RuntimeError(f'benchmark worker {self.name!r}: {cmd} failed: {reply["error"]}')
        return reply['ok']
    raise RuntimeError(f'benchmark worker {self.name!r} exited (rc={self._proc.wait()}) '
                       f'during {cmd!r}; see its stderr above')

  def close(self) -> None:
    if self._proc.poll() is None:
      try:
        self._proc.stdin.write(json.dumps({'cmd': 'quit'}) + '\n')
        self._proc.stdin.close()
      except (BrokenPipeError, ValueError):
        pass
      self._proc.wait()


def interleave(workers: Sequence[Worker], requests: Mapping[str, tuple[str, dict]],
               rounds: int) -> dict[str, list[float]]:
  """Times each worker's request `rounds` times, alternating workers every round.

  requests: worker name -> (cmd, args) of a request that returns a list of seconds.
  The order of the workers rotates each round (no worker always runs right after another).
  Returns worker name -> all seconds, in round order.
  """
  times = {w.name: [] for w in workers}
  for r in range(rounds):
    shift = r % len(workers)
    for w in list(workers[shift:]) + list(workers[:shift]):
      cmd, args = requests[w.name]
      times[w.name] += list(w.call(cmd, **args))
  return times


def round_ratios(numer: Sequence[float], denom: Sequence[float]) -> dict:
  """Median and spread of per-round time ratios numer[i] / denom[i] (same-round pairs)."""
  ratios = sorted(a / b for a, b in zip(numer, denom))
  q = lambda p: ratios[min(len(ratios) - 1, int(p * len(ratios)))]
  return {'median': round(statistics.median(ratios), 3), 'q25': round(q(0.25), 3),
          'q75': round(q(0.75), 3), 'n': len(ratios)}


def peer_python_default() -> str:
  """The PyTorch peer's interpreter: $STA_CNN_PEER_PYTHON or /work/venv-peer/bin/python."""
  return os.environ.get('STA_CNN_PEER_PYTHON',
                        os.path.join(os.path.dirname(REPO_ROOT), 'venv-peer', 'bin', 'python'))


def load_average() -> float | None:
  """1-minute load average (recorded with results: the machine is shared)."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def chunks(items: Iterable[Any], size: int) -> list[list[Any]]:
  items = list(items)
  return [items[i:i + size] for i in range(0, len(items), size)]
