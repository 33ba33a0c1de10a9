r"""Whole processes of main.py: compile time and time per iteration, and their spread.

Usage:
  python bench/bench_processes.py [--width 256] [--pairs 4]
  python bench/bench_processes.py --variant_flags=--xla_cpu_use_fusion_emitters=false

Runs `main.py` on the sample images (tubingen, starry night) with LSUV-scaled random weights
(the real network's activation scale), one scale, no early stop, the compile cache off, in
alternating order (ABBA...): arm A as a user runs it, arm B with `--variant_flags` in XLA_FLAGS
(without it, B is A again: the spread of one setting over 2 x pairs processes). Each process pair
runs `-i 10` and `-i 30`; an iteration's time is (T(30) - T(10)) / 20 from the run records'
`run_s`, without start-up or compile, and the compile time is the record's `compile_s`.

Prints each process, then for each arm the median compile time, the median time per iteration
and its range (the +-% is half the range over the median), and the ratios B/A. Name the CPU
(`lscpu`) with every figure; nothing else should run meanwhile.
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))
sys.path.insert(0, str(ROOT / 'tests'))


def one(weights: Path, width: int, iterations: int, out: Path, flags: str) -> dict:
  """The run record of one main.py process."""
  env = dict(os.environ)
  if flags:
    env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} {flags}'.strip()
  run = subprocess.run(
    [sys.executable, str(ROOT / 'main.py'), '-cp', str(ROOT / 'content_images/tubingen.jpg'),
     '-sp', str(ROOT / 'style_images/starry_night.jpg'), '-w', str(width), '-i', str(iterations),
     '--weights', str(weights), '--scales', '1', '--tol', '0', '--print_iter', '0',
     '--compile_cache', 'off', '--output', str(out), '--overwrite'],
    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
  )  # fmt: skip
  if run.returncode:
    raise SystemExit(f'main.py -w {width} -i {iterations} failed: {run.stderr[-400:]}')
  return json.loads(out.with_suffix('.json').read_text())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--pairs', type=int, default=4)
  parser.add_argument('--variant_flags', default='')
  args = parser.parse_args()
  import common

  work = Path(tempfile.mkdtemp(prefix='bench-processes-'))
  weights, _ = common.lsuv_weights_file(work)
  flags = {'A': '', 'B': args.variant_flags}
  order = []
  for p in range(args.pairs):
    order += ['A', 'B'] if p % 2 == 0 else ['B', 'A']
  got = {'A': [], 'B': []}
  for k, arm in enumerate(order):
    short, long = (one(weights, args.width, n, work / f'{k}_{n}.png', flags[arm]) for n in (10, 30))
    per = (long['scales'][0]['run_s'] - short['scales'][0]['run_s']) / 20
    got[arm].append((long['compile_s'], per))
    print(f'{arm}: compile {long["compile_s"]:.2f} s, {per:.4f} s per iteration', flush=True)
  median = {}
  for arm in 'AB':
    compile_s, per = zip(*got[arm], strict=True)
    median[arm] = statistics.median(compile_s), statistics.median(per)
    half = (max(per) - min(per)) / 2 / median[arm][1] * 100
    print(
      f'{arm}: compile median {median[arm][0]:.2f} s; per iteration median {median[arm][1]:.4f} s, '
      f'{min(per):.4f}-{max(per):.4f} (+-{half:.1f}%), {len(per)} processes'
    )
  print(
    f'B/A: compile {median["B"][0] / median["A"][0]:.3f}, per iteration '
    f'{median["B"][1] / median["A"][1]:.3f}'
  )


if __name__ == '__main__':
  main()
