"""`extract_features`: named VGG-19 activations of RGB images, one call.

The convenience entry point for research code: it loads weights if given a
path, preprocesses with the convention stored in the weights, and runs the
network only as deep as the deepest requested layer.
"""

from collections.abc import Sequence
import functools
import os

import jax
import jax.numpy as jnp

from nst_jax.core import pixels
from nst_jax.core import vgg
from nst_jax.io import weights as weights_lib


@functools.partial(jax.jit, static_argnames=('model', 'layers', 'convention'))
def _apply(params, rgb, *, model, layers, convention):
  return model.apply({'params': params}, pixels.preprocess(rgb, convention), layers)


def extract_features(
  weights: 'weights_lib.Weights | str | os.PathLike | None',
  image: jax.typing.ArrayLike,
  layers: Sequence[str],
  *,
  pooling: str = 'max',
  dtype: str = 'float32',
) -> dict[str, jax.Array]:
  """VGG-19 activations of RGB images.

  Example:
    >>> feats = extract_features('weights/vgg19.npz', rgb, ['relu4_2'])
    >>> feats['relu4_2'].shape  # rgb: [512, 384, 3] -> [64, 48, 512]

  Args:
    weights: loaded Weights, a converted .npz path, or None (default location,
      downloaded on first use).
    image: RGB in [0, 1], [H, W, 3] or [N, H, W, 3], numpy or jax.
    layers: names such as 'relu4_2', 'conv1_1', 'pool3'.
    pooling: 'max' or 'avg'.
    dtype: compute dtype, 'float32' or 'bfloat16'.

  Returns:
    Dict from each name to its activation, with the input's leading
    dimensions: [h, w, c] for an [H, W, 3] input, else [N, h, w, c].
  """
  w = weights_lib.as_weights(weights)
  layers = tuple(layers)
  vgg.check_layers(layers)
  x = jnp.asarray(image, jnp.float32)
  if x.ndim not in (3, 4) or x.shape[-1] != 3:
    raise ValueError(f'image must be [H, W, 3] or [N, H, W, 3] RGB, got {x.shape}')
  batched = x if x.ndim == 4 else x[None]
  model = vgg.VGG19(pooling=pooling, dtype=vgg.COMPUTE_DTYPES[dtype])
  feats = _apply(w.params, batched, model=model, layers=layers, convention=w.info.input_convention)
  return feats if x.ndim == 4 else {k: v[0] for k, v in feats.items()}
