"""Job lists for batch mode: from paths, directories, globs or a --jobs file.

A job is one stylisation: a content image, one or more style images
(blended), its own content and style weights, and an output file. Jobs whose
outputs have the same shape run together as one batched, sharded step
(nst_jax.engine.distributed).
"""

from collections.abc import Iterable, Sequence
import csv
import dataclasses
import glob
import io
import json
import os
from pathlib import Path

from absl import logging

from nst_jax import errors
from nst_jax.config import checks
from nst_jax.io import checkpoint_store
from nst_jax.io import output_names

# Files a directory contributes (by suffix, case-insensitive): what Pillow
# reads and people keep photos and paintings in.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff', '.gif')
# The columns of a --jobs file; content and style are required.
JOB_FIELDS = (
  'content',
  'style',
  'content_weight',
  'style_weight',
  'output',
  'content_mask',
  'style_masks',
)


@dataclasses.dataclass(frozen=True)
class Job:
  """One stylisation of a batch.

  Attributes:
    content: content image path.
    style: style image paths (several are blended with equal weights).
    content_weight: cw of this job (None: the config's).
    style_weight: sw of this job (None: the config's).
    output: result path ('' = automatic name in the output directory).
    content_mask: grey image over the content: where the content loss applies.
    style_masks: one grey image per style: where each style applies.
  """

  content: str
  style: tuple[str, ...]
  content_weight: float | None = None
  style_weight: float | None = None
  output: str = ''
  content_mask: str = ''
  style_masks: tuple[str, ...] = ()


def is_pattern(spec: str) -> bool:
  """True if `spec` names several files: a directory or a glob."""
  return Path(spec).is_dir() or glob.has_magic(spec)


