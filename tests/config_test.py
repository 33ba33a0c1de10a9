"""Tests for nst_jax.config: defaults, groups, validation, flat names, hashability."""

import copy
import math
import pathlib
import pickle
import warnings

import numpy as np
import pytest

from nst_jax import config as config_lib
from nst_jax import errors


def test_defaults_are_the_documented_ones():
  cfg = config_lib.StyleConfig()
  assert (
    cfg.schedule.iterations,
    cfg.loss.content_weight,
    cfg.loss.style_weight,
    cfg.inputs.width,
  ) == (1000, 100.0, 0.01, 1024)
  assert cfg.loss.content_layers == ('relu4_2',)
  assert cfg.loss.style_layers == ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
  assert cfg.optim.name == 'lbfgs' and cfg.inputs.init == 'content'
  assert cfg.model.precision == 'highest' and cfg.optim.box
  hash(cfg)  # usable as a static jit argument
  assert config_lib.LossConfig().spec.layer_weights == {n: 1.0 for n in cfg.loss.style_layers}


@pytest.mark.parametrize(
  'group,changes,message',
  [
    ('schedule', {'iterations': 0}, 'schedule.iterations must be a positive integer'),
    ('inputs', {'width': -5}, 'inputs.width must be a positive integer'),
    ('loss', {'content_weight': -1.0}, 'loss.content_weight must be a finite number >= 0'),
    ('loss', {'style_weight': math.nan}, 'loss.style_weight must be a finite number >= 0'),
    ('loss', {'style_weight': math.inf}, 'loss.style_weight must be a finite number >= 0'),
    ('optim', {'learning_rate': 0.0}, 'optim.learning_rate must be a finite number > 0'),
    ('optim', {'name': 'sgd'}, 'optim.name must be one of lbfgs, adam'),
    ('inputs', {'init': ''}, 'inputs.init must be content, random, gray or an image file'),
    ('loss', {'tv_weight': -1.0}, 'loss.tv_weight must be a finite number >= 0'),
    ('inputs', {'style_scale': 0.0}, 'inputs.style_scale must be a finite number > 0'),
    (
      'loss',
      {'tiles': 16.0},
      "loss.tiles must be 'auto', 'off' or a tile edge in pixels, got 16.0; use 16",
    ),
    (
      'loss',
      {'tiles': 'big'},
      "loss.tiles must be 'auto', 'off' or a tile edge in pixels, got "
      "'big'; use 'auto', 'off' or an even number such as 256",
    ),
    ('schedule', {'scales': -1}, 'schedule.scales must be an integer >= 0'),
    (
      'schedule',
      {'scales': 2, 'min_width': 100},
      'give schedule.scales or schedule.min_width, not both',
    ),
    ('schedule', {'min_width': 0}, 'schedule.min_width must be a positive integer'),
    ('schedule', {'tol': -0.1}, 'schedule.tol must be a finite number >= 0'),
    ('color', {'preserve_colors': 'yes'}, 'color.preserve_colors must be one of none, luminance'),
    ('color', {'color_match': 'lab'}, 'color.color_match must be one of pca, cholesky'),
    (
      'inputs',
      {'style_path': ('a.jpg', 'b.jpg'), 'style_blend_weights': (1.0,)},
      'inputs.style_blend_weights has 1 value for 2 style images',
    ),
    ('inputs', {'style_blend_weights': (0.0, 0.0)}, 'inputs.style_blend_weights must not all be 0'),
    (
      'inputs',
      {'style_blend_weights': (1.0, -1.0)},
      'each of inputs.style_blend_weights must be a finite',
    ),
    (
      'inputs',
      {'style_path': ('a', 'b'), 'style_masks': ('m',)},
      'inputs.style_masks has 1 mask for 2 style',
    ),
    (
      'inputs',
      {'style_masks': ('m',), 'style_blend_weights': (1.0,)},
      'inputs.style_blend_weights and inputs.style_masks exclude each other',
    ),
    ('model', {'dtype': 'float16'}, 'model.dtype must be one of float32, bfloat16'),
    ('model', {'precision': 'low'}, 'model.precision must be one of highest, high, default'),
    ('run', {'print_iter': -1}, 'run.print_iter must be an integer >= 0'),
    ('run', {'serve': 70000}, 'run.serve must be a port from 0 to 65535'),
    ('save', {'bit_depth': 12}, 'save.bit_depth must be 8 or 16'),
  ],
)
def test_bad_values_are_one_line_errors(group, changes, message):
  with pytest.raises(errors.ConfigError, match=message) as e:
    config_lib.GROUPS[group](**changes)
  assert '\n' not in str(e.value)


