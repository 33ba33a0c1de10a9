"""Tests for nst_jax.engine.schedule: stages, the iteration split, and the convergence test."""

import numpy as np
import pytest

import nst_jax
from nst_jax.engine import schedule


def test_scale_widths_are_sqrt2_apart_ending_at_the_width():
  assert schedule.scale_widths(1024) == (1024,)
  assert schedule.scale_widths(1024, scales=4) == (362, 512, 724, 1024)
  # min_width: as many scales as keep the coarsest at least that wide.
  assert schedule.scale_widths(1024, min_width=256) == (256, 362, 512, 724, 1024)
  assert schedule.scale_widths(1024, min_width=257) == (362, 512, 724, 1024)
  assert schedule.scale_widths(300, min_width=400) == (300,)


def test_split_is_exact_proportional_and_never_zero():
  assert schedule.split(300, [4, 2, 1]) == (171, 86, 43)
  assert schedule.split(3, [1, 1]) == (1, 2)  # a tie goes to the finer scale
  assert schedule.split(10, [1, 1, 1]) == (3, 3, 4)
  assert schedule.split(2, [1, 1, 1]) == (0, 1, 1)  # fewer iterations than scales
  for total in range(1, 60):
    counts = schedule.split(total, [3, 2, 1.5, 1])
    assert sum(counts) == total and (min(counts) >= 1 or total < 4)


def test_plan_never_exceeds_the_iterations():
  one = nst_jax.ScheduleConfig(iterations=50, scales=1)
  assert schedule.plan(1024, one) == (schedule.Stage(1024, 50),)
  three = nst_jax.ScheduleConfig(iterations=10, scales=3)
  assert schedule.plan(512, three) == (
    schedule.Stage(256, 3),
    schedule.Stage(362, 3),
    schedule.Stage(512, 4),
  )
  # Two iterations for three scales: the coarsest is dropped.
  assert [s.width for s in schedule.plan(512, three.replace(iterations=2))] == [362, 512]
  by_width = nst_jax.ScheduleConfig(iterations=100, min_width=300)
  assert [s.width for s in schedule.plan(1024, by_width)] == [362, 512, 724, 1024]
  # Three explicit scales at several widths: w / sqrt(2)^2, w / sqrt(2), w,
  # and 301 = 100 + 100 + 101 (the remainder to the finest).
  for width in (64, 256, 1000, 4096):
    stages = schedule.plan(width, nst_jax.ScheduleConfig(iterations=301, scales=3))
    want = [round(width / 2), round(width / np.sqrt(2)), width]
    assert stages == tuple(map(schedule.Stage, want, (100, 100, 101))), (width, stages)
  assert [s.width for s in schedule.plan(4096, three)] == [2048, 2896, 4096]
  assert [s.width for s in schedule.plan(1000, three)] == [500, 707, 1000]


def test_the_automatic_schedule_is_one_scale_today():
  # AUTO_MAX_SCALES is 1 (see its measurements): every width gets one stage.
  for width in (64, 256, 512, 1024, 2048, 4096):
    auto = nst_jax.ScheduleConfig(iterations=300)
    assert schedule.plan(width, auto) == (schedule.Stage(width, 300),), width


def test_the_automatic_schedule_with_several_scales(monkeypatch):
  """The automatic branch as it would run with AUTO_MAX_SCALES 3 and coarser shares 1/2.

  Widths: the finest three of width / sqrt(2)^k that are at least
  AUTO_MIN_WIDTH (256); iterations in proportion 1/4 : 1/2 : 1 after one
  each, rounded by largest remainders.
  """
  monkeypatch.setattr(schedule, 'AUTO_MAX_SCALES', 3)
  monkeypatch.setattr(schedule, 'AUTO_COARSER_SHARE', 0.5)
  auto = nst_jax.ScheduleConfig(iterations=70)
  # 67 after one each: 67 * (1, 2, 4) / 7 = 9.57, 19.14, 38.29; +1 each gives
  # 10, 20, 39 (69), and the largest remainder (0.57, the coarsest) takes the 70th.
  assert schedule.plan(1024, auto) == (
    schedule.Stage(512, 11),
    schedule.Stage(724, 20),
    schedule.Stage(1024, 39),
  )
  # 2048 / sqrt(2)^k >= 256 for k = 0..6: the finest three.
  assert [s.width for s in schedule.plan(2048, auto)] == [1024, 1448, 2048]
  # 362 / sqrt(2) = 256: two scales; 300 / sqrt(2) = 212 < 256: one.
  assert [s.width for s in schedule.plan(362, auto)] == [256, 362]
  assert schedule.plan(300, auto) == (schedule.Stage(300, 70),)
  # Two scales, shares 1/2 : 1 of 68: 22.67 + 1 and 45.33 + 1 -> 24 and 46.
  assert [s.iterations for s in schedule.plan(362, auto)] == [24, 46]


class _View:
  """A sync at `iteration` that read the totals of `totals_by_iteration` (or of this one)."""

  def __init__(self, iteration, totals=None, *, read=None):
    self.iteration = iteration
    if read is None:
      read = [(iteration, totals)]
    self._read = [(i, {'total': np.asarray(t, np.float64)}) for i, t in read]

  def history(self):
    return self._read


def _falling(k):
  """Row 0 falls until iteration 20, then is flat; row 1 falls 2% per 10 iterations
  until 40; row 2 is a filler (never looked at)."""
  return [100.0 * 0.9 ** min(k, 20), 100.0 * 0.98 ** (min(k, 40) / 10), np.nan]


