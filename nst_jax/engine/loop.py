"""The one optimisation loop, with hooks: every kind of run iterates here.

Single images, batches of jobs, spatially split images and multi-host runs
all call `run_loop` with a compiled step; what differs between them lives in
hooks (the `clu.periodic_actions` pattern of the flax examples): progress,
checkpoints, intermediate images, the live preview, the run record. A hook
sees each iteration through a `StepView`, which fetches losses and images
from the devices only when some hook asks, once per iteration.

Stopping: after each iteration the loop asks `should_stop()` (a signal
number, agreed by every process in a multi-host run) and then the schedule's
convergence test; either ends the loop after the hooks have seen the
iteration as the last (so checkpoints and images are saved). Non-finite
losses raise `errors.NonFinite` at the next iteration whose losses are read.
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
# a signal waits for the loop to save its state (hooks.exit_on_signals);
# before it there is nothing a run would lose.
ITERATED = threading.Event()


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
  """One iteration's results, fetched from the devices only when asked (once).

  Attributes:
    iteration: 1-based iteration at this scale.
    info: the loop's LoopInfo.
    state: the state after the iteration (device arrays; read-only).
    last: whether the loop ends after this iteration (set before hooks run).
    stopping: the signal number that ends the run, or None.
    reason: why the loop ends ('iterations', 'converged', 'signal'), or None.
    elapsed_s: seconds since the loop started (when the view was made).
  """

  def __init__(
    self,
    iteration: int,
    info: LoopInfo,
    state: Any,
    losses: Mapping[str, jax.Array],
    *,
    gather: Callable[[Any], Any],
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
    self.elapsed_s = elapsed_s
    self._clock = clock
    self._rate: float | None = None
    self._losses = losses
    self._gather = gather
    self._local_rows = local_rows
    self._host_losses: dict[str, np.ndarray] | None = None
    self._images: dict[int, np.ndarray] | None = None

  @property
  def rate(self) -> float:
    """Iterations per second, the first (warm-up) iteration left out.

    Measured when first asked: ask after `losses()`, which waits for the
    device, so asynchronous dispatch does not inflate it.
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

  def losses(self) -> dict[str, np.ndarray]:
    """Every loss term for every row, [N] float arrays on the host (all processes).

    Raises:
      NonFinite: some real row's total loss is not finite.
    """
    if self._host_losses is None:
      self._host_losses = {k: np.asarray(v) for k, v in self._gather(self._losses).items()}
      totals = self._host_losses['total'][list(self.info.rows)]
      if not np.all(np.isfinite(totals)):
        raise errors.NonFinite(self.global_iteration)
    return self._host_losses

  def mean_losses(self) -> dict[str, float]:
    """Each loss term averaged over the real rows (the value itself for one image)."""
    rows = list(self.info.rows)
    return {k: float(np.mean(v[rows])) for k, v in self.losses().items()}

  def images(self) -> dict[int, np.ndarray]:
    """Row -> [H, W, 3] network-space image, for the rows this process holds."""
    if self._images is None:
      self._images = self._local_rows(self.state.image)
    return self._images


class Hook:
  """Something done around the loop; override what you need.

  Hooks run in the order given, on every process of a multi-host run, and
  must not call collectives of their own except through the view.
  """

  def begin(self, info: LoopInfo) -> None:
    """Before the first iteration."""

  def after_step(self, view: StepView) -> None:
    """After each iteration (`view.last` tells whether the loop then ends)."""

  def end(self, view: StepView | None) -> None:
    """After the last iteration (None if none ran), also when an error ends the loop."""


class LoopResult(NamedTuple):
  """How the loop ended: the final state, the last iteration, why, and the signal if any."""

  state: Any
  iteration: int
  reason: str
  signum: int | None = None


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
  gather: Callable[[Any], Any] = jax.device_get,
  local_rows: Callable[[jax.Array], dict[int, np.ndarray]] | None = None,
) -> LoopResult:
  """Iterates `state, losses = step(state, params, targets)` up to `info.total`.

  Args:
    step: the compiled step (donates the state).
    state: the starting state (from `info.start` iterations).
    params: VGG parameters.
    targets: the targets.
    info: iteration range and scale, given to the hooks.
    hooks: run in order after each iteration.
    should_stop: a signal number to stop on (agreed by every process), or None.
    converged: the schedule's convergence test (reads the view's losses).
    gather: device losses -> host values of every row (multi-host: a
      replicating all-gather).
    local_rows: device image [N, ...] -> {row: host copy} for this
      process's rows (default: every row).

  Returns:
    LoopResult; reason 'iterations', 'converged' or 'signal'.
  """
  local_rows = local_rows or (lambda x: dict(enumerate(np.asarray(x))))
  for hook in hooks:
    hook.begin(info)
  view = None
  it = info.start
  reason = 'iterations'
  signum = None
  t_start = time.perf_counter()
  t_first = None
  try:
    for it in range(info.start + 1, info.total + 1):
      state, losses = step(state, params, targets)
      if t_first is None:
        # The first call pays one-off costs (7 s -> 17 s at 1024x768 on CPU);
        # one sync keeps them out of the rate and the ETA.
        jax.block_until_ready(losses)
        t_first = time.perf_counter()
        ITERATED.set()
      view = StepView(
        it,
        info,
        state,
        losses,
        gather=gather,
        local_rows=local_rows,
        elapsed_s=time.perf_counter() - t_start,
        clock=(t_start, t_first, info.start),
      )
      signum = should_stop() if should_stop is not None else None
      if signum:
        view.stopping, reason = signum, 'signal'
      elif converged is not None and converged(view):
        reason = 'converged'
      view.last = it == info.total or reason != 'iterations'
      view.reason = reason if view.last else None
      for hook in hooks:
        hook.after_step(view)
      if view.last:
        break
  finally:
    for hook in hooks:
      hook.end(view)
  return LoopResult(state, it, reason, signum)
