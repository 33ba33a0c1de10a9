r"""Checkpoints: size, what a save costs the run, restore, import time, a run's overhead.

Usage:
  python bench/bench_checkpoint.py [--width 1024 --height 768 --repeats 3]
  python bench/bench_checkpoint.py --format 1       # the old writer (one msgpack file)
  python bench/bench_checkpoint.py --imports        # import time, with and without orbax
  python bench/bench_checkpoint.py --overhead 512   # main.py with and without checkpoints

Part 1 builds the real step state (image plus L-BFGS or Adam state, default
history) at that size and times, as medians of --repeats, what a run does:
  * `snapshot`: the copy to the host, the only part on the run's path (the
    step donates the state, so it is copied before the next iteration);
  * `write`: the save that runs on the checkpoint thread
    (nst_jax.io.checkpoint.Writer) while the run goes on: format 2 (the
    default) is an orbax-checkpoint step in NAME.ckpt/, written beside the
    previous one, which is then removed, as every save after a run's first;
    format 1 is the msgpack file nst-jax wrote before (nst_jax.io.checkpoint_v1);
  * `restore` (checking the layout, then reading the arrays), and the size.
With --imports, `import nst_jax` and `import nst_jax, orbax.checkpoint` in
fresh processes (orbax is imported at a run's first save).

Part 2 (--overhead W) runs main.py at width W on the sample images
(LSUV-scaled random weights) with `--checkpoint_every 10` and with
`--checkpoint_every 0`, alternating (ABBA) so neither always follows the other,
and reports each process's wall time and the ratio of the medians.
"""

import argparse
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))


def _median(times):
  return f'{statistics.median(times):.3f} s ({", ".join(f"{t:.3f}" for t in times)})'


def _state(args):
  import jax
  import jax.numpy as jnp

  from nst_jax.core import pixels
  from nst_jax.core.step import init_state
  from nst_jax.core.step import make_optimizer

  pairs = args.lbfgs_memory if args.optimizer == 'lbfgs' else None  # Adam has none (refused)
  tx = make_optimizer(args.optimizer, memory_size=pairs, convention=pixels.CAFFE)
  image = jax.random.normal(jax.random.key(0), (1, args.height, args.width, 3)) * 50
  state = init_state(image, tx)
  # A few updates so the L-BFGS history holds real numbers.
  grad = jax.jit(jax.grad(lambda x: jnp.sum(x**2)))
  for _ in range(3):
    g = grad(state.image)
    updates, opt_state = jax.vmap(lambda gg, s, x: tx.update(gg, s, x))(
      g, state.opt_state, state.image
    )
    state = state._replace(image=state.image + updates, opt_state=opt_state)
  # A run's history fills within `lbfgs_memory` iterations with values that
  # do not compress; 3 updates leave it mostly zeros, which flatter a
  # compressing format. Every float leaf gets random values of its shape.
  keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
  state = jax.tree.map(
    lambda x: jax.random.normal(next(keys), x.shape, x.dtype) if x.dtype == jnp.float32 else x,
    state,
  )
  return jax.block_until_ready(state)


def _size(path: Path) -> tuple[int, int]:
  """(bytes, files) of a checkpoint file or directory."""
  if path.is_file():
    return path.stat().st_size, 1
  files = [f for f in path.rglob('*') if f.is_file()]
  return sum(f.stat().st_size for f in files), len(files)


def saves(args, state, tmp):
  from nst_jax.io import checkpoint as checkpoint_lib
  from nst_jax.io import checkpoint_v1

  write = checkpoint_lib.write if args.format == 2 else checkpoint_v1.write
  settings = {'note': 'benchmark'}
  path = Path(tmp) / 'run.ckpt'
  if args.format == 2:  # the first save (and orbax's import) apart: a run pays them once
    t0 = time.perf_counter()
    write(path, checkpoint_lib.snapshot(state, iteration=0, total=2, settings=settings))
    print(f'first save (imports orbax, makes the directory): {time.perf_counter() - t0:.3f} s')
  snaps, writes, restores = [], [], []
  for k in range(args.repeats):
    t0 = time.perf_counter()
    payload = checkpoint_lib.snapshot(state, iteration=k + 1, total=2, settings=settings)
    snaps.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    write(path, payload)
    writes.append(time.perf_counter() - t0)
    del payload
    t0 = time.perf_counter()
    checkpoint_lib.restore(path, like=state, settings=settings)
    restores.append(time.perf_counter() - t0)
  size, files = _size(path)
  what = 'format 2 (orbax-checkpoint directory)' if args.format == 2 else 'format 1 (msgpack file)'
  print(f'{what}: {size / 1e6:.0f} MB in {files} files; snapshot (on the run path) '
        f'{_median(snaps)}; write (background) {_median(writes)}; '
        f'restore {_median(restores)}')  # fmt: skip


def imports():
  for module in ('nst_jax', 'nst_jax, orbax.checkpoint'):
    times = []
    for _ in range(3):
      t0 = time.perf_counter()
      subprocess.run([sys.executable, '-c', f'import {module}'], check=True, cwd=ROOT)
      times.append(time.perf_counter() - t0)
    print(f'python -c "import {module}": {_median(times)}')


def overhead(width: int, iterations: int) -> None:
  import common

  with tempfile.TemporaryDirectory() as tmp:
    weights, label = common.lsuv_weights_file(tmp)
    walls = {10: [], 0: []}
    for every in (10, 0, 0, 10):
      out = Path(tmp) / f'r{every}_{len(walls[every])}.png'
      cmd = [sys.executable, str(ROOT / 'main.py'), '-cp', 'content_images/tubingen.jpg',
             '-sp', 'style_images/starry_night.jpg', '-w', str(width), '-i', str(iterations),
             '--tol', '0', '--weights', str(weights), '--output', str(out), '--norecord',
             '--checkpoint_every', str(every), '--keep_checkpoint',
             '--progress', 'log']  # fmt: skip
      t0 = time.perf_counter()
      subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
      walls[every].append(time.perf_counter() - t0)
    ratio = statistics.median(walls[10]) / statistics.median(walls[0])
    print(f'main.py -w {width} -i {iterations} ({label}): --checkpoint_every 10 '
          f'{_median(walls[10])}, 0: {_median(walls[0])}; ratio {ratio:.3f} (ABBA)')  # fmt: skip


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--width', type=int, default=1024)
  parser.add_argument('--height', type=int, default=768)
  parser.add_argument('--optimizer', default='lbfgs')
  parser.add_argument('--lbfgs_memory', type=int, default=30)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--format', type=int, choices=(1, 2), default=2)
  parser.add_argument('--imports', action='store_true')
  parser.add_argument('--overhead', type=int, metavar='WIDTH')
  parser.add_argument('--iterations', type=int, default=40, help='for --overhead')
  args = parser.parse_args()
  print(f'{os.cpu_count()} CPU cores; {args.width}x{args.height} {args.optimizer}', flush=True)
  if args.overhead:
    overhead(args.overhead, args.iterations)
    return
  if args.imports:
    imports()
    return
  state = _state(args)
  with tempfile.TemporaryDirectory() as tmp:
    saves(args, state, tmp)


if __name__ == '__main__':
  main()
