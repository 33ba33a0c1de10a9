"""Tests for research code on the public API: the jitted step, gradients through it, features.

The step is `nst_jax.make_step` (nst_jax.core.step); these tests hold it to
what docs/api.md promises a researcher: `jax.grad` through k steps, one
forward and one backward pass per compiled iteration.
"""

import functools
import json
import os
from pathlib import Path
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import small_runs

import nst_jax
from nst_jax.core import experiments
from nst_jax.core import pixels
from nst_jax.core import vgg

ROOT = Path(__file__).resolve().parent.parent
_VGGTiny = functools.partial(vgg.VGG, stage_sizes=(1, 2), widths=(4, 8))
SPEC = nst_jax.LossSpec(content_layers=('relu2_2',), style_layers=('relu1_1', 'relu2_1'))


def _problem(n=1, seed=0):
  model = _VGGTiny()
  params = small_runs.he_params(model, seed)
  rgb = np.random.default_rng(seed).uniform(size=(2 * n, 16, 16, 3)).astype(np.float32)
  content, style = jnp.split(pixels.preprocess(jnp.asarray(rgb), pixels.CAFFE), 2)
  targets = nst_jax.make_targets(
    params, content, style, model=model, loss_spec=SPEC, content_weight=1.0, style_weight=10.0
  )
  return model, params, content, targets


def _k_steps(model, tx, k, params, content, targets):
  """The images after k steps with `targets`' weights, the first one backtracked."""
  update = functools.partial(nst_jax.update_step, model=model, optimizer=tx, loss_spec=SPEC)
  state = nst_jax.init_state(content, tx)
  state, _ = update(state, params, targets, backtrack=True)
  for _ in range(k - 1):
    state, _ = update(state, params, targets)
  return state.image


@pytest.mark.parametrize(
  'name,box',
  [('lbfgs', True), ('lbfgs', False), ('adam', None)],  # None: not given (Adam has no box)
  ids=['lbfgs-box', 'lbfgs', 'adam'],
)
def test_grad_through_five_steps_matches_central_differences(name, box):
  """d/d(sw) of the content loss after 5 steps run with style weight sw.

  The meta-objective of a style-weight search: the image after 5 steps (the
  first one backtracked, as the engine takes it), scored by its content term
  alone. sw = 0.03 balances the two terms here, where the image's content
  loss moves with sw (L-BFGS is invariant to the loss's scale, so only the
  ratio of the weights matters). Central differences at a relative step of
  2% agree with the gradient to 0.2% (L-BFGS) and 0.1% (Adam), measured.
  """
  model, params, content, targets = _problem()
  tx = nst_jax.make_optimizer(name, box=box, convention=pixels.CAFFE)
  one = jax.tree.map(lambda x: x[0], targets)

  def meta(sw):
    image = _k_steps(model, tx, 5, params, content, targets._replace(style_weight=sw[None]))
    _, aux = nst_jax.objective(image[0], params, one, model=model, loss_spec=SPEC)
    return aux['content']

  sw, h = 0.03, 0.02 * 0.03
  value, grad = jax.jit(jax.value_and_grad(meta))(jnp.float32(sw))
  f = jax.jit(meta)
  central = (float(f(jnp.float32(sw + h))) - float(f(jnp.float32(sw - h)))) / (2 * h)
  assert abs(central) * sw > 1e-2 * float(value)  # a real slope, not a flat one
  np.testing.assert_allclose(float(grad), central, rtol=1e-2)


def test_optax_lbfgs_line_search_is_not_differentiable():
  """The table's one 'no': optax.lbfgs's zoom line search is a while_loop with a dynamic end."""
  model, params, content, targets = _problem()
  tx = optax.lbfgs()

  def meta(sw):
    image = _k_steps(model, tx, 2, params, content, targets._replace(style_weight=sw[None]))
    return jnp.sum(image)

  with pytest.raises(
    ValueError, match='Reverse-mode differentiation does not work for lax.while_loop'
  ):
    jax.jit(jax.grad(meta))(jnp.float32(0.03))  # refused while tracing: nothing runs


