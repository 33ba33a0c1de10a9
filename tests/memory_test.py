"""Tests for nst_jax.engine.memory: the estimate's parts against the arrays they count.

And the whole estimate against XLA's analysis, and the refusal.
"""

import functools
import re

import jax
import jax.numpy as jnp
import pytest

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core import pixels
from nst_jax.core import tiles
from nst_jax.core import vgg
from nst_jax.core.objective import make_targets
from nst_jax.core.step import init_state
from nst_jax.core.step import make_model
from nst_jax.core.step import make_optimizer
from nst_jax.core.step import prepare_params
from nst_jax.core.step import update_step
from nst_jax.engine import memory


def _xla_bytes(cfg, h, w):
  """XLA's own figure for the compiled step: arguments + outputs + temporaries - aliased."""
  model = make_model(cfg.model.pooling, dtype=cfg.model.dtype)
  tx = make_optimizer(cfg.optim.name, memory_size=cfg.optim.lbfgs_memory, convention=pixels.CAFFE)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  image = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  targets = jax.eval_shape(
    functools.partial(
      make_targets,
      model=model,
      loss_spec=cfg.loss.spec,
      **cfg.loss.weights,
    ),
    params,
    image,
    image,
  )
  state = jax.eval_shape(lambda x: init_state(x, tx), image)
  step = functools.partial(update_step, model=model, optimizer=tx, loss_spec=cfg.loss.spec)
  m = jax.jit(step, donate_argnums=0).lower(state, params, targets).compile().memory_analysis()
  return (
    m.temp_size_in_bytes
    + m.argument_size_in_bytes
    + m.output_size_in_bytes
    - (m.alias_size_in_bytes)
  )


@pytest.mark.slow
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_memory_estimate_tracks_xla(dtype):
  """The pre-compile estimate against XLA's own analysis of the compiled step."""
  cfg = config_lib.StyleConfig(model=config_lib.ModelConfig(dtype=dtype))
  for h, w in ((192, 256), (384, 512)):
    ratio = memory.estimate_memory(h, w, config=cfg, platform='gpu') / _xla_bytes(cfg, h, w)
    assert 0.9 < ratio < 1.35, (h, w, ratio)


def test_spatial_estimate_is_divided_over_the_devices():
  cfg = config_lib.StyleConfig()
  one = memory.estimate_memory(3072, 4096, config=cfg, platform='gpu')
  four = memory.estimate_memory(3072, 4096, config=cfg, platform='gpu', spatial_devices=4)
  eight = memory.estimate_memory(3072, 4096, config=cfg, platform='gpu', spatial_devices=8)
  # bench/bench_sharding.py measured 0.38x and 0.20x of one device's figure.
  assert 0.33 < four / one < 0.43 and 0.17 < eight / one < 0.25, (four / one, eight / one)


def test_check_memory_refuses_what_does_not_fit_and_spatial_makes_it_fit(monkeypatch):
  """With a faked 16 GB device of 4, a 4096 px image is refused alone and fits split over 4."""
  cfg = config_lib.StyleConfig(
    optim=config_lib.OptimConfig(lbfgs_memory=10), loss=config_lib.LossConfig(tiles='off')
  )
  monkeypatch.setattr(memory, 'available_memory', lambda device=None: 16 * 10**9)
  monkeypatch.setattr(memory, '_CPU_RUNTIME_BYTES', 0)  # as on an accelerator
  monkeypatch.setattr(jax, 'local_device_count', lambda: 4)
  # A ConfigError (a ValueError), as the other refused settings: `except ValueError` catches it.
  with pytest.raises(errors.ConfigError, match=r'needs about 2\d\.\d GB but only 16\.0 GB') as e:
    memory.check_memory(3072, 4096, config=cfg)
  assert isinstance(e.value, ValueError)
  assert 'run.shard spatial (over 4 devices)' in str(e.value)
  plan = memory.check_memory(3072, 4096, config=cfg, spatial_devices=4)
  assert plan.need < plan.have == 16 * 10**9 and plan.tile is None


