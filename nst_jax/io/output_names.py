"""Output names: the files derived from an output, which of them a run wrote, checks of a path.

For an output NAME.EXT: its run record, loss plot and contact sheet
(`RECORD_TAILS`), checkpoint (`CHECKPOINT_TAIL`), the `save_iter`
intermediates and the lock file, named by `derived` so that a.png and a.jpg
share nothing; `claimed` says which existing files nst-jax wrote for an output
(its run record lists them, and counts a frame folder's frames);
`check_format` and `check_place` refuse a path Pillow cannot write or a
directory that cannot take it; `remove_temporaries` clears what a killed
write left. The planner that uses them is
nst_jax.runs.output_plan.
"""

from collections.abc import Iterable, Sequence
import contextlib
import functools
import hashlib
import io
import json
import os
from pathlib import Path
import re
import shutil
from typing import Any

import numpy as np
from PIL import Image

from nst_jax import errors
from nst_jax.io import checkpoint_store

# Derived files of an output NAME.EXT: the default format keeps NAME.json
# (as every earlier version wrote); any other suffix is kept in the name,
# so a.png and a.jpg never share a record or a checkpoint.
DEFAULT_SUFFIX = '.png'
RECORD_TAILS = {'json': '.json', 'loss': '.loss.png', 'sheet': '.sheet.jpg'}
RECORD_NAMES = {'json': 'run record', 'loss': 'loss plot', 'sheet': 'contact sheet'}
CHECKPOINT_TAIL = '.ckpt'
# The frames a video run writes into a folder (nst_jax.io.video.write_frames), numbered from 1.
FRAME_NAME = 'frame_{:05d}.png'
# atomic.write's temporary name: '.' + name + '.nst-' + 8 random characters + '.tmp'.
TEMP_EXTRA_CHARS = 18


def derived_stem(output: str | os.PathLike) -> str:
  """The name derived files start with: a.png -> a, a.jpg -> a.jpg."""
  output = Path(output)
  return output.stem if output.suffix == DEFAULT_SUFFIX else output.name


def derived(output: str | os.PathLike, tail: str) -> Path:
  """A file beside `output` named after it: (out/a.png, '.json') -> out/a.json."""
  output = Path(output)
  return output.with_name(derived_stem(output) + tail)


def record_files(output: str | os.PathLike) -> list[Path]:
  """The run record, loss plot and contact sheet beside `output` (`RECORD_TAILS`, in order)."""
  return [derived(output, tail) for tail in RECORD_TAILS.values()]


def legacy_derived(output: str | os.PathLike, tail: str) -> Path | None:
  """The name an earlier version gave (stem + tail) where it differs from today's."""
  output = Path(output)
  old = output.with_name(output.stem + tail)
  return None if old == derived(output, tail) else old


def intermediate_path(output: str | os.PathLike, iteration: int) -> Path:
  """out/a.png, 250 -> out/a_00250.png."""
  output = Path(output)
  return output.with_name(f'{output.stem}_{iteration:05d}{output.suffix}')


def intermediate_number(path: Path) -> int | None:
  """The iteration an intermediate's name holds (a_00250.png -> 250), or None."""
  match = re.fullmatch(r'.*_(\d{5,})', path.stem, re.DOTALL)  # a name may hold a newline
  return int(match[1]) if match else None


def stopped_from(path: Path) -> Path | None:
  """The output whose intermediate (or stop) image `path` is named as: a_00250.png -> a.png."""
  match = re.fullmatch(r'(.*)_\d{5,}', path.stem, re.DOTALL)
  return path.with_name(match[1] + path.suffix) if match else None


def intermediates(
  output: str | os.PathLike, save_iter: int, iterations: int | Sequence[int]
) -> list[Path]:
  """The intermediates a run saves every `save_iter` iterations (none for 0).

  `iterations`: the run's, or each scale's (numbered across scales, from
  each scale's start: trial 24's 2-scale plan named 12 and 16 where 14 and
  18 were written). None at a scale's last iteration, which is its result.
  """
  if not save_iter:
    return []
  stages = [iterations] if isinstance(iterations, int) else list(iterations)
  numbers, offset = [], 0
  for n in stages:
    numbers += [offset + k for k in range(save_iter, n, save_iter)]
    offset += n
  return [intermediate_path(output, it) for it in numbers]


