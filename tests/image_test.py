"""Tests for nst_jax.io.images: conventions, the inverse pair, file I/O."""

import gc
import os
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from nst_jax import errors
from nst_jax.core import color
from nst_jax.core import pixels
from nst_jax.io import images as image_lib

CONVENTIONS = [pixels.CAFFE, pixels.TORCHVISION]


@pytest.mark.parametrize('convention', CONVENTIONS, ids=lambda c: c.name)
def test_deprocess_inverts_preprocess(convention):
  rgb = np.random.default_rng(0).uniform(size=(2, 5, 7, 3)).astype(np.float32)
  pre = jax.jit(pixels.preprocess, static_argnums=1)
  de = jax.jit(pixels.deprocess, static_argnums=1)
  x = pre(rgb, convention)
  assert x.shape == (2, 5, 7, 3) and x.dtype == np.float32
  np.testing.assert_allclose(de(x, convention), rgb, atol=2e-7)
  # And the other way round, from network space.
  np.testing.assert_allclose(pre(de(x, convention), convention), x, rtol=1e-6, atol=1e-4)


def test_caffe_is_bgr_0_255_minus_mean_pixel():
  red = np.zeros((1, 1, 1, 3), np.float32)
  red[..., 0] = 1.0
  x = np.asarray(pixels.preprocess(red, pixels.CAFFE))[0, 0, 0]
  np.testing.assert_allclose(x, [0 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6)


def test_torchvision_is_rgb_mean_std():
  gray = np.full((1, 1, 1, 3), 0.5, np.float32)
  x = np.asarray(pixels.preprocess(gray, pixels.TORCHVISION))[0, 0, 0]
  want = (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(x, want, rtol=1e-6)


def test_preprocess_wants_batched_rgb():
  with pytest.raises(
    errors.ConfigError,
    match=r'^rgb must be \[N, H, W, 3\] RGB, got shape \(4, 4, 3\); add the batch axis: x\[None\]$',
  ):
    pixels.preprocess(np.zeros((4, 4, 3)), pixels.CAFFE)


_CHANNELS_FIRST = '; if it is channels-first, move the channels last: x.transpose'
_GREY = '; if it is greyscale, repeat it as RGB: np.repeat('


@pytest.mark.parametrize(
  'shape,fix',
  [
    ((1, 3, 8, 8), _CHANNELS_FIRST + '(0, 2, 3, 1)'),
    ((3, 8, 8), _CHANNELS_FIRST + '(1, 2, 0)[None]'),
    ((1, 8, 8, 4), '; drop the alpha channel: x[..., :3]'),
    ((8, 8, 4), '; drop the alpha channel: x[None][..., :3]'),
    ((8, 8), _GREY + 'x[None][..., None], 3, -1)'),
    ((2, 8, 8), _GREY + 'x[..., None], 3, -1)'),
    ((1, 8, 8, 1), '; repeat the grey channel: np.repeat(x, 3, -1)'),
    ((2, 2, 8, 8, 3), ''),  # nothing to recognise: the shape alone
  ],
)
def test_preprocess_names_the_fix_for_a_layout_it_recognises(shape, fix):
  with pytest.raises(errors.ConfigError) as e:
    pixels.preprocess(np.zeros(shape, np.float32), pixels.CAFFE)
  assert str(e.value) == f'rgb must be [N, H, W, 3] RGB, got shape {shape}{fix}'
  # The applied fix is taken (the shapes of one 8x8 image, or two).
  x = np.zeros(shape, np.float32)
  fixed = {
    (1, 3, 8, 8): lambda: x.transpose(0, 2, 3, 1),
    (3, 8, 8): lambda: x.transpose(1, 2, 0)[None],
    (8, 8, 4): lambda: x[None][..., :3],
    (8, 8): lambda: np.repeat(x[None][..., None], 3, -1),
    (2, 8, 8): lambda: np.repeat(x[..., None], 3, -1),
  }.get(shape)
  if fixed is not None:
    assert pixels.preprocess(fixed(), pixels.CAFFE).shape[1:] == (8, 8, 3)


@pytest.mark.parametrize(
  'shape,fix',
  [
    ((3, 17, 23), _CHANNELS_FIRST + '(1, 2, 0)'),
    ((17, 23), _GREY + 'x[..., None], 3, -1)'),
    ((17, 23, 4), '; drop the alpha channel: x[..., :3]'),
    ((17, 23, 1), '; repeat the grey channel: np.repeat(x, 3, -1)'),
  ],
)
def test_the_rgb_rule_names_the_fix_for_a_layout_it_recognises(shape, fix):
  """`as_rgb`, stylize's rule: [H, W, 3] is accepted, so no batch axis is asked for."""
  with pytest.raises(errors.ConfigError) as e:
    pixels.as_rgb(np.zeros(shape, np.float32), 'content')
  assert str(e.value) == f'content must be RGB [H, W, 3] or [N, H, W, 3], got shape {shape}{fix}'


def test_deprocess_wants_the_batch_axis_as_preprocess_does():
  x = pixels.preprocess(np.full((1, 4, 4, 3), 0.5, np.float32), pixels.CAFFE)
  with pytest.raises(errors.ConfigError) as e:
    pixels.deprocess(x[0], pixels.CAFFE)  # it gained a batch axis silently before
  assert str(e.value) == (
    'x must be [N, H, W, 3] in network space, got shape (4, 4, 3); add the batch axis: x[None]'
  )
  np.testing.assert_allclose(pixels.deprocess(x[0][None], pixels.CAFFE), 0.5, atol=1e-6)
  # Integers are RGB, never network space: refused as init_state refuses them (trial 7).
  for dtype in (np.int32, np.uint8):
    with pytest.raises(errors.ConfigError) as e:
      pixels.deprocess(np.zeros((1, 4, 4, 3), dtype), pixels.CAFFE)
    assert str(e.value) == (
      f'x is {np.dtype(dtype)}, but deprocess takes images in network space (floats, as '
      'state.image): integer pixels are RGB already (divide uint8 by 255)'
    )


def test_unknown_convention():
  with pytest.raises(errors.ConfigError, match="unknown input convention 'bgr'"):
    pixels.get_convention('bgr')
  # Weights given as the convention: its type is named, not its kernels (trial 13).
  holder = types.SimpleNamespace(kernel=np.zeros((64, 64)))
  with pytest.raises(errors.ConfigError) as e:
    pixels.as_convention(holder)
  assert str(e.value) == (
    "convention must be an InputConvention or one of 'caffe', 'torchvision', got SimpleNamespace; "
    'the weights carry theirs: weights.info.input_convention'
  )


def test_conventions_by_name():
  """preprocess and deprocess take a convention's name, as the converter does; not others."""
  rgb = np.random.default_rng(0).uniform(size=(1, 4, 4, 3)).astype(np.float32)
  for name, convention in pixels.CONVENTIONS.items():
    np.testing.assert_array_equal(pixels.preprocess(rgb, name), pixels.preprocess(rgb, convention))
    np.testing.assert_array_equal(pixels.deprocess(rgb, name), pixels.deprocess(rgb, convention))
  with pytest.raises(
    errors.ConfigError,
    match=r"^convention must be an InputConvention or one of 'caffe', 'torchvision', got 'bgr'; "
    r'the weights carry theirs: weights.info.input_convention$',
  ):
    pixels.preprocess(rgb, 'bgr')


def test_bfloat16_rgb_is_converted():
  rgb = np.random.default_rng(0).uniform(size=(4, 4, 3)).astype(np.float32)
  half = jnp.asarray(rgb, jnp.bfloat16)
  got = pixels.as_rgb(half, 'image')
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, np.asarray(half, np.float32))
  with pytest.raises(errors.ConfigError, match=r'^image has values from 0.005463 to 1.992; RGB'):
    pixels.as_rgb(half * 2, 'image')


def test_preprocess_reads_uint8_by_the_rule_and_refuses_another_scale():
  """uint8 and 0..255 floats went through as 255x the pixels (activations 255x too large)."""
  rgb = np.random.default_rng(2).uniform(size=(1, 4, 4, 3)).astype(np.float32)
  as_uint8 = np.round(rgb * 255).astype(np.uint8)
  np.testing.assert_allclose(
    pixels.preprocess(as_uint8, 'caffe'), pixels.preprocess(as_uint8 / 255.0, 'caffe'), atol=1e-4
  )
  # An overshoot is clipped, not divided: 0..1.009 / 255 was a black image (trial 13).
  fix = r'from 0 to 1\.009; RGB floats must lie in \[0, 1\]: clip it to \[0, 1\] \(np\.clip'
  with pytest.raises(
    errors.ConfigError,
    match=r"RGB floats must lie in \[0, 1\]: divide by its format's maximum: "
    r'65535 \(16-bit\)$',
  ):
    pixels.as_rgb(rgb * 65535, 'rgb')  # 16-bit values: /255 was refused again (trial 14)
  with pytest.raises(errors.ConfigError, match=fix):
    pixels.as_rgb(np.concatenate([rgb[..., :1] * 0, rgb[..., 1:] * 0 + 1.009], -1), 'rgb')
  # Bicubic overshoot of a few hundredths passes and maps affinely.
  over = pixels.preprocess(np.full((1, 2, 2, 3), 1.1, np.float32), 'torchvision')
  np.testing.assert_allclose(over[0, 0, 0], (1.1 - np.array([0.485, 0.456, 0.406])) /
                             np.array([0.229, 0.224, 0.225]), rtol=1e-6)  # fmt: skip
  for bad, message in (
    (rgb * 255, f'rgb has values from {rgb.min() * 255:.4g} to {rgb.max() * 255:.4g}; preprocess '
     'takes RGB in [0, 1]: divide by 255, or deprocess it (nst_jax.deprocess) if it is network '
     'space'),
    (rgb - 1, f'rgb has values from {rgb.min() - 1:.4g} to {rgb.max() - 1:.4g}; preprocess takes '
     'RGB in [0, 1]: if it is -1..1 data map it with (x + 1) / 2, or deprocess it '
     '(nst_jax.deprocess) if it is network space; else clip it to [0, 1]'),
    (np.full((1, 2, 2, 3), np.nan, np.float32), 'rgb has non-finite values; give RGB as floats in '
     '[0, 1]'),
    (as_uint8.astype(np.int32), 'rgb is int32; give RGB as floats in [0, 1] (or uint8); if it is '
     '0..255 data, x.astype(np.uint8)'),
  ):  # fmt: skip
    with pytest.raises(errors.ConfigError) as e:
      pixels.preprocess(bad, 'caffe')
    assert str(e.value) == message
  # Under a trace the values cannot be read: the check stands aside.
  jax.jit(pixels.preprocess, static_argnums=1)(rgb * 255, 'caffe')


def test_network_images_of_bfloat16_are_images_and_integers_are_not():
  x = jnp.zeros((1, 4, 4, 3), jnp.bfloat16)
  pixels.check_network_images(x, 'content')  # said "is bfloat16 ... preprocess RGB first"
  with pytest.raises(errors.ConfigError) as e:
    pixels.check_network_images(np.zeros((1, 4, 4, 3), np.uint8), 'content')
  assert str(e.value) == (
    'content is uint8, but it is an image in network space: preprocess RGB first, '
    'nst_jax.preprocess(rgb, weights.info.input_convention)'
  )


def test_network_images_must_be_finite():
  x = np.zeros((1, 4, 4, 3), np.float32)
  pixels.check_network_images(x, 'content')
  for bad in (np.nan, np.inf):
    x[0, 1, 2, 0] = bad
    with pytest.raises(
      errors.ConfigError,
      match=r'^content has NaN or infinite values; give finite images in network space '
      r'\(nst_jax.preprocess of RGB in \[0, 1\]\)$',
    ):
      pixels.check_network_images(jnp.asarray(x), 'content')


def test_load_resizes_keeping_aspect(tmp_path):
  path = tmp_path / 'a.png'
  arr = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
  Image.fromarray(arr).save(path)
  full = image_lib.load_image(path)
  assert full.shape == (30, 40, 3) and full.dtype == np.float32
  np.testing.assert_array_equal(full, arr / np.float32(255.0))
  small = image_lib.load_image(path, width=20)
  assert small.shape == (15, 20, 3)
  assert 0.0 <= small.min() and small.max() <= 1.0


def test_channel_order_survives_load(tmp_path):
  path = tmp_path / 'red.png'
  Image.new('RGB', (4, 3), (255, 0, 0)).save(path)
  rgb = image_lib.load_image(path)
  np.testing.assert_array_equal(rgb[0, 0], [1.0, 0.0, 0.0])


def test_save_load_round_trip_png(tmp_path):
  rgb = np.random.default_rng(2).integers(0, 256, (9, 11, 3)).astype(np.float32) / 255.0
  path = tmp_path / 'sub' / 'out.png'
  image_lib.save_image(path, rgb)
  np.testing.assert_array_equal(image_lib.load_image(path), rgb)
  assert [p.name for p in path.parent.iterdir()] == ['out.png']  # no temp left


def test_save_clips_out_of_range(tmp_path):
  # An overshoot (a resize's, an unboxed result's) in a few pixels is clipped.
  rgb = np.full((10, 10, 3), 0.5, np.float32)
  rgb[0, 0] = [-0.5, 0.5, 1.5]
  image_lib.save_image(tmp_path / 'c.png', rgb)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'c.png'))[0, :2],
                                [[0, 128, 255], [128, 128, 128]])  # fmt: skip


