"""Style transfer losses: pure functions of feature maps.

For one image and one layer with features F of shape [H, W, C], written as a
matrix [M, C] with M = H*W positions:

  Gram:     G = F^T F / M                               [C, C]
  content:  L_c = sum_{l in content layers} mean((F_l - P_l)^2)
  style:    L_s = sum_{l in style layers} w_l * mean((G_l - A_l)^2)
  TV:       L_tv = mean((x[i+1,j] - x[i,j])^2) + mean((x[i,j+1] - x[i,j])^2)

where P_l are the content image's features, A_l the style image's Grams, the
means run over all H*W*C (content) or C*C (style) entries, and layers are
summed, not averaged. The total is `cw * L_c + sw * L_s + tv * L_tv`; with the
Caffe-scale input convention this normalisation puts the defaults cw=100,
sw=0.01 at the balance of jcjohnson/neural-style's defaults. These formulas
are part of the public contract: changing them changes what every documented
weight means.

The style term of a layer can instead be the Wasserstein-2 distance between
Gaussian fits of the features ('mean_cov', `mean_cov_loss`) or the histogram
loss of Risser et al. ('histogram', `histogram_loss`); their scales differ
from the Gram term's, so the style weight does not carry over. Spatial
guidance (Gatys et al. 2017) weights positions with a mask T in [0, 1] given
at the layer's resolution (`nst_jax.core.vgg.mask_at_layer`).

Batches are handled by `jax.vmap` over these single-image functions.

References:
  Gatys, Ecker & Bethge 2016, "Image Style Transfer Using Convolutional Neural
  Networks", CVPR (arXiv:1508.06576), eqs. 1-5.
  Gatys, Ecker, Bethge, Hertzmann & Shechtman 2017, "Controlling Perceptual
  Factors in Neural Style Transfer", CVPR (arXiv:1611.07865), Sec. 4.
  Risser, Wilmot & Barnes 2017, "Stable and Controllable Neural Texture
  Synthesis and Style Transfer Using Histogram Losses" (arXiv:1701.08893).
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import pixels
from nst_jax.core import statistics

# The per-layer style terms `style_loss` offers (see the module docstring).
STYLE_KINDS = ('gram', 'mean_cov', 'histogram')
# A key of each style loss's statistics (`nst_jax.core.statistics.layer_targets`).
STYLE_STATISTIC = {'gram': 'gram', 'mean_cov': 'mean', 'histogram': 'quantiles'}
# Added to the L1 norm when normalising gradients, as jcjohnson/neural-style.
NORMALIZE_EPS = 1e-8


def tv_loss(image: jax.typing.ArrayLike) -> jax.Array:
  """Total variation, squared: mean((x[i+1,j] - x[i,j])^2) + mean((x[i,j+1] - x[i,j])^2).

  The squared (smooth) form, whose gradient jcjohnson/neural-style's TVLoss
  uses; neural-style-pt sums absolute differences instead. In the network's
  input space (0..255 for the Caffe convention). Each mean runs over that
  direction's (H-1)*W*3 or H*(W-1)*3 differences; a direction with none (an
  image one pixel high or wide) adds 0, not the NaN mean of no differences.

  Args:
    image: [H, W, 3] (channels last: [3, H, W] is refused, as it would
      difference the channels).

  Returns:
    Scalar float32.
  """
  x = jnp.asarray(image, jnp.float32)
  if x.ndim != 3 or x.shape[-1] != 3:
    fix = (
      '; jax.vmap it over a batch'
      if x.shape[-1:] == (3,)
      else pixels.layout_fix(x.shape, batched=False)
    )
    raise errors.ConfigError(f'tv_loss expects one image [H, W, 3], got shape {x.shape}{fix}')
  return _mean_square(x[1:] - x[:-1]) + _mean_square(x[:, 1:] - x[:, :-1])


def _mean_square(d: jax.Array) -> jax.Array:
  """mean(d^2), or 0 where d is empty (decided on the static shape: its gradient stays finite)."""
  return jnp.mean(jnp.square(d)) if d.size else jnp.zeros((), jnp.float32)


def temporal_loss(
  image: jax.typing.ArrayLike, previous: jax.typing.ArrayLike, weight: jax.typing.ArrayLike
) -> jax.Array:
  """Ruder et al. 2016, eq. 4: L_t = mean(c * (x - w)^2) over H*W*3.

  x is the frame being optimised, w the previous stylised frame warped into
  this frame by the optical flow, and c in [0, 1] the per-pixel weight of the
  consistency check (0 at occlusions and motion boundaries; nst_jax.runs.flow). In
  the network's input space, like the TV term. c = 0 everywhere (a first
  frame) gives 0.

  Args:
    image: [H, W, 3].
    previous: [H, W, 3], w.
    weight: [H, W], c.

  Returns:
    Scalar float32.
  """
  x = jnp.asarray(image, jnp.float32)
  w = jnp.asarray(previous, jnp.float32)
  c = jnp.asarray(weight, jnp.float32)[..., None]
  return jnp.mean(c * jnp.square(x - w))


@jax.custom_vjp
def normalize_gradient(x: jax.Array, weight: jax.Array) -> jax.Array:
  """Identity whose gradient is L1-normalised, then multiplied by `weight`.

  jcjohnson/neural-style's -normalize_gradients: the gradient a loss term
  sends into the network at its layer, g, becomes weight * g / (|g|_1 + eps).
  Use as `weight * term(normalize_gradient(features, weight))`: the incoming
  cotangent is weight * dterm/dF, so the result is weight * h / |h|_1 with
  h = dterm/dF (up to eps), whatever the term's magnitude. Loss values are
  unchanged; only gradients differ.
  """
  del weight
  return x


def _normalize_gradient_fwd(x, weight):
  return x, weight


def _normalize_gradient_bwd(weight, g):
  norm = jnp.sum(jnp.abs(g.astype(jnp.float32)))
  return (g / (norm + NORMALIZE_EPS) * weight).astype(g.dtype), jnp.zeros_like(weight)


normalize_gradient.defvjp(_normalize_gradient_fwd, _normalize_gradient_bwd)


def content_layer_loss(
  features: jax.typing.ArrayLike,
  target: jax.typing.ArrayLike,
  mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """mean((F - P)^2) over [H, W, C], or mean(T * (F - P)^2) with a mask T [H, W]."""
  f = jnp.asarray(features).astype(jnp.float32)
  p = jnp.asarray(target).astype(jnp.float32)
  if f.shape != p.shape:
    raise errors.ConfigError(
      f'features {f.shape} vs content target {p.shape}; make the targets from content of the '
      "image's size"
    )
  sq = jnp.square(f - p)
  if mask is not None:
    t = jnp.asarray(mask, jnp.float32)
    if t.shape != f.shape[:2]:  # trial 40: JAX's broadcasting words, or a [1, H, W] broadcast
      raise errors.ConfigError(
        f"content_loss: mask {t.shape} does not match the features' {f.shape[:2]} positions; "
        "give one [H, W] at the features' size (nst_jax.core.vgg.mask_at_layer)"
      )
    sq = sq * t[..., None]
  return jnp.mean(sq)


def content_loss(
  features: Mapping[str, jax.Array],
  targets: Mapping[str, jax.Array],
  *,
  layers: tuple[str, ...],
  masks: Mapping[str, jax.Array] | None = None,
  terms: dict[str, jax.Array] | None = None,
) -> jax.Array:
  """L_c = sum over `layers` of mean((F_l - P_l)^2) (times T_l with masks).

  Args:
    features: layer name -> [H, W, C] features of the image being optimised.
    targets: layer name -> [H, W, C] features of the content image.
    layers: the content layers, e.g. `('relu4_2',)`.
    masks: optional layer name -> [H, W] weight of each position.
    terms: if given, gets each layer's term as 'content/<layer>'.

  Returns:
    Scalar float32.
  """
  total = jnp.zeros((), jnp.float32)
  for name in layers:
    _has_layer('content_loss', name, features, targets, masks)
    mask = None if masks is None else masks[name]
    try:
      term = content_layer_loss(features[name], targets[name], mask)
    except errors.ConfigError as e:
      raise errors.ConfigError(f'{name}: {e}') from None
    if terms is not None:
      terms[f'content/{name}'] = term
    total = total + term
  return total


def check_masks(kind: str, masks: jax.typing.ArrayLike | None) -> None:
  """Refuses style masks with the histogram style loss, whose quantile targets have no regions."""
  if kind == 'histogram' and masks is not None:
    raise errors.ConfigError(
      "the histogram style loss does not take masks; use style_loss 'gram' or 'mean_cov' with "
      'masks, or blend the styles (blend weights) without them'
    )


def style_layer_loss(
  features: jax.typing.ArrayLike,
  target: jax.typing.ArrayLike | Mapping[str, jax.Array],
  *,
  kind: str = 'gram',
  masks: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """One layer's style term, summed over guided regions.

  Args:
    features: [H, W, C].
    target: the style statistics with a leading region axis [S, ...]:
      'gram': {'gram': [S, C, C]} (a bare [C, C] Gram, alone or as
      {'gram': [C, C]}, is one region's);
      'mean_cov': `mean_cov_target` fields stacked to [S, ...];
      'histogram': {'quantiles': [S, H*W, C]}.
    kind: one of STYLE_KINDS.
    masks: None (S must be 1), or [S, H, W] guidance, one mask per region:
      region s is compared with target s under mask s; a region whose mask
      is all zero adds 0.

  Returns:
    Scalar float32: sum_s term_s, with 'gram' term mean((G_T - A)^2).
  """
  if not isinstance(target, Mapping):
    target = {'gram': target}
  _statistic(target, kind)
  if kind == 'gram':
    target = {**target, 'gram': _gram_target(target, jnp.shape(features)[-1])}

    def term(t, mask):
      g = statistics.gram_matrix(features, mask)
      return jnp.mean(jnp.square(g - t['gram'].astype(jnp.float32)))

  elif kind == 'mean_cov':

    def term(t, mask):
      return statistics.mean_cov_loss(features, t, mask)

  elif kind == 'histogram':
    check_masks(kind, masks)

    def term(t, mask):
      del mask
      return statistics.histogram_loss(features, t['quantiles'])

  else:
    raise errors.ConfigError(f'unknown style loss {kind!r}; use one of {", ".join(STYLE_KINDS)}')
  if masks is None:
    regions = jax.tree.leaves(target)[0].shape[0]
    if regions != 1:
      raise errors.ConfigError(f'{regions} style regions need {regions} masks; give one per region')
    return term(jax.tree.map(lambda x: x[0], target), None)

  def region(t, mask):
    # A region with no position at this layer (its mask all zero here: a
    # style placed nowhere, or a sliver pooled away) has nothing to match.
    # Present iff sum(T^2) > 0, the test the Gram's 1/sum(T^2) makes: a mask
    # of values so small that their squares underflow is empty for both.
    m = jnp.asarray(mask, jnp.float32)
    return jnp.where(jnp.sum(m * m) > 0, term(t, mask), 0.0)

  return jnp.sum(jax.vmap(region)(target, jnp.asarray(masks, jnp.float32)))


def _statistic(target: Mapping, kind: str) -> None:
  """Refuses a target of another statistic than `kind`'s (a Gram for 'mean_cov', as objective)."""
  key = STYLE_STATISTIC.get(kind)  # an unknown kind: refused by name after
  if key is not None and key not in target:
    raise errors.ConfigError(
      f'the style target holds {", ".join(map(str, target))}, not {kind!r} statistics; make it '
      f'with make_targets(..., loss_spec=) of style_loss={kind!r}, or pass kind= the statistic '
      'it holds'
    )


def _gram_target(target: Mapping, c: int) -> jax.Array:
  """The 'gram' target as [S, C, C]: a bare [C, C] Gram gets its region axis."""
  a = target['gram']
  shape = np.shape(a)
  if shape == (c, c):
    return jnp.asarray(a)[None]
  if len(shape) != 3 or shape[1:] != (c, c):
    raise errors.ConfigError(
      f"the style target's 'gram' has shape {shape}, but these features' Gram is {(c, c)}; give "
      f'[S, {c}, {c}] (one region: A[None]), from the same network and layers'
    )
  return jnp.asarray(a)


def style_loss(
  features: Mapping[str, jax.Array],
  targets: Mapping[str, jax.Array | Mapping[str, jax.Array]],
  *,
  layer_weights: Mapping[str, float],
  kind: str = 'gram',
  masks: Mapping[str, jax.Array] | None = None,
  terms: dict[str, jax.Array] | None = None,
) -> jax.Array:
  """L_s = sum over layers l of w_l * term_l (Gram: mean((G(F_l) - A_l)^2)).

  Args:
    features: layer name -> [H, W, C] features of the image being optimised.
    targets: layer name -> the style image's [C, C] Gram, or the statistics
      `style_layer_loss` takes for `kind`.
    layer_weights: layer name -> w_l; its keys are the style layers.
    kind: one of STYLE_KINDS.
    masks: optional layer name -> [S, H, W] region guidance.
    terms: if given, gets each layer's term (before w_l) as 'style/<layer>'.

  Returns:
    Scalar float32.
  """
  if not isinstance(layer_weights, Mapping):
    raise errors.ConfigError(
      f'layer_weights is a {type(layer_weights).__name__}; give a dict layer -> weight, e.g. '
      "{'relu1_1': 1.0} (a LossSpec's .layer_weights)"
    )
  total = jnp.zeros((), jnp.float32)
  for name, weight in layer_weights.items():
    _has_layer('style_loss', name, features, targets, masks)
    mask = None if masks is None else masks[name]
    try:
      term = style_layer_loss(features[name], targets[name], kind=kind, masks=mask)
    except errors.ConfigError as e:
      raise errors.ConfigError(f'{name}: {e}') from None
    if terms is not None:
      terms[f'style/{name}'] = term
    total = total + weight * term
  return total


def _has_layer(loss: str, name: str, features, targets, masks) -> None:
  """Refuses a loss layer missing from an argument (a bare KeyError otherwise)."""
  for argument, held in (('features', features), ('targets', targets), ('masks', masks)):
    if held is not None and name not in held:
      raise errors.ConfigError(
        f'{loss}: {argument} lack the layer {name}; give features, targets (and masks) for every '
        'loss layer, from the same layers'
      )
