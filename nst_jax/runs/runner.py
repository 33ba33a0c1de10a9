"""The file pipeline: image files in, result files out, for single runs and batches.

Both go the same way: name and check every output before any work, estimate
the memory, read the images into `rows.Row`s, fetch the weights, run the
engine with the hooks (progress, checkpoints, intermediates, preview,
record) under signal handling, then write each result with its run record.
A batch does this per group of same-shaped jobs, each process for its own
jobs, with every step that can fail on one process agreed by all
(nst_jax.engine.distributed).
"""

import contextlib
import os
from pathlib import Path

from absl import logging
import jax

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.engine import compile_cache
from nst_jax.engine import engine as engine_lib
from nst_jax.engine import memory as memory_lib
from nst_jax.engine import preview as preview_lib
from nst_jax.engine import rows as rows_lib
from nst_jax.engine import schedule as schedule_lib
from nst_jax.engine import sharding as sharding_lib
from nst_jax.engine import signals
from nst_jax.engine import steps
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import images as image_lib
from nst_jax.io import output_names
from nst_jax.io import outputs
from nst_jax.io import weights as weights_lib
from nst_jax.runs import inputs as inputs_lib
from nst_jax.runs import output_locks
from nst_jax.runs import output_plan
from nst_jax.runs import results as results_lib

# Compiled steps, kept for reuse by every run of this process (single, batch,
# video, stylize): the runner owns the cache and hands it to each Engine.
COMPILE_CACHE = steps.CompiledSteps()


def layout_for(cfg: config_lib.StyleConfig, height: int, n_rows: int = 1) -> sharding_lib.Layout:
  """Where one process's rows live: one device, or one image's height split over them.

  For a single file and for arrays (`stylize`; several images with run.shard
  'jobs' use `JobsLayout` over the devices, rows padded to a multiple of them).
  """
  local = jax.local_device_count()
  if cfg.run.shard == 'jobs' and n_rows > 1 and local > 1 and jax.process_count() == 1:
    rows = sharding_lib.padded_size(n_rows, local)
    return sharding_lib.JobsLayout(sharding_lib.jobs_mesh(jax.local_devices()), rows)
  if cfg.run.shard == 'spatial' and local > 1 and n_rows > 1:  # trial 27: ran on one device
    raise errors.ConfigError(
      f"run.shard 'spatial' splits one image over the devices, and {n_rows} were given; use "
      "run.shard 'jobs' for a batch, or stylize them one at a time"
    )
  if cfg.run.shard == 'spatial' and local > 1 and n_rows == 1:
    w = cfg.inputs.width
    heights = sorted({rows_lib.scaled(height, w, s.width / w)[0]
                      for s in schedule_lib.plan(w, cfg.schedule)})  # fmt: skip
    devices = sharding_lib.spatial_devices(heights, jax.local_devices())
    sharding_lib.check_tiles(cfg.loss.tiles, len(devices))  # for arrays as for files
    if len(devices) < local:
      logging.warning('spatial sharding: a height of %s rows splits evenly over %d of the %d '
                      'devices; heights divisible by %d use them all',
                      '/'.join(map(str, heights)), len(devices), local, local)  # fmt: skip
    logging.info('Spatial sharding: %d rows over %d devices.', height, len(devices))
    return sharding_lib.SpatialLayout(devices)
  return sharding_lib.SingleLayout(n_rows)


# Once per run: normalised gradients are no loss's gradient (docs/controls.md).
NORMALIZED_LBFGS = (
  'normalize_gradients with the L-BFGS optimiser: the normalised gradient is not the gradient of '
  'the loss L-BFGS is given, so its curvature pairs model no function and the run can diverge; '
  'use the Adam optimiser with normalize_gradients'
)


def make_engine(cfg, weights, layout, **kwargs) -> engine_lib.Engine:
  """The Engine of every kind of run, with the runner's compile cache."""
  if cfg.loss.normalize_gradients and cfg.optim.name == 'lbfgs':
    logging.warning(NORMALIZED_LBFGS)
  return engine_lib.Engine(cfg, weights, layout, compile_cache=COMPILE_CACHE, **kwargs)


def resume_from(cfg: config_lib.StyleConfig, checkpoint: Path | None, *, required: bool):
  """Where `cfg.run.resume` continues from (None: start afresh).

  `required`: a missing checkpoint is a ConfigError (arrays: the caller named
  it), else a fresh start (a file run checked its output's state already).
  A checkpoint past `cfg.schedule.iterations` is a ResumeMismatch
  (engine.check_budget).
  """
  if not cfg.run.resume or checkpoint is None:
    return None
  stages = schedule_lib.plan(cfg.inputs.width, cfg.schedule)
  resume = engine_lib.resume_point(checkpoint, stages)
  if resume is None and required:  # stylize's checkpoint=, in its words (trial 19)
    raise errors.ConfigError(
      f'no checkpoint {checkpoint} to resume; pass the checkpoint= of the run to continue, or '
      'leave config.run.resume False to start'
    )
  if resume is not None:
    logging.info(
      'Resuming %s after iteration %d (scale %d).', checkpoint, resume.iteration, resume.scale + 1
    )
  return resume