def test_save_takes_uint8_and_refuses_other_scales_and_batches_naming_the_fix(tmp_path):
  """Trial 13: uint8 and 0..255 floats were written all white, a batch raised Pillow's error."""
  rgb = np.random.default_rng(4).integers(0, 256, (5, 6, 3)).astype(np.uint8)
  image_lib.save_image(tmp_path / 'u.png', rgb)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'u.png')), rgb)
  floats = rgb / np.float32(255)
  for bad, message in (
    (floats * 255, f'rgb has values from {rgb.min():.4g} to {rgb.max():.4g}; RGB floats must lie '
     'in [0, 1]: divide by 255, or deprocess it (nst_jax.deprocess) if it is network space'),
    (floats * 2 - 1, f'rgb has values from {floats.min() * 2 - 1:.4g} to '
     f'{floats.max() * 2 - 1:.4g}; RGB floats must lie in [0, 1]: if it is -1..1 data map it with '
     '(x + 1) / 2, or deprocess it (nst_jax.deprocess) if it is network space; else clip it to '
     '[0, 1]'),
    (floats * 230 - 110, f'rgb has values from {floats.min() * 230 - 110:.4g} to '
     f'{floats.max() * 230 - 110:.4g}; RGB floats must lie in [0, 1]: it looks like network '
     'space: deprocess it first (nst_jax.deprocess) and clip to [0, 1]'),
    (np.full((2, 2, 3), np.nan, np.float32), 'rgb has non-finite values; give RGB as floats in '
     '[0, 1]'),
    (floats[None], 'rgb must be one image [H, W, 3], got (1, 5, 6, 3); save each image of the '
     'batch: rgb[0]'),
    (rgb.astype(np.int32), 'rgb is int32; give RGB as floats in [0, 1] or uint8: if it is 0..255 '
     'data, x.astype(np.uint8)'),
    (rgb.astype(np.uint16) * 257, "rgb is uint16; give RGB as floats in [0, 1] or uint8: divide by "
     "its format's maximum: 65535 (16-bit)"),
    # 12-bit data kept in 16 bits: x / 65535 saved it nearly black (trial 17).
    (rgb.astype(np.uint16) * 16, "rgb is uint16; give RGB as floats in [0, 1] or uint8: divide by "
     "its format's maximum: 4095 (12-bit) or 65535 (16-bit)"),
    # Centred at 0, inside the slack: half of it was clipped black (trial 14).
    (floats - 0.5, f'rgb has values from {floats.min() - 0.5:.4g} to {floats.max() - 0.5:.4g}; '
     'RGB floats must lie in [0, 1]: clip it to [0, 1] if the values outside are an overshoot; if '
     'the image is shifted (centred at 0, say), map it back: (x - x.min()) / (x.max() - x.min()); '
     'deprocess it (nst_jax.deprocess) if it is network space'),
    (floats * 65535, f'rgb has values from {int(rgb.min()) * 257:.4g} to '
     f'{int(rgb.max()) * 257:.4g}; RGB floats must lie in [0, 1]: divide by its format\'s maximum: '
     '65535 (16-bit)'),
    (np.zeros((0, 4, 3), np.float32), 'rgb is empty (shape (0, 4, 3)); give an image of at least '
     '1x1'),
  ):  # fmt: skip
    with pytest.raises(errors.ConfigError) as e:
      image_lib.save_image(tmp_path / 'bad.png', bad)
    assert str(e.value) == message
  # The fix reads the bulk of the values, not the maximum alone (trial 15).
  hot = floats.copy()
  hot[0, 0, 0] = 1.6  # one hot pixel: dividing by 255 would save it black
  with pytest.raises(errors.ConfigError, match=r'to 1\.6; RGB floats must lie in .*clip it to'):
    image_lib.save_image(tmp_path / 'bad.png', hot)
  over = floats * 255
  over[0, 0] = 299  # a 0..255 image overshooting is still 0..255, not 16-bit
  with pytest.raises(errors.ConfigError, match=r'to 299; .*: divide by 255, or deprocess'):
    image_lib.save_image(tmp_path / 'bad.png', over)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['u.png']  # nothing else written


