"""The output planner: every file a run writes, checked before any work, locked while it runs.

One planner for every kind of run (a single image, a batch, a video). For each
result it lists the files derived from it (run record, loss plot, contact
sheet, checkpoint, intermediates) and, before the first iteration, refuses
with one line:
  * a file that would replace an input of the run (compared as resolved
    paths, so `./a.png`, `a.png` and a symbolic link to it are one file);
  * two outputs, or the derived files of two outputs, that are one file;
  * an existing file that nst-jax did not write for this output, unless
    `overwrite` (a result whose run record names it may be replaced by a
    rerun to the same output, as people expect; in a folder of video
    frames, even with `overwrite`: only the frames its record claims go);
  * a format Pillow cannot write, a name too long for the file system (the
    temporary name included), a directory that is missing behind a dangling
    link, is a file or is not writable, and too little free space for the
    results and their checkpoints.
It then locks every file it will write (another process writing one is
refused, and a crashed run's lock is released by the kernel with its
process) and removes the temporary files a killed run left beside them (and
inside a checkpoint directory: orbax's temporary steps).
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import contextlib
import dataclasses
import fcntl
import os
from pathlib import Path
import resource
import shutil

from nst_jax import errors
from nst_jax.io import checkpoint_store
from nst_jax.io import output_names

# Free space asked beyond the estimate: the record's pictures and JSON, and
# what compression cannot promise.
SPACE_MARGIN_BYTES = 4 << 20
# The kind of an output's planned intermediate images (Output.derived).
INTERMEDIATE = 'intermediate image'


@dataclasses.dataclass(frozen=True)
class Output:
  """One result and what a run writes beside it.

  Attributes:
    result: the result file (or a directory of frames).
    owner: who writes it, for messages ('the result', 'job 3').
    pixels: pixels of the result, for the free-space estimate.
    state_bytes: bytes of one checkpoint of its optimisation state.
    derived: the other files the run may write for it, as (what, path):
      ('run record', out/a.json).
    directory: the result is a directory of frames: new, empty or holding
      only the frames its run record claims (which a rerun replaces).
    resumable: where an interrupted run of this output keeps its state (the
      checkpoint; a video's work directory): while it exists, the derived
      files beside it are that run's (default: the checkpoint).
  """

  result: Path
  owner: str = 'the result'
  pixels: int = 0
  state_bytes: int = 0
  derived: tuple[tuple[str, Path], ...] = ()
  directory: bool = False
  resumable: Path | None = None

  @property
  def state(self) -> Path:
    return self.resumable or output_names.derived(self.result, output_names.CHECKPOINT_TAIL)

  @property
  def files(self) -> list[Path]:
    """The result and every derived file."""
    return [self.result, *(path for _, path in self.derived)]


def image_output(
  result: str | os.PathLike,
  *,
  owner: str = 'the result',
  pixels: int = 0,
  state_bytes: int = 0,
  record: bool = True,
  save_iter: int = 0,
  iterations: int = 0,
  checkpoint: Path | None = None,
) -> Output:
  """An image result with its record files, checkpoint and intermediates.

  `checkpoint`: where its checkpoint goes (default: beside the result).
  """
  result = Path(result)
  if checkpoint is None:
    checkpoint = output_names.derived(result, output_names.CHECKPOINT_TAIL)
  files = [('checkpoint', Path(checkpoint))]
  if record:
    files += [
      (output_names.RECORD_NAMES[k], output_names.derived(result, tail))
      for k, tail in output_names.RECORD_TAILS.items()
    ]
  files += [(INTERMEDIATE, p) for p in output_names.intermediates(result, save_iter, iterations)]
  return Output(result, owner, pixels, state_bytes, tuple(files), resumable=Path(checkpoint))


def state_bytes(pixels: int, *, image_buffers: int) -> int:
  """Bytes of a checkpoint: `image_buffers` float32 RGB images of `pixels` (memory's count)."""
  return pixels * 3 * 4 * image_buffers


def _rename(out: Output) -> str:
  """What to change for another output name: save.path, or the job's output."""
  if not out.owner.startswith('job '):  # the result, the video, the frames of a video
    return 'choose another save.path'
  return f'give {out.owner} another output (save.path, or the output column of its jobs file)'


def check(
  outputs: Sequence[Output],
  *,
  inputs: Mapping[str, str | os.PathLike],
  overwrite: bool = False,
  local: Iterable[int] | None = None,
) -> None:
  """Refuses, in one line, a plan that could lose or replace a file (module docstring).

  Args:
    outputs: every output of the run (a batch's from every process: names
      are compared across all of them).
    inputs: a description ('content image of job 2') -> an input file.
    overwrite: replace existing files that nst-jax did not write.
    local: indices of `outputs` this process writes (files are checked by
      their writer); default all.

  Raises:
    NstError: the first problem found.
  """
  by_path, by_identity = {}, {}
  for description, path in inputs.items():
    by_path.setdefault(output_names.resolved(path), description)
    if (identity := output_names.identity(Path(path))) is not None:
      by_identity.setdefault(identity, description)
  planned: dict[Path, str] = {}
  folders: dict[Path, Path] = {}  # each folder resolved once, not once per intermediate
  for out in outputs:
    for kind, path in [('', out.result), *out.derived]:
      key = _resolved(path, folders) if kind == INTERMEDIATE else output_names.resolved(path)
      what = f'{out.owner} {out.result}'
      if kind:
        what = f'the {kind} {path.name} of {what}'
      replaced = by_path.get(key)
      if replaced is None:  # another name of an input: a hard link or a bind mount
        replaced = by_identity.get(output_names.identity(path))
      if replaced is not None:
        raise errors.NstError(f'{what} would replace the {replaced}; {_rename(out)}')
      if key in planned:
        raise errors.NstError(
          f'{what} and {planned[key]} are one file; give each its own output name'
        )
      planned[key] = what
  mine = range(len(outputs)) if local is None else local
  for index in mine:
    _check_files(outputs[index], overwrite)
  _check_space([outputs[i] for i in mine])


def _resolved(path: Path, folders: dict[Path, Path]) -> Path:
  """output_names.resolved(path), its folder's resolution taken from (or put in) `folders`."""
  if os.path.islink(path):  # a link's own target, which its folder does not say
    return output_names.resolved(path)
  if path.parent not in folders:
    folders[path.parent] = output_names.resolved(path.parent)
  return folders[path.parent] / path.name


def _check_files(out: Output, overwrite: bool) -> None:
  ours = output_names.claimed(out.result)
  placed: set[tuple[Path, int]] = set()  # intermediates: one folder, names of a few lengths
  if os.path.lexists(out.state):
    # An interrupted run of ours (or one whose checkpoint was kept): what it
    # wrote beside its checkpoint before any record existed is its own.
    ours |= set(out.files)
  if out.directory:
    output_names.check_place(out.result / 'frame.png')
    _check_frame_folder(out, ours)
  for kind, path in [('', out.result), *out.derived][1 if out.directory else 0 :]:
    if kind == 'checkpoint':
      _check_checkpoint(out, path)
      continue
    if path.is_dir() and not path.is_symlink():
      raise errors.NstError(f'{path} is a directory; name a file such as out.png')
    if os.path.lexists(path) and not path.is_file():
      raise errors.NstError(
        f'{path} exists and is not a regular file (a link to nowhere, a FIFO, a device); move it '
        f'away or {_rename(out)}'
      )
    if kind != INTERMEDIATE or (path.parent, len(path.name)) not in placed:
      output_names.check_place(path)  # the folder, and the name's and path's lengths
      placed.add((path.parent, len(path.name)))
    if path.exists() and not (path in ours or overwrite):
      whose = '' if path == out.result else f', beside {out.result.name},'
      raise errors.NstError(
        f'{path} exists{whose} and no nst-jax run record says nst-jax wrote it; choose another '
        'output name, or replace it with save.overwrite'
      )


def _check_frame_folder(out: Output, ours: set[Path]) -> None:
  """A folder of frames is new, empty, or holds only frames its run record claims (a rerun's).

  Nothing else in it is replaced, even with save.overwrite: the writer
  deletes only the claimed frames (nst_jax.io.video.write_frames), and the
  rest are someone's files.
  """
  if out.result.is_symlink():
    raise errors.NstError(f'{out.result} is a link; name a folder of its own for the frames')
  if not out.result.is_dir():
    return  # none yet, or a file (check_place refused it)
  foreign = sorted(
    p.name for p in out.result.iterdir() if p not in ours or p.is_symlink() or not p.is_file()
  )
  if foreign:
    names = ', '.join(foreign[:3]) + (f' and {len(foreign) - 3} more' if len(foreign) > 3 else '')
    raise errors.NstError(
      f'{out.result} holds {names}, which no nst-jax run record says nst-jax wrote; move '
      f'{"it" if len(foreign) == 1 else "them"} away or {_rename(out)} (save.overwrite replaces '
      'no file inside a folder)'
    )


def _check_checkpoint(out: Output, path: Path) -> None:
  """A checkpoint is a directory of ours or a (format-1) file, never anything else.

  A file is read before anything replaces it (resume, or refused while
  unfinished), so a foreign one is refused there. A directory that is not
  an nst-jax checkpoint is refused here, even with save.overwrite: nst-jax
  never deletes or writes into someone's directory.
  """
  if checkpoint_store.is_directory(path):
    why = checkpoint_store.foreign(path)
    if why is not None:
      raise errors.NstError(
        f'{path} is not an nst-jax checkpoint ({why}); move it away or {_rename(out)}'
      )
  elif os.path.lexists(path) and not path.is_file():
    raise errors.NstError(
      f'{path} exists and is not a regular file or an nst-jax checkpoint (a link to nowhere, a '
      f'FIFO, a device); move it away or {_rename(out)}'
    )
  output_names.check_place(path)


def _check_space(outputs: Sequence[Output]) -> None:
  need: dict[int, list] = {}
  for out in outputs:
    directory = output_names.existing_ancestor(out.result)
    device = os.stat(directory).st_dev
    entry = need.setdefault(device, [directory, 0])
    # An uncompressed result, and a checkpoint written beside the previous
    # one (atomic replacement holds both for a moment).
    entry[1] += out.pixels * 3 * 2 + 2 * out.state_bytes
  for directory, total in need.values():
    total += SPACE_MARGIN_BYTES
    free = shutil.disk_usage(directory).free
    if free < total:
      raise errors.NstError(
        f'{directory} has {free / 1e6:.0f} MB free and the run needs about {total / 1e6:.0f} MB '
        '(results and checkpoints); free space or choose another output directory'
      )


def _lock(path: Path) -> int | None:
  """A held flock on `path` (its fd), or None if another process holds it.

  The lock file is removed on release; a process that opened it just before
  could then lock a file no longer in the directory, so after locking the
  name must still lead to the locked file, else it tries again.
  """
  while True:
    # Read-only: flock needs no more, and another user's lock file opens too.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except BlockingIOError:
      os.close(fd)
      return None
    except FileNotFoundError:
      pass  # removed by its holder just now: try again
    except OSError:
      os.close(fd)
      raise
    os.close(fd)


def busy(path: str | os.PathLike) -> bool:
  """Whether another run holds `path`'s lock now (the lock file is not created)."""
  try:
    fd = os.open(output_names.lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
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


@contextlib.contextmanager
def locked(
  outputs: Sequence[Output],
  *,
  local: Iterable[int] | None = None,
  then_check: Callable[[], None] = lambda: None,
) -> Iterator[None]:
  """Locks every file this process will write (output_names.intermediates aside), then cleans up.

  `then_check` runs once the locks are held: the plan checked again, since
  another run may have finished (and written these names) since it was
  first checked. Directories made for the lock files are removed again
  when the run ends with them empty.

  An advisory lock (flock) per result and per output_names.derived file, so a run whose
  result is another's record or loss plot is refused too; the kernel
  releases a crashed run's locks, and the next run replaces its lock files.
  Holding the locks, it removes the temporary files a killed run left.

  Raises:
    NstError: another process holds one of the locks, or a lock cannot be
      made.
  """
  mine = [outputs[i] for i in (range(len(outputs)) if local is None else local)]
  files = [
    path for out in mine for kind, path in [('', out.result), *out.derived] if kind != INTERMEDIATE
  ]
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
    then_check()
    for out in mine:
      output_names.remove_temporaries(out.files)
      for kind, path in out.derived:
        if kind == 'checkpoint':  # what a killed save left inside it
          checkpoint_store.remove_litter(path)
    yield
  finally:
    for lock, fd in reversed(held):
      _HELD.pop(lock, None)
      _unlock(lock, fd)
    _remove_if_empty(sorted(made, key=lambda d: len(d.parts), reverse=True))


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
