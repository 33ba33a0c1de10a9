"""One-line checks of the step's own arguments: the optimiser, its state, `active`, the loss_fn.

Split from nst_jax.core.checks (the arguments every research call shares);
like those they raise naming the argument and the fix, and run at trace time
on shapes, types and signatures (values only where concrete).
"""

from collections.abc import Callable, Mapping
import functools
import hashlib
import inspect
import re
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import checks
from nst_jax.core import host_state
from nst_jax.core import pixels


def init_arguments(image: Any, tx: Any) -> None:
  """init_state's: the images (not the optimiser first: trial 27 said 'got shape (2,)')."""
  if callable(getattr(image, 'init', None)) and callable(getattr(image, 'update', None)):
    raise errors.ConfigError(
      'init_state got the optimiser first; the order is init_state(images, optimizer)'
    )
  pixels.check_network_images(image, 'image')
  optimizer(tx)


def optimizer(tx: Any) -> None:
  """Refuses what is not an optax transformation: an optimiser's name, or a factory not called."""
  if callable(getattr(tx, 'init', None)) and callable(getattr(tx, 'update', None)):
    return
  ours = "nst_jax.make_optimizer('lbfgs', convention=weights.info.input_convention)"
  shown, fix = f'{type(tx).__name__} {tx!r}', f'pass {ours}'
  if isinstance(tx, str):
    fix = f'pass {ours.replace(repr("lbfgs"), repr(tx))}'
  elif callable(tx):  # optax.adam rather than optax.adam(lr)
    name = getattr(tx, '__qualname__', type(tx).__name__)
    module = getattr(tx, '__module__', None) or ''
    name = f'{"optax." * module.startswith("optax")}{name}'
    shown, fix = f'the function {name}', f'call it: {name}(learning_rate)'
    if not hasattr(tx, '__qualname__'):  # a functools.partial, a class instance
      shown, fix = f'a {name}', 'call it to make the transformation'
    if module.startswith('nst_jax'):
      fix = f'call it: {ours}'
  raise errors.ArgumentError(
    f'optimizer must be an optax GradientTransformation, got {shown}: {fix}'
  )


def target_batches(targets: Any, n: int) -> None:
  """Refuses a target leaf without the state's leading [N], or a content mask of another map.

  The step vmaps every leaf over the batch (make_targets broadcasts one
  style, mask or weight to all N): a [1] leaf got JAX's many-line "vmap got
  inconsistent sizes", a mask of another size a TypeError in a product.
  Shapes only, at trace time; the weights and `extra` are `checks.step_inputs`'.
  """
  fix = f'make them with make_targets from the {n} content images'
  for field in ('content', 'style', 'content_mask', 'style_masks', 'content_size'):
    if (bad := checks.without_batch(getattr(targets, field), n)) is not None:
      raise errors.ConfigError(
        f'targets.{field}{bad[0]} has shape {bad[1]}, but the state holds {n} image(s); every '
        f"target needs a leading axis of {n}: {fix}, or share one image's: "
        f'jnp.broadcast_to(x, ({n}, *x.shape[1:]))'
      )
  for name, mask in (targets.content_mask or {}).items():
    if name in targets.content:
      want = (n, *np.shape(targets.content[name])[1:3])
      if tuple(np.shape(mask)) != want:
        raise errors.ConfigError(
          f'targets.content_mask[{name!r}] has shape {tuple(np.shape(mask))}, but the content '
          f"target's map there needs {want}; make it with make_targets(..., content_mask=) from "
          "[N, H, W] masks of the content's size"
        )


def optimizer_state(opt_state: Any, image: jax.Array, optimizer: Any) -> None:
  """Refuses a state made by another optimiser (a crash inside optax otherwise).

  At trace time, on shapes: another structure (Adam's state in an L-BFGS
  step), or leaves of other shapes (another L-BFGS memory size, which ran a
  trajectory neither optimiser's; another image size).
  """
  want = jax.eval_shape(jax.vmap(optimizer.init), image)
  fix = "make the state with init_state(images, optimizer) of the step's optimizer"
  if jax.tree.structure(want) != jax.tree.structure(opt_state):
    raise errors.ConfigError(
      f"state.opt_state is a {type(opt_state).__name__}, not this step's optimizer's "
      f'{type(want).__name__}; {fix}'
    )
  paths = jax.tree_util.tree_flatten_with_path(want)[0]
  for (path, leaf), got in zip(paths, jax.tree.leaves(opt_state), strict=True):
    if tuple(leaf.shape) != tuple(np.shape(got)):
      raise errors.ConfigError(
        f'state.opt_state{jax.tree_util.keystr(path)} has shape {tuple(np.shape(got))}, but '
        f"this step's optimizer makes {tuple(leaf.shape)} for these images (a state of another "
        f'memory size or image size); {fix}'
      )


