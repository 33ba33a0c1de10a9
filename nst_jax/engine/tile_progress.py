"""Progress within the long iterations of a tiled run: the pass, stage and tile the step is at.

At a print's size a tiled iteration takes a minute or more on a CPU, and a
bar that moves once an iteration looks hung. So where an iteration is long
(`wanted`), the step reports each tile as it starts
(`nst_jax.core.tile_progress`), and `TileProgress` shows it: in a terminal
the bar's postfix names the pass, the stage and the tile beside the last
loss read ("loss=1.2e+05, forward pass, stage 1/5, tile 7/12"), in a log
one line every LOG_SECONDS at most. They name no iteration: the host
dispatches steps ahead of the device, so a callback cannot tell which
one it belongs to (after the last iteration the final image is scored,
one more forward and backward pass). One tiled run at a time per process
shows its tiles: the callbacks carry no run, so the newest run's listener
takes them all.

The cost: JAX keeps no program with host callbacks in its persistent
compilation cache, so such a step compiles in every run (seconds, against
minutes per iteration), and each tile syncs with the host once per pass.
"""

import dataclasses
import time

from absl import logging

from nst_jax.core import tile_progress as core_progress
from nst_jax.engine import loop as loop_lib

# Pixels from which a tiled iteration counts as long. On CPU a tiled
# iteration took 9.25 s at 1024x768 (docs/long-runs.md, 2-core Intel Xeon),
# so 1024x1024 and above take ten seconds or more; an accelerator is ten to
# a hundred times faster, so there only images 16x as large.
MIN_PIXELS = {'cpu': 1 << 20}
MIN_PIXELS_ACCELERATOR = 1 << 24
# A log line (no terminal) at most this often.
LOG_SECONDS = 30.0


def wanted(spec, height: int, width: int, layout) -> bool:
  """Whether a step of `spec` on `layout`'s devices at height x width reports its tiles.

  Tiled, on one device (several would each call back, interleaved), and
  at least MIN_PIXELS for the platform over the images that device holds
  (a batch of rows runs on it at once).
  """
  devices = layout.params_sharding().device_set
  if spec.tile is None or len(devices) != 1:
    return False
  platform = next(iter(devices)).platform
  pixels = height * width * layout.n_rows
  return pixels >= MIN_PIXELS.get(platform, MIN_PIXELS_ACCELERATOR)


def spec_for(spec, height: int, width: int, layout):
  """`spec` (a LossSpec) with tile_progress where `wanted`."""
  if not wanted(spec, height, width, layout):
    return spec
  return dataclasses.replace(spec, tile_progress=True)


def around(progress: loop_lib.Hook, spec, height: int, width: int, layout) -> loop_lib.Hook:
  """The progress hook, wrapped in a `TileProgress` where `wanted`."""
  return TileProgress(progress) if wanted(spec, height, width, layout) else progress


class TileProgress(loop_lib.Hook):
  """A progress hook (`hooks.BarProgress` or `LogProgress`) that also shows each tile.

  Listens (`nst_jax.core.tile_progress.listen`) from `begin` to `end`. The
  callbacks say stage and tile, not the pass; it is read from the
  positions (0 .. per_pass - 1 in forward order): the forward pass counts
  up, the backward pass (which recomputes the tiles) down, each turns at a
  repeated position (the last tile starts the backward pass, the first the
  next forward pass), and 0 after the last tile in a forward pass is a new
  forward pass (the first iteration's trial steps). With one tile in a
  pass nothing tells the passes apart, and none is named.
  """

  def __init__(self, inner: loop_lib.Hook, *, clock=time.monotonic):
    self.inner = inner
    self.clock = clock
    self._listening = None
    self._last = None
    self._backward = False
    self._logged = 0.0
    self._loss = None

  def begin(self, info: loop_lib.LoopInfo) -> None:
    self.inner.begin(info)
    self._last, self._backward, self._logged = None, False, self.clock()
    self._listening = core_progress.listen(self.tile)
    self._listening.__enter__()

  def after_step(self, view: loop_lib.StepView) -> None:
    self.inner.after_step(view)
    if view.synced:  # what the bar shows beside the tiles (the loop's last read)
      self._loss = f'{view.mean_losses()["total"]:.4g}'

  def save_due(self) -> bool:
    return self.inner.save_due()

  def end(self, view: loop_lib.StepView | None) -> None:
    if self._listening is not None:
      self._listening.__exit__(None, None, None)
      self._listening = None
    self.inner.end(view)

  def tile(self, stage: int, stages: int, tile: int, count: int, position: int, per_pass: int):
    """The listener: one tile of one stage starts (`core_progress.listen`'s arguments)."""
    last, self._last = self._last, position
    if last is None or (position == 0 and last == per_pass - 1 and not self._backward):
      self._backward = False  # the first tile seen, or a new forward pass
    elif position == last:
      self._backward = not self._backward
    elif position == last - 1:
      self._backward = True
    elif position == last + 1:
      self._backward = False
    where = f'stage {stage + 1}/{stages}, tile {tile + 1}/{count}'
    if per_pass > 1:
      where = f'{"backward" if self._backward else "forward"} pass, {where}'
    bar = getattr(self.inner, 'bar', None)
    if bar is not None:
      bar.set_postfix_str(where if self._loss is None else f'loss={self._loss}, {where}')
    elif self.clock() - self._logged >= LOG_SECONDS:
      self._logged = self.clock()
      logging.info('%swithin the iteration: %s', getattr(self.inner, 'head', ''), where)
