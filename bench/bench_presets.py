"""Expected CPU run time of each preset (docs/controls.md, Presets).

Runs `main.py --preset NAME` on the sample images as a user would (a fresh
process each time: start-up, image loading, compile and the loop). A preset
whose full run is short is timed whole; a long one is timed at two iteration
counts and extrapolated linearly, since after the first iteration every
iteration costs the same on average:
  T(N) = T(a) + (N - a) * (T(b) - T(a)) / (b - a).

  python bench/bench_presets.py --repeats 3
"""

import argparse
from pathlib import Path
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

CONTENT = ROOT / 'content_images' / 'tubingen.jpg'
STYLE = ROOT / 'style_images' / 'starry_night.jpg'


def _iterations(name: str) -> int:
  text = (ROOT / 'presets' / f'{name}.flags').read_text()
  return int(re.search(r'^--iterations=(\d+)$', text, re.M).group(1))


def _time(name: str, iterations: int, weights: Path, out: Path) -> float:
  t0 = time.perf_counter()
  subprocess.run(
    [sys.executable, str(ROOT / 'main.py'), '--preset', name, '-cp', str(CONTENT), '-sp',
     str(STYLE), '-i', str(iterations), '--weights', str(weights), '--output', str(out),
     '--norecord', '--progress', 'log', '--checkpoint_every', '0'],
    check=True, capture_output=True,
  )  # fmt: skip
  elapsed = time.perf_counter() - t0
  out.unlink()
  return elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--presets', default='fast_cpu,paper,classic')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--whole_below', type=int, default=200, help='time whole up to N iterations')
  parser.add_argument('--short', type=int, default=5)
  parser.add_argument('--long', type=int, default=20)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    weights, label = common.weights_file_or_random(tmp)
    print(f'weights: {label}')
    print('| preset | iterations | run time (median) | runs | method |')
    print('| --- | --- | --- | --- | --- |')
    for name in args.presets.split(','):
      n = _iterations(name)
      out = Path(tmp) / f'{name}.png'
      if n <= args.whole_below:
        runs = [_time(name, n, weights, out) for _ in range(args.repeats)]
        method = 'timed whole'
        estimate = statistics.median(runs)
      else:
        estimates, runs = [], []
        for _ in range(args.repeats):
          a = _time(name, args.short, weights, out)
          b = _time(name, args.long, weights, out)
          per_iteration = (b - a) / (args.long - args.short)
          runs.append(per_iteration)
          estimates.append(a + (n - args.short) * per_iteration)
        estimate = statistics.median(estimates)
        method = (
          f'{args.short} and {args.long} iterations, extrapolated; '
          f'{statistics.median(runs):.2f} s/iteration'
        )
      shown = ', '.join(f'{r:.2f}' for r in runs)
      print(f'| {name} | {n} | {estimate / 60:.1f} min | {shown} | {method} |', flush=True)


if __name__ == '__main__':
  main()
