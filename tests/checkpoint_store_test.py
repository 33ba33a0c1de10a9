"""Checkpoint directories: a kill at any point of a save leaves one that resumes, litter goes.

Tiny states (a few hundred bytes): each orbax save takes a few hundredths of
a second here.
"""

import os
from pathlib import Path
import shutil

import numpy as np
import pytest

from nst_jax import errors
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import checkpoint_v1
from nst_jax.io import orbax_local
from nst_jax.io import output_names
from nst_jax.runs import output_plan


def _state(k: int) -> dict:
  rng = np.random.default_rng(k)
  return {
    'image': rng.normal(size=(4, 5, 3)).astype(np.float32),
    'opt_state': {
      'count': np.array(k, np.int32),
      's': rng.normal(size=(2, 4, 5, 3)).astype(np.float32),
    },
  }


def _save(path: Path, k: int) -> None:
  checkpoint_lib.save(path, state=_state(k), iteration=k, total=9, settings={'a': 1})


def _restored(path: Path) -> int:
  """The iteration of the checkpoint, after checking that its state is that iteration's, bitwise."""
  state, iteration = checkpoint_lib.restore(path, like=_state(0), settings={'a': 1})
  want = _state(iteration)
  assert state['image'].tobytes() == want['image'].tobytes()
  assert state['opt_state']['s'].tobytes() == want['opt_state']['s'].tobytes()
  assert int(state['opt_state']['count']) == iteration
  return iteration


def test_layout_one_step_then_the_next_replaces_it(tmp_path):
  path = tmp_path / 'r.ckpt'
  _save(path, 3)
  assert sorted(p.name for p in path.iterdir()) == ['0', 'nst-jax-checkpoint.json']
  assert sorted(p.name for p in (path / '0').iterdir()) == [
    '_CHECKPOINT_METADATA', 'commit_success.txt', 'meta', 'state'
  ]  # fmt: skip
  _save(path, 4)
  assert sorted(p.name for p in path.iterdir()) == ['1', 'nst-jax-checkpoint.json']
  assert _restored(path) == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ['r.ckpt']


class _Killed(BaseException):
  """Stands for SIGKILL: nothing after it runs, not even cleanup."""


def _kill_at(monkeypatch, k: int) -> list[str]:
  """Kills the k-th step of a save (1-based; 0: none): before each of its file system changes.

  A kill inside orbax's save leaves its temporary step, as SIGKILL before
  its final rename would. Once killed, every later step dies too, so no
  cleanup runs.
  """
  seen = []
  real_save, real_rmtree, real_renameat2 = (
    orbax_local.save, checkpoint_store._rmtree, checkpoint_store._renameat2
  )  # fmt: skip

  def point(name):
    seen.append(name)
    if k and len(seen) >= k:
      raise _Killed(name)

  def save(directory, **kwargs):
    point('orbax save')
    real_save(directory, **kwargs)
    if k and len(seen) + 1 == k:  # killed inside orbax, before it renamed its temporary step
      seen.append('orbax commit')
      os.rename(directory, f'{directory}{orbax_local.TMP_SUFFIX}')
      raise _Killed('orbax commit')
    seen.append('orbax commit')

  def rmtree(path):
    point(f'remove {path.name}')
    real_rmtree(path)

  def renameat2(source, target, flags):
    point(f'rename {flags}')
    return real_renameat2(source, target, flags)

  monkeypatch.setattr(orbax_local, 'save', save)
  monkeypatch.setattr(checkpoint_store, '_rmtree', rmtree)
  monkeypatch.setattr(checkpoint_store, '_renameat2', renameat2)
  return seen


def _points(monkeypatch, before) -> int:
  """How many kill points a save after `before(path)` passes."""
  with monkeypatch.context() as m:
    path = Path(before())
    seen = _kill_at(m, 0)
    _save(path, 8)
  return len(seen)


def _fresh(tmp_path):
  directory = tmp_path / 'fresh'
  directory.mkdir(parents=True, exist_ok=True)
  return directory / 'r.ckpt'


def _existing(tmp_path):
  path = _fresh(tmp_path)
  _save(path, 5)
  return path


def _format_1(tmp_path):
  path = _fresh(tmp_path)
  checkpoint_v1.write(path, checkpoint_lib.snapshot(_state(5), iteration=5, total=9,
                                                    settings={'a': 1}))  # fmt: skip
  return path


