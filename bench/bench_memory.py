r"""Memory pre-flight estimate against the measured peak, for several widths.

Usage:
  python bench/bench_memory.py [--widths 256,512,1024]
  python bench/bench_memory.py --largest 24 [--platform cpu]

`--largest GB`: no run; for each memory plan (untiled, tiles, the L-BFGS
history), the widest 4:3 image whose estimate fits in GB, by bisection on
`estimate_memory` (which the runs above and bench/bench_tiles.py check
against measured peaks: 1-6% above them on CPU).

For each width, a fresh process stylizes the sample images (tubingen content,
starry night style, 2 iterations, default settings) and reports:
  * the estimate `nst_jax.engine.memory.estimate_memory` makes before compiling,
  * XLA's own analysis of the compiled step (temp + arguments + outputs),
  * the measured peak: on CPU the process's peak RSS minus its RSS after
    importing JAX and starting the backend (so it counts the weights, images,
    compilation and the step); on GPU/TPU the allocator's peak.
Uses weights/vgg19.npz if present, else random weights of the same shapes.
"""

import argparse
import functools
import json
from pathlib import Path
import resource
import subprocess
import sys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))


def _rss_bytes() -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  raise RuntimeError('no VmRSS')


def run_one(width: int) -> dict:
  import jax

  import nst_jax  # noqa: F401  (sets its XLA flags before the backend starts)

  jax.devices()  # start the backend before the baseline
  baseline = _rss_bytes()
  import jax.numpy as jnp

  from nst_jax import config as config_lib
  from nst_jax.core.objective import make_targets
  from nst_jax.core.step import init_state
  from nst_jax.core.step import make_model
  from nst_jax.core.step import make_optimizer
  from nst_jax.core.step import update_step
  from nst_jax.engine.memory import estimate_memory
  from nst_jax.io import images as image_lib
  from nst_jax.io import weights as weights_lib
  from nst_jax.runs.arrays import stylize

  cfg = config_lib.StyleConfig(
    inputs=config_lib.InputConfig(width=width),
    schedule=config_lib.ScheduleConfig(iterations=2, scales=1),
    run=config_lib.RunConfig(print_iter=0),
  )
  if weights_lib.DEFAULT_WEIGHTS_PATH.exists():
    w = weights_lib.load_weights()
  else:
    import weight_files

    flat = {
      f'{name}/{kind}': array
      for name, pair in weight_files.random_params(0).items()
      for kind, array in zip(('kernel', 'bias'), pair, strict=True)
    }
    params = {}
    for key, value in flat.items():
      layer, kind = key.split('/')
      params.setdefault(layer, {})[kind] = jnp.asarray(value)
    w = weights_lib.Weights(
      params=params, info=weights_lib.WeightsInfo('random', '', '', 'caffe', '')
    )
  content = image_lib.load_image(ROOT / 'content_images' / 'tubingen.jpg', width=width)
  style = image_lib.load_image(ROOT / 'style_images' / 'starry_night.jpg', width=width)
  h = max(content.shape[0], style.shape[0])
  estimate = estimate_memory(h, width, config=cfg, platform=jax.devices()[0].platform)

  model = make_model()
  tx = make_optimizer(
    'lbfgs', memory_size=cfg.optim.lbfgs_memory, convention=nst_jax.core.pixels.CAFFE
  )
  image = jax.ShapeDtypeStruct((1, content.shape[0], width, 3), jnp.float32)
  targets = jax.eval_shape(
    functools.partial(
      make_targets,
      model=model,
      loss_spec=cfg.loss.spec,
      **cfg.loss.weights,
    ),
    w.params,
    image,
    image,
  )
  state = jax.eval_shape(lambda x: init_state(x, tx), image)
  step = functools.partial(update_step, model=model, optimizer=tx, loss_spec=cfg.loss.spec)
  m = jax.jit(step, donate_argnums=0).lower(state, w.params, targets).compile().memory_analysis()
  xla = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
  xla -= m.alias_size_in_bytes

  stylize(content, style, config=cfg, weights=w)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    measured, kind = stats['peak_bytes_in_use'], 'device peak'
  else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    measured, kind = peak - baseline, 'peak RSS above JAX baseline'
  return {
    'size': f'{width}x{content.shape[0]} (style {width}x{style.shape[0]})',
    'estimate_mb': round(estimate / 1e6),
    'xla_mb': round(xla / 1e6),
    'measured_mb': round(measured / 1e6),
    'measured_kind': kind,
    'estimate_over_measured': round(estimate / measured, 2),
  }


def largest(gigabytes: float, platform: str) -> None:
  """Prints the widest 4:3 image each plan's estimate fits in `gigabytes`."""
  import nst_jax
  from nst_jax.engine import memory

  plans = [('untiled', 'off', 30), ('untiled', 'off', 5)]
  plans += [(f'tiles of {t}', t, m) for t in (512, 256) for m in (30, 5)]
  for label, tiles, history in plans:
    config = nst_jax.StyleConfig(
      loss=nst_jax.LossConfig(tiles=tiles), optim=nst_jax.OptimConfig(lbfgs_memory=history)
    )
    tile = tiles if isinstance(tiles, int) else None

    def need(width, config=config, tile=tile):
      height = width * 3 // 4
      return memory.estimate_memory(height, width, config=config, platform=platform, tile=tile)

    low, high = 64, 1 << 16
    while high - low > 1:
      mid = (low + high) // 2
      low, high = (mid, high) if need(mid) <= gigabytes * 1e9 else (low, mid)
    print(
      f'{label}, L-BFGS history {history}: up to {low}x{low * 3 // 4} in {gigabytes:g} GB '
      f'({need(low) / (low * (low * 3 // 4)):.0f} bytes per pixel there; {platform})',
      flush=True,
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--widths', default='256,512,1024')
  parser.add_argument('--one', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--largest', type=float, help='GB: the widest image of each plan, no run')
  parser.add_argument('--platform', default='cpu')
  args = parser.parse_args()
  if args.largest:
    largest(args.largest, args.platform)
    return
  if args.one:
    print(json.dumps(run_one(args.one)))
    return
  for width in map(int, args.widths.split(',')):
    out = subprocess.run(
      [sys.executable, __file__, '--one', str(width)], capture_output=True, text=True
    )
    if out.returncode != 0:
      sys.exit(f'width {width} failed:\n{out.stderr[-3000:]}')
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
      f'{r["size"]}: estimate {r["estimate_mb"]} MB, XLA analysis {r["xla_mb"]} MB, measured '
      f'{r["measured_mb"]} MB ({r["measured_kind"]}); estimate/measured '
      f'{r["estimate_over_measured"]}',
      flush=True,
    )


if __name__ == '__main__':
  main()
