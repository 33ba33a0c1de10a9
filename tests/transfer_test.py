"""Tests for nst_jax.runs.arrays.stylize (and the engine under it): arrays in, arrays out."""

import functools
import logging
import os
import re
import signal
import time

import jax
import numpy as np
import pytest
import small_runs

import nst_jax
from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core import color
from nst_jax.core import pixels
from nst_jax.engine import group as group_lib
from nst_jax.engine import signals
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import images as image_lib
from nst_jax.runs.arrays import stylize


def _cfg(iterations=3, *, scales=1, **groups):
  """A config with `iterations` in total over `scales` scales, and group overrides.

  The network of small_runs (to relu2_1): these tests are of the engine.
  """
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=iterations, scales=scales),
    run=config_lib.RunConfig(print_iter=0),
  )
  return cfg.replace(**groups)


def _recording(monkeypatch):
  """Records each stage's inputs (network space) and its start and end images."""
  stages = []
  inputs = group_lib.GroupRun._stage_inputs
  optimise = group_lib.GroupRun._optimise

  def record_inputs(self, row, h, w, ratio):
    out = inputs(self, row, h, w, ratio)
    stages.append({'content': np.asarray(out[0]), 'styles': [np.asarray(s) for s in out[1]]})
    return out

  def record_optimise(self, st, state, start, total, offset, scales, best=()):
    stages[-1].update(init=np.asarray(state.image), total=total, offset=offset, scale=st.index)
    out = optimise(self, st, state, start, total, offset, scales, best)
    stages[-1]['out'] = np.asarray(out)
    return out

  monkeypatch.setattr(group_lib.GroupRun, '_stage_inputs', record_inputs)
  monkeypatch.setattr(group_lib.GroupRun, '_optimise', record_optimise)
  return stages


def test_stylize_end_to_end_on_real_layout(caffe_npz):
  rng = np.random.default_rng(0)
  content = rng.uniform(size=(24, 32, 3)).astype(np.float32)
  style = rng.uniform(size=(20, 28, 3)).astype(np.float32)
  seen = []
  cfg = _cfg(6, save=config_lib.SaveConfig(save_iter=2))
  record = {}
  out = stylize(
    content,
    style,
    config=cfg,
    weights=caffe_npz,
    callback=lambda i, x: seen.append((i, x.shape)),
    record=record,
  )
  assert out.shape == (24, 32, 3) and out.dtype == np.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  assert not np.allclose(out, content, atol=1e-3)  # it changed the image
  assert seen == [(2, (1, 24, 32, 3)), (4, (1, 24, 32, 3))]
  assert [(s['iterations'], s['stopped']) for s in record['scales']] == [(6, 'iterations')]
  again = stylize(content, style, config=cfg, weights=caffe_npz)
  np.testing.assert_array_equal(out, again)  # deterministic on one machine


@pytest.mark.slow
def test_nonfinite_loss_names_the_iteration(caffe_npz):
  rgb = np.full((16, 16, 3), 0.5, np.float32)
  # A finite but huge weight: sw * L_s overflows float32 at the first step.
  cfg = _cfg(
    3, loss=small_runs.loss_config(style_weight=1e38), run=config_lib.RunConfig(print_iter=1)
  )
  with pytest.raises(errors.NonFinite, match='non-finite at iteration 1;'):
    stylize(rgb, np.random.default_rng(0).uniform(size=(16, 16, 3)), config=cfg, weights=caffe_npz)


@pytest.mark.slow
def test_multiscale_runs_coarse_to_fine_from_the_upsampled_result(caffe_npz, monkeypatch):
  stages = _recording(monkeypatch)
  rng = np.random.default_rng(1)
  content = rng.uniform(size=(48, 64, 3)).astype(np.float32)
  style = rng.uniform(size=(30, 40, 3)).astype(np.float32)
  seen = []
  cfg = _cfg(6, scales=2, save=config_lib.SaveConfig(save_iter=2))
  out = stylize(
    content, style, config=cfg, weights=caffe_npz, callback=lambda i, x: seen.append((i, x.shape))
  )
  assert out.shape == (48, 64, 3)
  assert [s['content'].shape for s in stages] == [(1, 34, 45, 3), (1, 48, 64, 3)]
  # The style shrinks by the same ratio as the content.
  assert [s['styles'][0].shape for s in stages] == [(1, 21, 28, 3), (1, 30, 40, 3)]
  # The iterations are shared: 3 + 3 = -i, never more.
  assert [(s['scale'], s['total'], s['offset']) for s in stages] == [(0, 3, 0), (1, 3, 3)]
  # Scale 2 starts from scale 1's result, upsampled.
  np.testing.assert_allclose(
    stages[1]['init'], pixels.resize(stages[0]['out'], 48, 64), rtol=1e-5, atol=1e-3
  )
  assert seen == [(2, (1, 34, 45, 3)), (5, (1, 48, 64, 3))]  # iterations count on


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['luminance', 'postprocess', 'histogram'])
def test_colour_controls(caffe_npz, monkeypatch, mode):
  stages = _recording(monkeypatch)
  rng = np.random.default_rng(2)
  # A smooth content under a noise style: far from the style's statistics
  # even once their luminances are matched, so 3 iterations change it visibly
  # (a noise content, already close, moved by a fifth of an 8-bit level).
  ramp = np.linspace(0, 1, 32)[None, :, None] * np.linspace(0.5, 1, 32)[:, None, None]
  content = (ramp * [0.3, 0.5, 0.2] + [0.3, 0.2, 0.4]).astype(np.float32)
  style = (rng.uniform(size=(32, 32, 3)) * [0.2, 0.2, 0.6] + [0.6, 0.1, 0.2]).astype(np.float32)
  cfg = _cfg(3, color=config_lib.ColorConfig(preserve_colors=mode))
  out = stylize(content, style, config=cfg, weights=caffe_npz)
  seen_style = np.asarray(pixels.deprocess(stages[0]['styles'][0], pixels.CAFFE))[0]
  seen_content = np.asarray(pixels.deprocess(stages[0]['content'], pixels.CAFFE))[0]
  if mode == 'luminance':
    # Optimised on grey images; the style's luminance matched to the content's.
    np.testing.assert_allclose(seen_style[..., 0], seen_style[..., 1], atol=1e-4)
    np.testing.assert_allclose(seen_content[..., 0], seen_content[..., 2], atol=1e-4)
    y_c = np.asarray(color.rgb_to_yiq(content))[..., 0]
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
    iq_out = np.asarray(color.rgb_to_yiq(out))[..., 1:]
    iq_content = np.asarray(color.rgb_to_yiq(content))[..., 1:]
    np.testing.assert_allclose(iq_out[inside], iq_content[inside], atol=1e-5)
  # In every mode the style was transferred: the luminance moved. With every
  # loss weight 0 the result is the content (within 2e-7); here Y moves by up
  # to 0.02 (luminance), 0.17 (postprocess) and 0.03 (histogram).
  y_moved = np.abs(np.asarray(color.rgb_to_yiq(out) - color.rgb_to_yiq(content))[..., 0])
  assert y_moved.max() > 2 / 255, y_moved.max()


