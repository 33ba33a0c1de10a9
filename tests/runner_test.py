"""Tests for nst_jax.runs.runner's shared pieces: the layout rule, resuming, the success line."""

import time
import types

import pytest

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.engine import sharding
from nst_jax.runs import results as results_lib
from nst_jax.runs import runner


def test_one_layout_rule_for_files_and_arrays():
  cfg = config_lib.StyleConfig()
  one = runner.layout_for(cfg, 48)
  three = runner.layout_for(cfg, 48, 3)
  assert isinstance(one, sharding.SingleLayout) and one.n_rows == 1
  assert isinstance(three, sharding.SingleLayout) and three.n_rows == 3
  # Spatial sharding needs several devices: on this one-device CPU it is one device still.
  spatial = cfg.replace(run=cfg.run.replace(shard='spatial'))
  assert isinstance(runner.layout_for(spatial, 48), sharding.SingleLayout)


def test_resuming_from_nothing(tmp_path):
  cfg = config_lib.StyleConfig()
  missing = tmp_path / 'a.ckpt'
  assert runner.resume_from(cfg, missing, required=True) is None  # not asked to resume
  resume = cfg.replace(run=cfg.run.replace(resume=True))
  assert runner.resume_from(resume, None, required=True) is None  # no checkpoint named
  assert runner.resume_from(resume, missing, required=False) is None  # a file run starts afresh
  with pytest.raises(errors.ConfigError) as e:  # stylize's words (trial 19: 'run.resume', NstError)
    runner.resume_from(resume, missing, required=True)
  assert str(e.value) == (
    f'no checkpoint {missing} to resume; pass the checkpoint= of the run to continue, or leave '
    'config.run.resume False to start'
  )


def test_the_success_line_is_one_line_whatever_the_name(tmp_path):
  cfg = config_lib.StyleConfig(save=config_lib.SaveConfig(record=False))
  results = types.SimpleNamespace(
    cfg=cfg, history=types.SimpleNamespace(history=[[{'total': 2.5}]]), t0=time.perf_counter()
  )
  record = {'scales': [{'iterations': 7, 'stopped': 'budget', 'budget': 7}]}
  line = results_lib.summary(tmp_path / 'a\nb.png', record, results)
  assert '\n' not in line
  assert line.startswith("Done: '") and "a\\nb.png'" in line
  assert ', 7 iterations, final loss 2.5.' in line
  record = {'scales': [{'iterations': 1, 'stopped': 'budget', 'budget': 1}]}
  line = results_lib.summary(tmp_path / 'one.png', record, results)
  assert line.startswith(f'Done: {tmp_path / "one.png"} in ')
  assert line.endswith(' s, 1 iteration, final loss 2.5.')  # was '1 iterations'


def test_the_memory_plan_names_the_output_size_not_a_taller_style(tmp_path, caplog):
  """Trial 10: a 128x96 content with a 128x101 style logged 'A 128x101 run ...'."""
  import logging

  import numpy as np

  from nst_jax.io import images as image_lib

  for name, height in (('c.png', 96), ('s.png', 101)):
    image_lib.save_image(tmp_path / name, np.full((height, 128, 3), 0.5, np.float32))
  cfg = config_lib.StyleConfig(
    inputs=config_lib.InputConfig(
      content_path=str(tmp_path / 'c.png'), style_path=(str(tmp_path / 's.png'),), width=128
    ),
    run=config_lib.RunConfig(memory_limit=24),
  )
  with caplog.at_level(logging.INFO):
    runner._plan_memory(cfg, sharding.SingleLayout())
  plans = [r.getMessage() for r in caplog.records if r.getMessage().startswith('A ')]
  assert plans == ['A 128x96 run needs about 1.0 GB of memory (24.0 GB available).']


def test_tiles_and_an_image_split_over_devices_are_refused_for_files_and_arrays(monkeypatch):
  """stylize took loss.tiles with run.shard spatial; the command line refused them (trial 7).

  The one layout rule refuses them for both, as the memory plan does: it
  has no estimate for a tiled image split over devices.
  """
  import jax

  cfg = config_lib.StyleConfig(
    loss=config_lib.LossConfig(tiles=16), run=config_lib.RunConfig(shard='spatial')
  )
  monkeypatch.setattr(jax, 'local_device_count', lambda: 2)
  monkeypatch.setattr(jax, 'local_devices', lambda: jax.devices() * 2)
  with pytest.raises(errors.ConfigError) as e:
    runner.layout_for(cfg, 48)
  assert str(e.value) == (
    'loss.tiles and run.shard spatial do not combine (both split the image to fit memory, and '
    "the memory plan covers one at a time); use one: loss.tiles 'off', or run.shard jobs"
  )
  # Only one device of the two splits 47 rows evenly: nothing is split, the tiles stay.
  assert runner.layout_for(cfg, 47).mesh.devices.size == 1


def test_run_refuses_a_group_for_its_config_naming_the_fix():
  """A LossConfig was an AttributeError ('... has no attribute run'), as stylize's was."""
  cases = [
    (config_lib.LossConfig(), 'a LossConfig; pass nst_jax.StyleConfig(loss=cfg)'),
    (None, 'a NoneType; pass nst_jax.StyleConfig(loss=nst_jax.LossConfig(...))'),
  ]
  for cfg, message in cases:
    with pytest.raises(errors.ArgumentError) as e:
      runner.run(cfg)
    assert str(e.value) == f'cfg must be a StyleConfig, got {message}'


