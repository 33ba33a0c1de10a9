"""Where results go: output names for single runs and batches, checked before any work.

One rule for every kind of run: an automatic name is
`<directory>/<content>_<style1>+<style2>.png`, with `_2`, `_3`, ... added so
that nothing is replaced, and a name whose checkpoint exists counts as taken
(an interrupted run is never overwritten by a new one). With `resume`, the
name is the one whose checkpoint exists, so the run continues where it was.
"""

from collections.abc import Iterable, Iterator, Sequence
import contextlib
import dataclasses
import os
from pathlib import Path

from nst_jax import errors
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import images as image_lib
from nst_jax.io import output_names

DEFAULT_OUTPUT_DIR = 'output'


def names_output_directory(output: str) -> bool:
  """Whether --output names a directory: an existing one, or a name ending in a separator."""
  return bool(output) and (Path(output).is_dir() or output.endswith(('/', os.sep)))


def candidates(content: str, styles: str | Sequence[str], directory: str) -> Iterator[Path]:
  """<directory>/<content>_<styles>.png, then _2, _3, ... (without end)."""
  styles = [styles] if isinstance(styles, str) else list(styles)
  stem = f'{Path(content).stem}_{"+".join(Path(p).stem for p in styles)}'
  # A name's bytes that are not UTF-8 (surrogate escapes): '_', as orbax's checkpoint names
  # must be UTF-8 (trial 26: no checkpoint could be written).
  stem = ''.join('_' if '\udc80' <= ch <= '\udcff' else ch for ch in stem)
  yield Path(directory) / f'{stem}.png'
  n = 2
  while True:
    yield Path(directory) / f'{stem}_{n}.png'
    n += 1


def _taken(path: Path, checkpoint_dir: str | None = None) -> bool:
  """The name, its checkpoint, a record file or an intermediate's name beside it exists.

  Trials 20 and 22: a name whose record or NAME_00002.png was someone's was
  kept, and the user, who gave none, was told to choose another.
  """
  if any(os.path.lexists(p) for p in (path, *output_names.record_files(path))):
    return True
  if checkpoint_lib.path_for(path, checkpoint_dir).exists():
    return True
  with contextlib.suppress(OSError):  # no folder yet: nothing in it
    names = os.listdir(path.parent)
    return any(output_names.stopped_from(path.with_name(n)) == path for n in names)
  return False


def default_output_path(
  content_path: str,
  style_path: str | Sequence[str],
  directory: str = DEFAULT_OUTPUT_DIR,
  *,
  checkpoint_dir: str | None = None,
) -> Path:
  """The first automatic name with no file, record files or checkpoint (in `checkpoint_dir`)."""
  for path in candidates(content_path, style_path, directory):
    if not _taken(path, checkpoint_dir):
      return path
  raise AssertionError('unreachable')


def resume_output_path(
  content_path: str,
  style_path: str | Sequence[str],
  directory: str = DEFAULT_OUTPUT_DIR,
  *,
  checkpoint_dir: str | None = None,
) -> Path:
  """The newest automatic name that has a checkpoint (in `checkpoint_dir`), for resuming."""
  found = newest_checkpointed(content_path, style_path, directory, checkpoint_dir)
  if found is None:
    raise errors.NstError(
      f'nothing to resume: no checkpoint for these images under {directory}/; run without '
      "run.resume, or give the interrupted run's output as save.path"
    )
  return found


def newest_checkpointed(
  content: str, styles: str | Sequence[str], directory: str, checkpoint_dir: str | None = None
) -> Path | None:
  """The newest automatic name of these images that has a checkpoint (None: none has)."""
  found = None
  for path in candidates(content, styles, directory):
    if not checkpoint_lib.path_for(path, checkpoint_dir).exists():
      if path.exists():
        continue  # a finished run without checkpoint; later names may have one
      break
    found = path
  return found


def single_output(
  output: str,
  content: str,
  styles: Sequence[str],
  *,
  resume: bool,
  checkpoint_dir: str | None = None,
) -> Path:
  """The result file of a single run, from save.path (a file, a directory or '')."""
  if output and not names_output_directory(output):
    found = Path(output)
  elif resume:
    found = resume_output_path(content, styles, output or DEFAULT_OUTPUT_DIR,
                               checkpoint_dir=checkpoint_dir)  # fmt: skip
  else:
    found = default_output_path(content, styles, output or DEFAULT_OUTPUT_DIR,
                                checkpoint_dir=checkpoint_dir)  # fmt: skip
  check_beside(found, checkpoint_dir, resume=resume)
  return found


def check_beside(output: Path, checkpoint_dir: str | None, *, resume: bool) -> None:
  """Refuses a run with run.checkpoint_dir where an unfinished checkpoint is beside `output`.

  Written without checkpoint_dir, it was not seen: a resume said there was
  none, and a new run started over beside it (trial 26).
  """
  beside = checkpoint_lib.path_for(output)
  if not checkpoint_dir or checkpoint_lib.path_for(output, checkpoint_dir).exists():
    return
  try:
    run = unfinished_run(checkpoint_lib.read(beside)) if beside.exists() else None
  except errors.NstError:  # damaged, or someone's: not this run's to resume
    return
  if run is not None:
    go_on = 'resume it without' if resume else 'continue it with run.resume and without'
    raise errors.NstError(
      f'{beside}, beside the output, holds an unfinished run ({run}) written without '
      f'run.checkpoint_dir; {go_on} run.checkpoint_dir, or delete it to start over'
    )


