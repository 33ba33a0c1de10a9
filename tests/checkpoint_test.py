"""Tests for checkpoints, resume, signals and numerical faults."""

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

from conftest import flat_config
import jax
import numpy as np
from PIL import Image
import pytest
import small_runs

from nst_jax import errors
from nst_jax import run
from nst_jax import stylize
from nst_jax.io import atomic
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import checkpoint_v1
from nst_jax.io import orbax_local
from nst_jax.io import output_names
from nst_jax.io.outputs import default_output_path

ROOT = Path(__file__).resolve().parent.parent


def _args(content, style, output, weights, *extra):
  return [
    sys.executable, str(ROOT / 'main.py'), '-cp', str(content), '-sp', str(style),
    '-w', '48', '--output', str(output), '--weights', str(weights), '--init', 'random',
    '--seed', '5', '--print_iter', '0', *small_runs.FLAGS, *map(str, extra),
  ]  # fmt: skip


def _env():
  return {**os.environ, 'JAX_PLATFORMS': 'cpu'}


def _wait_for_checkpoint(path, at_least, proc, timeout=120):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, 'the run ended before it could be interrupted'
    if path.exists() and checkpoint_lib.read(path)['iteration'] >= at_least:
      return
    time.sleep(0.05)
  raise AssertionError('no checkpoint appeared')


