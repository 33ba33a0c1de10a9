"""Exact tiles: the objective and its gradient computed window by window, equal to the untiled.

The style terms compare statistics that are sums over positions (the Gram
sum_p f_p f_p^T, the mean and covariance), the content term is a sum over
positions, and a VGG feature depends on a bounded neighbourhood of the
input. So the image is cut into tiles; each tile runs the network on a
window (the tile plus a halo) and adds to the global sums the terms of the
positions it owns (its core). The losses are then formed from the global
sums exactly as the untiled objective forms them, and reverse-mode
differentiation goes back through the same sums: the input gradients of the
tiles add up to the untiled gradient, up to float rounding.

One compiled tile function runs over equal-shaped windows (`lax.scan`), its
activations recomputed in the backward pass (`jax.checkpoint`), so memory
holds one window's activations instead of the whole image's: a forward pass
per tile to form the sums, and a forward and a backward pass per tile for
the gradient: 1.5x the passes, over windows larger than their tiles by the
halo (measured: 4.6x the time of an untiled 512x384 iteration in tiles of 128).

Geometry, along each axis (rows and columns alike), for a tile edge T, the
alignment a = 2^P (P poolings up to the deepest layer used: 16 to relu5_1)
and the halo h (see `halo`) rounded up to a multiple of a:

  * tile i owns the input rows [i T, (i + 1) T), the last one up to the
    edge; at a layer after k poolings it owns [i T / 2^k, (i + 1) T / 2^k);
  * every window has W = T + 2h + (H mod a) rows and starts at
    clip(i T - h, 0, H - W): a multiple of a, so its poolings fall on the
    image's; H - W is a multiple of a, so the last window ends at the edge
    and drops the same odd rows as the whole image does;
  * a window reaches at least h rows beyond its core on each side, or the
    image's edge, where the untiled network pads alike: every feature of
    the core is the untiled one.

An axis shorter than T + 2h + (H mod a) is not cut.

Gatys et al.'s loss and its guided form (Gatys et al. 2017) are covered, for
the 'gram' and 'mean_cov' statistics; 'histogram' (a sort over all positions)
and normalized gradients (an L1 norm of each layer's whole gradient) are not
sums over positions and are refused by `LossSpec`.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import statistics
from nst_jax.core import vgg

# The style statistics whose terms are sums over positions (see the module docstring).
TILED_STYLE_KINDS = ('gram', 'mean_cov')


def halo(layers: Sequence[str], stage_sizes: Sequence[int] = vgg.VGG19_STAGE_SIZES) -> int:
  """Input pixels beyond a block of positions that the block's features depend on.

  Walking back from the deepest layer in `layers` to the input, a margin of
  m positions (at that layer's resolution) grows by 1 through each 3x3
  convolution (stride 1, padding 1) and doubles through each aligned 2x2
  pooling (outputs [a - m, b + m) read inputs [2a - 2m, 2b + 2m)); ReLUs keep
  it. To relu5_1: 1 (conv5_1), 2 (pool4), 6 (conv4_1..4), 12 (pool3), 16
  (conv3_1..4), 32 (pool2), 34 (conv2_1..2), 68 (pool1), 70 (conv1_1..2): a
  relu5_1 feature sees 70 input pixels beyond its own 16 on each side (its
  receptive field is 16 + 2 * 70 = 156 pixels). Shallower layers need less,
  so the deepest layer's margin serves them all. Zero padding at a window's
  edge is where such a margin would run out, so a window that keeps `halo`
  pixels around its core computes the core's features exactly.

  Args:
    layers: the layers the loss reads.
    stage_sizes: convolutions per stage of the VGG.

  Returns:
    The margin in input pixels (70 to relu5_1, 38 to relu4_2, 1 to relu1_1).
  """
  margin = 0
  for name in reversed(vgg.layers_through(layers, stage_sizes)):
    if name.startswith('conv'):
      margin += 1
    elif name.startswith('pool'):
      margin *= 2
  return margin


def alignment(layers: Sequence[str], stage_sizes: Sequence[int] = vgg.VGG19_STAGE_SIZES) -> int:
  """2^P, P the poolings up to the deepest of `layers`: tile edges and starts are multiples."""
  return vgg.min_input_size(layers, stage_sizes)


@dataclasses.dataclass(frozen=True)
class TileGrid:
  """Where each tile's window and core lie in an image of `shape` (input pixels).

  Attributes:
    shape: (height, width) of the image.
    window: (rows, cols) of every window.
    starts: per tile, the top-left (row, col) of its window.
    cores: per tile, (row0, row1, col0, col1): the positions it owns; the
      last tile along an axis owns up to the image's edge.
  """

  shape: tuple[int, int]
  window: tuple[int, int]
  starts: tuple[tuple[int, int], ...]
  cores: tuple[tuple[int, int, int, int], ...]

  @property
  def count(self) -> int:
    """The number of tiles."""
    return len(self.starts)

  def table(self) -> np.ndarray:
    """[count, 6] int32: start row, start col, row0, row1, col0, col1 of each tile."""
    return np.array([s + c for s, c in zip(self.starts, self.cores, strict=True)], np.int32)


def _axis(size: int, tile: int, pad: int, align: int) -> tuple[int, list[tuple[int, int, int]]]:
  """(window, [(start, lo, hi)]) along one axis of `size` pixels."""
  window = tile + 2 * pad + size % align
  if window >= size:
    return size, [(0, 0, size)]
  count = -(-size // tile)
  cuts = []
  for i in range(count):
    lo, hi = i * tile, min((i + 1) * tile, size)
    cuts.append((min(max(lo - pad, 0), size - window), lo, hi))
  return window, cuts


@functools.lru_cache(maxsize=64)
def grid(
  height: int,
  width: int,
  tile: int,
  layers: tuple[str, ...],
  stage_sizes: tuple[int, ...] = vgg.VGG19_STAGE_SIZES,
) -> TileGrid:
  """The tiles of a height x width image for tile edge `tile` (see the module docstring).

  Raises:
    ConfigError: `tile` is not a positive multiple of `alignment(layers)`.
  """
  align = alignment(layers, stage_sizes)
  if not isinstance(tile, int) or tile <= 0 or tile % align:
    raise errors.ConfigError(
      f'tile must be a positive multiple of {align} (the poolings up to {layers[-1]}), got '
      f'{tile!r}; use {max(align, round(tile / align) * align) if isinstance(tile, int) else 256}'
    )
  pad = -(-halo(layers, stage_sizes) // align) * align
  rows_window, rows = _axis(height, tile, pad, align)
  cols_window, cols = _axis(width, tile, pad, align)
  starts = tuple((r[0], c[0]) for r in rows for c in cols)
  cores = tuple((r[1], r[2], c[1], c[2]) for r in rows for c in cols)
  return TileGrid((height, width), (rows_window, cols_window), starts, cores)


def _core(tile: jax.Array, k: int, shape: tuple[int, int]) -> jax.Array:
  """[h, w] float32: 1 where a window position at a layer after k poolings is the tile's own."""
  rows = (tile[0] >> k) + jnp.arange(shape[0])
  cols = (tile[1] >> k) + jnp.arange(shape[1])
  own_rows = (rows >= tile[2] >> k) & (rows < tile[3] >> k)
  own_cols = (cols >= tile[4] >> k) & (cols < tile[5] >> k)
  return (own_rows[:, None] & own_cols[None, :]).astype(jnp.float32)


def _window_of(
  x: jax.Array, tile: jax.Array, k: int, shape: tuple[int, int], *, channels: bool = False
) -> jax.Array:
  """The window's part of a map after k poolings: [..., h, w], or [h, w, C] (`channels`)."""
  if channels:
    return lax.dynamic_slice(x, (tile[0] >> k, tile[1] >> k, 0), (*shape, x.shape[-1]))
  lead = x.shape[:-2]
  index = (0,) * len(lead) + (tile[0] >> k, tile[1] >> k)
  return lax.dynamic_slice(x, index, (*lead, *shape))


def _positions(f: jax.Array) -> jax.Array:
  return f.reshape(f.shape[0], -1, f.shape[-1])  # [S, h, w, C] -> [S, h*w, C]


def _second_moment(v: jax.Array) -> jax.Array:
  """[S, M, C] -> [S, C, C]: sum over positions of v_p v_p^T, accumulated in float32."""
  return lax.dot_general(v, v, (((1,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)


def _tile_sums(image, params, parts, tile, *, model: vgg.VGG, spec: Any, window: tuple[int, int]):
  """One tile's share of every sum the loss is made of: its own positions only."""
  win = lax.dynamic_slice(image, (tile[0], tile[1], 0), (*window, image.shape[-1]))
  feats = model.apply({'params': params}, win[None], spec.feature_layers)
  sums = {'content': {}, 'style': {}}
  for name in spec.content_layers:
    f = feats[name][0].astype(jnp.float32)
    k = vgg.downsamplings(name, model.stage_sizes)
    weight = _core(tile, k, f.shape[:2])
    if parts['content_mask'] is not None:
      weight = weight * _window_of(parts['content_mask'][name], tile, k, f.shape[:2])
    p = _window_of(parts['content'][name], tile, k, f.shape[:2], channels=True)
    sums['content'][name] = jnp.sum(weight[..., None] * jnp.square(f - p))
  for name in spec.style_layers:
    f = feats[name][0]
    k = vgg.downsamplings(name, model.stage_sizes)
    t = _core(tile, k, f.shape[:2])[None]
    if parts['style_masks'] is not None:
      t = t * _window_of(parts['style_masks'][name], tile, k, f.shape[:2])
    if spec.style_loss == 'gram':
      # As statistics.gram_matrix: (F * T)^T (F * T), the product in F's dtype.
      sums['style'][name] = {
        'ff': _second_moment(_positions(f[None] * t[..., None].astype(f.dtype)))
      }
    else:
      # Around the target's mean, so that the covariance sum - mean mean^T
      # does not cancel in float32 (the features are in the hundreds).
      d = f.astype(jnp.float32)[None] - parts['shift'][name][:, None, None, :]
      sums['style'][name] = {
        'f': jnp.sum(jnp.square(t)[..., None] * d, axis=(1, 2)),
        'ff': _second_moment(_positions(d * t[..., None])),
      }
  return sums


def _sums(image, params, parts, *, model: vgg.VGG, spec: Any):
  """The loss's sums over every tile of `image` [H, W, 3]: one compiled tile in a scan."""
  tiling = grid(*image.shape[:2], spec.tile, spec.feature_layers, tuple(model.stage_sizes))
  # Recomputed in the backward pass: memory holds one window's activations.
  one = jax.checkpoint(
    functools.partial(_tile_sums, model=model, spec=spec, window=tiling.window), prevent_cse=False
  )
  table = jnp.asarray(tiling.table())
  zeros = jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, image, params, parts, table[0])
  )

  def add(total, tile):
    return jax.tree.map(jnp.add, total, one(image, params, parts, tile)), None

  return lax.scan(add, zeros, table)[0]


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
  masks = targets.style_masks
  shift = None
  if loss_spec.style_loss == 'mean_cov':
    shift = {n: lax.stop_gradient(targets.style[n]['mean']) for n in loss_spec.style_layers}
  parts = {
    'content': targets.content,
    'content_mask': targets.content_mask,
    'style_masks': masks,
    'shift': shift,
  }
  sums = _sums(image, params, parts, model=model, spec=loss_spec)
  l_c = jnp.zeros((), jnp.float32)
  for name in loss_spec.content_layers:
    term = sums['content'][name] / targets.content[name].size
    terms[f'content/{name}'] = term
    l_c = l_c + term
  l_s = jnp.zeros((), jnp.float32)
  for name, weight in layer_weights.items():
    k = vgg.downsamplings(name, model.stage_sizes)
    positions = (image.shape[0] // 2**k) * (image.shape[1] // 2**k)
    mask = None if masks is None else masks[name]
    term = _style_term(sums['style'][name], targets.style[name], mask, positions, shift, name)
    terms[f'style/{name}'] = term
    l_s = l_s + weight * term
  return l_c, l_s


def _style_term(sums, target, mask, positions: int, shift, name: str) -> jax.Array:
  """One layer's style term from its sums, summed over regions as `losses.style_layer_loss`."""
  if mask is None:
    area = jnp.full((1,), float(positions), jnp.float32)
  else:
    t = mask.reshape(mask.shape[0], -1).astype(jnp.float32)
    area = jnp.sum(t * t, axis=1)
  if shift is None:  # 'gram'
    # statistics.gram_matrix: an empty region has the Gram 0.
    inverse = jnp.where(area > 0, 1.0 / jnp.where(area > 0, area, 1.0), 0.0)
    grams = sums['ff'] * inverse[:, None, None]
    per_region = jnp.mean(jnp.square(grams - target['gram'].astype(jnp.float32)), axis=(1, 2))
  else:
    scale = 1.0 / jnp.maximum(area, jnp.finfo(jnp.float32).tiny)
    mean_d = sums['f'] * scale[:, None]
    cov = sums['ff'] * scale[:, None, None] - jnp.einsum('si,sj->sij', mean_d, mean_d)
    mu = shift[name] + mean_d
    per_region = jax.vmap(statistics.mean_cov_distance)(mu, cov, target)
  if mask is None:
    return per_region[0]
  present = area > 0  # as losses.style_layer_loss
  return jnp.sum(jnp.where(present, per_region, 0.0))


def _tile_features(image, params, out, tile, *, model: vgg.VGG, layers, window):
  """`out` (layer -> [h, w, C]) with the tile's own positions filled in from its window."""
  win = lax.dynamic_slice(image, (tile[0], tile[1], 0), (*window, image.shape[-1]))
  feats = model.apply({'params': params}, win[None], layers)
  new = {}
  for name in layers:
    f = feats[name][0]
    k = vgg.downsamplings(name, model.stage_sizes)
    own = _core(tile, k, f.shape[:2])[..., None] > 0
    index = (tile[0] >> k, tile[1] >> k, 0)
    kept = lax.dynamic_slice(out[name], index, f.shape)
    new[name] = lax.dynamic_update_slice(out[name], jnp.where(own, f, kept), index)
  return new


def features(params, image: jax.Array, *, model: vgg.VGG, layers: tuple[str, ...], tile: int):
  """The activations of one image [H, W, 3] computed tile by tile: equal to `model.apply`'s.

  For the content targets of an image too large to run at once; memory for
  one window's activations plus the requested maps.

  Returns:
    layer -> [h, w, C] in the model's dtype.
  """
  tiling = grid(*image.shape[:2], tile, layers, tuple(model.stage_sizes))
  shapes = jax.eval_shape(lambda x: model.apply({'params': params}, x[None], layers), image)
  out = {name: jnp.zeros(s.shape[1:], s.dtype) for name, s in shapes.items()}
  one = functools.partial(_tile_features, model=model, layers=layers, window=tiling.window)
  return lax.scan(lambda o, t: (one(image, params, o, t), None), out, jnp.asarray(tiling.table()))[
    0
  ]


def _tile_moments(image, params, shift, tile, *, model: vgg.VGG, layers, window):
  """The tile's sum_p (f_p - c) and sum_p (f_p - c)(f_p - c)^T at each layer (c = shift)."""
  win = lax.dynamic_slice(image, (tile[0], tile[1], 0), (*window, image.shape[-1]))
  feats = model.apply({'params': params}, win[None], layers)
  sums = {}
  for name in layers:
    f = feats[name][0]
    own = _core(tile, vgg.downsamplings(name, model.stage_sizes), f.shape[:2])[..., None]
    d = (f.astype(jnp.float32) - shift[name][None, None, :]) * own
    sums[name] = {'f': jnp.sum(d, axis=(0, 1)), 'ff': _second_moment(_positions(d[None]))[0]}
  return sums


def moments(
  params, image: jax.Array, *, model: vgg.VGG, layers: tuple[str, ...], tile: int, kind: str
):
  """A style image's statistics at `layers`, tile by tile, as `statistics.layer_targets` uses them.

  'gram': {'gram': F^T F / M}; 'mean_cov': {'mean', 'cov'}, the covariance
  from a second pass around the first pass's mean (float32 would cancel
  otherwise). Equal to the untiled statistics up to float rounding.

  Args:
    image: [H, W, 3] in network space.
    kind: 'gram' or 'mean_cov'.

  Returns:
    layer -> statistics (float32).
  """
  tiling = grid(*image.shape[:2], tile, layers, tuple(model.stage_sizes))
  one = functools.partial(_tile_moments, model=model, layers=layers, window=tiling.window)
  table = jnp.asarray(tiling.table())
  widths = {
    n: jax.eval_shape(lambda x: model.apply({'params': params}, x[None], layers), image)[n]
    for n in layers
  }

  def pass_(shift):
    zeros = {
      n: {'f': jnp.zeros(s.shape[-1]), 'ff': jnp.zeros((s.shape[-1],) * 2)}
      for n, s in widths.items()
    }
    add = lambda total, t: (jax.tree.map(jnp.add, total, one(image, params, shift, t)), None)  # noqa: E731
    return lax.scan(add, zeros, table)[0]

  count = {n: s.shape[1] * s.shape[2] for n, s in widths.items()}
  if kind == 'gram':
    first = pass_({n: jnp.zeros(s.shape[-1]) for n, s in widths.items()})
    return {n: {'gram': first[n]['ff'] / count[n]} for n in layers}
  mean = {
    n: s['f'] / count[n]
    for n, s in pass_({n: jnp.zeros(s.shape[-1]) for n, s in widths.items()}).items()
  }
  second = pass_(mean)
  out = {}
  for n in layers:
    d = second[n]['f'] / count[n]  # ~0: the first pass's rounding
    out[n] = {'mean': mean[n] + d, 'cov': second[n]['ff'] / count[n] - jnp.outer(d, d)}
  return out
