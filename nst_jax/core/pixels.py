"""Pixel conventions: RGB in [0, 1] <-> the network's input space, and resizing.

`preprocess` maps RGB in [0, 1] to the input space of a given
`InputConvention` (the weights' own, read from their metadata), and
`deprocess` is its exact inverse. Pure JAX: no files, no Pillow.
"""

import dataclasses

import jax
import jax.numpy as jnp

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


def _stats(convention: InputConvention) -> tuple[jax.Array, jax.Array]:
  # Rank 4 so that they meet [N, H, W, 3] without rank promotion.
  mean = jnp.asarray(convention.mean, jnp.float32).reshape(1, 1, 1, 3)
  std = jnp.asarray(convention.std, jnp.float32).reshape(1, 1, 1, 3)
  return mean, std


def preprocess(rgb: jax.typing.ArrayLike, convention: InputConvention) -> jax.Array:
  """RGB in [0, 1] -> the network's input space.

  Args:
    rgb: [N, H, W, 3] RGB, nominally in [0, 1] (values outside are allowed and
      map affinely).
    convention: how the weights expect their input.

  Returns:
    [N, H, W, 3] float32: `(channels(rgb) * scale - mean) / std`.
  """
  x = jnp.asarray(rgb, jnp.float32)
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f'expected [N, H, W, 3] RGB, got shape {x.shape}')
  if convention.bgr:
    x = x[..., ::-1]
  mean, std = _stats(convention)
  return (x * convention.scale - mean) / std


def deprocess(x: jax.typing.ArrayLike, convention: InputConvention) -> jax.Array:
  """The network's input space -> RGB; the exact inverse of `preprocess`.

  Args:
    x: [N, H, W, 3] in the convention's space.
    convention: the convention `x` is in.

  Returns:
    [N, H, W, 3] float32 RGB, not clipped (clip when saving).
  """
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
