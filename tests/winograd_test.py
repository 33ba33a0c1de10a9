"""Tests for nst_jax.core.winograd and its use by the VGG's prepared convolutions."""

import functools

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from nst_jax.core import step as core
from nst_jax.core import vgg
from nst_jax.core import winograd


def _numpy_conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
  """Direct 3x3 'same' convolution, written out: y[n,i,j,o] = sum x[n,i+a-1,j+b-1,c] k[a,b,c,o]."""
  n, h, w, _ = x.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((n, h, w, k.shape[3]))
  for a in range(3):
    for b in range(3):
      y += np.einsum('nijc,co->nijo', xp[:, a : a + h, b : b + w], k[a, b].astype(np.float64))
  return y


@pytest.mark.parametrize(
  'shape', [(2, 6, 8, 5, 7), (1, 7, 5, 4, 3), (1, 1, 1, 3, 2), (1, 2, 3, 8, 8)]
)
def test_winograd_equals_the_direct_convolution(shape):
  n, h, w, cin, cout = shape
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
  k = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
  got = winograd.conv3x3(jnp.asarray(x), winograd.transform_kernel(jnp.asarray(k)))
  want = _numpy_conv(x, k)
  assert got.shape == want.shape
  # Float32 rounding only: the transforms add, subtract and halve.
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_kernel_transform_is_g_g_gt():
  rng = np.random.default_rng(1)
  k = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
  u = np.asarray(winograd.transform_kernel(jnp.asarray(k)))
  assert u.shape == (16, 2, 3)
  g_matrix = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
  for c, o in [(0, 0), (1, 2)]:
    want = g_matrix @ k[:, :, c, o] @ g_matrix.T
    np.testing.assert_allclose(u[:, c, o].reshape(4, 4), want, rtol=1e-6, atol=1e-6)


def test_tile_and_output_transforms_are_b_t_and_a_t():
  # The hand-written transforms against the published matrices, on one axis.
  rng = np.random.default_rng(2)
  d = rng.standard_normal((6, 3)).astype(np.float32)  # 2 tiles of 4 rows, stride 2
  got = np.stack(winograd._tile_transform(jnp.asarray(d), 0))  # [4, 2 tiles, 3]
  for tile in range(2):
    np.testing.assert_allclose(got[:, tile], winograd.B_T @ d[2 * tile : 2 * tile + 4], rtol=1e-6)
  m = rng.standard_normal((4, 5)).astype(np.float32)
  got = np.stack(winograd._output_transform(jnp.asarray(m), 0))
  np.testing.assert_allclose(got, winograd.A_T @ m, rtol=1e-6, atol=1e-6)


def test_worthwhile_only_for_deep_float32_layers_on_small_maps():
  f32 = jnp.float32
  assert winograd.worthwhile(24, 32, 512, 512, f32)
  assert winograd.worthwhile(48, 64, 256, 512, f32)
  assert not winograd.worthwhile(48, 64, 128, 256, f32)  # conv3_1: 128 channels in
  assert winograd.worthwhile(192, 256, 256, 256, f32)
  assert not winograd.worthwhile(193, 256, 256, 256, f32)  # more than MAX_PIXELS
  assert not winograd.worthwhile(12, 16, 512, 512, f32)  # fewer than MIN_PIXELS
  assert not winograd.worthwhile(24, 32, 512, 512, jnp.bfloat16)


def test_winograd_convolution_gradients():
  k = jax.random.normal(jax.random.key(3), (3, 3, 3, 4))
  x = jax.random.normal(jax.random.key(4), (1, 5, 6, 3))

  @jax.jit  # check_grads evaluates many times; eager dispatch of each op is slow
  def conv(x, k):
    u = winograd.transform_kernel(k)
    u_t = winograd.transform_kernel(vgg.backward_kernel(k))
    return vgg._conv_winograd(x, k, u, u_t, None)

  check_grads(conv, (x, k), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)
  g = jax.random.normal(jax.random.key(5), (1, 5, 6, 4))
  _, vjp = jax.vjp(conv, x, k)
  _, vjp_direct = jax.vjp(lambda x, k: vgg._conv(x, k, None), x, k)
  for got, want in zip(vjp(g), vjp_direct(g), strict=True):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(jnp.abs(want).max()))


# A 2-stage VGG whose second stage is wide enough for Winograd once the
# threshold is lowered to its width (a real one would need 256 channels).
_VGGNarrow = functools.partial(vgg.VGG, stage_sizes=(1, 3), widths=(4, 8))
_LAYERS = ('relu1_1', 'relu2_1', 'relu2_3')


