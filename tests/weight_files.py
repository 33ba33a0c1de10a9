"""Test fixtures: VGG-19 weight files with the published layouts, random values.

The real weights cannot be downloaded in tests, so these write files whose
structure is exactly that of the published ones (checked against their
documented layouts) and whose values are random, He-initialised so that
activations stay O(1) relative to the input through all 16 layers:

  * Keras .h5: root attribute `layer_names`; one group per layer with attribute
    `weight_names`; Keras-1 dataset names `block1_conv1_W_1:0` /
    `block1_conv1_b_1:0` (as in vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5)
    or Keras-2 names `block1_conv1/kernel:0` (nested groups). Kernels
    [kH, kW, in, out].
  * torchvision state dict: `features.{0,2,5,...,34}.{weight,bias}`, kernels
    [out, in, kH, kW], optional `classifier.*` entries.

Two value variants:
  * `random_params`: He-normal kernels with small random biases. Activations
    stay O(1) relative to the input, but the network's scale is not the real
    one.
  * `lsuv_params`: He-normal kernels, zero biases, then each convolution
    rescaled by one scalar so that its post-ReLU RMS on a probe image equals
    the RMS of the probe's Caffe-space input (about 60-75 for photographs):
    the activation scale of the real VGG-19 on Caffe inputs, so that losses,
    gradients and optimiser step sizes have their real magnitudes (layer-
    sequential unit-variance scaling, Mishkin & Matas 2016, with the input's
    RMS as the target instead of 1). Tune and judge optimiser settings on
    these; `small_activation_params` scales their conv1_1 down (activations
    about 1 instead of about 70), the case where losses are tiny.

Also a float64 numpy forward pass of VGG-19, written independently of the
library, as the oracle for the Flax network.
"""

import functools
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

STAGE_SIZES = (2, 2, 4, 4, 4)
WIDTHS = (64, 128, 256, 512, 512)
TORCH_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def conv_layers():
  """[(paper name, keras name, in, out)] in network order."""
  out, cin = [], 3
  for stage, (n, width) in enumerate(zip(STAGE_SIZES, WIDTHS, strict=True), start=1):
    for i in range(1, n + 1):
      out.append((f'conv{stage}_{i}', f'block{stage}_conv{i}', cin, width))
      cin = width
  return out