def _final_arrays(path):
  return jax.tree.leaves(checkpoint_lib.read_state(path))


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, images, caffe_npz):
  content, style = images
  total = 80
  reference = tmp_path / 'ref' / 'out.png'
  r = subprocess.run(
    _args(content, style, reference, caffe_npz, '-i', total, '--checkpoint_every', 50)
    + ['--keep_checkpoint'],
    env=_env(), capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr

  out = tmp_path / 'killed' / 'out.png'
  ckpt = checkpoint_lib.path_for(out)
  args = _args(content, style, out, caffe_npz, '-i', total, '--checkpoint_every', 10)
  proc = subprocess.Popen(args, env=_env(), stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_checkpoint(ckpt, 30, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGKILL
  killed_at = checkpoint_lib.read(ckpt)['iteration']
  assert 30 <= killed_at < total and not out.exists()

  resume = args + ['--resume', '--keep_checkpoint']
  r = subprocess.run(resume, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert f'after iteration {killed_at}' in r.stderr
  assert out.read_bytes() == reference.read_bytes()
  resumed, uninterrupted = _final_arrays(ckpt), _final_arrays(checkpoint_lib.path_for(reference))
  assert len(resumed) == len(uninterrupted) > 2  # image and the L-BFGS state
  for a, b in zip(resumed, uninterrupted, strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_image_then_exits(tmp_path, images, caffe_npz, signum):
  content, style = images
  out = tmp_path / 'out.png'
  ckpt = checkpoint_lib.path_for(out)
  args = _args(content, style, out, caffe_npz, '-i', 100000, '--checkpoint_every', 20)
  proc = subprocess.Popen(args, env=_env(), stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_checkpoint(ckpt, 20, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signum, stderr
  assert f'interrupted by signal {int(signum)} after iteration' in stderr
  assert 'continue with --resume' in stderr and 'Traceback' not in stderr
  # The checkpoint and the image are from the iteration the run stopped at,
  # whatever the schedule (every 20) would have saved.
  stopped_at = int(re.search(r'after iteration (\d+);', stderr).group(1))
  assert checkpoint_lib.read(ckpt)['iteration'] == stopped_at >= 20
  assert (tmp_path / f'out_{stopped_at:05d}.png').exists()
  # The message names the image it saved (none named when one was not saved).
  assert f'out_{stopped_at:05d}.png' in stderr.split('after iteration', 1)[1]
  assert not out.exists()


@pytest.mark.slow
def test_sighup_saves_into_the_checkpoint_dir_and_resume_continues_bitwise(
  tmp_path, images, caffe_npz
):
  # A dropped ssh connection (SIGHUP) stops a run as SIGTERM does, and the
  # checkpoint goes to --checkpoint_dir (a bucket that outlives a preempted
  # VM), not beside the output. The reference and the resume run in this
  # process (one interpreter start instead of three).
  content, style = images
  total = 300
  out = tmp_path / 'hup' / 'out.png'
  bucket = tmp_path / 'bucket'
  ckpt = checkpoint_lib.path_for(out, bucket)
  assert ckpt.parent == bucket and re.fullmatch(r'out\.[0-9a-f]{8}\.ckpt', ckpt.name)
  args = _args(content, style, out, caffe_npz, '-i', total, '--tol', 0, '--checkpoint_every', 5)
  proc = subprocess.Popen(
    args + ['--checkpoint_dir', str(bucket)], env=_env(), stderr=subprocess.PIPE, text=True
  )
  try:
    _wait_for_checkpoint(ckpt, 5, proc)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGHUP, stderr
  assert f'interrupted by signal {int(signal.SIGHUP)} after iteration' in stderr
  assert 'Traceback' not in stderr
  # Trial 28: it said only "continue with --resume", which found no checkpoint and started over.
  assert stderr.rstrip().endswith(f'continue with --resume and --checkpoint_dir {bucket}'), stderr
  stopped_at = checkpoint_lib.read(ckpt)['iteration']
  assert 5 <= stopped_at < total and not out.exists()
  assert not checkpoint_lib.path_for(out).exists()  # nothing beside the output

  # The command line's settings (_args), as a config.
  cfg = _cfg(content, style, out, caffe_npz, width=48, iterations=total, init='random')
  cfg = cfg.replace(
    inputs=cfg.inputs.replace(seed=5),
    schedule=cfg.schedule.replace(tol=0.0),
    run=cfg.run.replace(print_iter=0, checkpoint_every=5, keep_checkpoint=False),
  )
  reference = tmp_path / 'ref' / 'out.png'
  run(cfg.replace(save=cfg.save.replace(path=str(reference))))
  run(cfg.replace(run=cfg.run.replace(resume=True, checkpoint_dir=str(bucket))))
  assert out.read_bytes() == reference.read_bytes()
  assert not ckpt.exists()  # finished: deleted from the checkpoint directory too


def test_a_format_1_checkpoint_resumes_bitwise_and_its_first_save_replaces_it(tmp_path, caffe_npz):
  """A run interrupted before format 2 (its checkpoint the old writer's msgpack file) resumes."""
  from nst_jax import config as config_lib

  rng = np.random.default_rng(4)
  content = rng.uniform(size=(16, 20, 3)).astype(np.float32)
  style = rng.uniform(size=(16, 16, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=4),
    run=config_lib.RunConfig(print_iter=0, checkpoint_every=1),
  )
  whole = stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=tmp_path / 'a.ckpt')
  ckpt = tmp_path / 'b.ckpt'
  polls = []

  def should_stop():
    polls.append(1)
    return 15 if len(polls) == 2 else None

  with pytest.raises(errors.Interrupted):
    stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt, should_stop=should_stop)
  payload, state = checkpoint_lib.read(ckpt), checkpoint_lib.read_state(ckpt)
  checkpoint_lib.remove(ckpt)
  checkpoint_v1.write(ckpt, {**payload, 'state': state})  # as nst-jax wrote it before format 2
  assert ckpt.is_file() and (checkpoint_lib.read(ckpt)['format'], payload['iteration']) == (1, 2)
  resumed = stylize(
    content,
    style,
    config=cfg.replace(run=cfg.run.replace(resume=True)),
    weights=caffe_npz,
    checkpoint=ckpt,
  )
  np.testing.assert_array_equal(resumed, whole)
  assert ckpt.is_dir() and checkpoint_lib.read(ckpt)['format'] == 2  # replaced by its first save
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.ckpt', 'b.ckpt']


def test_outputs_of_one_name_keep_their_own_checkpoints_in_the_checkpoint_dir(
  tmp_path, monkeypatch
):
  """a/x.png and b/x.png with one run.checkpoint_dir: two checkpoints, and neither run's files
  count as the other's (a kept checkpoint of a/x.png let a run to b/x.png replace a b/x.png that
  nst-jax never wrote)."""
  from nst_jax.runs import output_plan

  bucket = tmp_path / 'ck'
  a, b = tmp_path / 'a' / 'x.png', tmp_path / 'b' / 'x.png'
  assert checkpoint_lib.path_for(a, bucket) != checkpoint_lib.path_for(b, bucket)
  # One output, however it is named, has one checkpoint.
  monkeypatch.chdir(tmp_path)
  assert checkpoint_lib.path_for('a/x.png', bucket) == checkpoint_lib.path_for(a, bucket)
  assert checkpoint_lib.path_for(a) == tmp_path / 'a' / 'x.ckpt'  # beside: unchanged
  b.parent.mkdir()
  b.write_bytes(b'a file of the user')
  bucket.mkdir()
  checkpoint_lib.path_for(a, bucket).write_bytes(b'a kept checkpoint of a/x.png')
  plan = [output_plan.image_output(b, checkpoint=checkpoint_lib.path_for(b, bucket))]
  with pytest.raises(errors.NstError, match='no nst-jax run record says nst-jax wrote it'):
    output_plan.check(plan, inputs={})


def _cfg(content, style, output, weights, **changes):
  settings = {
    'content_path': str(content),
    'style_path': str(style),
    'output': str(output),
    'weights': str(weights),
    'width': 32,
    'iterations': 4,
    'checkpoint_every': 2,
    'keep_checkpoint': True,
  }
  cfg = flat_config(**{**settings, **changes})
  return cfg.replace(
    loss=cfg.loss.replace(
      content_layers=small_runs.CONTENT_LAYERS, style_layers=small_runs.STYLE_LAYERS
    )
  )


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path, images, caffe_npz):
  content, style = images
  out = tmp_path / 'o.png'
  run(_cfg(content, style, out, caffe_npz))
  with pytest.raises(
    errors.NstError, match=r'loss.style_weight differs \(checkpoint 0.01, now 0.5\)'
  ):
    run(_cfg(content, style, out, caffe_npz, style_weight=0.5, resume=True))
  with pytest.raises(errors.NstError, match='optim.name differs'):
    run(_cfg(content, style, out, caffe_npz, optimizer='adam', resume=True))
  with pytest.raises(errors.NstError, match="the content image's pixels differ from the checkp"):
    run(_cfg(style, style, out, caffe_npz, resume=True))
  # Another width changes every pixel digest too; the width is what is named.
  with pytest.raises(errors.NstError, match=r'inputs.width differs \(checkpoint 32, now 40\)'):
    run(_cfg(content, style, out, caffe_npz, width=40, resume=True))
  # More iterations extend the same run.
  before = out.read_bytes()
  run(_cfg(content, style, out, caffe_npz, iterations=6, resume=True))
  assert checkpoint_lib.read(checkpoint_lib.path_for(out))['iteration'] == 6
  assert out.read_bytes() != before


@pytest.mark.slow
def test_unfinished_checkpoint_is_never_overwritten(tmp_path, images, caffe_npz):
  content, style = images
  out = tmp_path / 'o.png'
  ckpt = checkpoint_lib.path_for(out)
  run(_cfg(content, style, out, caffe_npz))
  # Make it look interrupted: a run of 10 stopped after 4.
  _edit_meta(ckpt, total=10)
  with pytest.raises(errors.NstError, match=r'holds an unfinished run \(4 of 10 iterations\)'):
    run(_cfg(content, style, out, caffe_npz))
  # Default naming treats a checkpointed name as taken.
  directory = tmp_path / 'auto'
  directory.mkdir()
  (directory / 'c_s.ckpt').write_bytes(b'x')
  assert default_output_path('c.png', 's.png', str(directory)).name == 'c_s_2.png'


def test_finished_run_deletes_its_checkpoint_unless_kept(tmp_path, images, caffe_npz):
  content, style = images
  out = tmp_path / 'o.png'
  run(_cfg(content, style, out, caffe_npz, keep_checkpoint=False))
  assert out.exists() and not checkpoint_lib.path_for(out).exists()
  run(_cfg(content, style, tmp_path / 'k.png', caffe_npz))
  assert checkpoint_lib.read(checkpoint_lib.path_for(tmp_path / 'k.png'))['iteration'] == 4


def test_resume_at_the_end_keeps_the_record_and_fewer_iterations_are_refused(
  tmp_path, images, caffe_npz
):
  """Trial 10 (b)1: a smaller -i ended an unfinished run at once, deleted its checkpoint and wrote
  an empty record. Now refused before anything is touched; as many as it holds gives the result
  again, with the whole run's record (the history travels in the checkpoint).
  """
  from nst_jax.cli import spelling

  content, style = images
  out = tmp_path / 'k.png'
  ckpt, record = checkpoint_lib.path_for(out), tmp_path / 'k.json'
  run(_cfg(content, style, out, caffe_npz, print_iter=1))
  first = json.loads(record.read_text())
  assert [e['iteration'] for e in first['history']] == [0, 1, 2, 3, 4]
  run(_cfg(content, style, out, caffe_npz, resume=True))  # print_iter 50: no entry of its own
  again = json.loads(record.read_text())
  drop = lambda h: [{k: v for k, v in e.items() if k != 'time_s'} for e in h]  # noqa: E731
  assert drop(again['history']) == drop(first['history'])
  assert again['final_losses'] == first['final_losses']
  # Made to look interrupted: 4 of a run of 10.
  meta = checkpoint_lib.read(ckpt)
  _edit_meta(ckpt, total=10, extra={**meta['extra'], 'iterations': 10})
  files = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  with pytest.raises(errors.ResumeMismatch) as e:
    run(_cfg(content, style, out, caffe_npz, iterations=2, resume=True))
  assert str(e.value) == (
    f'cannot resume from {ckpt}: it holds 4 of 10 iterations, more than schedule.iterations 2; '
    'resume with schedule.iterations 10 (or more), or without run.resume and another save.path '
    'to start over'
  )
  assert spelling.for_command_line(str(e.value)) == (
    f'cannot resume from {ckpt}: it holds 4 of 10 iterations, more than -i/--iterations 2; '
    'resume with -i/--iterations 10 (or more), or without --resume and another --output to '
    'start over'
  )
  assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == files


def test_missing_or_damaged_checkpoint(tmp_path, images, caffe_npz):
  content, style = images
  out = tmp_path / 'o.png'
  with pytest.raises(errors.NstError) as e:
    run(_cfg(content, style, out, caffe_npz, resume=True))
  assert str(e.value) == (  # trial 28: the run may have had a run.checkpoint_dir
    f'no checkpoint {tmp_path / "o.ckpt"} to resume (or give the run.checkpoint_dir it ran with); '
    'run without run.resume to start'
  )
  run(_cfg(content, style, out, caffe_npz, iterations=2, keep_checkpoint=False))
  with pytest.raises(errors.NstError) as e:  # trial 34: said 'no checkpoint', of a finished run
    run(_cfg(content, style, out, caffe_npz, resume=True))
  assert str(e.value) == (
    f'{out} is finished (its run record says so) and its checkpoint was not kept; run without '
    'run.resume to make it again (run.keep_checkpoint keeps one)'
  )
  checkpoint_lib.path_for(out).write_bytes(b'\x00garbage')
  with pytest.raises(errors.NstError, match='is unreadable|is not an nst-jax checkpoint'):
    run(_cfg(content, style, out, caffe_npz, resume=True))


@pytest.mark.slow
def test_non_finite_loss_keeps_the_last_finite_checkpoint(tmp_path, caffe_npz):
  rng = np.random.default_rng(0)
  content = rng.uniform(size=(16, 16, 3)).astype(np.float32)
  style = rng.uniform(size=(16, 16, 3)).astype(np.float32)
  # Adam's first step moves every pixel by ~1e30: finite, but the next
  # forward pass overflows float32.
  cfg = flat_config(
    iterations=5, optimizer='adam', learning_rate=1e30, print_iter=1, checkpoint_every=1
  )
  ckpt = tmp_path / 'x.ckpt'
  with pytest.raises(errors.NstError) as e:
    stylize(content, style, config=cfg, weights=caffe_npz, checkpoint=ckpt)
  assert 'non-finite at iteration 2; the last finite state is in' in str(e.value)
  assert '(iteration 1)' in str(e.value)
  payload = checkpoint_lib.read(ckpt)
  assert payload['iteration'] == 1
  state = checkpoint_lib.read_state(ckpt)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))


def _fill_disk(monkeypatch):
  """Makes orbax's array writes fail as on a full disk (after writing a little)."""
  import errno

  handler = type(orbax_local._process_local_numpy_handler())

  async def full_disk(self, value, tspec, ts_context):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(handler, '_open_and_write', full_disk)


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  path = tmp_path / 'run.ckpt'
  state = {'image': np.ones((1, 4, 4, 3), np.float32)}
  checkpoint_lib.save(path, state=state, iteration=3, total=9, settings={})
  before = _digests(path)
  _fill_disk(monkeypatch)
  with pytest.raises(errors.WriteError, match='No space left') as e:
    checkpoint_lib.save(
      path, state={'image': np.zeros((1, 4, 4, 3))}, iteration=4, total=9, settings={}
    )
  assert '\n' not in str(e.value)
  # The first save of a checkpoint fails alike, and leaves nothing.
  with pytest.raises(errors.WriteError, match='No space left'):
    checkpoint_lib.save(tmp_path / 'new.ckpt', state=state, iteration=1, total=9, settings={})
  monkeypatch.undo()
  assert _digests(path) == before
  assert checkpoint_lib.read(path)['iteration'] == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ['run.ckpt']  # no temporary left


def _digests(path: Path) -> dict[str, bytes]:
  """Every file of a checkpoint (a file, or a directory) by its path, with its bytes."""
  if path.is_file():
    return {'': path.read_bytes()}
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}


def _edit_meta(path: Path, *, sign: bool = True, **fields) -> None:
  """Sets (or with None deletes) fields of a format-2 checkpoint's newest metadata.

  `sign`: its SHA-256 made again, as a writer of such a meta would have (else the edit is
  damage, which the digest catches first).
  """
  step = max((p for p in path.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  meta_file = step / orbax_local.META_ITEM / orbax_local.META_FILE
  meta = json.loads(meta_file.read_text())
  for name, value in fields.items():
    if value is None:
      del meta[name]
    else:
      meta[name] = value
  if sign:
    meta[orbax_local.META_DIGEST] = orbax_local._meta_digest(meta)
  meta_file.write_text(json.dumps(meta))


# ---------------------------------------------------------------------------
# Damaged and foreign checkpoints (issue 21): one line naming the checkpoint,
# what is wrong and the fix; the checkpoint itself is left as it was. Both
# formats: a format-1 file (the old writer's msgpack) and a format-2 directory.


def _like():
  """A state like the engine's: an image and an optimiser state with a counter."""
  return {
    'image': np.zeros((6, 8, 3), np.float32),
    'opt_state': {'count': np.zeros((), np.int32), 's': np.zeros((5, 6, 8, 3), np.float32)},
  }


def _saved(tmp_path, change=None, **fields):
  """A format-1 checkpoint of `_like()` (the old writer's): its state changed by `change`, its
  fields set (None: deleted)."""
  import flax.serialization

  path = tmp_path / 'o.ckpt'
  payload = checkpoint_lib.snapshot(_like(), iteration=3, total=9, settings={'a': 1})
  checkpoint_v1.write(path, payload)
  payload = flax.serialization.msgpack_restore(path.read_bytes())
  if change is not None:
    change(payload['state'])
  for name, value in fields.items():
    if value is None:
      del payload[name]
    else:
      payload[name] = value
  path.write_bytes(flax.serialization.msgpack_serialize(payload))
  return path


def _saved_v2(tmp_path, change=None, **fields):
  """As `_saved`, a format-2 checkpoint (a directory of orbax steps)."""
  path = tmp_path / 'o.ckpt'
  state = _like()
  if change is not None:
    change(state)
  checkpoint_lib.save(path, state=state, iteration=3, total=9, settings={'a': 1})
  if fields:
    _edit_meta(path, **fields)
  return path


def _restore_error(path):
  before = _digests(path)
  with pytest.raises(errors.NstError) as e:
    checkpoint_lib.restore(path, like=_like(), settings={'a': 1})
  assert _digests(path) == before
  assert '\n' not in str(e.value)
  return str(e.value)


@pytest.mark.parametrize('saved', [_saved, _saved_v2])
def test_restore_round_trip(tmp_path, saved):
  state, iteration = checkpoint_lib.restore(saved(tmp_path), like=_like(), settings={'a': 1})
  assert iteration == 3
  assert jax.tree.structure(state) == jax.tree.structure(_like())


def _drop_s(state):
  del state['opt_state']['s']


def _add_mu(state):
  state['opt_state']['mu'] = np.zeros(3, np.float32)


def _reshape_image(state):
  state['image'] = np.zeros((8, 6, 3), np.float32)


def _widen_count(state):
  state['opt_state']['count'] = np.zeros((), np.int64)


def _text_leaf(state):
  state['opt_state']['s'] = 'not an array'


def _flat_opt_state(state):
  state['opt_state'] = np.zeros(3, np.float32)


STATE_DAMAGE = {
  'missing-leaf': (_drop_s, 'state/opt_state lacks s'),
  'unexpected-leaf': (_add_mu, 'state/opt_state has unexpected mu'),
  'shape': (_reshape_image, 'state/image has shape (8, 6, 3), expected (6, 8, 3)'),
  'dtype': (_widen_count, 'state/opt_state/count is int64, expected int32'),
  'not-an-array': (_text_leaf, 'state/opt_state/s is a str, not an array'),
  'not-a-mapping': (_flat_opt_state, 'state/opt_state is a ndarray, not a mapping'),
}


# A leaf that is not an array exists only in the old format: orbax saves arrays only.
@pytest.mark.parametrize(
  'saved,damage',
  [(_saved, d) for d in STATE_DAMAGE]
  + [(_saved_v2, d) for d in STATE_DAMAGE if d != 'not-an-array'],
)
def test_state_of_another_layout_is_refused(tmp_path, damage, saved):
  change, problem = STATE_DAMAGE[damage]
  path = saved(tmp_path, change)
  if saved is _saved_v2 and damage == 'not-a-mapping':
    problem = problem.replace('ndarray', 'ArrayMetadata')  # read from orbax's metadata
  assert _restore_error(path) == (
    f'checkpoint {path} does not fit this run: {problem}; delete it to start over, or resume '
    'with the settings that wrote it'
  )


FIELD_DAMAGE = {
  'no-iteration': ({'iteration': None}, 'its iteration field is missing'),
  'text-total': ({'total': '9'}, 'its total field is a str, not an integer'),
  'negative-scale': ({'scale': -1}, 'its scale field is -1'),
  'state-list': ({'state': [1, 2]}, 'its state field is a list, not a mapping'),
  'settings-not-json': ({'settings': '{"a": '}, 'its settings field is not a JSON object'),
  'extra-a-list': ({'extra': '[1]'}, 'its extra field is not a JSON object'),
  'history': ({'extra': '{"best": ["x"]}'}, 'its convergence history is not a list of numbers'),
  'converged': ({'extra': '{"converged": "yes"}'}, 'its converged flag is not true or false'),
}
# Format 2 keeps settings and extra as JSON objects in its metadata file.
META_DAMAGE = {
  'no-iteration': ({'iteration': None}, 'its iteration field is missing'),
  'text-total': ({'total': '9'}, 'its total field is a str, not an integer'),
  'negative-scale': ({'scale': -1}, 'its scale field is -1'),
  'settings-text': ({'settings': '{"a": 1}'}, 'its settings field is not a JSON object'),
  'extra-a-list': ({'extra': [1]}, 'its extra field is not a JSON object'),
  'history': ({'extra': {'best': ['x']}}, 'its convergence history is not a list of numbers'),
  'converged': ({'extra': {'converged': 'yes'}}, 'its converged flag is not true or false'),
  'format': ({'format': 1}, 'its format field is 1, not 2'),
}


# Format 1's payload fields and format 2's metadata fields, refused alike.
@pytest.mark.parametrize(
  'saved,fields,problem',
  [pytest.param(_saved, *FIELD_DAMAGE[d], id=f'v1-{d}') for d in FIELD_DAMAGE]
  + [pytest.param(_saved_v2, *META_DAMAGE[d], id=f'v2-{d}') for d in META_DAMAGE],
)
def test_a_bad_field_is_refused(tmp_path, saved, fields, problem):
  path = saved(tmp_path, **fields)
  message = f'checkpoint {path} is damaged ({problem}); delete it to start over'
  assert _restore_error(path) == message


@pytest.mark.parametrize('keep', [0.5, 0.999])
def test_truncated_checkpoint_is_refused(tmp_path, keep):
  path = _saved(tmp_path)
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * keep)])
  assert _restore_error(path) == (
    f'checkpoint {path} is unreadable (damaged or cut short: Unpack failed: incomplete input); '
    'delete it to start over, or move it away if it is a file of yours'
  )


