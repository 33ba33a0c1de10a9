"""The one optimisation loop, with hooks: every kind of run iterates here.

Single images, batches of jobs, spatially split images and multi-host runs
all call `run_loop` with a compiled step; what differs between them lives in
hooks (the `clu.periodic_actions` pattern of the flax examples): progress,
checkpoints, intermediate images, the live preview, the run record. A hook
sees each iteration through a `StepView`.

Reading the losses. The loop, not the hooks, decides when the losses come
to the host: at a *sync*, every `sync_every` iterations, at every multiple
of the periods in `sync_also` (the log and checkpoint intervals) and at the
last iteration. A sync is one call of `sync(pending, flag)`: the losses of
every iteration since the previous sync and this process's stop flag (a
signal number) go to the host together, as one transfer on one device and
one all-gather in a multi-process run. The iterations that sync depend only
on settings every process shares, never on which hooks a process has (a
progress bar on a terminal, a live preview: process 0's alone), so every
process runs the same collectives in the same order. A hook reads only the
copy the last sync made (`StepView.losses`; `StepView.synced` tells whether
it is this iteration's).

Stopping: at a sync the loop learns the agreed flags (`merge_flags`: the
largest signal number, whether any process's hook failed, whether any
process's clock says a checkpoint is due) and runs the schedule's
convergence test over every iteration read (`StepView.history`); a signal,
a failure or convergence ends the loop after the hooks have seen the
iteration as the last (so checkpoints and images are saved). On one process
the flags are polled after every iteration (no collective), and a signal or
a failure makes that iteration a sync. Non-finite losses raise
`errors.NonFinite` at the sync that reads them, naming the first iteration
they appeared at.

Scoring the result. A step returns the losses of the image it was given,
before its update, so the losses read at iteration k are those of the image
after k - 1 updates, and the last update is never scored. Given `score`
(the engine's: the compiled step with every row held, so the image stays
and no program is compiled for it), the loop evaluates the final image once
more after the last iteration (a stop's too, at the scale's last) and
hands its losses to the hooks' `end` (`StepView.final`).

Failures in hooks. A hook that raises (an intermediate image that cannot be
written, a preview error) may do so on one process only. The loop keeps the
first such error, goes on calling every hook (a hook's collective, such as
the checkpoints' finiteness check, must run on every process alike), and
sends the failure with the flags of the next sync; that iteration is then
the last on every process (its checkpoint is saved, reason 'failed'). After
the last iteration every process shares its error in one agreement (`agree`,
also for a failure after the last sync), so all of them raise it within one
sync period instead of waiting at a collective for JAX's heartbeat timeout.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import threading
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from nst_jax import errors

# Set once any loop of this process has finished an iteration: from then on
# a signal waits for the loop to save its state (signals.exit_on_signals);
# before it there is nothing a run would lose.
ITERATED = threading.Event()

# A process's flag at a sync, one int: the signal number that stops it (0:
# none) in the low byte, where the largest over the processes wins, and
# above it bits that any process may set (their OR over the processes).
SIGNAL_BITS = 0xFF
FAILED = 1 << 8  # a hook of this process raised (the error is agreed after the loop)
SAVE_DUE = 1 << 9  # a hook of this process asks for a save now (Hook.save_due)
# The "signal number" of a stop asked for without a signal (stylize's
# should_stop returning True): above every real signal (64 on Linux).
ASKED = SIGNAL_BITS


def merge_flags(flags: Sequence[int] | np.ndarray) -> tuple[int, int]:
  """Every process's flag (any number of copies of each) -> (largest signal, OR of the bits)."""
  values = np.asarray(flags).astype(np.int64).reshape(-1)
  return int((values & SIGNAL_BITS).max()), int(np.bitwise_or.reduce(values & ~SIGNAL_BITS))


def _reason(bits: int, signum: int | None, converged: bool) -> str:
  """Why the loop ends after an iteration ('iterations': it goes on, unless that was the last)."""
  if bits & FAILED:
    return 'failed'
  if signum:
    return 'signal'
  return 'converged' if converged else 'iterations'


def is_time(iteration: int, every: int, total: int) -> bool:
  """True every `every` iterations (1-based) and at the last one; never if every=0."""
  return every > 0 and (iteration % every == 0 or iteration == total)