@pytest.mark.parametrize('before', [_fresh, _existing, _format_1])
def test_a_kill_at_any_point_of_a_save_leaves_a_checkpoint_that_resumes(
  tmp_path, monkeypatch, before
):
  """Kills a save at each of its steps: the previous checkpoint or the new one resumes, bitwise;
  the next run's litter removal leaves no temporary, and its first save no older step."""
  import shutil

  points = _points(monkeypatch, lambda: before(tmp_path))
  assert points >= 3
  for k in range(1, points + 1):
    shutil.rmtree(tmp_path / 'fresh')
    path = before(tmp_path)
    had = os.path.lexists(path)
    with monkeypatch.context() as m:
      seen = _kill_at(m, k)
      with pytest.raises(_Killed):
        _save(path, 8)
    if had:
      assert _restored(path) in (5, 8), seen
    elif os.path.lexists(path):
      assert _restored(path) == 8, seen
    with output_plan.locked([output_plan.image_output(path.with_suffix('.png'))]):
      pass
    left = sorted(p.name for p in path.parent.iterdir())
    assert left == (['r.ckpt'] if os.path.lexists(path) else []), (seen, left)
    if path.is_dir():  # else the format-1 file, untouched
      steps = [p.name for p in path.iterdir() if p.name != checkpoint_store.MARKER]
      assert sorted(steps) == [str(n) for n in checkpoint_store.steps(path)], seen  # no temporary
    if os.path.lexists(path):
      _save(path, 9)  # and the next save goes on from there, the older steps removed
      assert _restored(path) == 9 and len(checkpoint_store.steps(path)) == 1


def test_the_first_save_beside_a_format_1_file_replaces_it_at_once(tmp_path, monkeypatch):
  path = _format_1(tmp_path)
  assert _restored(path) == 5 and path.is_file()
  _save(path, 8)
  assert path.is_dir() and _restored(path) == 8
  assert sorted(p.name for p in path.parent.iterdir()) == ['r.ckpt']
  # Where the file system cannot exchange two names: delete, then rename.
  path = _format_1(tmp_path / 'nfs')
  monkeypatch.setattr(checkpoint_store, '_renameat2', lambda *args: False)
  _save(path, 8)
  assert path.is_dir() and _restored(path) == 8
  assert sorted(p.name for p in path.parent.iterdir()) == ['r.ckpt']


def test_a_finished_runs_checkpoint_is_removed_whole_or_left_as_litter(tmp_path, monkeypatch):
  path = tmp_path / 'r.ckpt'
  _save(path, 5)
  monkeypatch.setattr(checkpoint_store, '_rmtree', lambda p: None)  # killed while deleting
  checkpoint_lib.remove(path)
  assert not path.exists()
  (litter,) = tmp_path.iterdir()
  assert checkpoint_store.ours(litter) and litter.name.startswith('.r.ckpt.nst-')
  monkeypatch.undo()
  with output_plan.locked([output_plan.image_output(tmp_path / 'r.png')]):
    pass
  assert list(tmp_path.iterdir()) == []


