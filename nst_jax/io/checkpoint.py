"""Checkpoints of a running style transfer: save, check, restore.

One file per output (`<output stem>.ckpt` beside it), msgpack via
`flax.serialization` and written atomically (temporary file + rename), so a
kill at any moment leaves either the previous checkpoint or the new one. It
holds the optimisation state (image and optimiser state, bit for bit), the
iteration reached, the hash of the weights, and every setting that shapes the
trajectory, including hashes of the input pixels. flax serialization rather
than orbax-checkpoint: one small file and no extra dependency in the run
path (orbax pulls in tensorstore and async machinery built for sharded
multi-host training state).

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
from nst_jax.io import images as image_lib
from nst_jax.io import output_names

FORMAT = 1
SUFFIX = output_names.CHECKPOINT_TAIL
# Settings that may change between an interrupted run and its resumption,
# by group: they do not affect the trajectory (more iterations extend it; the
# inputs are compared by their pixels below, the weights by their hash).
_FREE_SETTINGS = {
  'inputs': ('content_path', 'style_path', 'content_mask', 'style_masks', 'max_image_pixels'),
  'model': ('weights', 'weights_url'),
  'schedule': ('iterations', 'tol', 'window'),
  'save': '*',
  # The layout over devices changes rounding only (docs/scaling.md).
  'run': '*',
}


# Settings derived from the inputs rather than set, as a refusal names them.
_DERIVED_SETTINGS = {
  'content_pixels': "the content image's pixels",
  'style_pixels': "the style images' pixels",
  'mask_pixels': "the masks' pixels",
  'weights_hash': 'the weights',
  'term_weights': "the job's own content, style and TV weights",
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
) -> dict[str, Any]:
  """Everything that must be equal for a resumed run to continue the same path.

  The pixels are those of one scale (content, styles and masks as the step
  sees them), so each scale of a multi-scale run has its own settings.
  `term_weights` are a batch job's own content, style and TV weights, which
  replace the config's.
  """
  settings = {}
  for group in dataclasses.fields(config):
    free = _FREE_SETTINGS.get(group.name, ())
    if free == '*':
      continue
    values = dataclasses.asdict(getattr(config, group.name))
    # Dotted keys, so a refusal names the setting: 'loss.content_weight'.
    settings |= {f'{group.name}.{k}': v for k, v in values.items() if k not in free}
  settings['term_weights'] = list(term_weights)
  settings['weights_hash'] = weights_hash
  settings['content_pixels'] = pixels_digest(content)
  styles = [style] if isinstance(style, np.ndarray) else list(style)
  settings['style_pixels'] = [pixels_digest(s) for s in styles]
  settings['mask_pixels'] = [pixels_digest(m) for m in masks]
  settings['scale'] = scale
  # JSON round trip: tuples and lists compare equal after loading.
  return json.loads(json.dumps(settings))


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
    path: the .ckpt file.
    state: the optimisation state pytree (any device; copied to host).
    iteration: iterations completed.
    total: iterations the run was asked for, per scale.
    settings: from `trajectory_settings`.
    scale: (index, count) of the scale being optimised; the run is finished
      when iteration == total at the last scale.
    extra: small values the run needs to continue exactly (the schedule's
      convergence history, 'converged' when the scale ended early).
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
    'settings': json.dumps(settings, sort_keys=True),
    'state': flax.serialization.to_state_dict(host),
    'extra': json.dumps(extra or {}),
  }


def write(path: str | os.PathLike, payload: dict) -> None:
  """Serialises a `snapshot` and writes it atomically (temporary file + rename)."""
  data = flax.serialization.msgpack_serialize(payload)
  image_lib.atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


class Writer:
  """Writes checkpoints on a background thread, at most one at a time.

  The step goes on while a checkpoint is serialised and written. `submit`
  first waits for the previous write, so at most one host copy of the
  state is waiting (peak memory grows by one state, never by two), and
  files are written in order. `wait` ends the current write; an error
  raised by a write other than WriteError (which `write` callers handle)
  is raised again there, in the run's thread.
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
  """The raw payload, its fields checked; one-line NstErrors for bad files.

  Every field the resume path reads is checked here, so a damaged or foreign
  file is refused naming the file and the field, never with a traceback.
  """
  path = Path(path)
  try:
    payload = flax.serialization.msgpack_restore(path.read_bytes())
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
  if not isinstance(payload, dict) or payload.get('format') != FORMAT:
    raise errors.NstError(
      f'{path} is not an nst-jax checkpoint, and this output keeps its checkpoint under that '
      'name; move it away'
    )
  problem = _payload_problem(payload)
  if problem:
    raise errors.NstError(f'checkpoint {path} is damaged ({problem}); delete it to start over')
  return payload


