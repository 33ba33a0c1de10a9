"""Many jobs over many devices and hosts, and one image over several devices.

All of it is JAX's own machinery: a `Mesh` over every device of every
process, `NamedSharding`s, and `jit` with explicit input and output
shardings, so that XLA's SPMD partitioner (GSPMD) writes the per-device
programs and their collectives. There is no scheduler of our own.

Batch mode (`run_jobs`): the jobs of one output shape form one batch
[N, H, W, 3], sharded over the mesh axis 'jobs'; every leaf of the state and
of the targets has that leading axis and the same sharding, and the VGG
parameters are replicated. `update_step` is a `vmap` over images, so the
partitioned program needs no communication at all, and each job follows the
same arithmetic as when run alone. N is padded up to a multiple of the
device count with filler jobs (a grey image styled by seeded noise), whose
results are dropped.

Multi-host: after `initialize`, every process runs the same command and
holds the same job list. A job's row lives on exactly one device, and the
process that owns that device (`jax.Array.addressable_shards`) is the only
one that reads the job's images, computes its targets, and writes its
result: no host needs another host's files.

Spatial (`spatial_shardings`): one image's height split over the mesh axis
'space'. GSPMD inserts the halo exchanges of the 3x3 convolutions and
poolings and the all-reduces of the Gram matrices and losses.
"""

from collections.abc import Callable, Sequence
import dataclasses
import functools
import os
from pathlib import Path
import time
from typing import NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax import image as image_lib
from nst_jax import jobs as jobs_lib
from nst_jax import sharding as sharding_lib
from nst_jax import weights as weights_lib
from nst_jax.stylize import DEFAULT_OUTPUT_DIR
from nst_jax.stylize import Targets
from nst_jax.stylize import check_writable
from nst_jax.stylize import init_state
from nst_jax.stylize import initial_image
from nst_jax.stylize import is_time
from nst_jax.stylize import make_model
from nst_jax.stylize import make_optimizer
from nst_jax.stylize import make_targets
from nst_jax.stylize import update_step

