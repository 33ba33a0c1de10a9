"""Every Pillow pixel mode reaches RGB in [0, 1] by its real range, or is refused in one line.

Each test writes the file it reads (with Pillow, numpy or pypng), loads it
with `load_image` and compares the pixels with values worked out by hand.
Modes that no file Pillow reads comes out in (HSV, RGBa, RGBX, I;16L,
I;16N) go through `image_modes.to_float_rgb` directly.
"""

import types

import numpy as np
from PIL import Image
import png
import pytest

from nst_jax import errors
from nst_jax.io import image_modes
from nst_jax.io import images as image_lib

PALETTE = [255, 0, 0, 0, 0, 255, 10, 20, 30]  # entries 0, 1, 2
A = 128 / 255  # the half alpha used throughout


def _saved(tmp_path, im, name, **options):
  """Saves `im`, and returns its path and the mode Pillow reads it back in."""
  path = tmp_path / name
  im.save(path, **options)
  with Image.open(path) as back:
    return path, back.mode


def _grey(values):
  return np.repeat(np.asarray(values, np.float32)[..., None], 3, axis=-1)


def _associated(path):
  """Marks a Pillow-written TIFF's alpha as premultiplied (ExtraSamples 2 -> 1)."""
  data = path.read_bytes()
  entry = b'\x52\x01\x03\x00\x01\x00\x00\x00\x02\x00'  # tag 338, SHORT, count 1, value 2
  assert data.count(entry) == 1
  path.write_bytes(data.replace(entry, entry[:-2] + b'\x01\x00'))


@pytest.mark.parametrize('suffix', ['png', 'tif'])
def test_bilevel_is_black_and_white(tmp_path, suffix):
  bits = np.array([[False, True], [True, False]])
  path, mode = _saved(tmp_path, Image.fromarray(bits), f'b.{suffix}')
  assert mode == '1'
  np.testing.assert_array_equal(image_lib.load_image(path), _grey([[0, 1], [1, 0]]))


def test_eight_bit_grey(tmp_path):
  values = np.array([[0, 1, 128, 255]], np.uint8)
  path, mode = _saved(tmp_path, Image.fromarray(values), 'g.tif')
  assert mode == 'L'
  np.testing.assert_array_equal(image_lib.load_image(path), _grey(values / np.float32(255)))


def test_palette(tmp_path):
  im = Image.new('P', (3, 1))
  im.putpalette(PALETTE)
  im.putdata([2, 0, 1])
  path, mode = _saved(tmp_path, im, 'p.png')
  assert mode == 'P'
  want = np.array([[[10, 20, 30], [255, 0, 0], [0, 0, 255]]]) / 255
  np.testing.assert_allclose(image_lib.load_image(path), want, rtol=1e-6)


def test_palette_with_transparency_is_composited_over_white(tmp_path):
  im = Image.new('P', (3, 1))
  im.putpalette(PALETTE)
  im.putdata([0, 1, 2])
  path, mode = _saved(tmp_path, im, 'p.png', transparency=bytes([255, 128, 0]))  # PNG tRNS
  assert mode == 'P'
  want = [[[1, 0, 0], [1 - A, 1 - A, 1], [1, 1, 1]]]  # opaque red, half blue, clear
  np.testing.assert_allclose(image_lib.load_image(path), want, rtol=1e-6)


def test_palette_with_alpha_is_composited_over_white(tmp_path):
  im = Image.frombytes('PA', (3, 1), bytes([0, 255, 1, 128, 2, 0]))  # (index, alpha) pairs
  im.putpalette(PALETTE)
  path, mode = _saved(tmp_path, im, 'pa.tif')
  assert mode == 'PA'
  want = [[[1, 0, 0], [1 - A, 1 - A, 1], [1, 1, 1]]]
  np.testing.assert_allclose(image_lib.load_image(path), want, rtol=1e-6)


def test_grey_with_alpha_is_composited_over_white(tmp_path):
  im = Image.fromarray(np.array([[[200, 255], [100, 128], [50, 0]]], np.uint8), 'LA')
  path, mode = _saved(tmp_path, im, 'la.png')
  assert mode == 'LA'
  want = _grey([[200 / 255, 100 / 255 * A + 1 - A, 1]])
  np.testing.assert_allclose(image_lib.load_image(path), want, rtol=1e-6)


