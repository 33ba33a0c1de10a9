"""What a run optimises: inputs, network, loss, optimiser, schedule, colours.

Frozen, hashable dataclasses validated on creation (nst_jax.config.checks);
collected by StyleConfig (nst_jax.config).
"""

import dataclasses
import os
import warnings

from nst_jax import errors
from nst_jax.config import checks
from nst_jax.core import checks as core_checks
from nst_jax.core import color
from nst_jax.core import experiments
from nst_jax.core import losses
from nst_jax.core import objective
from nst_jax.core import optim
from nst_jax.core import step
from nst_jax.core import tiles as tiles_lib
from nst_jax.core import vgg

DEFAULT_CONTENT_LAYERS = objective.DEFAULT_CONTENT_LAYERS
DEFAULT_STYLE_LAYERS = objective.DEFAULT_STYLE_LAYERS
OPTIMIZERS = optim.OPTIMIZERS
DEFAULT_ADAM_LEARNING_RATE = optim.DEFAULT_ADAM_LEARNING_RATE
# inputs.init keywords (the core's); any other value is an image file to start from.
INITS = step.INIT_KEYWORDS
# Gatys et al. 2017, Sec. 5: luminance-only transfer, colour histogram
# matching of the style to the content, and (the classic tools' option) the
# content's colours put back after the fact.
PRESERVE_COLORS = ('none', 'luminance', 'histogram', 'postprocess')
PROGRESS_MODES = ('auto', 'bar', 'log')
# How a run uses several devices (nst_jax.engine.sharding): a batch of jobs split
# over them, or each image's height split over them.
SHARD_MODES = ('jobs', 'spatial')
# Matmul and convolution precision of float32 computations on accelerators
# (jax.default_matmul_precision): 'highest' is true float32; 'default' lets
# XLA use TF32 on recent NVIDIA GPUs and one bfloat16 pass on TPUs. CPUs
# compute float32 either way.
PRECISIONS = ('highest', 'high', 'default')
DEFAULT_LBFGS_MEMORY = optim.DEFAULT_LBFGS_MEMORY
# Largest image (width x height) opened unless the caller raises the limit:
# Pillow's own default guard against decompression bombs (about 0.25 GB of
# 24-bit pixels).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# JPEG quality when none is given (for WebP, which is written lossless, the
# compression effort): Pillow's scale, 1-100. 95 keeps
# the fine texture style transfer produces (Pillow's own default is 75).
DEFAULT_QUALITY = 95
BIT_DEPTHS = (8, 16)
# A checkpoint at 1024x768 takes about 1 s to save with L-BFGS: every 100
# iterations costs a fraction of a percent (docs/long-runs.md).
DEFAULT_CHECKPOINT_EVERY = 100


