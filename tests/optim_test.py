"""Tests for nst_jax.core.optim: the L-BFGS made for style transfer, and steps in pixel units."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nst_jax
from nst_jax.core import optim
from nst_jax.core import pixels
from nst_jax.io import images as image_lib

ROOT = Path(__file__).resolve().parent.parent


def _numpy_two_loop(g, pairs, gamma):
  """H g by Nocedal & Wright's Algorithm 7.4, in float64, pairs oldest first."""
  q = np.asarray(g, np.float64).copy()
  alphas = []
  for s, y in reversed(pairs):
    a = (s @ q) / (s @ y)
    q -= a * y
    alphas.append(a)
  r = gamma * q
  for (s, y), a in zip(pairs, reversed(alphas), strict=True):
    b = (y @ r) / (s @ y)
    r += s * (a - b)
  return r


def test_lbfgs_is_the_two_loop_recursion_with_a_bounded_first_step():
  rng = np.random.default_rng(0)
  n = 30
  q = rng.normal(size=(n, n))
  hess = q @ q.T / n + np.diag(np.logspace(-1, 1, n))
  grad = jax.jit(jax.grad(lambda x: 0.5 * x @ jnp.asarray(hess, jnp.float32) @ x))
  tx = optim.lbfgs(3, first_step=0.5)
  update = jax.jit(tx.update)
  x = jnp.asarray(rng.normal(size=n), jnp.float32)
  state = tx.init(x)
  pairs = []
  prev = None
  for k in range(6):
    g = grad(x)
    if prev is not None:
      pairs = (pairs + [(np.asarray(prev[1], np.float64), np.asarray(g - prev[0], np.float64))])[
        -3:
      ]
    step, state = update(g, state)
    if k == 0:
      # The first step: the gradient, its largest entry scaled to first_step.
      np.testing.assert_allclose(np.abs(step).max(), 0.5, rtol=1e-6)
      np.testing.assert_allclose(step, -0.5 * g / jnp.abs(g).max(), rtol=1e-6)
    else:
      s, y = pairs[-1]
      want = -_numpy_two_loop(g, pairs, (s @ y) / (y @ y))
      np.testing.assert_allclose(step, want, rtol=2e-4, atol=1e-6 * np.abs(want).max())
    prev = (g, step)
    x = x + step
  assert int(state.stored) == 3


def test_a_pair_with_negative_curvature_is_skipped():
  # f = -x^2 / 2: every pair has s^T y = -|s|^2 < 0, so none may be stored,
  # and each step stays the bounded gradient step (uphill directions never
  # enter the inverse-Hessian estimate). optax stores them.
  grad = jax.grad(lambda x: -0.5 * jnp.sum(x**2))
  tx = optim.lbfgs(5, first_step=1.0)
  x = jnp.ones(4)
  state = tx.init(x)
  for _ in range(3):
    step, state = tx.update(grad(x), state)
    x = x + step
    np.testing.assert_allclose(jnp.abs(step).max(), 1.0)
  assert int(state.stored) == 0 and float(jnp.abs(state.rho).max()) == 0.0
  reference = optax.lbfgs(memory_size=5, linesearch=None)
  x = jnp.ones(4)
  ref_state = reference.init(x)
  for _ in range(3):
    g = grad(x)
    step, ref_state = reference.update(g, ref_state, x, value=0.0, grad=g, value_fn=None)
    x = x + step
  assert float(jnp.abs(ref_state[0].weights_memory).max()) > 0  # it kept them


@pytest.mark.parametrize('scale', [1e-9, 1.0, 1e9])
def test_the_first_step_does_not_depend_on_the_loss_scale(scale):
  g = scale * jnp.asarray(np.random.default_rng(1).normal(size=(8, 8, 3)), jnp.float32)
  tx = optim.lbfgs(4)
  step, _ = tx.update(g, tx.init(jnp.zeros_like(g)))
  np.testing.assert_allclose(jnp.abs(step).max(), optim.DEFAULT_FIRST_STEP, rtol=1e-6)


def test_the_box_keeps_pixels_in_range_and_holds_those_pushed_outward():
  tx = optim.lbfgs(4, first_step=10.0, bounds=(0.0, 255.0))
  x = jnp.asarray([0.0, 255.0, 3.0, 250.0, 100.0])
  g = jnp.asarray([1.0, -1.0, 1.0, -1.0, 0.5])  # the first two push outward
  step, _ = tx.update(g, tx.init(x), x)
  np.testing.assert_allclose(x + step, [0.0, 255.0, 0.0, 255.0, 95.0])


