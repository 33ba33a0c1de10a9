"""Batch mode: many jobs, grouped by output shape, over every device of every process.

Each process runs the same command with the same job list and reads, computes and writes only
its own jobs (nst_jax.engine.distributed.owner). Jobs of one output shape (and one resume point)
run as one batch through the engine, their rows split over the mesh of all devices. Everything
single runs have works per job: the schedule, masks, colour controls, an init image,
intermediates, checkpoints and `--resume`, signals, the run record. Every step that can fail on
one process is agreed by all, so a failure anywhere ends every process with the same one-line
error.
"""

from collections.abc import Sequence
import contextlib
import dataclasses
import os
from pathlib import Path

from absl import logging
import jax
import numpy as np
import PIL.Image

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.engine import compile_cache
from nst_jax.engine import distributed
from nst_jax.engine import engine as engine_lib
from nst_jax.engine import memory as memory_lib
from nst_jax.engine import preview as preview_lib
from nst_jax.engine import rows as rows_lib
from nst_jax.engine import schedule as schedule_lib
from nst_jax.engine import sharding as sharding_lib
from nst_jax.engine import signals
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import jobs as jobs_lib
from nst_jax.io import output_names
from nst_jax.io import outputs
from nst_jax.io import weights as weights_lib
from nst_jax.runs import inputs as inputs_lib
from nst_jax.runs import output_plan
from nst_jax.runs import results as results_lib
from nst_jax.runs import runner


def _batch_output_dir(jobs: list[jobs_lib.Job], cfg: config_lib.StyleConfig):
  """(jobs, directory): --output as a directory, or as the file of a single job."""
  path = cfg.save.path
  if path and not outputs.names_output_directory(path):
    if len(jobs) == 1 and not jobs[0].output:
      return [dataclasses.replace(jobs[0], output=path)], outputs.DEFAULT_OUTPUT_DIR
    raise errors.ConfigError(
      f'save.path {path} names a file, but there are {len(jobs)} jobs; name a directory '
      '(ending in /)'
    )
  return jobs, path or outputs.DEFAULT_OUTPUT_DIR


def _check_jobs(jobs, cfg) -> None:
  """The owner of each job checks its files and output (agreed by all processes)."""
  for index, job in enumerate(jobs):
    if not distributed.mine(index):
      continue
    for path in (job.content, *job.style, *([job.content_mask] if job.content_mask else ()),
                 *job.style_masks):  # fmt: skip
      if not Path(path).is_file():
        raise errors.ImageError(f'image {path} does not exist (job {index + 1}); check the path')
    outputs.check_writable(Path(job.output), cfg.save.bit_depth)


def _job_status(jobs, cfg) -> np.ndarray:
  """Every job's [height, width, resumable, scale, iteration, finished], on every process."""
  local = {}
  stages = schedule_lib.plan(cfg.inputs.width, cfg.schedule)
  with distributed.together():
    for index, job in enumerate(jobs):
      if not distributed.mine(index):
        continue
      ckpt = checkpoint_lib.path_for(job.output, cfg.run.checkpoint_dir)
      # A checkpoint past -i is refused (agreed by every process), as a single run's.
      point = engine_lib.resume_point(ckpt, stages) if cfg.run.resume else None
      finished = False
      if point is not None:
        payload = checkpoint_lib.read(ckpt)
        finished = not checkpoint_lib.unfinished(payload)
        # Trial 26: another setting was refused only after the other jobs had run.
        differs = checkpoint_lib.config_difference(ckpt, payload['settings'], cfg)
        if differs is not None and not finished:
          raise differs
        why = _not_whole(job, cfg) if finished else None
        if differs is not None and not (why or '').startswith(_MADE_WITH):
          why = f'{_MADE_WITH} another {differs.setting} (its finished checkpoint says so)'
        # The job was edited since: its kept checkpoint is the earlier job's (trial 22: resuming
        # it was refused); not where only an older result's -i, say, differs (47 P2-7c: rerun).
        if why and why.startswith(_MADE_WITH) and (differs or _not_whole(job, cfg, _JOB_SETTINGS)):
          logging.warning(
            'job %d: %s %s; running it again, replacing its finished checkpoint %s',
            index + 1, errors.printable(job.output), why, ckpt,
          )  # fmt: skip
          point, finished = None, False
        elif why:  # killed before its result or record: written again from the whole state
          logging.warning(
            'job %d: %s %s although its checkpoint %s is finished; writing it from the checkpoint',
            index + 1, errors.printable(job.output), why, ckpt,
          )  # fmt: skip
          finished = False
      elif cfg.run.resume and Path(job.output).exists():
        # Its checkpoint is gone: it finished and was cleaned up, if its
        # result is whole and its record says this job made it.
        why = _not_whole(job, cfg)
        finished = why is None
        if why:
          logging.warning(
            'job %d: %s %s; running it again', index + 1, errors.printable(job.output), why
          )
      local[index] = [
        inputs_lib.output_height(job.content, cfg),
        cfg.inputs.width,
        point is not None,
        point.scale if point else 0,
        point.iteration if point else 0,
        finished,
      ]
  return distributed.gather_rows(local, len(jobs), 6)


