"""Names of earlier versions that still work, each with a DeprecationWarning.

* Flat StyleConfig settings: `StyleConfig(iterations=300)`,
  `cfg.content_weight`, `cfg.replace(width=512)` map to the groups
  (`FLAT_FIELDS`).
* The module `nst_jax.stylize`, whose pieces moved (`MOVED`); see
  nst_jax/stylize.py.
"""

import dataclasses
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


# Names of the former module nst_jax.stylize -> the module that has them now.
MOVED = {
  'StyleState': 'nst_jax.core.step',
  'Targets': 'nst_jax.core.step',
  'init_state': 'nst_jax.core.step',
  'initial_image': 'nst_jax.core.step',
  'make_model': 'nst_jax.core.step',
  'make_optimizer': 'nst_jax.core.step',
  'make_targets': 'nst_jax.core.step',
  'objective': 'nst_jax.core.step',
  'update_step': 'nst_jax.core.step',
  'RANDOM_INIT_STD': 'nst_jax.core.step',
  'stylize': 'nst_jax.runs.arrays',
  'run': 'nst_jax.runs.runner',
  'estimate_memory': 'nst_jax.engine.memory',
  'available_memory': 'nst_jax.engine.memory',
  'check_memory': 'nst_jax.engine.memory',
  'default_output_path': 'nst_jax.io.outputs',
  'resume_output_path': 'nst_jax.io.outputs',
  'check_writable': 'nst_jax.io.outputs',
  'DEFAULT_OUTPUT_DIR': 'nst_jax.io.outputs',
  'is_time': 'nst_jax.engine.loop',
  'LogProgress': 'nst_jax.engine.hooks',
  'BarProgress': 'nst_jax.engine.hooks',
}
