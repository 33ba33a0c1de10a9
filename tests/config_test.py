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
    ({'init': ''}, 'init must be content, random, gray or an image file'),
    ({'tv_weight': -1.0}, 'tv_weight must be a finite number >= 0'),
    ({'style_scale': 0.0}, 'style_scale must be a finite number > 0'),
    ({'scales': 0}, 'scales must be a positive integer'),
    ({'scales': 2, 'min_width': 100}, 'give scales or min_width, not both'),
    ({'min_width': 0}, 'min_width must be a positive integer'),
    ({'preserve_colors': 'yes'}, 'preserve_colors must be one of none, luminance, histogram'),
    ({'color_match': 'lab'}, 'color_match must be one of pca, cholesky'),
    (
      {'style_path': ('a.jpg', 'b.jpg'), 'style_blend_weights': (1.0,)},
      '1 style blend weights for 2 style images',
    ),
    ({'style_blend_weights': (0.0, 0.0)}, 'must not all be 0'),
    ({'style_blend_weights': (1.0, -1.0)}, 'each style blend weight must be a finite number'),
    (
      {'style_path': ('a', 'b'), 'style_masks': ('m',)},
      '1 style masks for 2 style images',
    ),
    (
      {'style_masks': ('m',), 'style_blend_weights': (1.0,)},
      'style blend weights and style masks exclude each other',
    ),
    (
      {'style_masks': ('m',), 'loss': config_lib.LossConfig(style_loss='histogram')},
      'histogram style loss does not support style masks',
    ),
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


def test_loss_kind_is_checked():
  with pytest.raises(
    errors.ConfigError, match='style_loss must be one of gram, mean_cov, histogram'
  ):
    config_lib.LossConfig(style_loss='wasserstein')


def test_scale_schedule_is_sqrt2_apart_ending_at_the_width():
  assert config_lib.scale_widths(1024) == (1024,)
  assert config_lib.scale_widths(1024, scales=4) == (362, 512, 724, 1024)
  # min_width: as many scales as keep the coarsest at least that wide.
  assert config_lib.scale_widths(1024, min_width=256) == (256, 362, 512, 724, 1024)
  assert config_lib.scale_widths(1024, min_width=257) == (362, 512, 724, 1024)
  assert config_lib.scale_widths(300, min_width=400) == (300,)
  assert config_lib.StyleConfig(width=512, scales=3).scale_widths() == (256, 362, 512)


def test_style_paths_and_blend_weights():
  cfg = config_lib.StyleConfig(style_path=('a.jpg', 'b.jpg'), style_blend_weights=(3.0, 1.0))
  assert cfg.style_paths == ('a.jpg', 'b.jpg')
  assert cfg.blend_weights(2) == (0.75, 0.25)
  assert config_lib.StyleConfig(style_path='a.jpg').style_paths == ('a.jpg',)
  assert config_lib.StyleConfig().blend_weights(3) == (1 / 3, 1 / 3, 1 / 3)
  with pytest.raises(errors.ConfigError, match='2 style blend weights for 3 style images'):
    cfg.blend_weights(3)