def _convolutions(lowered) -> int:
  return lowered.as_text().count('stablehlo.convolution')


def test_each_compiled_iteration_is_one_forward_and_one_backward_pass():
  """The step's program holds exactly the convolutions of value_and_grad of the objective.

  The tiny network has 3 convolutions: 3 forward and 3 input-gradient ones.
  The first iteration's program (L-BFGS's backtracking) holds more: its
  search's forward passes.
  """
  model, params, content, targets = _problem(n=2)
  tx = nst_jax.make_optimizer('lbfgs', convention=pixels.CAFFE)
  step = nst_jax.make_step(model, tx, SPEC)
  state = nst_jax.init_state(content, tx)
  one = jax.tree.map(lambda x: x[0], targets)
  alone = jax.jit(
    jax.value_and_grad(
      functools.partial(nst_jax.objective, model=model, loss_spec=SPEC), has_aux=True
    )
  ).lower(content[0], params, one)
  assert _convolutions(alone) == 6
  assert _convolutions(step.update.lower(state, params, targets)) == 6
  assert _convolutions(step.first.lower(state, params, targets)) == 6 + 3


def test_a_custom_term_reads_the_objectives_features_without_a_second_pass():
  """network_features + objective(features=) : one forward pass for the loss and the term."""
  model, params, content, targets = _problem()
  one = jax.tree.map(lambda x: x[0], targets)

  def with_mean(x, params, targets, *, model, loss_spec):
    feats = nst_jax.network_features(
      x, params, model=model, layers=loss_spec.feature_layers + ('relu2_1',)
    )
    total, aux = nst_jax.objective(
      x, params, targets, model=model, loss_spec=loss_spec, features=feats
    )
    mean = jnp.mean(feats['relu2_1'])
    return total + mean, {**aux, 'total': total + mean, 'mean': mean}

  total, aux = jax.jit(functools.partial(with_mean, model=model, loss_spec=SPEC))(
    content[0], params, one
  )
  plain, _ = nst_jax.objective(content[0], params, one, model=model, loss_spec=SPEC)
  want = model.apply({'params': params}, content[:1], ('relu2_1',))['relu2_1'].mean()
  np.testing.assert_allclose(aux['mean'], want, rtol=1e-6)
  np.testing.assert_allclose(total, plain + want, rtol=1e-6)
  step = nst_jax.make_step(model, nst_jax.make_optimizer('adam', convention=pixels.CAFFE), SPEC,
                           loss_fn=with_mean)  # fmt: skip
  state = nst_jax.init_state(content, nst_jax.make_optimizer('adam', convention=pixels.CAFFE))
  assert _convolutions(step.update.lower(state, params, targets)) == 6
  with pytest.raises(
    ValueError, match=r'^features lacks relu2_2, relu2_1; compute them with network_'
  ):
    nst_jax.objective(
      content[0], params, one, model=model, loss_spec=SPEC, features={'relu1_1': None}
    )


def test_arrays_are_checked_at_the_api_with_the_fix_named(caffe_npz):
  rgb = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
  weights = nst_jax.load_weights(caffe_npz)
  # RGB arguments: uint8 is divided by 255; floats outside [0, 1] are refused.
  as_uint8 = np.round(rgb * 255).astype(np.uint8)
  got = nst_jax.extract_features(weights, as_uint8, 'relu1_1')['relu1_1']
  want = nst_jax.extract_features(weights, as_uint8 / np.float32(255), ['relu1_1'])['relu1_1']
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)  # XLA's /255 may round apart
  with pytest.raises(
    nst_jax.NstError,
    match=r'^content has values from 0\.\d+ to 2\d\d\.\d+; RGB floats must lie in \[0, 1\]: '
    r'divide by 255, or deprocess it \(nst_jax\.deprocess\) if it is network space$',
  ):
    nst_jax.stylize(rgb * 255, rgb, weights=weights)
  with pytest.raises(
    nst_jax.NstError,
    match=r'^style 1 has values from -0\.4997 to 0\.4995; .*: clip it to \[0, 1\] if the values '
    r'outside are an overshoot; if the image is shifted',
  ):
    nst_jax.stylize(rgb, [rgb, rgb - 0.5], weights=weights)
  with pytest.raises(nst_jax.NstError, match=r'^image is int32; give RGB as floats in \[0, 1\]'):
    nst_jax.extract_features(weights, as_uint8.astype(np.int32), ['relu1_1'])
  # Params in either form.
  feats = nst_jax.extract_features(
    weights.params, rgb, ['relu1_1'], convention=weights.info.input_convention
  )
  np.testing.assert_array_equal(
    feats['relu1_1'], nst_jax.extract_features(weights, rgb, ['relu1_1'])['relu1_1']
  )
  with pytest.raises(ValueError, match=r'^extract_features got a params dict, .*convention='):
    nst_jax.extract_features(weights.params, rgb, ['relu1_1'])
  with pytest.raises(
    nst_jax.NstError,
    match=r"^layers must be a sequence of layer names, got the string 'relu4_2'; write \(",
  ):
    vgg.check_layers('relu4_2')


