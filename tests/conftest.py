"""Test-wide settings: strict JAX numerics and shared weight fixtures.

Rank promotion raises, so a [3] mean meeting a [N, H, W, 3] image by accident
fails loudly instead of broadcasting (equinox's tests do the same).
"""

import atexit
import os
from pathlib import Path
import shutil
import sys
import tempfile

import jax
import numpy as np
from PIL import Image
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # main.py and convert_weights.py live at the top
sys.path.insert(0, str(Path(__file__).resolve().parent))

jax.config.update('jax_numpy_rank_promotion', 'raise')

# One persistent XLA compilation cache, shared with the subprocesses the tests
# start (they inherit the environment): many tests compile the same small
# programs, and compiling is most of their time. It is kept between sessions
# (JAX keys each program by its HLO, flags and versions, so a changed program
# never meets an old entry), which a second run spends loading instead:
# $NST_JAX_TEST_XLA_CACHE names its folder, or 'fresh' for an empty one that
# is deleted at the end (a cold run, as on a new machine). Hits count as
# compiles for `compiled` below (JAX times both under one event), so no test
# reads differently warm or cold.
_SETTING = os.environ.get('NST_JAX_TEST_XLA_CACHE', '')
# JAX's own size bound locks the folder and stats every entry on each write
# (a slower suite, docs/testing.md), so the folder is unbounded while the
# tests run and trimmed here, the oldest written first, before they start.
_MAX_BYTES, _TRIM_TO = 4 * 1024**3, 2 * 1024**3


def _trim(folder: Path) -> None:
  entries = sorted(
    (p.stat().st_mtime, p.stat().st_size, p) for p in folder.iterdir() if p.is_file()
  )
  total = sum(size for _, size, _ in entries)
  if total <= _MAX_BYTES:
    return
  for _, size, path in entries:
    if total <= _TRIM_TO:
      break
    path.unlink(missing_ok=True)
    total -= size


if _SETTING == 'fresh':
  _CACHE = tempfile.mkdtemp(prefix='nst-jax-tests-xla-cache-')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
else:
  _CACHE = _SETTING or str(
    Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'nst_jax_tests' / 'xla'
  )
  os.makedirs(_CACHE, exist_ok=True)
  if 'PYTEST_XDIST_WORKER' not in os.environ:  # once, in the controlling process
    _trim(Path(_CACHE))
os.environ.update({
  'JAX_COMPILATION_CACHE_DIR': _CACHE,
  'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
  'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1',
})  # fmt: skip
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)

import weight_files  # noqa: E402

# Every XLA program the tests' own process compiles (or loads from the
# persistent cache), by name: `compiled` reads those of one test.
_COMPILED: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
  lambda event, _, **kw: (
    _COMPILED.append(kw.get('fun_name', '?'))
    if event == '/jax/core/compile/backend_compile_duration'
    else None
  )
)


@pytest.fixture
def compiled():
  """A function giving the names ('jit(f)') of the programs compiled so far in this test."""
  start = len(_COMPILED)
  return lambda: _COMPILED[start:]


from nst_jax.io import weights as weights_lib  # noqa: E402


@pytest.fixture(scope='session')
def scaled_params():
  """Random VGG-19 params at the real network's activation scale (LSUV), seed 0."""
  import nst_jax

  return nst_jax.random_scaled_params(0)


@pytest.fixture(scope='session')
def random_params():
  """Random VGG-19 params (paper name -> (kernel, bias)), seed 0."""
  return weight_files.random_params(seed=0)


@pytest.fixture(scope='session')
def caffe_npz(tmp_path_factory, random_params):
  """A converted .npz made from a generated Keras-1 h5 (Caffe convention)."""
  directory = tmp_path_factory.mktemp('weights')
  h5 = directory / 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5'
  weight_files.write_keras_h5(h5, random_params)
  flat, info = weights_lib.convert(h5)
  npz = directory / 'vgg19.npz'
  weights_lib.save_npz(npz, flat, info)
  return npz


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch):
  # A developer's $NST_JAX_WEIGHTS must not leak into the tests.
  monkeypatch.delenv(weights_lib.WEIGHTS_ENV, raising=False)


def _npz_from(params, directory, *, torchvision: bool = False):
  """Writes `params` in a published layout and converts it, as the real files go."""
  if torchvision:
    src = directory / 'vgg19.safetensors'
    weight_files.write_safetensors(src, weight_files.torchvision_state(params))
  else:
    src = directory / weights_lib.KERAS_FILENAME
    weight_files.write_keras_h5(src, params)
  flat, info = weights_lib.convert(src)
  npz = directory / 'vgg19.npz'
  weights_lib.save_npz(npz, flat, info)
  return npz


@pytest.fixture(scope='session')
def lsuv_npz(tmp_path_factory):
  """Random weights with the real network's activation scale (Caffe convention)."""
  return _npz_from(weight_files.lsuv_params(0), tmp_path_factory.mktemp('lsuv'))


@pytest.fixture(scope='session')
def small_npz(tmp_path_factory):
  """The LSUV weights with conv1_1 scaled down 128x: every activation 128x smaller."""
  return _npz_from(weight_files.small_activation_params(0), tmp_path_factory.mktemp('small'))


@pytest.fixture(scope='session')
def torchvision_npz(tmp_path_factory, random_params):
  """Random weights converted from the torchvision layout (torchvision convention)."""
  return _npz_from(random_params, tmp_path_factory.mktemp('tv'), torchvision=True)


def flat_config(**flat):
  """A StyleConfig from flat setting names (iterations=, width=, ...), without the warning.

  Tests that only need a few settings read better flat; config_test checks
  that the flat names still work and warn.
  """
  import warnings

  from nst_jax import config as config_lib

  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    return config_lib.StyleConfig(**flat)


@pytest.fixture()
def images(tmp_path):
  """A content and a style file, in/c.png and in/s.png (48 x 36, random pixels)."""
  rng = np.random.default_rng(4)
  paths = []
  for name in ('c.png', 's.png'):
    path = tmp_path / 'in' / name
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(path)
    paths.append(path)
  return paths
