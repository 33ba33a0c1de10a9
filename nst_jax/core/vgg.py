"""VGG feature extractor in Flax Linen, with the paper's layer names.

The network is Simonyan & Zisserman's configuration E (VGG-19) without the
fully connected layers: five stages of 3x3 convolutions (stride 1, padding 1)
each followed by ReLU, with 2x2 pooling (stride 2) between stages. Layers are
named as in Gatys et al. and the classic tools: `conv{stage}_{i}`,
`relu{stage}_{i}`, `pool{stage}`, so `relu4_2` is the ReLU after the second
convolution of the fourth stage.

`VGG.__call__` returns a dict of the requested activations and computes
nothing past the deepest one, so a style transfer that needs `relu5_1` never
pays for `conv5_2` onward.

`with_backward_kernels(params)` adds to each convolution its kernel flipped and
transposed, the layout of the input-gradient convolution, so that an
optimisation that calls the network every iteration does not lay out all the
kernels again each time, and for the deep layers their Winograd transforms,
with which small feature maps are convolved in about half the time
(`nst_jax.core.winograd`; see `Conv3x3`).

References:
  Simonyan & Zisserman 2015, arXiv:1409.1556 (the network, configuration E).
  Gatys, Ecker & Bethge 2016, arXiv:1508.06576 (layer names, layer choice).
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nst_jax import errors
from nst_jax.core import pooling
from nst_jax.core import winograd

# Channel widths of the five stages of VGG-16/19 (Simonyan & Zisserman, Table 1).
VGG_WIDTHS = (64, 128, 256, 512, 512)
# Convolutions per stage for configuration E (VGG-19).
VGG19_STAGE_SIZES = (2, 2, 4, 4, 4)
POOLING_MODES = ('max', 'avg')
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# jax.lax.Precision of float32 convolutions, by the names nst_jax.config uses.
PRECISIONS = {
  'highest': jax.lax.Precision.HIGHEST,
  'high': jax.lax.Precision.HIGH,
  'default': jax.lax.Precision.DEFAULT,
}


def layer_names(stage_sizes: Sequence[int]) -> tuple[str, ...]:
  """All feature names of a VGG with `stage_sizes`, in network order.

  Args:
    stage_sizes: convolutions per stage, e.g. `(2, 2, 4, 4, 4)` for VGG-19.

  Returns:
    `('conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1', 'conv2_1', ...)`.
  """
  names = []
  for stage, size in enumerate(stage_sizes, start=1):
    for i in range(1, size + 1):
      names += [f'conv{stage}_{i}', f'relu{stage}_{i}']
    names.append(f'pool{stage}')
  return tuple(names)


def conv_names(stage_sizes: Sequence[int]) -> tuple[str, ...]:
  """Names of the convolution layers (the ones with parameters), in order."""
  return tuple(n for n in layer_names(stage_sizes) if n.startswith('conv'))


def check_layers(layers: Sequence[str], stage_sizes: Sequence[int] = VGG19_STAGE_SIZES) -> None:
  """Raises ConfigError naming any entry of `layers` the network lacks."""
  if isinstance(layers, str):  # 'relu4_2' would read as the names r, e, l, u, ...
    raise errors.ConfigError(
      f'layers must be a sequence of layer names, got the string {layers!r}; '
      f'write ({layers!r},) or [{layers!r}]'
    )
  valid = layer_names(stage_sizes)
  odd = [name for name in layers if not isinstance(name, str)]
  if odd:  # 3 or None: the join below would fail on them (trial 13)
    raise errors.ConfigError(
      f'layer names must be strings such as {"relu4_2"!r}, got {odd[0]!r}; valid names are: '
      + ', '.join(valid)
    )
  unknown = [name for name in layers if name not in valid]
  if unknown:
    raise errors.ConfigError(
      f'unknown layer name(s) {", ".join(unknown)}; valid names are: ' + ', '.join(valid)
    )


def layers_through(
  layers: Sequence[str], stage_sizes: Sequence[int] = VGG19_STAGE_SIZES
) -> tuple[str, ...]:
  """Every layer name from the input through the deepest of `layers`, in order.

  The one walk to the deepest layer: the forward pass, the memory estimate,
  the prepared kernels and the size check all run this far and no further.
  """
  check_layers(layers, stage_sizes)
  names = layer_names(stage_sizes)
  return names[: max(names.index(name) for name in layers) + 1]


def stage_of(layer: str) -> int:
  """The stage (1-based block) of a layer name: relu4_2 -> 4, pool3 -> 3."""
  return int(layer[4:].split('_')[0])


def min_input_size(layers: Sequence[str], stage_sizes: Sequence[int] = VGG19_STAGE_SIZES) -> int:
  """Smallest height and width that reach every layer in `layers` non-empty.

  Each 2x2 pooling up to the deepest layer (itself included) halves
  (rounding down) the size, so relu5_1 (after pool1..pool4) needs 2^4 = 16
  pixels on each side, and pool5 32.
  """
  return 2 ** sum(1 for name in layers_through(layers, stage_sizes) if name.startswith('pool'))


def downsamplings(layer: str, stage_sizes: Sequence[int] = VGG19_STAGE_SIZES) -> int:
  """How many 2x2 poolings the input has gone through at `layer`'s output."""
  names = layer_names(stage_sizes)
  return sum(1 for name in names[: names.index(layer) + 1] if name.startswith('pool'))


