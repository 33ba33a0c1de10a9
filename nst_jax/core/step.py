"""The step: optimisation state, the network, the optimiser, and one iteration.

Nothing here reads files, logs, or takes a `StyleConfig`: every input is an
argument, so research code can jit, vmap and differentiate these freely.

  * `make_model(pooling=..., dtype=..., precision=...)`: the VGG-19.
  * `initial_image(content, init=..., seed=..., convention=...)` and
    `init_state(image, optimizer)` -> `StyleState(image, opt_state)`.
  * `update_step(state, params, targets, *, model, optimizer, loss_spec,
    loss_fn=objective)`: one optimiser iteration, a module-level pure
    function: one forward and one backward pass of the network per image.
  * `make_step(model, optimizer, loss_spec, loss_fn=objective)`: it jitted
    with the state donated, as the engine runs it: `step.first(...)` for the
    first iteration (L-BFGS's backtracked first step), `step(...)` for the
    rest.

The targets and the objective are in nst_jax.core.objective.

Images are batch-shaped [N, H, W, 3] throughout. Each image of the batch is
an independent problem: the step `vmap`s one image's loss and optimiser
update, so every image keeps its own L-BFGS history and gets exactly the
result it would get alone.

The optimised variable is the image in the network's input space (for the
Caffe convention: BGR, 0..255 minus the mean pixel), as in the classic tools;
the optimisers see it in pixel units (nst_jax.core.optim.in_pixel_units).
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import inspect
from typing import Any, NamedTuple
import warnings

import jax
import jax.numpy as jnp
import optax

from nst_jax import errors
from nst_jax.core import checks
from nst_jax.core import donation
from nst_jax.core import experiments
from nst_jax.core import objective as objective_lib
from nst_jax.core import optim
from nst_jax.core import pixels
from nst_jax.core import step_checks
from nst_jax.core import vgg

# Standard deviation of the random init in network units, from
# jcjohnson/neural-style (`torch.randn(...):mul(0.001)`).
RANDOM_INIT_STD = 0.001
# The starting images `initial_image` names by keyword; any other `init` means
# an image the caller passes (a file, for the config and the command line).
INIT_KEYWORDS = ('content', 'random', 'gray')


class StyleState(NamedTuple):
  """The optimisation state: donated to and returned by `update_step`.

  Attributes:
    image: [N, H, W, 3] float32 images in the network's input space.
    opt_state: the optimiser's state, with a leading [N] axis on every leaf.
  """

  image: jax.Array
  opt_state: optax.OptState


def make_model(
  pooling: Any = 'max', *, dtype: str = 'float32', precision: str | None = 'highest'
) -> vgg.VGG:
  """The VGG-19 of a run.

  Args:
    pooling: 'max' or 'avg'.
    dtype: compute dtype, 'float32' or 'bfloat16' (or jnp.bfloat16, jnp.float32).
    precision: 'highest', 'high', 'default' or None (see
      nst_jax.core.vgg.PRECISIONS).
  """
  m = pooling.model if hasattr(pooling, 'model') else pooling  # a StyleConfig, as before 0.2
  if hasattr(m, 'precision'):  # a ModelConfig: its fields (trial 27: an AttributeError)
    if m is not pooling:
      warnings.warn('make_model(config) is deprecated; use make_model(cfg.model)',
                    DeprecationWarning, stacklevel=2)  # fmt: skip
    checks.model_group_alone(dtype, precision)
    pooling, dtype, precision = m.pooling, m.dtype, m.precision
  checks.choice(dict.fromkeys(vgg.POOLING_MODES), pooling, 'pooling')
  if not isinstance(dtype, str):  # jnp.bfloat16, np.float32: the names the table holds
    dtype = getattr(dtype, '__name__', None) or getattr(dtype, 'name', dtype)
  return vgg.VGG19(
    pooling=pooling,
    dtype=checks.choice(vgg.COMPUTE_DTYPES, dtype, 'dtype'),
    precision=None if precision is None else checks.choice(vgg.PRECISIONS, precision, 'precision'),
  )


def prepare_params(
  params: Mapping, layers: Sequence[str] | None = None, *, backend: str | None = None
) -> dict:
  """The weights as a step on `backend` ('cpu', 'gpu', 'tpu') should receive them.

  On CPU each convolution also carries its kernel laid out for the input
  gradient, and those with 256 channels or more their Winograd transforms
  (`vgg.with_backward_kernels`, 357 MB more for VGG-19): XLA no longer lays
  out every kernel on every iteration, and the deep layers' convolutions on
  maps of 24x32 to 192x256 run as Winograd F(2x2, 3x3) (`nst_jax.core.winograd`),
  about half the time each; see docs/benchmarks.md. Elsewhere the params are
  returned as they are (XLA's own convolutions; not measured on GPU/TPU
  yet). Prepare once, outside the loop, and pass the result to `update_step`
  in place of `params`; features and gradients are the same up to float32
  rounding. Pass the run's `layers` (e.g. `loss_spec.feature_layers`) to
  prepare only the convolutions up to the deepest of them. `backend` None:
  the platform of the device that holds the params (JAX's default device for
  host arrays); another name than JAX's (lower case) is refused.
  """
  checks.params_dict(params)
  if isinstance(layers, str):  # one name, as the model and extract_features take it
    layers = (layers,)
  backend = _platform(params) if backend is None else checks.platform(backend)
  if backend == 'cpu':
    return vgg.with_backward_kernels(dict(params), layers)
  return dict(params)


def _platform(params: Mapping) -> str:
  """The platform of the device holding the params (JAX's default for host arrays)."""
  try:
    return next(iter(jax.tree.leaves(params)[0].devices())).platform
  except (AttributeError, IndexError, TypeError, jax.errors.ConcretizationTypeError):
    return jax.default_backend()


def make_optimizer(name: Any = 'lbfgs', **kwargs) -> optax.GradientTransformationExtraArgs:
  """`nst_jax.core.optim.make_optimizer`, with `lbfgs_memory` (the config's name) for `memory_size`.

  Also accepts a StyleConfig (deprecated). An unknown keyword is refused in
  a TypeError naming the closest one it takes (or all of them).
  """
  if not isinstance(name, str) and hasattr(name, 'optim'):  # None: refused as a wrong name
    warnings.warn(
      'make_optimizer(config) is deprecated; use make_optimizer(name, learning_rate=..., '
      'memory_size=..., convention=...)',
      DeprecationWarning,
      stacklevel=2,
    )
    name, kwargs = name.optim.name, {**optim.config_arguments(name.optim), **kwargs}
  if 'lbfgs_memory' in kwargs:  # the config field's name (OptimConfig.lbfgs_memory)
    if 'memory_size' in kwargs:
      raise errors.ArgumentError('make_optimizer got both lbfgs_memory and memory_size; give one')
    kwargs['memory_size'] = kwargs.pop('lbfgs_memory')
  known = [k for k in inspect.signature(optim.make_optimizer).parameters if k != 'name']
  errors.unknown_keywords('make_optimizer', kwargs, known)
  return optim.make_optimizer(name, **kwargs)


def init_state(image: jax.Array, optimizer: optax.GradientTransformation) -> StyleState:
  """A fresh state for [N, H, W, 3] images, one optimiser state per image.

  The image is copied: the step donates the state, and the caller's array
  (often the content image, needed again) must survive that.
  """
  step_checks.init_arguments(image, optimizer)
  image = jnp.array(image, jnp.float32, copy=True)
  return StyleState(image=image, opt_state=jax.vmap(optimizer.init)(image))


_WEIGHTS = ('content_weight', 'style_weight', 'tv_weight')
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def update_step(
  state: StyleState,
  params: Mapping[str, Mapping[str, jax.Array]],
  targets: objective_lib.Targets,
  active: jax.Array | None = None,
  *,
  model: vgg.VGG,
  optimizer: optax.GradientTransformationExtraArgs,
  loss_spec: objective_lib.LossSpec | None = None,
  loss_fn: LossFn = objective_lib.objective,
  loss_config: Any = None,
  backtrack: bool = False,
) -> tuple[StyleState, dict[str, jax.Array]]:
  """One optimiser iteration on every image of the batch.

  Evaluates the loss and its gradient once per image (L-BFGS without line
  search and Adam both need exactly one evaluation per iteration) and applies
  the optimiser's update: one forward and one backward pass of the network,
  and nothing the reverse mode cannot go through (`jax.grad` of a loss after
  k steps works; docs/api.md has the table).

  Args:
    state: images [N, H, W, 3] and per-image optimiser states.
    params: VGG parameters (shared by the batch; not donated).
    targets: per-image targets with leading [N] axes (not donated).
    active: optional [N] bools (or 0/1 integers); an image whose entry is
      False keeps its pixels (it has converged and waits for the rest of
      the batch); its optimiser state still moves on, so this is no pause
      (selecting the whole state would cost every step). Another shape is
      refused; values other than 0/1 where they are concrete (not under an
      outer jit, vmap or grad).
    model: the VGG (static).
    optimizer: from `make_optimizer` (static).
    loss_spec: the loss's structure (static, hashable; `LossConfig.spec`).
      The weights are in `targets`, so other weights reuse the compiled step.
    loss_fn: `loss_fn(image [H, W, 3], params, targets_of_one_image, *,
      model, loss_spec) -> (total, dict of scalars)` (static); `objective`
      by default. The step needs no key: it sets 'total' to the total it
      optimises (`stylize` also wants 'content', 'style' and 'tv'). Write
      a custom term by calling `objective` and adding to it.
      One written before 0.3, taking `loss_config=`, gets the spec under
      that name (deprecated).
    loss_config: deprecated name of `loss_spec` (a LossConfig is accepted).
    backtrack: (static) also give the optimiser `value_fn`, so that L-BFGS
      backtracks its first step (Armijo, halving up to 30 times: extra
      forward passes in a while_loop, at the first iteration only). Pass
      True for the first iteration of a run, as `make_step`'s `first` does
      and the engine does; later iterations need not (a state past its first
      iteration is never searched again). Without it L-BFGS's first step
      moves the pixel that moves most by `first_step` pixels, unchecked.
      The search's result is held constant under differentiation (it is a
      power of two, piecewise constant), so `jax.grad` goes through this too.

  Returns:
    (new state, losses): losses maps each key of `loss_fn`'s dict, and
    'total' (the optimised total), to [N] values of the images *before*
    this update.
  """
  if loss_config is not None:
    warnings.warn(
      'update_step(loss_config=...) is deprecated; use loss_spec=', DeprecationWarning, stacklevel=2
    )
    loss_spec = objective_lib.as_spec(loss_config, config_ok=True)
  loss_spec = objective_lib.as_spec(loss_spec)
  checks.vgg_model(model)
  checks.static_backtrack(backtrack)
  donation.refuse_donated(state)  # eager: a Step's state passed again (under jit: traced)
  checks.step_inputs(state.image, targets, loss_spec)
  step_checks.target_batches(targets, state.image.shape[0])
  step_checks.optimizer(optimizer)
  step_checks.optimizer_state(state.opt_state, state.image, optimizer)
  if active is not None:
    active = step_checks.active_flags(active, state.image.shape[0])
  # float32, as make_targets makes them: a float64 weight (jax_enable_x64) made the loss, and
  # so L-BFGS's while_loop carry, float64 against its float32 state.
  targets = targets._replace(**{k: jnp.asarray(getattr(targets, k), jnp.float32) for k in _WEIGHTS})
  spec_keyword = step_checks.spec_keyword(loss_fn)
  # This package's L-BFGS searches at its first step only, when asked
  # (`backtrack`); any other optimiser gets `value_fn` as optax defines it.
  ours = optim.backtracks(optimizer)

  def checked(*args, **kwargs):
    total, aux = step_checks.call_loss_fn(loss_fn, *args, **kwargs)
    total = jnp.asarray(total, jnp.float32)  # float64 under x64 would not fit L-BFGS's state
    return total, {**aux, 'total': total}  # the value optimised, whatever aux says (or lacks)

  def one_image(image, opt_state, image_targets):
    value_fn = functools.partial(
      checked, params=params, targets=image_targets, model=model, **{spec_keyword: loss_spec}
    )
    (value, aux), grad = jax.value_and_grad(value_fn, has_aux=True)(image)
    search = lambda x: value_fn(x)[0]  # noqa: E731  (optax's own L-BFGS searches every step)
    if ours:
      search = None
      if backtrack:
        # The trials see constant params and targets: the search's result is
        # piecewise constant, and a tangent reaching its while_loop would stop
        # jax.grad (the optimiser holds its own inputs constant likewise).
        held = jax.lax.stop_gradient((params, image_targets))
        held_fn = functools.partial(
          checked, params=held[0], targets=held[1], model=model, **{spec_keyword: loss_spec}
        )
        search = lambda x: held_fn(x)[0]  # noqa: E731
    updates, opt_state = optimizer.update(
      grad, opt_state, image, value=value, grad=grad, value_fn=search
    )
    return optax.apply_updates(image, updates), opt_state, aux

  new_image, opt_state, aux = jax.vmap(one_image)(state.image, state.opt_state, targets)
  if active is not None:
    # Only the pixels are held: a held image's optimiser state is never used again.
    new_image = jnp.where(active[:, None, None, None], new_image, state.image)
  return StyleState(image=new_image, opt_state=opt_state), aux


@dataclasses.dataclass(frozen=True)
class Step:
  """The jitted step of a run, state donated: `step(...)` each iteration, `step.first(...)` once.

  Both are `jax.jit(functools.partial(update_step, ...), donate_argnums=0)`
  (not donating traced inputs, as under `jax.grad`: `donation.DonatingJit`),
  called as `(state, params, targets, active=None) -> (state, losses)`.
  Each call first checks on the host what the jit cannot (a Weights as
  params; `active`'s values where concrete: `step_checks.call_arguments`).

  Attributes:
    update: the iteration's program: one forward and one backward pass per
      image (`update_step`). Calling the Step calls it.
    first: the first iteration's program (`update_step(..., backtrack=True)`:
      L-BFGS's backtracked first step, with its extra forward passes); the
      same object as `update` for an optimiser without that search (Adam;
      optax's L-BFGS, whose `value_fn` every step gets). Call it for a run's
      first iteration to take the step the engine and the command line take.
  """

  update: Callable
  first: Callable

  def __call__(self, state, params, targets, active=None):
    return self.update(state, params, targets, active)


def at_precision(fn: Callable, precision: jax.lax.Precision | None) -> Callable:
  """`fn`, traced with `precision` as the default of every matmul and convolution in it.

  The network's convolutions carry model.precision themselves; the Gram
  matrices, the mean_cov statistics, the L-BFGS dot products and whatever a
  loss_fn computes do not, and would lower at XLA's default (one bfloat16
  pass on TPU, TF32 on recent NVIDIA GPUs) while the L-BFGS curvature test
  assumes float32 rounding. Tracing under `jax.default_matmul_precision`
  gives every dot_general and convolution without its own precision the
  configured one (tests/engine_test.py reads the lowered step). `make_step` applies it.

  Args:
    fn: the function to trace (the step, the targets).
    precision: model.precision as a `jax.lax.Precision`; None: XLA's default.
  """
  if precision is None:
    return fn
  name = jax.lax.Precision(precision).name.lower()

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.default_matmul_precision(name):
      return fn(*args, **kwargs)

  return traced


@errors.keywords_checked  # trial 25: make_step(lossfn=...) was Python's own TypeError
def make_step(
  model: vgg.VGG,
  optimizer: optax.GradientTransformationExtraArgs,
  loss_spec: objective_lib.LossSpec,
  *,
  loss_fn: LossFn = objective_lib.objective,
  in_shardings: Any = None,
  out_shardings: Any = None,
) -> Step:
  """The step jitted with its static settings bound and the state donated.

  Example:
    >>> step = make_step(model, tx, spec)
    >>> state, losses = step.first(state, params, targets)
    >>> for _ in range(99):
    ...   state, losses = step(state, params, targets)

  Args:
    model: the VGG (`make_model`).
    optimizer: from `make_optimizer`, or any optax transformation.
    loss_spec: the loss's structure (a `LossSpec`; a LossConfig's `.spec`).
    loss_fn: the per-image loss (`update_step`'s `loss_fn`).
    in_shardings, out_shardings: given to `jax.jit` when not None (the
      engine passes its layout's).

  Returns:
    A `Step`. A concrete state passed in is donated (its buffers are reused
    for the new state): keep no other reference to it. Params and targets
    are not donated.
  """
  checks.vgg_model(model)
  step_checks.optimizer(optimizer)
  step_checks.loss_fn_signature(loss_fn)  # now, not at the first call
  loss_spec = objective_lib.as_spec(loss_spec)  # likewise (trial 23: JAX's traceback around it)
  shardings = dict(in_shardings=in_shardings, out_shardings=out_shardings)
  placed = {k: v for k, v in shardings.items() if v is not None}

  def jitted(backtrack: bool):
    fn = functools.partial(
      update_step,
      model=model,
      optimizer=optimizer,
      loss_spec=loss_spec,
      loss_fn=loss_fn,
      backtrack=backtrack,
    )
    # Donating on concrete arrays only: see donation.DonatingJit (jax.grad through calls).
    fn = at_precision(fn, model.precision)  # the Step's calls check on the host first (below)
    return donation.DonatingJit(fn, check=step_checks.call_arguments, **placed)

  update = jitted(False)
  return Step(update=update, first=jitted(True) if optim.backtracks(optimizer) else update)


def initial_image(
  content: jax.Array,
  *,
  init: str,
  seed: int,
  convention: pixels.InputConvention | None = None,
  image: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """The starting image in network space.

  Args:
    content: [N, H, W, 3] content images in network space.
    init: 'content'; 'random' (N(0, 0.001^2) in network space: the mean pixel
      plus faint noise, as in jcjohnson/neural-style); 'gray' (RGB 0.5
      everywhere); anything else means `image`.
    seed: random seed for 'random'.
    convention: the weights' input convention (`WeightsInfo.input_convention`);
      required for 'gray' and an image, which it maps into network space.
    image: RGB in [0, 1] (uint8 divided by 255), [H', W', 3] or
      [1 or N, H', W', 3] (another batch is refused), resized to the
      content's height and width (bicubic); used unless init is a keyword.
  """
  pixels.check_network_images(content, 'content')
  if init in INIT_KEYWORDS and image is not None:
    raise errors.ConfigError(
      f"initial_image got image= with init={init!r}, which would ignore it; pass init='image' "
      'to start from the image, or drop image='
    )
  if init == 'content':
    return content
  if init == 'random':
    key = jax.random.key(experiments.as_seed(seed))  # not JAX's error naming a tracer
    noise = experiments.flat_normal(key, content.shape)
    return RANDOM_INIT_STD * noise
  if init == 'gray':
    rgb = jnp.full((1, *content.shape[1:]), 0.5, jnp.float32)
  else:
    if image is None:
      raise errors.ConfigError(
        f'init {init!r} is not one of {", ".join(INIT_KEYWORDS)}, and no image was given; pass '
        'image= (RGB) to start from it, or one of those'
      )
    rgb = pixels.batched(pixels.as_rgb(image, 'image'))
    checks.start_batch(rgb.shape[0], content.shape[0], 'image')
    rgb = pixels.resize(rgb, *content.shape[1:3])
  if convention is None:
    raise errors.ConfigError(
      f"initial_image(init={init!r}) needs convention= (the weights' input convention): pass "
      'convention=weights.info.input_convention'
    )
  x = pixels.preprocess(rgb, pixels.as_convention(convention))
  return jnp.broadcast_to(x, content.shape)