def _cut_arrays(path):
  """Cuts every array data file of a format-2 checkpoint to half its size."""
  for data in path.rglob('*'):
    if data.parent.name == 'd' and data.is_file():
      data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _remove(relative):
  return lambda path: (path / relative).unlink()


def _not_json(path):
  (path / '0' / 'meta' / 'metadata').write_text('{"iteration": ')


def _no_steps(path):
  import shutil

  shutil.rmtree(path / '0')


DIRECTORY_DAMAGE = {
  'cut-arrays': (_cut_arrays, r'its state in 0/ cannot be read: '),
  'no-tree-metadata': (_remove('0/state/_METADATA'), r'its state in 0/ cannot be read: '),
  'no-manifest': (_remove('0/state/manifest.ocdbt'), r'its state in 0/ cannot be read: '),
  'no-metadata': (_remove('0/meta/metadata'), r'0/meta/metadata is missing'),
  'metadata-not-json': (_not_json, r'0/meta/metadata is not JSON'),
  'no-step': (_no_steps, r'it holds no committed step'),
}


@pytest.mark.parametrize('damage', DIRECTORY_DAMAGE)
def test_a_damaged_checkpoint_directory_is_refused_in_one_line(tmp_path, damage):
  cut, problem = DIRECTORY_DAMAGE[damage]
  path = _saved_v2(tmp_path)
  cut(path)
  message = _restore_error(path)
  assert re.fullmatch(
    rf'checkpoint {re.escape(str(path))} is damaged \({problem}.*\); delete it to start over',
    message,
  ), message


