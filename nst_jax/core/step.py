"""The pure core: targets, optimisation state, the objective and the step.

Nothing here reads files, logs, or takes a `StyleConfig`: every input is an
argument, so research code can jit, vmap and differentiate these freely.

  * `make_model(pooling=..., dtype=..., precision=...)`: the VGG-19.
  * `make_targets(params, content, style, ...)`: content features and style
    statistics, computed once.
  * `initial_image(content, init=..., seed=...)` and `init_state(image,
    optimizer)` -> `StyleState(image, opt_state)`.
  * `objective(image, params, targets, ...)`: one image's loss and its terms.
  * `update_step(state, params, targets, *, model, optimizer, loss_config,
    loss_fn=objective)`: one optimiser iteration, a module-level pure
    function. Jit it where it is called, donating the state:

        step = jax.jit(functools.partial(update_step, model=model,
                       optimizer=tx, loss_config=loss_cfg), donate_argnums=0)

Images are batch-shaped [N, H, W, 3] throughout. Each image of the batch is
an independent problem: the step `vmap`s one image's loss and optimiser
update, so every image keeps its own L-BFGS history and gets exactly the
result it would get alone.

The optimised variable is the image in the network's input space (for the
Caffe convention: BGR, 0..255 minus the mean pixel), as in the classic tools;
the optimisers see it in pixel units (nst_jax.core.optim.in_pixel_units).
"""

from collections.abc import Callable, Mapping, Sequence
import functools
from typing import Any, NamedTuple
import warnings

import jax
import jax.numpy as jnp
import optax

from nst_jax.core import losses
from nst_jax.core import optim
from nst_jax.core import vgg
from nst_jax.io import images as image_lib

# Standard deviation of the random init in network units, from
# jcjohnson/neural-style (`torch.randn(...):mul(0.001)`).
RANDOM_INIT_STD = 0.001


