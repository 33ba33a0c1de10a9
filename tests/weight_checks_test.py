"""Tests for nst_jax.io.weight_checks: the names, shapes and values of VGG-19 arrays."""

import numpy as np
import pytest
import weight_files

from nst_jax import errors
from nst_jax.io import weight_checks

FIX = 'do the fix'


def _flat(seed=0):
  """Random VGG-19 arrays under the model's names, float32."""
  flat = {}
  for name, (kernel, bias) in weight_files.random_params(seed).items():
    flat[f'{name}/kernel'], flat[f'{name}/bias'] = kernel, bias
  return flat


@pytest.fixture(scope='module')
def flat():
  return _flat()


def _message(flat, **changes):
  with pytest.raises(errors.WeightsError) as e:
    weight_checks.check_values({**flat, **changes}, 'w.npz', fix=FIX)
  assert '\n' not in str(e.value)
  return str(e.value)


def _with(array, index, values):
  out = array.copy()
  out.flat[index] = values
  return out


def test_finite_weights_pass(flat):
  weight_checks.check_params(flat, 'w.npz', fix=FIX)
  weight_checks.check_values(flat, 'w.npz', fix=FIX)


def test_nan_values_are_counted_and_named(flat):
  kernel = _with(flat['conv3_2/kernel'], slice(100, 112), np.nan)
  assert _message(flat, **{'conv3_2/kernel': kernel}) == (
    f'w.npz: conv3_2/kernel holds 12 NaN values; {FIX}'
  )


def test_one_infinity(flat):
  bias = _with(flat['conv5_4/bias'], 7, -np.inf)
  assert _message(flat, **{'conv5_4/bias': bias}) == (
    f'w.npz: conv5_4/bias holds 1 infinite value; {FIX}'
  )


def test_nan_and_infinity_in_several_tensors(flat):
  # The first tensor in key order is named, the others counted.
  changes = {
    'conv2_1/kernel': _with(flat['conv2_1/kernel'], [0, 5, 9], [np.nan, np.inf, -np.inf]),
    'conv4_4/kernel': _with(flat['conv4_4/kernel'], 3, np.nan),
    'conv1_1/bias': _with(flat['conv1_1/bias'], 0, np.inf),
  }
  assert _message(flat, **changes) == (
    f'w.npz: conv1_1/bias holds 1 infinite value, as do 2 other tensors; {FIX}'
  )
  del changes['conv1_1/bias']
  assert _message(flat, **changes) == (
    f'w.npz: conv2_1/kernel holds 1 NaN and 2 infinite values, as does 1 other tensor; {FIX}'
  )


def test_values_that_are_not_numbers(flat):
  strings = np.full(64, 'x')
  assert _message(flat, **{'conv1_2/bias': strings}) == (
    f'w.npz: conv1_2/bias holds <U1 values, not numbers; {FIX}'
  )


def test_integer_and_float64_values_pass(flat):
  changes = {
    'conv1_1/bias': np.zeros(64, np.int64),
    'conv1_1/kernel': flat['conv1_1/kernel'].astype(np.float64),
  }
  weight_checks.check_values({**flat, **changes}, 'w.npz', fix=FIX)


def test_check_params_names_missing_and_misshaped(flat):
  bad = {k: v for k, v in flat.items() if k != 'conv3_3/bias'}
  bad['conv2_1/kernel'] = np.zeros((3, 3, 64, 100), np.float32)
  with pytest.raises(errors.WeightsError) as e:
    weight_checks.check_params(bad, 'w.npz', fix=FIX)
  assert str(e.value) == (
    'w.npz does not fit VGG-19: missing conv3_3/bias; conv2_1/kernel has shape '
    f'(3, 3, 64, 100), expected (3, 3, 64, 128); {FIX}'
  )


def test_params_digest_depends_on_every_value(flat):
  digest = weight_checks.params_digest(flat)
  assert digest == weight_checks.params_digest(dict(reversed(flat.items())))
  kernel = _with(flat['conv3_2/kernel'], 17, flat['conv3_2/kernel'].flat[17] + 1e-3)
  assert weight_checks.params_digest({**flat, 'conv3_2/kernel': kernel}) != digest