def test_network_space_arguments_and_weights_name_their_fix():
  model, params, content, _ = _problem()
  with pytest.raises(
    ValueError,
    match=re.escape('style_weight has shape (4,) for 1 content image(s); give a scalar or one per '
                    'image (tile the content: jnp.repeat(content, 4, axis=0))'),
  ):  # fmt: skip
    nst_jax.make_targets(params, content, content, model=model, loss_spec=SPEC,
                         content_weight=1.0, style_weight=jnp.ones(4))  # fmt: skip
  with pytest.raises(TypeError, match=r'^make_targets needs content_weight and style_weight='):
    with pytest.warns(DeprecationWarning):
      nst_jax.make_targets(params, content, content, model=model, loss_config=SPEC)
  tx = nst_jax.make_optimizer('lbfgs', convention=pixels.CAFFE)
  with pytest.raises(
    ValueError, match=re.escape('got shape (16, 16, 3); add the batch axis: x[None]')
  ):
    nst_jax.init_state(content[0], tx)
  with pytest.raises(ValueError, match=r'^image is uint8, but it is an image in network space'):
    nst_jax.init_state(np.zeros((1, 4, 4, 3), np.uint8), tx)
  # The config's name for the L-BFGS memory works too; a wrong keyword is named.
  aliased = nst_jax.make_optimizer('lbfgs', lbfgs_memory=7, convention=pixels.CAFFE)
  assert nst_jax.init_state(content, aliased).opt_state.s.shape == (1, 7, 16, 16, 3)
  with pytest.raises(TypeError, match=r"^make_optimizer got an unknown keyword 'lr'; it takes "):
    nst_jax.make_optimizer('adam', lr=1.0, convention=pixels.CAFFE)


def test_an_interrupted_stylize_names_only_what_it_saved_and_records_what_ran(caffe_npz):
  rgb = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
  cfg = nst_jax.StyleConfig(
    loss=small_runs.loss_config(),
    schedule=nst_jax.ScheduleConfig(iterations=5, scales=1),
    run=nst_jax.RunConfig(print_iter=1),
  )
  with pytest.raises(nst_jax.errors.Interrupted) as caught:
    nst_jax.stylize(rgb, rgb, config=cfg, weights=caffe_npz, should_stop=lambda: 15)
  assert str(caught.value) == 'interrupted by signal 15 after iteration 1; nothing was saved'
  assert caught.value.exit_code == 128 + 15
  # True is no signal number: the message says who stopped it (it said "signal 1").
  polls, record = [], {}

  def second_poll():
    polls.append(1)
    return len(polls) == 2

  with pytest.raises(nst_jax.errors.Interrupted) as caught:
    nst_jax.stylize(rgb, rgb, config=cfg, weights=caffe_npz, should_stop=second_poll, record=record)
  assert str(caught.value) == 'stopped by should_stop after iteration 2; nothing was saved'
  assert caught.value.exit_code == 1
  # The record keeps what ran: the start image and the first update, scored
  # by iterations 1 and 2 (the image after the second update was not).
  ((stage,),) = (record['scales'],)
  assert (stage['iterations'], stage['start'], stage['stopped']) == (2, 0, 'should_stop')
  assert [h['iteration'] for h in record['history']] == [0, 1]


