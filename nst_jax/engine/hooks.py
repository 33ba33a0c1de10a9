"""Hooks of the optimisation loop: progress, checkpoints, images, preview, record.

Each is a `nst_jax.engine.loop.Hook`; the engine picks the ones a run needs. They
work per row of the batch, so a single image (row 0), a batch of jobs and a
multi-host batch (each process its own rows) use the same hooks.
"""

from collections.abc import Callable, Mapping
from pathlib import Path
import sys
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from nst_jax import errors
from nst_jax.engine.loop import Hook
from nst_jax.engine.loop import LoopInfo
from nst_jax.engine.loop import StepView
from nst_jax.engine.loop import is_time
from nst_jax.io import checkpoint as checkpoint_lib


def _scale_label(info: LoopInfo) -> str:
  return f'scale {info.scale + 1}/{info.scales}' if info.scales > 1 else ''


class LogProgress(Hook):
  """A log line every `print_iter` iterations and at the last (pipes, log files)."""

  def __init__(self, print_iter: int, prefix: str = ''):
    self.print_iter = print_iter
    self.prefix = prefix

  def begin(self, info: LoopInfo) -> None:
    label = _scale_label(info)
    self.head = self.prefix + (f'{label}  ' if label else '')
    self.jobs = f'  {len(info.rows)} jobs' if len(info.rows) > 1 else ''
    self.total = info.total
    self.logged = None  # the iteration of this loop's last line

  def after_step(self, view: StepView) -> None:
    # The step's losses are its input image's, one update behind: they are
    # logged under the iteration they belong to, as the record's history
    # files them ('iteration 1 ... content 0' was the untouched start, trial 16).
    before = view.iteration - 1
    if view.last:
      view.rate  # noqa: B018 (measured now: `end` comes after the final scoring)
    if before >= 1 and is_time(before, self.print_iter, self.total):
      self._log(view, view.mean_losses(), before)

  def end(self, view: StepView | None) -> None:
    # The last line is the image after the last update, scored after the loop
    # (trial 14: it named the image after n-1 updates while Done named the result).
    if view is None or not view.last:
      return
    final = view.mean_final()
    if final is not None:
      self._log(view, final, view.iteration)
    elif view.iteration - 1 != self.logged:
      # Stopped, so never scored: the image's before the last update, as the
      # record's last entry (trials 17, 19: a scale's start had no line).
      self._log(view, view.mean_losses(), view.iteration - 1)

  def _log(self, view: StepView, losses: dict[str, float], iteration: int) -> None:
    self.logged = iteration
    left = self.total - iteration
    logging.info(
      '%siteration %d/%d%s  loss %.5g  content %.5g  style %.5g  tv %.5g  %.2f it/s  ETA %.0f s',
      self.head,
      iteration,
      self.total,
      self.jobs,
      losses['total'],
      losses['content'],
      losses['style'],
      losses['tv'],
      view.rate,
      left / view.rate if view.rate > 0 else 0.0,
    )


class BarProgress(Hook):
  """A tqdm bar on stderr: iteration, (mean) total loss, iterations per second, ETA.

  It moves every iteration and shows the loss the loop's last sync read
  (it never asks the devices itself: in a multi-process run only process 0
  has a bar, and a read of its own would be a collective the others never
  join).
  """

  def __init__(self, file=None):
    self.file = file
    self.bar = None

  def begin(self, info: LoopInfo) -> None:
    import tqdm  # only for terminals

    self.bar = tqdm.tqdm(
      total=info.total,
      initial=info.start,
      desc=_scale_label(info) or 'nst-jax',
      unit='it',
      dynamic_ncols=True,
      file=self.file,
    )

  def after_step(self, view: StepView) -> None:
    if view.synced:
      self.bar.set_postfix(loss=f'{view.mean_losses()["total"]:.4g}', refresh=False)
    self.bar.update(view.iteration - self.bar.n)

  def end(self, view: StepView | None) -> None:
    if self.bar is not None:
      final = view.mean_final() if view is not None else None
      if final is not None:  # the result's, as LogProgress's last line
        self.bar.set_postfix(loss=f'{final["total"]:.4g}', refresh=False)
      self.bar.close()
      self.bar = None


