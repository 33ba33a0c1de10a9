"""nst_jax.runs.inputs: sizes from headers, rows, and errors naming what a file was given as."""

import dataclasses

import numpy as np
from PIL import Image
import pytest

import nst_jax
from nst_jax import errors
from nst_jax.runs import inputs


@pytest.fixture
def files(tmp_path):
  rng = np.random.default_rng(0)
  for name, (w, h) in {'c.png': (64, 48), 's.png': (40, 40), 'm.png': (64, 48)}.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(tmp_path / name)
  return tmp_path


def _cfg(**inputs_):
  return nst_jax.StyleConfig(inputs=nst_jax.InputConfig(width=32, **inputs_))


def test_sizes_come_from_headers(files):
  cfg = _cfg()
  assert inputs.output_height(str(files / 'c.png'), cfg) == 24
  assert inputs.style_width(cfg.replace(inputs=cfg.inputs.replace(style_scale=0.5)), 32) == 16
  # The style at the output width: 40x40 -> 32x32, taller than the content's 24 rows.
  assert inputs.largest_height(str(files / 'c.png'), [str(files / 's.png')], cfg) == 32
  with pytest.raises(errors.ImageError) as e:  # named by its field, as the content is
    inputs.largest_height(str(files / 'c.png'), [str(files / 's.png'), 'gone.png'], cfg)
  assert str(e.value) == (
    'inputs.style_path: image gone.png does not exist; pass the path of an image file'
  )


def test_a_row_holds_every_image_at_the_run_width(files):
  cfg = _cfg(init=str(files / 's.png'))
  row = inputs.load_row(cfg, str(files / 'c.png'), [str(files / 's.png')],
                        content_mask=str(files / 'm.png'))  # fmt: skip
  assert row.content.shape == (24, 32, 3) and row.styles[0].shape == (32, 32, 3)
  assert row.content_mask.shape == (24, 32) and row.init_rgb.shape == (40, 40, 3)
  assert 0 <= row.content.min() and row.content.max() <= 1


@pytest.mark.parametrize(
  'field, settings, masks',
  [
    ('inputs.init', {'init': 'gone.png'}, {}),
    ('inputs.content_mask', {}, {'content_mask': 'gone.png'}),
    ('inputs.style_masks', {}, {'style_masks': ['gone.png']}),
  ],
)
def test_an_unreadable_file_is_named_by_its_field(files, monkeypatch, field, settings, masks):
  monkeypatch.chdir(files)
  with pytest.raises(errors.ImageError) as e:
    inputs.load_row(_cfg(**settings), 'c.png', ['s.png'], **masks)
  assert str(e.value) == f'{field}: image gone.png does not exist; pass the path of an image file'
  with pytest.raises(errors.ImageError) as e:  # in a batch, by its job instead
    inputs.load_row(_cfg(**settings), 'c.png', ['s.png'], job=3, **masks)
  assert str(e.value) == 'job 3: image gone.png does not exist; pass the path of an image file'


def test_too_small_for_the_layers_is_refused_with_the_fix(files):
  cfg = _cfg()
  row = inputs.load_row(cfg, str(files / 'c.png'), [str(files / 's.png')])
  inputs.check_size(cfg, row)  # 32x24 is enough for the default layers
  tiny = dataclasses.replace(row, content=np.zeros((8, 8, 3), np.float32))
  with pytest.raises(errors.ImageError) as e:
    inputs.check_size(cfg, tiny, ' of job 2')
  assert str(e.value) == (
    'the content image of job 2 is 8x8 px at this width, but the layers used need at least '
    '16 px on each side; use a larger inputs.width'
  )
  # A style shrunk by style_scale: a larger image was the wrong fix (trial 6).
  shrunk = _cfg(style_scale=0.01)
  small = dataclasses.replace(row, styles=[np.zeros((1, 1, 3), np.float32)])
  with pytest.raises(errors.ImageError) as e:
    inputs.check_size(shrunk, small)
  assert str(e.value) == (
    'the style image is 1x1 px at this width, but the layers used need at least 16 px on each '
    'side; use a larger inputs.style_scale (now 0.01) or shallower layers'
  )


def test_input_files_name_each_input(files):
  cfg = _cfg(content_path='c.png', style_path=('s.png', 's2.png'), content_mask='m.png',
             init='i.png')  # fmt: skip
  assert inputs.input_files(
    cfg.replace(model=nst_jax.ModelConfig(weights='w.npz')), owner=' of job 1'
  ) == {  # fmt: skip
    'content image of job 1': 'c.png',
    'style image 1 of job 1': 's.png',
    'style image 2 of job 1': 's2.png',
    'content mask of job 1': 'm.png',
    'init image of job 1': 'i.png',
    'weights file': 'w.npz',
  }


def test_a_mask_black_everywhere_is_warned_of(files, caplog):
  """Trial 28: an all-black style mask gave back the content image, exit 0, unsaid."""
  Image.new('L', (64, 48)).save(files / 'black.png')
  black = str(files / 'black.png')
  row = inputs.load_row(_cfg(), str(files / 'c.png'), [str(files / 's.png')], style_masks=[black])
  assert not row.style_masks.any()
  assert f'inputs.style_masks {black} is black everywhere: its term applies nowhere' in caplog.text
