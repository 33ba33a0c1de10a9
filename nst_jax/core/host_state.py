"""A host callback's Python state, described for a custom loss_fn's identity.

A loss_fn's jaxpr (nst_jax.core.step_checks.loss_fn_identity) holds what JAX
traces; a host callback (jax.pure_callback, jax.debug.callback) is Python the
trace does not see: its code, and whatever its code reads when it runs. This
describes that as text, the same in every process for the same state and
different for a different one, as far as it reaches: functions two levels
deep, data four levels deep (containers, objects' fields and slots, the
attributes of classes and modules the code names, arrays by their bytes).
Beyond that the description keeps a type's name; a checkpoint's resume
cannot tell such a change apart, and the compile cache keys by the callback
functions themselves as well (nst_jax.engine.engine.Engine.loss_key).
"""

from collections.abc import Mapping
import dataclasses
import functools
import hashlib
import inspect
import logging
import os
import pathlib
import re
import sys
import types
from typing import Any
import warnings

import jax
import numpy as np

# How far a host callback's description reaches: functions calling functions (trial 37), and
# data within data: containers, objects' fields, class and module attributes (trials 38, 40).
_FUNCTION_DEPTH, _DATA_DEPTH, _MOST_VALUES = 2, 4, 200_000
ADDRESS = re.compile(r' at 0x[0-9a-fA-F]+')  # numpy's Generator prints upper case (trial 42)
_SKIP = object()


def _host(fn: Any, depth: int = 0, seen: dict | None = None) -> Any:
  """A host callback's description: its name, code, defaults, closure, the globals its code
  reads (a class's or module's attributes it names too) and a bound method's or callable
  instance's fields, each value as `_value` describes it; functions among them in turn, two
  levels deep (trial 37: a method, an instance, a helper or a global was not told apart)."""
  seen = {} if seen is None else seen
  if isinstance(fn, functools.partial):  # its arguments with what the function names (50 N2)
    code = _code_of(fn.func)  # a function's, a method's, a wrapper's or an instance's (52 N13)
    arguments = _value(
      (fn.args, fn.keywords), depth, 0, seen, _names(code) if code else frozenset()
    )
    return 'partial', _host(fn.func, depth, seen), arguments
  wrapped = attribute(fn, '__wrapped__')
  if attribute(fn, '__code__') is None and callable(wrapped):  # functools.cache's, jax.jit's (42)
    return type(fn).__qualname__, _host(wrapped, depth, seen)
  owner = attribute(fn, '__self__')
  function = attribute(fn, '__func__') or fn
  builtin = owner is not None and not inspect.ismodule(owner) and attribute(fn, '__code__') is None
  if builtin and depth <= _FUNCTION_DEPTH:  # ARR.sum, CFG.get: by the object too (trial 52 N14)
    return 'builtin method', attribute(fn, '__name__'), _value(owner, depth + 1, 0, seen)
  if attribute(function, '__code__') is None and not isinstance(fn, type) and not builtin:
    owner, function = fn, type(fn).__call__  # a callable instance  # noqa: B004
  code = attribute(function, '__code__')
  if code is None:  # a class, a builtin or C function: by its repr (itemgetter('a'): trial 52)
    try:
      return ADDRESS.sub('', repr(fn))
    except Exception:  # noqa: BLE001 (a repr that raises: its type, then)
      return type(fn).__qualname__
  if depth > _FUNCTION_DEPTH:
    return attribute(fn, '__qualname__') or type(fn).__qualname__
  names = getattr(function, '__globals__', {})
  named = _names(code)  # its comprehensions' and inner functions' too (trial 48 F2)
  read = {}
  for n in sorted(named):
    # A global, or a module the function imports itself (trial 48 F8: `import cfg` inside it).
    value = names[n] if n in names else sys.modules.get(n, _SKIP)
    if value is _SKIP or (n not in names and not inspect.ismodule(value)):
      continue
    if inspect.ismodule(value) or isinstance(value, type):  # trial 40: Cfg.K, lf_mod.K
      value = {a: x for a in sorted(named) if (x := _attribute(value, a)) is not _SKIP}
    read[n] = value
  cells = []
  for cell in getattr(function, '__closure__', None) or ():
    try:
      cells.append(cell.cell_contents)
    except ValueError:  # not yet assigned (trial 48 F11: a crash, not the user's own error)
      cells.append('<empty cell>')

  def values(v):  # the objects among them with the methods the code names (`_methods`)
    return _value(v, depth + 1, 0, seen, named)

  fields = _fields(owner, named)
  if owner is not None:  # self.K, a class attribute (trial 42); a classmethod's, inherited (46)
    cls = owner if isinstance(owner, type) else type(owner)
    fields |= {a: x for a in sorted(named) if a not in fields
               and (x := _attribute(cls, a)) is not _SKIP}  # fmt: skip
    if owner is not cls:  # its methods bound: what they read of self too (self._base(): 48 F15)
      fields |= _methods(owner, named)
  # Keyword-only defaults and the function's own attributes (trial 48 F1, F5: `host.k`).
  extra = [values(v) for v in (function.__kwdefaults__, vars(function)) if v]
  return (
    function.__qualname__, _code(code),
    values(function.__defaults__), values(cells), values(read), values(fields), *extra,
  )  # fmt: skip