@dataclasses.dataclass(frozen=True)
class InputConfig(checks.Group):
  """Which images, at what size, and where the optimisation starts.

  Attributes:
    content_path: content image file (used by `nst_jax.run`).
    style_path: style image file, or a tuple of them.
    style_blend_weights: one weight per style image, normalised to sum 1;
      None = equal. The style target is the blend of the styles' statistics
      (for Grams: sum_i b_i G_i, as jcjohnson/neural-style does).
    style_scale: each style image is resized to style_scale x the output
      width (at every scale of a multi-scale run).
    width: output width in pixels; the height keeps the content's aspect ratio.
    content_mask: grey image over the content: where the content loss
      applies (white: fully, black: not at all); '' = everywhere.
    style_masks: one grey image per style, over the content: where each
      style applies (guided Grams); () = every style everywhere, blended.
    init: 'content', 'random' (the mean pixel plus N(0, 0.001^2) noise, as
      neural-style does), 'gray' (uniform RGB 0.5), or an image file.
    seed: seed of the random init, an integer from 0 to 2**63 - 1 (numpy
      integers too), checked here as every field is.
    max_image_pixels: input images larger than this (width x height) are
      refused, as decompression-bomb protection.
  """

  content_path: str = ''
  style_path: str | tuple[str, ...] = ''
  style_blend_weights: tuple[float, ...] | None = None
  style_scale: float = 1.0
  width: int = 1024
  content_mask: str = ''
  style_masks: tuple[str, ...] = ()
  init: str = 'content'
  seed: int = 0
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

  def __post_init__(self):
    checks.plain_numbers(self)
    checks.positive_int('inputs.width', self.width)
    checks.positive_int('inputs.max_image_pixels', self.max_image_pixels)
    checks.finite_positive('inputs.style_scale', self.style_scale)
    # The rule of every seed (initial_image's, random_scaled_params'), now rather than at the run.
    object.__setattr__(self, 'seed', experiments.as_seed(self.seed, 'inputs.seed'))
    checks.check(
      isinstance(self.style_masks, tuple),
      f'inputs.style_masks must be a tuple, got {self.style_masks!r}',
    )
    checks.check(
      isinstance(self.init, str) and self.init != '',
      'inputs.init must be content, random, gray or an image file',
    )
    if isinstance(self.style_blend_weights, list):  # hashable, as the other sequences
      object.__setattr__(self, 'style_blend_weights', tuple(self.style_blend_weights))
    checks.check(
      self.style_blend_weights is None or isinstance(self.style_blend_weights, tuple),
      f'inputs.style_blend_weights must be numbers, one per style image, got '
      f'{self.style_blend_weights!r}; e.g. (1.0, 2.0)',
    )
    checks.styles_and_masks(
      len(self.style_paths),
      n_masks=len(self.style_masks),
      blend_weights=self.style_blend_weights,
    )

  @property
  def style_paths(self) -> tuple[str, ...]:
    """The style image files as a tuple (empty when none is named)."""
    if isinstance(self.style_path, str):
      return (self.style_path,) if self.style_path else ()
    return tuple(self.style_path)

  def blend_weights(self, n_styles: int) -> tuple[float, ...]:
    """The style blend weights for `n_styles` styles, checked (equal when none are set).

    Not normalised: `nst_jax.make_targets` normalises them to sum 1, the one
    place that does.
    """
    weights = self.style_blend_weights or (1.0,) * n_styles
    checks.styles_and_masks(n_styles, blend_weights=weights)
    return tuple(float(w) for w in weights)


@dataclasses.dataclass(frozen=True)
class ModelConfig(checks.Group):
  """The network.

  Attributes:
    weights: converted weights (.npz); None = $NST_JAX_WEIGHTS or the default
      location, downloaded on first use.
    weights_url: mirrors of the published weights file to try first when
      downloading (nst_jax.io.download).
    pooling: 'max' or 'avg'.
    dtype: compute dtype of the network, 'float32' or 'bfloat16' (the
      image, its update, the first convolution and every loss stay float32).
    precision: float32 matmul and convolution precision on accelerators, one
      of PRECISIONS (no effect on CPU).
  """

  weights: str | None = None
  weights_url: tuple[str, ...] = ()
  pooling: str = 'max'
  dtype: str = 'float32'
  precision: str = 'highest'

  def __post_init__(self):
    checks.plain_numbers(self)
    if isinstance(self.weights, os.PathLike):
      object.__setattr__(self, 'weights', os.fspath(self.weights))
    checks.check(  # trial 21: 3 failed deep in stylize, naming no field
      self.weights is None or (isinstance(self.weights, str) and self.weights != ''),
      f"model.weights must be a file's path (text), got {self.weights!r}; pass the converted "
      '.npz file, or None for the default',
    )
    checks.one_of('model.pooling', self.pooling, vgg.POOLING_MODES)
    checks.one_of('model.dtype', self.dtype, tuple(vgg.COMPUTE_DTYPES))
    checks.one_of('model.precision', self.precision, PRECISIONS)