def test_stylize_records_the_losses_of_the_result_for_every_image_of_a_batch(caffe_npz):
  """The record's last entry is the returned image's objective (not the image's before)."""
  rng = np.random.default_rng(1)
  contents = rng.uniform(0.1, 0.9, size=(2, 16, 16, 3)).astype(np.float32)
  style = rng.uniform(size=(16, 16, 3)).astype(np.float32)
  cfg = nst_jax.StyleConfig(
    loss=small_runs.loss_config(content_weight=1.0, style_weight=1.0, tv_weight=0.5),
    schedule=nst_jax.ScheduleConfig(iterations=3, scales=1),
    run=nst_jax.RunConfig(print_iter=1),
  )
  record = {}
  out = nst_jax.stylize(contents, style, config=cfg, weights=caffe_npz, record=record)
  history = record['history']
  assert [h['iteration'] for h in history] == [0, 1, 2, 3]
  assert all(len(h[k]) == 2 for h in history for k in ('total', 'content', 'style', 'tv'))
  assert history[0]['content'] == [0.0, 0.0]  # the start image is the content
  # Oracle: the objective of each returned image, computed here (the box
  # keeps L-BFGS's pixels displayable, so the RGB returned is the image).
  w = nst_jax.load_weights(caffe_npz)
  model, spec = nst_jax.make_model(), cfg.loss.spec
  pre = functools.partial(pixels.preprocess, convention=w.info.input_convention)
  targets = nst_jax.make_targets(
    w.params, pre(contents), pre(style[None]), model=model, loss_spec=spec, **cfg.loss.weights
  )
  for i in range(2):
    total, aux = nst_jax.objective(
      pre(out[i : i + 1])[0],
      w.params,
      nst_jax.targets_at(targets, i, keep_batch=False),
      model=model,
      loss_spec=spec,
    )
    np.testing.assert_allclose(history[-1]['total'][i], float(total), rtol=2e-5)
    np.testing.assert_allclose(history[-1]['style'][i], float(aux['style']), rtol=2e-5)
  # Image 1 alone: the batch's second values (rows are independent problems).
  alone = {}
  nst_jax.stylize(contents[1], style, config=cfg, weights=caffe_npz, record=alone)
  assert [h['total'] for h in alone['history']] == pytest.approx(
    [h['total'][1] for h in history], rel=1e-6
  )


_SHARDED_STYLIZE = """
import json, sys
import numpy as np
import jax
import nst_jax
import small_runs
rng = np.random.default_rng(0)
content = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
style = rng.uniform(size=(16, 16, 3)).astype(np.float32)
cfg = nst_jax.StyleConfig(
  loss=small_runs.loss_config(),
  schedule=nst_jax.ScheduleConfig(iterations=2, scales=1),
  run=nst_jax.RunConfig(print_iter=0, shard=sys.argv[2]),
)
record = {}
out = nst_jax.stylize(content, style, config=cfg, weights=sys.argv[1], record=record)
alone = nst_jax.stylize(content[1], style, config=cfg, weights=sys.argv[1])
stage = record['scales'][0]
print(json.dumps({
  'devices': stage['devices'], 'shape': list(out.shape), 'local': jax.local_device_count(),
  'rows_on': sorted({d for d, _ in stage['image_shards']}),
  'same_as_alone': float(np.abs(out[1] - alone).max()),
}))
"""


