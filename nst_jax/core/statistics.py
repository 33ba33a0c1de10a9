"""Statistics of feature maps that the style terms compare (pure JAX).

For features F [H, W, C] as a matrix [M, C] (M = H*W positions, optionally
weighted by a mask T at the layer's resolution):
  * `gram_matrix`: G = F^T F / M (Gatys et al. 2016), with a custom VJP that
    keeps the backward pass one matmul;
  * `mean_cov`, `mean_cov_target`, `mean_cov_loss`: Gaussian fits and the
    Wasserstein-2 distance between them (`trace_sqrtm`, `nuclear_norm`);
  * `style_quantiles`, `histogram_match`, `histogram_loss`: the histogram loss
    of Risser et al. 2017;
  * `layer_targets`: one layer's targets from the style images, blended.
The losses built from them are in nst_jax.core.losses.
"""

from collections.abc import Mapping, Sequence

import jax
from jax import lax
import jax.numpy as jnp

from nst_jax import errors

# In the gradient of tr(sqrt(A)), eigenvalues below this fraction of the
# largest count as this fraction: d sqrt(l) / dl = 1 / (2 sqrt(l)) is
# unbounded at l = 0, and dead ReLU channels give exact zeros.
SQRT_EIG_FLOOR = 1e-6
_TINY = float(jnp.finfo(jnp.float32).tiny)


