"""A host callback's Python state, described (nst_jax.core.host_state).

Each pair computes otherwise on the host, so its descriptions must differ
(trials 37, 38 and 40 found state that a checkpoint's resume and the compile
cache could not tell apart); the same state built anew describes the same.
"""

import dataclasses
import functools
import sys
import types

import jax.numpy as jnp
import numpy as np

from nst_jax.core import host_state


class _Conf:
  def __init__(self, k):
    self.k = k


class _Slotted:
  __slots__ = ('k',)

  def __init__(self, k):
    self.k = k


class _Cfg:
  K = 0.0


@dataclasses.dataclass(frozen=True)
class _Frozen:
  k: float


_MODULE = types.ModuleType('nst_jax_host_state_test_settings')
_MODULE.K = 0.0
sys.modules[_MODULE.__name__] = _MODULE
_TABLE = np.zeros(2000, np.float32)


def _reading(value):
  """A host function closing over `value`, reading it as a callback would."""
  return lambda y: np.float32(np.sum(y)) + np.float32(len(repr(value)))


def _table(middle, wrap=lambda t: t):
  table = np.zeros(2000, np.float32)
  table[1000] = middle  # numpy's repr leaves the middle out
  return wrap(table)


def _reads_class(y):
  return np.sum(y) * _Cfg.K


def _reads_module(y):
  return np.sum(y) * _MODULE.K


def _reads_table(y):
  return np.sum(y) * _TABLE.sum()


def test_state_a_host_function_reads_is_told_apart():
  """Trial 40 F1: a class's or module's attribute, containers holding objects or large arrays,
  JAX arrays, __slots__, dicts of functions were described alike for other values."""
  describe = host_state.describe
  pairs = [
    (_reading([_Conf(0.0)]), _reading([_Conf(1e3)])),
    (_reading({'tab': _table(0.0)}), _reading({'tab': _table(1e3)})),
    (_reading((_table(0.0),)), _reading((_table(1e3),))),
    (_reading(_table(0.0, jnp.asarray)), _reading(_table(1e3, jnp.asarray))),
    (_reading(_Slotted(0.0)), _reading(_Slotted(1e3))),
    (_reading(_Frozen(0.0)), _reading(_Frozen(1e3))),
    (_reading({'f': lambda: 0.0}), _reading({'f': lambda: 1e3})),
    (_reading(frozenset({0.0})), _reading(frozenset({1e3}))),
    (_reading(np.float32(0.0)), _reading(np.float32(1e3))),
    (functools.partial(np.multiply, 0.0), functools.partial(np.multiply, 1e3)),
  ]
  for a, b in pairs:
    assert describe(a) != describe(b), describe(a)
  for a, b in [(_reading([_Conf(1e3)]), _reading([_Conf(1e3)])),
               (_reading({'tab': _table(1e3)}), _reading({'tab': _table(1e3)}))]:  # fmt: skip
    assert describe(a) == describe(b)
  # The same function, the state it reads changed in place between runs.
  for function, change in [
    (_reads_class, lambda k: setattr(_Cfg, 'K', k)),
    (_reads_module, lambda k: setattr(_MODULE, 'K', k)),
    (_reads_table, lambda k: _TABLE.__setitem__(1000, k)),
  ]:
    before = describe(function)
    change(1e3)
    try:
      assert describe(function) != before, function.__name__
    finally:
      change(0.0)
    assert describe(function) == before


def test_a_cycle_ends_and_addresses_are_left_out():
  loop: list = []
  loop.append(loop)
  text = host_state.describe(_reading(loop))
  assert text == host_state.describe(_reading(loop))
  assert ' at 0x' not in host_state.describe(_reading(object()))


def test_state_beyond_its_reach_describes_alike():
  """The documented limit: data more than four levels deep (the compile cache keys by the
  callback function as well: steps_test)."""
  deep = [[[[[0.0]]]]], [[[[[1e3]]]]]
  assert host_state.describe(_reading(deep[0])) == host_state.describe(_reading(deep[1]))
  assert host_state.describe(_reading(deep[0][0])) != host_state.describe(_reading(deep[1][0]))
