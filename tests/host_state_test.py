"""A host callback's Python state, described (nst_jax.core.host_state).

Each pair computes otherwise on the host, so its descriptions must differ
(trials 37, 38 and 40 found state that a checkpoint's resume and the compile
cache could not tell apart); the same state built anew describes the same.
"""

import dataclasses
import functools
import os
import subprocess
import sys
import types
import typing

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


def _changes_with(fn, owner, name: str, value=1e3) -> bool:
  """Whether `fn`'s description differs once `owner.name` is `value` (set back after)."""
  before, old = host_state.describe(fn), getattr(owner, name)
  setattr(owner, name, value)
  try:
    return host_state.describe(fn) != before
  finally:
    setattr(owner, name, old)


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


def _helper_scale():
  return 2.0


def _calls_helper(y):
  return np.sum(y) * _MODULE.scale()


def test_a_helper_called_through_its_module_and_set_constants():
  """Trial 40: a module's function edited (reloaded) was not described; `x in {'a', 'b'}` was
  described by the set's order, which string hashing makes differ between processes."""
  _MODULE.scale = _helper_scale
  before = host_state.describe(_calls_helper)
  _MODULE.scale = lambda: 3.0
  assert host_state.describe(_calls_helper) != before
  script = (
    'from nst_jax.core import host_state\n'
    "def h(y, mode='mean'):\n"
    "  return 1.0 if mode in {'mean', 'max', 'min', 'sum', 'median', 'std'} else 2.0\n"
    'print(host_state.describe(h))'
  )
  seen = {
    subprocess.run(
      [sys.executable, '-c', script],
      capture_output=True,
      text=True,
      check=True,
      env={**os.environ, 'PYTHONHASHSEED': str(seed)},
    ).stdout  # fmt: skip
    for seed in (1, 2, 3)
  }
  assert len(seen) == 1 and 'mean' in next(iter(seen))


def test_keys_tell_the_objects_a_callback_reads():
  """The compile cache's key: equal for a function made anew around the same closure cells (a
  lambda inside the loss, on each trace), different around other cells (trial 40 F1, F4; trial
  44: cells by value, two loss_fns' dicts or `nonlocal` counts were one)."""
  log, other = [], []

  def loss_fn(into):
    count = 0

    def trace():  # what each trace of the loss makes
      def host(t):
        nonlocal count
        count += 1
        into.append(t)

      return host

    return trace

  one, two = loss_fn(log), loss_fn(log)
  assert host_state.key(one()) == host_state.key(one())
  assert hash(host_state.key(one())) == hash(host_state.key(one()))
  assert host_state.key(one()) != host_state.key(two())  # the same list, another count
  assert host_state.key(one()) != host_state.key(loss_fn(other)())
  assert host_state.key(functools.partial(np.add, 1.0)) != host_state.key(
    functools.partial(np.add, 2.0)
  )


@dataclasses.dataclass(frozen=True)
class _Named:  # equal by its name alone: two runs' loggers (trial 42 G1)
  name: str
  values: list = dataclasses.field(default_factory=list, compare=False, hash=False)


class _Weighted:
  weight = 0.0

  def host(self, y):
    return np.sum(y) * self.weight


