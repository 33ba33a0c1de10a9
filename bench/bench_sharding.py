"""Batch and spatial sharding on simulated CPU devices (docs/scaling.md).

  python bench/bench_sharding.py            # both tables, 8 simulated devices

1. Batch: the same jobs (default 8 at 128 px, 20 iterations) run by
   `nst_jax.runs.batch.run_batch` on meshes of the first 1, 2, 4 and 8 devices:
   jobs per second (loop time only, median of --repeats) and memory per
   device. On this 2-core machine the simulated devices share the cores, so
   the rate shows overhead, not speed-up.
2. Spatial: memory per device of the compiled step for 4:3 images 1024,
   2048 and 4096 px wide, split over 1, 2, 4 and 8 devices, from XLA's
   buffer assignment (compiled, never run, so 4096 px fits here).

Memory per device is `sharding.describe`: arguments + outputs + temporaries
- aliased (donated) bytes of the compiled step, for one device.
"""

import argparse
import functools
import os
from pathlib import Path
import statistics
import sys
import tempfile
import time

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))

import common  # noqa: E402
import distributed_cases  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import nst_jax  # noqa: E402
from nst_jax.core import pixels  # noqa: E402
from nst_jax.core.objective import make_targets  # noqa: E402
from nst_jax.core.step import init_state  # noqa: E402
from nst_jax.core.step import make_model  # noqa: E402
from nst_jax.core.step import make_optimizer  # noqa: E402
from nst_jax.engine import sharding as sharding_lib  # noqa: E402
from nst_jax.engine import steps  # noqa: E402
from nst_jax.io import outputs  # noqa: E402
from nst_jax.runs import batch as batch_lib  # noqa: E402

DEVICE_COUNTS = (1, 2, 4, 8)


def batch_table(weights, n_jobs: int, width: int, iterations: int, repeats: int) -> None:
  print(f'\n{n_jobs} jobs at {width} px, {iterations} iterations, L-BFGS')
  print('| devices | jobs/s (median) | loop s per repeat | rows per device | memory per device |')
  print('| --- | --- | --- | --- | --- |')
  w = nst_jax.load_weights(weights)
  cfg = nst_jax.StyleConfig(
    inputs=nst_jax.InputConfig(width=width),
    schedule=nst_jax.ScheduleConfig(iterations=iterations, scales=1),
    run=nst_jax.RunConfig(print_iter=0, checkpoint_every=0),
    save=nst_jax.SaveConfig(record=False),
  )
  with tempfile.TemporaryDirectory() as tmp:
    distributed_cases.WIDTH = width
    sample = distributed_cases.sample_jobs(Path(tmp), n_jobs, heights=(width * 3 // 4,))
    for d in DEVICE_COUNTS:
      mesh = sharding_lib.jobs_mesh(jax.devices()[:d])
      loops = []
      for r in range(repeats):
        jobs = outputs.assign_outputs(sample, f'{tmp}/out{d}_{r}')
        record = {}
        batch_lib.run_batch(jobs, cfg, weights=w, mesh=mesh, record=record)
        (group,) = record['groups']
        loops.append(group['run_s'])
      rate = n_jobs / statistics.median(loops)
      shown = ', '.join(f'{t:.1f}' for t in loops)
      print(
        f'| {d} | {rate:.2f} | {shown} | {group["rows"] // d} | '
        f'{group["memory_per_device_bytes"] / 2**20:.0f} MiB |',
        flush=True,
      )


def spatial_memory(width: int, devices: int, cfg: nst_jax.StyleConfig, params) -> int:
  height = width * 3 // 4
  layout = sharding_lib.SpatialLayout(jax.devices()[:devices])
  model = make_model()
  optimizer = make_optimizer('lbfgs', memory_size=cfg.optim.lbfgs_memory, convention=pixels.CAFFE)
  image = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  targets = jax.eval_shape(
    functools.partial(
      make_targets,
      model=model,
      loss_spec=cfg.loss.spec,
      **cfg.loss.weights,
    ),
    params,
    image,
    [image],
  )
  replicate = layout.rows_sharding(1)
  state = jax.eval_shape(functools.partial(init_state, optimizer=optimizer), image)
  state_sh = jax.tree.map(lambda s: layout.leaf_sharding(s.shape, height, width), state)

  def placed(shapes, sharding):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, sharding)  # fmt: skip

  args = (
    placed(state, state_sh),
    placed(params, jax.tree.map(lambda _: replicate, params)),
    placed(targets, jax.tree.map(lambda _: replicate, targets)),
    jax.ShapeDtypeStruct((1,), jnp.bool_, sharding=replicate),
  )
  compiled, _ = steps.compile_step(
    model=model,
    optimizer=optimizer,
    loss_spec=cfg.loss.spec,
    loss_fn=nst_jax.objective,
    layout=layout,
    state_sharding=state_sh,
    args=args,
  )
  return sharding_lib.describe(compiled)['memory_per_device_bytes']


def spatial_table(widths) -> None:
  cfg = nst_jax.StyleConfig()
  params = jax.eval_shape(
    lambda: make_model().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  )
  print('\nSpatial sharding: memory per device of the compiled step (4:3 images, float32, L-BFGS)')
  print('| width | ' + ' | '.join(f'{d} device{"s" * (d > 1)}' for d in DEVICE_COUNTS) + ' |')
  print('| --- |' + ' --- |' * len(DEVICE_COUNTS))
  for width in widths:
    cells = []
    for d in DEVICE_COUNTS:
      t0 = time.perf_counter()
      mib = spatial_memory(width, d, cfg, params) / 2**20
      cells.append(f'{mib / 1024:.2f} GiB' if mib >= 1024 else f'{mib:.0f} MiB')
      print(f'  ({width} px on {d}: compiled in {time.perf_counter() - t0:.0f} s)', file=sys.stderr)
    print(f'| {width} | ' + ' | '.join(cells) + ' |', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--jobs', type=int, default=8)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--iterations', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--spatial_widths', default='1024,2048,4096')
  parser.add_argument('--skip', choices=['batch', 'spatial'], default=None)
  args = parser.parse_args()
  print(f'{jax.device_count()} simulated devices on {os.cpu_count()} cores, jax {jax.__version__}')
  if args.skip != 'batch':
    with tempfile.TemporaryDirectory() as tmp:
      weights, label = common.weights_file_or_random(tmp)
      print(f'weights: {label}')
      batch_table(weights, args.jobs, args.width, args.iterations, args.repeats)
  if args.skip != 'spatial':
    spatial_table([int(w) for w in args.spatial_widths.split(',')])


if __name__ == '__main__':
  main()