@pytest.mark.slow
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
  cfg = _cfg(
    6,
    scales=2,
    optim=config_lib.OptimConfig(name=optimizer),
    inputs=config_lib.InputConfig(init='gray'),
    color=config_lib.ColorConfig(preserve_colors='luminance'),
    loss=small_runs.loss_config(style_loss='mean_cov', normalize_gradients=True, tv_weight=0.1),
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


def _stopped_after(polls: int, *args, **kwargs) -> None:
  """stylize(*args, **kwargs) stopped as SIGTERM would after `polls` iterations (one poll each)."""
  count = []

  def should_stop():
    count.append(1)
    return 15 if len(count) == polls else None

  with pytest.raises(errors.Interrupted):
    stylize(*args, should_stop=should_stop, **kwargs)


@pytest.mark.slow
def test_multiscale_resume_continues_the_same_run(caffe_npz, tmp_path):
  rng = np.random.default_rng(4)
  content = rng.uniform(size=(32, 40, 3)).astype(np.float32)
  style = rng.uniform(size=(32, 32, 3)).astype(np.float32)
  cfg = _cfg(6, scales=2, run=config_lib.RunConfig(checkpoint_every=1, print_iter=0))
  whole = stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=tmp_path / 'a.ckpt')
  # More iterations cannot extend it: the scales split them, and scale 1 ran
  # its 3 of 6 (10 ran 2 more and recorded 8 updates as 10; trial 11).
  before = checkpoint_lib.read(tmp_path / 'a.ckpt')
  for changed, message in (
    (dict(iterations=10), 'config.schedule.iterations differs (checkpoint 6, now 10)'),
    # Another number of scales is named as such (trial 17: 'iterations differs (6, now 6)').
    (dict(scales=3), 'config.schedule.scales differs (checkpoint 2, now 3)'),
  ):
    other = cfg.replace(schedule=cfg.schedule.replace(**changed), run=cfg.run.replace(resume=True))
    with pytest.raises(errors.ResumeMismatch) as e:
      stylize(content, style, config=other, weights=caffe_npz, checkpoint=tmp_path / 'a.ckpt')
    assert str(e.value) == (
      f'cannot resume from {tmp_path / "a.ckpt"}: {message}; pass the same config to resume, or '
      'another checkpoint= path (or remove this one) to start over'
    )
  assert checkpoint_lib.read(tmp_path / 'a.ckpt') == before
  for stop_after in (2, 4):  # inside scale 1, and inside scale 2
    ckpt = tmp_path / f'b{stop_after}.ckpt'
    _stopped_after(stop_after, content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt)
    payload = checkpoint_lib.read(ckpt)
    # Polled once per iteration: 3 per scale.
    assert (payload['scale'], payload['iteration']) == (
      (stop_after - 1) // 3,
      (stop_after - 1) % 3 + 1,
    )
    assert checkpoint_lib.unfinished(payload)
    resumed = stylize(
      content,
      style,
      config=cfg.replace(run=cfg.run.replace(resume=True)),
      weights=caffe_npz,
      checkpoint=ckpt,
    )
    np.testing.assert_array_equal(resumed, whole)


