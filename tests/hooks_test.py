"""Tests for nst_jax.engine.hooks: what runs around the loop, driven by a stand-in step.

The stand-in step adds 1 to every pixel and reports losses given per
iteration, so each hook can be checked against the values it was handed.
"""

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_runs

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core.step import StyleState
from nst_jax.engine import hooks
from nst_jax.engine import loop
from nst_jax.engine import schedule
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.runs.arrays import stylize

# Per iteration (1-based), per row: the total loss the stand-in step reports.
TOTALS = {k: [10.0 * k, 1.0 / k] for k in range(1, 8)}


def _step(state, params, targets):
  """Every pixel + 1; the losses of TOTALS at the iteration the image counts."""
  del params, targets
  k = int(state.image[0, 0, 0, 0]) + 1
  total = jnp.asarray(TOTALS[k])
  losses = {'total': total, 'content': total / 2, 'style': total / 4, 'tv': jnp.zeros(2)}
  return StyleState(state.image + 1, None), losses


def _state(rows=2):
  return StyleState(jnp.zeros((rows, 2, 3, 3)), None)


class _Events(loop.Hook):
  def __init__(self, log):
    self.log = log

  def after_step(self, view):
    self.log.append(('events', view.iteration))


class _Monitor:
  """A live view that asks for every other iteration."""

  def __init__(self, log):
    self.log = log
    self.calls = 0
    self.updates = []

  def due(self):
    self.calls += 1
    return self.calls % 2 == 1

  def update(self, iteration, losses, rgb, *, scale):
    self.log.append(('monitor', iteration))
    self.updates.append((iteration, losses, rgb, scale))


def test_hooks_run_in_order_with_the_values_given():
  log = []
  history = hooks.History(print_iter=2, rows=(0, 1), t0=0.0)
  saved = {}

  def save(iteration, images):
    log.append(('intermediates', iteration))
    saved[iteration] = images

  monitor = _Monitor(log)
  sequence = [
    history,
    hooks.Intermediates(2, save),
    _Events(log),
    hooks.Monitor(monitor, 1, lambda x, r: x * 0 + r),
  ]
  info = loop.LoopInfo(start=0, total=5, scale=1, scales=2, offset=10, rows=(0, 1))
  scored = []

  def score(state):  # the final image's losses, its image kept (the engine's held step)
    scored.append(np.asarray(state.image).copy())
    return state, _step(state, None, None)[1]

  result = loop.run_loop(_step, _state(), None, None, info=info, hooks=sequence, score=score)
  # Each iteration, the hooks in the order given; intermediates every 2 but
  # not at the last (the caller saves the result), the monitor when due.
  assert log == [
    ('events', 1),
    ('monitor', 11),
    ('intermediates', 12),
    ('events', 2),
    ('events', 3),
    ('monitor', 13),
    ('intermediates', 14),
    ('events', 4),
    ('events', 5),
    ('monitor', 15),
  ]
  # Intermediates get every row's network-space image at that iteration.
  assert sorted(saved[12]) == [0, 1]
  np.testing.assert_array_equal(saved[14][1], np.full((2, 3, 3), 4.0))
  # The monitor: row 1's losses, its image through to_rgb, the scale from 1.
  iteration, losses, rgb, scale = monitor.updates[1]
  assert (iteration, scale) == (13, 2)
  assert losses == pytest.approx({'total': 1 / 3, 'content': 1 / 6, 'style': 1 / 12, 'tv': 0.0})
  np.testing.assert_array_equal(rgb, np.ones((2, 3, 3)))
  # Scored once, after the last iteration, on the final image (5 updates).
  assert len(scored) == 1 and np.all(scored[0] == 5.0)
  np.testing.assert_array_equal(result.state.image, np.full((2, 2, 3, 3), 5.0))
  # History: entry k holds the losses of the image after k updates (across
  # scales): the start (call 1 reports it), every 2, and the scored result.
  # The step at call c reports TOTALS[c], its image's after c - 1 updates.
  for row in (0, 1):
    entries = history.history[row]
    assert [(e['scale'], e['iteration']) for e in entries] == [(1, k) for k in (10, 12, 14, 15)]
    assert [e['total'] for e in entries] == pytest.approx([TOTALS[k][row] for k in (1, 3, 5, 6)])
    assert [e['style'] for e in entries] == pytest.approx(
      [TOTALS[k][row] / 4 for k in (1, 3, 5, 6)]
    )
    assert all(e['time_s'] > 0 for e in entries)