def active_flags(active: Any, n: int) -> jax.Array:
  """The step's `active` as [N] bools, or a ConfigError naming the shape it must have.

  Integers count as their truth (the engine's and numpy's 0/1 masks); a
  scalar or another length would broadcast into a state of another shape,
  or fail deep in the step.
  """
  flags = jnp.asarray(active)
  fix = f'give [{n}] bools, one per image (False: that image keeps its pixels), or None'
  if flags.shape != (n,):
    raise errors.ConfigError(f'active has shape {flags.shape} for a batch of {n} image(s); {fix}')
  if not (flags.dtype == jnp.bool_ or jnp.issubdtype(flags.dtype, jnp.integer)):
    # The shape was right (trial 21: both were named, as if the shape were wrong too).
    raise errors.ConfigError(f'active is {flags.dtype}, not bools or integers; {fix}')
  if not isinstance(flags, jax.core.Tracer):
    active_values(flags)
  return flags.astype(bool)


def active_values(active: Any) -> None:
  """Refuses concrete `active` values other than 0/1 (2 read as True: a typo for a 0/1 mask)."""
  if getattr(active, 'dtype', None) == np.bool_:  # nothing to read (no transfer from the device)
    return
  values = np.asarray(active)
  if values.dtype != np.bool_ and not np.issubdtype(values.dtype, np.integer):
    # As active_flags says it: [2., 0.] was told '0/1', and [1., 0.] then refused (trial 23).
    raise errors.ConfigError(
      f'active is {values.dtype}, not bools or integers; give bools, one per image (False: '
      'that image keeps its pixels), or None'
    )
  if not np.isin(values, (0, 1)).all():
    raise errors.ConfigError(
      f'active holds {values.tolist()}; give bools or 0/1, one per image (False or 0: that image '
      'keeps its pixels)'
    )


def call_arguments(args: tuple) -> None:
  """The ready Step's host checks of (state, params, targets, active), before JAX sees them.

  A Weights got JAX's "Error interpreting argument ... as an abstract array";
  the targets' weights and `active`'s values are read where they are
  concrete ([N]: cheap; a jax.Array keeps its host copy after the first), as the
  jitted step traces even a numpy array and cannot. Traced values (under an
  outer jit or vmap) cannot be read and pass.
  """
  if len(args) > 1 and not isinstance(args[1], Mapping):
    checks.params_dict(args[1])
  if len(args) > 2:
    weight_values(args[2])
  active = args[3] if len(args) > 3 else None
  if active is None or any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(active)):
    return
  if isinstance(active, jax.Array) and not active.is_fully_addressable:
    return  # rows on other hosts: the step's shape check still holds
  active_values(active)


def weight_values(targets: Any) -> None:
  """Refuses concrete weights that are not finite and >= 0, as make_targets does.

  `Targets._replace` bypasses make_targets' checks: a negative tv_weight gave
  negative totals, a NaN style_weight a NaN loss. Traced or not fully
  addressable weights cannot be read here and pass.
  """
  for field in ('content_weight', 'style_weight', 'tv_weight'):
    w = getattr(targets, field, None)
    if w is None or isinstance(w, jax.core.Tracer):
      continue
    if isinstance(w, jax.Array) and not w.is_fully_addressable:
      continue
    values = np.asarray(w)
    if values.dtype.kind not in 'iuf':  # refused by shape and dtype in the trace
      continue
    if not (np.isfinite(values).all() and (values >= 0).all()):
      raise errors.ConfigError(
        f'targets.{field} holds {values.tolist()}; weights must be finite and >= 0, as '
        'make_targets makes them (Targets._replace does not check values)'
      )


