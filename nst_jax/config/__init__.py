"""The run's settings: frozen, hashable dataclasses, one per concern, validated on creation.

`StyleConfig` groups them:

  inputs    InputConfig     which images, at what size, where to start
  model     ModelConfig     the network: weights file, pooling, dtypes, precision
  loss      LossConfig      the objective: layers, style term, term weights
  optim     OptimConfig     the optimiser and its settings
  schedule  ScheduleConfig  iterations, coarse-to-fine scales, convergence test
  color     ColorConfig     colour controls (Gatys et al. 2017)
  save      SaveConfig      the result file: path, format, intermediates, record
  run       RunConfig       how the run behaves: progress, checkpoints, preview, devices
  video     VideoConfig     videos: the temporal loss, passes, frames, optical flow

The command line builds one from its flags; library users build one directly,
and the pure step needs only `LossConfig.spec`. All sequence fields are
tuples, so every group can be a static argument of `jax.jit`.

The flat names of earlier versions (`StyleConfig(iterations=300)`,
`cfg.content_weight`) still work, with a DeprecationWarning naming the new
place (nst_jax.deprecated).

The groups live in nst_jax.config.groups (what a run optimises) and
nst_jax.config.outputs (how it writes and behaves); their checks in
nst_jax.config.checks. Every public name is here as well. May import
nst_jax.core (layer names, optimisers, statistics' kinds); imported by io,
engine, runs and cli, never by core.
"""

import dataclasses
import types

from nst_jax import deprecated
from nst_jax import errors
from nst_jax.config import checks
from nst_jax.config.groups import BIT_DEPTHS
from nst_jax.config.groups import DEFAULT_ADAM_LEARNING_RATE
from nst_jax.config.groups import DEFAULT_CHECKPOINT_EVERY
from nst_jax.config.groups import DEFAULT_CONTENT_LAYERS
from nst_jax.config.groups import DEFAULT_LBFGS_MEMORY
from nst_jax.config.groups import DEFAULT_MAX_IMAGE_PIXELS
from nst_jax.config.groups import DEFAULT_QUALITY
from nst_jax.config.groups import DEFAULT_STYLE_LAYERS
from nst_jax.config.groups import INITS
from nst_jax.config.groups import OPTIMIZERS
from nst_jax.config.groups import PRECISIONS
from nst_jax.config.groups import PRESERVE_COLORS
from nst_jax.config.groups import PROGRESS_MODES
from nst_jax.config.groups import SHARD_MODES
from nst_jax.config.groups import ColorConfig
from nst_jax.config.groups import InputConfig
from nst_jax.config.groups import LossConfig
from nst_jax.config.groups import ModelConfig
from nst_jax.config.groups import OptimConfig
from nst_jax.config.groups import ScheduleConfig
from nst_jax.config.outputs import RunConfig
from nst_jax.config.outputs import SaveConfig
from nst_jax.config.outputs import VideoConfig

__all__ = [
  'BIT_DEPTHS',
  'ColorConfig',
  'DEFAULT_ADAM_LEARNING_RATE',
  'DEFAULT_CHECKPOINT_EVERY',
  'DEFAULT_CONTENT_LAYERS',
  'DEFAULT_LBFGS_MEMORY',
  'DEFAULT_MAX_IMAGE_PIXELS',
  'DEFAULT_QUALITY',
  'DEFAULT_STYLE_LAYERS',
  'GROUPS',
  'INITS',
  'InputConfig',
  'LossConfig',
  'ModelConfig',
  'OPTIMIZERS',
  'OptimConfig',
  'PRECISIONS',
  'PRESERVE_COLORS',
  'PROGRESS_MODES',
  'RunConfig',
  'SHARD_MODES',
  'SaveConfig',
  'ScheduleConfig',
  'StyleConfig',
  'VideoConfig',
]

GROUPS = {
  'inputs': InputConfig,
  'model': ModelConfig,
  'loss': LossConfig,
  'optim': OptimConfig,
  'schedule': ScheduleConfig,
  'color': ColorConfig,
  'save': SaveConfig,
  'run': RunConfig,
  'video': VideoConfig,
}