@pytest.fixture
def narrow_winograd(monkeypatch):
  monkeypatch.setattr(winograd, 'MIN_CHANNELS', 8)
  monkeypatch.setattr(winograd, 'MIN_PIXELS', 1)
  x = jnp.zeros((1, 16, 12, 3))
  return _VGGNarrow().init(jax.random.key(0), x)['params']


def _loss(x, p):
  feats = _VGGNarrow().apply({'params': p}, x, _LAYERS)
  return sum(jnp.sum(jnp.square(f)) for f in feats.values())


def test_prepared_params_hold_winograd_kernels_for_wide_layers(narrow_winograd):
  prepared = core.prepare_params(narrow_winograd)  # this test runs on CPU
  assert set(prepared['conv1_1']) == {'kernel', 'bias', vgg.BACKWARD_KERNEL}  # 3 -> 4
  assert set(prepared['conv2_1']) == {'kernel', 'bias', vgg.BACKWARD_KERNEL}  # 4 -> 8
  for name in ('conv2_2', 'conv2_3'):
    k = narrow_winograd[name]['kernel']
    assert prepared[name][vgg.WINOGRAD_KERNEL].shape == (16, 8, 8)
    np.testing.assert_array_equal(
      prepared[name][vgg.WINOGRAD_BACKWARD_KERNEL],
      winograd.transform_kernel(vgg.backward_kernel(k)),
    )
  # A run that stops at relu2_1 gets only the convolutions it reaches prepared.
  shallow = core.prepare_params(narrow_winograd, ('relu1_1', 'relu2_1'))
  assert set(shallow['conv2_1']) == {'kernel', 'bias', vgg.BACKWARD_KERNEL}
  assert set(shallow['conv2_2']) == set(shallow['conv2_3']) == {'kernel', 'bias'}


def test_winograd_network_gives_the_direct_values_and_gradients(narrow_winograd):
  params = narrow_winograd
  x = 50 * jax.random.normal(jax.random.key(2), (2, 16, 12, 3))
  grad = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1)))
  v1, (dx1, dp1) = grad(x, vgg.with_backward_kernels(params))
  v0, (dx0, dp0) = grad(x, params)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  np.testing.assert_allclose(dx1, dx0, rtol=0, atol=1e-5 * float(jnp.abs(dx0).max()))
  for name in params:
    np.testing.assert_allclose(
      dp1[name]['kernel'], dp0[name]['kernel'], rtol=0,
      atol=1e-5 * float(jnp.abs(dp0[name]['kernel']).max()),
    )  # fmt: skip
  assert float(jnp.abs(dp1['conv2_2'][vgg.WINOGRAD_KERNEL]).max()) == 0.0


def test_second_order_gradient_of_winograd_params_reaches_the_kernel(narrow_winograd):
  # jax.grad through a step w.r.t. prepared params: the input gradient runs
  # through the Winograd leaves, whose derivative goes to the kernel.
  params = narrow_winograd
  x = 50 * jax.random.normal(jax.random.key(2), (1, 16, 12, 3))
  direction = jax.random.normal(jax.random.key(3), x.shape)
  slope = jax.jit(jax.grad(lambda p: jnp.vdot(jax.grad(_loss)(x, p), direction)))
  plain, prepared = slope(params), slope(vgg.with_backward_kernels(params))
  for name in params:
    want = plain[name]['kernel']
    np.testing.assert_allclose(
      prepared[name]['kernel'], want, rtol=0, atol=1e-5 * float(jnp.abs(want).max())
    )
  for leaf in (vgg.WINOGRAD_KERNEL, vgg.WINOGRAD_BACKWARD_KERNEL):
    assert float(jnp.abs(prepared['conv2_2'][leaf]).max()) == 0.0


def _convolutions_in_gradient(params, shape) -> int:
  x = jnp.ones(shape)
  hlo = jax.jit(jax.grad(_loss)).lower(x, params).compile().as_text()
  return hlo.count(' convolution(')


def test_winograd_replaces_the_convolutions_of_small_maps_only(narrow_winograd, monkeypatch):
  prepared = vgg.with_backward_kernels(narrow_winograd)
  # 4 convolutions, forward and input gradient each, no weight gradient.
  assert _convolutions_in_gradient(narrow_winograd, (1, 16, 12, 3)) == 8
  # conv2_2 and conv2_3 (8 -> 8 at 8x6) run as Winograd both ways.
  assert _convolutions_in_gradient(prepared, (1, 16, 12, 3)) == 4
  # A map larger than MAX_PIXELS keeps the direct convolution.
  monkeypatch.setattr(winograd, 'MAX_PIXELS', 8 * 6 - 1)
  assert _convolutions_in_gradient(prepared, (1, 16, 12, 3)) == 8
