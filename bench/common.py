"""Shared by the bench scripts (run as `python bench/NAME.py`, so importable as `common`)."""


def params_or_random(model):
  """The weights to time with: weights/vgg19.npz if present, else random ones of the same shapes.

  Returns:
    (params, label, input convention); the label says RANDOM when they are,
    so that no figure made with them passes for one made with the real weights.
  """
  import jax
  import jax.numpy as jnp

  from nst_jax.core import pixels
  from nst_jax.io import weights as weights_lib

  if weights_lib.DEFAULT_WEIGHTS_PATH.exists():
    w = weights_lib.load_weights()
    return w.params, w.info.source, w.info.input_convention
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  return params, 'RANDOM weights (no weights/vgg19.npz)', pixels.CAFFE


def weights_file_or_random(directory):
  """A weights .npz for runs of main.py: the real one, or generated random ones.

  Random weights are He-initialised with the real shapes and written through
  the real Keras layout and converter (tests/weight_files.py), into
  `directory`.

  Returns:
    (path, label); the label says RANDOM when they are.
  """
  from pathlib import Path
  import sys

  from nst_jax.io import weights as weights_lib

  if weights_lib.DEFAULT_WEIGHTS_PATH.exists():
    return weights_lib.DEFAULT_WEIGHTS_PATH, 'weights/vgg19.npz'
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))
  import weight_files

  h5 = Path(directory) / weights_lib.KERAS_FILENAME
  weight_files.write_keras_h5(h5, weight_files.random_params(seed=0))
  flat, info = weights_lib.convert(h5)
  npz = Path(directory) / 'vgg19.npz'
  weights_lib.save_npz(npz, flat, info)
  h5.unlink()
  return npz, 'RANDOM weights of the real shapes (no weights/vgg19.npz)'


def lsuv_weights_file(directory, *, seed: int = 0):
  """Random weights with the real network's activation scale, as a converted .npz.

  He-normal kernels, zero biases, each convolution rescaled so its post-ReLU
  RMS on a photograph equals the Caffe-space input's (tests/weight_files.py
  `lsuv_params`), written through the real Keras layout and converter. Every
  optimiser figure in docs/ was measured on these (or the real weights,
  when weights/vgg19.npz exists and --real is given to a bench).

  Returns:
    (path, label); the label says these are random weights.
  """
  from pathlib import Path
  import sys

  from nst_jax.io import weights as weights_lib

  sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))
  import weight_files

  npz = Path(directory) / f'vgg19_lsuv{seed}.npz'
  if not npz.exists():
    h5 = Path(directory) / weights_lib.KERAS_FILENAME
    weight_files.write_keras_h5(h5, weight_files.lsuv_params(seed=seed))
    flat, info = weights_lib.convert(h5)
    weights_lib.save_npz(npz, flat, info)
    h5.unlink()
  return npz, f'RANDOM LSUV-scaled weights (seed {seed}; real activation scale)'
