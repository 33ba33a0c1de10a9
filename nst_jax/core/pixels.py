"""Pixel conventions: RGB in [0, 1] <-> the network's input space, and resizing.

`preprocess` maps RGB in [0, 1] to the input space of a given
`InputConvention` (the weights' own, read from their metadata), and
`deprocess` is its exact inverse. Pure JAX: no files, no Pillow.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors


@dataclasses.dataclass(frozen=True)
class InputConvention:
  """How a set of weights expects its input pixels.

  network_input = (channels(rgb) * scale - mean) / std, where `channels`
  reverses RGB to BGR when `bgr` is set and `mean`, `std` are in the network's
  channel order and scale.
  """

  name: str
  bgr: bool
  scale: float
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


# The Oxford Caffe VGG models (and Keras' conversion of them): BGR, 0..255,
# minus the ImageNet mean pixel (B, G, R) from the VGG authors' model card,
# https://gist.github.com/ksimonyan/3785162f95cd2d5fee77 ("mean pixel").
CAFFE = InputConvention(
  name='caffe',
  bgr=True,
  scale=255.0,
  mean=(103.939, 116.779, 123.68),
  std=(1.0, 1.0, 1.0),
)
# torchvision's ImageNet models: RGB in [0, 1], normalised per channel with
# the statistics from torchvision.models' documentation.
TORCHVISION = InputConvention(
  name='torchvision',
  bgr=False,
  scale=1.0,
  mean=(0.485, 0.456, 0.406),
  std=(0.229, 0.224, 0.225),
)
CONVENTIONS = {c.name: c for c in (CAFFE, TORCHVISION)}


def get_convention(name: str) -> InputConvention:
  """Looks up a convention by name ('caffe' or 'torchvision')."""
  try:
    return CONVENTIONS[name]
  except KeyError:
    raise errors.ConfigError(
      f'unknown input convention {name!r}; use one of {sorted(CONVENTIONS)}'
    ) from None


def as_convention(value: InputConvention | str, name: str = 'convention') -> InputConvention:
  """An InputConvention, or the name of one ('caffe', 'torchvision', as the converter takes)."""
  if isinstance(value, InputConvention):
    return value
  if isinstance(value, str) and value in CONVENTIONS:
    return CONVENTIONS[value]
  # A Weights (or any array holder) would print its kernels: its type says enough.
  got = repr(value) if isinstance(value, str | int | float | type(None)) else type(value).__name__
  raise errors.ConfigError(
    f'{name} must be an InputConvention or one of {", ".join(map(repr, sorted(CONVENTIONS)))}, '
    f'got {got[:80]}; the weights carry theirs: weights.info.input_convention'
  )


def as_rgb(value: jax.typing.ArrayLike, name: str) -> jax.Array:
  """RGB images as the API takes them: float32 [H, W, 3] or [N, H, W, 3] in [0, 1].

  The rule for every RGB argument of the API (`stylize`, `extract_features`,
  `initial_image`): uint8 is divided by 255, so 0..255 becomes 0..1; floats
  must lie in [0, 1] and be finite (a float image in 0..255, or one that
  bicubic resizing took slightly outside, is refused rather than guessed
  at); other dtypes are refused. Under a jax trace the values cannot be
  read, and only dtype and shape are checked.

  Args:
    value: the caller's array (numpy, jax, nested lists).
    name: the argument's name, for the message.

  Raises:
    ConfigError: naming `name`, what is wrong and the fix.
  """
  dtype = getattr(value, 'dtype', None)
  if dtype is None:
    try:
      value = np.asarray(value)
    except ValueError:  # trial 25: numpy's "inhomogeneous shape", for images of two sizes
      sizes = sorted({str(np.shape(v)) for v in value})
      raise errors.ConfigError(
        f'{name} is a list of images of different shapes ({", ".join(sizes)}); a batch shares '
        'one size: call once per size, or resize them to one'
      ) from None
    dtype = value.dtype
  dtype = np.dtype(dtype)
  shape = np.shape(value)
  if len(shape) not in (3, 4) or shape[-1] != 3:
    raise errors.ConfigError(
      f'{name} must be RGB [H, W, 3] or [N, H, W, 3], got shape {tuple(shape)}'
      + layout_fix(shape, batched=False)
    )
  if dtype == np.uint8:
    return jnp.asarray(value, jnp.float32) / 255.0
  if not jnp.issubdtype(dtype, jnp.floating):  # bfloat16 and float16 too
    fix = '' if isinstance(value, jax.core.Tracer) else '; ' + int_fix(dtype, *_range(value))
    raise errors.ConfigError(
      f'{name} is {dtype}; give RGB as floats in [0, 1] (or uint8, divided by 255){fix}'
    )
  if isinstance(value, jax.core.Tracer):
    return jnp.asarray(value, jnp.float32)
  host = np.asarray(value).astype(np.float32, copy=False)
  low, high = (float(host.min()), float(host.max())) if host.size else (0.0, 0.0)
  if not (np.isfinite(low) and np.isfinite(high)):
    raise errors.ConfigError(f'{name} has non-finite values; give RGB as floats in [0, 1]')
  if low < 0.0 or high > 1.0:
    # A small overshoot (a resize, an unclipped deprocess) is clipped, not
    # divided: dividing 0..1.009 by 255 gave a black image (trial 13).
    fix = range_fix(low, high, float(np.mean(host > 1.0)))
    raise errors.ConfigError(
      f'{name} has values from {low:.4g} to {high:.4g}; RGB floats must lie in [0, 1]: {fix}'
    )
  return jnp.asarray(host, jnp.float32)


def range_fix(low: float, high: float, share_above: float | None = None) -> str:
  """The fix for RGB floats outside [0, 1], from the values' range.

  A float image's scale cannot be read from it, so where two readings fit
  the range both are named (network space among them: a result not
  deprocessed):
  - Within `OVERSHOOT` of [0, 1] (an optimiser's or a resize's overshoot):
    clip; within `RGB_SLACK`, clip or shift.
  - Far out on both sides: network space (deprocess).
  - Below 0 only: -1..1 data ((x + 1) / 2), network space, else clip.
  - Above 1 only: a few stray values (`share_above` <= `MAX_STRAY`) are
    clipped; up to `MAX_HOT` of them may be either; else the format's
    maximum by the largest value: 255, 1023, 4095 or 65535 (an overshoot of
    a quarter still reads as that format: a 0..255 image went to 299), and
    below `MIN_BYTE_SCALE` no format fits (a 0..2 image divided by 255 came
    out black, trial 16): divide by the maximum, or deprocess.

  Args:
    low: the smallest value.
    high: the largest value.
    share_above: the share of values above 1, where it is known.
  """
  far_high, far_low = high > 1.0 + RGB_SLACK, low < -RGB_SLACK
  if far_high and far_low:
    return 'it looks like network space: deprocess it first (nst_jax.deprocess) and clip to [0, 1]'
  if not far_high and not far_low:
    if -OVERSHOOT <= low and high <= 1.0 + OVERSHOOT:
      return 'clip it to [0, 1] (np.clip(x, 0, 1))'
    # Half an image below 0 is a centred image, not an overshoot: clipping
    # it saved it half black (trial 14).
    return (
      'clip it to [0, 1] if the values outside are an overshoot; if the image is shifted '
      '(centred at 0, say), map it back: (x - x.min()) / (x.max() - x.min()); deprocess it '
      '(nst_jax.deprocess) if it is network space'
    )
  network = ', or deprocess it (nst_jax.deprocess) if it is network space'
  if far_low:
    if low >= -1.0 - OVERSHOOT:  # -123 is no -1..1 image (trial 18)
      return f'if it is -1..1 data map it with (x + 1) / 2{network}; else clip it to [0, 1]'
    return 'it looks like network space: deprocess it first (nst_jax.deprocess)'
  if share_above is not None and share_above <= MAX_STRAY:
    return 'clip it to [0, 1] (np.clip(x, 0, 1)): the values above 1 are a few stray pixels'
  if high < MIN_BYTE_SCALE:
    fix = (
      f'no image format is 0..{high:.3g}: divide by its maximum (x / x.max()) if it is a '
      f'scaled image{network}'
    )
  else:
    scales = [s for s in FORMAT_MAXIMA if high <= 1.25 * s] or [FORMAT_MAXIMA[-1]]
    fix = 'divide by 255' + network if scales[0] == 255 else format_fix(scales)
  if share_above is not None and share_above <= MAX_HOT:
    fix += '; or clip it to [0, 1], if the values above 1 are stray'
  return fix


def format_fix(scales) -> str:
  """'divide by its format's maximum: 4095 (12-bit) or 65535 (16-bit)' for `scales`."""
  return "divide by its format's maximum: " + ' or '.join(FORMAT_NAMES[s] for s in scales)