def resolved(path: str | os.PathLike) -> Path:
  try:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()
  except RuntimeError:  # pathlib's "Symlink loop"
    raise errors.NstError(f'{errors.printable(path)} is a loop of symbolic links; fix it') from None
  except ValueError:  # an embedded NUL byte
    raise errors.NstError(f'{errors.printable(path)} holds a NUL byte; rename it') from None


def identity(path: Path) -> tuple[int, int] | None:
  """(device, inode) of an existing file: one file under two names (hard or bind links)."""
  try:
    st = os.stat(path)
  except (OSError, ValueError):
    return None
  return st.st_dev, st.st_ino


# Made in a video's work directory when its result is written: a run killed
# after it may have written the result (output_plan owns it then), not before.
# Once the video is written it holds the video's SHA-256 (trial 43: a user's
# video put there after a kept run was the work directory's by name).
WORK_WRITING = 'writing-result'
# A frames folder's frames, {name: SHA-256}, noted before the folder is put in place (trial 49).
WORK_FRAMES = 'frames-written.json'


def work_owns(work: Path, result: Path) -> bool:
  """Whether the video work directory `work` owns what is at `result`: a frame folder, no file,
  or the video whose digest its WORK_WRITING marker holds; not without the marker."""
  marker = work / WORK_WRITING
  if not marker.is_file():
    return False
  if result.is_dir() or not result.is_file():
    return True
  try:
    return marker.read_text().strip() == file_sha256(result)
  except (OSError, UnicodeDecodeError):
    return False


def work_frames(work: Path, folder: Path) -> set[Path]:
  """The frames in `folder` that the video work directory `work` wrote there, by the digests it
  noted before it put the folder in place (trial 49 V2: killed before the record, even a resume
  refused the run's own frames; by name, a user's folder there would be taken)."""
  try:
    noted = json.loads((work / WORK_FRAMES).read_text())
  except (OSError, ValueError, RecursionError):
    return set()
  if not isinstance(noted, dict):
    return set()
  frames = {folder / n: d for n, d in noted.items() if isinstance(n, str) and '/' not in n}
  return {p for p, d in frames.items() if p.is_file() and not p.is_symlink() and not changed(p, d)}


def record_beside(output: str | os.PathLike) -> dict | None:
  """The run record beside `output` (a dict), if there is one and it names a file of its name."""
  output = Path(output)
  record = derived(output, RECORD_TAILS['json'])
  if not record.is_file():  # not a FIFO, which would block the read
    return None
  try:
    data = json.loads(record.read_text())
  except (OSError, ValueError, RecursionError):  # RecursionError: nested too deeply (trial 34)
    return None
  if not isinstance(data, dict) or Path(str(data.get('output', ''))).name != output.name:
    return None
  return data


def record_naming(output: str | os.PathLike) -> dict | None:
  """The run record beside `output` (a dict), if there is one and it names `output`.

  Named by resolved path (`output_resolved`, or an absolute `output`; a
  relative one's by name in records before 2026-12-07), and by the
  result's SHA-256 where the record holds it.
  """
  output = Path(output)
  data = record_beside(output)
  if data is None:
    return None
  named = Path(str(data.get('output_resolved') or data['output']))
  if named.is_absolute() and resolved(named) != resolved(output):  # a record copied here
    return None
  return None if changed_since_record(output, data) else data


def changed_since_record(output: Path, record: dict) -> bool:
  """Whether `output` is another file than its record's (trial 24: an image saved over it).

  Records before 2026-12-07 hold no digest: never changed, as far as they say.
  """
  digest = record.get('result_sha256')
  return isinstance(digest, str) and output.is_file() and file_sha256(output) != digest


