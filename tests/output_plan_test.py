"""Tests for nst_jax.runs.output_plan and nst_jax.io.output_names: no run replaces an input."""

import dataclasses
import hashlib
import json
import os
from pathlib import Path
import re
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from nst_jax import errors
from nst_jax.io import atomic
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import images as image_lib
from nst_jax.io import output_names
from nst_jax.runs import output_locks
from nst_jax.runs import output_plan


def _digest(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _out(path, **kwargs) -> output_plan.Output:
  return output_plan.image_output(Path(path), **kwargs)


def test_derived_names_keep_a_non_default_suffix():
  assert output_names.derived('o/a.png', '.json') == Path('o/a.json')
  assert output_names.derived('o/a.jpg', '.json') == Path('o/a.jpg.json')
  # a.png and a.PNG are two files on most file systems: case-blind names made them share
  # a.ckpt, and a --resume of one continued the other's run (trial 11).
  assert output_names.derived('o/a.PNG', '.ckpt') == Path('o/a.PNG.ckpt')
  assert output_names.legacy_derived('o/a.jpg', '.ckpt') == Path('o/a.ckpt')
  assert output_names.legacy_derived('o/a.png', '.ckpt') is None
  files = {p for _, p in _out('a.png', save_iter=5, iterations=12).derived}
  assert files == {
    Path('a.ckpt'), Path('a.json'), Path('a.loss.png'), Path('a.sheet.jpg'),
    Path('a_00005.png'), Path('a_00010.png'),
  }  # fmt: skip
  assert {p for _, p in _out('a.png', record=False).derived} == {Path('a.ckpt')}


def test_an_output_never_replaces_an_input(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  photo = tmp_path / 'photo.jpg'
  photo.write_bytes(b'photo')
  (tmp_path / 'link.jpg').symlink_to(photo)
  inputs = {'content image': 'photo.jpg'}
  for output in ('photo.jpg', './photo.jpg', str(photo), 'sub/../photo.jpg', 'link.jpg'):
    with pytest.raises(errors.NstError) as e:
      output_plan.check([_out(output)], inputs=inputs, overwrite=True)
    assert (
      str(e.value)
      == f'the result {Path(output)} would replace the content image; choose another save.path'
    )
  # A derived file too: the record of x.loss.png's neighbour, a checkpoint.
  with pytest.raises(
    errors.NstError, match='the checkpoint photo.jpg.ckpt of the result photo.jpg'
  ):
    output_plan.check([_out('photo.jpg')], inputs={'jobs file': 'photo.jpg.ckpt'})
  with pytest.raises(
    errors.NstError,
    match=r'the run record r\.json of the result r\.png would replace the style image',
  ):
    output_plan.check([_out('r.png')], inputs={'style image': 'r.json'})
  assert _digest(photo) == hashlib.sha256(b'photo').hexdigest()


def test_outputs_and_their_derived_files_never_share_a_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  # a.png and ./a.png are one file.
  with pytest.raises(errors.NstError, match=r'job 2 a\.png and job 1 a\.png are one file'):
    output_plan.check([_out('a.png', owner='job 1'), _out('./a.png', owner='job 2')], inputs={})
  # x.png's loss plot is x.loss.png, another job's result.
  with pytest.raises(errors.NstError, match='the loss plot x.loss.png of job 2 x.png and job 1'):
    output_plan.check([_out('x.loss.png', owner='job 1'), _out('x.png', owner='job 2')], inputs={})
  # a.png and a.jpg differ only in the suffix: their records and checkpoints differ.
  output_plan.check([_out('a.png', owner='job 1'), _out('a.jpg', owner='job 2')], inputs={})


def test_an_existing_foreign_file_is_kept_unless_overwrite(tmp_path):
  notes = tmp_path / 'notes.png'
  notes.write_bytes(b'mine')
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(notes)], inputs={})
  assert str(e.value) == (
    f'{notes} exists and no nst-jax run record says nst-jax wrote it; choose another output '
    'name, or replace it with save.overwrite'
  )
  output_plan.check([_out(notes)], inputs={}, overwrite=True)
  for damaged in ('{"outp', '[1, 2]', '{"output": "/etc/passwd"}'):  # trial 55 T55-12: unsaid
    (tmp_path / 'notes.json').write_text(damaged)
    with pytest.raises(errors.NstError) as e:
      output_plan.check([_out(notes)], inputs={})
    assert str(e.value) == (
      f'{notes} exists (notes.json is unreadable or of another file) and no nst-jax run record '
      'says nst-jax wrote it; choose another output name, or replace it with save.overwrite'
    )
  (tmp_path / 'notes.json').unlink()
  # The user's notes.json beside result.png is not replaced by the run record.
  (tmp_path / 'result.json').write_text('{"mine": 1}')
  with pytest.raises(errors.NstError, match=r'result\.json exists, beside result\.png,'):
    output_plan.check([_out(tmp_path / 'result.png')], inputs={})
  output_plan.check([_out(tmp_path / 'result.png', record=False)], inputs={})