def _code_of(fn: Any) -> Any:
  """The code object `fn` runs: its own, its method's, what it wraps, its class's __call__."""
  for f in (fn, attribute(fn, '__func__'), attribute(fn, '__wrapped__'), type(fn).__call__):
    if (code := attribute(f, '__code__')) is not None:
      return code
  return None


def attribute(owner: Any, name: str) -> Any:
  """`getattr(owner, name, None)`, also where the object's __getattr__ raises another error (trial
  50 N9: a KeyError crashed the description)."""
  try:
    return getattr(owner, name, None)
  except Exception:  # noqa: BLE001 (the user's __getattr__ may raise anything)
    return None


def _names(code: Any) -> frozenset:
  """The names a code object reads, its nested code objects' (comprehensions, inner functions,
  lambdas) included."""
  inner = [_names(c) for c in code.co_consts if inspect.iscode(c)]
  return frozenset(code.co_names).union(*inner)


def _methods(value: Any, names: frozenset) -> dict:
  """The functions (and properties' getters) of an object's class that a host function's code
  names (`names`): trial 46, `S.scale(x)` of a global instance S (or `S.helper.scale(x)`) went on
  unsaid when the method's code was edited."""
  methods = {}
  for name in sorted(names):
    found = inspect.getattr_static(type(value), name, None)
    if isinstance(found, property) and found.fget is not None:  # trial 44: its code, unsaid
      found = found.fget
    elif isinstance(found, functools.cached_property):
      found = found.func
    if isinstance(found, staticmethod):
      methods[name] = found.__func__
    elif isinstance(found, classmethod):
      methods[name] = types.MethodType(found.__func__, type(value))
    elif inspect.isfunction(found):  # bound: what it reads of self is followed (trial 48 F15)
      methods[name] = types.MethodType(found, value)
  return methods


def _code(code: Any) -> tuple:
  """A code object as the same in every process: its set constants sorted (trial 40: `x in
  {'a', 'b'}` is a frozenset, ordered by string hashes, which differ between processes)."""
  consts = []
  for const in code.co_consts:
    if isinstance(const, frozenset):
      const = sorted(map(repr, const))
    elif inspect.iscode(const):  # a lambda's, a comprehension's
      const = _code(const)
    consts.append(const)
  return code.co_code, consts, code.co_names


