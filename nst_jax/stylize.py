"""Style transfer: targets, optimiser state, the jitted step, and the loop.

The pieces research code imports:
  * `make_targets(params, content, style, ...)`: content features and style
    Grams, computed once.
  * `init_state(image, optimizer)` -> `StyleState(image, opt_state)`.
  * `update_step(state, params, targets, *, model, optimizer, loss_config)`:
    one optimiser iteration, a pure module-level function. Jit it where it is
    called, donating the state:

        step = jax.jit(functools.partial(update_step, model=model,
                       optimizer=tx, loss_config=loss_cfg), donate_argnums=0)

Images are batch-shaped [N, H, W, 3] throughout. Each image of the batch is
an independent problem: the step `vmap`s one image's loss and optimiser
update, so every image keeps its own L-BFGS history and step sizes and gets
the same result as if run alone.

The optimised variable is the image in the network's input space (for the
Caffe convention: BGR, 0..255 minus the mean pixel), as in the classic tools,
so the optimisers' step sizes are in pixel units.
"""

import collections
from collections.abc import Callable, Mapping, Sequence
import contextlib
import functools
import math
import os
from pathlib import Path
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nst_jax import checkpoint as checkpoint_lib
from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax import image as image_lib
from nst_jax import losses
from nst_jax import preview as preview_lib
from nst_jax import record as record_lib
from nst_jax import sharding as sharding_lib
from nst_jax import vgg
from nst_jax import weights as weights_lib

# Standard deviation of the random init in network space, from
# jcjohnson/neural-style (`torch.randn(...):mul(0.001)`).
RANDOM_INIT_STD = 0.001
DEFAULT_OUTPUT_DIR = 'output'


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
  """

  content: Mapping[str, jax.Array]
  style: Mapping[str, Mapping[str, jax.Array]]
  content_weight: jax.Array
  style_weight: jax.Array
  tv_weight: jax.Array
  content_mask: Mapping[str, jax.Array] | None = None
  style_masks: Mapping[str, jax.Array] | None = None


class StyleState(NamedTuple):
  """The optimisation state: donated to and returned by `update_step`.

  Attributes:
    image: [N, H, W, 3] float32 images in the network's input space.
    opt_state: the optimiser's state, with a leading [N] axis on every leaf.
  """

  image: jax.Array
  opt_state: optax.OptState


def make_model(cfg: config_lib.StyleConfig) -> vgg.VGG:
  """The VGG-19 described by the config (pooling and compute dtype)."""
  return vgg.VGG19(pooling=cfg.pooling, dtype=vgg.COMPUTE_DTYPES[cfg.dtype])


def make_optimizer(cfg: config_lib.StyleConfig) -> optax.GradientTransformationExtraArgs:
  """The optimiser for `cfg.optimizer`, behind one `update` signature.

  L-BFGS: `optax.lbfgs` with `cfg.lbfgs_memory` pairs and no line search, a
  unit step after optax's norm-capped first step. This is the classic tools'
  setting (torch.optim.LBFGS without line_search_fn); optax's default zoom
  line search cost about 10 evaluations per iteration here and reached in 90 s
  the loss the plain step reached in 10 s (README "Optimisers").

  Adam: `optax.adam(cfg.learning_rate or 10)`, wrapped to accept (and
  ignore) the `value`, `grad`, `value_fn` arguments L-BFGS takes.
  """
  if cfg.optimizer == 'lbfgs':
    return optax.lbfgs(memory_size=cfg.lbfgs_memory, linesearch=None)
  lr = cfg.learning_rate or config_lib.DEFAULT_ADAM_LEARNING_RATE
  return optax.with_extra_args_support(optax.adam(lr))


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
  loss_config: config_lib.LossConfig,
  content_weight: jax.typing.ArrayLike,
  style_weight: jax.typing.ArrayLike,
  tv_weight: jax.typing.ArrayLike = 0.0,
  blend_weights: Sequence[float] | None = None,
  content_mask: jax.Array | None = None,
  style_masks: jax.Array | None = None,
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
    loss_config: which layers and which style loss.
    content_weight: scalar or [N].
    style_weight: scalar or [N].
    tv_weight: scalar or [N].
    blend_weights: one weight per style (not with style_masks).
    content_mask: [N or 1, H, W] weight of the content loss per pixel.
    style_masks: [N or 1, S, H, W], one region mask per style.

  Returns:
    Targets with leading [N] axes.
  """
  n, height, width = content.shape[:3]
  styles = list(style) if isinstance(style, (list, tuple)) else [style]
  for s in styles:
    if s.shape[0] not in (1, n):
      raise ValueError(f'{s.shape[0]} style images for {n} content images; give 1 or {n}')
  if style_masks is not None:
    if blend_weights is not None:
      raise ValueError('blend weights and style masks exclude each other')
    if style_masks.shape[1] != len(styles) or style_masks.shape[2:] != (height, width):
      raise ValueError(
        f'style masks {style_masks.shape} for {len(styles)} styles and a {height}x{width} image'
      )
    blend = None
  else:
    weights = blend_weights or (1.0,) * len(styles)
    if len(weights) != len(styles):
      raise ValueError(f'{len(weights)} blend weights for {len(styles)} styles')
    blend = tuple(float(b) / float(sum(weights)) for b in weights)
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

  def per_layer(mask, layers, shape):
    if mask is None:
      return None
    out = {}
    for name in layers:
      m = vgg.mask_at_layer(mask, name)
      out[name] = jnp.broadcast_to(m, (n, *shape, *m.shape[-2:]))
    return out

  def per_image(x):
    return jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n,))

  return Targets(
    content={k: v.astype(jnp.float32) for k, v in content_feats.items()},
    style=stats,
    content_weight=per_image(content_weight),
    style_weight=per_image(style_weight),
    tv_weight=per_image(tv_weight),
    content_mask=per_layer(content_mask, loss_config.content_layers, ()),
    style_masks=per_layer(
      style_masks, loss_config.style_layers, () if style_masks is None else (len(styles),)
    ),
  )


