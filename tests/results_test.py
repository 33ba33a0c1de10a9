"""Tests for nst_jax.runs.results: what a run writes at its end, and what it keeps of others'."""

import json
from pathlib import Path

from conftest import flat_config
import numpy as np
import pytest
import small_runs

from nst_jax import errors
from nst_jax import run
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import output_names
from nst_jax.runs import results as results_lib


def _cfg(images, output, weights, **changes):
  content, style = images
  settings = {'content_path': str(content), 'style_path': str(style), 'output': str(output),
              'weights': str(weights), 'width': 32, 'iterations': 4, **changes}  # fmt: skip
  cfg = flat_config(**settings)
  return cfg.replace(loss=small_runs.loss_config())


def _digests(folder: Path) -> dict[str, str]:
  return {p.name: output_names.file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _killed_in(monkeypatch, module, name: str, cfg) -> None:
  """Runs `cfg` with `module.name` raising SystemExit (as a kill there would stop it)."""

  def killed(*args, **kwargs):
    raise SystemExit('killed')

  monkeypatch.setattr(module, name, killed)
  with pytest.raises(SystemExit):
    run(cfg)
  monkeypatch.undo()


def _put_at_first_intermediate(monkeypatch, files: dict[Path, bytes]) -> None:
  """Puts `files` (a user's) in place when the run saves its first intermediate."""
  real = results_lib.Results.intermediate

  def intermediate(self, iteration, images):
    for path, data in files.items():
      if not path.exists():
        path.write_bytes(data)
    return real(self, iteration, images)

  monkeypatch.setattr(results_lib.Results, 'intermediate', intermediate)


def test_files_put_at_the_results_names_while_it_runs_are_kept(
  tmp_path, images, caffe_npz, monkeypatch, caplog
):
  """Trial 34 Y6: put at the result's, record's and sheet's names mid-run, they were replaced."""
  out = tmp_path / 'out' / 'r.png'
  out.parent.mkdir()
  mine = {out: b'my picture', out.with_suffix('.json'): b'{"mine": 1}',
          out.with_name('r.sheet.jpg'): b'my sheet'}  # fmt: skip
  _put_at_first_intermediate(monkeypatch, mine)
  with pytest.raises(errors.WriteError) as e:
    run(_cfg(images, out, caffe_npz, save_iter=2))
  ckpt = checkpoint_lib.path_for(out)
  assert str(e.value) == (
    f'could not write {out.with_suffix(".json")}: a file appeared there while the run ran, and '
    f'is kept; move r.json away, then continue with run.resume (the checkpoint {ckpt} is kept)'
  )
  assert {p: p.read_bytes() for p in mine} == mine
  assert not checkpoint_lib.unfinished(checkpoint_lib.read(ckpt))  # the result is not lost
  # Only the sheet put there: the result and record are written, the sheet is kept.
  checkpoint_lib.remove(ckpt)
  for p in out.parent.iterdir():  # as the user would, the run's images too
    p.unlink()
  sheet = {out.with_name('r.sheet.jpg'): b'my sheet'}
  monkeypatch.undo()
  _put_at_first_intermediate(monkeypatch, sheet)
  run(_cfg(images, out, caffe_npz, save_iter=2))
  assert out.with_name('r.sheet.jpg').read_bytes() == b'my sheet'
  assert f'kept {out.with_name("r.sheet.jpg")}: a file appeared there while the run ran' in (
    caplog.text
  )
  assert output_names.record_naming(out) is not None
  claimed = output_names.claimed(out)  # trial 36: the kept sheet was then claimed by name
  assert out.with_name('r.sheet.jpg') not in claimed and out.with_name('r.loss.png') in claimed


def test_the_resume_after_a_result_appeared_does_not_take_it(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 36 H1: the finished checkpoint claimed the result's name, and the resume its stop
  asked for (or a plain rerun) replaced the user's file there."""
  out = tmp_path / 'r.png'
  _put_at_first_intermediate(monkeypatch, {out: b'my picture'})
  with pytest.raises(errors.WriteError, match=r'move r\.png away, then continue with run.resume'):
    run(_cfg(images, out, caffe_npz, save_iter=2))
  monkeypatch.undo()
  for resume in (True, False):
    with pytest.raises(errors.NstError, match=r'r\.png exists and no nst-jax run record says'):
      run(_cfg(images, out, caffe_npz, save_iter=2, resume=resume))
  assert out.read_bytes() == b'my picture'
  out.rename(tmp_path / 'mine.png')
  run(_cfg(images, out, caffe_npz, save_iter=2, resume=True))
  assert output_names.record_naming(out) is not None


def test_an_intermediate_another_run_wrote_meanwhile_is_kept_and_not_claimed(
  tmp_path, images, caffe_npz, monkeypatch, caplog
):
  """Trial 34 Y5: a second run's result at r_00002.png was replaced by the first run's image,
  or claimed by its record (digests read at the end), and a --norecord rerun deleted it."""
  out = tmp_path / 'r.png'
  theirs = out.with_name('r_00004.png')
  _put_at_first_intermediate(monkeypatch, {theirs: b'another run'})
  run(_cfg(images, out, caffe_npz, save_iter=2, iterations=6))
  assert theirs.read_bytes() == b'another run'
  assert f'kept {theirs}: the image of iteration 4 was not saved' in caplog.text
  record = json.loads(out.with_suffix('.json').read_text())
  assert record['intermediates'] == ['r_00002.png']
  assert list(record['intermediates_sha256']) == ['r_00002.png']
  # A file put over one of the run's own after it was written: the record has what it wrote.
  monkeypatch.undo()
  (tmp_path / 'r_00002.png').unlink()
  real = results_lib.Results.write

  def write(self, r, rgb, record):
    (tmp_path / 'r_00002.png').write_bytes(b'put over it')
    return real(self, r, rgb, record)

  monkeypatch.setattr(results_lib.Results, 'write', write)
  cfg = _cfg(images, out, caffe_npz, save_iter=2, iterations=6)
  run(cfg.replace(save=cfg.save.replace(overwrite=True)))
  claimed = output_names.claimed(out)
  assert tmp_path / 'r_00002.png' not in claimed and out in claimed


def test_a_norecord_rerun_leaves_another_runs_result_at_a_figures_name(tmp_path, images, caffe_npz):
  """Trial 34 Y9: B's result at A's sheet name, with its own record, was deleted by A's rerun."""
  out = tmp_path / 'r.png'
  run(_cfg(images, out, caffe_npz))
  sheet = out.with_name('r.sheet.jpg')
  sheet.unlink()
  run(_cfg(images, sheet, caffe_npz, iterations=2))  # B, recorded as r.sheet.jpg.json
  before = _digests(tmp_path)
  run(_cfg(images, out, caffe_npz, record=False))
  after = _digests(tmp_path)
  assert after['r.sheet.jpg'] == before['r.sheet.jpg']
  assert 'r.json' not in after and 'r.loss.png' not in after  # A's own earlier record: gone
  assert output_names.record_naming(sheet) is not None


def test_a_resume_claims_only_what_the_interrupted_run_wrote(tmp_path):
  """Trial 34 Y12: with --overwrite, a resume's record claimed a user's r_00004.png, before the
  checkpoint's iteration (never written again), and a later rerun replaced it unasked."""
  import nst_jax
  from nst_jax.io import checkpoint_store

  out = tmp_path / 'r.png'
  cfg = nst_jax.StyleConfig(
    save=nst_jax.SaveConfig(save_iter=2), run=nst_jax.RunConfig(resume=True)
  )
  cfg = cfg.replace(schedule=cfg.schedule.replace(iterations=20))
  ckpt = checkpoint_lib.path_for(out)
  state = {'image': np.zeros((1, 2, 2, 3), np.float32)}
  checkpoint_lib.write(ckpt, checkpoint_lib.snapshot(state, iteration=7, total=20, settings={}))
  for name in ('r_00002.png', 'r_00007.png'):  # the interrupted run's, noted by its stop
    (tmp_path / name).write_bytes(name.encode())
  checkpoint_store.note_images(ckpt, {n: output_names.file_sha256(tmp_path / n)
                                      for n in ('r_00002.png', 'r_00007.png')})  # fmt: skip
  (tmp_path / 'r_00004.png').write_bytes(b'my picture')
  results = results_lib.Results(cfg, None, {0: out}, {0: None})
  assert sorted(results.saved[0]) == ['r_00002.png', 'r_00007.png']


def test_a_norecord_rerun_leaves_a_folder_at_a_figures_name(tmp_path, images, caffe_npz):
  """Trial 34 Y16: a folder made at r.loss.png was an IsADirectoryError after the result."""
  out = tmp_path / 'r.png'
  run(_cfg(images, out, caffe_npz, iterations=2))
  plot = out.with_name('r.loss.png')
  plot.unlink()
  plot.mkdir()
  (plot / 'notes.txt').write_text('mine')
  run(_cfg(images, out, caffe_npz, iterations=2, record=False))
  assert (plot / 'notes.txt').read_text() == 'mine' and not out.with_suffix('.json').exists()


def test_a_picture_saved_over_a_figure_is_not_claimed(tmp_path, images, caffe_npz):
  """Trial 34 Y7: the loss plot and sheet were claimed by name; a rerun replaced a picture saved
  over one, and a --norecord rerun deleted it."""
  out = tmp_path / 'r.png'
  run(_cfg(images, out, caffe_npz, iterations=2))
  record = json.loads(out.with_suffix('.json').read_text())
  plot, sheet = out.with_name('r.loss.png'), out.with_name('r.sheet.jpg')
  assert record['figures_sha256'] == {p.name: output_names.file_sha256(p) for p in (plot, sheet)}
  assert {plot, sheet} <= output_names.claimed(out)
  sheet.write_bytes(b'my picture')
  assert sheet not in output_names.claimed(out) and plot in output_names.claimed(out)
  with pytest.raises(errors.NstError, match=r'r\.sheet\.jpg exists, beside r\.png, and no nst-'):
    run(_cfg(images, out, caffe_npz, iterations=2))
  run(_cfg(images, out, caffe_npz, iterations=2, record=False))
  assert sheet.read_bytes() == b'my picture' and not plot.exists()


def test_pictures_saved_over_an_earlier_runs_files_while_a_rerun_runs_are_kept(
  tmp_path, images, caffe_npz, monkeypatch, caplog
):
  """Trial 36 H4, H12, H13: saved over the earlier result, an earlier intermediate or sheet
  while the rerun ran, they were replaced, deleted (--norecord) or claimed by the new record."""
  out = tmp_path / 'r.png'
  run(_cfg(images, out, caffe_npz, save_iter=2, iterations=6))  # r_00002, r_00004: the earlier
  mine = {out.with_name('r_00004.png'): b'mine 4', out.with_name('r.sheet.jpg'): b'my sheet'}

  def over(files):
    real = results_lib.Results.intermediate

    def intermediate(self, iteration, images):
      for path, data in files.items():
        path.write_bytes(data)  # the earlier run's file, saved over mid-run
      return real(self, iteration, images)

    monkeypatch.setattr(results_lib.Results, 'intermediate', intermediate)

  over(mine)
  run(_cfg(images, out, caffe_npz, save_iter=2, iterations=3, record=False))  # writes r_00002
  assert {p: p.read_bytes() for p in mine} == mine  # not deleted as the earlier record's
  for path in mine:  # and said, as with a record (trial 41)
    assert f'kept {path}: a file appeared there while the run ran' in caplog.text
  monkeypatch.undo()
  for p in tmp_path.glob('r*'):  # afresh: the earlier run again, with its record
    p.unlink()
  run(_cfg(images, out, caffe_npz, save_iter=2, iterations=6))
  over({out.with_name('r_00004.png'): b'mine 4'})
  run(_cfg(images, out, caffe_npz, save_iter=2, iterations=3))
  record = json.loads(out.with_suffix('.json').read_text())
  assert (record['intermediates'], record['earlier_intermediates']) == (['r_00002.png'], [])
  over({out: b'my picture'})  # the earlier result itself
  with pytest.raises(errors.WriteError, match='a file appeared there while the run ran'):
    run(_cfg(images, out, caffe_npz, save_iter=2, iterations=3))
  assert out.read_bytes() == b'my picture'


def test_after_a_kill_only_the_images_the_run_noted_are_its_own(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 36 H10, H11: after a kill, a resume claimed by name a user's picture the run had
  kept (or one there before a run without save_iter), and a later rerun replaced it."""
  from checkpoint_test import _edit_meta

  out = tmp_path / 'r.png'
  theirs = out.with_name('r_00004.png')
  _put_at_first_intermediate(monkeypatch, {theirs: b'my picture'})
  run(_cfg(images, out, caffe_npz, save_iter=2, iterations=6, keep_checkpoint=True))
  monkeypatch.undo()
  ckpt = checkpoint_lib.path_for(out)
  from nst_jax.io import checkpoint_store

  assert sorted(checkpoint_store.noted_images(ckpt)) == ['r_00002.png']  # noted as written
  meta = checkpoint_lib.read(ckpt)
  _edit_meta(ckpt, total=10, extra={**meta['extra'], 'iterations': 10})  # killed at 6 of 10
  for name in ('r.png', 'r.json', 'r.loss.png', 'r.sheet.jpg'):
    out.with_name(name).unlink()
  with pytest.raises(errors.NstError, match=r'r_00004\.png exists, beside r\.png, and no nst-'):
    run(_cfg(images, out, caffe_npz, save_iter=2, iterations=10, resume=True))
  assert theirs.read_bytes() == b'my picture'


def test_the_earlier_record_and_figures_saved_over_while_a_rerun_runs_are_kept(
  tmp_path, images, caffe_npz, monkeypatch, caplog
):
  """Trial 39 G1, G2: pictures saved over the earlier run's loss plot, sheet or record while a
  rerun ran were replaced at its end, exit 0."""
  out = tmp_path / 'r.png'
  run(_cfg(images, out, caffe_npz, save_iter=2, iterations=4))
  sheet, record = out.with_name('r.sheet.jpg'), out.with_suffix('.json')
  real = results_lib.Results.intermediate

  def saving_over(files):
    def intermediate(self, iteration, images):
      for path, data in files.items():
        path.write_bytes(data)
      return real(self, iteration, images)

    monkeypatch.setattr(results_lib.Results, 'intermediate', intermediate)

  saving_over({sheet: b'my sheet'})
  run(_cfg(images, out, caffe_npz, save_iter=2, iterations=4))
  assert sheet.read_bytes() == b'my sheet' and f'kept {sheet}' in caplog.text
  sheet.unlink()  # the user moves it away (the plan refuses it now: not the run's)
  saving_over({record: b'{"mine": 1}'})
  with pytest.raises(errors.WriteError, match='r.json: a file appeared there while the run ran'):
    run(_cfg(images, out, caffe_npz, save_iter=2, iterations=4))
  assert record.read_bytes() == b'{"mine": 1}'


def test_a_kept_checkpoint_claims_its_result_not_pictures_at_its_other_names(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 41 F1-F3: a finished checkpoint (kept, or left by a run refused at its end) claimed
  every name beside its result: the next run, or the resume a refusal asked for, replaced
  pictures saved over the loss plot, sheet or an intermediate, and ones it never wrote."""
  out = tmp_path / 'r.png'
  plot, sheet, second = (out.with_name(n) for n in ('r.loss.png', 'r.sheet.jpg', 'r_00002.png'))
  kept = {'keep_checkpoint': True, 'save_iter': 2}
  run(_cfg(images, out, caffe_npz, iterations=4, **kept))
  for name, later in [(plot, {}), (sheet, {'resume': True, 'iterations': 6}), (second, {})]:
    name.write_bytes(b'mine')  # saved over the kept run's, then a rerun or a longer resume
    with pytest.raises(errors.NstError, match=f'{name.name} exists, beside r.png, and no nst-jax'):
      run(_cfg(images, out, caffe_npz, **{'iterations': 4, **kept, **later}))
    assert name.read_bytes() == b'mine'
    name.unlink()
  # A name it never wrote: past the iteration the checkpoint holds, or a --norecord run's plot.
  out.with_name('r_00006.png').write_bytes(b'mine')
  with pytest.raises(errors.NstError, match=r'r_00006\.png exists, beside r\.png, past iteration'):
    run(_cfg(images, out, caffe_npz, iterations=8, resume=True, **kept))
  assert out.with_name('r_00006.png').read_bytes() == b'mine'
  for p in tmp_path.glob('r*'):
    if p.is_file():
      p.unlink()
  run(_cfg(images, out, caffe_npz, iterations=4, record=False, **kept))
  plot.write_bytes(b'mine')
  with pytest.raises(errors.NstError, match='r.loss.png exists, beside r.png, and no nst-jax'):
    run(_cfg(images, out, caffe_npz, iterations=4, resume=True, **kept))
  assert plot.read_bytes() == b'mine'


def test_a_later_run_to_the_same_checkpoint_notes_none_of_an_earlier_runs_images(
  tmp_path, images, caffe_npz
):
  """The images a file run wrote stayed registered for its checkpoint's path after it ended: a
  later run in the process saving a checkpoint there (stylize's checkpoint=) noted them as its own,
  by digest, and a resume would claim them."""
  from PIL import Image

  from nst_jax import stylize
  from nst_jax.io import checkpoint_store

  out = tmp_path / 'r.png'
  run(_cfg(images, out, caffe_npz, save_iter=2))
  assert out.with_name('r_00002.png').is_file()
  ckpt = checkpoint_lib.path_for(out)
  assert not ckpt.exists()  # removed at the end, as by default
  content, style = (np.asarray(Image.open(p).convert('RGB'), np.float32) / 255 for p in images)
  cfg = _cfg(images, out, caffe_npz, iterations=2)
  stylize(content[:32, :32], style[:32, :32], config=cfg, weights=caffe_npz, checkpoint=ckpt)
  assert ckpt.is_dir() and checkpoint_store.noted_images(ckpt) == {}


def test_a_record_written_before_its_figures_claims_none_of_their_names(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 43 F-C: killed between its record and its figures, a record without figures_sha256
  read as an older one, which claims them by name: pictures put there were replaced by the
  resume, and deleted by a --norecord rerun."""
  from nst_jax.io import record as record_lib

  out = tmp_path / 'r.png'
  plot = out.with_name('r.loss.png')
  _killed_in(monkeypatch, record_lib, 'figures', _cfg(images, out, caffe_npz))
  assert json.loads(out.with_suffix('.json').read_text())['figures_sha256'] == {}
  plot.write_bytes(b'mine')
  for resume in (True, False):
    with pytest.raises(errors.NstError, match=r'r\.loss\.png exists, beside r\.png, and no nst-'):
      run(_cfg(images, out, caffe_npz, resume=resume))
  run(_cfg(images, out, caffe_npz, record=False))
  assert plot.read_bytes() == b'mine'


def test_a_rerun_stopped_at_its_result_keeps_the_earlier_record(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 43 Q15: a rerun that found a file at its result's name deleted the earlier run's
  record with its own, and the resume it asked for then refused that run's own figures."""
  out = tmp_path / 'r.png'
  run(_cfg(images, out, caffe_npz, save_iter=2))
  earlier = out.with_suffix('.json').read_bytes()
  real = results_lib.Results.intermediate

  def saved_over(self, iteration, images):
    out.write_bytes(b'my picture')
    return real(self, iteration, images)

  monkeypatch.setattr(results_lib.Results, 'intermediate', saved_over)
  with pytest.raises(errors.WriteError, match=r'move r\.png away, then continue with run.resume'):
    run(_cfg(images, out, caffe_npz, save_iter=2))
  monkeypatch.undo()
  assert out.with_suffix('.json').read_bytes() == earlier and out.read_bytes() == b'my picture'
  out.rename(tmp_path / 'mine.png')
  run(_cfg(images, out, caffe_npz, save_iter=2, resume=True))  # one round, as it said
  assert output_names.record_naming(out) is not None
  assert (tmp_path / 'mine.png').read_bytes() == b'my picture'


def test_a_picture_saved_over_the_result_while_its_figures_are_drawn_is_not_the_checkpoints(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 45 P2-8, P2-9: a kept checkpoint noted the digest of whatever was at the result's name
  after the figures: a picture saved over the result meanwhile became its own, and the next
  resume replaced it."""
  from nst_jax.io import record as record_lib

  out = tmp_path / 'r.png'
  real = record_lib.figures

  def drawing(*args, **kwargs):
    out.write_bytes(b'my picture')
    return real(*args, **kwargs)

  monkeypatch.setattr(record_lib, 'figures', drawing)
  run(_cfg(images, out, caffe_npz, keep_checkpoint=True))
  monkeypatch.undo()
  assert out.read_bytes() == b'my picture'
  with pytest.raises(errors.NstError, match=r'r\.png is not the file its run record was written'):
    run(_cfg(images, out, caffe_npz, keep_checkpoint=True, resume=True))
  assert out.read_bytes() == b'my picture'


def test_an_intermediate_at_another_running_runs_output_is_not_saved(
  tmp_path, images, caffe_npz, caplog
):
  """Trial 36 H1b: run B's output was run A's planned intermediate; A wrote it while B ran, B
  stopped at its result, and B's resume then replaced A's image (the locks cover results,
  records and checkpoints, not intermediates). A leaves it to the run holding its lock."""
  from nst_jax.runs import output_locks

  out = tmp_path / 'r.png'
  theirs = output_names.intermediate_path(out, 2)
  with output_locks.hold([theirs]):  # run B, still running
    run(_cfg(images, out, caffe_npz, save_iter=2, iterations=6))
    assert not theirs.exists() and output_names.intermediate_path(out, 4).is_file()
  assert f'{theirs} is the output of another run, running now: the image of iteration 2' in (
    caplog.text
  )
  record = json.loads(out.with_suffix('.json').read_text())
  assert sorted(record['intermediates_sha256']) == ['r_00004.png']


def test_a_run_killed_while_drawing_its_sheet_owns_the_loss_plot_it_drew(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 49 E2: killed while the sheet was drawn, the loss plot just drawn was in no record, so
  every rerun and resume called it someone's, and a --norecord rerun left it beside another
  image (E3b). Each figure is noted by its digest before it is put in place."""
  from nst_jax.io import record as record_lib

  out = tmp_path / 'r.png'
  plot = out.with_name('r.loss.png')
  _killed_in(monkeypatch, record_lib, 'contact_sheet', _cfg(images, out, caffe_npz))
  record = json.loads(out.with_suffix('.json').read_text())
  assert record['figures_drawn'] is False
  assert record['figures_sha256'] == {'r.loss.png': output_names.file_sha256(plot)}
  run(_cfg(images, out, caffe_npz, resume=True))
  assert out.with_name('r.sheet.jpg').is_file()
  _killed_in(monkeypatch, record_lib, 'contact_sheet', _cfg(images, out, caffe_npz, iterations=5))
  run(_cfg(images, out, caffe_npz, iterations=2, record=False))
  assert sorted(p.name for p in tmp_path.glob('r*')) == ['r.png']


def test_a_rerun_after_a_kill_at_the_result_replaces_the_killed_runs_images(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 59 T59-7: killed while its result was written (its checkpoint finished), a plain rerun
  forgot the images the checkpoint noted before checking its plan again under the locks, so that
  check called them someone's; the refused rerun had forgotten them for --resume too."""
  out = tmp_path / 'r.png'
  cfg = _cfg(images, out, caffe_npz, save_iter=2, checkpoint_every=1)
  _killed_in(monkeypatch, results_lib.Results, 'write', cfg)
  ckpt = checkpoint_lib.path_for(out, None)
  from nst_jax.io import checkpoint_store

  assert sorted(checkpoint_store.noted_images(ckpt)) == ['r_00002.png']
  run(cfg)  # was refused: "r_00002.png exists, beside r.png, and no nst-jax run record says ..."
  record = json.loads(out.with_suffix('.json').read_text())
  assert record['intermediates'] == ['r_00002.png'] and not ckpt.exists()
  assert record['intermediates_sha256'] == {'r_00002.png': output_names.file_sha256(
    tmp_path / 'r_00002.png')}  # fmt: skip
