"""Independent runs (trainings, SAN pre-trainings) side by side, one worker process per CPU core.

The demo and benchmarks/fidelity.py train many small, independent networks. On a CPU host one
miniature train step does not use a second core: configs/demo.py's baseline TS(1,1) (batch 16)
took 99 ms a step on 2 cores and 106 ms pinned to one core (docs/miniature.md, "Runs side by
side"), and two runs pinned to a core each took 112 and 132 ms a step together. So `run_jobs`
runs the jobs in `workers` spawned processes, each pinned to its own share of this process's
cores, longest job first, a job starting once the jobs it needs have finished. On an
accelerator (or with one worker) the jobs run one after another in this process: several
processes would only share one device.

A job is a module-level function with keyword arguments (both pickled to the worker); `needs`
maps a keyword argument to the name of another job, whose result the function receives there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import multiprocessing
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from sta_cnn_jax import xla_defaults

# tqdm reads its defaults from TQDM_* variables when it is imported: a worker's bars would
# interleave with the others', so workers (spawned with this process's environment) draw none;
# the parent reports each finished job.
_QUIET_WORKER_ENV = {'TQDM_DISABLE': '1'}


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  fn: Callable[..., Any]
  kwargs: Mapping[str, Any]
  needs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # kwarg -> job name
  cost: float = 1.0      # relative run time: among ready jobs the costliest starts first


# The CPU cores this process may run on (one implementation, shared with the XLA defaults).
available_cores = xla_defaults.available_cores


def default_workers() -> int:
  """One worker per core on a CPU-only host; 1 (in this process) where JAX has an accelerator."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != 'cpu':
    return 1
  return len(available_cores()) if hasattr(os, 'sched_setaffinity') else 1


def split_cores(cores: Sequence[int], workers: int) -> list[tuple[int, ...]]:
  """`cores` dealt into `workers` contiguous, disjoint, near-equal groups."""
  if not 1 <= workers <= len(cores):
    raise ValueError(f'job_pool.py: {workers} workers for {len(cores)} cores')
  base, extra = divmod(len(cores), workers)
  groups, start = [], 0
  for i in range(workers):
    size = base + (1 if i < extra else 0)
    groups.append(tuple(cores[start:start + size]))
    start += size
  return groups


def _init_worker(core_groups: Any, setup: Optional[tuple[Callable[..., None], tuple]]) -> None:
  """Pins this worker to the next free group of cores (before JAX or TensorFlow size their
  thread pools: both start them on first use), chooses the XLA flags for those cores
  (xla_defaults.py: they depend on the core count), then runs `setup`."""
  os.sched_setaffinity(0, core_groups.get())
  xla_defaults.apply()
  if setup is not None:
    setup[0](*setup[1])


@contextlib.contextmanager
def _environment(values: Mapping[str, str]):
  """os.environ with `values` set (inherited by processes spawned inside), then restored."""
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def release_memory() -> None:
  """What one job leaves behind, returned before the next: JAX's in-memory caches of traced
  and compiled programs (`jax.clear_caches`; the persistent compilation cache on disk stays),
  unreachable objects, and the C heap's free pages (glibc `malloc_trim`, where there is one).

  Measured 2026-12-02 (2-core AMD EPYC, `python -m benchmarks.fidelity --steps=400`, 33 jobs on
  2 workers): without it a worker's resident memory grew job after job until, 54 minutes in,
  XLA could not allocate memory to compile the 31st job ("LLVM compilation error: Cannot
  allocate memory"), the worker died and the run stopped (peak resident memory 9.9 GB in one
  worker of a 24 GiB machine). In `--quick` (same code) the workers' memory between jobs rose
  from ~2.4 to ~3.9 GB over 5 jobs each. With it, re-running the folder (30 jobs re-scored, 3
  trained) peaked at 3.4 GB.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  gc.collect()
  try:
    ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):      # not glibc: nothing to trim
    pass


def _call(fn: Callable[..., Any], kwargs: Mapping[str, Any],
          release: bool = False) -> tuple[Any, float]:
  start = time.time()
  try:
    return fn(**kwargs), time.time() - start
  finally:
    if release:
      release_memory()


def _ready(pending: dict[str, Job], results: Mapping[str, Any]) -> list[Job]:
  ready = [j for j in pending.values() if all(n in results for n in j.needs.values())]
  return sorted(ready, key=lambda j: -j.cost)


def _check_needs(jobs: Sequence[Job]) -> None:
  names = [j.name for j in jobs]
  if len(set(names)) != len(names):
    raise ValueError(f'job_pool.py: job names repeat: {sorted(names)}')
  for j in jobs:
    missing = [n for n in j.needs.values() if n not in names]
    if missing:
      raise ValueError(f'job_pool.py: job {j.name!r} needs unknown jobs {missing}')


def _kwargs(job: Job, results: Mapping[str, Any]) -> dict[str, Any]:
  return {**job.kwargs, **{k: results[n] for k, n in job.needs.items()}}


def run_jobs(jobs: Sequence[Job], workers: int = 1,
             setup: Optional[tuple[Callable[..., None], tuple]] = None,
             on_done: Optional[Callable[[Job, Any, float], None]] = None,
             release_after_jobs: bool = False) -> dict[str, Any]:
  """Runs every job; returns {job name: result}. `setup` = (function, args) runs once in each
  worker first (e.g. the compilation cache); `on_done(job, result, seconds)` in this process
  as each job ends. A failing job stops the run with its name. `release_after_jobs`:
  `release_memory` after every job (the demo and the fidelity benchmark, whose workers run many
  trainings each)."""
  _check_needs(jobs)
  pending = {j.name: j for j in jobs}
  results: dict[str, Any] = {}

  def finish(job: Job, outcome: Any, seconds: float) -> None:
    results[job.name] = outcome
    if on_done is not None:
      on_done(job, outcome, seconds)

  if workers <= 1:
    if setup is not None:
      setup[0](*setup[1])
    while pending:
      ready = _ready(pending, results)
      if not ready:
        raise ValueError(f'job_pool.py: jobs wait on each other: {sorted(pending)}')
      job = pending.pop(ready[0].name)
      finish(job, *_call(job.fn, _kwargs(job, results), release_after_jobs))
    return results

  context = multiprocessing.get_context('spawn')  # no fork of a process holding XLA / TF threads
  core_groups = context.Queue()
  for group in split_cores(available_cores(), workers):
    core_groups.put(group)
  with _environment(_QUIET_WORKER_ENV), concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, initializer=_init_worker,
      initargs=(core_groups, setup)) as pool:
    running: dict[concurrent.futures.Future, Job] = {}
    while pending or running:
      for job in _ready(pending, results)[:workers - len(running)]:
        del pending[job.name]
        running[pool.submit(_call, job.fn, _kwargs(job, results), release_after_jobs)] = job
      if not running:
        raise ValueError(f'job_pool.py: jobs wait on each other: {sorted(pending)}')
      done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        job = running.pop(future)
        try:
          outcome = future.result()
        except Exception as e:
          for other in running:
            other.cancel()
          raise RuntimeError(f'job {job.name!r} failed: {type(e).__name__}: {e}') from e
        finish(job, *outcome)
  return results
