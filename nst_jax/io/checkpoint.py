"""Checkpoints of a running style transfer: save, check, restore.

One checkpoint per output (`<output stem>.ckpt` beside it, or NAME.HASH.ckpt
in run.checkpoint_dir): a directory of orbax-checkpoint steps
(nst_jax.io.checkpoint_store has the layout), each committed atomically, so a
kill at any moment leaves a whole checkpoint. It holds the optimisation state
(image and optimiser state, bit for bit), the iteration reached, the hash of
the weights, and every setting that shapes the trajectory, including hashes
of the input pixels. orbax-checkpoint rather than our own file since format 2
(docs/long-runs.md says why); format-1 files (one msgpack file) still resume
(nst_jax.io.checkpoint_v1), and their run's first save replaces them.

Restoring the state into the same compiled step continues the exact
trajectory, so a resumed run ends bitwise equal to an uninterrupted one on
the same machine.
"""

from collections.abc import Callable, Sequence
import dataclasses
import hashlib
import json
import os
from pathlib import Path
import threading
from typing import Any

import flax.serialization
import jax
import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.io import checkpoint_checks
from nst_jax.io import checkpoint_store
from nst_jax.io import checkpoint_v1
from nst_jax.io import orbax_local
from nst_jax.io import output_names

FORMAT = checkpoint_store.FORMAT
SUFFIX = output_names.CHECKPOINT_TAIL
# Settings that may change between an interrupted run and its resumption,
# by group: they do not affect the trajectory (more iterations extend it; the
# inputs are compared by their pixels below, the weights by their hash).
_FREE_SETTINGS = {
  'inputs': ('content_path', 'style_path', 'content_mask', 'style_masks', 'max_image_pixels'),
  'model': ('weights', 'weights_url'),
  'schedule': ('iterations', 'tol', 'window'),
  'save': '*',
  'run': '*',  # the layout over devices changes rounding only (docs/scaling.md)
}


# Settings derived from the inputs rather than set, as a refusal names them.
_DERIVED_SETTINGS = {
  'content_pixels': "the content image's pixels",
  'style_pixels': "the style images' pixels",
  'mask_pixels': "the masks' pixels",
  'init_pixels': "the start image's pixels",
  'weights_hash': 'the weights',
  'term_weights': "the job's own content, style and TV weights",
  'frame_pixels': "the video's frames",
}


def path_for(output: str | os.PathLike, directory: str | os.PathLike | None = None) -> Path:
  """output/a_b.png -> output/a_b.ckpt; out/a.jpg -> out/a.jpg.ckpt (output_names.derived).

  In `directory`, the name also carries 8 hex digits of the hash of the
  output's resolved path (CKPT_DIR/a_b.1f2e3d4c.ckpt): a checkpoint there
  belongs to one output as one beside it does, so out1/x.png and
  out2/x.png never share one, and another output's checkpoint never makes
  this output's files count as a run's own (output_plan).

  Args:
    output: the result's path.
    directory: where checkpoints go (run.checkpoint_dir, e.g. a mounted
      bucket that outlives a preempted machine); None: beside the output.
  """
  beside = output_names.derived(output, SUFFIX)
  if directory is None:
    return beside
  digest = hashlib.sha256(os.fsencode(Path(output).resolve())).hexdigest()[:8]
  return Path(directory) / f'{beside.name[: -len(SUFFIX)]}.{digest}{SUFFIX}'


def pixels_digest(array: np.ndarray) -> str:
  """SHA-256 of an image array's shape and float32 bytes."""
  array = np.ascontiguousarray(array, np.float32)
  return hashlib.sha256(f'{array.shape}'.encode() + array.tobytes()).hexdigest()


