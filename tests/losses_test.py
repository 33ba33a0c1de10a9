"""Tests for nst_jax.core.losses against the formulas written out in numpy."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest
import scipy.linalg as scipy_linalg  # a dependency of jax itself

from nst_jax import errors
from nst_jax.core import losses
from nst_jax.core import statistics


def _feats(seed, shape=(5, 6, 4)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _np_gram(f):
  h, w, c = f.shape
  m = f.reshape(h * w, c).astype(np.float64)
  return m.T @ m / (h * w)


def test_gram_matches_numpy():
  f = _feats(0)
  got = jax.jit(statistics.gram_matrix)(f)
  assert got.shape == (4, 4) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_gram(f), rtol=1e-5, atol=1e-6)


def test_gram_is_size_independent():
  # Tiling an image 2x2 repeats every position 4 times: G (÷ H*W) is unchanged.
  f = _feats(1)
  tiled = np.tile(f, (2, 2, 1))
  np.testing.assert_allclose(statistics.gram_matrix(tiled), statistics.gram_matrix(f), rtol=1e-5)


def test_gram_of_bfloat16_accumulates_in_float32():
  f = _feats(2)
  got = statistics.gram_matrix(jnp.asarray(f, jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_gram(f), rtol=3e-2, atol=3e-2)


def test_gram_rejects_wrong_rank():
  with pytest.raises(errors.ConfigError) as e:
    statistics.gram_matrix(np.zeros((2, 3, 4, 5)))
  assert str(e.value) == (
    "gram_matrix expects one image's features [H, W, C], got shape (2, 3, 4, 5); jax.vmap it "
    'over a batch'
  )


def test_gram_gradients():
  check_grads(
    statistics.gram_matrix, (jnp.asarray(_feats(3), jnp.float32),), order=1, modes=['rev']
  )
  # And the hand-written backward equals JAX's own derivative of F^T F / M.
  f = jnp.asarray(_feats(4), jnp.float32)
  cot = jnp.asarray(_feats(5, (4, 4)))

  def plain(x):
    m = x.reshape(-1, 4)
    return m.T @ m / m.shape[0]

  _, vjp_ours = jax.vjp(statistics.gram_matrix, f)
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


def test_a_layer_missing_from_an_argument_is_named():
  """A bare KeyError: 'relu1_1' before (a trial)."""
  f, g = {'relu1_1': _feats(0)}, {'relu1_1': statistics.gram_matrix(_feats(1))}
  cases = (
    (lambda: losses.content_loss(f, {}, layers=('relu1_1',)), 'content_loss: targets'),
    (lambda: losses.content_loss({}, f, layers=('relu1_1',)), 'content_loss: features'),
    (lambda: losses.style_loss(f, g, layer_weights={'relu1_1': 1.0}, masks={}),
     'style_loss: masks'),
  )  # fmt: skip
  for call, where in cases:
    with pytest.raises(errors.ConfigError) as caught:
      call()
    assert str(caught.value) == (
      f'{where} lack the layer relu1_1; give features, targets (and masks) for every loss layer, '
      'from the same layers'
    )
  assert float(losses.content_loss(f, f, layers=('relu1_1',))) == 0.0


# --- guided Grams, Gaussian (mean/covariance) and histogram terms, TV ------


def test_guided_gram_matches_formula():
  f = _feats(20)
  t = np.random.default_rng(21).uniform(size=(5, 6)).astype(np.float32)
  m = f.reshape(30, 4).astype(np.float64) * t.reshape(30, 1)
  want = m.T @ m / np.sum(t.astype(np.float64) ** 2)
  np.testing.assert_allclose(statistics.gram_matrix(f, t), want, rtol=1e-5, atol=1e-6)
  # All ones: the plain Gram. A binary mask: the Gram of the selected positions.
  np.testing.assert_allclose(statistics.gram_matrix(f, np.ones((5, 6))), _np_gram(f), rtol=1e-5)
  binary = np.zeros((5, 6), np.float32)
  binary[1:4, 2:] = 1
  np.testing.assert_allclose(
    statistics.gram_matrix(f, binary), _np_gram(f[1:4, 2:]), rtol=1e-5, atol=1e-6
  )


def _np_mean_cov(f, t=None):
  x = f.reshape(-1, f.shape[-1]).astype(np.float64)
  w = np.ones(len(x)) if t is None else t.reshape(-1).astype(np.float64) ** 2
  w = w / w.sum()
  mu = w @ x
  return mu, (x - mu).T @ ((x - mu) * w[:, None])


def test_mean_cov_matches_numpy_and_the_guided_gram():
  f = _feats(22)
  t = np.random.default_rng(23).uniform(size=(5, 6)).astype(np.float32)
  for mask in (None, t):
    mu, cov = statistics.mean_cov(f, mask)
    want_mu, want_cov = _np_mean_cov(f, mask)
    np.testing.assert_allclose(mu, want_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-5, atol=1e-6)
    # The guided Gram is the second moment under the same weights.
    np.testing.assert_allclose(
      statistics.gram_matrix(f, mask), cov + np.outer(mu, mu), rtol=1e-5, atol=1e-5
    )


def _spd(seed, c=4, floor=0.5):
  a = np.random.default_rng(seed).normal(size=(c, c))
  return (a @ a.T + floor * np.eye(c)).astype(np.float32)


def test_matrix_square_root_and_trace_gradient():
  a = _spd(24)
  s = np.asarray(statistics.sqrtm_psd(a), np.float64)
  np.testing.assert_allclose(s @ s, a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(s, s.T, atol=1e-6)
  np.testing.assert_allclose(statistics.trace_sqrtm(a), np.trace(s), rtol=1e-5)
  # d tr(sqrt(A)) / dA = A^{-1/2} / 2, and check_grads agrees with finite differences.
  lam, v = np.linalg.eigh(a.astype(np.float64))
  want = v @ np.diag(0.5 / np.sqrt(lam)) @ v.T
  np.testing.assert_allclose(jax.grad(statistics.trace_sqrtm)(jnp.asarray(a)), want, rtol=1e-4)
  check_grads(
    statistics.trace_sqrtm, (jnp.asarray(a),), order=1, modes=['rev'], atol=1e-2, rtol=1e-2
  )
  # Repeated and zero eigenvalues (dead channels): finite gradient, bounded by the floor.
  singular = np.diag([2.0, 2.0, 0.0, 0.0]).astype(np.float32)
  g = jax.grad(statistics.trace_sqrtm)(jnp.asarray(singular))
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(np.diag(g)[:2], 0.5 / np.sqrt(2.0), rtol=1e-5)
  np.testing.assert_allclose(
    np.diag(g)[2:], 0.5 / np.sqrt(2.0 * statistics.SQRT_EIG_FLOOR), rtol=1e-3
  )


def test_mean_cov_loss_is_the_gaussian_w2_distance():
  f, g = _feats(25, (6, 7, 3)), _feats(26, (4, 9, 3)) * 2 + 1
  mu_s, cov_s = _np_mean_cov(g)
  target = statistics.mean_cov_target(mu_s, cov_s)
  mu, cov = _np_mean_cov(f)
  root = scipy_linalg.sqrtm(scipy_linalg.sqrtm(cov_s) @ cov @ scipy_linalg.sqrtm(cov_s)).real
  want = (np.sum((mu - mu_s) ** 2) + np.trace(cov) + np.trace(cov_s) - 2 * np.trace(root)) / 3
  got = jax.jit(statistics.mean_cov_loss)(f, target)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # Zero at the target's own statistics, and positive elsewhere.
  same = statistics.mean_cov_loss(g, target)
  assert abs(float(same)) < 1e-4 * float(got)
  check_grads(
    lambda x: statistics.mean_cov_loss(x, target), (jnp.asarray(f),), order=1, modes=['rev'],
    atol=2e-2, rtol=2e-2,
  )  # fmt: skip


def _np_weighted_quantiles(samples, weights, m):
  v = np.concatenate(samples)
  w = np.concatenate(
    [np.full(len(s), b / sum(weights) / len(s)) for s, b in zip(samples, weights, strict=True)]
  )
  p = (np.arange(m) + 0.5) / m
  out = np.empty((m, v.shape[1]))
  for c in range(v.shape[1]):
    order = np.argsort(v[:, c], kind='stable')
    cdf = np.cumsum(w[order]) - w[order] / 2
    out[:, c] = np.interp(p, cdf, v[order, c])
  return out


def test_style_quantiles():
  rng = np.random.default_rng(27)
  a, b = rng.normal(size=(30, 3)), rng.normal(3, 1, size=(12, 3))
  # One set of the right size: exactly its sorted values.
  np.testing.assert_array_equal(
    statistics.style_quantiles([a], [1.0], 30), np.sort(a, 0).astype(np.float32)
  )
  got = statistics.style_quantiles([a, b], [3.0, 1.0], 20)
  np.testing.assert_allclose(
    got, _np_weighted_quantiles([a, b], [3.0, 1.0], 20), rtol=1e-5, atol=1e-5
  )

  # The blend weights move the mixture: more weight on b (mean 3) raises the median.
  def med(w):
    return float(np.median(statistics.style_quantiles([a, b], w, 21)))

  assert med([1.0, 3.0]) > med([1.0, 1.0]) > med([3.0, 1.0])


def test_histogram_match_and_loss():
  f = _feats(28, (4, 5, 3))
  q = np.sort(np.random.default_rng(29).normal(5, 2, (20, 3)), 0).astype(np.float32)
  r = np.asarray(statistics.histogram_match(f, q))
  flat = f.reshape(20, 3)
  for c in range(3):
    # The matched map has the target's values, in the features' rank order.
    np.testing.assert_array_equal(np.sort(r[:, c]), q[:, c])
    np.testing.assert_array_equal(np.argsort(r[:, c]), np.argsort(flat[:, c]))
  got, grad = jax.value_and_grad(statistics.histogram_loss)(jnp.asarray(f), q)
  np.testing.assert_allclose(got, np.mean((flat - r) ** 2), rtol=1e-5)
  # R(F) is held constant: the gradient is 2 (F - R) / (M C).
  np.testing.assert_allclose(grad.reshape(20, 3), 2 * (flat - r) / flat.size, rtol=1e-5)
  # Features that already have the target histogram cost nothing.
  assert float(statistics.histogram_loss(r.reshape(4, 5, 3), q)) == 0.0


def test_tv_loss_matches_formula():
  x = _feats(30, (5, 6, 3))
  x64 = x.astype(np.float64)
  want = np.mean((x64[1:] - x64[:-1]) ** 2) + np.mean((x64[:, 1:] - x64[:, :-1]) ** 2)
  np.testing.assert_allclose(jax.jit(losses.tv_loss)(x), want, rtol=1e-5)
  assert float(losses.tv_loss(np.full((5, 6, 3), 7.0))) == 0.0
  check_grads(losses.tv_loss, (jnp.asarray(x),), order=2, modes=['rev'])


def test_normalize_gradient():
  f = jnp.asarray(_feats(31))
  p = jnp.asarray(_feats(32))
  for scale in (1.0, 1000.0):  # the term's magnitude does not reach the gradient
    weight = jnp.float32(3.0)

    def loss(x, scale=scale, weight=weight):
      return weight * scale * losses.content_layer_loss(losses.normalize_gradient(x, weight), p)

    h = 2 * (np.asarray(f, np.float64) - np.asarray(p)) / f.size * scale
    want = 3.0 * h / (np.abs(3.0 * h).sum() + losses.NORMALIZE_EPS) * 3.0
    np.testing.assert_allclose(jax.grad(loss)(f), want, rtol=1e-5)
    np.testing.assert_allclose(np.abs(jax.grad(loss)(f)).sum(), 3.0, rtol=1e-5)
    # The value itself is untouched.
    np.testing.assert_allclose(loss(f), 3.0 * scale * np.mean((f - p) ** 2), rtol=1e-5)


def test_masked_content_and_region_style_terms():
  f, p = _feats(33), _feats(34)
  t = np.random.default_rng(35).uniform(size=(5, 6)).astype(np.float32)
  want = np.mean(t[..., None] * (f.astype(np.float64) - p) ** 2)
  np.testing.assert_allclose(losses.content_layer_loss(f, p, t), want, rtol=1e-5)
  np.testing.assert_allclose(
    losses.content_layer_loss(f, p, np.ones((5, 6))), losses.content_layer_loss(f, p), rtol=1e-6
  )
  # Trial 40: JAX's broadcasting words (or a [1, H, W] mask broadcast), where gram_matrix spoke.
  for shape in [(3, 3), (5, 6, 4), (1, 5, 6), (6, 5)]:
    with pytest.raises(errors.ConfigError) as e:
      losses.content_loss({'r': f}, {'r': p}, layers=('r',), masks={'r': np.ones(shape)})
    assert str(e.value) == (
      f"r: content_loss: mask {shape} does not match the features' (5, 6) positions; give one "
      "[H, W] at the features' size (nst_jax.core.vgg.mask_at_layer)"
    )
  # Two regions, each with its own style Gram, under its own guidance.
  masks = np.stack([t, 1 - t])
  a = np.stack([_np_gram(_feats(36)), _np_gram(_feats(37))]).astype(np.float32)

  def np_guided(mask):
    m = f.reshape(30, 4).astype(np.float64) * mask.reshape(30, 1)
    return m.T @ m / np.sum(mask.astype(np.float64) ** 2)

  want = sum(np.mean((np_guided(masks[s]) - a[s]) ** 2) for s in range(2))
  got = losses.style_layer_loss(f, {'gram': a}, kind='gram', masks=masks)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  with pytest.raises(errors.ConfigError) as e:
    losses.style_layer_loss(f, {'gram': a}, kind='gram')
  assert str(e.value) == '2 style regions need 2 masks; give one per region'
  with pytest.raises(errors.ConfigError) as e:
    losses.style_layer_loss(f, {'quantiles': np.zeros((2, 30, 4))}, kind='histogram', masks=masks)
  assert str(e.value) == (
    "the histogram style loss does not take masks; use style_loss 'gram' or 'mean_cov' with "
    'masks, or blend the styles (blend weights) without them'
  )


def test_an_empty_style_region_adds_zero():
  # A trial found one all-zero style mask made the loss NaN (0 * m / tiny,
  # which overflowed): stylize then blamed the weights. An empty region has
  # the Gram 0 and adds nothing, in value and gradient.
  f = _feats(40)
  np.testing.assert_array_equal(statistics.gram_matrix(f, np.zeros((5, 6))), np.zeros((4, 4)))
  masks = np.stack([np.ones((5, 6)), np.zeros((5, 6))]).astype(np.float32)
  a = np.stack([_np_gram(_feats(41)), _np_gram(_feats(42))]).astype(np.float32)
  for kind, target in (
    ('gram', {'gram': a}),
    ('mean_cov', jax.tree.map(lambda *x: jnp.stack(x), *(
      statistics.mean_cov_target(*statistics.mean_cov(_feats(s))) for s in (41, 42)
    ))),
  ):  # fmt: skip
    alone = losses.style_layer_loss(f, jax.tree.map(lambda x: x[:1], target), kind=kind)

    def masked(x, kind=kind, target=target):
      return losses.style_layer_loss(x, target, kind=kind, masks=masks)

    assert float(jax.jit(masked)(f)) == pytest.approx(float(alone), rel=1e-5)
    assert bool(jnp.all(jnp.isfinite(jax.grad(masked)(f))))


def test_tv_loss_of_one_row_or_column_counts_only_the_other_direction():
  """A direction with no neighbouring pairs adds 0 (it was the NaN mean of no differences)."""
  x = np.random.default_rng(1).normal(0, 30, (5, 6, 3)).astype(np.float32)
  row, column = x[:1], x[:, :1]
  np.testing.assert_allclose(
    jax.jit(losses.tv_loss)(row), np.mean(np.square(np.diff(row, axis=1))), rtol=1e-6
  )
  np.testing.assert_allclose(
    losses.tv_loss(column), np.mean(np.square(np.diff(column, axis=0))), rtol=1e-6
  )
  assert float(losses.tv_loss(x[:1, :1])) == 0.0
  grad = jax.grad(losses.tv_loss)(jnp.asarray(row))
  np.testing.assert_allclose(grad[0, 0], 2 * (row[0, 0] - row[0, 1]) / (6 - 1) / 3, rtol=1e-5)
  assert np.isfinite(np.asarray(jax.grad(losses.tv_loss)(jnp.asarray(x[:1, :1])))).all()


def test_style_loss_names_a_target_of_another_statistic():
  """A Gram for 'mean_cov' or 'histogram' was "4 style regions need 4 masks" (C = 4 rows)."""
  f = np.random.default_rng(2).normal(size=(5, 6, 4)).astype(np.float32)
  g = np.asarray(statistics.gram_matrix(f))
  fix = (
    'make it with make_targets(..., loss_spec=) of style_loss={0!r}, or pass kind= the '
    'statistic it holds'
  )
  for kind in ('mean_cov', 'histogram'):
    for target in ({'gram': g}, g):
      with pytest.raises(errors.ConfigError) as e:
        losses.style_loss({'a': f}, {'a': target}, layer_weights={'a': 1.0}, kind=kind)
      want = f'a: the style target holds gram, not {kind!r} statistics; ' + fix.format(kind)
      assert str(e.value) == want
  stats = statistics.mean_cov_target(np.zeros(4), np.eye(4))
  with pytest.raises(errors.ConfigError) as e:
    losses.style_layer_loss(f, stats, kind='gram')
  assert str(e.value) == (
    "the style target holds mean, cov_sqrt, cov_trace, not 'gram' statistics; " + fix.format('gram')
  )
  np.testing.assert_allclose(
    losses.style_loss({'a': f}, {'a': g}, layer_weights={'a': 2.0}), 0.0, atol=1e-6
  )


def test_tv_loss_refuses_a_batch():
  # [N, H, W, 3] would difference the batch axis and never the width (trial 4).
  with pytest.raises(errors.ConfigError, match=r'tv_loss expects one image \[H, W, 3\], got shape'):
    losses.tv_loss(np.zeros((2, 4, 5, 3), np.float32))


def test_tv_loss_refuses_channels_first_naming_the_transpose():
  """[3, H, W] passed the rank check and differenced the channels: 9390.75 for 9969.25 (trial 7)."""
  x = np.random.default_rng(0).uniform(0, 255, (8, 10, 3)).astype(np.float32)
  for bad, fix in (
    (x.transpose(2, 0, 1), 'if it is channels-first, move the channels last: x.transpose(1, 2, 0)'),
    (x[..., :1], 'repeat the grey channel: np.repeat(x, 3, -1)'),
    (x[..., 0], 'if it is greyscale, repeat it as RGB: np.repeat(x[..., None], 3, -1)'),
  ):
    with pytest.raises(errors.ConfigError) as e:
      losses.tv_loss(bad)
    assert str(e.value) == f'tv_loss expects one image [H, W, 3], got shape {bad.shape}; {fix}'
  want = np.mean(np.square(np.diff(x, axis=0))) + np.mean(np.square(np.diff(x, axis=1)))
  np.testing.assert_allclose(jax.jit(losses.tv_loss)(x), want, rtol=1e-5)


def test_a_mask_whose_squares_underflow_is_an_empty_region():
  # Values of 1e-20 pass `mask > 0` but sum(T^2) is 0 in float32: the Gram's
  # scale called the region empty while the region test did not (trial 4).
  f = _feats(7, (4, 4, 3))
  target = {'gram': np.stack([statistics.gram_matrix(f), 2 * statistics.gram_matrix(f)])}
  tiny = np.stack([np.ones((4, 4)), np.full((4, 4), 1e-20)]).astype(np.float32)
  empty = np.stack([np.ones((4, 4)), np.zeros((4, 4))]).astype(np.float32)
  for kind, t in (('gram', target),):
    got = losses.style_layer_loss(f, t, kind=kind, masks=tiny)
    np.testing.assert_allclose(got, losses.style_layer_loss(f, t, kind=kind, masks=empty))
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


def test_style_loss_takes_a_bare_gram_and_names_a_wrong_one_and_a_list_of_weights():
  """{'gram': [C, C]} and a wrong-shaped Gram were told 16 regions need 16 masks; a list of
  layer weights gave AttributeError 'items' (trial 7 (c)4, (c)5)."""
  f = _feats(3, (4, 5, 16))
  a = np.asarray(statistics.gram_matrix(0.5 * f))
  want = np.mean(np.square(_np_gram(f) - a))

  def loss(target, weights=None):
    return losses.style_loss({'a': f}, {'a': target}, layer_weights=weights or {'a': 1.0})

  for target in (a, {'gram': a}, {'gram': a[None]}):
    np.testing.assert_allclose(loss(target), want, rtol=1e-5)
  for bad in (a[:, :1], a[None, :8, :8]):
    with pytest.raises(errors.ConfigError) as e:
      loss({'gram': bad})
    assert str(e.value) == (
      f"a: the style target's 'gram' has shape {bad.shape}, but these features' Gram is "
      '(16, 16); give [S, 16, 16] (one region: A[None]), from the same network and layers'
    )
  with pytest.raises(errors.ConfigError) as e:
    loss(a, [1.0])
  assert str(e.value) == (
    "layer_weights is a list; give a dict layer -> weight, e.g. {'relu1_1': 1.0} (a LossSpec's "
    '.layer_weights)'
  )