class Targets(NamedTuple):
  """What the loss compares against, and how much each term counts, per image.

  S is the number of style regions: 1 without style masks (the styles are
  blended into one target), else one per style image.

  Attributes:
    content: content layer -> [N, h, w, c] features of the content images.
    style: style layer -> statistic -> [N, S, ...] style statistics, as
      `losses.style_layer_loss` takes them for the config's style loss
      ('gram': {'gram': [N, S, C, C]}).
    content_weight: [N] float32, cw of each image.
    style_weight: [N] float32, sw of each image.
    tv_weight: [N] float32, weight of the total variation term.
    content_mask: None, or content layer -> [N, h, w] weight per position.
    style_masks: None, or style layer -> [N, S, h, w] region guidance.
    extra: None, or any pytree with leading [N] axes for a custom `loss_fn`
      (the video loss keeps the warped previous frame here).
  """

  content: Mapping[str, jax.Array]
  style: Mapping[str, Mapping[str, jax.Array]]
  content_weight: jax.Array
  style_weight: jax.Array
  tv_weight: jax.Array
  content_mask: Mapping[str, jax.Array] | None = None
  style_masks: Mapping[str, jax.Array] | None = None
  extra: Any = None


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
    dtype: compute dtype, 'float32' or 'bfloat16'.
    precision: 'highest', 'high', 'default' or None (see
      nst_jax.config.PRECISIONS).
  """
  if not isinstance(pooling, str):  # a StyleConfig, as before 0.2
    warnings.warn(
      'make_model(config) is deprecated; use make_model(pooling=..., dtype=..., precision=...)',
      DeprecationWarning,
      stacklevel=2,
    )
    m = pooling.model
    pooling, dtype, precision = m.pooling, m.dtype, m.precision
  return vgg.VGG19(
    pooling=pooling,
    dtype=vgg.COMPUTE_DTYPES[dtype],
    precision=None if precision is None else vgg.PRECISIONS[precision],
  )


def prepare_params(params: Mapping, layers: Sequence[str] | None = None) -> dict:
  """The weights as a step should receive them on JAX's default backend.

  On CPU each convolution also carries its kernel laid out for the input
  gradient, and those with 256 channels or more their Winograd transforms
  (`vgg.with_backward_kernels`, 357 MB more for VGG-19): XLA no longer lays
  out every kernel on every iteration, and the deep layers' convolutions on
  maps of 24x32 to 192x256 run as Winograd F(2x2, 3x3) (`nst_jax.core.winograd`),
  about half the time each; see docs/benchmarks.md. Elsewhere the params are
  returned as they are (XLA's own convolutions; not measured on GPU/TPU
  yet). Prepare once, outside the loop, and pass the result to `update_step`
  in place of `params`; features and gradients are the same up to float32
  rounding. Pass the run's `layers` (e.g. `loss_config.feature_layers`) to
  prepare only the convolutions up to the deepest of them.
  """
  if jax.default_backend() == 'cpu':
    return vgg.with_backward_kernels(dict(params), layers)
  return dict(params)


def make_optimizer(name: Any = 'lbfgs', **kwargs) -> optax.GradientTransformationExtraArgs:
  """`nst_jax.core.optim.make_optimizer` (also accepts a StyleConfig, deprecated)."""
  if not isinstance(name, str):
    warnings.warn(
      'make_optimizer(config) is deprecated; use make_optimizer(name, learning_rate=..., '
      'memory_size=..., convention=...)',
      DeprecationWarning,
      stacklevel=2,
    )
    o = name.optim
    name, kwargs = (
      o.name,
      {
        'learning_rate': o.learning_rate,
        'memory_size': o.lbfgs_memory,
        'box': o.box,
        **kwargs,
      },
    )
  return optim.make_optimizer(name, **kwargs)


def _features(params, x, *, model: vgg.VGG, layers: tuple[str, ...]):
  return model.apply({'params': params}, x, layers)


def _layer_positions(height: int, width: int, layer: str) -> int:
  k = vgg.downsamplings(layer)
  return (height // 2**k) * (width // 2**k)


def _style_statistics(
  feats: list[jax.Array], blend: tuple[float, ...] | None, *, kind: str, n: int, m: int
) -> dict[str, jax.Array]:
  """One layer's style statistics, [n, S, ...].

  Args:
    feats: per style image, [1 or n, h_i, w_i, C] features.
    blend: normalised blend weights (S = 1), or None for one region per style.
    kind: the style loss.
    n: batch size.
    m: positions of the optimised image at this layer ('histogram').
  """
  feats = [jnp.broadcast_to(f, (n, *f.shape[1:])) for f in feats]
  if kind == 'histogram':
    weights = blend or (1.0,)

    def quantiles(*fs):
      return losses.style_quantiles([f.reshape(-1, f.shape[-1]) for f in fs], weights, m)

    return {'quantiles': jax.vmap(quantiles)(*feats)[:, None]}
  if kind == 'gram':
    grams = [jax.vmap(losses.gram_matrix)(f) for f in feats]  # [n, C, C] each
    if blend is None:
      return {'gram': jnp.stack(grams, axis=1)}
    return {'gram': sum(b * g for b, g in zip(blend, grams, strict=True))[:, None]}
  means, covs = zip(*(jax.vmap(losses.mean_cov)(f) for f in feats), strict=True)
  if blend is None:
    mu, cov = jnp.stack(means, axis=1), jnp.stack(covs, axis=1)
  else:
    # The mixture's mean and covariance: its second moment (the blended Gram)
    # minus mu mu^T, written around the mean for float32 accuracy.
    mu = sum(b * m_i for b, m_i in zip(blend, means, strict=True))
    cov = sum(
      b * (c_i + jnp.einsum('ni,nj->nij', m_i - mu, m_i - mu))
      for b, m_i, c_i in zip(blend, means, covs, strict=True)
    )
    mu, cov = mu[:, None], cov[:, None]
  return jax.vmap(jax.vmap(losses.mean_cov_target))(mu, cov)


def make_targets(
  params: Mapping[str, Mapping[str, jax.Array]],
  content: jax.Array,
  style: jax.Array | Sequence[jax.Array],
  *,
  model: vgg.VGG,
  loss_config: Any,
  content_weight: jax.typing.ArrayLike | None = None,
  style_weight: jax.typing.ArrayLike | None = None,
  tv_weight: jax.typing.ArrayLike | None = None,
  blend_weights: Sequence[float] | None = None,
  content_mask: jax.Array | None = None,
  style_masks: jax.Array | None = None,
  extra: Any = None,
) -> Targets:
  """Content features and style statistics, computed once before optimising.

  Several style images are blended (weights `blend_weights`, normalised;
  equal by default) into one target per layer: for Grams the weighted sum
  sum_i b_i G_i (jcjohnson/neural-style's blend), for 'mean_cov' the
  mixture's mean and covariance, for 'histogram' the mixture's quantiles.
  With `style_masks` they are not blended: style i governs region i.

  Args:
    params: VGG parameters.
    content: [N, H, W, 3] content images in network space.
    style: [N or 1, Hs, Ws, 3] style images in network space (any size), or a
      sequence of such arrays, one per style (sizes may differ).
    model: the VGG.
    loss_config: a nst_jax.config.LossConfig: layers, style loss, and the
      default weights.
    content_weight: scalar or [N]; None: loss_config.content_weight.
    style_weight: scalar or [N]; None: loss_config.style_weight.
    tv_weight: scalar or [N]; None: loss_config.tv_weight.
    blend_weights: one weight per style (not with style_masks).
    content_mask: [N or 1, H, W] weight of the content loss per pixel.
    style_masks: [N or 1, S, H, W], one region mask per style.
    extra: passed through as `Targets.extra`.

  Returns:
    Targets with leading [N] axes.

  Raises:
    ValueError: content or a style not [N, H, W, 3], or a style batch neither 1 nor N.
  """
  styles = list(style) if isinstance(style, (list, tuple)) else [style]
  _check_images(content, 'content')
  for i, s in enumerate(styles):
    _check_images(s, 'style' if len(styles) == 1 else f'style {i}')
  n, height, width = content.shape[:3]
  blend = _blend(styles, n, (height, width), blend_weights, style_masks)
  content_feats = _features(params, content, model=model, layers=loss_config.content_layers)
  style_feats = [_features(params, s, model=model, layers=loss_config.style_layers) for s in styles]
  stats = {
    name: _style_statistics(
      [f[name] for f in style_feats],
      blend,
      kind=loss_config.style_loss,
      n=n,
      m=_layer_positions(height, width, name),
    )
    for name in loss_config.style_layers
  }

  def per_image(x, default):
    x = default if x is None else x
    return jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n,))

  return Targets(
    content={k: v.astype(jnp.float32) for k, v in content_feats.items()},
    style=stats,
    content_weight=per_image(content_weight, loss_config.content_weight),
    style_weight=per_image(style_weight, loss_config.style_weight),
    tv_weight=per_image(tv_weight, loss_config.tv_weight),
    content_mask=_masks_per_layer(content_mask, loss_config.content_layers, (n,)),
    style_masks=_masks_per_layer(
      style_masks, loss_config.style_layers, (n,) if style_masks is None else (n, len(styles))
    ),
    extra=extra,
  )


def _check_images(x, name: str) -> None:
  """Raises ValueError naming `name` unless `x` is [N, H, W, 3]."""
  if jnp.ndim(x) != 4 or jnp.shape(x)[-1] != 3:
    raise ValueError(f'{name} must be [N, H, W, 3] images, got shape {jnp.shape(x)}')


def _blend(styles, n, size, blend_weights, style_masks) -> tuple[float, ...] | None:
  """The normalised blend weights of the styles (None: one region per style mask)."""
  for s in styles:
    if s.shape[0] not in (1, n):
      raise ValueError(f'{s.shape[0]} style images for {n} content images; give 1 or {n}')
  if style_masks is not None:
    if blend_weights is not None:
      raise ValueError('blend weights and style masks exclude each other')
    if style_masks.shape[1] != len(styles) or style_masks.shape[2:] != size:
      raise ValueError(
        f'style masks {style_masks.shape} for {len(styles)} styles and a {size[0]}x{size[1]} image'
      )
    return None
  weights = blend_weights or (1.0,) * len(styles)
  if len(weights) != len(styles):
    raise ValueError(f'{len(weights)} blend weights for {len(styles)} styles')
  return tuple(float(b) / float(sum(weights)) for b in weights)


def _masks_per_layer(mask, layers, lead) -> dict[str, jax.Array] | None:
  """[N or 1, ..., H, W] guidance -> layer -> [*lead, h, w] at each layer's resolution."""
  if mask is None:
    return None
  out = {}
  for name in layers:
    m = vgg.mask_at_layer(mask, name)
    out[name] = jnp.broadcast_to(m, (*lead, *m.shape[-2:]))
  return out


def objective(
  image: jax.Array,
  params: Mapping[str, Mapping[str, jax.Array]],
  targets: Targets,
  *,
  model: vgg.VGG,
  loss_config: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of one image: cw * L_c + sw * L_s + tv * L_tv (see `nst_jax.core.losses`).

  The content and style terms are `losses.content_loss` and
  `losses.style_loss` of the image's features; with
  `loss_config.normalize_gradients` each layer's features first pass through
  `losses.normalize_gradient` with that term's weight (cw, or sw * w_l), so
  every term pushes with an L1-normalised gradient; values are unchanged.

  Args:
    image: [H, W, 3] in network space.
    params: VGG parameters.
    targets: one image's targets (no leading batch axis).
    model: the VGG.
    loss_config: layers, style layer weights, style loss, normalisation.

  Returns:
    (total, {'total', 'content', 'style', 'tv', 'content/<layer>',
    'style/<layer>'}) scalars; content, style and tv are the unweighted L_c,
    L_s and L_tv, and the per-layer entries their terms before w_l.
  """
  feats = _features(params, image[None], model=model, layers=loss_config.feature_layers)
  feats = {k: v[0] for k, v in feats.items()}
  cw, sw = targets.content_weight, targets.style_weight
  layer_weights = loss_config.layer_weights
  if loss_config.normalize_gradients:
    weight = {name: cw for name in loss_config.content_layers}
    style_feats = {
      name: losses.normalize_gradient(feats[name], sw * w) for name, w in layer_weights.items()
    }
    content_feats = {
      name: losses.normalize_gradient(feats[name], weight[name])
      for name in loss_config.content_layers
    }
  else:
    content_feats = style_feats = feats
  terms = {}
  l_c = losses.content_loss(
    content_feats,
    targets.content,
    layers=loss_config.content_layers,
    masks=targets.content_mask,
    terms=terms,
  )
  l_s = losses.style_loss(
    style_feats,
    targets.style,
    layer_weights=layer_weights,
    kind=loss_config.style_loss,
    masks=targets.style_masks,
    terms=terms,
  )
  l_tv = losses.tv_loss(image)
  total = cw * l_c + sw * l_s + targets.tv_weight * l_tv
  return total, {'total': total, 'content': l_c, 'style': l_s, 'tv': l_tv, **terms}


def init_state(image: jax.Array, optimizer: optax.GradientTransformation) -> StyleState:
  """A fresh state for [N, H, W, 3] images, one optimiser state per image.

  The image is copied: the step donates the state, and the caller's array
  (often the content image, needed again) must survive that.
  """
  _check_images(image, 'image')
  image = jnp.array(image, jnp.float32, copy=True)
  return StyleState(image=image, opt_state=jax.vmap(optimizer.init)(image))


LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def update_step(
  state: StyleState,
  params: Mapping[str, Mapping[str, jax.Array]],
  targets: Targets,
  active: jax.Array | None = None,
  *,
  model: vgg.VGG,
  optimizer: optax.GradientTransformationExtraArgs,
  loss_config: Any,
  loss_fn: LossFn = objective,
) -> tuple[StyleState, dict[str, jax.Array]]:
  """One optimiser iteration on every image of the batch.

  Evaluates the loss and its gradient once per image (L-BFGS without line
  search and Adam both need exactly one evaluation per iteration) and applies
  the optimiser's update.

  Args:
    state: images [N, H, W, 3] and per-image optimiser states.
    params: VGG parameters (shared by the batch; not donated).
    targets: per-image targets with leading [N] axes (not donated).
    active: optional [N] bools; an image whose entry is False keeps its
      pixels (it has converged and waits for the rest of the batch).
    model: the VGG (static).
    optimizer: from `make_optimizer` (static).
    loss_config: layers and style layer weights (static); pass
      `LossConfig.structure` so that other weights reuse the compiled step.
    loss_fn: `loss_fn(image [H, W, 3], params, targets_of_one_image, *,
      model, loss_config) -> (total, dict of scalars)` with 'total',
      'content', 'style' and 'tv' among the keys (static); `objective` by
      default. Write a custom term by calling `objective` and adding to it.

  Returns:
    (new state, losses): losses maps each key of `loss_fn`'s dict to [N]
    float32 values of the images *before* this update.
  """

  def one_image(image, opt_state, image_targets):
    value_fn = functools.partial(
      loss_fn, params=params, targets=image_targets, model=model, loss_config=loss_config
    )
    (value, aux), grad = jax.value_and_grad(value_fn, has_aux=True)(image)
    updates, opt_state = optimizer.update(
      grad, opt_state, image, value=value, grad=grad, value_fn=lambda x: value_fn(x)[0]
    )
    return optax.apply_updates(image, updates), opt_state, aux

  new_image, opt_state, aux = jax.vmap(one_image)(state.image, state.opt_state, targets)
  if active is not None:
    # Only the pixels are held: a held image's optimiser state is never used again.
    new_image = jnp.where(active[:, None, None, None], new_image, state.image)
  return StyleState(image=new_image, opt_state=opt_state), aux


def initial_image(
  content: jax.Array,
  *,
  init: str,
  seed: int,
  convention: image_lib.InputConvention = image_lib.CAFFE,
  image: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """The starting image in network space.

  Args:
    content: [N, H, W, 3] content images in network space.
    init: 'content'; 'random' (N(0, 0.001^2) in network space: the mean pixel
      plus faint noise, as in jcjohnson/neural-style); 'gray' (RGB 0.5
      everywhere); anything else means `image`.
    seed: random seed for 'random'.
    convention: the weights' input convention (for 'gray' and `image`).
    image: RGB in [0, 1], [H', W', 3] or [N, H', W', 3], resized to the
      content's height and width (bicubic); used unless init is a keyword.
  """
  if init == 'content':
    return content
  if init == 'random':
    noise = jax.random.normal(jax.random.key(seed), content.shape, jnp.float32)
    return RANDOM_INIT_STD * noise
  if init == 'gray':
    rgb = jnp.full((1, *content.shape[1:]), 0.5, jnp.float32)
  else:
    if image is None:
      raise ValueError(f'init {init!r} is not content, random or gray, and no image was given')
    rgb = batched(image)
    rgb = image_lib.resize(rgb, *content.shape[1:3])
  x = image_lib.preprocess(rgb, convention)
  return jnp.broadcast_to(x, content.shape)


def batched(rgb: jax.typing.ArrayLike) -> jax.Array:
  """[H, W, 3] -> [1, H, W, 3]; [N, H, W, 3] unchanged (float32)."""
  x = jnp.asarray(rgb, jnp.float32)
  if x.ndim == 3:
    return x[None]
  if x.ndim == 4:
    return x
  raise ValueError(f'expected an RGB image [H, W, 3] or [N, H, W, 3], got {x.shape}')
