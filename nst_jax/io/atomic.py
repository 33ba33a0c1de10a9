"""Files written whole: a temporary file beside the name, then a rename.

Every file nst-jax writes outside a checkpoint's steps goes through `write`
(images, run records, weights, a video's settings), so a reader never sees
half a file and a kill leaves only a temporary (`.NAME.nst-XXXXXXXX.tmp`,
which output_names.remove_temporaries clears). With `replace=False` the
rename never replaces a file that appeared since the run's plan.
"""

from collections.abc import Callable
import os
from pathlib import Path
import tempfile

from nst_jax import errors


def write(
  path: str | os.PathLike,
  write: Callable[[str], None],
  *,
  then: Callable[[str], None] | None = None,
  replace: bool = True,
) -> None:
  """Calls write(tmp) on a temporary file beside `path`, then renames it.

  A reader never sees a half-written `path`, and a failed write leaves any
  existing `path` untouched. `then(tmp)`, if given, runs on the written
  file before the rename (a result's run record, with its digest); if it
  fails, nothing is renamed. `replace=False`: a file at `path` by then is
  kept (FileAppeared): the run's plan found none there, so it is someone's
  since (trial 34: put there while the run ran, it was replaced at the end).
  """
  path = Path(path)
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.nst-', suffix='.tmp', dir=path.parent)
    os.close(fd)
    write(tmp)
    # mkstemp creates 0600; give the file the mode a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    if then is not None:
      then(tmp)
    if replace:
      os.replace(tmp, path)
    else:
      place_new(tmp, path)
  except BaseException as e:
    if tmp is not None:
      Path(tmp).unlink(missing_ok=True)
    if isinstance(e, OSError) and e.errno is not None:
      # Disk full, I/O error, permissions: one line, and `path` as it was.
      raise errors.WriteError(errors.write_failure(path, e, e.strerror)) from None
    raise


def place_new(tmp: str | os.PathLike, path: Path) -> None:
  """Puts `tmp` at `path` only if no file is there: a hard link fails on one, at once."""
  try:
    os.link(tmp, path)
  except FileExistsError:
    pass
  except OSError:  # no hard links here (FAT, some FUSE mounts): look, then rename
    if not os.path.lexists(path):
      os.replace(tmp, path)
      return
  else:
    os.unlink(tmp)
    return
  raise errors.FileAppeared(
    f'could not write {errors.printable(path)}: a file appeared there while the run ran, and is '
    'kept',
    path,
  )