def test_trial_42_edges():
  """G1: objects equal by a name of theirs keyed as one; G3: functools.cache and jax.jit
  wrappers, class attributes read through an instance, inherited ones of a class; G4, G5: an
  address in upper case, an object array's pointers; G8: a tracer kept on an object; G9: a
  flax module's creation counter; a repr that raises."""
  import jax

  import nst_jax

  a, b = _Named('run'), _Named('run')
  assert host_state.key(_reading(a)) != host_state.key(_reading(b))

  def cached(k):
    @functools.cache
    def h():
      return np.float32(k)

    return h

  assert host_state.describe(cached(0.0)) != host_state.describe(cached(1e3))
  jitted = [jax.jit(lambda k=k: k * 2.0) for k in (0.0, 1e3)]
  assert host_state.describe(jitted[0]) != host_state.describe(jitted[1])
  one = _Weighted()
  assert _changes_with(one.host, _Weighted, 'weight')

  class Sub(_Weighted):
    pass

  assert _changes_with(_reading(Sub), _Weighted, 'weight')
  rng = np.random.default_rng(0)
  assert ' at 0x' not in host_state.describe(_reading(rng)).lower()
  objects = np.array(['mean', 'max'], dtype=object)
  assert 'mean' in host_state.describe(_reading(objects))
  assert host_state.describe(_reading(objects)) != host_state.describe(
    _reading(np.array(['mean', 'min'], dtype=object))
  )
  kept = types.SimpleNamespace()
  jax.make_jaxpr(lambda x: setattr(kept, 'last', x) or x)(1.0)
  assert 'Tracer' in host_state.describe(_reading(kept))
  models = nst_jax.make_model(), nst_jax.make_model()
  assert host_state.describe(_reading(models[0])) == host_state.describe(_reading(models[1]))

  class Unprintable:
    __slots__ = ()

    def __repr__(self):
      raise RuntimeError('no repr')

  assert 'Unprintable' in host_state.describe(_reading(Unprintable()))


class _Settings:
  weight = 0.0
  registry: list = []  # noqa: RUF012 (class data, as a registry of instances is)


_SETTINGS = _Settings()


def _reads_settings(y):
  return np.sum(y) * _SETTINGS.weight


def test_trial_44_edges():
  """P1: a class attribute read through an instance held as a global; P5, P6: two loss_fns
  recording into their own dicts keyed alike (by value); P7: a generator's seed."""
  assert _changes_with(_reads_settings, _Settings, 'weight')
  held = _Settings()  # in a closure, not a global
  assert _changes_with(lambda y: np.sum(y) * held.weight, _Settings, 'weight')
  # Trial 48 F17: class data the code does not name (a registry of every instance) is not read.
  assert not _changes_with(lambda y: np.sum(y) * held.weight, _Settings, 'registry', [held])
  frozen = _Frozen(1.0)
  object.__setattr__(frozen, 'extra', 0.0)  # not a declared field
  before = host_state.describe(_reading(frozen))
  object.__setattr__(frozen, 'extra', 1e3)
  assert host_state.describe(_reading(frozen)) != before
  ours, theirs = {}, {}
  assert host_state.key(lambda t: ours.update(t=t)) != host_state.key(lambda t: theirs.update(t=t))

  def drawing(seed):
    rng = np.random.default_rng(seed)
    return lambda: rng.uniform()

  used = drawing(0)
  before = host_state.describe(used)
  used()  # drawing advances its state, not its seed: the same description
  assert host_state.describe(used) == before == host_state.describe(drawing(0))
  assert host_state.describe(drawing(1)) != before


class _SlottedSettings:
  __slots__ = ('name',)
  weight = 0.0

  def __init__(self):
    self.name = 'a'


def test_trial_46_edges():
  """N1: a class attribute read through a __slots__ instance; N2: a user's module named jax*
  is not JAX's own wrapper (its dicts keyed by value again)."""
  held = _SlottedSettings()
  assert _changes_with(lambda y: np.sum(y) * held.weight, _SlottedSettings, 'weight')
  namespace: dict = {'__name__': 'jax_helpers'}
  exec('def make(into):\n  return lambda t: into.update(t=t)\n', namespace)  # noqa: S102
  ours, theirs = {}, {}
  assert host_state.key(namespace['make'](ours)) != host_state.key(namespace['make'](theirs))


class _Scaler:
  def scale(self):
    return 2.0


_SCALER = _Scaler()


class _Holder:
  def __init__(self):
    self.helper = _Scaler()

  @property
  def weight(self):
    return _TABLE.sum()


_HOLDER = _Holder()


def _calls_scaler(y):
  return np.sum(y) * _SCALER.scale()


@dataclasses.dataclass
class _Private:
  k: float = 1.0

  def __post_init__(self):
    self._scale = 2.0


class _Base:
  K = 0.0


class _Derived(_Base):
  @classmethod
  def host(cls, y):
    return np.sum(y) * cls.K


