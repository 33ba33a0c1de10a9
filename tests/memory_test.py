"""Tests for nst_jax.engine.memory: the pre-compile estimate against XLA, and the refusal."""

import functools

import jax
import jax.numpy as jnp
import pytest

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core import pixels
from nst_jax.core.objective import make_targets
from nst_jax.core.step import init_state
from nst_jax.core.step import make_model
from nst_jax.core.step import make_optimizer
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
      content_weight=cfg.loss.content_weight,
      style_weight=cfg.loss.style_weight,
      tv_weight=cfg.loss.tv_weight,
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
  """With a faked 16 GB device, a 4096 px image is refused alone and fits split over 4."""
  cfg = config_lib.StyleConfig(optim=config_lib.OptimConfig(lbfgs_memory=10))
  monkeypatch.setattr(memory, 'available_memory', lambda device=None: 16 * 10**9)
  monkeypatch.setattr(memory, '_CPU_RUNTIME_BYTES', 0)  # as on an accelerator
  with pytest.raises(
    errors.NstError, match=r'needs about 2\d\.\d GB but only 16\.0 GB.*run\.shard to spatial'
  ):
    memory.check_memory(3072, 4096, config=cfg)
  need, have = memory.check_memory(3072, 4096, config=cfg, spatial_devices=4)
  assert need < have == 16 * 10**9


# VGG-19's convolutions in order: (name, Cin, Cout).
_CONVS = [('conv1_1', 3, 64), ('conv1_2', 64, 64), ('conv2_1', 64, 128), ('conv2_2', 128, 128)]
_CONVS += [(f'conv3_{i}', 128 if i == 1 else 256, 256) for i in range(1, 5)]
_CONVS += [(f'conv4_{i}', 256 if i == 1 else 512, 512) for i in range(1, 5)]
_CONVS += [(f'conv5_{i}', 512, 512) for i in range(1, 5)]


def _kernel_bytes_by_hand(last_conv):
  """A backward kernel (9 Cin Cout floats) per conv; from 256 channels 2 Winograd ones (16 each)."""
  total = 0
  for name, cin, cout in _CONVS:
    total += 4 * 9 * cin * cout + (2 * 4 * 16 * cin * cout if min(cin, cout) >= 256 else 0)
    if name == last_conv:
      return total
  raise ValueError(last_conv)


def test_prepared_kernel_bytes_counts_what_prepare_params_adds():
  assert memory.prepared_kernel_bytes() == _kernel_bytes_by_hand('conv5_4')  # 357 MB
  for layers, last_conv in [
    (('relu2_1',), 'conv2_1'),
    (('relu1_1', 'relu4_2', 'relu5_1'), 'conv5_1'),
    (('relu3_2',), 'conv3_2'),
  ]:
    assert memory.prepared_kernel_bytes(layers) == _kernel_bytes_by_hand(last_conv), layers
