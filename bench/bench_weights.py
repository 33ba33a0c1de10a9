r"""Benchmark of weight conversion and feature extraction.

Usage:
  python bench/bench_weights.py [--repeats 3]

  * Conversion of a full-size generated Keras notop .h5 (the published
    layout and shapes, 20.0 M float32 parameters, about 80 MB, random values)
    to .npz, each repeat in a fresh process: wall time and peak RSS.
  * `extract_features` on a 512x512 image for the default loss layers (after
    compilation), median of the repeats, plus the compile-and-first-call time.
"""

import argparse
import json
import os
from pathlib import Path
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))


def _convert_once(h5: str, out: str) -> dict:
  from nst_jax.io import weights as weights_lib

  t0 = time.perf_counter()
  flat, info = weights_lib.convert(h5)
  weights_lib.save_npz(out, flat, info)
  seconds = time.perf_counter() - t0
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {'seconds': seconds, 'peak_rss_mb': rss / 1e6}


def _baseline_rss() -> dict:
  from nst_jax.io import weights as weights_lib  # noqa: F401  # same imports as a conversion

  return {'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--convert', nargs=2, help=argparse.SUPPRESS)  # internal
  parser.add_argument('--baseline', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.convert:
    print(json.dumps(_convert_once(*args.convert)))
    return
  if args.baseline:
    print(json.dumps(_baseline_rss()))
    return

  import numpy as np
  import weight_files

  from nst_jax import extract_features
  from nst_jax.io import weights as weights_lib

  with tempfile.TemporaryDirectory() as tmp:
    h5 = os.path.join(tmp, 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5')
    weight_files.write_keras_h5(h5, weight_files.random_params(seed=0))
    size_mb = os.path.getsize(h5) / 1e6
    runs = []
    for i in range(args.repeats):
      out = subprocess.run(
        [sys.executable, __file__, '--convert', h5, os.path.join(tmp, f'v{i}.npz')],
        capture_output=True,
        text=True,
        check=True,
      )
      runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = subprocess.run(
      [sys.executable, __file__, '--baseline'], capture_output=True, text=True, check=True
    )
    base_mb = json.loads(base.stdout.strip().splitlines()[-1])['peak_rss_mb']
    seconds = [r['seconds'] for r in runs]
    rss = [r['peak_rss_mb'] for r in runs]
    print(
      f'convert {size_mb:.1f} MB Keras h5 -> npz: median {statistics.median(seconds):.2f} s '
      f'({", ".join(f"{t:.2f}" for t in seconds)}), peak RSS median '
      f'{statistics.median(rss):.0f} MB (imports alone: {base_mb:.0f} MB)'
    )

    w = weights_lib.load_weights(os.path.join(tmp, 'v0.npz'))
    rgb = np.random.default_rng(0).uniform(size=(args.size, args.size, 3)).astype(np.float32)
    layers = ['relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu4_2', 'relu5_1']
    t0 = time.perf_counter()
    feats = extract_features(w, rgb, layers)
    feats['relu5_1'].block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      feats = extract_features(w, rgb, layers)
      for v in feats.values():
        v.block_until_ready()
      times.append(time.perf_counter() - t0)
    print(
      f'extract_features {args.size}x{args.size} to relu5_1: median '
      f'{statistics.median(times):.3f} s ({", ".join(f"{t:.3f}" for t in times)}); '
      f'first call with compilation {first:.2f} s'
    )


if __name__ == '__main__':
  main()
