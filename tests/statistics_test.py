"""Accuracy of nst_jax.core.statistics' 'mean_cov' term against float64 numpy.

The float32 eigendecomposition of the C x C matrix S Sigma S made the term
12% low at relu5_1 at 64 px, where a layer has fewer positions M than
channels C (a research trial). The reference here is the formula in float64
numpy on the same float32 features: (weighted) population covariances,
eigh-based PSD square roots with negative eigenvalues clipped.
"""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
from losses_test import _np_mean_cov  # the (weighted) mean and covariance in float64
import numpy as np
import pytest

import nst_jax
from nst_jax.core import losses
from nst_jax.core import statistics

LAYERS = ('relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')


@pytest.fixture(scope='module')
def vgg_features():
  """{layer: ([H, W, C] image, [H, W, C] style)} of two 64 px noise images (the trial's setup)."""
  rng = np.random.default_rng(0)
  images = nst_jax.preprocess(rng.uniform(size=(2, 64, 64, 3)).astype(np.float32), 'caffe')
  params = nst_jax.random_scaled_params(0)
  feats = nst_jax.make_model().apply({'params': params}, images, LAYERS)
  return {name: tuple(np.asarray(f)) for name, f in feats.items()}


def _np_psd_sqrt(a):
  lam, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(lam, 0, None))) @ v.T


def _np_w2(f, style, t=None):
  """(|mu - mu_s|^2 + tr(Sigma) + tr(Sigma_s) - 2 tr sqrt(S Sigma S)) / C in float64."""
  mu, cov = _np_mean_cov(f, t)
  mu_s, cov_s = _np_mean_cov(style)
  r = _np_psd_sqrt(cov_s)
  p = r @ cov @ r
  cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((p + p.T) / 2), 0, None)))
  w2 = np.sum((mu - mu_s) ** 2) + np.trace(cov) + np.trace(cov_s) - 2 * cross
  return w2 / f.shape[-1]


def _target(style):
  return statistics.mean_cov_target(*statistics.mean_cov(style))


# Measured relative errors at 64 px: relu2_1 (M = 1024 > C = 128, the C x C
# route) 5.8e-4; relu3_1 to relu5_1 (M <= C, the SVD route) 1e-5 or less,
# where the C x C route was 1.6e-3, 4.7e-2 and 1.2e-1 low.
@pytest.mark.parametrize('layer, rtol', [
  ('relu2_1', 2e-3), ('relu3_1', 1e-4), ('relu4_1', 1e-4), ('relu5_1', 1e-4),
])  # fmt: skip
def test_mean_cov_loss_matches_float64_at_vgg_layers(vgg_features, layer, rtol):
  f, style = vgg_features[layer]
  got = jax.jit(statistics.mean_cov_loss)(f, _target(style))
  np.testing.assert_allclose(got, _np_w2(f, style), rtol=rtol)


@pytest.mark.parametrize('layer', LAYERS[1:])
def test_an_image_against_its_own_statistics_is_zero(vgg_features, layer):
  # The term's scale is tr(Sigma_s) / C (1825 at relu5_1); it read -19.5 there.
  _, style = vgg_features[layer]
  scale = np.trace(_np_mean_cov(style)[1]) / style.shape[-1]
  assert abs(float(statistics.mean_cov_loss(style, _target(style)))) < 1e-5 * scale


def test_masked_terms_match_float64(vgg_features):
  f, style = vgg_features['relu5_1']  # [4, 4, 512]
  target = _target(style)
  soft = np.random.default_rng(1).uniform(size=f.shape[:2]).astype(np.float32)
  binary = np.zeros(f.shape[:2], np.float32)
  binary[1:, :3] = 1
  for mask in (soft, binary):
    got = statistics.mean_cov_loss(f, target, mask)
    np.testing.assert_allclose(got, _np_w2(f, style, mask), rtol=1e-4)
  # Regions as the style term sums them; an all-zero region adds 0 and no NaN.
  stacked = jax.tree.map(lambda x: jnp.stack([x, x, x]), target)
  masks = np.stack([soft, binary, np.zeros_like(soft)])

  def term(x):
    return losses.style_layer_loss(x, stacked, kind='mean_cov', masks=masks)

  value, grad = jax.value_and_grad(term)(jnp.asarray(f))
  np.testing.assert_allclose(value, _np_w2(f, style, soft) + _np_w2(f, style, binary), rtol=1e-4)
  assert np.all(np.isfinite(grad))