@pytest.mark.slow
# 'spatial' ran a batch on one device, unsaid; it is refused now (sharding_test, trial 27).
@pytest.mark.parametrize('shard,devices', [('jobs', 8)])
def test_stylize_splits_a_batch_over_the_devices_with_jobs(tmp_path, caffe_npz, shard, devices):
  """stylize on 3 images, 8 simulated devices: jobs puts the 8 rows (3 real) one per device."""
  script = tmp_path / 'run.py'
  script.write_text(_SHARDED_STYLIZE)
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'NST_JAX_WEIGHTS')}
  env.update(XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu',
             PYTHONPATH=f'{ROOT}:{ROOT / "tests"}')  # fmt: skip
  r = subprocess.run(
    [sys.executable, str(script), str(caffe_npz), shard],
    env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  got = json.loads(r.stdout.strip().splitlines()[-1])
  assert got['local'] == 8 and got['shape'] == [3, 16, 16, 3]
  assert got['devices'] == devices
  assert len(got['rows_on']) == devices
  # Each image is its own problem wherever it runs (float rounding of another layout aside).
  assert got['same_as_alone'] < 1e-3


def test_random_scaled_params_have_the_probes_scale_at_every_relu():
  """LSUV: each post-ReLU RMS on the probe equals the probe's own RMS (about 60-75 on photos)."""
  probe = pixels.preprocess(
    jnp.asarray(np.random.default_rng(3).uniform(size=(1, 32, 32, 3)), jnp.float32), pixels.CAFFE
  )
  model = experiments.VGGTiny()
  params = experiments.random_scaled_params(1, probe=probe, stage_sizes=(1, 2), widths=(4, 8))
  feats = model.apply({'params': params}, probe, ('relu1_1', 'relu2_1', 'relu2_2'))
  want = float(jnp.sqrt(jnp.mean(jnp.square(probe))))
  assert 60 < want < 90
  for name, f in feats.items():
    np.testing.assert_allclose(
      float(jnp.sqrt(jnp.mean(jnp.square(f)))), want, rtol=1e-4, err_msg=name
    )
  assert not np.array_equal(
    params['conv1_1']['kernel'],
    experiments.random_scaled_params(2, stage_sizes=(1, 2), widths=(4, 8))['conv1_1']['kernel'],
  )


def test_targets_at_takes_one_images_targets():
  model, params, content, targets = _problem(n=3)
  one = nst_jax.targets_at(targets, 2)
  assert one.style['relu2_1']['gram'].shape == (1, 1, 8, 8)
  np.testing.assert_array_equal(one.content['relu2_2'][0], targets.content['relu2_2'][2])
  bare = nst_jax.targets_at(targets, 2, keep_batch=False)
  np.testing.assert_array_equal(bare.style_weight, targets.style_weight[2])


def test_targets_at_counts_from_the_end_and_refuses_out_of_range():
  model, params, content, targets = _problem(n=3)
  np.testing.assert_array_equal(
    nst_jax.targets_at(targets, -1).content['relu2_2'], targets.content['relu2_2'][2:]
  )
  for index in (3, -4):
    with pytest.raises(nst_jax.errors.ConfigError) as caught:
      nst_jax.targets_at(targets, index, keep_batch=index > 0)
    assert str(caught.value) == (
      f'index {index} is out of range for targets of 3 image(s); give 0 to 2 (or -3 to -1 from '
      'the end)'
    )


def test_targets_at_of_one_image_names_its_one_index():
  model, params, content, targets = _problem(n=1)
  with pytest.raises(nst_jax.errors.ConfigError) as caught:
    nst_jax.targets_at(targets, 1)  # said "give 0 to 0 (or -1 to -1 from the end)"
  assert str(caught.value) == 'index 1 is out of range for targets of 1 image(s); give 0 (or -1)'
  np.testing.assert_array_equal(nst_jax.targets_at(targets, -1).style_weight, [10.0])


def test_targets_at_refuses_targets_without_a_batch_axis():
  model, params, content, targets = _problem(n=2)
  bare = nst_jax.targets_at(targets, 1, keep_batch=False)
  with pytest.raises(nst_jax.errors.ConfigError) as caught:
    nst_jax.targets_at(bare, 0)  # an IndexError: tuple index out of range
  assert str(caught.value) == (
    "targets hold no batch axis (already one image's, as targets_at(..., keep_batch=False) "
    'gives them); use them as they are, or give targets_at the batched targets'
  )
  np.testing.assert_array_equal(bare.style_weight, targets.style_weight[1])


def test_targets_at_takes_keep_batch_as_a_bool_only():
  model, params, content, targets = _problem(n=2)
  with pytest.raises(nst_jax.errors.ConfigError) as caught:
    nst_jax.targets_at(targets, 1, keep_batch='no')  # truthy: kept the batch axis
  assert str(caught.value) == "keep_batch must be True or False, got 'no'; pass True or False"
  assert nst_jax.targets_at(targets, 1, keep_batch=np.False_).style_weight.shape == ()


def test_random_scaled_params_refuse_a_probe_with_no_scale():
  shape = {'stage_sizes': (1, 2), 'widths': (4, 8)}
  probe = pixels.preprocess(np.full((1, 8, 8, 3), 0.5, np.float32), pixels.CAFFE)
  unbatched = experiments.random_scaled_params(0, probe=probe[0], **shape)
  batched = experiments.random_scaled_params(0, probe=probe, **shape)
  np.testing.assert_array_equal(unbatched['conv2_2']['kernel'], batched['conv2_2']['kernel'])
  cases = (
    ({'probe': jnp.zeros((1, 8, 8, 3))}, 'probe has RMS 0, so there is no scale to match; pass a '
     'photograph in network space (nst_jax.preprocess(rgb, convention)) or leave probe=None'),
    ({'probe': jnp.zeros((8, 8))}, 'probe must be [N, H, W, 3] images, got shape (8, 8); if it '
     'is greyscale, repeat it as RGB: np.repeat(x[None][..., None], 3, -1)'),
    ({'stage_sizes': (1, 2), 'widths': (4,)},
     'stage_sizes has 2 stages and widths 1; give one width per stage'),
  )  # fmt: skip
  # Trial 27: under jit numpy's SeedSequence TypeError, or JAX's ConcretizationTypeError.
  with pytest.raises(nst_jax.errors.ConfigError, match='^random_scaled_params runs on the host'):
    jax.jit(lambda k: experiments.random_scaled_params(k, **shape))(3)
  for kwargs, message in cases:
    with pytest.raises(nst_jax.errors.ConfigError) as caught:
      experiments.random_scaled_params(0, **{**shape, **kwargs})
    assert str(caught.value) == message


def test_random_scaled_params_draw_again_a_layer_dead_on_the_probe():
  """One-channel layers die on the probe for some seeds (seed 11: 0/0 gave NaN kernels before)."""
  shape = {'stage_sizes': (1, 2, 2), 'widths': (1, 1, 1)}
  probe = pixels.preprocess(
    jnp.asarray(np.random.default_rng(11).uniform(size=(1, 64, 64, 3)), jnp.float32), pixels.CAFFE
  )
  params = experiments.random_scaled_params(11, **shape)
  assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(params))
  # The default probe is seed 11's uniform image: every ReLU has its RMS.
  feats = vgg.VGG(**shape).apply({'params': params}, probe, ('relu1_1', 'relu2_2', 'relu3_2'))
  want = float(jnp.sqrt(jnp.mean(jnp.square(probe))))
  for name, f in feats.items():
    np.testing.assert_allclose(float(jnp.sqrt(jnp.mean(jnp.square(f)))), want, rtol=1e-4,
                               err_msg=name)  # fmt: skip


