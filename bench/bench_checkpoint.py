r"""Checkpoint size and save/restore time for a run of a given size.

Usage:
  python bench/bench_checkpoint.py [--width 1024 --height 768 --repeats 3]

Builds the real step state (image plus L-BFGS or Adam state, default
settings) for an image of that size and times `nst_jax.io.checkpoint.save` and
`restore` (median of the repeats), reporting the file size.
"""

import argparse
import os
from pathlib import Path
import statistics
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--width', type=int, default=1024)
  parser.add_argument('--height', type=int, default=768)
  parser.add_argument('--optimizer', default='lbfgs')
  parser.add_argument('--lbfgs_memory', type=int, default=100)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp

  import nst_jax
  from nst_jax.core.step import init_state
  from nst_jax.core.step import make_optimizer
  from nst_jax.io import checkpoint as checkpoint_lib

  tx = make_optimizer(
    args.optimizer, memory_size=args.lbfgs_memory, convention=nst_jax.core.pixels.CAFFE
  )
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
  settings = {'note': 'benchmark'}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'run.ckpt')
    saves, restores = [], []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      checkpoint_lib.save(path, state=state, iteration=1, total=2, settings=settings)
      saves.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      checkpoint_lib.restore(path, like=state, settings=settings)
      restores.append(time.perf_counter() - t0)
    size = os.path.getsize(path)
  print(
    f'{args.width}x{args.height} {args.optimizer}: checkpoint {size / 1e6:.0f} MB, save median '
    f'{statistics.median(saves):.2f} s ({", ".join(f"{t:.2f}" for t in saves)}), restore median '
    f'{statistics.median(restores):.2f} s'
  )


if __name__ == '__main__':
  main()
