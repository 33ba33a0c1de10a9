"""Tests for nst_jax.engine.steps: the step compiled over a layout, and the cache of them."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_runs

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core import objective
from nst_jax.core import pixels
from nst_jax.core import step as core
from nst_jax.core import step_checks
from nst_jax.core import vgg
from nst_jax.engine import sharding
from nst_jax.engine import steps
from nst_jax.runs import runner
from nst_jax.runs.arrays import stylize

_VGGTiny = functools.partial(vgg.VGG, stage_sizes=(1, 2), widths=(4, 8))
TINY_LOSS = config_lib.LossConfig(content_layers=('relu2_2',), style_layers=('relu1_1', 'relu2_1'))


def test_compiled_steps_are_kept_by_key_shapes_and_dtypes():
  cache = steps.CompiledSteps()
  double = jax.jit(lambda x: 2 * x)
  first, seconds = cache.get(double, 'k', jnp.ones(3))
  again, reused = cache.get(double, 'k', jnp.zeros(3))  # other values: the same program
  assert again is first and reused == 0.0 and seconds > 0.0
  others = [
    cache.get(double, 'k', jnp.ones(4))[0],  # another shape
    cache.get(double, 'k', jnp.ones(3, jnp.int32))[0],  # another dtype
    cache.get(double, 'other', jnp.ones(3))[0],  # another key
  ]
  assert len({id(c) for c in [first, *others]}) == 4 and len(cache.cache) == 4
  np.testing.assert_array_equal(first(jnp.arange(3.0)), [0.0, 2.0, 4.0])
  np.testing.assert_array_equal(others[1](jnp.arange(3, dtype=jnp.int32)), [0, 2, 4])


def test_the_least_recently_used_step_goes_first(monkeypatch):
  cache = steps.CompiledSteps()
  monkeypatch.setattr(cache, 'KEPT', 2)
  f = jax.jit(lambda x: x + 1)
  a, _ = cache.get(f, 'a', jnp.ones(2))
  cache.get(f, 'b', jnp.ones(2))
  assert cache.get(f, 'a', jnp.ones(2)) == (a, 0.0)  # 'a' used again: 'b' is now the oldest
  cache.get(f, 'c', jnp.ones(2))
  assert [key[0] for key in cache.cache] == ['a', 'c']
  assert cache.get(f, 'b', jnp.ones(2))[1] > 0.0  # compiled anew


def _problem(n=2, seed=0):
  model = _VGGTiny()
  params = small_runs.he_params(model, seed)
  rng = np.random.default_rng(seed + 1)
  content = jnp.asarray(rng.normal(0, 50, (n, 16, 16, 3)), jnp.float32)
  style = jnp.asarray(rng.normal(0, 50, (n, 12, 20, 3)), jnp.float32)
  # Jitted: op by op, the targets take longer than compiling them.
  make_targets = jax.jit(
    functools.partial(
      objective.make_targets,
      model=model,
      loss_spec=TINY_LOSS.spec,
      **TINY_LOSS.weights,
    )
  )
  targets = make_targets(params, content, style)
  return model, params, content, targets


def test_compile_step_is_the_core_step_compiled_once_with_the_state_donated():
  cache = steps.CompiledSteps()
  model, params, content, targets = _problem()
  tx = core.make_optimizer('lbfgs', convention=pixels.CAFFE)
  layout = sharding.SingleLayout(2)
  state = core.init_state(content, tx)
  shardings = jax.tree.map(lambda s: layout.leaf_sharding(s.shape, 16, 16), state)
  active = jnp.ones(2, bool)

  def compile_step(state, key=()):
    return steps.compile_step(
      model=model,
      optimizer=tx,
      loss_spec=TINY_LOSS.spec,
      loss_fn=objective.objective,
      layout=layout,
      state_sharding=shardings,
      args=(state, params, targets, active),
      key=key,
      cache=cache,
    )

  compiled, seconds = compile_step(state)
  assert seconds > 0.0
  reference = jax.jit(
    functools.partial(core.update_step, model=model, optimizer=tx, loss_spec=TINY_LOSS.spec)
  )
  want = core.init_state(content, tx)
  for _ in range(3):
    # As the engine asks each stage: the program compiled once is handed back.
    assert compile_step(state) == (compiled, 0.0)
    old = state
    state, losses = compiled(state, params, targets, active)
    assert old.image.is_deleted()  # donated: its buffer became the new state's
    want, want_losses = reference(want, params, targets)
    np.testing.assert_allclose(losses['total'], want_losses['total'], rtol=1e-6)
    np.testing.assert_allclose(state.image, want.image, rtol=1e-5, atol=1e-4)
  # One program, kept under the step's static settings and the layout.
  (cache_key,) = cache.cache
  assert cache_key[0] == (model, TINY_LOSS.spec, objective.objective, layout.key)


@pytest.mark.slow
def test_later_runs_reuse_the_compiled_step(caffe_npz, monkeypatch):
  monkeypatch.setattr(runner, 'COMPILE_CACHE', steps.CompiledSteps())
  rng = np.random.default_rng(0)
  content, style = rng.uniform(size=(2, 24, 32, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=3, scales=1),
    run=config_lib.RunConfig(print_iter=0),
  )
  records = [{}, {}, {}, {}]

  def run(content, config, record):
    return stylize(content, style, config=config, weights=caffe_npz, record=record)

  first = run(content, cfg, records[0])
  # Other weights and images of the same size: the same program.
  again = run(content[::-1], cfg.replace(loss=cfg.loss.replace(content_weight=3.0)), records[1])
  # Another history length, or another size: compiled anew.
  run(content, cfg.replace(optim=cfg.optim.replace(lbfgs_memory=4)), records[2])
  run(content[:20], cfg, records[3])
  assert [r['scales'][0]['compile_reused'] for r in records] == [False, True, False, False]
  assert records[1]['scales'][0]['compile_s'] == 0.0
  # The reused program gives what a fresh compile gives.
  monkeypatch.setattr(runner, 'COMPILE_CACHE', steps.CompiledSteps())
  np.testing.assert_array_equal(run(content, cfg, {}), first)
  assert not np.array_equal(again, first)


def test_the_compile_cache_keys_a_loss_fn_by_what_it_computes(caffe_npz, monkeypatch):
  """Trial 33: keyed by the object, an unhashable loss_fn (a dataclass) was a TypeError, and one
  whose field changed between runs reused the old program: the old objective, unsaid."""
  monkeypatch.setattr(runner, 'COMPILE_CACHE', steps.CompiledSteps())
  rng = np.random.default_rng(3)
  content, style = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=2),
    run=config_lib.RunConfig(print_iter=0),
  )
  records = [{}, {}, {}]

  def run(loss_fn, record):
    return stylize(content, style, config=cfg, weights=caffe_npz, loss_fn=loss_fn, record=record)

  loss = _DataLoss(0.0)
  first = run(loss, records[0])
  loss.by = 1e3  # a sweep: change the field, run again
  changed = run(loss, records[1])
  fresh = run(_DataLoss(1e3), records[2])  # another object computing the same: reused
  assert [r['scales'][0]['compile_reused'] for r in records] == [False, False, True]
  np.testing.assert_array_equal(changed, fresh)
  totals = [[entry['total'] for entry in r['history']] for r in records]
  assert totals[1] == totals[2] and totals[1][0] > totals[0][0]  # the new objective's
  assert not np.array_equal(first, changed)


def test_the_compile_cache_keys_a_host_callback_by_its_function(caffe_npz, monkeypatch):
  """Trial 40 F1: two loss_fns whose host callbacks differ only in Python state their identity
  does not describe (here deeper than it reaches) shared one program: the second run called the
  first's callback. Keyed by the callback functions too, each compiles its own."""
  monkeypatch.setattr(runner, 'COMPILE_CACHE', steps.CompiledSteps())
  content, style = np.random.default_rng(4).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=2),
    run=config_lib.RunConfig(print_iter=0),
  )

  def deep(k):  # six levels down: beyond what host_state describes
    box = [[[[[k]]]]]

    def loss(x, params, targets, *, model, loss_spec):
      total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
      host = jax.pure_callback(
        lambda y: np.float32(box[0][0][0][0][0] * np.mean(np.square(y))),
        jax.ShapeDtypeStruct((), jnp.float32), jax.lax.stop_gradient(x), vmap_method='sequential',
      )  # fmt: skip
      return total + host, aux

    return loss

  records = [{}, {}, {}]
  a, b = deep(0.0), deep(1e3)
  for loss_fn, record in zip([a, b, a], records, strict=True):
    stylize(content, style, config=cfg, weights=caffe_npz, loss_fn=loss_fn, record=record)
  assert [r['scales'][0]['compile_reused'] for r in records] == [False, False, True]
  totals = [r['history'][0]['total'] for r in records]
  assert totals[1] > totals[0] + 1.0 and totals[2] == totals[0]  # each run its own callback's

  def logging_into(log):  # trial 40 F4: the second run logged into the first run's list
    def loss(x, params, targets, *, model, loss_spec):
      total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
      jax.debug.callback(lambda t: log.append(float(t)), jax.lax.stop_gradient(total))
      return total, aux

    return loss

  logs, records = ([], [], []), [{}, {}, {}]
  first, second = logging_into(logs[0]), logging_into(logs[1])
  for loss_fn, record in zip([first, second, first], records, strict=True):
    lengths = [len(log) for log in logs]
    stylize(content, style, config=cfg, weights=caffe_npz, loss_fn=loss_fn, record=record)
    grew = [len(log) - n for log, n in zip(logs, lengths, strict=True)]
    assert sum(1 for g in grew if g) == 1 and grew[loss_fn is second] > 0, grew
  # Its own lambda on each trace, the same list: the same program.
  assert [r['scales'][0]['compile_reused'] for r in records] == [False, False, True]


