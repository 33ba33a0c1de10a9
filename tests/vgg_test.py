"""Tests for nst_jax.core.vgg: names, shapes, early stopping, pooling, bfloat16."""

import functools

import flax
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest
import weight_files

from nst_jax import errors
from nst_jax.core import pooling
from nst_jax.core import step as core
from nst_jax.core import vgg

# A 2-stage, 4/8-channel VGG for fast tests on 16x16 images.
_VGGTiny = functools.partial(vgg.VGG, stage_sizes=(1, 2), widths=(4, 8))


def _tiny_params(seed=0):
  x = jnp.zeros((1, 16, 16, 3))
  return _VGGTiny().init(jax.random.key(seed), x)['params']


def test_layer_names_follow_the_paper():
  names = vgg.layer_names(vgg.VGG19_STAGE_SIZES)
  assert names[:6] == ('conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1', 'conv2_1')
  assert len([n for n in names if n.startswith('conv')]) == 16
  assert names[-3:] == ('conv5_4', 'relu5_4', 'pool5')
  assert vgg.conv_names((1, 2)) == ('conv1_1', 'conv2_1', 'conv2_2')


def test_params_use_paper_names_and_shapes():
  params = _tiny_params()
  shapes = {k: v.shape for k, v in flax.traverse_util.flatten_dict(params, sep='/').items()}
  assert shapes == {
    'conv1_1/kernel': (3, 3, 3, 4),
    'conv1_1/bias': (4,),
    'conv2_1/kernel': (3, 3, 4, 8),
    'conv2_1/bias': (8,),
    'conv2_2/kernel': (3, 3, 8, 8),
    'conv2_2/bias': (8,),
  }


def test_returns_only_requested_layers_with_shapes():
  params = _tiny_params()
  x = jax.random.normal(jax.random.key(1), (2, 16, 15, 3))
  apply = jax.jit(_VGGTiny().apply, static_argnums=2)
  out = apply({'params': params}, x, ('relu1_1', 'pool1', 'conv2_2'))
  assert set(out) == {'relu1_1', 'pool1', 'conv2_2'}
  assert out['relu1_1'].shape == (2, 16, 15, 4)
  assert out['pool1'].shape == (2, 8, 7, 4)  # floor at the odd width
  assert out['conv2_2'].shape == (2, 8, 7, 8)
  assert float(out['relu1_1'].min()) >= 0.0
  assert float(out['conv2_2'].min()) < 0.0  # conv outputs are pre-ReLU


def test_nothing_computed_past_the_deepest_layer():
  params = _tiny_params()
  x = jnp.ones((1, 16, 16, 3))
  # Parameters of later layers are not even needed...
  shallow = {'conv1_1': params['conv1_1']}
  out = _VGGTiny().apply({'params': shallow}, x, ('relu1_1',))
  assert out['relu1_1'].shape == (1, 16, 16, 4)
  # ...and no later convolution appears in the computation.
  jaxpr = jax.make_jaxpr(lambda p: _VGGTiny().apply({'params': p}, x, ('pool1',)))(params)
  assert str(jaxpr).count('conv_general_dilated') == 1


def test_unknown_layer_lists_valid_names():
  with pytest.raises(errors.ConfigError, match=r'unknown layer name\(s\) relu9_9; valid names'):
    _VGGTiny().apply({'params': _tiny_params()}, jnp.ones((1, 16, 16, 3)), ('relu9_9',))


def test_one_layer_name_is_one_layer_not_its_letters():
  params, x = _tiny_params(), jnp.ones((1, 16, 16, 3))
  one = _VGGTiny().apply({'params': params}, x, 'relu2_1')  # read as r, e, l, u, 2, _, 1 before
  both = _VGGTiny().apply({'params': params}, x, ('relu2_1',))
  assert list(one) == ['relu2_1']
  np.testing.assert_array_equal(one['relu2_1'], both['relu2_1'])


