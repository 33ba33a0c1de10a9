"""The compiled step: `core.make_step`'s programs over a layout, and a cache of them.

The step is jitted where it is used, with the layout's shardings for every
argument (state donated), and compiled ahead of the loop so the compile time
is measured and kept out of the iteration rate. Compiled steps are kept for
reuse in a `CompiledSteps` that the caller owns and passes in (the runner
keeps one per process, nst_jax.runs.runner.COMPILE_CACHE): a program calling
`stylize` in a loop, or many single runs of one size, pays the compile
(about 1 s at 64 px, 7 s at 1024 px on a 2-core CPU) once.
"""

import collections
import time
from typing import Any

import jax

from nst_jax import errors
from nst_jax.core import step as core
from nst_jax.core import step_checks
from nst_jax.engine import sharding as sharding_lib

# Where it lives now; the engine's name for it (its targets use it too).
at_precision = core.at_precision


class CompiledSteps:
  """Compiled steps, reused by later runs with the same settings, shapes and layout.

  A program calling `stylize` in a loop, or many single runs of one size,
  pays the compile (about 1 s at 64 px, 7 s at 1024 px on a 2-core CPU) once.
  """

  KEPT = 8

  def __init__(self):
    self.cache: collections.OrderedDict = collections.OrderedDict()

  def get(self, step, key, *args) -> tuple[Any, float]:
    """(compiled, seconds spent compiling: 0.0 when reused)."""
    leaves = jax.tree.leaves(args)
    full_key = (
      key,
      jax.tree.structure(args),
      tuple((x.shape, x.dtype, getattr(x, 'sharding', None)) for x in leaves),
    )
    compiled = self.cache.get(full_key)
    if compiled is not None:
      self.cache.move_to_end(full_key)
      return compiled, 0.0
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    self.cache[full_key] = compiled
    while len(self.cache) > self.KEPT:
      self.cache.popitem(last=False)
    return compiled, compile_s


def compile_step(
  *,
  model,
  optimizer,
  loss_spec,
  loss_fn: core.LossFn,
  layout: sharding_lib.Layout,
  state_sharding,
  args: tuple,
  key: tuple = (),
  loss_key: str | None = None,
  cache: CompiledSteps | None = None,
  first: bool = False,
) -> tuple[Any, float]:
  """`update_step(state, params, targets, active)` compiled for `args` on `layout`.

  The program is `core.make_step`'s, with the layout's shardings: the one
  the engine runs every iteration (`Step.update`), or with `first` the first
  iteration's (`Step.first`: L-BFGS's backtracked first step; the same
  program as every iteration's for an optimiser without that search).

  Args:
    model, optimizer, loss_spec, loss_fn: the step's static settings.
    layout: where the rows live; gives every argument's sharding.
    state_sharding: the state's shardings (images split as the layout says).
    args: (state, params, targets, active), placed as the layout says.
    key: what else the program was built from (the optimiser's build
      arguments, say), for the cache.
    loss_key: the custom loss_fn's identity (Engine.loss_identity), the
      cache's key for it: by the object, a changed field reused the old
      program and an unhashable one failed (trial 33); None: the loss_fn.
    cache: where compiled steps are kept for reuse (None: compile afresh).
    first: the first iteration's program.

  Returns:
    (compiled step, seconds spent compiling: 0.0 when reused from the cache).
  """
  state, params, targets, active = args
  rows = layout.rows_sharding(1)
  step = core.make_step(
    model,
    optimizer,
    loss_spec,
    loss_fn=loss_fn,
    in_shardings=(
      state_sharding,
      jax.tree.map(lambda _: layout.params_sharding(), params),
      jax.tree.map(lambda leaf: leaf.sharding, targets),
      rows,
    ),
    out_shardings=(state_sharding, rows),
  )
  program = step.first if first else step.update
  # A program is kept once, whichever of `first` and `update` it serves.
  full_key = (model, loss_spec, loss_fn if loss_key is None else loss_key, layout.key, *key)
  if program is not step.update:
    full_key = (*full_key, 'first')
  try:
    compiled, seconds = (CompiledSteps() if cache is None else cache).get(program, full_key, *args)
  except Exception as e:
    if (error := step_checks.io_effect_error(e)) is None:
      raise
    raise error from None  # trial 35: JAX's words from inside the line search
  try:
    losses = compiled.out_info[1]
  except AssertionError:  # ordered effects (jax.debug.callback(ordered=True)): JAX's own bug
    losses = jax.eval_shape(program, *args)[1]  # the same program's traced shapes (trial 38)
  logged_losses(losses)
  return compiled, seconds


# The terms a run logs, records and previews besides 'total' (which the step always returns).
LOGGED = ('content', 'style', 'tv')


def logged_losses(losses: Any) -> None:
  """Refuses a loss_fn whose aux lacks a term the run logs (a KeyError mid-run otherwise)."""
  lacking = [k for k in LOGGED if k not in losses]
  if lacking:
    raise errors.ConfigError(
      f"loss_fn's aux lacks {', '.join(map(repr, lacking))}, which a run logs and records; add "
      "them: start from nst_jax.objective's aux, return (total, {**aux, 'total': total, ...})"
    )