def test_random_scaled_params_refuse_a_layer_that_stays_dead(monkeypatch):
  monkeypatch.setattr(experiments, '_conv', lambda x, kernel: -jnp.ones((*x.shape[:3], 4)))
  with pytest.raises(nst_jax.errors.ConfigError) as caught:
    experiments.random_scaled_params(0, stage_sizes=(1, 2), widths=(4, 8))
  assert str(caught.value) == (
    'conv1_1 outputs only zeros on the probe in 30 draws of its kernel, so there is no scale to '
    'match; pass a larger probe (a photograph in network space) or more channels'
  )


def test_targets_at_under_jit_and_vmap_takes_a_traced_index():
  # A trial found jit and vmap over the index refused (a bool of a tracer).
  model, params, content, targets = _problem(n=3)
  picked = jax.jit(lambda i: nst_jax.targets_at(targets, i).content['relu2_2'])(2)
  np.testing.assert_array_equal(picked, targets.content['relu2_2'][2:])
  each = jax.vmap(lambda i: nst_jax.targets_at(targets, i, keep_batch=False).style_weight)(
    jnp.asarray([2, 0, -1])
  )
  np.testing.assert_array_equal(each, targets.style_weight[jnp.asarray([2, 0, 2])])


def test_random_scaled_params_refuse_a_bad_seed_and_an_rgb_uint8_probe():
  shape = {'stage_sizes': (1, 2), 'widths': (4, 8)}
  want = experiments.random_scaled_params(1, **shape)['conv2_2']['kernel']
  for seed in (np.int64(1), jnp.int32(1)):
    got = experiments.random_scaled_params(seed, **shape)['conv2_2']['kernel']
    np.testing.assert_array_equal(got, want)
  for seed, shown in ((-1, '-1'), (1.5, '1.5'), (None, 'None'), (True, 'True')):
    with pytest.raises(nst_jax.errors.ConfigError) as caught:
      experiments.random_scaled_params(seed, **shape)
    assert str(caught.value) == f'seed must be an integer >= 0, got {shown}'
  for key, shown in ((jax.random.PRNGKey(0), 'ArrayImpl'), (jax.random.key(0), 'PRNGKeyArray')):
    with pytest.raises(nst_jax.errors.ConfigError) as caught:  # a JAX user's habit
      experiments.random_scaled_params(key, **shape)
    assert str(caught.value) == (
      f'seed must be an integer >= 0, got {shown}; pass an int seed, e.g. 0 (not a jax.random key)'
    )
  with pytest.raises(nst_jax.errors.ConfigError) as caught:  # an OverflowError in jax.random.key
    experiments.random_scaled_params(2**64, **shape)
  assert str(caught.value) == (
    'seed must be below 2**63 (a JAX key holds 64 bits), got 18446744073709551616'
  )
  with pytest.raises(nst_jax.errors.ConfigError) as caught:  # was taken as network space
    experiments.random_scaled_params(0, probe=np.full((8, 8, 3), 200, np.uint8), **shape)
  assert str(caught.value) == (
    'probe is uint8, but it is an image in network space: preprocess RGB first, '
    'nst_jax.preprocess(rgb, weights.info.input_convention)'
  )


