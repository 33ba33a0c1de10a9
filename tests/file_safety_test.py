"""A hostile user's runs: no input, foreign file or earlier result is lost or spoiled.

Each case runs main.py's command line (forked from one interpreter by
tests/cli_forks.py) on files made here, and asserts the exit code, the one
line, and the files on disk before and after, by hash.
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
from PIL import Image
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))

import cli_forks  # noqa: E402
import small_runs  # noqa: E402

import nst_jax  # noqa: E402
from nst_jax import errors  # noqa: E402
from nst_jax.io import atomic  # noqa: E402
from nst_jax.io import checkpoint as checkpoint_lib  # noqa: E402
from nst_jax.io import jobs as jobs_lib  # noqa: E402
from nst_jax.runs import batch as batch_lib  # noqa: E402
from nst_jax.runs import output_plan  # noqa: E402
from nst_jax.runs import results as results_lib  # noqa: E402
from nst_jax.runs import runner as pipeline  # noqa: E402

pytestmark = pytest.mark.slow
RUN = ['-i', '2', '-w', '32', '--progress', 'log', *small_runs.FLAGS]


def _digests(directory: Path) -> dict[str, str]:
  return {
    str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(directory.rglob('*'))
    if p.is_file() and not p.is_symlink()
  }


def _images(directory: Path) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in ('c.jpg', 'd.png', 's.jpg'):
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(directory / name)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, caffe_npz):
  """Runs the cases below, each in its own directory set up by its `setup`; returns the outcomes."""
  base = tmp_path_factory.mktemp('hostile')
  env = {k: v for k, v in os.environ.items() if k != 'NST_JAX_WEIGHTS'}
  env.update(JAX_PLATFORMS='cpu', NST_JAX_WEIGHTS=str(caffe_npz))
  plan = []
  for name, (setup, argv, _) in CASES.items():
    cwd = base / name
    _images(cwd)
    setup(cwd)
    before = _digests(cwd)
    for k, args in enumerate(argv):
      plan.append((name, k, cwd, before, args))
  spec = [
    {'argv': [*RUN, *args], 'cwd': str(cwd), 'env': env, 'stderr': str(base / f'{name}.{k}.err')}
    for name, k, cwd, _, args in plan
  ]
  codes = cli_forks.launch(spec, base, env)
  found = {}
  for (name, _k, cwd, before, _), code, run in zip(plan, codes, spec, strict=True):
    found.setdefault(name, {'before': before, 'cwd': cwd, 'runs': []})
    found[name]['runs'].append((code, Path(run['stderr']).read_text()))
  for outcome in found.values():
    outcome['after'] = _digests(outcome['cwd'])
  return found


def _nothing(cwd):
  del cwd


def _notes(cwd):
  (cwd / 'notes.png').write_bytes(b'my notes')
  (cwd / 'dir').mkdir()
  (cwd / 'dir' / 'notes.json').write_text('{"mine": true}')


def _jobs(cwd):
  (cwd / 'jobs.csv').write_text('content,style,output\nc.jpg,s.jpg,d.png\nd.png,s.jpg,e.png\n')
  (cwd / 'pair.csv').write_text('content,style,output\nc.jpg,s.jpg,a.png\nd.png,s.jpg,b/../a.png\n')
  (cwd / 'list.png').write_text('content,style,output\nc.jpg,s.jpg,list.png\n')
  (cwd / 'suffix.csv').write_text('content,style,output\nc.jpg,s.jpg,a.png\nd.png,s.jpg,a.jpg\n')


def _style_ckpt(cwd):
  (cwd / 'r.ckpt').write_bytes((cwd / 's.jpg').read_bytes())


def _foreign_ckpt(cwd):
  (cwd / 'r.ckpt').write_text('my notes, not a checkpoint')


def _checkpoint_dir_of_mine(cwd):
  (cwd / 'r.ckpt').mkdir()
  (cwd / 'r.ckpt' / 'notes.txt').write_text('a directory of the user, named like a checkpoint')


def _dangling(cwd):
  (cwd / 'gone').symlink_to(cwd / 'nowhere')


# name -> (setup, [argv of each run, in order], [(exit code, message or None), ...]).
CASES = {
  'output-is-content': (_nothing, [['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'c.jpg']],
                        [(1, 'error: the result c.jpg would replace the content image; choose '
                             'another --output')]),
  'output-is-style-overwrite': (_nothing, [['-cp', 'c.jpg', '-sp', 's.jpg', '--output',
                                            './s.jpg', '--overwrite']],
                                [(1, 'would replace the style image;')]),
  'foreign-file': (_notes, [['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'notes.png']],
                   [(1, 'error: notes.png exists and no nst-jax run record says nst-jax wrote '
                        'it; choose another output name, or replace it with --overwrite')]),
  'foreign-record': (_notes, [['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'dir/notes.png']],
                     [(1, 'error: dir/notes.json exists, beside notes.png, and no nst-jax run')]),
  'job-output-is-next-content': (_jobs, [['--jobs', 'jobs.csv']],
                                 [(1, 'd.png would replace the content image of job 2; give job 1 '
                                      'another output (--output, or the output column of its '
                                      'jobs file)')]),
  'jobs-same-file': (_jobs, [['--jobs', 'pair.csv']],
                     [(1, 'error: job 2 b/../a.png and job 1 a.png are one file;')]),
  'output-is-jobs-file': (_jobs, [['--jobs', 'list.png']],
                          [(1, 'error: job 1 list.png would replace the job list list.png;')]),
  'automatic-names': (_nothing, [['-cp', '*.*g', '-sp', 's.jpg', '--output', 'x/']], [(0, None)]),
  'unwritable-format': (_nothing, [['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'r.psd']],
                        [(1, 'error: cannot write r.psd: Pillow cannot save the result as PSD')]),
  'long-name': (_nothing, [['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'a' * 237 + '.png']],
                [(1, 'is 241 bytes long, and at most 237 fit here')]),
  'dangling-directory': (_dangling, [['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'gone/r.png']],
                         [(1, 'which does not exist; create it or choose another output')]),
  # Runs that must work, in order: a rerun replaces its own result; the loss plot of
  # x.png would be the earlier result x.loss.png; --overwrite replaces a foreign file.
  'rerun-and-loss-plot': (_notes, [
    ['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'x.loss.png'],
    ['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'x.loss.png', '-sw', '1'],
    ['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'x.png'],
    ['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'notes.png', '--overwrite'],
  ], [(0, None), (0, None),
      (1, 'error: x.loss.png exists, beside x.png, and is the result of another run'),
      (0, None)]),
  'suffixes-do-not-share': (_jobs, [['--jobs', 'suffix.csv']], [(0, None)]),
  'checkpoint-is-style': (_style_ckpt, [['-cp', 'c.jpg', '-sp', 'r.ckpt', '--output', 'r.png']],
                          [(1, 'error: the checkpoint r.ckpt of the result r.png would replace the '
                               'style image;')]),
  'foreign-checkpoint': (_foreign_ckpt, [['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'r.png']],
                         [(1, 'delete it to start over, or move it away if it is a file')]),
  # Never written into, replaced or deleted, even with --overwrite.
  'foreign-checkpoint-directory': (_checkpoint_dir_of_mine,
                                   [['-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'r.png',
                                     '--overwrite']],
                                   [(1, 'error: r.ckpt is not an nst-jax checkpoint (it is a '
                                        'directory that nst-jax did not write); move it away or '
                                        'choose another --output')]),
}  # fmt: skip


@pytest.mark.parametrize('name', list(CASES))
def test_hostile_runs(runs, name):
  outcome = runs[name]
  expected = CASES[name][2]
  for (code, stderr), (want_code, message) in zip(outcome['runs'], expected, strict=True):
    assert code == want_code, stderr[-2000:]
    assert 'Traceback' not in stderr
    if message is not None:
      errors_ = [line for line in stderr.splitlines() if line.startswith('error:')]
      assert len(errors_) == 1 and message in errors_[0], stderr[-2000:]
  before, after = outcome['before'], outcome['after']
  if all(code == 1 for code, _ in outcome['runs']):
    assert after == before  # refused: nothing written, nothing changed
  else:
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed == ({'notes.png'} if name == 'rerun-and-loss-plot' else set())
  if name == 'rerun-and-loss-plot':
    cwd = outcome['cwd']
    record = json.loads((cwd / 'x.loss.json').read_text())
    assert record['settings']['loss']['style_weight'] == 1.0  # the rerun's result
    assert json.loads((cwd / 'notes.json').read_text())['output'] == 'notes.png'
    assert not (cwd / 'x.png').exists()
  if name == 'suffixes-do-not-share':
    cwd = outcome['cwd']
    assert json.loads((cwd / 'a.json').read_text())['output'] == 'a.png'
    # Where, too: a copy elsewhere of a relative run's pair is not its result (trial 26).
    where = json.loads((cwd / 'a.json').read_text())['output_resolved']
    assert where == str((cwd / 'a.png').resolve())
    assert json.loads((cwd / 'a.jpg.json').read_text())['output'] == 'a.jpg'
  if name == 'automatic-names':
    assert sorted(p.name for p in (outcome['cwd'] / 'x').glob('*.png') if '.' not in p.stem) == [
      'c_s.png',
      'd_s.png',
      's_s.png',
    ]


_HOLD = textwrap.dedent("""
  import sys, time
  from nst_jax.runs import output_plan
  with output_plan.locked([output_plan.image_output(sys.argv[1])]):
    print('held', flush=True)
    time.sleep(120)