def test_a_stop_is_scored_at_the_scales_end_only_and_a_nan_score_is_an_error():
  """A stop before the end records the last image read (trial 18), kept from checkpoints;
  one at the end scores the result, as a finished scale (trial 17)."""
  for stop_at, scored, entries in ((3, [], [0, 2]), (5, [1], [0, 5])):
    history = hooks.History(print_iter=10, rows=(0, 1), t0=0.0)
    info = loop.LoopInfo(start=0, total=5, rows=(0, 1))
    calls = []

    def score(state, calls=calls):
      calls.append(1)
      return state, _step(state, None, None)[1]

    stops = iter([None] * (stop_at - 1) + [signal.SIGTERM])
    result = loop.run_loop(
      _step, _state(), None, None, info=info, hooks=[history], score=score,
      should_stop=lambda stops=stops: next(stops),
    )  # fmt: skip
    assert (result.reason, result.iteration, calls) == ('signal', stop_at, scored)
    assert [e['iteration'] for e in history.history[0]] == entries
    # The checkpoint's entries are an uninterrupted run's: the stop's is the record's alone.
    assert [e['iteration'] for e in history.kept(0)] == entries[: 1 if stop_at < 5 else 2]

  def nan_score(state):
    return state, {k: jnp.full(2, jnp.nan) for k in ('total', 'content', 'style', 'tv')}

  with pytest.raises(errors.NonFinite) as err:
    loop.run_loop(_step, _state(), None, None, info=info, score=nan_score)
  assert err.value.iteration == 5


def _checkpoints(tmp_path, every=2, **kwargs):
  kwargs.setdefault('settings', {0: {'width': 3}})
  kwargs.setdefault('extra', lambda row: {'best': [float(row)]})
  return hooks.Checkpoints(
    {0: tmp_path / 'a.ckpt'},  # row 1 is a filler: no file
    every=every,
    finite=lambda image: np.asarray(hooks.rows_finite(image)),
    row_states=lambda state: {r: {'image': np.asarray(x)} for r, x in enumerate(state.image)},
    **kwargs,
  )


def test_checkpoints_save_every_so_often_and_at_the_last(tmp_path):
  ckpt = _checkpoints(tmp_path)
  info = loop.LoopInfo(start=0, total=5, scale=0, scales=2, offset=0, rows=(0,))
  loop.run_loop(_step, _state(), None, None, info=info, hooks=[ckpt])
  assert ckpt.last_saved == 5
  payload = checkpoint_lib.read(tmp_path / 'a.ckpt')
  fields = ('iteration', 'total', 'scale', 'scales')
  assert [payload[k] for k in fields] == [5, 5, 0, 2]
  assert payload['settings'] == {'width': 3}
  # The convergence history, and the scale's offset for a resume's check of -i.
  assert checkpoint_lib.extra(payload) == {'best': [0.0], 'offset': 0}
  state = checkpoint_lib.read_state(tmp_path / 'a.ckpt')
  np.testing.assert_array_equal(state['image'], np.full((2, 3, 3), 5.0))


def test_a_non_finite_image_never_replaces_a_good_checkpoint(tmp_path):
  def step(state, params, targets):
    state, losses = _step(state, params, targets)
    if int(state.image[0, 0, 0, 0]) == 3:  # row 0 breaks at iteration 3
      state = StyleState(state.image.at[0, 1, 2, 0].set(jnp.nan), None)
    return state, losses

  ckpt = _checkpoints(tmp_path)
  info = loop.LoopInfo(start=0, total=6, offset=20, rows=(0,))
  # Checked when a save is due (4): the iteration is numbered across scales.
  with pytest.raises(errors.NonFinite, match='iteration 24;'):
    loop.run_loop(step, _state(), None, None, info=info, hooks=[ckpt])
  assert ckpt.last_saved == 22  # numbered across scales, as the message says it
  assert checkpoint_lib.read(tmp_path / 'a.ckpt')['iteration'] == 2


def test_kept_names_what_the_checkpoints_hold(tmp_path):
  one = _checkpoints(tmp_path)
  assert one.kept() == f'no checkpoint was written to {tmp_path / "a.ckpt"}: a rerun starts afresh'
  one.last_saved = one.last_tried = 4
  assert (
    one.kept()
    == f'the checkpoint {tmp_path / "a.ckpt"} holds iteration 4: continue with run.resume'
  )
  both = hooks.Checkpoints(
    {0: tmp_path / 'a.ckpt', 1: tmp_path / 'b.ckpt'}, every=2, settings={}, finite=None,
    row_states=None, resume_as='--resume',
  )  # fmt: skip
  both.last_saved, both.last_tried = 4, 6  # the stop's save failed (a full disk)
  assert both.kept() == (
    f'the checkpoints {tmp_path / "a.ckpt"}, {tmp_path / "b.ckpt"} could not be written at '
    'iteration 6 and hold iteration 4: continue from there with --resume'
  )