def _checkpoint(path: Path, iteration: int, total: int) -> None:
  state = {'image': np.zeros((1, 2, 2, 3), np.float32)}
  checkpoint_lib.write(path, checkpoint_lib.snapshot(state, iteration=iteration, total=total,
                                                     settings={}))  # fmt: skip


def test_a_rerun_replaces_its_own_result(tmp_path):
  result = tmp_path / 'r.png'
  for name in ('r.png', 'r.loss.png', 'r.sheet.jpg', 'r_00005.png'):
    (tmp_path / name).write_bytes(b'ours')
  (tmp_path / 'r.json').write_text(json.dumps({'output': str(result)}))
  # The record names the result, not this intermediate: someone else's file.
  with pytest.raises(errors.NstError, match=r'r_00005\.png exists, beside r\.png'):
    output_plan.check([_out(result, save_iter=5, iterations=6)], inputs={})
  record = {'output': str(result), 'intermediates': ['r_00005.png']}
  (tmp_path / 'r.json').write_text(json.dumps(record))
  output_plan.check([_out(result, save_iter=5, iterations=6)], inputs={})
  # A record naming another output does not make these files ours.
  (tmp_path / 'r.json').write_text(json.dumps({'output': 'elsewhere/q.png'}))
  with pytest.raises(errors.NstError, match=r'r\.png exists \(r\.json is unreadable or of anoth'):
    output_plan.check([_out(result)], inputs={})
  # An interrupted run (its checkpoint) owns its intermediates before any record exists.
  for name in ('r.json', 'r.png', 'r.loss.png', 'r.sheet.jpg'):
    (tmp_path / name).unlink()
  with pytest.raises(errors.NstError, match='r_00005.png exists'):
    output_plan.check([_out(result, save_iter=5, iterations=6)], inputs={})
  _checkpoint(tmp_path / 'r.ckpt', 5, 10)
  mine = {'r_00005.png': _digest(tmp_path / 'r_00005.png')}
  with pytest.raises(errors.NstError, match='r_00005.png exists'):  # trial 36: not noted
    output_plan.check([_out(result, save_iter=5, iterations=15)], inputs={})
  checkpoint_store.note_images(tmp_path / 'r.ckpt', mine)  # as the run notes what it writes
  output_plan.check([_out(result, save_iter=5, iterations=15)], inputs={})
  # Trial 22: not one past the iteration the checkpoint holds, which it never wrote.
  (tmp_path / 'r_00010.png').write_bytes(b'mine')
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(result, save_iter=5, iterations=15)], inputs={})
  # Trial 24 (N9): a name with a newline matched no iteration, and every one counted as held.
  odd = tmp_path / 'o\nr.png'
  _checkpoint(tmp_path / 'o\nr.ckpt', 5, 10)
  (tmp_path / 'o\nr_00010.png').write_bytes(b'mine')
  with pytest.raises(errors.NstError, match='past iteration 5 that its checkpoint holds'):
    output_plan.check([_out(odd, save_iter=5, iterations=15)], inputs={})
  assert str(e.value) == (  # trial 24: after a kill, it may be the run's own
    f'{tmp_path}/r_00010.png exists, beside r.png, past iteration 5 that its checkpoint holds: '
    "this run's own if it was stopped after that checkpoint, else someone's; move it away (or "
    'replace it with save.overwrite)'
  )
  # Trial 26: a full disk stopped the run with several past its checkpoint; named one a time.
  (tmp_path / 'r_00015.png').write_bytes(b'mine')
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(result, save_iter=5, iterations=20)], inputs={})
  assert str(e.value).startswith(
    f'{tmp_path}/r_00010.png and r_00015.png exist, beside r.png, past iteration 5 that its '
    "checkpoint holds: this run's own if it was stopped after that checkpoint, else someone's; "
    'move them away (or replace them with save.overwrite)'
  )