def test_an_image_too_small_for_the_layers_is_refused_naming_its_size(caffe_npz):
  """The file pipeline's size check, through `stylize`: before any compile, not as a NaN.

  The default layers reach relu5_1, after 4 poolings: 16 px on each side.
  """
  rng = np.random.default_rng(6)
  small = rng.uniform(size=(15, 20, 3)).astype(np.float32)
  fine = rng.uniform(size=(32, 32, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(schedule=config_lib.ScheduleConfig(iterations=2, scales=1))
  need = 'but the layers used need at least 16 px on each side'
  with pytest.raises(errors.ImageError) as e:
    stylize(small, fine, config=cfg, weights=caffe_npz)
  # stylize runs at the arrays' size: the fix is a larger image, not inputs.width.
  assert str(e.value) == (
    f'the content image is 20x15 px at this width, {need}; use a larger image size (stylize runs '
    "at the arrays' size)"
  )
  with pytest.raises(errors.ImageError, match=f'the style image is 20x15 px at this width, {need}'):
    stylize(fine, small, config=cfg, weights=caffe_npz)
  # Two scales: the coarsest is 32 / sqrt(2) = 23 px wide, its style 20 * 23 / 32 = 14 px.
  two = cfg.replace(schedule=cfg.schedule.replace(scales=2))
  with pytest.raises(errors.ImageError, match='the style image is 14x23 px at the coarsest scale'):
    stylize(fine, rng.uniform(size=(32, 20, 3)), config=two, weights=caffe_npz)
  with pytest.raises(errors.ImageError, match='the content image is 20x15 px'):  # a batch
    stylize(np.stack([small, small]), fine, config=cfg, weights=caffe_npz)


def test_masks_and_blend_weights_exclude_each_other_in_the_api(caffe_npz):
  rgb = np.full((32, 32, 3), 0.5, np.float32)
  cfg = _cfg(1, inputs=config_lib.InputConfig(style_blend_weights=(1.0, 2.0)))
  with pytest.raises(errors.ConfigError, match='exclude each other'):
    stylize(rgb, [rgb, rgb], config=cfg, weights=caffe_npz, style_masks=np.ones((2, 32, 32)))
  with pytest.raises(errors.ConfigError, match='give one mask per style'):
    stylize(rgb, [rgb, rgb], weights=caffe_npz, style_masks=np.ones((3, 32, 32)))


_NESTED = (
  'style is a nested list; pass np.asarray(style) for one image, or a list of [H, W, 3] arrays to '
  'blend several'
)


def test_arguments_stylize_would_misread_are_refused_in_one_line(caffe_npz, tmp_path):
  rgb = np.full((32, 32, 3), 0.5, np.float32)
  two = np.stack([rgb, rgb])
  cases = [
    # Two style images for one content: the second was dropped without a word.
    (dict(content=rgb, style=two), 'style has 2 images for 1 content image(s); give 1: to '
     'stylise one content with each, repeat it (np.repeat(content, 2, axis=0)); to blend them, '
     'pass them as a list'),
    (dict(content=rgb, style=rgb, content_mask=np.full((32, 32), 255.0)),
     'content_mask has values from 255 to 255; masks are in [0, 1] (uint8 masks are divided by '
     '255): if it holds labels, give the region of label k: (labels == k).astype(np.float32); if '
     'its values are weights, give them as floats in [0, 1]: m / 255'),
    (dict(content=rgb, style=rgb, content_mask=np.ones((32, 32), np.uint8)),
     'content_mask is uint8 holding only 0 and 1, which weigh at most 1/255 (uint8 masks are '
     'divided by 255); multiply it by 255, or give it as floats in [0, 1]'),
    (dict(content=rgb, style=rgb, content_mask=np.full((32, 32), np.nan)),
     'content_mask has NaN or infinite values; masks are finite, in [0, 1]'),  # not 'from 0 to 0'
    # Stacked [H, W, 1] masks were read as [N, S, H, W]: '32 masks for 2 styles' (trial 16).
    (dict(content=rgb, style=[rgb, rgb], style_masks=np.ones((2, 32, 32, 1))),
     'style_masks has shape (2, 32, 32, 1); give one mask per style, [S, H, W] = [2, 32, 32] or '
     '[N, 2, 32, 32]; drop its channel axis: m[..., 0] (nst_jax.io.images.load_mask reads a mask '
     'file as [H, W])'),
    (dict(content=rgb, style=rgb, content_mask=np.ones((32, 32, 3))),
     'content_mask has shape (32, 32, 3); give [H, W] = [32, 32] or [N, 32, 32], at the content '
     'size; drop its channel axis: m[..., 0] (nst_jax.io.images.load_mask reads a mask file as '
     '[H, W])'),
    (dict(content=rgb, style=rgb, config=config_lib.StyleConfig(run=config_lib.RunConfig(
      resume=True))), 'config.run.resume is set but no checkpoint= names the file to continue; '
     'pass checkpoint= or leave config.run.resume False'),
    # A keyword's typo: it named a missing file only (trial 5), as initial_image names them.
    (dict(content=rgb, style=rgb, config=config_lib.StyleConfig(inputs=config_lib.InputConfig(
      init='randm'))), "inputs.init 'randm' is not one of content, random, gray, and no image "
     'file of that name exists; pass one of those, the path of an image file, or init_image='),
    # Two start images for three contents: row 2 started from the second, unsaid (trial 6).
    (dict(content=np.stack([rgb] * 3), style=rgb, init_image=two),
     'init_image has 2 images for 3 content image(s); give 1 (one start image for all) or 3, one '
     'per content image'),
    # It said 'give 1 or 1' (trial 7).
    (dict(content=rgb, style=rgb, init_image=two),
     'init_image has 2 images for 1 content image(s); give 1 (one start image for all)'),
    (dict(content=rgb, style=[]), 'no style image given; pass one: stylize(content, style, ...)'),
    # One image as nested lists was read as 32 styles of [32, 3] (trial 8).
    (dict(content=rgb, style=rgb.tolist()), _NESTED),
    (dict(content=rgb, style=list(rgb[0, 0])), _NESTED),  # items of ndim 0
    (dict(content=rgb, style=[rgb, rgb.tolist()]), _NESTED),
    # Trial 21: Python's own errors, one only after compiling and two iterations.
    (dict(content=rgb, style=rgb, should_stop=True), 'should_stop must be a function returning '
     'True (or a signal number) to stop or None, got bool True'),
    (dict(content=rgb, style=rgb, callback=3), 'callback must be a function (iteration, rgb) -> '
     'None or None, got int 3'),
    (dict(content=rgb, style=rgb, record=[]), 'record must be a dict, which stylize fills, got '
     'list; pass record={}'),
    # This and 'no' below are read only while it runs: the network of small_runs (_cfg's).
    (dict(content=rgb, style=rgb, config=_cfg(), should_stop=lambda: np.array([1, 0])),
     'should_stop returned '
     'ndarray of shape (2,); return True (or a signal number 1-64) to stop, else False or None'),
    # Trial 27: KeyError 0.
    (dict(content=np.zeros((0, 32, 32, 3), np.float32), style=rgb),
     'content holds no images (shape (0, 32, 32, 3)); pass one or more'),
    # Trial 25: numpy's "inhomogeneous shape" for photos of two sizes.
    (dict(content=[rgb, rgb[:24]], style=rgb), 'content is a list of images of different shapes '
     '((24, 32, 3), (32, 32, 3)); a batch shares one size: call once per size, or resize them '
     'to one'),
    # Trial 25: pathlib's TypeError, naming neither the argument nor the fix.
    (dict(content=rgb, style=rgb, checkpoint=5), 'checkpoint must be a path (str or '
     "pathlib.Path), got int 5; pass e.g. checkpoint='run.ckpt'"),
    # Trial 23: 'no' is truthy, so it stopped the run.
    (dict(content=rgb, style=rgb, config=_cfg(), should_stop=lambda: 'no'),
     "should_stop returned str 'no'; "
     'return True (or a signal number 1-64) to stop, else False or None'),
  ]  # fmt: skip
  for kwargs, message in cases:
    kwargs.setdefault('weights', caffe_npz)
    with pytest.raises(errors.ConfigError) as e:
      stylize(**kwargs)
    assert str(e.value) == message
  # A uint8 mask is read as RGB is: divided by 255 (0 and 255 -> 0 and 1).
  from nst_jax.core import mask_checks

  (mask,) = mask_checks.per_image(np.full((32, 32), 255, np.uint8), 1, 2, (32, 32), 'content_mask')
  np.testing.assert_array_equal(mask, np.ones((32, 32), np.float32))


def test_a_config_or_keyword_stylize_does_not_take_names_the_fix(caffe_npz):
  """A LossConfig or a dict as config= was an AttributeError ('... has no attribute run')."""
  rgb = np.full((32, 32, 3), 0.5, np.float32)
  cases = [
    (dict(config=config_lib.LossConfig()),
     'config must be a StyleConfig, got a LossConfig; pass nst_jax.StyleConfig(loss=config)'),
    (dict(config={'iterations': 2}),
     'config must be a StyleConfig, got a dict; pass '
     'nst_jax.StyleConfig(loss=nst_jax.LossConfig(...))'),
    (dict(style_mask=np.ones((1, 32, 32))),
     "stylize got an unknown keyword 'style_mask'; did you mean 'style_masks'?"),
    # Trial 58 T58-3: a setting given as stylize's keyword was told 'style', the image.
    (dict(style_weight=1e3),
     "stylize got an unknown keyword 'style_weight'; it is a setting, loss.style_weight: pass "
     'config=nst_jax.StyleConfig(loss=nst_jax.LossConfig(style_weight=...))'),
    (dict(iterations=5),
     "stylize got an unknown keyword 'iterations'; it is a setting, schedule.iterations: pass "
     'config=nst_jax.StyleConfig(schedule=nst_jax.ScheduleConfig(iterations=...))'),
  ]  # fmt: skip
  for kwargs, message in cases:
    with pytest.raises(errors.ArgumentError) as e:
      stylize(rgb, rgb, weights=caffe_npz, **kwargs)
    assert str(e.value) == message
  # Trial 58 T58-7: VGGTiny's params were told to pass a model=, which stylize does not take.
  tiny = nst_jax.random_scaled_params(0, stage_sizes=(1, 2), widths=(4, 8))
  tiny = nst_jax.Weights.from_params(tiny, 'caffe')
  with pytest.raises(errors.ConfigError) as e:
    stylize(rgb, rgb, weights=tiny)
  assert str(e.value) == (
    "weights' conv1_1 kernel is (3, 3, 3, 4), not VGG-19's (3, 3, 3, 64): stylize runs VGG-19; "
    "pass its weights (nst_jax.Weights.from_params(nst_jax.random_scaled_params(seed), 'caffe') "
    'for random ones), or run another model with nst_jax.make_step'
  )


def _interrupted(caffe_npz, tmp_path, *, seed, cfg=None):
  """A 3-iteration stylize stopped at its first check: (content, style, its checkpoint, config)."""
  rng = np.random.default_rng(seed)
  content, style = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  ckpt = tmp_path / 'a.ckpt'
  cfg = cfg or _cfg(3)
  with pytest.raises(errors.Interrupted):
    stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt, should_stop=lambda: 15)
  return content, style, ckpt, cfg


def test_a_resume_that_does_not_fit_names_stylizes_own_arguments(caffe_npz, tmp_path):
  """Not inputs.width or save.path, which a stylize caller never set."""
  content, style, ckpt, cfg = _interrupted(caffe_npz, tmp_path, seed=5)
  resume = cfg.replace(run=cfg.run.replace(resume=True))
  start_over = 'or another checkpoint= path (or remove this one) to start over'
  cases = [
    ({'content': np.random.default_rng(5).uniform(size=(16, 24, 3))},
     f"the content is 24 px wide, the checkpoint's 16; pass the same content to resume, "
     f'{start_over}'),
    ({'style': style[::-1]},
     f"the style differs from the checkpoint's; pass the same style to resume, {start_over}"),
    ({'config': resume.replace(optim=config_lib.OptimConfig(name='adam'))},
     'config.optim.name differs (checkpoint "lbfgs", now "adam"); pass the same config to '
     f'resume, {start_over}'),
  ]  # fmt: skip
  for kwargs, message in cases:
    kwargs = {'content': content, 'style': style, 'config': resume, **kwargs}
    with pytest.raises(errors.ResumeMismatch) as e:
      stylize(**kwargs, weights=caffe_npz, checkpoint=ckpt)
    assert str(e.value) == f'cannot resume from {ckpt}: {message}'
  assert stylize(content, style, config=resume, weights=caffe_npz, checkpoint=ckpt).shape == (
    16,
    16,
    3,
  )


@pytest.mark.parametrize('init', ['content', 'random'])
def test_init_image_is_the_start_whatever_inputs_init_says(caffe_npz, init):
  """As the docstring says: init_image replaces the keywords, not only an init file's path."""
  rng = np.random.default_rng(8)
  content, style, start = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
  cfg = _cfg(1, inputs=config_lib.InputConfig(init=init))
  out = stylize(content, style, config=cfg, weights=caffe_npz, init_image=start[:8, :8])
  resized = np.asarray(pixels.resize(start[:8, :8][None], 16, 16)[0])
  # One L-BFGS step moves no pixel by more than first_step = 8 of 255.
  assert np.abs(out - np.clip(resized, 0, 1)).max() <= 8 / 255 + 1e-6
  assert np.abs(out - content).mean() > 0.2  # uniform noise against uniform noise: about 1/3


def test_params_made_in_memory_run_through_weights_from_params(caffe_npz):
  """random_scaled_params and the like: stylize refused a params dict and named no way in."""
  loaded = nst_jax.load_weights(caffe_npz)
  mine = nst_jax.Weights.from_params(loaded.params, 'caffe')
  assert mine.info.input_convention == pixels.CAFFE
  # The digest is the .npz's own, so a checkpoint tells these params from others.
  assert mine.info.params_sha256 == loaded.info.params_sha256
  rgb = np.random.default_rng(9).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  cfg = _cfg(2)
  np.testing.assert_array_equal(
    stylize(rgb[0], rgb[1], config=cfg, weights=mine),
    stylize(rgb[0], rgb[1], config=cfg, weights=caffe_npz),
  )
  with pytest.raises(errors.ConfigError) as e:
    stylize(rgb[0], rgb[1], config=cfg, weights=loaded.params)
  assert str(e.value) == (
    'weights is a params dict, which does not say its input convention; pass '
    'nst_jax.Weights.from_params(params, convention), the Weights (nst_jax.get_weights(path)) or '
    'the path of the .npz'
  )


def test_a_checkpoint_that_cannot_be_written_is_refused_before_the_run(caffe_npz, tmp_path):
  """A directory only logged 'could not write', and the run went on with no checkpoint."""
  rgb = np.full((16, 16, 3), 0.5, np.float32)
  for path, message in (
    (tmp_path, f'checkpoint {tmp_path} is not an nst-jax checkpoint (it is a directory that '
     f'nst-jax did not write); give a new path, e.g. {tmp_path / "run.ckpt"}'),
    (tmp_path / 'no' / 'a.ckpt', f'the folder of checkpoint {tmp_path / "no" / "a.ckpt"} does '
     'not exist; create it or give another path'),
  ):  # fmt: skip
    with pytest.raises(errors.ConfigError) as e:
      stylize(rgb, rgb, config=_cfg(1), weights=caffe_npz, checkpoint=path)
    assert str(e.value) == message
  assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_path_that_is_someones_file_is_refused_and_left_alone(caffe_npz, tmp_path):
  """checkpoint='notes.txt' deleted the file and put a checkpoint directory there (trial 7)."""
  rgb = np.full((16, 16, 3), 0.5, np.float32)
  notes = tmp_path / 'notes.txt'
  notes.write_text('my notes')
  (tmp_path / 'folder').mkdir()
  links = {
    'link.ckpt': notes,
    'dangling.ckpt': tmp_path / 'gone',
    'to_dir.ckpt': tmp_path / 'folder',
  }
  for name, target in links.items():
    (tmp_path / name).symlink_to(target)
  someones = 'is a file that is not an nst-jax checkpoint (or a damaged one); give a new path'
  neither = (
    'is neither an nst-jax checkpoint nor a regular file (a link to nowhere or to a directory, a '
    'FIFO, a device); give a new path'
  )
  cases = [
    (notes, someones),
    (tmp_path / 'link.ckpt', someones),
    (tmp_path / 'dangling.ckpt', neither),
    (tmp_path / 'to_dir.ckpt', neither),
  ]
  for resume in (False, True):
    cfg = _cfg(1, run=config_lib.RunConfig(print_iter=0, resume=resume))
    for path, message in cases:
      with pytest.raises(errors.ConfigError) as e:
        stylize(rgb, rgb, config=cfg, weights=caffe_npz, checkpoint=path)
      assert str(e.value) == f'checkpoint {path} {message}'
  assert notes.read_text() == 'my notes'
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['notes.txt', 'folder', *links])
  assert [(tmp_path / n).readlink() for n in links] == list(links.values())