def make_progress(mode: str, print_iter: int, prefix: str = '') -> Hook:
  """mode 'bar', 'log', or 'auto' (a bar when stderr is a terminal)."""
  if mode == 'auto':
    mode = 'bar' if sys.stderr.isatty() else 'log'
  return BarProgress() if mode == 'bar' else LogProgress(print_iter, prefix)


class History(Hook):
  """Per-row loss history for the run record.

  The entry of iteration k holds the losses of the image after k updates
  (k numbered across scales): a scale's start image (k = its first
  iteration - 1, 0 for a fresh run), every `print_iter` updates, and the
  final image (`StepView.final`, when the loop scored it), or after a stop
  before a scale's last iteration the image it last scored (k = the stop's
  iteration - 1, as the log's last line: trial 18). A step returns the
  losses of the image it was given, so the losses read at iteration c are
  entry c - 1's. At a scale's boundary two entries share k: the previous
  scale's result and the next scale's start (resized, with that scale's
  targets); 'scale' tells them apart.

  A resumed run starts from the entries its checkpoint kept (`restore`:
  those before the checkpoint's iteration, and a finished scale's result),
  and adds its own start entry only where an uninterrupted run has one (a
  multiple of `print_iter`), so its history equals the uninterrupted run's
  (the entries before the resume keep that run's 'time_s'). A stop's entry
  is the record's alone: checkpoints keep `kept`, as uninterrupted runs.

  Attributes:
    history: row -> list of {'scale', 'iteration' (updates done, across
      scales), 'time_s' (since `t0`, when read), and every loss term}.
  """

  def __init__(self, print_iter: int, rows, t0: float | None = None):
    self.print_iter = print_iter
    self.t0 = time.perf_counter() if t0 is None else t0
    self.history: dict[int, list[dict[str, Any]]] = {r: [] for r in rows}
    self.stop_entry = False  # the last entries are a stop's

  def kept(self, row: int) -> list[dict[str, Any]]:
    """Row `row`'s entries for its checkpoint: all but a stop's."""
    entries = self.history[row]
    return list(entries[:-1] if self.stop_entry else entries)

  def begin(self, info: LoopInfo) -> None:
    self.info = info

  def restore(self, row: int, entries) -> None:
    """Row `row`'s entries from its checkpoint (`Checkpoints` keeps them; older ones have none)."""
    if row in self.history and entries:
      self.history[row] = [dict(e) for e in entries]

  def _add(self, done: int, losses: dict[str, np.ndarray]) -> bool:
    """Adds iteration `done`'s entries; False if they were there (a kept result, a logged stop)."""
    added = False
    for r, entries in self.history.items():
      if entries and (entries[-1]['scale'], entries[-1]['iteration']) == (
        self.info.scale,
        self.info.offset + done,
      ):
        continue  # a kept run's result, extended: its entry is the checkpoint's
      added = True
      entries.append(
        {
          'scale': self.info.scale,
          'iteration': self.info.offset + done,
          'time_s': time.perf_counter() - self.t0,
          **{k: float(v[r]) for k, v in losses.items()},
        }
      )
    return added

  def after_step(self, view: StepView) -> None:
    if not view.synced:
      return
    for c, losses in view.history():  # every iteration this sync read
      done = c - 1
      # A resumed scale (start > 0) gets no start entry of its own: an
      # uninterrupted run has none there unless print_iter says so.
      first = done == self.info.start == 0
      if first or (self.print_iter > 0 and done % self.print_iter == 0):
        self._add(done, losses)

  def end(self, view: StepView | None) -> None:
    if view is None or not view.last:
      return
    if view.final is not None:
      self._add(view.iteration, view.final)
    elif view.synced:  # stopped: the losses read last are the image's before the stop's update
      self.stop_entry = self._add(view.iteration - 1, view.history()[-1][1])


