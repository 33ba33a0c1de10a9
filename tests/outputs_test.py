"""Tests for nst_jax.io.outputs: automatic names, resume names, batch names, writability."""

import dataclasses

import pytest

from nst_jax import errors
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import outputs


@dataclasses.dataclass(frozen=True)
class _Job:
  content: str
  style: tuple[str, ...]
  output: str = ''


def test_default_output_path_never_replaces(tmp_path):
  first = outputs.default_output_path('a/tubingen.jpg', 'b/starry_night.jpg', str(tmp_path))
  assert first == tmp_path / 'tubingen_starry_night.png'
  first.write_bytes(b'x')
  assert outputs.default_output_path('tubingen.jpg', 'starry_night.jpg', str(tmp_path)).name == (
    'tubingen_starry_night_2.png'
  )
  # A name whose checkpoint exists counts as taken.
  checkpoint_lib.path_for(tmp_path / 'tubingen_starry_night_2.png').write_bytes(b'x')
  assert outputs.default_output_path(
    't/tubingen.jpg', ['starry_night.jpg'], str(tmp_path)
  ).name == ('tubingen_starry_night_3.png')
  assert outputs.resume_output_path('tubingen.jpg', 'starry_night.jpg', str(tmp_path)).name == (
    'tubingen_starry_night_2.png'
  )
  # So does one whose record or intermediate name is someone's file (trials 20, 22).
  (tmp_path / 'tubingen_starry_night_3.json').write_text('{}')
  (tmp_path / 'tubingen_starry_night_4_00002.png').write_bytes(b'x')
  assert outputs.default_output_path('tubingen.jpg', 'starry_night.jpg', str(tmp_path)).name == (
    'tubingen_starry_night_5.png'
  )


def test_single_output_from_a_file_a_directory_or_nothing(tmp_path):
  assert outputs.single_output('x/out.jpg', 'a.jpg', ['b.jpg'], resume=False) == (
    outputs.Path('x/out.jpg')
  )
  got = outputs.single_output(f'{tmp_path}/', 'a.jpg', ['b.jpg', 'c.jpg'], resume=False)
  assert got == tmp_path / 'a_b+c.png'
  with pytest.raises(errors.NstError, match='nothing to resume'):
    outputs.single_output(f'{tmp_path}/', 'a.jpg', ['b.jpg'], resume=True)


def test_batch_names_are_unique_and_resume_finds_the_checkpointed_ones(tmp_path):
  jobs = [_Job('p/a.jpg', ('s.jpg',)), _Job('q/a.jpg', ('s.jpg',)), _Job('b.jpg', ('s.jpg',))]
  (tmp_path / 'a_s.png').write_bytes(b'old')  # an earlier, unrelated result
  named = outputs.assign_outputs(jobs, str(tmp_path))
  assert [outputs.Path(j.output).name for j in named] == ['a_s_2.png', 'a_s_3.png', 'b_s.png']
  # The batch was interrupted: job 2 has a checkpoint, job 1 had finished (its
  # checkpoint kept until the batch ends), job 3 had not started.
  for j in named[:2]:
    checkpoint_lib.path_for(j.output).write_bytes(b'x')
  (tmp_path / 'a_s_2.png').write_bytes(b'done')
  again = outputs.assign_outputs(jobs, str(tmp_path), resume=True)
  assert [j.output for j in again] == [j.output for j in named]
  with pytest.raises(errors.ConfigError, match='two jobs write'):
    outputs.assign_outputs([_Job('a', ('b',), 'x.png'), _Job('c', ('d',), 'x.png')], 'out')


def test_a_resume_whose_automatic_names_moved_is_refused(tmp_path):
  """Trial 26: a photo added to the folder moved the names, and a resume replaced another
  photo's finished result with this one's."""
  import json

  from nst_jax.io import output_names

  result = tmp_path / 'a_s.png'
  result.write_bytes(b'the result of ph/a.jpg')
  (tmp_path / 'a_s.json').write_text(json.dumps({
    'output': str(result), 'result_sha256': output_names.file_sha256(result),
    'settings': {'inputs': {'content_path': 'ph/a.jpg', 'style_path': ['st/s.jpg']}},
  }))  # fmt: skip
  checkpoint_lib.path_for(result).write_bytes(b'x')
  same = outputs.assign_outputs([_Job('ph/a.jpg', ('st/s.jpg',))], str(tmp_path), resume=True)
  assert same[0].output == str(result)
  with pytest.raises(errors.ConfigError) as e:
    outputs.assign_outputs([_Job('ph/a.bmp', ('st/s.jpg',))], str(tmp_path), resume=True)
  assert str(e.value) == (
    f'{result} is the result of a.jpg with s.jpg (its run record says so), not of a.bmp with '
    's.jpg: files were added or removed since the batch began, and the automatic names moved; '
    'put the folder back as it was to resume, or start over without run.resume and another '
    'output directory'
  )
  assert result.read_bytes() == b'the result of ph/a.jpg'


def test_check_writable_and_unfinished(tmp_path):
  with pytest.raises(errors.NstError, match='is a directory'):
    outputs.check_writable(tmp_path)
  (tmp_path / 'file').write_bytes(b'')
  with pytest.raises(errors.NstError, match='is a file, not a directory'):
    outputs.check_writable(tmp_path / 'file' / 'sub' / 'out.png')
  outputs.check_writable(tmp_path / 'new' / 'out.png')
  assert not (tmp_path / 'new').exists()  # nothing created
  ckpt = tmp_path / 'run.ckpt'
  checkpoint_lib.save(ckpt, state={'x': 1}, iteration=3, total=10, settings={})
  with pytest.raises(errors.NstError, match=r'unfinished run \(3 of 10 iterations\)'):
    outputs.check_not_unfinished(ckpt)


def test_a_checkpoint_dir_run_does_not_pass_by_an_unfinished_checkpoint_beside(tmp_path):
  """Trial 26: --resume said there was none, and a new run started over beside it."""
  import numpy as np

  out = tmp_path / 'r.png'
  state = {'image': np.zeros((1, 2, 2, 3), np.float32)}
  payload = checkpoint_lib.snapshot(state, iteration=8, total=30, settings={})
  checkpoint_lib.write(checkpoint_lib.path_for(out), payload)
  elsewhere = str(tmp_path / 'bucket')
  for resume, go_on in ((True, 'resume it without'), (False, 'continue it with run.resume and '
                                                             'without')):  # fmt: skip
    with pytest.raises(errors.NstError) as e:
      outputs.single_output(str(out), 'c.jpg', ['s.jpg'], resume=resume, checkpoint_dir=elsewhere)
    assert str(e.value) == (
      f'{tmp_path / "r.ckpt"}, beside the output, holds an unfinished run (8 of 30 iterations) '
      f'written without run.checkpoint_dir; {go_on} run.checkpoint_dir, or delete it to start '
      'over'
    )
  job = _Job('c.jpg', ('s.jpg',), str(out))
  with pytest.raises(errors.NstError, match='beside the output, holds an unfinished run'):
    outputs.assign_outputs([job], str(tmp_path), checkpoint_dir=elsewhere)
  assert outputs.single_output(str(out), 'c.jpg', ['s.jpg'], resume=True) == out  # beside: found