def test_the_first_step_backtracks_to_the_armijo_point_with_value_fn():
  """f = x^T A x / 2, A diagonal: the bounded first step overshoots and is halved 3 times.

  The oracle halves t0 = first_step / max|g| in float64 numpy until Armijo's
  f(x - t g) <= f(x) - c1 t |g|^2 holds. Later steps (curvature pairs, unit
  step) keep the loss falling on this convex quadratic.
  """
  a = np.array([1.0, 4.0, 10.0, 0.5])
  x0 = np.array([1.0, -1.0, 0.5, 2.0])

  def f_np(x):
    return 0.5 * np.sum(a * x**2)

  g0 = a * x0
  t0 = 6.0 / np.abs(g0).max()
  halvings = 0
  while f_np(x0 - t0 / 2**halvings * g0) > f_np(x0) - 1e-4 * t0 / 2**halvings * (g0 @ g0):
    halvings += 1
  assert halvings == 3  # t0 takes the loss from 4.75 to 180, t0 / 2 to 35.7, t0 / 4 to 6.05

  def f(x):
    return 0.5 * jnp.sum(jnp.asarray(a, jnp.float32) * x**2)

  tx = optim.lbfgs(5, first_step=6.0)
  update = jax.jit(lambda g, state, x, v: tx.update(g, state, x, value=v, value_fn=f))
  x = jnp.asarray(x0, jnp.float32)
  state = tx.init(x)
  values = []
  value_and_grad = jax.jit(jax.value_and_grad(f))
  for k in range(10):
    value, g = value_and_grad(x)
    values.append(float(value))
    step, state = update(g, state, x, value)
    if k == 0:
      np.testing.assert_allclose(step, -t0 / 2**halvings * g0, rtol=1e-6)
      np.testing.assert_allclose(state.shrink, 2.0**-halvings)
      # Armijo holds at the accepted step, in float32 too.
      assert float(f(x + step)) <= values[0] + 1e-4 * float(g @ step)
    x = x + step
  assert np.all(np.diff(values) < 0), values
  assert values[-1] < 1e-5 * values[0], values
  # Without value_fn the first step is the bounded one, uphill here.
  step, _ = tx.update(jnp.asarray(g0, jnp.float32), tx.init(jnp.asarray(x0, jnp.float32)))
  np.testing.assert_allclose(step, -t0 * g0, rtol=1e-6)
  assert f_np(x0 + np.asarray(step, np.float64)) > 30 * f_np(x0)


@pytest.mark.parametrize('convention', [pixels.CAFFE, pixels.TORCHVISION], ids=lambda c: c.name)
def test_the_box_holds_in_pixels_under_every_input_convention(convention):
  """make_optimizer's box is RGB [0, 1] after deprocess, whatever the network space.

  f = |x - t|^2 / 2 in network space, with t the image of RGB targets in
  [-0.5, 1.5]: every iterate stays in [0, 1] RGB, and the result is the
  box-constrained minimum, the targets clipped to [0, 1] (f is separable per
  pixel value). Without the box the same run goes to the targets, outside.
  """
  rng = np.random.default_rng(0)
  target_rgb = rng.uniform(-0.5, 1.5, (1, 4, 5, 3)).astype(np.float32)
  target = pixels.preprocess(target_rgb, convention)

  def f(x):
    return 0.5 * jnp.sum((x - target) ** 2)

  value_and_grad = jax.jit(jax.value_and_grad(f))
  for box in (True, False):
    tx = optim.make_optimizer('lbfgs', memory_size=5, box=box, convention=convention)
    update = jax.jit(lambda g, state, x, v, tx=tx: tx.update(g, state, x, value=v, value_fn=f))
    x = pixels.preprocess(jnp.full((1, 4, 5, 3), 0.5), convention)
    state = tx.init(x)
    for _ in range(25):
      value, g = value_and_grad(x)
      step, state = update(g, state, x, value)
      x = x + step
      rgb = np.asarray(pixels.deprocess(x, convention))
      if box:
        assert -1e-6 <= rgb.min() and rgb.max() <= 1 + 1e-6, (rgb.min(), rgb.max())
    want = np.clip(target_rgb, 0.0, 1.0) if box else target_rgb
    np.testing.assert_allclose(rgb, want, atol=1e-4)


