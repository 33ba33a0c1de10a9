r"""Parity with the classic tools: our command line against neural-style-pt's optimiser.

Usage:
  python bench/parity.py --width 256 --iterations 300
  python bench/parity.py --width 512 --iterations 1000
  python bench/parity.py --per_iteration --width 256 --iterations 20 --repeats 3
  python bench/parity.py --width 512 --iterations 1000 --no_torch --variants '--scales 1'

Both sides optimise the same objective from the same start on the same
weights and images (tubingen.jpg content, starry_night.jpg style, the style
at the output width, content init, no TV):

  * torch: bench/torch_reference.py, VGG-19 in torch.nn loaded from our .npz,
    the classic objective, torch.optim.LBFGS(history_size=100,
    line_search_fn=None, lr=1) exactly as neural-style-pt calls it;
  * ours: `main.py` with its defaults and only the objective's flags
    (torch_reference.CLASSIC_FLAGS), as a user would run it.

Each runs in its own process; the wall time is the whole process. Both final
images are saved as 8-bit PNGs and scored by one evaluator (the torch
objective in float64), so the score is that of the file a user gets.

--per_iteration instead times iterations at one scale: ours with
`--scales 1 --tol 0`, against torch, median seconds per iteration after the
first, interleaved over --repeats.

Weights: RANDOM LSUV-scaled weights of the real shapes (bench/common.py),
unless --real and weights/vgg19.npz exists. Name the CPU (lscpu) with every
figure; compare only ratios measured in one run.
"""

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

CONTENT = ROOT / 'content_images' / 'tubingen.jpg'
STYLE = ROOT / 'style_images' / 'starry_night.jpg'


def _images(width: int):
  from nst_jax.io import images as image_lib

  content = image_lib.load_image(CONTENT, width=width)
  style = image_lib.load_image(STYLE, width=width)
  return content, style


def torch_worker(args) -> None:
  """Runs the torch reference; writes the 8-bit result and its trace (JSON)."""
  t_process = time.perf_counter()
  import numpy as np
  import torch
  import torch_reference as tr

  from nst_jax.core import pixels
  from nst_jax.io import images as image_lib

  torch.set_num_threads(torch.get_num_threads())
  from nst_jax.io import weights as weights_lib

  convention = weights_lib.load_weights(args.weights_file).info.input_convention
  content, style = _images(args.width)
  cn = np.asarray(pixels.preprocess(content[None], convention)[0])
  sn = np.asarray(pixels.preprocess(style[None], convention)[0])
  t0 = time.perf_counter()
  objective = tr.Objective(
    args.weights_file, tr.to_torch(cn, torch.float32), tr.to_torch(sn, torch.float32), torch.float32
  )
  image, trace = tr.run_lbfgs(objective, tr.to_torch(cn, torch.float32), args.iterations, t0=t0)
  rgb = np.asarray(pixels.deprocess(image[None], convention)[0])
  image_lib.save_image(Path(args.out) / 'torch.png', rgb)
  Path(args.out, 'torch.json').write_text(json.dumps({'trace': trace, 'setup_s': t0 - t_process}))


def _run(cmd) -> float:
  t0 = time.perf_counter()
  r = subprocess.run(cmd, capture_output=True, text=True)
  if r.returncode != 0:
    raise SystemExit(f'{cmd[:3]} failed:\n{r.stderr[-3000:]}')
  return time.perf_counter() - t0


def run_torch(args, weights, out: Path, iterations: int) -> dict:
  wall = _run(
    [sys.executable, __file__, '--torch_worker', '--width', str(args.width), '--iterations',
     str(iterations), '--weights_file', str(weights), '--out', str(out)]
  )  # fmt: skip
  data = json.loads((out / 'torch.json').read_text())
  trace = data['trace']
  return {
    'wall_s': wall,
    'iterations': len(trace),
    'loop_s': trace[-1][1],
    'final_loss': trace[-1][2],
    'times': [t for _, t, _ in trace],
    'curve': [(k, t, loss) for k, t, loss in trace],
    'image': out / 'torch.png',
  }


def run_ours(args, weights, out: Path, iterations: int, extra=()) -> dict:
  import torch_reference as tr

  result = out / 'ours.png'
  cmd = [sys.executable, str(ROOT / 'main.py'), '-cp', str(CONTENT), '-sp', str(STYLE),
         '-w', str(args.width), '-i', str(iterations), '--weights', str(weights),
         '--output', str(result), '--progress', 'log', '--print_iter', '1',
         *tr.CLASSIC_FLAGS, *extra, *args.ours.split()]  # fmt: skip
  wall = _run(cmd)
  record = json.loads(result.with_suffix('.json').read_text())
  history = record['history']
  return {
    'wall_s': wall,
    'iterations': sum(s['iterations'] for s in record['scales']),
    'loop_s': history[-1]['time_s'],
    'final_loss': history[-1]['total'],
    'stages': [(s['width'], s['iterations'], s['stopped']) for s in record['scales']],
    'times': [h['time_s'] for h in history],
    'curve': [(h['iteration'], h['time_s'], h['total']) for h in history],
    'image': result,
  }


