"""A checkpoint on disk (format 2): one directory per output, holding orbax-checkpoint steps.

    NAME.ckpt/
      nst-jax-checkpoint.json   marks the directory as nst-jax's ({"format": 2})
      12/                       the newest step, committed by orbax (temporary name + rename)
        meta/metadata           JSON: format, iteration, total, scale, scales, settings, extra
        state/                  the state's arrays (OCDBT: manifest.ocdbt, _METADATA, d/...)
        _CHECKPOINT_METADATA, commit_success.txt
      13.orbax-checkpoint-tmp/  a save in progress (or one a kill cut short: litter)

A save writes the next step beside the newest and removes the older ones
only once orbax has committed it, so a kill at any moment leaves a whole step
to resume from; readers take the highest-numbered committed step (and a
refusal of a damaged one names the step before it, which resumes). The
directory itself appears whole: the first save builds it under a temporary
name (`.NAME.ckpt.nst-XXXXXXXX.tmp`, the name nst_jax.io.atomic.write uses) and
renames it into place. Beside a format-1 file (one msgpack file of the same
name, from nst-jax before format 2) the first save exchanges the two
atomically (Linux renameat2 RENAME_EXCHANGE), then deletes the file; where
the file system cannot exchange (NFS, FUSE mounts), it deletes the file and
renames the directory at once after, and a kill between those two calls
loses the checkpoint. A directory at NAME.ckpt without the marker, or with
anything the layout above does not name, is not ours: it is never written
into or deleted.
"""

import contextlib
import ctypes
import errno
import functools
import json
import os
from pathlib import Path
import re
import secrets
import shutil
import sys
from typing import Any

from absl import logging

from nst_jax import errors
from nst_jax.io import orbax_local

FORMAT = 2
MARKER = 'nst-jax-checkpoint.json'
# In the marker of a checkpoint whose run notes each image as it writes it (note_images): its own
# are those noted, by digest, after a kill too; older ones noted only a stop's (trial 36).
NOTED_AS_WRITTEN = 'images_noted_as_written'
_STEP = re.compile(r'\d+')
_STEP_TMP = re.compile(r'\d+' + re.escape(orbax_local.TMP_SUFFIX))


class Damaged(Exception):
  """A checkpoint directory of ours that cannot be read; the message says what is wrong."""

  def __init__(self, message: str, step: Path | None = None):
    super().__init__(message)
    self.step = step  # the step that cannot be read, if one was found


def foreign(path: Path) -> str | None:
  """Why the directory `path` is not an nst-jax checkpoint, or None if it is."""
  try:
    entries = list(os.scandir(path))
  except OSError as e:
    return f'it cannot be read ({e.strerror})'
  names = {e.name for e in entries}
  steps_only = entries and all(
    (_STEP.fullmatch(e.name) or _STEP_TMP.fullmatch(e.name)) and e.is_dir(follow_symlinks=False)
    for e in entries
  )
  if MARKER not in names and steps_only:
    # orbax made a step's path again after the folder was removed mid-save (trial 24).
    return (
      "it holds orbax's steps without nst-jax's marker: a save cut short when its folder was "
      'removed; delete it'
    )
  if MARKER not in names:
    return 'it is a directory that nst-jax did not write'

  def known(e: os.DirEntry) -> bool:
    if e.name == MARKER:
      return e.is_file(follow_symlinks=False)
    step = _STEP.fullmatch(e.name) or _STEP_TMP.fullmatch(e.name)
    return bool(step) and e.is_dir(follow_symlinks=False)

  unknown = sorted(e.name for e in entries if not known(e))
  if not unknown:
    return None
  # Trial 43: only 'move it away', which left its run's work behind; 45: the first file only.
  named = ', '.join(unknown[:3]) + (f' and {len(unknown) - 3} more' if len(unknown) > 3 else '')
  that = 'that' if len(unknown) == 1 else 'them'
  return (
    f'it holds {named}, which nst-jax does not write there: move {that} out of it to keep its work'
  )


def is_directory(path: Path) -> bool:
  """Whether `path` is a directory (a format-2 checkpoint, or someone's), not a link to one."""
  return path.is_dir() and not path.is_symlink()