def test_an_unfinished_checkpoint_owns_no_result_and_another_runs_result_is_not_replaced(
  tmp_path,
):
  """Trial 20: J9, a user's r.png and r.json put beside an interrupted run's checkpoint were
  replaced by --resume; J10, a rerun replaced another run's result at its loss plot's name;
  J1, a batch's result could be another's image saved on a stop."""
  result = tmp_path / 'r.png'
  for name in ('r.png', 'r.json'):
    (tmp_path / name).write_text('mine')
  _checkpoint(tmp_path / 'r.ckpt', 3, 10)  # unfinished: it wrote no result
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(result)], inputs={})
  assert str(e.value) == (  # not 'choose another output name', which leaves its work behind
    f'{result} exists (r.json is unreadable or of another file) and no nst-jax run record says '
    'nst-jax wrote it; move it away, or replace it with save.overwrite'
  )
  _checkpoint(tmp_path / 'r.ckpt', 10, 10)  # finished, and kept: r.json is someone's (trial 22)
  with pytest.raises(errors.NstError, match=r'r\.png exists \(r\.json is unreadable or of'):
    output_plan.check([_out(result)], inputs={})
  (tmp_path / 'r.json').unlink()  # as a run killed between its result and its record:
  with pytest.raises(errors.NstError, match=r'r\.png exists and no nst-jax run record'):
    output_plan.check([_out(result)], inputs={})  # trial 43: not by name (someone's, since?)
  checkpoint_store.note_result(tmp_path / 'r.ckpt', output_names.file_sha256(result), result)
  output_plan.check([_out(result)], inputs={})  # the digest noted before it was put in place
  # Another run's result (its record names it) at this one's loss plot name.
  (tmp_path / 'r.json').write_text(json.dumps({'output': str(result)}))
  (tmp_path / 'r.loss.png').write_text('their result')
  (tmp_path / 'r.loss.json').write_text(json.dumps({'output': str(tmp_path / 'r.loss.png')}))
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(result)], inputs={})
  assert str(e.value) == (
    f'{tmp_path}/r.loss.png exists, beside r.png, and is the result of another run (its run '
    'record says so); choose another output name, or replace it with save.overwrite'
  )
  output_plan.check([_out(result)], inputs={}, overwrite=True)
  plan = [_out(tmp_path / 'x.png', owner='job 1'), _out(tmp_path / 'x_00008.png', owner='job 2')]
  with pytest.raises(errors.NstError) as e:
    output_plan.check(plan, inputs={})
  assert str(e.value) == (
    f'job 2 {tmp_path}/x_00008.png is a name job 1 {tmp_path}/x.png saves its image under if '
    'stopped (NAME_<iteration>); give job 2 another output (save.path, or the output column of '
    'its jobs file)'
  )
  output_plan.check([plan[1]], inputs={})  # alone, it is a name like any other


def test_a_rerun_replaces_its_own_frame_folder_and_nothing_else_in_it(tmp_path):
  frames = tmp_path / 'out_frames'
  plan = [
    output_plan.Output(
      frames, 'the frames of', derived=(('run record', tmp_path / 'out_frames.json'),),
      directory=True, resumable=tmp_path / '.out_frames.work',
    )
  ]  # fmt: skip
  frames.mkdir()
  output_plan.check(plan, inputs={})  # empty
  for n in (1, 2, 3):
    (frames / f'frame_{n:05d}.png').write_bytes(b'ours')
  # No record: the frames are someone's, and overwrite deletes nothing inside a folder.
  for overwrite in (False, True):
    with pytest.raises(errors.NstError) as e:
      output_plan.check(plan, inputs={}, overwrite=overwrite)
    assert str(e.value) == (
      f'{frames} holds frame_00001.png, frame_00002.png, frame_00003.png, which no nst-jax run '
      'record says nst-jax wrote; move them away or choose another save.path (save.overwrite '
      'replaces no file inside a folder)'
    )
  # The run record of the run that wrote them (its count of frames): a rerun replaces them.
  record = {'output': str(frames), 'frames': 3}
  (tmp_path / 'out_frames.json').write_text(json.dumps(record))
  output_plan.check(plan, inputs={})
  assert output_names.claimed(frames) == {
    frames, *(frames / f'frame_{n:05d}.png' for n in (1, 2, 3)),
    *(tmp_path / f'out_frames{tail}' for tail in ('.json', '.loss.png', '.sheet.jpg')),
  }  # fmt: skip
  # Anything else in it is refused by name, whatever the record says.
  (frames / 'frame_00004.png').write_bytes(b'not counted')
  (frames / 'notes.txt').write_bytes(b'yours')
  with pytest.raises(errors.NstError) as e:
    output_plan.check(plan, inputs={}, overwrite=True)
  assert str(e.value) == (
    f'{frames} holds frame_00004.png, notes.txt, which no nst-jax run record says nst-jax wrote; '
    'move them away or choose another save.path (save.overwrite replaces no file inside a '
    'folder)'
  )
  (frames / 'frame_00004.png').unlink()
  with pytest.raises(errors.NstError, match=r'holds notes\.txt, which .*; move it away or'):
    output_plan.check(plan, inputs={})
  (frames / 'notes.txt').unlink()
  (tmp_path / 'elsewhere').symlink_to(frames)
  link = dataclasses.replace(plan[0], result=tmp_path / 'elsewhere')
  with pytest.raises(errors.NstError) as e:
    output_plan.check([link], inputs={})
  assert str(e.value) == (
    f'{tmp_path / "elsewhere"} is a link; name a folder of its own for the frames'
  )


