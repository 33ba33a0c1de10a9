"""One call of `Engine.run`: a group of same-shaped rows through the schedule's stages.

For each stage (coarse to fine) `GroupRun` resizes each row's inputs,
computes its targets, assembles the global arrays through the layout, takes
the compiled step from the runner's cache, restores checkpoints, and runs the
one loop with the hooks the caller asked for (nst_jax.engine.engine has the
Engine that owns the model, optimiser and params it uses).
"""

from collections.abc import Mapping
import dataclasses
import functools
from pathlib import Path
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import pixels
from nst_jax.core import step as core
from nst_jax.engine import compile_cache
from nst_jax.engine import distributed
from nst_jax.engine import hooks as hooks_lib
from nst_jax.engine import loop as loop_lib
from nst_jax.engine import rows as rows_lib
from nst_jax.engine import schedule as schedule_lib
from nst_jax.engine import sharding as sharding_lib
from nst_jax.engine import steps
from nst_jax.engine import tile_progress
from nst_jax.io import checkpoint as checkpoint_lib

# Jitted once here: a jax.jit made per call compiled it again every time.
_rows_finite = jax.jit(hooks_lib.rows_finite)


@dataclasses.dataclass
class Stage:
  """One stage of a group: its size and global targets, and per-row helpers."""

  index: int
  width: int
  height: int
  targets: Any
  settings: dict[int, dict]
  contents: dict[int, jax.Array]
  colors: dict[int, np.ndarray]


