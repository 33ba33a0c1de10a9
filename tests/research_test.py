"""Tests for research code on the public API: the jitted step, gradients through it, features.

The step is `nst_jax.make_step` (nst_jax.core.step); these tests hold it to
what docs/api.md promises a researcher: `jax.grad` through k steps, one
forward and one backward pass per compiled iteration.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nst_jax
from nst_jax.core import pixels
from nst_jax.core import vgg

_VGGTiny = functools.partial(vgg.VGG, stage_sizes=(1, 2), widths=(4, 8))
SPEC = nst_jax.LossSpec(content_layers=('relu2_2',), style_layers=('relu1_1', 'relu2_1'))


def _params(model, seed=0):
  """He-initialised by hand from the shapes (model.init takes seconds)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  return {
    name: {
      'kernel': jnp.asarray(
        rng.normal(0, np.sqrt(2 / (9 * leaf['kernel'].shape[2])), leaf['kernel'].shape),
        jnp.float32,
      ),
      'bias': jnp.zeros(leaf['bias'].shape, jnp.float32),
    }
    for name, leaf in shapes.items()
  }


def _problem(n=1, seed=0):
  model = _VGGTiny()
  params = _params(model, seed)
  rgb = np.random.default_rng(seed).uniform(size=(2 * n, 16, 16, 3)).astype(np.float32)
  content, style = jnp.split(pixels.preprocess(jnp.asarray(rgb), pixels.CAFFE), 2)
  targets = nst_jax.make_targets(
    params, content, style, model=model, loss_spec=SPEC, content_weight=1.0, style_weight=10.0
  )
  return model, params, content, targets


def _k_steps(model, tx, k, params, content, targets):
  """The images after k steps with `targets`' weights, the first one backtracked."""
  update = functools.partial(nst_jax.update_step, model=model, optimizer=tx, loss_spec=SPEC)
  state = nst_jax.init_state(content, tx)
  state, _ = update(state, params, targets, backtrack=True)
  for _ in range(k - 1):
    state, _ = update(state, params, targets)
  return state.image


@pytest.mark.parametrize(
  'name,box',
  [('lbfgs', True), ('lbfgs', False), ('adam', False)],
  ids=['lbfgs-box', 'lbfgs', 'adam'],
)
def test_grad_through_five_steps_matches_central_differences(name, box):
  """d/d(sw) of the content loss after 5 steps run with style weight sw.

  The meta-objective of a style-weight search: the image after 5 steps (the
  first one backtracked, as the engine takes it), scored by its content term
  alone. sw = 0.03 balances the two terms here, where the image's content
  loss moves with sw (L-BFGS is invariant to the loss's scale, so only the
  ratio of the weights matters). Central differences at a relative step of
  2% agree with the gradient to 0.2% (L-BFGS) and 0.1% (Adam), measured.
  """
  model, params, content, targets = _problem()
  tx = nst_jax.make_optimizer(name, box=box, convention=pixels.CAFFE)
  one = jax.tree.map(lambda x: x[0], targets)

  def meta(sw):
    image = _k_steps(model, tx, 5, params, content, targets._replace(style_weight=sw[None]))
    _, aux = nst_jax.objective(image[0], params, one, model=model, loss_spec=SPEC)
    return aux['content']

  sw, h = 0.03, 0.02 * 0.03
  value, grad = jax.jit(jax.value_and_grad(meta))(jnp.float32(sw))
  f = jax.jit(meta)
  central = (float(f(jnp.float32(sw + h))) - float(f(jnp.float32(sw - h)))) / (2 * h)
  assert abs(central) * sw > 1e-2 * float(value)  # a real slope, not a flat one
  np.testing.assert_allclose(float(grad), central, rtol=1e-2)


def test_optax_lbfgs_line_search_is_not_differentiable():
  """The table's one 'no': optax.lbfgs's zoom line search is a while_loop with a dynamic end."""
  model, params, content, targets = _problem()
  tx = optax.lbfgs()

  def meta(sw):
    image = _k_steps(model, tx, 2, params, content, targets._replace(style_weight=sw[None]))
    return jnp.sum(image)

  with pytest.raises(
    ValueError, match='Reverse-mode differentiation does not work for lax.while_loop'
  ):
    jax.grad(meta)(jnp.float32(0.03))


def _convolutions(lowered) -> int:
  return lowered.as_text().count('stablehlo.convolution')


def test_each_compiled_iteration_is_one_forward_and_one_backward_pass():
  """The step's program holds exactly the convolutions of value_and_grad of the objective.

  The tiny network has 3 convolutions: 3 forward and 3 input-gradient ones.
  The first iteration's program (L-BFGS's backtracking) holds more: its
  search's forward passes.
  """
  model, params, content, targets = _problem(n=2)
  tx = nst_jax.make_optimizer('lbfgs', convention=pixels.CAFFE)
  step = nst_jax.make_step(model, tx, SPEC)
  state = nst_jax.init_state(content, tx)
  one = jax.tree.map(lambda x: x[0], targets)
  alone = jax.jit(
    jax.value_and_grad(
      functools.partial(nst_jax.objective, model=model, loss_spec=SPEC), has_aux=True
    )
  ).lower(content[0], params, one)
  assert _convolutions(alone) == 6
  assert _convolutions(step.update.lower(state, params, targets)) == 6
  assert _convolutions(step.first.lower(state, params, targets)) == 6 + 3