def test_webp_is_written_lossless(tmp_path):
  """Lossy WebP is 4:2:0: a 48 px result was off by up to 50/255 (trial 13)."""
  rgb = np.random.default_rng(5).integers(0, 256, (16, 16, 3)).astype(np.float32) / 255
  image_lib.save_image(tmp_path / 'r.webp', rgb)
  np.testing.assert_array_equal(image_lib.load_image(tmp_path / 'r.webp'), rgb)


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
  path = tmp_path / 'keep.png'
  image_lib.save_image(path, np.zeros((2, 2, 3)))
  before = path.read_bytes()

  def boom(*args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(Image.Image, 'save', boom)
  with pytest.raises(OSError, match='disk full'):
    image_lib.save_image(path, np.ones((2, 2, 3)))
  assert path.read_bytes() == before
  assert [p.name for p in tmp_path.iterdir()] == ['keep.png']


@pytest.mark.parametrize(
  'make,problem',
  [
    (lambda p: None, 'does not exist'),
    (lambda p: p.mkdir(), 'is a directory'),
    (lambda p: p.write_text('not an image'), 'cannot read image'),
    (lambda p: p.write_bytes(b''), 'cannot read image'),
    (os.mkfifo, 'is not a regular file'),  # opening it would wait for a writer forever
  ],
  ids=['missing', 'directory', 'text', 'empty', 'fifo'],
)
def test_bad_image_paths(tmp_path, make, problem):
  path = tmp_path / 'x.jpg'
  make(path)
  with pytest.raises(errors.ImageError, match=problem) as e:
    image_lib.load_image(path)
  assert '\n' not in str(e.value)


def test_unknown_suffix_is_refused(tmp_path):
  with pytest.raises(errors.ImageError, match=r'end the name in \.png or \.jpg'):
    image_lib.save_image(tmp_path / 'out.xyz', np.zeros((2, 2, 3)))


# ---------------------------------------------------------------------------
# Hostile and unusual inputs.


def _png_bytes(width, height, bit_depth, color_type, raw_rows: bytes) -> bytes:
  """A minimal PNG written by hand (for layouts Pillow cannot write)."""
  import struct
  import zlib

  def chunk(kind, data):
    body = kind + data
    return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))

  ihdr = struct.pack('>IIBBBBB', width, height, bit_depth, color_type, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + chunk(b'IHDR', ihdr)
    + chunk(b'IDAT', zlib.compress(raw_rows))
    + chunk(b'IEND', b'')
  )


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_truncated_files_are_refused(tmp_path, fmt):
  arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  path = tmp_path / f'cut.{fmt.lower()}'
  Image.fromarray(arr).save(path, format=fmt)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(errors.ImageError, match=f'cannot read image {path}') as e:
    image_lib.load_image(path)
  assert '\n' not in str(e.value)


