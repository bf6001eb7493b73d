"""job_pool: dependencies, results, one core per worker, failures named."""

import os

import jax
import jax.numpy as jnp
import pytest

from sta_cnn_jax import job_pool


def square(x):
  return x * x


def add(a, b=0):
  return a + b


def cores(tag):
  return tag, sorted(os.sched_getaffinity(0))


def fail(x):
  raise ValueError(f'bad input {x}')


@jax.jit
def _double(x):
  return 2 * x


def compile_double(n):
  return float(_double(jnp.ones(n)).sum())


def compiled_programs(_):
  return _double._cache_size()


def _jobs():
  return [job_pool.Job('s3', square, {'x': 3}, cost=1.0),
          job_pool.Job('s4', square, {'x': 4}, cost=2.0),
          job_pool.Job('sum', add, {}, needs={'a': 's3', 'b': 's4'}, cost=9.0)]


def test_serial_and_parallel_runs_give_the_same_results_and_respect_needs():
  done = []
  serial = job_pool.run_jobs(_jobs(), 1, on_done=lambda job, r, t: done.append(job.name))
  assert serial == {'s3': 9, 's4': 16, 'sum': 25}
  assert done == ['s4', 's3', 'sum']       # costliest ready job first; 'sum' waits for both
  if len(job_pool.available_cores()) >= 2:
    assert job_pool.run_jobs(_jobs(), 2) == serial


def test_split_cores_deals_disjoint_groups():
  assert job_pool.split_cores([0, 1, 2, 3, 4], 2) == [(0, 1, 2), (3, 4)]
  assert job_pool.split_cores([5], 1) == [(5,)]
  with pytest.raises(ValueError, match='3 workers for 2 cores'):
    job_pool.split_cores([0, 1], 3)


@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity') or len(job_pool.available_cores()) < 2,
                    reason='needs 2 cores and sched_setaffinity')
def test_each_worker_is_pinned_to_its_own_core():
  jobs = [job_pool.Job(f'c{i}', cores, {'tag': i}) for i in range(6)]
  seen = {tuple(c) for _, c in job_pool.run_jobs(jobs, 2).values()}
  groups = job_pool.split_cores(job_pool.available_cores(), 2)
  assert seen <= {tuple(g) for g in groups} and all(len(c) == len(groups[0]) or
                                                    len(c) == len(groups[1]) for c in seen)


def test_a_failing_job_is_named_and_unknown_needs_are_refused():
  with pytest.raises(ValueError, match="bad input 7"):
    job_pool.run_jobs([job_pool.Job('f', fail, {'x': 7})], 1)
  if len(job_pool.available_cores()) >= 2:
    with pytest.raises(RuntimeError, match="job 'f' failed: ValueError: bad input 7"):
      job_pool.run_jobs([job_pool.Job('f', fail, {'x': 7}), job_pool.Job('s', square, {'x': 1})],
                        2)
  with pytest.raises(ValueError, match="needs unknown jobs"):
    job_pool.run_jobs([job_pool.Job('a', add, {}, needs={'a': 'missing'})], 1)


def test_a_job_leaves_no_compiled_programs_in_memory_for_the_next():
  """release_memory after each job: the next job (same process with one worker) finds JAX's
  in-memory caches empty, so a long run's memory does not grow with its jobs."""
  jobs = [job_pool.Job('compile', compile_double, {'n': 3}, cost=2.0),
          job_pool.Job('count', compiled_programs, {'_': 0}, needs={'_': 'compile'}, cost=1.0)]
  results = job_pool.run_jobs(jobs, 1, release_after_jobs=True)
  assert results['compile'] == 6.0
  assert results['count'] == 0
  _double(jnp.ones(2))
  assert _double._cache_size() == 1       # the count above is not vacuous