def test_a_directory_that_is_not_a_checkpoint_is_refused_and_kept(tmp_path):
  from nst_jax.runs import output_plan

  path = tmp_path / 'o.ckpt'
  path.mkdir()
  (path / 'notes.txt').write_text('mine')
  (path / '3.orbax-checkpoint-tmp').mkdir()  # orbax's name, but not in a directory of ours
  before = _digests(path)
  assert _restore_error(path) == (
    f'{path} is not an nst-jax checkpoint (it is a directory that nst-jax did not write), and '
    'this output keeps its checkpoint under that name; move it away'
  )
  plan = [output_plan.image_output(tmp_path / 'o.png')]
  with pytest.raises(errors.NstError, match=r'o\.ckpt is not an nst-jax checkpoint \(it is a'):
    output_plan.check(plan, inputs={}, overwrite=True)
  with pytest.raises(errors.WriteError, match='it is a directory that nst-jax did not write'):
    checkpoint_lib.save(path, state=_like(), iteration=1, total=2, settings={})
  checkpoint_lib.remove(path)  # as a finished run does: someone's directory stays
  with output_plan.locked(plan):  # litter removal: only in directories of ours
    pass
  assert _digests(path) == before and (path / '3.orbax-checkpoint-tmp').is_dir()
  # With our marker but a file of someone's inside: not ours either.
  (path / 'nst-jax-checkpoint.json').write_text('{}')
  with pytest.raises(errors.NstError, match=r'\(it holds notes\.txt, which nst-jax does not'):
    checkpoint_lib.read(path)


