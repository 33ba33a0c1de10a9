r"""Device check: speed, compile time and memory on whatever accelerator JAX sees.

Usage:
  python bench/device_check.py            # 512^2, 1024^2, 2048^2, 3840x2160
  python bench/device_check.py --quick    # tiny sizes, for CI on a CPU (a minute)

For each size and variant (L-BFGS float32 at --precision highest and at
default, L-BFGS bfloat16, Adam float32), on jax.devices()[0]:
  * the compile time of the jitted, donated step,
  * seconds per iteration (median of --iters after two warm-up iterations,
    each iteration waited for),
  * memory: XLA's buffer assignment for the step and, on GPU/TPU, the
    device's running peak, against `nst_jax.engine.memory.estimate_memory` (sizes the
    estimate says will not fit are skipped, as the command line would);
then a 20-iteration run of main.py (--quick: 3) on the sample images with
random weights of the real shapes, which must exit 0 and write its output.

Speed does not depend on the weights' values: random weights of the real
shapes are used (and labelled so). Prints a markdown table; --json writes it.
"""

import argparse
import json
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

import common  # noqa: E402

FULL_SIZES = ((512, 512), (1024, 1024), (2048, 2048), (3840, 2160))
QUICK_SIZES = ((64, 64), (128, 96))
VARIANTS = {
  'lbfgs f32': ('lbfgs', 'float32', 'highest'),
  'lbfgs f32 default-precision': ('lbfgs', 'float32', 'default'),
  'lbfgs bf16': ('lbfgs', 'bfloat16', 'highest'),
  'adam f32': ('adam', 'float32', 'highest'),
}


def measure(width: int, height: int, variant: str, iters: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import nst_jax
  from nst_jax.core import pixels
  from nst_jax.engine import memory
  from nst_jax.engine import sharding
  from nst_jax.engine import steps

  optimizer, dtype, precision = VARIANTS[variant]
  cfg = nst_jax.StyleConfig(
    model=nst_jax.ModelConfig(dtype=dtype, precision=precision),
    optim=nst_jax.OptimConfig(name=optimizer),
  )
  device = jax.devices()[0]
  estimate = memory.estimate_memory(height, width, config=cfg, platform=device.platform)
  have = memory.available_memory(device)
  row = {'size': f'{width}x{height}', 'variant': variant, 'estimate_gb': estimate / 1e9}
  if have is not None and estimate > have:
    return row | {'skipped': f'estimate {estimate / 1e9:.1f} GB > {have / 1e9:.1f} GB free'}
  model = nst_jax.make_model(dtype=dtype, precision=precision)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  tx = nst_jax.make_optimizer(
    optimizer, memory_size=cfg.optim.lbfgs_memory, convention=pixels.CAFFE
  )
  rng = np.random.default_rng(0)
  content, style = (
    nst_jax.preprocess(rng.uniform(size=(1, height, width, 3)), pixels.CAFFE) for _ in range(2)
  )
  targets = nst_jax.make_targets(
    params,
    content,
    style,
    model=model,
    loss_spec=cfg.loss.spec,
    **cfg.loss.weights,
  )
  params = nst_jax.prepare_params(params)  # as the engine passes them to the step
  layout = sharding.SingleLayout()
  state = nst_jax.init_state(content, tx)
  state_sh = jax.tree.map(lambda _: layout.rows_sharding(1), state)
  active = jnp.ones((1,), bool)
  t0 = time.perf_counter()
  compiled, _ = steps.compile_step(
    model=model,
    optimizer=tx,
    loss_spec=cfg.loss.spec,
    loss_fn=nst_jax.objective,
    layout=layout,
    state_sharding=state_sh,
    args=(state, params, targets, active),
    key=('device_check', variant),
  )
  compile_s = time.perf_counter() - t0
  times = []
  for k in range(iters + 2):
    t0 = time.perf_counter()
    state, losses = compiled(state, params, targets, active)
    jax.block_until_ready(losses)
    if k >= 2:
      times.append(time.perf_counter() - t0)
  analysis = compiled.memory_analysis()
  xla = None
  if analysis is not None:
    xla = (
      analysis.argument_size_in_bytes
      + analysis.output_size_in_bytes
      + analysis.temp_size_in_bytes
      - analysis.alias_size_in_bytes
    )
  stats = device.memory_stats() if device.platform != 'cpu' else None
  peak = stats.get('peak_bytes_in_use') if stats else None
  return row | {
    'compile_s': compile_s,
    's_per_iter': statistics.median(times),
    'xla_gb': None if xla is None else xla / 1e9,
    'device_peak_gb': None if peak is None else peak / 1e9,
    'finite': bool(np.isfinite(np.asarray(losses['total'])).all()),
  }


def smoke(quick: bool) -> dict:
  """main.py end to end, as a user runs it (random weights of the real shapes)."""
  with tempfile.TemporaryDirectory() as tmp:
    weights, label = common.weights_file_or_random(tmp)
    out = Path(tmp) / 'smoke.png'
    cmd = [sys.executable, str(ROOT / 'main.py'),
           '-cp', str(ROOT / 'content_images' / 'tubingen.jpg'),
           '-sp', str(ROOT / 'style_images' / 'starry_night.jpg'),
           '-i', '3' if quick else '20', '-w', '64' if quick else '512',
           '--weights', str(weights), '--output', str(out), '--progress', 'log']  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    ok = r.returncode == 0 and out.exists()
    return {
      'ok': ok,
      'wall_s': wall,
      'weights': label,
      'stderr_tail': '' if ok else r.stderr[-2000:],
    }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes (CI on a CPU)')
  parser.add_argument('--iters', type=int, default=5)
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args()

  import jax

  import nst_jax  # noqa: F401  (its XLA flags before the backend starts)

  device = jax.devices()[0]
  print(
    f'{device.platform}: {device.device_kind} ({jax.device_count()} device(s)), '
    f'jax {jax.__version__}, {os.cpu_count()} CPU cores; RANDOM weights',
    flush=True,
  )
  print('| size | variant | compile | s/iter | XLA step memory | device peak | estimate |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  rows = []
  for width, height in QUICK_SIZES if args.quick else FULL_SIZES:
    for variant in args.variants.split(','):
      r = measure(width, height, variant, 2 if args.quick else args.iters)
      rows.append(r)
      if 'skipped' in r:
        print(f'| {r["size"]} | {variant} | skipped: {r["skipped"]} | | | | |', flush=True)
        continue
      gb = lambda v: '-' if v is None else f'{v:.2f} GB'  # noqa: E731
      print(
        f'| {r["size"]} | {variant} | {r["compile_s"]:.1f} s | {r["s_per_iter"]:.4f} | '
        f'{gb(r["xla_gb"])} | {gb(r["device_peak_gb"])} | {gb(r["estimate_gb"])} |',
        flush=True,
      )
      if not r['finite']:
        sys.exit(f'{r["size"]} {variant}: the loss is not finite')
  result = smoke(args.quick)
  print(f'main.py smoke run: {"ok" if result["ok"] else "FAILED"} in {result["wall_s"]:.1f} s')
  if args.json:
    Path(args.json).write_text(json.dumps({'device': str(device), 'rows': rows, 'smoke': result}))
  if not result['ok']:
    sys.exit(result['stderr_tail'])


if __name__ == '__main__':
  main()