def test_a_new_run_keeps_an_unfinished_checkpoint_and_replaces_a_finished_one(caffe_npz, tmp_path):
  """A run with run.resume False replaced an interrupted run's checkpoint unsaid (trial 7).

  As the command line: an unfinished checkpoint asks for run.resume; a
  finished one (stylize keeps it, to extend) is replaced.
  """
  content, style, ckpt, cfg = _interrupted(caffe_npz, tmp_path, seed=11)
  saved = checkpoint_lib.read(ckpt)
  other = cfg.replace(loss=cfg.loss.replace(style_weight=0.05))
  with pytest.raises(errors.ConfigError) as e:
    stylize(content, style, config=other, weights=caffe_npz, checkpoint=ckpt)
  assert str(e.value) == (
    f'checkpoint {ckpt} holds an unfinished run (1 of 3 iterations); continue it with '
    'config.run.resume=True, or start afresh with another checkpoint= path (or remove this one)'
  )
  assert checkpoint_lib.read(ckpt) == saved
  resume = cfg.replace(run=cfg.run.replace(resume=True))
  whole = stylize(content, style, config=cfg, weights=caffe_npz)
  resumed = stylize(content, style, config=resume, weights=caffe_npz, checkpoint=ckpt)
  np.testing.assert_array_equal(resumed, whole)
  assert not checkpoint_lib.unfinished(checkpoint_lib.read(ckpt))
  afresh = stylize(content, style, config=other, weights=caffe_npz, checkpoint=ckpt)
  assert afresh.shape == (16, 16, 3) and not np.array_equal(afresh, whole)
  assert checkpoint_lib.read(ckpt)['settings']['loss.style_weight'] == 0.05  # the new run's


def _losses(history):
  """A record's history without the times (a resumed run's differ)."""
  return [{k: v for k, v in e.items() if k != 'time_s'} for e in history]