def test_an_empty_directory_that_appears_meanwhile_is_not_replaced(tmp_path, monkeypatch):
  path = tmp_path / 'r.ckpt'
  real = orbax_local.save

  def save(directory, **kwargs):
    real(directory, **kwargs)
    path.mkdir()  # someone's, made while the first save was being written

  monkeypatch.setattr(orbax_local, 'save', save)
  with pytest.raises(errors.WriteError, match=r'could not write .*r\.ckpt: File exists;'):
    _save(path, 1)
  assert list(path.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ['r.ckpt']


def test_a_folder_removed_while_the_first_save_is_written_leaves_no_checkpoint(
  tmp_path, monkeypatch
):
  """Trial 20: orbax made the removed temporary directory again, without its marker; put in
  place, every later run refused it as a directory nst-jax did not write."""
  path = tmp_path / 'out' / 'r.ckpt'
  real = orbax_local.save

  def save(directory, **kwargs):
    shutil.rmtree(tmp_path / 'out')  # rm -rf of the output folder, mid-write
    real(directory, **kwargs)

  monkeypatch.setattr(orbax_local, 'save', save)
  with pytest.raises(errors.WriteError) as e:
    _save(path, 1)
  assert str(e.value) == (
    f'could not write {path}: its folder was removed while it was written; nothing was '
    'replaced: choose another place'
  )
  assert not os.path.lexists(path) and list((tmp_path / 'out').iterdir()) == []
  # Trial 22: the same at a later save, into the existing checkpoint directory.
  monkeypatch.setattr(orbax_local, 'save', real)
  _save(path, 1)
  monkeypatch.setattr(orbax_local, 'save', save)
  with pytest.raises(errors.WriteError, match='its folder was removed while it was written'):
    _save(path, 2)
  assert not os.path.lexists(path) and list((tmp_path / 'out').iterdir()) == []
  monkeypatch.setattr(orbax_local, 'save', real)
  _save(path, 3)  # the next save makes a whole checkpoint again
  assert checkpoint_store.foreign(path) is None
  (path / 'notes.txt').write_text('mine')  # trial 43: "move it away" left the run's work behind
  assert checkpoint_store.foreign(path) == (
    'it holds notes.txt, which nst-jax does not write there: move that out of it to keep its work'
  )
  for name in ('mine.jpg', 'a.txt', 'b.txt'):  # trial 45: the first one only was named
    (path / name).write_text('mine')
  assert checkpoint_store.foreign(path) == (
    'it holds a.txt, b.txt, mine.jpg and 1 more, which nst-jax does not write there: move them out '
    'of it to keep its work'
  )
  for name in ('notes.txt', 'mine.jpg', 'a.txt', 'b.txt'):
    (path / name).unlink()
  # Trial 24: orbax's finishing thread can make a step's path again after the check; what it
  # leaves is named as such, not as a directory nst-jax did not write.
  (path / checkpoint_store.MARKER).unlink()
  assert checkpoint_store.foreign(path) == (
    "it holds orbax's steps without nst-jax's marker: a save cut short when its folder was "
    'removed; delete it'
  )


def test_a_damaged_newest_step_names_the_one_before(tmp_path):
  """A kill during a rename that copies (Cloud Storage FUSE) can leave the newest step cut."""
  import shutil

  path = tmp_path / 'r.ckpt'
  _save(path, 5)
  shutil.copytree(path / '0', tmp_path / 'step0')
  _save(path, 8)
  (tmp_path / 'step0').rename(path / '0')  # as after a kill before the older step's removal
  (path / '1' / 'state' / '_METADATA').unlink()
  with output_plan.locked([output_plan.image_output(tmp_path / 'r.png')]):
    pass  # litter removal keeps the older step
  with pytest.raises(errors.NstError, match=rf'delete {path / "1"} to resume from the step before'):
    _restored(path)
  shutil.rmtree(path / '1')
  assert _restored(path) == 5


def test_a_full_disk_is_said_as_such_and_orbaxs_own_lines_are_not_shown():
  """Trial 22 (L5): tensorstore's RESOURCE_EXHAUSTED line was echoed, and orbax's own
  'error: [process=0][thread=...]' lines framed the run's one-line warning."""
  import logging

  from nst_jax.cli import absl_app

  full = RuntimeError('RESOURCE_EXHAUSTED: Error writing "opt_state.gamma/0" in OCDBT database')
  assert checkpoint_store.reason(full) == 'No space left on device'
  assert checkpoint_store.reason(RuntimeError('INTERNAL: other')) == 'INTERNAL: other'
  keep = absl_app._NotFromOrbax()
  for path, level, shown in (
    (f'{os.sep}x{os.sep}orbax{os.sep}checkpoint{os.sep}y.py', logging.ERROR, False),
    (f'{os.sep}x{os.sep}nst_jax{os.sep}engine{os.sep}hooks.py', logging.WARNING, True),
  ):
    record = logging.LogRecord('absl', level, path, 1, 'message', None, None)
    assert keep.filter(record) is shown
  # Trial 26: after a damaged checkpoint's one line, asyncio's lines for its other reads.
  future = 'Future exception was never retrieved\nfuture: <Future finished exception=...>'
  loose = logging.LogRecord('asyncio', logging.ERROR, 'base_events.py', 1, future, None, None)
  assert not keep.filter(loose)
  task = logging.LogRecord('asyncio', logging.ERROR, 'base_events.py', 1, 'Task exception was '
                           'never retrieved\nfuture: <Task finished ...>', None, None)  # fmt: skip
  assert not keep.filter(task)


def test_json_nested_too_deeply_is_damaged_not_a_traceback(tmp_path):
  """Trial 34 Y3: a marker or run record of 10^5 nested lists was a RecursionError."""
  deep = '[' * 100000 + ']' * 100000
  ckpt = tmp_path / 'r.ckpt'
  state = {'image': np.zeros((1, 2, 2, 3), np.float32)}
  checkpoint_lib.write(ckpt, checkpoint_lib.snapshot(state, iteration=2, total=4, settings={}))
  (ckpt / checkpoint_store.MARKER).write_text(deep)
  assert checkpoint_store.noted_images(ckpt) == {}
  (tmp_path / 'r.png').write_bytes(b'x')
  (tmp_path / 'r.json').write_text(deep)
  assert output_names.record_naming(tmp_path / 'r.png') is None


def test_a_file_put_at_the_checkpoints_name_while_it_runs_is_kept(tmp_path):
  """Trial 34 Y6: `echo notes > r.ckpt` during a run: its first save took the file for a
  format-1 checkpoint, swapped it out and deleted it."""
  ckpt = tmp_path / 'r.ckpt'
  ckpt.write_text('my notes')
  state = {'image': np.zeros((1, 2, 2, 3), np.float32)}
  with pytest.raises(errors.WriteError, match='a file appeared there while the run ran'):
    checkpoint_lib.write(ckpt, checkpoint_lib.snapshot(state, iteration=1, total=2, settings={}))
  assert ckpt.read_text() == 'my notes'
  assert [p.name for p in tmp_path.iterdir()] == ['r.ckpt']  # no temporary left either
  checkpoint_store.remove(ckpt)  # at the run's end: not its checkpoint, kept
  assert ckpt.read_text() == 'my notes'
  ckpt.unlink()
  checkpoint_v1.write(ckpt, checkpoint_lib.snapshot(state, iteration=1, total=2, settings={}))
  checkpoint_lib.write(ckpt, checkpoint_lib.snapshot(state, iteration=2, total=2, settings={}))
  assert checkpoint_store.is_directory(ckpt) and checkpoint_lib.read(ckpt)['iteration'] == 2