def _attribute(owner: Any, name: str) -> Any:
  """`owner.name` (a module's or class's attribute a host function names) if the function may
  read or call it, else _SKIP: a module's classes and submodules (describing them would walk the
  libraries; its functions are described, two levels deep: trial 40, a helper's code edited)."""
  with warnings.catch_warnings():  # a module's deprecated names warn when read
    warnings.simplefilter('ignore')
    if name.startswith('__') or not hasattr(owner, name):
      return _SKIP
    value = getattr(owner, name)
  if inspect.ismodule(owner) and (inspect.ismodule(value) or isinstance(value, type)):
    return _SKIP
  return value


def _fields(owner: Any, names: frozenset) -> dict:
  """An object's fields: a dataclass's own (trial 42: a flax module's bookkeeping, a creation
  counter, made each run's model another), else its __dict__ and its __slots__ (trial 40)."""
  fields = dict(vars(owner)) if hasattr(owner, '__dict__') else {}
  # Not a cached_property's value, set on first use (trial 48 F16): its function is described.
  cached = [k for k in fields if isinstance(inspect.getattr_static(type(owner), k, None),
                                            functools.cached_property)]  # fmt: skip
  fields = {k: v for k, v in fields.items() if k not in cached}
  if _flax_module(owner):  # not flax's bookkeeping (a user's dataclass's _private: trial 46)
    fields = {k: v for k, v in fields.items() if not k.startswith('_')}
  if dataclasses.is_dataclass(owner) and not isinstance(owner, type):
    fields |= {f.name: getattr(owner, f.name, None) for f in dataclasses.fields(owner)}
  if owner is not None and not isinstance(owner, type):  # __slots__ ones too (trial 46)
    for name in dir(type(owner)):  # its class's data, read through it (trial 44: S.weight)
      static = inspect.getattr_static(type(owner), name, None)
      # Only what the code names (trial 48 F17: a class's registry of every instance).
      if name in names and name not in fields and _data(static):
        fields[name] = static
  for cls in type(owner).__mro__ if owner is not None else ():
    slots = getattr(cls, '__slots__', ())
    for name in (slots,) if isinstance(slots, str) else slots:
      if name not in ('__dict__', '__weakref__') and hasattr(owner, name):
        fields[name] = getattr(owner, name)
  return fields


def _flax_module(owner: Any) -> bool:
  """Whether `owner` is a flax module (an instance), whose `_`-fields are flax's bookkeeping."""
  mro = type(owner).__mro__ if owner is not None and not isinstance(owner, type) else ()
  return any(c.__module__.startswith('flax.') for c in mro)


def _data(value: Any) -> bool:
  """Whether a class attribute is data (not a method, property or other descriptor)."""
  return not (callable(value) or hasattr(value, '__get__') or isinstance(value, type))