def test_the_first_iteration_is_its_own_program_with_the_backtracking():
  """compile_step(first=True) is update_step(backtrack=True); Adam has no such program."""
  cache = steps.CompiledSteps()
  model, params, content, targets = _problem()
  layout = sharding.SingleLayout(2)
  active = jnp.ones(2, bool)

  def compiled(tx, first):
    state = core.init_state(content, tx)
    shardings = jax.tree.map(lambda s: layout.leaf_sharding(s.shape, 16, 16), state)
    program, _ = steps.compile_step(
      model=model, optimizer=tx, loss_spec=TINY_LOSS.spec, loss_fn=objective.objective,
      layout=layout, state_sharding=shardings, args=(state, params, targets, active),
      cache=cache, first=first,
    )  # fmt: skip
    return program, state

  tx = core.make_optimizer('lbfgs', first_step=1e4, convention=pixels.CAFFE)
  first, state = compiled(tx, True)
  every, _ = compiled(tx, False)
  assert first is not every and len(cache.cache) == 2
  reference = functools.partial(
    core.update_step, model=model, optimizer=tx, loss_spec=TINY_LOSS.spec
  )
  searched, _ = jax.jit(functools.partial(reference, backtrack=True))(
    core.init_state(content, tx), params, targets
  )
  plain, _ = jax.jit(reference)(core.init_state(content, tx), params, targets)
  state, _ = first(state, params, targets, active)
  np.testing.assert_allclose(state.image, searched.image, rtol=1e-5, atol=1e-3)
  # A first step of 10^4 pixels overshoots: the search shrank it, the plain step did not.
  np.testing.assert_array_equal(state.opt_state.shrink, searched.opt_state.shrink)
  assert np.all(np.asarray(state.opt_state.shrink) < 1e-2)
  np.testing.assert_array_equal(plain.opt_state.shrink, [1.0, 1.0])
  assert float(jnp.abs(plain.image - state.image).max()) > 100.0
  adam = core.make_optimizer('adam', convention=pixels.CAFFE)
  assert compiled(adam, True)[0] is compiled(adam, False)[0]