def test_grayscale_and_palette_become_rgb(tmp_path):
  Image.new('L', (3, 2), 128).save(tmp_path / 'g.png')
  np.testing.assert_allclose(image_lib.load_image(tmp_path / 'g.png'), 128 / 255, rtol=1e-6)
  pal = Image.new('RGB', (3, 2), (10, 200, 30)).convert('P')  # web palette: (0, 204, 51)
  pal.save(tmp_path / 'p.png')
  want = np.array(pal.convert('RGB').getpixel((0, 0))) / 255
  assert not np.allclose(want, 0)
  np.testing.assert_allclose(image_lib.load_image(tmp_path / 'p.png')[0, 0], want, rtol=1e-6)


def test_alpha_is_composited_over_white(tmp_path):
  Image.new('RGBA', (2, 2), (255, 0, 0, 128)).save(tmp_path / 'a.png')
  a = 128 / 255
  np.testing.assert_allclose(
    image_lib.load_image(tmp_path / 'a.png')[0, 0], [1.0, 1 - a, 1 - a], rtol=1e-6
  )


def test_cmyk_jpeg_is_converted(tmp_path):
  rgb = np.zeros((16, 16, 3), np.uint8)
  rgb[:8] = (220, 30, 40)
  rgb[8:] = (20, 40, 200)
  Image.fromarray(rgb).convert('CMYK').save(tmp_path / 'c.jpg', quality=95)
  with Image.open(tmp_path / 'c.jpg') as im:
    assert im.mode == 'CMYK'
  got = image_lib.load_image(tmp_path / 'c.jpg')
  np.testing.assert_allclose(
    got[2:6, 2:14], np.broadcast_to(rgb[0, 0] / 255, (4, 12, 3)), atol=0.05
  )
  np.testing.assert_allclose(
    got[10:14, 2:14], np.broadcast_to(rgb[15, 0] / 255, (4, 12, 3)), atol=0.05
  )


