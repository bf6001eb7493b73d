"""One writer per workdir: a lock file that a second training process finds taken.

`acquire(workdir, mode)` takes an exclusive `fcntl.flock` on `<workdir>/.lock` and writes the
owner (pid, host, mode, start time, command) into it. A second process that calls `acquire` on
the same workdir gets `WorkdirLockedError` at once, naming the owner, before it writes anything.
The operating system drops a flock when its process ends, however it ends (kill -9, crash, power
loss of a local disk), so a crashed run never leaves the workdir locked: the leftover file is
just re-locked by the next run. Where flock is unavailable (some network filesystems) the pid and
host in the file are used instead: the lock is stale when that pid is not alive on this host.

The lock is held until the process ends or `release(workdir)` is called. Re-acquiring a workdir
this process already holds is allowed (a process that trains several models, or resumes in-process,
in the same workdir). Only process 0 of a multi-host run takes it (the caller decides). Workdirs
on object stores (`gs://...`) are not locked.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from typing import Optional

LOCK_NAME = '.lock'

_held: dict[str, int] = {}  # realpath of the lock file -> open fd holding the flock
_guard = threading.Lock()


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir (the one-line message names it)."""


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_NAME)


def _owner(mode: str) -> dict:
  return {'pid': os.getpid(), 'host': socket.gethostname(), 'mode': mode,
          'started': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'),
          'command': ' '.join(sys.argv)[:500]}


def _read_owner(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return json.loads(os.read(fd, 1 << 16).decode() or '{}')
  except (OSError, ValueError):
    return {}


def _describe(owner: dict) -> str:
  if not owner.get('pid'):
    return 'another process'
  return (f"pid {owner['pid']} on {owner.get('host', '?')} (--mode={owner.get('mode', '?')}, "
          f"since {owner.get('started', '?')})")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _refuse(workdir: str, owner: dict) -> WorkdirLockedError:
  return WorkdirLockedError(
      f'workdir {workdir} is in use by {_describe(owner)}: stop that process or use another '
      f'--workdir (lock file {lock_path(workdir)}, released automatically when its owner ends)')


def acquire(workdir: str, mode: str = 'train') -> Optional[str]:
  """Locks `workdir` for this process (creating the folder); returns the lock file's path, or
  None for an object-store workdir (not locked). Raises WorkdirLockedError if another live
  process holds it."""
  workdir = str(workdir)
  if '://' in workdir:
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.realpath(lock_path(workdir))
  with _guard:
    if path in _held:
      return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise _refuse(workdir, _read_owner(fd)) from None
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          raise
        # No flock on this filesystem: a live pid on this host (other than ours) holds it.
        owner = _read_owner(fd)
        if (owner.get('pid') and owner['pid'] != os.getpid() and (
            owner.get('host') != socket.gethostname() or _pid_alive(int(owner['pid'])))):
          raise _refuse(workdir, owner) from None
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, (json.dumps(_owner(mode), sort_keys=True) + '\n').encode())
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    _held[path] = fd
  return path


def release(workdir: str) -> None:
  """Releases this process's lock on `workdir` (no-op if it holds none). The file stays."""
  path = os.path.realpath(lock_path(str(workdir)))
  with _guard:
    fd = _held.pop(path, None)
    if fd is None:
      return
    try:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)


def holds(workdir: str) -> bool:
  """Whether this process holds the lock of `workdir`."""
  return os.path.realpath(lock_path(str(workdir))) in _held