def assign_outputs(
  jobs: Iterable, directory: str, *, resume: bool = False, checkpoint_dir: str | None = None
) -> list:
  """Gives every job without an output an automatic name in `directory`.

  Names are unique within the batch and never replace an existing file or
  checkpoint; with `resume`, a job whose automatic name has a checkpoint
  (finished or not) keeps that name, so the batch continues where it was,
  and one whose newest automatic name holds a result without a checkpoint
  keeps that name too (its batch finished; the job counts as done).

  Args:
    jobs: objects with `content`, `style` and `output` fields (nst_jax.io.jobs.Job).
    directory: where automatic names go.
    resume: pick the names whose checkpoints exist.
    checkpoint_dir: where checkpoints are (None: beside the outputs).

  Raises:
    ConfigError: two jobs name the same output.
  """
  taken: set[str] = set()
  result = []
  for job in jobs:
    output = job.output
    if not output:
      found = None
      if resume:
        # The name with a checkpoint (an unfinished job, or one of a batch not
        # yet finished); else the newest result without one, from a batch that
        # finished and removed its checkpoints: the job is done, not run again.
        last_result = None
        for path in candidates(job.content, job.style, directory):
          if str(path) in taken:
            continue
          _refuse_moved(job, path)
          if checkpoint_lib.path_for(path, checkpoint_dir).exists():
            found = path
            break
          if not path.exists():
            found = last_result
            break
          last_result = path
      if found is None:
        found = next(
          p
          for p in candidates(job.content, job.style, directory)
          if str(p) not in taken and not _taken(p, checkpoint_dir)
        )
      output = str(found)
    elif output in taken:
      raise errors.ConfigError(f'two jobs write {output}; give each job its own output')
    image_lib.check_output(output)
    check_beside(Path(output), checkpoint_dir, resume=resume)
    taken.add(output)
    result.append(dataclasses.replace(job, output=output))
  return result


def _refuse_moved(job, path: Path) -> None:
  """Refuses a resume whose automatic name holds another job's result (by its run record).

  Names follow the order of a folder's files: one added or removed since
  the batch began moved them, and a finished result of another photo was
  replaced by this job's (trial 26).
  """
  data = output_names.record_naming(path)
  inputs = (data or {}).get('settings', {}).get('inputs', {})
  if not isinstance(inputs, dict) or 'content_path' not in inputs:
    return
  styles = inputs.get('style_path') or []
  made = (Path(str(inputs['content_path'])).name, [Path(str(p)).name for p in styles])
  if made != (Path(job.content).name, [Path(p).name for p in job.style]):
    raise errors.ConfigError(
      f'{errors.printable(path)} is the result of {made[0]} with {", ".join(made[1])} (its run '
      f'record says so), not of {Path(job.content).name} with '
      f'{", ".join(Path(p).name for p in job.style)}: files were added or removed since the '
      'batch began, and the automatic names moved; put the folder back as it was to resume, or '
      'start over without run.resume and another output directory'
    )


def check_writable(path: Path, bit_depth: int = 8) -> None:
  """Fails early if the image `path` cannot be written; creates nothing."""
  path = Path(path)
  if path.is_dir():
    raise errors.NstError(f'output {path} is a directory; name a file such as out.png')
  image_lib.check_output(path, bit_depth)  # the format, written and read back
  output_names.check_place(path)


def check_not_unfinished(ckpt: Path) -> None:
  """Refuses to start over a run whose checkpoint is unfinished (without --resume)."""
  if not ckpt.exists():
    return
  if (run := unfinished_run(checkpoint_lib.read(ckpt))) is not None:
    raise errors.NstError(
      f'{ckpt} holds an unfinished run ({run}); continue it with run.resume, or delete it to '
      'start over'
    )


def start_over(ckpt: Path, *, forget: bool = True) -> None:
  """A run without run.resume over the checkpoint `ckpt`: refused if unfinished.

  A finished one (kept) is the new run's to write over: the images its
  earlier run noted at a stop are forgotten (checkpoint_store.forget_images),
  unless `forget` is False (the caller forgets them once its plan is checked
  for the last time: trial 59, the second check disowned them and refused).
  """
  check_not_unfinished(ckpt)
  if forget:
    checkpoint_store.forget_images(ckpt)


def unfinished_run(payload: dict) -> str | None:
  """'3 of 6 iterations' (and ' at scale 1 of 2') of an unfinished checkpoint; None if finished."""
  if not checkpoint_lib.unfinished(payload):
    return None
  scales = payload.get('scales', 1)
  where = f' at scale {payload.get("scale", 0) + 1} of {scales}' if scales > 1 else ''
  return f'{payload["iteration"]} of {payload["total"]} iterations{where}'