def test_vgg19_is_make_models_module_at_highest_precision():
  """VGG19() had precision None: TF32 on a GPU, unlike make_model() (a trial)."""
  assert vgg.VGG19() == core.make_model()
  assert vgg.VGG19().precision == jax.lax.Precision.HIGHEST
  assert vgg.VGG19(precision=None).precision is None  # the backend's default, when asked
  assert vgg.VGG(stage_sizes=(1, 2)).precision is None
  assert core.make_model(precision='default').precision == jax.lax.Precision.DEFAULT


def test_bad_pooling_is_refused():
  with pytest.raises(errors.ConfigError, match='pooling must be one of'):
    vgg.VGG(stage_sizes=(1,), pooling='min').init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))


@pytest.mark.parametrize('mode', ['max', 'avg'])
def test_pool_matches_numpy(mode):
  x = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype(np.float32)
  got = jax.jit(pooling.pool, static_argnums=1)(x, mode)
  blocks = x[:, :6, :8].reshape(2, 3, 2, 4, 2, 3)
  want = blocks.max(axis=(2, 4)) if mode == 'max' else blocks.mean(axis=(2, 4))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_max_pool_gradient():
  # Unique maxima: identical to JAX's own derivative of the reduction.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 8, 3)), jnp.float32)
  g = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 4, 3)), jnp.float32)

  def plain(v):
    return v.reshape(2, 3, 2, 4, 2, 3).max(axis=(2, 4))

  _, ours = jax.vjp(lambda v: pooling.pool(v, 'max'), x)
  _, reference = jax.vjp(plain, x)
  np.testing.assert_array_equal(ours(g)[0], reference(g)[0])
  # Ties: the whole gradient goes to the first maximum in raster order.
  tied = jnp.asarray([[1.0, 5.0], [5.0, 5.0]]).reshape(1, 2, 2, 1)
  (dx,) = jax.vjp(lambda v: pooling.pool(v, 'max'), tied)[1](jnp.ones((1, 1, 1, 1)))
  np.testing.assert_array_equal(dx.reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])
  # Odd sizes: the dropped row and column get no gradient.
  odd = jnp.asarray(np.random.default_rng(3).normal(size=(1, 5, 7, 2)), jnp.float32)
  dx = jax.grad(lambda v: pooling.pool(v, 'max').sum())(odd)
  assert float(jnp.abs(dx[:, 4, :, :]).sum()) == 0.0 and float(jnp.abs(dx[:, :, 6]).sum()) == 0.0
  assert float(dx.sum()) == 2 * 3 * 2  # one unit per window


@pytest.mark.slow
def test_bfloat16_features_within_derived_tolerance(random_params):
  """bfloat16 compute agrees with float32 within 3 * u * L.

  u = 2^-8 is bfloat16's unit roundoff. Each conv layer rounds its input, its
  weights and its output to bfloat16 (accumulating in float32), at most 3u of
  relative error each; ReLU and pooling are 1-Lipschitz and add none, and
  He-initialised layers keep errors at roughly their relative size. So after
  L conv layers the norm-wise relative error is at most about 3uL
  (0.19 at relu5_1, L=13; 0.012 at relu1_1).
  """
  params = flax.traverse_util.unflatten_dict(
    {
      f'{n}/{k}': v
      for n, (kern, b) in random_params.items()
      for k, v in (('kernel', kern), ('bias', b))
    },
    sep='/',
  )
  rgb = np.random.default_rng(0).uniform(size=(1, 40, 48, 3)).astype(np.float32)
  x = jnp.asarray(weight_files.caffe_preprocess(rgb), jnp.float32)
  layers = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_2', 'relu5_1')
  f32 = vgg.VGG19().apply({'params': params}, x, layers)
  bf16 = vgg.VGG19(dtype=jnp.bfloat16).apply({'params': params}, x, layers)
  u = 2.0**-8
  convs_before = {'relu1_1': 1, 'relu2_1': 3, 'relu3_1': 5, 'relu4_2': 10, 'relu5_1': 13}
  for name in layers:
    assert bf16[name].dtype == jnp.bfloat16
    err = weight_files.relative_error(np.asarray(bf16[name], np.float32), f32[name])
    assert 0 < err < 3 * u * convs_before[name], f'{name}: {err:.3g}'


