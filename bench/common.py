"""Shared by the bench scripts (run as `python bench/NAME.py`, so importable as `common`)."""


def params_or_random(model):
  """The weights to time with: weights/vgg19.npz if present, else random ones of the same shapes.

  Returns:
    (params, label, input convention); the label says RANDOM when they are,
    so that no figure made with them passes for one made with the real weights.
  """
  import jax
  import jax.numpy as jnp

  from nst_jax import image as image_lib
  from nst_jax import weights as weights_lib

  if weights_lib.DEFAULT_WEIGHTS_PATH.exists():
    w = weights_lib.load_weights()
    return w.params, w.info.source, w.info.input_convention
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  return params, 'RANDOM weights (no weights/vgg19.npz)', image_lib.CAFFE
