"""Tests for nst_jax.engine.sharding on this process's one CPU device.

What each layout documents, checked where a test can see it alone; the
layouts over several devices and processes are compared with the unsharded
run in distributed_test.
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jax.sharding import SingleDeviceSharding
import numpy as np
import pytest

from nst_jax import errors
from nst_jax.core import step as core
from nst_jax.engine import sharding


def _rows(n, shape=(4, 5, 3)):
  return {r: np.full(shape, r + 0.5, np.float32) for r in range(n)}


def test_padded_size_rounds_up_to_a_multiple_of_the_devices():
  assert [sharding.padded_size(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [4, 4, 4, 8, 8, 12]
  assert sharding.padded_size(3, 1) == 3


def test_meshes_and_shardings_name_their_axis():
  (device,) = jax.devices()
  jobs, space = sharding.jobs_mesh(), sharding.spatial_mesh()
  assert jobs.axis_names == ('jobs',) and space.axis_names == ('space',)
  assert list(jobs.devices.flat) == list(space.devices.flat) == [device]
  assert sharding.batch_sharding(jobs).spec == P('jobs')
  assert sharding.replicated_sharding(jobs).spec == P()


def test_global_array_asks_each_row_once_and_stacks_them():
  asked = []
  rows = _rows(3)

  def row(r):
    asked.append(r)
    return rows[r]

  x = sharding.global_array((3, 4, 5, 3), sharding.batch_sharding(sharding.jobs_mesh()), row)
  assert sorted(asked) == [0, 1, 2]
  np.testing.assert_array_equal(np.asarray(x), np.stack([rows[r] for r in range(3)]))
  assert sharding.local_rows(sharding.batch_sharding(sharding.jobs_mesh()), 3) == [0, 1, 2]


def test_single_layout_puts_everything_on_its_device():
  (device,) = jax.devices()
  layout = sharding.SingleLayout(3)
  assert layout.key == ('single', 3, device.id) and layout.local_rows() == [0, 1, 2]
  assert layout.rows_sharding(2) == SingleDeviceSharding(device) == layout.params_sharding()
  rows = _rows(3)
  x = layout.assemble((3, 4, 5, 3), layout.image_sharding((3, 4, 5, 3)), lambda r: rows[r])
  assert x.sharding == SingleDeviceSharding(device)
  back = layout.host_rows(x)
  assert sorted(back) == [0, 1, 2]
  for r in range(3):
    np.testing.assert_array_equal(back[r], rows[r])
  np.testing.assert_array_equal(layout.gather({'x': x})['x'], np.asarray(x))


def test_jobs_layout_splits_rows_and_replicates_params():
  layout = sharding.JobsLayout(sharding.jobs_mesh(), 2)
  assert layout.rows_sharding(1).spec == P('jobs') and layout.params_sharding().spec == P()
  assert layout.local_rows() == [0, 1]
  rows = _rows(2)
  x = layout.assemble((2, 4, 5, 3), layout.image_sharding((2, 4, 5, 3)), lambda r: rows[r])
  back = layout.host_rows(x)
  assert sorted(back) == [0, 1]
  np.testing.assert_array_equal(back[1], rows[1])


def test_spatial_layout_splits_the_height_of_image_shaped_leaves():
  layout = sharding.SpatialLayout(jax.devices())
  assert layout.rows_sharding(2).spec == P() and layout.params_sharding().spec == P()
  # The image [N, H, W, 3] and the L-BFGS history [N, m, H, W, 3]: H is axis -3.
  assert layout.image_sharding((1, 8, 6, 3)).spec == P(None, 'space', None, None)
  assert layout.image_sharding((1, 5, 8, 6, 3)).spec == P(None, None, 'space', None, None)
  # leaf_sharding tells them from per-row arrays by their trailing (H, W, 3).
  assert layout.leaf_sharding((1, 5, 8, 6, 3), 8, 6).spec == P(None, None, 'space', None, None)
  assert layout.leaf_sharding((1, 5), 8, 6).spec == P()
  assert layout.leaf_sharding((1, 6, 8, 3), 8, 6).spec == P()  # transposed: not the image


@pytest.mark.parametrize(
  'height,want', [(12, 6), (16, 8), (13, 1), (7, 7), (9, 3), (1, 1)], ids=lambda v: str(v)
)
def test_spatial_devices_are_the_most_that_split_the_height_evenly(height, want):
  devices = [f'device{i}' for i in range(8)]  # only counted and sliced
  assert sharding.spatial_devices(height, devices) == devices[:want]


def test_describe_reads_the_layout_and_memory_of_a_compiled_step():
  """A step-shaped program: (StyleState, params, targets) -> (StyleState, loss)."""
  mesh = sharding.jobs_mesh()
  rows, replicated = sharding.batch_sharding(mesh), sharding.replicated_sharding(mesh)

  def step(state, params, targets):
    image = state.image * params['w'] + targets
    return core.StyleState(image, state.opt_state * 2), jnp.sum(image)

  state = core.StyleState(jnp.ones((2, 4, 4, 3)), jnp.ones((2, 5)))
  args = (state, {'w': jnp.ones(())}, jnp.ones((2, 4, 4, 3)))
  described = []
  for donate in ((), (0,)):
    compiled = (
      jax.jit(
        step,
        in_shardings=(core.StyleState(rows, rows), {'w': replicated}, rows),
        out_shardings=(core.StyleState(rows, rows), replicated),
        donate_argnums=donate,
      )
      .lower(*args)
      .compile()
    )
    described.append(sharding.describe(compiled))
  kept, donated = described
  assert {k: v for k, v in kept.items() if k != 'memory_per_device_bytes'} == {
    'devices': 1,
    'image_spec': ['jobs'],
    'output_image_spec': ['jobs'],
    'params_specs': ['[]'],
    'targets_specs': ["['jobs']"],
  }
  # At least the arguments and outputs: 4 bytes x (96 + 10 + 1 + 96) in, (96 + 10 + 1) out.
  assert kept['memory_per_device_bytes'] >= 4 * (203 + 107)
  # Donating the state reuses its 4 x (96 + 10) bytes for the new state.
  assert kept['memory_per_device_bytes'] - donated['memory_per_device_bytes'] == 4 * 106
  # Not a NamedSharding: no spec.
  single = jax.jit(step).lower(*args).compile()
  assert sharding.describe(single)['image_spec'] is None


def test_spatial_devices_split_every_scales_height(monkeypatch):
  """Trial 27: 2 scales of 32 and 23 rows over 4 devices: JAX's IndivisibleError at scale 1."""
  from nst_jax import config as config_lib
  from nst_jax.runs import runner

  devices = [f'device{i}' for i in range(4)]
  assert sharding.spatial_devices([32, 24], devices) == devices  # both divide by 4
  assert sharding.spatial_devices([32, 23], devices) == devices[:1]
  monkeypatch.setattr(runner.jax, 'local_devices', lambda: devices)
  monkeypatch.setattr(runner.jax, 'local_device_count', lambda: len(devices))
  monkeypatch.setattr(sharding, 'SpatialLayout', lambda used: used)
  for scales, want in ((1, 4), (2, 1)):
    cfg = config_lib.StyleConfig(
      inputs=config_lib.InputConfig(width=24),
      schedule=config_lib.ScheduleConfig(iterations=4, scales=scales),
      run=config_lib.RunConfig(shard='spatial'),
    )
    assert runner.layout_for(cfg, 32) == devices[:want]
  with pytest.raises(errors.ConfigError) as e:  # trial 27: a batch ran on one device, unsaid
    runner.layout_for(cfg, 32, n_rows=3)
  assert str(e.value) == (
    "run.shard 'spatial' splits one image over the devices, and 3 were given; use run.shard "
    "'jobs' for a batch, or stylize them one at a time"
  )
