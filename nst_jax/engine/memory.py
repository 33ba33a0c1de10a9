"""Memory: what a run will need, estimated before compiling, and what a device has.

The estimate counts the step's buffers from the network's shape (no compilation), so a run too
large for the device is refused in a fraction of a second with a message that says what to change,
instead of failing after minutes of compiling. It is checked against XLA's own memory analysis of
the compiled step in the tests and against measured peaks in bench/bench_memory.py and
bench/bench_sharding.py.
"""

import functools
import math
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp

from nst_jax import errors
from nst_jax.core import optim
from nst_jax.core import tiles
from nst_jax.core import vgg
from nst_jax.engine import sharding
from nst_jax.io import weight_checks

# XLA's working memory for the step beyond the per-pixel terms below. With the sequential CPU
# scheduler nst_jax selects (nst_jax/xla_flags.py), compiled.memory_analysis() leaves almost
# nothing beyond them: at 256x192 to 1024x768 the device part is 1.05-1.34x XLA's figure.
_FIXED_STEP_BYTES = 10_000_000
# On CPU the process also holds the compiler's and runtime's working set and
# host copies of the weights: 490-615 MB above XLA's figure, measured at 256,
# 512 and 1024 px (bench/bench_memory.py). On GPU/TPU that is host memory.
_CPU_RUNTIME_BYTES = 600_000_000
# A spatially split step (bench/bench_sharding.py, XLA's buffer assignment for 2, 4 and 8
# devices at 1024 to 4096 px): each device holds about 1.4x its share of the per-pixel buffers
# (halo copies and the partitioner's temporaries), plus about 30 bytes per pixel of the whole
# image that are not split (image-sized temporaries of the loss and the optimiser).
_SPATIAL_SHARE_FACTOR = 1.4
_SPATIAL_WHOLE_BYTES_PER_PIXEL = 30
# Bytes of one kept activation in each compute dtype (model.dtype). Only the activations shrink
# with bfloat16: the conv1 gradients and the first convolution's output stay float32 (see
# per_pixel_bytes), so at the default layers bfloat16 keeps as many bytes per pixel as float32
# (1536 each, as XLA's CPU analysis has it: tests/memory_test.py) and its weights need half as
# much again; the refusal suggests it only where it fits.
BYTES_PER_ELEMENT = {'float32': 4, 'bfloat16': 2}
# Narrower than this a style transfer is not worth suggesting.
_SMALLEST_SUGGESTED_WIDTH = 64
# Tile edges the plan tries, largest first (--tiles auto).
TILE_EDGES = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64, 32)
# The shortest L-BFGS history the plan takes when tiles alone do not fit:
# the image-sized history (2m + 4 float32 images) is then most of the memory.
MIN_PLANNED_HISTORY = 5
# A tiled step (nst_jax.core.tiles) keeps each stage's input for the whole image and, in the
# backward pass, the cotangent of one stage's input; per pixel beyond them, the content targets
# padded, the image's gradient and the masks' share. The image-sized optimiser state costs more
# than its own size at the peak (the step's new state is formed beside the old one, and the run's
# copies of it). Fitted to peak RSS of 2-iteration runs (2-core Intel Xeon, tiles of 256, default
# layers; bench/bench_tiles.py measures it): 6.18 GB at 2048x1536 with history 30 and 7.34 GB at
# 3840x2880 with history 5 give 1.78x the state and 273 bytes per pixel beside it (1.34 copies of
# the stage inputs and the 96 bytes); that fit gives 2.32 GB at 1024x768, history 30, where 2.33
# GB was measured. Rounded up: the estimate is 1-4% above those three peaks.
_TILED_STAGE_COPIES = 1.5
_TILED_STATE_FACTOR = 1.8
_TILED_WHOLE_BYTES_PER_PIXEL = 96
# Untiled on CPU, the state counts as often at the peak, and 290 bytes per pixel more: peak RSS of
# 2-iteration runs (bench/bench_memory.py, 2-core AMD EPYC, 2026-12-07) 1455 MB at 512x384 and
# 3348 MB at 1024x768 (the estimate was 0.94x and 0.82x; now 1.06x and 1.03x).
_UNTILED_CPU_BYTES_PER_PIXEL = 290