def ours(path: Path) -> bool:
  """Whether `path` may be a checkpoint nst-jax wrote: a file, or a directory of ours.

  A file (format 1) is checked when it is read. A directory being built or
  removed goes by a temporary name (`.NAME.ckpt.nst-XXXXXXXX.tmp`), under
  which its contents are not checked.
  """
  if not is_directory(path):
    return path.is_file()
  return path.name.endswith('.tmp') or foreign(path) is None


def steps(path: Path) -> list[int]:
  """The committed steps of a checkpoint directory, oldest first."""
  with contextlib.suppress(FileNotFoundError):
    return sorted(int(p.name) for p in path.iterdir() if _STEP.fullmatch(p.name) and p.is_dir())
  return []


def read_meta(path: Path) -> tuple[dict, Path]:
  """(the newest step's metadata, that step's directory).

  Raises:
    Damaged: no committed step, or its metadata is missing or not JSON.
  """
  # A save running in another process may commit a newer step and remove
  # this one between listing and reading: then look again.
  for _ in range(10):
    found = steps(path)
    if not found:
      raise Damaged('it holds no committed step')
    step = path / str(found[-1])
    meta = step / orbax_local.META_ITEM / orbax_local.META_FILE
    try:
      text = meta.read_text()
    except FileNotFoundError:
      if step.exists():
        raise Damaged(f'{meta.relative_to(path)} is missing', step) from None
      continue
    except (OSError, UnicodeDecodeError) as e:
      raise Damaged(f'{meta.relative_to(path)} cannot be read ({e})', step) from None
    try:
      data = json.loads(text)
    except (ValueError, RecursionError):  # nested too deeply for Python's parser too (trial 34)
      raise Damaged(f'{meta.relative_to(path)} is not JSON', step) from None
    if not orbax_local.meta_intact(data):  # trial 36: "iteration": 7 -> 6 resumed, exit 0
      raise Damaged(f'{meta.relative_to(path)} is not what was saved (its SHA-256 differs)', step)
    return data, step
  raise Damaged('its steps kept changing while it was read')


def save(path: str | os.PathLike, *, state: dict, meta: dict) -> None:
  """Saves `state` and `meta` as the newest step of the checkpoint `path` (module docstring).

  Raises:
    WriteError: the disk is full, `path` is not ours, or another write
      failure; nothing of the previous checkpoint was replaced.
  """
  path = Path(path)
  try:
    if is_directory(path):
      why = foreign(path)
      if why is not None:
        raise errors.WriteError(
          f'could not write {path}: {why}; move it away or choose another output name'
        )
      _save_step(path, state, meta)
    else:
      _create(path, state, meta)
  except errors.NstError:
    raise
  except Exception as e:  # orbax and tensorstore raise several types for one failed write
    raise errors.WriteError(errors.write_failure(path, e, reason(e))) from None


def reason(e: BaseException, limit: int = 160) -> str:
  """An exception from orbax or tensorstore as a short phrase for a one-line message.

  Their messages run to several lines, with a JSON spec at the end.
  """
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  if 'RESOURCE_EXHAUSTED' in str(e) or 'No space left on device' in str(e):
    return os.strerror(errno.ENOSPC)  # tensorstore's full disk (trial 22: its raw line)
  lines = str(e).strip().splitlines()
  text = lines[0].split(' [tensorstore_spec=')[0] if lines else type(e).__name__
  if len(text) > limit:
    text = text[: text.rfind(' ', 0, limit)] + ' ...'
  return text


# Why a save failed whose directory was deleted while orbax wrote into it.
_REMOVED = 'its folder was removed while it was written'


def _save_step(path: Path, state: dict, meta: dict) -> None:
  """The next step inside an existing checkpoint directory, then the older steps removed."""
  remove_litter(path)
  older = steps(path)
  step = path / str(older[-1] + 1 if older else 0)
  try:
    orbax_local.save(step, state=state, meta=meta)
    if not (path / MARKER).is_file():  # removed meanwhile; orbax made the path again (trial 22)
      _rmtree(step)
      with contextlib.suppress(OSError):
        path.rmdir()  # only if empty: nothing but our step was in it
      raise FileNotFoundError(errno.ENOENT, _REMOVED)
  except BaseException:
    _rmtree(step.with_name(step.name + orbax_local.TMP_SUFFIX))
    raise
  for old in older:
    _rmtree(path / str(old))


