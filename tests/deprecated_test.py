"""Tests for nst_jax.deprecated: old names and module paths work, with a warning naming the new."""

import functools
import importlib
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax import deprecated
from nst_jax.core import objective
from nst_jax.core import pixels
from nst_jax.core import step
from nst_jax.core import vgg


def _fresh(code: str) -> subprocess.CompletedProcess:
  # A fresh interpreter: an old module path is created once per process.
  return subprocess.run(
    [sys.executable, '-W', 'always::DeprecationWarning', '-c', code],
    capture_output=True, text=True, timeout=120,
  )  # fmt: skip


def test_every_old_module_path_resolves_its_names_with_a_warning():
  code = '; '.join(
    [
      'import nst_jax, warnings',
      'from nst_jax import image, vgg, pipeline, transfer, output_plan',
      'print(image.preprocess.__module__, image.load_image.__module__)',
      'print(image.match_color.__module__)',
      'print(vgg.VGG19 is nst_jax.VGG19, pipeline.run is nst_jax.run)',
      'print(transfer.stylize is nst_jax.stylize, output_plan.derived.__module__)',
    ]
  )
  r = _fresh(code)
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == [
    'nst_jax.core.pixels', 'nst_jax.io.images', 'nst_jax.core.color', 'True', 'True', 'True',
    'nst_jax.io.output_names',
  ]  # fmt: skip
  assert 'nst_jax.image is deprecated; use nst_jax.io.images / nst_jax.core.pixels' in r.stderr
  assert 'nst_jax.vgg is deprecated; use nst_jax.core.vgg' in r.stderr


def test_names_that_moved_to_a_module_beside_the_new_one_resolve_too():
  # Split modules: nst_jax.losses' statistics (gram_matrix) went to
  # core/statistics, weights' formats to io/weight_formats, image's limits to
  # config, pipeline's preview context to engine/preview, video_pipeline's
  # objective to runs/temporal.
  code = '; '.join(
    [
      'from nst_jax import losses, weights, image, pipeline, video_pipeline',
      'print(losses.gram_matrix.__module__, weights.detect_format.__module__)',
      'print(image.DEFAULT_MAX_IMAGE_PIXELS, pipeline.serving.__module__)',
      'print(video_pipeline.video_objective.__module__)',
    ]
  )
  r = _fresh(code)
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == [
    'nst_jax.core.statistics', 'nst_jax.io.weight_formats', '89478485', 'nst_jax.engine.preview',
    'nst_jax.runs.temporal',
  ]  # fmt: skip


def test_an_unknown_module_path_is_an_ordinary_import_error():
  assert deprecated.OLD_MODULES['image'][0] == 'nst_jax.io.images'
  assert 'stylize' in deprecated.REMOVED and 'stylize' not in deprecated.OLD_MODULES
  with pytest.raises(ModuleNotFoundError):
    importlib.import_module('nst_jax.no_such_module')


def test_the_stylize_module_is_gone_and_says_where_its_names_are():
  r = _fresh('import nst_jax.stylize')
  assert r.returncode == 1
  assert 'nst_jax.stylize is no longer a module; import update_step' in r.stderr
  # ... and the function is never shadowed by a module.
  r = _fresh(
    'import nst_jax\n'
    'try:\n  import nst_jax.stylize\nexcept ImportError:\n  pass\n'
    'print(type(nst_jax.stylize).__name__)'
  )
  assert r.stdout.strip() == 'function'


def test_the_old_core_names_resolve_with_a_warning():
  core = importlib.import_module('nst_jax.core')
  with pytest.warns(DeprecationWarning, match=r'nst_jax\.core\.update_step is deprecated'):
    assert core.update_step is step.update_step
  with pytest.warns(DeprecationWarning, match=r'nst_jax\.core\.make_targets is deprecated'):
    assert core.make_targets is objective.make_targets
  with pytest.raises(AttributeError, match='no attribute'):
    core.no_such_name  # noqa: B018