def _shrink_history(state):
  # An L-BFGS memory of 20 pairs where this run keeps 30.
  state['opt_state']['s'] = state['opt_state']['s'][:20]


def test_resume_from_a_damaged_checkpoint_keeps_every_file(tmp_path, images, caffe_npz):
  import shutil

  content, style = images
  out = tmp_path / 'out' / 'o.png'
  ckpt = checkpoint_lib.path_for(out)
  run(_cfg(content, style, out, caffe_npz))
  payload = checkpoint_lib.read(ckpt)
  state = checkpoint_lib.read_state(ckpt)
  good = tmp_path / 'good.ckpt'
  shutil.copytree(ckpt, good)
  _shrink_history(state)

  def shrunk():  # the same run's checkpoint, with another L-BFGS memory
    checkpoint_lib.remove(ckpt)
    checkpoint_lib.write(ckpt, {**payload, 'state': state})

  def shrunk_v1():  # the same, written by the format-1 writer
    checkpoint_lib.remove(ckpt)
    checkpoint_v1.write(ckpt, {**payload, 'state': state})

  def cut_v1():
    shrunk_v1()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])

  def cut():
    checkpoint_lib.remove(ckpt)
    shutil.copytree(good, ckpt)
    _cut_arrays(ckpt)

  layout = (
    f'checkpoint {ckpt} does not fit this run: state/opt_state/s has shape (20, 24, 32, 3), '
    'expected (30, 24, 32, 3); delete it to start over, or resume with the settings that '
    'wrote it'
  )
  cases = [
    (shrunk, layout),
    (shrunk_v1, layout),
    (
      cut_v1,
      f'checkpoint {ckpt} is unreadable (damaged or cut short: Unpack failed: incomplete '
      'input); delete it to start over, or move it away if it is a file of yours',
    ),
    (cut, f'checkpoint {ckpt} is damaged (its state in '),
  ]
  for damage, message in cases:
    damage()
    before = _digests(out.parent)
    with pytest.raises(errors.NstError) as e:
      run(_cfg(content, style, out, caffe_npz, iterations=6, resume=True))
    assert str(e.value).startswith(message) and '\n' not in str(e.value), str(e.value)
    assert _digests(out.parent) == before