@jax.custom_vjp
def _gram(f: jax.Array) -> jax.Array:
  m = f.shape[0]
  # A contraction over positions, not `f.T @ f`: under vmap (the step is
  # vmapped over the batch) the explicit transpose became a materialised
  # copy of every feature map, 7% of a 512x512 iteration on CPU (measured).
  g = lax.dot_general(f, f, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return g / m


def _gram_fwd(f):
  return _gram(f), f


def _gram_bwd(f, g):
  # d(F^T F / M) = F (g + g^T) / M as one matmul. JAX's automatic transpose
  # emits two dots and an add, which is 1.4-1.6x slower on CPU (measured).
  m = f.shape[0]
  df = jnp.matmul(f, (g + g.T) / m, preferred_element_type=jnp.float32)
  return (df.astype(f.dtype),)


_gram.defvjp(_gram_fwd, _gram_bwd)


def _flat(features: jax.typing.ArrayLike, what: str) -> jax.Array:
  f = jnp.asarray(features)
  if f.ndim != 3:
    raise errors.ConfigError(
      f"{what} expects one image's features [H, W, C], got shape {f.shape}; jax.vmap it over "
      'a batch'
    )
  h, w, c = f.shape
  return f.reshape(h * w, c)


def _mask_column(mask: jax.typing.ArrayLike, hw: tuple[int, ...], what: str) -> jax.Array:
  t = jnp.asarray(mask, jnp.float32)
  if t.shape != tuple(hw):  # [7, 6] for [6, 7] features was reshaped, positions scrambled
    raise errors.ConfigError(
      f"{what}: mask {t.shape} does not match the features' {tuple(hw)} positions; give one "
      "[H, W] at the features' size (nst_jax.core.vgg.mask_at_layer)"
    )
  return t.reshape(-1, 1)


def gram_matrix(
  features: jax.typing.ArrayLike, mask: jax.typing.ArrayLike | None = None
) -> jax.Array:
  """Gram matrix of one feature map, normalised by the number of positions.

  Dividing by M = H*W (not by H*W*C, nor unnormalised) makes the Gram an
  average over positions, so it does not grow with the image: a style image
  and a result of different sizes are compared on the same scale.

  With a guidance mask T (Gatys et al. 2017, eq. 7) the features are weighted
  before the product and the average runs over the region:
  G_T = (F * T)^T (F * T) / sum(T^2). An all-ones mask gives the plain Gram,
  an all-zero one the zero matrix.

  Args:
    features: [H, W, C], any float dtype.
    mask: optional [H, W] guidance in [0, 1].

  Returns:
    [C, C] float32.
  """
  f = _flat(features, 'gram_matrix')
  if mask is None:
    return _gram(f)
  t = _mask_column(mask, jnp.shape(features)[:2], 'gram_matrix')
  m = f.shape[0]
  # An empty region (sum(T^2) = 0) has the Gram 0: m / tiny overflowed to
  # inf, and 0 * inf made the loss NaN.
  area = jnp.sum(t * t)
  scale = jnp.where(area > 0, m / jnp.where(area > 0, area, 1.0), 0.0)
  return _gram(f * t.astype(f.dtype)) * scale


def mean_cov(
  features: jax.typing.ArrayLike, mask: jax.typing.ArrayLike | None = None
) -> tuple[jax.Array, jax.Array]:
  """Mean and covariance of the feature vectors over positions.

  mu = sum_p w_p f_p and Sigma = sum_p w_p (f_p - mu)(f_p - mu)^T, with
  w_p = 1/M, or w_p = T_p^2 / sum(T^2) under a guidance mask (the weighting
  of the guided Gram, so that Gram = Sigma + mu mu^T in both cases).

  Args:
    features: [H, W, C].
    mask: optional [H, W] guidance in [0, 1].

  Returns:
    ([C], [C, C]) float32.
  """
  f = _flat(features, 'mean_cov').astype(jnp.float32)
  w, mu, centred = _centre(f, mask, 'mean_cov', jnp.shape(features)[:2])
  cov = lax.dot_general(centred * w, centred, (((0,), (0,)), ((), ())))
  return mu, cov


def _centre(f: jax.Array, mask, what: str, hw) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`mean_cov`'s weights w [M, 1] (1/M, or T^2 / sum(T^2)), mean mu [C] and F - mu [M, C]."""
  if mask is None:
    w = jnp.full((f.shape[0], 1), 1.0 / f.shape[0], jnp.float32)
  else:
    t = _mask_column(mask, hw, what)
    w = t * t / jnp.maximum(jnp.sum(t * t), _TINY)
  mu = jnp.sum(w * f, axis=0)
  return w, mu, f - mu[None, :]


def sqrtm_psd(a: jax.typing.ArrayLike) -> jax.Array:
  """Principal square root of a symmetric positive semi-definite matrix.

  Through the eigendecomposition A = V diag(l) V^T: sqrt(A) = V diag(sqrt(l))
  V^T, with round-off negatives in l set to 0. Used for targets only (no
  gradient is needed through it).

  Args:
    a: [C, C], symmetric PSD.

  Returns:
    [C, C] float32.
  """
  a = jnp.asarray(a, jnp.float32)
  lam, v = jnp.linalg.eigh((a + a.T) / 2)
  return (v * jnp.sqrt(jnp.maximum(lam, 0.0))[None, :]) @ v.T


@jax.custom_vjp
def trace_sqrtm(a: jax.Array, floor: jax.typing.ArrayLike = 0.0) -> jax.Array:
  """tr(sqrt(A)) = sum_i sqrt(l_i) for symmetric PSD A [C, C], scalar float32.

  The gradient is (1/2) A^{-1/2} = V diag(1 / (2 sqrt(l_i))) V^T, with each
  l_i raised to at least max(SQRT_EIG_FLOOR * max(l), floor): the derivative
  of sqrt is unbounded at 0, and covariances of ReLU features are often
  singular (dead channels; all of them for a flat image). It uses only
  eigenvalues, never eigenvector derivatives, so repeated eigenvalues are
  harmless (JAX's eigh derivative divides by their differences).

  Args:
    a: [C, C] symmetric PSD.
    floor: absolute lower bound on the eigenvalues in the gradient (it has none).
  """
  lam = jnp.linalg.eigvalsh((a + a.T) / 2)
  return jnp.sum(jnp.sqrt(jnp.maximum(lam, 0.0)))


def _trace_sqrtm_fwd(a, floor):
  lam, v = jnp.linalg.eigh((a + a.T) / 2)
  value = jnp.sum(jnp.sqrt(jnp.maximum(lam, 0.0)))
  return value, (lam, v, floor)


def _trace_sqrtm_bwd(residuals, g):
  lam, v, floor = residuals
  d = 0.5 / jnp.sqrt(jnp.maximum(lam, _eig_floor(lam, floor)))
  return g * ((v * d[None, :]) @ v.T), jnp.zeros_like(floor)


trace_sqrtm.defvjp(_trace_sqrtm_fwd, _trace_sqrtm_bwd)


def _eig_floor(lam: jax.Array, floor) -> jax.Array:
  return jnp.maximum(jnp.maximum(SQRT_EIG_FLOOR * jnp.max(lam), floor), _TINY)


@jax.custom_vjp
def nuclear_norm(a: jax.Array, floor: jax.typing.ArrayLike = 0.0) -> jax.Array:
  """tr(sqrt(A^T A)) = sum_i s_i, the singular values of A [M, C], scalar float32.

  `trace_sqrtm(A^T A)` from A itself: an SVD finds s_i to about eps * s_max,
  an eigendecomposition of A^T A its s_i^2 to eps * s_max^2, so sqrt(eps) *
  s_max (3e-4 of it in float32) per null direction of a rank-deficient A^T A.
  The gradient is `trace_sqrtm`'s chained through A^T A: U diag(s_i / s'_i)
  V^T, s'_i^2 = s_i^2 floored as there (U V^T where A has full rank).

  Args:
    a: [M, C].
    floor: as `trace_sqrtm`'s, a lower bound on the s_i^2 in the gradient.
  """
  return jnp.sum(jnp.linalg.svd(a, compute_uv=False))


def _nuclear_norm_fwd(a, floor):
  u, sv, vt = jnp.linalg.svd(a, full_matrices=False)
  return jnp.sum(sv), (u, sv, vt, floor)


def _nuclear_norm_bwd(residuals, g):
  u, sv, vt, floor = residuals
  lam = jnp.square(sv)
  d = sv / jnp.sqrt(jnp.maximum(lam, _eig_floor(lam, floor)))
  return g * ((u * d[None, :]) @ vt), jnp.zeros_like(floor)


nuclear_norm.defvjp(_nuclear_norm_fwd, _nuclear_norm_bwd)


def mean_cov_target(mean: jax.typing.ArrayLike, cov: jax.typing.ArrayLike) -> dict[str, jax.Array]:
  """The precomputed style statistics `mean_cov_loss` compares against.

  Returns:
    {'mean': [C], 'cov_sqrt': sqrt(Sigma_s) [C, C], 'cov_trace': tr(Sigma_s) []}.
  """
  cov = jnp.asarray(cov, jnp.float32)
  return {
    'mean': jnp.asarray(mean, jnp.float32),
    'cov_sqrt': sqrtm_psd(cov),
    'cov_trace': jnp.trace(cov),
  }


def mean_cov_loss(
  features: jax.typing.ArrayLike,
  target: Mapping[str, jax.Array],
  mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Squared Wasserstein-2 distance between Gaussian fits, per channel.

  With (mu, Sigma) = `mean_cov(features, mask)` and the style's (mu_s,
  Sigma_s), S = sqrt(Sigma_s):

    L = (|mu - mu_s|^2 + tr(Sigma) + tr(Sigma_s) - 2 tr(sqrt(S Sigma S))) / C

  the closed form of W2^2 between N(mu, Sigma) and N(mu_s, Sigma_s) (Dowson &
  Landau 1982; for style: Kolkin et al. 2019, Mroueh 2019), divided by the
  channel count C so layers of different width weigh alike. It is 0 exactly
  when mean and covariance match, and unlike the Gram term it is in squared
  feature units, not their square.

  Where M <= C (relu5_1 below 360 px) Sigma is singular, and each rounding
  eigenvalue l of the C x C S Sigma S added sqrt(l) (12% low at relu5_1 at 64
  px). There the trace is `nuclear_norm(A)`, A = diag(sqrt(w)) (F - mu) S
  [M, C] (S Sigma S = A^T A; w: `mean_cov`'s weights), within 1e-5 of
  float64; where M > C, the cheaper `mean_cov_distance`.

  Args:
    features: [H, W, C].
    target: from `mean_cov_target`.
    mask: optional [H, W] guidance.

  Returns:
    Scalar float32.
  """
  f = _flat(features, 'mean_cov_loss').astype(jnp.float32)
  m, c = f.shape
  if m > c:
    return mean_cov_distance(*mean_cov(features, mask), target)
  w, mu, centred = _centre(f, mask, 'mean_cov_loss', jnp.shape(features)[:2])
  a = (jnp.sqrt(w) * centred) @ target['cov_sqrt'].astype(jnp.float32)
  trace = jnp.sum(w * jnp.square(centred))  # tr(Sigma)
  w2 = jnp.sum(jnp.square(mu - target['mean'])) + trace + target['cov_trace']
  w2 -= 2 * nuclear_norm(a, _cross_floor(target, c))
  return w2 / c


def _cross_floor(target: Mapping[str, jax.Array], c: int) -> jax.Array:
  # At the optimum S Sigma S = Sigma_s^2: its gradient's eigenvalue floor, relative
  # to the style's mean variance squared, so a flat start gets a finite gradient.
  return SQRT_EIG_FLOOR * jnp.square(target['cov_trace'] / c)


def mean_cov_distance(mu: jax.Array, cov: jax.Array, target: Mapping[str, jax.Array]) -> jax.Array:
  """`mean_cov_loss` from the image's mean [C] and covariance [C, C] (as the tiles form them).

  Through the C x C S Sigma S's float32 eigenvalues (`trace_sqrtm`): off by
  a few 1e-3 of the term where M > C (measured), up to 12% low where M <= C.
  """
  s = target['cov_sqrt'].astype(jnp.float32)
  c = mu.shape[0]
  cross = trace_sqrtm(s @ cov @ s, _cross_floor(target, c))
  w2 = jnp.sum(jnp.square(mu - target['mean'])) + jnp.trace(cov) + target['cov_trace'] - 2 * cross
  return w2 / c


def style_quantiles(
  samples: Sequence[jax.typing.ArrayLike], weights: Sequence[float], m: int
) -> jax.Array:
  """Per-channel quantiles of a weighted mixture of feature sets, at m points.

  The target of `histogram_loss`. Sample set i (a style image's features,
  [M_i, C]) has total weight b_i spread evenly over its M_i vectors; each
  channel's quantile function is interpolated linearly between mid-point
  ranks, at probabilities (j + 1/2) / m for j < m. For one set with M_i = m
  this is exactly the sorted features.

  Args:
    samples: [M_i, C] arrays.
    weights: b_i >= 0, one per set (normalised here).
    m: number of positions of the image being optimised at this layer.

  Returns:
    [m, C] float32, sorted ascending along axis 0.
  """
  values = [jnp.asarray(x, jnp.float32) for x in samples]
  total = float(sum(weights))
  if len(values) == 1 and values[0].shape[0] == m:
    return jnp.sort(values[0], axis=0)
  v = jnp.concatenate(values, axis=0)
  w = jnp.concatenate(
    [
      jnp.full((x.shape[0],), b / total / x.shape[0], jnp.float32)
      for x, b in zip(values, weights, strict=True)
    ]
  )
  order = jnp.argsort(v, axis=0)
  sorted_v = jnp.take_along_axis(v, order, axis=0)
  sorted_w = w[order]
  cdf = jnp.cumsum(sorted_w, axis=0) - sorted_w / 2
  p = (jnp.arange(m, dtype=jnp.float32) + 0.5) / m
  interp = jax.vmap(lambda c, x: jnp.interp(p, c, x), in_axes=1, out_axes=1)
  return interp(cdf, sorted_v)


def histogram_match(features: jax.typing.ArrayLike, quantiles: jax.typing.ArrayLike) -> jax.Array:
  """R(F): each channel's values replaced by the target's, rank for rank.

  The exact (sort-based) histogram matching: the position holding the k-th
  smallest value of channel c gets quantiles[k, c]. Risser et al. match
  256-bin histograms; with one target value per position no binning is
  needed.

  Args:
    features: [H, W, C].
    quantiles: [H*W, C] sorted target values (`style_quantiles`).

  Returns:
    [H*W, C] float32.
  """
  f = _flat(features, 'histogram_match').astype(jnp.float32)
  q = jnp.asarray(quantiles, jnp.float32)
  if q.shape != f.shape:
    raise errors.ConfigError(
      f'histogram_match: quantiles {q.shape} vs features {f.shape}; give the quantiles of '
      'features of the same shape (layer_targets of the same layer and image size)'
    )
  order = jnp.argsort(f, axis=0)
  cols = jnp.arange(f.shape[1])[None, :]
  # One sort and a scatter, rather than a second argsort to invert the order.
  return jnp.zeros_like(f).at[order, cols].set(q, unique_indices=True)


def histogram_loss(features: jax.typing.ArrayLike, quantiles: jax.typing.ArrayLike) -> jax.Array:
  """Risser et al. 2017, eq. 5: L = mean((F - R(F))^2), R(F) held constant.

  R(F) = `histogram_match(F, quantiles)` is the nearest feature map (in
  squared error) with the style's per-channel histograms; the gradient
  2 (F - R(F)) / (M C) pulls every value towards its matched value.

  Args:
    features: [H, W, C].
    quantiles: [H*W, C] from `style_quantiles`.

  Returns:
    Scalar float32.
  """
  f = _flat(features, 'histogram_loss').astype(jnp.float32)
  r = lax.stop_gradient(histogram_match(features, quantiles))
  return jnp.mean(jnp.square(f - r))


def layer_targets(
  feats: list[jax.Array], blend: tuple[float, ...] | None, *, kind: str, n: int, m: int
) -> dict[str, jax.Array]:
  """One layer's style targets, [n, S, ...]: the statistics of the style images, blended.

  What `nst_jax.core.objective.make_targets` stores per style layer.

  Args:
    feats: per style image, [1 or n, h_i, w_i, C] features.
    blend: normalised blend weights (S = 1), or None for one region per style.
    kind: the style loss.
    n: batch size.
    m: positions of the optimised image at this layer ('histogram').
  """
  feats = [jnp.broadcast_to(f, (n, *f.shape[1:])) for f in feats]
  if kind == 'histogram':
    weights = blend or (1.0,)

    def quantiles(*fs):
      return style_quantiles([f.reshape(-1, f.shape[-1]) for f in fs], weights, m)

    return {'quantiles': jax.vmap(quantiles)(*feats)[:, None]}
  if kind == 'gram':
    stats = [{'gram': jax.vmap(gram_matrix)(f)} for f in feats]
  else:
    stats = [dict(zip(('mean', 'cov'), jax.vmap(mean_cov)(f), strict=True)) for f in feats]
  return blend_statistics(stats, blend, kind=kind)


def blend_statistics(
  stats: list[Mapping[str, jax.Array]], blend: tuple[float, ...] | None, *, kind: str
) -> dict[str, jax.Array]:
  """One layer's 'gram' or 'mean_cov' targets [n, S, ...] from each style image's statistics.

  Args:
    stats: per style image, {'gram': [n, C, C]} or {'mean': [n, C], 'cov':
      [n, C, C]} (from its features, or tile by tile: nst_jax.core.tiles).
    blend: normalised blend weights (S = 1), or None for one region per style.
    kind: 'gram' or 'mean_cov'.
  """
  if kind == 'gram':
    grams = [s['gram'] for s in stats]
    if blend is None:
      return {'gram': jnp.stack(grams, axis=1)}
    return {'gram': sum(b * g for b, g in zip(blend, grams, strict=True))[:, None]}
  means, covs = [s['mean'] for s in stats], [s['cov'] for s in stats]
  if blend is None:
    mu, cov = jnp.stack(means, axis=1), jnp.stack(covs, axis=1)
  else:
    # The mixture's mean and covariance: its second moment (the blended Gram)
    # minus mu mu^T, written around the mean for float32 accuracy.
    mu = sum(b * m_i for b, m_i in zip(blend, means, strict=True))
    cov = sum(
      b * (c_i + jnp.einsum('ni,nj->nij', m_i - mu, m_i - mu))
      for b, m_i, c_i in zip(blend, means, covs, strict=True)
    )
    mu, cov = mu[:, None], cov[:, None]
  return jax.vmap(jax.vmap(mean_cov_target))(mu, cov)