@pytest.mark.parametrize(
  # .gif keeps 256 colours and .ico resizes: written, but not the result (trial 17).
  'suffix',
  ['.psd', '.xpm', '.fits', '.xbm', '.msp', '.h5', '.bufr', '.grib', '.gif', '.ico'],
)
def test_formats_pillow_reads_but_cannot_write_are_refused_up_front(tmp_path, suffix):
  from nst_jax.io import outputs

  path = tmp_path / f'r{suffix}'
  with pytest.raises(errors.ImageError, match=rf'cannot write r\{suffix}: Pillow cannot save'):
    outputs.check_writable(path)
  assert list(tmp_path.iterdir()) == []


def test_every_format_that_passes_the_check_can_be_saved(tmp_path):
  from nst_jax.io import outputs

  rgb = image_lib.load_image(
    Path(__file__).parent.parent / 'content_images' / 'tubingen.jpg', width=16
  )
  for suffix in ('.png', '.jpg', '.webp', '.tif', '.bmp', '.ppm', '.tga', '.pcx', '.avif'):
    path = tmp_path / f'r{suffix}'
    outputs.check_writable(path)
    image_lib.save_image(path, rgb)
    back = image_lib.load_image(path)
    assert back.shape == rgb.shape
    # Exact but for the lossy formats (JPEG, AVIF: 4:4:4 at quality 95).
    tol = 6 / 255 if suffix in ('.jpg', '.avif') else 0.5 / 255
    assert float(abs(back - rgb).mean()) < tol, suffix


def test_names_and_directories_that_cannot_be_written(tmp_path):
  long = tmp_path / ('a' * 242 + '.png')  # 246 bytes: fits alone, not with '.NAME.nst-XXXXXXXX.tmp'
  with pytest.raises(errors.NstError, match='is 246 bytes long, and at most 237 fit here'):
    output_plan.check([_out(long, record=False)], inputs={})
  (tmp_path / 'dangling').symlink_to(tmp_path / 'gone')
  with pytest.raises(errors.NstError, match='dangling is a link to .*gone, which does not exist'):
    output_plan.check([_out(tmp_path / 'dangling' / 'sub' / 'x.png')], inputs={})
  (tmp_path / 'file').write_bytes(b'')
  with pytest.raises(errors.NstError, match='is a file, not a directory'):
    output_plan.check([_out(tmp_path / 'file' / 'x.png')], inputs={})
  (tmp_path / 'dir.png').mkdir()
  with pytest.raises(errors.NstError, match='dir.png is a directory'):
    output_plan.check([_out(tmp_path / 'dir.png')], inputs={})


def test_too_little_free_space_is_said_before_the_run(tmp_path, monkeypatch):
  out = _out(tmp_path / 'r.png', pixels=1000 * 1000, state_bytes=10**8)
  output_plan.check([out], inputs={})
  usage = output_plan.shutil.disk_usage(tmp_path)
  monkeypatch.setattr(output_plan.shutil, 'disk_usage', lambda _: usage._replace(free=150 * 10**6))
  # 6 MB of result, two checkpoints of 100 MB, 4 MiB of margin.
  with pytest.raises(errors.NstError, match=r'has 150 MB free and the run needs about 210 MB'):
    output_plan.check([out], inputs={})


def test_too_few_free_inodes_are_said_before_the_run(tmp_path, monkeypatch):
  """An issue 21 leftover: with no inode left the run failed at its first checkpoint and end."""
  out = _out(tmp_path / 'r.png')  # result, checkpoint, 3 record files
  real = os.statvfs(tmp_path)  # the other fields (name lengths) as they are
  fake = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if k.startswith('f_')})
  fake.f_files, fake.f_favail = 1000, 49
  monkeypatch.setattr(output_plan.os, 'statvfs', lambda _: fake)
  with pytest.raises(errors.NstError) as e:
    output_plan.check([out], inputs={})
  assert str(e.value) == (
    f'{tmp_path} has room for 49 more files and the run writes about 50 (results, records, '
    'locks and checkpoints); delete files or choose another output directory'
  )
  fake.f_favail = 50
  output_plan.check([out], inputs={})
  fake.f_files = fake.f_favail = 0  # btrfs: no fixed count
  output_plan.check([out], inputs={})


_HOLD = textwrap.dedent("""
  import sys, time
  from pathlib import Path
  from nst_jax.runs import output_plan
  out = output_plan.image_output(Path(sys.argv[1]))
  with output_plan.locked([out]):
    print('held', flush=True)
    time.sleep(60)
""")