def test_a_run_refuses_a_loss_fn_without_the_terms_it_logs():
  """stylize(loss_fn=...) whose aux lacked 'content' ran into a KeyError in the log (trial 7)."""
  model, params, content, targets = _problem()
  tx = core.make_optimizer('adam', convention=pixels.CAFFE)
  layout = sharding.SingleLayout(2)
  state = core.init_state(content, tx)

  def total_only(x, params, targets, *, model, loss_spec):
    return objective.objective(x, params, targets, model=model, loss_spec=loss_spec)[0], {}

  def compiled(loss_fn):
    return steps.compile_step(
      model=model, optimizer=tx, loss_spec=TINY_LOSS.spec, loss_fn=loss_fn, layout=layout,
      state_sharding=jax.tree.map(lambda s: layout.leaf_sharding(s.shape, 16, 16), state),
      args=(state, params, targets, jnp.ones(2, bool)),
    )  # fmt: skip

  with pytest.raises(
    errors.ConfigError,
    match=re.escape(
      "loss_fn's aux lacks 'content', 'style', 'tv', which a run logs and records; add them: "
      "start from nst_jax.objective's aux, return (total, {**aux, 'total': total, ...})"
    ),
  ):
    compiled(total_only)
  program, _ = compiled(objective.objective)
  assert set(program.out_info[1]) >= {'total', *steps.LOGGED}