@dataclasses.dataclass(frozen=True, init=False)
class StyleConfig:
  """Everything one style transfer run needs, in groups (module docstring).

  Build it with groups, `StyleConfig(loss=LossConfig(content_weight=5.0))`,
  or change one setting with `cfg.replace(loss=cfg.loss.replace(...))`.
  Flat names (`StyleConfig(iterations=300)`) are deprecated but still work.
  """

  inputs: InputConfig
  model: ModelConfig
  loss: LossConfig
  optim: OptimConfig
  schedule: ScheduleConfig
  color: ColorConfig
  save: SaveConfig
  run: RunConfig
  video: VideoConfig

  def __init__(
    self,
    inputs: InputConfig | None = None,
    model: ModelConfig | None = None,
    loss: LossConfig | None = None,
    optim: OptimConfig | None = None,
    schedule: ScheduleConfig | None = None,
    color: ColorConfig | None = None,
    save: SaveConfig | None = None,
    run: RunConfig | None = None,
    video: VideoConfig | None = None,
    **flat,
  ):
    given = locals()  # the groups, by their parameter names
    groups = {name: given[name] for name in GROUPS}
    for name, value in groups.items():
      value = value if value is not None else GROUPS[name]()
      if not isinstance(value, GROUPS[name]):
        raise errors.ArgumentError(
          f'StyleConfig({name}=...) takes a {GROUPS[name].__name__}, got a '
          f'{type(value).__name__}; pass nst_jax.{GROUPS[name].__name__}(...)'
        )
      object.__setattr__(self, name, value)
    if flat:
      _check_flat(flat)
      _check_given_once(groups, flat)
      deprecated.warn_flat(flat)
      for name, value in deprecated.split_flat(self, flat, GROUPS).items():
        object.__setattr__(self, name, value)
    self._validate()

  def _validate(self) -> None:
    if self.inputs.style_masks:
      checks.check(
        self.loss.style_loss != 'histogram',
        'the histogram style loss does not support style masks; set loss.style_loss to gram or '
        'mean_cov',
      )

  def __getattr__(self, name: str):
    # Only called for names that are not fields: the flat legacy names.
    if name in deprecated.FLAT_FIELDS:
      deprecated.warn_flat([name])
      group, field = deprecated.FLAT_FIELDS[name]
      return getattr(getattr(self, group), field)
    raise AttributeError(f'StyleConfig has no attribute {name!r}')

  def replace(self, **changes) -> 'StyleConfig':
    """A copy with whole groups replaced (flat legacy names also accepted)."""
    flat = {k: v for k, v in changes.items() if k not in GROUPS}
    groups = {k: v for k, v in changes.items() if k in GROUPS}
    merged = {name: groups.get(name, getattr(self, name)) for name in GROUPS}
    if flat:
      _check_flat(flat)
      _check_given_once(groups, flat)
      deprecated.warn_flat(flat)
      # On top of the groups given here (a given group was replaced whole by self's before).
      merged |= deprecated.split_flat(types.SimpleNamespace(**merged), flat, GROUPS)
    return StyleConfig(**merged)

  @property
  def style_paths(self) -> tuple[str, ...]:  # a shortcut, not deprecated
    return self.inputs.style_paths


def as_style_config(config, argument: str) -> StyleConfig:
  """`config` if it is a StyleConfig, else an ArgumentError naming how to build one.

  A group alone (a LossConfig) failed later as an AttributeError ('...
  has no attribute run'). `argument` is the caller's name for it.
  """
  if isinstance(config, StyleConfig):
    return config
  group = next((k for k, g in GROUPS.items() if isinstance(config, g)), None)
  fix = f'StyleConfig({group}={argument})' if group else 'StyleConfig(loss=nst_jax.LossConfig(...))'
  raise errors.ArgumentError(
    f'{argument} must be a StyleConfig, got a {type(config).__name__}; pass nst_jax.{fix}'
  )


def _check_flat(flat: dict) -> None:
  """Refuses a flat keyword that names no setting, naming the closest setting in its group.

  A group's field without a legacy flat name (tol) is named in its group:
  trial 19 was told the loss group for schedule.tol.
  """
  for name in flat:
    owners = [g for g, cls in GROUPS.items() if name in cls.__dataclass_fields__]
    if name not in deprecated.FLAT_FIELDS and name not in GROUPS and owners:
      ways = ' or '.join(
        f'StyleConfig({g}=nst_jax.{GROUPS[g].__name__}({name}=...)), or '
        f'config.replace({g}=config.{g}.replace({name}=...))'
        for g in owners
      )
      where = ' and '.join(f'{g}.{name}' for g in owners)
      raise errors.ArgumentError(f'StyleConfig got {name!r}, which is {where}: pass {ways}')

  def in_group(name: str) -> str:
    if name in GROUPS:
      return f'{name}=nst_jax.{GROUPS[name].__name__}(...)'
    group, field = deprecated.FLAT_FIELDS[name]
    return f'{group}=nst_jax.{GROUPS[group].__name__}({field}=...)'

  errors.unknown_keywords(
    'StyleConfig',
    flat,
    [*GROUPS, *deprecated.FLAT_FIELDS],
    suggest=in_group,
    otherwise='the settings are in groups: StyleConfig(loss=LossConfig(...), ...) (docs/api.md)',
  )


def as_setting(name: str) -> str | None:
  """How to pass `name` as a setting where a config is taken (`stylize`), or None if it is none."""
  owners = [g for g, cls in GROUPS.items() if name in cls.__dataclass_fields__]
  if not owners:
    return None
  group = GROUPS[owners[0]]
  return (
    f'it is a setting, {owners[0]}.{name}: pass config=nst_jax.StyleConfig({owners[0]}='
    f'nst_jax.{group.__name__}({name}=...))'
  )


def _check_given_once(groups: dict, flat: dict) -> None:
  """Refuses a flat name whose group, given too, holds another value (the flat one won, unsaid).

  A group given is the caller's word for each of its fields, its defaults
  included: a group cannot tell `ScheduleConfig(iterations=1000)` from
  `ScheduleConfig()`. The flat value is compared as the group would hold it
  (a list as its tuple, an int as its float).

  Args:
    groups: the groups passed, by name (None: not passed).
    flat: the flat names passed, all known (`_check_flat`).
  """
  for name, value in flat.items():
    group, field = deprecated.FLAT_FIELDS[name]
    if groups.get(group) is None:
      continue
    in_group = getattr(groups[group], field)
    if getattr(groups[group].replace(**{field: value}), field) != in_group:
      raise errors.ArgumentError(
        f'{name} is given twice, flat ({value!r}) and in {group}= ({in_group!r}); give '
        f'{group}.{field} only: StyleConfig({group}=nst_jax.{GROUPS[group].__name__}({field}=...))'
      )
