"""The objective: what the loss compares against, and the loss of one image.

* `LossSpec` (nst_jax.core.loss_spec, also importable from here): the
  loss's structure, the static argument of the compiled step.
* `make_targets(params, content, style, model=, loss_spec=, content_weight=,
  style_weight=)`: content features and style statistics, computed once, and
  the loss weights as per-image arrays (data, so a batch can mix them without
  recompiling).
* `objective(image, params, targets, model=, loss_spec=, features=None)`:
  one image's cw * L_c + sw * L_s + tv * L_tv and its terms
  (nst_jax.core.losses); `network_features` gives it, and a custom term,
  the activations of one forward pass.
"""

from collections.abc import Mapping, Sequence
import functools
from typing import Any, NamedTuple
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import checks
from nst_jax.core import loss_spec as loss_spec_lib
from nst_jax.core import losses
from nst_jax.core import mask_checks
from nst_jax.core import statistics
from nst_jax.core import tile_targets
from nst_jax.core import tiles
from nst_jax.core import vgg

# The names research code and the config have always imported from here.
DEFAULT_CONTENT_LAYERS = loss_spec_lib.DEFAULT_CONTENT_LAYERS
DEFAULT_STYLE_LAYERS = loss_spec_lib.DEFAULT_STYLE_LAYERS
LossSpec = loss_spec_lib.LossSpec
as_spec = loss_spec_lib.as_spec


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
    content_size: None, or an empty [N, H, W, 0] float32 array whose shape
      is the content images' height and width (no data): the step and
      `objective` refuse an image of another size exactly. An array, not a
      tuple, so that Targets stays a pytree of [N, ...] arrays under jit,
      vmap, tree maps and pickle; targets built without it are checked by
      the first content layer's map size only.
  """

  content: Mapping[str, jax.Array]
  style: Mapping[str, Mapping[str, jax.Array]]
  content_weight: jax.Array
  style_weight: jax.Array
  tv_weight: jax.Array
  content_mask: Mapping[str, jax.Array] | None = None
  style_masks: Mapping[str, jax.Array] | None = None
  extra: Any = None
  content_size: jax.Array | None = None


def _features(params, x, *, model: vgg.VGG, layers: tuple[str, ...]):
  return model.apply({'params': params}, x, layers)


# One compiled program per shape: called eagerly (as research code does),
# the network and the statistics compiled each operation on its own, about
# 50-100 ms each on a 2-core CPU; under the engine's jit it is inlined.
@functools.partial(jax.jit, static_argnames=('blend', 'model', 'spec'))
def _target_arrays(params, content, styles, *, blend, model: vgg.VGG, spec: LossSpec):
  """(content features as float32, style statistics) of `make_targets`."""
  n, height, width = content.shape[:3]
  if spec.tile is not None:
    return tile_targets.target_arrays(params, content, styles, blend=blend, model=model, spec=spec)
  content_feats = _features(params, content, model=model, layers=spec.content_layers)
  style_feats = [_features(params, s, model=model, layers=spec.style_layers) for s in styles]
  stats = {
    name: statistics.layer_targets(
      [f[name] for f in style_feats],
      blend,
      kind=spec.style_loss,
      n=n,
      m=(height >> vgg.downsamplings(name)) * (width >> vgg.downsamplings(name)),
    )
    for name in spec.style_layers
  }
  return {k: v.astype(jnp.float32) for k, v in content_feats.items()}, stats


@errors.keywords_checked
def make_targets(
  params: Mapping[str, Mapping[str, jax.Array]],
  content: jax.Array,
  style: jax.Array | Sequence[jax.Array],
  *,
  model: vgg.VGG,
  loss_spec: LossSpec | None = None,
  content_weight: jax.typing.ArrayLike | None = None,
  style_weight: jax.typing.ArrayLike | None = None,
  tv_weight: jax.typing.ArrayLike = 0.0,
  loss_config: Any = None,
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
    content: [N, H, W, 3] content images in network space (array-like).
    style: [N or 1, Hs, Ws, 3] style images in network space (any size), or a
      sequence of such arrays, one per style (sizes may differ).
    model: the VGG.
    loss_spec: layers and style statistic (`LossSpec`).
    content_weight: cw, scalar or [N] (required).
    style_weight: sw, scalar or [N] (required).
    tv_weight: tv, scalar or [N].
    loss_config: deprecated: a nst_jax.config.LossConfig in place of
      `loss_spec`, whose weights stand in for the ones not given.
    blend_weights: one weight per style (not with style_masks).
    content_mask: [N or 1, H, W] weight of the content loss per pixel, in
      [0, 1] (uint8 is divided by 255, as `stylize` takes masks).
    style_masks: [N or 1, S, H, W], one region mask per style, in [0, 1]
      (uint8 divided by 255); a region empty at a layer adds 0 there.
    extra: passed through as `Targets.extra`.

  Returns:
    Targets with leading [N] axes.

  Raises:
    ValueError: content or a style not [N, H, W, 3] finite floats or too
      small for the deepest layer, a style batch neither 1 nor N, masks of
      the wrong shape or outside [0, 1], or a weight that is
      negative, NaN or infinite (ConfigError, a ValueError, for most).
    TypeError: no loss_spec, content_weight or style_weight.
  """
  loss_spec, content_weight, style_weight, tv_weight = _spec_and_weights(
    loss_spec, loss_config, content_weight, style_weight, tv_weight
  )
  content_mask = mask_checks.mask_values(content_mask, 'content_mask')
  style_masks = mask_checks.mask_values(style_masks, 'style_masks')
  content = checks.targets_inputs(content, style, content_mask, style_masks)  # a list: an array
  losses.check_masks(loss_spec.style_loss, style_masks)  # not zip's error in the quantiles
  checks.params_fit(params, model, loss_spec.feature_layers)
  n, height, width = content.shape[:3]
  styles = list(style) if isinstance(style, (list, tuple)) else [style]
  # The state has the content's size and runs to every loss layer.
  checks.image_size(content, loss_spec.feature_layers, model, 'content')
  for i, s in enumerate(styles):
    name = 'style' if len(styles) == 1 else f'style {i}'
    checks.image_size(s, loss_spec.style_layers, model, name)
  checks.extra_batch(extra, n, 'extra')
  blend = _blend_weights(styles, n, (height, width), blend_weights, style_masks)
  content_feats, stats = _target_arrays(
    params, content, styles, blend=blend, model=model, spec=loss_spec
  )
  return Targets(
    content=content_feats,
    style=stats,
    content_weight=checks.per_image(content_weight, 'content_weight', n),
    style_weight=checks.per_image(style_weight, 'style_weight', n),
    tv_weight=checks.per_image(tv_weight, 'tv_weight', n),
    content_mask=_masks_per_layer(content_mask, loss_spec.content_layers, (n,)),
    style_masks=_masks_per_layer(
      style_masks, loss_spec.style_layers, (n,) if style_masks is None else (n, len(styles))
    ),
    extra=extra,
    content_size=jnp.asarray(np.zeros((n, height, width, 0), np.float32)),
  )