_SIGNATURE = 'loss_fn(image, params, targets, *, model, loss_spec)'


def loss_fn_signature(loss_fn: Callable) -> inspect.Signature | None:
  """The loss_fn's signature, or a ConfigError if it cannot take model= and loss_spec=."""
  if not callable(loss_fn):  # trial 25: None failed inside the traced step, in Python's words
    raise errors.ConfigError(
      f'loss_fn must be a function {_SIGNATURE}, got {type(loss_fn).__name__} {loss_fn!r}; '
      'leave it out for nst_jax.objective'
    )
  bound = sorted({'model', 'loss_spec', 'loss_config'} & set(getattr(loss_fn, 'keywords', {})))
  if isinstance(loss_fn, functools.partial) and bound:  # trial 48 F6: replaced, unsaid
    raise errors.ConfigError(
      f'loss_fn is a partial binding {"= and ".join(bound)}=, which the step passes anew on every '
      'call; leave them out of the partial'
    )
  try:
    signature = inspect.signature(loss_fn)
  except (TypeError, ValueError):  # no signature to read
    return None
  parameters = signature.parameters
  free = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
  old = 'loss_config' in parameters and 'loss_spec' not in parameters  # the deprecated name
  spec = 'loss_config' if old else 'loss_spec'
  lacking = [k for k in ('model', spec) if k not in parameters and not free]
  if lacking:
    raise errors.ConfigError(
      f'loss_fn takes no {" or ".join(lacking)} keyword; a loss_fn must accept {_SIGNATURE} '
      '(add **kwargs to ignore them)'
    )
  try:  # as the step calls it: params and targets by name (loss_fn(img, p, t) got params=)
    signature.bind(None, params=0, targets=0, model=0, **{spec: 0})
  except TypeError:
    raise errors.ConfigError(
      f'loss_fn{signature} cannot take params= and targets= by name; name them: {_SIGNATURE}'
    ) from None
  return signature


def spec_keyword(loss_fn: Callable) -> str:
  """'loss_spec', or 'loss_config' for a loss_fn written before 0.3 (deprecated)."""
  signature = loss_fn_signature(loss_fn)
  parameters = {} if signature is None else signature.parameters
  if 'loss_spec' in parameters or 'loss_config' not in parameters:
    return 'loss_spec'
  warnings.warn(
    'a loss_fn taking loss_config= is deprecated; name that argument loss_spec (it receives '
    'a LossSpec)',
    DeprecationWarning,
    stacklevel=3,
  )
  return 'loss_config'


def call_loss_fn(loss_fn: Callable, *args: Any, **kwargs: Any) -> tuple[jax.Array, Mapping]:
  """`loss_fn(*args, **kwargs)` checked by `loss_result`; a loss_fn jitted with the model and
  spec as arrays is one line naming the fix (trial 40: JAX's words named neither)."""
  try:
    result = loss_fn(*args, **kwargs)
  except TypeError as e:
    text = str(e)
    if 'as an abstract array' not in text or not re.search(r'at path (model|loss_spec)', text):
      raise
    raise errors.ConfigError(
      'loss_fn is jitted with the model and loss spec as arrays; jit it with '
      "static_argnames=('model', 'loss_spec')"
    ) from None
  return loss_result(result)


def loss_result(result: Any) -> tuple[jax.Array, Mapping]:
  """The loss_fn's (total, aux), or a ConfigError saying what a loss_fn must return."""
  if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping)):
    got = 'one array' if hasattr(result, 'shape') else type(result).__name__
    raise errors.ConfigError(
      f'loss_fn returned {got}; a loss_fn must return (total, dict of scalars), '
      "e.g. (total, {'total': total})"
    )
  total = result[0]
  shape, dtype = np.shape(total), getattr(total, 'dtype', np.dtype(type(total)))
  if shape != () or dtype not in (jnp.float32, jnp.float64):
    raise errors.ConfigError(
      f'loss_fn returned a total of shape {shape} and dtype {dtype}; a loss_fn must return a '
      'float32 scalar total: jnp.asarray(total, jnp.float32)'
    )
  for name, value in result[1].items():  # trial 37: a dict, None or tuple failed later, unnamed
    _aux_entry(name, value)
  shaped = {k: np.shape(v) for k, v in result[1].items() if np.shape(v) != ()}
  if shaped:  # the step would return each as [N, ...], not the [N] losses documented
    name, shape = next(iter(shaped.items()))
    raise errors.ConfigError(
      f'loss_fn returned aux[{name!r}] of shape {shape}; aux must be a dict of scalars: reduce '
      f'it, e.g. jnp.mean(aux[{name!r}])'
    )
  return result


