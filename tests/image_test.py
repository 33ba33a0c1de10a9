"""Tests for nst_jax.image: conventions, the inverse pair, file I/O."""

import jax
import numpy as np
from PIL import Image
import pytest

from nst_jax import errors
from nst_jax import image as image_lib

CONVENTIONS = [image_lib.CAFFE, image_lib.TORCHVISION]


@pytest.mark.parametrize('convention', CONVENTIONS, ids=lambda c: c.name)
def test_deprocess_inverts_preprocess(convention):
  rgb = np.random.default_rng(0).uniform(size=(2, 5, 7, 3)).astype(np.float32)
  pre = jax.jit(image_lib.preprocess, static_argnums=1)
  de = jax.jit(image_lib.deprocess, static_argnums=1)
  x = pre(rgb, convention)
  assert x.shape == (2, 5, 7, 3) and x.dtype == np.float32
  np.testing.assert_allclose(de(x, convention), rgb, atol=2e-7)
  # And the other way round, from network space.
  np.testing.assert_allclose(pre(de(x, convention), convention), x, rtol=1e-6, atol=1e-4)


def test_caffe_is_bgr_0_255_minus_mean_pixel():
  red = np.zeros((1, 1, 1, 3), np.float32)
  red[..., 0] = 1.0
  x = np.asarray(image_lib.preprocess(red, image_lib.CAFFE))[0, 0, 0]
  np.testing.assert_allclose(x, [0 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6)


def test_torchvision_is_rgb_mean_std():
  gray = np.full((1, 1, 1, 3), 0.5, np.float32)
  x = np.asarray(image_lib.preprocess(gray, image_lib.TORCHVISION))[0, 0, 0]
  want = (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(x, want, rtol=1e-6)


def test_preprocess_wants_batched_rgb():
  with pytest.raises(ValueError, match=r'expected \[N, H, W, 3\]'):
    image_lib.preprocess(np.zeros((4, 4, 3)), image_lib.CAFFE)


def test_unknown_convention():
  with pytest.raises(errors.ConfigError, match="unknown input convention 'bgr'"):
    image_lib.get_convention('bgr')


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
  rgb = np.array([[[-0.5, 0.5, 1.5]]], np.float32)
  image_lib.save_image(tmp_path / 'c.png', rgb)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'c.png')), [[[0, 128, 255]]])


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
  ],
  ids=['missing', 'directory', 'text', 'empty'],
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
