"""Tests for nst_jax.losses against the formulas written out in numpy."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from nst_jax import losses


def _feats(seed, shape=(5, 6, 4)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _np_gram(f):
  h, w, c = f.shape
  m = f.reshape(h * w, c).astype(np.float64)
  return m.T @ m / (h * w)


def test_gram_matches_numpy():
  f = _feats(0)
  got = jax.jit(losses.gram_matrix)(f)
  assert got.shape == (4, 4) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_gram(f), rtol=1e-5, atol=1e-6)


def test_gram_is_size_independent():
  # Tiling an image 2x2 repeats every position 4 times: G (÷ H*W) is unchanged.
  f = _feats(1)
  tiled = np.tile(f, (2, 2, 1))
  np.testing.assert_allclose(losses.gram_matrix(tiled), losses.gram_matrix(f), rtol=1e-5)


def test_gram_of_bfloat16_accumulates_in_float32():
  f = _feats(2)
  got = losses.gram_matrix(jnp.asarray(f, jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_gram(f), rtol=3e-2, atol=3e-2)


def test_gram_rejects_wrong_rank():
  with pytest.raises(ValueError, match=r'expects \[H, W, C\]'):
    losses.gram_matrix(np.zeros((2, 3, 4, 5)))


def test_gram_gradients():
  check_grads(losses.gram_matrix, (jnp.asarray(_feats(3), jnp.float32),), order=1, modes=['rev'])
  # And the hand-written backward equals JAX's own derivative of F^T F / M.
  f = jnp.asarray(_feats(4), jnp.float32)
  cot = jnp.asarray(_feats(5, (4, 4)))

  def plain(x):
    m = x.reshape(-1, 4)
    return m.T @ m / m.shape[0]

  _, vjp_ours = jax.vjp(losses.gram_matrix, f)
  _, vjp_plain = jax.vjp(plain, f)
  np.testing.assert_allclose(vjp_ours(cot)[0], vjp_plain(cot)[0], rtol=1e-5, atol=1e-6)


def test_content_loss_matches_formula():
  f = {'relu4_2': _feats(6), 'relu3_1': _feats(7)}
  p = {'relu4_2': _feats(8), 'relu3_1': _feats(9)}
  fn = jax.jit(lambda f, p: losses.content_loss(f, p, layers=('relu4_2', 'relu3_1')))
  want = sum(np.mean((f[k].astype(np.float64) - p[k]) ** 2) for k in f)
  np.testing.assert_allclose(fn(f, p), want, rtol=1e-6)
  one = losses.content_loss(f, p, layers=('relu4_2',))
  np.testing.assert_allclose(one, np.mean((f['relu4_2'] - p['relu4_2']) ** 2), rtol=1e-6)


def test_style_loss_matches_formula():
  f = {'relu1_1': _feats(10), 'relu2_1': _feats(11, (3, 3, 6))}
  a = {'relu1_1': _np_gram(_feats(12)), 'relu2_1': _np_gram(_feats(13, (4, 2, 6)))}
  w = {'relu1_1': 0.5, 'relu2_1': 2.0}
  got = jax.jit(lambda f, a: losses.style_loss(f, a, layer_weights=w))(f, a)
  # Layers are summed (not averaged), each the mean over its C*C entries.
  want = sum(w[k] * np.mean((_np_gram(f[k]) - a[k]) ** 2) for k in f)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_loss_gradients():
  f = {'a': jnp.asarray(_feats(14)), 'b': jnp.asarray(_feats(15))}
  p = {'a': jnp.asarray(_feats(16)), 'b': jnp.asarray(_feats(17))}
  grams = {k: jnp.asarray(_np_gram(_feats(18 + i)), jnp.float32) for i, k in enumerate(f)}
  check_grads(lambda x: losses.content_loss(x, p, layers=('a', 'b')), (f,), order=1, modes=['rev'])
  check_grads(
    lambda x: losses.style_loss(x, grams, layer_weights={'a': 1.0, 'b': 0.3}),
    (f,),
    order=1,
    modes=['rev'],
    rtol=2e-2,
  )


def test_mismatched_shapes_are_named():
  with pytest.raises(ValueError, match='relu4_2'):
    losses.content_loss(
      {'relu4_2': _feats(0)}, {'relu4_2': _feats(1, (5, 5, 4))}, layers=('relu4_2',)
    )