def test_settings_across_groups_are_checked_together():
  with pytest.raises(errors.ConfigError, match='histogram style loss does not support style'):
    config_lib.StyleConfig(
      inputs=config_lib.InputConfig(style_masks=('m',)),
      loss=config_lib.LossConfig(style_loss='histogram'),
    )


def test_a_flat_name_and_its_group_may_not_disagree():
  """style_weight=3 overrode loss=LossConfig(style_weight=5) without a word (trial 6)."""
  message = (
    'style_weight is given twice, flat (3.0) and in loss= (5.0); give loss.style_weight only: '
    'StyleConfig(loss=nst_jax.LossConfig(style_weight=...))'
  )
  loss = config_lib.LossConfig(style_weight=5.0)
  with pytest.raises(errors.ArgumentError) as e:
    config_lib.StyleConfig(style_weight=3.0, loss=loss)
  assert str(e.value) == message
  with pytest.raises(errors.ArgumentError) as e:
    config_lib.StyleConfig().replace(style_weight=3.0, loss=loss)
  assert str(e.value) == message
  with pytest.warns(DeprecationWarning):
    # No conflict: the group says the same (a list is its tuple, an int its float).
    cfg = config_lib.StyleConfig(style_weight=5, loss=loss)
    assert cfg.loss.style_weight == 5.0
    blend = config_lib.InputConfig(style_path=('a', 'b'), style_blend_weights=(1.0, 2.0))
    same = config_lib.StyleConfig(style_blend_weights=[1, 2], inputs=blend)
    assert same.inputs.style_blend_weights == (1.0, 2.0)
    # A group set earlier (self's) is no conflict: the flat name changes it, as before.
    assert config_lib.StyleConfig(loss=loss).replace(style_weight=3.0).loss.style_weight == 3.0


@pytest.mark.parametrize(
  'make,message',
  [
    # The group's value is its default, but the group was given: it says 1000 (trial 7).
    (
      lambda: config_lib.StyleConfig(
        iterations=300, schedule=config_lib.ScheduleConfig(iterations=1000)
      ),
      'iterations is given twice, flat (300) and in schedule= (1000); give schedule.iterations '
      'only: StyleConfig(schedule=nst_jax.ScheduleConfig(iterations=...))',
    ),
    (
      lambda: config_lib.StyleConfig(
        style_weight=5.0, loss=config_lib.LossConfig(style_weight=0.01)
      ),
      'style_weight is given twice, flat (5.0) and in loss= (0.01); give loss.style_weight only: '
      'StyleConfig(loss=nst_jax.LossConfig(style_weight=...))',
    ),
    # A group given for another field states this one too (its default): the flat name won, unsaid.
    (
      lambda: config_lib.StyleConfig().replace(
        tv_weight=1.0, loss=config_lib.LossConfig(content_weight=5.0)
      ),
      'tv_weight is given twice, flat (1.0) and in loss= (0.0); give loss.tv_weight only: '
      'StyleConfig(loss=nst_jax.LossConfig(tv_weight=...))',
    ),
  ],
)
def test_a_flat_name_and_a_group_at_its_default_may_not_disagree(make, message):
  with pytest.raises(errors.ArgumentError) as e:
    make()
  assert str(e.value) == message


