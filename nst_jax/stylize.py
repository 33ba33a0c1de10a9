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

from collections.abc import Callable, Mapping
import contextlib
import functools
import math
import os
from pathlib import Path
import signal
import threading
import time
from typing import NamedTuple

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
from nst_jax import vgg
from nst_jax import weights as weights_lib

# Standard deviation of the random init in network space, from
# jcjohnson/neural-style (`torch.randn(...):mul(0.001)`).
RANDOM_INIT_STD = 0.001
DEFAULT_OUTPUT_DIR = 'output'


class Targets(NamedTuple):
  """What the loss compares against, and how much each term counts, per image.

  Attributes:
    content: content layer -> [N, h, w, c] features of the content images.
    style: style layer -> [N, C, C] Grams of the style images.
    content_weight: [N] float32, cw of each image.
    style_weight: [N] float32, sw of each image.
  """

  content: Mapping[str, jax.Array]
  style: Mapping[str, jax.Array]
  content_weight: jax.Array
  style_weight: jax.Array


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


def make_targets(
  params: Mapping[str, Mapping[str, jax.Array]],
  content: jax.Array,
  style: jax.Array,
  *,
  model: vgg.VGG,
  loss_config: config_lib.LossConfig,
  content_weight: jax.typing.ArrayLike,
  style_weight: jax.typing.ArrayLike,
) -> Targets:
  """Content features and style Grams, computed once before optimising.

  Args:
    params: VGG parameters.
    content: [N, H, W, 3] content images in network space.
    style: [N, Hs, Ws, 3] style images in network space (any size), or
      [1, Hs, Ws, 3] for one style shared by the whole batch.
    model: the VGG.
    loss_config: which layers.
    content_weight: scalar or [N].
    style_weight: scalar or [N].

  Returns:
    Targets with leading [N] axes.
  """
  n = content.shape[0]
  if style.shape[0] not in (1, n):
    raise ValueError(f'{style.shape[0]} style images for {n} content images; give 1 or {n}')
  content_feats = _features(params, content, model=model, layers=loss_config.content_layers)
  style_feats = _features(params, style, model=model, layers=loss_config.style_layers)
  grams = {}
  for name in loss_config.style_layers:
    gram = jax.vmap(losses.gram_matrix)(style_feats[name])  # [1 or N, C, C]
    grams[name] = jnp.broadcast_to(gram, (n, *gram.shape[1:]))
  return Targets(
    content={k: v.astype(jnp.float32) for k, v in content_feats.items()},
    style=grams,
    content_weight=jnp.broadcast_to(jnp.asarray(content_weight, jnp.float32), (n,)),
    style_weight=jnp.broadcast_to(jnp.asarray(style_weight, jnp.float32), (n,)),
  )


