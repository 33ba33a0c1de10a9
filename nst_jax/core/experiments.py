"""For experiments: RANDOM weights at the real activation scale, a tiny network, targets_at.

Nothing here is the published VGG-19: `random_scaled_params` draws random
kernels (never a stand-in for the real weights' features, only for their
scale), and `VGGTiny` is a two-stage network for fast tests of a loop.
"""

from collections.abc import Sequence
import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import checks
from nst_jax.core import objective as objective_lib
from nst_jax.core import pixels
from nst_jax.core import vgg

# A two-stage VGG (conv1_1; conv2_1, conv2_2) with 4 and 8 channels: layer
# names are VGG-19's, so LossSpec(content_layers=('relu2_2',),
# style_layers=('relu1_1', 'relu2_1')) works on it.
VGGTiny = functools.partial(vgg.VGG, stage_sizes=(1, 2), widths=(4, 8))
# Kernels drawn again for a layer whose every ReLU output is zero on the
# probe (no scale to match: 0 / 0). Each draw of a layer with C >= 1 output
# channels dies with probability at most about 1/2 (one channel, one
# position), so 30 draws all dying is a 1e-9 event, not a network shape.
MAX_DRAWS = 30


def as_seed(seed: Any, name: str = 'seed') -> Any:
  """`seed` as an int from 0 to 2**63 - 1 (a traced integer passes), or a ConfigError naming `name`.

  `name` is the seed as its caller set it: 'seed', or a config's 'inputs.seed'.
  """
  if isinstance(seed, jax.core.Tracer) and jnp.issubdtype(seed.dtype, jnp.integer):
    return seed
  try:  # an int, a numpy or a concrete jax integer; not a key, a float or a bool
    number = None if isinstance(seed, (bool, np.bool_)) else operator.index(seed)
  except TypeError:
    number = None
  if number is None or number < 0:
    shown = repr(seed) if isinstance(seed, (int, float, str, type(None))) else type(seed).__name__
    fix = '; pass an int seed, e.g. 0 (not a jax.random key)' if isinstance(seed, jax.Array) else ''
    raise errors.ConfigError(f'{name} must be an integer >= 0, got {shown}{fix}')
  if number >= 2**63:  # jax.random.key takes a C long: an OverflowError naming no argument
    raise errors.ConfigError(f'{name} must be below 2**63 (a JAX key holds 64 bits), got {number}')
  return number


def random_scaled_params(
  seed: int = 0,
  *,
  probe: jax.typing.ArrayLike | None = None,
  stage_sizes: Sequence[int] = vgg.VGG19_STAGE_SIZES,
  widths: Sequence[int] = vgg.VGG_WIDTHS,
) -> dict:
  """RANDOM VGG weights whose activations have the real network's scale (LSUV).

  He-normal kernels and zero biases, then each convolution multiplied by
  one scalar so that its post-ReLU RMS on `probe` equals the RMS of the
  probe input itself: about 60-75 on Caffe-space photographs, the scale of
  the published VGG-19's activations (layer-sequential unit-variance
  scaling, Mishkin & Matas 2016, with the input's RMS as the target). With
  zero biases a ReLU network is positively homogeneous, so one scalar per
  layer sets its output RMS exactly. Losses, gradients and step sizes then
  have their real magnitudes, which is what optimiser experiments need; the
  features themselves are random, not VGG-19's. A layer whose every ReLU
  output is zero on the probe (likely only for a few channels on a small
  probe) has its kernel drawn again, so the weights are always finite.

  Args:
    seed: random seed of the kernels.
    probe: [1, H, W, 3] or [H, W, 3] Caffe-space input, not all zero
      (default: a seeded uniform RGB image, 64x64, preprocessed). The scale
      is matched on the probe only: on a photograph, weights scaled on the
      default probe give activations about 0.6x the input's RMS from relu2_1
      down; pass a photograph (the content) to match its scale.
    stage_sizes, widths: the network's shape (default VGG-19's).

  Returns:
    layer -> {'kernel': [3, 3, in, out], 'bias': [out]} float32, as
    `model.apply({'params': ...})` and the step take them.

  Raises:
    ConfigError: the shape is inconsistent, the probe has no scale (RMS 0),
      or a layer stays all zero on the probe after `MAX_DRAWS` draws.
  """
  if isinstance(seed, jax.core.Tracer) or isinstance(probe, jax.core.Tracer):  # trial 27
    raise errors.ConfigError(
      'random_scaled_params runs on the host (numpy draws, a measured scale): call it outside '
      'jax.jit and jax.vmap, in a Python loop over seeds'
    )
  seed = as_seed(seed)
  if len(stage_sizes) != len(widths):
    raise errors.ConfigError(
      f'stage_sizes has {len(stage_sizes)} stages and widths {len(widths)}; give one width per '
      'stage'
    )
  if probe is None:
    rgb = np.random.default_rng(seed).uniform(size=(1, 64, 64, 3)).astype(np.float32)
    probe = pixels.preprocess(rgb, pixels.CAFFE)
  if np.ndim(probe) == 3:
    probe = probe[None] if isinstance(probe, (np.ndarray, jax.Array)) else np.asarray(probe)[None]
  pixels.check_network_images(probe, 'probe')  # before the cast: uint8 is RGB, not network space
  x = jnp.asarray(probe, jnp.float32)
  target = jnp.sqrt(jnp.mean(jnp.square(x)))
  if not float(target) > 0:
    raise errors.ConfigError(
      'probe has RMS 0, so there is no scale to match; pass a photograph in network space '
      '(nst_jax.preprocess(rgb, convention)) or leave probe=None'
    )
  key = jax.random.key(seed)
  params, cin = {}, 3
  for stage, (n, width) in enumerate(zip(stage_sizes, widths, strict=True), start=1):
    for i in range(1, n + 1):
      key, sub = jax.random.split(key)
      name = f'conv{stage}_{i}'
      kernel, out, rms = _live_draw(sub, x, cin, width, name)
      scale = target / rms
      params[name] = {'kernel': kernel * scale, 'bias': jnp.zeros(width, jnp.float32)}
      x, cin = out * scale, width
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  return params