def test_the_refusal_suggests_only_changes_that_fit():
  """Every change named fits by the estimate; bfloat16, which saves nothing here, is not named."""
  cfg = config_lib.StyleConfig(loss=config_lib.LossConfig(tiles='off'))
  need = memory.estimate_memory(3072, 4096, config=cfg, platform='gpu')
  have = int(need * 0.9)
  changes = memory.fitting_changes(3072, 4096, config=cfg, have=have, platform='gpu')
  # At the default layers bfloat16 keeps as many bytes per pixel as float32
  # and more weights, so it would be refused again.
  bf16 = cfg.replace(model=cfg.model.replace(dtype='bfloat16'))
  assert memory.estimate_memory(3072, 4096, config=bf16, platform='gpu') > have
  assert not any('bfloat16' in c for c in changes)
  width = int(re.search(r'inputs\.width (\d+) or less', changes[0]).group(1))
  assert (
    memory.estimate_memory(round(3072 * width / 4096), width, config=cfg, platform='gpu') <= have
  )
  assert (
    memory.estimate_memory(round(3072 * (width + 1) / 4096), width + 1, config=cfg, platform='gpu')
    > have
  )
  history = int(re.search(r'optim\.lbfgs_memory (\d+) or less', changes[1]).group(1))
  shorter = cfg.replace(optim=cfg.optim.replace(lbfgs_memory=history))
  assert memory.estimate_memory(3072, 4096, config=shorter, platform='gpu') <= have
  assert changes[2] == 'optim.name adam'
  tile = int(re.fullmatch(r'loss\.tiles (\d+) \(or auto\)', changes[3]).group(1))
  assert memory.estimate_memory(3072, 4096, config=cfg, platform='gpu', tile=tile) <= have
  assert len(changes) == 4
  # Nothing fits at all: the refusal says so instead of naming changes.
  assert memory.fitting_changes(3072, 4096, config=cfg, have=10**6, platform='gpu') == []


def _nbytes(tree) -> int:
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def test_prepared_kernel_bytes_is_what_prepare_params_adds(random_params):
  """Against the bytes of the arrays `prepare_params` really makes (what the engine holds)."""
  params = {name: {'kernel': k, 'bias': b} for name, (k, b) in random_params.items()}
  for layers in [('relu2_1',), ('relu1_1', 'relu3_2'), None]:
    prepared = prepare_params(params, layers)
    added = _nbytes(prepared) - _nbytes(params)
    assert memory.prepared_kernel_bytes(layers) == added, layers
    del prepared
  assert 350e6 < added < 360e6  # the docstring's 357 MB for all of VGG-19


def _activations_per_pixel(deepest: str) -> float:
  """Values per input pixel of every convolution and pooling output up to `deepest`.

  From the network's own output shapes at 64x64 (no arithmetic of widths).
  """
  names = vgg.layer_names(vgg.VGG19_STAGE_SIZES)
  kept = tuple(n for n in names[: names.index(deepest) + 1] if n.startswith(('conv', 'pool')))
  model = make_model('max')
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), image)['params']
  feats = jax.eval_shape(lambda p, x: model.apply({'params': p}, x, kept), params, image)
  return sum(f.size for f in feats.values()) / (64 * 64)


@pytest.mark.parametrize('dtype,size', [('float32', 4), ('bfloat16', 2)])
def test_per_pixel_bytes_grows_by_the_activations_of_the_deeper_layers(dtype, size):
  """Reaching relu4_1 instead of relu2_1 keeps conv2_2..conv4_1 and pool2, pool3 more."""

  def per_pixel(layer):
    return memory.per_pixel_bytes(feature_layers=(layer,), dtype=dtype)

  want = size * (_activations_per_pixel('relu4_1') - _activations_per_pixel('relu2_1'))
  assert per_pixel('relu4_1') - per_pixel('relu2_1') == pytest.approx(want, rel=1e-12)
  want = size * (_activations_per_pixel('relu5_1') - _activations_per_pixel('relu4_1'))
  assert per_pixel('relu5_1') - per_pixel('relu4_1') == pytest.approx(want, rel=1e-12)


def _state_bytes_per_pixel(optimizer: str, lbfgs_memory: int = 1) -> float:
  """Bytes per pixel of the step's state for an [1, H, W, 3] image (eval_shape of init_state)."""
  memory = lbfgs_memory if optimizer == 'lbfgs' else None  # Adam has no memory (refused)
  tx = make_optimizer(optimizer, memory_size=memory, convention=pixels.CAFFE)
  image = jax.ShapeDtypeStruct((1, 32, 48, 3), jnp.float32)
  state = jax.eval_shape(lambda x: init_state(x, tx), image)
  image_sized = [leaf for leaf in jax.tree.leaves(state) if leaf.shape[-3:] == (32, 48, 3)]
  scalars = _nbytes(state) - _nbytes(image_sized)
  assert scalars < 1000  # counters and per-pair scalars: nothing per pixel
  return _nbytes(image_sized) / (32 * 48)


