"""The run's settings: one frozen, hashable dataclass, validated on creation.

`main.py` builds a `StyleConfig` from its flags; library users build one
directly. Nothing in the library reads flags. All sequence fields are tuples,
so a config (and its `LossConfig` part) can be a static argument of `jax.jit`.
"""

import dataclasses
import math

from nst_jax import errors
from nst_jax import image as image_lib
from nst_jax import vgg

# Gatys et al. 2016, Sec. 3: content from conv4_2 (we take its ReLU, as the
# classic tools do), style from the first layer of each stage.
DEFAULT_CONTENT_LAYERS = ('relu4_2',)
DEFAULT_STYLE_LAYERS = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
OPTIMIZERS = ('lbfgs', 'adam')
INITS = ('content', 'random')
# Adam's default step in the network's input space. With the Caffe convention
# pixels span 0..255, and jcjohnson/neural-style uses 10 there.
DEFAULT_ADAM_LEARNING_RATE = 10.0
# L-BFGS history (optax's default). torch.optim.LBFGS, as the classic tools use
# it, keeps 100 pairs; measured here 100 reached the same loss per second
# (within 2%) but cost 8% more per iteration and 1.6 GB more memory at 512x512
# (README "Optimisers", bench/lbfgs_settings.py).
DEFAULT_LBFGS_MEMORY = 10
# A checkpoint at 1024x768 takes 1.0 s to save with L-BFGS (217 MB; Adam:
# 0.07 s, 28 MB), against 7.2 s per CPU iteration: every 100 iterations costs
# 0.14% and loses at most 12 minutes (README "Long runs and failures").
DEFAULT_CHECKPOINT_EVERY = 100


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise errors.ConfigError(message)


def _finite_nonnegative(name: str, value: float) -> None:
  _check(
    isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
    f'{name} must be a finite number >= 0, got {value!r}',
  )


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which layers the loss reads and how much each style layer counts.

  The content and style weights are not here: they are per-image arrays in
  `stylize.Targets`, so they can differ across a batch without recompiling.

  Attributes:
    content_layers: layers whose features are matched to the content image.
    style_layers: layers whose Grams are matched to the style image.
    style_layer_weights: w_l for each style layer, same length; None = all 1.
  """

  content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
  style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
  style_layer_weights: tuple[float, ...] | None = None

  def __post_init__(self):
    for field in ('content_layers', 'style_layers'):
      value = getattr(self, field)
      _check(isinstance(value, tuple), f'{field} must be a tuple, got {value!r}')
      _check(len(value) > 0, f'{field} must name at least one layer')
      vgg.check_layers(value)
    if self.style_layer_weights is not None:
      _check(
        len(self.style_layer_weights) == len(self.style_layers),
        f'style_layer_weights has {len(self.style_layer_weights)} values for '
        f'{len(self.style_layers)} style layers; give one per layer',
      )
      for w in self.style_layer_weights:
        _finite_nonnegative('each style layer weight', w)

  @property
  def layer_weights(self) -> dict[str, float]:
    """Style layer -> w_l."""
    weights = self.style_layer_weights or (1.0,) * len(self.style_layers)
    return dict(zip(self.style_layers, weights, strict=True))

  @property
  def feature_layers(self) -> tuple[str, ...]:
    """Every layer the loss needs, content first, without repeats."""
    return tuple(dict.fromkeys(self.content_layers + self.style_layers))


@dataclasses.dataclass(frozen=True)
class StyleConfig:
  """Everything one style transfer run needs.

  Attributes:
    content_path: content image file (used by `stylize.run`).
    style_path: style image file (used by `stylize.run`).
    output: result file; '' names one under output/ after the inputs.
    weights: converted weights (.npz); None = $NST_JAX_WEIGHTS or
      <project>/weights/vgg19.npz, downloaded on first use.
    iterations: optimiser iterations (one gradient evaluation each, see README).
    content_weight: cw in `cw * L_c + sw * L_s`.
    style_weight: sw in `cw * L_c + sw * L_s`.
    width: output width in pixels; the height keeps the content's aspect
      ratio. The style image is resized to the same width.
    loss: layers and per-layer style weights.
    optimizer: 'lbfgs' or 'adam'.
    learning_rate: Adam's step size in the network's input space (None: 10).
    lbfgs_memory: L-BFGS history length.
    init: 'content' (start from the content image) or 'random' (the mean
      pixel plus N(0, 0.001^2) noise in network space, as neural-style does).
    seed: seed of the random init.
    pooling: 'max' or 'avg'.
    dtype: compute dtype of the network, 'float32' or 'bfloat16'.
    print_iter: log every this many iterations (0: only the end).
    save_iter: save an intermediate image every this many iterations (0: off).
    max_image_pixels: input images larger than this (width x height) are
      refused, as decompression-bomb protection.
    checkpoint_every: save a checkpoint every this many iterations (0: only
      on SIGINT/SIGTERM and at the end).
    resume: continue from the output's checkpoint.
    keep_checkpoint: keep the checkpoint after the run finishes (to extend it
      later with resume and more iterations); by default it is deleted once
      the result is saved.
  """

  content_path: str = ''
  style_path: str = ''
  output: str = ''
  weights: str | None = None
  iterations: int = 1000
  content_weight: float = 100.0
  style_weight: float = 0.01
  width: int = 1024
  loss: LossConfig = LossConfig()
  optimizer: str = 'lbfgs'
  learning_rate: float | None = None
  lbfgs_memory: int = DEFAULT_LBFGS_MEMORY
  init: str = 'content'
  seed: int = 0
  pooling: str = 'max'
  dtype: str = 'float32'
  print_iter: int = 50
  save_iter: int = 0
  max_image_pixels: int = image_lib.DEFAULT_MAX_IMAGE_PIXELS
  checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
  resume: bool = False
  keep_checkpoint: bool = False

  def __post_init__(self):
    for name in ('iterations', 'width', 'lbfgs_memory', 'max_image_pixels'):
      value = getattr(self, name)
      _check(
        isinstance(value, int) and value > 0,
        f'{name} must be a positive integer, got {value!r}',
      )
    for name in ('print_iter', 'save_iter', 'checkpoint_every'):
      value = getattr(self, name)
      _check(
        isinstance(value, int) and value >= 0,
        f'{name} must be an integer >= 0, got {value!r}',
      )
    _finite_nonnegative('content_weight', self.content_weight)
    _finite_nonnegative('style_weight', self.style_weight)
    if self.learning_rate is not None:
      _check(
        math.isfinite(self.learning_rate) and self.learning_rate > 0,
        f'learning_rate must be a finite number > 0, got {self.learning_rate!r}',
      )
    _check(
      self.optimizer in OPTIMIZERS,
      f'optimizer must be one of {", ".join(OPTIMIZERS)}, got {self.optimizer!r}',
    )
    _check(
      self.init in INITS,
      f'init must be one of {", ".join(INITS)}, got {self.init!r}',
    )
    _check(
      self.pooling in vgg.POOLING_MODES,
      f'pooling must be one of {", ".join(vgg.POOLING_MODES)}, got {self.pooling!r}',
    )
    _check(
      self.dtype in vgg.COMPUTE_DTYPES,
      f'dtype must be one of {", ".join(vgg.COMPUTE_DTYPES)}, got {self.dtype!r}',
    )

  def replace(self, **changes) -> 'StyleConfig':
    return dataclasses.replace(self, **changes)
