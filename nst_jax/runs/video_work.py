"""A video run's work directory: where it is, what it may hold, what made its frames.

The hidden directory beside the output (`.NAME.mp4.work`) keeps each
finished frame (16-bit PNG), the running frame's checkpoint, and the
settings the frames were made with (`settings.json`: the trajectory
settings a checkpoint holds, plus every setting of the schedule and a
digest of the frames). A resume compares them first: a finished frame is
not run again, so a resume with another style, weight or width would have
made a video of two runs with exit 0 (trial 26).
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path
import re
import shutil

from absl import logging
import jax
import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.io import atomic
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import output_names
from nst_jax.io import outputs
from nst_jax.io import record as record_lib
from nst_jax.runs import output_locks
from nst_jax.runs import output_plan

# What made the finished frames, at the work directory's top.
SETTINGS = 'settings.json'


# What a frames folder's run puts in its work directory's WORK_WRITING marker once every frame is
# written (a video's: the video's SHA-256): a rerun then replaces the kept work (trial 45).
FRAMES_WRITTEN = 'frames written'


@dataclasses.dataclass
class Paths:
  """Where a video run keeps its work and writes its result."""

  output: Path  # the .mp4, or the frame directory
  as_frames: bool
  work: Path  # hidden: finished frames and checkpoints
  discard: str | None = None  # why `work` (a finished run's) goes once the plan is accepted

  def frame(self, k: int, stage: str = 'final') -> Path:
    return self.work / stage / f'frame_{k:05d}.png'

  def checkpoint(self, k: int, stage: str = 'final') -> Path:
    return self.work / stage / f'frame_{k:05d}.ckpt'


def paths(cfg: config_lib.StyleConfig) -> Paths:
  """The result (an .mp4, or a directory for PNG frames) and the work directory, checked."""
  path = cfg.save.path
  if path and (path.endswith(('/', '\\')) or Path(path).is_dir()):  # as for an image
    output, as_frames = Path(path), True  # the output planner checks what it holds
  elif path:
    output, as_frames = Path(path), False
    if output.suffix.lower() != '.mp4':
      raise errors.ConfigError(
        f'save.path {output} for a video must end in .mp4, or name a directory (ending in /) '
        'for PNG frames'
      )
  else:
    as_frames = False
    for candidate in outputs.candidates(
      cfg.inputs.content_path, cfg.style_paths, outputs.DEFAULT_OUTPUT_DIR
    ):
      output = candidate.with_suffix('.mp4')
      work = output.with_name(f'.{output.name}.work')
      if cfg.run.resume and work.exists():
        break
      if not cfg.run.resume and not output.exists() and not work.exists():
        break
  work = output.with_name(f'.{output.name}.work')
  if os.path.lexists(work):
    _check_work(work)
  stale = work.is_dir() and not _holds_work(work)
  marker = work / output_names.WORK_WRITING
  # Kept by a finished run (run.keep_checkpoint), its video still there: a rerun replaces it, as
  # a finished checkpoint (trial 43: refused as unfinished, every rerun to the name).
  done = not cfg.run.resume and marker.is_file() and bool(text := marker.read_text())
  done = done and (
    output_names.work_owns(work, output)
    if output.is_file()
    else text == FRAMES_WRITTEN or not os.path.lexists(output)  # its video moved away (trial 47)
  )
  # Not one stopped before its record (trial 49 V1, V2: discarded, its own result was nobody's).
  # (Its own record, not an earlier run's: trial 53 V7.)
  done = done and (not cfg.save.record or output_names.record_naming(output) is not None
                   or not os.path.lexists(output)
                   or (as_frames and not output_names.work_frames(work, output)))  # fmt: skip
  if stale:  # no finished frame: gone at once, whatever this run does next
    discard(Paths(output, as_frames, work, 'the run that left it finished no frame'))
  # A finished one once the output plan is checked: a rerun refused for a file in the way kept
  # its work (trial 47 N7: gone, and "rerunning" said).
  stale = stale or done
  started = work.exists() and not stale
  if started and output_locks.busy(output):  # trial 28: told to delete a live run's work
    raise errors.NstError(
      f'another nst-jax run is writing {output}; wait for it to finish or choose another output '
      'name'
    )
  noted = marker.read_text().strip() if started and marker.is_file() else ''
  if (started and not cfg.run.resume and noted not in ('', FRAMES_WRITTEN) and output.is_file()
      and not output_names.work_owns(work, output)):  # fmt: skip
    raise errors.NstError(  # trial 49: a user's video there since was "an unfinished run"
      f'{output} is not the video {work} holds the digest of (saved over since); move it away, '
      'then run again'
    )
  if started and not cfg.run.resume:
    way, record = 'continue it with run.resume', record_path(Paths(output, as_frames, work, None))
    if os.path.lexists(record) and output_names.record_beside(output) is None:  # trial 51 V3
      way = f'move {record} away (no run record of {output.name}), then continue with run.resume'
    raise errors.NstError(
      f'{work} holds an unfinished video run; {way}, or delete it to start over'
    )
  if cfg.run.resume and not started:
    raise errors.NstError(f'nothing to resume: no {work}; run without run.resume to start')
  output_names.check_place(output / 'frame.png' if as_frames else output)
  try:
    str(work).encode()
  except UnicodeEncodeError:  # trial 28: every frame's checkpoint save failed
    raise errors.NstError(
      f"{errors.printable(work)} is not a UTF-8 name, and orbax writes the frames' checkpoints "
      'there under UTF-8 names only; choose another save.path'
    ) from None
  return Paths(output, as_frames, work, 'its run finished; rerunning' if done else None)


class WorkKept(errors.WriteError):
  """A write of the result failed; the work directory is kept, and the line says the way on."""


def mark(paths: Paths, name: str, text: str | None = None) -> None:
  """Writes `text` to the work directory's note `name` (None: touched, its text kept).

  Raises:
    WorkKept: a full or read-only disk (trial 55 T55-5: a traceback).
  """
  path = paths.work / name
  try:
    if text is None:
      path.touch()
    else:
      path.write_text(text)
  except OSError as e:
    raise WorkKept(kept(f'could not write {path}: {e.strerror or e}', paths)) from None


def kept(failure: object, paths: Paths) -> str:
  """A failure to write the result, and the way on: the work directory keeps the frames."""
  return (
    f'{failure}; {paths.work} keeps the finished frames: free space or make it writable, then '
    'continue with run.resume'
  )


def record_data(cfg, paths: Paths, clip, record: dict, seconds: float, written: dict) -> dict:
  """The run record of a video run (`written`: the frames' digests, a frames folder's)."""
  return {
    'output': str(paths.output),
    'output_resolved': str(output_names.resolved(paths.output)),
    'result_sha256': None if paths.as_frames else output_names.file_sha256(paths.output),
    'source': clip.path,
    'frames': clip.count,
    'frames_sha256': written or None,
    'fps': float(clip.fps),
    'total_s': seconds,
    'flow_s': record.get('flow_s', 0.0),
    'settings': json.loads(json.dumps(dataclasses.asdict(cfg))),
    'versions': record_lib.versions(),
    'per_frame': record.get('frames', []),
    'passes': record.get('passes', []),
  }


def discard(paths: Paths) -> None:
  """Removes a finished or empty work directory `paths` says is to go (process 0, under the
  output's lock: a run still starting up would hold it)."""
  if paths.discard and paths.work.is_dir() and jax.process_index() == 0:
    with output_plan.locked([output_plan.Output(paths.output, derived=())]):
      logging.warning('Discarded %s: %s.', paths.work, paths.discard)
      shutil.rmtree(paths.work)


def record_path(paths: Paths) -> Path:
  """x.mp4 -> x.mp4.json (output_names.derived); frames/ -> frames.json."""
  if paths.as_frames:
    return Path(str(paths.output).rstrip('/\\') + '.json')
  return output_names.derived(paths.output, output_names.RECORD_TAILS['json'])


# A video run's work directory: per stage ('final', 'pass2'), frames, checkpoints, temporaries.
_WORK_STAGE = re.compile(r'final|pass\d+')
_WORK_FILE = re.compile(r'\.?frame_\d{5}\.(png|ckpt|json)(\.nst-[a-z0-9_]{8}\.tmp)?')
_WORK_TOP = re.compile(
  rf'{re.escape(output_names.WORK_WRITING)}|{re.escape(output_names.WORK_FRAMES)}'
  rf'|\.?{re.escape(SETTINGS)}(\.nst-[a-z0-9_]{{8}}\.tmp)?'
)


def _check_work(work: Path) -> None:
  """Refuses a work directory holding anything a video run does not write there."""
  if work.is_symlink() or not work.is_dir():
    raise errors.NstError(f'{work} is not an nst-jax work directory; move it away to run')
  for entry in work.iterdir():
    if _WORK_TOP.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
      continue
    ours = _WORK_STAGE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
    found = [entry] if not ours else [
      p for p in entry.iterdir() if not (_WORK_FILE.fullmatch(p.name) and checkpoint_store.ours(p))
    ]  # fmt: skip
    if found:
      raise errors.NstError(
        f'{work} holds {found[0].relative_to(work)}, which no video run writes there; move it '
        'away to run'
      )


def _holds_work(work: Path) -> bool:
  """Whether a work directory holds a finished frame or a checkpoint worth resuming."""
  return any(p.suffix in ('.png', '.ckpt') for p in work.rglob('frame_*'))


def settings(
  cfg: config_lib.StyleConfig, *, weights_hash: str, frames, styles
) -> dict[str, object]:
  """What must be equal for a resume to continue the same video.

  The trajectory settings of an image's checkpoint (checkpoint_lib), with
  the schedule's iterations, tol and window too (a finished frame is not
  run again, so another -i would end the video's frames at two lengths),
  and `frame_pixels`: the SHA-256 of every frame's pixels digest in order.

  Args:
    cfg: the run's config, as given (before the memory planner's changes,
      which follow from the device, not the user).
    weights_hash: the weights' params SHA-256.
    frames: the clip's frames, [H, W, 3] each, as the run reads them.
    styles: the style images, as loaded.
  """
  found = checkpoint_lib.trajectory_settings(
    cfg, weights_hash=weights_hash, content=frames[0], style=list(styles)
  )
  found |= {f'schedule.{k}': v for k, v in dataclasses.asdict(cfg.schedule).items()}
  every = hashlib.sha256()
  for frame in frames:
    every.update(checkpoint_lib.pixels_digest(np.asarray(frame)).encode())
  found['frame_pixels'] = every.hexdigest()
  return json.loads(json.dumps(found))


def hold_settings(paths: Paths, now: dict) -> None:
  """Writes the settings into a new work directory, or refuses a resume with others.

  Raises:
    ResumeMismatch: a setting or an input differs from the finished frames'
      (named, with both values), as checkpoint_lib.restore refuses.
    NstError: a work directory with frames and no settings (a run of an
      earlier version), or settings that cannot be read.
  """
  path = paths.work / SETTINGS
  if path.is_file():
    try:
      saved = json.loads(path.read_text())
      if not isinstance(saved, dict):  # trial 28: a list was a traceback
        raise ValueError(f'it holds a {type(saved).__name__}, not the settings')
      if len(missing := set(now) - set(saved)) > len(now) // 2:  # `{}` named color.color_match
        raise ValueError(f'it lacks {len(missing)} of the {len(now)} settings')
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
      raise errors.NstError(
        f'{path} is unreadable ({e}); delete {paths.work} to start over'
      ) from None
    checkpoint_lib.refuse_other_settings(paths.work, saved, now)
    return
  if _holds_work(paths.work) if paths.work.is_dir() else False:
    raise errors.NstError(
      f'{paths.work} holds frames of a run that recorded no settings (an earlier nst-jax): they '
      'cannot be checked against this run; delete it to start over'
    )
  atomic.write(path, lambda tmp: Path(tmp).write_text(json.dumps(now, indent=1)))
