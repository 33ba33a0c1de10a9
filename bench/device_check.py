r"""Device check: speed, compile time, memory and the largest image, on a GPU or TPU.

Usage:
  python bench/device_check.py --json $OUT/device_check.jsonl   # on a GPU/TPU
  python bench/device_check.py --quick                          # tiny sizes on a CPU (CI)

It refuses a CPU backend (one line, non-zero exit, in seconds) unless
--quick: a missing CUDA plugin would otherwise benchmark the CPU for the
whole slot. Every measurement runs in its own process, so each row's peak
memory is that row's (the device allocator's peak, or the process's peak
resident memory on a CPU), and an out-of-memory row ends only its own
process. Rows go to the terminal as a markdown table and, with --json, to a
JSON-lines file as each finishes, so a slot that ends early keeps what ran.

Three parts, in this order, within --budget_s seconds (rows not started by
then are skipped and said so):
  1. Speed: each variant (L-BFGS float32 at --precision highest and default,
     L-BFGS bfloat16, Adam float32) at SPEED_SIZES: compile time, seconds per
     iteration (median after warm-up, each iteration waited for), the
     compiled step's XLA memory, the row's peak, and the estimate
     `nst_jax.engine.memory.estimate_memory` makes before compiling.
  2. Largest image: for each --search variant, sizes up a ladder of doubling
     pixel counts (SEARCH_LADDER) until a row runs out of memory; the
     report names the largest that ran and the first that did not. The
     command line refuses by estimate; here the step is really run, so the
     search also measures the estimate's margin.
  3. Quality of --precision default: the same L-BFGS run (LSUV-scaled random
     weights with the real network's activation scale, the sample images)
     at highest and at default precision: final losses and how far apart the
     images are in pixel units, so the accelerator's default is chosen from
     data and not from speed alone.
Then main.py end to end on the sample images (random weights of the real
shapes), which must exit 0 and write its output.

Speed does not depend on the weights' values, so random weights of the real
shapes are used and labelled so; no figure here passes for one made with the
real weights.
"""

import argparse
import json
import os
from pathlib import Path
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

import common  # noqa: E402

SPEED_SIZES = ((512, 512), (1024, 1024), (2048, 2048))
QUICK_SPEED_SIZES = ((64, 64),)
# Square sides whose pixel counts double: 2048^2 (4.2 MP) to 16384^2 (268 MP),
# past what any one device holds at our ~2.3 KB per pixel.
SEARCH_LADDER = (2048, 2896, 4096, 5792, 8192, 11584, 16384)
QUICK_SEARCH_LADDER = (64, 96)
QUALITY_SIZE, QUALITY_ITERS = 512, 100
QUICK_QUALITY_SIZE, QUICK_QUALITY_ITERS = 64, 5
VARIANTS = {
  'lbfgs f32': ('lbfgs', 'float32', 'highest'),
  'lbfgs f32 default-precision': ('lbfgs', 'float32', 'default'),
  'lbfgs bf16': ('lbfgs', 'bfloat16', 'highest'),
  'adam f32': ('adam', 'float32', 'highest'),
}
# What an out-of-memory failure prints: XLA's status on GPU/TPU, the C++ and
# Python allocators' on a CPU. A child killed by SIGKILL (the kernel's OOM
# killer) also counts.
OOM_PATTERN = re.compile(r'RESOURCE_EXHAUSTED|[Oo]ut of memory|std::bad_alloc|MemoryError')
CHILD_TIMEOUT_S = 600


# ---------------------------------------------------------------- children


def _model_and_params(dtype: str, precision: str, lsuv_dir: str | None = None):
  import jax
  import jax.numpy as jnp

  import nst_jax
  from nst_jax.core import pixels

  model = nst_jax.make_model(dtype=dtype, precision=precision)
  if lsuv_dir is not None:
    path, _ = common.lsuv_weights_file(lsuv_dir)
    w = nst_jax.get_weights(path, progress=False)
    return model, w.params, w.info.input_convention
  return model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params'], pixels.CAFFE


