r"""Time to result: coarse-to-fine (--scales) against one scale, same final loss.

Usage:
  python bench/bench_multiscale.py --width 256 --scales 3 --iters_per_scale 60 \
      --reference_iters 250 --repeats 3

For each repeat:
  * multi-scale: the widths of `nst_jax.engine.schedule.scale_widths` (sqrt(2) apart),
    `--iters_per_scale` L-BFGS iterations at each, each scale starting from
    the previous result upsampled, as `nst_jax.stylize` does. Its final loss
    L_ms is measured at the full width, against the same targets the
    single-scale run uses.
  * single scale: the same width from the content image, up to
    `--reference_iters` iterations, logging (wall time, loss) each iteration.
Both clocks include computing the targets and compiling (a multi-scale run
compiles once per scale). Reported: the multi-scale time T_ms, the time T_ss
the single-scale run needed to first reach L_ms, and T_ss / T_ms; medians
over the repeats.

Uses weights/vgg19.npz when present, else random weights of the same shapes
(label the results accordingly).
"""

import argparse
import functools
import json
from pathlib import Path
import statistics
import sys
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--scales', type=int, default=3)
  parser.add_argument('--iters_per_scale', type=int, default=60)
  parser.add_argument('--reference_iters', type=int, default=250)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', help='also write the raw results here')
  args = parser.parse_args()

  import jax

  from nst_jax import config as config_lib
  from nst_jax.core import optim
  from nst_jax.core import pixels
  from nst_jax.core.objective import make_targets
  from nst_jax.core.step import init_state
  from nst_jax.core.step import make_model
  from nst_jax.core.step import make_optimizer
  from nst_jax.core.step import update_step
  from nst_jax.engine import schedule
  from nst_jax.io import images as image_lib

  cfg = config_lib.StyleConfig(
    inputs=config_lib.InputConfig(width=args.width),
    schedule=config_lib.ScheduleConfig(scales=args.scales),
  )
  model = make_model(cfg.model.pooling, dtype=cfg.model.dtype, precision=cfg.model.precision)
  params, label, convention = common.params_or_random(model)
  o = cfg.optim
  # Each optimiser its own settings, as the engine builds it (Adam refuses L-BFGS's).
  tx = make_optimizer(o.name, **optim.config_arguments(o), convention=convention)
  content = image_lib.load_image(ROOT / 'content_images' / 'tubingen.jpg', width=args.width)[None]
  style = image_lib.load_image(ROOT / 'style_images' / 'starry_night.jpg', width=args.width)[None]
  step = jax.jit(
    functools.partial(update_step, model=model, optimizer=tx, loss_spec=cfg.loss.spec),
    donate_argnums=0,
  )

  def targets_at(height, width):
    c = pixels.resize(content, height, width)
    sh = max(1, round(style.shape[1] * width / args.width))
    s = pixels.resize(style, sh, width)
    c_net = pixels.preprocess(c, convention)
    t = make_targets(
      params,
      c_net,
      pixels.preprocess(s, convention),
      model=model,
      loss_spec=cfg.loss.spec,
      content_weight=cfg.loss.content_weight,
      style_weight=cfg.loss.style_weight,
    )
    return c_net, t

  def optimise(init, targets, iters, t0, curve):
    state = init_state(init, tx)
    compiled = step.lower(state, params, targets).compile()
    for _ in range(iters):
      state, losses = compiled(state, params, targets)
      curve.append((time.perf_counter() - t0, float(losses['total'][0])))
    return state.image

  height = content.shape[1]
  widths = schedule.scale_widths(args.width, scales=args.scales)
  print(
    f'weights: {label}; final {args.width}x{height}; scales {widths}; '
    f'{args.iters_per_scale} iterations per scale; reference up to {args.reference_iters}',
    flush=True,
  )
  rows = []
  for repeat in range(args.repeats):
    t0 = time.perf_counter()
    x, ms_curve = None, []
    for wk in widths:
      hk = pixels.resized_height(args.width, height, wk)
      c_net, targets = targets_at(hk, wk)
      init = c_net if x is None else pixels.resize(x, hk, wk)
      ms_curve = []  # only the final scale's losses compare with one scale
      x = optimise(init, targets, args.iters_per_scale, t0, ms_curve)
    t_ms, l_ms = ms_curve[-1][0], ms_curve[-1][1]

    t0 = time.perf_counter()
    c_net, targets = targets_at(height, args.width)
    ss_curve = []
    optimise(c_net, targets, args.reference_iters, t0, ss_curve)
    reached = [(t, i + 1) for i, (t, loss) in enumerate(ss_curve) if loss <= l_ms]
    t_ss, n_ss = reached[0] if reached else (None, None)
    row = {
      'repeat': repeat,
      't_multiscale_s': t_ms,
      'loss_multiscale': l_ms,
      'loss_single_start': ss_curve[0][1],
      'loss_single_end': ss_curve[-1][1],
      't_single_to_same_loss_s': t_ss,
      'single_iterations_to_same_loss': n_ss,
      'single_s_per_iter': (ss_curve[-1][0] - ss_curve[0][0]) / (len(ss_curve) - 1),
    }
    rows.append(row)
    same = (
      f'{t_ss:.1f} s ({n_ss} iterations), ratio {t_ss / t_ms:.2f}'
      if t_ss
      else f'not reached in {ss_curve[-1][0]:.1f} s ({len(ss_curve)} iterations; '
      f'loss {ss_curve[-1][1] / l_ms:.2f} x L_ms)'
    )
    print(
      f'repeat {repeat}: multi-scale {t_ms:.1f} s to loss {l_ms:.4g} '
      f'({l_ms / ss_curve[0][1]:.4f} of the single-scale start); single scale: {same}',
      flush=True,
    )
  done = [r for r in rows if r['t_single_to_same_loss_s']]
  if len(done) == len(rows):
    t_ms = statistics.median(r['t_multiscale_s'] for r in rows)
    t_ss = statistics.median(r['t_single_to_same_loss_s'] for r in rows)
    ratio = statistics.median(r['t_single_to_same_loss_s'] / r['t_multiscale_s'] for r in rows)
    print(
      f'median of {len(rows)}: multi-scale {t_ms:.1f} s, single scale {t_ss:.1f} s to the same '
      f'loss; single / multi = {ratio:.2f}'
    )
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == '__main__':
  main()
