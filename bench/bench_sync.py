r"""What reading the losses after every iteration costs: schedule.read_every 1 against 10.

Usage:
  python bench/bench_sync.py                 # 512 px, 100 iterations, 3 rounds
  python bench/bench_sync.py --width 1024 --iterations 200 --rounds 5

Each round runs the same single image twice, once per setting, in
alternating order (so drift on a shared machine hits both alike), with
`--tol 0` so both run every iteration, and reports the loop's seconds per
iteration (the run record's run_s, compile excluded) and their ratio. On CPU
the ratio should be 1 (an iteration is far longer than a read); on a GPU or
TPU it is the bubble the automatic setting (AUTO_READ_EVERY) avoids. Needs a
run on a lent device; docs/method.md ("Reading the losses") quotes it.
"""

import argparse
import json
from pathlib import Path
import statistics
import sys
import tempfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--width', type=int, default=512)
  parser.add_argument('--iterations', type=int, default=100)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()

  import jax
  import numpy as np

  import nst_jax

  with tempfile.TemporaryDirectory() as tmp:
    weights, label = common.weights_file_or_random(tmp)
    rng = np.random.default_rng(0)
    height = args.width * 3 // 4
    content = rng.uniform(size=(height, args.width, 3)).astype(np.float32)
    style = rng.uniform(size=(256, 256, 3)).astype(np.float32)
    per_iteration = {1: [], 10: []}
    for k in range(args.rounds):
      for every in (1, 10) if k % 2 == 0 else (10, 1):
        cfg = nst_jax.StyleConfig(
          schedule=nst_jax.ScheduleConfig(
            iterations=args.iterations, scales=1, tol=0.0, read_every=every
          ),
          run=nst_jax.RunConfig(print_iter=0),
        )
        record = {}
        nst_jax.stylize(content, style, config=cfg, weights=weights, record=record)
        stage = record['scales'][0]
        per_iteration[every].append(stage['run_s'] / stage['iterations'])
  one, ten = (statistics.median(per_iteration[k]) for k in (1, 10))
  print(
    json.dumps(
      {
        'device': str(jax.devices()[0].device_kind),
        'platform': jax.default_backend(),
        'weights': label,
        'width': args.width,
        'iterations': args.iterations,
        'rounds': args.rounds,
        's_per_iteration_read_every_1': one,
        's_per_iteration_read_every_10': ten,
        'ratio': one / ten,
      }
    )
  )


if __name__ == '__main__':
  main()
