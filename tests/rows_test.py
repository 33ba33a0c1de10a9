"""Tests for nst_jax.engine.rows: a row's host arrays and what each stage makes of them."""

import dataclasses

import numpy as np

from nst_jax import config as config_lib
from nst_jax.core import pixels
from nst_jax.engine import rows

# Y of YIQ (NTSC luma, ITU-R BT.601): the weights of R, G and B.
LUMA = np.array([0.299, 0.587, 0.114])
# The Caffe VGG mean pixel, (B, G, R) (nst_jax.io.images.CAFFE).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def _uniform(seed, shape, low=0.0, high=1.0):
  return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _row(**kw):
  content = _uniform(0, (12, 16, 3), 0.2, 0.6)
  styles = [_uniform(1, (20, 24, 3)), _uniform(2, (10, 8, 3), 0.5, 0.9)]
  return rows.Row(content=content, styles=styles, **kw)


def test_filler_row_is_grey_content_under_seeded_noise():
  row = rows.filler_row(6, 10, seed=3)
  np.testing.assert_array_equal(row.content, np.full((6, 10, 3), 0.5, np.float32))
  (style,) = row.styles
  np.testing.assert_array_equal(style, _uniform(3, (6, 10, 3)))
  assert row.content.dtype == style.dtype == np.float32
  assert (row.content_mask, row.style_masks, row.init_rgb, row.checkpoint) == (None,) * 4


def test_scaled_rounds_and_never_reaches_zero():
  assert rows.scaled(48, 64, 1 / np.sqrt(2)) == (34, 45)  # 33.94, 45.25
  assert rows.scaled(30, 40, 0.7) == (21, 28)
  assert rows.scaled(3, 1, 0.1) == (1, 1)
  assert rows.scaled(7, 9, 1.0) == (7, 9)


def test_resize_keeps_an_image_of_the_size_and_preserves_constants():
  x = _uniform(4, (8, 10, 3))
  assert rows.resize(x, 8, 10) is x  # nothing to do: the same array
  grey = np.full((8, 10, 3), 0.25, np.float32)
  out = rows.resize(grey, 5, 7)
  assert out.shape == (5, 7, 3) and isinstance(out, np.ndarray)
  np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_resize_masks_resizes_the_last_two_axes_and_clips():
  assert rows.resize_masks(None, 4, 4) is None
  m = np.zeros((2, 8, 8), np.float32)
  m[0, :, :4] = 1.0  # left half
  m[1] = 1.0 - m[0]
  assert rows.resize_masks(m, 8, 8) is m
  out = rows.resize_masks(m, 4, 6)
  assert out.shape == (2, 4, 6)
  # Bicubic overshoots at the edge; the masks stay weights in [0, 1].
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_allclose(out[:, :, 0], [[1.0] * 4, [0.0] * 4], atol=1e-6)
  np.testing.assert_allclose(out[:, :, -1], [[0.0] * 4, [1.0] * 4], atol=1e-6)
  # The two masks are mirror images, and so are their resized copies.
  np.testing.assert_allclose(out[0, :, ::-1], out[1], atol=1e-6)


def test_luminance_rows_are_grey_with_the_styles_matched_to_the_content():
  init = _uniform(5, (12, 16, 3))
  row = _row(init_rgb=init)
  out = rows.prepare_colors(row, config_lib.ColorConfig(preserve_colors='luminance'))
  y_content = row.content @ LUMA
  np.testing.assert_allclose(out.content, np.repeat(y_content[..., None], 3, -1), atol=1e-6)
  np.testing.assert_allclose(out.init_rgb, np.repeat((init @ LUMA)[..., None], 3, -1), atol=1e-6)
  for style, grey in zip(row.styles, out.styles, strict=True):
    assert grey.shape == style.shape
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)
    # Y' = (Y - mu) sigma_c / sigma + mu_c: the content's mean and spread.
    y = style @ LUMA
    want = (y - y.mean()) * y_content.std() / y.std() + y_content.mean()
    np.testing.assert_allclose(grey[..., 0], want, atol=1e-5)
  np.testing.assert_array_equal(row.content, _row().content)  # the input row is not changed


def test_histogram_rows_match_the_styles_colours_and_keep_the_content():
  row = _row()
  out = rows.prepare_colors(
    row, config_lib.ColorConfig(preserve_colors='histogram', color_match='pca')
  )
  assert out.content is row.content
  mu = row.content.reshape(-1, 3).mean(0)
  cov = np.cov(row.content.reshape(-1, 3).T, bias=True)
  for style in out.styles:
    flat = style.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(flat.mean(0), mu, atol=1e-4)
    np.testing.assert_allclose(np.cov(flat.T, bias=True), cov, atol=1e-4)


def test_without_a_colour_control_the_row_is_the_same():
  row = _row()
  for mode in ('none', 'postprocess'):  # postprocess acts after the optimisation
    assert rows.prepare_colors(row, config_lib.ColorConfig(preserve_colors=mode)) is row


def test_stage_inputs_are_resized_and_preprocessed():
  mask = np.ones((12, 16), np.float32)
  row = dataclasses.replace(_row(), content_mask=mask, style_masks=np.stack([mask, 0 * mask]))
  content, styles, cmask, smasks = rows.stage_inputs(row, 9, 12, 0.75, pixels.CAFFE)
  assert content.shape == (1, 9, 12, 3)
  # Each style shrinks by the content's ratio: 20x24 -> 15x18, 10x8 -> 8x6 (7.5 rounds to 8).
  assert [s.shape for s in styles] == [(1, 15, 18, 3), (1, 8, 6, 3)]
  assert cmask.shape == (9, 12) and smasks.shape == (2, 9, 12)
  np.testing.assert_allclose(smasks[0], 1.0, atol=1e-6)
  np.testing.assert_allclose(smasks[1], 0.0, atol=1e-6)
  # The Caffe network space: BGR, 0..255, minus the mean pixel.
  rgb = rows.resize(row.content, 9, 12)
  want = rgb[..., ::-1] * 255.0 - CAFFE_MEAN_BGR
  np.testing.assert_allclose(np.asarray(content)[0], want, atol=1e-3)
  # At the output's size nothing is resized.
  full, (style0, _), _, _ = rows.stage_inputs(row, 12, 16, 1.0, pixels.CAFFE)
  np.testing.assert_allclose(
    np.asarray(style0)[0], row.styles[0][..., ::-1] * 255.0 - CAFFE_MEAN_BGR, atol=1e-3
  )
  np.testing.assert_allclose(
    np.asarray(full)[0], row.content[..., ::-1] * 255.0 - CAFFE_MEAN_BGR, atol=1e-3
  )
