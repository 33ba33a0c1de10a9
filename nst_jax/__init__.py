"""nst-jax: Gatys et al. neural style transfer in JAX.

Public API:
  load_weights, get_weights, Weights, WeightsInfo
  extract_features            named VGG-19 activations of RGB images
  VGG, VGG19                  the Flax module
  NstError                    user errors (one-line messages)
"""

from nst_jax.errors import NstError
from nst_jax.features import extract_features
from nst_jax.vgg import VGG
from nst_jax.vgg import VGG19
from nst_jax.weights import Weights
from nst_jax.weights import WeightsInfo
from nst_jax.weights import get_weights
from nst_jax.weights import load_weights

__all__ = [
    'NstError',
    'VGG',
    'VGG19',
    'Weights',
    'WeightsInfo',
    'extract_features',
    'get_weights',
    'load_weights',
]

__version__ = '0.1.0'