def test_the_optimiser_buffers_are_the_state_plus_the_gradient():
  """Each optimiser's image-sized buffers: its state (with the image) and the gradient."""
  for optimizer, m in [('lbfgs', 1), ('lbfgs', 10), ('lbfgs', 30), ('adam', 1)]:
    counted = 3 * 4 * memory.optimizer_image_buffers(optimizer, m)
    gradient = 3 * 4
    assert counted == _state_bytes_per_pixel(optimizer, m) + gradient, (optimizer, m)

  # And per_pixel_bytes follows the state: 20 more pairs cost what 20 more pairs hold.
  def per_pixel(optimizer, m):
    return memory.per_pixel_bytes(feature_layers=('relu2_1',), optimizer=optimizer, lbfgs_memory=m)

  assert per_pixel('lbfgs', 30) - per_pixel('lbfgs', 10) == (
    _state_bytes_per_pixel('lbfgs', 30) - _state_bytes_per_pixel('lbfgs', 10)
  )
  assert per_pixel('lbfgs', 10) - per_pixel('adam', 10) == (
    _state_bytes_per_pixel('lbfgs', 10) - _state_bytes_per_pixel('adam')
  )


def test_the_estimate_counts_the_weights_as_loaded(random_params):
  """The fixed part on an accelerator: the step's working bytes plus the weights' real size."""
  cfg = config_lib.StyleConfig()
  weights = sum(k.nbytes + b.nbytes for k, b in random_params.values())
  assert weights == 4 * 20_024_384  # VGG-19's convolutions (torchvision's vgg19().features)
  one, two = (memory.estimate_memory(1, w, config=cfg, platform='gpu') for w in (1, 2))
  per_pixel = two - one
  assert one - per_pixel == pytest.approx(memory._FIXED_STEP_BYTES + weights, abs=2)


def test_a_batch_refused_for_memory_is_not_told_to_split_each_image(tmp_path, monkeypatch):
  """run.shard spatial is a single run's: a batch (or video) is refused it, so never suggested."""
  import distributed_cases

  from nst_jax.runs import batch

  jobs = distributed_cases.sample_jobs(tmp_path, 1)  # one job of 64x48: one row per device
  cfg = config_lib.StyleConfig(
    inputs=config_lib.InputConfig(width=64), save=config_lib.SaveConfig(path=f'{tmp_path}/out/')
  )
  need = memory.estimate_memory(48, 64, config=cfg)
  split = memory.estimate_memory(48, 64, config=cfg, spatial_devices=4)
  assert split < need
  # Split over 4 devices it would fit; the width could not shrink enough to.
  monkeypatch.setattr(memory, 'available_memory', lambda device=None: split)
  monkeypatch.setattr(jax, 'local_device_count', lambda: 4)
  assert any(
    'run.shard spatial' in c for c in memory.fitting_changes(48, 64, config=cfg, have=split)
  )
  with pytest.raises(errors.NstError, match='needs about') as e:
    batch.run_batch(jobs, cfg)
  assert 'run.shard' not in str(e.value)


def _limited(gb, **loss):
  return config_lib.StyleConfig(
    loss=config_lib.LossConfig(**loss), run=config_lib.RunConfig(memory_limit=gb)
  )


def test_the_plan_is_untiled_when_the_image_fits():
  plan = memory.check_memory(768, 1024, config=_limited(24))
  assert plan.tile is None and plan.need == plan.untiled < plan.have == 24 * 10**9
  assert memory.planned(_limited(24), [plan]).loss.tiles == 'off'
  assert plan.line(1024, 768).startswith('A 1024x768 run needs about ')


@pytest.mark.parametrize(
  'plan,line',
  [
    (memory.Plan(None, 500_000_000, None, 500_000_000),
     'A 128x96 run needs about 0.5 GB of memory (unknown available).'),
    (memory.Plan(None, 2_040_000_000, 24_000_000_000, 2_040_000_000),
     'A 128x96 run needs about 2.0 GB of memory (24.0 GB available).'),
    # Trial 10: '... would need 0.9 GB of the 0.9 GB it may use' for 0.946 against 0.945.
    (memory.Plan(64, 310_000_000, 945_000_000, 946_000_000, 26),
     'A 128x96 run in tiles of 64 px and an L-BFGS history of 26 needs about 0.31 GB of memory '
     '(the whole image at once would need 0.95 GB of the 0.94 GB it may use; the same result, '
     'more time per iteration).'),
    (memory.Plan(64, 310_000_000, None, 946_000_000),
     'A 128x96 run in tiles of 64 px needs about 0.3 GB of memory (as asked; the same result, '
     'more time per iteration).'),
  ],
)  # fmt: skip
def test_the_plan_line_tells_apart_sizes_that_differ(plan, line):
  assert plan.line(128, 96) == line


