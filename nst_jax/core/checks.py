"""One-line checks of the research API's arguments: params, choices, the step's inputs.

Each raises `errors.ConfigError` naming the argument and the fix. The checks
read values only where they are concrete (under a trace only shapes and
dtypes are known), and the step's run at trace time: Python on shapes and
dict keys, nothing compiled.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import losses
from nst_jax.core import pixels
from nst_jax.core import vgg


def vgg_model(model: Any) -> None:
  """Refuses a model that is no VGG module (None was an AttributeError on stage_sizes)."""
  if not isinstance(model, vgg.VGG):
    raise errors.ArgumentError(
      f'model must be a VGG module, got {type(model).__name__}; pass model=nst_jax.make_model()'
    )


def static_backtrack(backtrack: Any) -> None:
  """Refuses a traced `backtrack` (a jit of update_step that did not make it static: JAX's
  TracerBoolConversionError from inside the step, naming no fix; trial 54 T54-6)."""
  if isinstance(backtrack, jax.core.Tracer):
    raise errors.ArgumentError(
      'update_step got a traced backtrack=; it decides the program, so make it static: '
      "functools.partial(update_step, backtrack=True), or jax.jit(..., static_argnames='backtrack')"
    )


def params_fit(params: Any, model: vgg.VGG, layers: Any) -> None:
  """Refuses params the model cannot run to `layers` with, naming the fix.

  Flax would say "Could not find parameter named kernel in scope /conv2_1"
  or that an initializer expected another shape; the caller passed a
  Weights, a path, a {'params': ...} wrapper, a network's params missing a
  layer, or another network's (VGGTiny's random params with the VGG-19
  model). Shapes only: this runs at trace time inside the step.

  Args:
    params: what the caller passed as params.
    model: the VGG they are to run in.
    layers: the layers to be computed (the network runs through the deepest).
  """
  vgg_model(model)
  params_dict(params)
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  through = vgg.layers_through(layers, model.stage_sizes)
  cin = 3
  for name in vgg.conv_names(model.stage_sizes):
    if name not in through:
      return
    width = model.widths[vgg.stage_of(name) - 1]
    layer = params.get(name)
    kernel = layer.get('kernel') if isinstance(layer, Mapping) else None
    if kernel is None:
      raise errors.ConfigError(
        f'params lack {name}, which {through[-1]} needs; pass the whole network (weights.params)'
      )
    if tuple(np.shape(kernel)) != (3, 3, cin, width):
      raise errors.ConfigError(
        f"params['{name}']['kernel'] has shape {tuple(np.shape(kernel))}, but the model's is "
        f'{(3, 3, cin, width)}; pass the model the params are for (nst_jax.make_model() for '
        "VGG-19's, nst_jax.VGGTiny() for random_scaled_params(stage_sizes=(1, 2), widths=(4, 8)))"
      )
    cin = width


def params_dict(params: Any) -> None:
  """Refuses params that are not a layer -> {'kernel', 'bias'} dict, naming what to pass."""
  if not isinstance(params, Mapping):
    fix = (
      'pass weights.params'
      if hasattr(params, 'params')
      else 'load them: nst_jax.get_weights(path).params'
    )
    raise errors.ConfigError(
      f"params is a {type(params).__name__}, not the layer -> {{'kernel', 'bias'}} dict of the "
      f'network; {fix}'
    )
  if set(params) == {'params'}:
    raise errors.ConfigError(
      "params is wrapped as {'params': ...} (Flax's variables); pass params['params']"
    )


def targets_inputs(content: Any, style: Any, content_mask: Any, style_masks: Any) -> Any:
  """make_targets' content as an array (a nested list too), or a ConfigError naming the argument.

  Checks the images and masks make_targets can use. A list as `style` is
  several styles (make_targets' blend), so only content is read as an
  array-like, as init_state and preprocess read theirs.
  """
  content = content if hasattr(content, 'shape') else np.asarray(content)
  styles = list(style) if isinstance(style, (list, tuple)) else [style]
  if not styles:
    raise errors.ConfigError(
      'no style image was given (style is empty); give one [N or 1, Hs, Ws, 3] array, or a '
      'list of them to blend'
    )
  named = [('content', content)] + [
    ('style' if len(styles) == 1 else f'style {i}', s) for i, s in enumerate(styles)
  ]
  for name, x in named:
    pixels.check_network_images(x, name)
  if content_mask is not None and (
    content_mask.ndim != 3 or content_mask.shape[-2:] != content.shape[1:3]
  ):
    raise errors.ConfigError(
      f'content_mask must be [N or 1, H, W] = [.., {content.shape[1]}, {content.shape[2]}], '
      f'got {content_mask.shape}'
      + ('; add the batch axis: content_mask[None]' if content_mask.ndim == 2 else '')
    )
  if style_masks is not None and style_masks.ndim != 4:
    raise errors.ConfigError(
      f'style_masks must be [N or 1, S, H, W], got {style_masks.shape}; add the batch axis: '
      'masks[None]'
    )
  n = content.shape[0]
  for name, mask in (('content_mask', content_mask), ('style_masks', style_masks)):
    if mask is not None and mask.shape[0] not in (1, n):
      form = ' ([N or 1, S, H, W]: images, then styles)' * (name == 'style_masks')
      # Trial 54 T54-13: a list of one [1, H, W] mask per style stacks on the batch axis.
      stack = '; one [1, H, W] mask per style stacks as np.stack(masks, axis=1)'
      raise errors.ConfigError(
        f'{name}{form} has a batch of {mask.shape[0]} for {n} content image{"s" * (n != 1)}; '
        f'give 1 (shared by every image){f" or {n}, one per image" if n != 1 else ""}'
        + (stack if name == 'style_masks' and mask.shape[1] == 1 else '')
      )
  return content


def start_batch(m: int, n: int, name: str) -> None:
  """Refuses start images neither 1 nor one per content image (a broadcasting error otherwise)."""
  if m not in (1, n):
    per_image = f' or {n}, one per content image' if n != 1 else ''
    raise errors.ConfigError(
      f'{name} has {m} images for {n} content image(s); give 1 (one start image for all){per_image}'
    )


def image_size(x: Any, layers: Any, model: vgg.VGG, name: str) -> None:
  """Refuses images too small for the deepest layer, whose maps would be empty (NaN statistics)."""
  need = vgg.min_input_size(layers, model.stage_sizes)
  height, width = np.shape(x)[-3:-1]
  if min(height, width) < need:
    deepest = vgg.layers_through(layers, model.stage_sizes)[-1]
    raise errors.ConfigError(
      f'{name} is {width}x{height} px, but {deepest} needs at least {need} px on each side; give '
      'a larger image or shallower layers'
    )


def one_image(image: jax.Array, name: str) -> None:
  """Refuses anything but one [H, W, 3] image (the step vmaps over the batch)."""
  if jnp.ndim(image) != 3 or jnp.shape(image)[-1] != 3:
    raise errors.ConfigError(
      f'{name} has shape {jnp.shape(image)}; network_features and objective take one image '
      '[H, W, 3] (the step vmaps them over the batch): pass x[0], or jax.vmap over the batch'
    )


def one_images_targets(targets: Any) -> None:
  """Refuses batched targets where objective takes one image's."""
  if jnp.ndim(targets.content_weight) != 0:
    raise errors.ConfigError(
      f'targets hold {jnp.shape(targets.content_weight)[0]} image(s) (leading batch axes); '
      "objective takes one image's: nst_jax.targets_at(targets, i, keep_batch=False)"
    )


def objective_features(features: Mapping, layers: tuple[str, ...], size: tuple[int, int]) -> None:
  """Refuses `objective(features=)` lacking a loss layer, a batch's, or another image size's.

  `size`: the image's (H, W); each 2x2 pooling before a layer floors its map
  (`vgg.downsamplings`, which holds for any stage sizes with these names).
  """
  missing = [name for name in layers if name not in features]
  if missing:
    raise errors.ConfigError(
      f'features lacks {", ".join(missing)}; compute them with network_features(image, '
      'params, model=model, layers=loss_spec.feature_layers + your layers)'
    )
  batched = [name for name in layers if jnp.ndim(features[name]) != 3]
  if batched:
    raise errors.ConfigError(
      f'features[{batched[0]!r}] has shape {jnp.shape(features[batched[0]])}; features must be '
      "one image's, layer -> [h, w, c]: network_features of an [H, W, 3] image"
    )
  for name in sorted(layers, key=vgg.downsamplings):  # the shallowest map names the size best
    k = vgg.downsamplings(name)
    want, have = (size[0] // 2**k, size[1] // 2**k), tuple(jnp.shape(features[name])[:2])
    if want != have:
      raise errors.ConfigError(
        f'features are of another image than image: features[{name!r}] is {have[1]}x{have[0]}, '
        f"but image's {size[1]}x{size[0]} px give {want[1]}x{want[0]} there; compute them from "
        'image: network_features(image, params, model=model, layers=loss_spec.feature_layers)'
      )


def choice(table: Mapping[str, Any], value: Any, name: str) -> Any:
  """table[value], or a ConfigError naming `name` and the choices."""
  try:
    return table[value]
  except (KeyError, TypeError):
    raise errors.ConfigError(
      f'{name} must be one of {", ".join(map(repr, table))}, got {value!r}'
    ) from None


# The platform names JAX gives devices (`Device.platform`, `jax.default_backend()`),
# plus 'cuda' and 'rocm', which `jax.devices` also takes. JAX takes them in lower case only.
PLATFORMS = ('cpu', 'gpu', 'tpu', 'cuda', 'rocm')


def platform(backend: Any) -> str:
  """`backend` if it is a platform JAX names, or a ConfigError naming those (not a silent no-op)."""
  if backend in PLATFORMS or (isinstance(backend, str) and backend == jax.default_backend()):
    return backend
  fix = f'; JAX names it {backend.lower()!r}' if str(backend).lower() in PLATFORMS else ''
  raise errors.ConfigError(
    f'backend must be a JAX platform, one of {", ".join(map(repr, PLATFORMS))} (or None for the '
    f"params' device), got {backend!r}{fix}"
  )


def count_per_style(n_weights: int, n_styles: int) -> None:
  """Refuses make_targets' blend_weights of another count than the styles."""
  if n_weights != n_styles:
    raise errors.ConfigError(
      f'blend_weights has {errors.counted(n_weights, "value")} for '
      f'{errors.counted(n_styles, "style")}; give one per style'
    )


def positive_number(value: Any, name: str) -> None:
  """Refuses a concrete number that is not finite and > 0 (a schedule or a tracer passes)."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  dtype = np.asarray(value).dtype
  if dtype.kind not in 'iuf' and not jnp.issubdtype(dtype, jnp.floating):  # float('1') passes
    raise errors.ConfigError(
      f'{name} must be a finite number > 0, got {value!r}; {_number_fix(value, name)}'
    )
  number = float(np.asarray(value))
  if not (np.isfinite(number) and number > 0):
    raise errors.ConfigError(f'{name} must be a finite number > 0, got {number}')


def per_image(value: jax.typing.ArrayLike, name: str, n: int) -> jax.Array:
  """A loss weight as [N] float32: a scalar or one per image, finite and >= 0."""
  concrete = not isinstance(value, jax.core.Tracer)
  dtype = np.asarray(value).dtype if concrete else value.dtype
  if dtype.kind not in 'iuf' and not jnp.issubdtype(dtype, jnp.floating):  # bfloat16 is 'V'
    # As blend_weights: numpy read '1e-2' as 0.01, and failed on 'abc' naming no argument.
    raise errors.ConfigError(
      f'{name} must be a real number or one per image, got {value!r}; {_number_fix(value, name)}'
    )
  x = np.asarray(value, np.float32) if concrete else value  # numpy: a trace stages jnp's checks
  if x.ndim > 1:
    raise errors.ConfigError(
      f'{name} has shape {x.shape}; give a scalar or a vector of one weight per content image, '
      f'shape ({n},)'
    )
  if x.size not in (1, n):
    raise errors.ConfigError(
      f'{name} has shape {x.shape} for {n} content image(s); give a scalar or one per image'
      + (f' (tile the content: jnp.repeat(content, {x.size}, axis=0))' if n == 1 else '')
    )
  if concrete and (not np.all(np.isfinite(x)) or np.any(x < 0)):
    raise errors.ConfigError(
      f'{name} must be finite and >= 0, got {x.tolist() if x.ndim else float(x)}'
    )
  # A concrete weight is broadcast by numpy: jnp's ops, run eagerly, would
  # each compile a program for every batch size.
  if concrete:
    return jnp.asarray(np.full((n,), x.reshape(-1)[0]) if x.size == 1 else x)
  x = jnp.asarray(x, jnp.float32)
  return jnp.broadcast_to(x.reshape(-1)[0] if x.size == 1 else x, (n,))


def _number_fix(value: Any, name: str) -> str:
  """How to pass `value` as a number: float('1e-2') for a numeric string."""
  try:
    float(value if isinstance(value, str) else 'no number')
    return f'pass the number, {name}=float({value!r})'
  except ValueError:
    return f'pass a number, e.g. {name}=1e-2'


def flag(value: Any, name: str) -> bool:
  """`value` as a bool, or a ConfigError: any non-empty string, 'false' too, is truthy."""
  if not isinstance(value, (bool, np.bool_)):
    raise errors.ConfigError(f'{name} must be True or False, got {value!r}; pass True or False')
  return bool(value)


def lbfgs_only(**knobs: Any) -> None:
  """Refuses L-BFGS's knobs given to Adam, which has none of them (they were dropped unread)."""
  given = [k for k, v in knobs.items() if v is not None]
  if given:
    it = 'it' if len(given) == 1 else 'them'
    raise errors.ConfigError(
      f"{' and '.join(given)} {'is' if it == 'it' else 'are'} L-BFGS's; Adam has no memory, "
      f'first step or box (its step is learning_rate; clip its result): drop {it}, or use '
      "make_optimizer('lbfgs', ...)"
    )


def step_inputs(image: jax.Array, targets: Any, loss_spec: Any) -> None:
  """The state's batch and the targets' layers fit each other and the step's loss_spec."""
  n = image.shape[0]
  for field in ('content_weight', 'style_weight', 'tv_weight'):
    shape = tuple(np.shape(getattr(targets, field)))
    if len(shape) != 1:
      raise errors.ConfigError(
        f'targets.{field} has shape {shape}; the step takes one weight per image, [N]: '
        f'targets._replace({field}=jnp.broadcast_to(w, ({n},)))'
      )
  have = targets.content_weight.shape[0]
  for field in ('style_weight', 'tv_weight'):
    if np.shape(getattr(targets, field))[0] != have:
      raise errors.ConfigError(
        f'targets.{field} has {np.shape(getattr(targets, field))[0]} weights but '
        f'targets.content_weight {have}; give every weight one value per image'
      )
  if n != have:
    raise errors.ConfigError(
      f'targets are for {have} image(s) but the state holds {n}; build them from {n} content '
      f'images with make_targets, or tile them: jax.tree.map(lambda x: jnp.repeat(x, {n} // '
      f'{have}, axis=0), targets)'
      if have == 1 or n % have == 0
      else f'targets are for {have} image(s) but the state holds {n}; give targets and state '
      'the same batch'
    )
  target_layers(targets, loss_spec, 'the step')
  extra_batch(targets.extra, n, 'targets.extra')
  state_size(image.shape[1:3], targets, loss_spec)


def state_size(size: tuple[int, int], targets: Any, loss_spec: Any) -> None:
  """Refuses an image (H, W) = `size` of another size than the targets' content."""
  height, width = size
  if targets.content_size is not None:  # exact: the content's own (H, W)
    h, w = np.shape(targets.content_size)[-3:-1]
    if (h, w) != (height, width):
      raise errors.ConfigError(
        f"the state's images are {width}x{height} px, but the targets are for {w}x{h} px "
        "content; make the targets from content of the state's size, or the state from images "
        "of the content's"
      )
    return
  # Targets built without content_size: the first content layer's map only.
  # Poolings before a layer depend on its stage only, so VGG-19's count
  # holds for any stage sizes with the same names.
  layer = loss_spec.content_layers[0]
  k = vgg.downsamplings(layer)
  want, have = (height // 2**k, width // 2**k), tuple(targets.content[layer].shape[-3:-1])
  if want != have:
    raise errors.ConfigError(
      f"the state's images are {width}x{height} px ({layer}: {want[1]}x{want[0]}), but the "
      f"targets' content features are {have[1]}x{have[0]} at {layer}, from content of another "
      "size; make the targets from content of the state's size, or the state from images of the "
      "content's"
    )


def target_layers(targets: Any, loss_spec: Any, user: str) -> None:
  """Refuses targets lacking a layer or the statistic of `user`'s loss_spec (a KeyError later)."""
  for kind, layers, built in (
    ('content', loss_spec.content_layers, targets.content),
    ('style', loss_spec.style_layers, targets.style),
  ):
    missing = [name for name in layers if name not in built]
    if missing:
      raise errors.ConfigError(
        f"targets lack the {kind} layer(s) {', '.join(missing)} of {user}'s loss_spec; build "
        f'them with make_targets(..., loss_spec=) of the same spec as {user}'
      )
  key = losses.STYLE_STATISTIC[loss_spec.style_loss]
  for name in loss_spec.style_layers:
    if key not in targets.style[name]:
      raise errors.ConfigError(
        f"targets hold {', '.join(targets.style[name])} at {name}, not {user}'s "
        f'{loss_spec.style_loss!r} statistics; build them with make_targets(..., loss_spec=) of '
        f'the same spec as {user}'
      )


def without_batch(tree: Any, n: int) -> tuple[str, tuple] | None:
  """The first leaf of `tree` without a leading [n] axis, as (its path, its shape), or None."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = tuple(np.shape(leaf))
    if not shape or shape[0] != n:
      return jax.tree_util.keystr(path), shape
  return None


def extra_batch(extra: Any, n: int, name: str) -> None:
  """Refuses a leaf of `Targets.extra` without the leading [N] axis the step vmaps over."""
  if (bad := without_batch(extra, n)) is not None:
    raise errors.ConfigError(
      f'{name}{bad[0]} has shape {bad[1]}; every leaf of extra needs a leading axis of the {n} '
      f'image(s): x[None] for one image, or jnp.broadcast_to(x, ({n}, *x.shape)) to share it'
    )


def model_group_alone(dtype: Any, precision: Any) -> None:
  """Refuses dtype= or precision= beside a ModelConfig, whose own fields win (trial 29)."""
  if (dtype, precision) != ('float32', 'highest'):
    raise errors.ConfigError(
      'make_model got a ModelConfig and dtype= or precision= too, which it would ignore; give '
      'one: make_model(cfg.model), or make_model(pooling=..., dtype=..., precision=...)'
    )
