"""Tests for nst_jax.engine.engine: rows in, results out, on one device.

The network of small_runs (to relu2_1) and 16x20 images: these tests are of
the engine's bookkeeping, not of what the optimiser reaches.
"""

import numpy as np
import pytest
import small_runs

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.engine import engine as engine_lib
from nst_jax.engine import hooks
from nst_jax.engine import rows as rows_lib
from nst_jax.engine import sharding
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import weights as weights_lib

# Y of YIQ (ITU-R BT.601 luma) and the Caffe mean pixel (B, G, R).
LUMA = np.array([0.299, 0.587, 0.114])
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
H, W = 16, 20


def _cfg(iterations=3, **groups):
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=iterations, scales=1),
    run=config_lib.RunConfig(print_iter=0),
  )
  return cfg.replace(**groups)


def _rgb(seed, shape=(H, W, 3)):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


@pytest.fixture(scope='module')
def weights(caffe_npz):
  return weights_lib.load_weights(caffe_npz)


def _run(weights, contents, style, record=None):
  """Every content a row of one batch; returns (results, per-row loss history)."""
  n = len(contents)
  engine = engine_lib.Engine(_cfg(), weights, sharding.SingleLayout(n))
  rows = {r: rows_lib.Row(content=c, styles=[style]) for r, c in enumerate(contents)}
  history = hooks.History(1, range(n))
  watch = engine_lib.Watch(print_iter=0, history=history)
  results = engine.run(rows, real=tuple(range(n)), watch=watch, record=record)
  return results, history.history


def test_a_short_run_lowers_each_rows_loss_and_returns_its_rgb(weights):
  style = _rgb(0, (12, 14, 3))
  contents = [_rgb(1), _rgb(2)]
  record = {}
  results, history = _run(weights, contents, style, record)
  assert sorted(results) == [0, 1]
  for r, content in enumerate(contents):
    out = results[r]
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - content).max() > 4 / 255  # it moved
    totals = [entry['total'] for entry in history[r]]
    assert [entry['iteration'] for entry in history[r]] == [0, 1, 2, 3]  # the start, then each
    assert totals[-1] < 0.9 * totals[0], totals
  (stage,) = record['scales']
  assert (stage['width'], stage['height'], stage['iterations'], stage['budget']) == (W, H, 3, 3)
  assert stage['stopped'] == 'iterations' and stage['devices'] == 1
  # Rows are independent problems: another row beside it leaves row 0 bitwise the same.
  again, _ = _run(weights, [contents[0], _rgb(3)], style)
  np.testing.assert_array_equal(again[0], results[0])
  assert not np.array_equal(again[1], results[1])


def test_to_rgb_deprocesses_clips_and_keeps_the_colours_asked_for(weights):
  engine = engine_lib.Engine(_cfg(), weights, sharding.SingleLayout(1))
  rgb = np.random.default_rng(4).uniform(-0.2, 1.2, (H, W, 3))
  x = (rgb[..., ::-1] * 255.0 - CAFFE_MEAN_BGR).astype(np.float32)  # Caffe network space
  np.testing.assert_allclose(engine.to_rgb(x, None), np.clip(rgb, 0.0, 1.0), atol=1e-5)
  colours = _rgb(5)
  out = engine.to_rgb(x, colours)
  # The luminance of the (clipped) result with the colours' chroma: where
  # nothing clips, Y is the result's and Y - R, Y - B follow the colours'.
  y = np.clip(rgb, 0, 1) @ LUMA
  inside = np.all((out > 1e-3) & (out < 1 - 1e-3), axis=-1)
  assert inside.mean() > 0.3
  np.testing.assert_allclose((out @ LUMA)[inside], y[inside], atol=1e-5)
  chroma = (colours - (colours @ LUMA)[..., None])[inside]
  np.testing.assert_allclose((out - (out @ LUMA)[..., None])[inside], chroma, atol=1e-5)


def test_resume_point_reads_the_checkpoint(tmp_path):
  assert engine_lib.resume_point(None) is None
  assert engine_lib.resume_point(tmp_path / 'none.ckpt') is None
  path = tmp_path / 'a.ckpt'
  state = {'image': np.zeros((2, 2, 3), np.float32)}
  checkpoint_lib.save(path, state=state, iteration=7, total=9, settings={}, scale=(1, 3))
  assert engine_lib.resume_point(path) == engine_lib.ResumePoint(scale=1, iteration=7)


