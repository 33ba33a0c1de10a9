r"""Loss against iterations and time for optimiser settings: the evidence behind defaults.

Usage:
  python bench/optimizer_settings.py --width 256 --iterations 300
  python bench/optimizer_settings.py --settings lbfgs_m30,adam_lr10 --iterations 100

Runs the real `update_step` on the sample images (tubingen content, starry
night style at the same width) with the classic objective (the parity
bench's: -cw 5 -sw 1, w_l = 100 / C_l^2), single scale, content init, for a
fixed number of iterations per setting, and prints the loss after several
iteration counts, seconds per iteration (median after the first), and the
objective of the final image saved as 8 bits (what a user gets; pixels
outside 0..255 are clipped there). Settings:

  lbfgs_mN       our L-BFGS, history N, box on (the default is m30)
  lbfgs_mN_nobox the same, the image clipped only at the end
  optax_mN       optax.lbfgs without line search (the classic tools' method)
  adam_lrX       Adam, step X in pixel units (0..255)

Weights: RANDOM LSUV-scaled (bench/common.py), unless --real and
weights/vgg19.npz exists.
"""

import argparse
import functools
import json
from pathlib import Path
import statistics
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

import common  # noqa: E402

MARKS = (10, 25, 50, 100, 200, 300, 500, 1000)


def optimizer_for(name: str, convention):
  import optax

  from nst_jax.core import optim

  kind, _, rest = name.partition('_')
  if kind == 'adam':
    return optim.make_optimizer('adam', learning_rate=float(rest[2:]), convention=convention)
  memory = int(rest.split('_')[0][1:])
  if kind == 'optax':
    return optax.lbfgs(memory_size=memory, linesearch=None)
  return optim.make_optimizer(
    'lbfgs', memory_size=memory, box=not rest.endswith('nobox'), convention=convention
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--iterations', type=int, default=300)
  parser.add_argument(
    '--settings',
    default='lbfgs_m10,lbfgs_m30,lbfgs_m100,lbfgs_m30_nobox,optax_m100,adam_lr4,adam_lr10,adam_lr20',
  )
  parser.add_argument('--real', action='store_true')
  parser.add_argument('--json', help='also write the curves here')
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch_reference as tr

  import nst_jax
  from nst_jax.core import pixels
  from nst_jax.io import images as image_lib
  from nst_jax.io import weights as weights_lib

  if args.real and weights_lib.DEFAULT_WEIGHTS_PATH.exists():
    path, label = weights_lib.DEFAULT_WEIGHTS_PATH, 'weights/vgg19.npz'
  else:
    path, label = common.lsuv_weights_file(tempfile.mkdtemp())
  w = nst_jax.load_weights(path)
  convention = w.info.input_convention
  content = image_lib.load_image(ROOT / 'content_images' / 'tubingen.jpg', width=args.width)
  style = image_lib.load_image(ROOT / 'style_images' / 'starry_night.jpg', width=args.width)
  loss = nst_jax.LossConfig(
    content_weight=5.0,
    style_weight=1.0,
    style_layer_weights=tuple(100.0 / c**2 for c in tr.STYLE_CHANNELS),
  )
  model = nst_jax.make_model()
  x0 = pixels.preprocess(content[None], convention)
  targets = nst_jax.make_targets(
    w.params,
    x0,
    pixels.preprocess(style[None], convention),
    model=model,
    loss_spec=loss.spec,
    **loss.weights,
  )
  one = jax.tree.map(lambda t: t[0], targets)

  @jax.jit
  def score_8bit(x):
    rgb = jnp.round(jnp.clip(pixels.deprocess(x, convention), 0, 1) * 255) / 255
    net = pixels.preprocess(rgb, convention)[0]
    return nst_jax.objective(net, w.params, one, model=model, loss_spec=loss.spec)[0]

  print(f'weights: {label}; {content.shape[1]}x{content.shape[0]}', flush=True)
  results = {}
  for name in args.settings.split(','):
    tx = optimizer_for(name, convention)
    step = jax.jit(
      functools.partial(nst_jax.update_step, model=model, optimizer=tx, loss_spec=loss.spec),
      donate_argnums=0,
    )
    state = nst_jax.init_state(x0, tx)
    losses, times = [], []
    for _ in range(args.iterations):
      t0 = time.perf_counter()
      state, values = step(state, w.params, targets)
      losses.append(float(values['total'][0]))
      times.append(time.perf_counter() - t0)
    final = float(score_8bit(state.image))
    outside = float(np.mean(np.abs(np.asarray(pixels.deprocess(state.image, convention)) - 0.5)
                            > 0.5))  # fmt: skip
    per_iter = statistics.median(times[1:])
    results[name] = {'losses': losses, 's_per_iter': per_iter, 'score_8bit': final}
    marks = ' '.join(f'{k}:{losses[k - 1]:.5g}' for k in MARKS if k <= len(losses))
    print(
      f'{name:16s} {per_iter:.3f} s/iter | {marks} | 8-bit objective {final:.5g} '
      f'({100 * outside:.1f}% of values outside 0..255 before saving)',
      flush=True,
    )
  if args.json:
    Path(args.json).write_text(json.dumps({'weights': label, 'results': results}))


if __name__ == '__main__':
  main()
