"""`extract_features`: named VGG-19 activations of RGB images, one call.

The convenience entry point for research code: it loads weights if given a
path, preprocesses with the convention stored in the weights, and runs the
network (VGG-19, or the `model=` the step and `make_targets` take) only as
deep as the deepest requested layer.
"""

from collections.abc import Mapping, Sequence
import functools
import os

import jax

from nst_jax import errors
from nst_jax.core import checks
from nst_jax.core import pixels
from nst_jax.core import step
from nst_jax.core import vgg
from nst_jax.io import weights as weights_lib


@functools.partial(jax.jit, static_argnames=('model', 'layers', 'convention'))
def _apply(params, rgb, *, model, layers, convention):
  return model.apply({'params': params}, pixels.preprocess(rgb, convention), layers)


def extract_features(
  weights: 'weights_lib.Weights | Mapping | str | os.PathLike | None',
  image: jax.typing.ArrayLike,
  layers: Sequence[str] | str | None,
  *,
  model: vgg.VGG | None = None,
  pooling: str | None = None,
  dtype: str | None = None,
  convention: pixels.InputConvention | str | None = None,
) -> dict[str, jax.Array]:
  """VGG-19 (or `model`'s) activations of RGB images.

  Example:
    >>> feats = extract_features('weights/vgg19.npz', rgb, ['relu4_2'])
    >>> feats['relu4_2'].shape  # rgb: [512, 384, 3] -> [64, 48, 512]

  Args:
    weights: loaded Weights, a converted .npz path, None (default location,
      downloaded on first use), or a params dict (`weights.params`, raw or
      `prepare_params`'d, as the step takes it) with `convention`.
    image: RGB in [0, 1], [H, W, 3] or [N, H, W, 3], numpy or jax
      (`nst_jax.core.pixels.as_rgb`'s rule: uint8 is divided by 255; the
      [0, 1] range is checked only outside a jax trace, as values under
      `jax.jit` cannot be read).
    layers: names such as 'relu4_2', 'conv1_1', 'pool3', or one name; None:
      every layer of the model.
    model: the network, as `make_targets` and the step take it (`make_model`,
      or `nst_jax.VGGTiny()` for `random_scaled_params` of that shape);
      None: `make_model(pooling=pooling, dtype=dtype)`.
    pooling: 'max' (default) or 'avg'; not with `model`, which has its own.
    dtype: compute dtype, 'float32' (default) or 'bfloat16'; not with `model`.
    convention: the input convention of a params dict
      (`weights.info.input_convention`, or its name); Weights carry their own
      (another given with them is refused).

  Returns:
    Dict from each name to its activation, with the input's leading
    dimensions: [h, w, c] for an [H, W, 3] input, else [N, h, w, c]; its
    keys in network order (conv1_1, relu1_1, conv1_2, ...), as `model.apply`.
  """
  if hasattr(weights, 'shape'):  # extract_features(rgb, weights, ...): "expected str ... ndarray"
    raise errors.ArgumentError(
      f'extract_features got an array of shape {tuple(weights.shape)} as weights; the order is '
      'extract_features(weights, image, layers)'
    )
  if model is None:
    model = step.make_model(pooling or 'max', dtype=dtype or 'float32')
  elif pooling is not None or dtype is not None:
    raise errors.ConfigError(
      'extract_features got model= and pooling= or dtype=, which the model has already; give '
      'one: model=nst_jax.make_model(pooling=..., dtype=...)'
    )
  if isinstance(weights, Mapping):
    if convention is None:
      raise errors.ConfigError(
        'extract_features got a params dict, which does not say its input convention; '
        'pass the Weights (nst_jax.get_weights()) or convention=weights.info.input_convention'
      )
    params, convention = weights, pixels.as_convention(convention)
  else:
    w = weights_lib.as_weights(weights)
    params = w.params
    if convention is not None and pixels.as_convention(convention) != w.info.input_convention:
      raise errors.ConfigError(
        f'extract_features got convention={pixels.as_convention(convention).name!r} with '
        f'weights whose convention is {w.info.input_convention.name!r}; drop convention= (the '
        'Weights carry theirs), or pass weights.params with convention='
      )
    convention = w.info.input_convention
  if layers is None:  # as model.apply: every layer
    layers = vgg.layer_names(model.stage_sizes)
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  if not layers:
    raise errors.ConfigError(
      "extract_features got no layers; name some, e.g. 'relu4_2' or ('relu1_1', 'relu2_1'), or "
      'pass None for every layer'
    )
  vgg.check_layers(layers, model.stage_sizes)
  checks.params_fit(params, model, layers)
  x = pixels.as_rgb(image, 'image')
  # The network would return empty maps: 2x2 poolings halve the size.
  checks.image_size(x, layers, model, 'image')
  batched = x if x.ndim == 4 else x[None]
  feats = _apply(params, batched, model=model, layers=layers, convention=convention)
  # In network order, as model.apply gives them (jit returns a dict's keys sorted).
  order = [name for name in vgg.layer_names(model.stage_sizes) if name in feats]
  return {k: feats[k] if x.ndim == 4 else feats[k][0] for k in order}