def _live_draw(key, x, cin: int, width: int, name: str):
  """A He-normal kernel whose ReLU output on `x` is not all zero, that output, and its RMS."""
  for attempt in range(MAX_DRAWS):
    # The first draw is `key`'s own, so seeds whose layers all live keep
    # the weights they always had.
    sub = key if attempt == 0 else jax.random.fold_in(key, attempt)
    # float32 whatever jax_enable_x64 says: a float64 kernel met the float32 probe in the conv.
    kernel = flat_normal(sub, (3, 3, cin, width)) * float(np.sqrt(2 / (9 * cin)))
    out = jax.nn.relu(_conv(x, kernel))
    rms = jnp.sqrt(jnp.mean(jnp.square(out)))
    if float(rms) > 0:
      return kernel, out, rms
  raise errors.ConfigError(
    f'{name} outputs only zeros on the probe in {MAX_DRAWS} draws of its kernel, so there is '
    'no scale to match; pass a larger probe (a photograph in network space) or more channels'
  )


def flat_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """`jax.random.normal(key, shape)` (float32), bitwise, drawn flat and reshaped.

  JAX numbers a draw's elements in row-major order whatever its shape (with
  `jax_threefry_partitionable` on or off), so the values are the same; a
  flat draw compiles in 0.3 s on a 2-core CPU where a rank-4 one took 0.7 s,
  and every new shape compiles anew.
  """
  return jax.random.normal(key, (math.prod(shape),), jnp.float32).reshape(shape)


def _conv(x, kernel):
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    precision=jax.lax.Precision.HIGHEST,
  )  # fmt: skip


def targets_at(
  targets: objective_lib.Targets, index: int, *, keep_batch: bool = True
) -> objective_lib.Targets:
  """One image's targets out of a batch's.

  Args:
    targets: batched `Targets` (leading [N] on every leaf).
    index: which image (a traced index under jit or vmap is taken modulo N,
      unchecked).
    keep_batch: True: leading [1] axes, for the step (`update_step`, a
      `make_step` Step); False: no batch axis, for `objective`.

  Raises:
    ConfigError: `index` outside -N..N-1 (negative counts from the end), or
      `keep_batch` not a bool, or
      targets without the batch axis (one image's already).
  """
  keep_batch = checks.flag(keep_batch, 'keep_batch')  # 'no' is truthy: a batch axis kept unasked
  if not np.shape(targets.content_weight):
    raise errors.ConfigError(
      "targets hold no batch axis (already one image's, as targets_at(..., keep_batch=False) "
      'gives them); use them as they are, or give targets_at the batched targets'
    )
  n = targets.content_weight.shape[0]
  dtype = getattr(index, 'dtype', None)  # a numpy or jax integer, concrete or traced
  whole = jnp.issubdtype(dtype, jnp.integer) if dtype is not None else type(index) is int
  if not whole or np.ndim(index) != 0:  # 1.0 was taken as image 1, True as image 1
    raise errors.ConfigError(
      f'index must be an integer (which image), got {index!r}; pass int(index) if you mean it'
    )
  if isinstance(index, jax.core.Tracer):  # under jit or vmap: no range check, as x[i] in JAX
    take = lambda x: jax.lax.dynamic_index_in_dim(x, index % n, keepdims=keep_batch)  # noqa: E731
    return jax.tree.map(take, targets)
  if not -n <= index < n:
    valid = '0 (or -1)' if n == 1 else f'0 to {n - 1} (or -{n} to -1 from the end)'
    raise errors.ConfigError(
      f'index {index} is out of range for targets of {n} image(s); give {valid}'
    )
  index = int(index) % n
  if keep_batch:
    return jax.tree.map(lambda x: x[index : index + 1], targets)
  return jax.tree.map(lambda x: x[index], targets)
