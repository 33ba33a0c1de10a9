"""Checks that a set of VGG-19 arrays fits the network: names and shapes.

Every weights file, whatever its format, is checked here twice: when it is
converted and whenever the converted .npz is loaded.
"""

from collections.abc import Mapping
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax import vgg


@functools.cache
def expected_shapes(
  stage_sizes=vgg.VGG19_STAGE_SIZES, widths=vgg.VGG_WIDTHS
) -> dict[str, tuple[int, ...]]:
  """Flat `layer/param` -> shape the model expects, from `jax.eval_shape`."""
  model = vgg.VGG(stage_sizes=stage_sizes, widths=widths)
  abstract = jax.eval_shape(
    model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  )
  flat = flax.traverse_util.flatten_dict(abstract['params'], sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


def check_params(flat: Mapping[str, np.ndarray], source: str, *, fix: str) -> None:
  """Raises WeightsError naming missing, unexpected and mis-shaped layers.

  Args:
    flat: `conv1_1/kernel` etc. -> array.
    source: the file they came from, for the message.
    fix: what the user should do, the message's end.
  """
  want = expected_shapes()
  missing = sorted(set(want) - set(flat))
  extra = sorted(set(flat) - set(want))
  wrong = [
    f'{k} has shape {tuple(flat[k].shape)}, expected {want[k]}'
    for k in want
    if k in flat and tuple(flat[k].shape) != want[k]
  ]
  problems = []
  if missing:
    problems.append('missing ' + ', '.join(missing))
  if extra:
    problems.append('unexpected ' + ', '.join(extra))
  problems += wrong
  if problems:
    raise errors.WeightsError(f'{source} does not fit VGG-19: {"; ".join(problems)}; {fix}')