def test_a_run_is_refused_without_rows_or_beyond_its_scales(weights):
  engine = engine_lib.Engine(_cfg(), weights, sharding.SingleLayout(1))
  with pytest.raises(ValueError, match='at least one row'):
    engine.run({}, real=())
  row = rows_lib.Row(content=_rgb(6), styles=[_rgb(7)])
  with pytest.raises(errors.NstError, match='checkpoint is at scale 3, but this run has 1 scales'):
    engine.run({0: row}, real=(0,), resume=engine_lib.ResumePoint(scale=2, iteration=1))


def _dots_and_convolutions(fn, *args) -> list[str]:
  """The dot_general and convolution lines of `fn` lowered for `args` (StableHLO)."""
  import re

  import jax

  text = jax.jit(fn).lower(*args).as_text()
  return [m.group(0) for m in re.finditer(r'stablehlo\.(dot_general|convolution)[^\n]*', text)]


@pytest.mark.parametrize('style_loss', ['gram', 'mean_cov'])
def test_every_dot_and_convolution_of_the_step_carries_the_configured_precision(style_loss):
  """The lowered step: Grams (or mean_cov), the L-BFGS dot products and the convolutions alike."""
  import functools
  import re

  import jax
  import jax.numpy as jnp

  from nst_jax.core import objective
  from nst_jax.core import pixels
  from nst_jax.core import step as core
  from nst_jax.core import vgg
  from nst_jax.engine import steps

  highest = jax.lax.Precision.HIGHEST
  model = vgg.VGG(stage_sizes=(1, 2), widths=(4, 8), precision=highest)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  spec = config_lib.LossConfig(
    content_layers=('relu2_2',), style_layers=('relu1_1', 'relu2_1'), style_loss=style_loss
  ).spec
  images = jnp.asarray(np.random.default_rng(0).normal(0, 50, (1, 16, 16, 3)), jnp.float32)
  make_targets = functools.partial(
    objective.make_targets, model=model, loss_spec=spec, content_weight=1.0, style_weight=1.0
  )
  targets = make_targets(params, images, images)
  optimizer = core.make_optimizer('lbfgs', memory_size=3, convention=pixels.CAFFE)
  state = core.init_state(images, optimizer=optimizer)
  step = functools.partial(core.update_step, model=model, optimizer=optimizer, loss_spec=spec)

  for fn, args in [(step, (state, params, targets)), (make_targets, (params, images, images))]:
    lines = _dots_and_convolutions(steps.at_precision(fn, highest), *args)
    kinds = {line.split(' ')[0].split('(')[0] for line in lines}
    assert kinds == {'stablehlo.dot_general', 'stablehlo.convolution'}, kinds
    # dot_general prints `precision = [HIGHEST, HIGHEST]`, convolution
    # `precision_config = [#stablehlo<precision HIGHEST>, ...]`.
    off = [line for line in lines if len(re.findall(r'HIGHEST', line)) != 2]
    assert not off, off[0]
  # Without it the Grams and the optimiser's dot products lowered at DEFAULT
  # (issue 26: 39 convolutions HIGHEST, 21 dots DEFAULT at full size).
  bare = _dots_and_convolutions(step, state, params, targets)
  assert any(len(re.findall(r'DEFAULT', line)) == 2 for line in bare)


def test_a_multi_scale_resume_with_fewer_iterations_names_exactly_the_checkpoints():
  """Trial 26: 'resume with -i 40 (or more)', and more was then refused (the scales split -i)."""
  from nst_jax.engine import schedule as schedule_lib

  payload = {'total': 20, 'scales': 2, 'iteration': 7, 'extra': {'iterations': 40, 'offset': 20}}
  stages = schedule_lib.plan(64, config_lib.ScheduleConfig(iterations=10, scales=2))
  with pytest.raises(errors.ResumeMismatch) as e:
    engine_lib.check_budget('r.ckpt', payload, engine_lib.ResumePoint(1, 7), stages)
  assert str(e.value) == (
    'cannot resume from r.ckpt: it holds 27 of 40 iterations, more than schedule.iterations 10; '
    'resume with schedule.iterations 40, or without run.resume and another save.path to start '
    'over'
  )