def _value(v: Any, functions: int, depth: int, seen: dict, names: frozenset = frozenset()) -> Any:
  """A value a host callback reads, described so that another value that could change its result
  describes otherwise: arrays (numpy's, JAX's) by their bytes (numpy's repr leaves out the
  middle: trial 38), containers and objects' fields walked (trial 40), functions as `_host`
  says, an object's methods that `names` (the host function's code's) names too. Beyond
  _DATA_DEPTH levels, a cycle or _MOST_VALUES values, the type's name."""
  if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
    return v
  if v is os.environ:  # the whole environment: another shell's refused every resume (48 F10)
    return 'os.environ'
  if isinstance(v, (pathlib.PurePath, logging.Logger)):  # caches set on first use (48 F12, F16)
    return type(v).__qualname__, str(v)
  if isinstance(v, jax.core.Tracer):  # stored on an object while tracing (trial 42)
    return 'Tracer', str(v.aval)
  if isinstance(v, (np.ndarray, np.generic)) and v.dtype == object:  # pointers (trial 42)
    return 'object array', np.shape(v), _value(np.asarray(v).tolist(), functions, depth, seen)
  if isinstance(v, (np.ndarray, np.generic, jax.Array)):
    if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
      v = jax.random.key_data(v)
    a = np.ascontiguousarray(v)
    return a.dtype.str, a.shape, hashlib.sha256(a.data).hexdigest()
  if isinstance(v, np.random.Generator):  # by its seed, not its state (which a run advances)
    seeds = v.bit_generator.seed_seq
    spawned = getattr(seeds, 'spawn_key', ())
    return (
      'Generator',
      type(v.bit_generator).__name__,
      repr(getattr(seeds, 'entropy', seeds)),
      spawned,
    )
  # Once described, not again, unless met nearer the top (trial 50 N10: met first deep in
  # another global, its own reading was cut off there).
  # And by what it was described for (trial 52 N11, N17: first met for a helper naming fewer of
  # its attributes, or beyond the function depth, it was a bare name where the host reads it).
  memo = id(v), names, functions
  if depth > _DATA_DEPTH or seen.get(memo, (None, _DATA_DEPTH + 1))[1] <= depth:
    return type(v).__qualname__
  if len(seen) > _MOST_VALUES:
    return type(v).__qualname__
  seen[memo] = v, depth  # kept alive, so that no other value takes its id meanwhile

  def inner(x):
    return _value(x, functions, depth + 1, seen, names)

  # A subclass's own fields, class data and methods too (trial 46: a NamedTuple's; 50 N1).
  subclass = type(v) not in (dict, list, tuple, set, frozenset)
  own = (_fields(v, names), _methods(v, names)) if subclass else ()
  if isinstance(v, Mapping):
    return type(v).__qualname__, [(inner(k), inner(x)) for k, x in v.items()], *map(inner, own)
  if isinstance(v, (list, tuple)):
    return type(v).__qualname__, [inner(x) for x in v], *map(inner, own)
  if isinstance(v, (set, frozenset)):
    return type(v).__qualname__, sorted(repr(inner(x)) for x in v), *map(inner, own)
  if isinstance(v, (property, functools.cached_property)):  # its code (trial 48 F3: replaced)
    return type(v).__qualname__, _host(
      v.fget if isinstance(v, property) else v.func, functions, seen
    )
  if isinstance(v, type):  # a class in a closure: what it has, inherited too (trial 42)
    attributes = [k for k in dir(v) if not k.startswith('__')]
    return v.__qualname__, {k: inner(x) for k in attributes if (x := _attribute(v, k)) is not _SKIP}
  if callable(v):
    return _host(v, functions, seen)
  if inspect.ismodule(v):  # in a cell, a field or an argument: what the code names of it (48 F14)
    named = {a: x for a in sorted(names) if (x := _attribute(v, a)) is not _SKIP}
    return 'module', v.__name__, {a: inner(x) for a, x in named.items()}
  fields, methods = _fields(v, names), _methods(v, names)
  if methods:
    described = {k: _host(m, functions, seen) for k, m in methods.items()}
    return type(v).__qualname__, {k: inner(x) for k, x in fields.items()}, described
  if fields:
    return type(v).__qualname__, {k: inner(x) for k, x in fields.items()}
  try:
    return ADDRESS.sub('', repr(v))
  except Exception:  # noqa: BLE001 (a repr that raises: its type, then)
    return type(v).__qualname__


def describe(fn: Any) -> str:
  """`fn`'s description as text (an object's address, which differs between processes, left out)."""
  return ADDRESS.sub('', repr(_host(fn)))


class _Same:
  """A value compared by identity (and kept alive, so that its id stays its own)."""

  __slots__ = ('value',)

  def __init__(self, value: Any):
    self.value = value

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Same) and other.value is self.value

  def __hash__(self) -> int:
    return id(self.value)


