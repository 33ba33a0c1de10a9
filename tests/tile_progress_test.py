"""Tests for nst_jax.core.tile_progress and nst_jax.engine.tile_progress: each tile reported."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiles_test import SHALLOW  # the tiled objective's own tests' layers (relu1_1 to relu3_1)

import nst_jax
from nst_jax.core import objective as objective_lib
from nst_jax.core import tile_progress as core_progress
from nst_jax.engine import hooks
from nst_jax.engine import loop
from nst_jax.engine import tile_progress


@pytest.fixture(scope='module')
def params(scaled_params):
  return scaled_params


@pytest.fixture(scope='module')
def model():
  return nst_jax.make_model()


def _targets(params, model, spec, height, width):
  rng = np.random.default_rng(0)
  content = jnp.asarray(rng.uniform(-100, 100, (1, height, width, 3)), jnp.float32)
  style = jnp.asarray(rng.uniform(-100, 100, (1, 40, 56, 3)), jnp.float32)
  targets = objective_lib.make_targets(
    params, content, style, model=model, loss_spec=spec, content_weight=3.0, style_weight=0.01
  )
  return targets, content


def test_a_tiled_gradient_reports_every_tile_forward_then_backward(params, model):
  spec = objective_lib.LossSpec(**SHALLOW, tile=16)
  targets, content = _targets(params, model, spec, 48, 36)
  one = jax.tree.map(lambda a: a[0], targets)

  def value_and_grad(s):
    fn = lambda x: objective_lib.objective(x, params, one, model=model, loss_spec=s)[0]  # noqa: E731
    return jax.jit(jax.value_and_grad(fn))(content[0])

  calls = []
  with core_progress.listen(lambda *a: calls.append(a)):
    value, grad = value_and_grad(dataclasses.replace(spec, tile_progress=True))
    jax.block_until_ready(grad)
  # The stages' tiles at 48x36 in tiles of 16: 3x3 windows at full size, 2x2
  # of the pooled 24x18 (cores of 12x10), one of 12x9.
  counts = [3 * 3, 2 * 2, 1]
  forward = [(k, 3, t, n, sum(counts[:k]) + t, 14) for k, n in enumerate(counts) for t in range(n)]
  assert calls == forward + forward[::-1]  # the backward pass recomputes each tile, last first
  plain_value, plain_grad = value_and_grad(spec)  # the callbacks change nothing computed
  np.testing.assert_allclose(value, plain_value, rtol=1e-6)
  np.testing.assert_allclose(grad, plain_grad, rtol=1e-5, atol=1e-6 * float(jnp.abs(grad).max()))
  # Without a listener the callbacks go nowhere; a listener is gone after its block.
  assert core_progress._listeners == []  # noqa: SLF001


def test_the_first_lbfgs_step_reports_its_trial_forward_passes_too(params, model):
  spec = objective_lib.LossSpec(('relu2_1',), ('relu1_1',), tile=16, tile_progress=True)
  targets, content = _targets(params, model, spec, 32, 32)
  optimizer = nst_jax.make_optimizer('lbfgs', convention='caffe')
  step = nst_jax.make_step(model=model, optimizer=optimizer, loss_spec=spec)
  state = nst_jax.init_state(content, optimizer)
  positions = []
  with core_progress.listen(lambda *a: positions.append(a[-2])):
    state, _ = step.first(state, params, targets)
    jax.block_until_ready(state.image)
    first = len(positions)
    state, _ = step(state, params, targets)
    jax.block_until_ready(state.image)
  per_pass = 2 * 2 + 1  # 32x32 in tiles of 16: 2x2, then one 16x16 core
  # Every iteration: one forward and one backward pass; the first adds at least one trial.
  assert len(positions) - first == 2 * per_pass
  assert first >= 3 * per_pass and first % per_pass == 0
  assert positions[:per_pass] == list(range(per_pass))


class _Bar:
  def __init__(self):
    self.postfixes = []

  def set_postfix_str(self, text):
    self.postfixes.append(text)


def _passes(hook, positions, counts):
  """Feeds `hook.tile` the positions, with the stage and tile each stands for."""
  starts = np.cumsum([0, *counts])
  for p in positions:
    k = int(np.searchsorted(starts, p, side='right') - 1)
    hook.tile(k, len(counts), p - int(starts[k]), counts[k], p, int(starts[-1]))


def test_the_bar_names_the_pass_stage_and_tile():
  inner = types.SimpleNamespace(bar=_Bar(), begin=lambda info: None, end=lambda view: None)
  hook = tile_progress.TileProgress(inner)
  hook.begin(None)
  counts = [4, 1]
  forward = list(range(5))
  # A first iteration: forward, backward, a trial forward pass; then forward and backward.
  _passes(hook, forward + forward[::-1] + forward + forward + forward[::-1], counts)
  hook.end(None)
  said = inner.bar.postfixes
  assert said[:6] == [
    'forward pass, stage 1/2, tile 1/4',
    'forward pass, stage 1/2, tile 2/4',
    'forward pass, stage 1/2, tile 3/4',
    'forward pass, stage 1/2, tile 4/4',
    'forward pass, stage 2/2, tile 1/1',
    'backward pass, stage 2/2, tile 1/1',
  ]
  assert said[9] == 'backward pass, stage 1/2, tile 1/4'
  passes = [s.split(' pass')[0] for s in said]
  assert passes == ['forward'] * 5 + ['backward'] * 5 + ['forward'] * 10 + ['backward'] * 5


@pytest.mark.parametrize(
  'counts, labels',
  [
    # Two tiles in a pass: a 0 after the last tile going forward is a new pass (trial 87).
    ([2], 'FF BB FF FF BB FF BB'),
    ([1, 1], 'FF BB FF FF BB'),
    # One tile: nothing tells the passes apart, so none is named.
    ([1], '- - - - -'),
  ],
)
def test_short_passes_are_told_apart_or_not_named(counts, labels):
  inner = types.SimpleNamespace(bar=_Bar(), begin=lambda info: None, end=lambda view: None)
  hook = tile_progress.TileProgress(inner)
  hook.begin(None)
  n = sum(counts)
  forward, backward = list(range(n)), list(range(n))[::-1]
  order = {'F': forward, 'B': backward, '-': forward}
  _passes(hook, [p for group in labels.split() for p in order[group[0]]], counts)
  hook.end(None)
  said = [s.split(' pass')[0] if ' pass' in s else '-' for s in inner.bar.postfixes]
  want = [{'F': 'forward', 'B': 'backward', '-': '-'}[c] for c in labels.replace(' ', '')]
  assert said == want


def test_the_bar_keeps_the_last_loss_beside_the_tile():
  inner = types.SimpleNamespace(
    bar=_Bar(), begin=lambda info: None, after_step=lambda view: None, end=lambda view: None
  )
  hook = tile_progress.TileProgress(inner)
  hook.begin(None)
  _passes(hook, [0], [3])
  hook.after_step(types.SimpleNamespace(synced=True, mean_losses=lambda: {'total': 1234.5678}))
  _passes(hook, [1], [3])
  hook.after_step(types.SimpleNamespace(synced=False, mean_losses=None))  # no read: kept
  _passes(hook, [2], [3])
  hook.end(None)
  assert inner.bar.postfixes == [
    'forward pass, stage 1/1, tile 1/3',
    'loss=1235, forward pass, stage 1/1, tile 2/3',
    'loss=1235, forward pass, stage 1/1, tile 3/3',
  ]


def test_a_listener_that_raises_is_stopped_with_a_warning_and_the_step_goes_on(params, model):
  spec = objective_lib.LossSpec(('relu1_2',), ('relu1_1',), tile=16, tile_progress=True)
  targets, content = _targets(params, model, spec, 32, 32)
  one = jax.tree.map(lambda a: a[0], targets)
  fn = lambda x: objective_lib.objective(x, params, one, model=model, loss_spec=spec)[0]  # noqa: E731
  calls = []

  def broken(*args):
    calls.append(args)
    raise BrokenPipeError('the terminal went away')

  with core_progress.listen(broken), pytest.warns(RuntimeWarning, match='the terminal went away'):
    value, grad = jax.jit(jax.value_and_grad(fn))(content[0])
    jax.block_until_ready(grad)
  assert len(calls) == 1  # not called again after it raised
  plain = objective_lib.LossSpec(('relu1_2',), ('relu1_1',), tile=16)
  want = objective_lib.objective(content[0], params, one, model=model, loss_spec=plain)[0]
  np.testing.assert_allclose(value, want, rtol=1e-6)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_tile_progress_without_tiles_is_refused_naming_tile():
  with pytest.raises(nst_jax.NstError, match=r'set tile \(e.g. tile=256\) too'):
    nst_jax.LossSpec(tile_progress=True)
  with pytest.raises(nst_jax.NstError, match='tile_progress'):
    nst_jax.LossSpec(tile=32, tile_progress='often')


def test_listeners_ending_out_of_order_remove_only_their_own():
  a, b = [], []
  first = core_progress.listen(lambda *x: a.append(x))
  second = core_progress.listen(lambda *x: b.append(x))
  first.__enter__()
  second.__enter__()
  core_progress._deliver(0, 1, 4, 0, 4, 1)  # noqa: SLF001 - as the runtime calls it
  first.__exit__(None, None, None)  # the older run ends first (two runs in two threads)
  core_progress._deliver(0, 1, 4, 0, 4, 2)  # noqa: SLF001
  second.__exit__(None, None, None)
  core_progress._deliver(0, 1, 4, 0, 4, 3)  # noqa: SLF001
  assert a == [] and b == [(0, 1, 1, 4, 1, 4), (0, 1, 2, 4, 2, 4)]
  assert core_progress._listeners == []  # noqa: SLF001


def test_without_a_terminal_a_line_every_log_seconds_at_most(monkeypatch):
  now = [100.0]
  lines = []
  monkeypatch.setattr(tile_progress.logging, 'info', lambda fmt, *a: lines.append(fmt % a))
  inner = hooks.LogProgress(print_iter=10)
  hook = tile_progress.TileProgress(inner, clock=lambda: now[0])
  hook.begin(loop.LoopInfo(start=0, total=5))
  for p in range(8):
    now[0] += 0.4 * tile_progress.LOG_SECONDS
    _passes(hook, [p], [8])
  hook.end(None)
  # A tile every 0.4 LOG_SECONDS: a line at the third and the sixth, none between.
  assert lines == [
    'within the iteration: forward pass, stage 1/1, tile 3/8',
    'within the iteration: forward pass, stage 1/1, tile 6/8',
  ]
  assert core_progress._listeners == []  # noqa: SLF001 - end() stops listening


def _layout(devices, rows=1):
  sharding = types.SimpleNamespace(device_set=list(devices))
  return types.SimpleNamespace(params_sharding=lambda: sharding, n_rows=rows)


def test_only_long_tiled_iterations_on_one_device_report_their_tiles():
  cpu = jax.devices('cpu')[0]
  gpu = types.SimpleNamespace(platform='gpu')
  tiled = nst_jax.LossSpec(tile=256)
  big = tile_progress.MIN_PIXELS['cpu']
  assert tile_progress.wanted(tiled, 1024, big // 1024, _layout([cpu]))
  assert not tile_progress.wanted(tiled, 1024, big // 1024 - 1, _layout([cpu]))
  assert tile_progress.wanted(tiled, 512, big // 2048, _layout([cpu], rows=4))  # a batch of 4
  assert not tile_progress.wanted(nst_jax.LossSpec(), 4096, 4096, _layout([cpu]))
  assert not tile_progress.wanted(tiled, 4096, 4096, _layout([cpu, object()]))
  assert not tile_progress.wanted(tiled, 2048, 2048, _layout([gpu]))
  assert tile_progress.wanted(tiled, 4096, 4096, _layout([gpu]))
  assert tile_progress.spec_for(tiled, 4096, 4096, _layout([gpu])) == dataclasses.replace(
    tiled, tile_progress=True
  )
  assert tile_progress.spec_for(tiled, 64, 64, _layout([cpu])) is tiled
  progress = hooks.LogProgress(print_iter=10)
  assert tile_progress.around(progress, tiled, 64, 64, _layout([cpu])) is progress
  wrapped = tile_progress.around(progress, tiled, 4096, 4096, _layout([cpu]))
  assert isinstance(wrapped, tile_progress.TileProgress) and wrapped.inner is progress


def test_a_tiled_run_shows_its_tiles_and_makes_the_image_it_would_without(monkeypatch, params):
  monkeypatch.setattr(tile_progress, 'LOG_SECONDS', 0.0)
  lines = []
  monkeypatch.setattr(tile_progress.logging, 'info', lambda fmt, *a: lines.append(fmt % a))
  rng = np.random.default_rng(1)
  content = rng.uniform(size=(32, 40, 3)).astype(np.float32)
  style = rng.uniform(size=(40, 40, 3)).astype(np.float32)
  weights = nst_jax.Weights.from_params(params, 'caffe')
  images = []
  for floor in (32 * 32, 10**9):  # with the tiles shown, then without
    monkeypatch.setitem(tile_progress.MIN_PIXELS, 'cpu', floor)
    config = nst_jax.StyleConfig(
      loss=nst_jax.LossConfig(**SHALLOW, tiles=16),
      schedule=nst_jax.ScheduleConfig(iterations=2, tol=0.0),
    )
    images.append(nst_jax.stylize(content, style, config=config, weights=weights))
  shown = [line for line in lines if 'within the iteration' in line]
  # 32x40 in tiles of 16: 2x3 windows, then 1x2 (16x20 pooled: cores of 16x10), then 1.
  assert len(shown) >= 2 * 2 * (6 + 2 + 1)  # two iterations, more passes in the first
  assert 'within the iteration: forward pass, stage 1/3, tile 1/6' in shown
  assert 'within the iteration: backward pass, stage 1/3, tile 1/6' in shown
  np.testing.assert_array_equal(images[0], images[1])