class Checkpoints(Hook):
  """Saves each local row's state to its own checkpoint, in the background.

  Every `every` iterations, at the first sync of the loop (`StepView.synced`)
  after `seconds` have passed since the last save, at the last iteration of
  a scale, and when a signal or a failure stops the run. The time test
  rides in the loop's sync (`save_due`, agreed with the losses), so every
  process saves at the same iteration with no collective of its own. The
  images must be finite (checked across every process alike), so a good
  checkpoint is never replaced by a broken one. The state is copied to the
  host at once (the step donates it); serialising and writing it run on a
  `checkpoint_lib.Writer` thread while the next iterations go on, and `end`
  waits for the write, so a stage (or a stop by signal) ends with its
  checkpoint whole on disk.

  A run of several scales makes one of these per scale and hands the
  previous one's `last_saved` and `t_saved` to the next, so the time test
  and the messages count from the last save, not from the scale's start.

  Each row's checkpoint keeps in its `extra`, beside the convergence
  history, the run's `iterations` (over all scales), the scale's `offset`
  and the row's record `history` (a `History`'s entries), so a resumed run
  knows how far the checkpoint went and records the whole run. At a
  scale's last iteration the write waits for `end`, after the loop scored
  the result, so the history holds the result's entry.

  Attributes:
    last_saved: the last iteration (numbered across scales) whose checkpoint
      is written (or being written, by the time anyone reads it after
      `end`), or None.
    last_tried: the last iteration (across scales) this one began to save,
      or None: after a failed write it is ahead of `last_saved`.
    t_saved: when the last save began (`clock`), or None before the first
      scale begins.
  """

  # A checkpoint by time waits for a sync (its convergence history must be
  # current); with `seconds` set the engine makes at least every this many
  # iterations one, whatever --read_every is.
  SYNC_EVERY = 10

  def __init__(
    self,
    paths: Mapping[int, Path],
    *,
    every: int,
    settings: Mapping[int, dict],
    finite: Callable[[Any], np.ndarray],
    row_states: Callable[[Any], dict[int, Any]],
    extra: Callable[[int], dict] | None = None,
    history: 'History | None' = None,
    iterations: int | None = None,
    seconds: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    last_saved: int | None = None,
    t_saved: float | None = None,
    resume_as: str = 'run.resume',
  ):
    self.extra = extra
    self.history = history
    self.iterations = iterations
    self.pending: tuple[dict[int, dict], int] | None = None
    self.resume_as = resume_as  # how `kept` says to resume
    self.paths = dict(paths)
    self.every = every
    self.seconds = seconds
    self.clock = clock
    self.settings = settings
    self.finite = finite
    self.row_states = row_states
    self.writer = checkpoint_lib.Writer()
    self.last_saved = last_saved
    self.last_tried: int | None = None
    self.t_saved = t_saved

  def begin(self, info: LoopInfo) -> None:
    self.info = info
    if info.start:  # resumed: the checkpoint it read holds this iteration
      self.last_saved = info.offset + info.start
    if info.start or self.t_saved is None:
      self.t_saved = self.clock()

  def save_due(self) -> bool:
    return self.seconds > 0 and self.clock() - self.t_saved >= self.seconds

  def after_step(self, view: StepView) -> None:
    timely = view.last or is_time(view.iteration, self.every, self.info.total)
    # By time only at a sync: the convergence history a checkpoint keeps
    # (`extra`) is the last sync's, and must reach the saved state's
    # iteration, or a resumed run tests convergence over other iterations.
    if not (timely or (self.seconds and view.save_due)):
      return
    self.t_saved = self.clock()
    ok = self.finite(view.state.image)
    if not np.all(ok[list(self.info.rows)]):
      raise errors.NonFinite(view.global_iteration)
    if not self.paths:
      return
    self.writer.wait()  # one host copy of the state at most
    states = self.row_states(view.state)
    payloads = {
      r: checkpoint_lib.snapshot(
        states[r],
        iteration=view.iteration,
        total=self.info.total,
        settings=self.settings[r],
        scale=(self.info.scale, self.info.scales),
      )
      for r in self.paths
    }
    del states
    self.last_tried = view.global_iteration
    if view.last:  # the result's entry comes after the scoring: written at `end`
      self.pending = (payloads, view.global_iteration)
    else:
      self._submit(payloads, view.global_iteration)

  def _extra(self, r: int) -> dict:
    """Row r's `extra`: the convergence history, and what the run record needs."""
    extra = dict(self.extra(r)) if self.extra is not None else {}
    extra['offset'] = self.info.offset
    if self.iterations is not None:
      extra['iterations'] = self.iterations
    if self.history is not None and r in self.history.history:
      extra['history'] = self.history.kept(r)
    return extra

  def _submit(self, payloads: dict[int, dict], iteration: int) -> None:
    for r, payload in payloads.items():
      payload['extra'] = self._extra(r)
    self.writer.submit(lambda: self._write(payloads, iteration))

  def _write(self, payloads: dict[int, dict], iteration: int) -> None:
    saved = True
    for r, path in self.paths.items():
      try:
        checkpoint_lib.write(path, payloads.pop(r))
      except errors.WriteError as e:  # a full disk must not cost the run (the write is atomic)
        kept = f'the checkpoint of iteration {self.last_saved} is kept'  # trial 24 N3: "previous"
        kept = kept if self.last_saved is not None else 'no checkpoint is written yet'
        logging.warning('%s; the run goes on (%s)', e, kept)
        saved = False
    if saved:
      self.last_saved = iteration

  def end(self, view: StepView | None) -> None:
    if self.pending is not None:
      payloads, iteration = self.pending
      self.pending = None
      self._submit(payloads, iteration)
    self.writer.wait()

  def non_finite(self, iteration: int) -> errors.NonFinite:
    """The error for a non-finite loss at `iteration`, naming the last good checkpoint."""
    kept = ''
    if self.last_saved is not None and self.paths:
      names = ', '.join(str(p) for p in self.paths.values())
      kept = f'the last finite state is in {names} (iteration {self.last_saved}); '
    return errors.NonFinite(
      iteration,
      f'the loss became non-finite at iteration {iteration}; {kept}lower the weights or '
      'the learning rate',
    )

  def kept(self) -> str:
    """What the checkpoints hold after a stop, and how to go on ('' without any); after `end`.

    A checkpoint that could not be written at the stop (a full disk: the
    writer only warns) leaves the previous one, named with its own iteration.
    """
    if not self.paths:
      return ''
    names, saved, tried = ', '.join(map(str, self.paths.values())), self.last_saved, self.last_tried
    if saved is None:
      return f'no checkpoint was written to {names}: a rerun starts afresh'
    the, s = ('the checkpoint', 's') if len(self.paths) == 1 else ('the checkpoints', '')  # a batch
    if tried is None or tried == saved:
      return f'{the} {names} hold{s} iteration {saved}: continue with {self.resume_as}'
    return (f'{the} {names} could not be written at iteration {tried} and hold{s} iteration '
            f'{saved}: continue from there with {self.resume_as}')  # fmt: skip


