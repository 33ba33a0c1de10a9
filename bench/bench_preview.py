"""What the live preview costs a run (docs/controls.md, Live preview).

Runs the same stylisation with no preview, with `--serve` and nobody
watching, and with a page polling twice a second (a thread fetching /state
and /image.png as the page does), interleaved, and reports the loop time
per iteration (median of --repeats each).

  python bench/bench_preview.py --width 256 --iterations 40 --repeats 3
"""

import argparse
from pathlib import Path
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
import jax  # noqa: E402

import nst_jax  # noqa: E402
from nst_jax.core import vgg  # noqa: E402
from nst_jax.engine import preview as preview_lib  # noqa: E402
from nst_jax.io import images as image_lib  # noqa: E402
from nst_jax.io import weights as weights_lib  # noqa: E402


def _poll(url: str, stop: threading.Event, counts: dict) -> None:
  while not stop.is_set():
    for path in ('state', 'image.png'):
      try:
        with urllib.request.urlopen(url + path, timeout=10) as r:  # noqa: S310 (loopback, ours)
          r.read()
          counts[path] += 1
      except urllib.error.HTTPError:
        pass  # no image before the first update
    time.sleep(preview_lib.DEFAULT_INTERVAL_S)


def one(mode: str, content, style, cfg, w) -> float:
  record = {}
  monitor, stop, poller = None, threading.Event(), None
  if mode != 'off':
    monitor = preview_lib.Preview(0)
    if mode == 'watched':
      counts = {'state': 0, 'image.png': 0}
      poller = threading.Thread(target=_poll, args=(monitor.url, stop, counts), daemon=True)
      poller.start()
  try:
    nst_jax.stylize(content, style, config=cfg, weights=w, record=record, monitor=monitor)
  finally:
    stop.set()
    if poller is not None:
      poller.join()
    if monitor is not None:
      monitor.close(linger_s=0)
  (scale,) = record['scales']
  if mode == 'watched':
    print(f'  watched run: the page fetched {counts}', file=sys.stderr)
  return scale['run_s'] / scale['iterations']


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--iterations', type=int, default=40)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  params, label, convention = common.params_or_random(vgg.VGG19())
  info = weights_lib.WeightsInfo(
    source=label, source_sha256='', source_format='', convention=convention.name, params_sha256=''
  )
  w = weights_lib.Weights(params=params, info=info)
  content = image_lib.load_image(ROOT / 'content_images' / 'tubingen.jpg', width=args.width)
  style = image_lib.load_image(ROOT / 'style_images' / 'starry_night.jpg', width=args.width)
  cfg = nst_jax.StyleConfig(
    schedule=nst_jax.ScheduleConfig(iterations=args.iterations, scales=1),
    run=nst_jax.RunConfig(print_iter=0),
  )
  print(f'weights: {label}; {args.width} px, {args.iterations} iterations; {jax.devices()[0]}')
  times = {'off': [], 'served': [], 'watched': []}
  for _ in range(args.repeats):
    for mode in times:
      times[mode].append(one(mode, content, style, cfg, w))
  base = statistics.median(times['off'])
  print('| preview | s/iteration (median) | runs | vs off |')
  print('| --- | --- | --- | --- |')
  for mode, runs in times.items():
    m = statistics.median(runs)
    shown = ', '.join(f'{t:.3f}' for t in runs)
    print(f'| {mode} | {m:.3f} | {shown} | {m / base:.3f} |')


if __name__ == '__main__':
  main()