""")


def test_a_second_run_on_the_same_output_is_refused(tmp_path, caffe_npz):
  _images(tmp_path)
  env = {k: v for k, v in os.environ.items() if k != 'NST_JAX_WEIGHTS'}
  env.update(JAX_PLATFORMS='cpu', NST_JAX_WEIGHTS=str(caffe_npz))
  holder = subprocess.Popen(
    [sys.executable, '-c', _HOLD, 'r.png'], cwd=tmp_path, env={**env, 'PYTHONPATH': str(ROOT)},
    stdout=subprocess.PIPE, text=True,
  )  # fmt: skip
  try:
    assert holder.stdout.readline().strip() == 'held'
    before = _digests(tmp_path)
    r = subprocess.run(
      [sys.executable, str(ROOT / 'main.py'), '-cp', 'c.jpg', '-sp', 's.jpg', '--output',
       'r.png', *RUN],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
  finally:
    holder.kill()
    holder.wait()
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == (
    'error: another nst-jax run is writing r.png; wait for it to finish or choose another output '
    'name'
  )
  assert _digests(tmp_path) == before


def _cfg(tmp_path, caffe_npz, **save):
  return nst_jax.StyleConfig(
    inputs=nst_jax.InputConfig(
      content_path=str(tmp_path / 'c.jpg'), style_path=str(tmp_path / 's.jpg'), width=32
    ),
    model=nst_jax.ModelConfig(weights=str(caffe_npz)),
    loss=small_runs.loss_config(),
    schedule=nst_jax.ScheduleConfig(iterations=3),
    save=nst_jax.SaveConfig(path=str(tmp_path / 'r.png'), **save),
    run=nst_jax.RunConfig(progress='log'),
  )


def test_a_full_disk_at_the_end_keeps_the_checkpoint_and_resume_writes_the_result(
  tmp_path, caffe_npz, monkeypatch
):
  _images(tmp_path)
  cfg = _cfg(tmp_path, caffe_npz, record=False)
  whole = pipeline.run(cfg)
  expected = whole.read_bytes()
  whole.unlink()
  real_save = Image.Image.save

  def full(self, fp, *args, **kwargs):
    if str(fp).startswith(str(tmp_path / '.r.png.')):
      raise OSError(28, os.strerror(28))
    return real_save(self, fp, *args, **kwargs)

  monkeypatch.setattr(Image.Image, 'save', full)
  with pytest.raises(errors.WriteError) as e:
    pipeline.run(cfg)
  assert str(e.value) == (
    f'could not write {tmp_path / "r.png"}: No space left on device; nothing was replaced: free '
    f'space or choose another place; the checkpoint {tmp_path / "r.ckpt"} is kept: then continue '
    'with run.resume'
  )
  assert sorted(p.name for p in tmp_path.iterdir()) == ['c.jpg', 'd.png', 'r.ckpt', 's.jpg']
  monkeypatch.setattr(Image.Image, 'save', real_save)
  # Trial 43 F-B: the finished checkpoint noted no result, and owned a picture put there since.
  (tmp_path / 'r.png').write_bytes(b'my picture')
  with pytest.raises(errors.NstError, match=r'r\.png exists and no nst-jax run record says'):
    pipeline.run(cfg.replace(run=cfg.run.replace(resume=True)))
  assert (tmp_path / 'r.png').read_bytes() == b'my picture'
  (tmp_path / 'r.png').unlink()
  pipeline.run(cfg.replace(run=cfg.run.replace(resume=True)))
  assert (tmp_path / 'r.png').read_bytes() == expected
  assert not (tmp_path / 'r.ckpt').exists()


def test_a_resumed_batch_redoes_a_job_whose_result_or_record_is_not_whole(tmp_path, caffe_npz):
  """Trial 20: --resume counted any existing output as finished, exit 0: one cut short (J2),
  one of a job since edited in the list (J2), one whose record a kill cut off (J12)."""
  _images(tmp_path)
  a, b = tmp_path / 'a.png', tmp_path / 'b.png'
  style = (str(tmp_path / 's.jpg'),)
  jobs = [jobs_lib.Job(str(tmp_path / 'c.jpg'), style, output=str(a)),
          jobs_lib.Job(str(tmp_path / 'd.png'), style, output=str(b))]  # fmt: skip
  cfg = _cfg(tmp_path, caffe_npz)
  cfg = cfg.replace(save=cfg.save.replace(path=''), run=cfg.run.replace(keep_checkpoint=True))
  resume = cfg.replace(run=cfg.run.replace(resume=True))
  batch_lib.run_batch(jobs, cfg)
  expected = {p: p.read_bytes() for p in (a, b)}
  # J12: killed after a.png, before its record: written again from the finished checkpoint.
  for name in ('a.json', 'a.loss.png', 'a.sheet.jpg'):
    (tmp_path / name).unlink()
  b_time = b.stat().st_mtime_ns
  assert list(batch_lib.run_batch(jobs, resume)) == [str(a)]
  assert (tmp_path / 'a.json').is_file() and a.read_bytes() == expected[a]
  assert b.stat().st_mtime_ns == b_time  # whole: not run again
  # J2: b.png cut short, its checkpoint cleaned up: not the file its record is of (trial 24:
  # the record's digest), so it is replaced with save.overwrite only, and run again.
  checkpoint_lib.remove(tmp_path / 'b.ckpt')
  b.write_bytes(expected[b][:100])
  with pytest.raises(errors.NstError) as e:
    batch_lib.run_batch(jobs, resume)
  assert str(e.value) == (
    f'{b} is not the file its run record was written for (changed since); move it away, or '
    'replace it with save.overwrite'
  )
  again = resume.replace(save=resume.save.replace(overwrite=True))
  assert list(batch_lib.run_batch(jobs, again)) == [str(b)]
  assert b.read_bytes() == expected[b]
  # J2: the list now gives b another content: its result is that job's no more.
  checkpoint_lib.remove(tmp_path / 'b.ckpt')
  edited = [jobs[0], dataclasses.replace(jobs[1], content=str(tmp_path / 'c.jpg'))]
  assert list(batch_lib.run_batch(edited, resume)) == [str(b)]
  record = json.loads((tmp_path / 'b.json').read_text())
  assert record['settings']['inputs']['content_path'] == str(tmp_path / 'c.jpg')
  # Trial 22 (L10, L11): another weight, its kept finished checkpoint the earlier job's.
  assert not checkpoint_lib.unfinished(checkpoint_lib.read(tmp_path / 'b.ckpt'))
  edited[1] = dataclasses.replace(edited[1], style_weight=5.0)
  assert list(batch_lib.run_batch(edited, resume)) == [str(b)]
  record = json.loads((tmp_path / 'b.json').read_text())
  assert record['settings']['loss']['style_weight'] == 5.0
  assert list(batch_lib.run_batch(edited, resume)) == []  # now finished as listed
  # Trial 24 (N6): the content file now holds another picture, at the same path.
  with Image.open(tmp_path / 'c.jpg') as im:
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / 'c.jpg')
  assert sorted(batch_lib.run_batch(edited, resume)) == [str(a), str(b)]


def test_a_batch_job_killed_before_its_result_is_written_again_on_resume(tmp_path, caffe_npz):
  _images(tmp_path)
  jobs = [
    jobs_lib.Job(
      str(tmp_path / 'c.jpg'), (str(tmp_path / 's.jpg'),), output=str(tmp_path / 'a.png')
    ),
    jobs_lib.Job(
      str(tmp_path / 'd.png'), (str(tmp_path / 's.jpg'),), output=str(tmp_path / 'b.png')
    ),
  ]
  cfg = _cfg(tmp_path, caffe_npz, record=False)
  cfg = cfg.replace(save=cfg.save.replace(path=''), run=cfg.run.replace(keep_checkpoint=True))
  batch_lib.run_batch(jobs, cfg)
  expected = {p: Path(p).read_bytes() for p in (tmp_path / 'a.png', tmp_path / 'b.png')}
  b_time = (tmp_path / 'b.png').stat().st_mtime_ns
  # As a kill after job a's finished checkpoint and before its result leaves it.
  (tmp_path / 'a.png').unlink()
  written = batch_lib.run_batch(jobs, cfg.replace(run=cfg.run.replace(resume=True)))
  assert list(written) == [str(tmp_path / 'a.png')]
  assert {p: Path(p).read_bytes() for p in expected} == expected
  assert (tmp_path / 'b.png').stat().st_mtime_ns == b_time  # finished: not run again
  # Trial 26: with no record, a finished checkpoint made with another setting was resumed,
  # refused only after the other jobs had run (a job with a record was run again).
  other = cfg.replace(loss=cfg.loss.replace(style_weight=5.0), run=cfg.run.replace(resume=True))
  assert sorted(batch_lib.run_batch(jobs, other)) == sorted(map(str, expected))
  assert checkpoint_lib.read(tmp_path / 'b.ckpt')['settings']['loss.style_weight'] == 5.0


def test_resuming_a_finished_batch_finds_it_finished_and_writes_nothing(tmp_path, caffe_npz):
  _images(tmp_path)
  jobs = [jobs_lib.Job(str(tmp_path / 'c.jpg'), (str(tmp_path / 's.jpg'),))]
  cfg = _cfg(tmp_path, caffe_npz)
  cfg = cfg.replace(save=cfg.save.replace(path=f'{tmp_path}/out/'))
  batch_lib.run_batch(jobs, cfg)
  batch_lib.run_batch(jobs, cfg)  # a second batch, later, beside the first: c_s_2.png
  files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / 'out').iterdir()}
  # No checkpoint left: both finished.
  assert sorted(files) == [f'c_s{n}{tail}' for n in ('', '_2')
                           for tail in ('.json', '.loss.png', '.png', '.sheet.jpg')]  # fmt: skip
  # Before: a finished batch resumed ran every job again, as c_s_3.png.
  written = batch_lib.run_batch(jobs, cfg.replace(run=cfg.run.replace(resume=True)))
  assert written == {}
  assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / 'out').iterdir()} == files


def _start(tmp_path, caffe_npz, *args):
  env = {k: v for k, v in os.environ.items() if k != 'NST_JAX_WEIGHTS'}
  env.update(JAX_PLATFORMS='cpu', NST_JAX_WEIGHTS=str(caffe_npz))
  return subprocess.Popen(
    [sys.executable, str(ROOT / 'main.py'), '-cp', 'c.jpg', '-sp', 's.jpg', '--output', 'r.png',
     '--progress', 'log', '--print_iter', '1', *args],
    cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
  )  # fmt: skip


def _wait_for(process, text: str) -> list[str]:
  lines = []
  for line in process.stderr:
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(''.join(lines))


def _finish(process) -> tuple[float, str]:
  """(seconds until the process ended, what it printed meanwhile)."""
  t0 = time.perf_counter()
  rest = process.stderr.read()
  process.wait(timeout=60)
  return time.perf_counter() - t0, rest


def test_sigterm_while_compiling_a_1024_px_run_ends_it_within_2_s(tmp_path, caffe_npz):
  _images(tmp_path)
  Image.open(tmp_path / 'c.jpg').resize((1024, 768)).save(tmp_path / 'c.jpg')
  before = _digests(tmp_path)
  process = _start(tmp_path, caffe_npz, '-w', '1024', '-i', '5')
  _wait_for(process, 'Styling')  # the weights are loaded; targets and the step compile next
  time.sleep(1.0)
  process.send_signal(signal.SIGTERM)
  seconds, rest = _finish(process)
  assert seconds < 2.0
  assert process.returncode == 128 + signal.SIGTERM
  assert rest.strip().splitlines()[-1] == (
    'error: interrupted by signal 15 before the first iteration; nothing was written'
  )
  assert _digests(tmp_path) == before


def test_a_signal_while_the_results_are_written_lets_them_finish(tmp_path, caffe_npz):
  """Trial 20: SIGTERM or SIGHUP after the last iteration ended the run by their default
  action: a result without its record, lock files, a finished checkpoint, and no line."""
  signum = signal.SIGHUP  # a dropped ssh connection; SIGTERM takes the same path
  _images(tmp_path)
  inputs = {p.name for p in tmp_path.iterdir()}
  process = _start(tmp_path, caffe_npz, '-i', '2', *small_runs.FLAGS)
  _wait_for(process, 'saved r.png')  # the record, plot and sheet come next
  process.send_signal(signum)
  _, rest = _finish(process)
  assert process.returncode == 0, rest
  assert f'signal {int(signum)} after the last iteration: the results are written first' in rest
  assert 'Done: r.png' in rest
  written = {p.name for p in tmp_path.iterdir()} - inputs  # no lock, temporary file or checkpoint
  assert sorted(written) == ['r.json', 'r.loss.png', 'r.png', 'r.sheet.jpg']


def test_a_second_ctrl_c_exits_at_once(tmp_path, caffe_npz):
  _images(tmp_path)
  Image.open(tmp_path / 'c.jpg').resize((512, 384)).save(tmp_path / 'c.jpg')
  # Iterations of about 0.7 s: both signals arrive within one, after the first iteration.
  process = _start(tmp_path, caffe_npz, '-w', '512', '-i', '1000', '--tol', '0', *small_runs.FLAGS)
  _wait_for(process, 'iteration 1/')
  process.send_signal(signal.SIGINT)
  time.sleep(0.15)  # closer than signals.AGAIN_AFTER_S they count as one (timeout sends two)
  process.send_signal(signal.SIGINT)
  seconds, rest = _finish(process)
  assert seconds < 1.0
  assert process.returncode == 128 + signal.SIGINT
  assert 'error: interrupted again by signal 2; stopped at once' in rest
  # The next run on this output removes whatever a write cut short left behind.
  with output_plan.locked(
    [output_plan.image_output(tmp_path / 'r.png')],
  ):
    pass
  assert not list(tmp_path.glob('.*.tmp'))


class _Killed(BaseException):
  """Stands for SIGKILL: no handler of the run catches it."""


def test_a_batch_killed_before_any_write_resumes_to_the_uninterrupted_results(
  tmp_path, caffe_npz, monkeypatch
):
  """Kills the batch before each of its file writes in turn (checkpoints and results), resumes.

  In-process, so every write boundary of a batch with early stopping is
  covered in seconds; tests/batch_test.py kills real processes at a random
  moment.
  """

  _images(tmp_path / 'in')
  names = ('c.jpg', 'd.png')
  jobs = [
    jobs_lib.Job(str(tmp_path / 'in' / c), (str(tmp_path / 'in' / 's.jpg'),), content_weight=w)
    for c, w in zip(names, (1.0, 20.0), strict=True)
  ]
  cfg = _cfg(tmp_path / 'in', caffe_npz, record=False)
  # Early stopping on: the jobs stop at different iterations.
  cfg = cfg.replace(
    schedule=cfg.schedule.replace(iterations=10, tol=1.0, window=2),
    run=cfg.run.replace(checkpoint_every=3),
  )
  writes = []

  def counting(real_write):
    def write(path, what, **kwargs):
      writes.append(Path(path).name)
      if len(writes) == kill_at:
        raise _Killed
      return real_write(path, what, **kwargs)

    return write

  monkeypatch.setattr(atomic, 'write', counting(atomic.write))
  # Checkpoints are directories of orbax steps, not written by atomic.write; a kill inside
  # one is tests/checkpoint_store_test.py's.
  monkeypatch.setattr(checkpoint_lib, 'write', counting(checkpoint_lib.write))

  def batch(out, *, resume=False, record=None):
    run_cfg = cfg.replace(save=cfg.save.replace(path=f'{out}/'), run=cfg.run.replace(resume=resume))
    batch_lib.run_batch(jobs, run_cfg, record=record)

  kill_at = 0
  record = {}
  batch(tmp_path / 'whole', record=record)
  ((stopped, iterations),) = [(g['stopped'], g['iterations']) for g in record['groups']]
  assert stopped == 'converged' and iterations < 10  # early stopping, as asked
  expected = _digests(tmp_path / 'whole')
  assert sorted(expected) == ['c_s.png', 'd_s.png']
  order = list(writes)
  assert sum(name.endswith('.ckpt') for name in order) >= 4
  for kill_at in range(1, len(order) + 1):
    writes.clear()
    out = tmp_path / f'killed{kill_at}'
    with pytest.raises(_Killed):
      batch(out)
    kill_at = 0
    batch(out, resume=True)
    assert _digests(out) == expected, (kill_at, order)


def test_ctrl_c_while_starting_is_one_line(tmp_path, caffe_npz):
  _images(tmp_path)
  process = _start(tmp_path, caffe_npz, '-w', '32', *small_runs.FLAGS)
  time.sleep(0.3)  # importing the libraries
  process.send_signal(signal.SIGINT)
  seconds, rest = _finish(process)
  assert process.returncode == 128 + signal.SIGINT
  assert rest.strip().splitlines() == ['error: interrupted while starting; nothing was written']


def test_an_image_saved_on_a_signal_replaces_no_file(tmp_path):
  """A signal saves NAME_<iteration>.png, a name the plan could not list: only where none is."""
  cfg = nst_jax.StyleConfig(save=nst_jax.SaveConfig(save_iter=5), run=nst_jax.RunConfig())
  cfg = cfg.replace(schedule=cfg.schedule.replace(iterations=20))
  # Planned and there when the run starts (the plan passed it: this output's own).
  (tmp_path / 'r_00010.png').write_bytes(b'an earlier run of this output')
  results = results_lib.Results(cfg, None, {0: tmp_path / 'r.png'}, {0: None})
  theirs = tmp_path / 'r_00007.png'
  theirs.write_bytes(b'not ours')
  (tmp_path / 'r_00005.png').write_bytes(b'planned, but written by another run since')
  rgb = np.full((4, 4, 3), 0.5, np.float32)
  results.intermediate(7, {0: rgb})  # on a signal
  results.intermediate(5, {0: rgb})
  results.intermediate(8, {0: rgb})
  assert theirs.read_bytes() == b'not ours'
  assert (tmp_path / 'r_00005.png').read_bytes() == b'planned, but written by another run since'
  assert (tmp_path / 'r_00008.png').exists()
  assert (tmp_path / 'r_00010.png').read_bytes() == b'an earlier run of this output'  # not reached
  # What the record will claim: the ones written. Not the planned one there at the start, an
  # earlier run's (its own record's `earlier_intermediates`); a resume claims the interrupted
  # run's (trial 24 N7), and no other (trial 34: a user's, let be by --overwrite, was claimed).
  assert sorted(results.saved[0]) == ['r_00008.png']


def test_a_full_disk_at_the_end_names_the_iteration_its_checkpoint_holds(
  tmp_path, caffe_npz, monkeypatch
):
  # The same full disk fails the last checkpoint's save (the writer warns
  # and goes on) and the result: the checkpoint kept is iteration 2's, and
  # --resume runs from there; the message said it would give the result.
  _images(tmp_path)
  cfg = _cfg(tmp_path, caffe_npz, record=False)
  cfg = cfg.replace(run=cfg.run.replace(checkpoint_every=1))
  real_save, real_write = Image.Image.save, checkpoint_lib.write

  def full(self, fp, *args, **kwargs):
    if str(fp).startswith(str(tmp_path / '.r.png.')):
      raise OSError(28, os.strerror(28))
    return real_save(self, fp, *args, **kwargs)

  def write(path, payload):
    if payload['iteration'] == 3:
      raise errors.WriteError(f'could not write {path}: No space left on device')
    return real_write(path, payload)

  monkeypatch.setattr(Image.Image, 'save', full)
  monkeypatch.setattr(checkpoint_lib, 'write', write)
  with pytest.raises(errors.WriteError) as e:
    pipeline.run(cfg)
  assert str(e.value).endswith(
    f'; the checkpoint {tmp_path / "r.ckpt"} could not be written at the end either and holds '
    'iteration 2 of scale 1: continue from there with run.resume'
  )
  assert checkpoint_lib.read(tmp_path / 'r.ckpt')['iteration'] == 2


def test_a_batch_resumed_with_more_iterations_does_not_count_a_shorter_result_finished(
  tmp_path, caffe_npz, caplog
):
  """Trial 45 P2-7: a job's result made with -i 2 counted as finished for -i 4 (its record was
  compared on inputs and weights only), and the batch exited 0 without running it."""
  _images(tmp_path)
  jobs = [jobs_lib.Job(str(tmp_path / 'c.jpg'), (str(tmp_path / 's.jpg'),),
                       output=str(tmp_path / 'out' / 'a.png'))]  # fmt: skip
  cfg = _cfg(tmp_path, caffe_npz)
  cfg = cfg.replace(schedule=cfg.schedule.replace(iterations=2),
                    save=cfg.save.replace(path=f'{tmp_path}/out/'))  # fmt: skip
  batch_lib.run_batch(jobs, cfg)
  more = cfg.replace(schedule=cfg.schedule.replace(iterations=4), run=cfg.run.replace(resume=True))
  written = batch_lib.run_batch(jobs, more)
  assert 'was made with another schedule.iterations (its run record says so)' in caplog.text
  assert (
    list(written)
    and json.loads((tmp_path / 'out' / 'a.json').read_text())['settings']['schedule']['iterations']
    == 4
  )
  assert batch_lib.run_batch(jobs, more) == {}  # now it is finished


def test_a_batch_killed_while_drawing_a_jobs_figures_draws_them_on_resume(
  tmp_path, caffe_npz, monkeypatch, caplog
):
  """Trial 47 N2: killed while it drew a job's loss plot and sheet, a batch's resume counted the
  job "finished earlier" (its result and record whole) and never drew them."""
  from nst_jax.io import record as record_lib

  _images(tmp_path)
  out = tmp_path / 'out'
  jobs = [jobs_lib.Job(str(tmp_path / 'c.jpg'), (str(tmp_path / 's.jpg'),),
                       output=str(out / 'a.png'))]  # fmt: skip
  cfg = _cfg(tmp_path, caffe_npz)
  cfg = cfg.replace(save=cfg.save.replace(path=f'{out}/'))

  def killed(*args, **kwargs):
    raise SystemExit('killed')

  monkeypatch.setattr(record_lib, 'figures', killed)
  with pytest.raises(SystemExit):
    batch_lib.run_batch(jobs, cfg)
  monkeypatch.undo()
  assert sorted(p.name for p in out.iterdir()) == ['a.ckpt', 'a.json', 'a.png']
  result = (out / 'a.png').read_bytes()
  record = json.loads((out / 'a.json').read_text())
  assert record['figures_drawn'] is False
  record['figures_drawn'] = 'false'  # trial 49 E8: anything but true (edited by hand) was true
  (out / 'a.json').write_text(json.dumps(record))
  written = batch_lib.run_batch(jobs, cfg.replace(run=cfg.run.replace(resume=True)))
  assert 'a.png lacks its loss plot and sheet (its run stopped while drawing them)' in caplog.text
  assert list(written) == [str(out / 'a.png')] and (out / 'a.png').read_bytes() == result
  assert sorted(p.name for p in out.iterdir()) == ['a.json', 'a.loss.png', 'a.png', 'a.sheet.jpg']
  record = json.loads((out / 'a.json').read_text())
  assert 'figures_drawn' not in record and sorted(record['figures_sha256']) == [
    'a.loss.png',
    'a.sheet.jpg',
  ]
  assert batch_lib.run_batch(jobs, cfg.replace(run=cfg.run.replace(resume=True))) == {}


def test_a_finished_checkpoint_of_this_batch_beside_an_older_result_writes_the_result(
  tmp_path, caffe_npz, caplog
):
  """Trial 47 P2-7c: a job's finished checkpoint made with this batch's settings was thrown away
  and run again because an older result (of -i 2) sat at its name; without it, the same
  checkpoint wrote the result."""
  _images(tmp_path)
  out = tmp_path / 'out'
  jobs = [jobs_lib.Job(str(tmp_path / 'c.jpg'), (str(tmp_path / 's.jpg'),),
                       output=str(out / 'a.png'))]  # fmt: skip
  cfg = _cfg(tmp_path, caffe_npz)
  cfg = cfg.replace(schedule=cfg.schedule.replace(iterations=2),
                    save=cfg.save.replace(path=f'{out}/'))  # fmt: skip
  batch_lib.run_batch(jobs, cfg)
  older = {p: p.read_bytes() for p in out.iterdir()}
  more = cfg.replace(schedule=cfg.schedule.replace(iterations=4),
                     run=cfg.run.replace(keep_checkpoint=True))  # fmt: skip
  batch_lib.run_batch(jobs, more)
  result = (out / 'a.png').read_bytes()
  for path, data in older.items():  # as a kill of the -i 4 run after its last checkpoint
    path.write_bytes(data)
  resumed = more.replace(run=more.run.replace(resume=True))
  assert list(batch_lib.run_batch(jobs, resumed)) == [str(out / 'a.png')]
  assert 'writing it from the checkpoint' in caplog.text and 'running it again' not in caplog.text
  assert (out / 'a.png').read_bytes() == result
  assert json.loads((out / 'a.json').read_text())['settings']['schedule']['iterations'] == 4
