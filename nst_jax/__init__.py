"""nst-jax: Gatys et al. neural style transfer in JAX.

Public API:
  StyleConfig, LossConfig     frozen settings (nst_jax.config)
  stylize, run                arrays -> array, and files -> file (nst_jax.stylize)
  update_step, StyleState, Targets, make_targets, init_state, make_optimizer,
  make_model, objective       the jittable step and its pieces
  load_weights, get_weights, Weights, WeightsInfo
  extract_features            named VGG-19 activations of RGB images
  gram_matrix, content_loss, style_loss
  VGG, VGG19                  the Flax module
  NstError                    user errors (one-line messages)
"""

# Before anything can start JAX's CPU backend (XLA reads XLA_FLAGS when it
# creates the backend): see nst_jax/_xla_flags.py.
from nst_jax import _xla_flags  # noqa: F401, I001

from nst_jax.config import LossConfig
from nst_jax.config import StyleConfig
from nst_jax.errors import NstError
from nst_jax.features import extract_features
from nst_jax.losses import content_loss
from nst_jax.losses import gram_matrix
from nst_jax.losses import style_loss
from nst_jax.stylize import StyleState
from nst_jax.stylize import Targets
from nst_jax.stylize import init_state
from nst_jax.stylize import make_model
from nst_jax.stylize import make_optimizer
from nst_jax.stylize import make_targets
from nst_jax.stylize import objective
from nst_jax.stylize import run
from nst_jax.stylize import stylize
from nst_jax.stylize import update_step
from nst_jax.vgg import VGG
from nst_jax.vgg import VGG19
from nst_jax.weights import Weights
from nst_jax.weights import WeightsInfo
from nst_jax.weights import get_weights
from nst_jax.weights import load_weights

__all__ = [
  'LossConfig',
  'NstError',
  'StyleConfig',
  'StyleState',
  'Targets',
  'VGG',
  'VGG19',
  'Weights',
  'WeightsInfo',
  'content_loss',
  'extract_features',
  'get_weights',
  'gram_matrix',
  'init_state',
  'load_weights',
  'make_model',
  'make_optimizer',
  'make_targets',
  'objective',
  'run',
  'style_loss',
  'stylize',
  'update_step',
]

__version__ = '0.1.0'