def file_sha256(path: str | os.PathLike) -> str:
  """The SHA-256 of a file's bytes, in hex (a run record's 'result_sha256')."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def claimed(output: str | os.PathLike) -> set[Path]:
  """The files the run record beside `output` says nst-jax wrote for it (none without one).

  The record names its result (`output`) and the intermediates it saved
  (and an earlier run's it did not replace); the record, loss plot and
  contact sheet go with it. A video's record of a frame folder counts its
  `frames`: frame_00001.png to that count inside it.
  """
  output = Path(output)
  data = record_naming(output)
  if data is None:
    return set()
  listed = [*_names(data.get('intermediates')), *_names(data.get('earlier_intermediates'))]
  names = [n for n in listed if isinstance(n, str) and '/' not in n]
  # By digest where the record holds one: an image saved over one is someone's (trial 28).
  digests = data.get('intermediates_sha256')
  digests = digests if isinstance(digests, dict) else {}
  figures = data.get('figures_sha256')  # the loss plot's and sheet's (trial 34: by name before)
  json_, *plots = record_files(output)
  if isinstance(figures, dict):  # one it did not write (kept: trial 36) is not its
    plots = [p for p in plots if p.name in figures and not changed(p, figures[p.name])]
  ours = {output, json_, *plots} | {
    output.with_name(n) for n in names if not changed(output.with_name(n), digests.get(n))
  }
  frames, digests = data.get('frames'), data.get('frames_sha256')
  if output.is_dir() and isinstance(frames, int) and not isinstance(frames, bool):
    with contextlib.suppress(OSError):  # unreadable: nothing in it is known to be ours
      ours |= {output / n for n in os.listdir(output) if _frame_number(n) in range(1, frames + 1)}
    if isinstance(digests, dict):  # by digest where the record holds them (trial 53 F1)
      ours = {p for p in ours if p.parent != output or _frame_ours(p, digests.get(p.name))}
  return ours


def _frame_ours(path: Path, digest: Any) -> bool:
  """Whether the frame at `path` is the one of SHA-256 `digest` its record noted."""
  return isinstance(digest, str) and not changed(path, digest)


def changed(path: Path, digest: Any) -> bool:
  """Whether the file at `path` is not the one of SHA-256 `digest` (a string) any more."""
  return isinstance(digest, str) and path.is_file() and file_sha256(path) != digest


def _names(value) -> list:
  return value if isinstance(value, list) else []


def _frame_number(name: str) -> int:
  """n of FRAME_NAME's frame_0000n.png (-1 for any other name, frame_1.png among them)."""
  match = re.fullmatch(r'frame_(\d{5,})\.png', name)
  return int(match[1]) if match and name == FRAME_NAME.format(int(match[1])) else -1


@functools.cache
def _encodable(fmt: str, bit_depth: int) -> str | None:
  """Why `fmt` cannot hold the result (None if it can): a small image, written and read back.

  Pillow writes some formats only after changing the image: GIF keeps 256
  colours, ICO resizes to icon sizes, XBM and MSP take one bit (trial 17),
  PDF holds a JPEG (trial 18). Formats whose loss `save_image` sets (JPEG's
  and AVIF's `quality`) pass; one it cannot read back is refused, unchecked.
  """
  if bit_depth == 16:
    return None  # pypng writes 16-bit PNGs (image.save_image); only PNG gets here
  noise = np.random.default_rng(0).integers(0, 256, (24, 40, 3), np.uint8)
  buffer = io.BytesIO()
  try:
    options = {'lossless': True} if fmt == 'WEBP' else {}
    Image.fromarray(noise).save(buffer, format=fmt, **options)
  except Exception as e:  # Pillow raises KeyError, OSError, ValueError... per plugin
    return f'{type(e).__name__}: {e}'.splitlines()[0]
  if fmt in LOSSY_FORMATS:
    return None
  try:
    with Image.open(buffer) as back:
      back = np.asarray(back.convert('RGB'))
  except Exception as e:  # written, not read back: PDF, EPS
    return f'it cannot be read back to check that it holds the image ({type(e).__name__})'

  if back.shape != noise.shape:
    return f'it wrote a {back.shape[1]}x{back.shape[0]} image for a 40x24 one'
  if not np.array_equal(back, noise):
    return 'it changed the colours: it holds fewer than RGB has'
  return None


# Lossy by design, with their loss set by `quality` in image.save_image.
LOSSY_FORMATS = ('JPEG', 'AVIF')


def check_format(path: Path, fmt: str, bit_depth: int) -> None:
  """Refuses a format Pillow cannot write the result in (.psd, .xpm, .fits, .gif, .ico, ...)."""
  why = _encodable(fmt, bit_depth)
  if why is not None:
    raise errors.ImageError(
      f'cannot write {path.name}: Pillow cannot save the result as {fmt} ({why}); end the name '
      'in .png, .jpg, .webp or .tif'
    )


def existing_ancestor(path: Path) -> Path:
  """The nearest ancestor that exists, refusing a dangling link on the way."""
  parent = path.parent
  while not parent.exists():
    if parent.is_symlink():
      raise errors.NstError(
        f'{parent} is a link to {os.readlink(parent)}, which does not exist; create it or choose '
        'another output directory'
      )
    parent = parent.parent
  return parent


def check_place(path: Path, where: str = 'output') -> Path:
  """Refuses a name or directory that cannot be written; returns the nearest existing directory.

  `where`: the setting that put it there, for the fix ('run.checkpoint_dir':
  trial 22 was told to change the output).
  """
  directory = existing_ancestor(path)
  if not directory.is_dir():
    raise errors.NstError(f'{directory} is a file, not a directory; choose another {where}')
  for inside in (directory, *directory.parents)[:3]:  # its steps are NAME.ckpt/N/
    if (inside / checkpoint_store.MARKER).is_file():  # trial 34: its resume was then refused
      raise errors.NstError(f'{inside} is an nst-jax checkpoint; choose another {where}')
  if not os.access(directory, os.W_OK | os.X_OK):
    folder = 'output directory' if where == 'output' else where
    raise errors.NstError(f'{directory} is not writable; choose another {folder}')
  limit = os.pathconf(directory, 'PC_NAME_MAX')
  fits = limit - TEMP_EXTRA_CHARS
  if len(os.fsencode(path.name)) > fits:
    raise errors.NstError(
      f'the name {path.name[:24]}... is {len(os.fsencode(path.name))} bytes long, and at most '
      f"{fits} fit here ({limit} less the temporary name's {TEMP_EXTRA_CHARS}); choose a "
      'shorter output name'
    )
  if len(os.fsencode(os.path.abspath(path))) + TEMP_EXTRA_CHARS > os.pathconf(
    directory, 'PC_PATH_MAX'
  ):
    raise errors.NstError(f'the path of {path.name[:24]}... is too long; choose a shorter one')
  return directory


LOCK_TAIL = '.lock'
# Temporary names: mkstemp's random part is 8 characters of this alphabet
# (tempfile._RandomNameSequence); .tmp for files (nst_jax.io.atomic.write) and
# checkpoint directories being made or deleted (nst_jax.io.checkpoint_store),
# .partial.mp4 and .partial/ for videos and frame folders (nst_jax.io.video).
_TEMP_NAME = re.compile(r'\.(?P<name>.+)\.nst-[a-z0-9_]{8}\.(tmp|partial\.mp4|partial)')


def lock_path(path: str | os.PathLike) -> Path:
  """The lock of a file a run writes: `.NAME.lock` beside it (removed when the run ends).

  Beside the file, not in a per-user folder: every process that writes the
  file, whatever its environment or user, meets the same lock.
  """
  path = Path(path)
  return path.with_name(f'.{path.name}{LOCK_TAIL}')


def remove_temporaries(paths: Iterable[Path]) -> list[Path]:
  """Deletes `.NAME.XXXXXXXX.tmp` (and `.partial` ones) beside each path: a killed write's.

  Each folder is listed once, whatever the number of paths in it: a glob
  per path read the folder once per planned intermediate (50000 of them at
  `-i 100000 --save_iter 2` took 16 s).
  """
  wanted: dict[Path, set[str]] = {}
  for path in paths:
    wanted.setdefault(path.parent, set()).add(path.name)
  removed = []
  for directory, names in wanted.items():
    try:
      entries = list(os.scandir(directory))
    except OSError:  # no folder yet (or not one, or unreadable): nothing of ours in it
      continue
    for entry in entries:
      match = _TEMP_NAME.fullmatch(entry.name)
      if not match or match['name'] not in names or entry.is_symlink():
        continue
      tmp = directory / entry.name
      with contextlib.suppress(OSError):  # another user's, say: left, as any stray file
        if entry.is_dir(follow_symlinks=False):
          shutil.rmtree(tmp)
        else:
          tmp.unlink(missing_ok=True)
        removed.append(tmp)
  return removed