class _Pair(typing.NamedTuple):
  a: float
  scale = 1.0

  def doubled(self):
    return 2.0


class _Table(dict):
  scale = 1.0


def _scaled(y, k):
  return y * k


def test_trial_46_reach():
  """Went on unsaid: a method of a global instance edited (the method's code was not described),
  a dataclass's `_private` attribute that is no field, a classmethod reading an inherited cls.K."""
  assert _changes_with(_calls_scaler, _Scaler, 'scale', lambda self: 3.0)
  assert _changes_with(lambda y: np.sum(y) * _SCALER.scale(), _Scaler, 'scale', lambda self: 3.0)
  through = lambda y: np.sum(y) * _HOLDER.helper.scale()  # noqa: E731 (a host as people write one)
  assert _changes_with(through, _Scaler, 'scale', lambda self: 3.0)
  weighted = lambda y: np.sum(y) * _HOLDER.weight  # noqa: E731
  assert _changes_with(weighted, _Holder, 'weight', property(lambda self: 3.0))
  held = _Private()
  assert _changes_with(_reading(held), held, '_scale')
  assert _changes_with(_Derived.host, _Base, 'K')
  assert host_state.describe(_calls_scaler) == host_state.describe(_calls_scaler)
  # N1's last: a NamedTuple's class attribute that is no field, a dict subclass's.
  pair, table = _Pair(1.0), _Table(x=1)
  assert _changes_with(lambda y: np.sum(y) * pair.scale, _Pair, 'scale')
  assert _changes_with(lambda y: np.sum(y) * table.scale, _Table, 'scale')
  # N9: a partial's keyword arguments were keyed as fresh pairs, never alike (recompiled).
  half = functools.partial(_scaled, k=0.5)
  assert host_state.key(half) == host_state.key(functools.partial(_scaled, k=float('0.5')))
  assert host_state.key(half) != host_state.key(functools.partial(_scaled, k=0.6))
  assert host_state.key(functools.partial(_scaled, k=[])) != host_state.key(
    functools.partial(_scaled, k=[])
  )


_WEIGHTS = {'a': 1.0}
_SETTINGS_MODULE = types.ModuleType('nst_jax_host_state_test_imported')
_SETTINGS_MODULE.K = 0.0
sys.modules[_SETTINGS_MODULE.__name__] = _SETTINGS_MODULE


class _Chain:
  base = 1.0

  def weight(self):
    return self._base()

  def _base(self):
    return self.base

  @functools.cached_property
  def scale(self):
    return 2.0


def _inside_comprehension(y):
  return np.float32(sum([_WEIGHTS[k] for k in ('a',)])) * y


def _imports_itself(y):
  import nst_jax_host_state_test_imported as settings  # noqa: PLC0415

  return y * settings.K


def test_trial_48_reach():
  """Went on unsaid (F2, F5, F8, F14, F15): a global read only in a comprehension, a function's
  own attribute, a module the host imports itself or holds in a cell, a method chain on self;
  keyword-only defaults (F1) neither described nor keyed."""
  before = host_state.describe(_inside_comprehension)
  _WEIGHTS['a'] = 1e3
  assert host_state.describe(_inside_comprehension) != before
  _WEIGHTS['a'] = 1.0

  def own(y):
    return y * own.k

  own.k = 0.0
  assert _changes_with(own, own, 'k')
  assert _changes_with(_imports_itself, _SETTINGS_MODULE, 'K')
  held = _SETTINGS_MODULE
  assert _changes_with(lambda y: y * held.K, _SETTINGS_MODULE, 'K')
  chained = _Chain()
  assert _changes_with(lambda y: y * chained.weight(), _Chain, 'base')

  def keyword(y, *, k=0.0):
    return y * k

  assert _changes_with(keyword, keyword, '__kwdefaults__', {'k': 1e3})
  assert host_state.key(keyword) != host_state.key(_with_kwdefault(keyword, 1e3))


def _with_kwdefault(fn, k):
  copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                            fn.__closure__)  # fmt: skip
  copy.__kwdefaults__ = {'k': k}
  return copy