def test_a_save_that_fails_before_any_was_written_says_none_is_kept(
  tmp_path, caffe_npz, monkeypatch, caplog
):
  rgb = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
  from nst_jax import config as config_lib

  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=2),
    run=config_lib.RunConfig(print_iter=0, checkpoint_every=1),
  )
  ckpt = tmp_path / 'x.ckpt'

  def write(path, payload):
    raise errors.WriteError(f'could not write {path}: No space left on device')

  monkeypatch.setattr(checkpoint_lib, 'write', write)
  stylize(rgb, rgb, config=cfg, weights=caffe_npz, checkpoint=ckpt)
  said = [r.getMessage() for r in caplog.records if 'could not write' in r.getMessage()]
  # It said "the previous checkpoint is kept" with none written (trial 24 N3).
  none = 'No space left on device; the run goes on (no checkpoint is written yet)'
  assert said == [f'could not write {ckpt}: {none}'] * 2
  assert not ckpt.exists()


def test_a_stop_whose_checkpoint_cannot_be_written_names_the_one_kept(
  tmp_path, caffe_npz, monkeypatch, caplog
):
  # Two scales of 3 iterations: the first scale's last checkpoint (iteration
  # 3) is written; the save at a stop in the second scale fails as on a full
  # disk (the writer warns and the run goes on). The message said 'saved
  # x.ckpt' there, and counted the kept one from the second scale's start.
  from nst_jax import config as config_lib

  rgb = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=6, scales=2),
    run=config_lib.RunConfig(print_iter=0),
  )
  ckpt = tmp_path / 'x.ckpt'
  polls = []

  def should_stop():
    polls.append(1)
    return 15 if len(polls) == 5 else None  # after iteration 5, the second scale's 2nd

  real_write = checkpoint_lib.write

  def write(path, payload):
    if payload['scale'] == 1:
      raise errors.WriteError(f'could not write {path}: No space left on device')
    return real_write(path, payload)

  monkeypatch.setattr(checkpoint_lib, 'write', write)
  with pytest.raises(errors.Interrupted) as e:
    stylize(rgb, rgb, config=cfg, weights=caffe_npz, checkpoint=ckpt, should_stop=should_stop)
  assert str(e.value) == (
    f'interrupted by signal 15 after iteration 5; the checkpoint {ckpt} could not be written at '
    'iteration 5 and holds iteration 3: continue from there with config.run.resume=True'
  )
  # It said "the previous checkpoint is kept" also where none was written (trial 24 N3).
  said = [r.getMessage() for r in caplog.records if 'could not write' in r.getMessage()]
  assert said == [
    f'could not write {ckpt}: No space left on device; the run goes on (the checkpoint of '
    'iteration 3 is kept)'
  ]
  payload = checkpoint_lib.read(ckpt)
  assert (payload['scale'], payload['iteration']) == (0, 3)


def test_a_kept_checkpoint_claims_only_the_result_it_was_kept_with(tmp_path, images, caffe_npz):
  """Trial 26: with no record, a kept checkpoint claimed whatever file was at the result's name."""
  content, style = images
  out = tmp_path / 'r.png'
  cfg = _cfg(content, style, out, caffe_npz, iterations=2, record=False)
  run(cfg)
  noted = checkpoint_store.noted_result(tmp_path / 'r.ckpt')
  assert noted == (output_names.file_sha256(out), str(out.resolve()))
  kept = out.read_bytes()
  out.write_bytes(b'my picture')
  for resume in (False, True):
    with pytest.raises(errors.NstError) as e:
      run(cfg.replace(run=cfg.run.replace(resume=resume)))
    assert str(e.value) == (
      f'{out} exists and no nst-jax run record says nst-jax wrote it; move it away, or replace '
      'it with save.overwrite'
    )
    assert out.read_bytes() == b'my picture'
  out.write_bytes(kept)
  # Trial 28: the pair copied elsewhere (cp -a out backup) was claimed there too.
  import shutil

  copy = tmp_path / 'backup'
  copy.mkdir()
  shutil.copy(out, copy / 'r.png')
  shutil.copytree(tmp_path / 'r.ckpt', copy / 'r.ckpt')
  with pytest.raises(errors.NstError, match=r'r\.png exists and no nst-jax run record says'):
    run(cfg.replace(save=cfg.save.replace(path=str(copy / 'r.png'))))
  run(cfg)  # its own result: replaced by the rerun
  assert out.read_bytes() == kept


def test_a_rerun_keeps_claiming_or_removes_what_an_earlier_run_wrote(tmp_path, images, caffe_npz):
  """Trial 26: a rerun left an earlier run's intermediates nobody's (the next --save_iter run
  said nst-jax had not written them), and with --norecord its record, loss plot and sheet
  beside a result they do not describe."""
  content, style = images
  out = tmp_path / 'r.png'

  def rerun(**changes):
    run(_cfg(content, style, out, caffe_npz, keep_checkpoint=False, **changes))
    return json.loads((tmp_path / 'r.json').read_text()) if changes.get('record', True) else None

  every = ['r_00001.png', 'r_00002.png', 'r_00003.png']
  assert rerun(save_iter=1)['intermediates'] == every
  record = rerun(save_iter=2)  # of 4 iterations: r_00002 only; the others are the first run's
  assert (record['intermediates'], record['earlier_intermediates']) == (
    ['r_00002.png'],
    ['r_00001.png', 'r_00003.png'],
  )
  record = rerun()  # none: every one still claimed, as the earlier runs'
  assert (record['intermediates'], record['earlier_intermediates']) == ([], every)
  record = rerun(save_iter=1)  # was refused: "no nst-jax run record says nst-jax wrote it"
  assert (record['intermediates'], record['earlier_intermediates']) == (every, [])
  rerun(record=False, save_iter=2)  # trial 28: the earlier run's were left, nobody's
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('r')) == [
    'r.png',
    'r_00002.png',  # this run's own (unclaimed: no record)
  ]