def test_nuclear_norm_and_its_gradient():
  a = np.random.default_rng(2).normal(size=(5, 9)).astype(np.float32)
  u, s, vt = np.linalg.svd(a.astype(np.float64), full_matrices=False)
  np.testing.assert_allclose(statistics.nuclear_norm(a), s.sum(), rtol=1e-6)
  # It is tr(sqrt(A A^T)) (= tr(sqrt(A^T A)), whose 9 x 9 rank-5 eigenvalues
  # float32 does not resolve: 6e-5 high), and its gradient U V^T at full rank.
  np.testing.assert_allclose(statistics.nuclear_norm(a), statistics.trace_sqrtm(a @ a.T), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(statistics.nuclear_norm)(jnp.asarray(a)), u @ vt, atol=1e-5)
  check_grads(statistics.nuclear_norm, (jnp.asarray(a),), order=1, modes=['rev'], eps=1e-2)
  # Rank 1: u v^T; the rounding singular values (~1e-7 s_max) weigh s / s' <= 1e-4
  # against the floor s' = sqrt(SQRT_EIG_FLOOR) s_max, where 1 / (2 sqrt(l)) was unbounded.
  rank1 = np.outer([1.0, 2.0, 0.0], [3.0, 0.0, 4.0]).astype(np.float32)
  g = jax.grad(statistics.nuclear_norm)(jnp.asarray(rank1))
  np.testing.assert_allclose(g, rank1 / np.linalg.norm(rank1), atol=1e-4)
  assert np.all(np.isfinite(jax.grad(statistics.nuclear_norm)(jnp.zeros((3, 4)))))


def test_feature_route_gradient_and_a_flat_start():
  # M = 6 positions, C = 8 channels: the SVD route, at ReLU-like values.
  rng = np.random.default_rng(3)
  f = np.maximum(rng.normal(size=(2, 3, 8)), 0).astype(np.float32) + 0.1
  style = np.maximum(rng.normal(size=(3, 4, 8)) * 2 + 1, 0).astype(np.float32)
  target = _target(style)
  np.testing.assert_allclose(statistics.mean_cov_loss(f, target), _np_w2(f, style), rtol=1e-5)

  def term(x):
    return statistics.mean_cov_loss(x, target)

  check_grads(term, (jnp.asarray(f),), order=1, modes=['rev'], eps=1e-2, atol=2e-2, rtol=2e-2)
  # A flat image (Sigma = 0): finite, and only the mean term's 2 (mu - mu_s) / (M C).
  flat = np.full((2, 3, 8), 0.5, np.float32)
  g = jax.grad(term)(jnp.asarray(flat))
  want = 2 * (0.5 - _np_mean_cov(style)[0]) / (6 * 8)
  np.testing.assert_allclose(g, np.broadcast_to(want, flat.shape), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('fn', [statistics.gram_matrix, statistics.mean_cov])
def test_a_mask_of_another_shape_is_refused_even_with_as_many_positions(fn):
  """A [7, 6] mask for [6, 7] features was reshaped onto the grid, scrambling it (trial 7)."""
  rng = np.random.default_rng(0)
  f = rng.uniform(size=(6, 7, 4)).astype(np.float32)
  mask = rng.uniform(size=(6, 7)).astype(np.float32)
  name = fn.__name__
  for bad in (mask.T, mask.reshape(42), mask[:3, :3]):
    with pytest.raises(nst_jax.errors.ConfigError) as e:
      fn(f, bad)
    assert str(e.value) == (
      f"{name}: mask {bad.shape} does not match the features' (6, 7) positions; give one [H, W] "
      "at the features' size (nst_jax.core.vgg.mask_at_layer)"
    )
  _, want_cov = _np_mean_cov(f, mask)
  got = fn(f, mask)
  if name == 'mean_cov':
    np.testing.assert_allclose(got[1], want_cov, rtol=1e-4, atol=1e-6)
  else:
    t = mask.reshape(-1, 1)
    ft = f.reshape(-1, 4) * t
    np.testing.assert_allclose(got, ft.T @ ft / np.sum(t * t), rtol=1e-5, atol=1e-6)