def test_a_resumed_record_is_the_whole_runs_and_fewer_iterations_are_refused(caffe_npz, tmp_path):
  """Trial 10 (b)3: the record began at the resume point; (b)1: fewer iterations than the
  checkpoint holds ended the run at once, with an empty record.

  The history travels in the checkpoint: entries 0 (the checkpoint's, at
  iteration 1), 2 and 3 (the result), as the uninterrupted run's; the
  resume point (1) is no print_iter multiple, so it has no entry.
  """
  cfg = _cfg(3, run=config_lib.RunConfig(print_iter=2))
  content, style, ckpt, cfg = _interrupted(caffe_npz, tmp_path, seed=12, cfg=cfg)
  resume = cfg.replace(run=cfg.run.replace(resume=True))
  whole, resumed = {}, {}
  want = stylize(content, style, config=cfg, weights=caffe_npz, record=whole)
  got = stylize(content, style, config=resume, weights=caffe_npz, checkpoint=ckpt, record=resumed)
  np.testing.assert_array_equal(got, want)
  assert [e['iteration'] for e in resumed['history']] == [0, 2, 3]
  assert _losses(resumed['history']) == _losses(whole['history'])
  # The checkpoint is finished at 3: fewer iterations are refused, nothing touched.
  saved, state = checkpoint_lib.read(ckpt), checkpoint_lib.read_state(ckpt)
  fewer, record = resume.replace(schedule=resume.schedule.replace(iterations=2)), {}
  with pytest.raises(errors.ResumeMismatch) as e:
    stylize(content, style, config=fewer, weights=caffe_npz, checkpoint=ckpt, record=record)
  assert str(e.value) == (
    f'cannot resume from {ckpt}: it holds 3 of 3 iterations, more than config.schedule.iterations'
    ' 2; pass a config with schedule.iterations 3 (or more) to resume, or another checkpoint= '
    'path (or remove this one) to start over'
  )
  assert record == {} and checkpoint_lib.read(ckpt) == saved
  jax.tree.map(np.testing.assert_array_equal, checkpoint_lib.read_state(ckpt), state)
  # As many as it holds: the result again, with the whole run's history.
  again = {}
  got = stylize(content, style, config=resume, weights=caffe_npz, checkpoint=ckpt, record=again)
  np.testing.assert_array_equal(got, want)
  assert _losses(again['history']) == _losses(whole['history'])


def test_a_stops_record_ends_where_its_log_does_and_a_resume_keeps_every_result(
  caffe_npz, tmp_path, caplog
):
  """Trial 18 (H8): after a stop the log's last line named iteration k - 1, the record's
  history the last print_iter multiple; trial 17 (G16): a stop at a scale's last iteration
  was never scored, and a resumed record lacked that scale's result; trial 19 (I7): a stop
  at a scale's first iteration logged the last scale's result, recorded this one's start.
  """
  rng = np.random.default_rng(13)
  content, style = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  run = config_lib.RunConfig(print_iter=2, checkpoint_every=1)
  for cfg, stops in (
    (_cfg(6, run=run), [(4, (0, 3), 'iteration 3/6 ')]),  # the image before the stop's update
    (_cfg(8, scales=2, run=run), [
      (4, (0, 4), 'scale 1/2  iteration 4/4 '),  # at scale 1's end: its result, scored
      (5, (1, 4), 'scale 2/2  iteration 0/4 '),  # at scale 2's first: its start
    ]),
  ):  # fmt: skip
    every = {}  # every entry, for the stopped image's losses
    stylize(content, style, config=cfg.replace(run=run.replace(print_iter=1)), weights=caffe_npz,
            record=every)  # fmt: skip
    by_step = {(e['scale'], e['iteration']): e for e in _losses(every['history'])}
    whole = {}
    stylize(content, style, config=cfg, weights=caffe_npz, record=whole)
    for polls, last, line in stops:
      ckpt, stopped, resumed = tmp_path / f'{cfg.schedule.scales}_{polls}.ckpt', {}, {}
      caplog.clear()
      with caplog.at_level(logging.INFO):
        _stopped_after(polls, content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt,
                       record=stopped)  # fmt: skip
      lines = [r.getMessage() for r in caplog.records if ' loss ' in r.getMessage()]
      entry = stopped['history'][-1]
      assert (entry['scale'], entry['iteration']) == last
      assert line in lines[-1] and f'loss {entry["total"]:.5g} ' in lines[-1], lines[-1]
      assert _losses([entry]) == [by_step[last]]
      resume = cfg.replace(run=run.replace(resume=True))
      stylize(content, style, config=resume, weights=caffe_npz, checkpoint=ckpt, record=resumed)
      assert _losses(resumed['history']) == _losses(whole['history']), polls


def test_should_stops_numpy_integer_is_named_as_the_signal(caffe_npz):
  """Trial 21: np.int64(2) was 'stopped by should_stop', a plain 2 'signal 2', as documented."""
  rgb = np.full((16, 16, 3), 0.5, np.float32)
  with pytest.raises(errors.Interrupted) as e:
    stylize(rgb, rgb, config=_cfg(2), weights=caffe_npz, should_stop=lambda: np.int64(2))
  assert str(e.value) == 'interrupted by signal 2 after iteration 1; nothing was saved'


def test_a_configs_learning_rate_is_left_out_of_lbfgs_as_documented(caffe_npz):
  """OptimConfig says learning_rate is unused by L-BFGS; make_optimizer now refuses it."""
  rgb = np.random.default_rng(10).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  with_rate = _cfg(2, optim=config_lib.OptimConfig(name='lbfgs', learning_rate=0.5))
  np.testing.assert_array_equal(
    stylize(rgb[0], rgb[1], config=with_rate, weights=caffe_npz),
    stylize(rgb[0], rgb[1], config=_cfg(2), weights=caffe_npz),
  )


def test_a_misshapen_mask_is_named_by_the_shape_given_and_the_one_needed(caffe_npz):
  """It showed the shape after broadcasting ((1, 16, 32) for a (16, 32) mask) as 'images of'."""
  rgb = np.full((32, 32, 3), 0.5, np.float32)
  for kwargs, message in (
    ({'content_mask': np.ones((16, 32))}, 'content_mask has shape (16, 32); give [H, W] = '
     '[32, 32] or [N, 32, 32], at the content size'),
    ({'style_masks': np.ones((32, 32))}, 'style_masks has shape (32, 32); give one mask per '
     'style, [S, H, W] = [1, 32, 32] or [N, 1, 32, 32]'),
  ):  # fmt: skip
    with pytest.raises(errors.ConfigError) as e:
      stylize(rgb, rgb, config=_cfg(1), weights=caffe_npz, **kwargs)
    assert str(e.value) == message