def key(fn: Any, depth: int = 0) -> Any:
  """A hashable key equal for two host callbacks only where they run the same code on the same
  objects (closure cells, bound instance, partial arguments, defaults; hashable values by value),
  so that a program compiled with one serves the other: what they read, they read at run time
  from those objects. A function made anew on each trace (a lambda inside the loss, JAX's wrapper
  of a jax.debug.callback) keys alike when it closes over the same cells: the loss_fn's own, not
  the loss's locals, which are new on each call (such a loss_fn compiles anew each run)."""
  if isinstance(fn, functools.partial):
    # Keywords as (name, value): a fresh (name, value) pair, by identity, never keyed alike (46 N9).
    keywords = tuple((k, _argument(x)) for k, x in sorted(fn.keywords.items()))
    return 'partial', key(fn.func, depth), tuple(map(_argument, fn.args)), keywords
  function = attribute(fn, '__func__') or fn
  code = attribute(function, '__code__')
  owner = attribute(fn, '__self__')
  if code is None and owner is not None and not inspect.ismodule(owner):
    return 'method', _Same(owner), getattr(fn, '__name__', None)  # LOG.append, new each time (F13)
  if code is None:
    return _Same(fn)
  cells = []
  module = getattr(function, '__module__', None) or ''
  jax_own = module == 'jax' or module.startswith(('jax.', 'jaxlib.'))  # not a user's jax_utils
  for cell in getattr(function, '__closure__', None) or ():
    try:
      value = cell.cell_contents
    except ValueError:  # a cell not yet filled
      value = None
    # A user's cell by the cell itself (trial 44: by value, two loss_fns' `nonlocal` counts or
    # dicts were one); in JAX's wrapper, made anew on each trace, by what it holds.
    cells.append(_cell_key(value, depth, jax_own) if jax_own else _Same(cell))
  defaults = tuple(map(_argument, function.__defaults__ or ()))
  keywords = tuple((k, _argument(x)) for k, x in sorted((function.__kwdefaults__ or {}).items()))
  # Its globals too: the same code run in two namespaces (runpy, %run twice) read each its own.
  namespace = _Same(getattr(function, '__globals__', None))
  return code, tuple(cells), defaults, keywords, namespace, _Same(owner)


class _Equal:
  """A hashable value compared by its type and value (a tree's structure, a label)."""

  __slots__ = ('value',)

  def __init__(self, value: Any):
    self.value = value

  def __eq__(self, other: object) -> bool:
    return (
      isinstance(other, _Equal)
      and type(other.value) is type(self.value)
      and (other.value == self.value)
    )

  def __hash__(self) -> int:
    return hash(self.value)


def _cell_key(value: Any, depth: int, jax_own: bool = False) -> Any:
  """A closure cell's part of `key`: a function by the same rule, a level down (the user's,
  inside jax.debug.callback's wrapper, made anew on each trace); in JAX's own wrapper, a dict
  item by item (its static arguments); a plain value by value (its tree structure); else the
  object itself (trial 44: a user's dicts by value, two runs logged into one)."""
  # A partial or a bound builtin (LOG.append) is made anew on each trace too (trial 48 F13).
  owner = attribute(value, '__self__')
  made = isinstance(value, functools.partial) or not (owner is None or inspect.ismodule(owner))
  if (attribute(value, '__code__') is not None or made) and depth < _FUNCTION_DEPTH:
    return key(value, depth + 1)
  if type(value) is dict and jax_own:
    return tuple((k, _cell_key(v, depth)) for k, v in value.items())
  if _plain(value):
    return _Equal(value)
  return _Same(value)  # trial 42: objects equal by a name of theirs logged into each other


def _argument(value: Any) -> Any:
  """A partial's argument's or a default's part of `key`: a plain value by value, else the object
  itself (a list it appends to is another run's list)."""
  return _Equal(value) if _plain(value) else _Same(value)


def _plain(value: Any) -> bool:
  """A value whose equality says all of it: None, a number, a string, a tree's structure, or
  a tuple or frozenset of such."""
  if value is None or type(value) in (bool, int, float, complex, str, bytes):
    return True
  if type(value) in (tuple, frozenset):
    return all(map(_plain, value))
  return type(value) is type(jax.tree.structure(0))  # a PyTreeDef
