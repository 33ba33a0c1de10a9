"""End-to-end tests of convert_weights.py as a subprocess."""

import hashlib
import os
from pathlib import Path
import subprocess
import sys

import download_test
import numpy as np
import pytest
import weight_files

from nst_jax import weights as weights_lib

ROOT = Path(__file__).resolve().parent.parent


def _convert(*args, cwd):
  return subprocess.run(
    [sys.executable, str(ROOT / 'convert_weights.py'), *map(str, args)],
    cwd=cwd,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_input_conversion(tmp_path, random_params):
  pth = tmp_path / 'vgg19-d01eb7cb.pth'
  weight_files.write_pth(pth, weight_files.torchvision_state(random_params))
  out = tmp_path / 'w' / 'v.npz'
  r = _convert('--input', pth, '--output', out, '--input_convention', 'caffe', cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert 'caffe input convention' in r.stdout
  w = weights_lib.load_weights(out)
  assert w.info.convention == 'caffe' and w.info.source_format == 'torch_pth'
  np.testing.assert_array_equal(w.params['conv4_4']['kernel'], random_params['conv4_4'][0])


@pytest.mark.slow
def test_download_from_loopback(tmp_path):
  src = tmp_path / 'src.h5'
  weight_files.write_keras_h5(src, weight_files.random_params(seed=2))
  payload = src.read_bytes()
  out = tmp_path / 'weights' / 'vgg19.npz'
  with download_test._serve(payload) as (url, _):
    r = _convert(
        '--download', '--url', url, '--md5', hashlib.md5(payload).hexdigest(), '--output', out,
        cwd=tmp_path,
    )  # fmt: skip
  assert r.returncode == 0, r.stderr
  assert 'downloading' in r.stderr and 'MB/s' in r.stderr
  assert weights_lib.load_weights(out).info.source_sha256 == hashlib.sha256(payload).hexdigest()


@pytest.mark.slow
def test_errors(tmp_path):
  r = _convert(cwd=tmp_path)
  assert r.returncode != 0 and 'give exactly one of --input FILE or --download' in r.stderr
  (tmp_path / 'x.h5').write_text('hello')
  r = _convert('--input', tmp_path / 'x.h5', '--output', tmp_path / 'o.npz', cwd=tmp_path)
  assert r.returncode != 0
  assert 'is not a Keras .h5, PyTorch .pth or .safetensors' in r.stderr
  assert 'Traceback' not in r.stderr
  assert not (tmp_path / 'o.npz').exists()
