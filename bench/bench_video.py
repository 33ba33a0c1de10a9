"""Video throughput: frames per minute and the share of wall time spent on optical flow.

Runs main.py (as a user would) on a synthetic clip (tests/video_clips.py: a
texture moving by a sub-pixel step, an occluding square moving the other way)
in two modes:
  one-pass    frames one after another (flow computed on a host thread
              while the device works on the previous frame);
  multi-pass  --passes P, every frame of a pass one batch over 8 simulated
              CPU devices (XLA_FLAGS), the same iterations per frame in total.
Weights: LSUV-scaled random ones (bench/common.py), as for every optimiser figure.

  python bench/bench_video.py                       # 256 px, 8 frames, 100 its per frame
  python bench/bench_video.py --width 128 --frames 4 --iterations 20   # a quick look
"""

import argparse
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))

import common  # noqa: E402


def _cpu() -> str:
  try:
    for line in subprocess.run(['lscpu'], capture_output=True, text=True).stdout.splitlines():
      if line.startswith('Model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def _run(args, devices, out_json):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  t0 = time.perf_counter()
  done = subprocess.run([sys.executable, str(ROOT / 'main.py'), *map(str, args)], env=env,
                        capture_output=True, text=True)  # fmt: skip
  wall = time.perf_counter() - t0
  if done.returncode:
    sys.exit(f'main.py failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}')
  return wall, json.loads(Path(out_json).read_text())


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--width', type=int, default=256)
  p.add_argument('--frames', type=int, default=8)
  p.add_argument('--iterations', type=int, default=100, help='per frame, in total over passes')
  p.add_argument('--passes', type=int, default=4)
  a = p.parse_args()
  import video_clips

  from nst_jax.io import images as image_lib

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    weights, label = common.lsuv_weights_file(tmp)
    frames, _ = video_clips.moving_square_clip(n=a.frames, height=a.width * 3 // 4, width=a.width)
    clip = tmp / 'clip'
    clip.mkdir()
    for k, rgb in enumerate(frames):
      image_lib.save_image(clip / f'f{k:03d}.png', rgb, bit_depth=16)
    style = ROOT / 'style_images' / 'starry_night.jpg'
    base = ['-cp', clip, '--video', '-sp', style, '-w', a.width, '-i', a.iterations,
            '--weights', weights, '--progress', 'log', '--print_iter', 0]  # fmt: skip
    rows = []
    for name, extra, devices in [
      ('one-pass, 1 device', [], 1),
      (f'multi-pass ({a.passes} passes), 8 simulated devices', ['--passes', a.passes], 8),
    ]:
      out = tmp / name.split(',')[0].replace(' ', '_')
      wall, record = _run([*base, *extra, '--output', f'{out}/'], devices, f'{out}.json')
      rows.append((name, wall, record))
  size = f'{a.width}x{a.width * 3 // 4}'
  print(f'{_cpu()}, {os.cpu_count()} cores; {a.frames} frames at {size}, {a.iterations} L-BFGS '
        f'iterations per frame, {label}; one run each')  # fmt: skip
  print('| mode | wall (s, incl. start-up) | run (s) | frames/min | flow (s) | flow share |')
  print('| --- | --- | --- | --- | --- | --- |')
  for name, wall, r in rows:
    waited = sum(f.get('flow_wait_s', 0.0) for f in r['per_frame'])
    share = (waited if 'one-pass' in name else r['flow_s']) / r['total_s']
    print(f'| {name} | {wall:.1f} | {r["total_s"]:.1f} | {60 * a.frames / r["total_s"]:.2f} | '
          f'{r["flow_s"]:.2f} | {100 * share:.1f}% |')  # fmt: skip
  print('flow share: one-pass counts only the time the loop waited for flow (the rest overlaps '
        'with the device); multi-pass computes flow between passes, on the host.')  # fmt: skip


if __name__ == '__main__':
  main()
