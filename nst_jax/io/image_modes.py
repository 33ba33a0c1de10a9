"""Pillow's pixel modes -> RGB float32 in [0, 1], each by its real range.

Every mode Pillow opens a file in has one rule here; anything else is
refused with one line naming the mode, never guessed:

  mode                      rule
  1                         0 -> 0.0, 1 -> 1.0
  L, P, RGB, RGBX           8 bits: / 255 (P through its palette)
  CMYK, YCbCr, LAB, HSV     Pillow's conversion to 8-bit RGB, / 255 (CMYK:
                            Adobe's inverted JPEG CMYK is undone on read;
                            LAB: CIE L*a*b* with signed a, b, as TIFF keeps it)
  LA, PA, RGBA, P + tRNS    straight alpha: composited over white
  La, RGBa                  premultiplied alpha: composited over white
  I;16, I;16L, I;16B, I;16N 16 bits: / 65535
  I                         32-bit integers (also signed 16-bit TIFFs): taken
                            as 16 bits, / 65535; refused if any value is
                            below 0 or above 65535, since no range is known
  F                         floats, taken as they are: refused unless every
                            value is finite and in [0, 1]
  16-bit RGB(A), LA PNG     read with pypng at full precision (Pillow reads
                            these as 8 bits), / 65535, alpha over white

A float or 32-bit image carries no white point, so one outside the range
nst-jax can place is refused rather than stretched: stretching to its
maximum makes an HDR image or a depth map look like a photograph, and
clipping makes it white, and either is a wrong result with exit status 0.
"""

import os
import zlib

import numpy as np
from PIL import Image

from nst_jax import errors

# Full scale of 8- and 16-bit samples.
_MAX8 = 255.0
_MAX16 = 65535.0
# 8-bit modes whose RGB conversion Pillow defines (palette, CMYK, YCbCr...).
EIGHT_BIT_MODES = ('1', 'L', 'P', 'RGB', 'RGBX', 'CMYK', 'YCbCr', 'LAB', 'HSV')
STRAIGHT_ALPHA_MODES = ('LA', 'PA', 'RGBA')
PREMULTIPLIED_ALPHA_MODES = ('La', 'RGBa')
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')
MODES = (
  *EIGHT_BIT_MODES,
  *STRAIGHT_ALPHA_MODES,
  *PREMULTIPLIED_ALPHA_MODES,
  *SIXTEEN_BIT_MODES,
  'I',
  'F',
)
# PNG modes that Pillow decodes at 8 bits even when the file has 16.
_PNG16_MODES = ('RGB', 'RGBA', 'LA')


def _grey(values: np.ndarray) -> np.ndarray:
  return np.repeat(values.astype(np.float32)[..., None], 3, axis=-1)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """Straight (unassociated) alpha in [0, 1] composited over white."""
  return rgb * alpha + (1.0 - alpha)


def to_float_rgb(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
  """A decoded Pillow image -> [H, W, 3] float32 RGB in [0, 1] (see the module's table).

  Args:
    im: the image, in any mode of `MODES`.
    path: its file, named in errors.

  Returns:
    [H, W, 3] float32 in [0, 1].

  Raises:
    ImageError: a mode not in `MODES`, a float image with a value outside
      [0, 1] (or not finite), or a 32-bit integer image with a value
      outside 0..65535.
  """
  name = errors.printable(path)
  mode = im.mode
  if mode not in MODES:
    raise errors.ImageError(
      f'image {name} has pixel mode {mode}, which nst-jax cannot read; '
      'save it as 8- or 16-bit RGB or greyscale'
    )
  if mode == 'F':
    values = np.asarray(im, np.float32)
    if not np.all(np.isfinite(values)):
      raise errors.ImageError(
        f'image {name} is a float image with NaN or infinite values; '
        'replace them and scale it to 0..1, or save it as 8- or 16-bit'
      )
    _check_range(values, 0.0, 1.0, f'image {name} is a float image', 'scale it to 0..1')
    return _grey(values)
  if mode == 'I':
    values = np.asarray(im)
    _check_range(
      values, 0, 65535, f'image {name} is a 32-bit integer image', 'scale it to 0..65535'
    )
    return _grey(values / _MAX16)
  if mode in SIXTEEN_BIT_MODES:
    return _grey(np.asarray(im).astype(np.float32) / _MAX16)
  if mode in PREMULTIPLIED_ALPHA_MODES:
    # The colour is already multiplied by alpha, so over white only the
    # uncovered part (1 - alpha) is added; no division, no rounding.
    values = np.asarray(im, np.float32) / _MAX8
    colour, alpha = values[..., :-1], values[..., -1:]
    # A colour above its alpha is malformed; clip it back into [0, 1].
    rgb = np.minimum(colour + (1.0 - alpha), 1.0)
    return np.broadcast_to(rgb, (*rgb.shape[:2], 3)).astype(np.float32)
  if mode in STRAIGHT_ALPHA_MODES or (mode == 'P' and 'transparency' in im.info):
    rgba = np.asarray(im.convert('RGBA'), np.float32) / _MAX8
    return _over_white(rgba[..., :3], rgba[..., 3:])
  return np.asarray(im.convert('RGB'), np.float32) / _MAX8


def _check_range(values: np.ndarray, low, high, what: str, fix: str) -> None:
  lo, hi = values.min(), values.max()
  if lo < low or hi > high:
    raise errors.ImageError(
      f'{what} with values from {lo:g} to {hi:g}, outside {low:g}..{high:g}; '
      f'{fix}, or save it as 8- or 16-bit'
    )


def is_png16(im: Image.Image) -> bool:
  """True for a 16-bit RGB, RGBA or grey-with-alpha PNG, which Pillow would read as 8 bits."""
  if im.format != 'PNG' or im.mode not in _PNG16_MODES or not im.tile:
    return False
  return ';16' in str(im.tile[0].args)  # Pillow's raw mode, e.g. RGB;16B


def read_png16(path: str | os.PathLike) -> np.ndarray:
  """A 16-bit PNG (see `is_png16`) at full precision: [H, W, 3] float32 in [0, 1].

  Alpha (an alpha channel, or a tRNS colour, which pypng turns into one) is
  composited over white; grey is repeated into R, G and B.

  Raises:
    ImageError: the pixel data is truncated or corrupt.
  """
  import png  # pypng: Pillow decodes 16-bit colour PNGs to 8 bits

  try:
    with open(path, 'rb') as f:  # pypng's own file=filename is never closed (trial 19)
      w, h, rows, info = png.Reader(file=f).asDirect()
      data = np.vstack([np.asarray(r, np.float32) for r in rows]) / _MAX16
  except (png.Error, zlib.error) as e:  # truncated or corrupt; Pillow only read the header
    raise errors.ImageError(
      f'cannot read image {errors.printable(path)}: {e}; pass a valid PNG, JPEG or other image'
    ) from None
  data = data.reshape(h, w, info['planes'])
  colour = data[..., : 1 if info['greyscale'] else 3]
  if info['alpha']:
    colour = _over_white(colour, data[..., -1:])
  return np.broadcast_to(colour, (h, w, 3)).astype(np.float32)


def has_transparency(im: Image.Image) -> bool:
  """Whether any pixel of `im` is less than opaque (an alpha channel or a transparent colour)."""
  alpha_mode = im.mode in STRAIGHT_ALPHA_MODES or im.mode in PREMULTIPLIED_ALPHA_MODES
  if not alpha_mode and 'transparency' not in im.info:
    return False
  return im.convert('RGBA').getchannel('A').getextrema()[0] < 255
