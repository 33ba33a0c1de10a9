"""Tests for nst_jax.engine.loop: the one loop, and what its hooks see (hooks_test: the hooks)."""

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
  assert rec.events[-1] == ('end', 3)  # hooks are closed on the way out


def test_losses_are_fetched_once_per_iteration_and_fillers_are_ignored():
  calls = []

  def gather(tree):
    calls.append(1)
    return {k: np.asarray(v) for k, v in tree.items()}

  def step(state, params, targets):
    # Row 1 is a filler whose loss is NaN: never read as a failure.
    return state + 1, {'total': jnp.asarray([1.0, np.nan]), 'content': jnp.zeros(2)}

  both = [Recorder(read=True), Recorder(read=True)]
  loop.run_loop(step, 0, None, None, info=loop.LoopInfo(0, 3, rows=(0,)), hooks=both, gather=gather)
  assert len(calls) == 3