def _create(path: Path, state: dict, meta: dict) -> None:
  """A new checkpoint directory, built under a temporary name and put in place whole."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _make_temporary(path)
  try:
    marker = {'format': FORMAT, 'writer': 'nst-jax', NOTED_AS_WRITTEN: True,
              'images_sha256': dict(_WRITTEN.get(Path(path), {}))}  # fmt: skip
    (tmp / MARKER).write_text(json.dumps(marker) + '\n')
    orbax_local.save(tmp / '0', state=state, meta=meta)
    if not (tmp / MARKER).is_file():
      # Its folder was deleted meanwhile and orbax made the step's path again:
      # put in place, it was called someone's by every later run (trial 20).
      raise FileNotFoundError(errno.ENOENT, _REMOVED)
    if is_directory(path):  # made while this save was written: someone's, never replaced
      raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    if not os.path.lexists(path):
      if not _renameat2(tmp, path, _RENAME_NOREPLACE):
        os.rename(tmp, path)
      return
    if not _format_1_file(path):  # put there while the run ran: someone's (trial 34: deleted)
      raise FileExistsError(errno.EEXIST, 'a file appeared there while the run ran', str(path))
    # A format-1 file (its run resumed, or finished and kept): swapped with
    # the directory at once, so that one of them is always there.
    if not _renameat2(tmp, path, _RENAME_EXCHANGE):
      os.unlink(path)  # no exchange on this file system: a moment with neither
      os.rename(tmp, path)
      return
  except BaseException:
    _rmtree(tmp)
    raise
  _rmtree(tmp)  # the old file, now under the temporary name


def _format_1_file(path: Path) -> bool:
  """Whether `path` is a format-1 checkpoint: a msgpack map whose 'format' is 1 (read up to that
  key, which comes before the state: nst_jax.io.checkpoint_v1 writes its keys sorted)."""
  import msgpack  # flax's serialiser, without flax (and jax), which --help does not load

  try:
    with open(path, 'rb') as f:
      unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 30)
      for _ in range(min(unpacker.read_map_header(), 16)):
        if unpacker.unpack() == 'format':
          return unpacker.unpack() == 1
        unpacker.skip()
  except Exception:  # noqa: BLE001 (msgpack raises several types for what is not msgpack)
    return False
  return False


def note_result(path: Path, digest: str, result: Path | None = None) -> None:
  """Puts a kept checkpoint's result digest (SHA-256 hex) and resolved path in its marker.

  A finished checkpoint owns the result beside it (a run killed while
  writing it); a file put at the result's name since, or a copy of both
  elsewhere, is someone's (trials 26, 28). Not for format-1 files.
  """
  where = {} if result is None else {'result_path': os.path.realpath(result)}
  _note(path, result_sha256=digest, **where)


def note_images(path: Path, images: dict[str, str]) -> None:
  """Adds {name: SHA-256} of images a stopped run saved beside its output to the marker.

  A resume claims them by digest (trial 30: by name, it claimed a user's
  pictures at such names), and a folder of inputs leaves them out.
  """
  _note(path, images_sha256={**noted_images(path), **images})


def forget_images(path: Path) -> None:
  """Drops the noted images of a finished checkpoint a new run starts over.

  They were the earlier run's stops (its record claims them since it
  finished); kept, a stop of the new run added its own to them and its
  resume listed the earlier run's as its own (trial 32 W3).
  """
  marker = path / MARKER
  if is_directory(path) and marker.is_file() and not marker.is_symlink():
    data = _marker(path)
    if data.pop('images_sha256', None) is not None:
      marker.write_text(json.dumps(data) + '\n')


def _note(path: Path, **fields: Any) -> None:
  marker = path / MARKER
  if is_directory(path) and marker.is_file() and not marker.is_symlink():
    data = _marker(path)
    data.update(format=FORMAT, writer='nst-jax', **fields)
    marker.write_text(json.dumps(data) + '\n')  # small: no temporary (foreign() names none)


def _marker(path: Path) -> dict:
  with contextlib.suppress(OSError, ValueError, RecursionError):
    data = json.loads((path / MARKER).read_text())
    return data if isinstance(data, dict) else {}
  return {}


def noted_result(path: Path) -> tuple[str | None, str | None]:
  """(The result digest, its resolved path) `note_result` put in the marker, or Nones."""
  data = _marker(path)
  digest, where = data.get('result_sha256'), data.get('result_path')
  return (digest if isinstance(digest, str) else None, where if isinstance(where, str) else None)


# Checkpoint path -> {name: SHA-256} of the images its run wrote, which the run fills as it
# writes them (runs.results.Results): the first save puts those in the marker at once, so a kill
# between that save and the next note leaves none of them unnoted.
_WRITTEN: dict[Path, dict[str, str]] = {}


def expect_images(path: Path, written: dict[str, str] | None) -> None:
  """Lets the first save of the checkpoint `path` note `written` (a dict its run fills); None
  forgets it once the run is over (another run to that path in the process, stylize's
  checkpoint= say, noted the images of the first as its own)."""
  if written is None:
    _WRITTEN.pop(Path(path), None)
  else:
    _WRITTEN[Path(path)] = written


def notes_as_written(path: Path) -> bool:
  """Whether the checkpoint's run noted each image as it wrote it (NOTED_AS_WRITTEN)."""
  return _marker(path).get(NOTED_AS_WRITTEN) is True


