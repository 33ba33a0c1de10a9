"""The engine: a batch of same-shaped images, from arrays to results, on any layout.

Every run comes through `run_group`: a single image (one row on one
device), a batch of jobs (rows over every device of every process), one
image split over devices (spatial), and the frames of a video pass. For each
stage of the schedule (coarse to fine) it resizes each row's inputs,
computes the row's targets, assembles the global arrays through the layout,
takes the compiled step (from a cache), and runs the one loop with the hooks
the caller asked for. Rows are independent problems: a row's result does not
depend on the others in its batch.

Colour controls are applied per row before (luminance, histogram matching)
and after (chroma) the optimisation.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
from pathlib import Path
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core import color
from nst_jax.core import host_state
from nst_jax.core import objective
from nst_jax.core import optim as optim_lib
from nst_jax.core import pixels
from nst_jax.core import step as core
from nst_jax.core import step_checks
from nst_jax.engine import group
from nst_jax.engine import hooks as hooks_lib
from nst_jax.engine import rows as rows_lib
from nst_jax.engine import schedule as schedule_lib
from nst_jax.engine import sharding as sharding_lib
from nst_jax.engine import steps
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import weights as weights_lib

# Said on a resume whose loss_fn calls Python on the host and declares no identity (docs/api.md).
HOST_STATE_RESUMED = (
  'resuming with loss_fn %s, which calls Python on the host: its state was compared only as far '
  "as docs/api.md's description reaches (a change beyond it, in an object a helper is passed, "
  "say, resumes unsaid); set loss_fn.nst_jax_identity = 'my-loss-v1' to answer for it yourself"
)


@dataclasses.dataclass
class Watch:
  """What the caller wants done while the loop runs (the hooks).

  Attributes:
    progress: 'bar', 'log' or 'auto'.
    print_iter: log and record every this many iterations.
    prefix: prepended to log lines ('process K: ').
    checkpoint_every: save the rows' checkpoints every this many iterations.
    checkpoint_seconds: and when this many seconds have passed since the
      last save (0: off).
    save_iter: call `on_intermediate` every this many iterations.
    on_intermediate: (iteration across scales, {row: RGB}) -> the paths it wrote
      (or None); a stop by signal names them.
    monitor: a live view (nst_jax.engine.preview.Preview) shown `monitor_row`.
    should_stop: a signal number to stop on, or None (agreed across processes).
    history: per-row loss history for the record (filled in).
    resume_as: how a stop's message says to resume ('run.resume', which the
      command line spells --resume; stylize: 'config.run.resume=True').
  """

  progress: str = 'log'
  print_iter: int = 50
  prefix: str = ''
  checkpoint_every: int = 0
  checkpoint_seconds: float = 0.0
  save_iter: int = 0
  on_intermediate: Callable[[int, dict[int, np.ndarray]], Any] | None = None
  monitor: Any = None
  monitor_row: int = 0
  should_stop: Callable[[], int | None] | None = None
  history: hooks_lib.History | None = None
  resume_as: str = 'run.resume'

  @classmethod
  def of_run(cls, run, **kwargs) -> 'Watch':
    """The hooks a RunConfig asks for (progress, print_iter, checkpoints), plus `kwargs`."""
    # The folder too: a resume without it found no checkpoint, and started over (trial 28).
    where = f' and run.checkpoint_dir {run.checkpoint_dir}' if run.checkpoint_dir else ''
    kwargs.setdefault('resume_as', f'run.resume{where}')
    return cls(
      progress=run.progress,
      print_iter=run.print_iter,
      checkpoint_every=run.checkpoint_every,
      checkpoint_seconds=run.checkpoint_seconds,
      **kwargs,
    )


@dataclasses.dataclass(frozen=True)
class ResumePoint:
  """Where the rows of a group continue: the stage index and the iterations done there.

  Each row's convergence history comes from its own checkpoint.
  """

  scale: int
  iteration: int


def resume_point(
  path: Path | None, stages: Sequence[schedule_lib.Stage] | None = None
) -> ResumePoint | None:
  """A row's resume point from its checkpoint (None: no checkpoint).

  Args:
    path: the row's checkpoint.
    stages: the resumed run's stages (`schedule.plan`): a checkpoint that
      holds more iterations than they allow is refused (`check_budget`).
  """
  if path is None or not Path(path).exists():
    return None
  payload = checkpoint_lib.read(path)
  point = ResumePoint(int(payload.get('scale', 0)), int(payload['iteration']))
  if stages is not None:
    check_budget(path, payload, point, stages)
  return point


def check_budget(path, payload: dict, point: ResumePoint, stages) -> None:
  """Refuses to resume a checkpoint past what `stages` (schedule.iterations) allow.

  Such a run would end at once with the checkpoint's image, its record
  empty, and the unfinished checkpoint deleted. A checkpoint at exactly the
  run's end (kept with run.keep_checkpoint) gives its result again. With
  several scales schedule.iterations must be the checkpoint's: the scales
  split it, and the earlier ones ran with their shares.

  Raises:
    ResumeMismatch: another number of scales (setting 'schedule.scales'), or
      naming the iterations the checkpoint holds, of how many, and
      schedule.iterations (setting 'schedule.iterations').
  """
  now = sum(s.iterations for s in stages)
  extra = checkpoint_lib.extra(payload)
  scales = int(payload.get('scales', 1))
  if scales != len(
    stages
  ):  # first: the iterations' checks below blamed schedule.iterations (trial 17)
    raise errors.ResumeMismatch(
      f'cannot resume from {path}: schedule.scales differs (checkpoint {scales}, now '
      f'{len(stages)}); resume with the same settings, or without run.resume and another '
      'save.path to start over',
      path=str(path),
      setting='schedule.scales',
      saved=str(scales),
      now=str(len(stages)),
    )
  # Checkpoints written before 2026-12-06 lack the run's iterations and the scale's
  # offset; with one scale they are the scale's own.
  was = extra.get('iterations', payload['total'] if scales == 1 else None)
  offset = extra.get('offset', 0 if point.scale == 0 else None)
  done = None if offset is None else offset + point.iteration
  if done is not None and done > now:
    held = f'{done} of {was} iterations' if was is not None else f'{done} iterations'
    held += f', more than schedule.iterations {now}'
    again = was if was is not None else done
  elif point.scale >= len(stages) or point.iteration > stages[point.scale].iterations:
    gives = stages[point.scale].iterations if point.scale < len(stages) else 0
    held = (
      f'{point.iteration} iterations of scale {point.scale + 1}, more than the {gives} '
      f'schedule.iterations {now} gives that scale'
    )
    again = was if was is not None else payload['total'] * scales
  elif len(stages) > 1 and (
    payload['total'] != stages[point.scale].iterations
    or (offset is not None and offset != sum(s.iterations for s in stages[: point.scale]))
  ):
    # The scales split -i: another -i moves the earlier scales' shares, which
    # ran already (6 -> 10 over 2 scales ran 3 + 5 and labelled 8 updates 10).
    saved = str(was) if was is not None else f'{payload["total"]} at scale {point.scale + 1}'
    raise errors.ResumeMismatch(
      f'cannot resume from {path}: schedule.iterations differs (checkpoint {saved}, now {now}); '
      f'{len(stages)} scales share it, so a resume keeps it: rerun with the same settings, or '
      'without run.resume and another save.path to start over',
      path=str(path),
      setting='schedule.iterations',
      saved=saved,
      now=str(now),
    )
  else:
    return
  more = ' (or more)' if len(stages) == 1 else ''  # several scales split it: exactly (trial 26)
  raise errors.ResumeMismatch(
    f'cannot resume from {path}: it holds {held}; resume with schedule.iterations {again}{more}, '
    'or without run.resume and another save.path to start over',
    path=str(path),
    setting='schedule.iterations',
    saved=str(again),
    now=str(now),
    held=held,
  )


class Engine:
  """Runs groups of rows through the schedule (see the module docstring).

  Args:
    config: the settings (model, loss, optimiser, schedule, colours; the
      input paths are not read).
    weights: loaded weights.
    layout: where the rows live (nst_jax.engine.sharding).
    loss_fn: the per-image loss (nst_jax.core.objective.objective by default).
    compile_cache: where compiled steps are kept for reuse (the runner's;
      None: compile afresh).
  """

  def __init__(
    self,
    config: config_lib.StyleConfig,
    weights: weights_lib.Weights,
    layout: sharding_lib.Layout,
    *,
    loss_fn: core.LossFn = objective.objective,
    compile_cache: steps.CompiledSteps | None = None,
  ):
    self.cfg = config
    self.w = weights
    self.layout = layout
    self.loss_fn = loss_fn
    step_checks.declared_identity(loss_fn)  # a bad one before any work
    self._loss_identities: dict = {}  # loss_identity's, by the shapes traced
    self._resuming = self._told_host_state = False
    self.compile_cache = compile_cache
    self.convention = weights.info.input_convention
    m = config.model
    self.model = core.make_model(m.pooling, dtype=m.dtype, precision=m.precision)
    o = config.optim
    built = {**optim_lib.config_arguments(o), 'convention': self.convention}
    self.optimizer = core.make_optimizer(o.name, **built)
    # The compile cache's key: what the optimiser was built from.
    self.optimizer_key = (o.name, *sorted(built.items()))
    # Only the convolutions this run reaches: on many devices every leaf is
    # replicated, and conv5_2 onward would add 170 MB per device for nothing.
    params = core.prepare_params(
      weights.params,
      config.loss.spec.feature_layers,
      backend=next(iter(layout.params_sharding().device_set)).platform,
    )
    self.params = jax.device_put(params, jax.tree.map(lambda _: layout.params_sharding(), params))
    # The style targets' Grams at the precision of the step's own.
    self.targets_fn = jax.jit(
      steps.at_precision(
        functools.partial(objective.make_targets, model=self.model, loss_spec=config.loss.spec),
        self.model.precision,
      ),
      static_argnames=('blend_weights',),
    )

  def loss_identity(self, targets: Any, shape: tuple[int, int], *, batched=False) -> str | None:
    """A custom loss_fn's identity at one image's `targets` (arrays or shapes) and `shape`.

    `batched`: the targets have the rows' leading axis (a stage's), left out.

    What its checkpoints name (trial 33: keyed by the object, a changed field
    reused the old program); None for the default objective (older
    checkpoints hold none). step_checks.loss_fn_identity, or the identity
    its `nst_jax_identity` attribute declares (step_checks.declared_identity).
    """
    identity, _, hosts = self._traced(targets, shape, batched)
    declared = step_checks.declared_identity(self.loss_fn)
    if declared is None and hosts and self._resuming and not self._told_host_state:
      # Python state is open-ended: no description reaches all of it (trials 40-52 each found
      # more), so a resume that compared only what it reaches says so.
      self._told_host_state = True
      logging.warning(HOST_STATE_RESUMED, identity.split(' ')[0])
    # Declared, the function's name is no part of it (trial 48 F9: one renamed was refused).
    return identity if declared is None else f'loss_fn {declared}'

  def loss_key(self, targets: Any, shape: tuple[int, int], *, batched=False) -> Any:
    """The compile cache's key for the loss_fn: its identity, and its host callbacks' code and
    the objects they read where it has any (host_state.key; trial 40: Python state beyond what
    the identity describes made two loss_fns one program, the first's callback in the second's
    run)."""
    identity, callbacks, _ = self._traced(targets, shape, batched)
    return (identity, *callbacks) if callbacks else identity

  def _traced(self, targets: Any, shape: tuple[int, int], batched: bool) -> tuple:
    if self.loss_fn is objective.objective:
      return None, (), ()
    if batched:
      targets = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), targets)
    leaves = jax.tree.leaves(targets)
    key = (shape, jax.tree.structure(targets), tuple((np.shape(x), x.dtype) for x in leaves))
    if key not in self._loss_identities:
      callbacks: list = []
      hosts: list = []
      identity = step_checks.loss_fn_identity(
        self.loss_fn, model=self.model, loss_spec=self.cfg.loss.spec, params=self.params,
        targets=targets, shape=shape, callbacks=callbacks, host_callbacks=hosts,
      )  # fmt: skip
      self._loss_identities[key] = identity, tuple(map(host_state.key, callbacks)), tuple(hosts)
    return self._loss_identities[key]

  def to_rgb(self, x: np.ndarray, colors: np.ndarray | None) -> np.ndarray:
    """A network-space image [H, W, 3] -> RGB as saved (clipped, chroma put back)."""
    rgb = jnp.clip(pixels.deprocess(jnp.asarray(x)[None], self.convention), 0.0, 1.0)
    if colors is not None:
      rgb = color.transfer_chroma(rgb, jnp.asarray(colors)[None])
    return np.asarray(rgb[0])

  def run(
    self,
    rows: Mapping[int, rows_lib.Row],
    *,
    real: Sequence[int],
    watch: Watch | None = None,
    resume: ResumePoint | None = None,
    record: dict | None = None,
  ) -> dict[int, np.ndarray]:
    """Optimises the rows through every stage; returns {row: RGB [H, W, 3]} for local rows.

    Args:
      rows: this process's rows (global index -> Row), all of one shape.
      real: the global indices of rows that are real jobs (not fillers).
      watch: the hooks wanted (default: log lines only).
      resume: where to continue (from the rows' checkpoints), or None.
      record: a dict that gets 'scales': one entry per stage run.

    Raises:
      Interrupted: a signal stopped the run (after saving).
      NonFinite: the loss became NaN or infinite.
    """
    if not rows:
      raise ValueError('a group needs at least one row on every process')
    self._resuming = resume is not None
    return group.GroupRun(self, rows, real, watch or Watch(), record).run(resume)
