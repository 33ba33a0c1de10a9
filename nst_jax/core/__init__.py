"""The pure core: VGG-19, pixel conventions, losses, the objective and step, optimisers.

Arrays and pytrees in, arrays out: imports nothing from the other sub-packages
(no files, no Pillow, no absl, no config objects). Only nst_jax.errors.
"""

import importlib
import sys
import warnings

# nst_jax.core was one module before 0.3; its names still resolve here (but
# `objective`, now the module nst_jax.core.objective: use nst_jax.objective).
_MOVED = {
  **dict.fromkeys(
    ('StyleState', 'init_state', 'initial_image', 'make_model', 'make_optimizer', 'update_step',
     'prepare_params', 'batched', 'LossFn', 'RANDOM_INIT_STD'),
    'nst_jax.core.step',
  ),
  **dict.fromkeys(('Targets', 'make_targets', 'LossSpec'), 'nst_jax.core.objective'),
}  # fmt: skip


def __getattr__(name):
  if name not in _MOVED:
    raise AttributeError(f'module nst_jax.core has no attribute {name!r}')
  # `from nst_jax.core import x` asks twice: importlib's hasattr, then the
  # import itself. Only the second is the caller's, so only it warns.
  if not sys._getframe(1).f_code.co_filename.startswith('<frozen importlib'):
    warnings.warn(
      f'nst_jax.core.{name} is deprecated; use nst_jax.{name} or {_MOVED[name]}.{name}',
      DeprecationWarning,
      stacklevel=2,
    )
  return getattr(importlib.import_module(_MOVED[name]), name)
