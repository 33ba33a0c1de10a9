"""The output planner: every file a run writes, checked before any work, locked while it runs.

One planner for every kind of run (a single image, a batch, a video). For each result it lists
the files derived from it (run record, loss plot, contact sheet, checkpoint, intermediates) and,
before the first iteration, refuses with one line:
  * a file that would replace an input of the run (compared as resolved
    paths, so `./a.png`, `a.png` and a symbolic link to it are one file);
  * two outputs, or the derived files of two outputs, that are one file;
  * an existing file that nst-jax did not write for this output, unless
    `overwrite` (a result whose run record names it may be replaced by a
    rerun to the same output, as people expect; in a folder of video
    frames, even with `overwrite`: only the frames its record claims go);
  * a format Pillow cannot write, a name too long for the file system (the
    temporary name included), a directory that is missing behind a dangling
    link, is a file or is not writable, and too little free space (or too
    few free inodes) for the results and their checkpoints.
It then locks every file it will write (`output_locks`: another process writing one is refused,
and a crashed run's lock is released by the kernel with its process) and removes the temporary
files a killed run left beside them, and its record's and figures' (run with records or not),
and inside a checkpoint directory (orbax's temporary steps).
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import contextlib
import dataclasses
import os
from pathlib import Path
import shutil

from nst_jax import errors
from nst_jax.io import checkpoint_store
from nst_jax.io import output_names
from nst_jax.runs import output_locks

# Free space asked beyond the estimate: the record's pictures and JSON, and
# what compression cannot promise.
SPACE_MARGIN_BYTES = 4 << 20
# Files and folders of one checkpoint directory (orbax's step and metadata;
# 20 measured for 3 leaves and for 12: OCDBT packs the arrays in a few files).
CHECKPOINT_ENTRIES = 20
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
    resumable: where an interrupted run of this output keeps its state (the checkpoint, the
      default; a video's work directory): while it exists, derived files may be that run's.
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
  iterations: int | Sequence[int] = 0,
  checkpoint: Path | None = None,
) -> Output:
  """An image result with its record files, checkpoint (`checkpoint`, default: beside the
  result) and intermediates."""
  result = Path(result)
  if checkpoint is None:
    checkpoint = output_names.derived(result, output_names.CHECKPOINT_TAIL)
  files = [('checkpoint', Path(checkpoint))]
  if record:
    names = output_names.RECORD_NAMES
    files += [
      (names[k], output_names.derived(result, t)) for k, t in output_names.RECORD_TAILS.items()
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
  _check_stop_images(outputs)
  mine = range(len(outputs)) if local is None else local
  for index in mine:
    _check_files(outputs[index], overwrite)
  _check_space([outputs[i] for i in mine])


def _check_stop_images(outputs: Sequence[Output]) -> None:
  """Refuses a result named as another's image saved on a stop (x.png's x_00008.png, trial 20)."""
  results = {output_names.resolved(o.result): o for o in outputs if not o.directory}
  for key, out in results.items():
    other = results.get(output_names.stopped_from(key))
    if other is not None:
      raise errors.NstError(
        f'{out.owner} {out.result} is a name {other.owner} {other.result} saves its image under '
        f'if stopped (NAME_<iteration>); {_rename(out)}'
      )


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
  held = None  # the iteration an interrupted run's checkpoint holds
  if ('checkpoint', out.state) in out.derived:
    owned, held = checkpoints_own(out)
    ours |= owned
  elif output_names.work_owns(out.state, out.result) and not _foreign_record(out):
    ours |= {*out.files, *output_names.work_frames(out.state, out.result)}  # killed writing it
  if out.directory:
    output_names.check_place(out.result / 'frame.png')
    _check_frame_folder(out, ours)
  for kind, path in [('', out.result), *out.derived][1 if out.directory else 0 :]:
    if kind == 'checkpoint':
      _check_checkpoint(out, path)
      continue
    if path.is_dir() and not path.is_symlink():  # trial 43: 'name a file' of a name derived
      fix = f'move it away or {_rename(out)}' if kind else 'name a file such as out.png'
      raise errors.NstError(f'{path} is a directory; {fix}')
    if os.path.lexists(path) and not path.is_file():
      raise errors.NstError(
        f'{path} exists and is not a regular file (a link to nowhere, a FIFO, a device); move it '
        f'away or {_rename(out)}'
      )
    if kind != INTERMEDIATE or (path.parent, len(path.name)) not in placed:
      output_names.check_place(path)  # the folder, and the name's and path's lengths
      placed.add((path.parent, len(path.name)))
    if kind and path.exists() and not overwrite and path in output_names.claimed(path):
      # Another run's result at this one's derived name (trial 20: a loss
      # plot's, replaced by a rerun; an intermediate's, called no run's).
      raise errors.NstError(
        f'{path} exists, beside {out.result.name}, and is the result of another run (its run '
        'record says so); choose another output name, or replace it with save.overwrite'
      )
    number = output_names.intermediate_number(path) if kind == INTERMEDIATE else None
    past = held is not None and number is not None and number > held
    if path.exists() and not (path in ours or overwrite) and past:
      # Trial 24: after a kill this may be the run's own, from after its last checkpoint;
      # trial 26: all of them named at once, not one refusal per file.
      past = [p.name for k, p in out.derived if k == INTERMEDIATE and p.is_file() and p not in ours]
      names = ', '.join(past[:-1]) + f' and {past[-1]}' if len(past) > 1 else path.name
      them = 'them' if len(past) > 1 else 'it'
      raise errors.NstError(
        f'{path.parent / names} exist{"s" if len(past) < 2 else ""}, beside '
        f"{out.result.name}, past iteration {held} that its checkpoint holds: this run's own if "
        f"it was stopped after that checkpoint, else someone's; move {them} away (or "
        f'replace {them} with save.overwrite)'
      )
    if path.exists() and not (path in ours or overwrite) and _changed(path):
      raise errors.NstError(
        f'{path} is not the file its run record was written for (changed since); move it away, '
        'or replace it with save.overwrite'
      )
    if path.exists() and not (path in ours or overwrite) and (other := _figure_of(path, out)):
      raise errors.NstError(  # trial 34: offered save.overwrite, which left the other bare
        f'{path} is the {other[1]} of {other[0]}, another result; choose another output name'
      )
    if path.exists() and not (path in ours or overwrite):
      whose = '' if path == out.result else f', beside {out.result.name},'
      if path == out.result and _foreign_record(out):  # trial 55 T55-12: a damaged one unsaid
        whose = f' ({output_names.record_files(path)[0].name} is unreadable or of another file)'
      fix = 'move it away' if os.path.lexists(out.state) else 'choose another output name'
      raise errors.NstError(  # trial 41: another name, beside a checkpoint, left its work behind
        f'{path} exists{whose} and no nst-jax run record says nst-jax wrote it; {fix}, or replace '
        'it with save.overwrite'
      )


def checkpoints_own(out: Output) -> tuple[set[Path], int | None]:
  """(What the run that left `out`'s checkpoint wrote beside it, the iteration it holds).

  Its intermediates up to the iteration it holds (by the digests its marker notes, where it
  does); once finished (killed while writing its files), its result, unless a file at the
  record's name says otherwise. Its record, plot and sheet are the record's to claim, by digest
  (trial 41: by name here, the next run replaced pictures saved over them, or ones it never
  wrote). Trials 20, 22: a user's r.png, r.json or r_00010.png were replaced by --resume.
  """
  from nst_jax.io import checkpoint as checkpoint_lib  # jax: not for --help's imports

  try:
    payload = checkpoint_lib.read(out.state)
  except errors.NstError:  # none, or damaged: refused or replaced elsewhere
    return set(), None
  done = checkpoint_lib.extra(payload).get('offset', 0) + payload['iteration']
  # Noted images (by digest) are its own: each as written since trial 36, at any number; before,
  # a stop's, else by name up to the checkpoint (after a kill, or past the stop: trials 32, 34).
  noted = checkpoint_store.noted_images(out.state)
  stopped = max((output_names.intermediate_number(Path(n)) or 0 for n in noted), default=0)
  ours = {
    p for kind, p in out.derived
    if kind == INTERMEDIATE and (n := output_names.intermediate_number(p) or done + 1) <= done
    and (n > stopped or not p.is_file() or noted.get(p.name) == output_names.file_sha256(p))
  } if not checkpoint_store.notes_as_written(out.state) else {
    p for kind, p in out.derived
    if kind == INTERMEDIATE and p.is_file() and noted.get(p.name) == output_names.file_sha256(p)
  }  # fmt: skip
  if not checkpoint_lib.unfinished(payload) and not _foreign_record(out):
    noted, where = checkpoint_store.noted_result(out.state)  # kept: the result it was kept with
    elsewhere = where is not None and where != str(output_names.resolved(out.result))
    same = not out.result.is_file() or output_names.file_sha256(out.result) == noted  # trial 43:
    # one it never noted (its result unwritten: a full disk, a kill) was taken, a user's put there
    if same and not elsewhere:
      ours.add(out.result)
  return ours, done


def _figure_of(path: Path, out: Output) -> tuple[str, str] | None:
  """(Another result, 'run record' or the like) when `path` is one of that result's files
  (out/r.jpg.json is r.jpg's record, whose name --output r.jpg.png derives too)."""
  for key, tail in output_names.RECORD_TAILS.items():
    stem = path.name[: -len(tail)] if path.name.endswith(tail) else None
    for other in () if not stem else (path.with_name(stem), path.with_name(stem + '.png')):
      if other != out.result and other.is_file() and path in output_names.claimed(other):
        return other.name, output_names.RECORD_NAMES[key]
  return None


def _changed(result: Path) -> bool:
  """A result whose own record (by name) holds another file's digest."""
  data = output_names.record_beside(result)
  return data is not None and output_names.changed_since_record(result, data)


def _foreign_record(out: Output) -> bool:
  """A file at the result's record name that names no such result: someone's (trial 22); not
  the record of an earlier run to it (trial 53 V7: a rerun's own video was nobody's)."""
  record = output_names.derived(out.result, output_names.RECORD_TAILS['json'])
  return os.path.lexists(record) and output_names.record_beside(out.result) is None


def _check_frame_folder(out: Output, ours: set[Path]) -> None:
  """A folder of frames is new, empty, or holds only frames its run record claims (a rerun's).

  Nothing else in it is replaced, even with save.overwrite: the writer deletes only the claimed
  frames (nst_jax.io.video.write_frames), and the rest are someone's files.
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
  # A checkpoint away from its output is in run.checkpoint_dir, which the fix names.
  beside = path.parent == out.result.parent
  output_names.check_place(path, 'output' if beside else 'run.checkpoint_dir')
  if not _utf8(path):  # trial 26: every save failed, in pybind11's words, after the run
    fix = _rename(out) if beside or _utf8(path.parent) else 'choose another run.checkpoint_dir'
    raise errors.NstError(
      f'{errors.printable(path)} is not a UTF-8 name, and orbax writes checkpoints under UTF-8 '
      f'names only; {fix}'
    )


def _utf8(path: Path) -> bool:
  try:
    str(path).encode()
  except UnicodeEncodeError:
    return False
  return True


def _check_space(outputs: Sequence[Output]) -> None:
  need: dict[int, list] = {}
  for out in outputs:
    directory = output_names.existing_ancestor(out.result)
    device = os.stat(directory).st_dev
    entry = need.setdefault(device, [directory, 0, 0])
    # An uncompressed result, and a checkpoint written beside the previous
    # one (atomic replacement holds both for a moment).
    entry[1] += out.pixels * 3 * 2 + 2 * out.state_bytes
    # Files: each with its lock and temporary name, two checkpoints' entries.
    entry[2] += 2 * len(out.files) + 2 * CHECKPOINT_ENTRIES
  for directory, total, files in need.values():
    fs = os.statvfs(directory)
    if fs.f_files and fs.f_favail < files:  # f_files 0: no fixed count (btrfs)
      raise errors.NstError(
        f'{directory} has room for {fs.f_favail} more files and the run writes about {files} '
        '(results, records, locks and checkpoints); delete files or choose another output '
        'directory'
      )
    total += SPACE_MARGIN_BYTES
    free = shutil.disk_usage(directory).free
    if free < total:
      raise errors.NstError(
        f'{directory} has {free / 1e6:.0f} MB free and the run needs about {total / 1e6:.0f} MB '
        '(results and checkpoints); free space or choose another output directory'
      )


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
  with output_locks.hold(files):
    then_check()
    _remove_litter(mine)
    try:
      yield
    finally:  # trial 28: a save a full disk cut short left its temporary directory behind
      _remove_litter(mine)


def _remove_litter(mine: Sequence[Output]) -> None:
  """The temporary files a killed (or failed) run left beside its outputs and in checkpoints."""
  for out in mine:  # trial 45: a --norecord rerun left a killed run's `.r.loss.png.nst-*.tmp`
    figures = [] if out.directory else output_names.record_files(out.result)
    output_names.remove_temporaries([*out.files, *figures])
    for kind, path in out.derived:
      if kind == 'checkpoint':  # what a killed save left inside it
        checkpoint_store.remove_litter(path)