def trajectory_settings(
  config: config_lib.StyleConfig,
  *,
  weights_hash: str,
  content: np.ndarray,
  style: np.ndarray | Sequence[np.ndarray],
  masks: Sequence[np.ndarray] = (),
  scale: int = 0,
  term_weights: Sequence[float | None] = (),
  init: np.ndarray | None = None,
  loss_fn: str | None = None,
) -> dict[str, Any]:
  """Everything that must be equal for a resumed run to continue the same path.

  The pixels are those of one scale (content, styles and masks as the step
  sees them), so each scale of a multi-scale run has its own settings.
  `term_weights` are a batch job's own content, style and TV weights, which
  replace the config's. `init`: a start image as pixels (trial 17); `loss_fn`:
  a custom one, by module and name (trial 27). Older checkpoints hold neither.
  """
  settings = config_settings(config)
  if loss_fn is not None:  # step_checks.loss_fn_identity's words
    settings['loss_fn'] = loss_fn
  settings['term_weights'] = list(term_weights)
  settings['weights_hash'] = weights_hash
  settings['content_pixels'] = pixels_digest(content)
  styles = [style] if isinstance(style, np.ndarray) else list(style)
  settings['style_pixels'] = [pixels_digest(s) for s in styles]
  settings['mask_pixels'] = [pixels_digest(m) for m in masks]
  if init is not None:
    settings['init_pixels'] = pixels_digest(init)
  settings['scale'] = scale
  # JSON round trip: tuples and lists compare equal after loading.
  return json.loads(json.dumps(settings))


def config_settings(config: config_lib.StyleConfig) -> dict[str, Any]:
  """The config's part of `trajectory_settings`: dotted keys ('loss.content_weight')."""
  settings = {}
  for group in dataclasses.fields(config):
    free = _FREE_SETTINGS.get(group.name, ())
    if free != '*':
      values = dataclasses.asdict(getattr(config, group.name))
      settings |= {f'{group.name}.{k}': v for k, v in values.items() if k not in free}
  return json.loads(json.dumps(settings))


def config_difference(path: Path, saved: dict, config: config_lib.StyleConfig) -> Any:
  """The ResumeMismatch for the first config setting `saved` holds otherwise, or None."""
  # 'auto' (loss.tiles): the memory planner's choice, which the checkpoint holds made.
  now = {k: v for k, v in config_settings(config).items() if v != 'auto'}
  try:
    refuse_other_settings(path, {k: v for k, v in saved.items() if k in now}, now)
  except errors.ResumeMismatch as e:
    return e
  return None


def save(
  path: str | os.PathLike,
  *,
  state: Any,
  iteration: int,
  total: int,
  settings: dict,
  scale: tuple[int, int] = (0, 1),
  extra: dict | None = None,
) -> None:
  """Writes the checkpoint atomically (`write(path, snapshot(state, ...))`).

  Args:
    path: the checkpoint (a directory, NAME.ckpt).
    state: the optimisation state pytree (any device; copied to host).
    iteration: iterations completed.
    total: iterations the run was asked for, per scale.
    settings: from `trajectory_settings`.
    scale: (index, count) of the scale being optimised; the run is finished
      when iteration == total at the last scale.
    extra: small values the run needs to continue exactly (the schedule's
      convergence history, 'converged' when the scale ended early) and to
      record the whole run ('iterations' of the run, the scale's 'offset',
      the record's 'history': nst_jax.engine.hooks.Checkpoints).
  """
  write(path, snapshot(state, iteration=iteration, total=total, settings=settings, scale=scale,
                       extra=extra))  # fmt: skip


def snapshot(
  state: Any,
  *,
  iteration: int,
  total: int,
  settings: dict,
  scale: tuple[int, int] = (0, 1),
  extra: dict | None = None,
) -> dict:
  """A checkpoint's payload with host copies of the state (arguments as `save`).

  The copies are the caller's own: the next step reuses the donated
  buffers, and on a CPU a host view of a device array may be that buffer.
  """
  host = jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(state))
  return {
    'format': FORMAT,
    'iteration': iteration,
    'total': total,
    'scale': scale[0],
    'scales': scale[1],
    'settings': settings,
    'extra': extra or {},
    'state': flax.serialization.to_state_dict(host),
  }


def write(path: str | os.PathLike, payload: dict) -> None:
  """Writes a `snapshot` as the checkpoint's newest step (checkpoint_store.save).

  Raises:
    WriteError: a full disk or another failed write; the previous
      checkpoint is whole.
  """
  meta = {k: v for k, v in payload.items() if k != 'state'}
  checkpoint_store.save(path, state=payload['state'], meta=meta)


def remove(path: str | os.PathLike) -> None:
  """Deletes a finished run's checkpoint (a directory that is not nst-jax's is left)."""
  checkpoint_store.remove(path)


