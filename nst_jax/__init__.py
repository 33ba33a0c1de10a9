"""nst-jax: Gatys et al. neural style transfer in JAX.

Public API:
  StyleConfig and its groups  frozen settings (nst_jax.config): InputConfig,
                              ModelConfig, LossConfig, OptimConfig,
                              ScheduleConfig, ColorConfig, SaveConfig, RunConfig,
                              VideoConfig
  stylize, run                arrays -> array, and files -> file
  make_step, Step              the jitted, donated step (what the engine runs)
  update_step, StyleState, LossSpec, Targets, make_targets, init_state,
  initial_image, make_optimizer, make_model, objective, network_features,
  prepare_params
                              the pure, jittable step and its pieces
                              (nst_jax.core.step, nst_jax.core.objective)
  preprocess, deprocess       RGB in [0, 1] <-> the network's input space
  load_weights, get_weights, Weights, WeightsInfo
  extract_features            named VGG-19 activations of RGB images
  gram_matrix, content_loss, style_loss, tv_loss
  VGG, VGG19                  the Flax module (VGG19() is make_model(): Precision.HIGHEST;
                              VGG's precision None is the backend's default, TF32 on GPU)
  random_scaled_params, VGGTiny, targets_at
                              for experiments: RANDOM weights at the real
                              activation scale, a tiny network, one image's
                              targets (nst_jax.core.experiments)
  NstError                    user errors (one-line messages)

The package is layered (docs/architecture.md): core (pure), io (files),
engine (the loop), runs (the runner and its adapters), cli (flags), with
config (the settings) between core and the rest.
"""

# Before anything can start JAX's CPU backend (XLA reads XLA_FLAGS when it
# creates the backend): see nst_jax/xla_flags.py.
from nst_jax import xla_flags  # noqa: F401, I001

from nst_jax.config import ColorConfig
from nst_jax.config import InputConfig
from nst_jax.config import LossConfig
from nst_jax.config import ModelConfig
from nst_jax.config import OptimConfig
from nst_jax.config import RunConfig
from nst_jax.config import SaveConfig
from nst_jax.config import ScheduleConfig
from nst_jax.config import StyleConfig
from nst_jax.config import VideoConfig
from nst_jax.core.step import StyleState
from nst_jax.core.objective import LossSpec
from nst_jax.core.objective import Targets
from nst_jax.core.step import init_state
from nst_jax.core.step import initial_image
from nst_jax.core.step import make_model
from nst_jax.core.step import make_optimizer
from nst_jax.core.step import make_step
from nst_jax.core.experiments import VGGTiny
from nst_jax.core.experiments import random_scaled_params
from nst_jax.core.experiments import targets_at
from nst_jax.core.step import Step
from nst_jax.core.objective import make_targets
from nst_jax.core.objective import network_features
from nst_jax.core.objective import objective
from nst_jax.core.step import prepare_params
from nst_jax.core.step import update_step
from nst_jax.errors import NstError
from nst_jax import deprecated
from nst_jax.runs.features import extract_features
from nst_jax.core.pixels import deprocess
from nst_jax.core.pixels import preprocess
from nst_jax.core.losses import content_loss
from nst_jax.core.statistics import gram_matrix
from nst_jax.core.losses import style_loss
from nst_jax.core.losses import tv_loss
from nst_jax.runs.runner import run
from nst_jax.runs.arrays import stylize
from nst_jax.core.vgg import VGG
from nst_jax.core.vgg import VGG19
from nst_jax.io.weights import Weights
from nst_jax.io.weights import WeightsInfo
from nst_jax.io.weights import get_weights
from nst_jax.io.weights import load_weights

__all__ = [
  'ColorConfig',
  'InputConfig',
  'LossSpec',
  'LossConfig',
  'ModelConfig',
  'NstError',
  'OptimConfig',
  'RunConfig',
  'SaveConfig',
  'ScheduleConfig',
  'StyleConfig',
  'Step',
  'StyleState',
  'Targets',
  'VGG',
  'VGG19',
  'VGGTiny',
  'VideoConfig',
  'Weights',
  'WeightsInfo',
  'content_loss',
  'deprocess',
  'extract_features',
  'get_weights',
  'gram_matrix',
  'init_state',
  'initial_image',
  'load_weights',
  'make_model',
  'make_optimizer',
  'make_step',
  'make_targets',
  'network_features',
  'objective',
  'prepare_params',
  'random_scaled_params',
  'preprocess',
  'run',
  'style_loss',
  'stylize',
  'targets_at',
  'tv_loss',
  'update_step',
]

__version__ = '0.3.0'

deprecated.install_old_module_paths()