def test_a_memory_limit_plans_tiles_and_the_image_is_the_untiled_one(caffe_npz, caplog):
  """stylize with run.memory_limit plans as the command line does; tiles change only memory."""
  from nst_jax.engine import memory

  rng = np.random.default_rng(8)
  content = rng.uniform(size=(64, 96, 3)).astype(np.float32)
  style = rng.uniform(size=(40, 40, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(schedule=config_lib.ScheduleConfig(iterations=3, scales=1))
  # Between the two estimates: the whole image does not fit, tiles of 32 do.
  # (At 64x48 a tile's window is most of the image: tiles would not save memory.)
  untiled = memory.estimate_memory(64, 96, config=cfg)
  tiled = memory.estimate_memory(64, 96, config=cfg, tile=32)
  assert tiled < untiled
  limited = cfg.replace(run=cfg.run.replace(memory_limit=(untiled + tiled) / 2 / 1e9))
  with caplog.at_level(logging.INFO):
    got = stylize(content, style, config=limited, weights=caffe_npz)
  planned = r'A 96x64 run in tiles of (32|64) px (and an L-BFGS history of \d+ )?needs'
  assert re.search(planned, caplog.text), caplog.text
  want = stylize(content, style, config=cfg, weights=caffe_npz)
  assert float(np.mean(np.abs(got - want))) < 0.5 / 255
  with pytest.raises(errors.NstError, match=r'run\.memory_limit is 0\.5 GB; what would fit'):
    stylize(content, style, config=cfg.replace(run=cfg.run.replace(memory_limit=0.5)),
            weights=caffe_npz)  # fmt: skip


def test_style_scale_resizes_the_style_as_the_file_pipeline_does(caffe_npz):
  """Each style at style_scale x the content's width (trial 5: stylize ignored style_scale)."""
  rng = np.random.default_rng(3)
  content = rng.uniform(size=(16, 24, 3)).astype(np.float32)
  style = rng.uniform(size=(24, 32, 3)).astype(np.float32)
  half = _cfg(2, inputs=config_lib.InputConfig(style_scale=0.5))
  out = stylize(content, style, config=half, weights=caffe_npz)
  pre = image_lib.resize_to_width(style, 12)  # inputs.style_width: round(0.5 * 24)
  assert pre.shape == (9, 12, 3)
  np.testing.assert_array_equal(out, stylize(content, pre, config=_cfg(2), weights=caffe_npz))
  as_given = stylize(content, style, config=_cfg(2), weights=caffe_npz)  # 1: the size given
  assert np.abs(out - as_given).max() > 1e-3


def test_the_callback_is_called_where_intermediates_are_saved(caffe_npz):
  """save_iter 2 of 4 iterations: at 2, not at 4, whose image is the result (the docstring)."""
  rgb = np.random.default_rng(4).uniform(size=(16, 16, 3)).astype(np.float32)
  seen = []
  cfg = _cfg(4, save=config_lib.SaveConfig(save_iter=2))
  stylize(rgb, rgb[::-1], config=cfg, weights=caffe_npz, callback=lambda i, x: seen.append(i))
  assert seen == [2]


def test_tiles_with_an_image_split_over_devices_are_refused_as_on_the_command_line(
  caffe_npz, monkeypatch
):
  """stylize took loss.tiles with run.shard spatial, which the command line refuses (trial 7)."""
  import jax

  rgb = np.full((16, 16, 3), 0.5, np.float32)
  cfg = _cfg(1, loss=small_runs.loss_config().replace(tiles=16), run=config_lib.RunConfig(
    shard='spatial', print_iter=0))  # fmt: skip
  monkeypatch.setattr(jax, 'local_device_count', lambda: 2)  # two devices, as far as it asks
  monkeypatch.setattr(jax, 'local_devices', lambda: jax.devices() * 2)
  with pytest.raises(errors.ConfigError) as e:
    stylize(rgb, rgb, config=cfg, weights=caffe_npz)
  assert str(e.value) == (
    'loss.tiles and run.shard spatial do not combine (both split the image to fit memory, and '
    "the memory plan covers one at a time); use one: loss.tiles 'off', or run.shard jobs"
  )


def test_weights_come_from_weights_then_model_weights_then_the_variable(
  caffe_npz, tmp_path, monkeypatch
):
  """As nst_jax.run: config.model.weights was ignored for $NST_JAX_WEIGHTS (trial 8)."""
  rgb = np.random.default_rng(9).uniform(size=(16, 16, 3)).astype(np.float32)
  cfg = _cfg(1)
  missing = tmp_path / 'missing.npz'
  monkeypatch.setenv('NST_JAX_WEIGHTS', str(missing))
  fetch = f'run: nst_jax.io.download.fetch_and_convert({str(missing)!r})'
  with pytest.raises(errors.WeightsError) as e:
    stylize(rgb, rgb, config=cfg)
  assert str(e.value) == f'weights file {missing} ($NST_JAX_WEIGHTS) does not exist; {fetch}'
  given = stylize(rgb, rgb, config=cfg, weights=caffe_npz)
  from_config = cfg.replace(model=cfg.model.replace(weights=str(caffe_npz)))
  np.testing.assert_array_equal(stylize(rgb, rgb, config=from_config), given)
  # weights= first: each error names where its path came from.
  with pytest.raises(errors.WeightsError) as e:
    stylize(rgb, rgb, config=from_config, weights=missing)
  assert str(e.value) == f'weights file {missing} (weights=) does not exist; {fetch}'
  monkeypatch.setenv('NST_JAX_WEIGHTS', str(caffe_npz))
  with pytest.raises(errors.WeightsError) as e:
    stylize(rgb, rgb, config=cfg.replace(model=cfg.model.replace(weights=str(missing))))
  assert str(e.value) == f'weights file {missing} (model.weights) does not exist; {fetch}'


def test_ctrl_c_in_stylize_saves_the_checkpoint_as_the_command_line_does(caffe_npz, tmp_path):
  """A SIGINT raised a bare KeyboardInterrupt and saved nothing (trial 8)."""
  rng = np.random.default_rng(11)
  content, style = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  cfg = _cfg(4, save=config_lib.SaveConfig(save_iter=2))
  whole = stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=tmp_path / 'a.ckpt')

  def ctrl_c(iteration, rgb):
    calls.append(iteration)
    if len(calls) == 1:  # Ctrl-C once (it is called again when the run stops)
      os.kill(os.getpid(), signal.SIGINT)

  before, calls = signal.getsignal(signal.SIGINT), []
  ckpt = tmp_path / 'b.ckpt'
  with pytest.raises(errors.Interrupted) as e:
    stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt, callback=ctrl_c)
  # The loop polled iteration 2's stop before its hooks ran: it stops after the next.
  assert str(e.value) == (
    f'interrupted by signal 2 after iteration 3; the checkpoint {ckpt} holds iteration 3: '
    'continue with config.run.resume=True'  # docs/api.md's words; the command line's: --resume
  )
  assert signal.getsignal(signal.SIGINT) is before
  payload = checkpoint_lib.read(ckpt)
  assert payload['iteration'] == 3 and checkpoint_lib.unfinished(payload)
  resume = cfg.replace(run=cfg.run.replace(resume=True))
  resumed = stylize(content, style, config=resume, weights=caffe_npz, checkpoint=ckpt)
  np.testing.assert_array_equal(resumed, whole)
  assert calls == [2, 3]  # and with the image it stopped at
  # Without checkpoint=, a clean stop that says so.
  calls.clear()
  with pytest.raises(errors.Interrupted) as e:
    stylize(content, style, config=cfg, weights=caffe_npz, callback=ctrl_c)
  assert str(e.value) == 'interrupted by signal 2 after iteration 3; nothing was saved'
  assert signal.getsignal(signal.SIGINT) is before

  def twice(iteration, rgb):
    signal.raise_signal(signal.SIGINT)
    time.sleep(signals.AGAIN_AFTER_S)  # closer, they are one signal sent twice
    signal.raise_signal(signal.SIGINT)

  with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
    stylize(content, style, config=cfg, weights=caffe_npz, callback=twice)
  assert signal.getsignal(signal.SIGINT) is before