@pytest.mark.parametrize('hw', [(37, 53), (32, 32)])
def test_masks_follow_each_layer_resolution(hw):
  # The mask at a layer has exactly the layer's size, odd sizes included, and
  # is the 2x2 average per pooling (floor), as the network pools.
  model = vgg.VGG(stage_sizes=(1, 1, 1), widths=(2, 2, 2))
  params = model.init(jax.random.key(0), jnp.zeros((1, *hw, 3)))['params']
  layers = ('relu1_1', 'pool1', 'relu2_1', 'relu3_1', 'pool3')
  feats = model.apply({'params': params}, jnp.zeros((1, *hw, 3)), layers)
  mask = np.random.default_rng(0).uniform(size=hw).astype(np.float32)
  for name in layers:
    got = vgg.mask_at_layer(mask, name, (1, 1, 1))
    assert got.shape == feats[name].shape[1:3], name
  want = mask
  for _ in range(2):  # relu3_1 comes after pool1 and pool2
    h, w = want.shape[0] // 2, want.shape[1] // 2
    want = want[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
  np.testing.assert_allclose(vgg.mask_at_layer(mask, 'relu3_1', (1, 1, 1)), want, rtol=1e-6)
  assert vgg.downsamplings('relu1_1') == 0 and vgg.downsamplings('pool1') == 1
  assert vgg.downsamplings('relu5_1') == 4


def _prepared_and_plain_grads(params, x, layers, dtype=jnp.float32):
  model = _VGGTiny(dtype=dtype)

  def loss(v, p):
    feats = model.apply({'params': p}, v, layers)
    return sum(jnp.sum(jnp.square(f.astype(jnp.float32))) for f in feats.values())

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  return grad(x, vgg.with_backward_kernels(params)), grad(x, params)


def test_backward_kernel_is_the_flipped_transpose():
  k = jnp.arange(3 * 3 * 2 * 4, dtype=jnp.float32).reshape(3, 3, 2, 4)
  kt = vgg.backward_kernel(k)
  assert kt.shape == (3, 3, 4, 2)
  for i, j, c, o in [(0, 0, 0, 0), (0, 2, 1, 3), (1, 1, 0, 2), (2, 0, 1, 1)]:
    assert kt[i, j, o, c] == k[2 - i, 2 - j, c, o]
  prepared = vgg.with_backward_kernels(_tiny_params())
  assert set(prepared['conv2_1']) == {'kernel', 'bias', vgg.BACKWARD_KERNEL}
  # What the engine passes the step on CPU (this test's backend).
  assert set(core.prepare_params(_tiny_params())['conv2_1']) == set(prepared['conv2_1'])


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_prepared_kernels_give_the_same_values_and_gradients(dtype):
  params = _tiny_params()
  x = 50 * jax.random.normal(jax.random.key(2), (2, 16, 14, 3))
  layers = ('relu1_1', 'relu2_2')
  (v1, (dx1, dp1)), (v0, (dx0, dp0)) = _prepared_and_plain_grads(params, x, layers, dtype)
  assert float(v1) == float(v0)
  # The same convolution XLA's autodiff builds, so the same numbers exactly.
  np.testing.assert_array_equal(dx1, dx0)
  assert float(jnp.abs(dx0).max()) > 0
  # The weights' gradient is the true one; the prepared kernel gets none.
  for name in params:
    np.testing.assert_allclose(dp1[name]['kernel'], dp0[name]['kernel'], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(dp1[name]['bias'], dp0[name]['bias'])
    assert float(jnp.abs(dp1[name][vgg.BACKWARD_KERNEL]).max()) == 0.0


def _input_gradient_slope(model, x, layers):
  """A function of the params through the image's gradient, as jax.grad through a step is."""

  def loss(v, p):
    feats = model.apply({'params': p}, v, layers)
    return sum(jnp.sum(jnp.square(f.astype(jnp.float32))) for f in feats.values())

  direction = jax.random.normal(jax.random.key(5), x.shape)
  return jax.jit(jax.grad(lambda p: jnp.vdot(jax.grad(loss)(x, p), direction)))


def test_second_order_gradient_of_prepared_params_reaches_the_kernel():
  # A trial found jax.grad through steps w.r.t. prepared params 20% short
  # on conv1_1's kernel: the input gradient's term landed on the prepared
  # leaf. The prepared leaves now pass their derivative to the kernel.
  params = _tiny_params()
  x = 50 * jax.random.normal(jax.random.key(2), (1, 16, 14, 3))
  slope = _input_gradient_slope(_VGGTiny(), x, ('relu2_2',))
  plain, prepared = slope(params), slope(vgg.with_backward_kernels(params))
  for name in params:
    want = plain[name]['kernel']
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_allclose(
      prepared[name]['kernel'], want, rtol=0, atol=1e-5 * float(jnp.abs(want).max())
    )
    assert float(jnp.abs(prepared[name][vgg.BACKWARD_KERNEL]).max()) == 0.0


def test_prepared_convolution_passes_check_grads():
  k = jax.random.normal(jax.random.key(3), (3, 3, 2, 3))
  x = jax.random.normal(jax.random.key(4), (1, 5, 6, 2))
  check_grads(
    lambda x, k: vgg._conv_prepared(x, k, vgg.backward_kernel(k), None),
    (x, k),
    order=1,
    modes=['rev'],
  )
  # The kernel and its prepared layout passed separately, as a step does.
  kt = vgg.backward_kernel(k)
  check_grads(lambda x: vgg._conv_prepared(x, k, kt, None), (x,), order=1, modes=['rev'])


def test_prepared_step_lays_out_no_kernel():
  # The point of preparing: the compiled gradient holds no kernel reversal.
  params = _tiny_params()
  x = jnp.ones((1, 16, 16, 3))

  def loss(v, p):
    return jnp.sum(_VGGTiny().apply({'params': p}, v, ('relu2_2',))['relu2_2'])

  def grad_hlo(p):  # the weights are arguments, as in a step (no constant folding)
    return jax.jit(jax.grad(loss)).lower(x, p).compile().as_text()

  assert ' reverse(' in grad_hlo(params)
  assert ' reverse(' not in grad_hlo(vgg.with_backward_kernels(params))


def test_layers_through_walks_to_the_deepest_layer_once():
  # Written out from the paper's table: VGG-19's stage 1 has two convolutions.
  assert vgg.layers_through(['relu1_1']) == ('conv1_1', 'relu1_1')
  assert vgg.layers_through(['relu2_1', 'relu1_2']) == (
    'conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1', 'conv2_1', 'relu2_1',
  )  # fmt: skip
  through = vgg.layers_through(['relu5_1', 'relu4_2'])
  assert through[-1] == 'relu5_1' and len(through) == 2 * (2 + 2 + 4 + 4) + 4 + 2
  assert [vgg.stage_of(n) for n in ('conv1_1', 'relu4_2', 'pool3', 'relu5_4')] == [1, 4, 3, 5]
  # The size check and the forward pass agree with the walk: 4 poolings before relu5_1.
  assert vgg.min_input_size(['relu5_1']) == 16
  assert vgg.min_input_size(['relu1_1']) == 1
  assert vgg.min_input_size(['pool5']) == 32  # its own pooling counts: 32 -> 1 px
  with pytest.raises(errors.ConfigError, match='relu6_1'):
    vgg.layers_through(['relu6_1'])