@dataclasses.dataclass(frozen=True)
class LoopInfo:
  """What a hook learns before the first iteration.

  Attributes:
    start: iterations already done at this scale (a resumed run).
    total: the most iterations this scale may run.
    scale: index of this scale, from 0.
    scales: number of scales.
    offset: iterations run at earlier scales, so that `offset + iteration`
      numbers iterations across the whole run.
    rows: the rows of the batch that are real jobs (fillers left out).
  """

  start: int
  total: int
  scale: int = 0
  scales: int = 1
  offset: int = 0
  rows: tuple[int, ...] = (0,)


class StepView:
  """One iteration's results, as the hooks see them.

  Attributes:
    iteration: 1-based iteration at this scale.
    info: the loop's LoopInfo.
    state: the state after the iteration (device arrays; read-only).
    synced: whether the losses were read at this iteration (a sync).
    last: whether the loop ends after this iteration (set before hooks run).
    stopping: the signal number that ends the run, or None.
    reason: why the loop ends ('iterations', 'converged', 'signal',
      'failed': a hook raised on some process), or None.
    save_due: some hook of some process asked for a save at this sync
      (`Hook.save_due`: a checkpoint by time); False between syncs.
    elapsed_s: seconds since the loop started (when the view was made).
    final: after the last iteration, when the loop scored the final image
      (`run_loop`'s `score`; not on a stop by signal): every loss term for
      every row of the image after the last update, as `losses()`; else None.
      Hooks see it in `end`.
  """

  def __init__(
    self,
    iteration: int,
    info: LoopInfo,
    state: Any,
    read: Sequence[tuple[int, dict[str, np.ndarray]]],
    *,
    local_rows: Callable[[jax.Array], dict[int, np.ndarray]],
    elapsed_s: float,
    clock: tuple[float, float, int],
  ):
    self.iteration = iteration
    self.info = info
    self.state = state
    self.last = False
    self.stopping: int | None = None
    self.reason: str | None = None
    self.save_due = False
    self.elapsed_s = elapsed_s
    self.final: dict[str, np.ndarray] | None = None
    self._clock = clock
    self._rate: float | None = None
    self._read = list(read)
    self.synced = bool(self._read) and self._read[-1][0] == iteration
    self._local_rows = local_rows
    self._images: dict[int, np.ndarray] | None = None

  @property
  def rate(self) -> float:
    """Iterations per second, the first (warm-up) iteration left out.

    Measured when first asked: ask at a sync (`synced`), which waited for
    the device, so asynchronous dispatch does not inflate it.
    """
    if self._rate is None:
      t_start, t_first, start = self._clock
      done = self.iteration - start - 1
      now = time.perf_counter()
      self._rate = done / max(now - t_first, 1e-9) if done else 1.0 / max(t_first - t_start, 1e-9)
    return self._rate

  @property
  def global_iteration(self) -> int:
    return self.info.offset + self.iteration

  def history(self) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(iteration, losses) of every iteration the last sync read, oldest first."""
    return self._read

  def losses(self) -> dict[str, np.ndarray]:
    """Every loss term for every row, [N] float arrays: the last sync's copy (every process).

    It is this iteration's when `synced`, else an earlier one's.

    Raises:
      RuntimeError: no sync has run yet at this scale.
    """
    if not self._read:
      raise RuntimeError(f'no losses read yet at iteration {self.iteration} (not a sync)')
    return self._read[-1][1]

  def mean_losses(self) -> dict[str, float]:
    """Each loss term averaged over the real rows (the value itself for one image)."""
    rows = list(self.info.rows)
    return {k: float(np.mean(v[rows])) for k, v in self.losses().items()}

  def mean_final(self) -> dict[str, float] | None:
    """`final` averaged over the real rows, as `mean_losses`; None when not scored."""
    if self.final is None:
      return None
    rows = list(self.info.rows)
    return {k: float(np.mean(v[rows])) for k, v in self.final.items()}

  def images(self) -> dict[int, np.ndarray]:
    """Row -> [H, W, 3] network-space image, for the rows this process holds (no collective)."""
    if self._images is None:
      self._images = self._local_rows(self.state.image)
    return self._images


def host_sync(
  pending: Sequence[Mapping[str, jax.Array]], flag: int
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
  """The default `sync` of one process: one copy of every pending loss; the flag as it is."""
  host = [{k: np.asarray(v) for k, v in losses.items()} for losses in jax.device_get(pending)]
  return host, np.asarray([flag])


class Hook:
  """Something done around the loop; override what you need.

  Hooks run in the order given, on every process of a multi-host run, and
  must not call collectives of their own: they read the losses the loop's
  last sync brought (`StepView.losses`), whichever hooks a process has. (A
  hook every process has may gather at iterations every process takes
  alike, as `Checkpoints` checks finiteness.) An exception a hook raises
  ends the loop at the next sync on every process (see the module
  docstring), and is raised after it.
  """

  def begin(self, info: LoopInfo) -> None:
    """Before the first iteration."""

  def after_step(self, view: StepView) -> None:
    """After each iteration (`view.last` tells whether the loop then ends)."""

  def end(self, view: StepView | None) -> None:
    """After the last iteration (None if none ran), also when an error ends the loop."""

  def save_due(self) -> bool:
    """Asked just before each sync: does this process want a save now (a checkpoint by time)?

    The answer rides in the sync's flags; `StepView.save_due` is their OR
    over every hook of every process, so all save at the same iteration.
    """
    return False


class LoopResult(NamedTuple):
  """How the loop ended: the final state, the last iteration, why, and the signal if any.

  `reason` is never 'failed' here: that ends in an exception.
  """

  state: Any
  iteration: int
  reason: str
  signum: int | None = None


class _Syncs:
  """When the loop reads the losses, and what it has not read yet (see the module docstring)."""

  def __init__(self, info: LoopInfo, sync, every: int, also: Sequence[int], should_stop, save_due):
    self.info = info
    self.sync = sync
    self.periods = [p for p in (max(every, 1), *also) if p > 0]
    self.should_stop = should_stop or (lambda: None)
    self.save_due = save_due or (lambda: False)
    # One process polls its own flag after every iteration; several only at
    # a sync, where the flag travels with the losses.
    self.poll_each = jax.process_count() == 1
    self.pending: list[tuple[int, Any]] = []

  def due(self, it: int) -> bool:
    return it == self.info.total or any(it % p == 0 for p in self.periods)

  def after(self, it: int, losses, failed: bool) -> tuple[list, int, int]:
    """Queues `losses`; at a sync, returns ((iteration, host losses) read, signal, bits).

    `failed`: a hook of this process raised (a sync at once on one process).
    Between syncs: ([], 0, 0).
    """
    self.pending.append((it, losses))
    due = self.due(it)
    signum = self.should_stop() if self.poll_each or due else None
    if not (due or signum or (failed and self.poll_each)):
      return [], 0, 0
    # The clock is read at a sync only: a checkpoint by time is saved at a
    # read (hooks.Checkpoints), and every process asks at the same ones.
    flag = int(signum or 0) | (FAILED if failed else 0) | (SAVE_DUE if self.save_due() else 0)
    iterations = [i for i, _ in self.pending]
    host, flags = self.sync([x for _, x in self.pending], flag)
    self.pending = []
    read = list(zip(iterations, host, strict=True))
    rows = list(self.info.rows)
    for i, values in read:
      if not np.all(np.isfinite(values['total'][rows])):
        raise errors.NonFinite(self.info.offset + i)
    return (read, *merge_flags(flags))


def raise_own(error: BaseException | None) -> None:
  """The `agree` of one process: its own failure is everyone's."""
  if error is not None:
    raise error


