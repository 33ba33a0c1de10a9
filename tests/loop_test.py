"""Tests for nst_jax.engine.loop: the one loop, and what its hooks see (hooks_test: the hooks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import errors
from nst_jax.engine import loop


def test_is_time():
  assert [i for i in range(1, 11) if loop.is_time(i, 4, 10)] == [4, 8, 10]
  assert not any(loop.is_time(i, 0, 10) for i in range(1, 11))


def _step(state, params, targets):
  """A stand-in step: the state counts iterations; the loss is a schedule of values."""
  del params
  losses = {'total': jnp.asarray([targets[int(state)]]), 'content': jnp.zeros(1)}
  return state + 1, losses


class Recorder(loop.Hook):
  def __init__(self, read=False):
    self.events = []
    self.read = read

  def begin(self, info):
    self.events.append(('begin', info.start, info.total))

  def after_step(self, view):
    if self.read:
      view.losses()
    self.events.append(('after', view.iteration, view.last, view.reason, view.stopping))

  def end(self, view):
    self.events.append(('end', None if view is None else view.iteration))


def test_hooks_see_every_iteration_and_the_last():
  rec = Recorder()
  result = loop.run_loop(
    _step, 0, None, [5.0, 4.0, 3.0, 2.0], info=loop.LoopInfo(start=1, total=4), hooks=[rec]
  )
  assert result.iteration == 4 and result.reason == 'iterations' and result.state == 3
  assert rec.events == [
    ('begin', 1, 4),
    ('after', 2, False, None, None),
    ('after', 3, False, None, None),
    ('after', 4, True, 'iterations', None),
    ('end', 4),
  ]


def test_a_signal_ends_the_loop_after_the_hooks_saw_it():
  polls = iter([None, 15, None])
  rec = Recorder()
  result = loop.run_loop(
    _step,
    0,
    None,
    [1.0] * 9,
    info=loop.LoopInfo(start=0, total=9),
    hooks=[rec],
    should_stop=lambda: next(polls),
  )
  assert (result.iteration, result.reason, result.signum) == (2, 'signal', 15)
  assert rec.events[-2:] == [('after', 2, True, 'signal', 15), ('end', 2)]


def test_convergence_ends_the_loop_and_non_finite_losses_raise():
  falling_then_flat = [100.0 / (k + 1) for k in range(10)] + [10.0] * 20

  def converged(view):
    return view.losses()['total'][0] == 10.0

  result = loop.run_loop(
    _step, 0, None, falling_then_flat, info=loop.LoopInfo(0, 30), converged=converged
  )
  assert (result.iteration, result.reason) == (10, 'converged')  # 100 / 10 at iteration 10

  rec = Recorder(read=True)
  with pytest.raises(errors.NonFinite, match='iteration 3;'):
    loop.run_loop(_step, 0, None, [3.0, 2.0, np.nan, 1.0], info=loop.LoopInfo(0, 4), hooks=[rec])
  assert rec.events[-1] == ('end', 2)  # hooks are closed on the way out (the last view seen)


class _CountingSync:
  """A `sync` that records the iterations each call brought and the flags it carried."""

  def __init__(self):
    self.calls = []

  def __call__(self, pending, flag):
    self.calls.append((len(pending), flag))
    return loop.host_sync(pending, flag)


class _Polls(list):
  """A `should_stop` that never stops and counts its calls."""

  def append_none(self):
    self.append(1)


class _Shows(loop.Hook):
  """Process 0's hooks in a multi-process run: a bar and a live view, each reading the losses."""

  def __init__(self):
    self.seen = []

  def after_step(self, view):
    if view.synced:
      self.seen.append((view.iteration, float(view.losses()['total'][0])))


def _rows_step(state, params, targets):
  # Row 1 is a filler whose loss is NaN: never read as a failure.
  del params, targets
  return state + 1, {'total': jnp.asarray([state + 1.0, np.nan]), 'content': jnp.zeros(2)}


@pytest.mark.parametrize('processes', [1, 2])
def test_one_sync_per_iteration_whatever_hooks_a_process_has(monkeypatch, processes):
  # Two processes run the same collectives only if each sync happens at the
  # same iterations on both, whichever hooks either has (issue 26: process
  # 0's bar read the losses alone, a collective process 1 never joined).
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  counts = []
  for hooks in ([], [_Shows(), _Shows(), loop.Hook()]):
    sync = _CountingSync()
    polls = _Polls()
    loop.run_loop(
      _rows_step, 0, None, None, info=loop.LoopInfo(0, 5, rows=(0,)), hooks=hooks, sync=sync,
      should_stop=polls.append_none,
    )  # fmt: skip
    counts.append((sync.calls, len(polls)))
    for hook in hooks[:2]:
      assert hook.seen == [(k, float(k)) for k in range(1, 6)]
  # One sync per iteration, each with that iteration's losses and the flag:
  # the same with or without hooks.
  assert counts[0] == counts[1] == ([(1, 0)] * 5, 5)


