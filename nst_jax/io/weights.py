"""VGG-19 weight files: detect, convert, save, load and fetch.

Sources (see docs/weights.md):
  * Keras `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`, the Oxford
    Caffe weights (the default: what the classic style transfer tools use).
    HDF5: the root attribute `layer_names` lists the layers; each layer group's
    attribute `weight_names` lists its datasets in order (kernel
    [kH, kW, in, out], then bias). Input convention: Caffe (BGR, 0..255, mean).
  * torchvision `vgg19-dcbb9e9d.pth` state dict, or the same keys in a
    `.safetensors` file: `features.{i}.weight` [out, in, kH, kW] and
    `features.{i}.bias`. Input convention: torchvision (RGB, mean/std), unless
    overridden (jcjohnson's Caffe conversion `vgg19-d01eb7cb.pth` has
    torchvision's keys and the Caffe convention).

All of them are converted to one `.npz` (no pickles) with flat keys
`conv1_1/kernel` [3, 3, in, out] and `conv1_1/bias` [out], plus `__meta__/*`
strings recording where the weights came from and the input convention, which
decides the preprocessing. Loading checks every key and shape against the
model.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import os
from pathlib import Path
import sys
import zipfile

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import checks as core_checks
from nst_jax.core import pixels
from nst_jax.io import atomic
from nst_jax.io import weight_checks
from nst_jax.io import weight_formats

# The Keras Applications notop file: the original Oxford VGG-19 Caffe weights
# (conv layers only), converted by Keras' authors. URL and MD5 as published in
# keras/src/applications/vgg19.py (WEIGHTS_PATH_NO_TOP, file_hash).
KERAS_URL = (
  'https://storage.googleapis.com/tensorflow/keras-applications/vgg19/'
  'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5'
)
# The same file where Keras published it first, before moving to Google
# Cloud Storage (fchollet/deep-learning-models, release v0.1): a mirror with
# the same MD5, tried when the first is unreachable.
KERAS_MIRRORS = (
  KERAS_URL,
  'https://github.com/fchollet/deep-learning-models/releases/download/v0.1/'
  'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5',
)
KERAS_FILENAME = 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5'
KERAS_MD5 = '253f8cb515780f3b799900260a226db6'
# torchvision's ImageNet VGG-19 (torchvision.models.VGG19_Weights.IMAGENET1K_V1).
TORCHVISION_URL = 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth'


def user_cache_dir() -> Path:
  """nst_jax's folder in the user's cache (XDG: $XDG_CACHE_HOME, else ~/.cache)."""
  base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
  return Path(base) / 'nst_jax'


DEFAULT_WEIGHTS_PATH = (
  weight_formats.PROJECT_ROOT / 'weights' / 'vgg19.npz'
  if weight_formats.IN_CHECKOUT
  else user_cache_dir() / 'vgg19.npz'
)
WEIGHTS_ENV = 'NST_JAX_WEIGHTS'

META_PREFIX = '__meta__/'
FORMAT_VERSION = '2'  # 2: adds params_sha256
IN_MEMORY = 'params in memory'  # WeightsInfo.source of Weights.from_params, until saved


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
  """Where a set of weights came from and how it expects its input.

  Attributes:
    source: file name of the published file they were converted from.
    source_sha256: SHA-256 of that file, computed at conversion.
    source_format: 'keras_h5', 'torch_pth' or 'safetensors'.
    convention: input convention name ('caffe' or 'torchvision').
    params_sha256: `weight_checks.params_digest` of the converted arrays,
      recorded at conversion and checked on every load (44 ms for VGG-19
      here), so a corrupted or tampered .npz is caught before it gives wrong
      pictures.
    provenance: 'published' when the source file's hash is the published
      file's (the Keras h5's MD5, the torchvision file's SHA-256 prefix in its
      name), else what is known ('unverified: ...'): a file of the right
      layout with other values (random weights for tests, a fine-tuned
      network) converts and runs, and its run records say it is not VGG-19's.
      '' for files converted before this field existed.
  """

  source: str
  source_sha256: str
  source_format: str
  convention: str
  params_sha256: str
  provenance: str = ''

  @property
  def published(self) -> bool:
    return self.provenance == PUBLISHED

  @property
  def input_convention(self) -> pixels.InputConvention:
    return pixels.get_convention(self.convention)


@dataclasses.dataclass(frozen=True)
class Weights:
  """Loaded VGG-19 parameters and their provenance.

  Attributes:
    params: Flax params pytree, `{'conv1_1': {'kernel': [3,3,3,64], 'bias':
      [64]}, ...}`, float32 jax arrays.
    info: provenance and input convention.
  """

  params: Mapping[str, Mapping[str, jax.Array]]
  info: WeightsInfo

  @classmethod
  def from_params(
    cls, params: Mapping[str, Mapping[str, jax.Array]], convention: pixels.InputConvention | str
  ) -> 'Weights':
    """Weights of params made in memory (`nst_jax.random_scaled_params`), for `stylize`.

    Args:
      params: layer -> {'kernel', 'bias'}, VGG-19's layers.
      convention: the input space they expect (random_scaled_params: 'caffe').

    Returns:
      Weights whose info names no source file; `params_sha256` is their
      digest, so a checkpoint still refuses to resume with other params.
    """
    convention = pixels.as_convention(convention)
    core_checks.params_dict(params)  # a {'params': ...} wrapper or a list failed in the digest
    flat = {f'{k}/{leaf}': np.asarray(v) for k, d in params.items() for leaf, v in d.items()}
    info = WeightsInfo(
      source=IN_MEMORY,
      source_sha256='',
      source_format='params',
      convention=convention.name,
      params_sha256=weight_checks.params_digest(flat),
      provenance='unverified: params made in memory, not a weights file',
    )
    return cls(params=dict(params), info=info)

  def flat(self) -> dict[str, np.ndarray]:
    """The params as `save_npz` takes them: {'conv1_1/kernel': [3, 3, 3, 64], ...}, numpy."""
    return {f'{k}/{leaf}': np.asarray(v) for k, d in self.params.items() for leaf, v in d.items()}


_READERS: dict[str, tuple[Callable[[Path], dict[str, np.ndarray]], str]] = {
  'keras_h5': (weight_formats.read_keras_h5, pixels.CAFFE.name),
  'torch_pth': (weight_formats.read_torch_pth, pixels.TORCHVISION.name),
  'safetensors': (weight_formats.read_safetensors, pixels.TORCHVISION.name),
}


def convert(
  path: str | os.PathLike, *, convention: str | None = None
) -> tuple[dict[str, np.ndarray], WeightsInfo]:
  """Reads a published weights file into flat float32 arrays.

  Args:
    path: Keras .h5, torchvision .pth or .safetensors (format from content).
    convention: override of the input convention the layout implies; 'caffe'
      for Caffe conversions saved with torchvision's keys (vgg19-d01eb7cb.pth).

  Returns:
    (flat, info): `flat` maps `conv1_1/kernel` etc. to float32 numpy arrays,
    checked against the model; fully connected layers are dropped.
  """
  path = Path(path)
  fmt = weight_formats.detect_format(path)
  if fmt == 'npz':
    raise errors.WeightsError(
      f'{path} is already a converted .npz; use it as model.weights instead'
    )
  reader, implied = _READERS[fmt]
  if convention is not None:
    pixels.get_convention(convention)  # validates the name
  flat = {k: np.ascontiguousarray(v, np.float32) for k, v in reader(path).items()}
  weight_checks.check_params(flat, str(path), fix=weight_formats.CONVERT_FIX)
  weight_checks.check_values(flat, str(path), fix=weight_formats.DAMAGED_FIX)
  sha256 = weight_checks.file_digest(path)
  info = WeightsInfo(
    source=path.name,
    source_sha256=sha256,
    source_format=fmt,
    convention=convention or implied,
    params_sha256=weight_checks.params_digest(flat),
    provenance=_provenance(path, fmt, sha256),
  )
  return flat, info


# What `WeightsInfo.provenance` says of a file whose hash is the published one.
PUBLISHED = 'published'
# torchvision names its files by the first 8 hex digits of their SHA-256.
TORCHVISION_SHA256_PREFIX = 'dcbb9e9d'


def _provenance(path: Path, fmt: str, sha256: str) -> str:
  if fmt == 'keras_h5':
    md5 = weight_checks.file_digest(path, 'md5')
    if md5 == KERAS_MD5:
      return PUBLISHED
    return f"unverified: MD5 {md5}, not the published Keras file's {KERAS_MD5}"
  if fmt == 'torch_pth':
    if sha256.startswith(TORCHVISION_SHA256_PREFIX):
      return PUBLISHED
    return f"unverified: SHA-256 {sha256[:8]}..., not torchvision's {TORCHVISION_SHA256_PREFIX}..."
  return f'unverified: {fmt} has no published file to compare with'


def convert_file(
  source: str | os.PathLike,
  output: str | os.PathLike = DEFAULT_WEIGHTS_PATH,
  *,
  convention: str | None = None,
) -> Path:
  """Converts the published weights file `source` into a checked .npz at `output`.

  Args:
    source: Keras .h5, torchvision .pth or .safetensors (as `convert`).
    output: where the converted .npz goes (written atomically).
    convention: as `convert`.

  Returns:
    output as a Path.
  """
  flat, info = convert(source, convention=convention)
  save_npz(output, flat, info)
  return Path(output)


# ---------------------------------------------------------------------------
# The converted .npz.


def save_npz(path: str | os.PathLike, flat: Mapping[str, np.ndarray], info: WeightsInfo) -> None:
  """Writes weights and their metadata as an .npz for `load_weights` (atomically, no pickles).

  Args:
    path: the .npz to write.
    flat: every VGG-19 layer's kernel and bias as float32 arrays under
      'layer/leaf' keys: {'conv1_1/kernel': [3, 3, 3, 64], 'conv1_1/bias':
      [64], ...}, as `convert` returns them or `Weights.flat()` gives them.
    info: `convert`'s for a published file, or `Weights.info`. Params made in
      memory get this file's name as their source, so runs from it name it:
      `w = Weights.from_params(nst_jax.random_scaled_params(0), 'caffe')`,
      `save_npz('random.npz', w.flat(), w.info)`, then `--weights random.npz`.
  """
  if info.source == IN_MEMORY:
    info = dataclasses.replace(info, source=Path(path).name)
  arrays = dict(flat)
  for field in dataclasses.fields(WeightsInfo):
    arrays[META_PREFIX + field.name] = np.array(getattr(info, field.name))
  arrays[META_PREFIX + 'format_version'] = np.array(FORMAT_VERSION)

  def write(tmp: str) -> None:
    with open(tmp, 'wb') as f:
      np.savez(f, allow_pickle=False, **arrays)

  atomic.write(path, write)


def load_weights(path: str | os.PathLike | None = None, *, given_as: str = 'path=') -> Weights:
  """Loads converted weights, checking every key and shape.

  Args:
    path: a converted `.npz`; None resolves as `resolve_weights_path`.
    given_as: what a message calls `path` when it is given (a caller's own
      argument or config field, e.g. 'model.weights'); one from
      $NST_JAX_WEIGHTS or the default location is named so.

  Returns:
    Weights with float32 params on the default device.

  Raises:
    WeightsError: a missing file or a directory, a pickle, a wrong key or shape,
      values that are not finite numbers, no metadata.
  """
  origin = weights_origin(path, given_as)
  path = resolve_weights_path(path)
  inside = path / DEFAULT_WEIGHTS_PATH.name
  if path.is_dir() and inside.is_file():
    raise errors.WeightsError(
      f'weights file {path} ({origin}) is a directory; use the converted file in it, {inside}'
    )
  if not path.is_file():
    # A directory: the converter writes a file, so name one in it; a FIFO or a device none.
    fix = f'run: {weight_formats.fetch_call(inside if path.is_dir() else path)}'
    fix = fix if path.is_dir() or not path.exists() else 'name a converted .npz file'
    raise errors.WeightsError(f'weights file {path} ({origin}) {errors.not_a_file(path)}; {fix}')
  _check_zip(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      contents = {k: npz[k] for k in npz.files}
  except ValueError as e:
    raise errors.WeightsError(
      f'{path} cannot be loaded safely ({e}); it may hold a pickle. Rebuild it '
      f'with {weight_formats.CONVERT_COMMAND}'
    ) from None
  except (OSError, zipfile.BadZipFile, EOFError) as e:
    raise errors.WeightsError(
      f'{path} is not a valid .npz ({e}); rebuild it with {weight_formats.CONVERT_COMMAND}'
    ) from None
  meta = {k[len(META_PREFIX) :]: str(v) for k, v in contents.items() if k.startswith(META_PREFIX)}
  flat = {k: v for k, v in contents.items() if not k.startswith(META_PREFIX)}
  # provenance came later: older files lack it (and say '' there).
  fields = [
    f.name for f in dataclasses.fields(WeightsInfo) if f.name in meta or f.name != 'provenance'
  ]
  absent = [name for name in fields if name not in meta]
  if absent:
    raise errors.WeightsError(
      f'{path} lacks metadata ({", ".join(absent)}); convert the published '
      f'file with {weight_formats.CONVERT_COMMAND}'
    )
  weight_checks.check_params(flat, str(path), fix=weight_formats.CONVERT_FIX)
  # Before the hash: an .npz converted before the values were checked can
  # hold a NaN that its own hash vouches for.
  rebuild = f'rebuild it with: {weight_formats.fetch_call(path)}'
  weight_checks.check_values(flat, str(path), fix=rebuild)
  info = WeightsInfo(**{name: meta[name] for name in fields})
  if weight_checks.params_digest(flat) != info.params_sha256:
    raise errors.WeightsError(
      f'{path} is corrupt: its arrays do not match the hash recorded at conversion; {rebuild}'
    )
  pixels.get_convention(info.convention)  # an unknown name is a one-line error
  params = flax.traverse_util.unflatten_dict(
    {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep='/'
  )
  return Weights(params=params, info=info)


def _check_zip(path: Path) -> None:
  """Refuses a file that is no zip archive: np.load would read it as a pickle and refuse that.

  Only the leading signature is read: a truncated or damaged archive (zip
  magic, no directory) is left to np.load, whose message names the damage.
  """
  try:
    with open(path, 'rb') as f:
      head = f.read(len(_ZIP_MAGIC))
  except OSError as e:
    raise errors.WeightsError(
      f'{path} cannot be read ({e.strerror}); check its permissions'
    ) from None
  if head != _ZIP_MAGIC:
    raise errors.WeightsError(
      f'{path} is not an .npz file (it is not a zip archive); give the converted weights '
      f'({weight_formats.CONVERT_COMMAND} writes them)'
    )


# A zip archive's first local file header (np.savez writes at least one array).
_ZIP_MAGIC = b'PK\x03\x04'


def resolve_weights_path(path: str | os.PathLike | None = None) -> Path:
  """An explicit path, else $NST_JAX_WEIGHTS, else <project>/weights/vgg19.npz."""
  if path is not None:
    return Path(path)
  env = os.environ.get(WEIGHTS_ENV)
  return Path(env) if env else DEFAULT_WEIGHTS_PATH


def weights_origin(path: str | os.PathLike | None, given_as: str) -> str:
  """Where `resolve_weights_path(path)` takes its path from, in a message's words.

  Args:
    path: the path given, or None.
    given_as: what the caller called `path` ('path=', 'weights=', 'model.weights').
  """
  if path is not None:
    return given_as
  return f'${WEIGHTS_ENV}' if os.environ.get(WEIGHTS_ENV) else 'the default location'


def get_weights(
  path: str | os.PathLike | None = None,
  *,
  progress: bool = True,
  urls: Sequence[str] = (),
  given_as: str = 'path=',
) -> Weights:
  """Loads weights, downloading and converting them on first use.

  Only the default location is filled automatically; an explicit path (or
  $NST_JAX_WEIGHTS) that does not exist is an error, so a typo never triggers
  an 80 MB download.

  Args:
    path: a converted .npz, or None for $NST_JAX_WEIGHTS or the default location.
    progress: show the download's progress.
    urls: mirrors of the Keras file to try first (then $NST_JAX_WEIGHTS_URL's
      and the published ones, nst_jax.io.download.mirrors).
    given_as: what messages call `path` (as `load_weights`).
  """
  from nst_jax.io import download  # the fetching side, only when needed

  resolved = resolve_weights_path(weight_checks.path_argument(path, given_as))
  if not resolved.exists() and path is None and WEIGHTS_ENV not in os.environ:
    print(
      f'no weights at {resolved}; fetching the VGG-19 weights (about 80 MB, once)',
      file=sys.stderr,
    )
    raw = download.fetch(download.mirrors(urls), resolved.parent, md5=KERAS_MD5, progress=progress)
    convert_file(raw, resolved)
  weights = load_weights(path, given_as=given_as)
  if not weights.info.published:
    # Said once per run: its pictures are not VGG-19's (the record says it too).
    logging.warning(
      '%s: not the published VGG-19 weights (%s); results differ from those of the real network',
      resolved,
      weights.info.provenance or 'converted before provenance was recorded',
    )
  return weights


def as_weights(
  weights: 'Weights | str | os.PathLike | None', *, given_as: str = 'weights=', urls=()
) -> Weights:
  """Accepts loaded Weights or a path (None: as `resolve_weights_path`), named `given_as`."""
  if isinstance(weights, Weights):
    return weights
  return get_weights(weights, urls=urls, given_as=given_as)


def for_model(model) -> Weights:
  """The weights a run's `ModelConfig` names, as `nst_jax.run` and `stylize` load them.

  `model.weights`, else $NST_JAX_WEIGHTS, else the default location
  (downloaded there on first use); a message names where the path came from.
  """
  return get_weights(model.weights, urls=model.weights_url, given_as='model.weights')