# How far an unboxed optimiser's result or a Lanczos resize strays from [0, 1]
# (trial 16: 10 unboxed Adam or L-BFGS steps reached 0.08).
OVERSHOOT = 0.1
# The share of values above 1 that reads as stray pixels (a hot pixel, a
# resampling ring): clipped without a second reading.
MAX_STRAY = 0.001
# The share above which values above 1 cannot be stray pixels.
MAX_HOT = 0.05
# Integer formats' maxima (8, 10, 12, 16 bits), as a float image read from one holds them.
FORMAT_MAXIMA = (255, 1023, 4095, 65535)
FORMAT_NAMES = {
  255: '255 (8-bit)', 1023: '1023 (10-bit)', 4095: '4095 (12-bit)', 65535: '65535 (16-bit)'
}  # fmt: skip
# Below this maximum no 8-bit or deeper image fits: a dark 0..255 image has
# pixels this bright unless it is nearly black.
MIN_BYTE_SCALE = 25.0


def _range(value) -> tuple[float, float]:
  host = np.asarray(value)
  return (float(host.min()), float(host.max())) if host.size else (0.0, 0.0)


def int_fix(dtype, low: float, high: float) -> str:
  """The conversion of an integer RGB array to what the API takes (floats in [0, 1] or uint8)."""
  dtype = np.dtype(dtype)
  if dtype == np.uint16:  # 8-, 10- or 12-bit data is often kept in 16 bits (trial 17)
    return format_fix([s for s in FORMAT_MAXIMA if high <= s])
  if dtype == np.bool_:
    return 'convert it: x.astype(np.float32)'
  if 0 <= low and high <= 255:
    return 'if it is 0..255 data, x.astype(np.uint8)'
  return "convert it to floats in [0, 1]: x / its format's maximum"


