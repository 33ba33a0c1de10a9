r"""Tiles against the untiled step: time per iteration, peak memory and the image.

Usage:
  python bench/bench_tiles.py [--width 1024] [--tiles 256] [--pairs 2]

Whole processes of `main.py` on the sample images (tubingen, starry night),
LSUV-scaled random weights (the real network's activation scale), in
alternating order (ABBA...): `--tiles off` and `--tiles N`, each at 10 and
30 iterations, so that an iteration's time is (T(30) - T(10)) / 20 without
the start-up and compile. Reports for each arm the median per-iteration
time, the ratio, the peak RSS (getrusage of the child) against
`estimate_memory`, and the mean difference of the two 30-iteration images in
levels of 255. Name the CPU (`lscpu`) with every figure.
"""

import argparse
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))
sys.path.insert(0, str(ROOT / 'tests'))


def one(weights: Path, width: int, tiles: str, iterations: int, out: Path) -> tuple[float, int]:
  """(wall seconds, peak RSS bytes) of one main.py process."""
  t0 = time.perf_counter()
  child = subprocess.Popen(
    [sys.executable, str(ROOT / 'main.py'), '-cp', str(ROOT / 'content_images/tubingen.jpg'),
     '-sp', str(ROOT / 'style_images/starry_night.jpg'), '-w', str(width), '-i', str(iterations),
     '--weights', str(weights), '--tiles', tiles, '--output', str(out), '--compile_cache', 'off',
     '--overwrite', '--record=false', '--print_iter', '0', '--tol', '0'],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )  # fmt: skip
  _, status, usage = os.wait4(child.pid, 0)
  wall = time.perf_counter() - t0
  if status:
    raise SystemExit(f'main.py --tiles {tiles} -w {width} failed with status {status}')
  return wall, usage.ru_maxrss * 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--width', type=int, default=1024)
  parser.add_argument('--tiles', default='256')
  parser.add_argument('--pairs', type=int, default=2)
  args = parser.parse_args()
  import common

  from nst_jax import config as config_lib
  from nst_jax.engine import memory

  work = Path(tempfile.mkdtemp(prefix='bench-tiles-'))
  weights, _ = common.lsuv_weights_file(work)
  arms = ('off', args.tiles)
  times = {arm: {10: [], 30: []} for arm in arms}
  order = []
  for p in range(args.pairs):
    order += list(arms) if p % 2 == 0 else list(reversed(arms))
  for arm in order:
    for n in (10, 30):
      wall, _ = one(weights, args.width, arm, n, work / f'{arm}_{n}.png')
      times[arm][n].append(wall)
      print(f'tiles {arm:>4} -i {n}: {wall:.1f} s', flush=True)
  per = {}
  for arm in arms:
    its = [(b - a) / 20 for a, b in zip(times[arm][10], times[arm][30], strict=True)]
    per[arm] = statistics.median(its)
    print(f'tiles {arm}: {per[arm]:.3f} s per iteration (median of {len(its)}: {its})')
  print(f'ratio tiles {args.tiles} / off: {per[args.tiles] / per["off"]:.2f}')
  a, b = (np.asarray(Image.open(work / f'{arm}_30.png'), np.float64) for arm in arms)
  print(
    f'image: mean |difference| {np.abs(a - b).mean():.3f} of 255, max {np.abs(a - b).max():.0f}'
  )
  height = Image.open(work / 'off_30.png').size[1]
  for arm in arms:
    _, peak = one(weights, args.width, arm, 2, work / f'{arm}_peak.png')
    cfg = config_lib.StyleConfig(loss=config_lib.LossConfig(tiles=arm))
    tile = None if arm == 'off' else int(arm)
    estimate = memory.estimate_memory(height, args.width, config=cfg, tile=tile)
    print(f'tiles {arm}: peak RSS {peak / 1e9:.2f} GB, estimate {estimate / 1e9:.2f} GB')


if __name__ == '__main__':
  main()