def test_flat_names_still_work_and_say_where_they_moved():
  with pytest.warns(DeprecationWarning, match=r'iterations -> schedule\.iterations'):
    cfg = config_lib.StyleConfig(iterations=7, optimizer='adam', output='x.png')
  assert (cfg.schedule.iterations, cfg.optim.name, cfg.save.path) == (7, 'adam', 'x.png')
  with pytest.warns(DeprecationWarning, match=r'content_weight -> loss\.content_weight'):
    assert cfg.content_weight == 100.0
  with pytest.warns(DeprecationWarning):
    again = cfg.replace(width=64)
  assert again.inputs.width == 64 and again.schedule.iterations == 7
  with pytest.raises(errors.ArgumentError) as e:  # a TypeError, as Python's own
    config_lib.StyleConfig(colour='none')
  assert isinstance(e.value, TypeError) and str(e.value) == (
    "StyleConfig got an unknown keyword 'colour'; did you mean color=nst_jax.ColorConfig(...)?"
  )
  with pytest.raises(errors.ArgumentError) as e:
    config_lib.StyleConfig(iteration=2)  # a flat name's typo: its place in its group
  assert str(e.value) == (
    "StyleConfig got an unknown keyword 'iteration'; did you mean "
    'schedule=nst_jax.ScheduleConfig(iterations=...)?'
  )
  # A group's field with no flat legacy name: its group (trial 19 was told the loss group).
  for make in (
    lambda: config_lib.StyleConfig(tol=0.5),
    lambda: config_lib.StyleConfig().replace(tol=0.5),
  ):
    with pytest.raises(errors.ArgumentError) as e:
      make()
    assert str(e.value) == (
      "StyleConfig got 'tol', which is schedule.tol: pass StyleConfig(schedule=nst_jax."
      'ScheduleConfig(tol=...)), or config.replace(schedule=config.schedule.replace(tol=...))'
    )
  with pytest.raises(errors.ArgumentError) as e:
    config_lib.StyleConfig(qqq=2)
  assert str(e.value) == (
    "StyleConfig got an unknown keyword 'qqq'; the settings are in groups: "
    'StyleConfig(loss=LossConfig(...), ...) (docs/api.md)'
  )
  with pytest.raises(errors.ArgumentError) as e:
    config_lib.StyleConfig(loss=config_lib.OptimConfig())
  assert str(e.value) == (
    'StyleConfig(loss=...) takes a LossConfig, got a OptimConfig; pass nst_jax.LossConfig(...)'
  )
  with pytest.raises(AttributeError):
    _ = cfg.colour
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # the grouped API warns about nothing
    cfg.replace(schedule=cfg.schedule.replace(iterations=9))


def test_the_step_depends_on_the_loss_structure_not_its_weights():
  a = config_lib.LossConfig(content_weight=5.0, style_weight=1.0)
  b = config_lib.LossConfig(tv_weight=3.0)
  assert a != b and a.spec == b.spec
  assert a.spec != config_lib.LossConfig(style_loss='mean_cov').spec


def test_loss_config_validation():
  unknown = r'^loss.style_layers: unknown layer name\(s\) relu6_1;'
  with pytest.raises(errors.ConfigError, match=unknown):
    config_lib.LossConfig(style_layers=('relu1_1', 'relu6_1'))
  with pytest.raises(errors.ConfigError, match=r'^loss.content_layers: unknown layer name'):
    config_lib.LossConfig(content_layers=('conv9_9',))
  with pytest.raises(errors.ConfigError, match='give one per layer'):
    config_lib.LossConfig(style_layer_weights=(1.0, 2.0))
  # As LossSpec: a list is its tuple, one name one layer (the tuple keeps the group hashable).
  assert config_lib.LossConfig(content_layers=['relu2_1']).content_layers == ('relu2_1',)
  assert config_lib.LossConfig(style_layers='relu2_1', style_layer_weights=[2.0]).spec == (
    config_lib.LossConfig(style_layers=('relu2_1',), style_layer_weights=(2.0,)).spec
  )
  with pytest.raises(errors.ConfigError) as e:
    config_lib.LossConfig(content_layers=4)
  assert str(e.value) == "loss.content_layers must be layer names, e.g. ('relu4_2',), got 4"
  cfg = config_lib.LossConfig(
    content_layers=('relu4_2', 'relu1_1'), style_layers=('relu1_1',), style_layer_weights=(3.0,)
  )
  assert cfg.feature_layers == ('relu4_2', 'relu1_1')
  assert cfg.spec.layer_weights == {'relu1_1': 3.0}
  with pytest.raises(
    errors.ConfigError, match='loss.style_loss must be one of gram, mean_cov, histogram'
  ):
    config_lib.LossConfig(style_loss='wasserstein')


def test_style_paths_and_blend_weights():
  inputs = config_lib.InputConfig(style_path=('a.jpg', 'b.jpg'), style_blend_weights=(3.0, 1.0))
  assert config_lib.StyleConfig(inputs=inputs).style_paths == ('a.jpg', 'b.jpg')
  # Checked, not normalised: make_targets normalises, once (objective_test below).
  assert inputs.blend_weights(2) == (3.0, 1.0)
  assert config_lib.InputConfig(style_path='a.jpg').style_paths == ('a.jpg',)
  assert config_lib.InputConfig().blend_weights(3) == (1.0, 1.0, 1.0)
  with pytest.raises(errors.ConfigError, match='weights has 2 values for 3 style images'):
    inputs.blend_weights(3)