def _objective(x, params, targets, *, model, loss_spec):
  return objective.objective(x, params, targets, model=model, loss_spec=loss_spec)


def _scaled(x, params, targets, *, model, loss_spec, by):
  total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
  return total + by * jnp.mean(x**2), aux


def _scaled_by(k, reduce=jnp.mean):
  def loss(x, params, targets, *, model, loss_spec):
    total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
    weight = sum(k.values()) if isinstance(k, dict) else k
    return total + jnp.sum(weight) * reduce(x**2), aux

  return loss


class _Loss:
  def __init__(self, by):
    self.by, self.calls = by, 0

  def __call__(self, x, params, targets, *, model, loss_spec):
    self.calls += 1  # bookkeeping that leaves the result alone
    return _scaled(x, params, targets, model=model, loss_spec=loss_spec, by=self.by)

  loss = __call__


class _Slotted(_Loss):
  __slots__ = ()


class _HasFunc(_Loss):  # not a partial, whatever its attributes (trial 31: an AttributeError)
  func = 'f'


@dataclasses.dataclass
class _DataLoss:  # unhashable: the compile cache's key failed on it (trial 33 X5)
  by: float

  def __call__(self, x, params, targets, *, model, loss_spec):
    return _scaled(x, params, targets, model=model, loss_spec=loss_spec, by=self.by)


def _defined(source: str, **globals_) -> object:
  """A loss_fn `lf` defined from `source`, as a notebook cell run again defines it."""
  namespace = {'jnp': jnp, '_objective': _objective, **globals_}
  exec(source, namespace)  # noqa: S102 (the test's own source, as a notebook runs a cell)
  return namespace['lf']


