"""Deprecated: the pieces that lived here moved (see README "Layout").

`from nst_jax.stylize import update_step` and the other old names keep
working, with a DeprecationWarning naming the new place. This module is
callable, so `nst_jax.stylize(content, style)` also works after something has
imported it (importing a submodule makes it the package's attribute).
"""

import importlib
import sys
import types
import warnings

from nst_jax import deprecated


class _Module(types.ModuleType):
  def __getattr__(self, name):
    if name not in deprecated.MOVED:
      raise AttributeError(f'module nst_jax.stylize has no attribute {name!r}')
    warnings.warn(
      f'nst_jax.stylize.{name} is deprecated; use {deprecated.MOVED[name]}.{name}',
      DeprecationWarning,
      stacklevel=2,
    )
    return getattr(importlib.import_module(deprecated.MOVED[name]), name)

  def __call__(self, *args, **kwargs):
    from nst_jax.runs.arrays import stylize

    return stylize(*args, **kwargs)


sys.modules[__name__].__class__ = _Module