def test_premultiplied_grey_with_alpha_adds_only_the_uncovered_white(tmp_path):
  # Premultiplied: the stored grey is already grey * alpha, so 64 at alpha
  # 128 is a grey of about 0.5, and over white it becomes 64/255 + (1 - A).
  im = Image.fromarray(np.array([[[200, 255], [64, 128], [0, 0]]], np.uint8), 'LA')
  path = tmp_path / 'la.tif'
  im.save(path)
  _associated(path)
  with Image.open(path) as back:
    assert back.mode == 'La'
  want = _grey([[200 / 255, 64 / 255 + 1 - A, 1]])
  np.testing.assert_allclose(image_lib.load_image(path), want, rtol=1e-6)


def test_rgba_is_composited_over_white(tmp_path):
  im = Image.fromarray(np.array([[[255, 0, 0, 255], [0, 255, 0, 128], [9, 9, 9, 0]]], np.uint8))
  path, mode = _saved(tmp_path, im, 'rgba.png')
  assert mode == 'RGBA'
  want = [[[1, 0, 0], [1 - A, 1, 1 - A], [1, 1, 1]]]
  np.testing.assert_allclose(image_lib.load_image(path), want, rtol=1e-6)


def test_premultiplied_rgba_adds_only_the_uncovered_white():
  im = Image.frombytes('RGBa', (2, 1), bytes([128, 0, 64, 128, 255, 255, 255, 255]))
  want = [[[128 / 255 + 1 - A, 1 - A, 64 / 255 + 1 - A], [1, 1, 1]]]
  np.testing.assert_allclose(image_modes.to_float_rgb(im, 'x'), want, rtol=1e-6)


def test_rgbx_drops_the_padding():
  im = Image.frombytes('RGBX', (1, 1), bytes([255, 128, 0, 77]))
  np.testing.assert_allclose(image_modes.to_float_rgb(im, 'x'), [[[1, 128 / 255, 0]]], rtol=1e-6)


def test_cmyk(tmp_path):
  cmyk = np.array([[[255, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 0], [0, 255, 255, 0]]], np.uint8)
  path, mode = _saved(tmp_path, Image.fromarray(cmyk, 'CMYK'), 'c.tif')
  assert mode == 'CMYK'
  want = [[[0, 1, 1], [0, 0, 0], [1, 1, 1], [1, 0, 0]]]  # cyan, black, paper, red
  np.testing.assert_array_equal(image_lib.load_image(path), want)


def test_ycbcr_follows_the_jfif_equations(tmp_path):
  ycc = np.array([[[255, 128, 128], [76, 85, 255], [0, 128, 128], [150, 44, 21]]], np.uint8)
  path, mode = _saved(tmp_path, Image.fromarray(ycc, 'YCbCr'), 'y.tif')
  assert mode == 'YCbCr'
  y, cb, cr = (ycc[..., k].astype(np.float64) for k in range(3))
  # JFIF 1.02 (full-range BT.601), the YCbCr Pillow and JPEG use.
  want = np.stack(
    [
      y + 1.402 * (cr - 128),
      y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
      y + 1.772 * (cb - 128),
    ],
    axis=-1,
  )
  want = np.clip(want, 0, 255) / 255
  np.testing.assert_allclose(image_lib.load_image(path), want, atol=1.5 / 255)


def test_lab_greys_follow_the_cie_lightness(tmp_path):
  # L in 0..255 is L* 0..100; a and b are signed bytes (0 = neutral), as in TIFF.
  lab = np.array([[[255, 0, 0], [128, 0, 0], [0, 0, 0]]], np.uint8)
  path, mode = _saved(tmp_path, Image.fromarray(lab, 'LAB'), 'lab.tif')
  assert mode == 'LAB'
  lightness = lab[0, :, 0] / 255 * 100
  # CIE 1976 L* -> relative luminance Y, then the sRGB transfer curve.
  y = np.where(lightness > 8, ((lightness + 16) / 116) ** 3, lightness / 903.3)
  srgb = np.where(y > 0.0031308, 1.055 * y ** (1 / 2.4) - 0.055, 12.92 * y)
  np.testing.assert_allclose(image_lib.load_image(path), _grey([srgb]), atol=2 / 255)