def test_16_bit_grayscale_png_keeps_its_precision(tmp_path):
  values = np.array([[0, 300, 32768, 65535]], np.uint16)
  Image.fromarray(values).save(tmp_path / 'g16.png')
  got = image_lib.load_image(tmp_path / 'g16.png')
  np.testing.assert_allclose(got[0, :, 0], values[0] / 65535, rtol=1e-6)
  assert got[0, 1, 0] < 0.01  # not clipped to white, as an 8-bit conversion would do


def test_48_bit_rgb_png_keeps_its_precision(tmp_path):
  # values off the 8-bit grid (k * 257): Pillow alone would round them to 8 bits
  pixels = np.array([[[65535, 1, 32768], [4000, 61000, 7]]], np.uint16)  # 1 row, 2 px
  raw = b'\x00' + pixels.astype('>u2').tobytes()  # filter byte 0, big-endian samples
  (tmp_path / 'rgb48.png').write_bytes(_png_bytes(2, 1, 16, 2, raw))
  got = image_lib.load_image(tmp_path / 'rgb48.png')
  np.testing.assert_allclose(got[0], pixels[0] / 65535, atol=1e-7)
  wide = image_lib.load_image(tmp_path / 'rgb48.png', width=4)
  np.testing.assert_allclose(wide, image_lib.resize_to_width(got, 4), atol=1e-7)


def test_exif_orientation_is_respected(tmp_path):
  stored = np.zeros((20, 30, 3), np.uint8)
  stored[:6, :6] = (255, 0, 0)  # stored top-left corner is red
  im = Image.fromarray(stored)
  exif = im.getexif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
  im.save(tmp_path / 'r.jpg', exif=exif, quality=100)
  got = image_lib.load_image(tmp_path / 'r.jpg')
  assert got.shape == (30, 20, 3)
  assert got[1, -2, 0] > 0.8 and got[1, 1, 0] < 0.2  # red is now top-right


