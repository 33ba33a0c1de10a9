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
import re
import sys
import zipfile

import flax
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors
from nst_jax.core import pixels
from nst_jax.core import vgg
from nst_jax.io import images as image_lib
from nst_jax.io import weight_checks

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

# Where the converted weights live unless told otherwise: <project>/weights/
# in a source checkout (the directory holding convert_weights.py); for an
# installed package, the user's cache, as Keras keeps its downloads in
# ~/.keras/models.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
IN_CHECKOUT = (PROJECT_ROOT / 'convert_weights.py').is_file()


def _cache_dir() -> Path:
  base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
  return Path(base) / 'nst_jax'


DEFAULT_WEIGHTS_PATH = (
  PROJECT_ROOT / 'weights' / 'vgg19.npz' if IN_CHECKOUT else _cache_dir() / 'vgg19.npz'
)
WEIGHTS_ENV = 'NST_JAX_WEIGHTS'
# How a command-line user runs the converter: the programs print the calls
# that messages suggest (fetch_call, convert_call) as its command lines
# (nst_jax.cli.spelling).
CONVERT_COMMAND = 'python convert_weights.py' if IN_CHECKOUT else 'nst-jax-convert'


def _call(function: str, path: str | os.PathLike | None) -> str:
  # repr: the name as a Python string literal, one line whatever it holds.
  return f'{function}({"" if path is None else repr(os.fspath(path))})'


def fetch_call(output: str | os.PathLike | None = None) -> str:
  """The call a message suggests to fetch and convert the published weights into `output`."""
  return _call('nst_jax.io.download.fetch_and_convert', output)


def convert_call(source: str | os.PathLike) -> str:
  """The call a message suggests to convert the published file `source` (`convert_file`)."""
  return _call('nst_jax.io.weights.convert_file', source)


# Indices of the conv layers in torchvision's `vgg19().features` Sequential
# (conv, relu, conv, relu, pool, ...), in network order.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
# Keras names the fully connected layers of the "top" file like this; they are
# dropped, since style transfer only uses the convolutional trunk.
KERAS_FC_LAYERS = ('fc1', 'fc2', 'predictions', 'flatten')

META_PREFIX = '__meta__/'
FORMAT_VERSION = '2'  # 2: adds params_sha256

# The fixes messages end with: for a file that does not fit the network, one
# whose values are not all finite, a Keras file unlike the published one.
_CONVERT_FIX = f'convert the published VGG-19 file with {CONVERT_COMMAND}'
_DAMAGED_FIX = f'the file is damaged: fetch and convert the published one with {fetch_call()}'
_NOT_KERAS_NOTOP = (
  f'this is not the published VGG-19 notop file: fetch and convert that with {fetch_call()}'
)

