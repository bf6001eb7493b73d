"""Data parallelism in one place: `jax.pmap` or `jax.jit` + `jax.shard_map`
(docs/design.md, "Interpretations").

The train and eval steps are per-device functions that use `lax.pmean(..., 'batch')` for
gradients, metrics and BatchNorm statistics. `make_parallel_step` wraps such a function for
either mode, so switching is the one config line `config.parallel = 'pmap' | 'shard_map'`:

  pmap       `jax.pmap` over all devices of all hosts, each host feeding its local ones;
             replicated values carry a leading device axis (one copy per local device),
             batches are `(D_local, B, ...)`.
  shard_map  `jax.jit(jax.shard_map(...))` on a 1-D mesh `Mesh(jax.devices(), ('batch',))`;
             replicated values are global arrays with `PartitionSpec()`, batches are global
             arrays `(D_global, B, ...)` sharded `PartitionSpec('batch')` (built from each
             host's `(D_local, B, ...)` slice with `jax.make_array_from_process_local_data`).

In both modes the per-device function sees one device's `(B, ...)` batch, and its outputs are
returned either "replicated" (identical on every device, e.g. the new train state and pmean'd
metrics; `unreplicate` gives one copy) or "per device" with a leading device axis `(D, ...)`
(e.g. eval scores). Multi-host: `initialize_distributed()` first; every host then feeds its own
batch slice and nothing here assumes a single host.

shard_map runs with check_vma=False: with the check on, autodiff inside shard_map would already
sum the gradient of replicated parameters over devices, and the per-device step's own pmean
would then give D times the mean; unchecked, the step's semantics are exactly pmap's.
"""

import functools
import os
from typing import Any, Callable, Optional, Sequence, Union

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

MODES = ('pmap', 'shard_map')
AXIS_NAME = 'batch'

# Explicit multi-process set-up (e.g. several processes on one machine, as in the tests).
ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'
# Cluster environments that `jax.distributed.initialize()` detects by itself, with the variable
# holding the process count.
CLUSTER_SIZE_ENV = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'JAX_NUM_PROCESSES')
# Multi-host Cloud TPU: comma-separated worker host names.
TPU_HOSTS_ENV = 'TPU_WORKER_HOSTNAMES'
# Collectives between CPU processes (tests, CPU clusters); ignored by GPU / TPU backends.
CPU_COLLECTIVES = 'gloo'

OutSpec = Union[bool, Sequence[bool]]


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f'parallel.py: unknown parallel mode {mode!r}; expected one of {MODES} '
                     '(config.parallel)')
  return mode


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
  """Calls `jax.distributed.initialize()` when a multi-process environment is given.

  Explicit arguments win, then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
  then a detected cluster (SLURM, Open MPI, multi-host Cloud TPU) with more than one process,
  which `jax.distributed.initialize()` configures by itself. A single process does
  nothing. Must run before anything touches the JAX backend. Returns True if initialised.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  cluster_size = max([int(os.environ.get(k, '1') or 1) for k in CLUSTER_SIZE_ENV] +
                     [len(os.environ.get(TPU_HOSTS_ENV, '').split(','))])
  if not coordinator_address and cluster_size <= 1:
    return False
  if num_processes is not None and num_processes <= 1 and not coordinator_address:
    return False
  jax.config.update('jax_cpu_collectives_implementation', CPU_COLLECTIVES)
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(f'parallel.py: {ENV_COORDINATOR}={coordinator_address!r} needs '
                       f'{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} as well')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def make_mesh(devices: Optional[Sequence[Any]] = None, axis_name: str = AXIS_NAME) -> Mesh:
  """1-D data-parallel mesh over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.array(devices), (axis_name,))


def _local(devices: Optional[Sequence[Any]]) -> list:
  return jax.local_devices() if devices is None else [
      d for d in devices if d.process_index == jax.process_index()]


def _is_numeric(x) -> bool:
  return hasattr(x, 'dtype') and np.dtype(x.dtype).kind in 'biuf'


def replicate(tree: Any, mode: str, devices: Optional[Sequence[Any]] = None) -> Any:
  """Puts the same value on every device in `mode`'s replicated form (see module doc).

  pmap: a leading axis of size D_local, one copy per local device. shard_map: global arrays
  with PartitionSpec() on the mesh of `devices` (each host passes the same value).
  """
  check_mode(mode)
  if mode == 'pmap':
    local = _local(devices)
    sharding = NamedSharding(Mesh(np.array(local), (AXIS_NAME,)), P(AXIS_NAME))

    def stack(x):
      x = np.asarray(jax.device_get(x))
      shards = [jax.device_put(x[None], d) for d in local]
      return jax.make_array_from_single_device_arrays((len(local),) + x.shape, sharding,
                                                      shards)
    return jax.tree_util.tree_map(stack, tree)
  sharding = NamedSharding(make_mesh(devices), P())

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree_util.tree_map(put, tree)