@dataclasses.dataclass(frozen=True)
class LossConfig(checks.Group):
  """The objective: cw * L_c + sw * L_s + tv * L_tv (formulas in nst_jax.core.losses).

  Attributes:
    content_layers: layers whose features are matched to the content image.
    style_layers: layers whose statistics are matched to the style image.
    style_layer_weights: w_l for each style layer, same length; None = all 1.
    style_loss: the style term of each layer: 'gram' (Gatys et al.),
      'mean_cov' (Wasserstein-2 between Gaussian fits) or 'histogram' (Risser
      et al.).
    normalize_gradients: L1-normalise each loss term's gradient at its layer
      before weighting it (jcjohnson/neural-style's -normalize_gradients).
      Pair it with Adam: the result is no loss's gradient, so L-BFGS's
      curvature pairs mislead it and it can diverge (docs/controls.md).
    content_weight: cw.
    style_weight: sw.
    tv_weight: tv, the weight of the total variation term.
    tiles: compute the objective and its gradient over tiles, exactly
      (nst_jax.core.tiles): 'auto' (only when the whole image would not fit
      the memory limit: the largest tile that fits), 'off', or the tile edge
      in pixels (even, at least 16).

  The three weights are data, not structure: they travel per image in
  `nst_jax.core.objective.Targets` (so a batch can mix them without
  recompiling), and the step takes `spec`, the rest as a hashable LossSpec.
  """

  content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
  style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
  style_layer_weights: tuple[float, ...] | None = None
  style_loss: str = 'gram'
  normalize_gradients: bool = False
  content_weight: float = 100.0
  style_weight: float = 0.01
  tv_weight: float = 0.0
  tiles: str | int = 'auto'

  def __post_init__(self):
    checks.plain_numbers(self)
    checks.one_of('loss.style_loss', self.style_loss, losses.STYLE_KINDS)
    core_checks.flag(self.normalize_gradients, 'loss.normalize_gradients')
    if isinstance(self.tiles, str) and self.tiles.isdigit():
      object.__setattr__(self, 'tiles', int(self.tiles))  # from a flag or a JSON file
    checks.check(
      self.tiles in ('auto', 'off')
      or isinstance(self.tiles, int)
      and not isinstance(self.tiles, bool)
      and self.tiles > 0,
      f"loss.tiles must be 'auto', 'off' or a tile edge in pixels, got {self.tiles!r}; "
      + (
        f'use {tiles_lib.nearest_tile(self.tiles)}'
        if isinstance(self.tiles, (int, float)) and not isinstance(self.tiles, bool)
        else "use 'auto', 'off' or an even number such as 256"
      ),
    )
    for field in ('content_layers', 'style_layers'):
      value = getattr(self, field)
      # As LossSpec: one name is one layer, a list is its tuple (hashable).
      value = (value,) if isinstance(value, str) else value
      value = tuple(value) if isinstance(value, list) else value
      checks.check(
        isinstance(value, tuple),
        f"loss.{field} must be layer names, e.g. ('relu4_2',), got {value!r}",
      )
      object.__setattr__(self, field, value)
      checks.check(len(value) > 0, f'loss.{field} must name at least one layer')
      try:
        vgg.check_layers(value)
      except errors.ConfigError as e:
        raise errors.ConfigError(f'loss.{field}: {e}') from None
      repeated = sorted({name for name in value if value.count(name) > 1})
      checks.check(
        not repeated, f'loss.{field} names {", ".join(repeated)} more than once; name each once'
      )
    if isinstance(self.style_layer_weights, list):
      object.__setattr__(self, 'style_layer_weights', tuple(self.style_layer_weights))
    if self.style_layer_weights is not None:
      checks.check(
        len(self.style_layer_weights) == len(self.style_layers),
        f'loss.style_layer_weights has {errors.counted(len(self.style_layer_weights), "value")} '
        f'for {errors.counted(len(self.style_layers), "style layer")}; give one per layer',
      )
      for w in self.style_layer_weights:
        checks.finite_nonnegative('each of loss.style_layer_weights', w)
    for name in ('content_weight', 'style_weight', 'tv_weight'):
      checks.finite_nonnegative(f'loss.{name}', getattr(self, name))
    if isinstance(self.tiles, int):
      problem = tiles_lib.tile_problem(self.tiles)
      checks.check(not problem, f"loss.tiles must be 'auto', 'off' or {problem}")
      checks.check(
        self.style_loss in tiles_lib.TILED_STYLE_KINDS,
        f'loss.tiles: the {self.style_loss!r} style loss cannot be tiled; use loss.style_loss '
        "'gram' or 'mean_cov', or loss.tiles 'off'",
      )
      checks.check(
        not self.normalize_gradients,
        'loss.tiles: loss.normalize_gradients cannot be tiled; turn one of them off',
      )

  @property
  def spec(self) -> objective.LossSpec:
    """The loss's structure without its weights: what the compiled step depends on."""
    return objective.LossSpec(
      content_layers=self.content_layers,
      style_layers=self.style_layers,
      style_layer_weights=self.style_layer_weights,
      style_loss=self.style_loss,
      normalize_gradients=self.normalize_gradients,
      tile=self.tiles if isinstance(self.tiles, int) else None,
    )

  @property
  def weights(self) -> dict[str, float]:
    """The term weights as make_targets takes them: `make_targets(..., **cfg.loss.weights)`."""
    return {
      'content_weight': self.content_weight,
      'style_weight': self.style_weight,
      'tv_weight': self.tv_weight,
    }

  @property
  def structure(self) -> objective.LossSpec:
    """Deprecated: `spec` (a LossConfig with default weights before 0.3)."""
    warnings.warn('LossConfig.structure is deprecated; use .spec', DeprecationWarning, stacklevel=2)
    return self.spec

  @property
  def feature_layers(self) -> tuple[str, ...]:
    """Every layer the loss needs, content first, without repeats."""
    return self.spec.feature_layers


