"""Tests for nst_jax.io.weights: conversion of every layout, loading, download."""

import dataclasses
import hashlib
import os
import pickle

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
import weight_files

import nst_jax
from nst_jax import errors
from nst_jax import extract_features
from nst_jax.core import vgg
from nst_jax.io import weight_checks
from nst_jax.io import weight_formats
from nst_jax.io import weights as weights_lib

ALL_LAYERS = tuple(
  n for n in vgg.layer_names(vgg.VGG19_STAGE_SIZES) if not n.startswith('pool')
) + ('pool1', 'pool2', 'pool3', 'pool4', 'pool5')


def _image(h=37, w=53, n=None, seed=0):
  rng = np.random.default_rng(seed)
  shape = (h, w, 3) if n is None else (n, h, w, 3)
  return rng.uniform(0.0, 1.0, shape).astype(np.float32)


def _write(kind, path, params):
  if kind == 'keras1':
    weight_files.write_keras_h5(path, params, keras_version=1)
  elif kind == 'keras2_top':
    weight_files.write_keras_h5(path, params, keras_version=2, include_top=True)
  elif kind == 'pth':
    weight_files.write_pth(path, weight_files.torchvision_state(params, include_classifier=True))
  elif kind == 'safetensors':
    weight_files.write_safetensors(path, weight_files.torchvision_state(params))


# Misleading suffixes on purpose: the format must come from the content.
ROUTES = [
  ('keras1', 'weights.h5', 'caffe', weight_files.caffe_preprocess),
  ('keras2_top', 'weights.bin', 'caffe', weight_files.caffe_preprocess),
  ('pth', 'weights.h5', 'torchvision', weight_files.torchvision_preprocess),
  ('safetensors', 'weights.pth', 'torchvision', weight_files.torchvision_preprocess),
]


@pytest.mark.parametrize('kind,filename,convention,prep', ROUTES, ids=[r[0] for r in ROUTES])
def test_features_match_numpy_reference(tmp_path, random_params, kind, filename, convention, prep):
  src = tmp_path / filename
  _write(kind, src, random_params)
  flat, info = weights_lib.convert(src)
  assert info.convention == convention
  assert info.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
  assert sorted({k.split('/')[0] for k in flat}) == sorted(
    n for n, _, _, _ in weight_files.conv_layers()
  )
  npz = tmp_path / 'vgg19.npz'
  weights_lib.save_npz(npz, flat, info)

  # An odd, non-square image pins padding and floor pooling at odd sizes.
  rgb = _image(37, 53)
  feats = extract_features(npz, rgb, ALL_LAYERS)
  expected = weight_files.numpy_vgg19(random_params, prep(rgb)[None])
  for name in ALL_LAYERS:
    assert feats[name].shape == expected[name].shape[1:], name
    err = weight_files.relative_error(feats[name], expected[name][0])
    assert err < 1e-5, f'{name}: relative error {err:.2e}'
  assert feats['pool5'].shape == (1, 1, 512)  # 37x53 -> 18x26 -> 9x13 -> 4x6 -> 2x3 -> 1x1


