"""The torch reference of the parity bench: neural-style-pt's optimiser on our objective.

VGG-19 in `torch.nn`, loaded from a converted nst-jax `.npz`, and the classic
objective (jcjohnson/neural-style, neural-style-pt):

  5 * mse(relu4_2) + sum_l 100 * mse(G_l / (C_l H_l W_l), A_l / (C_l H_s W_s))

over relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, which is nst-jax's loss
with `-cw 5 -sw 1 --style_layer_weights 100/C_l^2` (CLASSIC_FLAGS). The image
is optimised in Caffe space by `torch.optim.LBFGS(history_size=100,
line_search_fn=None, lr=1, tolerance_grad=-1, tolerance_change=-1)` with
max_iter = the iterations, exactly as neural-style-pt calls it (one
evaluation per iteration). torch is a test and bench dependency only.
"""

import time

import numpy as np

STAGES = (2, 2, 4, 4, 4)
CONTENT_LAYERS = ('relu4_2',)
STYLE_LAYERS = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
STYLE_CHANNELS = (64, 128, 256, 512, 512)
CONTENT_WEIGHT = 5.0
STYLE_WEIGHT = 100.0
# The same objective in nst-jax's flags.
CLASSIC_FLAGS = (
  '-cw',
  '5',
  '-sw',
  '1',
  '--style_layer_weights',
  ','.join(f'{STYLE_WEIGHT / c**2:.10g}' for c in STYLE_CHANNELS),
)


def vgg_layers(npz_path, dtype):
  """[(name, torch module)] up to relu5_1, from a converted .npz."""
  import torch

  data = np.load(npz_path, allow_pickle=False)
  layers = []
  for stage, n in enumerate(STAGES, start=1):
    for i in range(1, n + 1):
      kernel = data[f'conv{stage}_{i}/kernel']  # [kH, kW, in, out]
      conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1)
      with torch.no_grad():
        # [kH, kW, in, out] -> [out, in, kH, kW]
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        conv.bias.copy_(torch.from_numpy(data[f'conv{stage}_{i}/bias']))
      layers += [(f'conv{stage}_{i}', conv), (f'relu{stage}_{i}', torch.nn.ReLU())]
      if (stage, i) == (5, 1):
        return [(name, m.to(dtype)) for name, m in layers]
    layers.append((f'pool{stage}', torch.nn.MaxPool2d(2, 2)))
  raise AssertionError('unreachable')


def features(layers, x):
  out = {}
  for name, module in layers:
    x = module(x)
    if name in CONTENT_LAYERS or name in STYLE_LAYERS:
      out[name] = x
  return out


def gram(f):
  _, c, h, w = f.shape
  flat = f.reshape(c, h * w)
  return flat @ flat.t() / (c * h * w)


class Objective:
  """The classic objective of images in Caffe space, [1, 3, H, W] tensors."""

  def __init__(self, npz_path, content, style, dtype):
    import torch

    self.torch = torch
    self.layers = vgg_layers(npz_path, dtype)
    for _, m in self.layers:
      for p in m.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
      self.content = features(self.layers, content)['relu4_2'].detach()
      sf = features(self.layers, style)
      self.grams = {name: gram(sf[name]).detach() for name in STYLE_LAYERS}

  def __call__(self, x):
    f = features(self.layers, x)
    mse = self.torch.nn.functional.mse_loss
    loss = CONTENT_WEIGHT * mse(f['relu4_2'], self.content)
    for name in STYLE_LAYERS:
      loss = loss + STYLE_WEIGHT * mse(gram(f[name]), self.grams[name])
    return loss


def to_torch(x_net, dtype):
  """[H, W, 3] network-space (BGR) numpy -> [1, 3, H, W] tensor."""
  import torch

  return torch.from_numpy(np.ascontiguousarray(x_net.transpose(2, 0, 1)[None])).to(dtype)


def run_lbfgs(objective, init, iterations: int, history: int = 100, t0: float | None = None):
  """neural-style-pt's optimisation; returns (image [H, W, 3] network space, trace).

  trace: one (evaluation, seconds since t0, loss) per evaluation.
  """
  import torch

  t0 = time.perf_counter() if t0 is None else t0
  img = init.clone().requires_grad_(True)
  optimizer = torch.optim.LBFGS(
    [img],
    lr=1,
    max_iter=iterations,
    history_size=history,
    line_search_fn=None,
    tolerance_grad=-1,
    tolerance_change=-1,
  )
  trace = []

  def feval():
    optimizer.zero_grad()
    loss = objective(img)
    loss.backward()
    trace.append((len(trace) + 1, time.perf_counter() - t0, float(loss)))
    return loss

  optimizer.step(feval)
  return img.detach()[0].numpy().transpose(1, 2, 0), trace


def evaluate(npz_path, content_net, style_net, image_net) -> float:
  """The objective of one image in float64 (the bench's single evaluator)."""
  import torch

  dtype = torch.float64
  objective = Objective(npz_path, to_torch(content_net, dtype), to_torch(style_net, dtype), dtype)
  with torch.no_grad():
    return float(objective(to_torch(image_net, dtype)))