def _compile(model, tx, spec, state, params, targets):
  import jax
  import jax.numpy as jnp

  import nst_jax
  from nst_jax.engine import sharding
  from nst_jax.engine import steps

  layout = sharding.SingleLayout()
  active = jnp.ones((state.image.shape[0],), bool)
  compiled, _ = steps.compile_step(
    model=model,
    optimizer=tx,
    loss_spec=spec,
    loss_fn=nst_jax.objective,
    layout=layout,
    state_sharding=jax.tree.map(lambda _: layout.rows_sharding(1), state),
    args=(state, params, targets, active),
    first=True,  # the program the engine runs for every iteration
  )
  return compiled, active


def _peak_bytes(device) -> tuple[int | None, str]:
  """This process's peak: the device allocator's, or resident memory on a CPU."""
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    return stats.get('peak_bytes_in_use'), 'device'
  import resource

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process RSS'


def child_probe() -> dict:
  import jax

  import nst_jax  # noqa: F401  (its XLA flags before the backend starts)
  from nst_jax.engine import memory

  device = jax.devices()[0]
  return {
    'platform': device.platform,
    'device_kind': device.device_kind,
    'devices': jax.device_count(),
    'free_bytes': memory.available_memory(device),
    'jax': jax.__version__,
    'cpu_cores': os.cpu_count(),
  }


def child_step(width: int, height: int, variant: str, iters: int) -> dict:
  """One size and variant: compile, iterate, measure (in its own process)."""
  import jax
  import numpy as np

  import nst_jax
  from nst_jax.engine import memory

  optimizer, dtype, precision = VARIANTS[variant]
  cfg = nst_jax.StyleConfig(
    model=nst_jax.ModelConfig(dtype=dtype, precision=precision),
    optim=nst_jax.OptimConfig(name=optimizer),
  )
  device = jax.devices()[0]
  model, params, convention = _model_and_params(dtype, precision)
  pairs = cfg.optim.lbfgs_memory if optimizer == 'lbfgs' else None  # Adam has none (refused)
  tx = nst_jax.make_optimizer(optimizer, memory_size=pairs, convention=convention)
  rng = np.random.default_rng(0)
  content, style = (
    nst_jax.preprocess(rng.uniform(size=(1, height, width, 3)), convention) for _ in range(2)
  )
  spec = cfg.loss.spec
  targets = nst_jax.make_targets(params, content, style, model=model, loss_spec=spec,
                                 **cfg.loss.weights)  # fmt: skip
  params = nst_jax.prepare_params(params, spec.feature_layers)  # as the engine passes them
  state = nst_jax.init_state(content, tx)
  t0 = time.perf_counter()
  compiled, active = _compile(model, tx, spec, state, params, targets)
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
    xla = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
           + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)  # fmt: skip
  peak, peak_kind = _peak_bytes(device)
  return {
    'compile_s': compile_s,
    's_per_iter': statistics.median(times),
    'xla_bytes': xla,
    'peak_bytes': peak,
    'peak_kind': peak_kind,
    'estimate_bytes': memory.estimate_memory(height, width, config=cfg, platform=device.platform),
    'finite': bool(np.isfinite(np.asarray(losses['total'])).all()),
  }


def child_quality(size: int, iters: int, weights: str) -> dict:
  """The same L-BFGS run at precision highest and default: losses and image distance.

  `weights` 'lsuv' (the real activation scale, what the comparison needs; its
  numpy construction takes about 30 s on a CPU) or 'random' (He-normal, for
  --quick, which only checks that this code runs).
  """
  import jax
  import numpy as np

  import nst_jax
  from nst_jax.io import images

  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    finals = {}
    for precision in ('highest', 'default'):
      cfg = nst_jax.StyleConfig(model=nst_jax.ModelConfig(precision=precision))
      lsuv_dir = tmp if weights == 'lsuv' else None
      model, params, convention = _model_and_params('float32', precision, lsuv_dir=lsuv_dir)
      content, style = (
        nst_jax.preprocess(images.load_image(ROOT / path, size)[None], convention)
        for path in ('content_images/tubingen.jpg', 'style_images/starry_night.jpg')
      )
      spec = cfg.loss.spec
      tx = nst_jax.make_optimizer('lbfgs', convention=convention)
      targets = nst_jax.make_targets(params, content, style, model=model, loss_spec=spec,
                                     **cfg.loss.weights)  # fmt: skip
      params = nst_jax.prepare_params(params, spec.feature_layers)
      state = nst_jax.init_state(content, tx)
      compiled, active = _compile(model, tx, spec, state, params, targets)
      for _ in range(iters):
        state, losses = compiled(state, params, targets, active)
      jax.block_until_ready(state.image)
      rgb = np.asarray(nst_jax.deprocess(state.image, convention), np.float64) * 255.0
      finals[precision] = rgb
      out[f'loss_{precision}'] = float(np.asarray(losses['total'])[0])
  diff = np.abs(finals['highest'] - finals['default'])
  mse = float(np.mean(diff**2))
  out |= {
    'max_abs_pixel_diff': float(diff.max()),
    'mean_abs_pixel_diff': float(diff.mean()),
    'psnr_db': float('inf') if mse == 0 else 10 * np.log10(255.0**2 / mse),
    'weights': {'lsuv': 'RANDOM LSUV-scaled weights (real activation scale)'}.get(
      weights, 'RANDOM He-normal weights (tiny activations: --quick only)'
    ),
  }
  return out