def test_an_empty_content_path_is_named_so(tmp_path):
  """It said 'image . is a directory' (Path('') is '.')."""
  cfg = config_lib.StyleConfig(
    inputs=config_lib.InputConfig(content_path='', style_path=str(tmp_path / 's.png'))
  )
  with pytest.raises(errors.ConfigError) as e:
    runner.run(cfg)
  assert str(e.value) == 'inputs.content_path is empty; give the path of an image file'


def test_normalized_gradients_with_lbfgs_warn_once_per_engine(monkeypatch, caplog):
  """L-BFGS diverged on them in a trial (loss 1741.7 -> 494026 in 10 iterations); Adam did not."""
  monkeypatch.setattr(runner.engine_lib, 'Engine', lambda *args, **kwargs: 'engine')
  warned = []
  for name in ('lbfgs', 'adam'):
    for normalize in (True, False):
      cfg = config_lib.StyleConfig(
        loss=config_lib.LossConfig(normalize_gradients=normalize),
        optim=config_lib.OptimConfig(name=name),
      )
      caplog.clear()
      assert runner.make_engine(cfg, None, None) == 'engine'
      warned += [(name, normalize, r.getMessage()) for r in caplog.records]
  assert warned == [('lbfgs', True, runner.NORMALIZED_LBFGS)]
  assert 'the run can diverge; use the Adam optimiser' in runner.NORMALIZED_LBFGS


def test_a_rerun_without_resume_is_refused_beside_an_interrupted_run(tmp_path, monkeypatch):
  """Trial 12 (e)1: a folder batch rerun without --resume started a `_2` batch without a word."""
  import numpy as np

  from nst_jax.io import checkpoint as checkpoint_lib
  from nst_jax.io import images as image_lib
  from nst_jax.io import jobs as jobs_lib
  from nst_jax.runs import batch
  from nst_jax.runs import output_plan

  monkeypatch.chdir(tmp_path)
  for name in ('c.png', 's.png', 'd.png'):
    image_lib.save_image(tmp_path / name, np.full((24, 32, 3), 0.5, np.float32))
  out = tmp_path / 'out'
  out.mkdir()
  ckpt = out / 'c_s.ckpt'
  checkpoint_lib.save(ckpt, state={'x': 1}, iteration=3, total=10, settings={})
  cfg = config_lib.StyleConfig(
    inputs=config_lib.InputConfig(content_path='c.png', style_path=('s.png',), width=32),
    save=config_lib.SaveConfig(path='out/'),
  )
  refusal = (
    f'{ckpt.relative_to(tmp_path)} holds an unfinished run (3 of 10 iterations); continue it '
    'with run.resume, or delete it to start over'
  )
  with pytest.raises(errors.NstError) as e:
    runner.run(cfg)
  assert str(e.value) == refusal
  jobs = [jobs_lib.Job('d.png', ('s.png',)), jobs_lib.Job('c.png', ('s.png',))]
  with pytest.raises(errors.NstError) as e:
    batch.run_batch(jobs, cfg)
  assert str(e.value) == refusal
  assert sorted(p.name for p in out.iterdir()) == ['c_s.ckpt']  # nothing written
  # A live run's checkpoint is not an interrupted one: a second run gets the next name.
  with output_plan.locked([runner.planned_output(cfg, out / 'c_s.png', 24)]):
    runner.check_no_interrupted('c.png', ['s.png'], 'out', cfg)
    # Trial 49 C1: a batch to that output was told its checkpoint was unfinished, to delete it.
    busy = 'another nst-jax run is writing out/c_s.png; wait for it to finish or choose another'
    for resume in (False, True):
      named = cfg.replace(save=cfg.save.replace(path='out/c_s.png'),
                          run=cfg.run.replace(resume=resume))  # fmt: skip
      with pytest.raises(errors.NstError, match=busy):
        batch.run_batch([jobs_lib.Job('c.png', ('s.png',))], named)
  # A finished checkpoint (kept) is a finished run: the next name is free to take.
  checkpoint_lib.save(ckpt, state={'x': 1}, iteration=10, total=10, settings={})
  runner.check_no_interrupted('c.png', ['s.png'], 'out', cfg)


def test_an_old_names_checkpoint_is_offered_only_where_it_notes_no_other_result(tmp_path):
  """Before 2026-12 r.jpg's checkpoint was r.ckpt, which a resume of r.jpg offers to rename; trial
  43 Q5: it offered r.png's kept r.ckpt, whose marker notes r.png as its result."""
  from nst_jax.io import checkpoint_store

  content = tmp_path / 'c.jpg'
  content.write_bytes(b'')
  cfg = config_lib.StyleConfig(
    inputs=config_lib.InputConfig(content_path=str(content), style_path=str(content)),
    save=config_lib.SaveConfig(path=str(tmp_path / 'r.jpg')),
    run=config_lib.RunConfig(resume=True),
  )
  (tmp_path / 'r.ckpt').mkdir()
  (tmp_path / 'r.ckpt' / checkpoint_store.MARKER).write_text('{"format": 2}')
  with pytest.raises(errors.NstError, match=r"r\.ckpt may be this run's, named as nst-jax did"):
    runner._single_output(cfg)
  checkpoint_store.note_result(tmp_path / 'r.ckpt', 'ab' * 32, tmp_path / 'r.png')
  with pytest.raises(errors.NstError, match=r'^no checkpoint .*r\.jpg\.ckpt to resume'):
    runner._single_output(cfg)
  checkpoint_store.note_result(tmp_path / 'r.ckpt', 'ab' * 32, tmp_path / 'r.jpg')
  with pytest.raises(errors.NstError, match=r"r\.ckpt may be this run's, named as nst-jax did"):
    runner._single_output(cfg)