def _aux_entry(name: Any, value: Any) -> None:
  """One aux entry: a string key and a real number (trials 37, 38, 40: anything else met JAX's
  words or a sort of the keys, naming neither aux nor the entry)."""
  if not isinstance(name, str):
    raise errors.ConfigError(
      f'loss_fn returned aux with the key {name!r}, {_kind(name)}; aux keys must be strings, '
      f"e.g. aux['{name}']"
    )
  if isinstance(value, (Mapping, list, tuple)):
    raise errors.ConfigError(
      f'loss_fn returned aux[{name!r}], {_kind(value)}; aux must be a flat dict of scalars: give '
      f"each part its own key, e.g. aux['{name}/part']"
    )
  dtype = getattr(value, 'dtype', None)
  if dtype is None:
    real = isinstance(value, (bool, int, float))
  else:
    real = any(jnp.issubdtype(dtype, kind) for kind in (jnp.floating, jnp.integer, jnp.bool_))
  if not real:
    raise errors.ConfigError(
      f'loss_fn returned aux[{name!r}], {_kind(value)}; aux values must be real numbers '
      '(scalars), e.g. jnp.float32(value)'
    )


def _kind(value: Any) -> str:
  """'None', 'an array of complex64', 'a str', 'an int'."""
  if value is None:
    return 'None'
  if hasattr(value, 'dtype'):
    return f'an array of {value.dtype}'
  name = type(value).__name__
  return f'{"an" if name[0] in "aeiou" else "a"} {name}'


def declared_identity(loss_fn: Callable) -> str | None:
  """The identity a loss_fn declares by its `nst_jax_identity` attribute (a partial's function's,
  a bound method's instance's too), for a checkpoint to compare instead of the digest; None where
  it declares none.

  For host state that changes without changing the result (a list a host callback records into,
  a counter, a cache), which the digest counts (trial 42): the caller answers for it.
  """
  fn = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
  owner = host_state.attribute(fn, '__self__')  # a bound method's instance (44: no attribute)
  # The most particular first: a partial's own, then the instance's (trial 46: its class's
  # function's, read through the bound method, won), then the function's.
  found = (loss_fn, owner, fn) if fn is not loss_fn else (owner, fn)
  declared = next(
    (d for o in found if (d := host_state.attribute(o, 'nst_jax_identity')) is not None), None
  )
  if declared is None:
    return None
  if not isinstance(declared, str) or not declared.strip():
    raise errors.ConfigError(
      f'loss_fn.nst_jax_identity is {declared!r}; give a non-empty string naming what it '
      "computes, e.g. 'my-loss-v1'"
    )
  return 'declared:' + re.sub(r'\s+', '_', declared.strip())