class Intermediates(Hook):
  """Calls `save(global_iteration, images)` every `every` iterations and on a signal.

  Not at the last iteration of a scale: the caller saves the result.
  """

  def __init__(self, every: int, save: Callable[[int, dict[int, np.ndarray]], None]):
    self.every = every
    self.save = save

  def begin(self, info: LoopInfo) -> None:
    self.total = info.total

  def after_step(self, view: StepView) -> None:
    due = is_time(view.iteration, self.every, self.total) and view.iteration < self.total
    if view.stopping or (due and view.reason is None):
      self.save(view.global_iteration, view.images())


class Monitor(Hook):
  """Feeds a live view (nst_jax.engine.preview.Preview) one row's image when it asks.

  Asked at the loop's syncs only, and it reads only the process's own rows
  and the synced losses: no collective of its own (process 0 alone has one).

  Args:
    monitor: has `due()` and `update(iteration, losses, rgb, scale=)`.
    row: the row shown.
    to_rgb: (network-space image [H, W, 3], row) -> RGB [H, W, 3] as saved.
  """

  def __init__(self, monitor, row: int, to_rgb: Callable[[np.ndarray, int], np.ndarray]):
    self.monitor = monitor
    self.row = row
    self.to_rgb = to_rgb

  def begin(self, info: LoopInfo) -> None:
    self.info = info

  def after_step(self, view: StepView) -> None:
    # Only at a sync: the losses shown are the image's own.
    if not view.synced or not self.monitor.due():
      return
    losses = {k: float(v[self.row]) for k, v in view.losses().items()}
    rgb = self.to_rgb(view.images()[self.row], self.row)
    self.monitor.update(view.global_iteration, losses, rgb, scale=self.info.scale + 1)


def rows_finite(image: jax.Array) -> jax.Array:
  """[N] bools: every value of each row's image is finite (a device computation)."""
  return jax.numpy.isfinite(image).all(axis=tuple(range(1, image.ndim)))