def per_pixel_bytes(
  *,
  feature_layers,
  dtype: str = 'float32',
  optimizer: str = 'lbfgs',
  lbfgs_memory: int = optim.DEFAULT_LBFGS_MEMORY,
) -> float:
  """Bytes per input pixel of one step (the part that scales with the image).

  The backward pass keeps one activation per convolution and every pooled
  map up to the deepest layer used (each at its stage's resolution, 1/4 of
  the pixels per pooling) in the compute dtype, and at its widest holds
  full-resolution float32 gradients of conv1 (one for float32, as XLA's
  sequential CPU schedule keeps them; three for bfloat16, where XLA keeps
  float32 copies beside the bfloat16 ones), and the first convolution's
  output is float32 in any case. The optimiser holds image-sized
  float32 buffers: L-BFGS 2 * history + 4, Adam 4.
  """
  kept, scale = 0.0, 1.0  # channels kept per input pixel; fraction of pixels
  for name in vgg.layers_through(feature_layers):
    channels = vgg.VGG_WIDTHS[vgg.stage_of(name) - 1]
    if name.startswith('pool'):
      scale /= 4
      kept += channels * scale
    elif name.startswith('conv'):
      kept += channels * scale
  bf16 = dtype == 'bfloat16'
  gradients = (3 if bf16 else 1) * vgg.VGG_WIDTHS[0]
  # The first convolution runs in float32 whatever the dtype (nst_jax.core.vgg):
  # with bfloat16 its full-resolution output is kept at 4 bytes, not 2.
  first_conv = 2 * vgg.VGG_WIDTHS[0] if bf16 else 0
  image_buffers = optimizer_image_buffers(optimizer, lbfgs_memory)
  return BYTES_PER_ELEMENT[dtype] * kept + 4 * gradients + first_conv + image_buffers * 3 * 4


def optimizer_image_buffers(optimizer: str, lbfgs_memory: int) -> int:
  """Image-sized float32 buffers of the optimiser state: L-BFGS 2 * history + 4, Adam 4."""
  return 2 * lbfgs_memory + 4 if optimizer == 'lbfgs' else 4


@functools.lru_cache(maxsize=16)
def prepared_kernel_bytes(feature_layers=None) -> int:
  """Bytes `nst_jax.prepare_params(params, feature_layers)` adds on CPU to VGG-19's weights.

  Each kernel up to the deepest layer once more, laid out for the input
  gradient, and for the convolutions with at least `winograd.MIN_CHANNELS`
  channels in and out both Winograd transforms, 16/9 of the kernel each
  (357 MB for all of VGG-19, 228 MB up to relu5_1). Read off the shapes
  `vgg.with_backward_kernels` produces, without computing anything.
  """
  params = {}
  for key, shape in weight_checks.expected_shapes().items():
    layer, leaf = key.split('/')
    params.setdefault(layer, {})[leaf] = jax.ShapeDtypeStruct(shape, jnp.float32)
  prepared = jax.eval_shape(lambda p: vgg.with_backward_kernels(p, feature_layers), params)
  return 4 * (
    sum(leaf.size for leaf in jax.tree.leaves(prepared))
    - sum(leaf.size for leaf in jax.tree.leaves(params))
  )


