"""Tests for nst_jax.stylize: the step, its state, targets and the loop."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import config as config_lib
from nst_jax import errors
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
  chex.assert_shape(targets.style['relu1_1'], (2, 4, 4))
  chex.assert_shape(targets.style['relu2_1'], (2, 8, 8))
  chex.assert_shape([targets.content_weight, targets.style_weight], (2,))
  # The content target is exactly the content image's features.
  feats = model.apply({'params': params}, content, ('relu2_2',))
  np.testing.assert_allclose(targets.content['relu2_2'], feats['relu2_2'], rtol=1e-6)


def test_one_style_is_shared_by_a_batch():
  model, params, content, _ = _problem(n=3)
  style = jnp.asarray(np.random.default_rng(1).normal(0, 50, (1, 12, 20, 3)), jnp.float32)
  targets = make_targets(
    params, content, style, model=model, loss_config=TINY_LOSS, content_weight=1, style_weight=2
  )
  chex.assert_shape(targets.style['relu2_1'], (3, 8, 8))
  np.testing.assert_array_equal(targets.style['relu2_1'][0], targets.style['relu2_1'][2])
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
    np.mean((np.asarray(losses.gram_matrix(feats[k][0])) - np.asarray(one.style[k])) ** 2)
    for k in ('relu1_1', 'relu2_1')
  )
  np.testing.assert_allclose(aux['style'], want_style, rtol=1e-5)
  np.testing.assert_allclose(total, want_style, rtol=1e-5)


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