def random_params(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """paper name -> (kernel [3, 3, in, out] float32, bias [out] float32)."""
  rng = np.random.default_rng(seed)
  params = {}
  for name, _, cin, cout in conv_layers():
    std = np.sqrt(2.0 / (9 * cin))
    kernel = rng.normal(0.0, std, (3, 3, cin, cout)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, (cout,)).astype(np.float32)
    params[name] = (kernel, bias)
  return params


# The probe image of `lsuv_params`: a photograph shipped with the project.
PROBE_IMAGE = Path(__file__).resolve().parent.parent / 'content_images' / 'tubingen.jpg'
PROBE_WIDTH = 128
# How much `small_activation_params` scales conv1_1 down: 2^7, an exact
# power of two, so the network (ReLU, max pooling, zero biases) computes
# exactly the LSUV network's activations divided by 128.
SMALL_ACTIVATION_FACTOR = 128.0


def probe_input(width: int = PROBE_WIDTH) -> np.ndarray:
  """The probe image in Caffe space, [1, H, width, 3] float64."""
  im = Image.open(PROBE_IMAGE).convert('RGB')
  im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
  rgb = np.asarray(im, np.float64) / 255.0
  return caffe_preprocess(rgb)[None]


@functools.lru_cache(maxsize=4)
def _lsuv_cached(seed: int) -> dict:
  return _lsuv(seed, probe_input())


def lsuv_params(seed: int = 0, probe: np.ndarray | None = None) -> dict:
  """He-normal weights with the real network's activation scale (module docstring).

  Each convolution's kernel is multiplied by target / RMS(relu(conv(x))),
  layer by layer through the network, x the probe's activations so far and
  target the RMS of the probe input. With zero biases a ReLU network is
  positively homogeneous, so one scalar per layer sets its output RMS
  exactly.

  Args:
    seed: random seed of the He-normal kernels.
    probe: [1, H, W, 3] Caffe-space input (default: `probe_input()`).

  Returns:
    paper name -> (kernel [3, 3, in, out] float32, zero bias [out] float32).
  """
  if probe is None:
    return dict(_lsuv_cached(seed))
  return _lsuv(seed, probe)


def _lsuv(seed: int, probe: np.ndarray) -> dict:
  rng = np.random.default_rng(seed)
  x = np.asarray(probe, np.float64)
  target = float(np.sqrt(np.mean(np.square(x))))
  params = {}
  for name, _, cin, cout in conv_layers():
    kernel = rng.normal(0.0, np.sqrt(2.0 / (9 * cin)), (3, 3, cin, cout))
    out = np.maximum(_conv(x, kernel, np.zeros(cout)), 0.0)
    scale = target / float(np.sqrt(np.mean(np.square(out))))
    params[name] = ((kernel * scale).astype(np.float32), np.zeros(cout, np.float32))
    x = out * scale
    stage, i = (int(v) for v in name[4:].split('_'))
    if i == STAGE_SIZES[stage - 1]:
      x = _pool(x, 'max')
  return params


def small_activation_params(seed: int = 0) -> dict:
  """`lsuv_params` with conv1_1 divided by SMALL_ACTIVATION_FACTOR (activations about 0.5)."""
  params = dict(lsuv_params(seed))
  kernel, bias = params['conv1_1']
  params['conv1_1'] = ((kernel / SMALL_ACTIVATION_FACTOR).astype(np.float32), bias)
  return params


def write_keras_h5(path, params, *, keras_version: int = 1, include_top: bool = False):
  """Writes `params` in the layout of Keras' VGG19 weight files."""
  layers = ['input_1']
  with h5py.File(path, 'w') as f:
    f.attrs['backend'] = b'tensorflow'
    f.attrs['keras_version'] = b'1.2.2' if keras_version == 1 else b'2.2.4'
    for name, keras_name, _, _ in conv_layers():
      kernel, bias = params[name]
      if keras_version == 1:
        names = [f'{keras_name}_W_1:0', f'{keras_name}_b_1:0']
      else:
        names = [f'{keras_name}/kernel:0', f'{keras_name}/bias:0']
      group = f.create_group(keras_name)
      group.attrs['weight_names'] = np.array([n.encode() for n in names])
      group.create_dataset(names[0], data=kernel)
      group.create_dataset(names[1], data=bias)
      layers.append(keras_name)
      if keras_name.endswith(f'conv{STAGE_SIZES[int(keras_name[5]) - 1]}'):
        pool = f'block{keras_name[5]}_pool'
        f.create_group(pool).attrs['weight_names'] = np.array([], dtype='S1')
        layers.append(pool)
    f.create_group('input_1').attrs['weight_names'] = np.array([], dtype='S1')
    if include_top:
      # Real names, small shapes: the converter drops these without reading.
      f.create_group('flatten').attrs['weight_names'] = np.array([], dtype='S1')
      layers.append('flatten')
      rng = np.random.default_rng(1)
      for fc in ('fc1', 'fc2', 'predictions'):
        group = f.create_group(fc)
        names = [f'{fc}_W_1:0', f'{fc}_b_1:0']
        group.attrs['weight_names'] = np.array([n.encode() for n in names])
        group.create_dataset(names[0], data=rng.normal(size=(8, 4)).astype(np.float32))
        group.create_dataset(names[1], data=np.zeros(4, np.float32))
        layers.append(fc)
    f.attrs['layer_names'] = np.array([n.encode() for n in layers])


def torchvision_state(params, *, include_classifier: bool = False) -> dict[str, np.ndarray]:
  """`params` as a torchvision `vgg19().state_dict()` (numpy arrays)."""
  state = {}
  for index, (name, _, _, _) in zip(TORCH_INDICES, conv_layers(), strict=True):
    kernel, bias = params[name]
    state[f'features.{index}.weight'] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    state[f'features.{index}.bias'] = bias.copy()
  if include_classifier:
    rng = np.random.default_rng(2)
    for i in (0, 3, 6):
      state[f'classifier.{i}.weight'] = rng.normal(size=(4, 8)).astype(np.float32)
      state[f'classifier.{i}.bias'] = np.zeros(4, np.float32)
  return state


def write_pth(path, state):
  import torch  # test-only dependency (requirements-dev.txt)

  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


def write_safetensors(path, state):
  from safetensors.numpy import save_file

  save_file(state, str(path))


def caffe_preprocess(rgb: np.ndarray) -> np.ndarray:
  """RGB [0, 1] -> BGR 0..255 minus the VGG mean pixel, float64."""
  bgr = rgb[..., ::-1].astype(np.float64) * 255.0
  return bgr - np.array([103.939, 116.779, 123.68])


def torchvision_preprocess(rgb: np.ndarray) -> np.ndarray:
  """RGB [0, 1] -> (rgb - mean) / std, float64."""
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  return (rgb.astype(np.float64) - mean) / std


def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """3x3 cross-correlation, stride 1, zero padding 1, as im2col in float64."""
  _, h, w, c = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Patches ordered (kh, kw, c) like the kernel.
  patches = np.concatenate(
    [padded[:, kh : kh + h, kw : kw + w, :] for kh in range(3) for kw in range(3)],
    axis=-1,
  )
  return patches @ np.asarray(kernel, np.float64).reshape(9 * c, -1) + bias


def _pool(x: np.ndarray, pooling: str) -> np.ndarray:
  """2x2 stride 2, odd edges dropped (floor)."""
  nb, h, w, c = x.shape
  blocks = x[:, : h // 2 * 2, : w // 2 * 2].reshape(nb, h // 2, 2, w // 2, 2, c)
  return blocks.max(axis=(2, 4)) if pooling == 'max' else blocks.mean(axis=(2, 4))


def numpy_vgg19(params, x: np.ndarray, pooling: str = 'max') -> dict[str, np.ndarray]:
  """Float64 reference forward pass: every conv, relu and pool output.

  Args:
    params: paper name -> (kernel [3, 3, in, out], bias).
    x: [N, H, W, 3] already preprocessed.
    pooling: 'max' or 'avg'; 2x2 stride 2, odd edges dropped (floor).
  """
  out = {}
  x = x.astype(np.float64)
  for stage, n in enumerate(STAGE_SIZES, start=1):
    for i in range(1, n + 1):
      kernel, bias = params[f'conv{stage}_{i}']
      x = _conv(x, kernel, bias)
      out[f'conv{stage}_{i}'] = x
      x = np.maximum(x, 0.0)
      out[f'relu{stage}_{i}'] = x
    x = _pool(x, pooling)
    out[f'pool{stage}'] = x
  return out


def relative_error(actual, expected) -> float:
  """||actual - expected|| / ||expected|| (Frobenius), in float64."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-300))