def watch(
  cfg, results: results_lib.Results, *, preview=None, monitor_row=0, should_stop=None, prefix=''
):
  """The hooks a run from files wants: progress, checkpoints, intermediates, preview, record."""
  return engine_lib.Watch.of_run(
    cfg.run,
    prefix=prefix,
    save_iter=cfg.save.save_iter,
    on_intermediate=results.intermediate,
    monitor=preview,
    monitor_row=monitor_row,
    should_stop=should_stop,
    history=results.history,
  )


def _single_output(cfg: config_lib.StyleConfig) -> Path:
  """The result's path, checked, and its checkpoint's state checked against --resume."""
  i = cfg.inputs
  if not i.content_path:  # Path('') is '.', which was refused as 'a directory'
    raise errors.ConfigError('inputs.content_path is empty; give the path of an image file')
  if not cfg.style_paths:
    raise errors.ConfigError('no style image given; name one or more as inputs.style_path')
  output = outputs.single_output(
    cfg.save.path,
    i.content_path,
    cfg.style_paths,
    resume=cfg.run.resume,
    checkpoint_dir=cfg.run.checkpoint_dir,
  )
  outputs.check_writable(output, cfg.save.bit_depth)
  ckpt = checkpoint_lib.path_for(output, cfg.run.checkpoint_dir)
  legacy = output_names.legacy_derived(output, checkpoint_lib.SUFFIX)
  # Not one noting another result as its own (trial 43 Q5: r.png's kept r.ckpt offered to r.jpg).
  noted = checkpoint_store.noted_result(legacy)[1] if legacy is not None else None
  legacy = legacy if noted in (None, os.path.realpath(output)) else None
  if cfg.run.resume and not ckpt.exists() and legacy is not None and legacy.exists():
    raise errors.NstError(
      f"no checkpoint {ckpt} to resume, but {legacy} may be this run's, named as nst-jax did "
      f'before 2026-12 for non-PNG outputs: rename it to {ckpt.name} and resume again'
    )
  if cfg.run.resume and not ckpt.exists() and output_names.record_naming(output) is not None:
    raise errors.NstError(  # trial 34: 'no checkpoint to resume', of a run that had finished
      f'{errors.printable(output)} is finished (its run record says so) and its checkpoint was '
      'not kept; run without run.resume to make it again (run.keep_checkpoint keeps one)'
    )
  if cfg.run.resume and not ckpt.exists():
    other = '' if cfg.run.checkpoint_dir else ' (or give the run.checkpoint_dir it ran with)'
    raise errors.NstError(f'no checkpoint {ckpt} to resume{other}; run without run.resume to start')
  return output


def planned_output(cfg: config_lib.StyleConfig, output: Path, height: int, **kwargs):
  """The planner's view of an image result of `cfg` at `height` x width (output_plan.Output)."""
  pixels = height * cfg.inputs.width
  buffers = memory_lib.optimizer_image_buffers(cfg.optim.name, cfg.optim.lbfgs_memory)
  return output_plan.image_output(
    output,
    pixels=pixels,
    state_bytes=output_plan.state_bytes(pixels, image_buffers=buffers + 1),
    record=cfg.save.record,
    save_iter=cfg.save.save_iter,
    iterations=results_lib.stage_iterations(cfg),
    checkpoint=checkpoint_lib.path_for(output, cfg.run.checkpoint_dir),
    **kwargs,
  )


def _plan_memory(cfg: config_lib.StyleConfig, layout: sharding_lib.Layout):
  """`cfg` with its memory plan made (loss.tiles resolved), or NstError if nothing fits."""
  # Sizes from the headers, so a huge -w is refused before anything is decoded.
  i = cfg.inputs
  height = inputs_lib.largest_height(i.content_path, cfg.style_paths, cfg)
  spatial = len(layout.mesh.devices.flat) if isinstance(layout, sharding_lib.SpatialLayout) else 1
  output_height = inputs_lib.output_height(i.content_path, cfg)  # what the messages name
  return memory_lib.fit(
    height, i.width, config=cfg, spatial_devices=spatial, output_height=output_height
  )