def mask_at_layer(
  mask: jax.typing.ArrayLike, layer: str, stage_sizes: Sequence[int] = VGG19_STAGE_SIZES
) -> jax.Array:
  """A guidance mask [..., H, W] carried to `layer`'s resolution.

  Each 2x2 pooling before the layer becomes a 2x2 average of the mask, with
  the same floor at odd sizes as the network's pooling, so the result has
  exactly the layer's height and width and keeps the fraction of each region.
  Convolutions keep the size (SAME padding). This is the simple propagation
  of Gatys et al. 2017 (Sec. 4.1, "simply down-sampled"), not their eroded
  variant.

  Args:
    mask: [..., H, W] in [0, 1], at the input image's resolution.
    layer: a layer name such as 'relu3_1'.

  Returns:
    [..., H // 2^k, W // 2^k] float32, k = `downsamplings(layer)`.
  """
  m = jnp.asarray(mask, jnp.float32)
  for _ in range(downsamplings(layer, stage_sizes)):
    h, w = m.shape[-2] // 2, m.shape[-1] // 2
    m = m[..., : 2 * h, : 2 * w].reshape(*m.shape[:-2], h, 2, w, 2).mean(axis=(-3, -1))
  return m


# The params leaves `with_backward_kernels` adds next to 'kernel' and 'bias'.
BACKWARD_KERNEL = 'backward_kernel'
WINOGRAD_KERNEL = 'winograd_kernel'
WINOGRAD_BACKWARD_KERNEL = 'winograd_backward_kernel'
_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _conv(x: jax.Array, kernel: jax.Array, precision: Any) -> jax.Array:
  """3x3 convolution, stride 1, padding 1: [N, H, W, Cin] x [3, 3, Cin, Cout]."""
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DIMENSION_NUMBERS, precision=precision
  )


def backward_kernel(kernel: jax.Array) -> jax.Array:
  """[3, 3, Cin, Cout] -> [3, 3, Cout, Cin], spatially flipped.

  The input gradient of a stride-1 'same' convolution is the convolution of
  the output gradient with this kernel: dx = conv(g, flip(k)^T).
  """
  return jnp.swapaxes(kernel[::-1, ::-1], 2, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_prepared(x, kernel, kernel_t, precision):
  # kernel_t must be backward_kernel(kernel); the value does not depend on it.
  del kernel_t
  return _conv(x, kernel, precision)


def _conv_prepared_fwd(x, kernel, kernel_t, precision):
  return _conv(x, kernel, precision), (x, kernel, kernel_t)


def _conv_prepared_bwd(precision, residuals, g):
  x, kernel, kernel_t = residuals
  dx = _conv(g, kernel_t, precision)
  # The kernel's own gradient, for code that differentiates the weights; XLA
  # removes it from a step that only needs the image's gradient.
  _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, precision), kernel)
  (dkernel,) = kernel_vjp(g)
  return dx, dkernel, jnp.zeros_like(kernel_t)


