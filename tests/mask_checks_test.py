"""The rule for guidance masks given as arrays (nst_jax.core.mask_checks)."""

import numpy as np
import pytest

from nst_jax import errors
from nst_jax.core import mask_checks


def _labels(values, tile: int = 4) -> np.ndarray:
  """A uint8 map of `values` in tile x tile squares, as a label map's regions."""
  cols = int(np.ceil(np.sqrt(len(values))))
  grid = np.resize(np.asarray(values, np.uint8), (-(-len(values) // cols), cols))
  return np.kron(grid, np.ones((tile, tile), np.uint8))


def test_a_label_map_is_refused_however_many_labels_it_holds():
  """Trials 16, 17: VOC's classes with 255 on the boundaries passed as weights label/255."""
  for values, held in (
    ([0, 7, 15, 20, 255], '3 grey levels from 7 to 20 besides 255'),
    ([0, 1, 255], 'grey level 1 besides 255'),  # one class and the boundary
    (range(40), '39 grey levels from 1 to 39'),
  ):
    with pytest.raises(errors.ConfigError) as e:
      mask_checks.mask_float(_labels(values), 'content_mask')
    assert str(e.value) == (
      f'content_mask is uint8 with {held} and none brighter: if it holds labels, give the region '
      'of label k: (labels == k).astype(np.float32); if its values are weights, give them as '
      'floats in [0, 1]: m / 255'
    )


def test_soft_and_antialiased_uint8_masks_are_weights():
  soft = np.linspace(0, 255, 256).astype(np.uint8).reshape(16, 16)  # a gradient: every level
  np.testing.assert_array_equal(mask_checks.mask_float(soft, 'm'), soft / np.float32(255))
  edge = _labels([0, 255], tile=8)
  edge[3, 3], edge[4, 4] = 37, 180  # grey pixels along an edge
  np.testing.assert_array_equal(mask_checks.mask_float(edge, 'm'), edge / np.float32(255))
  bright = _labels([0, 64, 200, 255])  # grey levels above any label
  np.testing.assert_array_equal(mask_checks.mask_float(bright, 'm'), bright / np.float32(255))
  # A 0/255 mask resized: one grey level on the edge, never a region (trial 18 found 42 refused).
  half = np.zeros((48, 64), np.uint8)
  half[:, 33:] = 255
  half[:, 32] = 42
  np.testing.assert_array_equal(mask_checks.mask_float(half, 'm'), half / np.float32(255))
  # A weak graded mask reads as labels would, so it is refused naming m / 255 (trial 17).
  with pytest.raises(errors.ConfigError, match=r'give them as floats in \[0, 1\]: m / 255$'):
    mask_checks.mask_float(_labels([0, 25, 51]), 'm')
  weak = _labels([0, 25, 51]) / np.float32(255)
  np.testing.assert_array_equal(mask_checks.mask_float(weak, 'm'), weak)


def test_whole_numbers_outside_the_range_are_told_both_readings():
  """Trial 17: an argmax label map (int64) was told 'scale it into [0, 1]'."""
  for labels, weights in (
    (np.arange(21)[None], 'm / 255'),
    (np.array([[-1, 0, 3]]), 'm / 255'),  # -1: an ignored pixel (trial 18: 'scale it')
    (np.array([[0.0, 300.0]]), 'm / m.max()'),
  ):
    with pytest.raises(errors.ConfigError) as e:
      mask_checks.mask_range(mask_checks.mask_float(labels, 'm'), 'm')
    assert str(e.value).endswith(
      '(labels == k).astype(np.float32); if its values are weights, give them as floats in '
      f'[0, 1]: {weights}'
    )


def test_masks_must_be_finite_and_in_range():
  for bad in (np.nan, np.inf):
    with pytest.raises(errors.ConfigError) as e:
      mask_checks.mask_range(np.array([[0.0, bad]]), 'style_masks')
    assert str(e.value) == 'style_masks has NaN or infinite values; masks are finite, in [0, 1]'
  mask_checks.mask_range(np.array([[0.0, 1.0]]), 'm')  # the edges are in
  with pytest.raises(errors.ConfigError, match=r'^m has values from -0\.5 to 1; masks are in'):
    mask_checks.mask_range(np.array([[-0.5, 1.0]]), 'm')


def test_per_image_masks_share_one_mask_or_take_one_each():
  one = np.zeros((4, 4), np.float32)
  got = mask_checks.per_image(one, 3, 2, (4, 4), 'content_mask')
  assert len(got) == 3 and all(np.array_equal(m, one) for m in got)
  each = np.stack([one, one + 1])
  np.testing.assert_array_equal(mask_checks.per_image(each, 2, 2, (4, 4), 'content_mask')[1], 1)
  assert mask_checks.per_image(None, 2, 2, (4, 4), 'content_mask') == [None, None]
  with pytest.raises(errors.ConfigError, match=r'^content_mask has shape \(3, 4, 4\); give'):
    mask_checks.per_image(np.zeros((3, 4, 4)), 2, 2, (4, 4), 'content_mask')


def test_masks_of_several_sizes_are_one_line():
  """Trial 35 Z8: a list of masks, each at its own style's size, was numpy's 'inhomogeneous'."""
  masks = [np.ones((16, 24), np.float32), np.ones((12, 12), np.float32)]
  with pytest.raises(errors.ConfigError) as e:
    mask_checks.mask_size(masks, (2, 16, 24), 'style_masks')
  assert str(e.value).startswith('style_masks holds masks of several shapes ((16, 24), (12, 12)); ')
  assert "each is at the content's size: give one mask per style, [S, H, W] = [2, 16, 24]" in str(
    e.value
  )
