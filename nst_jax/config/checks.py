"""The checks every settings group runs on creation, and their shared base.

One rule each ("a positive integer", "a finite number >= 0", ...), with the
message naming the field as a caller sets it (`schedule.iterations`), so the
library never speaks in flags.
"""

import dataclasses
import math
from typing import Any

from nst_jax import errors


def check(ok: bool, message: str) -> None:
  if not ok:
    raise errors.ConfigError(message)


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
    isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
    f'{name} must be a finite number >= 0, got {value!r}',
  )


def finite_positive(name: str, value: Any) -> None:
  check(
    isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
    f'{name} must be a finite number > 0, got {value!r}',
  )


def one_of(name: str, value: Any, choices) -> None:
  check(value in choices, f'{name} must be one of {", ".join(choices)}, got {value!r}')


class Group:
  """Shared by the groups: `replace`."""

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)