def estimate_memory(
  height: int,
  width: int,
  *,
  config,
  batch: int = 1,
  platform: str = 'cpu',
  spatial_devices: int = 1,
  tile: int | None = None,
) -> int:
  """Peak memory of one step per device in bytes, estimated before compiling anything.

  Args:
    height: image height in pixels.
    width: image width in pixels.
    config: a StyleConfig (its layers, dtype, optimiser and history).
    batch: images per device.
    platform: 'cpu' counts the whole process; otherwise device memory only.
    spatial_devices: devices each image's height is split over (--shard
      spatial): each holds its share of the per-pixel buffers (times the
      measured overhead) and the parts that are not split.
    tile: the tile edge of a tiled objective (nst_jax.core.tiles), or None:
      the activations are one window's, the optimiser's state and a few
      buffers the whole image's.

  Returns:
    Bytes.
  """
  per_pixel = per_pixel_bytes(
    feature_layers=config.loss.feature_layers,
    dtype=config.model.dtype,
    optimizer=config.optim.name,
    lbfgs_memory=config.optim.lbfgs_memory,
  )
  weights = 4 * sum(math.prod(s) for s in weight_checks.expected_shapes().values())
  if config.model.dtype == 'bfloat16':
    weights += weights // 2  # the bfloat16 copies the convolutions read
  if platform == 'cpu':  # where the engine prepares the weights
    weights += prepared_kernel_bytes(config.loss.feature_layers) + _CPU_RUNTIME_BYTES
  fixed = _FIXED_STEP_BYTES + weights
  pixels = batch * height * width
  if tile is not None:
    image_bytes = optimizer_image_buffers(config.optim.name, config.optim.lbfgs_memory) * 3 * 4
    # Every activation counted at the size of a window (the first stage's halo).
    window = (tile + 2 * tiles.stages(config.loss.feature_layers)[0][1]) ** 2
    whole = _TILED_STAGE_COPIES * tiles.stage_input_bytes(
      config.loss.feature_layers, BYTES_PER_ELEMENT[config.model.dtype]
    )
    return int(
      fixed
      + batch * window * (per_pixel - image_bytes)
      + pixels * (_TILED_STATE_FACTOR * image_bytes + whole + _TILED_WHOLE_BYTES_PER_PIXEL)
    )
  if spatial_devices > 1:
    share = _SPATIAL_SHARE_FACTOR * per_pixel / spatial_devices + _SPATIAL_WHOLE_BYTES_PER_PIXEL
    return int(fixed + pixels * share)
  if platform == 'cpu':
    state = optimizer_image_buffers(config.optim.name, config.optim.lbfgs_memory) * 3 * 4
    per_pixel += (_TILED_STATE_FACTOR - 1) * state + _UNTILED_CPU_BYTES_PER_PIXEL
  return int(fixed + pixels * per_pixel)


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


class Plan(NamedTuple):
  """What a run will hold in memory: its tiles, the estimate, and what it may use.

  Attributes:
    tile: the tile edge (nst_jax.core.tiles), or None: the whole image at once.
    need: estimated bytes per device with `tile`.
    have: bytes the run may use (run.memory_limit, else what is free), or
      None if unknown.
    untiled: the estimate without tiles.
    history: a shorter L-BFGS history the plan took to fit, or None.
  """

  tile: int | None
  need: int
  have: int | None
  untiled: int
  history: int | None = None

  def line(self, width: int, height: int) -> str:
    """The plan in one line, for the log."""
    need, untiled, have = errors.gigabytes(self.need, self.untiled, self.have)
    if self.tile is None:
      return f'A {width}x{height} run needs about {need} of memory ({have} available).'
    why = (
      f'the whole image at once would need {untiled} of the {have} it may use'
      if self.have is not None and self.untiled > self.have
      else 'as asked'
    )
    history = '' if self.history is None else f' and an L-BFGS history of {self.history}'
    return (
      f'A {width}x{height} run in tiles of {self.tile} px{history} needs about '
      f'{need} of memory ({why}; the same result, more time per iteration).'
    )


def tileable(config) -> bool:
  """Whether the config's loss can be tiled (nst_jax.core.tiles)."""
  loss = config.loss
  return loss.style_loss in tiles.TILED_STYLE_KINDS and not loss.normalize_gradients


def _tile_edges(height: int, width: int, config) -> list[int]:
  return [e for e in TILE_EDGES if e < max(height, width)]