def _not_whole(job: jobs_lib.Job, cfg: config_lib.StyleConfig, fields=()) -> str | None:
  """Why a job's output does not count as finished on resume, or None if it does.

  Trial 20: any existing file did (one cut short, one of a job since edited in the list, one
  whose record a kill cut off), and the batch exited 0. The output must open as an image and,
  with records on, its record must name it and this job's images, masks and weights (`fields`:
  these settings only, with the images' digests; none: every setting the result depends on).
  """
  out = Path(job.output)
  if not out.is_file():
    return 'is missing'
  try:
    with PIL.Image.open(out) as im:
      im.load()
  except Exception:  # noqa: BLE001 (Pillow raises several types for a damaged file)
    return 'cannot be read (cut short or damaged)'
  if not cfg.save.record:
    return None
  record = output_names.record_naming(out)
  if record is None:
    return 'has no run record naming it'
  if record.get('figures_drawn', True) is not True:  # 47 N2: "finished earlier", never drawn
    return 'lacks its loss plot and sheet (its run stopped while drawing them)'
  was, now = record.get('settings', {}), _job_config(cfg, job)
  # And every setting its path depends on (trial 45: a record of -i 10 counted as finished for
  # -i 30, and the job's own checkpoint was deleted).
  trajectory = [k for k in checkpoint_lib.config_settings(now) if k != 'loss.tiles']  # planned
  for field in fields or dict.fromkeys([*_JOB_SETTINGS, *trajectory, *_FINISH_SETTINGS]):
    group, name = field.split('.')
    if not _same_setting(was.get(group, {}).get(name), getattr(getattr(now, group), name)):
      return f'{_MADE_WITH} another {field} (its run record says so)'
  digests = record.get('inputs_sha256') or {}  # records before 2026-12-07 have none
  for path in (job.content, *job.style):
    if path in digests and os.path.isfile(path) and output_names.file_sha256(path) != digests[path]:
      return f'{_MADE_WITH} another {errors.printable(path)} (its content changed since)'
  return None


# What a job's run record must hold as the job list now says (trial 22: an edited weight counted
# as finished). Paths compare as resolved files.
_JOB_SETTINGS = (
  'inputs.content_path', 'inputs.style_path', 'inputs.content_mask', 'inputs.style_masks',
  'loss.content_weight', 'loss.style_weight',
)  # fmt: skip
_MADE_WITH = 'was made with'
# What a checkpoint may change on resume, but a finished result was made with.
_FINISH_SETTINGS = ('schedule.iterations', 'schedule.tol', 'schedule.window')


def _same_setting(was, now) -> bool:
  """A record's value (JSON) and the job's: paths as files, lists item by item, numbers by value."""
  if isinstance(now, tuple | list):
    return isinstance(was, list) and len(was) == len(now) and all(map(_same_setting, was, now))
  if isinstance(now, str) and now and isinstance(was, str) and was:
    return output_names.resolved(was) == output_names.resolved(now)
  return was == now


def run_batch(
  jobs: Sequence[jobs_lib.Job],
  cfg: config_lib.StyleConfig,
  *,
  weights: weights_lib.Weights | None = None,
  record: dict | None = None,
  mesh=None,
  inputs: Sequence[str] = (),
) -> dict[str, np.ndarray]:
  """Batch mode: names the outputs, checks, runs each group of jobs, writes.

  Every process runs this with the same job list; each reads, computes and
  writes only its own jobs (nst_jax.engine.distributed.owner). With `--resume`,
  finished jobs are skipped and unfinished ones continue from their
  checkpoints. Checkpoints are kept until the whole batch has finished.

  Args:
    jobs: the jobs (outputs named automatically where empty).
    cfg: the shared settings; a job's own weights and masks replace them.
    weights: loaded weights (default: fetched as `cfg.model.weights` says).
    record: a dict that gets 'groups': per group, its shape, rows, the jobs
      here, and the compiled step's layout (sharding.describe).
    mesh: a 1-D mesh with axis 'jobs' (default: every device of every process).
    inputs: other files the caller read (the job list), which no output may
      replace.

  Returns:
    Output path -> RGB [H, W, 3] in [0, 1], for the jobs this process wrote.
  """
  compile_cache.use(cfg.run.compile_cache)
  if cfg.run.shard != 'jobs':
    raise errors.ConfigError(
      f'run.shard {cfg.run.shard} runs one image at a time: give one content and one style '
      'image, or set run.shard to jobs for a batch'
    )
  mesh = mesh or sharding_lib.jobs_mesh()
  jobs, plan, recheck = _plan_outputs(jobs, cfg, inputs)
  return _run_batch(jobs, cfg, weights, record, mesh, plan, recheck)