def _images(width=64):
  content = image_lib.load_image(ROOT / 'content_images' / 'tubingen.jpg', width=width)
  style = image_lib.load_image(ROOT / 'style_images' / 'starry_night.jpg', width=width)
  return content, style


# The classic objective (jcjohnson/neural-style's weights, written in ours).
CLASSIC = {
  'content_weight': 5.0,
  'style_weight': 1.0,
  'style_layer_weights': tuple(100.0 / c**2 for c in (64, 128, 256, 512, 512)),
}


def _config(iterations, **loss):
  return nst_jax.StyleConfig(
    schedule=nst_jax.ScheduleConfig(iterations=iterations, scales=1),
    loss=nst_jax.LossConfig(**(CLASSIC | loss)),
    run=nst_jax.RunConfig(print_iter=1),
  )


@pytest.mark.slow
def test_scaling_both_weights_gives_the_same_images(lsuv_npz):
  """-cw and -sw times 1e-6 or 1e6: the same 20 iterations, to float32's spread.

  In exact arithmetic the trajectory is the same (the first step is bounded
  in pixels, gamma = s^T y / y^T y and the curvature test are scale-free).
  In float32 the scaled products round differently; the tolerance is how
  far the reference run moves when its start moves by one float32 ulp (the
  smallest change any difference in rounding makes, then amplified by
  L-BFGS), with a floor of 1e-4 of the 0..1 range.
  """
  w = nst_jax.load_weights(lsuv_npz)
  content, style = _images()
  reference = nst_jax.stylize(content, style, config=_config(20), weights=w)
  nudged = nst_jax.stylize(
    content,
    style,
    config=_config(20).replace(inputs=nst_jax.InputConfig(init='file')),
    weights=w,
    init_image=np.nextafter(content, np.float32(2)),
  )
  tolerance = max(float(np.abs(nudged - reference).max()), 1e-4)
  assert not np.allclose(reference, content, atol=0.05)  # it moved
  for factor in (1e-6, 1e6):
    scaled = nst_jax.stylize(
      content, style, config=_config(20, content_weight=5 * factor, style_weight=factor), weights=w
    )
    diff = float(np.abs(scaled - reference).max())
    assert diff <= tolerance, (factor, diff, tolerance)


@pytest.mark.slow
def test_small_activations_do_not_stall(small_npz):
  """Weights whose activations are 128x smaller (losses 2^14 to 2^28 x smaller) still optimise.

  From a grey start (with the content as the start, these weights make the
  content term 2^14 times heavier relative to the style term than the LSUV
  weights do, so the start is nearly optimal whatever the optimiser).
  optax's L-BFGS, whose first step is the raw gradient when its norm is
  below 1, leaves the image where it was on the same problem.
  """
  w = nst_jax.load_weights(small_npz)
  content, style = _images()
  record = {}
  cfg = _config(20).replace(inputs=nst_jax.InputConfig(init='gray'))
  nst_jax.stylize(content, style, config=cfg, weights=w, record=record)
  totals = [h['total'] for h in record['history']]
  assert totals[0] < 1.0  # tiny
  assert min(totals[:20]) < 0.5 * totals[0], totals

  model = nst_jax.make_model()
  x = pixels.preprocess(content[None], w.info.input_convention)
  targets = nst_jax.make_targets(
    w.params,
    x,
    pixels.preprocess(style[None], w.info.input_convention),
    model=model,
    loss_spec=_config(1).loss.spec,
    **_config(1).loss.weights,
  )
  x = nst_jax.initial_image(x, init='gray', seed=0, convention=pixels.CAFFE)
  tx = optax.lbfgs(memory_size=10, linesearch=None)
  step = jax.jit(
    lambda s: nst_jax.update_step(
      s, w.params, targets, model=model, optimizer=tx, loss_spec=_config(1).loss.spec
    )
  )
  state = nst_jax.init_state(x, tx)
  first = None
  for _ in range(20):
    state, losses = step(state)
    first = first if first is not None else float(losses['total'][0])
  assert float(losses['total'][0]) > 0.99 * first  # stalled