def loss_fn_identity(
  loss_fn: Callable,
  *,
  model: Any,
  loss_spec: Any,
  params: Any,
  targets: Any,
  shape: tuple,
  callbacks: list | None = None,
  host_callbacks: list | None = None,
) -> str:
  """A custom loss_fn as a checkpoint names it, so that a resume with another is refused.

  Its name and a digest of what it computes: the jaxpr of
  `loss_fn(x, params=, targets=, model=, loss_spec=)` traced on abstract
  arguments (an image [*shape, 3], the params and one image's targets, as
  shapes), and the values of the arrays it closes over. Whatever the result
  depends on is in it (code, the functions it calls, globals, closures,
  defaults, fields, arrays in them); what leaves the result alone (a counter
  the function keeps) is not. Trials 29, 31 and 33 found one Python-side
  heuristic after another that let another objective resume unsaid.
  Another JAX version may trace the same function otherwise (then refused).

  Args:
    loss_fn: the per-image loss (see nst_jax.core.step.update_step).
    model, loss_spec: the step's.
    params, targets: arrays or shapes (one image's targets, no batch axis).
    shape: the image's (height, width).
    callbacks: a list that gets the host callbacks' functions, jax.debug.callback's too (the
      compile cache keys by them, as host_state.key says: Python state the digest cannot see
      may differ).
    host_callbacks: a list that gets the host callbacks' alone (pure_callback's, io_callback's).
  """
  fn = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
  name = host_state.attribute(fn, '__qualname__') or type(fn).__qualname__  # 52: a KeyError
  with warnings.catch_warnings():  # the step warns of a deprecated loss_config= once
    warnings.simplefilter('ignore', DeprecationWarning)
    keyword = spec_keyword(loss_fn)

  def call(x, p, t):
    return call_loss_fn(loss_fn, x, params=p, targets=t, model=model, **{keyword: loss_spec})

  def abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)

  image = jax.ShapeDtypeStruct((*shape, 3), jnp.float32)
  # The gradient's program, which holds the loss's and the backward rules (custom_vjp's: trial
  # 35), and its outputs' tree: the aux names the run logs.
  closed, out = jax.make_jaxpr(jax.value_and_grad(call, has_aux=True), return_shape=True)(
    image, abstract(params), abstract(targets)
  )
  # An object's address (a callback's, say) differs from process to process.
  text = host_state.ADDRESS.sub('', str(closed.jaxpr))
  digest = hashlib.sha256(f'{text} {jax.tree.structure(out)}'.encode())
  consts, hosts, loggers = list(closed.consts), [], []
  _inside(closed.jaxpr, consts, hosts, loggers)
  for into, found in ((callbacks, hosts + loggers), (host_callbacks, hosts)):
    if into is not None:
      into.extend(found)
  for const in consts:
    if jax.dtypes.issubdtype(getattr(const, 'dtype', None), jax.dtypes.prng_key):
      const = jax.random.key_data(const)  # a typed key has no bytes of its own (trial 35)
    value = np.asarray(const)
    digest.update(f'{value.dtype}{value.shape}'.encode() + value.tobytes())
  for fn in hosts:  # a host callback: Python, not traced; described as host_state says
    digest.update(host_state.describe(fn).encode())
  # Its name and the digest: short enough for a refusal to show both.
  return f'{name} {digest.hexdigest()[:8]}'


def _inside(jaxpr: Any, consts: list, hosts: list, loggers: list) -> None:
  """Adds the arrays and host callbacks of `jaxpr`'s inner programs (an inner jit's closed-over
  arrays are its own consts, not the outer's: trial 35) to `consts` and `hosts`, and
  jax.debug.callback's functions to `loggers` (they leave the result alone: not in the
  identity, but the compile cache's key: trial 40, a reused program logged into the first run's
  list)."""
  for eqn in jaxpr.eqns:
    for param in eqn.params.values():
      for value in param if isinstance(param, (tuple, list)) else (param,):
        if hasattr(value, 'jaxpr') and hasattr(value, 'consts'):  # a ClosedJaxpr
          consts.extend(value.consts)
          _inside(value.jaxpr, consts, hosts, loggers)
        elif hasattr(value, 'eqns'):  # a Jaxpr
          _inside(value, consts, hosts, loggers)
        elif hasattr(value, 'callback_func'):  # pure_callback's, io_callback's
          hosts.append(value.callback_func)
    if eqn.primitive.name == 'debug_callback' and callable(eqn.params.get('callback')):
      loggers.append(eqn.params['callback'])


# JAX's words when a loss_fn's io_callback meets the step's vmap or L-BFGS's batched while_loop.
_IO_EFFECT_ERRORS = ('IO effects not supported in while_loop', 'Cannot `vmap` ordered IO callback')


def io_effect_error(e: Exception) -> errors.ConfigError | None:
  """A one-line ConfigError for JAX's refusal of a loss_fn's io_callback (trials 35, 37)."""
  if not any(words in str(e) for words in _IO_EFFECT_ERRORS):
    return None
  return errors.ConfigError(
    'loss_fn has an IO effect (jax.experimental.io_callback), which the step cannot carry (it '
    "maps the loss over the images, and L-BFGS's line search loops over them); log with "
    'jax.debug.callback, or compute on the host with jax.pure_callback'
  )