def test_the_fields_stylize_documents_as_ignored_change_nothing(caffe_npz, tmp_path, monkeypatch):
  """Trial 8 (D2): they were ignored, but only 'the paths and inputs.width' were listed."""
  monkeypatch.chdir(tmp_path)
  rgb = np.random.default_rng(12).uniform(size=(16, 16, 3)).astype(np.float32)
  cfg = _cfg(1)
  plain = stylize(rgb, rgb, config=cfg, weights=caffe_npz)
  ignored = cfg.replace(
    inputs=cfg.inputs.replace(content_path='c.png', style_path='s.png', width=64),
    save=config_lib.SaveConfig(
      path='out.png', bit_depth=16, quality=50, record=False, overwrite=True
    ),
    run=cfg.run.replace(checkpoint_dir='ckpts', keep_checkpoint=True),
  )
  np.testing.assert_array_equal(stylize(rgb, rgb, config=ignored, weights=caffe_npz), plain)
  assert list(tmp_path.iterdir()) == []  # no file written


@pytest.mark.slow
def test_a_resume_near_early_stopping_converges_where_the_whole_run_did(caffe_npz, tmp_path):
  """Trial 17: stopped within `window` of converging, the resumed run took one update more.

  The stop's own losses were not given to the convergence test, so the
  checkpoint's history was one short.
  """
  rng = np.random.default_rng(5)
  content, style = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  cfg = _cfg(20, run=config_lib.RunConfig(checkpoint_every=1, print_iter=0))
  cfg = cfg.replace(schedule=cfg.schedule.replace(tol=0.05, window=3))
  record = {}
  whole = stylize(content, style, config=cfg, weights=caffe_npz, record=record)
  done = record['history'][-1]['iteration']
  assert 3 < done < 20  # it converged, after more than a window
  # Trial 21: a stop at the converging iteration itself never scored the result.
  for stop_after in (done - 2, done - 1, done):
    ckpt = tmp_path / f'{stop_after}.ckpt'
    _stopped_after(stop_after, content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt)
    again = {}
    resumed = stylize(
      content, style, config=cfg.replace(run=cfg.run.replace(resume=True)), weights=caffe_npz,
      checkpoint=ckpt, record=again,
    )  # fmt: skip
    assert _losses(again['history']) == _losses(record['history']), stop_after
    np.testing.assert_array_equal(resumed, whole)


def _doubled(image, params, targets, *, model, loss_spec):
  return _scaled(image, params, targets, model=model, loss_spec=loss_spec, by=2.0)


def _scaled(image, params, targets, *, model, loss_spec, by):
  total, aux = nst_jax.objective(image, params, targets, model=model, loss_spec=loss_spec)
  return by * total, aux


def test_a_resume_with_another_init_image_is_refused(caffe_npz, tmp_path):
  """Trial 17: another init_image on resume was ignored, while another inputs.init was refused.

  Trial 18: past the first scale (and from a finished checkpoint) it still
  was, and a run that had none was told to pass "the same init_image".
  """
  rng = np.random.default_rng(6)
  content, style, start, other = rng.uniform(size=(4, 32, 32, 3)).astype(np.float32)
  cfg = _cfg(4, scales=2, run=config_lib.RunConfig(checkpoint_every=1, print_iter=0))
  again = cfg.replace(run=cfg.run.replace(resume=True))
  start_over = 'to resume, or another checkpoint= path (or remove this one) to start over'
  # Stopped in scale 2 (after 3 of 2 + 2 iterations), and finished.
  stopped, done = tmp_path / 'a.ckpt', tmp_path / 'b.ckpt'
  _stopped_after(3, content, style, config=cfg, weights=caffe_npz, checkpoint=stopped,
                 init_image=start)  # fmt: skip
  stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=done, init_image=start)
  for ckpt in (stopped, done):
    for init, message in (
      (other, "the init_image differs from the checkpoint's; pass the same init_image"),
      (None, "the checkpoint's run had an init_image; pass the same init_image"),
    ):
      with pytest.raises(errors.ResumeMismatch) as e:
        stylize(content, style, config=again, weights=caffe_npz, checkpoint=ckpt, init_image=init)
      assert str(e.value) == f'cannot resume from {ckpt}: {message} {start_over}', ckpt.name
  # Trial 27: another loss_fn went on with the checkpoint's L-BFGS memory, unsaid.
  with pytest.raises(errors.ResumeMismatch) as e:
    stylize(content, style, config=again, weights=caffe_npz, checkpoint=stopped,
            init_image=start, loss_fn=_doubled)  # fmt: skip
  assert str(e.value).startswith(f'cannot resume from {stopped}: the loss_fn is "_doubled ')
  assert str(e.value).endswith(f"the checkpoint's run had the default objective; pass no "
                               f'loss_fn (the default objective) {start_over}')  # fmt: skip
  # Trial 29: two of one name (partials of one function) were one loss_fn to a resume.
  cut = tmp_path / 'd.ckpt'
  half = functools.partial(_scaled, by=0.5)
  _stopped_after(3, content, style, config=cfg, weights=caffe_npz, checkpoint=cut,
                 init_image=start, loss_fn=half)  # fmt: skip
  with pytest.raises(
    errors.ResumeMismatch,
    match=r"the loss_fn _scaled computes otherwise than the checkpoint's run's \(digest \w{8}; "
    r"the checkpoint's \w{8}: other code or values, a host callback's Python state too, or "
    r'traced otherwise, as under jax.jit or by another JAX version; state that leaves the result '
    r'alone, a list a host callback records into, say: declare it, loss_fn.nst_jax_identity = '
    r"'my-loss-v1' \(on the instance, for a bound method\), and start over\); pass the loss_fn "
    r"the checkpoint's run had to resume, or ano",
  ):
    stylize(content, style, config=again, weights=caffe_npz, checkpoint=cut, init_image=start,
            loss_fn=functools.partial(_scaled, by=2.0))  # fmt: skip
  stylize(content, style, config=again, weights=caffe_npz, checkpoint=cut, init_image=start,
          loss_fn=functools.partial(_scaled, by=0.5))  # the same: it resumes  # fmt: skip
  out = stylize(content, style, config=again, weights=caffe_npz, checkpoint=stopped,
                init_image=start)  # fmt: skip
  whole = stylize(content, style, config=cfg, weights=caffe_npz, init_image=start)
  np.testing.assert_array_equal(out, whole)
  plain = tmp_path / 'c.ckpt'
  _stopped_after(3, content, style, config=cfg, weights=caffe_npz, checkpoint=plain)
  with pytest.raises(errors.ResumeMismatch) as e:
    stylize(content, style, config=again, weights=caffe_npz, checkpoint=plain, init_image=start)
  assert str(e.value) == (
    f"cannot resume from {plain}: the checkpoint's run had no init_image; pass no init_image "
    f'{start_over}'
  )