def test_a_record_that_cannot_be_written_leaves_the_result_unreplaced(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 28: a disk full after the result left it without its record; the rerun then called
  nst-jax's own result someone's. The record is written first, the result renamed after."""

  content, style = images
  out = tmp_path / 'r.png'
  cfg = _cfg(content, style, out, caffe_npz, iterations=2, keep_checkpoint=False)
  run(cfg)
  before = _digests(tmp_path)
  real = atomic.write

  def full(path, write, **kwargs):
    if Path(path).suffix == '.json':
      raise errors.WriteError(f'could not write {path}: No space left on device')
    return real(path, write, **kwargs)

  monkeypatch.setattr(atomic, 'write', full)
  other = cfg.replace(loss=cfg.loss.replace(style_weight=1.0))
  with pytest.raises(errors.WriteError, match=r'r\.json: No space left on device'):
    run(other)
  after = {k: v for k, v in _digests(tmp_path).items() if not k.startswith('r.ckpt/')}
  assert after == before  # neither the result nor its record replaced (the checkpoint is kept)
  monkeypatch.setattr(atomic, 'write', real)
  run(other)  # the rerun takes its own result, as before the full disk
  assert json.loads((tmp_path / 'r.json').read_text())['settings']['loss']['style_weight'] == 1.0


def test_a_checkpoint_save_cut_short_leaves_no_temporary_directory(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 28: a full disk left `.r.ckpt.nst-XXXXXXXX.tmp/` (orbax wrote into it after the
  failed save was cleaned up); the run removes its temporaries again when it ends."""
  content, style = images
  out = tmp_path / 'r.png'

  def cut_short(path, payload):
    left = Path(path).with_name(f'.{Path(path).name}.nst-abcd1234.tmp') / '0.orbax-checkpoint-tmp'
    left.mkdir(parents=True, exist_ok=True)
    (left / 'part').write_bytes(b'half a state')
    raise errors.WriteError(f'could not write {path}: No space left on device')

  monkeypatch.setattr(checkpoint_lib, 'write', cut_short)
  run(_cfg(content, style, out, caffe_npz, iterations=2, keep_checkpoint=False))
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(('r', '.r'))) == [
    'r.json',
    'r.loss.png',
    'r.png',
    'r.sheet.jpg',
  ]


def test_a_resumed_record_claims_the_image_its_stop_saved(tmp_path, images, caffe_npz, caplog):
  """Trial 28: the stop's NAME_<k>.png was nobody's after a resume, and a folder batch into
  its own folder then styled it as a photo."""
  content, style = images
  out = tmp_path / 'r.png'
  run(_cfg(content, style, out, caffe_npz))  # 4 iterations, the checkpoint kept
  ckpt = checkpoint_lib.path_for(out)
  meta = checkpoint_lib.read(ckpt)
  _edit_meta(ckpt, total=10, extra={**meta['extra'], 'iterations': 10})  # stopped at 4 of 10
  (tmp_path / 'r_00004.png').write_bytes(out.read_bytes())  # the image its stop saved ...
  images = {'r_00004.png': output_names.file_sha256(tmp_path / 'r_00004.png')}
  checkpoint_store.note_images(ckpt, images)  # ... noted in its checkpoint, as a stop does
  # Trial 30: by name, a resume claimed a user's picture at such a name, which a later run
  # replaced without --overwrite.
  (tmp_path / 'r_00003.png').write_bytes(b'a picture of mine, not noted')
  for name in ('r.png', 'r.json', 'r.loss.png', 'r.sheet.jpg'):  # as a stopped run leaves it
    (tmp_path / name).unlink()
  caplog.set_level('INFO')
  run(_cfg(content, style, out, caffe_npz, iterations=10, resume=True))
  assert json.loads((tmp_path / 'r.json').read_text())['intermediates'] == ['r_00004.png']
  # The time is this process's: it said '10 iterations' in the time of 6.
  assert re.search(
    rf'Done: {re.escape(str(out))} in \S+ s, 6 iterations since the resume,', caplog.text
  )
  # Trial 32 W3: a new run over the kept checkpoint kept the earlier run's noted images, and
  # after its own stop and resume its record listed them as its own.
  assert checkpoint_store.noted_images(ckpt) == images
  run(_cfg(content, style, out, caffe_npz, iterations=6, style_weight=0.5))
  assert checkpoint_store.noted_images(ckpt) == {}
  record = json.loads((tmp_path / 'r.json').read_text())
  assert (record['intermediates'], record['earlier_intermediates']) == ([], ['r_00004.png'])


def test_a_resume_takes_the_start_image_by_its_pixels_not_its_paths_spelling(
  tmp_path, images, caffe_npz, monkeypatch
):
  """Trial 34 Y11: --init ./i.jpg refused the resume of a run started with its absolute path."""
  content, style = images
  out = tmp_path / 'r.png'
  run(_cfg(content, style, out, caffe_npz, init=str(style)))  # 4 iterations, the checkpoint kept
  ckpt = checkpoint_lib.path_for(out)
  meta = checkpoint_lib.read(ckpt)
  _edit_meta(ckpt, total=10, extra={**meta['extra'], 'iterations': 10})  # stopped at 4 of 10
  for name in ('r.png', 'r.json', 'r.loss.png', 'r.sheet.jpg'):
    (tmp_path / name).unlink()
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.ResumeMismatch, match="the start image's pixels differ"):
    run(_cfg(content, style, out, caffe_npz, iterations=10, resume=True, init='in/c.png'))
  run(_cfg(content, style, out, caffe_npz, iterations=10, resume=True, init='./in/s.png'))
  assert checkpoint_lib.read(ckpt)['iteration'] == 10