class _Clock:
  """A clock the stand-in step moves by 2 s per iteration."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _saved_iterations(tmp_path, clock, sync=loop.host_sync, **kwargs):
  """Runs 25 iterations of 2 s each on `clock`, checkpointing with `kwargs`."""

  def step(state, params, targets):
    clock.now += 2.0
    zeros = jnp.zeros(2)
    return StyleState(state.image + 1, None), dict.fromkeys(('total', 'content', 'style', 'tv'),
                                                            zeros)  # fmt: skip

  ckpt = hooks.Checkpoints(
    {0: tmp_path / 'a.ckpt'},
    settings={0: {}},
    finite=lambda image: np.asarray(hooks.rows_finite(image)),
    row_states=lambda state: {r: {'image': np.asarray(x)} for r, x in enumerate(state.image)},
    clock=clock,
    **kwargs,
  )
  info = loop.LoopInfo(start=0, total=25, rows=(0,))
  loop.run_loop(step, _state(), None, None, info=info, hooks=[ckpt], sync=sync)
  assert checkpoint_lib.read(tmp_path / 'a.ckpt')['iteration'] == 25


def test_checkpoints_by_seconds_as_well_as_by_iterations(tmp_path, monkeypatch):
  iterations = []
  real_snapshot = checkpoint_lib.snapshot

  def snapshot(state, **kwargs):
    iterations.append(kwargs['iteration'])
    return real_snapshot(state, **kwargs)

  monkeypatch.setattr(checkpoint_lib, 'snapshot', snapshot)
  # 2 s per iteration: every 7 s is every 4th iteration after the last save,
  # counted again from each save, whatever saved it; and the last.
  _saved_iterations(tmp_path, _Clock(), every=10, seconds=7.0)
  assert iterations == [4, 8, 10, 14, 18, 20, 24, 25]
  iterations.clear()
  _saved_iterations(tmp_path, _Clock(), every=0, seconds=0.0)
  assert iterations == [25]  # neither: only the last


def test_several_processes_agree_on_time_in_the_read_of_the_losses(tmp_path, monkeypatch):
  iterations, flags = [], []
  real_snapshot = checkpoint_lib.snapshot

  def snapshot(state, **kwargs):
    iterations.append(kwargs['iteration'])
    return real_snapshot(state, **kwargs)

  def sync(pending, flag):  # as JobsLayout.sync: another process's clock says due at 20
    flags.append(flag)
    host, _ = loop.host_sync(pending, flag)
    return host, np.asarray([flag, loop.SAVE_DUE if len(flags) == 20 else 0])

  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(checkpoint_lib, 'snapshot', snapshot)
  _saved_iterations(tmp_path, _Clock(), every=0, seconds=50.0, sync=sync)
  # The wish travels in the flag of each read (one per iteration here), with
  # no collective of its own; this clock (2 s an iteration) never said due.
  assert flags == [0] * 25
  assert iterations == [20, 25]


def test_a_run_of_several_scales_counts_from_the_last_checkpoint_of_the_scale_before(
  tmp_path, monkeypatch
):
  # Each scale has its own Checkpoints. Counted from each scale's start, the
  # time test waited out the next scale's compile again (here 30 s) and a
  # stop's message lost the checkpoint the scale before had written.
  clock = _Clock()

  def step(state, params, targets):
    clock.now += 2.0
    zeros = jnp.zeros(2)
    return StyleState(state.image + 1, None), dict.fromkeys(('total', 'content', 'style', 'tv'),
                                                            zeros)  # fmt: skip

  snapshots = []
  real_snapshot = checkpoint_lib.snapshot

  def snapshot(state, **kwargs):
    snapshots.append((kwargs['scale'][0], kwargs['iteration']))
    return real_snapshot(state, **kwargs)

  monkeypatch.setattr(checkpoint_lib, 'snapshot', snapshot)
  saved, previous = [], None
  for scale, compile_s in ((0, 0.0), (1, 30.0)):
    clock.now += compile_s
    ckpt = _checkpoints(
      tmp_path,
      every=0,
      settings={0: {}},
      extra=None,
      seconds=40.0,
      clock=clock,
      last_saved=None if previous is None else previous.last_saved,
      t_saved=None if previous is None else previous.t_saved,
    )
    info = loop.LoopInfo(start=0, total=10, scale=scale, scales=2, offset=10 * scale, rows=(0,))
    loop.run_loop(step, _state(), None, None, info=info, hooks=[ckpt])
    saved.append(ckpt.last_saved)
    previous = ckpt
    if scale == 0:
      # Before any save at the second scale, the first one's is the last.
      assert (ckpt.last_saved, ckpt.t_saved) == (10, 20.0)
  # Scale 2: the last save was at 20 s and its loop starts at 50 s, so a
  # save is due at 60 s, its iteration 5 (counted from 50 s: iteration 20,
  # never reached); then its last.
  assert snapshots == [(0, 10), (1, 5), (1, 10)]
  assert saved == [10, 20]


def test_a_checkpoint_by_time_waits_for_a_read_so_its_convergence_history_is_current(tmp_path):
  """With the losses read every 5 iterations, a save by time comes at a read.

  A checkpoint keeps the convergence history (extra['best']) beside the
  state: saved between reads, its history would end iterations before its
  state, and a resumed run would test convergence over other iterations
  than an uninterrupted one.
  """
  clock = _Clock()
  convergence = schedule.Convergence(tol=1e-9, window=3, rows=(0,), n_rows=2)

  def step(state, params, targets):
    clock.now += 2.0
    k = int(state.image[0, 0, 0, 0]) + 1
    total = jnp.asarray([100.0 / k, 1.0])
    losses = {'total': total, 'content': total, 'style': total, 'tv': jnp.zeros(2)}
    return StyleState(state.image + 1, None), losses

  saved = []
  real_write = checkpoint_lib.write

  def write(path, payload):  # the extra is filled in when the write is submitted
    saved.append((payload['iteration'], payload['extra']['best']))
    return real_write(path, payload)

  ckpt = _checkpoints(
    tmp_path,
    every=0,
    settings={0: {}},
    extra=convergence.state,
    seconds=7.0,
    clock=clock,
  )
  info = loop.LoopInfo(start=0, total=12, rows=(0,))
  with pytest.MonkeyPatch.context() as m:
    m.setattr(checkpoint_lib, 'write', write)
    loop.run_loop(step, _state(), None, None, info=info, hooks=[ckpt], converged=convergence,
                  sync_every=5)  # fmt: skip
  # Due by time from iteration 4 (8 s); saved at the reads 5 and 10 and the last.
  assert [it for it, _ in saved] == [5, 10, 12]
  for it, best in saved:  # each history ends at its own iteration's loss
    assert best[-1] == pytest.approx(100.0 / it)


def test_a_background_write_is_in_order_and_its_error_reaches_the_run():
  writer = checkpoint_lib.Writer()
  order, release = [], threading.Event()

  def slow():
    release.wait(10)
    order.append('first')

  writer.submit(slow)
  assert order == []  # the run goes on while it writes
  release.set()
  writer.submit(lambda: order.append('second'))  # waits for the first
  writer.wait()
  assert order == ['first', 'second']
  writer.submit(lambda: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    writer.wait()
  writer.wait()  # raised once


def test_a_snapshot_is_its_own_copy_and_writes_what_save_writes(tmp_path):
  image = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
  state = StyleState(jnp.asarray(image), {'s': jnp.ones((2, 3))})
  fields = dict(iteration=3, total=9, settings={'w': 1}, scale=(1, 2), extra={'best': [1.0]})
  payload = checkpoint_lib.snapshot(state, **fields)
  host = np.asarray(state.image)
  if host.flags.writeable:  # a view of the device buffer would change the payload
    host[...] = -1
  checkpoint_lib.write(tmp_path / 'bg.ckpt', payload)
  checkpoint_lib.save(tmp_path / 'fg.ckpt', state=StyleState(jnp.asarray(image),
                      {'s': jnp.ones((2, 3))}), **fields)  # fmt: skip
  bg, fg = tmp_path / 'bg.ckpt', tmp_path / 'fg.ckpt'
  assert checkpoint_lib.read(bg) == checkpoint_lib.read(fg)
  for a, b in zip(*(jax.tree.leaves(checkpoint_lib.read_state(p)) for p in (bg, fg)), strict=True):
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_rows_finite_is_per_row():
  image = np.ones((3, 2, 2, 3), np.float32)
  image[1, 0, 1, 2] = np.inf
  image[2, 1, 0, 0] = np.nan
  np.testing.assert_array_equal(hooks.rows_finite(jnp.asarray(image)), [True, False, False])


def test_make_progress_picks_the_kind():
  log = hooks.make_progress('log', 7, prefix='p: ')
  assert isinstance(log, hooks.LogProgress) and (log.print_iter, log.prefix) == (7, 'p: ')
  assert isinstance(hooks.make_progress('bar', 7), hooks.BarProgress)


def test_progress_lines_name_the_scale_and_the_jobs(caplog):
  caplog.set_level('INFO')
  progress = hooks.LogProgress(print_iter=2, prefix='process 1: ')
  loop.run_loop(
    lambda s, p, t: (s + 1, {'total': jnp.asarray([4.0, 2.0]), 'content': jnp.ones(2),
                             'style': jnp.ones(2), 'tv': jnp.zeros(2)}),
    0, None, None,
    info=loop.LoopInfo(0, 3, scale=1, scales=2, rows=(0, 1)),
    hooks=[progress],
  )  # fmt: skip
  lines = [r.getMessage() for r in caplog.records]
  # Iteration 2 (read at 3); the last is never scored here (no `score`), so no line claims it.
  assert len(lines) == 1
  assert lines[0].startswith('process 1: scale 2/2  iteration 2/3  2 jobs  loss 3 ')


@pytest.mark.slow
def test_progress_bar_and_log_lines(caffe_npz, capsys):
  # Under pytest stderr is not a terminal: 'auto' gives plain lines.
  assert isinstance(hooks.make_progress('auto', 50), hooks.LogProgress)
  assert isinstance(hooks.make_progress('bar', 50), hooks.BarProgress)
  rgb = np.random.default_rng(5).uniform(size=(32, 32, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=6, scales=2),
    run=config_lib.RunConfig(progress='bar'),
  )
  record = {}
  stylize(rgb, rgb, config=cfg, weights=caffe_npz, record=record)
  err = capsys.readouterr().err
  # One bar per scale, each ending at 3/3 with the loss and the rate.
  assert 'scale 1/2' in err and 'scale 2/2' in err
  assert err.count('3/3') >= 2 and 'loss=' in err and ('it/s' in err or 's/it' in err)
  # The bar's last loss is the result's, as the record's last entry.
  import re

  last = re.findall(r'loss=(\S+?)[\]\s,]', err)[-1]
  assert last == f'{record["history"][-1]["total"]:.4g}', (last, record['history'][-1])


def test_the_last_log_line_reports_the_result_the_record_does(caffe_npz, caplog):
  """Trial 14: 'iteration 3/3 loss 5744' (the image after 2 updates) while Done said 4756."""
  import logging
  import re

  rgb = np.random.default_rng(6).uniform(size=(32, 32, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=3),
    run=config_lib.RunConfig(progress='log', print_iter=1),
  )
  record = {}
  with caplog.at_level(logging.INFO):
    stylize(rgb, rgb, config=cfg, weights=caffe_npz, record=record)
  lines = [r.getMessage() for r in caplog.records if 'iteration ' in r.getMessage()]
  got = [float(re.search(r'  loss (\S+)', line).group(1)) for line in lines]
  assert [line.split('  ')[0] for line in lines] == [f'iteration {k}/3' for k in (1, 2, 3)]
  # The record's history: entry k is the image after k updates, the last the result.
  history = {e['iteration']: e['total'] for e in record['history']}
  assert sorted(history) == [0, 1, 2, 3]
  # Each line is the image after as many updates as it says (trial 16: 'iteration 1' was the
  # untouched start, content 0).
  assert got == pytest.approx([history[1], history[2], history[3]], rel=1e-4)
  # Stopped after two updates, never scored: the last line is the last image scored, under its
  # own iteration (trial 17: iteration 1's losses were repeated as iteration 2).
  caplog.clear()
  asked = iter([False, True])
  with caplog.at_level(logging.INFO), pytest.raises(errors.NstError):
    stylize(rgb, rgb, config=cfg, weights=caffe_npz, should_stop=lambda: next(asked, True))
  lines = [r.getMessage() for r in caplog.records if 'iteration ' in r.getMessage()]
  assert [line.split('  ')[0] for line in lines] == ['iteration 1/3']
  assert float(re.search(r'  loss (\S+)', lines[0]).group(1)) == pytest.approx(history[1], rel=1e-4)