def test_hsv():
  hsv = np.array([[[0, 255, 255], [85, 255, 255], [170, 255, 128], [0, 0, 128]]], np.uint8)
  want = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 128], [128, 128, 128]]]) / 255
  got = image_modes.to_float_rgb(Image.fromarray(hsv, 'HSV'), 'x')
  np.testing.assert_allclose(got, want, rtol=1e-6)


SIXTEEN = np.array([[0, 1, 300, 32768, 65535]], np.uint16)


@pytest.mark.parametrize(
  'name,dtype,mode',
  [('g.png', '<u2', 'I;16'), ('g.tif', '<u2', 'I;16'), ('g.tif', '>u2', 'I;16B')],
)
def test_sixteen_bit_grey_files(tmp_path, name, dtype, mode):
  im = Image.frombuffer(mode, (5, 1), SIXTEEN.astype(dtype).tobytes(), 'raw', mode, 0, 1)
  path, back = _saved(tmp_path, im, name)
  assert back == mode
  np.testing.assert_allclose(image_lib.load_image(path), _grey(SIXTEEN / 65535), rtol=1e-6)


@pytest.mark.parametrize('mode', ['I;16L', 'I;16N'])
def test_sixteen_bit_grey_in_memory(mode):
  dtype = '<u2' if mode == 'I;16L' else '=u2'
  im = Image.frombuffer(mode, (5, 1), SIXTEEN.astype(dtype).tobytes(), 'raw', mode, 0, 1)
  np.testing.assert_allclose(image_modes.to_float_rgb(im, 'x'), _grey(SIXTEEN / 65535), rtol=1e-6)


def test_sixteen_bit_grey_with_alpha_png_keeps_its_precision(tmp_path):
  # Before: refused ('operands could not be broadcast'), a valid file.
  path = tmp_path / 'la16.png'
  rows = [[1, 65535, 30000, 32768, 9, 0]]  # (grey, alpha) pairs, grey off the 8-bit grid
  with path.open('wb') as f:
    png.Writer(3, 1, greyscale=True, alpha=True, bitdepth=16).write(f, rows)
  with Image.open(path) as im:
    assert image_modes.is_png16(im)  # Pillow opens it as 8-bit RGBA
  a = 32768 / 65535
  want = _grey([[1 / 65535, 30000 / 65535 * a + 1 - a, 1]])
  np.testing.assert_allclose(image_lib.load_image(path), want, atol=1e-7)


def test_a_truncated_sixteen_bit_png_is_one_line(tmp_path):
  path = tmp_path / 'cut.png'
  rgb = np.random.default_rng(0).integers(0, 65536, (32, 32 * 3)).astype(np.uint16)
  png.from_array(rgb, 'RGB;16').save(path)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(errors.ImageError, match=f'^cannot read image {path}: .*ChunkError') as e:
    image_lib.load_image(path)
  assert '\n' not in str(e.value)


def _tiff(tmp_path, values, mode, name):
  path = tmp_path / name
  Image.fromarray(values, mode).save(path)
  with Image.open(path) as back:
    assert back.mode == mode
  return path


def test_32_bit_integers_within_16_bits_are_taken_as_16_bits(tmp_path):
  values = np.array([[0, 1, 300, 32768, 65535]], np.int32)
  path = _tiff(tmp_path, values, 'I', 'i.tif')
  np.testing.assert_allclose(image_lib.load_image(path), _grey(values / 65535), rtol=1e-6)


@pytest.mark.parametrize('values,found', [([[0, 70000]], '0 to 70000'), ([[-5, 9]], '-5 to 9')])
def test_32_bit_integers_outside_16_bits_are_refused(tmp_path, values, found):
  path = _tiff(tmp_path, np.array(values, np.int32), 'I', 'i.tif')
  with pytest.raises(errors.ImageError) as e:
    image_lib.load_image(path)
  assert str(e.value) == (
    f'image {path} is a 32-bit integer image with values from {found}, outside 0..65535; '
    'scale it to 0..65535, or save it as 8- or 16-bit'
  )


def test_floats_in_0_1_are_taken_as_they_are(tmp_path):
  # Before: a float image in [0, 1] was read as black (8-bit conversion).
  values = np.array([[0.0, 0.25, 1 / 3, 1.0]], np.float32)
  path = _tiff(tmp_path, values, 'F', 'f.tif')
  np.testing.assert_array_equal(image_lib.load_image(path), _grey(values))