def test_a_loss_fns_identity_is_what_it_computes():
  """Trials 29, 31, 33: loss_fns of one name that compute otherwise resumed each other (lambdas,
  partials, closures, instances, defaults, jitted closures, slots, dicts with tuple keys, arrays,
  another function called, a global); one that counts its calls was refused its own resume."""
  model, params, _, targets = _problem()
  one = jax.tree.map(lambda x: x[0], targets)

  def identity(loss_fn):
    return step_checks.loss_fn_identity(
      loss_fn, model=model, loss_spec=TINY_LOSS.spec, params=params, targets=one, shape=(16, 16)
    )

  cell = """def lf(x, params, targets, *, model, loss_spec):
  total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
  return total + SCALE * jnp.REDUCE(x**2), aux
"""
  mean, total = cell.replace('REDUCE', 'mean'), cell.replace('REDUCE', 'sum')
  jit = functools.partial(jax.jit, static_argnames=('model', 'loss_spec'))
  pairs = [
    (functools.partial(_scaled, by=2.0), functools.partial(_scaled, by=3.0)),
    (lambda *a, **k: _scaled(*a, **k, by=2.0), lambda *a, **k: _scaled(*a, **k, by=3.0)),
    (_scaled_by(2.0), _scaled_by(3.0)),
    (_Loss(2.0), _Loss(3.0)),
    (_Loss(2.0).loss, _Loss(3.0).loss),
    (_scaled_by(np.float32(0.0)), _scaled_by(np.float32(1e3))),
    (_HasFunc(2.0), _HasFunc(3.0)),
    (jit(_scaled_by(0.0)), jit(_scaled_by(1e3))),
    (_scaled_by(1.0, jnp.mean), _scaled_by(1.0, jnp.sum)),
    (_Slotted(0.0), _Slotted(1e3)),
    (_DataLoss(0.0), _DataLoss(1e3)),
    (_scaled_by({('relu1_1', 0): 1.0}), _scaled_by({('relu1_1', 0): 1e3})),
    (_scaled_by(jnp.array([0.0, 1.0])), _scaled_by(jnp.array([1e3, 1.0]))),
    (_defined(mean, SCALE=1.0), _defined(total, SCALE=1.0)),  # a cell edited and run again
    (_defined(mean, SCALE=0.0), _defined(mean, SCALE=1e3)),  # a global changed
    # Trial 35: an inner jit's arrays, a host callback, a gradient rule, an aux key's name.
    (_inner_jit(jnp.array([0.0])), _inner_jit(jnp.array([1e3]))),
    (_host(np.sum), _host(np.max)),
    (_host(_Scale(0.0).of), _host(_Scale(1e3).of)),  # trial 37: methods, instances, helpers
    (_host(_Scale(0.0)), _host(_Scale(1e3))),
    (_host(_helped(np.sum)), _host(_helped(np.max))),
    (_host(_Scale(_Scale(0.0)).of), _host(_Scale(_Scale(1e3)).of)),  # trial 38: a field's field
    (_host(_helped(_table(1.0))), _host(_helped(_table(1e3)))),  # 5000 values in a closure
    (_with_vjp(1.0), _with_vjp(2.0)),
    (_aux_named('penalty'), _aux_named('reg')),
  ]  # fmt: skip
  for a, b in pairs:
    assert identity(a) != identity(b), (identity(a), identity(b))
    assert identity(a).split()[0] == identity(b).split()[0]  # one name, told apart by the digest
  same = [
    (functools.partial(_scaled, by=2.0), functools.partial(_scaled, by=2.0)),
    (_scaled_by(2.0), _scaled_by(2.0)),
    (_scaled_by(jnp.array([1e3, 1.0])), _scaled_by(np.array([1e3, 1.0], np.float32))),
    (_defined(mean, SCALE=1.0), _defined(mean, SCALE=1.0)),
  ]  # fmt: skip
  for a, b in same:
    assert identity(a) == identity(b)
  counting = _Loss(2.0)
  before = identity(counting)
  counting(jnp.zeros((16, 16, 3)), params, one, model=model, loss_spec=TINY_LOSS.spec)
  assert counting.calls == 2 and identity(counting) == before  # trial 33 X8
  assert identity(_DataLoss(0.0)).startswith('_DataLoss ')
  key = jax.random.key(0)  # a typed key closed over: np.asarray failed on it (trial 35)
  assert identity(_scaled_by_noise(key)) != identity(_scaled_by_noise(jax.random.key(1)))