def score(weights, width: int, path: Path) -> float:
  """The single evaluator: the float64 torch objective of an 8-bit result."""
  import numpy as np
  import torch_reference as tr

  from nst_jax.core import pixels
  from nst_jax.io import images as image_lib

  content, style = _images(width)
  from nst_jax.io import weights as weights_lib

  convention = weights_lib.load_weights(weights).info.input_convention
  rgb = image_lib.load_image(path)
  net = [np.asarray(pixels.preprocess(x[None], convention)[0]) for x in (content, style, rgb)]
  return tr.evaluate(weights, *net)


def _median_step(times) -> float:
  import numpy as np

  return float(np.median(np.diff(times)[1:]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--iterations', type=int, default=300)
  parser.add_argument('--per_iteration', action='store_true')
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--ours', default='', help='extra flags for main.py, space-separated')
  parser.add_argument(
    '--variants',
    default='',
    help="extra runs of ours, flag sets separated by ';' (e.g. '--scales 1')",
  )
  parser.add_argument('--no_torch', action='store_true', help='only ours (settings compared)')
  parser.add_argument('--real', action='store_true', help='use weights/vgg19.npz if present')
  parser.add_argument('--json', help='also write the results here')
  parser.add_argument('--torch_worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--weights_file', help=argparse.SUPPRESS)
  parser.add_argument('--out', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_worker:
    torch_worker(args)
    return

  import common

  from nst_jax.io import weights as weights_lib

  work = Path(tempfile.mkdtemp(prefix='parity-'))
  if args.real and weights_lib.DEFAULT_WEIGHTS_PATH.exists():
    weights, label = weights_lib.DEFAULT_WEIGHTS_PATH, 'weights/vgg19.npz'
  else:
    weights, label = common.lsuv_weights_file(work)
  print(f'weights: {label}; width {args.width}; {args.iterations} iterations', flush=True)
  results = []
  for rep in range(args.repeats):
    out = work / f'r{rep}'
    out.mkdir()
    if args.per_iteration:
      t = run_torch(args, weights, out, args.iterations)
      o = run_ours(args, weights, out, args.iterations, ('--scales', '1', '--tol', '0'))
      row = {
        'torch_s_per_iter': _median_step(t['times']),
        'ours_s_per_iter': _median_step(o['times']),
      }
      row['ratio'] = row['ours_s_per_iter'] / row['torch_s_per_iter']
      print(
        f'repeat {rep + 1}: torch {row["torch_s_per_iter"]:.4f} s/iter, ours '
        f'{row["ours_s_per_iter"]:.4f} s/iter, ours/torch {row["ratio"]:.3f}',
        flush=True,
      )
    else:
      t = None if args.no_torch else run_torch(args, weights, out, args.iterations)
      runs = [('torch', t)] if t else []
      for v, flags in enumerate(['', *filter(None, args.variants.split(';'))]):
        vout = out / f'ours{v}'
        vout.mkdir()
        runs.append((f'ours {flags}'.strip(), run_ours(args, weights, vout, args.iterations,
                                                      flags.split())))  # fmt: skip
      row = {}
      for name, r in runs:
        r['score'] = score(weights, args.width, r['image'])
        row[name] = {k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()
                     if k not in ('times',)}  # fmt: skip
        print(
          f'{name}: wall {r["wall_s"]:7.1f} s (loop {r["loop_s"]:7.1f} s), '
          f'{r["iterations"]:4d} iterations, reported loss {r["final_loss"]:.5g}, '
          f'8-bit objective {r["score"]:.5g}'
          + (f', stages {r["stages"]}' if 'stages' in r else ''),
          flush=True,
        )
      for name, o in runs if t else []:
        if name == 'torch':
          continue
        print(f'{name} / torch: wall {o["wall_s"] / t["wall_s"]:.3f}, 8-bit objective '
              f'{o["score"] / t["score"]:.3f}', flush=True)  # fmt: skip
        # When ours first reached torch's final 8-bit score, by its reported loss.
        for k, time_s, loss in o['curve']:
          if loss <= t['score']:
            print(f'  reported a loss below torch\'s final 8-bit objective at iteration {k}, '
                  f'{time_s:.1f} s into its loop', flush=True)  # fmt: skip
            break
    results.append(row)
  if args.json:
    Path(args.json).write_text(
      json.dumps({'weights': label, 'args': vars(args), 'results': results})
    )


if __name__ == '__main__':
  main()
