"""Tests for nst_jax.weights: conversion of every layout, loading, download."""

import contextlib
import hashlib
import http.server
import pickle
import socket
import threading
import time

import h5py
import numpy as np
import pytest
import weight_files

from nst_jax import errors
from nst_jax import extract_features
from nst_jax import weights as weights_lib

ALL_LAYERS = tuple(
  n
  for n in weights_lib.vgg.layer_names(weights_lib.vgg.VGG19_STAGE_SIZES)
  if not n.startswith('pool')
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
  ft = extract_features(npz_t, rgb_tv, layers)
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


def test_default_path_is_relative_to_project(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  assert weights_lib.resolve_weights_path() == weights_lib.PROJECT_ROOT / 'weights' / 'vgg19.npz'
  monkeypatch.setenv('NST_JAX_WEIGHTS', str(tmp_path / 'env.npz'))
  assert weights_lib.resolve_weights_path() == tmp_path / 'env.npz'
  assert weights_lib.resolve_weights_path('x.npz').name == 'x.npz'


def test_missing_explicit_path_never_downloads(tmp_path):
  with pytest.raises(errors.WeightsError, match='does not exist; run: python convert_weights.py'):
    weights_lib.get_weights(tmp_path / 'typo.npz')


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
  assert 'python convert_weights.py --download --output' in msg


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


# ---------------------------------------------------------------------------
# Download, from a loopback HTTP server.


class _Handler(http.server.BaseHTTPRequestHandler):
  payload = b''
  mode = 'ok'
  requests: list = []

  def log_message(self, *args):
    pass

  def do_GET(self):
    type(self).requests.append(dict(self.headers))
    if self.mode == '404':
      self.send_error(404, 'Not Found')
      return
    start = 0
    rng = self.headers.get('Range')
    if rng and self.mode == 'ok':
      start = int(rng.split('=')[1].rstrip('-'))
      self.send_response(206)
      self.send_header(
        'Content-Range', f'bytes {start}-{len(self.payload) - 1}/{len(self.payload)}'
      )
    else:
      self.send_response(200)
    body = self.payload[start:]
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    if self.mode == 'close_early':
      self.wfile.write(body[: len(body) // 2])
      self.wfile.flush()
      self.connection.shutdown(socket.SHUT_RDWR)
      return
    self.wfile.write(body)


@contextlib.contextmanager
def _serve(payload: bytes, mode: str = 'ok'):
  handler = type('H', (_Handler,), {'payload': payload, 'mode': mode, 'requests': []})
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_port}/{weights_lib.KERAS_FILENAME}', handler
  finally:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope='module')
def keras_bytes(tmp_path_factory):
  path = tmp_path_factory.mktemp('src') / 'k.h5'
  weight_files.write_keras_h5(path, weight_files.random_params(seed=1))
  return path.read_bytes()


def _npz_left(directory):
  return sorted(p.name for p in directory.iterdir() if p.suffix in ('.npz', '.h5'))


def test_download_verifies_and_converts(tmp_path, keras_bytes):
  md5 = hashlib.md5(keras_bytes).hexdigest()
  out = tmp_path / 'weights' / 'vgg19.npz'
  with _serve(keras_bytes) as (url, _):
    weights_lib.fetch_and_convert(out, url=url, md5=md5, progress=False)
  w = weights_lib.load_weights(out)
  assert w.info.source_sha256 == hashlib.sha256(keras_bytes).hexdigest()
  assert w.info.source == weights_lib.KERAS_FILENAME
  assert (out.parent / weights_lib.KERAS_FILENAME).read_bytes() == keras_bytes
  assert not list(out.parent.glob('*.part'))


def test_download_hash_mismatch_leaves_nothing(tmp_path, keras_bytes):
  out = tmp_path / 'vgg19.npz'
  with _serve(keras_bytes) as (url, _):
    with pytest.raises(errors.DownloadError) as e:
      weights_lib.fetch_and_convert(out, url=url, md5='0' * 32, progress=False)
  assert f'expected {"0" * 32}' in _one_line(e)
  assert list(tmp_path.iterdir()) == []


def test_download_404(tmp_path, keras_bytes):
  with _serve(keras_bytes, mode='404') as (url, _):
    with pytest.raises(errors.DownloadError) as e:
      weights_lib.fetch_and_convert(tmp_path / 'v.npz', url=url, md5=None, progress=False)
  assert 'HTTP 404' in _one_line(e)
  assert list(tmp_path.iterdir()) == []


def test_download_closed_early_then_resumes(tmp_path, keras_bytes):
  md5 = hashlib.md5(keras_bytes).hexdigest()
  out = tmp_path / 'vgg19.npz'
  with _serve(keras_bytes, mode='close_early') as (url, _):
    with pytest.raises(errors.DownloadError) as e:
      weights_lib.fetch_and_convert(out, url=url, md5=md5, progress=False)
  assert 'run again to resume' in _one_line(e)
  assert _npz_left(tmp_path) == []  # only a .part, which nothing mistakes for weights
  (part,) = tmp_path.glob('*.part')
  assert 0 < part.stat().st_size < len(keras_bytes)

  resumed_from = part.stat().st_size
  with _serve(keras_bytes, mode='ok') as (url, handler):
    weights_lib.fetch_and_convert(out, url=url, md5=md5, progress=False)
  assert handler.requests[0]['Range'] == f'bytes={resumed_from}-'
  assert weights_lib.load_weights(out).info.source_sha256 == hashlib.sha256(keras_bytes).hexdigest()


def test_resume_against_server_without_ranges_restarts(tmp_path, keras_bytes):
  md5 = hashlib.md5(keras_bytes).hexdigest()
  dest = tmp_path / 'file.h5'
  (tmp_path / 'file.h5.part').write_bytes(b'garbage that is not a prefix')
  with _serve(keras_bytes, mode='no_ranges') as (url, _):
    weights_lib.download(url, dest, md5=md5, progress=False)
  assert dest.read_bytes() == keras_bytes


def test_offline_fails_fast_with_instructions(tmp_path):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  url = f'http://127.0.0.1:{port}/{weights_lib.KERAS_FILENAME}'
  t0 = time.monotonic()
  with pytest.raises(errors.DownloadError) as e:
    weights_lib.fetch_and_convert(tmp_path / 'weights' / 'v.npz', url=url, progress=False)
  assert time.monotonic() - t0 < 5
  msg = _one_line(e)
  assert url in msg and weights_lib.KERAS_MD5 in msg
  raw = tmp_path / 'weights' / weights_lib.KERAS_FILENAME
  assert f'copy it to {raw} and run: python convert_weights.py --input {raw}' in msg
  assert list(tmp_path.iterdir()) == []  # not even the weights/ directory


def test_first_use_downloads_and_converts_at_the_default_path(
  tmp_path, keras_bytes, monkeypatch, capsys
):
  default = tmp_path / 'project' / 'weights' / 'vgg19.npz'
  monkeypatch.setattr(weights_lib, 'DEFAULT_WEIGHTS_PATH', default)
  with _serve(keras_bytes) as (url, handler):
    monkeypatch.setattr(weights_lib, 'KERAS_URL', url)
    monkeypatch.setattr(weights_lib, 'KERAS_MD5', hashlib.md5(keras_bytes).hexdigest())
    w = weights_lib.get_weights()
    again = weights_lib.get_weights()  # now present: no second download
  assert len(handler.requests) == 1
  assert default.is_file() and w.info.source_sha256 == again.info.source_sha256
  assert 'fetching the VGG-19 weights' in capsys.readouterr().err


def test_progress_reports_bytes_rate_eta(tmp_path, keras_bytes, capsys):
  with _serve(keras_bytes) as (url, _):
    weights_lib.download(url, tmp_path / 'f.h5', md5=None, progress=True)
  err = capsys.readouterr().err
  assert f'of {len(keras_bytes) / 1e6:.1f} MB' in err
  assert 'MB/s, ETA' in err