def _run_batch(jobs, cfg, weights, record, mesh, plan, recheck) -> dict[str, np.ndarray]:
  """`run_batch` once every output is planned: weights, then the locks and the groups."""
  groups = _plan(jobs, cfg, mesh.size // jax.process_count())
  plans = [
    memory_lib.check_memory(
      group.height, group.width, config=cfg, batch=len(group.rows) // mesh.size, can_split=False
    )
    for group in groups
  ]
  cfg = memory_lib.planned(cfg, plans)
  w = (
    weights
    if weights is not None
    else distributed.fetch_weights(cfg.model.weights, cfg.model.weights_url)
  )
  written = {}
  with contextlib.ExitStack() as stack:
    with distributed.together():
      local = [i for i in range(len(jobs)) if distributed.mine(i)]
      stack.enter_context(output_plan.locked(plan, local=local, then_check=recheck))
    first = next((g for g in groups), None)
    port = cfg.run.serve if jax.process_index() == 0 else None
    preview = stack.enter_context(preview_lib.serving(port, title='batch'))
    # This process's flag: the loop's sync agrees it with the others, with the losses.
    stop = stack.enter_context(signals.stop_on_signals())
    for group in groups:
      shows = preview if group is first else None  # its monitor row, 'done' at the end (trial 28)
      written |= _run_group(group, jobs, cfg, w, mesh, stop, shows, record)
    if preview is not None and preview.pending is not None:
      preview.finish(*preview.pending)
  with distributed.together():
    for index, job in enumerate(jobs):
      ckpt = checkpoint_lib.path_for(job.output, cfg.run.checkpoint_dir)
      if distributed.mine(index) and not cfg.run.keep_checkpoint:  # kept: its result noted as
        checkpoint_lib.remove(ckpt)  # written (trial 45: noted here, a user's picture since)
  return written


def _plan_outputs(jobs, cfg, inputs):
  """Names and checks every output (output_plan.check), alike on every process.

  Returns:
    (jobs with their outputs, the plan, the check to run again under the locks).
  """
  jobs, directory = _batch_output_dir(list(jobs), cfg)
  automatic = [not job.output for job in jobs]
  with distributed.together():
    jobs = outputs.assign_outputs(
      [_with_defaults(job, cfg) for job in jobs],
      directory,
      resume=cfg.run.resume,
      checkpoint_dir=cfg.run.checkpoint_dir,
    )
    _check_jobs(jobs, cfg)
    files = {f'job list {Path(path).name}': path for path in inputs}
    plan = []
    for index, job in enumerate(jobs):
      job_cfg = _job_config(cfg, job)
      files |= inputs_lib.input_files(job_cfg, owner=f' of job {index + 1}')
      height = inputs_lib.output_height(job.content, cfg) if distributed.mine(index) else 0
      owner = f'job {index + 1}'
      plan.append(runner.planned_output(job_cfg, Path(job.output), height, owner=owner))
    local = [i for i in range(len(jobs)) if distributed.mine(i)]

    def recheck():
      output_plan.check(plan, inputs=files, overwrite=cfg.save.overwrite, local=local)

    recheck()
    for index in local:  # after the plan (runner.start_over)
      runner.start_over(Path(jobs[index].output), cfg)
      if automatic[index] and not cfg.run.resume:
        job = jobs[index]
        runner.check_no_interrupted(job.content, job.style, directory, cfg)
  if jax.process_count() > 1:
    # Names depend on which files exist: fixed everywhere before any is written.
    distributed.agree(None)
  return jobs, plan, recheck


def _plan(jobs, cfg, local_devices) -> list[distributed.Group]:
  """Groups the unfinished jobs (alike on every process)."""
  status = _job_status(jobs, cfg)
  finished = status[:, 5].astype(bool)
  groups = distributed.plan_groups(
    [(int(h), int(w)) for h, w in status[:, :2]],
    processes=jax.process_count(),
    local_devices=local_devices,
    resume=[(int(s[3]), int(s[4])) if s[2] else None for s in status],
    skip=finished,
  )
  logging.info(
    'process %d: %d jobs, %d of them here, %d finished earlier, on %d devices',
    jax.process_index(),
    len(jobs),
    sum(distributed.mine(i) for i in range(len(jobs))),
    int(finished.sum()),
    jax.device_count(),
  )
  return groups


def _with_defaults(job: jobs_lib.Job, cfg: config_lib.StyleConfig) -> jobs_lib.Job:
  """A job's masks default to the command line's."""
  return dataclasses.replace(
    job,
    content_mask=job.content_mask or cfg.inputs.content_mask,
    style_masks=job.style_masks or cfg.inputs.style_masks,
  )


def _load_rows(group, jobs, cfg, layout) -> dict[int, rows_lib.Row]:
  """This process's rows of a group: its jobs' images (read by their owner) and fillers."""
  rows = {}
  with distributed.together():
    for r in layout.local_rows():
      index = group.rows[r]
      if index is None:
        rows[r] = rows_lib.filler_row(group.height, group.width)
        continue
      if not distributed.mine(index):
        # The plan put every job on its owner's devices; a mesh in another
        # device order would make this process read another's files.
        raise RuntimeError(f"row {r} (job {index}) is not on its owner's devices")
      job = jobs[index]
      rows[r] = inputs_lib.load_row(
        cfg,
        job.content,
        job.style,
        content_mask=job.content_mask,
        style_masks=job.style_masks,
        content_weight=job.content_weight,
        style_weight=job.style_weight,
        checkpoint=checkpoint_lib.path_for(job.output, cfg.run.checkpoint_dir),
        job=index + 1,
      )
      if rows[r].content.shape[:2] != (group.height, group.width):
        raise errors.ImageError(
          f'{job.content} decoded as {rows[r].content.shape[1]}x{rows[r].content.shape[0]} at '
          f'width {group.width}, not the {group.width}x{group.height} its header gave; re-save the '
          'file'
        )
      inputs_lib.check_size(cfg, rows[r], f' of job {index + 1}')
  return rows


def _run_group(group, jobs, cfg, w, mesh, stop, preview, group_record) -> dict[str, np.ndarray]:
  """One group through the engine; each process writes its own jobs' results."""
  prefix = f'process {jax.process_index()}: '
  layout = sharding_lib.JobsLayout(mesh, len(group.rows))
  rows = _load_rows(group, jobs, cfg, layout)
  real = tuple(r for r, index in enumerate(group.rows) if index is not None)
  local_real = [r for r in rows if r in real]
  logging.info(
    '%s%d jobs of %dx%d (%d rows on %d devices)',
    prefix,
    len(real),
    group.width,
    group.height,
    len(group.rows),
    mesh.size,
  )
  results = results_lib.Results(
    cfg,
    w.info,
    {r: jobs[group.rows[r]].output for r in local_real},
    rows,
    configs={r: _job_config(cfg, jobs[group.rows[r]]) for r in local_real},
    prefix=prefix,
  )
  progress = cfg.run.progress if jax.process_index() == 0 else 'log'
  monitor_row = local_real[0] if local_real else 0
  watch = runner.watch(
    cfg.replace(run=cfg.run.replace(progress=progress)),
    results,
    preview=preview,
    monitor_row=monitor_row,
    should_stop=stop,
    prefix=prefix,
  )
  record = {}
  resume = engine_lib.ResumePoint(*group.resume) if group.resume else None
  engine = runner.make_engine(cfg, w, layout)
  with results.noting_stops():
    rgb = engine.run(rows, real=real, watch=watch, resume=resume, record=record)
  if group_record is not None and record.get('scales'):
    group_record.setdefault('groups', []).append(
      {
        'height': group.height,
        'width': group.width,
        'rows': len(group.rows),
        'jobs_here': len(local_real),
        **record['scales'][-1],
      }
    )
  written = {}
  with distributed.together():
    for r in local_real:
      try:
        path = results.write(r, rgb[r], record)
      except errors.WriteError as e:
        ckpt = checkpoint_lib.path_for(jobs[group.rows[r]].output, cfg.run.checkpoint_dir)
        raise results_lib.unwritten(e, ckpt) from None
      written[jobs[group.rows[r]].output] = rgb[r]
      if preview is not None and r == monitor_row:
        preview.pending = (rgb[r], path)
  return written


def _job_config(cfg: config_lib.StyleConfig, job: jobs_lib.Job) -> config_lib.StyleConfig:
  """The settings one job ran with (its own paths, weights and output)."""
  loss = cfg.loss
  if job.content_weight is not None:
    loss = loss.replace(content_weight=job.content_weight)
  if job.style_weight is not None:
    loss = loss.replace(style_weight=job.style_weight)
  return cfg.replace(
    inputs=cfg.inputs.replace(
      content_path=job.content,
      style_path=tuple(job.style),
      content_mask=job.content_mask,
      style_masks=tuple(job.style_masks),
    ),
    loss=loss,
    save=cfg.save.replace(path=job.output),
  )
