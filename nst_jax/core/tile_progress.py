"""Progress inside one evaluation of a tiled objective: a host callback as each tile starts.

A tiled step (`nst_jax.core.tiles`) at a print's size takes a minute or more
per iteration on a CPU. With `LossSpec.tile_progress` every tile of every
stage calls back to the host as it starts: in order in the forward pass,
and again in reverse order when the backward pass recomputes it (the tiles'
activations are rematerialised), so a display can say where the iteration
is. The callback goes to the function `listen` set, or nowhere.

JAX keeps no program with host callbacks in its persistent compilation
cache, so a step with them compiles in every run: the engine asks for them
only where an iteration takes long anyway (`nst_jax.engine.tile_progress`).
For research code:

  spec = dataclasses.replace(spec, tile_progress=True)
  with nst_jax.core.tile_progress.listen(print):
    state, losses = step(state, params, targets)   # (stage, stages, tile, count, position)
"""

from collections.abc import Callable, Iterator
import contextlib
import functools

import jax

_listener: Callable | None = None


def emit(stage: int, stages: int, count: int, offset: int, tile: jax.Array) -> None:
  """Inside the traced step: tile `tile` (traced) of `count` of stage `stage` starts.

  `offset` is the tiles of the stages before (static), so that
  offset + tile numbers the tiles of one pass 0, 1, ... in forward order.
  """
  jax.debug.callback(functools.partial(_deliver, stage, stages, count, offset), tile)


def _deliver(stage: int, stages: int, count: int, offset: int, tile) -> None:
  listener = _listener
  if listener is not None:
    listener(stage, stages, int(tile), count, offset + int(tile))


@contextlib.contextmanager
def listen(fn: Callable[[int, int, int, int, int], None]) -> Iterator[None]:
  """Within the block, each tile's callback calls `fn(stage, stages, tile, count, position)`.

  stage and tile count from 0; position = the tiles of earlier stages +
  tile (forward order within a pass). `fn` runs on the runtime's thread,
  not the caller's: keep it short, and let it not raise.
  """
  global _listener
  previous, _listener = _listener, fn
  try:
    yield
  finally:
    _listener = previous