def expand(spec: str, *, what: str, checkpoint_dir: str | None = None) -> list[str]:
  """A file, a directory (its images, sorted) or a glob (sorted) -> file paths.

  Raises:
    ConfigError: nothing matches, naming the spec.
  """
  if Path(spec).is_dir():
    paths = sorted(
      str(p) for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    where = f'the directory {errors.printable(spec)} holds no images ({", ".join(IMAGE_SUFFIXES)})'
  elif glob.has_magic(spec):
    paths = sorted(p for p in glob.glob(spec) if Path(p).is_file())
    where = f'the pattern {errors.printable(spec)} matches no files'
  else:
    return [spec]
  # Results nst-jax wrote there (with their loss plots, sheets, intermediates, frames): a run
  # into its own input folder took them as photos on the next run (trial 26).
  full = [Path(os.path.abspath(p)) for p in paths]
  folders = {f.parent for f in full if f.parent.name}  # a video's frame folder, by its record
  ours = set().union(*map(output_names.claimed, {*full, *folders}))
  kept = [p for p, f in zip(paths, full, strict=True)
          if f not in ours and not _stop_image(f, checkpoint_dir)]  # fmt: skip
  if len(kept) < len(paths):
    logging.info('%s: left out %d file(s) of %s that nst-jax wrote (its run records say so)',
                 what, len(paths) - len(kept), errors.printable(spec))  # fmt: skip
    where += ' but the results of nst-jax runs' if not kept else ''
  if not kept:
    raise errors.ConfigError(f'{what}: {where}; check the path')
  return kept


def _stop_image(path: Path, checkpoint_dir: str | None) -> bool:
  """An image a stopped run saved (its checkpoint notes it: trial 30; in checkpoint_dir: 32)."""
  from nst_jax.io import checkpoint as checkpoint_lib  # jax: not for --help's imports

  result = output_names.stopped_from(path)
  if result is None:
    return False
  ckpt = checkpoint_lib.path_for(result, checkpoint_dir)
  digest = checkpoint_store.noted_images(ckpt).get(path.name)
  return digest is not None and output_names.file_sha256(path) == digest


def jobs_from_specs(
  content_spec: str, style_specs: Sequence[str], checkpoint_dir: str | None = None
) -> list[Job]:
  """Jobs for -cp and -sp: every content image with every style.

  A directory or glob in -cp gives one job per content image. In -sp a single
  directory or glob gives one job per style image (each content with each
  style); several comma-separated files are one blended style, as before.
  """
  contents = expand(content_spec, what='inputs.content_path', checkpoint_dir=checkpoint_dir)
  if len(style_specs) == 1:
    found = expand(style_specs[0], what='inputs.style_path', checkpoint_dir=checkpoint_dir)
    styles = [(p,) for p in found]
  else:
    for spec in style_specs:
      if is_pattern(spec):
        raise errors.ConfigError(
          f'inputs.style_path {errors.printable(spec)} is a directory or pattern among several '
          'blended styles; give blended styles as files, or one directory or pattern alone'
        )
    styles = [tuple(style_specs)]
  return [Job(content=c, style=s) for c in contents for s in styles]


def read_jobs(path: str | os.PathLike) -> list[Job]:
  """Reads a --jobs file: CSV with a header, or JSON lines (.jsonl, .ndjson).

  Columns (CSV header, or JSON keys): content, style (several separated by
  '+' in CSV, or a JSON list), and optionally content_weight, style_weight,
  output, content_mask and style_masks (one per style, like style). Relative
  paths are relative to the jobs file's directory.

  The file is UTF-8, with or without the byte-order mark that spreadsheet
  programs write at the start of a "CSV UTF-8" file.

  Raises:
    ConfigError: a missing file, a file that is not UTF-8, an unknown
      column, a missing value or a bad number, naming the line.
  """
  path = Path(path)
  name = errors.printable(path)
  if not path.is_file():
    raise errors.ConfigError(f'jobs file {name} {errors.not_a_file(path)}; name a CSV or JSON '
                             'lines file')  # trial 34: a folder was "does not exist"  # fmt: skip
  try:
    # utf-8-sig drops a leading byte-order mark, which would otherwise become
    # part of the first column's name ('unknown column \ufeffcontent').
    text = path.read_text(encoding='utf-8-sig')
  except UnicodeDecodeError as e:
    raise errors.ConfigError(
      f'jobs file {name} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset '
      f'{e.start}); save it as UTF-8'
    ) from None
  if path.suffix.lower() in ('.jsonl', '.ndjson', '.json'):
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except (json.JSONDecodeError, RecursionError) as e:  # trial 34: 10^5 '[' a traceback
        raise errors.ConfigError(
          f'{name} line {number} is not JSON ({getattr(e, "msg", "nested too deeply")}); write '
          'one JSON object per line'
        ) from None
      if not isinstance(row, dict):
        raise errors.ConfigError(f'{name} line {number}: each line must be a JSON object')
      rows.append((number, row))
  else:
    # The text itself, not its lines: a quoted value may hold a line break (a
    # file name with one lost it, and another file was styled: trial 20).
    reader = csv.DictReader(io.StringIO(text, newline=''))
    if reader.fieldnames is None:
      raise errors.ConfigError(
        f'{name} is empty; its first line names the columns: {", ".join(JOB_FIELDS)}'
      )
    _check_columns(f'{name} line 1', reader.fieldnames)  # the header, not the first job
    rows = [(reader.line_num, row) for row in reader]  # blank lines counted, as an editor does
    for number, row in rows:  # trial 57: a row cut short read its missing output as none given
      if any(value is None for key, value in row.items() if key is not None):
        raise errors.ConfigError(
          f"{name} line {number} has fewer values than the header's {len(reader.fieldnames)} "
          'columns; give each column a value, an empty one by its comma alone (a.jpg,b.jpg,)'
        )
  jobs = [_job(path, number, row) for number, row in rows]
  if not jobs:
    raise errors.ConfigError(f'{name} lists no jobs; add one line per job after the header')
  return jobs


def _check_columns(where: str, columns) -> None:
  unknown = sorted(set(columns) - set(JOB_FIELDS) - {None})
  if unknown:
    # printable: a stray control character in a column name shows as an escape.
    names = ', '.join(map(errors.printable, unknown))
    raise errors.ConfigError(
      f'{where}: unknown column {names}; the columns are {", ".join(JOB_FIELDS)}'
    )


def _job(path: Path, number: int, row: dict) -> Job:
  where = f'{errors.printable(path)} line {number}'
  _check_columns(where, row)  # a JSON line's keys; a CSV's header was checked
  if None in row:  # csv: more values than header columns
    raise errors.ConfigError(
      f'{where} has more values than the header has columns; quote values that contain commas'
    )

  def resolve(p: str) -> str:
    p = os.path.expanduser(str(p).strip())
    return p if os.path.isabs(p) else str(path.parent / p)

  content = row.get('content')
  style = row.get('style')
  if not content or not style:
    raise errors.ConfigError(f'{where}: content and style are required; give both image paths')

  def text(key: str, value) -> str:
    # JSON may hold anything: a null or a number where a path goes is a slip
    # to name, not a file called 'None' to look for.
    if not isinstance(value, str) or not value.strip():
      raise errors.ConfigError(
        f'{where}: {key} must be an image path (text), got {json.dumps(value)}; give a '
        'non-empty string'
      )
    return value

  def paths(key: str, value) -> list[str]:
    if isinstance(value, list):
      return [text(key, v) for v in value]
    value = text(key, value)
    if '+' in value and Path(resolve(value)).is_file():  # trial 28: 'image a does not exist'
      raise errors.ConfigError(
        f'{where}: {key} {value!r} is one file, but + separates files here; rename it, or give '
        'the styles as a JSON list in a .jsonl jobs file'
      )
    found = value.split('+')
    if not all(p.strip() for p in found):  # trial 26: 'image . does not exist' for 's.jpg+'
      raise errors.ConfigError(
        f'{where}: {key} has an empty entry in {value!r}; separate files with +'
      )
    return found

  content = text('content', content)
  styles = paths('style', style)

  def number_or_none(key: str) -> float | None:
    value = row.get(key)
    if value is None or value == '':
      return None
    if isinstance(value, bool):  # trial 28: true was taken as 1
      raise errors.ConfigError(f'{where}: {key} must be a number, got {json.dumps(value)}')
    try:
      x = float(value)
    except (TypeError, ValueError):
      raise errors.ConfigError(f'{where}: {key} must be a number, got {value!r}') from None
    if not (x >= 0 and x != float('inf')):
      raise errors.ConfigError(f'{where}: {key} must be a finite number >= 0, got {value!r}')
    return x

  output = text('output', row['output']) if row.get('output') not in (None, '') else ''
  content_mask = text('content_mask', row['content_mask']) if row.get('content_mask') else ''
  masks = row.get('style_masks') or []
  masks = paths('style_masks', masks) if masks else []
  checks.styles_and_masks(len(styles), n_masks=len(masks), where=where, masks_name='style_masks')
  return Job(
    content=resolve(content),
    style=tuple(resolve(s) for s in styles),
    content_weight=number_or_none('content_weight'),
    style_weight=number_or_none('style_weight'),
    output=output and resolve(output),
    content_mask=content_mask and resolve(content_mask),
    style_masks=tuple(resolve(m) for m in masks),
  )


def assign_outputs(jobs: Iterable[Job], directory: str) -> list[Job]:
  """Deprecated: `nst_jax.io.outputs.assign_outputs`."""
  from nst_jax.io import outputs

  return outputs.assign_outputs(jobs, directory)