class Writer:
  """Writes checkpoints on a background thread, at most one at a time.

  The step goes on while a checkpoint is serialised and written. `submit`
  first waits for the previous write, so at most one host copy of the
  state is waiting (peak memory grows by one state, never by two), and
  files are written in order. `wait` ends the current write; an error
  raised by a write other than WriteError (which `write` callers handle)
  is raised again there, in the run's thread.

  Our thread rather than orbax's AsyncCheckpointer: the step donates its
  state, so the copy to the host is on the run's path either way (it is
  all that orbax's blocking part would do), a save is more than orbax's
  commit (removing the older step; the first save renames the directory
  into place), in that order for a kill to leave a whole checkpoint, and
  AsyncCheckpointer coordinates its background commit through the
  distributed key-value store, which must not happen for checkpoints each
  process writes alone (nst_jax.io.orbax_local).
  """

  def __init__(self):
    self._thread: threading.Thread | None = None
    self._error: BaseException | None = None

  def submit(self, job: Callable[[], None]) -> None:
    """Runs `job` (which writes) in the background, after the previous one."""
    self.wait()
    self._thread = threading.Thread(target=self._run, args=(job,), name='nst-jax checkpoint')
    self._thread.start()

  def _run(self, job: Callable[[], None]) -> None:
    try:
      job()
    except BaseException as e:  # noqa: BLE001 (raised again by wait, in the run's thread)
      self._error = e

  def wait(self) -> None:
    """Blocks until the current write has finished; raises its error, if any."""
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._error is not None:
      error, self._error = self._error, None
      raise error


def read(path: str | os.PathLike) -> dict:
  """The checkpoint's fields, checked; one-line NstErrors for bad checkpoints.

  Returns:
    {'format', 'iteration', 'total', 'scale', 'scales', 'settings': dict,
    'extra': dict}, and for a format-1 file its 'state' too (a format-2
    state is read by `restore` or `read_state`).
  """
  return _load(path)[0]


def read_state(path: str | os.PathLike) -> dict:
  """The saved state as it was saved (nested dicts of numpy arrays), unchecked against a run."""
  path = Path(path)
  payload, step = _load(path)
  return payload['state'] if step is None else _load_state(path, step)


def _load(path: str | os.PathLike) -> tuple[dict, Path | None]:
  """(the checked payload, the step directory holding its state; None: a format-1 file).

  Every field the resume path reads is checked here, so a damaged or foreign
  checkpoint is refused naming it and the field, never with a traceback.
  """
  path = Path(path)
  if checkpoint_store.is_directory(path):
    payload, step = _read_directory(path)
    fmt = FORMAT
  else:
    payload, step, fmt = _read_file(path), None, checkpoint_v1.FORMAT
  payload, problem = checkpoint_checks.fields(payload, fmt)
  if problem:
    raise errors.NstError(f'checkpoint {path} is damaged ({problem}); delete it to start over')
  return payload, step


def _read_directory(path: Path) -> tuple[dict, Path]:
  """A format-2 checkpoint's metadata and the step holding it."""
  why = checkpoint_store.foreign(path)
  if why is not None:
    raise errors.NstError(
      f'{path} is not an nst-jax checkpoint ({why}), and this output keeps its checkpoint under '
      'that name; move it away'
    )
  try:
    meta, step = checkpoint_store.read_meta(path)
  except checkpoint_store.Damaged as e:
    raise errors.NstError(f'checkpoint {path} is damaged ({e}); {_fix(path, e.step)}') from None
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    found = checkpoint_checks.short(meta.get('format') if isinstance(meta, dict) else meta)
    raise errors.NstError(
      f'checkpoint {path} is damaged (its format field is {found}, not {FORMAT}); delete it to '
      'start over'
    )
  return meta, step


def _read_file(path: Path) -> dict:
  """A format-1 checkpoint's payload (its fields unchecked)."""
  try:
    payload = checkpoint_v1.read(path)
  except FileNotFoundError:
    raise errors.NstError(
      f'no checkpoint {path} to resume; run without run.resume to start'
    ) from None
  except Exception as e:  # msgpack raises several types for damaged files
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise errors.NstError(
      f'checkpoint {path} is unreadable (damaged or cut short: {detail}); delete it to start '
      'over, or move it away if it is a file of yours'
    ) from None
  if not isinstance(payload, dict) or payload.get('format') != checkpoint_v1.FORMAT:
    raise errors.NstError(
      f'{path} is not an nst-jax checkpoint, and this output keeps its checkpoint under that '
      'name; move it away'
    )
  return payload