def objective(
  image: jax.Array,
  params: Mapping[str, Mapping[str, jax.Array]],
  targets: Targets,
  *,
  model: vgg.VGG,
  loss_config: config_lib.LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of one image: cw * L_c + sw * L_s + tv * L_tv (see `nst_jax.losses`).

  With `loss_config.normalize_gradients`, each layer's content and style
  term sends an L1-normalised gradient into the network, times its weight
  (cw, or sw * w_l); loss values are unchanged.

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

  def layer_input(name, weight):
    f = feats[name]
    return losses.normalize_gradient(f, weight) if loss_config.normalize_gradients else f

  aux = {}
  l_c = jnp.zeros((), jnp.float32)
  for name in loss_config.content_layers:
    mask = None if targets.content_mask is None else targets.content_mask[name]
    term = losses.content_layer_loss(layer_input(name, cw), targets.content[name], mask)
    aux[f'content/{name}'] = term
    l_c += term
  l_s = jnp.zeros((), jnp.float32)
  for name, w_l in loss_config.layer_weights.items():
    masks = None if targets.style_masks is None else targets.style_masks[name]
    term = losses.style_layer_loss(
      layer_input(name, sw * w_l), targets.style[name], kind=loss_config.style_loss, masks=masks
    )
    aux[f'style/{name}'] = term
    l_s += w_l * term
  l_tv = losses.tv_loss(image)
  total = cw * l_c + sw * l_s + targets.tv_weight * l_tv
  return total, {'total': total, 'content': l_c, 'style': l_s, 'tv': l_tv, **aux}


def init_state(image: jax.Array, optimizer: optax.GradientTransformation) -> StyleState:
  """A fresh state for [N, H, W, 3] images, one optimiser state per image.

  The image is copied: the step donates the state, and the caller's array
  (often the content image, needed again) must survive that.
  """
  image = jnp.array(image, jnp.float32, copy=True)
  return StyleState(image=image, opt_state=jax.vmap(optimizer.init)(image))


def update_step(
  state: StyleState,
  params: Mapping[str, Mapping[str, jax.Array]],
  targets: Targets,
  *,
  model: vgg.VGG,
  optimizer: optax.GradientTransformationExtraArgs,
  loss_config: config_lib.LossConfig,
) -> tuple[StyleState, dict[str, jax.Array]]:
  """One optimiser iteration on every image of the batch.

  Evaluates the loss and its gradient once per image (L-BFGS without line
  search and Adam both need exactly one evaluation per iteration) and applies
  the optimiser's update.

  Args:
    state: images [N, H, W, 3] and per-image optimiser states.
    params: VGG parameters (shared by the batch; not donated).
    targets: per-image targets with leading [N] axes (not donated).
    model: the VGG (static).
    optimizer: from `make_optimizer` (static).
    loss_config: layers and style layer weights (static).

  Returns:
    (new state, losses): losses maps 'total', 'content', 'style' to [N]
    float32 values of the images *before* this update.
  """

  def one_image(image, opt_state, image_targets):
    value_fn = functools.partial(
      objective, params=params, targets=image_targets, model=model, loss_config=loss_config
    )
    (value, aux), grad = jax.value_and_grad(value_fn, has_aux=True)(image)
    updates, opt_state = optimizer.update(
      grad,
      opt_state,
      image,
      value=value,
      grad=grad,
      value_fn=lambda x: value_fn(x)[0],
    )
    return optax.apply_updates(image, updates), opt_state, aux

  image, opt_state, aux = jax.vmap(one_image)(state.image, state.opt_state, targets)
  return StyleState(image=image, opt_state=opt_state), aux


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
    rgb, _ = _batched(image)
    rgb = image_lib.resize(rgb, *content.shape[1:3])
  x = image_lib.preprocess(rgb, convention)
  return jnp.broadcast_to(x, content.shape)


def _batched(rgb: jax.typing.ArrayLike) -> tuple[jax.Array, bool]:
  x = jnp.asarray(rgb, jnp.float32)
  if x.ndim == 3:
    return x[None], True
  if x.ndim == 4:
    return x, False
  raise ValueError(f'expected an RGB image [H, W, 3] or [N, H, W, 3], got {x.shape}')


# XLA's working memory for the step beyond the per-pixel terms below. With
# the sequential CPU scheduler nst_jax selects (nst_jax/_xla_flags.py),
# compiled.memory_analysis() leaves almost nothing beyond them: at 256x192
# to 1024x768 the estimate's device part is 1.05-1.34x XLA's figure.
_FIXED_STEP_BYTES = 10_000_000
# On CPU the process also holds the compiler's and runtime's working set and
# host copies of the weights: 490-615 MB above XLA's figure, measured at 256,
# 512 and 1024 px (bench/bench_memory.py). On GPU/TPU that is host memory.
_CPU_RUNTIME_BYTES = 600_000_000


def estimate_memory(
  height: int,
  width: int,
  *,
  config: config_lib.StyleConfig,
  batch: int = 1,
  platform: str = 'cpu',
) -> int:
  """Peak memory of one step in bytes, estimated before compiling anything.

  Per pixel: the backward pass keeps one activation per convolution and every
  pooled map up to the deepest layer used (each at its stage's resolution,
  1/4 of the pixels per pooling) in the compute dtype, and at its widest
  holds full-resolution float32 gradients of conv1 (one for float32, as
  XLA's sequential CPU schedule keeps them; three for bfloat16, where XLA
  keeps float32 copies beside the bfloat16 ones);
  the optimiser holds image-sized float32 buffers (L-BFGS: 2 * history + 4,
  Adam: 4). Plus the float32 weights and a fixed working set, and on CPU the
  compiler's and runtime's memory. Checked against XLA's own memory analysis
  in the tests and against measured peaks in bench/bench_memory.py.

  Args:
    height: image height in pixels.
    width: image width in pixels.
    config: the layers, dtype, optimiser and history used.
    batch: images per step.
    platform: 'cpu' counts the whole process; otherwise device memory only.

  Returns:
    Bytes.
  """
  names = vgg.layer_names(vgg.VGG19_STAGE_SIZES)
  deepest = max(names.index(name) for name in config.loss.feature_layers)
  kept, scale = 0.0, 1.0  # channels kept per input pixel; fraction of pixels
  for name in names[: deepest + 1]:
    channels = vgg.VGG_WIDTHS[int(name[4]) - 1]
    if name.startswith('pool'):
      scale /= 4
      kept += channels * scale
    elif name.startswith('conv'):
      kept += channels * scale
  bf16 = config.dtype == 'bfloat16'
  gradients = (3 if bf16 else 1) * vgg.VGG_WIDTHS[0]
  per_pixel = (2 if bf16 else 4) * kept + 4 * gradients
  image_buffers = 2 * config.lbfgs_memory + 4 if config.optimizer == 'lbfgs' else 4
  per_pixel += image_buffers * 3 * 4
  weights = 4 * sum(math.prod(s) for s in weights_lib.expected_shapes().values())
  fixed = _FIXED_STEP_BYTES + weights + (_CPU_RUNTIME_BYTES if platform == 'cpu' else 0)
  return int(fixed + batch * height * width * per_pixel)


def available_memory(device: jax.Device | None = None) -> int | None:
  """Bytes free for a run on `device` (default: the first), None if unknown.

  CPU: the kernel's MemAvailable; GPU/TPU: the allocator's limit minus use.
  """
  device = device or jax.devices()[0]
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    if 'bytes_limit' in stats:
      return stats['bytes_limit'] - stats.get('bytes_in_use', 0)
    return None
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check_memory(height: int, width: int, *, config: config_lib.StyleConfig) -> int:
  """Raises NstError, naming the estimate and what to do, if a run won't fit."""
  device = jax.devices()[0]
  need = estimate_memory(height, width, config=config, platform=device.platform)
  have = available_memory(device)
  logging.info(
    'estimated peak memory %.2f GB for %dx%d (available: %s)',
    need / 1e9,
    width,
    height,
    'unknown' if have is None else f'{have / 1e9:.1f} GB',
  )
  if have is not None and need > have:
    raise errors.NstError(
      f'a {width}x{height} run needs about {need / 1e9:.1f} GB but only {have / 1e9:.1f} GB is '
      f'available on {device.platform}; use a smaller -w (memory grows with the pixel '
      'count), --dtype bfloat16 (GPU/TPU), or --optimizer adam or a smaller --lbfgs_memory'
    )
  return need


def _check_size(
  what: str, shape: tuple[int, ...], loss_config: config_lib.LossConfig, scales: int = 1
) -> None:
  need = vgg.min_input_size(loss_config.feature_layers)
  _, h, w, _ = shape
  if min(h, w) < need:
    where, fix = 'at this width', 'a larger width (-w)'
    if scales > 1:
      where, fix = 'at the coarsest scale', 'a larger width (-w) or fewer --scales'
    raise errors.ImageError(
      f'the {what} image is {w}x{h} px {where}, but the layers used need at least '
      f'{need} px on each side; use {fix}'
    )


class LogProgress:
  """Plain log lines every `print_iter` iterations and at the last (pipes, log files)."""

  def __init__(self, print_iter: int):
    self.print_iter = print_iter

  def start(self, *, scale: tuple[int, int], total: int, done: int) -> None:
    self.prefix = f'scale {scale[0] + 1}/{scale[1]}  ' if scale[1] > 1 else ''
    self.total = total

  def wants(self, iteration: int) -> bool:
    return is_time(iteration, self.print_iter, self.total)

  def report(self, iteration: int, losses: Mapping[str, float], rate: float) -> None:
    logging.info(
      '%siteration %d/%d  loss %.5g  content %.5g  style %.5g  tv %.5g  %.2f it/s  ETA %.0f s',
      self.prefix,
      iteration,
      self.total,
      losses['total'],
      losses['content'],
      losses['style'],
      losses['tv'],
      rate,
      (self.total - iteration) / rate,
    )

  def close(self) -> None:
    pass


class BarProgress:
  """A tqdm bar on stderr: iteration, total loss, iterations per second, ETA.

  It reads the loss after every iteration (one scalar per image), which
  also keeps the bar's rate honest under asynchronous dispatch.
  """

  def __init__(self, file=None):
    self.file = file

  def start(self, *, scale: tuple[int, int], total: int, done: int) -> None:
    import tqdm  # only for terminals

    desc = f'scale {scale[0] + 1}/{scale[1]}' if scale[1] > 1 else 'nst-jax'
    self.bar = tqdm.tqdm(
      total=total, initial=done, desc=desc, unit='it', dynamic_ncols=True, file=self.file
    )

  def wants(self, iteration: int) -> bool:
    del iteration
    return True

  def report(self, iteration: int, losses: Mapping[str, float], rate: float) -> None:
    del rate  # tqdm measures its own
    self.bar.set_postfix(loss=f'{losses["total"]:.4g}', refresh=False)
    self.bar.update(iteration - self.bar.n)

  def close(self) -> None:
    self.bar.close()


def make_progress(config: config_lib.StyleConfig) -> LogProgress | BarProgress:
  """config.progress: 'bar', 'log', or 'auto' (a bar when stderr is a terminal)."""
  mode = config.progress
  if mode == 'auto':
    mode = 'bar' if sys.stderr.isatty() else 'log'
  return BarProgress() if mode == 'bar' else LogProgress(config.print_iter)


def is_time(iteration: int, every: int, total: int) -> bool:
  """True every `every` iterations (1-based) and at the last one; never if every=0."""
  return every > 0 and (iteration % every == 0 or iteration == total)


def _style_list(style) -> list[jax.Array]:
  items = list(style) if isinstance(style, (list, tuple)) else [style]
  if not items:
    raise errors.ConfigError('no style image given')
  return [_batched(s)[0] for s in items]


def _scaled_shape(shape: tuple[int, ...], ratio: float) -> tuple[int, int]:
  return max(1, round(shape[1] * ratio)), max(1, round(shape[2] * ratio))


def _resize_masks(masks: jax.Array | None, height: int, width: int) -> jax.Array | None:
  """[B, ..., H, W] masks -> [B, ..., height, width] (antialiased, clipped to [0, 1])."""
  if masks is None or masks.shape[-2:] == (height, width):
    return masks
  lead = masks.shape[:-2]
  flat = masks.reshape(-1, *masks.shape[-2:])[..., None]
  out = image_lib.resize(flat, height, width)[..., 0]
  return jnp.clip(out.reshape(*lead, height, width), 0.0, 1.0)


def stylize(
  content: jax.typing.ArrayLike,
  style: jax.typing.ArrayLike | Sequence[jax.typing.ArrayLike],
  *,
  config: config_lib.StyleConfig | None = None,
  weights: 'weights_lib.Weights | str | os.PathLike | None' = None,
  callback: Callable[[int, np.ndarray], None] | None = None,
  checkpoint: str | os.PathLike | None = None,
  should_stop: Callable[[], int | None] | None = None,
  content_mask: jax.typing.ArrayLike | None = None,
  style_masks: jax.typing.ArrayLike | None = None,
  init_image: jax.typing.ArrayLike | None = None,
  record: dict | None = None,
  monitor: 'preview_lib.Preview | None' = None,
) -> np.ndarray:
  """Transfers the style of `style` onto `content`.

  The images are used at the size given (the content's width is the final
  width); `run` does the resizing for files. The pipeline:
    1. colour control on the inputs (`config.preserve_colors`): 'luminance'
       reduces content and styles to luminance (the styles' matched to the
       content's mean and deviation); 'histogram' maps each style's colours
       to the content's (`image.match_color`);
    2. for each scale of `config.scale_widths(width)`, coarse to fine: resize
       content, styles (by the same ratio) and masks, compute the targets,
       start from the previous scale's result upsampled (bicubic, in network
       space; the first scale from `config.init`), and run
       `config.iterations` iterations of the jitted step;
    3. 'luminance' and 'postprocess' put the content's chroma back.

  Args:
    content: RGB in [0, 1], [H, W, 3] or [N, H, W, 3].
    style: RGB in [0, 1], [Hs, Ws, 3] or [N, Hs, Ws, 3] (any size), or a
      list of those for several styles (blended with
      `config.style_blend_weights`, or placed by `style_masks`).
    config: iterations, weights, layers, optimiser (paths are ignored);
      None = StyleConfig() defaults.
    weights: loaded Weights, a path, or None for the default location.
    callback: called as callback(iteration, rgb) every `config.save_iter`
      iterations, and when stopped, with the current RGB images
      ([N, H, W, 3] at the current scale, clipped, colours post-processed);
      iterations count on across scales.
    checkpoint: a checkpoint file, written every `config.checkpoint_every`
      iterations, at the end of each scale and when stopped; with
      `config.resume` the run continues from it (see nst_jax.checkpoint).
    should_stop: polled after every iteration; a non-zero return (a signal
      number) saves the checkpoint and image, then raises Interrupted.
    content_mask: [H, W] or [N, H, W] in [0, 1]: weight of the content loss
      per pixel (None: 1 everywhere).
    style_masks: [S, H, W] or [N, S, H, W] in [0, 1], one per style: where
      each style applies (guided Grams, Gatys et al. 2017).
    init_image: RGB start image when `config.init` names a file (it is read
      from that path if this is None).
    record: a dict to fill with what happened: 'scales' (width, height,
      compile_s (0 when an earlier run's compiled step was reused, then
      compile_reused is true), run_s per scale) and 'history' (scale, iteration, time_s and
      every loss, at each reported iteration).
    monitor: a live view (nst_jax.preview.Preview, or anything with its
      `begin`, `due` and `update`): given the losses and the current RGB
      image ([H, W, 3], image 0) whenever `due()` says so; never waited for.

  Returns:
    RGB float32 in [0, 1] with the leading shape of `content`.
  """
  config = config or config_lib.StyleConfig()
  w = weights_lib.as_weights(weights)
  convention = w.info.input_convention
  content_b, squeeze = _batched(content)
  styles = _style_list(style)
  n, height, width = content_b.shape[:3]
  if style_masks is not None and config.style_blend_weights is not None:
    raise errors.ConfigError(
      'style blend weights and style masks exclude each other: with masks each style governs '
      'its own region'
    )
  blend = None if style_masks is not None else config.blend_weights(len(styles))
  if content_mask is not None:
    content_mask = jnp.asarray(content_mask, jnp.float32)
    content_mask = content_mask[None] if content_mask.ndim == 2 else content_mask
    if content_mask.shape[1:] != (height, width):
      raise errors.ConfigError(f'content mask {content_mask.shape} for a {width}x{height} image')
  if style_masks is not None:
    style_masks = jnp.asarray(style_masks, jnp.float32)
    style_masks = style_masks[None] if style_masks.ndim == 3 else style_masks
    if style_masks.shape[1:] != (len(styles), height, width):
      raise errors.ConfigError(
        f'style masks {style_masks.shape} for {len(styles)} styles and a {width}x{height} image; '
        'give one mask per style'
      )
  colors = config.preserve_colors
  if colors == 'luminance':
    styles = [image_lib.luminance_image(s, like=content_b) for s in styles]
    work = image_lib.luminance_image(content_b)
  elif colors == 'histogram':
    styles = [image_lib.match_color(s, content_b, config.color_match) for s in styles]
    work = content_b
  else:
    work = content_b
  start_rgb = None
  if config.init not in config_lib.INITS:
    if init_image is None:
      init_image = image_lib.load_image(config.init, max_pixels=config.max_image_pixels)
    start_rgb, _ = _batched(init_image)
    if colors == 'luminance':
      start_rgb = image_lib.luminance_image(start_rgb)

  widths = config.scale_widths(width)
  coarsest = widths[0] / width
  shapes = [('content', content_b.shape)] + [('style', s.shape) for s in styles]
  for what, shape in shapes:
    _check_size(what, (1, *_scaled_shape(shape, coarsest), 3), config.loss, len(widths))

  resume_scale = 0
  if config.resume and checkpoint is not None:
    payload = checkpoint_lib.read(checkpoint)
    if payload.get('scales', 1) != len(widths):
      raise errors.NstError(
        f'cannot resume from {checkpoint}: it was made with {payload.get("scales", 1)} scales, '
        f'now {len(widths)}; rerun with the same scales'
      )
    resume_scale = payload.get('scale', 0)

  def finish(x: jax.Array, colors_at_scale: jax.Array) -> np.ndarray:
    rgb = jnp.clip(image_lib.deprocess(x, convention), 0.0, 1.0)
    if colors in ('luminance', 'postprocess'):
      rgb = image_lib.transfer_chroma(rgb, colors_at_scale)
    return np.asarray(rgb)

  if monitor is not None:
    monitor.begin(total=config.iterations * len(widths), scales=len(widths))
  x = None
  for k, wk in enumerate(widths):
    if k < resume_scale:
      continue
    ratio = wk / width
    hk, _ = _scaled_shape(content_b.shape, ratio)
    colors_k = image_lib.resize(content_b, hk, wk)
    content_k = image_lib.preprocess(image_lib.resize(work, hk, wk), convention)
    styles_k = [
      image_lib.preprocess(image_lib.resize(s, *_scaled_shape(s.shape, ratio)), convention)
      for s in styles
    ]
    if x is None:
      init = initial_image(
        content_k, init=config.init, seed=config.seed, convention=convention, image=start_rgb
      )
    else:
      init = image_lib.resize(x, hk, wk)
    if len(widths) > 1:
      logging.info('scale %d/%d: %dx%d', k + 1, len(widths), wk, hk)
    offset = k * config.iterations

    def scale_callback(it, xs, offset=offset, colors_k=colors_k):
      if callback is not None:
        callback(offset + it, finish(xs, colors_k))

    scale_monitor = None
    if monitor is not None:

      def scale_monitor(it, losses, xs, offset=offset, colors_k=colors_k, k=k):
        monitor.update(offset + it, losses, finish(xs, colors_k)[0], scale=k + 1)

    x = _optimise(
      w,
      config,
      content_k,
      styles_k,
      record=record,
      blend=blend,
      content_mask=_resize_masks(content_mask, hk, wk),
      style_masks=_resize_masks(style_masks, hk, wk),
      init=init,
      checkpoint=checkpoint,
      resume=config.resume and k == resume_scale,
      scale=(k, len(widths)),
      callback=scale_callback,
      should_stop=should_stop,
      monitor=monitor.due if monitor is not None else None,
      on_monitor=scale_monitor,
    )
  result = finish(x, content_b)
  return result[0] if squeeze else result


def _optimise(
  w: weights_lib.Weights,
  config: config_lib.StyleConfig,
  content: jax.Array,
  styles: list[jax.Array],
  *,
  blend: tuple[float, ...] | None,
  content_mask: jax.Array | None,
  style_masks: jax.Array | None,
  init: jax.Array,
  checkpoint: str | os.PathLike | None,
  resume: bool,
  scale: tuple[int, int],
  callback: Callable[[int, jax.Array], None],
  should_stop: Callable[[], int | None] | None,
  record: dict | None = None,
  monitor: Callable[[], bool] | None = None,
  on_monitor: Callable[[int, dict[str, float], jax.Array], None] | None = None,
) -> jax.Array:
  """One scale of `stylize`: targets, compile, iterate. Network space in and out.

  `monitor()` is asked after every iteration whether `on_monitor(iteration,
  losses, image)` wants the current state (the live preview's rate limit).
  """
  model = make_model(config)
  optimizer = make_optimizer(config)
  loss_config = config.loss
  targets = jax.jit(make_targets, static_argnames=('model', 'loss_config', 'blend_weights'))(
    w.params,
    content,
    styles,
    model=model,
    loss_config=loss_config,
    content_weight=config.content_weight,
    style_weight=config.style_weight,
    tv_weight=config.tv_weight,
    blend_weights=blend,
    content_mask=content_mask,
    style_masks=style_masks,
  )
  state = init_state(init, optimizer)
  start = 0
  settings = None
  if checkpoint is not None:
    settings = checkpoint_lib.trajectory_settings(
      config,
      weights_hash=w.info.params_sha256,
      content=np.asarray(content),
      style=[np.asarray(s) for s in styles],
      masks=[np.asarray(m) for m in (content_mask, style_masks) if m is not None],
      scale=scale[0],
    )
    if resume:
      restored, start = checkpoint_lib.restore(checkpoint, like=state, settings=settings)
      state = jax.tree.map(jnp.asarray, restored)
      logging.info('resumed from %s after iteration %d', checkpoint, start)
  step_fn = functools.partial(
    update_step, model=model, optimizer=optimizer, loss_config=loss_config
  )
  params = w.params
  if config.shard == 'spatial' and jax.local_device_count() > 1:
    step, state, params, targets = _spatially_sharded(step_fn, state, params, targets)
  else:
    step = jax.jit(step_fn, donate_argnums=0)
  step_key = (
    model,
    loss_config,
    config.optimizer,
    config.learning_rate,
    config.lbfgs_memory,
    config.shard,
  )
  compiled, compile_s = _compiled_step(step, step_key, state, params, targets)
  if compile_s:
    logging.info('compiled the step in %.1f s', compile_s)
  else:
    logging.info('reused the compiled step of an earlier run with the same settings and sizes')
  history = record.setdefault('history', []) if record is not None else None

  def non_finite(it: int) -> errors.NstError:
    kept = (
      f'the last finite state is in {checkpoint} (iteration {last_saved}); '
      if last_saved is not None
      else ''
    )
    return errors.NstError(
      f'the loss became non-finite at iteration {it}; {kept}lower the weights or the learning rate'
    )

  total = config.iterations
  last_saved = start if start else None
  reporter = make_progress(config)
  reporter.start(scale=scale, total=total, done=start)
  try:
    t_start = time.perf_counter()
    for it in range(start + 1, total + 1):
      state, step_losses = compiled(state, params, targets)
      if it == start + 1:
        # The first call pays one-off costs (7 s -> 17 s at 1024x768 on CPU); one
        # sync here keeps them out of the rate and the ETA.
        jax.block_until_ready(step_losses)
        t_first = time.perf_counter()
        logging.info('first iteration took %.1f s (with warm-up)', t_first - t_start)
      if reporter.wants(it) or it == total:
        host = jax.device_get(step_losses)
        if not all(np.all(np.isfinite(v)) for v in host.values()):
          raise non_finite(it)
        done = it - start - 1
        rate = done / (time.perf_counter() - t_first) if done else 1.0 / (t_first - t_start)
        step_values = {k: float(v.sum()) for k, v in host.items()}
        reporter.report(it, step_values, rate)
        if history is not None:
          elapsed = time.perf_counter() - t_start
          history.append({'scale': scale[0], 'iteration': it, 'time_s': elapsed, **step_values})
      if monitor is not None and monitor():
        host = jax.device_get(step_losses)
        on_monitor(it, {k: float(v.sum()) for k, v in host.items()}, state.image)
      signum = should_stop() if should_stop is not None else None
      if checkpoint is not None and (
        signum or it == total or is_time(it, config.checkpoint_every, total)
      ):
        host_state = jax.device_get(state)
        if not np.all(np.isfinite(host_state.image)):
          raise non_finite(it)  # never replace a good checkpoint with a broken one
        checkpoint_lib.save(
          checkpoint,
          state=host_state,
          iteration=it,
          total=total,
          settings=settings,
          scale=scale,
        )
        last_saved = it
      if signum:
        callback(it, state.image)
        saved = f'saved {checkpoint} and the current image' if checkpoint else 'stopped'
        raise errors.Interrupted(
          f'interrupted by signal {signum} after iteration {it}; {saved}; continue with --resume',
          signum,
        )
      if is_time(it, config.save_iter, total) and it < total:
        callback(it, state.image)
  finally:
    reporter.close()
  if record is not None:
    record.setdefault('scales', []).append(
      {
        'width': int(content.shape[2]),
        'height': int(content.shape[1]),
        'compile_s': compile_s,
        'compile_reused': compile_s == 0.0,
        'run_s': time.perf_counter() - t_start,
        **sharding_lib.describe(compiled),
      }
    )
  return state.image


# Compiled steps, reused by later runs with the same settings, shapes and
# placement: a program calling `stylize` in a loop, or many single runs of
# one size, pays the compile (about 1 s at 64 px, 7 s at 1024 px here) once.
_COMPILED_STEPS: collections.OrderedDict = collections.OrderedDict()
_COMPILED_STEPS_KEPT = 8


def _compiled_step(step, key, *args) -> tuple[Any, float]:
  """`step.lower(*args).compile()`, from the cache when possible.

  Returns:
    (compiled, seconds spent compiling: 0.0 when reused).
  """
  leaves = jax.tree.leaves(args)
  full_key = (
    key,
    jax.tree.structure(args),
    tuple((x.shape, x.dtype, getattr(x, 'sharding', None)) for x in leaves),
  )
  compiled = _COMPILED_STEPS.get(full_key)
  if compiled is not None:
    _COMPILED_STEPS.move_to_end(full_key)
    return compiled, 0.0
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  _COMPILED_STEPS[full_key] = compiled
  while len(_COMPILED_STEPS) > _COMPILED_STEPS_KEPT:
    _COMPILED_STEPS.popitem(last=False)
  return compiled, compile_s


def _spatially_sharded(step_fn, state: StyleState, params, targets: Targets):
  """The step with each image's height split over this process's devices.

  The image and every state leaf shaped like it (the L-BFGS history) are
  split along H over the mesh axis 'space'; the parameters and targets are
  replicated. XLA's SPMD partitioner adds the halo exchanges of the
  convolutions and the all-reduces of the Grams and losses. The height is
  split evenly, over the most devices that divide it.

  Returns:
    (jitted step, state, params, targets), the last three placed.
  """
  height, width = state.image.shape[1:3]
  devices = jax.local_devices()
  # Rows split evenly: the most devices that divide the height.
  used = max(k for k in range(1, len(devices) + 1) if height % k == 0)
  if used < len(devices):
    logging.warning(
      'spatial sharding: a height of %d rows splits evenly over %d of the %d devices; a '
      'height divisible by %d uses them all',
      height,
      used,
      len(devices),
      len(devices),
    )
  mesh = sharding_lib.spatial_mesh(devices[:used])
  state_sh = sharding_lib.spatial_shardings(state, mesh, height, width)
  replicate = sharding_lib.replicated_sharding(mesh)
  params_sh = jax.tree.map(lambda _: replicate, params)
  targets_sh = jax.tree.map(lambda _: replicate, targets)
  step = jax.jit(
    step_fn,
    in_shardings=(state_sh, params_sh, targets_sh),
    out_shardings=(state_sh, replicate),
    donate_argnums=0,
  )
  logging.info('spatial sharding: %d rows over %d devices', height, mesh.size)
  return (
    step,
    jax.device_put(state, state_sh),
    jax.device_put(params, params_sh),
    jax.device_put(targets, targets_sh),
  )


def _default_names(content_path: str, style_path: str | Sequence[str], directory: str):
  styles = [style_path] if isinstance(style_path, str) else list(style_path)
  stem = f'{Path(content_path).stem}_{"+".join(Path(p).stem for p in styles)}'
  yield Path(directory) / f'{stem}.png'
  n = 2
  while True:
    yield Path(directory) / f'{stem}_{n}.png'
    n += 1


def default_output_path(
  content_path: str, style_path: str | Sequence[str], directory: str = DEFAULT_OUTPUT_DIR
) -> Path:
  """output/<content>_<style>.png, with _2, _3 ... added so nothing is replaced.

  Several styles are joined with '+': output/<content>_<style1>+<style2>.png.

  A name whose checkpoint exists counts as taken, so a new run never
  overwrites an interrupted one.
  """
  for path in _default_names(content_path, style_path, directory):
    if not path.exists() and not checkpoint_lib.path_for(path).exists():
      return path
  raise AssertionError('unreachable')


def resume_output_path(
  content_path: str, style_path: str | Sequence[str], directory: str = DEFAULT_OUTPUT_DIR
) -> Path:
  """The newest default output name that has a checkpoint, for --resume."""
  found = None
  for path in _default_names(content_path, style_path, directory):
    if not checkpoint_lib.path_for(path).exists():
      if path.exists():
        continue  # a finished run without checkpoint; later names may have one
      break
    found = path
  if found is None:
    raise errors.NstError(
      f'nothing to resume: no checkpoint for these images under {directory}/; run without '
      '--resume, or name the interrupted run with --output'
    )
  return found


def check_writable(path: Path, bit_depth: int = 8) -> None:
  """Fails early if `path` cannot be written; creates nothing."""
  if path.is_dir():
    raise errors.NstError(f'output {path} is a directory; name a file such as out.png')
  image_lib.check_output(path, bit_depth)
  existing = path.parent
  while not existing.exists():  # the directories are made only when saving
    existing = existing.parent
  if not existing.is_dir():
    raise errors.NstError(f'{existing} is a file, not a directory; choose another --output')
  if not os.access(existing, os.W_OK):
    raise errors.NstError(f'{existing} is not writable; choose another --output')


@contextlib.contextmanager
def _stop_on_signals():
  """Turns SIGINT/SIGTERM into a flag the loop polls, so it can save first.

  Yields a callable returning the signal number received, or None. Only the
  main thread can install handlers; elsewhere signals keep their defaults.
  """
  received = []
  if threading.current_thread() is not threading.main_thread():
    yield lambda: None
    return
  previous = {
    signum: signal.signal(signum, lambda signum, frame: received.append(signum))
    for signum in (signal.SIGINT, signal.SIGTERM)
  }
  try:
    yield lambda: received[0] if received else None
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


@contextlib.contextmanager
def _serving(port: int | None, *, title: str):
  """The live preview page on `port` for the duration of the block (None: none)."""
  if port is None:
    yield None
    return
  preview = preview_lib.Preview(port, title=title)
  print(f'live preview: {preview.url}', file=sys.stderr, flush=True)
  linger = preview_lib.DEFAULT_LINGER_S
  try:
    yield preview
  except BaseException as e:
    preview.fail(f'failed: {e}' if str(e) else f'failed: {type(e).__name__}')
    linger = 1.0  # let a watching page see why, but do not hold up the exit
    raise
  finally:
    preview.close(linger_s=linger)


def run(cfg: config_lib.StyleConfig) -> Path:
  """Reads the images named in `cfg`, stylizes, and writes the result.

  The output is checked for writability and the memory need estimated before
  any computation; intermediate images (every `cfg.save_iter`) go beside it
  as <name>_<iteration>.png and the checkpoint as <name>.ckpt. SIGINT and
  SIGTERM save the checkpoint and the current image, then raise Interrupted.
  Every file is written atomically, in the output's format (`cfg.bit_depth`,
  `cfg.quality`) with the content image's ICC profile. Style images are resized to
  `cfg.style_scale` x `cfg.width`; masks to the content's size.

  Returns:
    The path written.
  """
  style_paths = cfg.style_paths
  if not style_paths:
    raise errors.ConfigError('no style image given; name one or more with -sp a.jpg,b.jpg')
  if cfg.style_masks and len(cfg.style_masks) != len(style_paths):
    raise errors.ConfigError(
      f'{len(cfg.style_masks)} style masks for {len(style_paths)} style images; '
      'give one mask per style, in the same order'
    )
  # --output naming a directory (existing, or ending in a separator) gets an
  # automatically named file inside it.
  directory = DEFAULT_OUTPUT_DIR
  if cfg.output and (Path(cfg.output).is_dir() or cfg.output.endswith(('/', os.sep))):
    directory = cfg.output
  if cfg.output and directory == DEFAULT_OUTPUT_DIR:
    output = Path(cfg.output)
  elif cfg.resume:
    output = resume_output_path(cfg.content_path, style_paths, directory)
  else:
    output = default_output_path(cfg.content_path, style_paths, directory)
  check_writable(output, cfg.bit_depth)
  ckpt = checkpoint_lib.path_for(output)
  if not cfg.resume and ckpt.exists():
    payload = checkpoint_lib.read(ckpt)
    if checkpoint_lib.unfinished(payload):
      scales = payload.get('scales', 1)
      where = f' at scale {payload.get("scale", 0) + 1} of {scales}' if scales > 1 else ''
      raise errors.NstError(
        f'{ckpt} holds an unfinished run ({payload["iteration"]} of {payload["total"]} '
        f'iterations{where}); continue it with --resume, or delete it to start over'
      )
  # Sizes from the headers, so a huge -w is refused before anything is decoded.
  content_size = image_lib.image_size(cfg.content_path, max_pixels=cfg.max_image_pixels)
  style_width = max(1, round(cfg.style_scale * cfg.width))
  heights = [image_lib.resized_height(*content_size, cfg.width)]
  for path in style_paths:
    size = image_lib.image_size(path, max_pixels=cfg.max_image_pixels)
    heights.append(image_lib.resized_height(*size, style_width) * style_width // cfg.width)
  check_memory(max(heights), cfg.width, config=cfg)
  content = image_lib.load_image(cfg.content_path, width=cfg.width, max_pixels=cfg.max_image_pixels)
  styles = [
    image_lib.load_image(path, width=style_width, max_pixels=cfg.max_image_pixels)
    for path in style_paths
  ]
  height = content.shape[0]

  def mask(path):
    return image_lib.load_mask(path, height, cfg.width, max_pixels=cfg.max_image_pixels)

  content_mask = mask(cfg.content_mask) if cfg.content_mask else None
  style_masks = np.stack([mask(p) for p in cfg.style_masks]) if cfg.style_masks else None
  icc = image_lib.icc_profile(cfg.content_path, max_pixels=cfg.max_image_pixels)
  init_image = None
  if cfg.init not in config_lib.INITS:
    init_image = image_lib.load_image(cfg.init, max_pixels=cfg.max_image_pixels)
  # Bound before the weights load and the compile, so a busy port fails fast.
  with _serving(cfg.serve, title=output.name) as preview:
    w = weights_lib.get_weights(cfg.weights)
    logging.info(
      'content %s (%dx%d), style %s, weights %s (%s convention)',
      cfg.content_path,
      content.shape[1],
      content.shape[0],
      ', '.join(style_paths),
      w.info.source,
      w.info.convention,
    )

    intermediates = []
    run_record = {} if cfg.record else None
    t_run = time.perf_counter()

    def save_intermediate(iteration: int, rgb: np.ndarray) -> None:
      path = output.with_name(f'{output.stem}_{iteration:05d}{output.suffix}')
      image_lib.save_image(path, rgb[0], bit_depth=cfg.bit_depth, quality=cfg.quality, icc=icc)
      if cfg.record:
        intermediates.append(rgb[0])
      logging.info('saved %s', path)

    with _stop_on_signals() as stop:
      result = stylize(
        content,
        styles,
        config=cfg,
        weights=w,
        callback=save_intermediate,
        checkpoint=ckpt,
        should_stop=stop,
        content_mask=content_mask,
        style_masks=style_masks,
        init_image=init_image,
        record=run_record,
        monitor=preview,
      )
    image_lib.save_image(output, result, bit_depth=cfg.bit_depth, quality=cfg.quality, icc=icc)
    logging.info('saved %s', output)
    if preview is not None:
      preview.finish(result, output)
    if run_record is not None:
      written = record_lib.write(
        output,
        config=cfg,
        weights_info=w.info,
        record=run_record,
        total_s=time.perf_counter() - t_run,
        content=content,
        styles=styles,
        result=result,
        intermediates=intermediates,
      )
      logging.info('saved the run record %s', ', '.join(str(p) for p in written.values()))
    if not cfg.keep_checkpoint:
      ckpt.unlink(missing_ok=True)  # finished: the result is saved, free the space
    return output
