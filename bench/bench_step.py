r"""Benchmark of the style transfer step: time, compile, memory, GFLOP/s.

Usage:
  python bench/bench_step.py                      # 256 and 512, both optimisers
  python bench/bench_step.py --sizes 512 --optimizers lbfgs --repeats 5

For each (size, optimiser) a fresh subprocess (so peak memory is its own):
  * compiles the jitted, donated `update_step` ahead of time (compile time),
  * times `--iters` iterations as the run loop issues them (no host sync
    between iterations), `--repeats` times, and reports the median seconds
    per iteration,
  * times a bare `jax.value_and_grad` of the same loss the same way, so the
    loop's overhead over the loss evaluation is visible,
  * counts loss evaluations per iteration (instrumented with a host callback
    in a separate, untimed run),
  * reports peak memory (process RSS on CPU; the allocator's peak on GPU/TPU)
    and GFLOP/s from the analytic FLOP count of the step (VGG-19 convolutions
    and Grams up to the deepest layer used, forward plus input-gradient
    backward) alongside XLA's own count.

Uses converted weights if present (weights/vgg19.npz), otherwise random
weights of the same shapes: speed does not depend on the values. The
L-BFGS history is --lbfgs_memory (default: the command line's).
Runs unchanged on GPU/TPU.
"""

import argparse
import functools
import json
from pathlib import Path
import resource
import statistics
import subprocess
import sys
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402


def _flops_per_step(model, loss_config, height, width) -> float:
  """Analytic FLOPs of one loss+gradient evaluation.

  Each 3x3 conv costs 2*9*Cin*Cout per output pixel forward; its
  input-gradient backward costs the same. Each Gram costs 2*C*C per position
  forward and one matmul of the same size backward. Elementwise work (ReLU,
  pooling, the loss) is not counted.
  """
  from nst_jax.core import vgg

  names = vgg.layer_names(model.stage_sizes)
  deepest = max(names.index(n) for n in loss_config.feature_layers)
  h, w, cin, conv, gram = height, width, 3, 0.0, 0.0
  for name in names[: deepest + 1]:
    stage = int(name[4])  # conv3_2, relu3_2, pool3 -> 3
    if name.startswith('conv'):
      cout = model.widths[stage - 1]
      conv += 2 * 9 * cin * cout * h * w
      cin = cout
    elif name.startswith('pool'):
      h, w = h // 2, w // 2
    if name in loss_config.style_layers:
      gram += 2 * cin * cin * h * w
  return 2 * (conv + gram)


def _peak_memory_bytes(device) -> tuple[int, str]:
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'], 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process peak RSS'


def _timed(fn, iters: int, repeats: int) -> list[float]:
  """Seconds per call of `fn` (which returns something to block on)."""
  import jax

  per_call = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = None
    for _ in range(iters):
      out = fn()
    jax.block_until_ready(out)
    per_call.append((time.perf_counter() - t0) / iters)
  return per_call