def _inner_jit(k):
  inner = jax.jit(lambda x: jnp.sum(k) * jnp.mean(x**2))  # k: the inner program's own const
  return lambda x, params, targets, *, model, loss_spec: (
    _objective(x, params, targets, model=model, loss_spec=loss_spec)[0] + inner(x),
    _objective(x, params, targets, model=model, loss_spec=loss_spec)[1],
  )


def _host(reduce):
  def loss(x, params, targets, *, model, loss_spec):
    total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
    shape = jax.ShapeDtypeStruct((), jnp.float32)
    host = jax.pure_callback(lambda y: np.float32(reduce(y)), shape, jax.lax.stop_gradient(x))
    return total + host, aux

  return loss


class _Scale:
  def __init__(self, k):
    self.k = k

  def of(self, y):
    return np.sum(y) * self.k

  __call__ = of


def _table(middle):
  table = np.ones(5000, np.float32)
  table[2500] = middle  # numpy's repr leaves the middle out
  return table


def _helped(reduce):
  return lambda y: reduce(y)


def _with_vjp(slope):
  @jax.custom_vjp
  def square(x):
    return x**2

  square.defvjp(lambda x: (x**2, x), lambda x, g: (slope * 2 * x * g,))

  def loss(x, params, targets, *, model, loss_spec):
    total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
    return total + jnp.mean(square(x)), aux

  return loss


def _aux_named(name):
  def loss(x, params, targets, *, model, loss_spec):
    total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
    return total, {**aux, name: jnp.mean(x)}

  return loss


def _scaled_by_noise(key):
  def loss(x, params, targets, *, model, loss_spec):
    total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
    return total + jnp.mean(jax.random.normal(key, x.shape) * x), aux

  return loss


def test_a_loss_fn_with_an_io_callback_is_one_line_for_lbfgs(caffe_npz):
  """Trial 35 Z9: JAX's 'Unordered IO effects not supported in while_loop with batched
  predicate', from inside the first step's line search."""
  from jax.experimental import io_callback

  def logged(x, params, targets, *, model, loss_spec):
    total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
    io_callback(lambda value: None, None, jax.lax.stop_gradient(total))
    return total, aux

  rng = np.random.default_rng(4)
  content, style = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  cfg = config_lib.StyleConfig(
    loss=small_runs.loss_config(), schedule=config_lib.ScheduleConfig(iterations=2)
  )
  fix = r'log with jax.debug.callback, or compute on the host with jax.pure_callback$'
  with pytest.raises(errors.ConfigError, match=fix):
    stylize(content, style, config=cfg, weights=caffe_npz, loss_fn=logged)
  # Trial 37: make_step's own programs, and an ordered callback, which no vmap takes (Adam too).
  model, params, images, targets = _problem()
  tx = core.make_optimizer('lbfgs', convention=pixels.CAFFE)
  step = core.make_step(model, tx, TINY_LOSS.spec, loss_fn=logged)
  with pytest.raises(errors.ConfigError, match=fix):
    step.first(core.init_state(images, tx), params, targets)

  def ordered(x, params, targets, *, model, loss_spec):
    total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
    io_callback(lambda value: None, None, jax.lax.stop_gradient(total), ordered=True)
    return total, aux

  adam = core.make_optimizer('adam', convention=pixels.CAFFE)
  step = core.make_step(model, adam, TINY_LOSS.spec, loss_fn=ordered)
  with pytest.raises(errors.ConfigError, match=fix):
    step.update(core.init_state(images, adam), params, targets)
  # Trial 38: an ordered jax.debug.callback runs (the engine's read of the program's outputs
  # was an empty AssertionError inside JAX).
  calls = []

  def debugged(x, params, targets, *, model, loss_spec):
    total, aux = _objective(x, params, targets, model=model, loss_spec=loss_spec)
    jax.debug.callback(lambda value: calls.append(value), total, ordered=True)
    return total, aux

  stylize(content, style, config=cfg, weights=caffe_npz, loss_fn=debugged)
  assert len(calls) >= 2
