"""Exact tiles: the objective and its gradient computed tile by tile, as the untiled.

The style statistics (the Gram sum_p f_p f_p^T, the mean and covariance)
and the content term are sums over positions, and a VGG feature depends on
a bounded neighbourhood. So the network runs stage by stage (a stage: the
convolutions between two poolings), and each stage runs tile by tile over
the whole image at its resolution:

  * the stage's input X_s (the image, then each pooled map) is cut into
    tiles of at most T x T positions at every stage (balanced and even:
    `cores`); each tile's window
    adds a halo of h_s positions on each side, h_s = the stage's
    convolutions rounded up to even: a 3x3 convolution reads one position
    further, so after h_s of them the tile's own positions (its core) are
    exact;
  * inside a window, every activation outside the image is set to zero
    after each ReLU: exactly the zero padding the untiled convolutions see
    at the image's edge (so windows never need clamping, and all are equal);
  * the loss layers of the stage add their core's share to the global sums;
    the core's pooled map (T / 2 per side, aligned since T and h_s are even)
    is the tile's part of X_(s+1).

The losses are then formed from the global sums exactly as the untiled
objective forms them, and reverse mode goes back through the same program,
each tile's activations recomputed (`jax.checkpoint`): memory holds the
stage inputs of the whole image (about 130 bytes per pixel to relu5_1) and
one window's activations, not the 1.5 KB per pixel of every activation. The
halos are 2 to 4 positions, so the windows add little work; the recomputed
forward pass adds about a third.

Gatys et al.'s loss and its guided form (Gatys et al. 2017) are covered, for
the 'gram' and 'mean_cov' statistics; 'histogram' (a sort over all positions)
and normalized gradients (an L1 norm of each layer's whole gradient) are not
sums over positions and are refused by `LossSpec`. The targets of images
too large to run at once use the same tiles (`nst_jax.core.tile_targets`);
`LossSpec.tile_progress` reports each tile as it starts
(`nst_jax.core.tile_progress`).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from nst_jax.core import pooling
from nst_jax.core import statistics
from nst_jax.core import tile_progress
from nst_jax.core import vgg

# The style statistics whose terms are sums over positions (see the module docstring).
TILED_STYLE_KINDS = ('gram', 'mean_cov')


# Smaller tiles are mostly halo: a tile of 16 computes (16 + 2 * 2)^2 / 16^2
# = 1.56x its positions at the first stage, 2.25x at the third.
MIN_TILE = 16


def tile_problem(tile) -> str | None:
  """What is wrong with a tile edge (None if nothing): it must be an even int >= MIN_TILE."""
  if (
    isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < MIN_TILE or tile % 2
  ):
    # Even: a stage's core is pooled in place, on the untiled pooling's grid.
    use = nearest_tile(tile)
    if isinstance(tile, (bool, np.bool_)) or not isinstance(tile, (int, float, np.number, str)):
      use = f'an integer such as {use}'  # True is no edge to round
    return f'an even number of pixels, at least {MIN_TILE}, got {tile!r}; use {use}'
  return None


def nearest_tile(tile) -> int:
  """The valid edge nearest `tile` (16.0 or '16': 16, 99: 98, 0: 16); 256 for a non-number."""
  try:
    value = float(tile)
  except (TypeError, ValueError):
    return 256
  if isinstance(tile, bool) or not np.isfinite(value):
    return 256
  return max(MIN_TILE, round(value) // 2 * 2)


def stage_input_bytes(layers: Sequence[str], bytes_per_element: int = 4) -> float:
  """Bytes per input pixel of the stage inputs a tiled step keeps: the image and each pooled map."""
  total, scale = 12.0, 1.0  # the image, float32
  for names, _ in stages(layers)[1:]:
    scale /= 4
    total += vgg.VGG_WIDTHS[vgg.stage_of(names[0]) - 2] * scale * bytes_per_element
  return total


def stages(layers: Sequence[str], stage_sizes: Sequence[int] = vgg.VGG19_STAGE_SIZES):
  """The network up to the deepest of `layers`, cut at its poolings.

  Returns:
    A list of (layer names of the stage, its halo h_s: the stage's
    convolutions rounded up to even).
  """
  out = []
  for name in vgg.layers_through(layers, stage_sizes):
    if not out or out[-1][-1].startswith('pool'):
      out.append([])
    out[-1].append(name)
  return [(tuple(names), -(-sum(n.startswith('conv') for n in names) // 2) * 2) for names in out]


def _layer(model: vgg.VGG, params, name: str, x: jax.Array) -> jax.Array:
  """One layer of `model` on [h, w, C]: as `vgg.VGG.__call__` runs it (same dtypes)."""
  kind = name[:4]
  if kind == 'conv':
    first = name == vgg.layer_names(model.stage_sizes)[0]
    dtype = jnp.float32 if first else model.dtype
    conv = vgg.Conv3x3(model.widths[vgg.stage_of(name) - 1], dtype=dtype, precision=model.precision)
    return conv.apply({'params': params[name]}, x[None].astype(dtype))[0].astype(model.dtype)
  if kind == 'relu':
    return nn.relu(x)
  return pooling.pool(x[None], model.pooling)[0]


def cores(height: int, width: int, tile: int) -> tuple[int, int]:
  """The core (rows, cols) of every tile of a stage's height x width map: balanced, even, <= tile.

  ceil(n / tile) tiles per axis, each ceil(n / count) positions rounded up
  to even (the core is pooled in place): at 1024x768 in tiles of 256, 256 x
  256 at the first stage and one core of 192 x 256 at the third, not a
  window of 264 x 264 that is mostly padding (measured: that made the tiled
  iteration slower still).
  """

  def axis(n: int) -> int:
    count = -(-n // tile)
    core = -(-n // count)
    return max(2, core + core % 2)

  return axis(height), axis(width)


def _windows(x: jax.Array, core: tuple[int, int], halo: int) -> tuple[jax.Array, int, int]:
  """[H, W, C] -> ([rows * cols, core + 2 halo (each axis), C] windows, rows, cols)."""
  height, width = x.shape[:2]
  rows, cols = -(-height // core[0]), -(-width // core[1])
  padded = jnp.pad(
    x, ((halo, rows * core[0] - height + halo), (halo, cols * core[1] - width + halo), (0, 0))
  )
  edges = (core[0] + 2 * halo, core[1] + 2 * halo, x.shape[-1])

  def window(t):
    return lax.dynamic_slice(padded, (t // cols * core[0], t % cols * core[1], 0), edges)

  return jax.vmap(window)(jnp.arange(rows * cols)), rows, cols


def _run_stage(model, params, x, names, halo, tile, consume, zeros, combine, progress):
  """One stage over tiles: (its sums, the pooled map of the whole image or None)."""
  height, width = x.shape[:2]
  ch, cw = cores(height, width, tile)
  windows, rows, cols = _windows(x, (ch, cw), halo)
  pools = names[-1].startswith('pool')

  def tile_fn(w, t):
    if progress is not None:  # tile_progress.emit's static arguments, from `run`
      tile_progress.emit(*progress, t)
    i, j = t // cols, t % cols
    r = i * ch - halo + jnp.arange(ch + 2 * halo)
    c = j * cw - halo + jnp.arange(cw + 2 * halo)
    inside = ((r >= 0) & (r < height))[:, None, None] & ((c >= 0) & (c < width))[None, :, None]
    sums = {}
    for name in names[:-1] if pools else names:
      w = _layer(model, params, name, w)
      if name.startswith('relu'):
        w = jnp.where(inside, w, jnp.zeros((), w.dtype))  # the untiled zero padding
      if name in zeros:
        own = inside[halo : halo + ch, halo : halo + cw, 0]
        sums[name] = consume(name, w[halo : halo + ch, halo : halo + cw], own, (i * ch, j * cw))
    if not pools:
      return sums, None
    # The core alone is pooled: its edges and the halo are even, so its
    # pooling windows are the untiled ones.
    pooled = _layer(model, params, names[-1], w[halo : halo + ch, halo : halo + cw])
    if names[-1] in zeros:
      hh, hw = ch // 2, cw // 2
      own = (i * hh + jnp.arange(hh) < height // 2)[:, None] & (
        j * hw + jnp.arange(hw) < width // 2
      )[None, :]
      sums[names[-1]] = consume(names[-1], pooled, own, (i * hh, j * hw))
    return sums, pooled

  # Only the window is kept for the backward pass; the rest is recomputed.
  tile_fn = jax.checkpoint(tile_fn, prevent_cse=False)

  def body(total, wt):
    sums, pooled = tile_fn(*wt)
    return {n: combine(total[n], sums[n]) for n in total}, pooled

  sums, pooled = lax.scan(body, zeros, (windows, jnp.arange(rows * cols)))
  if not pools:
    return sums, None
  hh, hw = ch // 2, cw // 2
  full = pooled.reshape(rows, cols, hh, hw, -1).transpose(0, 2, 1, 3, 4)
  return sums, full.reshape(rows * hh, cols * hw, -1)[: height // 2, : width // 2]


def run(
  params,
  image: jax.Array,
  *,
  model: vgg.VGG,
  layers: Sequence[str],
  tile: int,
  consume: Callable,
  zeros: Mapping[str, Any],
  combine: Callable = lambda a, b: jax.tree.map(jnp.add, a, b),
  progress: bool = False,
):
  """Runs the network tile by tile to the deepest of `layers`, summing `consume` at each.

  Args:
    params: VGG parameters.
    image: [H, W, 3] in network space.
    model: the VGG.
    layers: the layers to consume.
    tile: the tile edge (`tile_problem` says what it must be).
    consume: `consume(layer, f [h, w, C], own [h, w] bool, (row0, col0)) ->
      pytree`, a core's share of the sums at that layer (positions where
      `own` is False lie outside the image); (row0, col0) is the core's
      offset at the layer's resolution.
    zeros: layer -> a pytree of zeros shaped as `consume`'s result.
    combine: (a layer's total so far, a tile's) -> the new total; added by default.
    progress: each tile calls back as it starts (`tile_progress.emit`).

  Returns:
    layer -> the sums over every tile.
  """
  total, x, cut = {}, image, stages(layers, model.stage_sizes)
  counts = tile_counts(*image.shape[:2], layers, tile, model.stage_sizes)
  for k, (names, halo) in enumerate(cut):
    mine = {n: zeros[n] for n in names if n in zeros}
    where = (k, len(cut), counts[k], sum(counts[:k]), sum(counts)) if progress else None
    sums, x = _run_stage(model, params, x, names, halo, tile, consume, mine, combine, where)
    total.update(sums)
  return total


def tile_counts(height: int, width: int, layers, tile: int, stage_sizes=vgg.VGG19_STAGE_SIZES):
  """The tiles (windows) of each stage of `run` for a height x width image, in order."""
  counts = []
  for _ in stages(layers, stage_sizes):
    ch, cw = cores(height, width, tile)
    counts.append(-(-height // ch) * -(-width // cw))
    height, width = height // 2, width // 2  # every stage but the last ends in a pooling
  return counts


def _padded(a: jax.Array, size: int, *, channels: bool = False) -> jax.Array:
  """A layer-resolution map [..., h, w] (or [h, w, C]) padded by `size` zeros at its end."""
  pad = [(0, size), (0, size), (0, 0)] if channels else [(0, 0)] * (a.ndim - 2) + [(0, size)] * 2
  return jnp.pad(a, pad)


def _at(a: jax.Array, at: tuple, shape: tuple, *, channels: bool = False) -> jax.Array:
  """The block of `shape` (rows, cols) at `at` of a `_padded` map."""
  if channels:
    return lax.dynamic_slice(a, (*at, 0), (*shape, a.shape[-1]))
  lead = a.ndim - 2
  return lax.dynamic_slice(a, (0,) * lead + tuple(at), (*a.shape[:lead], *shape))


def second_moment(v: jax.Array) -> jax.Array:
  """[S, h, w, C] -> [S, C, C]: sum over positions of v_p v_p^T, accumulated in float32."""
  v = v.reshape(v.shape[0], -1, v.shape[-1])
  return lax.dot_general(v, v, (((1,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)


def terms(
  image: jax.Array,
  params: Mapping[str, Mapping[str, jax.Array]],
  targets: Any,
  *,
  model: vgg.VGG,
  loss_spec: Any,
  layer_weights: Mapping[str, float],
  terms: dict[str, jax.Array],
) -> tuple[jax.Array, jax.Array]:
  """(L_c, L_s) of one image [H, W, 3] by tiles of `loss_spec.tile`, as `objective` forms them.

  Each layer's term is also put in `terms` ('content/<layer>',
  'style/<layer>'). The formulas are `nst_jax.core.losses`' and
  `nst_jax.core.statistics`', applied to sums gathered tile by tile.
  """
  spec = loss_spec
  masks, content_mask = targets.style_masks, targets.content_mask
  shift = {}
  if spec.style_loss == 'mean_cov':  # around the target's mean: the features are in the hundreds
    shift = {n: lax.stop_gradient(targets.style[n]['mean']) for n in spec.style_layers}

  # Padded once, outside the tiles' loop: each tile slices its block.
  # A core is at most `tile` positions: that much padding serves every block.
  size = spec.tile
  content = {n: _padded(targets.content[n], size, channels=True) for n in spec.content_layers}
  content_mask = content_mask and {n: _padded(content_mask[n], size) for n in content_mask}
  masks = masks and {n: _padded(masks[n], size) for n in masks}

  def consume(name, f, own, at):
    out = {}
    if name in spec.content_layers:
      weight = own.astype(jnp.float32)
      if content_mask is not None:
        weight = weight * _at(content_mask[name], at, f.shape[:2])
      p = _at(content[name], at, f.shape[:2], channels=True)
      out['content'] = jnp.sum(weight[..., None] * jnp.square(f.astype(jnp.float32) - p))
    if name in spec.style_layers:
      t = own.astype(jnp.float32)[None]
      if masks is not None:
        t = t * _at(masks[name], at, f.shape[:2])
      if spec.style_loss == 'gram':
        # As statistics.gram_matrix: (F * T)^T (F * T), the product in F's dtype.
        out['ff'] = second_moment(f[None] * t[..., None].astype(f.dtype))
      else:  # the tile's weight, mean and second moment about its own mean (see _merged)
        d = f.astype(jnp.float32)[None] - shift[name][:, None, None, :]
        out['w'] = jnp.sum(jnp.square(t), axis=(1, 2))
        out['mean'] = jnp.sum(jnp.square(t)[..., None] * d, axis=(1, 2)) / _nonzero(out['w'])
        out['m2'] = second_moment((d - out['mean'][:, None, None, :]) * t[..., None])
    return out

  shapes = jax.eval_shape(
    lambda x: model.apply({'params': params}, x[None], spec.feature_layers), image
  )
  zeros = {}
  for name in spec.feature_layers:
    c = shapes[name].shape[-1]
    z = {}
    if name in spec.content_layers:
      z['content'] = jnp.zeros((), jnp.float32)
    if name in spec.style_layers:
      regions = 1 if targets.style_masks is None else targets.style_masks[name].shape[0]
      z['m2' if spec.style_loss == 'mean_cov' else 'ff'] = jnp.zeros((regions, c, c), jnp.float32)
      if spec.style_loss == 'mean_cov':
        z['w'], z['mean'] = jnp.zeros(regions, jnp.float32), jnp.zeros((regions, c), jnp.float32)
    zeros[name] = z
  sums = run(
    params, image, model=model, layers=spec.feature_layers, tile=spec.tile, consume=consume,
    zeros=zeros, combine=_merged, progress=spec.tile_progress,
  )  # fmt: skip
  l_c = jnp.zeros((), jnp.float32)
  for name in spec.content_layers:
    term = sums[name]['content'] / targets.content[name].size
    terms[f'content/{name}'] = term
    l_c = l_c + term
  l_s = jnp.zeros((), jnp.float32)
  for name, weight in layer_weights.items():
    positions = shapes[name].shape[1] * shapes[name].shape[2]
    mask = None if targets.style_masks is None else targets.style_masks[name]
    term = _style_term(sums[name], targets.style[name], mask, positions, shift.get(name))
    terms[f'style/{name}'] = term
    l_s = l_s + weight * term
  return l_c, l_s


def _nonzero(w: jax.Array) -> jax.Array:
  return jnp.where(w > 0, w, 1.0)[..., None]


def _merged(a: dict, b: dict) -> dict:
  """A layer's totals and a tile's: sums added; a mean_cov layer's (weight w, mean, second
  moment m2 about the mean) merged as Chan, Golub & LeVeque (1979) do, d = mean_b - mean_a:
  w = w_a + w_b, mean = mean_a + d w_b / w, m2 = m2_a + m2_b + d d^T w_a w_b / w. Never sum f f^T
  - w mean mean^T, which cancels in float32 (trial 56: 3.7e-4 of the term off float64; now 3e-8).
  """
  out = {k: a[k] + b[k] for k in a if k not in ('w', 'mean', 'm2')}
  if 'w' in a:
    out['w'] = a['w'] + b['w']
    share = jnp.where(out['w'] > 0, b['w'] / _nonzero(out['w'])[..., 0], 0.0)
    d = b['mean'] - a['mean']
    out['mean'] = a['mean'] + d * share[:, None]
    out['m2'] = a['m2'] + b['m2'] + (a['w'] * share)[:, None, None] * d[:, :, None] * d[:, None, :]
  return out


def _style_term(sums, target, mask, positions: int, shift) -> jax.Array:
  """One layer's style term from its sums, summed over regions as `losses.style_layer_loss`."""
  if mask is None:
    area = jnp.full((1,), float(positions), jnp.float32)
  else:
    t = mask.reshape(mask.shape[0], -1).astype(jnp.float32)
    area = jnp.sum(t * t, axis=1)
  if shift is None:  # 'gram'; statistics.gram_matrix: an empty region has the Gram 0
    inverse = jnp.where(area > 0, 1.0 / jnp.where(area > 0, area, 1.0), 0.0)
    grams = sums['ff'] * inverse[:, None, None]
    per_region = jnp.mean(jnp.square(grams - target['gram'].astype(jnp.float32)), axis=(1, 2))
  else:
    cov = sums['m2'] / jnp.maximum(area, jnp.finfo(jnp.float32).tiny)[:, None, None]
    per_region = jax.vmap(statistics.mean_cov_distance)(shift + sums['mean'], cov, target)
  if mask is None:
    return per_region[0]
  return jnp.sum(jnp.where(area > 0, per_region, 0.0))  # as losses.style_layer_loss