def test_two_processes_never_write_one_output(tmp_path):
  result = tmp_path / 'r.png'
  holder = subprocess.Popen(
    [sys.executable, '-c', _HOLD, str(result)],
    stdout=subprocess.PIPE,
    text=True,
    cwd=Path(__file__).parent.parent,
  )
  try:
    assert holder.stdout.readline().strip() == 'held'
    # What a run asks before calling a checkpoint unfinished: a live run's is not.
    assert output_locks.busy(result) and output_locks.busy(tmp_path / 'r.loss.png')
    assert not output_locks.busy(tmp_path / 'q.png')
    assert not output_names.lock_path(tmp_path / 'q.png').exists()  # asking creates nothing
    with pytest.raises(errors.NstError) as e:
      with output_plan.locked([_out(tmp_path / 'r.loss.png')]):
        pass  # its result is r.png's loss plot: the lock of that file is held
    assert str(e.value) == (
      f'another nst-jax run is writing {tmp_path / "r.loss.png"}; wait for it to finish or '
      'choose another output name'
    )
  finally:
    holder.kill()  # as a crash would: the kernel releases its lock
    holder.wait()
  assert not output_locks.busy(result)
  with output_plan.locked([_out(result)]):
    assert output_names.lock_path(result).exists()
  assert list(tmp_path.iterdir()) == []  # the lock files go with the run


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path):
  result = tmp_path / 'r.png'
  left = [tmp_path / '.r.png.nst-a1b2c3d4.tmp', tmp_path / '.r.ckpt.nst-zz99zz99.tmp']
  other = tmp_path / '.q.png.nst-a1b2c3d4.tmp'  # another output's: not ours to remove
  for path in (*left, other):
    path.write_bytes(b'half')
  with output_plan.locked([_out(result)]):
    assert not any(p.exists() for p in left)
  assert other.exists()


def test_a_failed_write_is_one_line_and_replaces_nothing(tmp_path):
  target = tmp_path / 'r.png'
  target.write_bytes(b'previous')

  def fail(tmp):
    Path(tmp).write_bytes(b'half')
    raise OSError(28, os.strerror(28))

  with pytest.raises(errors.WriteError) as e:
    atomic.write(target, fail)
  assert str(e.value) == (
    f'could not write {target}: No space left on device; nothing was replaced: free space or '
    'choose another place'
  )
  assert target.read_bytes() == b'previous'
  assert [p.name for p in tmp_path.iterdir()] == ['r.png']


def test_a_lock_freed_and_removed_under_a_waiting_opener_is_not_shared(tmp_path):
  lock = tmp_path / '.r.png.lock'
  fd = output_locks._lock(lock)
  stale = os.open(lock, os.O_RDWR)  # another process opened the file before it went
  output_locks._unlock(lock, fd)
  import fcntl

  fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it holds a lock on a removed file ...
  again = output_locks._lock(lock)  # ... which does not keep the name from being locked anew
  assert again is not None and os.fstat(again).st_ino == os.stat(lock).st_ino
  os.close(stale)
  output_locks._unlock(lock, again)
  assert not lock.exists()