@dataclasses.dataclass(frozen=True)
class OptimConfig(checks.Group):
  """The optimiser (nst_jax.core.optim).

  Attributes:
    name: 'lbfgs' or 'adam'.
    learning_rate: Adam's step size in pixel units, 0..255, for every input
      convention (None: 10). Unused by L-BFGS.
    lbfgs_memory: L-BFGS history length. Unused by Adam.
    box: keep L-BFGS's image inside the displayable range (projected L-BFGS),
      so the saved image is the one optimised rather than a clipped copy.
      Unused by Adam, which has no box (the saved image is clipped); the
      engine passes Adam none of L-BFGS's settings, while
      `make_optimizer('adam', box=...)` refuses them.
  """

  name: str = 'lbfgs'
  learning_rate: float | None = None
  lbfgs_memory: int = DEFAULT_LBFGS_MEMORY
  box: bool = True

  def __post_init__(self):
    checks.plain_numbers(self)
    checks.one_of('optim.name', self.name, OPTIMIZERS)
    checks.positive_int('optim.lbfgs_memory', self.lbfgs_memory)
    core_checks.flag(self.box, 'optim.box')
    if self.learning_rate is not None:
      checks.finite_positive('optim.learning_rate', self.learning_rate)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(checks.Group):
  """How many iterations, at which sizes, and when to stop early.

  Attributes:
    iterations: optimiser iterations of the whole run, over all scales (one
      loss-and-gradient evaluation each): never more.
    scales: coarse-to-fine scales, widths a factor sqrt(2) apart ending at
      the output width; 0 = automatic (nst_jax.engine.schedule); 1 = one scale.
    min_width: instead of `scales`: as many scales as keep the coarsest at
      least this wide.
    tol: stop a scale early when its loss fell by less than this fraction
      over its last `window` iterations (0: never stop early).
    window: iterations the convergence test looks back.
    read_every: read the losses from the devices every this many iterations
      (and at the log and checkpoint intervals and the last iteration); 0 =
      automatic: every iteration on CPU, every AUTO_READ_EVERY on GPU and TPU
      (nst_jax.engine.schedule). Early stopping then comes up to
      read_every - 1 iterations after the test passes.
  """

  iterations: int = 1000
  scales: int = 0
  min_width: int | None = None
  tol: float = 0.02  # measured: docs/method.md, "Early stopping"
  window: int = 50
  read_every: int = 0

  def __post_init__(self):
    checks.plain_numbers(self)
    checks.positive_int('schedule.iterations', self.iterations)
    checks.nonnegative_int('schedule.read_every', self.read_every)
    checks.nonnegative_int('schedule.scales', self.scales)
    checks.positive_int('schedule.window', self.window)
    checks.finite_nonnegative('schedule.tol', self.tol)
    if self.min_width is not None:
      checks.positive_int('schedule.min_width', self.min_width)
      checks.check(self.scales in (0, 1), 'give schedule.scales or schedule.min_width, not both')


@dataclasses.dataclass(frozen=True)
class ColorConfig(checks.Group):
  """Colour controls (Gatys et al. 2017, Sec. 5; nst_jax.io.images).

  Attributes:
    preserve_colors: 'none', 'luminance' (transfer on luminance only, then the
      content's chroma), 'histogram' (style colours matched to the content's
      first) or 'postprocess' (the result's chroma replaced by the content's).
    color_match: the linear map of 'histogram': 'pca' or 'cholesky'.
  """

  preserve_colors: str = 'none'
  color_match: str = 'pca'

  def __post_init__(self):
    checks.plain_numbers(self)
    checks.one_of('color.preserve_colors', self.preserve_colors, PRESERVE_COLORS)
    checks.one_of('color.color_match', self.color_match, color.COLOR_MATCH_MODES)
