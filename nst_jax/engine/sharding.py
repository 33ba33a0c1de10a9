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
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from nst_jax import errors

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


def global_array(
  shape: tuple[int, ...], sharding: NamedSharding, row: Callable[[int], np.ndarray]
) -> jax.Array:
  """A global array whose rows (axis 0) come from `row(r)`, asked only for local rows."""

  def data(index):
    rows = range(*index[0].indices(shape[0]))
    return np.stack([row(r) for r in rows])[(slice(None), *index[1:])]

  return jax.make_array_from_callback(shape, sharding, data)


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


@jax.jit
def _pack(losses: tuple[tuple[jax.Array, ...], ...], flags: jax.Array) -> jax.Array:
  """Per-iteration loss terms ([N] each) and the [N] flags -> one [I T + 1, N] float32 array."""
  rows = [x.astype(jnp.float32) for terms in losses for x in terms]
  return jnp.stack([*rows, flags.astype(jnp.float32)])


class Layout:
  """Where the rows of a batch live, and how the step is jitted over them.

  Three kinds share this interface: `SingleLayout` (one device), `JobsLayout`
  (rows split over a mesh of every device of every process) and
  `SpatialLayout` (each image's height split over this process's devices).
  The engine builds every array through it, so one code path serves all.

  Attributes:
    n_rows: rows of the batch (jobs plus fillers).
    key: hashable description, part of the compiled-step cache key.
  """

  n_rows: int
  key: tuple

  def rows_sharding(self, ndim: int) -> jax.sharding.Sharding:
    """The sharding of an [N, ...] per-row array (targets, losses) of rank `ndim`."""
    raise NotImplementedError

  def image_sharding(self, shape: tuple[int, ...]) -> jax.sharding.Sharding:
    """The sharding of a leaf shaped like the image (or its optimiser buffers)."""
    return self.rows_sharding(len(shape))

  def params_sharding(self) -> jax.sharding.Sharding:
    raise NotImplementedError

  def local_rows(self) -> list[int]:
    """The rows whose data this process provides and whose results it writes."""
    return list(range(self.n_rows))

  def leaf_sharding(self, shape: tuple[int, ...], height: int, width: int):
    """Images and image-shaped optimiser buffers use image_sharding, the rest rows_sharding."""
    if len(shape) >= 3 and tuple(shape[-3:]) == (height, width, 3):
      return self.image_sharding(shape)
    return self.rows_sharding(len(shape))

  def assemble(self, shape, sharding, row: Callable[[int], np.ndarray]) -> jax.Array:
    """A global [n_rows, ...] array from per-row host arrays (asked for local rows only)."""
    return global_array(tuple(shape), sharding, row)

  def gather(self, tree):
    """Host copies of every row of every leaf, on every process."""
    return jax.device_get(tree)

  def sync(
    self, pending: Sequence[dict], flag: int
  ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The loop's sync: host copies of pending losses (every row), and every process's flag.

    Args:
      pending: per iteration, {term: [N] losses on the devices}.
      flag: this process's flag (nst_jax.engine.loop.merge_flags reads them).

    Returns:
      (per iteration {term: [N] host losses}, the flags: one per process,
      repeated per row).
    """
    host = jax.device_get(list(pending))
    return [{k: np.asarray(v) for k, v in losses.items()} for losses in host], np.asarray([flag])

  def host_rows(self, x: jax.Array) -> dict[int, np.ndarray]:
    """Row -> host copy, for this process's rows."""
    return dict(enumerate(np.asarray(x)))


class SingleLayout(Layout):
  """Every row on one device (the default device of this process)."""

  def __init__(self, n_rows: int = 1, device: jax.Device | None = None):
    self.n_rows = n_rows
    self.device = device or jax.local_devices()[0]
    self.key = ('single', n_rows, self.device.id)

  def rows_sharding(self, ndim: int):
    return jax.sharding.SingleDeviceSharding(self.device)

  def params_sharding(self):
    return jax.sharding.SingleDeviceSharding(self.device)


class JobsLayout(Layout):
  """Rows split over the mesh axis 'jobs' (every device of every process); params replicated."""

  def __init__(self, mesh: Mesh, n_rows: int):
    self.mesh = mesh
    self.n_rows = n_rows
    self.key = ('jobs', n_rows, tuple(d.id for d in mesh.devices.flat))

  def rows_sharding(self, ndim: int):
    return batch_sharding(self.mesh)

  def params_sharding(self):
    return replicated_sharding(self.mesh)

  def local_rows(self) -> list[int]:
    return local_rows(batch_sharding(self.mesh), self.n_rows)

  def gather(self, tree):
    if jax.process_count() == 1:
      return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(
      lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree
    )

  def sync(
    self, pending: Sequence[dict], flag: int
  ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """One all-gather for every pending loss and every process's flag.

    Each process fills its own rows of an [N] array with its flag; that
    and each iteration's loss terms are stacked on the devices (no
    communication: all are split alike over 'jobs') into one [I T + 1, N]
    array, which one `process_allgather` copies to every process. The
    flags are small integers, exact in float32.
    """
    if jax.process_count() == 1:
      return super().sync(pending, flag)
    from jax.experimental import multihost_utils

    keys = sorted(pending[0])
    flags = self.assemble((self.n_rows,), self.rows_sharding(1), lambda r: np.float32(flag))
    packed = _pack(tuple(tuple(losses[k] for k in keys) for losses in pending), flags)
    table = np.asarray(multihost_utils.process_allgather(packed, tiled=True))
    host = [{k: table[i * len(keys) + j] for j, k in enumerate(keys)} for i in range(len(pending))]
    return host, table[-1].astype(np.int64)

  def host_rows(self, x: jax.Array) -> dict[int, np.ndarray]:
    out = {}
    for shard in x.addressable_shards:
      data = np.asarray(shard.data)
      for k, r in enumerate(range(*shard.index[0].indices(self.n_rows))):
        out[r] = data[k]
    return out


class SpatialLayout(Layout):
  """Each image's height split over this process's devices (mesh axis 'space').

  The image and every leaf shaped like it (the L-BFGS history) are split
  along H; parameters, targets and losses are replicated. XLA's SPMD
  partitioner adds the halo exchanges of the convolutions and the
  all-reduces of the Grams and losses.
  """

  def __init__(self, devices: Sequence[jax.Device], n_rows: int = 1):
    self.mesh = spatial_mesh(devices)
    self.n_rows = n_rows
    self.key = ('spatial', n_rows, tuple(d.id for d in devices))

  def rows_sharding(self, ndim: int):
    return replicated_sharding(self.mesh)

  def image_sharding(self, shape):
    spec = [None] * len(shape)
    spec[-3] = SPACE_AXIS
    return NamedSharding(self.mesh, P(*spec))

  def params_sharding(self):
    return replicated_sharding(self.mesh)


def spatial_devices(heights: int | Sequence[int], devices: Sequence[jax.Device]) -> list:
  """The most of `devices` that split `heights` rows evenly (each scale's height: trial 27,
  a coarser scale's that did not divide was JAX's IndivisibleError)."""
  heights = [heights] if isinstance(heights, int) else list(heights)
  used = max(k for k in range(1, len(devices) + 1) if all(h % k == 0 for h in heights))
  return list(devices[:used])


def check_tiles(tiles, n_devices: int) -> None:
  """Refuses a tile edge (loss.tiles) for an image split over `n_devices` > 1 (run.shard spatial).

  The memory plan has no estimate for the two together, and tiling is for
  an image too large for one device, as the split is: one of them is enough.
  """
  if isinstance(tiles, int) and n_devices > 1:
    raise errors.ConfigError(
      'loss.tiles and run.shard spatial do not combine (both split the image to fit memory, and '
      "the memory plan covers one at a time); use one: loss.tiles 'off', or run.shard jobs"
    )