_HDF5_MAGIC = b'\x89HDF\r\n\x1a\n'
_ZIP_MAGIC = b'PK\x03\x04'


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
  """

  source: str
  source_sha256: str
  source_format: str
  convention: str
  params_sha256: str

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


# ---------------------------------------------------------------------------
# Reading the published formats.


def detect_format(path: str | os.PathLike) -> str:
  """Tells a weights file's format from its first bytes, not its name.

  Returns:
    'keras_h5', 'torch_pth' (zip or legacy pickle container), 'safetensors'
    or 'npz'.

  Raises:
    WeightsError: none of those.
  """
  path = Path(path)
  if not path.is_file():
    raise errors.WeightsError(f'weights file {path} does not exist')
  with open(path, 'rb') as f:
    head = f.read(16)
  size = path.stat().st_size
  if head.startswith(_HDF5_MAGIC):
    return 'keras_h5'
  if head.startswith(_ZIP_MAGIC):
    try:
      with zipfile.ZipFile(path) as z:
        names = z.namelist()
    except zipfile.BadZipFile:
      names = []
    if any(n.endswith('data.pkl') for n in names):
      return 'torch_pth'
    if names and all(n.endswith('.npy') for n in names):
      return 'npz'
  # torch.save's legacy (pre-1.6) format is a raw pickle, protocol 2.
  if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):
    return 'torch_pth'
  # safetensors: little-endian u64 header length, then a JSON object.
  if len(head) >= 9 and head[8:9] == b'{':
    header_len = int.from_bytes(head[:8], 'little')
    if 0 < header_len <= size - 8:
      return 'safetensors'
  raise errors.WeightsError(
    f'{path} is not a Keras .h5, PyTorch .pth or .safetensors weights file '
    f'(first bytes {head[:8]!r}); download the published file again'
  )


def _keras_layer_name(name: str) -> str | None:
  """'block4_conv2' -> 'conv4_2'; None for names that are not VGG-19 convs."""
  m = re.fullmatch(r'block(\d+)_conv(\d+)', name)
  paper = f'conv{m[1]}_{m[2]}' if m else None
  return paper if paper in vgg.conv_names(vgg.VGG19_STAGE_SIZES) else None


def _read_keras_h5(path: Path) -> dict[str, np.ndarray]:
  import h5py  # pylint: disable=g-import-not-at-top  # only needed here

  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise errors.WeightsError(f'{path} is not a readable HDF5 file ({e})') from None
  try:
    with f:
      return _keras_layers(path, f)
  except (OSError, RuntimeError, KeyError, ValueError) as e:
    # What h5py raises for a damaged object header, heap or B-tree (names
    # that do not decode are ValueErrors): every read below is of the file.
    raise errors.WeightsError(f'{path}: HDF5 error ({_first_line(e)}); {_DAMAGED_FIX}') from None


def _keras_layers(path: Path, f) -> dict[str, np.ndarray]:
  """The conv layers of an open Keras file, every dataset checked against the model."""
  # Keras' save_weights puts the layers at the root; model.save under
  # 'model_weights'. Both carry the `layer_names` attribute.
  root = f['model_weights'] if 'model_weights' in f else f
  if 'layer_names' not in root.attrs:
    raise errors.WeightsError(
      f'{path} is HDF5 but not a Keras weights file (no layer_names attribute)'
    )
  flat = {}
  for raw in root.attrs['layer_names']:
    layer = _text(raw)
    if layer not in root:
      raise errors.WeightsError(
        f'{path}: layer {layer} is listed in layer_names but has no group; {_NOT_KERAS_NOTOP}'
      )
    weight_names = [_text(w) for w in root[layer].attrs.get('weight_names', [])]
    if not weight_names:
      continue  # input, pooling and flatten layers have no weights
    name = _keras_layer_name(layer)
    if name is None:
      if layer in KERAS_FC_LAYERS:
        continue
      raise errors.WeightsError(
        f'{path}: unexpected layer {layer!r} with weights; '
        'expected the VGG-19 layers block1_conv1 ... block5_conv4'
      )
    if len(weight_names) != 2:
      raise errors.WeightsError(
        f'{path}: layer {layer} lists {len(weight_names)} weights, expected a kernel and a '
        f'bias; {_NOT_KERAS_NOTOP}'
      )
    # Keras 'tf' ordering is already [kH, kW, in, out] (HWIO), as Flax wants.
    for param, weight in zip(('kernel', 'bias'), weight_names, strict=True):
      key = f'{name}/{param}'
      flat[key] = weight_checks.keras_dataset(
        root[layer], weight, key, source=str(path), fix=_NOT_KERAS_NOTOP
      )
  return flat


def _text(value) -> str:
  """An HDF5 string attribute entry (bytes in files Keras wrote) as str."""
  return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(e: Exception) -> str:
  # A KeyError's str() quotes its message.
  text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _from_torch_keys(state: Mapping[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
  names = vgg.conv_names(vgg.VGG19_STAGE_SIZES)
  by_index = dict(zip(TORCHVISION_CONV_INDICES, names, strict=True))
  flat = {}
  unexpected = []
  for key, value in state.items():
    if key.startswith('classifier.'):
      continue  # fully connected layers: not used for style transfer
    m = re.fullmatch(r'features\.(\d+)\.(weight|bias)', key)
    if not m or int(m[1]) not in by_index:
      unexpected.append(key)
      continue
    name = by_index[int(m[1])]
    if not isinstance(value, np.ndarray):
      raise errors.WeightsError(
        f'{path}: {key} is a {type(value).__name__}, not a tensor; {_CONVERT_FIX}'
      )
    value = np.asarray(value, np.float32)
    if m[2] == 'weight':
      if value.ndim != 4:
        raise errors.WeightsError(
          f'{path}: {key} has shape {value.shape}, expected [out, in, 3, 3]'
        )
      # [outC, inC, kH, kW] -> [kH, kW, inC, outC]
      flat[f'{name}/kernel'] = value.transpose(2, 3, 1, 0)
    else:
      flat[f'{name}/bias'] = value
  if unexpected:
    raise errors.WeightsError(
      f'{path}: unexpected keys {", ".join(sorted(unexpected)[:8])}; '
      'expected torchvision VGG-19 keys features.0.weight ... features.34.bias'
    )
  return flat


def _read_torch_pth(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top  # optional dependency
  except ImportError:
    raise errors.WeightsError(
      f'reading {path} (a PyTorch file) needs PyTorch: pip install torch, '
      'or save its state dict as .safetensors'
    ) from None
  try:
    # weights_only: tensors and containers only; never runs pickled code.
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for bad files
    raise errors.WeightsError(
      f'{path}: cannot load as a PyTorch state dict ({_first_line(e)})'
    ) from None
  if isinstance(state, Mapping) and 'state_dict' in state:
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise errors.WeightsError(f'{path} holds a {type(state).__name__}, not a state dict')
  # Other values (an epoch number, say) stay as they are, to be named below.
  arrays = {k: v.detach().float().numpy() if torch.is_tensor(v) else v for k, v in state.items()}
  return _from_torch_keys(arrays, path)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  try:
    state = load_file(path)
  except (SafetensorError, ValueError, OSError) as e:
    raise errors.WeightsError(f'{path}: not a readable safetensors file ({e})') from None
  return _from_torch_keys(state, path)


_READERS: dict[str, tuple[Callable[[Path], dict[str, np.ndarray]], str]] = {
  'keras_h5': (_read_keras_h5, pixels.CAFFE.name),
  'torch_pth': (_read_torch_pth, pixels.TORCHVISION.name),
  'safetensors': (_read_safetensors, pixels.TORCHVISION.name),
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
  fmt = detect_format(path)
  if fmt == 'npz':
    raise errors.WeightsError(
      f'{path} is already a converted .npz; use it as model.weights instead'
    )
  reader, implied = _READERS[fmt]
  if convention is not None:
    pixels.get_convention(convention)  # validates the name
  flat = {k: np.ascontiguousarray(v, np.float32) for k, v in reader(path).items()}
  weight_checks.check_params(flat, str(path), fix=_CONVERT_FIX)
  weight_checks.check_values(flat, str(path), fix=_DAMAGED_FIX)
  info = WeightsInfo(
    source=path.name,
    source_sha256=weight_checks.file_digest(path),
    source_format=fmt,
    convention=convention or implied,
    params_sha256=weight_checks.params_digest(flat),
  )
  return flat, info


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
  """Writes converted weights (and their metadata) atomically, without pickles."""
  arrays = dict(flat)
  for field in dataclasses.fields(WeightsInfo):
    arrays[META_PREFIX + field.name] = np.array(getattr(info, field.name))
  arrays[META_PREFIX + 'format_version'] = np.array(FORMAT_VERSION)

  def write(tmp: str) -> None:
    with open(tmp, 'wb') as f:
      np.savez(f, allow_pickle=False, **arrays)

  image_lib.atomic_write(path, write)


def load_weights(path: str | os.PathLike | None = None) -> Weights:
  """Loads converted weights, checking every key and shape.

  Args:
    path: a converted `.npz`; None resolves as `resolve_weights_path`.

  Returns:
    Weights with float32 params on the default device.

  Raises:
    WeightsError: a missing file or a directory, a pickle, a wrong key or shape,
      values that are not finite numbers, no metadata.
  """
  path = resolve_weights_path(path)
  inside = path / DEFAULT_WEIGHTS_PATH.name
  if path.is_dir() and inside.is_file():
    raise errors.WeightsError(
      f'weights file {path} is a directory; use the converted file in it, {inside}'
    )
  if not path.is_file():
    # A directory: the converter writes a file, so name one in it.
    what, output = ('is a directory', inside) if path.is_dir() else ('does not exist', path)
    raise errors.WeightsError(f'weights file {path} {what}; run: {fetch_call(output)}')
  try:
    with np.load(path, allow_pickle=False) as npz:
      contents = {k: npz[k] for k in npz.files}
  except ValueError as e:
    raise errors.WeightsError(
      f'{path} cannot be loaded safely ({e}); it may hold a pickle. Rebuild it '
      f'with {CONVERT_COMMAND}'
    ) from None
  except (OSError, zipfile.BadZipFile, EOFError) as e:
    raise errors.WeightsError(
      f'{path} is not a valid .npz ({e}); rebuild it with {CONVERT_COMMAND}'
    ) from None
  meta = {k[len(META_PREFIX) :]: str(v) for k, v in contents.items() if k.startswith(META_PREFIX)}
  flat = {k: v for k, v in contents.items() if not k.startswith(META_PREFIX)}
  fields = [f.name for f in dataclasses.fields(WeightsInfo)]
  absent = [name for name in fields if name not in meta]
  if absent:
    raise errors.WeightsError(
      f'{path} lacks metadata ({", ".join(absent)}); convert the published '
      f'file with {CONVERT_COMMAND}'
    )
  weight_checks.check_params(flat, str(path), fix=_CONVERT_FIX)
  # Before the hash: an .npz converted before the values were checked can
  # hold a NaN that its own hash vouches for.
  rebuild = f'rebuild it with: {fetch_call(path)}'
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


def resolve_weights_path(path: str | os.PathLike | None = None) -> Path:
  """An explicit path, else $NST_JAX_WEIGHTS, else <project>/weights/vgg19.npz."""
  if path is not None:
    return Path(path)
  env = os.environ.get(WEIGHTS_ENV)
  return Path(env) if env else DEFAULT_WEIGHTS_PATH


def get_weights(
  path: str | os.PathLike | None = None,
  *,
  progress: bool = True,
  urls: Sequence[str] = (),
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
  """
  from nst_jax.io import download  # the fetching side, only when needed

  resolved = resolve_weights_path(path)
  if not resolved.exists() and path is None and WEIGHTS_ENV not in os.environ:
    print(
      f'no weights at {resolved}; fetching the VGG-19 weights (about 80 MB, once)',
      file=sys.stderr,
    )
    raw = download.fetch(download.mirrors(urls), resolved.parent, md5=KERAS_MD5, progress=progress)
    convert_file(raw, resolved)
  return load_weights(resolved)


def as_weights(weights: 'Weights | str | os.PathLike | None') -> Weights:
  """Accepts loaded Weights or a path (None: the default location)."""
  if isinstance(weights, Weights):
    return weights
  return get_weights(weights)
