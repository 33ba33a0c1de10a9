"""Colour math for the colour controls of Gatys et al. 2017 (pure JAX).

YIQ, luminance, chroma transfer and linear colour matching (`match_color`):
used for `color.preserve_colors` and `color.color_match`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import pixels

# YIQ, the FCC's 1953 NTSC definition: Y is Rec. 601 luma, I and Q the two
# chroma axes. Rows give Y, I, Q from R, G, B; the inverse is computed, so the
# round trip is exact to float precision.
RGB_TO_YIQ = np.array(
  [
    [0.299, 0.587, 0.114],
    [0.595716, -0.274453, -0.321263],
    [0.211456, -0.522591, 0.311135],
  ]
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
COLOR_MATCH_MODES = ('pca', 'cholesky')
# Added to both colour covariances before matching, so a flat (single-colour)
# image still gives an invertible map; about (0.003)^2 in [0, 1] units.
COLOR_COV_EPS = 1e-5


def rgb_to_yiq(rgb: jax.typing.ArrayLike) -> jax.Array:
  """[..., 3] RGB -> [..., 3] YIQ (`RGB_TO_YIQ`)."""
  return jnp.einsum('...c,dc->...d', jnp.asarray(rgb, jnp.float32), RGB_TO_YIQ.astype(np.float32))


def yiq_to_rgb(yiq: jax.typing.ArrayLike) -> jax.Array:
  """[..., 3] YIQ -> [..., 3] RGB, the exact inverse of `rgb_to_yiq`."""
  return jnp.einsum('...c,dc->...d', jnp.asarray(yiq, jnp.float32), YIQ_TO_RGB.astype(np.float32))


def luminance_image(
  rgb: jax.typing.ArrayLike, like: jax.typing.ArrayLike | None = None
) -> jax.Array:
  """The luminance Y of [N, H, W, 3] RGB as a grey RGB image (Y, Y, Y).

  With `like`, Y is first matched to the mean and standard deviation of
  `like`'s luminance, per image: Y' = (Y - mu) * sigma_like / sigma + mu_like
  (Gatys et al. 2017, Sec. 5.1: the style's luminance histogram is brought to
  the content's before luminance-only transfer).

  Args:
    rgb: [N, H, W, 3].
    like: optional [M, H', W', 3] with M == N, or N or M equal to 1.

  Returns:
    [max(N, M), H, W, 3] float32.
  """
  y = rgb_to_yiq(rgb)[..., :1]
  if like is not None:
    y_like = rgb_to_yiq(like)[..., :1]
    axes = (1, 2, 3)
    mu, sigma = jnp.mean(y, axes, keepdims=True), jnp.std(y, axes, keepdims=True)
    mu_l, sigma_l = jnp.mean(y_like, axes, keepdims=True), jnp.std(y_like, axes, keepdims=True)
    y = (y - mu) * (sigma_l / jnp.maximum(sigma, 1e-6)) + mu_l
  return jnp.concatenate([y, y, y], axis=-1)


def transfer_chroma(rgb: jax.typing.ArrayLike, colors: jax.typing.ArrayLike) -> jax.Array:
  """The luminance of `rgb` with the chroma (I, Q) of `colors`, clipped to [0, 1].

  The classic tools' original-colours post-process. jcjohnson/neural-style
  does it in YUV: Y is the same luma, and (U, V) and (I, Q) span the same
  chroma plane, so the RGB result is the same in either space.

  Args:
    rgb: [N, H, W, 3] stylised images.
    colors: [N, H, W, 3] (or [1, ...]) images whose colours are kept.
  """
  y = rgb_to_yiq(rgb)[..., :1]
  iq = rgb_to_yiq(colors)[..., 1:]
  iq = jnp.broadcast_to(iq, (*y.shape[:-1], 2))
  return jnp.clip(yiq_to_rgb(jnp.concatenate([y, iq], axis=-1)), 0.0, 1.0)


def _color_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  flat = x.reshape(x.shape[0], -1, 3)
  mu = jnp.mean(flat, axis=1)
  centred = flat - mu[:, None, :]
  cov = jnp.einsum('npi,npj->nij', centred, centred) / flat.shape[1]
  return mu, cov + COLOR_COV_EPS * jnp.eye(3, dtype=jnp.float32)[None]


def _sym_power(cov: jax.Array, power: float) -> jax.Array:
  lam, v = jnp.linalg.eigh(cov)
  return jnp.einsum('nij,nj,nkj->nik', v, lam**power, v)


def match_color(
  source: jax.typing.ArrayLike, reference: jax.typing.ArrayLike, mode: str = 'pca'
) -> jax.Array:
  """Maps `source`'s colours so their mean and covariance equal `reference`'s.

  Gatys et al. 2017, Sec. 5.2 ("colour histogram matching"): x' = A (x - mu_s)
  + mu_r with A Sigma_s A^T = Sigma_r, where
    'pca':      A = Sigma_r^{1/2} Sigma_s^{-1/2} (symmetric square roots; the
                paper's Image Analogies variant),
    'cholesky': A = L_r L_s^{-1} with Sigma = L L^T.
  Both match the first two moments exactly; they differ by a rotation of the
  colour space. The result is clipped to [0, 1] (the moments then hold up to
  the clipped pixels).

  Args:
    source: [N, H, W, 3] RGB in [0, 1] (the style images).
    reference: [M, H', W', 3] RGB (the content images); N == M or either 1.
    mode: 'pca' or 'cholesky'.

  Returns:
    [max(N, M), H, W, 3] float32.
  """
  if mode not in COLOR_MATCH_MODES:
    raise errors.ConfigError(
      f'unknown colour match mode {mode!r}; use one of {", ".join(map(repr, COLOR_MATCH_MODES))}'
    )
  for name, value in (('source', source), ('reference', reference)):
    shape = tuple(np.shape(value))
    if len(shape) != 4 or shape[-1] != 3:  # one [H, W, 3] image read its rows as images
      raise errors.ConfigError(
        f'{name} must be [N, H, W, 3] RGB images, got shape {shape}'
        f'{pixels.layout_fix(shape, batched=True)}'
      )
  x = jnp.asarray(source, jnp.float32)
  r = jnp.asarray(reference, jnp.float32)
  n = max(x.shape[0], r.shape[0])
  mu_s, cov_s = _color_stats(x)
  mu_r, cov_r = _color_stats(r)
  if mode == 'pca':
    a = _sym_power(cov_r, 0.5) @ _sym_power(cov_s, -0.5)
  else:
    a = jnp.linalg.cholesky(cov_r) @ jnp.linalg.inv(jnp.linalg.cholesky(cov_s))
  x = jnp.broadcast_to(x, (n, *x.shape[1:]))
  a = jnp.broadcast_to(a, (n, 3, 3))
  mu_s = jnp.broadcast_to(mu_s, (n, 3))[:, None, None, :]
  mu_r = jnp.broadcast_to(mu_r, (n, 3))[:, None, None, :]
  out = jnp.einsum('nhwi,nji->nhwj', x - mu_s, a) + mu_r
  return jnp.clip(out, 0.0, 1.0)
