"""Image files: the only image file I/O.

Pixel conventions live in nst_jax.core.pixels and colour math in
nst_jax.core.color. Here `load_image` reads any Pillow-readable file into
RGB float32 [H, W, 3] in [0, 1] (optionally resized; each pixel mode by its
real range, `nst_jax.io.image_modes`), and `save_image` writes one atomically.
"""

from collections.abc import Callable
import contextlib
import io
import os
from pathlib import Path
import zlib

from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core import color
from nst_jax.core import mask_checks
from nst_jax.core import pixels
from nst_jax.io import atomic
from nst_jax.io import image_modes
from nst_jax.io import output_names


def resize_to_width(rgb: np.ndarray, width: int, height: int | None = None) -> np.ndarray:
  """Lanczos resize of RGB [H, W, 3] to `width` (and the aspect ratio's height).

  Done per channel in float, so no 8-bit rounding; the result is clipped to
  [0, 1]. `rgb` follows the API's rule for RGB (`nst_jax.core.pixels.as_rgb`:
  floats in [0, 1] or uint8, numpy or jax): a 0..255 float image was clipped
  to white and passed every later check (trial 16).

  Raises:
    ConfigError: `rgb` is not one RGB image in [0, 1], or the size is not
      positive whole pixels, naming the fix.
  """
  if np.ndim(rgb) == 4 and np.shape(rgb)[-1] == 3:
    raise errors.ConfigError(
      f'rgb must be one image [H, W, 3], got {np.shape(rgb)}; resize each image of the batch: '
      'rgb[0]'
    )
  if np.ndim(rgb) != 3 or np.shape(rgb)[-1] != 3:
    raise errors.ConfigError(
      f'rgb must be one RGB image [H, W, 3], got shape {np.shape(rgb)}'
      + pixels.layout_fix(np.shape(rgb), batched=False)
    )
  rgb = np.asarray(pixels.as_rgb(rgb, 'rgb'))
  for name, size in (('width', width), ('height', height)):
    if size is not None:
      check_size(size, name)
  h, w, _ = rgb.shape
  size = (width, height or pixels.resized_height(w, h, width))
  channels = [
    np.asarray(Image.fromarray(rgb[..., c]).resize(size, Image.Resampling.LANCZOS))
    for c in range(3)
  ]
  # Lanczos overshoots at hard edges; keep the documented [0, 1] range.
  return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def check_size(size, name: str) -> None:
  """Refuses a size in pixels that is not a whole number above 0, naming `name`."""
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise errors.ConfigError(f'{name} must be a whole number of pixels >= 1, got {size!r}')