_conv_prepared.defvjp(_conv_prepared_fwd, _conv_prepared_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _conv_winograd(x, kernel, u, u_t, precision):
  # u and u_t must be the Winograd transforms of kernel and backward_kernel(kernel).
  del kernel, u_t
  return winograd.conv3x3(x, u, precision)


def _conv_winograd_fwd(x, kernel, u, u_t, precision):
  return winograd.conv3x3(x, u, precision), (x, kernel, u, u_t)


def _conv_winograd_bwd(precision, residuals, g):
  x, kernel, u, u_t = residuals
  # The input gradient is the convolution with the flipped transpose, so it
  # is a Winograd convolution too (same map size, channels swapped).
  dx = winograd.conv3x3(g, u_t, precision)
  _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, precision), kernel)
  (dkernel,) = kernel_vjp(g)
  return dx, dkernel, jnp.zeros_like(u), jnp.zeros_like(u_t)


_conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)


def _winograd_backward(kernel: jax.Array) -> jax.Array:
  return winograd.transform_kernel(backward_kernel(kernel))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _derived(transform, kernel, leaf):
  """`leaf`, a prepared copy `transform(kernel)`, differentiated through `kernel`.

  The prepared leaves are params of their own, so a second-order
  derivative (jax.grad w.r.t. the params of a loss after k steps, whose
  input gradients run through them) would land on them and not on the
  kernel: the kernel's gradient would lack that term. Every transform is
  linear, so the tangent is transform(kernel_dot); the leaf's own tangent
  is dropped. Where the kernel is not differentiated (a step), JAX calls
  only this identity.
  """
  del kernel
  return leaf


@_derived.defjvp
def _derived_jvp(transform, primals, tangents):
  kernel, leaf = primals
  kernel_dot, _ = tangents
  return leaf, transform(kernel_dot)


def _prepared_leaves(kernel: jax.Array) -> dict:
  kernel_t = backward_kernel(kernel)
  leaves = {BACKWARD_KERNEL: kernel_t}
  if min(kernel.shape[2:]) >= winograd.MIN_CHANNELS:
    leaves[WINOGRAD_KERNEL] = winograd.transform_kernel(kernel)
    leaves[WINOGRAD_BACKWARD_KERNEL] = winograd.transform_kernel(kernel_t)
  return leaves


def with_backward_kernels(params: dict, layers: Sequence[str] | None = None) -> dict:
  """`params` with each convolution's kernels laid out for the step, once.

  Adds BACKWARD_KERNEL, `backward_kernel(kernel)`: reverse-mode
  differentiation of `lax.conv_general_dilated` with respect to its input
  flips and transposes the kernel inside the program, so a jitted step that
  takes the weights as an argument re-lays out every kernel on every call
  (13 copies, 52 MB up to conv5_1). With the prepared kernel passed in, the
  input gradient is a plain convolution: 4.6% less time per value-and-gradient
  at 256x192 on a 2-core AMD EPYC Zen 4 (median of 7, one run), bit-identical
  gradients.

  For convolutions with at least `winograd.MIN_CHANNELS` channels in and out
  (conv3_2 onwards in VGG-19) it also adds WINOGRAD_KERNEL and
  WINOGRAD_BACKWARD_KERNEL, [16, Cin, Cout] and [16, Cout, Cin]: the
  Winograd transforms of both kernels, so that the layers where
  `winograd.worthwhile` holds (small feature maps) run forward and backward
  as Winograd F(2x2, 3x3), equal to the direct convolution up to rounding.
  Together 2 x 16/9 the kernels' size (176 MB for conv3_2 to conv5_1).

  The engine prepares the weights once per run on CPU, where this was
  measured.

  Args:
    params: conv name -> {'kernel': [3, 3, Cin, Cout], 'bias': [Cout]}.
    layers: the layers a run asks for (VGG-19 names); only the convolutions
      up to the deepest are prepared, the rest are returned as they are.
      None prepares every convolution.

  Returns:
    A new dict whose convolutions also hold the prepared leaves. Recompute
    them after changing a kernel: the step uses them as given.
  """
  reached = params.keys() if layers is None else layers_through(layers)
  return {
    name: {**leaves, **_prepared_leaves(leaves['kernel'])}
    if 'kernel' in leaves and name in reached
    else leaves
    for name, leaves in params.items()
  }


