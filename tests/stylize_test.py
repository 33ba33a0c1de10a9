"""Tests for nst_jax.stylize: the step, its state, targets and the loop."""

import collections
import dataclasses
import functools
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import checkpoint as checkpoint_lib
from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax import image as image_lib
from nst_jax import losses
from nst_jax import vgg
from nst_jax.stylize import StyleState
from nst_jax.stylize import default_output_path
from nst_jax.stylize import init_state
from nst_jax.stylize import initial_image
from nst_jax.stylize import is_time
from nst_jax.stylize import make_optimizer
from nst_jax.stylize import make_targets
from nst_jax.stylize import objective
from nst_jax.stylize import stylize
from nst_jax.stylize import update_step

_VGGTiny = functools.partial(vgg.VGG, stage_sizes=(1, 2), widths=(4, 8))
TINY_LOSS = config_lib.LossConfig(content_layers=('relu2_2',), style_layers=('relu1_1', 'relu2_1'))


def _problem(n=1, seed=0, hw=(16, 16)):
  model = _VGGTiny()
  params = model.init(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))['params']
  rng = np.random.default_rng(seed)
  content = jnp.asarray(rng.normal(0, 50, (n, *hw, 3)), jnp.float32)
  style = jnp.asarray(rng.normal(0, 50, (n, 12, 20, 3)), jnp.float32)
  targets = make_targets(
    params, content, style, model=model, loss_config=TINY_LOSS, content_weight=1.0, style_weight=1.0
  )
  return model, params, content, targets


def _jitted_step(model, optimizer):
  return jax.jit(
    functools.partial(update_step, model=model, optimizer=optimizer, loss_config=TINY_LOSS),
    donate_argnums=0,
  )


def test_targets_shapes_and_values():
  model, params, content, targets = _problem(n=2)
  chex.assert_shape(targets.content['relu2_2'], (2, 8, 8, 8))
  chex.assert_shape(targets.style['relu1_1']['gram'], (2, 1, 4, 4))
  chex.assert_shape(targets.style['relu2_1']['gram'], (2, 1, 8, 8))
  chex.assert_shape([targets.content_weight, targets.style_weight, targets.tv_weight], (2,))
  assert targets.content_mask is None and targets.style_masks is None
  # The content target is exactly the content image's features.
  feats = model.apply({'params': params}, content, ('relu2_2',))
  np.testing.assert_allclose(targets.content['relu2_2'], feats['relu2_2'], rtol=1e-6)


def test_one_style_is_shared_by_a_batch():
  model, params, content, _ = _problem(n=3)
  style = jnp.asarray(np.random.default_rng(1).normal(0, 50, (1, 12, 20, 3)), jnp.float32)
  targets = make_targets(
    params, content, style, model=model, loss_config=TINY_LOSS, content_weight=1, style_weight=2
  )
  chex.assert_shape(targets.style['relu2_1']['gram'], (3, 1, 8, 8))
  gram = targets.style['relu2_1']['gram']
  np.testing.assert_array_equal(gram[0], gram[2])
  np.testing.assert_array_equal(targets.style_weight, [2.0, 2.0, 2.0])
  with pytest.raises(ValueError, match='2 style images for 3 content images'):
    make_targets(
      params, content, jnp.concatenate([style, style]), model=model, loss_config=TINY_LOSS,
      content_weight=1, style_weight=1,
    )  # fmt: skip


def test_objective_is_zero_at_the_targets_and_matches_formula():
  model, params, content, targets = _problem()
  one = jax.tree.map(lambda x: x[0], targets)
  total, aux = jax.jit(functools.partial(objective, model=model, loss_config=TINY_LOSS))(
    content[0], params, one
  )
  assert float(aux['content']) == 0.0
  feats = model.apply({'params': params}, content, ('relu1_1', 'relu2_1'))
  want_style = sum(
    np.mean(
      (np.asarray(losses.gram_matrix(feats[k][0])) - np.asarray(one.style[k]['gram'][0])) ** 2
    )
    for k in ('relu1_1', 'relu2_1')
  )
  np.testing.assert_allclose(aux['style'], want_style, rtol=1e-5)
  np.testing.assert_allclose(total, want_style, rtol=1e-5)