def load_image(
  path: str | os.PathLike,
  width: int | None = None,
  *,
  max_pixels: int = config_lib.DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
  """Reads an image file as RGB float32 in [0, 1].

  EXIF orientation is applied, so a photo shows the way its camera meant.
  Every Pillow mode is mapped by its real range (`nst_jax.io.image_modes`):
  grayscale, palette, CMYK and 16-bit images become RGB at full precision;
  transparent areas are composited over white; float images are taken as
  they are and must lie in [0, 1]; 32-bit integer images are taken as 16
  bits and must lie in 0..65535. An animated image gives its first frame
  (with a warning).

  Args:
    path: any format Pillow reads.
    width: if given, resize (Lanczos, in float) to this width, keeping the
      aspect ratio.
    max_pixels: refuse images with more pixels than this (decompression bombs).

  Returns:
    [H, W, 3] float32 numpy array in [0, 1].

  Raises:
    ImageError: the file is missing, not an image, truncated, or too large;
      its pixel mode is unknown; or its floats or 32-bit integers lie
      outside the range above.
    ConfigError: `width` is not a whole number of pixels >= 1.
  """
  if width is not None:
    check_size(width, 'width')
  with _open(path, max_pixels) as im:
    if image_modes.is_png16(im):
      rgb = image_modes.read_png16(path)
    else:
      frames = getattr(im, 'n_frames', 1)
      if frames > 1:
        logging.warning('image %s has %d frames; using the first', path, frames)
      rgb = image_modes.to_float_rgb(ImageOps.exif_transpose(im), path)
  if width is not None and width != rgb.shape[1]:
    rgb = resize_to_width(rgb, width)
  return rgb


def load_mask(
  path: str | os.PathLike,
  height: int,
  width: int,
  *,
  max_pixels: int = config_lib.DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
  """Reads a guidance mask: its luminance in [0, 1], resized to height x width.

  White (1) is inside the region, black (0) outside, grey in between. The
  mask is drawn over the content image, so it must have the content's aspect
  ratio (within 2%); it is resized with a box filter (area average).

  Transparency is refused: over white (the photos' rule) a region painted
  on a transparent layer covered the whole image (trial 16), and whether
  transparent means outside is the painter's choice to make.

  Returns:
    [height, width] float32.

  Raises:
    ImageError: unreadable, transparent, or the aspect ratio does not match.
    ConfigError: `height` or `width` is not a whole number of pixels >= 1.
  """
  check_size(height, 'height')
  check_size(width, 'width')
  with _open(path, max_pixels) as im:
    im = ImageOps.exif_transpose(im)
    if image_modes.has_transparency(im):
      raise errors.ImageError(
        f'mask {errors.printable(path)} has transparent pixels, which could mean inside or '
        'outside; flatten it onto black (transparent = outside) or white and save it without alpha'
      )
    w, h = im.size
    if abs(w / h - width / height) > 0.02 * (width / height):
      raise errors.ImageError(
        f'mask {errors.printable(path)} is {w}x{h} but the content image is {width}x{height} '
        'at this width; draw the mask over the content image, at its aspect ratio'
      )
    gray = np.asarray(image_modes.to_float_rgb(im, path) @ color.RGB_TO_YIQ[0], np.float32)
  top = float(gray.max()) if gray.size else 0.0
  # A label image of 0s and 1s weighed its term 1/255 (trial 14).
  if 0.0 < top <= mask_checks.FAINT_MASK / 255 + 1e-6:
    raise errors.ImageError(
      f'mask {errors.printable(path)} is nearly black (its brightest pixel is {top * 255:.3g} of '
      '255): white marks the region; if it holds labels 0 and 1, save it with 0 and 255'
    )
  levels = gray * 255
  if np.abs(levels - np.round(levels)).max(initial=0) < 1e-3:  # an 8-bit grey image
    if found := mask_checks.label_levels(np.round(levels)):
      raise errors.ImageError(
        f'mask {errors.printable(path)} has {found}, as a label map has: white marks the '
        "region; save one label's region white on black (a weak mask: brighten it)"
      )
  resized = Image.fromarray(gray).resize((width, height), Image.Resampling.BOX)
  return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


@contextlib.contextmanager
def _no_pillow_pixel_limit():
  # _open applies its own, caller-set limit before decoding.
  saved = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = saved


def _one_line(e: Exception) -> str:
  # A decoder's message can span lines; ours is one line.
  return ' '.join(str(e).splitlines())


@contextlib.contextmanager
def _open(path: str | os.PathLike, max_pixels: int):
  """Opens an image lazily (header only) with one-line errors for bad files.

  Errors raised while the caller decodes inside the block (a truncated
  file) become ImageError too.
  """
  path = Path(path)
  if not path.is_file():
    raise errors.ImageError(
      f'image {errors.printable(path)} {errors.not_a_file(path)}; pass the path of an image file'
    )
  try:
    with _no_pillow_pixel_limit(), Image.open(path) as im:
      if im.width * im.height > max_pixels:
        raise errors.ImageError(
          f'image {errors.printable(path)} has {im.width}x{im.height} pixels, more than the '
          f'limit of {max_pixels}; if you trust the file, raise inputs.max_image_pixels'
        )
      yield im
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise errors.ImageError(
      f'cannot read image {errors.printable(path)}: {_one_line(e)}; '
      'pass a valid PNG, JPEG or other image'
    ) from None


def image_size(
  path: str | os.PathLike, *, max_pixels: int = config_lib.DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[int, int]:
  """(width, height) as displayed (EXIF rotation applied), from the header only.

  Same checks and errors as `load_image`, without decoding the pixels.
  """
  with _open(path, max_pixels) as im:
    w, h = im.size
    # EXIF orientations 5-8 rotate by 90 degrees, swapping width and height.
    return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
  """[H, W, 3] float RGB -> uint8, clipped to [0, 1] and rounded."""
  return np.round(np.clip(np.asarray(rgb, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def image_format(path: str | os.PathLike) -> str:
  """Pillow's format name for a file name's suffix (.png -> 'PNG')."""
  fmt = Image.registered_extensions().get(Path(path).suffix.lower())
  if fmt is None:
    raise errors.ImageError(
      f'cannot tell the image format of {errors.printable(path)}; end the name in .png or .jpg'
    )
  return fmt


def icc_profile(
  path: str | os.PathLike, *, max_pixels: int = config_lib.DEFAULT_MAX_IMAGE_PIXELS
) -> bytes | None:
  """The ICC colour profile embedded in an image file, or None."""
  with _open(path, max_pixels) as im:
    return im.info.get('icc_profile') or None


def _png_with_icc(data: bytes, profile: bytes | None) -> bytes:
  """Inserts an iCCP chunk (PNG spec 11.3.3.3) after IHDR, as Pillow does for 8 bits."""
  import png  # pypng: Pillow cannot write 16-bit RGB PNGs

  if not profile:
    return data
  chunks = list(png.Reader(bytes=data).chunks())
  iccp = b'icc\x00\x00' + zlib.compress(profile)
  out = io.BytesIO()
  png.write_chunks(out, [chunks[0], (b'iCCP', iccp), *chunks[1:]])
  return out.getvalue()


def _write_png16(tmp: str, rgb: np.ndarray, profile: bytes | None) -> None:
  import png

  h, w, _ = rgb.shape
  pixels = np.round(np.clip(np.asarray(rgb, np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)
  buffer = io.BytesIO()
  png.Writer(w, h, greyscale=False, bitdepth=16).write(buffer, pixels.reshape(h, w * 3))
  Path(tmp).write_bytes(_png_with_icc(buffer.getvalue(), profile))


# The share of an image's values `save_image` clips to [0, 1] without a word.
MAX_CLIPPED = 0.05


def _savable(rgb) -> np.ndarray:
  """`save_image`'s `rgb` as float [H, W, 3], or ConfigError naming the fix."""
  value = np.asarray(rgb)
  if value.ndim == 4 and value.shape[-1] == 3:
    raise errors.ConfigError(
      f'rgb must be one image [H, W, 3], got {value.shape}; save each image of the batch: rgb[0]'
    )
  if value.ndim != 3 or value.shape[-1] != 3:
    raise errors.ConfigError(
      f'rgb must be one RGB image [H, W, 3], got shape {value.shape}'
      + pixels.layout_fix(value.shape, batched=False)
    )
  if not value.size:
    raise errors.ConfigError(f'rgb is empty (shape {value.shape}); give an image of at least 1x1')
  if value.dtype == np.uint8:
    return value.astype(np.float32) / 255.0
  if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != 'bfloat16':
    fix = pixels.int_fix(value.dtype, float(value.min()), float(value.max()))
    raise errors.ConfigError(f'rgb is {value.dtype}; give RGB as floats in [0, 1] or uint8: {fix}')
  value = value.astype(np.float32)
  if not np.isfinite(value).all():
    raise errors.ConfigError('rgb has non-finite values; give RGB as floats in [0, 1]')
  low, high = float(value.min()), float(value.max())
  # An overshoot touches a few pixels; an image centred at 0 has half of
  # them below: it was clipped half black without a word (trial 14).
  outside = float(np.mean((value < -0.5 / 255) | (value > 1 + 0.5 / 255)))
  if low < -pixels.RGB_SLACK or high > 1.0 + pixels.RGB_SLACK or outside > MAX_CLIPPED:
    fix = pixels.range_fix(low, high, float(np.mean(value > 1.0)))
    raise errors.ConfigError(
      f'rgb has values from {low:.4g} to {high:.4g}; RGB floats must lie in [0, 1]: {fix}'
    )
  return value


def check_output(
  path: str | os.PathLike, bit_depth: int = 8, *, field: str = 'save.bit_depth'
) -> str:
  """Pillow's format for an output name, refusing what `save_image` cannot write.

  `field` is the caller's name for the bit depth (save_image's argument:
  'bit_depth', trial 19).
  """
  fmt = image_format(path)
  is_int = isinstance(bit_depth, int | np.integer) and not isinstance(bit_depth, bool)
  if not is_int or bit_depth not in config_lib.BIT_DEPTHS:
    raise errors.ConfigError(f'{field} must be 8 or 16 (an int), got {bit_depth!r}')
  if bit_depth == 16 and fmt != 'PNG':
    raise errors.ImageError(
      f'16-bit output needs a .png name, not {errors.printable(Path(path).name)}; '
      f'use {field}{" " if "." in field else "="}8 or a .png name'  # a field, or an argument
    )
  output_names.check_format(Path(path), fmt, bit_depth)
  return fmt


def save_image(
  path: str | os.PathLike,
  rgb: np.ndarray,
  *,
  bit_depth: int = 8,
  quality: int = config_lib.DEFAULT_QUALITY,
  icc: bytes | None = None,
  then: Callable[[str], None] | None = None,
  replace: bool = True,
) -> None:
  """Writes [H, W, 3] RGB in [0, 1] atomically, in the format of the suffix.

  PNG (8 or 16 bits per channel), JPEG and WebP (with `quality`), or any
  other format Pillow writes (8 bits). Values are clipped to [0, 1] and
  rounded. The pixels are written upright with no EXIF orientation (inputs
  are rotated by their orientation when read), so the result shows as the
  content did.

  Args:
    path: the file; its suffix picks the format.
    rgb: [H, W, 3] float RGB.
    bit_depth: 8, or 16 (PNG only).
    quality: JPEG and AVIF quality, 1-100 (both keep full colour resolution,
      4:4:4 chroma); WebP is written lossless (lossy WebP halves the colour
      resolution), `quality` its compression effort.
    icc: an ICC profile to embed (the content image's, so the numbers keep
      their meaning), or None.
    then: called with the written temporary file before it is renamed into
      place (`nst_jax.io.atomic.write`).
    replace: False: a file at `path` by then is kept (`nst_jax.io.atomic.write`).

  Raises:
    ImageError: an unknown suffix, a format that cannot hold the result
      (`output_names.check_format`), or 16 bits for a format other than PNG.
    ConfigError: `quality` is not 1-100, `bit_depth` not 8 or 16, or `rgb` is not one [H, W, 3]
      image of floats in [0, 1] (uint8 is taken as 0..255; an overshoot, up
      to `pixels.RGB_SLACK` outside in at most `MAX_CLIPPED` of the values,
      as a resized or unboxed result has, is clipped), naming the fix.
  """
  fmt = check_output(path, bit_depth, field='bit_depth')
  if (
    isinstance(quality, bool)
    or not isinstance(quality, (int, np.integer))
    or not 1 <= quality <= 100
  ):
    raise errors.ConfigError(f'quality must be a whole number from 1 to 100, got {quality!r}')
  quality = int(quality)  # numpy's integers failed inside Pillow (trial 18)
  rgb = _savable(rgb)
  if bit_depth == 16:
    atomic.write(path, lambda tmp: _write_png16(tmp, rgb, icc), then=then, replace=replace)
    return
  image = Image.fromarray(to_uint8(rgb))
  options = {'icc_profile': icc} if icc else {}
  if fmt in ('JPEG', 'WEBP', 'AVIF'):  # AVIF took Pillow's quality 75 whatever was asked (trial 17)
    options['quality'] = quality
  if fmt == 'AVIF':
    options['subsampling'] = '4:4:4'  # as JPEG's, below
  if fmt == 'WEBP':
    # Lossless: lossy WebP is 4:2:0 only (libwebp), and a 48 px result was
    # off by up to 50/255 and scored 1.66x its recorded loss (trial 13).
    options['lossless'] = True
  if fmt == 'JPEG':
    # 4:4:4: Pillow's default 4:2:0 halves the colour resolution, which the
    # brush strokes' colour edges live in (a 48 px result scored 3.7x its own
    # loss as 4:2:0, 1.2x as 4:4:4; trial 12).
    options['subsampling'] = 0
  atomic.write(path, lambda tmp: image.save(tmp, format=fmt, **options), then=then,
               replace=replace)  # fmt: skip