def _blend_weights(styles, n, size, blend_weights, style_masks) -> tuple[float, ...] | None:
  """`make_targets`' normalised blend weights of the styles (None: one region per style mask)."""
  for s in styles:
    if s.shape[0] not in (1, n):
      k = s.shape[0]
      tile = f'tile the content to stylise it once per style (jnp.repeat(content, {k}, axis=0)), '
      raise errors.ConfigError(
        f'{k} style images for {n} content image{"s" * (n != 1)}; give 1'
        + (f' or {n}, ' if n != 1 else ', ')
        + (tile if n == 1 else '')
        + 'or pass the styles as a list to blend them'
      )
  if style_masks is not None:
    if blend_weights is not None:
      raise errors.ConfigError(
        'blend_weights and style_masks exclude each other (masks place each style, blending '
        'mixes them everywhere); give one'
      )
    if style_masks.shape[1] != len(styles) or style_masks.shape[2:] != size:
      raise errors.ConfigError(
        f'style_masks {style_masks.shape} for {len(styles)} style(s) and a {size[1]}x{size[0]} '
        f'content; give [N or 1, {len(styles)}, {size[0]}, {size[1]}], one mask per style'
      )
    return None
  if blend_weights is None:
    weights = (1.0,) * len(styles)
  elif isinstance(blend_weights, jax.core.Tracer):
    raise errors.ConfigError(
      'blend_weights are traced, but they are fixed numbers of the targets; pass numbers, or '
      'blend the style statistics yourself (make_targets of each style, weighted)'
    )
  else:  # a list, a tuple, or a numpy or jax array
    given = np.asarray(blend_weights)
    if given.dtype.kind not in 'iuf' or given.ndim > 1:  # numpy reads ['1', '3'] and [[1, 3]]
      raise errors.ConfigError(
        f'blend_weights must be numbers, one per style, got {blend_weights!r}; pass e.g. (1, 3)'
      )
    weights = tuple(float(b) for b in given.astype(np.float64).reshape(-1))
  checks.count_per_style(len(weights), len(styles))
  total = float(sum(weights))
  if not all(float(b) >= 0 for b in weights) or not 0 < total < float('inf'):
    raise errors.ConfigError(
      f'blend_weights must be finite, >= 0 and not all 0, got {tuple(weights)}'
    )
  # The one place blend weights are normalised (the config only checks them).
  return tuple(float(b) / total for b in weights)