# The fields of a payload and their types; the optional ones have defaults
# (older checkpoints lack them).
_REQUIRED = {'iteration': int, 'total': int, 'settings': str, 'state': dict}
_OPTIONAL = {'scale': int, 'scales': int, 'extra': str}
_KINDS = {int: 'an integer', str: 'a string', dict: 'a mapping'}


def _payload_problem(payload: dict) -> str | None:
  """What is wrong with a payload's fields, or None."""
  for name, kind in (_REQUIRED | _OPTIONAL).items():
    if name not in payload:
      if name in _REQUIRED:
        return f'its {name} field is missing'
      continue
    value = payload[name]
    if not isinstance(value, kind) or isinstance(value, bool):
      return f'its {name} field is a {type(value).__name__}, not {_KINDS[kind]}'
    if kind is int and value < 0:
      return f'its {name} field is {value}'
  parsed = {}
  for name in ('settings', 'extra'):
    try:
      parsed[name] = json.loads(payload.get(name, '{}'))
    except ValueError:
      parsed[name] = None
    if not isinstance(parsed[name], dict):
      return f'its {name} field is not a JSON object'
  # What the engine reads back from `extra`: the schedule's convergence history.
  best = parsed['extra'].get('best', [])
  if not isinstance(best, list) or not all(isinstance(b, int | float) for b in best):
    return 'its convergence history is not a list of numbers'
  if not isinstance(parsed['extra'].get('converged', False), bool):
    return 'its converged flag is not true or false'
  return None


def extra(payload: dict) -> dict:
  """The `extra` values a checkpoint was saved with ({} for older files)."""
  return json.loads(payload.get('extra', '{}'))


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
    NstError: missing or unreadable file, or a state of another layout
      (the leaf named).
    ResumeMismatch: a setting or an input that differs (named, with both
      values).
  """
  payload = read(path)
  saved = json.loads(payload['settings'])
  # Named settings first: another width also changes every pixel digest, and
  # the width is what the user changed.
  for key in sorted(set(saved) | set(settings), key=lambda k: (k in _DERIVED_SETTINGS, k)):
    if saved.get(key) != settings.get(key):
      if key in _DERIVED_SETTINGS:
        raise errors.ResumeMismatch(
          f'cannot resume from {path}: {_DERIVED_SETTINGS[key]} differ from the interrupted '
          "run's; resume with the same files, or start over without run.resume and another "
          'save.path',
          path=str(path),
          setting=key,
        )
      was, now = _short(saved.get(key)), _short(settings.get(key))
      raise errors.ResumeMismatch(
        f'cannot resume from {path}: {key} differs (checkpoint {was}, now {now}); rerun with the '
        'same settings, or without run.resume and another save.path to start over',
        path=str(path),
        setting=key,
        saved=was,
        now=now,
      )
  problem = _state_problem(flax.serialization.to_state_dict(like), payload['state'], 'state')
  if problem:
    raise errors.NstError(
      f'checkpoint {path} does not fit this run: {problem}; delete it to start over, or resume '
      'with the settings that wrote it'
    )
  state = flax.serialization.from_state_dict(like, payload['state'])
  return jax.tree.map(np.asarray, state), int(payload['iteration'])


def _state_problem(want: Any, got: Any, where: str) -> str | None:
  """What keeps a saved state dict from restoring into `want`'s layout, or None.

  flax's from_state_dict checks the keys but takes any array (or any value)
  as a leaf: a leaf of another shape or dtype would surface later as a
  shape error deep in the compiled step, or a silently different run.
  """
  if isinstance(want, dict):
    if not isinstance(got, dict):
      return f'{where} is a {type(got).__name__}, not a mapping'
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
      return f'{where} lacks {", ".join(missing)}'
    if unexpected:
      return f'{where} has unexpected {", ".join(unexpected)}'
    problems = (_state_problem(want[k], got[k], f'{where}/{k}') for k in want)
    return next((p for p in problems if p), None)
  if want is None:
    return None if got is None else f'{where} holds a {type(got).__name__}, expected nothing'
  want = np.asarray(want)
  if not isinstance(got, np.ndarray | np.generic):
    return f'{where} is a {type(got).__name__}, not an array'
  if got.shape != want.shape:
    return f'{where} has shape {got.shape}, expected {want.shape}'
  if got.dtype != want.dtype:
    return f'{where} is {got.dtype}, expected {want.dtype}'
  return None


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:16] + '...'