def test_a_file_link_or_folder_at_a_lock_name_is_refused_and_kept(tmp_path):
  # Trial 26: a user's notes at .r.png.lock were removed (by a run refused after it too),
  # and a dangling link there made a file where it pointed.
  (tmp_path / '.r.png.lock').write_text('my notes')
  (tmp_path / '.r.json.lock').symlink_to(tmp_path / 'made_through_the_link')
  (tmp_path / '.r.loss.png.lock').mkdir()
  os.mkfifo(tmp_path / '.r.sheet.jpg.lock')  # opening it for reading blocked
  assert not output_locks.busy(tmp_path / 'r.sheet.jpg')  # trial 28: it blocked here too
  expected = [
    ('r.png', 'a file of 8 bytes'),
    ('r.json', 'a link'),
    ('r.loss.png', 'a directory'),
    ('r.sheet.jpg', 'not a file'),
  ]
  before = sorted(p.name for p in tmp_path.iterdir())
  for name, kind in expected:
    with (
      pytest.raises(errors.NstError) as e,
      output_locks.hold([tmp_path / 'ok.png', tmp_path / name]),
    ):
      pass
    assert str(e.value) == (
      f'{tmp_path / f".{name}.lock"} is {kind}, not an empty nst-jax lock file, at the name a '
      'run locks its output with; move it away, or choose another output name'
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # ok.png's lock went again
  assert (tmp_path / '.r.png.lock').read_text() == 'my notes'
  # An empty one (a killed run's) is taken, and removed after.
  (tmp_path / '.x.png.lock').touch()
  with output_locks.hold([tmp_path / 'x.png']):
    assert (tmp_path / '.x.png.lock').exists()
  assert not (tmp_path / '.x.png.lock').exists()


def test_another_name_of_an_input_is_refused_even_with_overwrite(tmp_path):
  photo = tmp_path / 'photo.png'
  photo.write_bytes(b'photo')
  os.link(photo, tmp_path / 'alias.png')  # a hard link: one file, two names (as a bind mount)
  with pytest.raises(errors.NstError, match=r'alias\.png would replace the content image;'):
    output_plan.check(
      [_out(tmp_path / 'alias.png')], inputs={'content image': photo}, overwrite=True
    )
  assert photo.read_bytes() == b'photo'


def test_paths_that_cannot_be_planned_are_one_line(tmp_path):
  (tmp_path / 'loop.npz').symlink_to(tmp_path / 'loop.npz')
  with pytest.raises(errors.NstError, match=r'loop\.npz is a loop of symbolic links; fix it'):
    output_plan.check([_out(tmp_path / 'r.png')], inputs={'weights file': tmp_path / 'loop.npz'})
  with pytest.raises(errors.NstError, match=r"'a\\x00\.png' holds a NUL byte; rename it"):
    output_plan.check([_out('a\0.png')], inputs={})
  os.mkfifo(tmp_path / 'r.json')  # reading it would block for ever
  with pytest.raises(errors.NstError, match=r'r\.json exists and is not a regular file'):
    output_plan.check([_out(tmp_path / 'r.png')], inputs={})
  (tmp_path / 'x.png').symlink_to(tmp_path / 'nowhere.png')
  with pytest.raises(errors.NstError, match=r'x\.png exists and is not a regular file'):
    output_plan.check([_out(tmp_path / 'x.png', record=False)], inputs={}, overwrite=True)


def test_a_users_own_tmp_files_are_not_temporaries(tmp_path):
  result = tmp_path / 'r.png'
  mine = [
    tmp_path / '.r.png.mine.tmp',
    tmp_path / '.r.json.backup.tmp',
    tmp_path / '.r.png.original.tmp',
  ]
  killed = [tmp_path / '.r.png.nst-k3j_x9a2.partial.mp4', tmp_path / '.r.png.nst-abcdefgh.partial']
  for path in mine + killed[:1]:
    path.write_bytes(b'x')
  killed[1].mkdir()
  (killed[1] / 'frame_00001.png').write_bytes(b'x')
  assert sorted(output_names.remove_temporaries(_out(result).files)) == sorted(killed)
  assert all(p.exists() for p in mine)


def test_a_run_without_records_removes_a_killed_runs_figure_temporaries(tmp_path):
  """Trial 45: `.r.loss.png.nst-*.tmp`, left by a run killed while it drew its loss plot, stayed
  for ever when the next run wrote no record (its plan lists no loss plot)."""
  killed = [tmp_path / f'.r.{tail}.nst-ck33_kbj.tmp' for tail in ('json', 'loss.png', 'sheet.jpg')]
  for path in killed:
    path.write_bytes(b'')
  (tmp_path / '.q.loss.png.nst-ck33_kbj.tmp').write_bytes(b'')  # another output's: kept
  with output_plan.locked([_out(tmp_path / 'r.png', record=False)]):
    assert not any(p.exists() for p in killed)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.q.loss.png.nst-ck33_kbj.tmp']


def test_a_plan_of_many_intermediates_reads_each_folder_once(tmp_path, monkeypatch):
  """-i 100000 --save_iter 2 planned 50000 names: a glob and a resolve each, 11 s per process."""
  photo = tmp_path / 'photo.jpg'
  photo.write_bytes(b'photo')
  out = _out(tmp_path / 'r.png', save_iter=1, iterations=3000)
  killed = tmp_path / '.r_02999.png.nst-abcdefgh.tmp'
  killed.write_bytes(b'x')
  real_scandir, real_resolve = os.scandir, Path.resolve
  calls = {'scandir': 0, 'resolve': 0}

  def scandir(*args):
    calls['scandir'] += 1
    return real_scandir(*args)

  def resolve(self, *args, **kwargs):
    calls['resolve'] += 1
    return real_resolve(self, *args, **kwargs)

  monkeypatch.setattr(os, 'scandir', scandir)
  monkeypatch.setattr(Path, 'resolve', resolve)
  output_plan.check([out], inputs={'content image': photo})
  assert calls['resolve'] < 20  # the result, its record files, the inputs and one folder
  with output_plan.locked([out]):
    assert calls['scandir'] == 1 and not killed.exists()  # a killed write's temporary, found
  # An intermediate's name that leads to an input is still refused, as the result's would be.
  (tmp_path / 'r_01500.png').symlink_to(photo)
  with pytest.raises(errors.NstError) as e:
    output_plan.check([out], inputs={'content image': photo}, overwrite=True)
  assert str(e.value).startswith('the intermediate image r_01500.png of the result')
  assert 'would replace the content image' in str(e.value)


def test_the_plan_is_checked_again_under_the_locks_and_made_directories_go(tmp_path):
  out = _out(tmp_path / 'deep' / 'er' / 'r.png', record=False)
  output_plan.check([out], inputs={})
  # Another run wrote this name between the first check and the locks.
  (tmp_path / 'deep' / 'er').mkdir(parents=True)
  (tmp_path / 'deep' / 'er' / 'r.png').write_bytes(b'theirs')
  with pytest.raises(errors.NstError, match=r'r\.png exists and no nst-jax run record'):
    with output_plan.locked([out], then_check=lambda: output_plan.check([out], inputs={})):
      pass
  assert (tmp_path / 'deep' / 'er' / 'r.png').read_bytes() == b'theirs'
  # Directories made only for the lock files go again when left empty.
  fresh = _out(tmp_path / 'new' / 'sub' / 'r.png')
  with output_plan.locked([fresh]):
    assert output_names.lock_path(fresh.result).exists()
  assert not (tmp_path / 'new').exists()
  with output_plan.locked([fresh]):
    output_locks.drop_locks()  # as an exit on a signal does, skipping the context managers
    assert not (tmp_path / 'new').exists()


def test_an_unusable_checkpoint_dir_is_named_not_the_output(tmp_path):
  """Trial 22: a --checkpoint_dir that is a file was blamed on --output."""
  (tmp_path / 'afile').write_text('x')
  out = _out(tmp_path / 'out' / 'r.png', checkpoint=tmp_path / 'afile' / 'r.ckpt')
  with pytest.raises(errors.NstError) as e:
    output_plan.check([out], inputs={})
  assert (
    str(e.value)
    == f'{tmp_path}/afile is a file, not a directory; choose another run.checkpoint_dir'
  )


def test_a_videos_work_directory_owns_no_file_beside_a_foreign_record(tmp_path):
  """Trial 22 (L6): --resume of an interrupted video replaced a user's s.mp4 and s.mp4.json."""
  video = tmp_path / 's.mp4'
  plan = [output_plan.Output(video, 'the video', derived=(('run record', tmp_path / 's.mp4.json'),),
                             resumable=tmp_path / '.s.mp4.work')]  # fmt: skip
  (tmp_path / '.s.mp4.work').mkdir()
  video.write_bytes(b'mine')
  (tmp_path / 's.mp4.json').write_text('{"mine": 1}')
  for said in (' (s.mp4.json is unreadable or of another file)', ''):  # trial 24: the second
    with pytest.raises(errors.NstError, match=re.escape(f'{video} exists{said} and no nst-jax')):
      output_plan.check(plan, inputs={})  # ... was taken as the run's own
    (tmp_path / 's.mp4.json').unlink(missing_ok=True)
  # As a run killed between its video and its record: its marker holds the video's digest.
  (tmp_path / '.s.mp4.work' / output_names.WORK_WRITING).write_text(output_names.file_sha256(video))
  output_plan.check(plan, inputs={})


def test_intermediates_are_named_as_each_scale_numbers_them():
  """Trial 24 (N8): a 2-scale plan listed _00012 and _00016 where _00014 and _00018 were saved;
  a scale's last iteration is its result, never an intermediate."""
  names = [p.name for p in output_names.intermediates('r.png', 4, [10, 10])]
  assert names == ['r_00004.png', 'r_00008.png', 'r_00014.png', 'r_00018.png']
  assert [p.name for p in output_names.intermediates('r.png', 5, 10)] == ['r_00005.png']


def test_a_record_claims_the_file_it_was_written_for_only(tmp_path):
  """Trial 24 (N2): any r.json naming a file called r.png claimed whatever r.png was."""
  result = tmp_path / 'r.png'
  result.write_bytes(b'the result')
  digest = output_names.file_sha256(result)
  record = tmp_path / 'r.json'
  record.write_text(json.dumps({'output': str(result), 'result_sha256': digest}))
  output_plan.check([_out(result)], inputs={})  # a rerun replaces its own result
  result.write_bytes(b'a picture of mine, saved over it')
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(result)], inputs={})
  assert str(e.value) == (
    f'{result} is not the file its run record was written for (changed since); move it away, or '
    'replace it with save.overwrite'
  )
  result.write_bytes(b'the result')
  record.write_text(json.dumps({'output': '/elsewhere/r.png', 'result_sha256': digest}))
  with pytest.raises(errors.NstError, match=r'r\.png exists and no nst-jax run record'):
    output_plan.check([_out(result)], inputs={})  # a result and record copied here
  # Trial 26: a relative --output's pair copied here was claimed by name.
  elsewhere = {'output': 'rel/r.png', 'output_resolved': '/elsewhere/rel/r.png'}
  record.write_text(json.dumps({**elsewhere, 'result_sha256': digest}))
  with pytest.raises(errors.NstError, match=r'r\.png exists and no nst-jax run record'):
    output_plan.check([_out(result)], inputs={})
  record.write_text(json.dumps({'output': 'r.png', 'output_resolved': str(result.resolve())}))
  output_plan.check([_out(result)], inputs={})
  record.write_text(json.dumps({'output': 'r.png'}))  # relative, from before the digest
  output_plan.check([_out(result)], inputs={})