@pytest.mark.slow
@pytest.mark.parametrize('fixture', ['caffe_npz', 'torchvision_npz'])
def test_adam_steps_are_in_pixel_units_for_every_convention(fixture, request):
  w = nst_jax.load_weights(request.getfixturevalue(fixture))
  convention = w.info.input_convention
  content, style = _images(32)
  model = nst_jax.make_model()
  x = pixels.preprocess(content[None], convention)
  # Weights large enough that Adam's epsilon (1e-8, in gradient units) is
  # negligible next to every gradient, for both input scales.
  loss = nst_jax.LossConfig(content_weight=1e6, style_weight=1e4)
  targets = nst_jax.make_targets(
    w.params,
    x,
    pixels.preprocess(style[None], convention),
    model=model,
    loss_spec=loss.spec,
    **loss.weights,
  )
  tx = nst_jax.make_optimizer('adam', learning_rate=3.0, convention=convention)
  # Jitted: run eagerly, the network's every operation compiled on its own (seconds).
  step = jax.jit(
    functools.partial(nst_jax.update_step, model=model, optimizer=tx, loss_spec=loss.spec)
  )
  state, _ = step(nst_jax.init_state(x, tx), w.params, targets)
  # Adam's first step is lr * sign(g) per coordinate: 3 pixel units (of 255)
  # wherever the gradient is not zero, whatever the weights' input scale.
  moved = np.abs(np.asarray(pixels.deprocess(state.image, convention) - content[None])) * 255
  assert np.median(moved) == pytest.approx(3.0, rel=1e-3), np.median(moved)
  assert moved.max() == pytest.approx(3.0, rel=1e-3)


@pytest.mark.slow
def test_bfloat16_reaches_float32s_objective(lsuv_npz):
  """L-BFGS with a bfloat16 network: within 5% of float32's objective after 50 iterations.

  Both are scored by one float32 evaluation of their results.
  """
  w = nst_jax.load_weights(lsuv_npz)
  content, style = _images()
  model = nst_jax.make_model()
  convention = w.info.input_convention
  cfg = _config(50)
  targets = nst_jax.make_targets(
    w.params,
    pixels.preprocess(content[None], convention),
    pixels.preprocess(style[None], convention),
    model=model,
    loss_spec=cfg.loss.spec,
    **cfg.loss.weights,
  )
  one = jax.tree.map(lambda t: t[0], targets)
  scores = {}
  for dtype in ('float32', 'bfloat16'):
    out = nst_jax.stylize(
      content,
      style,
      config=cfg.replace(model=nst_jax.ModelConfig(dtype=dtype)),
      weights=w,
    )
    x = pixels.preprocess(out[None], convention)[0]
    scores[dtype] = float(
      nst_jax.objective(x, w.params, one, model=model, loss_spec=cfg.loss.spec)[0]
    )
  assert scores['bfloat16'] <= 1.05 * scores['float32'], scores


@pytest.mark.parametrize('lr', [-1.0, 0.0, float('nan'), float('inf')])
def test_adam_refuses_a_learning_rate_that_cannot_step(lr):
  """A negative rate climbs the loss, zero never moves, NaN/inf ruin the image: refused."""
  with pytest.raises(nst_jax.errors.ConfigError) as caught:
    optim.make_optimizer('adam', learning_rate=lr, convention=pixels.CAFFE)
  assert str(caught.value) == f'learning_rate must be a finite number > 0, got {lr}'


def test_calls_that_cannot_work_are_one_line_project_errors():
  """They were a builtin ValueError naming no fix."""
  with pytest.raises(nst_jax.errors.ConfigError) as e:
    optim.make_optimizer('lbfgs')
  assert str(e.value) == (
    "make_optimizer needs convention= (the weights' input convention): pass "
    'convention=weights.info.input_convention'
  )
  tx = optim.make_optimizer('lbfgs', convention='caffe')
  x = jnp.zeros((2, 2, 3))
  with pytest.raises(nst_jax.errors.ArgumentError) as e:  # a TypeError, as a missing argument is
    tx.update(jnp.ones_like(x), tx.init(x))
  assert str(e.value) == (
    'L-BFGS with a box needs the image: call update(grads, state, image, value=..., grad=...)'
  )
  updates, _ = tx.update(
    jnp.ones_like(x), tx.init(x), x, value=jnp.float32(1), grad=jnp.ones_like(x)
  )
  # The first step moves the pixel that moves most by first_step (8) pixels: here all by 8.
  np.testing.assert_allclose(updates, -8.0 * jnp.ones_like(x), rtol=1e-6)


def test_lbfgs_refuses_a_learning_rate_it_would_ignore():
  with pytest.raises(nst_jax.errors.ConfigError) as e:
    optim.make_optimizer('lbfgs', learning_rate=0.5, convention='caffe')
  assert str(e.value) == (
    "learning_rate is Adam's; L-BFGS takes no learning rate (its step is 1, its first step's "
    "largest pixel change first_step): drop it, or use make_optimizer('adam', ...)"
  )