class Conv3x3(nn.Module):
  """3x3 convolution with bias, stride 1, 'same' padding; nn.Conv's parameters.

  The parameters are nn.Conv's ('kernel' [3, 3, Cin, Cout] lecun-normal,
  'bias' [Cout] zeros), so converted weights load unchanged. When the params
  also hold BACKWARD_KERNEL (see `with_backward_kernels`), the input gradient
  uses it instead of laying out the kernel again; when they hold the
  Winograd kernels and `winograd.worthwhile` holds for this input's shape,
  forward and input gradient are Winograd F(2x2, 3x3) convolutions.

  Attributes:
    features: output channels.
    dtype: compute dtype; input, kernel and bias are cast to it (as nn.Conv).
    precision: `jax.lax.Precision` or None.
  """

  features: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features), jnp.float32
    )
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    kernel32 = kernel
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    _, height, width, cin = x.shape
    if self.has_variable('params', WINOGRAD_KERNEL) and winograd.worthwhile(
      height, width, cin, self.features, self.dtype
    ):
      u, u_t = (
        _derived(transform, kernel32, self.get_variable('params', name)).astype(self.dtype)
        for name, transform in (
          (WINOGRAD_KERNEL, winograd.transform_kernel),
          (WINOGRAD_BACKWARD_KERNEL, _winograd_backward),
        )
      )
      y = _conv_winograd(x, kernel, u, u_t, self.precision)
    elif self.has_variable('params', BACKWARD_KERNEL):
      kernel_t = _derived(
        backward_kernel, kernel32, self.get_variable('params', BACKWARD_KERNEL)
      ).astype(self.dtype)
      y = _conv_prepared(x, kernel, kernel_t, self.precision)
    else:
      y = _conv(x, kernel, self.precision)
    return y + bias.reshape(1, 1, 1, -1)


class VGG(nn.Module):
  """VGG convolutional trunk returning named activations.

  Attributes:
    stage_sizes: convolutions per stage; `(2, 2, 4, 4, 4)` is VGG-19.
    widths: output channels of each stage.
    pooling: 'max' (the classic tools' default) or 'avg' (Gatys et al. suggest
      it gives slightly smoother results).
    dtype: compute dtype of convolutions and activations (float32 or bfloat16);
      parameters are always stored in float32. The first convolution always
      runs in float32 on the float32 input and its output is cast: its input
      is the image in network units (about +-150 for Caffe weights), where
      bfloat16's spacing of 0.5 to 1 would erase the optimiser's small steps.
    precision: `jax.lax.Precision` of the convolutions (None: XLA's default,
      which on accelerators is TF32 or bfloat16 passes for float32). `VGG19`
      and `make_model()` set HIGHEST.
  """

  stage_sizes: Sequence[int]
  widths: Sequence[int] = VGG_WIDTHS
  pooling: str = 'max'
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, layers: Sequence[str] | None = None) -> dict[str, jax.Array]:
    """Runs the network up to the deepest requested layer.

    Args:
      x: [N, H, W, 3] image already in the weights' input convention (see
        `nst_jax.core.pixels.preprocess`).
      layers: names to return, e.g. `('relu4_2',)`, or one name; None returns
        every layer (and is what `init` uses, so that all parameters are created).

    Returns:
      Dict from each requested name to its activation, [N, h, w, c] in `dtype`.
    """
    if self.pooling not in POOLING_MODES:
      raise errors.ConfigError(f'pooling must be one of {POOLING_MODES}, got {self.pooling!r}')
    all_names = layer_names(self.stage_sizes)
    # One name is one layer, not its letters ('relu4_2' as r, e, l, u, ...).
    wanted = (
      all_names if layers is None else (layers,) if isinstance(layers, str) else tuple(layers)
    )

    first = all_names[0]
    features = {}
    for name in layers_through(wanted, self.stage_sizes):
      kind = name[:4]
      if kind == 'conv':
        stage = stage_of(name)
        dtype = jnp.float32 if name == first else self.dtype
        x = Conv3x3(self.widths[stage - 1], dtype=dtype, precision=self.precision, name=name)(
          x.astype(dtype)
        )
        x = x.astype(self.dtype)
      elif kind == 'relu':
        x = nn.relu(x)
      else:
        x = pooling.pool(x, self.pooling)
      if name in wanted:
        features[name] = x
    return features


# At HIGHEST precision, as `nst_jax.make_model()` builds it: None (the generic
# VGG's default) would run float32 convolutions as TF32 on a GPU.
VGG19 = functools.partial(VGG, stage_sizes=VGG19_STAGE_SIZES, precision=PRECISIONS['highest'])