def test_an_image_saved_over_an_intermediate_is_not_replaced(tmp_path, images, caffe_npz):
  """Trial 28: records claimed intermediates by name only, and a rerun replaced the user's
  picture saved over r_00002.png without --overwrite."""
  content, style = images
  out = tmp_path / 'r.png'
  cfg = _cfg(content, style, out, caffe_npz, save_iter=1, keep_checkpoint=False)
  run(cfg)
  record = json.loads((tmp_path / 'r.json').read_text())
  assert sorted(record['intermediates_sha256']) == ['r_00001.png', 'r_00002.png', 'r_00003.png']
  (tmp_path / 'r_00002.png').write_bytes(b'my picture')
  with pytest.raises(errors.NstError) as e:
    run(cfg)
  assert str(e.value) == (
    f'{tmp_path / "r_00002.png"} exists, beside r.png, and no nst-jax run record says nst-jax '
    'wrote it; choose another output name, or replace it with save.overwrite'
  )
  assert (tmp_path / 'r_00002.png').read_bytes() == b'my picture'


def test_a_stop_notes_the_images_it_saved_in_its_checkpoint(tmp_path):
  """What a resume claims and a folder of inputs leaves out: by digest (trial 30)."""
  from nst_jax import config as config_lib
  from nst_jax.io import jobs as jobs_lib
  from nst_jax.runs import results as results_lib

  out = tmp_path / 'a_s.png'
  ckpt = checkpoint_lib.path_for(out)
  state = {'image': np.zeros((1, 2, 2, 3), np.float32)}
  checkpoint_lib.write(ckpt, checkpoint_lib.snapshot(state, iteration=7, total=30, settings={}))
  results = results_lib.Results(config_lib.StyleConfig(), None, {0: out}, {0: None})
  rgb = np.full((2, 2, 3), 0.5, np.float32)
  with pytest.raises(errors.Interrupted), results.noting_stops():
    results.intermediate(7, {0: rgb})
    raise errors.Interrupted('interrupted by signal 15 after iteration 7', 15)
  stop = tmp_path / 'a_s_00007.png'
  assert checkpoint_store.noted_images(ckpt) == {stop.name: output_names.file_sha256(stop)}
  Image.new('RGB', (2, 2)).save(tmp_path / 'a.png')  # a photo
  assert jobs_lib.expand(str(tmp_path), what='inputs.content_path') == [str(tmp_path / 'a.png')]
  stop.write_bytes(b'saved over by the user')  # theirs now: a photo again
  assert len(jobs_lib.expand(str(tmp_path), what='inputs.content_path')) == 2
  # Trial 32: a user's r_00004.png at a planned name was claimed by name on resume; once a stop
  # has noted its images, only those are the run's.
  from nst_jax.runs import output_plan

  (tmp_path / 'a_s_00004.png').write_bytes(b'a picture of mine')
  plan = output_plan.image_output(out, save_iter=2, iterations=30, checkpoint=ckpt)
  with pytest.raises(errors.NstError, match=r'a_s_00004\.png exists, beside a_s\.png, and no '):
    output_plan.check([plan], inputs={})
  # Trial 34: the resume, killed after its checkpoint of 11, wrote 8 and 10; since trial 36 it
  # notes each as it writes it, and those are its own, after a kill too; no other is.
  (tmp_path / 'a_s_00004.png').unlink()
  checkpoint_lib.write(ckpt, checkpoint_lib.snapshot(state, iteration=11, total=30, settings={}))
  for k in (8, 10):
    Image.new('RGB', (2, 2)).save(tmp_path / f'a_s_{k:05d}.png')
  with pytest.raises(errors.NstError, match=r'a_s_00008\.png exists, beside a_s\.png, and no '):
    output_plan.check([plan], inputs={})
  checkpoint_store.note_images(ckpt, {f'a_s_{k:05d}.png': output_names.file_sha256(
    tmp_path / f'a_s_{k:05d}.png') for k in (8, 10)})  # fmt: skip
  output_plan.check([plan], inputs={})
  # And with run.checkpoint_dir: the folder of inputs looks there (its stop image was styled).
  bucket = tmp_path / 'bucket'
  elsewhere = tmp_path / 'b' / 'a_s.png'
  elsewhere.parent.mkdir()
  stop2 = elsewhere.with_name('a_s_00007.png')
  Image.new('RGB', (2, 2)).save(stop2)
  far = checkpoint_lib.path_for(elsewhere, bucket)
  checkpoint_lib.write(far, checkpoint_lib.snapshot(state, iteration=7, total=30, settings={}))
  checkpoint_store.note_images(far, {stop2.name: output_names.file_sha256(stop2)})
  Image.new('RGB', (2, 2)).save(elsewhere.with_name('photo.png'))
  found = jobs_lib.expand(str(stop2.parent), what='c', checkpoint_dir=str(bucket))
  assert found == [str(elsewhere.with_name('photo.png'))]


def test_a_changed_digit_in_a_checkpoints_meta_is_damage(tmp_path):
  """Trial 36 H3: "iteration": 7 -> 6 in the meta resumed to another result, exit 0."""
  ckpt = tmp_path / 'r.ckpt'
  state = {'image': np.zeros((1, 2, 2, 3), np.float32)}
  checkpoint_lib.write(ckpt, checkpoint_lib.snapshot(state, iteration=7, total=30, settings={}))
  assert checkpoint_lib.read(ckpt)['iteration'] == 7
  _edit_meta(ckpt, sign=False, iteration=6)
  with pytest.raises(errors.NstError) as e:
    checkpoint_lib.read(ckpt)
  assert str(e.value) == (
    f'checkpoint {ckpt} is damaged (0/meta/metadata is not what was saved (its SHA-256 '
    'differs)); delete it to start over'
  )
