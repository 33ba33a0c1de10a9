"""The run's schedule: the scales, the iterations each gets, and when to stop early.

`plan(width, schedule)` turns `-w` and `-i` (and `--scales`, `--min_width`)
into stages, coarse to fine; `-i` is the run's total, never exceeded.
`Convergence` is the documented early-stopping test the loop applies at each
stage.
"""

import math
from typing import NamedTuple

import numpy as np

from nst_jax import config as config_lib

# Coarse-to-fine: each scale is this factor wider than the previous one
# (crowsonkb/style-transfer-pytorch's schedule).
SCALE_FACTOR = math.sqrt(2)


def scale_widths(width: int, *, scales: int = 1, min_width: int | None = None) -> tuple[int, ...]:
  """Coarse-to-fine widths: w_k = round(width / sqrt(2)^(n-1-k)), k = 0..n-1.

  Args:
    width: the final (largest) width.
    scales: n, the number of scales.
    min_width: instead of `scales`: the largest n whose coarsest width is at
      least min_width (1 if width <= min_width).

  Returns:
    n increasing widths, the last equal to `width`.
  """
  if min_width is not None:
    scales = 1
    while round(width / SCALE_FACTOR**scales) >= min_width:
      scales += 1
  return tuple(round(width / SCALE_FACTOR ** (scales - 1 - k)) for k in range(scales))


class Stage(NamedTuple):
  """One scale of a run: its width in pixels and the most iterations it gets."""

  width: int
  iterations: int


# The automatic schedule (--scales 0, the default): no scale narrower than
# AUTO_MIN_WIDTH, at most AUTO_MAX_SCALES scales. Measured on LSUV-scaled
# weights with early stopping (bench/parity.py --variants; AMD EPYC Zen 4,
# 2026-12-03, one run each): at 512 px, three scales (256, 362, 512) took
# 380 s to an 8-bit objective of 4192, one scale 226 s to 4180; at 256 px
# (2026-12-02) two scales were also slower to a given loss. So coarse-to-fine
# does not pay on its own here, and the automatic schedule is one scale until
# a measurement at 1024 px or with the real weights says otherwise;
# --scales N asks for N.
AUTO_MIN_WIDTH = 256
AUTO_MAX_SCALES = 1
# The share of the iterations each coarser scale gets, relative to the next
# finer one, when AUTO_MAX_SCALES > 1.
AUTO_COARSER_SHARE = 1.0


def auto_widths(width: int) -> tuple[int, ...]:
  """The automatic scales for an output `width` (see AUTO_MIN_WIDTH)."""
  widths = scale_widths(width, min_width=AUTO_MIN_WIDTH)
  return widths[-AUTO_MAX_SCALES:]


def split(total: int, shares) -> tuple[int, ...]:
  """`total` iterations in proportion to `shares`, each stage at least 1, summing to total.

  Rounded by largest remainders, so the split is exact and deterministic.
  """
  shares = np.asarray(shares, np.float64)
  if total < len(shares):
    # Fewer iterations than scales: the finest scales get one each.
    return tuple([0] * (len(shares) - total) + [1] * total)
  raw = shares / shares.sum() * (total - len(shares))
  counts = np.floor(raw).astype(int) + 1
  # Largest remainders first; among equal ones, the finer scale.
  order = sorted(range(len(shares)), key=lambda i: (-(raw[i] - np.floor(raw[i])), -i))
  for i in order[: total - counts.sum()]:
    counts[i] += 1
  return tuple(int(c) for c in counts)


def plan(width: int, schedule: config_lib.ScheduleConfig) -> tuple[Stage, ...]:
  """The stages of a run, coarse to fine, their iterations summing to `schedule.iterations`.

  Args:
    width: the output width.
    schedule: iterations, scales (0: automatic), min_width.

  Returns:
    Stages with at least one iteration each (scales that would get none are
    dropped, the coarsest first).
  """
  if schedule.min_width is not None or schedule.scales > 1:
    widths = scale_widths(width, scales=max(schedule.scales, 1), min_width=schedule.min_width)
    shares = [1.0] * len(widths)
  elif schedule.scales == 1:
    widths, shares = (width,), [1.0]
  else:
    widths = auto_widths(width)
    shares = [AUTO_COARSER_SHARE ** (len(widths) - 1 - k) for k in range(len(widths))]
  counts = split(schedule.iterations, shares)
  return tuple(Stage(w, n) for w, n in zip(widths, counts, strict=True) if n > 0)