def test_one_rule_for_styles_masks_and_blend_weights():
  from nst_jax.config import checks

  checks.styles_and_masks(2, n_masks=2)
  checks.styles_and_masks(2, blend_weights=(1.0, 0.0))
  checks.styles_and_masks(0, blend_weights=(1.0,))  # the count not known yet
  cases = [
    ((2,), {'n_masks': 3}, r'inputs\.style_masks has 3 masks for 2 style images; give one mask'),
    ((2,), {'blend_weights': (1.0,)}, 'style_blend_weights has 1 value for 2 style images'),
    ((2,), {'blend_weights': (0.0, 0.0)}, 'style_blend_weights must not all be 0'),
    ((1,), {'blend_weights': (float('nan'),)}, 'each of inputs.style_blend_weights must be'),
    ((2,), {'n_masks': 2, 'blend_weights': (1, 1)}, 'exclude each other'),
    (
      (2,),
      {'n_masks': 1, 'where': 'jobs.csv line 3', 'masks_name': 'style_masks'},
      r'^jobs\.csv line 3: style_masks has 1 mask for 2 style images',
    ),
  ]
  for args, kwargs, message in cases:
    with pytest.raises(errors.ConfigError, match=message):
      checks.styles_and_masks(*args, **kwargs)
  # The config, the job list and the arrays all say it the same way.
  with pytest.raises(errors.ConfigError, match='style_masks has 2 masks for 1 style image;'):
    config_lib.InputConfig(style_path='a.png', style_masks=('m1.png', 'm2.png'))


@pytest.mark.parametrize(
  'make,message',
  [
    (
      lambda: config_lib.LossConfig(style_layer=('relu1_1',)),
      "LossConfig got an unknown keyword 'style_layer'; did you mean 'style_layers'?",
    ),
    (
      lambda: config_lib.RunConfig(memory_limt=1.0),
      "RunConfig got an unknown keyword 'memory_limt'; did you mean 'memory_limit'?",
    ),
    (
      lambda: config_lib.LossConfig().replace(tile=16),
      "LossConfig got an unknown keyword 'tile'; did you mean 'tiles'?",
    ),
    (
      lambda: config_lib.ColorConfig(zzz=1),
      "ColorConfig got an unknown keyword 'zzz'; it takes preserve_colors, color_match",
    ),
  ],
)
def test_an_unknown_keyword_of_a_group_names_the_closest_field(make, message):
  with pytest.raises(errors.ArgumentError) as e:  # a TypeError, as Python's own
    make()
  assert isinstance(e.value, TypeError) and str(e.value) == message


def test_groups_still_copy_and_pickle():
  """The groups' keyword check (__new__) leaves copy and pickle, which call it bare, working."""
  loss = config_lib.LossConfig(tiles=16, style_weight=2.0)
  assert copy.deepcopy(loss) == loss and pickle.loads(pickle.dumps(loss)) == loss
  assert config_lib.StyleConfig(loss=loss).replace(loss=loss).loss == loss


@pytest.mark.parametrize(
  'make,message',
  [
    (
      lambda: config_lib.OptimConfig(box='false'),
      "optim.box must be True or False, got 'false'; pass True or False",
    ),
    (
      lambda: config_lib.OptimConfig(box=0),
      'optim.box must be True or False, got 0; pass True or False',
    ),
    (
      lambda: config_lib.LossConfig(normalize_gradients='no'),
      "loss.normalize_gradients must be True or False, got 'no'; pass True or False",
    ),
    (
      lambda: config_lib.OptimConfig(name='adam', learning_rate='1'),
      "optim.learning_rate must be a finite number > 0, got '1'",
    ),
    (
      lambda: config_lib.InputConfig(style_path=('a', 'b'), style_blend_weights='12'),
      "inputs.style_blend_weights must be numbers, one per style image, got '12'; e.g. (1.0, 2.0)",
    ),
    (
      lambda: config_lib.LossConfig(style_weight=True),
      'loss.style_weight must be a finite number >= 0, got True',
    ),
  ],
)
def test_flags_and_numbers_are_refused_under_their_field_names(make, message):
  """box='false' is truthy: it turned the box on; 'no' was refused only later, as LossSpec's."""
  with pytest.raises(errors.ConfigError) as e:
    make()
  assert str(e.value) == message


def test_numpy_and_jax_scalars_are_python_numbers_in_the_groups():
  """np.float32(0.01) is a valid weight; it was refused as not 'a finite number >= 0'."""
  import jax.numpy as jnp
  import numpy as np

  loss = config_lib.LossConfig(
    style_weight=np.float32(0.5),
    content_weight=jnp.float32(2.0),
    style_layer_weights=[np.int64(1)] * 5,
  )
  assert (loss.style_weight, loss.content_weight, loss.style_layer_weights) == (0.5, 2.0, (1,) * 5)
  assert type(loss.style_weight) is float and type(loss.content_weight) is float
  schedule = config_lib.ScheduleConfig(iterations=np.int64(2))
  assert schedule.iterations == 2 and type(schedule.iterations) is int
  assert config_lib.OptimConfig(box=np.bool_(False)).box is False
  blend = config_lib.InputConfig(style_path=('a', 'b'), style_blend_weights=[np.float32(1), 2])
  assert blend.style_blend_weights == (1.0, 2.0) and hash(blend) is not None
  hash(config_lib.StyleConfig(loss=loss, schedule=schedule))


