"""The loss's structure: layers, style statistic and how it is computed (`LossSpec`).

Small and hashable: the static argument of the compiled step
(nst_jax.core.step); the loss weights are data, in `objective.Targets`.
"""

import dataclasses
from typing import Any

import numpy as np

from nst_jax import errors
from nst_jax.core import checks
from nst_jax.core import losses
from nst_jax.core import tiles
from nst_jax.core import vgg

# Gatys et al. 2016, Sec. 3: content from conv4_2 (we take its ReLU, as the
# classic tools do), style from the first layer of each stage.
DEFAULT_CONTENT_LAYERS = ('relu4_2',)
DEFAULT_STYLE_LAYERS = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The loss's structure: what the compiled step depends on (hashable, static).

  The loss weights cw, sw and tv are not here: they are data, per image, in
  `Targets`.

  Attributes:
    content_layers: layers whose features are matched to the content image
      (a tuple; a list or one name is made one).
    style_layers: layers whose statistics are matched to the style image.
    style_layer_weights: w_l for each style layer, same length; None = all 1.
    style_loss: 'gram' (Gatys et al.), 'mean_cov' (Wasserstein-2 between
      Gaussian fits) or 'histogram' (Risser et al.).
    normalize_gradients: L1-normalise each term's gradient at its layer before
      weighting it (jcjohnson/neural-style's -normalize_gradients). Pair it
      with Adam: the result is no loss's gradient, so L-BFGS's curvature
      pairs mislead it and it can diverge (docs/controls.md).
    tile: None (the whole image at once), or the edge in pixels of the tiles
      the objective and its gradient are computed over, exactly
      (`nst_jax.core.tiles`): memory for one tile's activations instead of
      the image's. Even and at least tiles.MIN_TILE; 'gram' and
      'mean_cov' only, without normalize_gradients.
    tile_progress: with `tile`, each tile of the objective calls back to
      the host as it starts (`nst_jax.core.tile_progress`), for a display
      within a long iteration; such a step is kept out of the persistent
      compile cache. The targets (`make_targets`) report nothing.
  """

  content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
  style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
  style_layer_weights: tuple[float, ...] | None = None
  style_loss: str = 'gram'
  normalize_gradients: bool = False
  tile: int | None = None
  tile_progress: bool = False

  def __new__(cls, *args, **kwargs):
    # Before the dataclass's __init__, whose TypeError would name the typo only.
    errors.unknown_keywords('LossSpec', kwargs, (f.name for f in dataclasses.fields(cls)))
    return super().__new__(cls)

  def __post_init__(self):
    if self.style_loss not in losses.STYLE_KINDS:
      raise errors.ConfigError(
        f'style_loss must be one of {", ".join(map(repr, losses.STYLE_KINDS))}, got '
        f'{self.style_loss!r}'
      )
    for field in ('content_layers', 'style_layers'):
      value = getattr(self, field)
      # Stored as tuples, so that the spec stays hashable (the step's static
      # argument); one name is one layer, a list is its tuple.
      if isinstance(value, str):
        value = (value,)
      elif isinstance(value, list):
        value = tuple(value)
      if not isinstance(value, tuple) or not value:
        raise errors.ConfigError(f"{field} must be layer names, e.g. ('relu4_2',), got {value!r}")
      try:
        vgg.check_layers(value)
      except errors.ConfigError as e:  # checked without a model (trial 54 T54-9: VGGTiny's?)
        words = str(e).replace(
          '; valid names are',
          " (a LossSpec checks VGG-19's; a smaller model's are checked where "
          "it runs); VGG-19's are",
        )
        raise errors.ConfigError(f'{field}: {words}') from None
      repeated = sorted({name for name in value if value.count(name) > 1})
      if repeated:
        # A repeated style layer kept only its last weight; a content layer counted twice.
        raise errors.ConfigError(
          f'{field} names {", ".join(repeated)} more than once; name each layer once (weigh '
          'a style layer with style_layer_weights)'
        )
      object.__setattr__(self, field, value)
    w = self.style_layer_weights
    if w is not None:
      # Python floats: hashable (a numpy array or jax scalar is not), and
      # checked, as make_targets checks the loss weights.
      try:
        # True and '1' are no weights, as make_targets refuses content_weight=True and '1e-2'.
        if any(
          isinstance(v, (bool, np.bool_, str, bytes)) for v in np.ravel(np.asarray(w, object))
        ):
          raise TypeError
        w = tuple(float(v) for v in np.asarray(w, np.float64).reshape(-1))
      except (TypeError, ValueError):
        raise errors.ConfigError(
          f'style_layer_weights must be numbers, one per style layer, got {w!r}'
        ) from None
      if not all(np.isfinite(v) and v >= 0 for v in w):
        raise errors.ConfigError(f'style_layer_weights must be finite and >= 0, got {w}')
      object.__setattr__(self, 'style_layer_weights', w)
    if w is not None and len(w) != len(self.style_layers):
      raise errors.ConfigError(
        f'style_layer_weights has {errors.counted(len(w), "value")} for '
        f'{errors.counted(len(self.style_layers), "style layer")}; give one per style layer, or '
        'None for all 1'
      )
    flag = checks.flag(self.normalize_gradients, 'normalize_gradients')
    object.__setattr__(self, 'normalize_gradients', flag)
    if self.tile is not None:
      self._check_tile()
    object.__setattr__(self, 'tile_progress', checks.flag(self.tile_progress, 'tile_progress'))
    if self.tile_progress and self.tile is None:
      raise errors.ConfigError(
        'tile_progress reports the tiles of a tiled objective; set tile (e.g. tile=256) too, or '
        'drop tile_progress'
      )

  def _check_tile(self) -> None:
    if self.style_loss not in tiles.TILED_STYLE_KINDS:
      raise errors.ConfigError(
        f'tile: the {self.style_loss!r} style loss is not a sum over positions and cannot be '
        "tiled; use style_loss 'gram' or 'mean_cov' with tiles, or tile=None"
      )
    if self.normalize_gradients:
      raise errors.ConfigError(
        "tile: normalize_gradients needs each layer's whole gradient at once and cannot be "
        'tiled; turn one of them off'
      )
    problem = tiles.tile_problem(self.tile)
    if problem:
      raise errors.ConfigError(f'tile must be None or {problem}')
    object.__setattr__(self, 'tile', int(self.tile))

  @property
  def layer_weights(self) -> dict[str, float]:
    """Style layer -> w_l."""
    weights = self.style_layer_weights or (1.0,) * len(self.style_layers)
    return dict(zip(self.style_layers, weights, strict=True))

  @property
  def feature_layers(self) -> tuple[str, ...]:
    """Every layer the loss needs, content first, without repeats."""
    return tuple(dict.fromkeys(self.content_layers + self.style_layers))


def as_spec(loss: Any, *, config_ok: bool = False) -> LossSpec:
  """A LossSpec from a LossSpec, or (`config_ok`: the deprecated loss_config=) a LossConfig.

  A LossConfig as loss_spec= is refused: its weights were ignored without a
  word, since a step's weights travel in the targets (trial 23).
  """
  if isinstance(loss, LossSpec):
    return loss
  spec = getattr(loss, 'spec', None)
  if isinstance(spec, LossSpec) and config_ok:
    return spec
  if isinstance(spec, LossSpec):
    raise errors.ArgumentError(
      f'loss_spec must be a LossSpec, got a {type(loss).__name__}, whose weights would be '
      'ignored (the weights travel in the targets: make_targets(..., content_weight=, '
      'style_weight=, tv_weight=)); pass its .spec'
    )
  raise errors.ArgumentError(
    f'loss_spec must be a LossSpec, got a {type(loss).__name__}; pass nst_jax.LossSpec(...) or '
    "a config's cfg.loss.spec"
  )
