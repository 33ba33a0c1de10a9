"""Meshes and shardings: the layouts of batch and spatial partitioning.

Two 1-D meshes: 'jobs' over every device of every process (a batch of
images, one or more rows per device), and 'space' over this process's
devices (one image's height split across them). The step is jitted with
these as explicit input and output shardings, so XLA's SPMD partitioner
(GSPMD) writes the per-device programs and inserts any collectives.
"""

from collections.abc import Callable, Sequence
import math

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

JOBS_AXIS = 'jobs'
SPACE_AXIS = 'space'


def jobs_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over every device of every process, axis 'jobs'."""
  if devices is None:
    # Process-major order: process p's devices hold one contiguous block of
    # rows (see distributed.plan_groups).
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (JOBS_AXIS,))


def spatial_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over the local devices, axis 'space' (splits image height)."""
  return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), (SPACE_AXIS,))


def padded_size(n: int, devices: int) -> int:
  """n rounded up to a multiple of the device count (never below it)."""
  return max(1, math.ceil(n / devices)) * devices


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(JOBS_AXIS))


def spatial_shardings(tree, mesh: Mesh, height: int, width: int):
  """Per-leaf shardings: leaves ending in [..., height, width, 3] split height.

  Images and the L-BFGS history are such leaves; everything else (scalars,
  step counts) is replicated.
  """

  def one(leaf):
    shape = np.shape(leaf)
    if len(shape) >= 3 and tuple(shape[-3:]) == (height, width, 3):
      spec = [None] * len(shape)
      spec[-3] = SPACE_AXIS
      return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, tree)


def global_array(
  shape: tuple[int, ...], sharding: NamedSharding, row: Callable[[int], np.ndarray]
) -> jax.Array:
  """A global array whose rows (axis 0) come from `row(r)`, asked only for local rows."""

  def data(index):
    rows = range(*index[0].indices(shape[0]))
    return np.stack([row(r) for r in rows])[(slice(None), *index[1:])]

  return jax.make_array_from_callback(shape, sharding, data)


def replicated(tree, mesh: Mesh):
  """Every leaf replicated on every device of the mesh (all processes)."""
  sharding = NamedSharding(mesh, P())

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree)


def local_rows(sharding: NamedSharding, n: int) -> list[int]:
  """The rows (axis 0 of an [n, ...] array) that live on this process's devices."""
  rows = set()
  for index in sharding.addressable_devices_indices_map((n,)).values():
    rows.update(range(*index[0].indices(n)))
  return sorted(rows)


def describe(compiled) -> dict:
  """How a compiled step is laid out: devices, the image's sharding, memory per device.

  Args:
    compiled: a compiled `update_step` (jit(...).lower(...).compile()),
      whose first argument is the StyleState.

  Returns:
    {'devices': int, 'image_spec' and 'output_image_spec': the image's
    PartitionSpec as a list, as the step takes it and as it returns it
    (None: not a NamedSharding), 'params_specs' and 'targets_specs': the
    distinct specs of those arguments' leaves, as strings, 'memory_per_device_bytes': arguments +
    outputs + temporaries - aliased, from XLA's memory analysis (None when
    the backend gives none)}.
  """
  image_in = compiled.input_shardings[0][0].image
  image_out = compiled.output_shardings[0].image

  def spec(sharding):
    return list(sharding.spec) if isinstance(sharding, NamedSharding) else None

  def specs(tree) -> list[str]:
    return sorted({str(spec(x)) for x in jax.tree.leaves(tree)})

  memory = None
  analysis = compiled.memory_analysis()
  if analysis is not None:
    memory = int(
      analysis.argument_size_in_bytes
      + analysis.output_size_in_bytes
      + analysis.temp_size_in_bytes
      - analysis.alias_size_in_bytes
    )
  return {
    'devices': len(image_in.device_set),
    'image_spec': spec(image_in),
    'output_image_spec': spec(image_out),
    # Every distinct layout of the parameters' and the targets' leaves.
    'params_specs': specs(compiled.input_shardings[0][1]),
    'targets_specs': specs(compiled.input_shardings[0][2]),
    'memory_per_device_bytes': memory,
  }
