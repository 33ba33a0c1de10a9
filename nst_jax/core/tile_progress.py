"""Progress inside one evaluation of a tiled objective: a host callback as each tile starts.

A tiled step (`nst_jax.core.tiles`) at a print's size takes a minute or more
per iteration on a CPU. With `LossSpec.tile_progress` every tile of every
stage calls back to the host as it starts: in order in the forward pass,
and again in reverse order when the backward pass recomputes it (the tiles'
activations are rematerialised), so a display can say where the iteration
is. The callback goes to the newest function `listen` set, or nowhere.

JAX keeps no program with host callbacks in its persistent compilation
cache, so a step with them compiles in every run: the engine asks for them
only where an iteration takes long anyway (`nst_jax.engine.tile_progress`).
For research code:

  spec = dataclasses.replace(spec, tile_progress=True)
  with nst_jax.core.tile_progress.listen(print):
    state, losses = step(state, params, targets)  # prints (stage, stages, tile, ...)
"""

from collections.abc import Callable, Iterator
import contextlib
import functools
import warnings

import jax

# The listeners `listen` installed, the newest last: it alone is called.
_listeners: list[list] = []


def emit(stage: int, stages: int, count: int, offset: int, per_pass: int, tile: jax.Array) -> None:
  """Inside the traced step: tile `tile` (traced) of `count` of stage `stage` starts.

  `offset` is the tiles of the stages before and `per_pass` the tiles of
  all stages (static), so that offset + tile numbers the tiles of one pass
  0 .. per_pass - 1 in forward order.
  """
  jax.debug.callback(functools.partial(_deliver, stage, stages, count, offset, per_pass), tile)


def _deliver(stage: int, stages: int, count: int, offset: int, per_pass: int, tile) -> None:
  entry = _listeners[-1] if _listeners else None
  if entry is None or entry[1]:
    return
  try:
    entry[0](stage, stages, int(tile), count, offset + int(tile), per_pass)
  except Exception as e:  # noqa: BLE001 - raised here, it would fail the step that called back
    entry[1] = True
    warnings.warn(f'tile progress stopped: its listener raised {e!r}', RuntimeWarning, stacklevel=1)


@contextlib.contextmanager
def listen(fn: Callable[[int, int, int, int, int, int], None]) -> Iterator[None]:
  """Within the block, each tile's callback calls `fn`.

  Its arguments: (stage, stages, tile, count, position, per_pass), stage
  and tile from 0; position = the tiles of earlier stages + tile (forward
  order within a pass of per_pass tiles). `fn` runs on the
  runtime's thread, not the caller's, so keep it short: an exception it
  raises is turned into a warning and ends its calls (raised there, it
  would fail the step). The newest listener alone is called; blocks may
  end in any order (two runs in two threads), each removing its own.
  """
  entry = [fn, False]  # the function, and whether it has failed
  _listeners.append(entry)
  try:
    yield
  finally:
    _listeners.remove(entry)