def test_targets_at_refuses_an_index_that_is_not_an_integer():
  """1.0 and True were taken as image 1."""
  model, params, content, targets = _problem(n=2)
  for index in (1.0, True, np.float32(1), jnp.float32(1), jnp.asarray([1])):
    with pytest.raises(nst_jax.errors.ConfigError) as caught:
      nst_jax.targets_at(targets, index)
    assert str(caught.value) == (
      f'index must be an integer (which image), got {index!r}; pass int(index) if you mean it'
    )
  for index in (np.int64(1), jnp.int32(1)):
    np.testing.assert_array_equal(nst_jax.targets_at(targets, index).style_weight, [10.0])
  with pytest.raises(nst_jax.errors.ConfigError, match=r'^index must be an integer'):
    jax.jit(lambda i: nst_jax.targets_at(targets, i))(jnp.float32(1))


def test_random_scaled_params_are_the_same_float32_under_x64():
  """Under jax_enable_x64 the kernel was float64 and the probe float32: a conv dtype error."""
  shape = {'stage_sizes': (1, 2), 'widths': (4, 8)}
  want = experiments.random_scaled_params(0, **shape)
  with jax.enable_x64(True):
    got = experiments.random_scaled_params(0, **shape)
  for name in want:
    for leaf in ('kernel', 'bias'):
      assert got[name][leaf].dtype == jnp.float32
      np.testing.assert_array_equal(got[name][leaf], want[name][leaf])


@pytest.mark.parametrize('partitionable', [True, False])
def test_flat_normal_draws_what_jax_random_normal_draws(partitionable):
  """random_scaled_params and the random start draw flat (cheaper to compile): the same bits."""
  from nst_jax.core import experiments

  key = jax.random.fold_in(jax.random.key(3), 2)
  with jax.threefry_partitionable(partitionable):
    for shape in ((3, 3, 3, 8), (1, 5, 7, 3)):
      want = jax.random.normal(key, shape, jnp.float32)
      np.testing.assert_array_equal(experiments.flat_normal(key, shape), want)