def test_from_core_import_warns_once():
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    from nst_jax.core import init_state  # noqa: F401, PLC0415

  assert [str(w.message) for w in caught] == [
    'nst_jax.core.init_state is deprecated; use nst_jax.init_state or nst_jax.core.step.init_state'
  ]
  assert caught[0].filename == __file__  # the caller's line, not importlib's


def _tiny():
  model = vgg.VGG(stage_sizes=(1, 1), widths=(4, 8))
  rng = np.random.default_rng(0)
  content = jnp.asarray(rng.normal(0, 50, (1, 8, 8, 3)), jnp.float32)
  params = model.init(jax.random.key(0), content)['params']
  return model, params, content


def test_loss_config_still_works_and_gives_what_the_spec_and_weights_give():
  model, params, content = _tiny()
  loss = nst_jax.LossConfig(
    content_layers=('relu2_1',), style_layers=('relu1_1',), content_weight=3.0, style_weight=2.0
  )
  with pytest.warns(DeprecationWarning, match='make_targets\\(loss_config=...\\) is deprecated'):
    old = objective.make_targets(params, content, content, model=model, loss_config=loss)
  new = objective.make_targets(
    params, content, content, model=model, loss_spec=loss.spec, content_weight=3.0,
    style_weight=2.0,
  )  # fmt: skip
  assert float(old.content_weight[0]) == 3.0 and float(old.style_weight[0]) == 2.0
  np.testing.assert_array_equal(old.style['relu1_1']['gram'], new.style['relu1_1']['gram'])
  with pytest.warns(DeprecationWarning, match='LossConfig.structure is deprecated'):
    assert loss.structure == loss.spec
  tx = step.make_optimizer('adam', convention=pixels.CAFFE)
  state = step.init_state(content, tx)
  with pytest.warns(DeprecationWarning, match='update_step\\(loss_config=...\\) is deprecated'):
    _, a = step.update_step(state, params, new, model=model, optimizer=tx, loss_config=loss)
  state = step.init_state(content, tx)
  _, b = step.update_step(state, params, new, model=model, optimizer=tx, loss_spec=loss.spec)
  np.testing.assert_array_equal(a['total'], b['total'])


def test_make_targets_without_its_weights_is_refused():
  model, params, content = _tiny()
  spec = objective.LossSpec(content_layers=('relu2_1',), style_layers=('relu1_1',))
  with pytest.raises(TypeError, match='make_targets needs content_weight and style_weight='):
    objective.make_targets(params, content, content, model=model, loss_spec=spec)


def test_a_custom_loss_fn_written_for_loss_config_still_works():
  # The README's custom term before 0.3: the loss_fn takes loss_config= and
  # passes it on to objective; jitted, as the README jits the step.
  model, params, content = _tiny()
  loss = nst_jax.LossConfig(content_layers=('relu2_1',), style_layers=('relu1_1',))
  targets = objective.make_targets(
    params, content, content, model=model, loss_spec=loss.spec, content_weight=1.0,
    style_weight=1.0,
  )  # fmt: skip

  def old_style(x, params, targets, *, model, loss_config):
    total, aux = objective.objective(x, params, targets, model=model, loss_config=loss_config)
    return total + 1.0, {**aux, 'total': total + 1.0}

  def new_style(x, params, targets, *, model, loss_spec):
    total, aux = objective.objective(x, params, targets, model=model, loss_spec=loss_spec)
    return total + 1.0, {**aux, 'total': total + 1.0}

  tx = step.make_optimizer('adam', convention=pixels.CAFFE)
  totals = []
  for loss_fn in (old_style, new_style):
    run = jax.jit(
      functools.partial(
        step.update_step, model=model, optimizer=tx, loss_spec=loss.spec, loss_fn=loss_fn
      )
    )
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      _, losses = run(step.init_state(content, tx), params, targets)
    totals.append(losses['total'])
    said = ' '.join(str(w.message) for w in caught if w.category is DeprecationWarning)
    if loss_fn is old_style:
      assert 'loss_fn taking loss_config= is deprecated' in said
      assert 'objective(loss_config=...) is deprecated' in said
    else:
      assert said == ''
  np.testing.assert_array_equal(totals[0], totals[1])