# ------------------------------------------------------------------ parent


def classify(returncode: int, stderr: str) -> str:
  """'ok', 'oom' (out of memory: the search's stop) or 'error' for a child's end."""
  if returncode == 0:
    return 'ok'
  if OOM_PATTERN.search(stderr) or returncode == -signal.SIGKILL:
    return 'oom'
  return 'error'


def run_child(args: list[str], timeout: float = CHILD_TIMEOUT_S) -> dict:
  """Runs this script's child mode `args`; its result row, with 'status'."""
  cmd = [sys.executable, str(Path(__file__).resolve()), '--child', *args]
  try:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {'status': 'error', 'error': f'no result within {timeout:.0f} s'}
  status = classify(r.returncode, r.stderr)
  if status == 'ok':
    return {'status': 'ok', **json.loads(r.stdout.strip().splitlines()[-1])}
  lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
  return {'status': status, 'error': lines[-1][:300] if lines else f'exit {r.returncode}'}


def search(variant: str, ladder, measure) -> dict:
  """Walks up `ladder` until `measure(side, side)` runs out of memory.

  Args:
    variant: the plan searched (a key of VARIANTS).
    ladder: square sides, smallest first.
    measure: (width, height) -> a row with 'status' ('ok', 'oom', 'error'
      or 'skipped').

  Returns:
    {'variant', 'largest' (the largest side that ran, or None),
    'first_failed' (the side that ran out of memory, or None if none did),
    'stopped' (why the search ended)}.
  """
  largest, first_failed, stopped = None, None, 'the ladder ended'
  for side in ladder:
    row = measure(side, side)
    if row['status'] == 'ok':
      largest = side
      continue
    first_failed = side if row['status'] == 'oom' else None
    stopped = {'oom': 'out of memory', 'skipped': 'out of time'}.get(
      row['status'], f'error: {row.get("error")}'
    )
    break
  return {'variant': variant, 'largest': largest, 'first_failed': first_failed, 'stopped': stopped}


def _gb(v) -> str:
  return '-' if v is None else f'{v / 1e9:.2f} GB'


class Report:
  """Prints rows as a markdown table and appends each to the JSON-lines file."""

  def __init__(self, path: str | None, deadline: float):
    self.path = path
    self.deadline = deadline
    if path:
      Path(path).write_text('')

  def write(self, row: dict) -> None:
    if self.path:
      with open(self.path, 'a') as f:
        f.write(json.dumps(row) + '\n')

  def step(self, part: str, width: int, height: int, variant: str, iters: int) -> dict:
    row = {'part': part, 'size': f'{width}x{height}', 'variant': variant}
    if time.monotonic() > self.deadline:
      row |= {'status': 'skipped', 'error': 'out of time (--budget_s)'}
    else:
      row |= run_child(['step', str(width), str(height), variant, str(iters)])
    self.write(row)
    if row['status'] != 'ok':
      print(f'| {row["size"]} | {variant} | {row["status"]}: {row["error"]} | | | | |', flush=True)
    else:
      print(f'| {row["size"]} | {variant} | {row["compile_s"]:.1f} s | {row["s_per_iter"]:.4f} | '
            f'{_gb(row["xla_bytes"])} | {_gb(row["peak_bytes"])} ({row["peak_kind"]}) | '
            f'{_gb(row["estimate_bytes"])} |', flush=True)  # fmt: skip
    return row


