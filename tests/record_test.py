"""Tests for nst_jax.io.record: the JSON record and the two pictures, from a real run."""

import json
import os
import stat

from conftest import flat_config
import numpy as np
from PIL import Image
import pytest

from nst_jax import run
from nst_jax.engine import steps
from nst_jax.io import record as record_lib
from nst_jax.io import weights as weights_lib
from nst_jax.runs import runner as runner_lib


def _inputs(directory):
  directory.mkdir()
  rng = np.random.default_rng(3)
  for name, size in (('c.png', (32, 24)), ('s.png', (40, 30))):
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
      directory / name
    )
  return directory / 'c.png', directory / 's.png'


@pytest.mark.slow
def test_run_writes_the_record_and_pictures(tmp_path, caffe_npz, monkeypatch):
  content, style = _inputs(tmp_path / 'in')
  out = tmp_path / 'o.png'
  cfg = flat_config(
    content_path=str(content),
    style_path=str(style),
    output=str(out),
    weights=str(caffe_npz),
    iterations=8,
    width=32,
    print_iter=1,
    save_iter=2,
    scales=2,
  )
  # A fresh cache, so that this run compiles (and records it) whatever ran before.
  monkeypatch.setattr(runner_lib, 'COMPILE_CACHE', steps.CompiledSteps())
  run(cfg)
  paths = record_lib.paths_for(out)
  data = json.loads(paths['json'].read_text())
  assert data['settings']['schedule']['iterations'] == 8
  assert data['settings']['schedule']['scales'] == 2
  info = weights_lib.load_weights(caffe_npz).info
  assert data['weights']['params_sha256'] == info.params_sha256
  assert data['weights']['source_sha256'] == info.source_sha256
  # Random weights in the published layout: the record never passes them off as VGG-19's.
  assert data['weights']['provenance'].startswith('unverified: MD5 ')
  assert data['versions']['jax'] == __import__('jax').__version__
  assert data['device']['platform'] == 'cpu'
  assert [(s['width'], s['iterations'], s['stopped']) for s in data['scales']] == [
    (23, 4, 'iterations'),
    (32, 4, 'iterations'),
  ]
  assert all(s['compile_s'] > 0 and s['run_s'] > 0 for s in data['scales'])
  assert not any(s['compile_reused'] for s in data['scales'])
  # Every image of both scales was scored (print_iter 1), in order, numbered
  # by the updates done across scales (4 each: -i is the run's total): each
  # scale's start image, then after each update, the last its result.
  assert [(h['scale'], h['iteration']) for h in data['history']] == [
    (s, 4 * s + i) for s in (0, 1) for i in range(0, 5)
  ]
  final = data['final_losses']
  assert final == {
    k: v for k, v in data['history'][-1].items() if k not in ('scale', 'iteration', 'time_s')
  }
  # Per-layer terms add up to the totals (style layer weights are all 1).
  layers = [k for k in final if k.startswith('style/')]
  assert len(layers) == 5
  np.testing.assert_allclose(sum(final[k] for k in layers), final['style'], rtol=1e-5)
  np.testing.assert_allclose(final['content/relu4_2'], final['content'], rtol=1e-6)
  with Image.open(paths['loss']) as im:
    assert im.size == record_lib.PLOT_SIZE
    pixels = np.asarray(im.convert('RGB'))
  for color in (record_lib.TOTAL_COLOR, record_lib.CURVES['content'], record_lib.CURVES['style']):
    assert np.all(pixels == color, axis=-1).sum() > 20, color  # each curve is drawn
  with Image.open(paths['sheet']) as im:
    # Row 1: content, style, result; row 2: the intermediates at 2 and 6 (scale 2's 2nd).
    h = record_lib.SHEET_HEIGHT
    assert im.size[1] == 2 * h + 3 * 8
    widths = [round(32 * h / 24), round(40 * h / 30), round(32 * h / 24)]
    assert im.size[0] == sum(widths) + 4 * 8
  # Files get the mode a plain open() gives, not mkstemp's 0600.
  umask = os.umask(0)
  os.umask(umask)
  for path in (out, *paths.values()):
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_record_false_writes_only_the_image(tmp_path, caffe_npz):
  content, style = _inputs(tmp_path / 'in')
  out = tmp_path / 'o.png'
  cfg = flat_config(
    content_path=str(content), style_path=str(style), output=str(out),
    weights=str(caffe_npz), iterations=1, width=32, record=False,
  )  # fmt: skip
  run(cfg)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['in', 'o.png']


def test_a_sheet_of_a_panorama_or_many_intermediates_fits_jpeg(tmp_path):
  panorama = np.full((12, 3000, 3), 0.5, np.float32)
  path = tmp_path / 'p.sheet.jpg'
  record_lib.contact_sheet([[panorama, panorama, panorama]], path)
  with Image.open(path) as im:
    # At height 256 the row would be 3 x 64000 px; it shrinks to fit (about 86 px high).
    assert 60_000 < im.width <= record_lib.MAX_SHEET_SIDE and 80 <= im.height - 16 <= 86
  many = [np.zeros((24, 32, 3), np.float32)] * 1000
  record_lib.contact_sheet([[panorama], many], path)
  with Image.open(path) as im:
    assert im.width <= 65_535