def layout_fix(shape: tuple[int, ...], *, batched: bool) -> str:
  """'; <the fix>' for RGB given in a layout the shape gives away ('' when it does not).

  Channels first ([N, 3, H, W] from PyTorch), greyscale ([H, W], [N, H, W] or
  one channel), RGBA, or (where [N, H, W, 3] is due, `batched`) one image
  without its batch axis.

  Args:
    shape: the refused array's shape.
    batched: whether the function takes [N, H, W, 3] only (not [H, W, 3]).
  """
  rank, last = len(shape), (shape[-1] if shape else None)
  lead = '[None]' if batched and rank in (2, 3) else ''  # one image where a batch is due
  if rank in (3, 4) and last in (1, 4):
    fix = f'drop the alpha channel: x{lead}[..., :3]'
    return '; ' + (fix if last == 4 else f'repeat the grey channel: np.repeat(x{lead}, 3, -1)')
  if rank in (3, 4) and shape[-3] in (3, 4) and last != 3:  # PyTorch's [N, 3, H, W]
    axes = '0, 2, 3, 1' if rank == 4 else '1, 2, 0'
    return f'; if it is channels-first, move the channels last: x.transpose({axes}){lead}'
  if rank == 2 or (rank == 3 and last != 3):  # [H, W], or [N, H, W]: a batch of them
    lead = lead if rank == 2 else ''
    return f'; if it is greyscale, repeat it as RGB: np.repeat(x{lead}[..., None], 3, -1)'
  return '; add the batch axis: x[None]' if rank == 3 and batched else ''


