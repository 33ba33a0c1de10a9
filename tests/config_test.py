"""Tests for nst_jax.config: defaults, validation, hashability."""

import math

import pytest

from nst_jax import config as config_lib
from nst_jax import errors


def test_defaults_are_the_documented_ones():
  cfg = config_lib.StyleConfig()
  assert (cfg.iterations, cfg.content_weight, cfg.style_weight, cfg.width) == (
    1000,
    100.0,
    0.01,
    1024,
  )
  assert cfg.loss.content_layers == ('relu4_2',)
  assert cfg.loss.style_layers == ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
  assert cfg.optimizer == 'lbfgs' and cfg.init == 'content'
  hash(cfg)  # usable as a static jit argument
  assert config_lib.LossConfig().layer_weights == {n: 1.0 for n in cfg.loss.style_layers}


@pytest.mark.parametrize(
  'changes,message',
  [
    ({'iterations': 0}, 'iterations must be a positive integer'),
    ({'width': -5}, 'width must be a positive integer'),
    ({'content_weight': -1.0}, 'content_weight must be a finite number >= 0'),
    ({'style_weight': math.nan}, 'style_weight must be a finite number >= 0'),
    ({'style_weight': math.inf}, 'style_weight must be a finite number >= 0'),
    ({'learning_rate': 0.0}, 'learning_rate must be a finite number > 0'),
    ({'optimizer': 'sgd'}, 'optimizer must be one of lbfgs, adam'),
    ({'init': 'noise'}, 'init must be one of content, random'),
    ({'dtype': 'float16'}, 'dtype must be one of float32, bfloat16'),
    ({'print_iter': -1}, 'print_iter must be an integer >= 0'),
  ],
)
def test_bad_values_are_one_line_errors(changes, message):
  with pytest.raises(errors.ConfigError, match=message) as e:
    config_lib.StyleConfig(**changes)
  assert '\n' not in str(e.value)


def test_loss_config_validation():
  with pytest.raises(errors.ConfigError, match='unknown layer name'):
    config_lib.LossConfig(style_layers=('relu1_1', 'relu6_1'))
  with pytest.raises(errors.ConfigError, match='give one per layer'):
    config_lib.LossConfig(style_layer_weights=(1.0, 2.0))
  with pytest.raises(errors.ConfigError, match='must be a tuple'):
    config_lib.LossConfig(content_layers=['relu4_2'])
  cfg = config_lib.LossConfig(
    content_layers=('relu4_2', 'relu1_1'), style_layers=('relu1_1',), style_layer_weights=(3.0,)
  )
  assert cfg.feature_layers == ('relu4_2', 'relu1_1')
  assert cfg.layer_weights == {'relu1_1': 3.0}
