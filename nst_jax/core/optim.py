"""Optimisers of the image: an L-BFGS made for style transfer, and Adam, in pixel units.

Both are optax transformations with one `update(grads, state, params,
**extra_args)` signature, so the step treats them alike.

L-BFGS (`lbfgs`): the two-loop recursion of Nocedal & Wright (Algorithm 7.4)
with a unit step and no line search, as the classic tools use
torch.optim.LBFGS, one loss-and-gradient evaluation per iteration, plus two
safeguards that make it indifferent to the scale of the loss:
  * the first step (and every step while no curvature pair is stored) moves
    the pixel that moves most by `first_step` pixel units, whatever the
    gradient's magnitude. optax's first step is the raw gradient when its norm
    is below 1 and torch's is scaled by min(1, 1/|g|_1): with tiny losses both
    barely move the image, and every later step inherits that scale (the
    "stall").
  * a pair (s, y) is stored only if s^T y > eps |s| |y|, with eps =
    CURVATURE_EPS: a relative test, so it means the same at every loss scale,
    set just above float32 round-off (see CURVATURE_EPS). A pair with s^T y <= 0
    (negative curvature) would make the inverse-Hessian estimate indefinite
    and the next step uphill; optax stores it anyway.
After the first pair the initial inverse Hessian is gamma I with gamma =
s^T y / y^T y of the newest stored pair, which carries the loss's scale, so the
whole trajectory is invariant to multiplying the loss by a constant.

Pixel units (`in_pixel_units`): the step optimises the image in the network's
input space, whose units depend on the weights' convention (0..255 minus a
mean for Caffe, (rgb - mean) / std for torchvision). The wrapper makes the
optimiser see the image as RGB x 255, so `learning_rate` (Adam) and
`first_step` (L-BFGS) are in pixel units (0..255) for every convention: it is
exactly optimising p = RGB x 255, with x = A p + b the affine map of
preprocessing, since dL/dp = A dL/dx and a step dp is dx = A dp.

References:
  Nocedal & Wright, Numerical Optimization, 2nd ed., 2006, Sec. 7.2.
  Liu & Nocedal 1989, "On the limited memory BFGS method for large scale
  optimization", Math. Programming 45.
"""

import operator
from typing import NamedTuple
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nst_jax import errors
from nst_jax.core import checks
from nst_jax.core import pixels

OPTIMIZERS = ('lbfgs', 'adam')
# Adam's default step, in pixel units (0..255): jcjohnson/neural-style's
# learning rate of 10 with its Caffe weights, whose input units are pixels.
DEFAULT_ADAM_LEARNING_RATE = 10.0
# L-BFGS history: on LSUV-scaled weights (256 px, 300 its) 30 pairs matched 100's
# loss (2906 vs 2905) 8% sooner at 0.3x the memory; 10 was worse (docs/method.md).
DEFAULT_LBFGS_MEMORY = 30
# The size of L-BFGS's first step: the largest change of any pixel, in
# pixel units. Chosen by measurement (docs/method.md, "Optimisers").
DEFAULT_FIRST_STEP = 8.0
# The displayable range in pixel units: where L-BFGS keeps the image.
PIXEL_RANGE = (0.0, 255.0)
# The curvature test s^T y > CURVATURE_EPS |s| |y|. A float32 dot product of
# n terms carries a rounding error of up to about log2(n) u sum |s_i y_i| <=
# log2(n) u |s| |y| (pairwise summation, u = 2^-24): about 1e-6 for the 2e5
# to 1e7 pixel values of 256 px to 2048 px images. A pair whose measured
# curvature is below that is indistinguishable from none; 1e-5 leaves a
# factor of 10 of margin. For comparison torch skips s^T y <= 1e-10 in absolute
# terms, which means nothing at all when the loss is 1e-8 or 1e8.
CURVATURE_EPS = 1e-5


