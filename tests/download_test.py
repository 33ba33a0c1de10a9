"""Tests for nst_jax.io.download: mirrors, verification, resume, offline messages.

A loopback HTTP server stands in for the published locations.
"""

import contextlib
import hashlib
import http.server
import socket
import threading
import time

import pytest
import weight_files

from nst_jax import errors
from nst_jax.io import download
from nst_jax.io import weights as weights_lib


def _one_line(excinfo) -> str:
  message = str(excinfo.value)
  assert '\n' not in message
  return message


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
    download.fetch_and_convert(out, [url], md5=md5, progress=False)
  w = weights_lib.load_weights(out)
  assert w.info.source_sha256 == hashlib.sha256(keras_bytes).hexdigest()
  assert w.info.source == weights_lib.KERAS_FILENAME
  assert (out.parent / weights_lib.KERAS_FILENAME).read_bytes() == keras_bytes
  assert not list(out.parent.glob('*.part'))


def test_download_hash_mismatch_leaves_nothing(tmp_path, keras_bytes):
  out = tmp_path / 'vgg19.npz'
  with _serve(keras_bytes) as (url, _):
    with pytest.raises(errors.DownloadError) as e:
      download.fetch_and_convert(out, [url], md5='0' * 32, progress=False)
  assert f'expected {"0" * 32}' in _one_line(e)
  assert list(tmp_path.iterdir()) == []


def test_download_404(tmp_path, keras_bytes):
  with _serve(keras_bytes, mode='404') as (url, _):
    with pytest.raises(errors.DownloadError) as e:
      download.fetch_and_convert(tmp_path / 'v.npz', [url], md5='0' * 32, progress=False)
  assert 'HTTP 404' in _one_line(e)
  assert list(tmp_path.iterdir()) == []


def test_download_closed_early_then_resumes(tmp_path, keras_bytes):
  md5 = hashlib.md5(keras_bytes).hexdigest()
  out = tmp_path / 'vgg19.npz'
  with _serve(keras_bytes, mode='close_early') as (url, _):
    with pytest.raises(errors.DownloadError) as e:
      download.fetch_and_convert(out, [url], md5=md5, progress=False)
  assert 'run again to resume' in _one_line(e)
  assert _npz_left(tmp_path) == []  # only a .part, which nothing mistakes for weights
  (part,) = tmp_path.glob('*.part')
  assert 0 < part.stat().st_size < len(keras_bytes)

  resumed_from = part.stat().st_size
  with _serve(keras_bytes, mode='ok') as (url, handler):
    download.fetch_and_convert(out, [url], md5=md5, progress=False)
  assert handler.requests[0]['Range'] == f'bytes={resumed_from}-'
  assert weights_lib.load_weights(out).info.source_sha256 == hashlib.sha256(keras_bytes).hexdigest()


def test_resume_against_server_without_ranges_restarts(tmp_path, keras_bytes):
  md5 = hashlib.md5(keras_bytes).hexdigest()
  dest = tmp_path / 'file.h5'
  (tmp_path / 'file.h5.part').write_bytes(b'garbage that is not a prefix')
  with _serve(keras_bytes, mode='no_ranges') as (url, _):
    download.download(url, dest, md5=md5, progress=False)
  assert dest.read_bytes() == keras_bytes


def test_offline_fails_fast_with_instructions(tmp_path):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  url = f'http://127.0.0.1:{port}/{weights_lib.KERAS_FILENAME}'
  t0 = time.monotonic()
  with pytest.raises(errors.DownloadError) as e:
    download.fetch_and_convert(tmp_path / 'weights' / 'v.npz', [url], progress=False)
  assert time.monotonic() - t0 < 5
  msg = _one_line(e)
  assert url in msg and weights_lib.KERAS_MD5 in msg
  raw = tmp_path / 'weights' / weights_lib.KERAS_FILENAME
  assert f'copy it to {raw} and run: nst_jax.io.weights.convert_file({str(raw)!r})' in msg
  assert list(tmp_path.iterdir()) == []  # not even the weights/ directory


def test_first_use_downloads_and_converts_at_the_default_path(
  tmp_path, keras_bytes, monkeypatch, capsys
):
  default = tmp_path / 'project' / 'weights' / 'vgg19.npz'
  monkeypatch.setattr(weights_lib, 'DEFAULT_WEIGHTS_PATH', default)
  with _serve(keras_bytes) as (url, handler):
    monkeypatch.setattr(weights_lib, 'KERAS_MIRRORS', (url,))
    monkeypatch.setattr(weights_lib, 'KERAS_MD5', hashlib.md5(keras_bytes).hexdigest())
    w = weights_lib.get_weights()
    again = weights_lib.get_weights()  # now present: no second download
  assert len(handler.requests) == 1
  assert default.is_file() and w.info.source_sha256 == again.info.source_sha256
  assert 'fetching the VGG-19 weights' in capsys.readouterr().err


def test_progress_reports_bytes_rate_eta(tmp_path, keras_bytes, capsys):
  with _serve(keras_bytes) as (url, _):
    download.download(url, tmp_path / 'f.h5', md5=None, progress=True)
  err = capsys.readouterr().err
  assert f'of {len(keras_bytes) / 1e6:.1f} MB' in err
  assert 'MB/s, ETA' in err


def test_mirrors_are_tried_in_order_each_checked(tmp_path, keras_bytes, capsys):
  """The first mirror is dead, the second serves a wrong file, the third the right one."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    dead = f'http://127.0.0.1:{s.getsockname()[1]}/{weights_lib.KERAS_FILENAME}'
  out = tmp_path / 'w' / 'vgg19.npz'
  with _serve(b'not the weights' * 100) as (wrong, _), _serve(keras_bytes) as (right, h):
    md5 = hashlib.md5(keras_bytes).hexdigest()
    download.fetch_and_convert(out, [dead, wrong, right], md5=md5, progress=True)
  assert len(h.requests) == 1
  assert weights_lib.load_weights(out).info.source_sha256 == hashlib.sha256(keras_bytes).hexdigest()
  err = capsys.readouterr().err
  assert f'{dead} failed' in err and f'{wrong} failed (a file with MD5' in err
  assert not list(out.parent.glob('*.part'))
  # When all fail, the one-line error names every mirror and why.
  with pytest.raises(errors.DownloadError) as e:
    download.fetch([dead, dead.replace('.h5', '2.h5')], tmp_path / 'x', md5=md5, progress=False)
  msg = _one_line(e)
  assert msg.count(dead.rsplit('/', 1)[0]) == 2 and 'Connection refused' in msg


def test_the_user_s_mirrors_come_first(monkeypatch):
  monkeypatch.setenv(download.URL_ENV, 'http://a/x.h5, http://b/x.h5')
  urls = download.mirrors(['http://mine/x.h5', 'http://a/x.h5'])
  assert urls[:3] == ['http://mine/x.h5', 'http://a/x.h5', 'http://b/x.h5']
  assert urls[3:] == list(weights_lib.KERAS_MIRRORS)