def _least(height: int, width: int, config, *, spatial_devices: int = 1, **setting) -> int:
  """The smallest estimate among the plans the config allows (every tile for 'auto')."""
  needs = [
    estimate_memory(height, width, config=config, spatial_devices=spatial_devices, **setting)
  ]
  tiles_setting = config.loss.tiles
  if isinstance(tiles_setting, int):
    needs = [estimate_memory(height, width, config=config, tile=tiles_setting, **setting)]
  elif tiles_setting == 'auto' and tileable(config) and spatial_devices == 1:
    short = _with(config, lbfgs_memory=min(config.optim.lbfgs_memory, MIN_PLANNED_HISTORY))
    needs += [estimate_memory(height, width, config=short, tile=e, **setting) for e in (
      _tile_edges(height, width, config)[-1:])]  # fmt: skip
  return min(needs)


def _auto(height: int, width: int, config, have: int, **setting) -> tuple[int | None, int | None]:
  """(tile, shorter history or None): the largest tile that fits, the history shortened if need be.

  A tile's window carries the halo, so small tiles cost time (at 3840x2160,
  tiles of 96 px compute 7x the pixels, of 1024 px 2x); a shorter history
  costs some convergence. So the largest tile with at least half the
  history is taken first, then down to MIN_PLANNED_HISTORY.
  """
  o = config.optim
  if o.name != 'lbfgs':
    floors = (o.lbfgs_memory,)
  else:
    floors = (max(MIN_PLANNED_HISTORY, o.lbfgs_memory // 2), MIN_PLANNED_HISTORY)
  for floor in floors:
    for edge in _tile_edges(height, width, config):
      for m in range(o.lbfgs_memory, min(floor, o.lbfgs_memory) - 1, -1):
        cfg = config if m == o.lbfgs_memory else _with(config, lbfgs_memory=m)
        if estimate_memory(height, width, config=cfg, tile=edge, **setting) <= have:
          return edge, (None if m == o.lbfgs_memory else m)
  return None, None


def check_memory(
  height: int,
  width: int,
  *,
  config,
  batch: int = 1,
  spatial_devices: int = 1,
  can_split: bool = True,
  output_height: int | None = None,
) -> Plan:
  """A run's memory plan: untiled if it fits, else (loss.tiles 'auto') the largest tile that does.

  Raises ConfigError (a ValueError, as other refused settings), naming the
  estimate and only the changes that would fit, if no plan fits.
  `can_split`: the run could split each image over devices (run.shard
  spatial); batches and videos cannot, so it is not suggested to them.
  `output_height`: the result's, which messages name (default `height`,
  which is the tallest image the step holds: a style may be taller).
  """
  device = jax.local_devices()[0]
  setting = dict(batch=batch, platform=device.platform)
  limit = config.run.memory_limit
  have = int(limit * 1e9) if limit is not None else available_memory(device)
  untiled = estimate_memory(
    height, width, config=config, spatial_devices=spatial_devices, **setting
  )
  tile = config.loss.tiles if isinstance(config.loss.tiles, int) else None
  history = None
  sharding.check_tiles(tile, spatial_devices)
  if (
    tile is None
    and config.loss.tiles == 'auto'
    and have is not None
    # Every process must compile the same step: free memory differs between
    # hosts, run.memory_limit does not.
    and (limit is not None or jax.process_count() == 1)
    and untiled > have
    and tileable(config)
    and spatial_devices == 1
  ):
    tile, history = _auto(height, width, config, have, **setting)
  chosen = config if history is None else _with(config, lbfgs_memory=history)
  need = (
    untiled if tile is None else estimate_memory(height, width, config=chosen, tile=tile, **setting)
  )
  if have is not None and need > have:
    where = f'{device.platform}'
    if spatial_devices > 1:
      where += f' (per device, split over {spatial_devices})'
    fits = fitting_changes(
      height,
      width,
      config=config,
      have=have,
      spatial_devices=spatial_devices,
      can_split=can_split,
      **setting,
    )
    if limit is not None:
      least = _least(height, width, config=config, spatial_devices=spatial_devices, **setting)
      fits.append(f'run.memory_limit {math.ceil(least / 1e8) / 10:.1f} or more')
    fix = (
      f'what would fit: {"; or ".join(fits)}'
      if fits
      else 'no smaller setting fits either: free memory or use a device with more'
    )
    need_gb, have_gb = errors.gigabytes(need, have)  # never '0.9 GB but only 0.9 GB'
    available = (
      f'run.memory_limit is {limit:g} GB'
      if limit is not None
      else (f'only {have_gb} is available on {where}')
    )
    planned = f' in tiles of {tile} px' if tile is not None else ''
    raise errors.ConfigError(
      f'a {width}x{output_height or height} run{planned} needs about {need_gb} but '
      f'{available}; {fix}'
    )
  return Plan(tile, need, have, untiled, history)


def fit(height: int, width: int, *, config, **kwargs):
  """`config` with its memory plan made (`check_memory`'s arguments) and logged in one line."""
  plan = check_memory(height, width, config=config, **kwargs)
  logging.info('%s', plan.line(width, kwargs.get('output_height') or height))
  return planned(config, [plan])


def planned(config, plans: list[Plan]):
  """`config` with loss.tiles 'auto' made the plans' choice: their smallest tile, else 'off'."""
  if config.loss.tiles != 'auto':
    return config
  chosen = [p.tile for p in plans if p.tile is not None]
  config = config.replace(loss=config.loss.replace(tiles=min(chosen) if chosen else 'off'))
  histories = [p.history for p in plans if p.history is not None]
  return _with(config, lbfgs_memory=min(histories)) if histories else config


def fitting_changes(
  height: int,
  width: int,
  *,
  config,
  have: int,
  batch: int = 1,
  platform: str = 'cpu',
  spatial_devices: int = 1,
  can_split: bool = True,
) -> list[str]:
  """The single changes of setting under which the run's estimate fits in `have` bytes.

  Each is checked with the estimate itself, so the refusal never suggests
  something that would be refused again (bfloat16 at the default layers
  saves nothing: see BYTES_PER_ELEMENT); run.shard spatial only where the
  run can split its image (`can_split`: not a batch or a video).
  """

  def fits(cfg=config, h=height, w=width, split=spatial_devices) -> bool:
    return _least(h, w, cfg, batch=batch, platform=platform, spatial_devices=split) <= have

  changes = []
  # The widest that fits, by bisection (the estimate grows with the width).
  low, high = 0, width
  while high - low > 1:
    mid = (low + high) // 2
    low, high = (mid, high) if fits(h=max(1, round(height * mid / width)), w=mid) else (low, mid)
  if low >= _SMALLEST_SUGGESTED_WIDTH:
    changes.append(f'inputs.width {low} or less')
  o, m = config.optim, config.model
  if o.name == 'lbfgs':
    shorter = [k for k in range(o.lbfgs_memory - 1, 0, -1) if fits(_with(config, lbfgs_memory=k))]
    if shorter:
      changes.append(f'optim.lbfgs_memory {shorter[0]} or less')
    if fits(_with(config, name='adam')):
      changes.append('optim.name adam')
  if platform != 'cpu' and m.dtype == 'float32':
    if fits(config.replace(model=m.replace(dtype='bfloat16'))):
      changes.append('model.dtype bfloat16')
  if config.loss.tiles == 'off' and tileable(config) and spatial_devices == 1:
    for edge in _tile_edges(height, width, config):
      need = estimate_memory(
        height, width, config=config, batch=batch, platform=platform, tile=edge
      )
      if need <= have:
        changes.append(f'loss.tiles {edge} (or auto)')
        break
  if can_split and spatial_devices == 1 and batch == 1:
    split = max(k for k in range(1, jax.local_device_count() + 1) if height % k == 0)
    if split > 1 and fits(split=split):
      changes.append(f'run.shard spatial (over {split} devices)')
  return changes


def _with(config, **optim):
  return config.replace(optim=config.optim.replace(**optim))
