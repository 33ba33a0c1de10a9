"""The run's settings: one frozen, hashable dataclass, validated on creation.

`main.py` builds a `StyleConfig` from its flags; library users build one
directly. Nothing in the library reads flags. All sequence fields are tuples,
so a config (and its `LossConfig` part) can be a static argument of `jax.jit`.
"""

import dataclasses
import math

from nst_jax import errors
from nst_jax import image as image_lib
from nst_jax import losses
from nst_jax import vgg

# Gatys et al. 2016, Sec. 3: content from conv4_2 (we take its ReLU, as the
# classic tools do), style from the first layer of each stage.
DEFAULT_CONTENT_LAYERS = ('relu4_2',)
DEFAULT_STYLE_LAYERS = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
OPTIMIZERS = ('lbfgs', 'adam')
# --init keywords; any other value is an image file to start from.
INITS = ('content', 'random', 'gray')
# Gatys et al. 2017, Sec. 5: luminance-only transfer, colour histogram
# matching of the style to the content, and (the classic tools' option) the
# content's colours put back after the fact.
PRESERVE_COLORS = ('none', 'luminance', 'histogram', 'postprocess')
# Coarse-to-fine: each scale is this factor wider than the previous one
# (crowsonkb/style-transfer-pytorch's schedule).
SCALE_FACTOR = math.sqrt(2)
PROGRESS_MODES = ('auto', 'bar', 'log')
# How a run uses several devices (nst_jax.sharding): a batch of jobs split
# over them, or each image's height split over them.
SHARD_MODES = ('jobs', 'spatial')
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
    style_loss: the style term of each layer: 'gram' (Gatys et al.),
      'mean_cov' (Wasserstein-2 between Gaussian fits) or 'histogram' (Risser
      et al.); see nst_jax.losses.
    normalize_gradients: L1-normalise each loss term's gradient at its layer
      before weighting it (jcjohnson/neural-style's -normalize_gradients).
  """

  content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
  style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
  style_layer_weights: tuple[float, ...] | None = None
  style_loss: str = 'gram'
  normalize_gradients: bool = False

  def __post_init__(self):
    _check(
      self.style_loss in losses.STYLE_KINDS,
      f'style_loss must be one of {", ".join(losses.STYLE_KINDS)}, got {self.style_loss!r}',
    )
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
    style_path: style image file, or a tuple of them (used by `stylize.run`).
    style_blend_weights: one weight per style image, normalised to sum 1;
      None = equal. The style target is the blend of the styles' statistics
      (for Grams: sum_i b_i G_i, as jcjohnson/neural-style does).
    style_scale: each style image is resized to style_scale x the output
      width (at every scale of a multi-scale run).
    tv_weight: weight of the total variation term (nst_jax.losses.tv_loss).
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
    init: 'content' (start from the content image), 'random' (the mean
      pixel plus N(0, 0.001^2) noise in network space, as neural-style does),
      'gray' (uniform RGB 0.5), or an image file (resized to the content's
      size).
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
    preserve_colors: 'none', 'luminance' (transfer on luminance only, then the
      content's chroma), 'histogram' (style colours matched to the content's
      first) or 'postprocess' (the result's chroma replaced by the content's).
    color_match: the linear map of 'histogram': 'pca' or 'cholesky'.
    scales: number of coarse-to-fine scales, widths a factor sqrt(2) apart
      ending at `width`; each runs `iterations` iterations.
    min_width: alternative to `scales`: as many scales as keep the coarsest
      at least this wide.
    content_mask: grey image over the content: where the content loss
      applies (white: fully, black: not at all); '' = everywhere.
    style_masks: one grey image per style, over the content: where each
      style applies (guided Grams); () = every style everywhere, blended.
    bit_depth: bits per channel of the output: 8, or 16 (PNG only).
    quality: JPEG and WebP quality, 1-100.
    progress: 'bar' (tqdm), 'log' (a line every print_iter) or 'auto' (a bar
      when stderr is a terminal, else lines).
    record: write NAME.json, NAME.loss.png and NAME.sheet.jpg beside the
      output (nst_jax.record); used by `stylize.run`.
    serve: a port for the live preview page on 127.0.0.1 (nst_jax.preview;
      0 = any free port), or None for no page; used by `stylize.run`.
    shard: 'jobs' (a batch of jobs split over all devices; one job runs on
      one device) or 'spatial' (each image's height split over this
      process's devices).
  """

  content_path: str = ''
  style_path: str | tuple[str, ...] = ''
  style_blend_weights: tuple[float, ...] | None = None
  style_scale: float = 1.0
  tv_weight: float = 0.0
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
  preserve_colors: str = 'none'
  color_match: str = 'pca'
  scales: int = 1
  min_width: int | None = None
  content_mask: str = ''
  style_masks: tuple[str, ...] = ()
  bit_depth: int = 8
  quality: int = image_lib.DEFAULT_QUALITY
  progress: str = 'auto'
  record: bool = True
  serve: int | None = None
  shard: str = 'jobs'

  def __post_init__(self):
    for name in ('iterations', 'width', 'lbfgs_memory', 'max_image_pixels', 'scales'):
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
    _finite_nonnegative('tv_weight', self.tv_weight)
    _check(
      isinstance(self.style_scale, (int, float))
      and math.isfinite(self.style_scale)
      and self.style_scale > 0,
      f'style_scale must be a finite number > 0, got {self.style_scale!r}',
    )
    n_styles = len(self.style_paths)
    if self.style_blend_weights is not None:
      for b in self.style_blend_weights:
        _finite_nonnegative('each style blend weight', b)
      _check(sum(self.style_blend_weights) > 0, 'style blend weights must not all be 0')
      _check(
        not n_styles or len(self.style_blend_weights) == n_styles,
        f'{len(self.style_blend_weights)} style blend weights for {n_styles} style images; '
        'give one per style image',
      )
      _check(
        not self.style_masks,
        'style blend weights and style masks exclude each other: with masks each style '
        'governs its own region',
      )
    _check(
      isinstance(self.style_masks, tuple), f'style_masks must be a tuple, got {self.style_masks!r}'
    )
    if self.style_masks:
      _check(
        not n_styles or len(self.style_masks) == n_styles,
        f'{len(self.style_masks)} style masks for {n_styles} style images; give one per style',
      )
      _check(
        self.loss.style_loss != 'histogram',
        'the histogram style loss does not support style masks; use --style_loss gram or mean_cov',
      )
    _check(
      isinstance(self.init, str) and self.init != '',
      'init must be content, random, gray or an image file',
    )
    _check(
      self.preserve_colors in PRESERVE_COLORS,
      f'preserve_colors must be one of {", ".join(PRESERVE_COLORS)}, got {self.preserve_colors!r}',
    )
    _check(
      self.color_match in image_lib.COLOR_MATCH_MODES,
      f'color_match must be one of {", ".join(image_lib.COLOR_MATCH_MODES)}, got '
      f'{self.color_match!r}',
    )
    _check(
      self.bit_depth in image_lib.BIT_DEPTHS, f'bit_depth must be 8 or 16, got {self.bit_depth!r}'
    )
    _check(
      isinstance(self.quality, int) and 1 <= self.quality <= 100,
      f'quality must be an integer from 1 to 100, got {self.quality!r}',
    )
    _check(
      self.progress in PROGRESS_MODES,
      f'progress must be one of {", ".join(PROGRESS_MODES)}, got {self.progress!r}',
    )
    _check(
      self.shard in SHARD_MODES,
      f'shard must be one of {", ".join(SHARD_MODES)}, got {self.shard!r}',
    )
    if self.serve is not None:
      _check(
        isinstance(self.serve, int) and 0 <= self.serve <= 65535,
        f'serve must be a port from 0 to 65535 (0: any free port), got {self.serve!r}',
      )
    if self.min_width is not None:
      _check(
        isinstance(self.min_width, int) and self.min_width > 0,
        f'min_width must be a positive integer, got {self.min_width!r}',
      )
      _check(self.scales == 1, 'give scales or min_width, not both')
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
      self.pooling in vgg.POOLING_MODES,
      f'pooling must be one of {", ".join(vgg.POOLING_MODES)}, got {self.pooling!r}',
    )
    _check(
      self.dtype in vgg.COMPUTE_DTYPES,
      f'dtype must be one of {", ".join(vgg.COMPUTE_DTYPES)}, got {self.dtype!r}',
    )

  @property
  def style_paths(self) -> tuple[str, ...]:
    """The style image files as a tuple (empty when none is named)."""
    if isinstance(self.style_path, str):
      return (self.style_path,) if self.style_path else ()
    return tuple(self.style_path)

  def blend_weights(self, n_styles: int) -> tuple[float, ...]:
    """The style blend weights for `n_styles` styles, normalised to sum 1."""
    weights = self.style_blend_weights or (1.0,) * n_styles
    if len(weights) != n_styles:
      raise errors.ConfigError(
        f'{len(weights)} style blend weights for {n_styles} style images; give one per style'
      )
    total = sum(weights)
    return tuple(w / total for w in weights)

  def scale_widths(self, width: int | None = None) -> tuple[int, ...]:
    """The widths of a coarse-to-fine run ending at `width` (default: self.width)."""
    return scale_widths(width or self.width, scales=self.scales, min_width=self.min_width)

  def replace(self, **changes) -> 'StyleConfig':
    return dataclasses.replace(self, **changes)


def scale_widths(width: int, *, scales: int = 1, min_width: int | None = None) -> tuple[int, ...]:
  """Coarse-to-fine widths: w_k = round(width / sqrt(2)^(n-1-k)), k = 0..n-1.

  Args:
    width: the final (largest) width.
    scales: n, the number of scales.
    min_width: instead of `scales`: the largest n whose coarsest width is at
      least min_width (1 if width <= min_width).

  Returns:
    n increasing widths, the last equal to `width`.
  """
  if min_width is not None:
    scales = 1
    while round(width / SCALE_FACTOR**scales) >= min_width:
      scales += 1
  return tuple(round(width / SCALE_FACTOR ** (scales - 1 - k)) for k in range(scales))