@pytest.mark.parametrize(
  'values,found', [([[0.5, 2.5]], '0.5 to 2.5'), ([[-0.25, 1.0]], '-0.25 to 1')]
)
def test_floats_outside_0_1_are_refused(tmp_path, values, found):
  # Before: above 1 was read as white, below 0 as black, exit status 0.
  path = _tiff(tmp_path, np.array(values, np.float32), 'F', 'f.tif')
  with pytest.raises(errors.ImageError) as e:
    image_lib.load_image(path)
  assert str(e.value) == (
    f'image {path} is a float image with values from {found}, outside 0..1; '
    'scale it to 0..1, or save it as 8- or 16-bit'
  )


def test_floats_that_are_not_finite_are_refused(tmp_path):
  path = _tiff(tmp_path, np.array([[0.5, np.nan]], np.float32), 'F', 'nan.tif')
  with pytest.raises(errors.ImageError) as e:
    image_lib.load_image(path)
  assert str(e.value) == (
    f'image {path} is a float image with NaN or infinite values; '
    'replace them and scale it to 0..1, or save it as 8- or 16-bit'
  )


def test_masks_follow_the_same_rules(tmp_path):
  values = np.tile(np.array([[0.0, 0.5, 1.0]], np.float32), (3, 1))
  path = _tiff(tmp_path, values, 'F', 'm.tif')
  np.testing.assert_allclose(image_lib.load_mask(path, 3, 3), values, atol=1e-6)
  path = _tiff(tmp_path, values * 255, 'F', 'm255.tif')
  with pytest.raises(errors.ImageError, match=r'values from 0 to 255, outside 0\.\.1'):
    image_lib.load_mask(path, 3, 3)


def test_an_unknown_mode_is_refused_by_name():
  im = types.SimpleNamespace(mode='BGR;15')  # what a future Pillow might open
  with pytest.raises(errors.ImageError) as e:
    image_modes.to_float_rgb(im, 'old.bmp')
  assert str(e.value) == (
    'image old.bmp has pixel mode BGR;15, which nst-jax cannot read; '
    'save it as 8- or 16-bit RGB or greyscale'
  )


def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path):
  path = _tiff(tmp_path, np.array([[2.0]], np.float32), 'F', 'a\nb.tif')
  with pytest.raises(errors.ImageError) as e:
    image_lib.load_image(path)
  assert str(e.value).startswith(f'image {str(path)!r} is a float image')
  assert '\n' not in str(e.value)
  with pytest.raises(errors.ImageError) as e:
    image_lib.load_image(tmp_path / 'gone\n.png')
  assert '\n' not in str(e.value) and '\\n' in str(e.value)


def test_a_multi_page_tiff_gives_its_first_page_by_its_mode(tmp_path, caplog):
  first = Image.fromarray(np.array([[0.0, 0.75]], np.float32), 'F')
  first.save(tmp_path / 'pages.tif', save_all=True, append_images=[Image.new('L', (2, 1), 9)])
  np.testing.assert_array_equal(image_lib.load_image(tmp_path / 'pages.tif'), _grey([[0, 0.75]]))
  assert 'has 2 frames; using the first' in caplog.text


def test_an_animated_webp_gives_its_first_frame(tmp_path, caplog):
  frames = [
    Image.new('RGBA', (4, 4), (255, 0, 0, 255)),
    Image.new('RGBA', (4, 4), (0, 0, 255, 255)),
  ]
  frames[0].save(tmp_path / 'a.webp', save_all=True, append_images=frames[1:], lossless=True)
  np.testing.assert_array_equal(
    image_lib.load_image(tmp_path / 'a.webp'), np.broadcast_to([1, 0, 0], (4, 4, 3))
  )
  assert 'has 2 frames; using the first' in caplog.text


def test_a_broken_icc_profile_leaves_the_pixels_alone(tmp_path):
  values = np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)
  Image.fromarray(values).save(tmp_path / 'icc.png', icc_profile=b'not a profile')
  assert image_lib.icc_profile(tmp_path / 'icc.png') == b'not a profile'
  np.testing.assert_array_equal(
    image_lib.load_image(tmp_path / 'icc.png'), values / np.float32(255)
  )