def test_trial_48_state_that_leaves_the_result_alone_describes_alike():
  """F10, F12, F16, F17: the whole environment, a logger's, a path's or a cached_property's
  caches (set on first use) made a resume in the same process or another shell refused; F11: an
  empty cell crashed."""
  import logging  # noqa: PLC0415
  import pathlib  # noqa: PLC0415

  log, path, chained = logging.getLogger('nst_jax_test_host'), pathlib.Path('a/b.txt'), _Chain()

  def host(y):
    return y * len(os.environ.get('NST_JAX_TEST_UNSET', 'x')) + len(str(path)) + chained.scale

  def logging_host(y):
    log.info('y')
    return y

  before = host_state.describe(host), host_state.describe(logging_host)
  os.environ['NST_JAX_TEST_OTHER'] = '1'
  log.isEnabledFor(20)
  hash(path), str(path), chained.scale  # noqa: B018 (the caches filled)
  try:
    assert (host_state.describe(host), host_state.describe(logging_host)) == before
  finally:
    del os.environ['NST_JAX_TEST_OTHER']

  def empty(y):
    return y * later

  assert 'empty cell' in host_state.describe(empty)
  later = 1.0  # noqa: F841 (assigned after: the cell was empty)


def test_trial_48_keys():
  """F4: the same code in two namespaces shared one program; F13: a bound builtin or a partial
  made anew on each trace (a jax.debug.callback's LOG.append) recompiled on every call."""
  first, second = {}, {}
  source = 'K = {}\ndef host(y):\n  return y * K\n'
  exec(compile(source.format(0), 'cfg.py', 'exec'), first)  # noqa: S102
  exec(compile(source.format(1000), 'cfg.py', 'exec'), second)  # noqa: S102
  assert host_state.key(first['host']) != host_state.key(second['host'])
  log, other = [], []
  assert host_state.key(log.append) == host_state.key(log.append) != host_state.key(other.append)
  made = [functools.partial(_scaled, k=log) for _ in range(2)]
  assert host_state._cell_key(made[0], 0) == host_state._cell_key(made[1], 0)


class _Keyed:
  """An object whose __getattr__ raises KeyError, not AttributeError (trial 50 N9)."""

  def __getattr__(self, name):
    raise KeyError(name)

  def __call__(self, y):
    return y


def test_trial_50_edges():
  """N1: a NamedTuple's method replaced went on unsaid; N2: what a host reads through a partial's
  argument; N10: a global met first deep inside another was cut off there; N9: a KeyError from a
  __getattr__ crashed the description."""
  pair = _Pair(1.0)
  assert _changes_with(lambda y: y * pair.doubled(), _Pair, 'doubled', lambda self: 3.0)
  settings = _Chain()
  through = functools.partial(lambda y, s: y * s.weight(), s=settings)
  assert _changes_with(through, _Chain, 'base')
  inner = {'loss': {'k': 0.0}}
  archive = {'runs': [{'a': [{'cfg': inner}]}]}

  def host(y):
    return y * inner['loss']['k'] + len(archive)

  before = host_state.describe(host)
  inner['loss']['k'] = 1e3
  assert host_state.describe(host) != before
  assert 'Keyed' in host_state.describe(_Keyed())


class _Reader:
  def __call__(self, y, s):
    return y * s.weight()


def test_trial_52_edges():
  """N11: a config first described for a helper naming fewer of its attributes; N13: a partial
  over a callable instance; N14: a bound builtin method's object; N15: an itemgetter's key."""
  import operator  # noqa: PLC0415

  table = np.zeros(3, np.float32)
  before = host_state.describe(table.sum)
  table[1] = 1e3
  assert host_state.describe(table.sum) != before
  assert host_state.describe(operator.itemgetter('a')) != host_state.describe(
    operator.itemgetter('b')
  )
  chained = _Chain()
  # What the instance's __call__ reads of its partial argument (a method of it, its class data).
  assert _changes_with(functools.partial(_Reader(), s=chained), _Chain, 'base')

  def helper(y):
    return y * len(vars(chained))

  def host(y):
    return helper(y) + chained.weight()

  assert _changes_with(host, _Chain, 'base')