def batched(rgb: jax.typing.ArrayLike) -> jax.Array:
  """[H, W, 3] -> [1, H, W, 3]; [N, H, W, 3] unchanged (float32)."""
  x = jnp.asarray(rgb, jnp.float32)
  if x.ndim == 3:
    return x[None]
  if x.ndim == 4:
    return x
  raise errors.ConfigError(f'expected an RGB image [H, W, 3] or [N, H, W, 3], got shape {x.shape}')


def _not_donated(value: Any, name: str) -> None:
  """A donated state's image in one line (trial 29: JAX's "Array has been deleted")."""
  if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and value.is_deleted():
    raise errors.ConfigError(
      f"{name} is a donated state's image (a step took its buffers); use the state the step "
      'returned, or a copy made before: jnp.copy(state.image)'
    )


def check_network_images(value: jax.typing.ArrayLike, name: str) -> None:
  """Raises ConfigError naming `name` and the fix unless `value` is [N, H, W, 3] floats.

  For the arguments in network space (`make_targets`, `init_state`): a
  single image needs its batch axis, and integer pixels are RGB that was
  never preprocessed.
  """
  _not_donated(value, name)
  shape = tuple(np.shape(value))
  if len(shape) != 4 or shape[-1] != 3:  # trial 25: channels first got no fix here
    fix = layout_fix(shape, batched=True)
    raise errors.ConfigError(f'{name} must be [N, H, W, 3] images, got shape {shape}{fix}')
  dtype = np.dtype(getattr(value, 'dtype', None) or np.asarray(value).dtype)
  # jnp's test: numpy does not count bfloat16 (an ml_dtypes type) as floating.
  if not jnp.issubdtype(dtype, jnp.floating):
    raise errors.ConfigError(
      f'{name} is {dtype}, but it is an image in network space: preprocess RGB first, '
      'nst_jax.preprocess(rgb, weights.info.input_convention)'
    )
  # numpy, not jnp: inside a trace jnp would stage even a constant's check.
  if not isinstance(value, jax.core.Tracer) and not np.isfinite(np.asarray(value)).all():
    raise errors.ConfigError(
      f'{name} has NaN or infinite values; give finite images in network space '
      '(nst_jax.preprocess of RGB in [0, 1])'
    )


# How far `preprocess` lets RGB stray from [0, 1]: bicubic resizing (the
# schedule's scales, an init image) overshoots by a few hundredths at sharp
# edges; 0.5 is far above that and far below a 0..255 image's range.
RGB_SLACK = 0.5


def _stats(convention: InputConvention) -> tuple[jax.Array, jax.Array]:
  # Rank 4 so that they meet [N, H, W, 3] without rank promotion.
  mean = jnp.asarray(convention.mean, jnp.float32).reshape(1, 1, 1, 3)
  std = jnp.asarray(convention.std, jnp.float32).reshape(1, 1, 1, 3)
  return mean, std


def preprocess(rgb: jax.typing.ArrayLike, convention: InputConvention | str) -> jax.Array:
  """RGB in [0, 1] -> the network's input space.

  Args:
    rgb: [N, H, W, 3] RGB in [0, 1]; uint8 is divided by 255 (`as_rgb`'s
      rule). Floats may stray from [0, 1] by up to `RGB_SLACK` (bicubic
      resizing overshoots) and map affinely; values further out, such as a
      0..255 float image, are refused where they can be read (not under a
      jax trace), since they would give activations 255 times too large.
    convention: how the weights expect their input (or its name, 'caffe' or
      'torchvision').

  Returns:
    [N, H, W, 3] float32: `(channels(rgb) * scale - mean) / std`.
  """
  convention = as_convention(convention)
  if not isinstance(rgb, (jax.Array, np.ndarray)):
    rgb = np.asarray(rgb)  # a nested list: jit would take it for a tree of scalars
  dtype = np.dtype(rgb.dtype)
  if dtype != np.uint8 and not jnp.issubdtype(dtype, jnp.floating):
    fix = '' if isinstance(rgb, jax.core.Tracer) else '; ' + int_fix(dtype, *_range(rgb))
    raise errors.ConfigError(f'rgb is {dtype}; give RGB as floats in [0, 1] (or uint8){fix}')
  shape = np.shape(rgb)
  if len(shape) != 4 or shape[-1] != 3:
    fix = layout_fix(shape, batched=True)
    raise errors.ConfigError(f'rgb must be [N, H, W, 3] RGB, got shape {tuple(shape)}{fix}')
  x, value_range = _to_network(rgb, convention)
  if dtype != np.uint8 and not isinstance(rgb, jax.core.Tracer) and np.size(rgb):
    low, high = np.asarray(value_range).tolist()
    if not (np.isfinite(low) and np.isfinite(high)):
      raise errors.ConfigError('rgb has non-finite values; give RGB as floats in [0, 1]')
    if not (-RGB_SLACK <= low and high <= 1.0 + RGB_SLACK):
      fix = range_fix(low, high)
      raise errors.ConfigError(
        f'rgb has values from {low:.4g} to {high:.4g}; preprocess takes RGB in [0, 1]: {fix}'
      )
  return x