def test_convergence_holds_each_row_once_its_loss_stops_falling():
  conv = schedule.Convergence(tol=0.01, window=10, rows=(0, 1), n_rows=3)
  done, held = [], {}
  for k in range(1, 61):
    done.append(conv(_View(k, _falling(k))))
    active = conv.newly_held()  # what the step is told, once per change
    if active is not None:
      held[k] = list(active)
  # Row 0 converges 10 iterations after its loss stopped changing; row 1 when
  # its last 10 iterations fell by under 1%: at 46, since 0.98^-0.4 - 1 = 0.8%.
  assert conv.stopped_at == {0: 30, 1: 46}
  assert list(conv.active) == [False, False, True]
  assert done.index(True) == 45 and conv.all_converged()
  assert held == {30: [False, True, True], 46: [False, False, True]}
  assert conv.newly_held() is None
  # What a checkpoint keeps is enough to continue exactly.
  again = schedule.Convergence(tol=0.01, window=10, rows=(0, 1), n_rows=3)
  for r in (0, 1):
    state = conv.state(r)
    assert len(state['best']) == 11
    again.restore(r, state['best'], state['converged'])
  assert list(again.active) == [False, False, True]
  assert not schedule.Convergence(0.0, 10)(_View(1, [1.0]))  # tol 0: never


def test_convergence_read_every_k_iterations_holds_rows_at_the_next_read():
  # The losses of 8 iterations read at once (loop.run_loop's sync_every=8):
  # the same test over the same losses, so the rows pass it at iterations
  # 30 and 46 as when read one by one, and are held from the reads after
  # them, 32 and 48: at most k - 1 = 7 iterations later.
  conv = schedule.Convergence(tol=0.01, window=10, rows=(0, 1), n_rows=3)
  done = []
  for end in range(8, 61, 8):
    read = [(k, _falling(k)) for k in range(end - 7, end + 1)]
    done.append((end, conv(_View(end, read=read))))
  assert conv.stopped_at == {0: 32, 1: 48}
  assert [end for end, d in done if d] == [48, 56]
  # What a checkpoint keeps is what one-by-one reading kept: the history
  # stops at the iteration the test passed.
  one_by_one = schedule.Convergence(tol=0.01, window=10, rows=(0, 1), n_rows=3)
  for k in range(1, 61):
    one_by_one(_View(k, _falling(k)))
  assert conv.state(0) == one_by_one.state(0) and conv.state(1) == one_by_one.state(1)


@pytest.mark.slow
@pytest.mark.parametrize('optimizer', ['lbfgs', 'adam'])
def test_a_held_image_gets_what_it_would_get_alone(caffe_npz, optimizer):
  """In a batch, an image that converges early is held while the other goes on.

  Image E (the style image itself as the content) converges long before
  image L. In the batch [E, L], E is held from its convergence until L's;
  in the batch [E, E] the stage ends when E converges. E's result is
  bitwise the same in both (a batch's rows are independent problems, and
  holding keeps the pixels exactly).
  """
  rng = np.random.default_rng(7)
  late = rng.uniform(size=(32, 32, 3)).astype(np.float32)
  style = rng.uniform(size=(32, 32, 3)).astype(np.float32)
  cfg = nst_jax.StyleConfig(
    schedule=nst_jax.ScheduleConfig(iterations=80, scales=1, tol=0.05, window=5),
    optim=nst_jax.OptimConfig(name=optimizer, learning_rate=4.0),
    run=nst_jax.RunConfig(print_iter=1),
  )
  records = [{}, {}]
  el = nst_jax.stylize(
    np.stack([style, late]), style, config=cfg, weights=caffe_npz, record=records[0]
  )
  ee = nst_jax.stylize(
    np.stack([style, style]), style, config=cfg, weights=caffe_npz, record=records[1]
  )
  np.testing.assert_array_equal(el[0], ee[0])
  (with_late,), (without,) = records[0]['scales'], records[1]['scales']
  assert with_late['stopped'] == without['stopped'] == 'converged'
  assert without['iterations'] + 10 < with_late['iterations'] < 80  # E was held a while


@pytest.mark.slow
def test_reading_every_k_stops_up_to_k_minus_1_later_with_the_image_of_that_iteration(caffe_npz):
  """schedule.read_every=5: the run stops at the first read after the test passes.

  Its image is bitwise the image of a run told to stop there (tol 0, that
  many iterations): reading less often changes when the loop stops, never
  what the steps compute.
  """
  import small_runs

  rng = np.random.default_rng(3)
  content = rng.uniform(size=(32, 32, 3)).astype(np.float32)
  style = rng.uniform(size=(32, 32, 3)).astype(np.float32)

  def run(**schedule_settings):
    cfg = nst_jax.StyleConfig(
      loss=small_runs.loss_config(),
      schedule=nst_jax.ScheduleConfig(scales=1, **schedule_settings),
      run=nst_jax.RunConfig(print_iter=0),
    )
    record = {}
    image = nst_jax.stylize(content, style, config=cfg, weights=caffe_npz, record=record)
    return image, record['scales'][0]['iterations']

  early = dict(iterations=40, tol=0.05, window=3)
  _, every = run(**early, read_every=1)
  fifth, late = run(**early, read_every=5)
  assert every < 36  # it did stop early, and not at the end
  assert late == -(-every // 5) * 5 and late - every <= 4, (every, late)
  told, ran = run(iterations=late, tol=0.0)
  assert ran == late
  np.testing.assert_array_equal(fifth, told)