# The filler's style is seeded noise: distinct from any job, finite Grams.
FILLER_SEED = 1234
# Settings batch mode does not carry yet (each needs per-job files or
# several scales); `check_batch_config` names them.
_SINGLE_RUN_ONLY = {
  'scales': 1,
  'min_width': None,
  'preserve_colors': 'none',
  'content_mask': '',
  'style_masks': (),
  'resume': False,
  'keep_checkpoint': False,
  'style_blend_weights': None,
  'save_iter': 0,
  'serve': None,
}


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """`jax.distributed.initialize`, once, before any computation.

  With no arguments JAX detects the cluster (Cloud TPU VMs, SLURM, ...).
  On CPU, processes exchange data through gloo collectives.
  """
  # Collectives between CPU devices of different processes go through gloo
  # (the default has none); GPU and TPU devices use their own.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {
    k: v
    for k, v in dict(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    ).items()
    if v is not None
  }
  jax.distributed.initialize(**kwargs)
  logging.info(
    'process %d of %d: %d local of %d devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def check_batch_config(cfg: config_lib.StyleConfig) -> None:
  """Refuses settings batch mode does not carry, naming them."""
  for name, default in _SINGLE_RUN_ONLY.items():
    if getattr(cfg, name) != default:
      raise errors.ConfigError(
        f'--{name} is not available in batch mode (several jobs); run those jobs one at a time'
      )
  if cfg.init not in config_lib.INITS:
    raise errors.ConfigError(
      'an init image file is not available in batch mode; use --init content'
    )


class _Row(NamedTuple):
  """What one job (or filler) contributes: start image and targets, host copies."""

  init: np.ndarray
  targets: Targets


def _job_row(
  job: jobs_lib.Job | None,
  cfg: config_lib.StyleConfig,
  w: weights_lib.Weights,
  *,
  height: int,
  width: int,
  targets_fn,
) -> _Row:
  convention = w.info.input_convention
  if job is None:
    rgb = np.full((height, width, 3), 0.5, np.float32)
    noise = np.random.default_rng(FILLER_SEED).uniform(size=(height, width, 3))
    styles = [noise.astype(np.float32)]
    cw, sw = cfg.content_weight, cfg.style_weight
  else:
    rgb = image_lib.load_image(job.content, width=width, max_pixels=cfg.max_image_pixels)
    if rgb.shape[:2] != (height, width):
      raise errors.ImageError(
        f'{job.content} decoded as {rgb.shape[1]}x{rgb.shape[0]} at -w {width}, not the '
        f'{width}x{height} its header gave; re-save the file'
      )
    style_width = max(1, round(cfg.style_scale * width))
    styles = [
      image_lib.load_image(s, width=style_width, max_pixels=cfg.max_image_pixels) for s in job.style
    ]
    cw = cfg.content_weight if job.content_weight is None else job.content_weight
    sw = cfg.style_weight if job.style_weight is None else job.style_weight
  content = image_lib.preprocess(rgb[None], convention)
  style_net = [image_lib.preprocess(s[None], convention) for s in styles]
  targets = targets_fn(
    w.params, content, style_net, content_weight=cw, style_weight=sw, tv_weight=cfg.tv_weight
  )
  init = initial_image(content, init=cfg.init, seed=cfg.seed, convention=convention)
  host = jax.device_get(targets)
  return _Row(np.asarray(init[0]), jax.tree.map(lambda x: np.asarray(x)[0], host))


def output_shape(job: jobs_lib.Job, cfg: config_lib.StyleConfig) -> tuple[int, int]:
  """(height, width) of a job's result, from the content image's header."""
  size = image_lib.image_size(job.content, max_pixels=cfg.max_image_pixels)
  return image_lib.resized_height(*size, cfg.width), cfg.width


def owner(index: int) -> int:
  """The process that reads, computes and writes job `index`: round-robin."""
  return index % jax.process_count()


def output_shapes(
  jobs: Sequence[jobs_lib.Job], cfg: config_lib.StyleConfig
) -> list[tuple[int, int]]:
  """Every job's output shape, each read only by the job's owner.

  With several processes the shapes are exchanged (an all-gather), so that
  every process forms the same groups while reading only its own files.
  """
  shapes = np.zeros((len(jobs), 2), np.int64)
  for i, job in enumerate(jobs):
    if owner(i) == jax.process_index():
      shapes[i] = output_shape(job, cfg)
  if jax.process_count() > 1:
    shapes = np.asarray(multihost_utils.process_allgather(shapes)).sum(axis=0)
  return [(int(h), int(w)) for h, w in shapes]


class Group(NamedTuple):
  """Jobs of one output shape, laid out in rows of one sharded batch.

  Attributes:
    height, width: the output shape.
    rows: job index (into the full job list) of each row; None for a filler.
      Process p's jobs fill rows [p B, (p + 1) B), B = len(rows) / processes,
      which are the rows on p's devices.
  """

  height: int
  width: int
  rows: tuple[int | None, ...]


def plan_groups(
  shapes: Sequence[tuple[int, int]], *, processes: int, local_devices: int
) -> list[Group]:
  """Groups jobs by shape and lays each group out over the processes' devices.

  Each process's block holds its own jobs (`owner`), padded with fillers to
  B rows, B the same for every process and a multiple of its device count.
  One process: B = N rounded up to the device count.
  """
  by_shape: dict[tuple[int, int], list[int]] = {}
  for i, shape in enumerate(shapes):
    by_shape.setdefault(shape, []).append(i)
  groups = []
  for (height, width), indices in by_shape.items():
    per_process = [[i for i in indices if i % processes == p] for p in range(processes)]
    block = sharding_lib.padded_size(max(len(j) for j in per_process), local_devices)
    rows: list[int | None] = []
    for mine in per_process:
      rows += mine + [None] * (block - len(mine))
    groups.append(Group(height, width, tuple(rows)))
  return groups


def make_batch_step(
  model, optimizer, loss_config, mesh: Mesh, state_shape, params_shape, targets_shape
):
  """`update_step` jitted with explicit shardings: batch over 'jobs', params replicated."""
  rows = sharding_lib.batch_sharding(mesh)
  state_sh = jax.tree.map(lambda _: rows, state_shape)
  targets_sh = jax.tree.map(lambda _: rows, targets_shape)
  params_sh = jax.tree.map(lambda _: sharding_lib.replicated_sharding(mesh), params_shape)
  return jax.jit(
    functools.partial(update_step, model=model, optimizer=optimizer, loss_config=loss_config),
    in_shardings=(state_sh, params_sh, targets_sh),
    out_shardings=(state_sh, rows),
    donate_argnums=0,
  )


def run_group(
  group: Group,
  jobs: Sequence[jobs_lib.Job],
  cfg: config_lib.StyleConfig,
  w: weights_lib.Weights,
  *,
  mesh: Mesh,
  params=None,
  on_result: Callable[[jobs_lib.Job, np.ndarray], None] | None = None,
  record: dict | None = None,
) -> dict[str, np.ndarray]:
  """Runs the jobs of one group (one output shape) as one sharded batch.

  `record` (a dict) gets an entry in 'groups': shape, rows, jobs here,
  compile and run seconds, and `sharding.describe` of the compiled step.

  Returns:
    output path -> RGB [height, width, 3] for the jobs this process owns.
  """
  height, width = group.height, group.width
  n_pad = len(group.rows)
  sharding = sharding_lib.batch_sharding(mesh)
  mine = sharding_lib.local_rows(sharding, n_pad)
  for r in mine:
    # The plan put every job on its owner's devices; a mesh in another
    # device order would make this process read another's files.
    index = group.rows[r]
    if index is not None and owner(index) != jax.process_index():
      raise RuntimeError(f"row {r} (job {index}) is not on its owner's devices")
  model, optimizer = make_model(cfg), make_optimizer(cfg)
  targets_fn = jax.jit(functools.partial(make_targets, model=model, loss_config=cfg.loss))
  rows = {
    r: _job_row(
      None if group.rows[r] is None else jobs[group.rows[r]],
      cfg,
      w,
      height=height,
      width=width,
      targets_fn=targets_fn,
    )
    for r in mine
  }
  first = rows[mine[0]]
  leaves = {r: jax.tree.leaves(rows[r].targets) for r in mine}
  treedef = jax.tree.structure(first.targets)
  targets = jax.tree.unflatten(
    treedef,
    [
      sharding_lib.global_array((n_pad, *np.shape(leaf)), sharding, lambda r, k=k: leaves[r][k])
      for k, leaf in enumerate(jax.tree.leaves(first.targets))
    ],
  )
  image = sharding_lib.global_array((n_pad, height, width, 3), sharding, lambda r: rows[r].init)
  if params is None:
    params = sharding_lib.replicated(w.params, mesh)
  state_shape = jax.eval_shape(functools.partial(init_state, optimizer=optimizer), image)
  state = jax.jit(
    functools.partial(init_state, optimizer=optimizer),
    out_shardings=jax.tree.map(lambda _: sharding, state_shape),
  )(image)
  step = make_batch_step(model, optimizer, cfg.loss, mesh, state_shape, params, targets)
  t0 = time.perf_counter()
  compiled = step.lower(state, params, targets).compile()
  compile_s = time.perf_counter() - t0
  logging.info(
    'process %d: %d jobs of %dx%d (%d rows on %d devices), compiled in %.1f s',
    jax.process_index(),
    sum(r is not None for r in group.rows),
    width,
    height,
    n_pad,
    mesh.size,
    compile_s,
  )
  real = [r for r in mine if group.rows[r] is not None]
  t_start = time.perf_counter()
  for it in range(1, cfg.iterations + 1):
    state, losses = compiled(state, params, targets)
    if is_time(it, cfg.print_iter, cfg.iterations) or it == cfg.iterations:
      values = _local_rows_of(losses['total'], n_pad)
      mine_values = [values[r] for r in real]
      if not all(np.isfinite(mine_values)):
        raise errors.NstError(
          f'the loss became non-finite at iteration {it}; lower the weights or the learning rate'
        )
      rate = it / (time.perf_counter() - t_start)
      logging.info(
        'process %d: iteration %d/%d  %d jobs  mean loss %.5g  %.2f it/s',
        jax.process_index(),
        it,
        cfg.iterations,
        len(real),
        float(np.mean(mine_values)) if mine_values else float('nan'),
        rate,
      )
  if record is not None:
    record.setdefault('groups', []).append(
      {
        'height': height,
        'width': width,
        'rows': n_pad,
        'jobs_here': len(real),
        'compile_s': compile_s,
        'run_s': time.perf_counter() - t_start,
        'image_shards': [
          (shard.device.id, tuple(shard.data.shape)) for shard in state.image.addressable_shards
        ],
        **sharding_lib.describe(compiled),
      }
    )
  images = _local_rows_of(state.image, n_pad)
  results = {}
  convention = w.info.input_convention
  for r in real:
    job = jobs[group.rows[r]]
    rgb = np.clip(np.asarray(image_lib.deprocess(images[r][None], convention)[0]), 0.0, 1.0)
    results[job.output] = rgb
    if on_result is not None:
      on_result(job, rgb)
  return results


def _local_rows_of(x: jax.Array, n: int) -> dict[int, np.ndarray]:
  """Row index -> host copy, for the rows on this process's devices."""
  out = {}
  for shard in x.addressable_shards:
    rows = range(*shard.index[0].indices(n))
    data = np.asarray(shard.data)
    for k, r in enumerate(rows):
      out[r] = data[k]
  return out


def run_jobs(
  jobs: Sequence[jobs_lib.Job],
  cfg: config_lib.StyleConfig,
  *,
  weights: 'weights_lib.Weights | str | os.PathLike | None' = None,
  mesh: Mesh | None = None,
  write: bool = True,
  record: dict | None = None,
) -> dict[str, np.ndarray]:
  """Runs a batch of jobs: grouped by output shape, each group one sharded step.

  Args:
    jobs: the jobs, each with its output path (see `jobs.assign_outputs`).
    cfg: the shared settings (iterations, width, layers, optimiser...); a
      job's own content and style weights replace cw and sw.
    weights: loaded Weights, a path, or None for the default location.
    mesh: a 1-D mesh with axis 'jobs' (default: every device of every
      process).
    write: write each result this process owns to its output path.
    record: a dict that gets one entry per group in 'groups' (`run_group`).

  Returns:
    output path -> RGB [H, W, 3] in [0, 1], for the jobs of this process.
  """
  check_batch_config(cfg)
  mesh = mesh or sharding_lib.jobs_mesh()
  w = weights_lib.as_weights(weights if weights is not None else cfg.weights)
  params = sharding_lib.replicated(w.params, mesh)
  results = {}

  def save(job: jobs_lib.Job, rgb: np.ndarray) -> None:
    image_lib.save_image(job.output, rgb, bit_depth=cfg.bit_depth, quality=cfg.quality)
    logging.info('process %d: saved %s', jax.process_index(), job.output)

  groups = plan_groups(
    output_shapes(jobs, cfg),
    processes=jax.process_count(),
    local_devices=mesh.size // jax.process_count(),
  )
  for group in groups:
    results |= run_group(
      group,
      jobs,
      cfg,
      w,
      mesh=mesh,
      params=params,
      on_result=save if write else None,
      record=record,
    )
  return results


def run_batch(jobs: Sequence[jobs_lib.Job], cfg: config_lib.StyleConfig) -> list[Path]:
  """Batch mode of the command line: names the outputs, checks, runs, writes.

  `cfg.output` must be empty (output/) or a directory, or a file name for a
  single job (a single run on several processes). Jobs without an output
  get `<directory>/<content>_<style>.png`, never replacing a file.
  Every process names all outputs the same way before any is written; each
  writes only its own jobs' results.

  Returns:
    The files this process wrote.
  """
  check_batch_config(cfg)
  if cfg.shard != 'jobs':
    if jax.process_count() > 1:
      raise errors.ConfigError(
        "--shard spatial splits an image over one process's devices; run it without "
        '--distributed, on one host'
      )
    raise errors.ConfigError(
      '--shard spatial runs one image at a time: give one content and one style image, or '
      'use --shard jobs for a batch'
    )
  directory = DEFAULT_OUTPUT_DIR
  names_a_file = cfg.output and not (
    Path(cfg.output).is_dir() or cfg.output.endswith(('/', os.sep))
  )
  if names_a_file and len(jobs) == 1 and not jobs[0].output:
    jobs = [dataclasses.replace(jobs[0], output=cfg.output)]
  elif cfg.output:
    if names_a_file:
      raise errors.ConfigError(
        f'--output {cfg.output} names a file, but there are {len(jobs)} jobs; name a '
        'directory (ending in /)'
      )
    directory = cfg.output
  jobs = jobs_lib.assign_outputs(jobs, directory)
  for i, job in enumerate(jobs):
    if owner(i) == jax.process_index():
      for path in (job.content, *job.style):
        if not Path(path).is_file():
          raise errors.ImageError(f'image {path} does not exist (job {i + 1}); check the path')
      check_writable(Path(job.output), cfg.bit_depth)
  if jax.process_count() > 1:
    # Names depend on which files exist: fix them everywhere before writing.
    multihost_utils.sync_global_devices('nst-jax: outputs named')
  logging.info(
    'process %d: %d jobs, %d of them here, on %d devices',
    jax.process_index(),
    len(jobs),
    sum(owner(i) == jax.process_index() for i in range(len(jobs))),
    jax.device_count(),
  )
  results = run_jobs(jobs, cfg)
  return [Path(p) for p in results]