# How often the loop reads the losses when schedule.read_every is 0. On CPU
# an iteration takes 0.1 s to 10 s, so reading ten floats after each costs
# nothing and keeps early stopping exact. On GPU and TPU an iteration takes
# milliseconds and each read is a bubble the device waits through (the
# host must see the result before it queues the next step): reading every
# 10th iteration leaves up to 9 steps queued. Not yet measured on a device:
# bench/bench_sync.py times a run at read_every 1 and 10.
AUTO_READ_EVERY = 10


def read_every(setting: int, platform: str) -> int:
  """The loop's sync period: `setting`, or for 0 the automatic one of `platform`."""
  if setting > 0:
    return setting
  return 1 if platform == 'cpu' else AUTO_READ_EVERY


class Convergence:
  """Stops each image of a batch once its loss has stopped falling.

  For one image with L_k its total loss at iteration k and m_k =
  min(L_1..L_k) the best so far, the image has converged at iteration
  k >= window when

      (m_{k - window} - m_k) / m_k < tol,

  that is, its best loss improved by less than a fraction `tol` over the
  last `window` iterations. The running minimum makes one uphill step (no
  line search) neither stop nor prolong the run. A converged image is held
  (`active` False: the step keeps its pixels) while the others go on, so
  every image gets the result it would get alone; the stage ends when all
  have converged. tol = 0 never stops.

  Attributes:
    active: [N] bools for the step (rows not yet converged; fillers stay on).
    stopped_at: row -> the iteration it converged at.
  """

  def __init__(self, tol: float, window: int, rows=(0,), n_rows: int = 1):
    self.tol = tol
    self.window = window
    self.rows = tuple(rows)
    self.best: dict[int, list[float]] = {r: [] for r in self.rows}
    self.stopped_at: dict[int, int] = {}
    self.active = np.ones(n_rows, bool)
    self.changed = False

  def restore(self, row: int, best, converged: bool) -> None:
    """A resumed row's history (the last window + 1 bests) and whether it had converged."""
    self.best[row] = [float(b) for b in best]
    if converged:
      self.stopped_at[row] = 0
      self.active[row] = False
      self.changed = True

  @staticmethod
  def saved(extra: dict, window: int) -> np.ndarray:
    """A checkpoint's `extra` as one row of floats for every process.

    [converged, n, the last n (<= window) bests], padded with NaN to window + 2;
    `restore` takes them back.
    """
    best = list(extra.get('best', []))[-window:]
    row = np.full(window + 2, np.nan, np.float64)
    row[0], row[1] = float(extra.get('converged', False)), len(best)
    row[2 : 2 + len(best)] = best
    return row

  def newly_held(self) -> np.ndarray | None:
    """`active` if a row converged since the last call (the step must hold it), else None."""
    if not self.changed:
      return None
    self.changed = False
    return self.active.copy()

  def all_converged(self) -> bool:
    return self.tol > 0 and len(self.stopped_at) == len(self.rows)

  def state(self, row: int) -> dict:
    """What a checkpoint keeps for `row` to continue exactly."""
    return {
      'converged': row in self.stopped_at,
      'best': self.best[row][-(self.window + 1) :],
    }

  def __call__(self, view) -> bool:
    """At a sync: the test over every iteration read; True once every row has converged.

    A row whose test passes at an iteration read at this sync is held from
    the sync's iteration on (`stopped_at`): with the losses read every k
    iterations it stops up to k - 1 iterations after the iteration the test
    passed at, and its result is the one a run stopped there gets.
    """
    if self.tol <= 0:
      return False
    for _, losses in view.history():
      totals = losses['total']
      for r in self.rows:
        if r in self.stopped_at:
          continue
        best = self.best[r]
        loss = float(totals[r])
        best.append(min(loss, best[-1]) if best else loss)
        del best[: -(self.window + 1)]  # only the window matters
        if len(best) > self.window:
          old, now = best[0], best[-1]
          if now > 0 and (old - now) / now < self.tol:
            self.stopped_at[r] = view.iteration
            self.active[r] = False
            self.changed = True
    return len(self.stopped_at) == len(self.rows)
