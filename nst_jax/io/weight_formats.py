"""The published VGG-19 files as they are: which format a file is, and reading its arrays.

Keras h5 (read by the `layer_names` and `weight_names` attributes, never by
guessed dataset names), torchvision .pth (without running pickled code) and
.safetensors with torchvision's keys, each to flat `conv1_1/kernel` arrays in
[kH, kW, in, out]; and the fixes a message about a file ends with. Checking
the arrays is nst_jax.io.weight_checks; converting and loading,
nst_jax.io.weights.
"""

from collections.abc import Mapping
import os
from pathlib import Path
import re
import zipfile

import numpy as np

from nst_jax import errors
from nst_jax.core import vgg
from nst_jax.io import weight_checks

# Where the converted weights live unless told otherwise: <project>/weights/
# in a source checkout (the directory holding convert_weights.py); for an
# installed package, the user's cache, as Keras keeps its downloads in
# ~/.keras/models.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
IN_CHECKOUT = (PROJECT_ROOT / 'convert_weights.py').is_file()
# How a command-line user runs the converter: the programs print the calls
# that messages suggest (fetch_call, convert_call) as its command lines
# (nst_jax.cli.spelling).
CONVERT_COMMAND = 'python convert_weights.py' if IN_CHECKOUT else 'nst-jax-convert'


def call(function: str, path: str | os.PathLike | None) -> str:
  # repr: the name as a Python string literal, one line whatever it holds.
  return f'{function}({"" if path is None else repr(os.fspath(path))})'


def fetch_call(output: str | os.PathLike | None = None) -> str:
  """The call a message suggests to fetch and convert the published weights into `output`."""
  return call('nst_jax.io.download.fetch_and_convert', output)


def convert_call(source: str | os.PathLike) -> str:
  """The call a message suggests to convert the published file `source` (`convert_file`)."""
  return call('nst_jax.io.weights.convert_file', source)


# Indices of the conv layers in torchvision's `vgg19().features` Sequential
# (conv, relu, conv, relu, pool, ...), in network order.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
# Keras names the fully connected layers of the "top" file like this; they are
# dropped, since style transfer only uses the convolutional trunk.
KERAS_FC_LAYERS = ('fc1', 'fc2', 'predictions', 'flatten')

# The fixes messages end with: for a file that does not fit the network, one
# whose values are not all finite, a Keras file unlike the published one.
CONVERT_FIX = f'convert the published VGG-19 file with {CONVERT_COMMAND}'
DAMAGED_FIX = f'the file is damaged: fetch and convert the published one with {fetch_call()}'
NOT_KERAS_NOTOP = (
  f'this is not the published VGG-19 notop file: fetch and convert that with {fetch_call()}'
)

HDF5_MAGIC = b'\x89HDF\r\n\x1a\n'
ZIP_MAGIC = b'PK\x03\x04'


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
    what = 'is a directory; name the file in it' if path.is_dir() else 'does not exist'
    raise errors.WeightsError(f'weights file {path} {what}')
  with open(path, 'rb') as f:
    head = f.read(16)
  size = path.stat().st_size
  if head.startswith(HDF5_MAGIC):
    return 'keras_h5'
  if head.startswith(ZIP_MAGIC):
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


def keras_layer_name(name: str) -> str | None:
  """'block4_conv2' -> 'conv4_2'; None for names that are not VGG-19 convs."""
  m = re.fullmatch(r'block(\d+)_conv(\d+)', name)
  paper = f'conv{m[1]}_{m[2]}' if m else None
  return paper if paper in vgg.conv_names(vgg.VGG19_STAGE_SIZES) else None


def read_keras_h5(path: Path) -> dict[str, np.ndarray]:
  import h5py  # pylint: disable=g-import-not-at-top  # only needed here

  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise errors.WeightsError(
      f'{path} is not a readable HDF5 file ({e}); download the published file again'
    ) from None
  try:
    with f:
      return keras_layers(path, f)
  except (OSError, RuntimeError, KeyError, ValueError) as e:
    # What h5py raises for a damaged object header, heap or B-tree (names
    # that do not decode are ValueErrors): every read below is of the file.
    raise errors.WeightsError(f'{path}: HDF5 error ({first_line(e)}); {DAMAGED_FIX}') from None


def keras_layers(path: Path, f) -> dict[str, np.ndarray]:
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
    layer = text(raw)
    if layer not in root:
      raise errors.WeightsError(
        f'{path}: layer {layer} is listed in layer_names but has no group; {NOT_KERAS_NOTOP}'
      )
    weight_names = [text(w) for w in root[layer].attrs.get('weight_names', [])]
    if not weight_names:
      continue  # input, pooling and flatten layers have no weights
    name = keras_layer_name(layer)
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
        f'bias; {NOT_KERAS_NOTOP}'
      )
    # Keras 'tf' ordering is already [kH, kW, in, out] (HWIO), as Flax wants.
    for param, weight in zip(('kernel', 'bias'), weight_names, strict=True):
      key = f'{name}/{param}'
      flat[key] = weight_checks.keras_dataset(
        root[layer], weight, key, source=str(path), fix=NOT_KERAS_NOTOP
      )
  return flat


def text(value) -> str:
  """An HDF5 string attribute entry (bytes in files Keras wrote) as str."""
  return value.decode() if isinstance(value, bytes) else str(value)


def first_line(e: Exception) -> str:
  # A KeyError's str() quotes its message.
  text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def from_torch_keys(state: Mapping[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
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
        f'{path}: {key} is a {type(value).__name__}, not a tensor; {CONVERT_FIX}'
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


def read_torch_pth(path: Path) -> dict[str, np.ndarray]:
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
      f'{path}: cannot load as a PyTorch state dict ({first_line(e)})'
    ) from None
  if isinstance(state, Mapping) and 'state_dict' in state:
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise errors.WeightsError(f'{path} holds a {type(state).__name__}, not a state dict')
  # Other values (an epoch number, say) stay as they are, to be named below.
  arrays = {k: v.detach().float().numpy() if torch.is_tensor(v) else v for k, v in state.items()}
  return from_torch_keys(arrays, path)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  try:
    state = load_file(path)
  except (SafetensorError, ValueError, OSError) as e:
    raise errors.WeightsError(
      f'{path}: not a readable safetensors file ({e}); download the published file again'
    ) from None
  return from_torch_keys(state, path)