def test_a_checkpoint_name_that_is_not_utf8_names_what_to_change(tmp_path):
  """Orbax writes UTF-8 names only (trial 26); in a run.checkpoint_dir, that is the fix (28)."""
  import os

  odd = Path(os.fsdecode(bytes(tmp_path) + b'/b-\xff'))
  odd.mkdir()
  for ckpt, fix in (
    (tmp_path / 'r-\udcff.ckpt', 'choose another save.path'),
    (odd / 'r.1234abcd.ckpt', 'choose another run.checkpoint_dir'),
  ):
    with pytest.raises(errors.NstError) as e:
      output_plan.check([_out(tmp_path / 'r.png', checkpoint=ckpt)], inputs={})
    assert str(e.value).endswith(f'orbax writes checkpoints under UTF-8 names only; {fix}')


def test_a_name_that_is_another_results_record_says_whose(tmp_path):
  """Trial 34 Y2: --output r.jpg.png beside r.jpg derives r.jpg's record names; the refusal
  offered save.overwrite, which would leave r.jpg without its record."""
  jpg = tmp_path / 'r.jpg'
  jpg.write_bytes(b'a result')
  record = tmp_path / 'r.jpg.json'
  record.write_text(json.dumps({'output': str(jpg), 'result_sha256': _digest(jpg)}))
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(tmp_path / 'r.jpg.png')], inputs={})
  assert str(e.value) == (
    f'{record} is the run record of r.jpg, another result; choose another output name'
  )
  # The other way round: the record of a PNG result r.jpg.png, at --output r.jpg's name.
  jpg.unlink()
  png = tmp_path / 'r.jpg.png'
  png.write_bytes(b'another result')
  record.write_text(json.dumps({'output': str(png), 'result_sha256': _digest(png)}))
  with pytest.raises(errors.NstError, match=r'r\.jpg\.json is the run record of r\.jpg\.png, an'):
    output_plan.check([_out(jpg)], inputs={})


