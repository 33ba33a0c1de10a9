r"""Loss versus wall time for optimiser settings: the evidence behind defaults.

Usage:
  python bench/lbfgs_settings.py --width 256 --seconds 90

Runs the real `update_step` on the sample images (tubingen content, starry
night style) with each setting for a fixed wall-clock budget (compilation
excluded and reported separately), and prints the total loss reached after
several elapsed times, relative to the starting loss. Settings:
  * L-BFGS, history 100, no line search (the classic tools' choice)
  * L-BFGS, history 10, no line search
  * L-BFGS, history 10, optax's default zoom line search
  * Adam, learning rate 10 and 1 (network input units, 0..255 scale)

Uses weights/vgg19.npz when present, else random weights of the same shapes
(label the results accordingly: the loss landscape of random weights is not
that of the trained network).
"""

import argparse
import functools
import json
from pathlib import Path
import sys
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

SETTINGS = {
  'lbfgs_m100': lambda optax: optax.lbfgs(memory_size=100, linesearch=None),
  'lbfgs_m10': lambda optax: optax.lbfgs(memory_size=10, linesearch=None),
  'lbfgs_m10_zoom': lambda optax: optax.lbfgs(memory_size=10),
  'adam_lr10': lambda optax: optax.with_extra_args_support(optax.adam(10.0)),
  'adam_lr1': lambda optax: optax.with_extra_args_support(optax.adam(1.0)),
}
CHECKPOINTS_S = (10, 20, 45, 90, 180)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--seconds', type=float, default=90)
  parser.add_argument('--settings', default=','.join(SETTINGS))
  parser.add_argument('--json', help='also write the curves here')
  args = parser.parse_args()

  import jax
  import optax

  from nst_jax import config as config_lib
  from nst_jax import image as image_lib
  from nst_jax.stylize import init_state
  from nst_jax.stylize import make_model
  from nst_jax.stylize import make_targets
  from nst_jax.stylize import update_step

  cfg = config_lib.StyleConfig()
  model = make_model(cfg)
  params, label, convention = common.params_or_random(model)
  content = image_lib.load_image(ROOT / 'content_images' / 'tubingen.jpg', width=args.width)
  style = image_lib.load_image(ROOT / 'style_images' / 'starry_night.jpg', width=args.width)
  content_net = image_lib.preprocess(content[None], convention)
  targets = make_targets(
    params,
    content_net,
    image_lib.preprocess(style[None], convention),
    model=model,
    loss_config=cfg.loss,
    content_weight=cfg.content_weight,
    style_weight=cfg.style_weight,
  )
  print(f'weights: {label}; {content.shape[1]}x{content.shape[0]}; budget {args.seconds:g} s')
  curves = {}
  for name in args.settings.split(','):
    tx = SETTINGS[name](optax)
    step = jax.jit(
      functools.partial(update_step, model=model, optimizer=tx, loss_config=cfg.loss),
      donate_argnums=0,
    )
    state = init_state(content_net, tx)
    t0 = time.perf_counter()
    compiled = step.lower(state, params, targets).compile()
    compile_s = time.perf_counter() - t0
    curve = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
      state, losses = compiled(state, params, targets)
      curve.append((time.perf_counter() - t0, float(losses['total'][0])))
    curves[name] = {'compile_s': compile_s, 'curve': curve}
    start = curve[0][1]
    cells = []
    for limit in CHECKPOINTS_S:
      if limit > args.seconds:
        break
      best = min(loss for t, loss in curve if t <= limit)
      cells.append(f'{limit:>3d}s {best / start:.4f}')
    per_iter = curve[-1][0] / len(curve)
    print(
      f'{name:15s} compile {compile_s:5.1f} s, {per_iter:.3f} s/iter, {len(curve):4d} iters | '
      + ' | '.join(cells),
      flush=True,
    )
  if args.json:
    Path(args.json).write_text(json.dumps(curves))


if __name__ == '__main__':
  main()