def extra(payload: dict) -> dict:
  """The `extra` values a checkpoint was saved with ({} for older files)."""
  return dict(payload.get('extra', {}))


def unfinished(payload: dict) -> bool:
  """Whether a checkpoint's run stopped before the end of its last scale.

  A scale ends at its last iteration, or earlier when the schedule's
  convergence test stopped it.
  """
  scale_done = payload['iteration'] >= payload['total'] or extra(payload).get('converged', False)
  return not scale_done or payload.get('scale', 0) < payload.get('scales', 1) - 1


def restore(path: str | os.PathLike, *, like: Any, settings: dict) -> tuple[Any, int]:
  """Loads a checkpoint into a state shaped like `like`, refusing other settings.

  Returns:
    (state, iteration completed).

  Raises:
    NstError: missing or unreadable checkpoint, or a state of another
      layout (the leaf named).
    ResumeMismatch: a setting or an input that differs (named, with both
      values).
  """
  path = Path(path)
  payload, step = _load(path)
  refuse_other_settings(path, payload['settings'], settings)
  want = flax.serialization.to_state_dict(like)
  if step is None:
    got = payload['state']
  else:
    # The layout from orbax's metadata first: another run's is refused before its arrays are read.
    _refuse_other_layout(path, want, _damaged_if_unreadable(path, orbax_local.layout, step))
    got = _load_state(path, step)
  _refuse_other_layout(path, want, got)
  state = flax.serialization.from_state_dict(like, got)
  return jax.tree.map(np.asarray, state), int(payload['iteration'])


def refuse_other_settings(path: Path, saved: dict, settings: dict) -> None:
  """Raises ResumeMismatch naming the first setting that differs (`path` in the message)."""
  short = checkpoint_checks.short
  saved, settings = (checkpoint_checks.init_as_file(s, config_lib.INITS) for s in (saved, settings))
  # Named settings first: another width also changes every pixel digest, and
  # the width is what the user changed.
  for key in sorted(set(saved) | set(settings), key=lambda k: (k in _DERIVED_SETTINGS, k)):
    if saved.get(key) != settings.get(key):
      if key in _DERIVED_SETTINGS:
        raise errors.ResumeMismatch(
          f'cannot resume from {path}: {_DERIVED_SETTINGS[key]} differ from the checkpoint'
          "'s; resume with the same files, or start over without run.resume and another "
          'save.path',
          path=str(path),
          setting=key,
          # An input only one run had (a start image): named as such.
          saved='' if key in saved else 'none',
          now='' if key in settings else 'none',
        )
      most = 200 if key == 'loss_fn' else 40  # its name and digest or declared identity, whole
      was, now = short(saved.get(key), most), short(settings.get(key), most)
      raise errors.ResumeMismatch(
        f'cannot resume from {path}: {key} differs (checkpoint {was}, now {now}); rerun with the '
        'same settings, or without run.resume and another save.path to start over',
        path=str(path),
        setting=key,
        saved=was,
        now=now,
      )


def _load_state(path: Path, step: Path) -> dict:
  return _damaged_if_unreadable(path, orbax_local.load, step)


def _damaged_if_unreadable(path, read_step: Callable[[Path], Any], step: Path) -> Any:
  """read_step(step), an NstError naming the checkpoint if its files are missing or damaged."""
  try:
    return read_step(step)
  except errors.NstError:
    raise
  except Exception as e:  # orbax and tensorstore raise several types for missing or cut files
    raise errors.NstError(
      f'checkpoint {path} is damaged (its state in {step.name}/ cannot be read: '
      f'{checkpoint_store.reason(e)}); {_fix(path, step)}'
    ) from None


def _fix(path: Path, step: Path | None) -> str:
  """What to do about a damaged step: resume from the one before, if there is one."""
  if step is not None and any(s < int(step.name) for s in checkpoint_store.steps(path)):
    return f'delete {step} to resume from the step before it, or delete {path.name} to start over'
  return 'delete it to start over'


def _refuse_other_layout(path, want: Any, got: Any) -> None:
  problem = checkpoint_checks.state_problem(want, got, 'state')
  if problem:
    raise errors.NstError(
      f'checkpoint {path} does not fit this run: {problem}; delete it to start over, or resume '
      'with the settings that wrote it'
    )