def _spec_and_weights(loss_spec, loss_config, content_weight, style_weight, tv_weight):
  """make_targets' structure and weights; a deprecated LossConfig fills in for both."""
  if loss_config is not None:
    warnings.warn(
      'make_targets(loss_config=...) is deprecated; pass loss_spec=config.spec and the '
      'weights content_weight=, style_weight=, tv_weight=',
      DeprecationWarning,
      stacklevel=3,
    )
    loss_spec = as_spec(loss_config, config_ok=True) if loss_spec is None else loss_spec
    if isinstance(loss_config, LossSpec):  # no weights to stand in: the check below names them
      loss_config = None
  if loss_config is not None:
    content_weight = loss_config.content_weight if content_weight is None else content_weight
    style_weight = loss_config.style_weight if style_weight is None else style_weight
    if tv_weight is None or (isinstance(tv_weight, float) and tv_weight == 0.0):
      tv_weight = loss_config.tv_weight
  if loss_spec is None:
    raise errors.ArgumentError(
      'make_targets needs loss_spec= (a LossSpec: layers and style statistic)'
    )
  missing = [
    n for n, w in (('content_weight', content_weight), ('style_weight', style_weight)) if w is None
  ]
  if missing:
    raise errors.ArgumentError(
      f'make_targets needs {" and ".join(missing)}= (scalar or one per image)'
    )
  return as_spec(loss_spec), content_weight, style_weight, tv_weight


def _masks_per_layer(mask, layers, lead) -> dict[str, jax.Array] | None:
  """[N or 1, ..., H, W] guidance -> layer -> [*lead, h, w] at each layer's resolution."""
  if mask is None:
    return None
  out = {}
  for name in layers:
    m = vgg.mask_at_layer(mask, name)
    out[name] = jnp.broadcast_to(m, (*lead, *m.shape[-2:]))
  return out


def network_features(
  image: jax.Array,
  params: Mapping[str, Mapping[str, jax.Array]],
  *,
  model: vgg.VGG,
  layers: Sequence[str] | None,
) -> dict[str, jax.Array]:
  """The named activations of one image in network space: one forward pass.

  For a custom loss term: compute the features once, for the loss's layers
  and your own (`loss_spec.feature_layers + ('relu3_1',)`), and hand them to
  `objective(..., features=feats)`, which then runs no network of its own.
  The network stops at the deepest requested layer.

  Args:
    image: [H, W, 3] in network space (the step's variable).
    params: VGG parameters (raw or `prepare_params`'d).
    model: the VGG.
    layers: names such as 'relu4_2', 'conv1_1', 'pool3'; None: every layer (as model.apply).

  Returns:
    name -> [h, w, c] activation.
  """
  if layers is None:  # trial 40: "'NoneType' object is not iterable"
    layers = vgg.layer_names(checks.vgg_model(model) or model.stage_sizes)
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  checks.one_image(image, 'image')
  checks.params_fit(params, model, layers)
  checks.image_size(image, layers, model, 'image')  # trial 42: empty maps, then NaN statistics
  feats = _features(params, image[None], model=model, layers=layers)
  return {k: v[0] for k, v in feats.items()}