def run_loop(
  step: Callable,
  state: Any,
  params: Any,
  targets: Any,
  *,
  info: LoopInfo,
  hooks: Sequence[Hook] = (),
  should_stop: Callable[[], int | None] | None = None,
  converged: Callable[[StepView], bool] | None = None,
  sync: Callable[[list, int], tuple[list[dict[str, np.ndarray]], np.ndarray]] = host_sync,
  sync_every: int = 1,
  sync_also: Sequence[int] = (),
  local_rows: Callable[[jax.Array], dict[int, np.ndarray]] | None = None,
  agree: Callable[[BaseException | None], Any] = raise_own,
  score: Callable[[Any], tuple[Any, Any]] | None = None,
) -> LoopResult:
  """Iterates `state, losses = step(state, params, targets)` up to `info.total`.

  Args:
    step: the compiled step (donates the state).
    state: the starting state (from `info.start` iterations).
    params: VGG parameters.
    targets: the targets.
    info: iteration range and scale, given to the hooks.
    hooks: run in order after each iteration.
    should_stop: this process's signal number to stop on, or None.
    converged: the schedule's convergence test, called at each sync (it
      reads `StepView.history`).
    sync: (the losses of the iterations since the last sync, this process's
      flag) -> (their host copies, every row of every process; the flags of
      every process, any number of copies of each, for `merge_flags`).
      Multi-process: one all-gather.
    sync_every: read the losses every this many iterations (and at the last).
    sync_also: further periods at which to read them (the log and checkpoint
      intervals, so what those hooks save is current).
    local_rows: device image [N, ...] -> {row: host copy} for this
      process's rows (default: every row).
    agree: called once after the last iteration with this process's first
      hook error (or None) on every process; raises if any process had one
      (nst_jax.engine.distributed.agree; one process: raises its own).
    score: state -> (state with the same image, losses of that image), run
      once after the last iteration (after its hooks, before their `end`)
      unless a failure, or a signal before `info.total`, stopped the loop.
      A step's losses are of the image *before* its update, so without it
      the last update is never scored; its losses are read in one more sync
      (every process alike) into `StepView.final`.

  Returns:
    LoopResult; reason 'iterations', 'converged' or 'signal'.

  Raises:
    NonFinite: at the sync that read a non-finite loss.
    Exception: the first error a hook raised, on this process or (through
      `agree`) another.
  """
  local_rows = local_rows or (lambda x: dict(enumerate(np.asarray(x))))
  syncs = _Syncs(
    info, sync, sync_every, sync_also, should_stop, lambda: any(h.save_due() for h in hooks)
  )
  failure: list[Exception] = []

  def call(method: str, arg) -> None:
    # Every hook is called even after one failed: a hook's collective must
    # run on every process alike until the failure is agreed.
    for hook in hooks:
      try:
        getattr(hook, method)(arg)
      except Exception as e:  # noqa: BLE001 (agreed, then raised)
        if not failure:
          failure.append(e)

  call('begin', info)
  view = None
  it = info.start
  reason, signum, read, done = 'iterations', None, [], False
  t_start, t_first = time.perf_counter(), None
  try:
    for it in range(info.start + 1, info.total + 1):
      state, losses = step(state, params, targets)
      if t_first is None:
        # The first call pays one-off costs (7 s -> 17 s at 1024x768 on CPU);
        # one sync keeps them out of the rate and the ETA.
        jax.block_until_ready(losses)
        t_first = time.perf_counter()
        ITERATED.set()
      fresh, signum, bits = syncs.after(it, losses, bool(failure))
      read = fresh or read
      view = StepView(
        it,
        info,
        state,
        read,
        local_rows=local_rows,
        elapsed_s=time.perf_counter() - t_start,
        clock=(t_start, t_first, info.start),
      )
      view.save_due = bool(bits & SAVE_DUE)
      # A stop's losses too: its checkpoint keeps the test's history (one short: trial 17).
      done = not bits & FAILED and fresh and converged is not None and converged(view)
      reason = _reason(bits, signum, done)
      view.stopping = signum if reason == 'signal' else view.stopping
      signum = signum or None
      view.last = it == info.total or reason != 'iterations'
      view.reason = reason if view.last else None
      call('after_step', view)
      if view.last:
        break
    # At a scale's end (its last iteration, or converged) a stop scores too: a resume skips it.
    ended = reason != 'failed' and (reason != 'signal' or it == info.total or done)
    if score is not None and view is not None and ended:
      # After the hooks of the last iteration: they copied what they keep
      # of the state, which `score` donates.
      state, losses = score(state)
      view.state = state
      view.final = sync([losses], 0)[0][0]
      if not np.all(np.isfinite(view.final['total'][list(info.rows)])):
        raise errors.NonFinite(info.offset + it)
  except BaseException:
    for hook in hooks:  # closed on the way out; the error raised is this one
      try:
        hook.end(view)
      except Exception:  # noqa: BLE001, S110
        pass
    raise
  call('end', view)
  # Every process comes here once per loop: a failure after the last sync
  # (or one the sync already agreed) is shared, with its message.
  agree(failure[0] if failure else None)
  return LoopResult(state, it, reason, signum)
