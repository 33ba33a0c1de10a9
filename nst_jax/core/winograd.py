"""Winograd F(2x2, 3x3) convolution: the deep VGG layers in 4/9 of the multiplies.

A 3x3 convolution (stride 1, padding 1) computed on 4x4 input tiles taken
every 2 pixels, each giving a 2x2 output tile (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", CVPR 2016, section 4.1):

  Y = A^T [ (G g G^T) * (B^T d B) ] A      per tile and channel pair,

with the sum over input channels inside the brackets. In the transformed
domain the 16 tile positions are 16 independent [tiles, Cin] x [Cin, Cout]
matrix products, 16 multiplies per 2x2 outputs instead of 36. The kernel
transform U = G g G^T is done once per run (`transform_kernel`).

Why: on CPU, XLA's direct convolution runs the deep layers (256-512
channels) at 150-175 GFLOP/s on a 2-core AMD EPYC Zen 4, and these 16
products run at about the same rate, so a 512-channel layer at 24x32 took
half the time (docs/benchmarks.md). With 64-128 channels the transforms
(memory-bound) cost more than they save, so `worthwhile` keeps those direct.

Accuracy: the transforms only add, subtract and halve, so in float32 the
result differs from the direct convolution by rounding alone (relative
1e-6 in the tests), as cuDNN's Winograd kernels do. bfloat16 convolutions
stay direct.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Lavin & Gray 2016, F(2x2, 3x3): input transform B^T, kernel transform G,
# output transform A^T. B^T and A^T are applied as the adds and subtracts
# they amount to (`_tile_transform`, `_output_transform`; tested against
# these matrices): as matrix products they would be 4-wide contractions.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)

# When a layer is worth it, measured in the whole VGG-19 value-and-gradient
# on a 2-core AMD EPYC Zen 4 (docs/benchmarks.md): with Winograd for the
# 256- and 512-channel layers on maps up to 192x256 (conv3_2 onward of a
# 1024x768 image), 0.76x the direct time at 1024x768; capping it at 48x64
# maps gave 0.99x, at 96x128 0.86-0.91x. Not measured beyond 192x256, where
# the transformed tiles (4x the input) would also raise peak memory.
# 128-channel layers gave no clear gain at 256x192 (one run each way).
# Below 24x32 maps a layer saves 3 ms or less per iteration while the extra
# operations cost compile time (VGG-19's gradient compiled in 1.9 s instead
# of 0.6 s with Winograd on every deep layer): those stay direct.
MIN_CHANNELS = 256
MIN_PIXELS = 24 * 32
MAX_PIXELS = 192 * 256


def worthwhile(height: int, width: int, cin: int, cout: int, dtype) -> bool:
  """Whether a [height, width] map with cin -> cout channels should use Winograd."""
  return (
    jnp.dtype(dtype) == jnp.float32
    and min(cin, cout) >= MIN_CHANNELS
    and MIN_PIXELS <= height * width <= MAX_PIXELS
  )


@jax.jit  # once per run and layer; compiled, not dispatched op by op
def transform_kernel(kernel: jax.Array) -> jax.Array:
  """U = G g G^T for every channel pair: [3, 3, Cin, Cout] -> [16, Cin, Cout].

  The 16 rows are the 4x4 tile positions in row-major order.
  """
  u = jnp.einsum(
    'ai,ijco,bj->abco', G, kernel, G, precision=jax.lax.Precision.HIGHEST
  )  # fmt: skip
  return u.reshape(16, *kernel.shape[2:])


def _tile_transform(x: jax.Array, axis: int) -> list[jax.Array]:
  """B^T along one axis of a padded map: 2n+2 -> 4 arrays of n.

  Tile i covers rows 2i..2i+3 = E[i], O[i], E[i+1], O[i+1] (even and odd rows),
  and B^T's rows give d0-d2, d1+d2, d2-d1, d1-d3.
  """
  shape = x.shape
  n1 = shape[axis] // 2
  pairs = x.reshape(shape[:axis] + (n1, 2) + shape[axis + 1 :])
  even = jax.lax.index_in_dim(pairs, 0, axis + 1, keepdims=False)
  odd = jax.lax.index_in_dim(pairs, 1, axis + 1, keepdims=False)
  e0, e1 = (jax.lax.slice_in_dim(even, lo, lo + n1 - 1, axis=axis) for lo in (0, 1))
  o0, o1 = (jax.lax.slice_in_dim(odd, lo, lo + n1 - 1, axis=axis) for lo in (0, 1))
  return [e0 - e1, o0 + e1, e1 - o0, o0 - o1]


def _output_transform(m: jax.Array, axis: int) -> list[jax.Array]:
  """A^T along one axis of size 4: m0+m1+m2, m1-m2-m3."""
  m0, m1, m2, m3 = (jax.lax.index_in_dim(m, i, axis, keepdims=False) for i in range(4))
  return [m0 + m1 + m2, m1 - m2 - m3]


def conv3x3(x: jax.Array, u: jax.Array, precision=None) -> jax.Array:
  """3x3 convolution, stride 1, padding 1, from a transformed kernel.

  Args:
    x: [N, H, W, Cin] (any H, W >= 1; odd sizes are padded to whole tiles).
    u: [16, Cin, Cout], `transform_kernel` of a [3, 3, Cin, Cout] kernel.
    precision: `jax.lax.Precision` of the 16 matrix products.

  Returns:
    [N, H, W, Cout], equal to `lax.conv_general_dilated(x, kernel, (1, 1),
    ((1, 1), (1, 1)))` in NHWC/HWIO up to rounding.
  """
  n, h, w, cin = x.shape
  th, tw = (h + 1) // 2, (w + 1) // 2
  # One pixel of zero padding on each side, then up to whole 4x4 tiles.
  xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  # B^T along rows, then along columns: [4, 4, N, th, tw, Cin] as [16, ...].
  rows = jnp.stack(_tile_transform(xp, 1))
  v = jnp.stack(_tile_transform(rows, 3), 1).reshape(16, n, th, tw, cin)
  m = jnp.einsum('tnhwc,tco->tnhwo', v, u, precision=precision)
  m = m.reshape(4, 4, n, th, tw, -1)
  out = [_output_transform(r, 0) for r in _output_transform(m, 0)]
  # out[i][j]: output pixel (2y+i, 2x+j) of each tile -> [N, 2th, 2tw, Cout].
  y = jnp.stack([jnp.stack(out[0], 3), jnp.stack(out[1], 3)], 2)
  return y.reshape(n, 2 * th, 2 * tw, -1)[:, :h, :w]