def unreplicate(tree: Any, mode: str) -> Any:
  """One copy of a replicated value: pmap -> host numpy (the first local device's copy);
  shard_map -> that device's full copy (a single-device jax.Array). No per-leaf programs are
  compiled (indexing `x[0]` would compile one gather per leaf shape)."""
  check_mode(mode)
  if mode == 'pmap':
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))[0]
                                  if isinstance(x, jax.Array) else np.asarray(x)[0], tree)
  return jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree)


def shard_batch_for_mode(batch: Any, mode: str, devices: Optional[Sequence[Any]] = None) -> Any:
  """Host batch `(D_local, B, ...)` numpy leaves -> device arrays for `mode`.

  pmap: one `(1, B, ...)` slice per local device (arrays of shape (D_local, B, ...)).
  shard_map: global arrays `(D_global, B, ...)` sharded over the mesh's 'batch' axis, each host
  contributing its local slice. Non-numeric leaves (e.g. eval 'video_id') are returned as is.
  """
  check_mode(mode)
  if mode == 'pmap':
    local = _local(devices)
    sharding = NamedSharding(Mesh(np.array(local), (AXIS_NAME,)), P(AXIS_NAME))
  else:
    sharding = NamedSharding(make_mesh(devices), P(AXIS_NAME))

  def put(x):
    if not _is_numeric(x):
      return x
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x)
    if mode == 'pmap':
      if x.shape[0] != len(local):
        raise ValueError(f'parallel.py: batch leading axis {x.shape[0]} != {len(local)} '
                         'local devices (batches must be (D_local, B, ...))')
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree_util.tree_map(put, batch)


def make_parallel_step(step_fn: Callable[..., Any], mode: str, axis_name: str = AXIS_NAME,
                       donate: bool = True, batch_argnums: Sequence[int] = (1,),
                       out_replicated: OutSpec = False,
                       devices: Optional[Sequence[Any]] = None) -> Callable[..., Any]:
  """Wraps a per-device `step_fn(*args)` for data parallelism in `mode`.

  Args:
    step_fn: per-device function; args in `batch_argnums` are one device's batch `(B, ...)`,
      the others are replicated values (state, rng, ...). It may use `lax.pmean(.., axis_name)`.
    mode: 'pmap' | 'shard_map'.
    axis_name: the collective axis name ('batch', as BatchNorm's axis_name).
    donate: donate argument 0 (the train state) to the step.
    batch_argnums: positions of the per-device (batch) arguments.
    out_replicated: per output (or one bool for all outputs of a tuple / a single output):
      True = identical on all devices, returned in replicated form; False = per-device, returned
      with a leading device axis `(D, ...)`.
    devices: devices to run on (default: all; pmap uses the local ones). Tests pass one device
      to get the same code path on a single device.

  Returns:
    A callable with `step_fn`'s arguments, taking batches as `(D, B, ...)` (numpy host arrays
    are placed with `shard_batch_for_mode`) and replicated values as made by `replicate`.
  """
  check_mode(mode)
  batch_argnums = tuple(batch_argnums)
  donate_argnums = (0,) if donate else ()

  if mode == 'pmap':
    # devices=None: the axis spans every process's devices (multi-host), each process
    # feeding its local ones.
    pmapped = jax.pmap(step_fn, axis_name=axis_name,
                       devices=None if devices is None else list(devices),
                       donate_argnums=donate_argnums)

    def pmap_call(*args):
      args = [shard_batch_for_mode(a, mode, devices) if i in batch_argnums else a
              for i, a in enumerate(args)]
      return pmapped(*args)
    return pmap_call

  mesh = make_mesh(devices, axis_name)
  if isinstance(out_replicated, bool):
    out_specs = P() if out_replicated else P(axis_name)
  else:
    out_specs = tuple(P() if rep else P(axis_name) for rep in out_replicated)

  def add_device_axis(tree):
    return jax.tree_util.tree_map(lambda x: x[None], tree)

  def per_device(*args):
    # Inside shard_map a batch argument is this device's block (1, B, ...).
    args = [jax.tree_util.tree_map(lambda x: x[0], a) if i in batch_argnums else a
            for i, a in enumerate(args)]
    outputs = step_fn(*args)
    if isinstance(out_replicated, bool):
      return outputs if out_replicated else add_device_axis(outputs)
    if not isinstance(outputs, tuple) or len(outputs) != len(out_replicated):
      raise ValueError(f'parallel.py: out_replicated={out_replicated} needs a tuple of '
                       f'{len(out_replicated)} outputs from the step')
    return tuple(o if rep else add_device_axis(o) for o, rep in zip(outputs, out_replicated))

  @functools.lru_cache(maxsize=None)
  def compiled(num_args: int):
    in_specs = tuple(P(axis_name) if i in batch_argnums else P() for i in range(num_args))
    # check_vma=False: with it, autodiff would psum the gradient of replicated params on its
    # own; the per-device step pmeans explicitly, exactly as under pmap.
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                           check_vma=False)
    return jax.jit(mapped, donate_argnums=donate_argnums)

  def shard_map_call(*args):
    args = [shard_batch_for_mode(a, mode, devices) if i in batch_argnums else a
            for i, a in enumerate(args)]
    return compiled(len(args))(*args)
  return shard_map_call