def test_a_checkpoint_naming_its_loss_fn_the_old_way_says_so(caffe_npz, tmp_path, monkeypatch):
  """Trial 31 V3: before 45c6757 a checkpoint named its loss_fn `module.qualname`.

  Resumed with the very same function, the refusal said to "pass" it.
  """
  from nst_jax.core import step_checks

  rng = np.random.default_rng(8)
  content, style = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  cfg = _cfg(4, run=config_lib.RunConfig(checkpoint_every=1, print_iter=0))
  old = tmp_path / 'old.ckpt'
  with monkeypatch.context() as m:  # the older writer's words
    m.setattr(step_checks, 'loss_fn_identity', lambda fn, **_: f'{fn.__module__}.{fn.__qualname__}')
    _stopped_after(2, content, style, config=cfg, weights=caffe_npz, checkpoint=old,
                   loss_fn=_doubled)  # fmt: skip
  again = cfg.replace(run=cfg.run.replace(resume=True))
  with pytest.raises(errors.ResumeMismatch) as e:
    stylize(content, style, config=again, weights=caffe_npz, checkpoint=old, loss_fn=_doubled)
  assert str(e.value) == (
    f'cannot resume from {old}: an older nst-jax wrote it, naming its loss_fn '
    '"transfer_test._doubled" without its code, so this one cannot be checked against it; '
    'start over with another checkpoint= path (or remove this one)'
  )


def test_an_error_in_the_callback_names_the_checkpoint_it_left(caffe_npz, tmp_path):
  """Trial 17: the callback's own error came out alone, though the checkpoint was saved."""
  rng = np.random.default_rng(7)
  content, style = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  cfg = _cfg(4, run=config_lib.RunConfig(checkpoint_every=1, print_iter=0))
  cfg = cfg.replace(save=cfg.save.replace(save_iter=2))

  def callback(iteration, images):
    raise RuntimeError('disk full')

  ckpt = tmp_path / 'a.ckpt'
  with pytest.raises(RuntimeError, match='^disk full') as e:
    stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt, callback=callback)
  # Raised at iteration 2, the failure stops the loop at the next read, which saves.
  assert e.value.__notes__ == [
    f'the checkpoint {ckpt} holds iteration 3: continue with config.run.resume=True'
  ]


def _recording_into(log):
  """A loss_fn whose host callback records each value it sees into `log` (state that changes
  as it runs, without changing the result)."""

  def record(value):
    log.append(float(value))
    return np.float32(0.0)

  def loss(image, params, targets, *, model, loss_spec):
    total, aux = nst_jax.objective(image, params, targets, model=model, loss_spec=loss_spec)
    shape = jax.ShapeDtypeStruct((), np.float32)
    noted = jax.pure_callback(record, shape, jax.lax.stop_gradient(total), vmap_method='sequential')
    return total + noted, aux

  return loss


def _on_host(y):
  return np.float32(0.0) * y


def _calling_host(image, params, targets, *, model, loss_spec):
  """A loss_fn computing part of its value in Python on the host (state nothing changes)."""
  total, aux = nst_jax.objective(image, params, targets, model=model, loss_spec=loss_spec)
  shape = jax.ShapeDtypeStruct((), np.float32)
  noted = jax.pure_callback(_on_host, shape, jax.lax.stop_gradient(total), vmap_method='sequential')
  return total + noted, aux


def test_a_resume_with_a_host_callback_says_how_far_its_state_was_compared(
  caffe_npz, tmp_path, caplog
):
  """Trials 40-52 each found more Python state beyond the description's reach, each a resume
  continuing unsaid under another objective: such a resume says what it compared and how to
  answer for the rest, once; a declared identity, a fresh run or a pure loss_fn say nothing."""
  rng = np.random.default_rng(22)
  content, style = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  cfg = _cfg(4, run=config_lib.RunConfig(checkpoint_every=1, print_iter=0))
  again = cfg.replace(run=cfg.run.replace(resume=True))
  said = []
  for loss_fn, declared in ((_calling_host, None), (functools.partial(_calling_host), 'v1'),
                            (nst_jax.objective, None)):  # fmt: skip
    if declared:
      loss_fn.nst_jax_identity = declared
    ckpt = tmp_path / f'{len(said)}.ckpt'
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      _stopped_after(2, content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt,
                     loss_fn=loss_fn)  # fmt: skip
      fresh = [r.getMessage() for r in caplog.records if 'calls Python' in r.getMessage()]
      stylize(content, style, config=again, weights=caffe_npz, checkpoint=ckpt, loss_fn=loss_fn)
    said.append([r.getMessage() for r in caplog.records if 'calls Python' in r.getMessage()])
    assert fresh == []
  assert said == [
    [
      'resuming with loss_fn _calling_host, which calls Python on the host: its state was '
      "compared only as far as docs/api.md's description reaches (a change beyond it, in an "
      'object a helper is passed, say, resumes unsaid); set loss_fn.nst_jax_identity = '
      "'my-loss-v1' to answer for it yourself"
    ],
    [],
    [],
  ]


def test_a_loss_fn_declares_its_identity_for_host_state_that_leaves_the_result_alone(
  caffe_npz, tmp_path
):
  """Trial 42 G2: a host callback recording into a list was refused its own resume in the same
  process (its description counts the list); a declared identity is compared instead."""
  rng = np.random.default_rng(21)
  content, style = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  cfg = _cfg(4, run=config_lib.RunConfig(checkpoint_every=1, print_iter=0))
  again = cfg.replace(run=cfg.run.replace(resume=True))
  straight = stylize(content, style, config=cfg, weights=caffe_npz, loss_fn=_recording_into([]))
  recording = _recording_into([])
  _stopped_after(2, content, style, config=cfg, weights=caffe_npz, checkpoint=tmp_path / 'a.ckpt',
                 loss_fn=recording)  # fmt: skip
  with pytest.raises(errors.ResumeMismatch, match='declare it, loss_fn.nst_jax_identity = '):
    stylize(content, style, config=again, weights=caffe_npz, checkpoint=tmp_path / 'a.ckpt',
            loss_fn=recording)  # fmt: skip
  recording.nst_jax_identity = 'recording v1'
  _stopped_after(2, content, style, config=cfg, weights=caffe_npz, checkpoint=tmp_path / 'b.ckpt',
                 loss_fn=recording)  # fmt: skip

  def renamed(*args, **kwargs):  # trial 48 F9: another name declaring the same was refused
    return recording(*args, **kwargs)

  renamed.nst_jax_identity = 'recording v1'
  resumed = stylize(content, style, config=again, weights=caffe_npz, checkpoint=tmp_path / 'b.ckpt',
                    loss_fn=renamed)  # fmt: skip
  np.testing.assert_array_equal(resumed, straight)
  # Trial 44: another declared identity was "computes otherwise ... declare it".
  _stopped_after(2, content, style, config=cfg, weights=caffe_npz, checkpoint=tmp_path / 'c.ckpt',
                 loss_fn=recording)  # fmt: skip
  # Trial 46 N8: one declared 'none' read as none declared.
  for now, said in (('recording v2', "the identity 'recording_v2'"),
                    ('none', "the identity 'none'"), (None, 'no identity')):  # fmt: skip
    recording.nst_jax_identity = now
    if now is None:
      del recording.nst_jax_identity
    with pytest.raises(errors.ResumeMismatch) as refused:
      stylize(content, style, config=again, weights=caffe_npz, checkpoint=tmp_path / 'c.ckpt',
              loss_fn=recording)  # fmt: skip
    assert f"the loss_fn declares {said}, the checkpoint's run the identity 'recording_v1'" in str(
      refused.value
    )
  for bad in ('', 7):
    recording.nst_jax_identity = bad
    with pytest.raises(errors.ConfigError, match=r'loss_fn.nst_jax_identity is .*; give a non-'):
      stylize(content, style, config=cfg, weights=caffe_npz, loss_fn=recording)