def objective(
  image: jax.Array,
  params: Mapping[str, Mapping[str, jax.Array]],
  targets: Targets,
  *,
  model: vgg.VGG,
  loss_config: config_lib.LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of one image: cw * L_c + sw * L_s (see `nst_jax.losses`).

  Args:
    image: [H, W, 3] in network space.
    params: VGG parameters.
    targets: one image's targets (no leading batch axis).
    model: the VGG.
    loss_config: which layers, and the style layer weights.

  Returns:
    (total, {'total', 'content', 'style'}) scalars; content and style are the
    unweighted L_c and L_s.
  """
  feats = _features(params, image[None], model=model, layers=loss_config.feature_layers)
  feats = {k: v[0] for k, v in feats.items()}
  l_c = losses.content_loss(feats, targets.content, layers=loss_config.content_layers)
  l_s = losses.style_loss(feats, targets.style, layer_weights=loss_config.layer_weights)
  total = targets.content_weight * l_c + targets.style_weight * l_s
  return total, {'total': total, 'content': l_c, 'style': l_s}


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


def initial_image(content: jax.Array, *, init: str, seed: int) -> jax.Array:
  """The starting image in network space.

  Args:
    content: [N, H, W, 3] content images in network space.
    init: 'content' or 'random' (N(0, 0.001^2) in network space: the mean
      pixel plus faint noise, as in jcjohnson/neural-style).
    seed: random seed for 'random'.
  """
  if init == 'content':
    return content
  noise = jax.random.normal(jax.random.key(seed), content.shape, jnp.float32)
  return RANDOM_INIT_STD * noise


def _batched(rgb: jax.typing.ArrayLike) -> tuple[jax.Array, bool]:
  x = jnp.asarray(rgb, jnp.float32)
  if x.ndim == 3:
    return x[None], True
  if x.ndim == 4:
    return x, False
  raise ValueError(f'expected an RGB image [H, W, 3] or [N, H, W, 3], got {x.shape}')


# XLA's working memory for the step beyond the per-pixel terms below, from
# compiled.memory_analysis() on CPU (53 MB float32, 93 MB bfloat16), rounded up.
_FIXED_STEP_BYTES = 100_000_000
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
  holds full-resolution float32 gradients of conv1 (two for float32; three
  for bfloat16, where XLA keeps float32 copies beside the bfloat16 ones);
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
  gradients = (3 if bf16 else 2) * vgg.VGG_WIDTHS[0]
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


def _check_size(what: str, shape: tuple[int, ...], loss_config: config_lib.LossConfig) -> None:
  need = vgg.min_input_size(loss_config.feature_layers)
  _, h, w, _ = shape
  if min(h, w) < need:
    raise errors.ImageError(
      f'the {what} image is {w}x{h} px at this width, but the layers used need at least '
      f'{need} px on each side; use a larger width (-w)'
    )


def is_time(iteration: int, every: int, total: int) -> bool:
  """True every `every` iterations (1-based) and at the last one; never if every=0."""
  return every > 0 and (iteration % every == 0 or iteration == total)


def stylize(
  content: jax.typing.ArrayLike,
  style: jax.typing.ArrayLike,
  *,
  config: config_lib.StyleConfig | None = None,
  weights: 'weights_lib.Weights | str | os.PathLike | None' = None,
  callback: Callable[[int, np.ndarray], None] | None = None,
  checkpoint: str | os.PathLike | None = None,
  should_stop: Callable[[], int | None] | None = None,
) -> np.ndarray:
  """Transfers the style of `style` onto `content`.

  The images are used at the size given; `run` does the resizing for files.

  Args:
    content: RGB in [0, 1], [H, W, 3] or [N, H, W, 3].
    style: RGB in [0, 1], [Hs, Ws, 3] or [N, Hs, Ws, 3] (any size).
    config: iterations, weights, layers, optimiser (paths are ignored);
      None = StyleConfig() defaults.
    weights: loaded Weights, a path, or None for the default location.
    callback: called as callback(iteration, rgb) every `config.save_iter`
      iterations, and when stopped, with the current RGB images
      ([N, H, W, 3], clipped).
    checkpoint: a checkpoint file, written every `config.checkpoint_every`
      iterations, at the end and when stopped; with `config.resume` the run
      continues from it (see nst_jax.checkpoint).
    should_stop: polled after every iteration; a non-zero return (a signal
      number) saves the checkpoint and image, then raises Interrupted.

  Returns:
    RGB float32 in [0, 1] with the leading shape of `content`.
  """
  config = config or config_lib.StyleConfig()
  w = weights_lib.as_weights(weights)
  convention = w.info.input_convention
  content_b, squeeze = _batched(content)
  style_b, _ = _batched(style)
  for what, batch in (('content', content_b), ('style', style_b)):
    _check_size(what, batch.shape, config.loss)
  model = make_model(config)
  optimizer = make_optimizer(config)
  loss_config = config.loss
  content_net = image_lib.preprocess(content_b, convention)
  targets = jax.jit(make_targets, static_argnames=('model', 'loss_config'))(
    w.params,
    content_net,
    image_lib.preprocess(style_b, convention),
    model=model,
    loss_config=loss_config,
    content_weight=config.content_weight,
    style_weight=config.style_weight,
  )
  state = init_state(initial_image(content_net, init=config.init, seed=config.seed), optimizer)
  start = 0
  settings = None
  if checkpoint is not None:
    settings = checkpoint_lib.trajectory_settings(
      config,
      weights_hash=w.info.params_sha256,
      content=np.asarray(content_b),
      style=np.asarray(style_b),
    )
    if config.resume:
      restored, start = checkpoint_lib.restore(checkpoint, like=state, settings=settings)
      state = jax.tree.map(jnp.asarray, restored)
      logging.info('resumed from %s after iteration %d', checkpoint, start)
  step = jax.jit(
    functools.partial(update_step, model=model, optimizer=optimizer, loss_config=loss_config),
    donate_argnums=0,
  )
  t0 = time.perf_counter()
  compiled = step.lower(state, w.params, targets).compile()
  logging.info('compiled the step in %.1f s', time.perf_counter() - t0)

  def to_rgb(x):
    return np.clip(np.asarray(image_lib.deprocess(x, convention)), 0.0, 1.0)

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
  t_start = time.perf_counter()
  for it in range(start + 1, total + 1):
    state, step_losses = compiled(state, w.params, targets)
    if it == start + 1:
      # The first call pays one-off costs (7 s -> 17 s at 1024x768 on CPU); one
      # sync here keeps them out of the rate and the ETA.
      jax.block_until_ready(step_losses)
      t_first = time.perf_counter()
      logging.info('first iteration took %.1f s (with warm-up)', t_first - t_start)
    if is_time(it, config.print_iter, total) or it == total:
      host = jax.device_get(step_losses)
      if not all(np.all(np.isfinite(v)) for v in host.values()):
        raise non_finite(it)
      done = it - start - 1
      rate = done / (time.perf_counter() - t_first) if done else 1.0 / (t_first - t_start)
      logging.info(
        'iteration %d/%d  loss %.5g  content %.5g  style %.5g  %.2f it/s  ETA %.0f s',
        it,
        total,
        float(host['total'].sum()),
        float(host['content'].sum()),
        float(host['style'].sum()),
        rate,
        (total - it) / rate,
      )
    signum = should_stop() if should_stop is not None else None
    if checkpoint is not None and (signum or is_time(it, config.checkpoint_every, total)):
      host_state = jax.device_get(state)
      if not np.all(np.isfinite(host_state.image)):
        raise non_finite(it)  # never replace a good checkpoint with a broken one
      checkpoint_lib.save(
        checkpoint, state=host_state, iteration=it, total=total, settings=settings
      )
      last_saved = it
    if signum:
      if callback is not None:
        callback(it, to_rgb(state.image))
      saved = f'saved {checkpoint} and the current image' if checkpoint else 'stopped'
      raise errors.Interrupted(
        f'interrupted by signal {signum} after iteration {it}; {saved}; continue with --resume',
        signum,
      )
    if callback is not None and is_time(it, config.save_iter, total) and it < total:
      callback(it, to_rgb(state.image))
  result = to_rgb(state.image)
  return result[0] if squeeze else result


def _default_names(content_path: str, style_path: str, directory: str):
  stem = f'{Path(content_path).stem}_{Path(style_path).stem}'
  yield Path(directory) / f'{stem}.png'
  n = 2
  while True:
    yield Path(directory) / f'{stem}_{n}.png'
    n += 1


def default_output_path(
  content_path: str, style_path: str, directory: str = DEFAULT_OUTPUT_DIR
) -> Path:
  """output/<content>_<style>.png, with _2, _3 ... added so nothing is replaced.

  A name whose checkpoint exists counts as taken, so a new run never
  overwrites an interrupted one.
  """
  for path in _default_names(content_path, style_path, directory):
    if not path.exists() and not checkpoint_lib.path_for(path).exists():
      return path
  raise AssertionError('unreachable')


def resume_output_path(
  content_path: str, style_path: str, directory: str = DEFAULT_OUTPUT_DIR
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


def _check_writable(path: Path) -> None:
  """Fails early if `path` cannot be written; creates nothing."""
  if path.is_dir():
    raise errors.NstError(f'output {path} is a directory; name a file such as out.png')
  image_lib.image_format(path)
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


def run(cfg: config_lib.StyleConfig) -> Path:
  """Reads the images named in `cfg`, stylizes, and writes the result.

  The output is checked for writability and the memory need estimated before
  any computation; intermediate images (every `cfg.save_iter`) go beside it
  as <name>_<iteration>.png and the checkpoint as <name>.ckpt. SIGINT and
  SIGTERM save the checkpoint and the current image, then raise Interrupted.
  Every file is written atomically.

  Returns:
    The path written.
  """
  if cfg.output:
    output = Path(cfg.output)
  elif cfg.resume:
    output = resume_output_path(cfg.content_path, cfg.style_path)
  else:
    output = default_output_path(cfg.content_path, cfg.style_path)
  _check_writable(output)
  ckpt = checkpoint_lib.path_for(output)
  if not cfg.resume and ckpt.exists():
    payload = checkpoint_lib.read(ckpt)
    if payload['iteration'] < payload['total']:
      raise errors.NstError(
        f'{ckpt} holds an unfinished run ({payload["iteration"]} of {payload["total"]} '
        'iterations); continue it with --resume, or delete it to start over'
      )
  # Sizes from the headers, so a huge -w is refused before anything is decoded.
  heights = [
    image_lib.resized_height(*image_lib.image_size(p, max_pixels=cfg.max_image_pixels), cfg.width)
    for p in (cfg.content_path, cfg.style_path)
  ]
  check_memory(max(heights), cfg.width, config=cfg)
  content = image_lib.load_image(cfg.content_path, width=cfg.width, max_pixels=cfg.max_image_pixels)
  style = image_lib.load_image(cfg.style_path, width=cfg.width, max_pixels=cfg.max_image_pixels)
  w = weights_lib.get_weights(cfg.weights)
  logging.info(
    'content %s (%dx%d), style %s, weights %s (%s convention)',
    cfg.content_path,
    content.shape[1],
    content.shape[0],
    cfg.style_path,
    w.info.source,
    w.info.convention,
  )

  def save_intermediate(iteration: int, rgb: np.ndarray) -> None:
    path = output.with_name(f'{output.stem}_{iteration:05d}{output.suffix}')
    image_lib.save_image(path, rgb[0])
    logging.info('saved %s', path)

  with _stop_on_signals() as stop:
    result = stylize(
      content,
      style,
      config=cfg,
      weights=w,
      callback=save_intermediate,
      checkpoint=ckpt,
      should_stop=stop,
    )
  image_lib.save_image(output, result)
  logging.info('saved %s', output)
  if not cfg.keep_checkpoint:
    ckpt.unlink(missing_ok=True)  # finished: the result is saved, free the space
  return output
