"""Tests for nst_jax.core.donation: make_step donates concrete states, never traced ones."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_runs

import nst_jax
from nst_jax.core import donation
from nst_jax.core import pixels
from nst_jax.core import vgg

_VGGTiny = functools.partial(vgg.VGG, stage_sizes=(1, 2), widths=(4, 8))
SPEC = nst_jax.LossSpec(content_layers=('relu2_2',), style_layers=('relu1_1', 'relu2_1'))


def _problem():
  model = _VGGTiny()
  params = small_runs.he_params(model, 0)
  rgb = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  content, style = jnp.split(pixels.preprocess(jnp.asarray(rgb), pixels.CAFFE), 2)
  targets = nst_jax.make_targets(
    params, content, style, model=model, loss_spec=SPEC, content_weight=1.0, style_weight=10.0
  )
  return model, params, content, targets


def test_eager_grad_through_several_lbfgs_steps_equals_the_jitted_grad():
  """Eager jax.grad through step.first and 2 steps: "Array has been deleted" before (a trial)."""
  model, params, content, targets = _problem()
  tx = nst_jax.make_optimizer('lbfgs', convention=pixels.CAFFE)
  step = nst_jax.make_step(model, tx, SPEC)
  assert isinstance(step.update, donation.DonatingJit)

  def mean_after(sw):
    t = targets._replace(style_weight=sw[None])
    state, _ = step.first(nst_jax.init_state(content, tx), params, t)
    for _ in range(2):
      state, _ = step(state, params, t)
    return jnp.mean(state.image)

  eager = jax.grad(mean_after)(jnp.float32(0.03))
  jitted = jax.jit(jax.grad(mean_after))(jnp.float32(0.03))
  assert float(jitted) != 0.0
  # One fused program against op-by-op: 4.5e-5 apart on an AMD EPYC, 1e-5 on an Intel Xeon.
  np.testing.assert_allclose(float(eager), float(jitted), rtol=2e-4)
  # Concrete calls still donate: the state's buffers are reused.
  state = nst_jax.init_state(content, tx)
  new, _ = step.first(state, params, targets)
  assert state.image.is_deleted() and not new.image.is_deleted()
  again, _ = step(new, params, targets)
  assert new.image.is_deleted() and not again.image.is_deleted()


def test_a_donated_state_is_refused_naming_the_fix():
  """Reusing a state after step(state, ...) was JAX's "Array has been deleted"; now one line."""
  model, params, content, targets = _problem()
  tx = nst_jax.make_optimizer('lbfgs', convention=pixels.CAFFE)
  step = nst_jax.make_step(model, tx, SPEC)
  state = nst_jax.init_state(content, tx)
  new, _ = step(state, params, targets)
  try:
    step(state, params, targets)
  except nst_jax.errors.ConfigError as e:
    assert str(e) == (
      'the state was donated to an earlier call of the step (its buffers are gone); pass the '
      'state that call returned (state, losses = step(state, ...)), or keep a copy made before '
      'it: jax.tree.map(jnp.copy, state)'
    )
  else:
    raise AssertionError('a donated state was taken')
  new, _ = step(new, params, targets)  # the returned state goes on
  assert not new.image.is_deleted()
  # Trial 27: the same state to update_step, eagerly, was JAX's "Array has been deleted".
  with pytest.raises(nst_jax.errors.ConfigError, match='^the state was donated to an earlier'):
    nst_jax.update_step(state, params, targets, model=model, optimizer=tx, loss_spec=SPEC)

  # Trial 29: under jax.grad of a Step call (its weights traced), and its image elsewhere.
  def total(w):
    return step(state, params, targets._replace(style_weight=w))[1]['total'].sum()

  with pytest.raises(nst_jax.errors.ConfigError, match='^the state was donated to an earlier'):
    jax.grad(total)(targets.style_weight)
  with pytest.raises(nst_jax.errors.ConfigError, match="^x is a donated state's image"):
    nst_jax.deprocess(state.image, pixels.CAFFE)
  with pytest.raises(nst_jax.errors.ConfigError, match="^image is a donated state's image"):
    nst_jax.init_state(state.image, tx)