def _fresh_step_cache(monkeypatch):
  monkeypatch.setattr(STYLE_MODULE, '_COMPILED_STEPS', collections.OrderedDict())


def test_later_runs_reuse_the_compiled_step(caffe_npz, monkeypatch):
  _fresh_step_cache(monkeypatch)
  rng = np.random.default_rng(0)
  content, style = rng.uniform(size=(2, 24, 32, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(iterations=3, print_iter=0)
  records = [{}, {}, {}, {}]

  def run(content, config, record):
    return stylize(content, style, config=config, weights=caffe_npz, record=record)

  first = run(content, cfg, records[0])
  # Other weights and images of the same size: the same program.
  again = run(content[::-1], dataclasses.replace(cfg, content_weight=3.0), records[1])
  # Another history length, or another size: compiled anew.
  run(content, dataclasses.replace(cfg, lbfgs_memory=4), records[2])
  run(content[:20], cfg, records[3])
  assert [r['scales'][0]['compile_reused'] for r in records] == [False, True, False, False]
  assert records[1]['scales'][0]['compile_s'] == 0.0
  # The reused program gives what a fresh compile gives.
  _fresh_step_cache(monkeypatch)
  np.testing.assert_array_equal(run(content, cfg, {}), first)
  assert not np.array_equal(again, first)


@pytest.mark.parametrize('optimizer', ['lbfgs', 'adam'])
def test_step_compiles_once_and_donates_state(optimizer):
  model, params, content, targets = _problem()
  tx = make_optimizer(config_lib.StyleConfig(optimizer=optimizer, learning_rate=1.0))
  chex.clear_trace_counter()  # the counter is keyed by code, shared across parameters

  @chex.assert_max_traces(n=1)
  def traced_step(state, params, targets):
    return update_step(state, params, targets, model=model, optimizer=tx, loss_config=TINY_LOSS)

  step = jax.jit(traced_step, donate_argnums=0)
  state = init_state(content, tx)
  assert not content.is_deleted()  # init_state copied it
  for _ in range(3):
    old = state
    state, step_losses = step(state, params, targets)
    assert old.image.is_deleted()  # donated: the buffer was reused
  assert step._cache_size() == 1
  chex.assert_shape(step_losses['total'], (1,))
  chex.assert_tree_all_finite((state, step_losses))


@pytest.mark.parametrize('optimizer,lr', [('lbfgs', None), ('adam', 2.0)])
def test_loss_decreases_and_converges(optimizer, lr):
  model, params, content, targets = _problem(seed=1)
  tx = make_optimizer(config_lib.StyleConfig(optimizer=optimizer, learning_rate=lr))
  step = _jitted_step(model, tx)
  start = jnp.asarray(np.random.default_rng(9).normal(0, 50, content.shape), jnp.float32)
  state = init_state(start, tx)
  history = []
  for _ in range(200):
    state, step_losses = step(state, params, targets)
    history.append(float(step_losses['total'][0]))
  assert history[9] < history[0]  # decreasing within 10 steps
  assert min(history) < 0.1 * history[0], (history[0], min(history))


def test_batched_images_are_independent_problems():
  """Each image of a batch is its own problem, with its own L-BFGS history.

  Exact check: replacing image 1 (and its targets) leaves image 0's whole
  trajectory bitwise unchanged. Against a run alone, the first step agrees to
  float rounding; later L-BFGS steps amplify that rounding (its first
  curvature pair is a difference of nearly equal gradients), so only the
  first step is compared with the single run.
  """
  model, params, content, targets = _problem(n=2, seed=2)
  _, _, other_content, other_targets = _problem(n=2, seed=5)
  swapped_content = content.at[1].set(other_content[1])
  swapped_targets = jax.tree.map(lambda a, b: a.at[1].set(b[1]), targets, other_targets)
  tx = make_optimizer(config_lib.StyleConfig())
  step = _jitted_step(model, tx)
  a = init_state(content * 0.5, tx)
  b = init_state(swapped_content * 0.5, tx)
  for _ in range(8):
    a, _ = step(a, params, targets)
    b, _ = step(b, params, swapped_targets)
    np.testing.assert_array_equal(a.image[0], b.image[0])
  assert float(jnp.abs(a.image[1] - b.image[1]).max()) > 1.0

  alone = init_state(content[:1] * 0.5, tx)
  alone, _ = step(alone, params, jax.tree.map(lambda x: x[:1], targets))
  batch, _ = step(init_state(content * 0.5, tx), params, targets)
  np.testing.assert_allclose(batch.image[0], alone.image[0], rtol=0, atol=1e-4)


def test_initial_image():
  content = jnp.ones((1, 4, 5, 3)) * 7.0
  np.testing.assert_array_equal(initial_image(content, init='content', seed=0), content)
  a = initial_image(content, init='random', seed=3)
  b = initial_image(content, init='random', seed=3)
  c = initial_image(content, init='random', seed=4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert float(jnp.abs(a).max()) < 0.01  # the mean pixel plus faint noise


def test_is_time():
  assert [i for i in range(1, 11) if is_time(i, 4, 10)] == [4, 8, 10]
  assert not any(is_time(i, 0, 10) for i in range(1, 11))


def test_stylize_end_to_end_on_real_layout(caffe_npz):
  rng = np.random.default_rng(0)
  content = rng.uniform(size=(24, 32, 3)).astype(np.float32)
  style = rng.uniform(size=(20, 28, 3)).astype(np.float32)
  seen = []
  cfg = config_lib.StyleConfig(iterations=6, save_iter=2, print_iter=3)
  out = stylize(
    content, style, config=cfg, weights=caffe_npz, callback=lambda i, x: seen.append((i, x.shape))
  )
  assert out.shape == (24, 32, 3) and out.dtype == np.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  assert not np.allclose(out, content, atol=1e-3)  # it changed the image
  assert seen == [(2, (1, 24, 32, 3)), (4, (1, 24, 32, 3))]
  again = stylize(content, style, config=cfg, weights=caffe_npz)
  np.testing.assert_array_equal(out, again)  # deterministic on one machine


def test_nonfinite_loss_names_the_iteration(caffe_npz):
  rgb = np.full((16, 16, 3), 0.5, np.float32)
  # A finite but huge weight: sw * L_s overflows float32 at the first step.
  cfg = config_lib.StyleConfig(iterations=3, print_iter=1, style_weight=1e38)
  with pytest.raises(errors.NstError, match='non-finite at iteration 1;'):
    stylize(rgb, np.random.default_rng(0).uniform(size=(16, 16, 3)), config=cfg, weights=caffe_npz)


def test_default_output_path_never_replaces(tmp_path):
  first = default_output_path('a/tubingen.jpg', 'b/starry_night.jpg', str(tmp_path))
  assert first == tmp_path / 'tubingen_starry_night.png'
  first.write_bytes(b'x')
  assert default_output_path('tubingen.jpg', 'starry_night.jpg', str(tmp_path)).name == (
    'tubingen_starry_night_2.png'
  )


def test_state_is_a_pytree_of_arrays():
  tx = make_optimizer(config_lib.StyleConfig())
  state = init_state(jnp.zeros((3, 4, 4, 3)), tx)
  assert isinstance(state, StyleState)
  for leaf in jax.tree.leaves(state.opt_state):
    assert leaf.shape[0] == 3  # one optimiser state per image


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_memory_estimate_tracks_xla(dtype):
  """The pre-compile estimate against XLA's own analysis of the compiled step."""
  from nst_jax.stylize import estimate_memory
  from nst_jax.stylize import make_model

  cfg = config_lib.StyleConfig(dtype=dtype)
  model, tx = make_model(cfg), make_optimizer(cfg)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  for h, w in ((192, 256), (384, 512)):
    image = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    targets = jax.eval_shape(
      functools.partial(
        make_targets, model=model, loss_config=cfg.loss, content_weight=1.0, style_weight=1.0
      ),
      params,
      image,
      image,
    )
    state = jax.eval_shape(lambda x: init_state(x, tx), image)
    step = functools.partial(update_step, model=model, optimizer=tx, loss_config=cfg.loss)
    m = jax.jit(step, donate_argnums=0).lower(state, params, targets).compile().memory_analysis()
    xla = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    xla -= m.alias_size_in_bytes
    ratio = estimate_memory(h, w, config=cfg, platform='gpu') / xla  # device part only
    assert 0.9 < ratio < 1.35, (h, w, ratio)


# --- the classic controls (issue 3) ----------------------------------------

STYLE_MODULE = sys.modules['nst_jax.stylize']


def _tiny(seed=0):
  model = _VGGTiny()
  params = model.init(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))['params']
  return model, params


def _net(seed, shape, scale=50.0):
  return jnp.asarray(np.random.default_rng(seed).normal(0, scale, shape), jnp.float32)


def _targets(params, model, content, styles, loss=TINY_LOSS, **kw):
  kw = {'content_weight': 1.0, 'style_weight': 1.0} | kw
  return make_targets(params, content, styles, model=model, loss_config=loss, **kw)


def test_blended_gram_target_is_the_weighted_sum_of_grams():
  model, params = _tiny()
  content = _net(0, (1, 16, 16, 3))
  s1, s2 = _net(1, (1, 12, 20, 3)), _net(2, (1, 24, 16, 3))
  g1 = _targets(params, model, content, s1).style
  g2 = _targets(params, model, content, s2).style
  blended = _targets(params, model, content, [s1, s2], blend_weights=(3.0, 1.0)).style
  equal = _targets(params, model, content, [s1, s2]).style
  for name in TINY_LOSS.style_layers:
    a, b = g1[name]['gram'], g2[name]['gram']
    np.testing.assert_allclose(blended[name]['gram'], 0.75 * a + 0.25 * b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(equal[name]['gram'], 0.5 * a + 0.5 * b, rtol=1e-5, atol=1e-5)


def _np_quantiles(x, m):
  p = (np.arange(m) + 0.5) / m
  ranks = (np.arange(len(x)) + 0.5) / len(x)
  return np.stack([np.interp(p, ranks, np.sort(x[:, c])) for c in range(x.shape[1])], axis=1)


def test_mean_cov_and_histogram_blends_are_the_mixture():
  # Two equally weighted styles of one size: their mixture is simply all the
  # feature vectors of both, pooled.
  model, params = _tiny()
  content = _net(3, (1, 16, 16, 3))
  s1, s2 = _net(4, (1, 12, 20, 3)), _net(5, (1, 12, 20, 3), 80.0)
  feats = model.apply({'params': params}, jnp.concatenate([s1, s2]), TINY_LOSS.style_layers)
  cov_loss = dataclasses.replace(TINY_LOSS, style_loss='mean_cov')
  hist_loss = dataclasses.replace(TINY_LOSS, style_loss='histogram')
  t_cov = _targets(params, model, content, [s1, s2], loss=cov_loss).style
  t_hist = _targets(params, model, content, [s1, s2], loss=hist_loss).style
  for name in TINY_LOSS.style_layers:
    pooled = np.asarray(feats[name], np.float64).reshape(-1, feats[name].shape[-1])
    mu, cov = pooled.mean(0), np.cov(pooled.T, bias=True)
    np.testing.assert_allclose(t_cov[name]['mean'][0, 0], mu, rtol=1e-4, atol=1e-3)
    root = np.asarray(t_cov[name]['cov_sqrt'][0, 0], np.float64)
    np.testing.assert_allclose(root @ root, cov, rtol=1e-3, atol=1e-2 * np.abs(cov).max())
    np.testing.assert_allclose(t_cov[name]['cov_trace'][0, 0], np.trace(cov), rtol=1e-4)
    m = STYLE_MODULE._layer_positions(16, 16, name)
    np.testing.assert_allclose(
      t_hist[name]['quantiles'][0, 0], _np_quantiles(pooled, m), rtol=1e-4, atol=1e-3
    )


def _np_guided_gram(f, t):
  x = np.asarray(f, np.float64).reshape(-1, f.shape[-1]) * np.asarray(t).reshape(-1, 1)
  return x.T @ x / np.sum(np.asarray(t, np.float64) ** 2)


def test_style_masks_and_content_mask_in_the_objective():
  model, params = _tiny()
  content, image = _net(6, (1, 16, 16, 3)), _net(7, (16, 16, 3))
  s1, s2 = _net(8, (1, 12, 20, 3)), _net(9, (1, 20, 12, 3))
  left = np.zeros((16, 16), np.float32)
  left[:, :8] = 1.0
  style_masks = jnp.asarray(np.stack([left, 1 - left])[None])
  content_mask = jnp.asarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 16, 16))
  targets = _targets(
    params, model, content, [s1, s2], style_masks=style_masks, content_mask=content_mask
  )
  chex.assert_shape(targets.style['relu2_1']['gram'], (1, 2, 8, 8))
  chex.assert_shape(targets.style_masks['relu2_1'], (1, 2, 8, 8))  # after one pooling
  chex.assert_shape(targets.content_mask['relu2_2'], (1, 8, 8))
  one = jax.tree.map(lambda x: x[0], targets)
  _, aux = objective(image, params, one, model=model, loss_config=TINY_LOSS)
  feats = model.apply({'params': params}, image[None], ('relu1_1', 'relu2_1', 'relu2_2'))
  grams = {i: _targets(params, model, content, s).style for i, s in enumerate((s1, s2))}
  want_style = 0.0
  for name in ('relu1_1', 'relu2_1'):
    masks = np.asarray(vgg.mask_at_layer(style_masks[0], name))
    for s in range(2):
      got_gram = _np_guided_gram(feats[name][0], masks[s])
      want_style += np.mean((got_gram - np.asarray(grams[s][name]['gram'][0, 0])) ** 2)
  np.testing.assert_allclose(aux['style'], want_style, rtol=1e-4)
  t = np.asarray(vgg.mask_at_layer(content_mask[0], 'relu2_2'))
  diff = np.asarray(feats['relu2_2'][0], np.float64) - np.asarray(targets.content['relu2_2'][0])
  np.testing.assert_allclose(aux['content'], np.mean(t[..., None] * diff**2), rtol=1e-5)


def test_style_masks_put_each_style_in_its_region():
  # A loud style on the left, a quiet one on the right: after optimising from
  # one noise image, the left half carries far more feature energy.
  model, params = _tiny(1)
  content = jnp.zeros((1, 16, 32, 3))
  loud, quiet = _net(10, (1, 16, 16, 3), 100.0), _net(11, (1, 16, 16, 3), 5.0)
  left = np.zeros((16, 32), np.float32)
  left[:, :16] = 1.0
  targets = _targets(
    params, model, content, [loud, quiet], content_weight=0.0,
    style_masks=jnp.asarray(np.stack([left, 1 - left])[None]),
  )  # fmt: skip
  tx = make_optimizer(config_lib.StyleConfig())
  step = _jitted_step(model, tx)
  state = init_state(_net(12, (1, 16, 32, 3)), tx)
  for _ in range(60):
    state, _ = step(state, params, targets)
  f = np.asarray(model.apply({'params': params}, state.image, ('relu1_1',))['relu1_1'][0])
  energy_left, energy_right = np.mean(f[:, 2:14] ** 2), np.mean(f[:, 18:30] ** 2)
  assert energy_left > 20 * energy_right, (energy_left, energy_right)


@pytest.mark.parametrize('optimizer,lr', [('lbfgs', None), ('adam', 2.0)])
def test_tv_weight_smooths_the_result(optimizer, lr):
  model, params = _tiny(2)
  content = _net(13, (1, 16, 16, 3))
  tx = make_optimizer(config_lib.StyleConfig(optimizer=optimizer, learning_rate=lr))
  step = _jitted_step(model, tx)
  tvs = []
  for tv_weight in (0.0, 10.0):
    targets = _targets(params, model, content, _net(14, (1, 16, 16, 3)), tv_weight=tv_weight)
    state = init_state(_net(15, (1, 16, 16, 3)), tx)
    for _ in range(40):
      state, step_losses = step(state, params, targets)
    tvs.append(float(losses.tv_loss(state.image[0])))
  assert tvs[1] < 0.5 * tvs[0], tvs


def test_normalize_gradients_matches_the_per_layer_oracle():
  model, params = _tiny(3)
  content, image = _net(16, (1, 16, 16, 3)), _net(17, (16, 16, 3))
  loss = dataclasses.replace(TINY_LOSS, style_layer_weights=(2.0, 0.5))
  targets = _targets(params, model, content, _net(18, (1, 12, 20, 3)), content_weight=3.0)
  one = jax.tree.map(lambda x: x[0], targets)
  normalized = dataclasses.replace(loss, normalize_gradients=True)
  grad = jax.grad(lambda x: objective(x, params, one, model=model, loss_config=normalized)[0])
  value = objective(image, params, one, model=model, loss_config=normalized)[0]
  plain_value = objective(image, params, one, model=model, loss_config=loss)[0]
  np.testing.assert_allclose(value, plain_value, rtol=1e-6)  # values are unchanged
  # Oracle: each term's gradient at its layer, L1-normalised, times its weight,
  # then back through the network.
  layers = ('relu2_2', 'relu1_1', 'relu2_1')
  feats, vjp = jax.vjp(lambda x: model.apply({'params': params}, x[None], layers), image)
  cot = {}
  h = jax.grad(losses.content_layer_loss)(feats['relu2_2'][0], one.content['relu2_2'])
  cot['relu2_2'] = 3.0 * h / jnp.sum(jnp.abs(h))
  for name, w_l in (('relu1_1', 2.0), ('relu2_1', 0.5)):
    h = jax.grad(lambda f, name=name: losses.style_layer_loss(f, one.style[name]))(feats[name][0])
    cot[name] = 1.0 * w_l * h / jnp.sum(jnp.abs(h))
  (want,) = vjp({k: v[None] for k, v in cot.items()})
  np.testing.assert_allclose(grad(image), want, rtol=1e-4, atol=1e-6 * float(jnp.abs(want).max()))


@pytest.mark.parametrize('optimizer,lr', [('lbfgs', None), ('adam', 2.0)])
@pytest.mark.parametrize('kind', ['gram', 'mean_cov', 'histogram'])
def test_every_style_loss_decreases_with_both_optimizers(kind, optimizer, lr):
  model, params = _tiny(4)
  loss = dataclasses.replace(TINY_LOSS, style_loss=kind)
  content = _net(19, (2, 16, 16, 3))
  styles = [_net(20, (1, 12, 20, 3)), _net(21, (2, 16, 12, 3), 80.0)]
  kw = {}
  if kind != 'histogram':  # histogram takes no masks; the others run guided
    half = np.zeros((16, 16), np.float32)
    half[:8] = 1
    kw['style_masks'] = jnp.asarray(np.stack([half, 1 - half])[None])
  targets = _targets(params, model, content, styles, loss=loss, tv_weight=0.01, **kw)
  tx = make_optimizer(config_lib.StyleConfig(optimizer=optimizer, learning_rate=lr))
  step = jax.jit(
    functools.partial(update_step, model=model, optimizer=tx, loss_config=loss), donate_argnums=0
  )
  state = init_state(_net(22, (2, 16, 16, 3)), tx)
  history = []
  for _ in range(30):
    state, step_losses = step(state, params, targets)
    history.append(np.asarray(step_losses['total']))
  assert step._cache_size() == 1
  assert np.all(np.isfinite(history))
  assert np.all(history[-1] < 0.5 * history[0]), (history[0], history[-1])


def test_init_gray_and_image():
  content = jnp.ones((2, 4, 6, 3)) * 7.0
  gray = initial_image(content, init='gray', seed=0)
  np.testing.assert_allclose(
    gray,
    jnp.broadcast_to(
      image_lib.preprocess(jnp.full((1, 4, 6, 3), 0.5), image_lib.CAFFE), gray.shape
    ),
  )
  # An image file's pixels, resized to the content's size.
  rgb = np.random.default_rng(0).uniform(size=(8, 12, 3)).astype(np.float32)
  x = initial_image(content, init='start.png', seed=0, image=rgb)
  chex.assert_shape(x, (2, 4, 6, 3))
  back = image_lib.deprocess(x, image_lib.CAFFE)
  np.testing.assert_allclose(back[0], image_lib.resize(rgb[None], 4, 6)[0], atol=1e-4)
  with pytest.raises(ValueError, match='no image was given'):
    initial_image(content, init='start.png', seed=0)


def _recording(monkeypatch):
  calls = []
  original = STYLE_MODULE._optimise

  def record(w, config, content, styles, **kw):
    out = original(w, config, content, styles, **kw)
    calls.append({'content': content, 'styles': styles, 'init': kw['init'], 'out': out, **kw})
    return out

  monkeypatch.setattr(STYLE_MODULE, '_optimise', record)
  return calls


def test_multiscale_runs_coarse_to_fine_from_the_upsampled_result(caffe_npz, monkeypatch):
  calls = _recording(monkeypatch)
  rng = np.random.default_rng(1)
  content = rng.uniform(size=(48, 64, 3)).astype(np.float32)
  style = rng.uniform(size=(30, 40, 3)).astype(np.float32)
  seen = []
  cfg = config_lib.StyleConfig(iterations=3, scales=2, save_iter=2)
  out = stylize(
    content, style, config=cfg, weights=caffe_npz, callback=lambda i, x: seen.append((i, x.shape))
  )
  assert out.shape == (48, 64, 3)
  assert [c['content'].shape for c in calls] == [(1, 34, 45, 3), (1, 48, 64, 3)]
  # The style shrinks by the same ratio as the content.
  assert [c['styles'][0].shape for c in calls] == [(1, 21, 28, 3), (1, 30, 40, 3)]
  # Scale 2 starts from scale 1's result, upsampled.
  np.testing.assert_allclose(calls[1]['init'], image_lib.resize(calls[0]['out'], 48, 64), rtol=1e-6)
  assert [c['scale'] for c in calls] == [(0, 2), (1, 2)]
  assert seen == [(2, (1, 34, 45, 3)), (5, (1, 48, 64, 3))]  # iterations count on


@pytest.mark.parametrize('mode', ['luminance', 'postprocess', 'histogram'])
def test_colour_controls(caffe_npz, monkeypatch, mode):
  calls = _recording(monkeypatch)
  rng = np.random.default_rng(2)
  content = (rng.uniform(size=(32, 32, 3)) * [0.3, 0.5, 0.2] + [0.3, 0.2, 0.4]).astype(np.float32)
  style = (rng.uniform(size=(32, 32, 3)) * [0.2, 0.2, 0.6] + [0.6, 0.1, 0.2]).astype(np.float32)
  cfg = config_lib.StyleConfig(iterations=3, preserve_colors=mode)
  out = stylize(content, style, config=cfg, weights=caffe_npz)
  seen_style = np.asarray(image_lib.deprocess(calls[0]['styles'][0], image_lib.CAFFE))[0]
  seen_content = np.asarray(image_lib.deprocess(calls[0]['content'], image_lib.CAFFE))[0]
  if mode == 'luminance':
    # Optimised on grey images; the style's luminance matched to the content's.
    np.testing.assert_allclose(seen_style[..., 0], seen_style[..., 1], atol=1e-4)
    np.testing.assert_allclose(seen_content[..., 0], seen_content[..., 2], atol=1e-4)
    y_c = np.asarray(image_lib.rgb_to_yiq(content))[..., 0]
    np.testing.assert_allclose(seen_style[..., 0].mean(), y_c.mean(), atol=1e-4)
    np.testing.assert_allclose(seen_style[..., 0].std(), y_c.std(), rtol=1e-3)
  elif mode == 'histogram':
    np.testing.assert_allclose(
      seen_style.reshape(-1, 3).mean(0), content.reshape(-1, 3).mean(0), atol=1e-4
    )
    np.testing.assert_allclose(seen_content, content, atol=1e-4)  # the content is untouched
  if mode in ('luminance', 'postprocess'):
    # The result carries the content's chroma wherever it was not clipped.
    inside = np.all((out > 0.01) & (out < 0.99), axis=-1)
    assert inside.mean() > 0.5
    iq_out = np.asarray(image_lib.rgb_to_yiq(out))[..., 1:]
    iq_content = np.asarray(image_lib.rgb_to_yiq(content))[..., 1:]
    np.testing.assert_allclose(iq_out[inside], iq_content[inside], atol=1e-5)


@pytest.mark.parametrize('optimizer', ['lbfgs', 'adam'])
def test_every_control_at_once_through_the_api(caffe_npz, optimizer):
  rng = np.random.default_rng(3)
  content = rng.uniform(size=(40, 48, 3)).astype(np.float32)
  styles = [
    rng.uniform(size=(30, 30, 3)).astype(np.float32),
    rng.uniform(size=(36, 24, 3)).astype(np.float32),
  ]
  top = np.zeros((40, 48), np.float32)
  top[:20] = 1
  cfg = config_lib.StyleConfig(
    iterations=3,
    optimizer=optimizer,
    scales=2,
    tv_weight=0.1,
    init='gray',
    preserve_colors='luminance',
    loss=config_lib.LossConfig(style_loss='mean_cov', normalize_gradients=True),
  )
  out = stylize(
    content,
    styles,
    config=cfg,
    weights=caffe_npz,
    content_mask=top,
    style_masks=np.stack([top, 1 - top]),
  )
  assert out.shape == (40, 48, 3) and np.all(np.isfinite(out))
  assert not np.allclose(out, 0.5, atol=1e-3)


def test_multiscale_resume_continues_the_same_run(caffe_npz, tmp_path):
  rng = np.random.default_rng(4)
  content = rng.uniform(size=(32, 40, 3)).astype(np.float32)
  style = rng.uniform(size=(32, 32, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(iterations=3, scales=2, checkpoint_every=1)
  whole = stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=tmp_path / 'a.ckpt')
  for stop_after in (2, 4):  # inside scale 1, and inside scale 2
    ckpt = tmp_path / f'b{stop_after}.ckpt'
    polls = []

    def should_stop(polls=polls, stop_after=stop_after):
      polls.append(1)
      return 15 if len(polls) == stop_after else None

    with pytest.raises(errors.Interrupted):
      stylize(
        content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt, should_stop=should_stop
      )
    payload = checkpoint_lib.read(ckpt)
    # Polled once per iteration: 3 per scale.
    assert (payload['scale'], payload['iteration']) == (
      (stop_after - 1) // 3,
      (stop_after - 1) % 3 + 1,
    )
    assert checkpoint_lib.unfinished(payload)
    resumed = stylize(
      content, style, config=cfg.replace(resume=True), weights=caffe_npz, checkpoint=ckpt
    )
    np.testing.assert_array_equal(resumed, whole)


def test_masks_and_blend_weights_exclude_each_other_in_the_api(caffe_npz):
  rgb = np.full((32, 32, 3), 0.5, np.float32)
  cfg = config_lib.StyleConfig(style_blend_weights=(1.0, 2.0))
  with pytest.raises(errors.ConfigError, match='exclude each other'):
    stylize(rgb, [rgb, rgb], config=cfg, weights=caffe_npz, style_masks=np.ones((2, 32, 32)))
  with pytest.raises(errors.ConfigError, match='give one mask per style'):
    stylize(rgb, [rgb, rgb], weights=caffe_npz, style_masks=np.ones((3, 32, 32)))


def test_progress_bar_and_log_lines(caffe_npz, capsys):
  from nst_jax.stylize import BarProgress
  from nst_jax.stylize import LogProgress
  from nst_jax.stylize import make_progress

  # Under pytest stderr is not a terminal: 'auto' gives plain lines.
  assert isinstance(make_progress(config_lib.StyleConfig()), LogProgress)
  assert isinstance(make_progress(config_lib.StyleConfig(progress='bar')), BarProgress)
  rgb = np.random.default_rng(5).uniform(size=(32, 32, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(iterations=3, progress='bar', scales=2)
  stylize(rgb, rgb, config=cfg, weights=caffe_npz)
  err = capsys.readouterr().err
  # One bar per scale, each ending at 3/3 with the loss and the rate.
  assert 'scale 1/2' in err and 'scale 2/2' in err
  assert err.count('3/3') >= 2 and 'loss=' in err and ('it/s' in err or 's/it' in err)
