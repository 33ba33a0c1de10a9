"""What is wrong with a checkpoint: its fields (either format) and its state's layout.

Each check returns a phrase for a one-line refusal ('its total field is a
str, not an integer'), or None; nst_jax.io.checkpoint words the refusal.
"""

import json
from typing import Any

import numpy as np

from nst_jax.io import checkpoint_v1

# The fields of a payload and their types; the optional ones have defaults
# (older checkpoints lack them).
REQUIRED = {'iteration': int, 'total': int}
OPTIONAL = {'scale': (int, 0), 'scales': (int, 1)}
KINDS = {int: 'an integer', str: 'a string', dict: 'a mapping'}


def fields(payload: dict, fmt: int) -> tuple[dict, str | None]:
  """(the payload with its defaults and its settings and extra as dicts, what is wrong or None).

  Format 1 keeps settings and extra as JSON text and the state inside;
  format 2 keeps them as JSON objects in its metadata file.
  """
  out = {'format': fmt}
  for name, kind in (REQUIRED | {n: kind for n, (kind, _) in OPTIONAL.items()}).items():
    if name not in payload:
      if name in REQUIRED:
        return payload, f'its {name} field is missing'
      out[name] = OPTIONAL[name][1]
      continue
    value = payload[name]
    if not isinstance(value, kind) or isinstance(value, bool):
      return payload, f'its {name} field is a {type(value).__name__}, not {KINDS[kind]}'
    if value < 0:
      return payload, f'its {name} field is {value}'
    out[name] = value
  if fmt == checkpoint_v1.FORMAT:
    if 'settings' not in payload:
      return payload, 'its settings field is missing'
    if not isinstance(payload.get('state'), dict):
      kind = type(payload.get('state')).__name__
      return payload, 'its state field is missing' if 'state' not in payload else (
        f'its state field is a {kind}, not a mapping'
      )  # fmt: skip
    out['state'] = payload['state']
  for name in ('settings', 'extra'):
    value = payload.get(name, '{}' if fmt == checkpoint_v1.FORMAT else {})
    if fmt == checkpoint_v1.FORMAT:
      try:
        value = json.loads(value) if isinstance(value, str) else None
      except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
      return payload, f'its {name} field is not a JSON object'
    out[name] = value
  # What the engine reads back from `extra`: the schedule's convergence history.
  best = out['extra'].get('best', [])
  if not isinstance(best, list) or not all(
    isinstance(b, int | float) and not isinstance(b, bool) for b in best
  ):
    return payload, 'its convergence history is not a list of numbers'
  if not isinstance(out['extra'].get('converged', False), bool):
    return payload, 'its converged flag is not true or false'
  return out, None


def state_problem(want: Any, got: Any, where: str) -> str | None:
  """What keeps a saved state dict from restoring into `want`'s layout, or None.

  `got`'s leaves are arrays (format 1, or loaded) or orbax's array metadata
  (both have `shape` and `dtype`). flax's from_state_dict checks the keys
  but takes any array (or any value) as a leaf: a leaf of another shape or
  dtype would surface later as a shape error deep in the compiled step, or
  a silently different run.
  """
  if isinstance(want, dict):
    if not isinstance(got, dict):
      return f'{where} is a {type(got).__name__}, not a mapping'
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
      return f'{where} lacks {", ".join(missing)}'
    if unexpected:
      return f'{where} has unexpected {", ".join(unexpected)}'
    problems = (state_problem(want[k], got[k], f'{where}/{k}') for k in want)
    return next((p for p in problems if p), None)
  if want is None:
    return None if got is None else f'{where} holds a {type(got).__name__}, expected nothing'
  want = np.asarray(want)
  if isinstance(got, str | bytes) or not (hasattr(got, 'shape') and hasattr(got, 'dtype')):
    return f'{where} is a {type(got).__name__}, not an array'
  if tuple(got.shape) != want.shape:
    return f'{where} has shape {tuple(got.shape)}, expected {want.shape}'
  if np.dtype(got.dtype) != want.dtype:
    return f'{where} is {np.dtype(got.dtype)}, expected {want.dtype}'
  return None


def short(value: Any, most: int = 40) -> str:
  text = json.dumps(value)
  return text if len(text) <= most else text[:16] + '...'


def init_as_file(settings: dict, keywords) -> dict:
  """`settings` with an image file's 'inputs.init' as 'an image file'.

  Its pixels are compared ('init_pixels'), not how its path was spelled
  (trial 34: ./i.jpg and its absolute path refused each other's resume).
  `keywords`: the inits that are no file (config's INITS).
  """
  init = settings.get('inputs.init')
  if isinstance(init, str) and init not in keywords:
    return {**settings, 'inputs.init': 'an image file'}
  return settings
