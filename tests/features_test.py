"""Tests for nst_jax.runs.features.extract_features: named activations of RGB images.

The oracle is weight_files.numpy_vgg19, a float64 numpy forward pass of the
same random weights, fed the input convention's preprocessing written out.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import weight_files

import nst_jax
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
  for odd in (3, None):  # the message's join raised "expected str instance, int found" (trial 13)
    with pytest.raises(errors.ConfigError) as e:
      extract_features(caffe_npz, rgb, ['relu1_1', odd])
    assert str(e.value).startswith(
      f"layer names must be strings such as 'relu4_2', got {odd!r}; valid names are: conv1_1, "
    )
  for bad in (rgb[..., :2], rgb[None, None], rgb[0]):
    with pytest.raises(ValueError, match=rf'got shape \({", ".join(map(str, bad.shape))},?\)'):
      extract_features(caffe_npz, bad, ['relu1_1'])


def test_the_image_given_where_the_weights_go_names_the_order(caffe_npz):
  """extract_features(rgb, weights, 'relu1_1') said 'expected str, bytes or os.PathLike'."""
  rgb = _image(16, 16)
  with pytest.raises(errors.ArgumentError) as e:
    extract_features(rgb, caffe_npz, 'relu1_1')
  assert str(e.value) == (
    'extract_features got an array of shape (16, 16, 3) as weights; the order is '
    'extract_features(weights, image, layers)'
  )
  assert extract_features(caffe_npz, rgb, 'relu1_1')['relu1_1'].shape == (16, 16, 64)


def test_a_model_and_its_params_as_the_step_takes_them():
  """random_scaled_params of VGGTiny's shape, with model= (VGG-19's network refused them)."""
  params = nst_jax.random_scaled_params(0, stage_sizes=(1, 2), widths=(4, 8))
  rgb, tiny = _image(16, 20, seed=8), nst_jax.VGGTiny()
  feats = extract_features(params, rgb, 'relu2_2', model=tiny, convention='caffe')
  want = tiny.apply({'params': params}, nst_jax.preprocess(rgb[None], 'caffe'), ('relu2_2',))
  # Jitted against eager, on values up to about 200: float32 rounding.
  np.testing.assert_allclose(feats['relu2_2'], want['relu2_2'][0], atol=1e-3)
  cases = (
    ({'model': tiny, 'dtype': 'bfloat16'}, 'extract_features got model= and pooling= or dtype=, '
     'which the model has already; give one: model=nst_jax.make_model(pooling=..., dtype=...)'),
    ({}, "params['conv1_1']['kernel'] has shape (3, 3, 3, 4), but the model's is (3, 3, 3, 64); "
     "pass the model the params are for (nst_jax.make_model() for VGG-19's, nst_jax.VGGTiny() "
     'for random_scaled_params(stage_sizes=(1, 2), widths=(4, 8)))'),
    ({'model': tiny, 'layers': 'relu3_1'}, 'unknown layer name(s) relu3_1; valid names are: '
     'conv1_1, relu1_1, pool1, conv2_1, relu2_1, conv2_2, relu2_2, pool2'),
  )  # fmt: skip
  for kwargs, message in cases:
    kwargs = {'layers': 'relu2_2', 'convention': 'caffe', **kwargs}
    with pytest.raises(errors.ConfigError) as e:
      extract_features(params, rgb, **kwargs)
    assert str(e.value) == message


def test_bfloat16_named_by_jax_type_as_by_string(caffe_npz):
  rgb = _image(16, 16, seed=9)
  by_name = extract_features(caffe_npz, rgb, 'relu1_1', dtype='bfloat16')['relu1_1']
  by_type = extract_features(caffe_npz, rgb, 'relu1_1', dtype=jnp.bfloat16)['relu1_1']  # KeyError
  assert by_type.dtype == jnp.bfloat16
  np.testing.assert_array_equal(by_type, by_name)


def test_layers_none_is_every_layer_and_a_second_convention_is_refused(caffe_npz):
  rgb = _image(32, 32)
  weights = weights_lib.load_weights(caffe_npz)
  every = extract_features(weights, rgb, None)
  # Every layer, in network order as model.apply gives them (jit had sorted them).
  assert list(every) == list(nst_jax.core.vgg.layer_names((2, 2, 4, 4, 4)))
  assert list(every)[:4] == ['conv1_1', 'relu1_1', 'conv1_2', 'relu1_2']
  assert list(extract_features(weights, rgb, ['relu3_1', 'conv1_1'])) == ['conv1_1', 'relu3_1']
  np.testing.assert_array_equal(
    every['relu2_1'], extract_features(weights, rgb, 'relu2_1')['relu2_1']
  )
  cases = (
    ((), "extract_features got no layers; name some, e.g. 'relu4_2' or ('relu1_1', 'relu2_1'), "
     'or pass None for every layer'),
    ('relu1_1', "extract_features got convention='torchvision' with weights whose convention "
     "is 'caffe'; drop convention= (the Weights carry theirs), or pass weights.params with "
     'convention='),
  )  # fmt: skip
  for layers, message in cases:
    with pytest.raises(errors.ConfigError) as e:
      extract_features(weights, rgb, layers, convention=None if layers == () else 'torchvision')
    assert str(e.value) == message
  same = extract_features(weights, rgb, 'relu1_1', convention='caffe')['relu1_1']
  np.testing.assert_array_equal(same, every['relu1_1'])
