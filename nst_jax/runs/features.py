"""`extract_features`: named VGG-19 activations of RGB images, one call.

The convenience entry point for research code: it loads weights if given a
path, preprocesses with the convention stored in the weights, and runs the
network only as deep as the deepest requested layer.
"""

from collections.abc import Mapping, Sequence
import functools
import os

import jax

from nst_jax import errors
from nst_jax.core import pixels
from nst_jax.core import vgg
from nst_jax.io import weights as weights_lib


@functools.partial(jax.jit, static_argnames=('model', 'layers', 'convention'))
def _apply(params, rgb, *, model, layers, convention):
  return model.apply({'params': params}, pixels.preprocess(rgb, convention), layers)


def extract_features(
  weights: 'weights_lib.Weights | Mapping | str | os.PathLike | None',
  image: jax.typing.ArrayLike,
  layers: Sequence[str] | str,
  *,
  pooling: str = 'max',
  dtype: str = 'float32',
  convention: pixels.InputConvention | None = None,
) -> dict[str, jax.Array]:
  """VGG-19 activations of RGB images.

  Example:
    >>> feats = extract_features('weights/vgg19.npz', rgb, ['relu4_2'])
    >>> feats['relu4_2'].shape  # rgb: [512, 384, 3] -> [64, 48, 512]

  Args:
    weights: loaded Weights, a converted .npz path, None (default location,
      downloaded on first use), or a params dict (`weights.params`, raw or
      `prepare_params`'d, as the step takes it) with `convention`.
    image: RGB in [0, 1], [H, W, 3] or [N, H, W, 3], numpy or jax
      (`nst_jax.core.pixels.as_rgb`'s rule: uint8 is divided by 255).
    layers: names such as 'relu4_2', 'conv1_1', 'pool3', or one name.
    pooling: 'max' or 'avg'.
    dtype: compute dtype, 'float32' or 'bfloat16'.
    convention: the input convention of a params dict
      (`weights.info.input_convention`); Weights carry their own.

  Returns:
    Dict from each name to its activation, with the input's leading
    dimensions: [h, w, c] for an [H, W, 3] input, else [N, h, w, c].
  """
  if isinstance(weights, Mapping):
    if convention is None:
      raise ValueError(
        'extract_features got a params dict, which does not say its input convention; '
        'pass the Weights (nst_jax.get_weights()) or convention=weights.info.input_convention'
      )
    params = weights
  else:
    w = weights_lib.as_weights(weights)
    params, convention = w.params, w.info.input_convention
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  vgg.check_layers(layers)
  x = pixels.as_rgb(image, 'image')
  need = vgg.min_input_size(layers)
  if min(x.shape[-3:-1]) < need:
    # The network would return empty maps: 2x2 poolings halve the size.
    raise errors.ConfigError(
      f'image is {x.shape[-2]}x{x.shape[-3]} px, but {vgg.layers_through(layers)[-1]} needs at '
      f'least {need} px on each side; give a larger image or shallower layers'
    )
  batched = x if x.ndim == 4 else x[None]
  model = vgg.VGG19(pooling=pooling, dtype=vgg.COMPUTE_DTYPES[dtype])
  feats = _apply(params, batched, model=model, layers=layers, convention=convention)
  return feats if x.ndim == 4 else {k: v[0] for k, v in feats.items()}