def test_animated_gif_gives_first_frame_with_warning(tmp_path, caplog):
  frames = [Image.new('RGB', (4, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
  frames[0].save(tmp_path / 'a.gif', save_all=True, append_images=frames[1:])
  got = image_lib.load_image(tmp_path / 'a.gif')
  np.testing.assert_allclose(got[0, 0], [1.0, 0.0, 0.0], atol=0.01)
  assert 'has 3 frames; using the first' in caplog.text


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
  # A 100000 x 100000 PNG header over a few bytes of data: 10^10 pixels.
  (tmp_path / 'bomb.png').write_bytes(_png_bytes(100_000, 100_000, 8, 2, b'\x00' * 16))
  with pytest.raises(errors.ImageError, match='raise inputs.max_image_pixels') as e:
    image_lib.load_image(tmp_path / 'bomb.png')
  assert '100000x100000' in str(e.value)
  Image.new('RGB', (40, 30)).save(tmp_path / 'ok.png')
  with pytest.raises(errors.ImageError, match='more than the limit of 1000'):
    image_lib.load_image(tmp_path / 'ok.png', max_pixels=1000)
  assert image_lib.load_image(tmp_path / 'ok.png', max_pixels=1200).shape == (30, 40, 3)


def test_one_pixel_image_loads_and_resizes(tmp_path):
  Image.new('RGB', (1, 1), (0, 128, 255)).save(tmp_path / 'one.png')
  assert image_lib.load_image(tmp_path / 'one.png').shape == (1, 1, 3)
  big = image_lib.load_image(tmp_path / 'one.png', width=16)
  assert big.shape == (16, 16, 3)
  np.testing.assert_allclose(big, np.broadcast_to([0, 128 / 255, 1], (16, 16, 3)), atol=1e-3)


def _rgb(seed, shape=(1, 6, 7, 3), low=0.2, high=0.8):
  return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def test_yiq_round_trip_and_luma():
  x = _rgb(0)
  np.testing.assert_allclose(color.yiq_to_rgb(color.rgb_to_yiq(x)), x, atol=1e-6)
  y = color.rgb_to_yiq(x)[..., 0]
  np.testing.assert_allclose(y, x @ np.array([0.299, 0.587, 0.114]), rtol=1e-6)
  # Grey has no chroma.
  np.testing.assert_allclose(color.rgb_to_yiq(np.full((1, 1, 1, 3), 0.5))[..., 1:], 0, atol=1e-7)


def test_luminance_image_matches_the_reference_statistics():
  style, content = _rgb(1, (1, 9, 11, 3)), _rgb(2, (2, 6, 7, 3), 0.4, 0.5)
  g = np.asarray(color.luminance_image(style, like=content))
  assert g.shape == (2, 9, 11, 3)
  np.testing.assert_array_equal(g[..., 0], g[..., 2])  # grey: Y in every channel
  y_c = np.asarray(color.rgb_to_yiq(content))[..., 0]
  for i in range(2):
    np.testing.assert_allclose(g[i, ..., 0].mean(), y_c[i].mean(), rtol=1e-5)
    np.testing.assert_allclose(g[i, ..., 0].std(), y_c[i].std(), rtol=1e-4)


def test_transfer_chroma_keeps_luma_and_takes_colours():
  result, content = _rgb(3, low=0.4, high=0.6), _rgb(4, low=0.4, high=0.6)
  out = color.transfer_chroma(result, content)
  yiq_out, yiq_r, yiq_c = (color.rgb_to_yiq(a) for a in (out, result, content))
  np.testing.assert_allclose(yiq_out[..., 0], yiq_r[..., 0], atol=1e-6)
  np.testing.assert_allclose(yiq_out[..., 1:], yiq_c[..., 1:], atol=1e-6)


def test_match_color_refuses_one_image_naming_the_batch_axis():
  """One [H, W, 3] image read its rows as images: wrong colours, or JAX's matmul error (trial 9)."""
  rng = np.random.default_rng(0)
  one, other = rng.uniform(size=(32, 32, 3)), rng.uniform(size=(1, 24, 24, 3))
  with pytest.raises(errors.ConfigError) as e:
    color.match_color(one, other)
  assert str(e.value) == (
    'source must be [N, H, W, 3] RGB images, got shape (32, 32, 3); add the batch axis: x[None]'
  )
  with pytest.raises(errors.ConfigError, match=r'^reference must be \[N, H, W, 3\]'):
    color.match_color(other, one)
  assert color.match_color(one[None], other).shape == (1, 32, 32, 3)


@pytest.mark.parametrize('mode', color.COLOR_MATCH_MODES)
def test_match_color_gives_the_reference_mean_and_covariance(mode):
  source = _rgb(5, (1, 20, 30, 3), 0.3, 0.7)
  source[..., 0] *= 0.5  # a colour cast to remove
  reference = _rgb(6, (2, 10, 10, 3), 0.35, 0.65)
  out = np.asarray(color.match_color(source, reference, mode), np.float64)
  assert out.shape == (2, 20, 30, 3)
  assert 0.0 < out.min() and out.max() < 1.0  # nothing clipped: moments hold exactly
  eps = color.COLOR_COV_EPS * np.eye(3)
  src = source[0].reshape(-1, 3).astype(np.float64)
  for i in range(2):
    x, r = out[i].reshape(-1, 3), reference[i].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(x.mean(0), r.mean(0), atol=1e-5)
    # Recover the affine map from the pixels; it takes the (regularised) source
    # covariance exactly to the reference's: A S_s A^T = S_r.
    design = np.concatenate([src - src.mean(0), np.ones((len(src), 1))], axis=1)
    a = np.linalg.lstsq(design, x, rcond=None)[0][:3].T
    want = np.cov(r.T, bias=True) + eps
    got = a @ (np.cov(src.T, bias=True) + eps) @ a.T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)


def test_pca_and_cholesky_differ_only_by_a_rotation():
  source, reference = _rgb(7, (1, 12, 12, 3), 0.3, 0.7), _rgb(8, (1, 8, 8, 3), 0.35, 0.65)
  a = np.asarray(color.match_color(source, reference, 'pca'))
  b = np.asarray(color.match_color(source, reference, 'cholesky'))
  assert np.abs(a - b).max() > 1e-3  # different maps
  with pytest.raises(errors.ConfigError) as e:
    color.match_color(source, reference, 'lab')
  assert str(e.value) == "unknown colour match mode 'lab'; use one of 'pca', 'cholesky'"


def test_load_mask(tmp_path):
  gray = np.zeros((20, 30), np.uint8)
  gray[:, 15:] = 255
  Image.fromarray(gray).save(tmp_path / 'm.png')
  m = image_lib.load_mask(tmp_path / 'm.png', 10, 15)
  assert m.shape == (10, 15) and m.dtype == np.float32
  np.testing.assert_allclose(m[:, :7], 0.0, atol=1e-6)
  np.testing.assert_allclose(m[:, 8:], 1.0, atol=1e-6)
  # Colour masks use their luminance; a mask of another aspect ratio is refused.
  Image.fromarray(np.full((20, 30, 3), (255, 0, 0), np.uint8)).save(tmp_path / 'red.png')
  np.testing.assert_allclose(image_lib.load_mask(tmp_path / 'red.png', 10, 15), 0.299, atol=1e-3)
  with pytest.raises(errors.ImageError, match='draw the mask over the content image'):
    image_lib.load_mask(tmp_path / 'm.png', 10, 10)
  # A label image of 0s and 1s weighed 1/255 (trial 14); an all-black mask is a mask.
  Image.fromarray(gray // 255).save(tmp_path / 'labels.png')
  with pytest.raises(errors.ImageError) as e:
    image_lib.load_mask(tmp_path / 'labels.png', 10, 15)
  assert str(e.value) == (
    f'mask {tmp_path / "labels.png"} is nearly black (its brightest pixel is 1 of 255): white '
    'marks the region; if it holds labels 0 and 1, save it with 0 and 255'
  )
  Image.fromarray(gray * 0).save(tmp_path / 'none.png')
  assert image_lib.load_mask(tmp_path / 'none.png', 10, 15).max() == 0


def _srgb_profile():
  from PIL import ImageCms

  return ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()


def test_16_bit_png_keeps_16_bits_and_the_icc_profile(tmp_path):
  import png

  rgb = np.random.default_rng(0).uniform(size=(6, 7, 3)).astype(np.float32)
  profile = _srgb_profile()
  image_lib.save_image(tmp_path / 'o.png', rgb, bit_depth=16, icc=profile)
  w, h, rows, info = png.Reader(filename=str(tmp_path / 'o.png')).read()
  assert (w, h, info['bitdepth'], info['planes']) == (7, 6, 16, 3)
  back = np.array(list(rows), np.float64).reshape(6, 7, 3) / 65535
  np.testing.assert_allclose(back, rgb, atol=0.5 / 65535 + 1e-7)  # 16 bits, rounded
  with Image.open(tmp_path / 'o.png') as im:
    assert im.info['icc_profile'] == profile


@pytest.mark.parametrize('suffix', ['.png', '.jpg', '.webp'])
def test_8_bit_outputs_embed_the_icc_profile(tmp_path, suffix):
  rgb = np.random.default_rng(1).uniform(size=(16, 16, 3)).astype(np.float32)
  profile = _srgb_profile()
  image_lib.save_image(tmp_path / f'o{suffix}', rgb, icc=profile)
  with Image.open(tmp_path / f'o{suffix}') as im:
    assert im.info['icc_profile'] == profile and im.size == (16, 16)
  image_lib.save_image(tmp_path / f'plain{suffix}', rgb)
  with Image.open(tmp_path / f'plain{suffix}') as im:
    assert not im.info.get('icc_profile')


@pytest.mark.parametrize('suffix', ['.jpg'])
def test_quality_changes_lossy_outputs(tmp_path, suffix):
  rgb = np.random.default_rng(2).uniform(size=(64, 64, 3)).astype(np.float32)
  errs, sizes = [], []
  for q in (30, 95):
    path = tmp_path / f'q{q}{suffix}'
    image_lib.save_image(path, rgb, quality=q)
    sizes.append(path.stat().st_size)
    errs.append(np.abs(image_lib.load_image(path) - rgb).mean())
  assert sizes[0] < sizes[1] and errs[0] > errs[1]


def test_jpeg_keeps_full_colour_resolution(tmp_path):
  """4:4:4 chroma: with Pillow's default 4:2:0 a 48 px result scored 3.7x its record (trial 12)."""
  from PIL import JpegImagePlugin

  x = np.arange(32)[None, :, None]
  # Red and green columns one pixel wide: detail in the colour more than the brightness.
  rgb = np.where(x % 2 == 0, [0.8, 0.2, 0.2], [0.2, 0.6, 0.2]) * np.ones((32, 1, 1))
  rgb = rgb.astype(np.float32)
  image_lib.save_image(tmp_path / 'c.jpg', rgb)
  with Image.open(tmp_path / 'c.jpg') as im:
    assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
  back = image_lib.load_image(tmp_path / 'c.jpg')
  assert np.abs(back - rgb).mean() < 0.02  # 4:2:0 averages each pair of columns: 0.2 off


def test_16_bits_need_png(tmp_path):
  """Trial 19: save_image answered in the config's words (save.bit_depth), and '16' was
  told 'got 16'."""
  with pytest.raises(errors.ImageError) as e:
    image_lib.save_image(tmp_path / 'o.jpg', np.zeros((4, 4, 3)), bit_depth=16)
  assert (
    str(e.value) == '16-bit output needs a .png name, not o.jpg; use bit_depth=8 or a .png name'
  )
  with pytest.raises(errors.ImageError) as e:
    image_lib.check_output(tmp_path / 'o.jpg', 16)  # the planner's check, of save.bit_depth
  assert str(e.value).endswith('; use save.bit_depth 8 or a .png name')
  for depth in ('16', 16.0, True):
    with pytest.raises(errors.ConfigError) as e:
      image_lib.save_image(tmp_path / 'o.png', np.zeros((4, 4, 3)), bit_depth=depth)
    assert str(e.value) == f'bit_depth must be 8 or 16 (an int), got {depth!r}'
  assert list(tmp_path.iterdir()) == []
  rgb = np.random.default_rng(0).uniform(size=(4, 4, 3)).astype(np.float32)
  image_lib.save_image(tmp_path / 'o.png', rgb, bit_depth=np.int64(16))
  # pypng's reader left the file open (trial 19: a ResourceWarning in every notebook).
  with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter('always')
    back = image_lib.load_image(tmp_path / 'o.png')
    gc.collect()
  assert [w for w in seen if issubclass(w.category, ResourceWarning)] == []
  np.testing.assert_allclose(back, rgb, atol=0.5 / 65535)
  (tmp_path / 'o.png').unlink()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'plain.jpg')
  assert image_lib.icc_profile(tmp_path / 'plain.jpg') is None


def test_preprocess_and_deprocess_are_one_program_each(compiled):
  # Run eagerly, their operations used to compile one program each (about
  # 60 ms apiece here), for every new image size. A shape no other test uses:
  rgb = np.random.default_rng(0).uniform(size=(1, 23, 17, 3)).astype(np.float32)
  x = pixels.preprocess(rgb, pixels.CAFFE)
  back = pixels.deprocess(x, pixels.CAFFE)
  assert compiled() == ['jit(_to_network)', 'jit(_to_rgb)']
  np.testing.assert_allclose(back, rgb, atol=1e-6)


def test_a_transparent_mask_is_refused_and_an_opaque_one_read(tmp_path):
  """Trial 16: strokes on a transparent layer, composited over white, covered the whole image."""
  rgba = np.zeros((10, 15, 4), np.uint8)
  rgba[2:6, 3:9] = 255  # white, opaque strokes; the rest transparent
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'layer.png')
  with pytest.raises(errors.ImageError, match=r'has transparent pixels, which could mean inside'):
    image_lib.load_mask(tmp_path / 'layer.png', 10, 15)
  rgba[..., 3] = 255  # the same strokes, everything opaque: black is outside
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'opaque.png')
  m = image_lib.load_mask(tmp_path / 'opaque.png', 10, 15)
  assert m.sum() == pytest.approx(4 * 6) and m[2:6, 3:9].min() == pytest.approx(1.0)