def test_keras_and_torchvision_routes_agree(tmp_path, random_params):
  """Same network, two layouts and two input conventions, same features.

  The torchvision file holds the Keras kernels transposed to [out, in, kH,
  kW] with conv1_1's input channels reversed (torchvision nets read RGB,
  Caffe nets BGR). Feeding the Keras route `rgb` and the torchvision route
  rgb' = std * (255 * rgb - mean_caffe_rgb) + mean_tv makes both networks see
  the same input up to that channel order, so every feature must agree.
  """
  h5 = tmp_path / 'k.h5'
  weight_files.write_keras_h5(h5, random_params)
  tv_params = dict(random_params)
  kernel, bias = random_params['conv1_1']
  tv_params['conv1_1'] = (np.ascontiguousarray(kernel[:, :, ::-1, :]), bias)
  st = tmp_path / 'tv.safetensors'
  weight_files.write_safetensors(st, weight_files.torchvision_state(tv_params))
  npz_k, npz_t = tmp_path / 'k.npz', tmp_path / 't.npz'
  weights_lib.save_npz(npz_k, *weights_lib.convert(h5))
  weights_lib.save_npz(npz_t, *weights_lib.convert(st))

  rgb = _image(33, 41, seed=5).astype(np.float64)
  caffe_mean_rgb = np.array([123.68, 116.779, 103.939])
  tv_mean, tv_std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  rgb_tv = tv_std * (255.0 * rgb - caffe_mean_rgb) + tv_mean
  layers = ('conv1_1', 'relu2_2', 'relu3_1', 'relu4_2', 'relu5_1')
  fk = extract_features(npz_k, rgb, layers)
  # rgb_tv lies outside [0, 1], which extract_features and preprocess
  # refuse: torchvision's preprocessing written out, then the library's network.
  w_t = weights_lib.load_weights(npz_t)
  assert w_t.info.input_convention.name == 'torchvision'
  x_t = jnp.asarray((rgb_tv - tv_mean) / tv_std, jnp.float32)
  ft = nst_jax.network_features(x_t, w_t.params, model=nst_jax.make_model(), layers=layers)
  for name in layers:
    err = weight_files.relative_error(ft[name], fk[name])
    assert err < 1e-5, f'{name}: {err:.2e}'


def test_input_convention_override(tmp_path, random_params):
  # jcjohnson's vgg19-d01eb7cb.pth: torchvision keys, Caffe input convention.
  pth = tmp_path / 'vgg19-d01eb7cb.pth'
  weight_files.write_pth(pth, weight_files.torchvision_state(random_params))
  flat, info = weights_lib.convert(pth, convention='caffe')
  assert (info.convention, info.source_format) == ('caffe', 'torch_pth')
  npz = tmp_path / 'w.npz'
  weights_lib.save_npz(npz, flat, info)
  rgb = _image(16, 16, seed=6)
  got = extract_features(npz, rgb, ['relu3_1'])['relu3_1']
  expected = weight_files.numpy_vgg19(random_params, weight_files.caffe_preprocess(rgb)[None])
  assert weight_files.relative_error(got, expected['relu3_1'][0]) < 1e-5


def test_loaded_weights_carry_metadata(caffe_npz, random_params):
  w = weights_lib.load_weights(caffe_npz)
  assert w.info.convention == 'caffe'
  assert w.info.source == 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5'
  assert w.info.source_format == 'keras_h5'
  np.testing.assert_array_equal(w.params['conv3_2']['kernel'], random_params['conv3_2'][0])
  with np.load(caffe_npz, allow_pickle=False) as npz:
    assert 'conv5_4/kernel' in npz.files
    assert npz['conv1_1/kernel'].shape == (3, 3, 3, 64)


def test_a_file_is_published_only_if_its_hash_is_the_published_ones(
  tmp_path, caffe_npz, random_params, monkeypatch, caplog
):
  # Random weights written in the published layout, under the published name:
  # they convert and run, but nothing records them as VGG-19's.
  w = weights_lib.get_weights(caffe_npz)
  h5_md5 = w.info.provenance.split()[2].rstrip(',')
  assert w.info.provenance == (
    f"unverified: MD5 {h5_md5}, not the published Keras file's {weights_lib.KERAS_MD5}"
  )
  assert not w.info.published
  assert f'{caffe_npz}: not the published VGG-19 weights (unverified: MD5' in caplog.text
  # A file whose hash is the published one (here: the published hash made this file's).
  h5 = tmp_path / weights_lib.KERAS_FILENAME
  weight_files.write_keras_h5(h5, random_params)
  monkeypatch.setattr(weights_lib, 'KERAS_MD5', weight_checks.file_digest(h5, 'md5'))
  _, info = weights_lib.convert(h5)
  assert info.provenance == 'published' and info.published
  # safetensors has no published file to compare with.
  st = tmp_path / 'w.safetensors'
  weight_files.write_safetensors(st, weight_files.torchvision_state(random_params))
  _, info = weights_lib.convert(st)
  assert info.provenance == 'unverified: safetensors has no published file to compare with'