def test_adam_refuses_the_lbfgs_settings_it_would_ignore():
  """box=True with Adam left pixels outside [0, 1]; memory and first step were dropped (trial 7)."""
  for kwargs, given in (
    ({'box': True}, 'box is'),
    ({'box': False}, 'box is'),
    ({'memory_size': 2, 'first_step': 0.5}, 'memory_size and first_step are'),
  ):
    with pytest.raises(nst_jax.errors.ConfigError) as e:
      optim.make_optimizer('adam', convention='caffe', **kwargs)
    it = 'it' if given.endswith('is') else 'them'
    assert str(e.value) == (
      f"{given} L-BFGS's; Adam has no memory, first step or box (its step is learning_rate; clip "
      f"its result): drop {it}, or use make_optimizer('lbfgs', ...)"
    )
  # A config gives each optimiser its own settings only: Adam's box default is not passed on.
  adam = nst_jax.OptimConfig(name='adam', box=True, lbfgs_memory=3, learning_rate=2.0)
  assert optim.config_arguments(adam) == {'learning_rate': 2.0}
  lbfgs = nst_jax.OptimConfig(lbfgs_memory=3, box=False, learning_rate=2.0)
  assert optim.config_arguments(lbfgs) == {'memory_size': 3, 'box': False}
  x = jnp.zeros((4, 4, 3))
  tx = optim.make_optimizer('lbfgs', convention='caffe', **optim.config_arguments(lbfgs))
  assert tx.init(x).s.shape == (3, 4, 4, 3)
  tx = optim.make_optimizer('adam', convention='caffe', **optim.config_arguments(adam))
  assert optax.tree_utils.tree_get(tx.init(x), 'count') == 0


@pytest.mark.parametrize('memory', [2.5, '30', True])
def test_lbfgs_memory_must_be_a_whole_number(memory):
  """2.5 was accepted and failed in init_state; '30' compared a str with an int."""
  with pytest.raises(nst_jax.errors.ConfigError) as e:
    optim.make_optimizer('lbfgs', memory_size=memory, convention='caffe')
  assert str(e.value) == (
    f'memory_size (the L-BFGS memory) must be an integer >= 1, got {memory!r}'
  )
  tx = optim.make_optimizer('lbfgs', memory_size=np.int64(3), convention='caffe')
  assert tx.init(jnp.zeros((2, 2, 3))).s.shape == (3, 2, 2, 3)


@pytest.mark.parametrize(
  'kwargs,message',
  [
    ({'box': 'false'}, "box must be True or False, got 'false'; pass True or False"),
    ({'box': 0}, 'box must be True or False, got 0; pass True or False'),
  ],
)
def test_the_box_is_true_or_false(kwargs, message):
  """'false' is truthy: it turned the box on without a word."""
  with pytest.raises(nst_jax.errors.ConfigError) as e:
    optim.make_optimizer('lbfgs', convention='caffe', **kwargs)
  assert str(e.value) == message


def test_none_is_each_lbfgs_setting_s_default():
  """None means the default (so Adam can tell a setting given from one left out)."""
  x = jnp.full((2, 2, 3), 300.0)  # beyond the box: the default box clips the first step
  g = jnp.ones_like(x)
  for kwargs in ({'box': None, 'memory_size': None, 'first_step': None}, {}):
    tx = optim.make_optimizer('lbfgs', convention='caffe', **kwargs)
    state = tx.init(x)
    assert state.s.shape == (optim.DEFAULT_LBFGS_MEMORY, 2, 2, 3)
    updates, _ = tx.update(g, state, x, value=jnp.float32(1), grad=g)
    assert float(jnp.max(x + updates)) <= 255.0 - 103.939 + 1e-3


@pytest.mark.parametrize(
  'lr,fix',
  [
    ('1', "pass the number, learning_rate=float('1')"),
    ('x', 'pass a number, e.g. learning_rate=1e-2'),
  ],
)
def test_adam_refuses_a_learning_rate_that_is_no_number(lr, fix):
  """'1' was accepted (float('1')), while memory_size '30' was refused."""
  with pytest.raises(nst_jax.errors.ConfigError) as e:
    optim.make_optimizer('adam', learning_rate=lr, convention='caffe')
  assert str(e.value) == f'learning_rate must be a finite number > 0, got {lr!r}; {fix}'