def test_sizes_and_arrays_are_checked_before_resizing(tmp_path):
  """Trial 16: a 0..255 float image resized to all white; jax arrays and widths failed in Pillow."""
  rgb = np.random.default_rng(7).uniform(size=(12, 16, 3)).astype(np.float32)
  Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(tmp_path / 'c.png')
  np.testing.assert_array_equal(
    image_lib.resize_to_width(jnp.asarray(rgb), 8), image_lib.resize_to_width(rgb, 8)
  )
  for bad, message in (
    (rgb * 255, 'rgb has values from'),
    (rgb[None], r'rgb must be one image \[H, W, 3\], got \(1, 12, 16, 3\); resize each image'),
    # Not '[H, W, 3] or [N, H, W, 3]': a batch is what it refuses (trial 17).
    (rgb[..., 0], r'^rgb must be one RGB image \[H, W, 3\], got shape \(12, 16\); if it is grey'),
  ):
    with pytest.raises(errors.ConfigError, match=message):
      image_lib.resize_to_width(bad, 8)
  for width in (0, -5, 16.0, True):
    with pytest.raises(errors.ConfigError) as e:
      image_lib.load_image(tmp_path / 'c.png', width)
    assert str(e.value) == f'width must be a whole number of pixels >= 1, got {width!r}'
  with pytest.raises(errors.ConfigError, match=r'^height must be a whole number of pixels'):
    image_lib.load_mask(tmp_path / 'c.png', 0, 16)