class LbfgsState(NamedTuple):
  """The state of `lbfgs`, for one image.

  Attributes:
    count: iterations done, int32.
    stored: curvature pairs stored so far (capped at the memory size), int32.
    head: the slot the next stored pair goes to, int32.
    gamma: s^T y / y^T y of the newest stored pair (1 before there is one).
    prev_grad: the gradient at the previous iterate.
    prev_step: the step taken from it, s = x_k - x_{k-1}.
    s: [m, ...] stored steps, slot `head - 1` the newest.
    y: [m, ...] stored gradient differences.
    rho: [m] 1 / s^T y of each slot, 0 for an empty slot.
    shrink: the first step's backtracking factor (t / t0), reused by later
      steps taken without curvature pairs.
  """

  count: jax.Array
  stored: jax.Array
  head: jax.Array
  gamma: jax.Array
  prev_grad: optax.Updates
  prev_step: optax.Updates
  s: optax.Updates
  y: optax.Updates
  rho: jax.Array
  shrink: jax.Array


def _vdot(a, b) -> jax.Array:
  """sum(a * b) over every leaf, in float32."""
  leaves = jax.tree.leaves(jax.tree.map(lambda u, v: jnp.vdot(u, v), a, b))
  return sum(leaves, jnp.zeros((), jnp.float32))


def _max_abs(a) -> jax.Array:
  return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(a)]))