def test_ints_given_for_float_settings_are_floats():
  """content_weight=3 stayed the int 3 in .weights and the record, beside floats (trial 7)."""
  import numpy as np

  loss = config_lib.LossConfig(
    content_weight=3, style_weight=np.int64(2), style_layer_weights=[1] * 5
  )
  assert loss.weights == {'content_weight': 3.0, 'style_weight': 2.0, 'tv_weight': 0.0}
  assert [type(w) for w in loss.weights.values()] == [float] * 3
  assert [type(w) for w in loss.style_layer_weights] == [float] * 5
  blend = config_lib.InputConfig(style_path=('a', 'b'), style_blend_weights=(3, 1))
  assert [type(w) for w in blend.style_blend_weights] == [float, float]
  floats = (
    config_lib.ScheduleConfig(tol=1).tol,
    config_lib.OptimConfig(name='adam', learning_rate=2).learning_rate,
    config_lib.InputConfig(style_scale=2).style_scale,
    config_lib.RunConfig(memory_limit=8).memory_limit,
    config_lib.VideoConfig(fps=30).fps,
  )
  assert floats == (1.0, 2.0, 2.0, 8.0, 30.0) and {type(f) for f in floats} == {float}
  # Integer settings stay ints, None stays None.
  assert type(config_lib.ScheduleConfig(iterations=3).iterations) is int
  assert config_lib.OptimConfig().learning_rate is None


@pytest.mark.parametrize(
  'seed,message',
  [
    (-1, 'inputs.seed must be an integer >= 0, got -1'),
    (1.0, 'inputs.seed must be an integer >= 0, got 1.0'),
    (True, 'inputs.seed must be an integer >= 0, got True'),
    ('0', "inputs.seed must be an integer >= 0, got '0'"),
    (2**63, f'inputs.seed must be below 2**63 (a JAX key holds 64 bits), got {2**63}'),
  ],
)
def test_a_seed_is_checked_when_the_group_is_made(seed, message):
  """-1, 1.0 and 2**63 were refused only when a run drew its start, as 'seed' (trial 7)."""
  with pytest.raises(errors.ConfigError) as e:
    config_lib.InputConfig(seed=seed)
  assert str(e.value) == message


def test_a_numpy_integer_seed_is_a_python_int():
  import numpy as np

  for seed in (np.int64(7), np.uint8(7), 7, 2**63 - 1):
    got = config_lib.InputConfig(seed=seed).seed
    assert got == seed and type(got) is int


def test_as_style_config_names_the_callers_argument():
  cfg = config_lib.StyleConfig()
  assert config_lib.as_style_config(cfg, 'cfg') is cfg
  with pytest.raises(errors.ArgumentError) as e:
    config_lib.as_style_config(config_lib.ModelConfig(), 'settings')
  assert str(e.value) == (
    'settings must be a StyleConfig, got a ModelConfig; pass nst_jax.StyleConfig(model=settings)'
  )


def test_switches_take_bools_only_and_weights_a_path():
  """Trial 21: SaveConfig(overwrite='False') replaced a file ('False' is truthy), and
  ModelConfig(weights=3) failed deep in stylize."""
  for make, name, value in (
    (config_lib.SaveConfig, 'overwrite', 'False'),
    (config_lib.SaveConfig, 'record', 0),
    (config_lib.RunConfig, 'resume', 'no'),
    (config_lib.RunConfig, 'keep_checkpoint', None),
    (config_lib.OptimConfig, 'box', 1),
  ):
    with pytest.raises(errors.ConfigError) as e:
      make(**{name: value})
    group = {c: n for n, c in config_lib.GROUPS.items()}[make]
    said = f'{group}.{name} must be True or False, got {value!r}'
    assert str(e.value) == f'{said}; pass True or False'
  assert config_lib.SaveConfig(record=np.bool_(False)).record is False
  with pytest.raises(errors.ConfigError) as e:
    config_lib.ModelConfig(weights=3)
  assert str(e.value) == (
    "model.weights must be a file's path (text), got 3; pass the converted .npz file, or None for "
    'the default'
  )
  assert config_lib.ModelConfig(weights=pathlib.Path('w/v.npz')).weights == 'w/v.npz'
