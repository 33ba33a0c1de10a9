"""Test-wide settings: strict JAX numerics and shared weight fixtures.

Rank promotion raises, so a [3] mean meeting a [N, H, W, 3] image by accident
fails loudly instead of broadcasting (equinox's tests do the same).
"""

from pathlib import Path
import sys

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # main.py and convert_weights.py live at the top
sys.path.insert(0, str(Path(__file__).resolve().parent))

jax.config.update('jax_numpy_rank_promotion', 'raise')

import weight_files  # noqa: E402

from nst_jax import weights as weights_lib  # noqa: E402


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
