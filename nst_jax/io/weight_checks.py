"""Checks that a set of VGG-19 arrays can be used: names, shapes and values.

Every weights file, whatever its format, is checked here twice: when it is
converted and whenever the converted .npz is loaded. A damaged or foreign
file is refused with one line naming the tensor, not found out later as a
non-finite loss ("lower the weights") or a wrong picture.
"""

from collections.abc import Mapping
import functools
import hashlib
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import vgg


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


def check_values(flat: Mapping[str, np.ndarray], source: str, *, fix: str) -> None:
  """Raises WeightsError naming the first tensor that is not all finite numbers.

  A NaN or an infinity in any weight makes every loss non-finite, which a
  run could only report as "lower the weights"; here the tensor is named.

  Args:
    flat: `conv1_1/kernel` etc. -> array, in any numeric dtype.
    source: the file they came from, for the message.
    fix: what the user should do, the message's end.
  """
  bad = []
  for key in sorted(flat):
    array = np.asarray(flat[key])
    if array.dtype.kind not in 'fiu':
      raise errors.WeightsError(f'{source}: {key} holds {array.dtype} values, not numbers; {fix}')
    # The common case, all finite, costs one pass over the arrays.
    if array.dtype.kind == 'f' and not np.isfinite(array).all():
      bad.append((key, int(np.isnan(array).sum()), int(np.isinf(array).sum())))
  if not bad:
    return
  key, nans, infs = bad[0]
  counts = ' and '.join(f'{n} {what}' for n, what in ((nans, 'NaN'), (infs, 'infinite')) if n)
  values = 'value' if nans + infs == 1 else 'values'
  more = ''
  if len(bad) == 2:
    more = ', as does 1 other tensor'
  elif len(bad) > 2:
    more = f', as do {len(bad) - 1} other tensors'
  raise errors.WeightsError(f'{source}: {key} holds {counts} {values}{more}; {fix}')


def params_digest(flat: Mapping[str, np.ndarray]) -> str:
  """SHA-256 over every array's name, shape and float32 bytes, in key order."""
  digest = hashlib.sha256()
  for key in sorted(flat):
    array = np.ascontiguousarray(flat[key], np.float32)
    digest.update(f'{key}{array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str = 'sha256') -> str:
  """Hex digest of a file, read in 1 MiB chunks."""
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def keras_dataset(group, weight: str, key: str, *, source: str, fix: str) -> np.ndarray:
  """Reads the dataset a Keras layer's `weight_names` lists, if it fits the model's `key`.

  Args:
    group: the layer's h5py group.
    weight: one name from its `weight_names` (a path below the group).
    key: the model's name for it, `conv1_1/kernel` etc.
    source: the file, for the message.
    fix: what the user should do, the message's end.
  """
  import h5py  # pylint: disable=g-import-not-at-top  # only Keras files need it

  where = f'{group.name.lstrip("/")}/{weight}'
  want = expected_shapes()[key]
  data = group[weight] if weight in group else None
  if data is None:
    problem = f'{where}, listed in weight_names, is missing'
  elif not isinstance(data, h5py.Dataset):
    problem = f'{where}, listed in weight_names, is not a dataset'
  elif data.dtype.kind != 'f':
    problem = f'{where} holds {data.dtype} values, not floats'
  elif data.shape != want:
    problem = f'{where} has shape {data.shape}, expected {want} for {key}'
  else:
    return np.asarray(data)
  raise errors.WeightsError(f'{source}: {problem}; {fix}')


def path_argument(path, given_as: str):
  """`path` if it is None or a non-empty path, else an ArgumentError naming `given_as`.

  Trial 23: weights=7 got Python's "expected str, bytes or os.PathLike object".
  """
  if path is None or (isinstance(path, str | os.PathLike) and os.fspath(path)):
    return path
  what = 'loaded Weights or ' if given_as == 'weights=' else ''  # stylize's takes both
  raise errors.ArgumentError(
    f'{given_as.rstrip("=")} must be {what}the path of a converted .npz, got '
    f'{type(path).__name__} {path!r}; pass a path, or None for the default'
  )


def vgg19_sized(params: dict, owner: str) -> None:
  """Refuses params of another network where VGG-19 runs (`owner`: who runs it, e.g. stylize,
  which takes no model=: VGGTiny's params were told to pass one, trial 58)."""
  kernel = params.get('conv1_1', {}).get('kernel')
  want = expected_shapes()['conv1_1/kernel']
  if kernel is not None and tuple(np.shape(kernel)) != want:
    raise errors.ConfigError(
      f"weights' conv1_1 kernel is {tuple(np.shape(kernel))}, not VGG-19's {want}: {owner} runs "
      'VGG-19; pass its weights (nst_jax.Weights.from_params(nst_jax.random_scaled_params(seed), '
      "'caffe') for random ones), or run another model with nst_jax.make_step"
    )