@pytest.mark.parametrize('processes', [1, 2])
def test_reading_every_k_iterations_reads_each_iteration_once(monkeypatch, processes):
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  sync = _CountingSync()
  shows = _Shows()
  polls = []
  synced = []

  class Synced(loop.Hook):
    def after_step(self, view):
      if view.synced:
        synced.append([i for i, _ in view.history()])

  loop.run_loop(
    _rows_step, 0, None, None, info=loop.LoopInfo(0, 10, rows=(0,)), hooks=[shows, Synced()],
    sync=sync, sync_every=4, sync_also=(6,), should_stop=lambda: polls.append(1),
  )  # fmt: skip
  # Every 4th, every 6th and the last: four syncs for ten iterations.
  assert synced == [[1, 2, 3, 4], [5, 6], [7, 8], [9, 10]]
  assert [n for n, _ in sync.calls] == [4, 2, 2, 2]
  assert shows.seen == [(4, 4.0), (6, 6.0), (8, 8.0), (10, 10.0)]
  # One process polls its own flag (no collective) after every iteration;
  # several only at a sync, where the flag travels with the losses.
  assert len(polls) == (10 if processes == 1 else 4)


def test_a_signal_between_syncs_stops_one_process_at_once():
  polls = iter([None, 15])
  sync = _CountingSync()
  result = loop.run_loop(
    _rows_step, 0, None, None, info=loop.LoopInfo(0, 10, rows=(0,)), sync=sync, sync_every=4,
    should_stop=lambda: next(polls),
  )  # fmt: skip
  assert (result.iteration, result.reason, result.signum) == (2, 'signal', 15)
  assert sync.calls == [(2, 15)]


def test_non_finite_losses_read_later_name_their_own_iteration():
  with pytest.raises(errors.NonFinite, match='iteration 3;'):
    loop.run_loop(
      _step, 0, None, [3.0, 2.0, np.nan, 1.0, 1.0], info=loop.LoopInfo(0, 5), sync_every=4
    )


class _FailsAt(loop.Hook):
  """A hook that raises at one iteration (an intermediate image that cannot be written)."""

  def __init__(self, at):
    self.at = at

  def after_step(self, view):
    if view.iteration == self.at:
      raise errors.WriteError(f'could not write x_{view.iteration}.png: Permission denied')


def test_a_hook_failure_stops_the_loop_at_the_next_read_after_the_hooks_saw_it():
  # One process reads after every iteration: the failure at 3 makes 4 the
  # last, which the hooks see as such (a checkpoint is saved), then it raises.
  rec = Recorder()
  sync = _CountingSync()
  with pytest.raises(errors.WriteError, match='x_3.png'):
    loop.run_loop(
      _rows_step, 0, None, None, info=loop.LoopInfo(0, 10, rows=(0,)), hooks=[_FailsAt(3), rec],
      sync=sync, sync_every=5,
    )  # fmt: skip
  # The hook after the failing one still ran at 3 (its collectives, if any,
  # stay in step with the other processes'); 4 was read at once, flagged.
  assert rec.events[1:] == [
    ('after', 1, False, None, None),
    ('after', 2, False, None, None),
    ('after', 3, False, None, None),
    ('after', 4, True, 'failed', None),
    ('end', 4),
  ]
  assert sync.calls == [(4, loop.FAILED)]


def test_several_processes_agree_a_failure_in_the_next_read_and_share_it_after(monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  sync = _CountingSync()
  agreed = []

  def agree(error):  # as distributed.agree: every process's error, shared
    agreed.append(error)
    if error is not None:
      raise errors.NstError(f'process 0: {error}')

  rec = Recorder()
  with pytest.raises(errors.NstError, match=r'^process 0: could not write x_2.png'):
    loop.run_loop(
      _rows_step, 0, None, None, info=loop.LoopInfo(0, 10, rows=(0,)), hooks=[_FailsAt(2), rec],
      sync=sync, sync_every=4, agree=agree,
    )  # fmt: skip
  # Several processes read only at the iterations they all share (every
  # 4th): the failure at 2 travels with the read at 4, the last everywhere.
  assert sync.calls == [(4, loop.FAILED)]
  assert rec.events[-2:] == [('after', 4, True, 'failed', None), ('end', 4)]
  assert len(agreed) == 1 and isinstance(agreed[0], errors.WriteError)


def test_another_process_failure_ends_this_one_at_the_same_read(monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  agreed = []

  def agree(error):
    agreed.append(error)
    raise errors.NstError('process 1: could not write y_6.png')

  calls = []

  def counting_sync(pending, flag):
    calls.append(flag)
    host, flags = loop.host_sync(pending, flag)
    return host, np.asarray([*flags, loop.FAILED if len(calls) == 2 else 0])

  rec = Recorder()
  with pytest.raises(errors.NstError, match='^process 1: could not write y_6.png$'):
    loop.run_loop(
      _rows_step, 0, None, None, info=loop.LoopInfo(0, 12, rows=(0,)), hooks=[rec],
      sync=counting_sync, sync_every=4, agree=agree,
    )  # fmt: skip
  assert calls == [0, 0]
  assert rec.events[-2:] == [('after', 8, True, 'failed', None), ('end', 8)]
  assert agreed == [None]  # this process had nothing to share, and learns the other's


def test_merge_flags_takes_the_largest_signal_and_any_bit():
  assert loop.merge_flags([0, 0]) == (0, 0)
  assert loop.merge_flags([15, 2 | loop.FAILED, loop.SAVE_DUE]) == (15, loop.FAILED | loop.SAVE_DUE)
  # As JobsLayout's read brings them: float32, one per row.
  table = np.asarray([1.0, 15.0 + loop.SAVE_DUE], np.float32)
  assert loop.merge_flags(table) == (15, loop.SAVE_DUE)