def run_one(
  size: int, optimizer: str, iters: int, repeats: int, lbfgs_memory: int, raw_params: bool
) -> dict:
  import jax
  import numpy as np

  from nst_jax import config as config_lib
  from nst_jax.core import pixels
  from nst_jax.core.objective import make_targets
  from nst_jax.core.objective import objective
  from nst_jax.core.step import init_state
  from nst_jax.core.step import make_model
  from nst_jax.core.step import make_optimizer
  from nst_jax.core.step import prepare_params
  from nst_jax.core.step import update_step

  loss_config = config_lib.LossConfig()
  model = make_model()
  memory = lbfgs_memory if optimizer == 'lbfgs' else None  # Adam has no memory (refused)
  tx = make_optimizer(optimizer, memory_size=memory, convention=pixels.CAFFE)
  params, source, _ = common.params_or_random(model)
  rng = np.random.default_rng(0)
  content = pixels.preprocess(rng.uniform(size=(1, size, size, 3)), pixels.CAFFE)
  style = pixels.preprocess(rng.uniform(size=(1, size, size, 3)), pixels.CAFFE)
  targets = make_targets(
    params,
    content,
    style,
    model=model,
    loss_spec=loss_config.spec,
    **loss_config.weights,
  )
  # As the engine passes them (kernels also laid out for the backward pass on CPU).
  params = params if raw_params else prepare_params(params)

  step = jax.jit(
    functools.partial(update_step, model=model, optimizer=tx, loss_spec=loss_config.spec),
    donate_argnums=0,
  )
  state = init_state(content, tx)
  t0 = time.perf_counter()
  lowered = step.lower(state, params, targets)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_flops = float(cost.get('flops', float('nan'))) if cost else float('nan')

  holder = {'state': state}

  def one_step():
    holder['state'], losses = compiled(holder['state'], params, targets)
    return losses

  for _ in range(2):  # warm up (first-touch of buffers, thread pools)
    one_step()
  jax.block_until_ready(holder['state'])
  step_times = _timed(one_step, iters, repeats)

  one_targets = jax.tree.map(lambda x: x[0], targets)
  bare = jax.jit(
    jax.value_and_grad(
      functools.partial(objective, model=model, loss_spec=loss_config.spec), has_aux=True
    )
  )
  image0 = content[0]
  jax.block_until_ready(bare(image0, params, one_targets))
  bare_times = _timed(lambda: bare(image0, params, one_targets), iters, repeats)

  # Count loss evaluations per iteration with a host callback (untimed), after
  # the first iteration (whose first L-BFGS step may backtrack).
  calls = {'n': 0}

  def counting_objective(image, params, targets, **kw):
    jax.debug.callback(lambda: calls.__setitem__('n', calls['n'] + 1))
    return objective(image, params, targets, **kw)

  counted = jax.jit(
    functools.partial(
      update_step, model=model, optimizer=tx, loss_spec=loss_config.spec, loss_fn=counting_objective
    )
  )
  s, _ = counted(init_state(content, tx), params, targets)
  jax.block_until_ready(s)
  calls['n'] = 0
  for _ in range(3):
    s, _ = counted(s, params, targets)
  jax.block_until_ready(s)
  evals_per_iter = calls['n'] / 3

  flops = _flops_per_step(model, loss_config, size, size)
  step_s = statistics.median(step_times)
  peak, peak_kind = _peak_memory_bytes(jax.devices()[0])
  return {
    'size': size,
    'optimizer': optimizer,
    'device': str(jax.devices()[0].device_kind),
    'backend': jax.default_backend(),
    'jax': jax.__version__,
    'weights': source,
    'params': 'raw' if raw_params else 'prepared',
    'compile_s': round(compile_s, 2),
    's_per_iter_median': round(step_s, 4),
    's_per_iter_all': [round(t, 4) for t in step_times],
    'bare_value_and_grad_s_median': round(statistics.median(bare_times), 4),
    'loop_overhead_pct': round(100 * (step_s / statistics.median(bare_times) - 1), 1),
    'loss_evals_per_iter': evals_per_iter,
    'analytic_gflop_per_iter': round(flops / 1e9, 1),
    'xla_gflop_per_iter': round(xla_flops / 1e9, 1),
    'gflops_per_s': round(flops / step_s / 1e9, 1),
    'peak_memory_mb': round(peak / 1e6),
    'peak_memory_kind': peak_kind,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='256,512')
  parser.add_argument('--optimizers', default='lbfgs,adam')
  parser.add_argument('--iters', type=int, default=5, help='iterations per timed repeat')
  parser.add_argument('--repeats', type=int, default=3, help='timed repeats (median reported)')
  from nst_jax import config as config_lib

  parser.add_argument('--lbfgs_memory', type=int, default=config_lib.DEFAULT_LBFGS_MEMORY)
  parser.add_argument(
    '--raw_params',
    action='store_true',
    help='pass the weights unprepared (XLA lays out the backward kernels every iteration)',
  )
  parser.add_argument('--json', help='also write the results here')
  parser.add_argument('--one', help=argparse.SUPPRESS)  # internal: SIZE,OPTIMIZER
  args = parser.parse_args()

  if args.one:
    size, optimizer = args.one.split(',')
    result = run_one(
      int(size), optimizer, args.iters, args.repeats, args.lbfgs_memory, args.raw_params
    )
    print(json.dumps(result))
    return

  results = []
  for size in map(int, args.sizes.split(',')):
    for optimizer in args.optimizers.split(','):
      out = subprocess.run(
        [
          sys.executable,
          __file__,
          '--one',
          f'{size},{optimizer}',
          f'--iters={args.iters}',
          f'--repeats={args.repeats}',
          f'--lbfgs_memory={args.lbfgs_memory}',
          *(['--raw_params'] if args.raw_params else []),
        ],
        capture_output=True,
        text=True,
      )
      if out.returncode != 0:
        sys.exit(f'{size} {optimizer} failed:\n{out.stderr[-3000:]}')
      result = json.loads(out.stdout.strip().splitlines()[-1])
      results.append(result)
      print(
        f'{size}x{size} {optimizer:5s}: {result["s_per_iter_median"]:.3f} s/iter '
        f'(bare value_and_grad {result["bare_value_and_grad_s_median"]:.3f} s, loop overhead '
        f'{result["loop_overhead_pct"]:+.1f}%), compile {result["compile_s"]:.1f} s, '
        f'{result["loss_evals_per_iter"]:g} loss eval/iter, {result["gflops_per_s"]:.0f} '
        f'GFLOP/s ({result["analytic_gflop_per_iter"]} GFLOP/iter; XLA counts '
        f'{result["xla_gflop_per_iter"]}), peak {result["peak_memory_mb"]} MB '
        f'({result["peak_memory_kind"]}) [{result["device"]}; {result["params"]} params]',
        flush=True,
      )
  if args.json:
    Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
  main()
