"""Lock files: one run writes an output at a time, and a crashed run's locks go with it.

An advisory lock (flock) on a lock file beside each file a run writes
(`output_names.lock_path`): another process writing the same file is
refused; the kernel releases a crashed run's locks, and the next run
replaces its lock files. `nst_jax.runs.output_plan.locked` holds them for a
run's outputs.
"""

from collections.abc import Iterable, Iterator
import contextlib
import errno
import fcntl
import os
from pathlib import Path
import resource
import stat

from nst_jax import errors
from nst_jax.io import output_names


@contextlib.contextmanager
def hold(files: Iterable[Path]) -> Iterator[None]:
  """Locks each of `files` (their lock files made, with missing folders) until the block ends.

  Directories made for the lock files are removed again when the block
  ends with them empty.

  Raises:
    NstError: another process holds one of the locks, or a lock cannot be
      made.
  """
  files = list(files)
  _ensure_descriptors(len(files))
  held: list[tuple[Path, int]] = []
  made: list[Path] = []
  try:
    for path in files:
      lock = output_names.lock_path(path)
      try:
        made += _make_directories(lock.parent)
        fd = _lock(lock)
      except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR):  # trial 26: a link was followed
          kind = 'a link' if e.errno == errno.ELOOP else 'a directory'
          raise _in_the_way(lock, kind) from None
        raise errors.NstError(
          f'cannot lock {errors.printable(path)} ({e.strerror}); choose another output directory'
        ) from None
      if fd is None:
        raise errors.NstError(
          f'another nst-jax run is writing {errors.printable(path)}; wait for it to finish or '
          'choose another output name'
        )
      held.append((lock, fd))
      _HELD[lock] = fd
    yield
  finally:
    for lock, fd in reversed(held):
      _HELD.pop(lock, None)
      _unlock(lock, fd)
    _remove_if_empty(sorted(made, key=lambda d: len(d.parts), reverse=True))


def _lock(path: Path) -> int | None:
  """A held flock on `path` (its fd), or None if another process holds it.

  The lock file is removed on release; a process that opened it just before
  could then lock a file no longer in the directory, so after locking the
  name must still lead to the locked file, else it tries again.
  """
  while True:
    # Read-only: flock needs no more, and another user's lock file opens too.
    # Not through a link: it made a file wherever the link pointed.
    flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO
    fd = os.open(path, flags, 0o644)
    try:
      found = os.fstat(fd)
      if not stat.S_ISREG(found.st_mode) or found.st_size:  # ours are empty, and removed after
        regular = stat.S_ISREG(found.st_mode)
        raise _in_the_way(path, f'a file of {found.st_size} bytes' if regular else 'not a file')
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except BlockingIOError:
      os.close(fd)
      return None
    except FileNotFoundError:
      pass  # removed by its holder just now: try again
    except (OSError, errors.NstError):
      os.close(fd)
      raise
    os.close(fd)


def _in_the_way(lock: Path, kind: str) -> errors.NstError:
  return errors.NstError(
    f'{errors.printable(lock)} is {kind}, not an empty nst-jax lock file, at the name a run '
    'locks its output with; move it away, or choose another output name'
  )


def busy(path: str | os.PathLike) -> bool:
  """Whether another run holds `path`'s lock now (the lock file is not created)."""
  try:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO: no wait
    fd = os.open(output_names.lock_path(path), flags)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  except OSError:
    return False
  finally:
    os.close(fd)  # closing releases a lock taken here
  return False


# The lock files this process holds: a process that must end at once (a
# signal before the first iteration) removes them first (`drop_locks`).
_HELD: dict[Path, int] = {}


def _unlock(path: Path, fd: int) -> None:
  with contextlib.suppress(OSError):  # another user's file in a sticky directory stays
    path.unlink(missing_ok=True)  # still ours: removed before others can lock it
  os.close(fd)


# Directories made for lock files, removed again if the run leaves them empty.
_MADE: set[Path] = set()


def drop_locks() -> None:
  """Removes this process's lock files (and the empty directories made for them).

  For an exit that skips the context managers: a signal before the first
  iteration, after which nothing is left behind.
  """
  for path in list(_HELD):
    path.unlink(missing_ok=True)
  _remove_if_empty(sorted(_MADE, key=lambda d: len(d.parts), reverse=True))


def _ensure_descriptors(n: int) -> None:
  """Raises the soft limit of open files when a large batch holds many locks."""
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  want = n + 256
  if soft != resource.RLIM_INFINITY and soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def _make_directories(directory: Path) -> list[Path]:
  """Makes `directory` and its missing parents; returns those made, deepest first."""
  missing = []
  while not directory.exists():
    missing.append(directory)
    directory = directory.parent
  for d in reversed(missing):
    d.mkdir(exist_ok=True)
    _MADE.add(d)
  return missing


def _remove_if_empty(directories: Iterable[Path]) -> None:
  for d in directories:  # deepest first
    _MADE.discard(d)
    with contextlib.suppress(OSError):
      d.rmdir()