def run(cfg: config_lib.StyleConfig) -> Path:
  """Reads the images named in `cfg`, stylizes, and writes the result.

  The output is checked for writability and the memory need estimated before
  any computation; intermediate images (every `cfg.save.save_iter`) go beside
  it as <name>_<iteration>.png and the checkpoint as <name>.ckpt. SIGINT and
  SIGTERM save the checkpoint and the current image, then raise Interrupted.
  Every file is written atomically, in the output's format with the content
  image's ICC profile.

  Args:
    cfg: a StyleConfig naming the files (`inputs.content_path`,
      `inputs.style_path`); a group alone is refused naming the fix.

  Returns:
    The path written.
  """
  cfg = config_lib.as_style_config(cfg, 'cfg')
  compile_cache.use(cfg.run.compile_cache)  # before JAX's first compile reads it
  i = cfg.inputs
  output = _single_output(cfg)
  try:
    height = inputs_lib.output_height(i.content_path, cfg)
  except errors.ImageError as e:
    raise errors.ImageError(f'inputs.content_path: {e}') from None
  layout = layout_for(cfg, height)
  cfg = _plan_memory(cfg, layout)
  plan = [planned_output(cfg, output, height)]
  _check_plan(cfg, plan)
  ckpt = checkpoint_lib.path_for(output, cfg.run.checkpoint_dir)
  start_over(output, cfg, forget=False)  # its images forgotten after the last plan check
  if not cfg.run.resume:
    if not cfg.save.path or outputs.names_output_directory(cfg.save.path):
      check_no_interrupted(
        i.content_path, cfg.style_paths, cfg.save.path or outputs.DEFAULT_OUTPUT_DIR, cfg
      )
  # Before any input loads or file is written: a checkpoint past -i is refused.
  resume = resume_from(cfg, ckpt, required=False)
  return _run_single(cfg, output, layout, plan, resume)


def start_over(output: Path, cfg: config_lib.StyleConfig, *, forget: bool = True) -> None:
  """Refuses an output another run is writing now (its checkpoint is a live run's: trial 49 C1,
  a batch was told it was unfinished and to delete it), and, without run.resume, an output whose
  checkpoint holds an unfinished run. After the plan: a checkpoint name that is an input is
  refused there."""
  if output_locks.busy(output):
    raise errors.NstError(
      f'another nst-jax run is writing {errors.printable(output)}; wait for it to finish or '
      'choose another output name'
    )
  if not cfg.run.resume:
    outputs.start_over(checkpoint_lib.path_for(output, cfg.run.checkpoint_dir), forget=forget)


def check_no_interrupted(content: str, styles, directory: str, cfg: config_lib.StyleConfig):
  """Refuses a new automatic name beside an interrupted run of the same images.

  Automatic names skip every name with a checkpoint, so without this check a
  rerun that forgot run.resume would start over at `_2` and leave the
  interrupted run behind unsaid. A live run's checkpoint (its output locked)
  is not refused: a second run at once gets the next name.
  """
  found = outputs.newest_checkpointed(content, styles, directory, cfg.run.checkpoint_dir)
  if found is not None and not output_locks.busy(found):
    outputs.check_not_unfinished(checkpoint_lib.path_for(found, cfg.run.checkpoint_dir))


def _check_plan(cfg: config_lib.StyleConfig, plan) -> None:
  output_plan.check(plan, inputs=inputs_lib.input_files(cfg), overwrite=cfg.save.overwrite)


def _run_single(cfg: config_lib.StyleConfig, output: Path, layout, plan, resume) -> Path:
  """`run` once its output is planned: inputs, weights, then the locks and the engine."""
  i = cfg.inputs
  ckpt = checkpoint_lib.path_for(output, cfg.run.checkpoint_dir)
  row = inputs_lib.load_row(
    cfg,
    i.content_path,
    cfg.style_paths,
    content_mask=i.content_mask,
    style_masks=i.style_masks,
    checkpoint=ckpt,
  )
  inputs_lib.check_size(cfg, row)
  icc = image_lib.icc_profile(i.content_path, max_pixels=i.max_image_pixels)
  # Bound before the weights load and the compile, so a busy port fails fast.
  with (
    preview_lib.serving(cfg.run.serve, title=output.name) as preview,
    contextlib.ExitStack() as held,
  ):
    w = weights_lib.for_model(cfg.model)
    # Locked once every input has loaded: a run refused until here wrote nothing.
    held.enter_context(output_plan.locked(plan, then_check=lambda: _check_plan(cfg, plan)))
    if not cfg.run.resume:  # checked: a killed run's images it noted are this run's to replace
      checkpoint_store.forget_images(ckpt)
    logging.info(
      'Styling %s (%dx%d) after %s, with the VGG-19 weights from %s.',
      i.content_path,
      row.content.shape[1],
      row.content.shape[0],
      ' and '.join(cfg.style_paths),
      w.info.source,
    )
    results = results_lib.Results(cfg, w.info, {0: output}, {0: row}, icc={0: icc})
    record = {}
    with signals.stop_on_signals() as stop, results.noting_stops():
      rgb = make_engine(cfg, w, layout).run(
        {0: row},
        real=(0,),
        watch=watch(cfg, results, preview=preview, should_stop=stop),
        resume=resume,
        record=record,
      )[0]
    try:
      results.write(0, rgb, record)
    except errors.WriteError as e:
      raise results_lib.unwritten(e, ckpt) from None
    if preview is not None:
      preview.finish(rgb, output)
    if not cfg.run.keep_checkpoint:  # kept, it noted its result's digest as written (trial 45:
      checkpoint_lib.remove(ckpt)  # noted here, a picture saved over it since became its own)
    logging.info('%s', results_lib.summary(output, record, results, resumed=resume is not None))
    return output