def objective(
  image: jax.Array,
  params: Mapping[str, Mapping[str, jax.Array]],
  targets: Targets,
  *,
  model: vgg.VGG,
  loss_spec: LossSpec | None = None,
  loss_config: Any = None,
  features: Mapping[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of one image: cw * L_c + sw * L_s + tv * L_tv (see `nst_jax.core.losses`).

  The content and style terms are `losses.content_loss` and
  `losses.style_loss` of the image's features; with
  `loss_spec.normalize_gradients` each layer's features first pass through
  `losses.normalize_gradient` with that term's weight (cw, or sw * w_l), so
  every term pushes with an L1-normalised gradient; values are unchanged.

  Args:
    image: [H, W, 3] in network space.
    params: VGG parameters.
    targets: one image's targets (no leading batch axis).
    model: the VGG.
    loss_spec: layers, style layer weights, style loss, normalisation.
    loss_config: deprecated name of `loss_spec` (a LossConfig is accepted),
      as custom loss functions written before 0.3 pass it.
    features: the image's activations, layer -> [h, w, c], when the caller
      already has them (`network_features`, for a custom term's layers as
      well): no forward pass of its own then. Must hold every layer of
      `loss_spec.feature_layers`; extra layers are ignored.

  Returns:
    (total, {'total', 'content', 'style', 'tv', 'content/<layer>',
    'style/<layer>'}) scalars; content, style and tv are the unweighted L_c,
    L_s and L_tv, and the per-layer entries their terms before w_l.
  """
  if loss_config is not None:
    warnings.warn(
      'objective(loss_config=...) is deprecated; use loss_spec=', DeprecationWarning, stacklevel=2
    )
    loss_spec = loss_config if loss_spec is None else loss_spec
  if loss_spec is None:
    raise errors.ArgumentError(
      'objective needs loss_spec= (a LossSpec: layers and style statistic)'
    )
  loss_spec = as_spec(loss_spec)
  checks.one_image(image, 'image')
  checks.one_images_targets(targets)
  checks.target_layers(targets, loss_spec, 'objective')
  checks.state_size(image.shape[:2], targets, loss_spec)
  cw, sw = targets.content_weight, targets.style_weight
  layer_weights = loss_spec.layer_weights
  if loss_spec.tile is not None:
    if features is not None:
      raise errors.ArgumentError(
        "objective: features= holds the whole image's activations, which a tiled loss_spec "
        '(tile set) never forms; pass features=None, or a loss_spec with tile=None'
      )
    checks.params_fit(params, model, loss_spec.feature_layers)
    terms = {}
    l_c, l_s = tiles.terms(
      image,
      params,
      targets,
      model=model,
      loss_spec=loss_spec,
      layer_weights=layer_weights,
      terms=terms,
    )
    return _total(image, targets, l_c, l_s, terms)
  if features is None:
    feats = network_features(image, params, model=model, layers=loss_spec.feature_layers)
  else:
    checks.objective_features(features, loss_spec.feature_layers, image.shape[:2])
    feats = features
  if loss_spec.normalize_gradients:
    weight = {name: cw for name in loss_spec.content_layers}
    style_feats = {
      name: losses.normalize_gradient(feats[name], sw * w) for name, w in layer_weights.items()
    }
    content_feats = {
      name: losses.normalize_gradient(feats[name], weight[name])
      for name in loss_spec.content_layers
    }
  else:
    content_feats = style_feats = feats
  terms = {}
  l_c = losses.content_loss(
    content_feats,
    targets.content,
    layers=loss_spec.content_layers,
    masks=targets.content_mask,
    terms=terms,
  )
  l_s = losses.style_loss(
    style_feats,
    targets.style,
    layer_weights=layer_weights,
    kind=loss_spec.style_loss,
    masks=targets.style_masks,
    terms=terms,
  )
  return _total(image, targets, l_c, l_s, terms)


def _total(image, targets, l_c, l_s, terms):
  """(cw * L_c + sw * L_s + tv * L_tv, the terms), the one place the weights apply."""
  l_tv = losses.tv_loss(image)
  total = targets.content_weight * l_c + targets.style_weight * l_s + targets.tv_weight * l_tv
  return total, {'total': total, 'content': l_c, 'style': l_s, 'tv': l_tv, **terms}
