"""The checks every settings group runs on creation, and their shared base.

One rule each ("a positive integer", "a finite number >= 0", ...), with the
message naming the field as a caller sets it (`schedule.iterations`), so the
library never speaks in flags.
"""

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from nst_jax import errors


def check(ok: bool, message: str) -> None:
  if not ok:
    raise errors.ConfigError(message)


def _plain(value: Any) -> Any:
  """A numpy or concrete JAX real (or bool) scalar as its Python number; anything else as is."""
  if isinstance(value, np.generic) and value.dtype.kind in 'biuf':
    return value.item()
  if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and value.ndim == 0:
    return value.item() if np.dtype(value.dtype).kind in 'biuf' else value
  return value


# How StyleConfig names each group (nst_jax.config.GROUPS), for messages.
_GROUP_NAMES = {
  'InputConfig': 'inputs', 'ModelConfig': 'model', 'LossConfig': 'loss', 'OptimConfig': 'optim',
  'ScheduleConfig': 'schedule', 'ColorConfig': 'color', 'SaveConfig': 'save', 'RunConfig': 'run',
  'VideoConfig': 'video',
}  # fmt: skip
# Field types whose numbers are floats: an int given for them becomes its float.
_FLOAT_TYPES = (float, float | None)
_FLOAT_TUPLE_TYPES = (tuple[float, ...], tuple[float, ...] | None)


def _as_float(value: Any) -> Any:
  """An int (not a bool) as its float; anything else as is, for the checks to name."""
  if isinstance(value, int) and not isinstance(value, bool):
    try:
      return float(value)
    except OverflowError:  # too large for a float: refused by the field's check
      return value
  return value


def plain_numbers(group: Any) -> None:
  """Turns numpy and JAX scalars in `group`'s fields (or their tuples) into Python numbers.

  A bool field takes a bool only (np.bool_ becomes one); anything else is a
  ConfigError naming the field.

  np.float32(0.01) is a valid weight, but the checks below take Python
  numbers, and a group must stay hashable (a JAX scalar is not). An int
  given for a float field becomes its float (content_weight=3 -> 3.0), so
  `.weights` and the run record hold one type. A float32 keeps its value
  (np.float32(0.1) is 0.10000000149011612, the number passed).
  """
  for field in dataclasses.fields(group):
    value = getattr(group, field.name)
    # A list stays a list, for the group's own conversion or message.
    plain = type(value)(map(_plain, value)) if type(value) in (tuple, list) else _plain(value)
    if field.type is bool and not isinstance(plain, bool):
      # 'False' is truthy: SaveConfig(overwrite='False') replaced a file (trial 21).
      name = f'{_GROUP_NAMES.get(type(group).__name__, type(group).__name__)}.{field.name}'
      raise errors.ConfigError(f'{name} must be True or False, got {value!r}; pass True or False')
    if field.type in _FLOAT_TYPES:
      plain = _as_float(plain)
    elif field.type in _FLOAT_TUPLE_TYPES and type(plain) in (tuple, list):
      plain = type(plain)(map(_as_float, plain))
    if plain is not value:
      object.__setattr__(group, field.name, plain)


def positive_int(name: str, value: Any) -> None:
  check(
    isinstance(value, int) and not isinstance(value, bool) and value > 0,
    f'{name} must be a positive integer, got {value!r}',
  )


def nonnegative_int(name: str, value: Any) -> None:
  check(
    isinstance(value, int) and not isinstance(value, bool) and value >= 0,
    f'{name} must be an integer >= 0, got {value!r}',
  )


def finite_nonnegative(name: str, value: Any) -> None:
  check(
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
    and value >= 0,
    f'{name} must be a finite number >= 0, got {value!r}',
  )


def finite_positive(name: str, value: Any) -> None:
  check(
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
    and value > 0,
    f'{name} must be a finite number > 0, got {value!r}',
  )


def one_of(name: str, value: Any, choices) -> None:
  check(value in choices, f'{name} must be one of {", ".join(choices)}, got {value!r}')


def styles_and_masks(
  n_styles: int,
  *,
  n_masks: int = 0,
  blend_weights=None,
  where: str = '',
  weights_name: str = 'inputs.style_blend_weights',
  masks_name: str = 'inputs.style_masks',
) -> None:
  """The rule for several style images, wherever they come from (config, job list, arrays).

  Either blend weights (one per style, each finite and >= 0, not all 0) or
  one mask per style in the same order (each style governs its region), not
  both. `n_styles` 0: not known yet (only the weights themselves are checked).
  The messages name the settings as the caller knows them (`weights_name`,
  `masks_name`), after `where` (a job list's line).
  """
  at = f'{where}: ' if where else ''
  if blend_weights is not None:
    for b in blend_weights:
      finite_nonnegative(f'{at}each of {weights_name}', b)
    check(sum(blend_weights) > 0, f'{at}{weights_name} must not all be 0')
    check(
      not n_styles or len(blend_weights) == n_styles,
      f'{at}{weights_name} has {errors.counted(len(blend_weights), "value")} for '
      f'{errors.counted(n_styles, "style image")}; give one per style image',
    )
    check(
      not n_masks,
      f'{at}{weights_name} and {masks_name} exclude each other: with masks each style governs '
      'its own region',
    )
  check(
    not (n_masks and n_styles) or n_masks == n_styles,
    f'{at}{masks_name} has {errors.counted(n_masks, "mask")} for '
    f'{errors.counted(n_styles, "style image")}; give one mask per style, in the same order',
  )


class Group:
  """Shared by the groups: `replace`, and unknown keywords named with the closest field."""

  def __new__(cls, *args, **kwargs):
    # Before the dataclass's __init__, whose TypeError would name the typo only.
    errors.unknown_keywords(cls.__name__, kwargs, (f.name for f in dataclasses.fields(cls)))
    return super().__new__(cls)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)
