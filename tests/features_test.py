"""Tests for nst_jax.runs.features.extract_features: named activations of RGB images.

The oracle is weight_files.numpy_vgg19, a float64 numpy forward pass of the
same random weights, fed the input convention's preprocessing written out.
"""

import numpy as np
import pytest
import weight_files

from nst_jax import errors
from nst_jax import extract_features
from nst_jax.io import weights as weights_lib


def _image(h=37, w=53, n=None, seed=0):
  rng = np.random.default_rng(seed)
  shape = (h, w, 3) if n is None else (n, h, w, 3)
  return rng.uniform(0.0, 1.0, shape).astype(np.float32)


def test_batched_input_keeps_leading_dims(caffe_npz, random_params):
  rgb = _image(20, 24, n=2, seed=3)
  feats = extract_features(caffe_npz, rgb, ['relu2_1', 'conv1_1'])
  assert feats['relu2_1'].shape == (2, 10, 12, 128)
  assert feats['conv1_1'].shape == (2, 20, 24, 64)
  expected = weight_files.numpy_vgg19(random_params, weight_files.caffe_preprocess(rgb))
  for name in ('relu2_1', 'conv1_1'):
    assert weight_files.relative_error(feats[name], expected[name]) < 1e-5


def test_avg_pooling_matches_reference(caffe_npz, random_params):
  rgb = _image(19, 22, seed=4)
  feats = extract_features(caffe_npz, rgb, ['pool2', 'relu3_1'], pooling='avg')
  expected = weight_files.numpy_vgg19(
    random_params, weight_files.caffe_preprocess(rgb)[None], pooling='avg'
  )
  for name in ('pool2', 'relu3_1'):
    assert weight_files.relative_error(feats[name], expected[name][0]) < 1e-5


def test_an_unbatched_image_gives_unbatched_features(caffe_npz, random_params):
  rgb = _image(16, 18, seed=5)
  feats = extract_features(caffe_npz, rgb, ('relu1_2', 'pool1'))
  assert feats['relu1_2'].shape == (16, 18, 64) and feats['pool1'].shape == (8, 9, 64)
  expected = weight_files.numpy_vgg19(random_params, weight_files.caffe_preprocess(rgb)[None])
  for name in ('relu1_2', 'pool1'):
    assert weight_files.relative_error(feats[name], expected[name][0]) < 1e-5
  batched = extract_features(caffe_npz, rgb[None], ('relu1_2',))['relu1_2']
  np.testing.assert_array_equal(batched[0], feats['relu1_2'])


def test_the_input_convention_comes_from_the_weights(torchvision_npz, random_params):
  """The same kernels converted from torchvision: its preprocessing, not Caffe's."""
  rgb = _image(16, 16, seed=6)
  w = weights_lib.load_weights(torchvision_npz)
  assert w.info.convention == 'torchvision'
  got = extract_features(w, rgb, ['relu1_1'])['relu1_1']  # loaded Weights, or a path
  np.testing.assert_array_equal(got, extract_features(torchvision_npz, rgb, ['relu1_1'])['relu1_1'])
  prep = {
    'caffe': weight_files.caffe_preprocess,
    'torchvision': weight_files.torchvision_preprocess,
  }
  errs = {
    name: weight_files.relative_error(
      got, weight_files.numpy_vgg19(random_params, f(rgb)[None])['relu1_1'][0]
    )
    for name, f in prep.items()
  }
  assert errs['torchvision'] < 1e-5 and errs['caffe'] > 0.1, errs


def test_bfloat16_features_are_float32s_to_bfloat16_precision(caffe_npz):
  rgb = _image(16, 16, seed=7)
  f32 = extract_features(caffe_npz, rgb, ['relu2_1'])['relu2_1']
  bf16 = extract_features(caffe_npz, rgb, ['relu2_1'], dtype='bfloat16')['relu2_1']
  err = weight_files.relative_error(bf16, f32)
  assert 1e-4 < err < 2e-2, err  # bfloat16 keeps 8 bits of mantissa: rounding, not noise


def test_bad_layers_and_shapes_are_refused(caffe_npz):
  rgb = _image(16, 16)
  # Too small for the deepest layer: refused, where the network gave empty maps.
  with pytest.raises(errors.ConfigError) as e:
    extract_features(caffe_npz, _image(8, 8), ['relu5_1', 'pool5'])
  assert str(e.value) == (
    'image is 8x8 px, but pool5 needs at least 32 px on each side; give a larger image or '
    'shallower layers'
  )
  with pytest.raises(errors.ConfigError, match='unknown layer name.*relu6_1'):
    extract_features(caffe_npz, rgb, ['relu1_1', 'relu6_1'])
  for bad in (rgb[..., :2], rgb[None, None], rgb[0]):
    with pytest.raises(ValueError, match=rf'got shape \({", ".join(map(str, bad.shape))},?\)'):
      extract_features(caffe_npz, bad, ['relu1_1'])