@pytest.mark.parametrize('gb', [10, 12, 14, 16, 27.5])
def test_the_plan_takes_the_largest_tile_with_at_least_half_the_history(gb):
  cfg = _limited(gb)
  full = cfg.optim.lbfgs_memory

  def need(edge, history):
    return memory.estimate_memory(
      2160, 3840, config=cfg.replace(optim=cfg.optim.replace(lbfgs_memory=history)), tile=edge
    )

  plan = memory.check_memory(2160, 3840, config=cfg)
  history = plan.history or full
  assert plan.untiled > gb * 1e9 >= plan.need == need(plan.tile, history)
  assert history == full or need(plan.tile, history + 1) > gb * 1e9  # the longest that fits
  for larger in memory.TILE_EDGES[: memory.TILE_EDGES.index(plan.tile)]:
    assert need(larger, full // 2) > gb * 1e9  # no larger tile fits with half the history
  planned = memory.planned(cfg, [plan])
  assert planned.loss.tiles == planned.loss.spec.tile == plan.tile
  assert planned.optim.lbfgs_memory == history
  assert f'in tiles of {plan.tile} px' in plan.line(3840, 2160)
  # 20.03 GB against 20 GB read '20.0 GB of the 20.0 GB' (trial 10): as many digits as differ.
  shown = '27.53 GB of the 27.50 GB' if gb == 27.5 else f'27.5 GB of the {gb:.1f} GB'
  assert f'the whole image at once would need {shown}' in plan.line(3840, 2160)


def test_a_plan_that_fits_untiled_keeps_its_history():
  plan = memory.check_memory(768, 1024, config=_limited(8))
  assert plan.tile is None and plan.history is None
  assert memory.planned(_limited(8), [plan]).optim.lbfgs_memory == 30


def test_tiles_shrink_the_estimate_to_a_window_and_the_stage_inputs():
  cfg = _limited(8)
  untiled = memory.estimate_memory(2160, 3840, config=cfg)
  tiled = memory.estimate_memory(2160, 3840, config=cfg, tile=256)
  per_pixel = memory.per_pixel_bytes(feature_layers=cfg.loss.feature_layers)
  state = memory.optimizer_image_buffers('lbfgs', cfg.optim.lbfgs_memory) * 12
  # The image and the pooled maps to relu5_1: 3, 64/4, 128/16, 256/64, 512/256 floats per pixel.
  assert tiles.stage_input_bytes(cfg.loss.feature_layers) == 4 * (3 + 16 + 8 + 4 + 2)
  stage_inputs = 1.5 * 132 + 96
  window = 256 + 2 * 2  # the first stage's halo: its two convolutions
  expected = (per_pixel - state) * window**2 + (1.8 * state + stage_inputs) * 2160 * 3840
  # Untiled on CPU the state counts 1.8 times too, and 290 bytes per pixel beside it.
  untiled_per_pixel = per_pixel + 0.8 * state + 290
  assert tiled - (untiled - untiled_per_pixel * 2160 * 3840) == pytest.approx(expected, rel=1e-9)
  assert tiled < 0.75 * untiled  # at history 30 the state (1.8 x 768 bytes per pixel) is most of it


def test_a_plan_that_cannot_fit_names_the_limit_that_would():
  with pytest.raises(errors.NstError) as e:
    memory.check_memory(2160, 3840, config=_limited(1), output_height=2000)  # a taller style
  message = str(e.value)
  assert message.startswith('a 3840x2000 run needs about ')  # the output's size
  assert 'run.memory_limit is 1 GB' in message and '\n' not in message
  least = float(re.search(r'run\.memory_limit (\d+\.\d) or more', message).group(1))
  plan = memory.check_memory(2160, 3840, config=_limited(least))
  assert plan.tile is not None
  with pytest.raises(errors.NstError):
    memory.check_memory(2160, 3840, config=_limited(least - 0.2))


def test_off_and_histogram_stay_untiled_and_the_refusal_suggests_tiles():
  with pytest.raises(errors.NstError, match=r'loss\.tiles \d+ \(or auto\)'):
    memory.check_memory(2160, 3840, config=_limited(16, tiles='off'))
  with pytest.raises(errors.NstError) as e:
    memory.check_memory(2160, 3840, config=_limited(16, style_loss='histogram'))
  assert 'loss.tiles' not in str(e.value)


def test_tiles_and_spatial_sharding_are_refused_together():
  with pytest.raises(errors.NstError, match='loss.tiles and run.shard spatial do not combine'):
    memory.check_memory(2160, 3840, config=_limited(8, tiles=256), spatial_devices=2)


def test_a_3840_print_is_planned_within_8_gb():
  # The plan measured: tubingen at -w 3840 (3840x2880) with --memory_limit 8
  # peaked at 7.50 GB (docs/long-runs.md); the fitted estimate is 7.92 GB.
  plan = memory.check_memory(2880, 3840, config=_limited(8))
  assert (plan.tile, plan.history) == (512, 5)
  assert 7.5e9 <= plan.need <= 8e9
