"""Names of earlier versions that still work, each with a DeprecationWarning.

* Flat StyleConfig settings: `StyleConfig(iterations=300)`,
  `cfg.content_weight`, `cfg.replace(width=512)` map to the groups
  (`FLAT_FIELDS`).
* The module paths of the flat package before 0.3 (`nst_jax.vgg`,
  `nst_jax.image`, ...): `OLD_MODULES`, served by an import hook.
"""

import dataclasses
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# The flat names of earlier versions -> (group, field).
FLAT_FIELDS = {
  **{
    name: ('inputs', name)
    for name in (
      'content_path',
      'style_path',
      'style_blend_weights',
      'style_scale',
      'width',
      'content_mask',
      'style_masks',
      'init',
      'seed',
      'max_image_pixels',
    )
  },
  **{name: ('model', name) for name in ('weights', 'pooling', 'dtype')},
  **{name: ('loss', name) for name in ('content_weight', 'style_weight', 'tv_weight')},
  'optimizer': ('optim', 'name'),
  'learning_rate': ('optim', 'learning_rate'),
  'lbfgs_memory': ('optim', 'lbfgs_memory'),
  **{name: ('schedule', name) for name in ('iterations', 'scales', 'min_width')},
  **{name: ('color', name) for name in ('preserve_colors', 'color_match')},
  'output': ('save', 'path'),
  **{name: ('save', name) for name in ('bit_depth', 'quality', 'save_iter', 'record')},
  **{
    name: ('run', name)
    for name in (
      'print_iter',
      'progress',
      'checkpoint_every',
      'resume',
      'keep_checkpoint',
      'serve',
      'shard',
    )
  },
}


def split_flat(base, flat: dict, groups: dict) -> dict:
  """Flat names -> {group: group config}, on top of `base`'s groups (or the defaults)."""
  changes: dict[str, dict] = {}
  for name, value in flat.items():
    if name not in FLAT_FIELDS:
      raise TypeError(f'StyleConfig has no setting {name!r}')
    group, field = FLAT_FIELDS[name]
    changes.setdefault(group, {})[field] = value
  out = {}
  for group, fields in changes.items():
    current = getattr(base, group) if base is not None else groups[group]()
    out[group] = dataclasses.replace(current, **fields)
  return out


def warn_flat(names) -> None:
  """A DeprecationWarning naming where each flat setting moved."""
  moved = ', '.join(f'{n} -> {".".join(FLAT_FIELDS[n])}' for n in names if n in FLAT_FIELDS)
  if moved:
    warnings.warn(
      f'flat StyleConfig settings are deprecated; use the groups ({moved})',
      DeprecationWarning,
      stacklevel=3,
    )


# Modules of the flat package before 0.3 -> the modules that hold their names
# now (searched in order). `import nst_jax.vgg` and `from nst_jax import image`
# keep working with a DeprecationWarning; new code imports the sub-packages.
OLD_MODULES = {
  'vgg': ('nst_jax.core.vgg',),
  'winograd': ('nst_jax.core.winograd',),
  'losses': ('nst_jax.core.losses', 'nst_jax.core.statistics'),
  'optim': ('nst_jax.core.optim',),
  'image': ('nst_jax.io.images', 'nst_jax.core.pixels', 'nst_jax.core.color', 'nst_jax.config'),
  'image_modes': ('nst_jax.io.image_modes',),
  'video': ('nst_jax.io.video',),
  'weights': ('nst_jax.io.weights', 'nst_jax.io.weight_formats'),
  'weight_checks': ('nst_jax.io.weight_checks',),
  'download': ('nst_jax.io.download',),
  'checkpoint': ('nst_jax.io.checkpoint',),
  'outputs': ('nst_jax.io.outputs',),
  'output_plan': ('nst_jax.runs.output_plan', 'nst_jax.io.output_names'),
  'record': ('nst_jax.io.record',),
  'jobs': ('nst_jax.io.jobs',),
  'loop': ('nst_jax.engine.loop',),
  'hooks': ('nst_jax.engine.hooks',),
  'schedule': ('nst_jax.engine.schedule',),
  'steps': ('nst_jax.engine.steps',),
  'rows': ('nst_jax.engine.rows',),
  'sharding': ('nst_jax.engine.sharding',),
  'memory': ('nst_jax.engine.memory',),
  'distributed': ('nst_jax.engine.distributed',),
  'preview': ('nst_jax.engine.preview',),
  'pipeline': ('nst_jax.runs.runner', 'nst_jax.engine.preview'),
  'transfer': ('nst_jax.runs.arrays',),
  'batch': ('nst_jax.runs.batch',),
  'video_pipeline': ('nst_jax.runs.video', 'nst_jax.runs.temporal'),
  'features': ('nst_jax.runs.features',),
  'flow': ('nst_jax.runs.flow',),
}
# `nst_jax.stylize` was a module of these names until 0.2; importing it made
# the package's function `nst_jax.stylize` a module. It is gone: importing it
# says where the names are.
REMOVED = {
  'stylize': 'nst_jax.stylize is no longer a module; import update_step, make_targets, '
  'init_state, make_model, make_optimizer, objective and stylize from nst_jax',
}


class _OldModule(types.ModuleType):
  """An old module path: each name is looked up in the modules that hold it now."""

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    for target in self.__nst_targets__:
      module = importlib.import_module(target)
      if hasattr(module, name):
        return getattr(module, name)
    raise AttributeError(f'module {self.__name__} has no attribute {name!r}')


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Finds nst_jax.OLD for every OLD in OLD_MODULES (and refuses REMOVED ones)."""

  def find_spec(self, fullname, path=None, target=None):
    package, _, name = fullname.rpartition('.')
    if package != 'nst_jax' or name not in {**OLD_MODULES, **REMOVED}:
      return None
    if name in REMOVED:
      raise ImportError(REMOVED[name], name=fullname)
    return importlib.machinery.ModuleSpec(fullname, self)

  def create_module(self, spec):
    name = spec.name.rpartition('.')[2]
    targets = OLD_MODULES[name]
    warnings.warn(
      f'{spec.name} is deprecated; use {" / ".join(targets)}', DeprecationWarning, stacklevel=2
    )
    module = _OldModule(spec.name)
    module.__nst_targets__ = targets
    return module

  def exec_module(self, module):
    pass


def install_old_module_paths() -> None:
  """Makes the pre-0.3 module paths importable (once per process)."""
  if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.append(_Finder())