# `preprocess` and `deprocess` as one compiled program per shape: run
# eagerly, each of their operations compiled a program of its own (about
# 50-100 ms each on a 2-core CPU), for every new image size.
@functools.partial(jax.jit, static_argnames=('convention',))
def _to_network(rgb: jax.Array, convention: InputConvention) -> tuple[jax.Array, jax.Array]:
  """(the network-space image, [min, max] of the float32 RGB: read only for the range check)."""
  x = jnp.asarray(rgb)
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  value_range = jnp.stack([jnp.min(x), jnp.max(x)]) if x.size else jnp.zeros(2)
  if convention.bgr:
    x = x[..., ::-1]
  mean, std = _stats(convention)
  return (x * convention.scale - mean) / std, value_range


def deprocess(x: jax.typing.ArrayLike, convention: InputConvention | str) -> jax.Array:
  """The network's input space -> RGB; the exact inverse of `preprocess`.

  Args:
    x: [N, H, W, 3] in the convention's space.
    convention: the convention `x` is in (or its name).

  Returns:
    [N, H, W, 3] float32 RGB, not clipped (clip when saving).

  Raises:
    ConfigError: `x` is not [N, H, W, 3] (one image [H, W, 3] too, as
      `preprocess` refuses it: it gained a batch axis silently before), or
      not floats (integers are RGB, never network space).
  """
  if not isinstance(x, (jax.Array, np.ndarray)):
    x = np.asarray(x, np.float32)
  _not_donated(x, 'x')
  if x.ndim != 4 or x.shape[-1] != 3:
    fix = layout_fix(x.shape, batched=True)
    raise errors.ConfigError(f'x must be [N, H, W, 3] in network space, got shape {x.shape}{fix}')
  if not jnp.issubdtype(x.dtype, jnp.floating):  # as init_state and make_targets refuse them
    raise errors.ConfigError(
      f'x is {x.dtype}, but deprocess takes images in network space (floats, as state.image): '
      'integer pixels are RGB already (divide uint8 by 255)'
    )
  return _to_rgb(x, as_convention(convention))


@functools.partial(jax.jit, static_argnames=('convention',))
def _to_rgb(x: jax.Array, convention: InputConvention) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  mean, std = _stats(convention)
  rgb = (x * std + mean) / convention.scale
  if convention.bgr:
    rgb = rgb[..., ::-1]
  return rgb


def resize(images: jax.typing.ArrayLike, height: int, width: int) -> jax.Array:
  """Resizes [N, H, W, C] (or [..., H, W]-last-two for masks, C=0) smoothly.

  Bicubic, with an antialiasing filter when shrinking (jax.image.resize),
  for the steps of a multi-scale run. Values are not clipped.
  """
  x = jnp.asarray(images, jnp.float32)
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), 'cubic', antialias=True)


def resized_height(width: int, height: int, new_width: int) -> int:
  """Height that keeps the aspect ratio of a width x height image at new_width."""
  return max(1, round(height * new_width / width))
