"""Targets of images too large to run at once: content features and style statistics by tiles.

The same tiles as the objective's (`nst_jax.core.tiles`): each window runs
the network with its halo and adds its core's share, so the content
features equal `model.apply`'s and the Gram, mean and covariance equal the
untiled statistics up to float rounding. No gradient is taken through
them: they are computed once per run, before the loop.
"""

import jax
from jax import lax
import jax.numpy as jnp

from nst_jax.core import statistics
from nst_jax.core import tiles
from nst_jax.core import vgg


def target_arrays(params, content, styles, *, blend, model: vgg.VGG, spec):
  """(content features, blended style statistics) of [N, H, W, 3] images, tile by tile.

  As `objective.make_targets` forms them untiled, one image and one window at
  a time; `spec` is the LossSpec (its tile set).
  """
  n = content.shape[0]
  content_feats = lax.map(
    lambda x: features(params, x, model=model, layers=spec.content_layers, tile=spec.tile),
    content,
  )
  per_style = []
  for s in styles:
    stats = lax.map(
      lambda x: moments(
        params, x, model=model, layers=spec.style_layers, tile=spec.tile, kind=spec.style_loss
      ),
      s,
    )
    per_style.append(jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape[1:])), stats))
  stats = {
    name: statistics.blend_statistics([p[name] for p in per_style], blend, kind=spec.style_loss)
    for name in spec.style_layers
  }
  return {k: v.astype(jnp.float32) for k, v in content_feats.items()}, stats


def features(params, image: jax.Array, *, model: vgg.VGG, layers: tuple[str, ...], tile: int):
  """The activations of one image [H, W, 3] computed tile by tile: equal to `model.apply`'s.

  For the content targets of an image too large to run at once (no
  gradient is taken through it: each tile adds its block to a map of the
  whole layer).

  Returns:
    layer -> [h, w, C] in the model's dtype.
  """
  shapes = jax.eval_shape(lambda x: model.apply({'params': params}, x[None], layers), image)

  def consume(name, f, own, at):
    del own  # positions beyond the edge are cut off below
    _, height, width, c = shapes[name].shape
    full = jnp.zeros((height + tile, width + tile, c), f.dtype)
    return lax.dynamic_update_slice(full, f, (*at, 0))

  zeros = {
    n: jnp.zeros((s.shape[1] + tile, s.shape[2] + tile, s.shape[3]), s.dtype)
    for n, s in shapes.items()
  }
  got = tiles.run(
    params, image, model=model, layers=layers, tile=tile, consume=consume, zeros=zeros
  )
  return {n: got[n][: s.shape[1], : s.shape[2]] for n, s in shapes.items()}


def moments(
  params, image: jax.Array, *, model: vgg.VGG, layers: tuple[str, ...], tile: int, kind: str
):
  """A style image's statistics at `layers`, tile by tile, for `statistics.blend_statistics`.

  'gram': {'gram': F^T F / M}; 'mean_cov': {'mean', 'cov'}, the covariance
  from a second pass around the first pass's mean (float32 would cancel
  otherwise). Equal to the untiled statistics up to float rounding.

  Args:
    image: [H, W, 3] in network space.
    kind: 'gram' or 'mean_cov'.

  Returns:
    layer -> statistics (float32).
  """
  shapes = jax.eval_shape(lambda x: model.apply({'params': params}, x[None], layers), image)
  count = {n: s.shape[1] * s.shape[2] for n, s in shapes.items()}

  def sums(shift):
    def consume(name, f, own, at):
      del at
      d = (f.astype(jnp.float32) - shift[name][None, None, :]) * own[..., None]
      return {'f': jnp.sum(d, axis=(0, 1)), 'ff': tiles.second_moment(d[None])[0]}

    zeros = {
      n: {'f': jnp.zeros(s.shape[-1]), 'ff': jnp.zeros((s.shape[-1],) * 2)}
      for n, s in shapes.items()
    }
    return tiles.run(
      params, image, model=model, layers=layers, tile=tile, consume=consume, zeros=zeros
    )

  first = sums({n: jnp.zeros(s.shape[-1]) for n, s in shapes.items()})
  if kind == 'gram':
    return {n: {'gram': first[n]['ff'] / count[n]} for n in layers}
  mean = {n: first[n]['f'] / count[n] for n in layers}
  second = sums(mean)
  out = {}
  for n in layers:
    d = second[n]['f'] / count[n]  # ~0: the first pass's rounding
    out[n] = {'mean': mean[n] + d, 'cov': second[n]['ff'] / count[n] - jnp.outer(d, d)}
  return out