def test_an_npz_converted_before_provenance_loads_and_says_so(tmp_path, caffe_npz):
  with np.load(caffe_npz) as npz:
    arrays = {k: npz[k] for k in npz.files if k != '__meta__/provenance'}
  np.savez(tmp_path / 'older.npz', **arrays)
  info = weights_lib.load_weights(tmp_path / 'older.npz').info
  assert info.provenance == '' and not info.published


def test_default_path_is_relative_to_project(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  assert weights_lib.resolve_weights_path() == weight_formats.PROJECT_ROOT / 'weights' / 'vgg19.npz'
  monkeypatch.setenv('NST_JAX_WEIGHTS', str(tmp_path / 'env.npz'))
  assert weights_lib.resolve_weights_path() == tmp_path / 'env.npz'
  assert weights_lib.resolve_weights_path('x.npz').name == 'x.npz'


def test_missing_explicit_path_never_downloads(tmp_path):
  suggestion = r'does not exist; run: nst_jax\.io\.download\.fetch_and_convert\('
  with pytest.raises(errors.WeightsError, match=suggestion):
    weights_lib.get_weights(tmp_path / 'typo.npz')


def test_a_missing_weights_file_names_where_its_path_came_from(tmp_path, monkeypatch):
  """It said '(model.weights)' for a path given to load_weights or taken from the variable."""
  missing = tmp_path / 'x.npz'
  fetch = f'run: nst_jax.io.download.fetch_and_convert({str(missing)!r})'
  cases = [
    (lambda: weights_lib.load_weights(missing), 'path='),
    (lambda: weights_lib.get_weights(missing), 'path='),
    (lambda: weights_lib.get_weights(missing, given_as='model.weights'), 'model.weights'),
    (lambda: weights_lib.as_weights(missing), 'weights='),
  ]
  for load, origin in cases:
    with pytest.raises(errors.WeightsError) as e:
      load()
    assert str(e.value) == f'weights file {missing} ({origin}) does not exist; {fetch}'
  monkeypatch.setenv(weights_lib.WEIGHTS_ENV, str(missing))
  for load in (weights_lib.load_weights, weights_lib.get_weights, weights_lib.as_weights):
    with pytest.raises(errors.WeightsError) as e:
      load(None)
    assert str(e.value) == f'weights file {missing} ($NST_JAX_WEIGHTS) does not exist; {fetch}'


def test_directory_as_weights_names_a_file_in_it(tmp_path, caffe_npz):
  # The suggested command writes a file in the directory (the converter
  # refuses a directory as its output); then the line names that file.
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.get_weights(tmp_path)
  assert str(e.value) == (
    f'weights file {tmp_path} (path=) is a directory; run: '
    f'nst_jax.io.download.fetch_and_convert({str(tmp_path / "vgg19.npz")!r})'
  )
  (tmp_path / 'vgg19.npz').write_bytes(caffe_npz.read_bytes())
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.get_weights(tmp_path)
  inside = tmp_path / 'vgg19.npz'
  assert (
    str(e.value)
    == f'weights file {tmp_path} (path=) is a directory; use the converted file in it, '
    f'{inside}'
  )
  # Trial 34 Y15: a pipe (or /dev/null) 'did not exist', and the converter was offered onto it.
  os.mkfifo(tmp_path / 'w.npz')
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.get_weights(tmp_path / 'w.npz')
  assert str(e.value) == (
    f'weights file {tmp_path / "w.npz"} (path=) is not a regular file (a pipe, socket or '
    'device); name a converted .npz file'
  )


# ---------------------------------------------------------------------------
# Bad files: one line naming the problem and, where there is one, the layer.


def _one_line(exc_info) -> str:
  message = str(exc_info.value)
  assert '\n' not in message
  return message


def test_not_a_weights_file(tmp_path):
  bad = tmp_path / 'weights.h5'
  bad.write_text('this is not HDF5 at all\n')
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(bad)
  assert 'is not a Keras .h5, PyTorch .pth or .safetensors' in _one_line(e)


def test_missing_layer(tmp_path, random_params):
  h5 = tmp_path / 'w.h5'
  weight_files.write_keras_h5(h5, random_params)
  with h5py.File(h5, 'a') as f:  # drop block3_conv3 from the layer list
    names = [n for n in f.attrs['layer_names'] if n != b'block3_conv3']
    f.attrs['layer_names'] = np.array(names)
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(h5)
  assert 'missing conv3_3/bias, conv3_3/kernel' in _one_line(e)


def test_wrong_shape(tmp_path, random_params):
  params = dict(random_params)
  params['conv2_1'] = (np.zeros((3, 3, 64, 100), np.float32), np.zeros(100, np.float32))
  st = tmp_path / 'w.safetensors'
  weight_files.write_safetensors(st, weight_files.torchvision_state(params))
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(st)
  msg = _one_line(e)
  assert 'conv2_1/kernel has shape (3, 3, 64, 100), expected (3, 3, 64, 128)' in msg


def test_unexpected_layers(tmp_path, random_params):
  state = weight_files.torchvision_state(random_params)
  state['features.36.weight'] = np.zeros((8, 512, 3, 3), np.float32)
  st = tmp_path / 'w.safetensors'
  weight_files.write_safetensors(st, state)
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(st)
  assert 'unexpected keys features.36.weight' in _one_line(e)

  h5 = tmp_path / 'w.h5'
  weight_files.write_keras_h5(h5, random_params)
  with h5py.File(h5, 'a') as f:
    g = f.create_group('block6_conv1')
    g.attrs['weight_names'] = np.array([b'block6_conv1_W_1:0'])
    g.create_dataset('block6_conv1_W_1:0', data=np.zeros((3, 3, 1, 1), np.float32))
    f.attrs['layer_names'] = np.array(list(f.attrs['layer_names']) + [b'block6_conv1'])
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(h5)
  assert "unexpected layer 'block6_conv1'" in _one_line(e)


# Keras files that are not the published one: each damage done to a generated
# file in the published layout, and the problem the one line must name.
NOT_NOTOP = (
  'this is not the published VGG-19 notop file: fetch and convert that with '
  'nst_jax.io.download.fetch_and_convert()'
)


DAMAGED = (
  'the file is damaged: fetch and convert the published one with '
  'nst_jax.io.download.fetch_and_convert()'
)


def _drop_group(f):
  del f['block3_conv3']  # still listed in layer_names


def _drop_dataset(f):
  del f['block2_conv1/block2_conv1_W_1:0']  # still listed in weight_names


def _replace_dataset(name, data):
  def change(f):
    del f[name]
    f.create_dataset(name, data=data)

  return change


def _one_weight_name(f):
  f['block4_conv2'].attrs['weight_names'] = np.array([b'block4_conv2_W_1:0'])


def _group_for_dataset(f):
  del f['block1_conv1/block1_conv1_W_1:0']
  f.create_group('block1_conv1/block1_conv1_W_1:0')


KERAS_DAMAGE = {
  'missing-group': (
    _drop_group,
    'layer block3_conv3 is listed in layer_names but has no group',
  ),
  'missing-dataset': (
    _drop_dataset,
    'block2_conv1/block2_conv1_W_1:0, listed in weight_names, is missing',
  ),
  'wrong-shape-bias': (
    _replace_dataset('block4_conv2/block4_conv2_b_1:0', np.zeros(3, np.float32)),
    'block4_conv2/block4_conv2_b_1:0 has shape (3,), expected (512,) for conv4_2/bias',
  ),
  'wrong-shape-kernel': (
    _replace_dataset('block5_conv4/block5_conv4_W_1:0', np.zeros((512, 512, 3, 3), np.float32)),
    'block5_conv4/block5_conv4_W_1:0 has shape (512, 512, 3, 3), expected (3, 3, 512, 512) '
    'for conv5_4/kernel',
  ),
  'one-weight-name': (
    _one_weight_name,
    'layer block4_conv2 lists 1 weights, expected a kernel and a bias',
  ),
  'group-not-dataset': (
    _group_for_dataset,
    'block1_conv1/block1_conv1_W_1:0, listed in weight_names, is not a dataset',
  ),
  'strings': (
    _replace_dataset('block1_conv2/block1_conv2_b_1:0', np.array([b'x'] * 64)),
    'block1_conv2/block1_conv2_b_1:0 holds |S1 values, not floats',
  ),
}


@pytest.mark.parametrize('damage', KERAS_DAMAGE)
def test_keras_file_unlike_the_published_one(tmp_path, random_params, damage):
  change, problem = KERAS_DAMAGE[damage]
  h5 = tmp_path / 'w.h5'
  weight_files.write_keras_h5(h5, random_params)
  with h5py.File(h5, 'a') as f:
    change(f)
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(h5)
  assert _one_line(e) == f'{h5}: {problem}; {NOT_NOTOP}'


def test_keras2_nested_dataset_missing(tmp_path, random_params):
  h5 = tmp_path / 'w.h5'
  weight_files.write_keras_h5(h5, random_params, keras_version=2)
  with h5py.File(h5, 'a') as f:
    del f['block3_conv1/block3_conv1/bias:0']
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(h5)
  problem = 'block3_conv1/block3_conv1/bias:0, listed in weight_names, is missing'
  assert _one_line(e) == f'{h5}: {problem}; {NOT_NOTOP}'


@pytest.mark.parametrize('signature', [b'TREE', b'HEAP', b'SNOD'])
def test_keras_file_with_damaged_structure(tmp_path, random_params, signature):
  # A B-tree, local heap or symbol table node whose signature was
  # overwritten, as a bad disk or transfer leaves it: h5py raises KeyError,
  # RuntimeError or OSError from deep inside; the user gets one line.
  h5 = tmp_path / 'w.h5'
  weight_files.write_keras_h5(h5, random_params)
  data = bytearray(h5.read_bytes())
  at = data.index(signature)
  data[at : at + 4] = b'XXXX'
  h5.write_bytes(bytes(data))
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(h5)
  message = _one_line(e)
  assert message.startswith(f'{h5}: HDF5 error (')
  assert message.endswith(f'); {DAMAGED}')


def _with_nan_and_inf(params):
  """`params` with 12 NaNs in conv3_2's kernel and 3 infinities in conv5_1's bias."""
  params = dict(params)
  kernel, bias = (a.copy() for a in params['conv3_2'])
  kernel.flat[1000:1012] = np.nan
  params['conv3_2'] = (kernel, bias)
  kernel, bias = (a.copy() for a in params['conv5_1'])
  bias[[0, 9, 400]] = [np.inf, -np.inf, np.inf]
  params['conv5_1'] = (kernel, bias)
  return params


@pytest.mark.parametrize('kind', ['keras1', 'keras2_top', 'pth', 'safetensors'])
def test_non_finite_weights_are_refused_at_conversion(tmp_path, random_params, kind):
  src = tmp_path / 'w.bin'
  _write(kind, src, _with_nan_and_inf(random_params))
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(src)
  assert _one_line(e) == (
    f'{src}: conv3_2/kernel holds 12 NaN values, as does 1 other tensor; {DAMAGED}'
  )


def test_non_finite_weights_are_refused_at_load(tmp_path, random_params):
  # An .npz written before conversion checked the values: its recorded hash
  # is that of the NaNs, so only the values check can tell.
  h5 = tmp_path / 'w.h5'
  weight_files.write_keras_h5(h5, random_params)
  flat, info = weights_lib.convert(h5)
  flat = dict(flat, **{'conv5_1/bias': _with_nan_and_inf(random_params)['conv5_1'][1]})
  info = dataclasses.replace(info, params_sha256=weight_checks.params_digest(flat))
  npz = tmp_path / 'vgg19.npz'
  weights_lib.save_npz(npz, flat, info)
  digest = hashlib.sha256(npz.read_bytes()).hexdigest()
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.load_weights(npz)
  assert _one_line(e) == (
    f'{npz}: conv5_1/bias holds 3 infinite values; rebuild it with: '
    f'nst_jax.io.download.fetch_and_convert({str(npz)!r})'
  )
  assert hashlib.sha256(npz.read_bytes()).hexdigest() == digest


def _tampered_npz(source, dest, **changes):
  """A copy of a converted .npz with some arrays added or replaced."""
  with np.load(source) as npz:
    arrays = {k: npz[k] for k in npz.files}
  np.savez(dest, allow_pickle=True, **{**arrays, **changes})
  return dest


def test_npz_with_extra_key_is_refused(tmp_path, caffe_npz):
  extra = {'conv6_1/kernel': np.zeros(3, np.float32)}
  bad = _tampered_npz(caffe_npz, tmp_path / 'extra.npz', **extra)
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.load_weights(bad)
  assert 'unexpected conv6_1/kernel' in _one_line(e)


def test_corrupted_values_are_caught_by_the_recorded_hash(tmp_path, caffe_npz):
  with np.load(caffe_npz) as npz:
    kernel = npz['conv3_2/kernel'].copy()
  kernel[1, 1, 7, 9] += 1e-3  # one value, valid shape and zip: only the hash can tell
  bad = _tampered_npz(caffe_npz, tmp_path / 'flipped.npz', **{'conv3_2/kernel': kernel})
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.load_weights(bad)
  msg = _one_line(e)
  assert 'is corrupt: its arrays do not match the hash recorded at conversion' in msg
  assert f'nst_jax.io.download.fetch_and_convert({str(bad)!r})' in msg


def test_old_npz_without_hash_is_refused(tmp_path, caffe_npz):
  with np.load(caffe_npz) as npz:
    arrays = {k: npz[k] for k in npz.files if k != '__meta__/params_sha256'}
  np.savez(tmp_path / 'old.npz', **arrays)
  with pytest.raises(errors.WeightsError, match=r'lacks metadata \(params_sha256\)'):
    weights_lib.load_weights(tmp_path / 'old.npz')


def test_npz_holding_a_pickle_is_refused(tmp_path, caffe_npz):
  pickled = {'conv1_1/kernel': np.array([{'evil': 1}], dtype=object)}
  bad = _tampered_npz(caffe_npz, tmp_path / 'pickled.npz', **pickled)
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.load_weights(bad)
  assert 'cannot be loaded safely' in _one_line(e)
  assert 'it may hold a pickle' in _one_line(e)


@pytest.mark.parametrize('data', [b'\xff\xd8\xff\xe0 a JPEG', b'some text\n'], ids=['jpeg', 'text'])
def test_a_file_that_is_not_an_npz_is_named_so_not_a_pickle(tmp_path, data):
  """A JPEG or text file named .npz was said to 'may hold a pickle' (trial 8)."""
  bad = tmp_path / 'w.npz'
  bad.write_bytes(data)
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.load_weights(bad)
  assert str(e.value) == (
    f'{bad} is not an .npz file (it is not a zip archive); give the converted weights '
    f'({weight_formats.CONVERT_COMMAND} writes them)'
  )


@pytest.mark.parametrize(
  'extra,problem',
  [
    (
      {'epoch': 3},
      'unexpected keys epoch; expected torchvision VGG-19 keys features.0.weight ... '
      'features.34.bias',
    ),
    (
      {'features.5.bias': 'abc'},
      'features.5.bias is a str, not a tensor; convert the published VGG-19 file with '
      f'{weight_formats.CONVERT_COMMAND}',
    ),
  ],
  ids=['epoch', 'text'],
)
def test_pth_with_values_that_are_not_tensors(tmp_path, random_params, extra, problem):
  import torch

  state = weight_files.torchvision_state(random_params)
  pth = tmp_path / 'w.pth'
  torch.save({**{k: torch.from_numpy(v) for k, v in state.items()}, **extra}, pth)
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(pth)
  assert _one_line(e) == f'{pth}: {problem}'


def test_pth_never_runs_pickled_code(tmp_path):
  marker = tmp_path / 'pwned'

  class Evil:
    def __reduce__(self):
      return (open, (str(marker), 'w'))

  bad = tmp_path / 'evil.pth'
  bad.write_bytes(pickle.dumps({'features.0.weight': Evil()}, protocol=2))
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.convert(bad)
  assert 'cannot load as a PyTorch state dict' in _one_line(e)
  assert not marker.exists()


def test_truncated_npz_is_refused(tmp_path, caffe_npz):
  bad = tmp_path / 'cut.npz'
  bad.write_bytes(caffe_npz.read_bytes()[:100_000])
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.load_weights(bad)
  assert 'rebuild it with python convert_weights.py' in _one_line(e)


@pytest.mark.parametrize(
  'params,message',
  [
    (
      {'params': {}},
      "params is wrapped as {'params': ...} (Flax's variables); pass params['params']",
    ),
    (
      [1, 2],
      "params is a list, not the layer -> {'kernel', 'bias'} dict of the network; load them: "
      'nst_jax.get_weights(path).params',
    ),
  ],
)
def test_weights_from_params_refuses_what_is_no_params_dict(params, message):
  """They were "float() argument must be ... not 'dict'" and "'list' has no attribute 'items'"."""
  with pytest.raises(errors.ConfigError) as e:
    nst_jax.Weights.from_params(params, 'caffe')
  assert str(e.value) == message


def test_params_made_in_memory_saved_for_the_command_line_name_their_file(tmp_path, caffe_npz):
  """Such files said 'params in memory' as their source in every run and record."""
  loaded = weights_lib.load_weights(caffe_npz)
  mine = nst_jax.Weights.from_params(loaded.params, 'caffe')
  assert mine.info.source == 'params in memory'
  assert sorted(mine.flat())[:2] == ['conv1_1/bias', 'conv1_1/kernel']
  weights_lib.save_npz(tmp_path / 'random.npz', mine.flat(), mine.info)
  again = weights_lib.load_weights(tmp_path / 'random.npz')
  assert again.info == dataclasses.replace(mine.info, source='random.npz')
  for layer, leaves in loaded.params.items():
    for leaf, value in leaves.items():
      np.testing.assert_array_equal(again.params[layer][leaf], value)


def test_weights_of_another_type_are_named():
  """Trial 23: weights=7 got Python's 'expected str, bytes or os.PathLike object, not int'."""
  rgb = np.full((8, 8, 3), 0.5, np.float32)
  with pytest.raises(errors.ArgumentError) as e:
    nst_jax.stylize(rgb, rgb, weights=7)
  assert str(e.value) == (
    'weights must be loaded Weights or the path of a converted .npz, got int 7; pass a path, or '
    'None for the default'
  )
  with pytest.raises(errors.ArgumentError) as e:
    nst_jax.get_weights('')
  assert str(e.value) == (
    "path must be the path of a converted .npz, got str ''; pass a path, or None for the default"
  )
  with pytest.raises(errors.ConfigError, match="model.weights must be a file's path"):
    nst_jax.ModelConfig(weights='')


def test_a_folder_or_a_cut_short_download_as_input_names_the_fix(tmp_path):
  """Trial 26: a folder 'does not exist'; cut-short .h5 and .safetensors had no fix."""
  with pytest.raises(errors.WeightsError) as e:
    weight_formats.detect_format(tmp_path)
  assert str(e.value) == f'weights file {tmp_path} is a directory; name the file in it'
  params = weight_files.random_params(seed=1)
  h5, st = tmp_path / 'w.h5', tmp_path / 'w.safetensors'
  weight_files.write_keras_h5(h5, params)
  weight_files.write_safetensors(st, weight_files.torchvision_state(params))
  for path, read in ((h5, weight_formats.read_keras_h5), (st, weight_formats.read_safetensors)):
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(errors.WeightsError) as e:
      read(path)
    assert str(e.value).startswith(str(path)) and '\n' not in str(e.value)
    assert str(e.value).endswith('; download the published file again'), str(e.value)