@pytest.mark.parametrize(
  'make, fix',
  [
    # Between 1.5 and 25 no format fits; /255 saved a 0..2 image black (trial 16).
    (lambda x: x * 2,
     'no image format is 0..2: divide by its maximum (x / x.max()) if it is a scaled image, or '
     'deprocess it (nst_jax.deprocess) if it is network space'),
    (lambda x: x * 4095, "divide by its format's maximum: 4095 (12-bit) or 65535 (16-bit)"),
    (lambda x: x * 900, "maximum: 1023 (10-bit) or 4095 (12-bit) or 65535 (16-bit)"),
    # An unboxed optimiser's overshoot on many pixels: clip, said how.
    (lambda x: np.where(x > 0.85, 1.04, x), 'clip it to [0, 1] (np.clip(x, 0, 1))'),
    # A black image with a grey square: 128 is not a hot pixel, both readings named.
    (lambda x: np.pad(np.full((6, 6, 3), 128.0), ((0, 26), (0, 26), (0, 0))),
     'divide by 255, or deprocess it (nst_jax.deprocess) if it is network space; or clip it to '
     '[0, 1], if the values above 1 are stray'),
    # Within the slack both ways, as a hazy photo in torchvision space is (trial 18).
    (lambda x: x * 1.68 - 0.37, 'deprocess it (nst_jax.deprocess) if it is network space'),
    # Far below 0 only: a dark image in Caffe space, no -1..1 data (trial 18).
    (lambda x: x * 124 - 123.6,
     'it looks like network space: deprocess it first (nst_jax.deprocess)'),
    # One hot pixel in 3072 values: clipped, nothing else.
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, 255.0, x),
     'clip it to [0, 1] (np.clip(x, 0, 1)): the values above 1 are a few stray pixels'),
  ],
)  # fmt: skip
def test_the_range_advice_names_each_reading_the_values_allow(tmp_path, make, fix):
  rgb = np.random.default_rng(8).uniform(size=(32, 32, 3)).astype(np.float32)
  bad = make(rgb)
  with pytest.raises(errors.ConfigError) as e:
    image_lib.save_image(tmp_path / 'x.png', bad)
  assert str(e.value).endswith(fix), str(e.value)
  assert str(e.value).startswith(f'rgb has values from {bad.min():.4g} to {bad.max():.4g}; ')
  with pytest.raises(errors.ConfigError) as e:  # the input side gives the same advice
    pixels.as_rgb(bad, 'content')
  assert str(e.value).endswith(fix)
  assert not list(tmp_path.iterdir())


def test_a_label_map_file_is_refused_as_a_mask(tmp_path):
  """Trial 17: a grey label PNG (VOC-like classes, 255 on the boundaries) weighed label/255."""
  labels = np.kron(np.array([[0, 7, 15], [20, 255, 0]], np.uint8), np.ones((5, 5), np.uint8))
  Image.fromarray(labels).save(tmp_path / 'labels.png')
  with pytest.raises(errors.ImageError) as e:
    image_lib.load_mask(tmp_path / 'labels.png', 10, 15)
  assert str(e.value).endswith(
    'has 3 grey levels from 7 to 20 besides 255 and none brighter, as a label map has: white '
    "marks the region; save one label's region white on black (a weak mask: brighten it)"
  )
  soft = np.linspace(0, 255, 150).astype(np.uint8).reshape(10, 15)  # every level: weights
  Image.fromarray(soft).save(tmp_path / 'soft.png')
  np.testing.assert_allclose(
    image_lib.load_mask(tmp_path / 'soft.png', 10, 15), soft / 255, atol=1e-6
  )


def test_save_sets_avif_quality_and_checks_quality(tmp_path):
  """Trial 17: .avif took Pillow's quality 75 whatever was asked; quality 0 or 1000 passed."""
  rgb = np.random.default_rng(9).uniform(size=(24, 32, 3)).astype(np.float32)
  sizes = {}
  for q in (30, 100):
    image_lib.save_image(tmp_path / f'q{q}.avif', rgb, quality=q)
    sizes[q] = (tmp_path / f'q{q}.avif').stat().st_size
  assert sizes[100] > 2 * sizes[30]
  for bad in (0, 1000, 50.5, '90', True):
    with pytest.raises(errors.ConfigError) as e:
      image_lib.save_image(tmp_path / 'x.jpg', rgb, quality=bad)
    assert str(e.value) == f'quality must be a whole number from 1 to 100, got {bad!r}'
  image_lib.save_image(tmp_path / 'n.jpg', rgb, quality=np.int64(90))  # numpy's failed in Pillow
  assert sorted(p.name for p in tmp_path.iterdir()) == ['n.jpg', 'q100.avif', 'q30.avif']
