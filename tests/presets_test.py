"""The presets: each file parses, and its weights reproduce the source's loss.

The mappings in presets/*.flags are derivations (written out in each file);
here they are checked numerically against the sources' formulas in numpy, on
features of the same (generated) weights at the size the files assume.
"""

from pathlib import Path
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax.cli.flags import PRESETS
from nst_jax.core import losses
from nst_jax.core import pixels
from nst_jax.core.objective import make_targets
from nst_jax.core.objective import objective
from nst_jax.core.step import make_model
from nst_jax.io import images as image_lib

ROOT = Path(__file__).resolve().parent.parent
# The size the presets' weights are derived for: 512 px wide, 4:3.
HEIGHT, WIDTH = 384, 512


def _values(name: str) -> dict[str, str]:
  text = (ROOT / 'presets' / f'{name}.flags').read_text()
  return dict(re.findall(r'^--(\w+)=(.*)$', text, re.M))


def test_every_preset_is_listed_and_names_real_flags():
  assert set(PRESETS) == {'paper', 'classic', 'fast_cpu'}
  for name, path in PRESETS.items():
    assert path == ROOT / 'presets' / f'{name}.flags'
    for line in path.read_text().splitlines():
      # Every line is a comment or one --flag=value (absl's flagfile syntax).
      assert line.startswith('#') or re.fullmatch(r'--\w+(=\S+)?', line), (name, line)


def _loss_parts(name: str, weights) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
  """Our objective's parts under the preset, and the features behind them."""
  v = _values(name)
  layer_weights = v.get('style_layer_weights')
  loss_config = nst_jax.LossConfig(
    content_layers=tuple(v['content_layers'].split(',')),
    style_layers=tuple(v['style_layers'].split(',')),
    style_layer_weights=tuple(map(float, layer_weights.split(','))) if layer_weights else None,
  )
  model = make_model(v['pooling'])
  convention = weights.info.input_convention
  rng = np.random.default_rng(1)
  content_rgb = image_lib.load_image(ROOT / 'content_images' / 'tubingen.jpg', width=WIDTH)
  assert content_rgb.shape == (HEIGHT, WIDTH, 3)
  style_rgb = pixels.resize(
    image_lib.load_image(ROOT / 'style_images' / 'starry_night.jpg')[None], HEIGHT, WIDTH
  )[0]
  x_rgb = np.clip(0.5 * content_rgb + 0.5 * rng.uniform(size=content_rgb.shape), 0, 1)
  images = [pixels.preprocess(jnp.asarray(a, jnp.float32)[None], convention)
            for a in (content_rgb, style_rgb, x_rgb)]  # fmt: skip
  targets = make_targets(
    weights.params, images[0], images[1], model=model, loss_spec=loss_config.spec,
    content_weight=float(v['contentweight']), style_weight=float(v['styleweight']),
    tv_weight=float(v['tv_weight']),
  )  # fmt: skip
  one = jax.tree.map(lambda t: t[0], targets)
  _, aux = objective(images[2][0], weights.params, one, model=model, loss_spec=loss_config.spec)
  layers = loss_config.feature_layers
  feats = [
    {
      k: np.asarray(f[0], np.float64)
      for k, f in model.apply({'params': weights.params}, im, layers).items()
    }  # noqa: E501
    for im in images
  ]
  parts = {k: float(a) for k, a in aux.items()}
  parts |= {k: float(v[k]) for k in ('contentweight', 'styleweight', 'tv_weight')}
  return parts, feats, loss_config, np.asarray(images[2][0], np.float64)


@pytest.fixture(scope='module')
def weights(caffe_npz):
  return nst_jax.load_weights(caffe_npz)


@pytest.mark.slow
def test_paper_preset_has_the_papers_content_style_balance(weights):
  # Gatys et al. 2016: alpha * 1/2 sum (F - P)^2 + beta * sum_l 1/5 * E_l,
  # E_l = sum (F^T F - S^T S)^2 / (4 N^2 M^2), alpha / beta = 1e-3.
  parts, (p, s, f), loss_config, _ = _loss_parts('paper', weights)
  alpha, beta = 1e-3, 1.0
  paper_content = alpha * 0.5 * np.sum((f['relu4_2'] - p['relu4_2']) ** 2)
  paper_style = 0.0
  for name in loss_config.style_layers:
    fl, sl = f[name].reshape(-1, f[name].shape[-1]), s[name].reshape(-1, s[name].shape[-1])
    m, n = fl.shape
    paper_style += beta / 5 * np.sum((fl.T @ fl - sl.T @ sl) ** 2) / (4 * n**2 * m**2)
  ours_content = parts['contentweight'] * parts['content']
  ours_style = parts['styleweight'] * parts['style']
  # The same balance (the total is scaled, which L-BFGS does not see).
  np.testing.assert_allclose(ours_content / ours_style, paper_content / paper_style, rtol=1e-3)
  assert 0.05 < ours_content / ours_style < 20  # a test image where both terms matter


@pytest.mark.slow
def test_classic_preset_reproduces_neural_style_loss(weights):
  # jcjohnson/neural-style: content_weight * mean((F - P)^2) +
  # style_weight * sum_l mean((G_l - A_l)^2), G = F^T F / (C H W).
  parts, (p, s, f), loss_config, x = _loss_parts('classic', weights)
  theirs = 5 * np.mean((f['relu4_2'] - p['relu4_2']) ** 2)
  for name in loss_config.style_layers:
    fl, sl = f[name].reshape(-1, f[name].shape[-1]), s[name].reshape(-1, s[name].shape[-1])
    theirs += 100 * np.mean((fl.T @ fl / fl.size - sl.T @ sl / sl.size) ** 2)
  ours = parts['total'] - parts['tv_weight'] * parts['tv']
  np.testing.assert_allclose(ours, theirs, rtol=1e-4)
  # Its TVLoss adds the gradient of 1e-3 * 1/2 * sum(dx^2 + dy^2) over the
  # (H-1) x (W-1) corner; ours differs only along the last row and column.
  dx = x[:-1, :-1] - x[:-1, 1:]
  dy = x[:-1, :-1] - x[1:, :-1]
  grad_theirs = np.zeros_like(x)
  grad_theirs[:-1, :-1] += dx + dy
  grad_theirs[:-1, 1:] -= dx
  grad_theirs[1:, :-1] -= dy
  grad_theirs *= 1e-3
  grad_ours = parts['tv_weight'] * np.asarray(jax.grad(losses.tv_loss)(x.astype(np.float32)))
  inner = (slice(1, -1), slice(1, -1))
  # Our means divide by (H-1) W and H (W-1) where the file's weight assumed
  # H W, so the gradients agree to 1/(H-1) = 0.26% inside the image.
  diff = np.linalg.norm(grad_ours[inner] - grad_theirs[inner])
  assert diff / np.linalg.norm(grad_theirs[inner]) < 1 / (HEIGHT - 1) + 1e-4
