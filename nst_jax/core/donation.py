"""A jitted function that donates its first argument where donating can work: on concrete arrays.

`make_step`'s programs are `DonatingJit`s: the engine and a plain loop get
the state's buffers reused; `jax.grad` or `jax.vjp` of a loop of calls,
eager or under `jax.jit`, gets the same program without donation. A state
already donated is refused in one line naming the fix.
"""

from collections.abc import Callable
from typing import Any

import jax

from nst_jax import errors
from nst_jax.core import step_checks


def refuse_donated(state: Any) -> None:
  """A ConfigError for a state whose buffers a donating call took (update_step's too: trial 27).

  JAX's own "Array has been deleted" names neither the cause nor the fix.
  """
  concrete = [x for x in jax.tree.leaves(state) if not isinstance(x, jax.core.Tracer)]
  if any(isinstance(leaf, jax.Array) and leaf.is_deleted() for leaf in concrete):
    raise errors.ConfigError(
      'the state was donated to an earlier call of the step (its buffers are gone); pass the '
      'state that call returned (state, losses = step(state, ...)), or keep a copy made before '
      'it: jax.tree.map(jnp.copy, state)'
    )


class DonatingJit:
  """`jax.jit(fn, donate_argnums=0)`, called without donation when an argument is traced.

  Eager `jax.grad` through two calls of a donating jit failed with "Array
  has been deleted": under reverse mode JAX partially evaluates each call,
  runs its known half with the state donated, and keeps some of those very
  buffers (inputs forwarded as residuals) for the backward pass or hands
  them to the next call, which donates them again. Under an outer
  `jax.jit` donation does nothing anyway. So a call whose arguments hold a
  `jax.core.Tracer` goes to `fn` jitted without donation: the same program
  and values, the inputs kept.

  `check`, if given, runs on the arguments first, traced or not (make_step's:
  the params' form and `active`'s concrete values, which the jit would trace).

  Attributes other than the call (`lower`, `trace`, `eval_shape`,
  `_cache_size`) are the donating jit's, the program the engine compiles.
  """

  def __init__(
    self, fn: Callable, *, check: Callable[[tuple], None] | None = None, **jit_kwargs: Any
  ):
    self.check = check  # host checks of the arguments before JAX sees them (make_step's)
    self.donating = jax.jit(fn, donate_argnums=0, **jit_kwargs)
    self.kept = jax.jit(fn, **jit_kwargs)

  def __call__(self, *args):
    if self.check is not None:
      self.check(args)
    if args:  # its concrete leaves, also where another argument is traced (trial 29: jax.grad)
      refuse_donated(args[0])
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args))
    try:
      return self.kept(*args) if traced else self.donating(*args)
    except Exception as e:
      if (error := step_checks.io_effect_error(e)) is None:
        raise
      raise error from None

  def __getattr__(self, name: str):
    if name in ('donating', 'kept', 'check'):  # not set yet (copy, pickle): no recursion
      raise AttributeError(name)
    return getattr(self.donating, name)