def noted_images(path: Path) -> dict[str, str]:
  """The {name: SHA-256} `note_images` put in the marker ({} without)."""
  images = _marker(path).get('images_sha256')
  if not isinstance(images, dict):
    return {}
  return {k: v for k, v in images.items() if isinstance(k, str) and isinstance(v, str)}


def remove(path: str | os.PathLike) -> None:
  """Deletes a checkpoint (a format-1 file, or a directory of ours; someone's is left).

  A directory is first renamed to a temporary name, so a kill while it is
  being deleted leaves litter (removed by the next run) rather than a
  half-deleted checkpoint. A failure is a warning.
  """
  path = Path(path)
  try:
    if not is_directory(path):
      if _format_1_file(path):  # not a file put at its name since (trial 34)
        path.unlink()
    elif foreign(path) is None:
      doomed = _temporary_name(path)
      os.rename(path, doomed)
      _rmtree(doomed)
  except OSError as e:  # the result is saved: a checkpoint left behind only takes space
    logging.warning('could not delete the finished checkpoint %s (%s); delete it', path, e.strerror)


def _temporary_name(path: Path) -> Path:
  """`.NAME.nst-XXXXXXXX.tmp` beside `path`: nst_jax.io.atomic.write's name, which the planner's
  litter removal knows (output_names.remove_temporaries)."""
  name = ''.join(secrets.choice('abcdefghijklmnopqrstuvwxyz0123456789_') for _ in range(8))
  return path.with_name(f'.{path.name}.nst-{name}.tmp')


def _make_temporary(path: Path) -> Path:
  """A new, empty directory under a temporary name beside `path`.

  os.mkdir rather than tempfile.mkdtemp: its mode is the umask's, as the
  checkpoint's should be (mkdtemp makes 0700, and reading the umask means
  setting it, for every thread at once).
  """
  while True:
    tmp = _temporary_name(path)
    try:
      tmp.mkdir()
      return tmp
    except FileExistsError:
      continue


def remove_litter(path: Path) -> list[Path]:
  """Removes orbax's temporary steps a killed save left in a checkpoint directory of ours.

  Only names the layout defines, and only in a directory of ours. Steps
  older than the newest (a kill between a commit and their removal) are
  kept until the next save: where a rename is a copy (Cloud Storage FUSE),
  a kill can leave the newest incomplete, and the one before is then what
  resumes.
  """
  if not is_directory(path) or foreign(path) is not None:
    return []
  removed = [path / e.name for e in os.scandir(path) if _STEP_TMP.fullmatch(e.name)]
  for p in removed:
    _rmtree(p)
  return removed


def _rmtree(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      path.unlink()


# renameat2(2): RENAME_NOREPLACE fails instead of replacing an empty
# directory that appeared meanwhile; RENAME_EXCHANGE swaps two names at once
# (a file and a directory, which rename(2) cannot replace one by the other).
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(source: Path, target: Path, flags: int) -> bool:
  """renameat2(source, target, flags); False where the system or file system lacks it."""
  call = _libc_renameat2()
  if call is None:
    return False
  if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
    return True
  code = ctypes.get_errno()
  if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
    return False
  raise OSError(code, os.strerror(code), str(target))


@functools.cache
def _libc_renameat2():
  if not sys.platform.startswith('linux'):
    return None
  call = getattr(ctypes.CDLL(None, use_errno=True), 'renameat2', None)
  if call is not None:
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  return call