def lbfgs(
  memory_size: int,
  *,
  first_step: float = DEFAULT_FIRST_STEP,
  curvature_eps: float = CURVATURE_EPS,
  bounds: tuple[float, float] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """L-BFGS with a scale-free, backtracked first step and a relative curvature test.

  Args:
    memory_size: m, the number of curvature pairs kept.
    first_step: the largest change of any coordinate in a step taken
      without curvature information (the first), before backtracking, in
      the units of the parameters.
    curvature_eps: a pair is stored only if s^T y > curvature_eps |s| |y|.
    bounds: (low, high) box for every coordinate, or None. With a box, the
      coordinates at a bound whose gradient pushes outward are held (the
      active set), the direction is computed for the others, and the step
      is projected onto the box; the stored step is the one actually taken
      (projected L-BFGS; `update` then needs `params`).

  Returns:
    A transformation whose updates are the full steps (apply them with
    `optax.apply_updates`; no learning rate or line search follows). Its
    `update` takes `value` and `value_fn` (optax's names): at the first
    iteration the bounded gradient step is halved until the loss decreases by
    the Armijo condition (BACKTRACK_C1, at most BACKTRACK_STEPS halvings),
    which costs extra evaluations then only; later steps taken without a
    curvature pair are shrunk by the same factor. Without `value_fn` the
    first step is not backtracked.
  """
  try:  # 2.5 or '30' failed late, in init_state's zeros or as a str < int
    whole = None if isinstance(memory_size, bool) else operator.index(memory_size)
  except TypeError:
    whole = None
  if whole is None:
    raise errors.ConfigError(
      f'memory_size (the L-BFGS memory) must be an integer >= 1, got {memory_size!r}'
    )
  memory_size = whole
  if memory_size < 1:
    raise errors.ConfigError(f'the L-BFGS memory must be at least 1, got {memory_size}')

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    stack = jax.tree.map(lambda x: jnp.zeros((memory_size, *x.shape), x.dtype), params)
    return LbfgsState(
      count=jnp.zeros((), jnp.int32),
      stored=jnp.zeros((), jnp.int32),
      head=jnp.zeros((), jnp.int32),
      gamma=jnp.ones((), jnp.float32),
      prev_grad=zeros,
      prev_step=zeros,
      s=stack,
      y=jax.tree.map(jnp.copy, stack),
      rho=jnp.zeros((memory_size,), jnp.float32),
      shrink=jnp.ones((), jnp.float32),
    )

  def project(step, free, params):
    if bounds is None:
      return step
    low, high = bounds
    return jax.tree.map(
      lambda st, f, x: jnp.clip(x + jnp.where(f, st, 0.0), low, high) - x, step, free, params
    )

  def update(grads, state, params=None, *, value=None, value_fn=None, **extra_args):
    del extra_args
    state = _store_pair(state, grads, curvature_eps, memory_size)
    free, g = None, grads
    if bounds is not None:
      if params is None:
        raise errors.ArgumentError(
          'L-BFGS with a box needs the image: call update(grads, state, image, value=..., grad=...)'
        )
      free, g = _active_set(params, grads, bounds)
    direction = _two_loop(g, state.s, state.y, state.rho, state.gamma, state.head, memory_size)
    # Without curvature information: the gradient scaled so that its largest
    # entry is first_step (guarded for an exactly zero gradient), backtracked
    # at the first iteration; later steps without pairs reuse that shrink.
    t0 = first_step / jnp.maximum(_max_abs(g), 1e-30)
    shrink = state.shrink
    if value_fn is not None and value is not None:
      # The search's result is a power of two, piecewise constant in every
      # input: its derivative is zero almost everywhere, so its inputs are
      # held constant and reverse mode never meets the while_loop's dynamic
      # condition (jax.grad through this update works).
      sg = jax.lax.stop_gradient
      x0 = sg(params)
      first = state.count == 0
      found = _backtrack(
        value_fn, sg(value), x0, sg(g), sg(t0), first, lambda st: project(st, free, x0)
      )
      shrink = jnp.where(first, found, shrink)
    bounded = jax.tree.map(lambda gr: gr * t0 * shrink, g)
    direction = jax.tree.map(lambda d, b: jnp.where(state.stored > 0, d, b), direction, bounded)
    step = project(jax.tree.map(jnp.negative, direction), free, params)
    return step, state._replace(
      count=state.count + 1, prev_grad=grads, prev_step=step, shrink=shrink
    )

  _BACKTRACKING.add(update)
  return optax.GradientTransformationExtraArgs(init, update)


# The `update` functions that backtrack their first step when given
# `value_fn` (`lbfgs`, and `in_pixel_units` around it): `backtracks` reads it.
_BACKTRACKING: 'weakref.WeakSet' = weakref.WeakSet()


def backtracks(optimizer: optax.GradientTransformation) -> bool:
  """Whether `optimizer` backtracks its first step when its update gets `value_fn`.

  True for this module's L-BFGS (`lbfgs`, `make_optimizer('lbfgs')`): a step
  that passes `value_fn` then runs extra forward passes in a while_loop at the
  first iteration, so the engine compiles that first step as its own program
  (`nst_jax.core.step.make_step`) and every later iteration's program holds one
  forward and one backward pass. False for Adam and any other optax optimiser.
  """
  return optimizer.update in _BACKTRACKING


def _store_pair(state: LbfgsState, grads, eps: float, m: int) -> LbfgsState:
  """Stores the newest pair (s, y) if its curvature passes the test (module docstring)."""
  s_new = state.prev_step
  y_new = jax.tree.map(jnp.subtract, grads, state.prev_grad)
  sy = _vdot(s_new, y_new)
  yy = _vdot(y_new, y_new)
  ss = _vdot(s_new, s_new)
  accept = (state.count > 0) & (sy > eps * jnp.sqrt(ss * yy))
  slot = state.head

  def put(memory, new):
    # One slot rewritten in place (with its old value when rejected): a
    # select over the whole [m, ...] buffer would copy it every iteration.
    return jax.tree.map(
      lambda mem, v: mem.at[slot].set(jnp.where(accept, v, mem[slot])), memory, new
    )

  return state._replace(
    s=put(state.s, s_new),
    y=put(state.y, y_new),
    rho=jnp.where(accept, state.rho.at[slot].set(1.0 / jnp.where(accept, sy, 1.0)), state.rho),
    head=jnp.where(accept, (slot + 1) % m, slot),
    stored=jnp.minimum(state.stored + accept.astype(jnp.int32), m),
    gamma=jnp.where(accept, sy / jnp.where(accept, yy, 1.0), state.gamma),
  )


def _active_set(params, grads, bounds):
  """(free mask, gradient with held coordinates zeroed).

  Held: at a bound with the gradient pushing further out.
  """
  low, high = bounds
  free = jax.tree.map(
    lambda x, g: ~(((x <= low) & (g > 0)) | ((x >= high) & (g < 0))), params, grads
  )
  return free, jax.tree.map(lambda g, f: jnp.where(f, g, 0.0), grads, free)


# The first step's backtracking (`lbfgs`): Armijo's sufficient decrease
# f(x + s) <= f(x) + c1 g^T s with Nocedal & Wright's usual c1, halving the
# step at most this many times (2^-30 of the bounded step is far below any
# pixel change that matters).
BACKTRACK_C1 = 1e-4
BACKTRACK_STEPS = 30


def _backtrack(value_fn, value, params, g, t0, needed, project) -> jax.Array:
  """The shrink 2^-k <= 1 of t0 whose (projected) step along -g decreases the loss enough.

  Runs only when `needed` (the first iteration): otherwise no evaluation.
  The test allows the loss's own float32 rounding (a few ulps of |f|), so
  that a zero or tiny gradient does not halve the step for nothing.
  """
  noise = 4 * float(jnp.finfo(jnp.float32).eps) * jnp.abs(value)

  def trial(t):
    step = project(jax.tree.map(lambda gr: -t * gr, g))
    x = jax.tree.map(jnp.add, params, step)
    return value_fn(x), _vdot(g, step)

  def cond(carry):
    t, f, slope, k = carry
    enough = f <= value + BACKTRACK_C1 * slope + noise
    return needed & (k < BACKTRACK_STEPS) & ~enough

  def body(carry):
    t, _, _, k = carry
    t = jnp.where(k > 0, 0.5 * t, t)
    f, slope = trial(t)
    return t, f, slope, k + 1

  inf = jnp.asarray(jnp.inf, jnp.float32)
  init = (t0, inf, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
  t, _, _, _ = jax.lax.while_loop(cond, body, init)
  return t / t0


def _two_loop(grads, s_mem, y_mem, rho, gamma, head, m: int):
  """H g by the two-loop recursion over the stored pairs, newest first.

  Empty slots have rho = 0 and so contribute nothing.
  """

  def pick(memory, i):
    return jax.tree.map(lambda mem: mem[i], memory)

  def first(k, carry):
    q, alphas = carry
    i = (head - 1 - k) % m  # newest to oldest
    alpha = rho[i] * _vdot(pick(s_mem, i), q)
    q = jax.tree.map(lambda q_, y_: q_ - alpha * y_, q, pick(y_mem, i))
    return q, alphas.at[i].set(alpha)

  q, alphas = jax.lax.fori_loop(0, m, first, (grads, jnp.zeros((m,), jnp.float32)))
  r = jax.tree.map(lambda x: gamma * x, q)

  def second(k, r):
    i = (head + k) % m  # oldest to newest
    beta = rho[i] * _vdot(pick(y_mem, i), r)
    return jax.tree.map(lambda r_, s_: r_ + (alphas[i] - beta) * s_, r, pick(s_mem, i))

  return jax.lax.fori_loop(0, m, second, r)


def pixel_scale(convention: pixels.InputConvention) -> np.ndarray:
  """A = dx/dp per network channel, p = RGB x 255 and x the network input.

  x_c = (p_c' * scale / 255 - mean_c) / std_c, so A_c = scale / (255 std_c)
  (the channel order of x is the network's; a BGR flip only permutes). All
  ones for the Caffe convention.
  """
  return np.asarray(convention.scale / (255.0 * np.asarray(convention.std)), np.float32)


def in_pixel_units(
  inner: optax.GradientTransformationExtraArgs, convention: pixels.InputConvention
) -> optax.GradientTransformationExtraArgs:
  """`inner` run on the image in pixel units (RGB x 255), for network-space params.

  The gradient is multiplied by A = dx/dp per channel before `inner` sees it,
  the params are given to it as pixels p = (x + mean / std) / A, and its step
  is multiplied by A after: exactly optimising p (module docstring).
  Multiplying by A = 1 (Caffe) is exact, so there the steps are unchanged.
  """
  factor = pixel_scale(convention)
  offset = np.asarray(convention.mean, np.float32) / np.asarray(convention.std, np.float32)

  def channels(v, x):
    # Channels last: [..., 3] leaves of any rank (vmapped or not).
    return v.reshape((1,) * (x.ndim - 1) + (3,))

  def to_network(p):
    return jax.tree.map(lambda v: v * channels(factor, v) - channels(offset, v), p)

  def update(grads, state, params=None, *, value_fn=None, **extra_args):
    grads = jax.tree.map(lambda g: g * channels(factor, g), grads)
    if params is not None:
      params = jax.tree.map(lambda x: (x + channels(offset, x)) / channels(factor, x), params)
    if value_fn is not None:
      network_fn = value_fn
      value_fn = lambda p: network_fn(to_network(p))  # noqa: E731
    step, state = inner.update(grads, state, params, value_fn=value_fn, **extra_args)
    return jax.tree.map(lambda u: u * channels(factor, u), step), state

  if backtracks(inner):
    _BACKTRACKING.add(update)
  return optax.GradientTransformationExtraArgs(inner.init, update)


def config_arguments(optim_config) -> dict:
  """`make_optimizer`'s keywords for an OptimConfig (name aside): its optimiser's only.

  learning_rate is Adam's, lbfgs_memory and box L-BFGS's (the other refuses each).
  """
  o = optim_config
  if o.name == 'adam':
    return {'learning_rate': o.learning_rate}
  return {'memory_size': o.lbfgs_memory, 'box': o.box}


def make_optimizer(
  name: str = 'lbfgs',
  *,
  learning_rate: float | None = None,
  memory_size: int | None = None,
  first_step: float | None = None,
  box: bool | None = None,
  convention: pixels.InputConvention | str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The image's optimiser, behind one `update` signature.

  Args:
    name: 'lbfgs' or 'adam'.
    learning_rate: Adam's step in pixel units (0..255; default 10). Refused
      with L-BFGS, whose step is 1 as in the classic tools (its first step is
      `first_step`).
    memory_size: L-BFGS's curvature pairs (None: 30).
    first_step: L-BFGS's first step, the largest pixel change, in pixel units (None: 8).
    box: keep L-BFGS's image inside the displayable range, pixels 0..255
      (projected L-BFGS, see `lbfgs`; None: True). These three are L-BFGS's:
      refused with Adam, which has none of them.
    convention: the weights' input convention (the network space the image
      lives in; `WeightsInfo.input_convention`, or its name). Required: the
      pixel units and the box depend on it.

  Returns:
    An optax transformation; call `update(grads, state, image, value=...,
    grad=..., value_fn=...)` (the extra arguments are accepted and unused).
  """
  if convention is None:
    raise errors.ConfigError(
      "make_optimizer needs convention= (the weights' input convention): pass "
      'convention=weights.info.input_convention'
    )
  convention = pixels.as_convention(convention)
  if name == 'lbfgs':
    if learning_rate is not None:
      raise errors.ConfigError(
        "learning_rate is Adam's; L-BFGS takes no learning rate (its step is 1, its first "
        "step's largest pixel change first_step): drop it, or use make_optimizer('adam', ...)"
      )
    first_step = DEFAULT_FIRST_STEP if first_step is None else first_step
    checks.positive_number(first_step, 'first_step')
    box = box is None or checks.flag(box, 'box')  # 'false' is truthy: a box the caller turned off
    memory = DEFAULT_LBFGS_MEMORY if memory_size is None else memory_size
    inner = lbfgs(memory, first_step=first_step, bounds=PIXEL_RANGE if box else None)
  elif name == 'adam':
    checks.lbfgs_only(memory_size=memory_size, first_step=first_step, box=box)
    lr = DEFAULT_ADAM_LEARNING_RATE if learning_rate is None else learning_rate
    checks.positive_number(lr, 'learning_rate')
    inner = optax.with_extra_args_support(optax.adam(lr))
  else:
    raise errors.ConfigError(f'optimizer must be one of {", ".join(OPTIMIZERS)}, got {name!r}')
  return in_pixel_units(inner, convention)