def test_nothing_is_planned_inside_a_checkpoint(tmp_path):
  """Trial 34 Y8: --output r.ckpt/x.png (or --checkpoint_dir r.ckpt) wrote into another run's
  checkpoint, whose resume then called it "not an nst-jax checkpoint"."""
  from nst_jax.io import checkpoint as checkpoint_lib

  ckpt = tmp_path / 'r.ckpt'
  state = {'image': np.zeros((1, 2, 2, 3), np.float32)}
  checkpoint_lib.write(ckpt, checkpoint_lib.snapshot(state, iteration=2, total=4, settings={}))
  for output in (ckpt / 'x.png', ckpt / '0' / 'x.png', ckpt / 'new' / 'x.png'):
    with pytest.raises(errors.NstError, match=re.escape(f'{ckpt} is an nst-jax checkpoint; ch')):
      output_plan.check([_out(output)], inputs={})
  elsewhere = output_plan.image_output(tmp_path / 'q.png', checkpoint=ckpt / 'q.1234abcd.ckpt')
  with pytest.raises(errors.NstError, match='checkpoint; choose another run.checkpoint_dir'):
    output_plan.check([elsewhere], inputs={})


def test_a_video_work_directory_owns_only_the_video_it_noted(tmp_path):
  """Trial 43 F-A: a kept work directory with its writing marker owned whatever was at the
  video's name: a user's video put there after the record was moved away was replaced."""
  video, work = tmp_path / 'v.mp4', tmp_path / '.v.mp4.work'
  work.mkdir()
  plan = output_plan.Output(video, 'the video', resumable=work,
                            derived=(('run record', tmp_path / 'v.mp4.json'),))  # fmt: skip
  (work / output_names.WORK_WRITING).touch()  # killed while writing: none there yet, ours
  output_plan.check([plan], inputs={})
  video.write_bytes(b'their video')  # and one there, the marker empty: not known to be ours
  with pytest.raises(errors.NstError, match=r'v\.mp4 exists and no nst-jax run record says'):
    output_plan.check([plan], inputs={})
  (work / output_names.WORK_WRITING).write_text(output_names.file_sha256(video))
  output_plan.check([plan], inputs={})  # the video it wrote, by digest
  video.write_bytes(b'my video')
  with pytest.raises(errors.NstError, match=r'v\.mp4 exists and no nst-jax run record says'):
    output_plan.check([plan], inputs={})
  assert video.read_bytes() == b'my video'


def test_a_folder_at_a_name_the_run_writes_beside_its_result(tmp_path):
  """Trial 43 Q13: 'name a file such as out.png', to a user who had named one (r.png)."""
  result = tmp_path / 'r.png'
  (tmp_path / 'r.loss.png').mkdir()
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(result)], inputs={})
  assert (
    str(e.value)
    == f'{tmp_path}/r.loss.png is a directory; move it away or choose another save.path'
  )
  result.mkdir()
  with pytest.raises(errors.NstError) as e:
    output_plan.check([_out(result)], inputs={})
  assert str(e.value) == f'{result} is a directory; name a file such as out.png'