class GroupRun:
  """One call of `Engine.run`: the rows, and the state carried between stages."""

  def __init__(self, engine, rows, real, watch, record):
    """`engine`: the nst_jax.engine.engine.Engine; `watch`: its Watch of hooks."""
    self.e = engine
    self.layout = engine.layout
    self.saved_images: list = []  # what on_intermediate last wrote
    # The last checkpoint (iteration across scales) and when, from scale to scale.
    self.last_saved, self.t_saved = None, None
    self.rows = dict(rows)
    self.real = tuple(real)
    self.watch = watch
    self.record = record
    self.color = engine.cfg.color
    self.prepared = {r: rows_lib.prepare_colors(row, self.color) for r, row in self.rows.items()}
    first = next(iter(self.rows.values()))
    self.height, self.width = first.content.shape[:2]
    self.checkpoints = {
      r: Path(row.checkpoint)
      for r, row in self.rows.items()
      if row.checkpoint is not None and r in self.real
    }

  def run(self, resume) -> dict[int, np.ndarray]:
    """Every stage from `resume` (an engine.ResumePoint, or None: the first); {row: RGB}."""
    stages = schedule_lib.plan(self.width, self.e.cfg.schedule)
    if resume is not None and resume.scale >= len(stages):
      raise errors.NstError(
        f'cannot resume: the checkpoint is at scale {resume.scale + 1}, but this run has '
        f'{len(stages)} scales; rerun with the same inputs.width, schedule.scales and '
        'schedule.min_width'
      )
    monitor = self.watch.monitor
    if monitor is not None and self.watch.monitor_row in self.rows:
      monitor.begin(total=sum(s.iterations for s in stages), scales=len(stages))
    x, offset = None, 0
    for k, stage in enumerate(stages):
      if resume is not None and k < resume.scale:
        offset += stage.iterations
        continue
      st = self._stage(k, stage.width)
      if len(stages) > 1:
        logging.info(
          '%sscale %d/%d: %dx%d, up to %s',
          self.watch.prefix,
          k + 1,
          len(stages),
          st.width,
          st.height,
          errors.counted(stage.iterations, 'iteration'),
        )
      start = 0
      convergence = self._convergence()
      if resume is not None and k == resume.scale:
        self.last_saved = offset + resume.iteration  # what the checkpoints hold
        state = self._restore(st, convergence)
        if resume.iteration >= stage.iterations or convergence.all_converged():
          x, offset = state.image, offset + stage.iterations  # this stage is complete
          continue
        start = resume.iteration
      elif x is None:
        state = self._fresh_state(st)
      else:
        state = self._init_from(self._resize(x, st), st)
      x = self._optimise(st, state, start, stage.iterations, offset, len(stages), convergence)
      offset += stage.iterations
    final = self.layout.host_rows(x)
    keep_chroma = self.color.preserve_colors in ('luminance', 'postprocess')
    return {
      r: self.e.to_rgb(final[r], self.rows[r].content if keep_chroma else None) for r in self.rows
    }

  # Inputs of a stage.

  def _stage(self, k: int, width: int) -> Stage:
    ratio = width / self.width
    hk, wk = rows_lib.scaled(self.height, self.width, ratio)
    targets, settings, contents = {}, {}, {}
    for r, row in self.prepared.items():
      targets[r], settings[r], contents[r] = self._row_targets(row, hk, wk, ratio, k)
    example = next(iter(targets.values()))
    leaves = {r: jax.tree.leaves(t) for r, t in targets.items()}
    n = self.layout.n_rows
    global_targets = jax.tree.unflatten(
      jax.tree.structure(example),
      [
        self.layout.assemble(
          (n, *np.shape(leaf)),
          self.layout.rows_sharding(np.ndim(leaf) + 1),
          lambda r, i=i: leaves[r][i],
        )
        for i, leaf in enumerate(jax.tree.leaves(example))
      ],
    )
    colors = {}
    if self.color.preserve_colors in ('luminance', 'postprocess'):
      colors = {r: rows_lib.resize(row.content, hk, wk) for r, row in self.rows.items()}
    return Stage(k, wk, hk, global_targets, settings, contents, colors)

  def _stage_inputs(self, row: rows_lib.Row, h: int, w: int, ratio: float):
    return rows_lib.stage_inputs(row, h, w, ratio, self.e.convention)

  def _row_targets(self, row: rows_lib.Row, h: int, w: int, ratio: float, k: int):
    """(one row's targets without the batch axis, its checkpoint settings, its content)."""
    e = self.e
    content, styles, cmask, smasks = self._stage_inputs(row, h, w, ratio)
    blend = None if smasks is not None else e.cfg.inputs.blend_weights(len(styles))
    extra = row.extra(w, h) if callable(row.extra) else row.extra
    loss = e.cfg.loss
    # A row's own weights (a batch job's) win over the config's.
    cw, sw, tv = (
      getattr(loss, name) if getattr(row, name) is None else getattr(row, name)
      for name in ('content_weight', 'style_weight', 'tv_weight')
    )
    targets = e.targets_fn(
      e.w.params,
      content,
      styles,
      content_weight=cw,
      style_weight=sw,
      tv_weight=tv,
      blend_weights=blend,
      content_mask=None if cmask is None else cmask[None],
      style_masks=None if smasks is None else smasks[None],
      extra=None if extra is None else jax.tree.map(lambda x: jnp.asarray(x)[None], extra),
    )
    host = jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(targets))
    settings = None if row.checkpoint is None else checkpoint_lib.trajectory_settings(
      e.cfg,
      weights_hash=e.w.info.params_sha256,
      content=np.asarray(content),
      style=[np.asarray(s) for s in styles],
      masks=[m for m in (cmask, smasks) if m is not None],
      scale=k,
      term_weights=(row.content_weight, row.style_weight, row.tv_weight),
      init=row.init_rgb,  # every scale's: it decides their start too (trial 18)
      loss_fn=e.loss_identity(host, (h, w)),
    )  # fmt: skip
    return host, settings, content

  # States.

  def _image_array(self, per_row: Mapping[int, np.ndarray], st: Stage) -> jax.Array:
    shape = (self.layout.n_rows, st.height, st.width, 3)
    return self.layout.assemble(shape, self.layout.image_sharding(shape), lambda r: per_row[r])

  def _state_shardings(self, st: Stage):
    image = jax.ShapeDtypeStruct((self.layout.n_rows, st.height, st.width, 3), jnp.float32)
    init = functools.partial(core.init_state, optimizer=self.e.optimizer)
    shapes = jax.eval_shape(init, image)
    return shapes, jax.tree.map(
      lambda s: self.layout.leaf_sharding(s.shape, st.height, st.width), shapes
    )

  def _init_from(self, image: jax.Array, st: Stage):
    _, shardings = self._state_shardings(st)
    init = functools.partial(core.init_state, optimizer=self.e.optimizer)
    return jax.jit(init, out_shardings=shardings)(image)

  def _resize(self, x: jax.Array, st: Stage) -> jax.Array:
    _, shardings = self._state_shardings(st)
    resize = jax.jit(lambda x: pixels.resize(x, st.height, st.width), out_shardings=shardings.image)
    return resize(x)

  def _fresh_state(self, st: Stage):
    e, i = self.e, self.e.cfg.inputs
    first = {}
    for r, row in self.prepared.items():
      # A row's own start image (a video frame's warped predecessor) wins.
      init = 'image' if row.init_rgb is not None else i.init
      x = core.initial_image(
        st.contents[r], init=init, seed=i.seed, convention=e.convention, image=row.init_rgb
      )
      first[r] = np.asarray(x[0])
    return self._init_from(self._image_array(first, st), st)

  def _convergence(self) -> schedule_lib.Convergence:
    sched = self.e.cfg.schedule
    return schedule_lib.Convergence(sched.tol, sched.window, self.real, self.layout.n_rows)

  def _restore(self, st: Stage, convergence: schedule_lib.Convergence):
    """The state from the rows' checkpoints; fillers start afresh at this stage.

    Each row's convergence history is restored too, on every process (the
    test decides for all rows alike).
    """
    shapes, shardings = self._state_shardings(st)
    like = jax.tree.map(lambda s: np.zeros(s.shape[1:], s.dtype), shapes)
    fresh, per_row = None, {}
    window = convergence.window + 1
    history = {r: np.full(window + 2, np.nan, np.float64) for r in self.rows}
    for r in self.rows:
      if r in self.checkpoints:
        state, _ = checkpoint_lib.restore(self.checkpoints[r], like=like, settings=st.settings[r])
        per_row[r] = jax.tree.leaves(state)
        extra = checkpoint_lib.extra(checkpoint_lib.read(self.checkpoints[r]))
        history[r] = schedule_lib.Convergence.saved(extra, window)
        if self.watch.history is not None:  # the record's entries up to the checkpoint
          self.watch.history.restore(r, extra.get('history'))
      else:
        if fresh is None:
          fresh = self._row_states(self._fresh_state(st))
        per_row[r] = jax.tree.leaves(fresh[r])
    leaves = [
      self.layout.assemble(s.shape, sh, lambda r, i=i: per_row[r][i])
      for i, (s, sh) in enumerate(
        zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings), strict=True)
      )
    ]
    table = self.layout.gather(
      self.layout.assemble(
        (self.layout.n_rows, window + 2), self.layout.rows_sharding(2), lambda r: history[r]
      )
    )
    for r in self.real:
      row = np.asarray(table[r])
      convergence.restore(r, row[2 : 2 + int(row[1])], bool(row[0]))
    return jax.tree.unflatten(jax.tree.structure(shapes), leaves)

  def _row_states(self, state) -> dict[int, Any]:
    """Row -> that row's state (host arrays), for this process's rows."""
    per_leaf = [self.layout.host_rows(leaf) for leaf in jax.tree.leaves(state)]
    treedef = jax.tree.structure(state)
    return {r: jax.tree.unflatten(treedef, [leaf[r] for leaf in per_leaf]) for r in per_leaf[0]}

  def _finite(self, image: jax.Array) -> np.ndarray:
    return np.asarray(self.layout.gather(_rows_finite(image)))

  # The loop.

  def _compiled(self, st: Stage, state, *, first: bool = False):
    e = self.e
    _, state_sh = self._state_shardings(st)
    return steps.compile_step(
      model=e.model,
      optimizer=e.optimizer,
      loss_spec=tile_progress.spec_for(e.cfg.loss.spec, st.height, st.width, self.layout),
      loss_fn=e.loss_fn,
      layout=self.layout,
      state_sharding=state_sh,
      args=(state, e.params, st.targets, self._active(np.ones(1, bool))),
      key=e.optimizer_key,
      loss_key=e.loss_key(st.targets, (st.height, st.width), batched=True),
      cache=e.compile_cache,
      first=first,
    )

  def _active(self, active: np.ndarray) -> jax.Array:
    """[N] bools on the rows' devices (a 1-element input means every row active)."""
    n = self.layout.n_rows
    flags = np.broadcast_to(active, (n,))
    return self.layout.assemble((n,), self.layout.rows_sharding(1), lambda r: flags[r])

  def _read_every(self) -> int:
    platform = next(iter(self.layout.params_sharding().device_set)).platform
    return schedule_lib.read_every(self.e.cfg.schedule.read_every, platform)

  def _hooks(self, st: Stage, convergence) -> tuple[list, hooks_lib.Checkpoints]:
    watch = self.watch
    checkpoints = hooks_lib.Checkpoints(
      self.checkpoints,
      every=watch.checkpoint_every,
      settings=st.settings,
      finite=self._finite,
      row_states=self._row_states,
      extra=convergence.state,
      history=watch.history,
      iterations=self.e.cfg.schedule.iterations,
      seconds=watch.checkpoint_seconds,
      last_saved=self.last_saved,
      t_saved=self.t_saved,
      resume_as=watch.resume_as,
    )
    progress = hooks_lib.make_progress(watch.progress, watch.print_iter, watch.prefix)
    hooks = [tile_progress.around(progress, self.e.cfg.loss.spec, st.height, st.width, self.layout)]
    if watch.history is not None:
      hooks.append(watch.history)
    hooks.append(checkpoints)
    if watch.on_intermediate is not None:

      def save(it, images):
        rgb = {r: self.e.to_rgb(x, st.colors.get(r)) for r, x in images.items() if r in self.real}
        # What the callback wrote (a list of paths, or None): the message of a
        # stop names only images that were saved.
        self.saved_images = list(watch.on_intermediate(it, rgb) or [])

      hooks.append(hooks_lib.Intermediates(watch.save_iter, save))
    if watch.monitor is not None and watch.monitor_row in self.rows:
      hooks.append(
        hooks_lib.Monitor(
          watch.monitor, watch.monitor_row, lambda x, r: self.e.to_rgb(x, st.colors.get(r))
        )
      )
    return hooks, checkpoints

  def _stage_record(self, st, result, start, total, compile_s, run_s, compiled) -> dict:
    """What the run record says about one stage."""
    return {
      'width': st.width,
      'height': st.height,
      # Done at this stage in all (before a resume too); this call began at 'start'.
      'iterations': result.iteration,
      'start': start,
      'budget': total,
      'stopped': 'should_stop' if result.signum == loop_lib.ASKED else result.reason,
      'compile_s': compile_s,
      'compile_reused': compile_s == 0.0,
      'compile_from_disk': self.from_disk,
      'run_s': run_s,
      'image_shards': [
        (shard.device.id, tuple(shard.data.shape))
        for shard in result.state.image.addressable_shards
      ],
      **sharding_lib.describe(compiled),
    }

  def _optimise(self, st: Stage, state, start, total, offset, scales, convergence):
    hits = compile_cache.hits()
    # One program for every iteration: `Step.first`, whose backtracking (for
    # L-BFGS) runs at an optimiser's first iteration only and is skipped
    # after, at the cost of a loop test. Compiling `Step.update` as well, for
    # one forward and backward pass without that test, would double every
    # run's compile time (research code differentiating through steps uses
    # `update`; the engine need not).
    compiled, compile_s = self._compiled(st, state, first=True)
    # Served from disk: the persistent cache's hits grew during the compile.
    self.from_disk = compile_s > 0 and compile_cache.hits() > hits
    if self.from_disk:
      logging.info('Loaded the compiled step from the compilation cache in %.1f s.', compile_s)
    info = loop_lib.LoopInfo(
      start=start, total=total, scale=st.index, scales=scales, offset=offset, rows=self.real
    )
    hooks, checkpoints = self._hooks(st, convergence)
    active = [self._active(convergence.active)]

    def step(state, params, targets):
      held = convergence.newly_held()
      if held is not None:  # a row converged: hold it from now on
        active[0] = self._active(held)
      return compiled(state, params, targets, active[0])

    # The result's own losses: the step again with every row held (no
    # update, no other program to compile).
    held = self._active(np.zeros(1, bool))
    score = lambda state: compiled(state, self.e.params, st.targets, held)  # noqa: E731

    t0 = time.perf_counter()
    try:
      result = loop_lib.run_loop(
        step,
        state,
        self.e.params,
        st.targets,
        info=info,
        hooks=hooks,
        should_stop=self.watch.should_stop,
        converged=convergence,
        sync=self.layout.sync,
        sync_every=self._read_every(),
        # Reads for the log, the record and the checkpoints (by time: at a sync, hooks.Checkpoints).
        sync_also=(
          self.watch.print_iter,
          self.watch.checkpoint_every,
          hooks_lib.Checkpoints.SYNC_EVERY if self.watch.checkpoint_seconds else 0,
        ),
        local_rows=self.layout.host_rows,
        agree=distributed.agree if jax.process_count() > 1 else loop_lib.raise_own,
        score=score,
      )
    except errors.NonFinite as err:
      raise checkpoints.non_finite(err.iteration) from None
    except Exception as err:
      # A hook's failure (an unwritable image, a callback), agreed: the checkpoints were saved.
      kept = checkpoints.kept()
      if kept and isinstance(err, errors.NstError) and len(err.args) == 1:
        err.args = (f'{err}; {kept}',)
      elif kept:  # not ours to reword (trial 17: a callback's error said nothing of it)
        err.add_note(kept)
      raise
    finally:
      self.last_saved, self.t_saved = checkpoints.last_saved, checkpoints.t_saved
    if self.record is not None:
      self.record.setdefault('scales', []).append(
        self._stage_record(st, result, start, total, compile_s, time.perf_counter() - t0, compiled)
      )
    if result.reason == 'signal':
      # Only what was written is named, and resuming is offered only from a
      # checkpoint that holds a state (an array run without one saved nothing).
      images = ', '.join(str(p) for p in self.saved_images)
      said = '; '.join(x for x in (images and f'saved {images}', checkpoints.kept()) if x)
      asked = result.signum == loop_lib.ASKED
      by = 'stopped by should_stop' if asked else f'interrupted by signal {result.signum}'
      raise errors.Interrupted(
        f'{by} after iteration {offset + result.iteration}; {said or "nothing was saved"}',
        None if asked else result.signum,
      )
    return result.state.image