def refuse_cpu(probe: dict, quick: bool) -> None:
  if probe['platform'] == 'cpu' and not quick:
    sys.exit(
      'device_check: JAX sees only the CPU (no GPU/TPU plugin: pip install "jax[cuda12]" or '
      '"jax[cuda13]" for NVIDIA, "jax[tpu]" on a TPU VM); pass --quick for the CPU check CI runs'
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes on any backend (CI)')
  parser.add_argument('--iters', type=int, default=5, help='timed iterations per speed row')
  parser.add_argument('--variants', default=','.join(VARIANTS), help='speed rows, comma-separated')
  parser.add_argument('--search', default='lbfgs f32,lbfgs bf16', help='plans to size up')
  parser.add_argument('--budget_s', type=float, default=540, help='start no row after this')
  parser.add_argument('--json', help='append each row here as a JSON line')
  parser.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.child:
    mode, *rest = args.child
    fn = {'probe': child_probe, 'step': child_step, 'quality': child_quality}[mode]
    rest = [int(v) if v.isdigit() else v for v in rest]
    print(json.dumps(fn(*rest)), flush=True)
    return

  for name in (*args.variants.split(','), *args.search.split(',')):
    if name not in VARIANTS:
      sys.exit(f'device_check: unknown variant {name!r}; choose from {", ".join(VARIANTS)}')
  probe = run_child(['probe'], timeout=120)
  if probe['status'] != 'ok':
    sys.exit(f'device_check: JAX did not start: {probe["error"]}')
  refuse_cpu(probe, args.quick)
  report = Report(args.json, time.monotonic() + args.budget_s)
  report.write({'part': 'device', **probe})
  print(f'{probe["platform"]}: {probe["device_kind"]} ({probe["devices"]} device(s)), jax '
        f'{probe["jax"]}, {probe["cpu_cores"]} CPU cores, {_gb(probe["free_bytes"])} free; '
        'RANDOM weights', flush=True)  # fmt: skip
  print('| size | variant | compile | s/iter | XLA step memory | peak | estimate |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  iters = 2 if args.quick else args.iters
  failed = False
  for width, height in QUICK_SPEED_SIZES if args.quick else SPEED_SIZES:
    for variant in args.variants.split(','):
      row = report.step('speed', width, height, variant, iters)
      failed |= row['status'] == 'error' or (row['status'] == 'ok' and not row['finite'])
  ladder = QUICK_SEARCH_LADDER if args.quick else SEARCH_LADDER
  # --quick sizes up one plan: the code path is the same for each.
  for variant in args.search.split(',')[: 1 if args.quick else None]:
    found = search(variant, ladder, lambda w, h, v=variant: report.step('search', w, h, v, 1))
    report.write({'part': 'largest', **found})
    print(f'largest {variant}: {found["largest"]}^2 ran; {found["first_failed"]}^2 did not '
          f'({found["stopped"]})', flush=True)  # fmt: skip
    failed |= found['stopped'].startswith('error')
  size, n = (
    (QUICK_QUALITY_SIZE, QUICK_QUALITY_ITERS) if args.quick else (QUALITY_SIZE, QUALITY_ITERS)
  )
  quality = run_child(['quality', str(size), str(n), 'random' if args.quick else 'lsuv'])
  report.write({'part': 'quality', 'size': size, 'iterations': n, **quality})
  print(f'precision default vs highest at {size}^2, {n} L-BFGS iterations: {quality}', flush=True)
  failed |= quality['status'] != 'ok'
  with tempfile.TemporaryDirectory() as tmp:
    smoke = _smoke(args.quick, tmp)
  report.write({'part': 'smoke', **smoke})
  print(f'main.py smoke run: {"ok" if smoke["ok"] else "FAILED"} in {smoke["wall_s"]:.1f} s')
  if not smoke['ok']:
    sys.exit(smoke['stderr_tail'])
  if failed:
    sys.exit('device_check: a row failed (other than running out of memory); see above')


def _smoke(quick: bool, tmp: str) -> dict:
  """main.py end to end, as a user runs it (random weights of the real shapes)."""
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
  return {'ok': ok, 'wall_s': wall, 'weights': label, 'stderr_tail': '' if ok else r.stderr[-2000:]}


if __name__ == '__main__':
  main()
