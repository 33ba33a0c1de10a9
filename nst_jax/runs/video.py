"""Video style transfer (Ruder et al.): frames kept consistent by optical flow.

Two ways to run a clip, both through the engine (the temporal term, start images and flows are in
nst_jax.runs.temporal):

  * one pass (`video.passes` 1, the default): frame t starts from frame t-1's result warped by
    the flow and adds the temporal term to its objective; the next pair's flow is computed on the
    host meanwhile.
  * several passes: every frame is stylised on its own first; then each pass, alternating in
    direction, starts every frame from a blend of its result and its neighbour's warped result,
    with the temporal term towards that neighbour. Within a pass the frames are independent
    problems, one batch over every device (and host), like a batch of jobs.

Each finished frame is kept (16-bit PNG) in a hidden work directory beside the output, with the
running frame's checkpoint, so `run.resume` continues at the first unfinished frame (one pass) or
the last unfinished pass. The video (or frames) appears only when complete, with its run record.

Reference: Ruder, Dosovitskiy & Brox, "Artistic style transfer for videos", GCPR
2016 (arXiv:1604.08610); "... and spherical images", IJCV 2018 (multi-pass, 3.3).
"""

import contextlib
import dataclasses
import json
from pathlib import Path
import shutil
import time

from absl import logging
import jax
import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core import pixels
from nst_jax.engine import compile_cache
from nst_jax.engine import engine as engine_lib
from nst_jax.engine import hooks as hooks_lib
from nst_jax.engine import memory as memory_lib
from nst_jax.engine import preview as preview_lib
from nst_jax.engine import rows as rows_lib
from nst_jax.engine import schedule as schedule_lib
from nst_jax.engine import sharding as sharding_lib
from nst_jax.engine import signals
from nst_jax.io import atomic
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import images as image_lib
from nst_jax.io import output_names
from nst_jax.io import video as video_lib
from nst_jax.io import weights as weights_lib
from nst_jax.runs import flow as flow_lib
from nst_jax.runs import inputs as inputs_lib
from nst_jax.runs import output_plan
from nst_jax.runs import results as results_lib
from nst_jax.runs import runner as pipeline
from nst_jax.runs import temporal
from nst_jax.runs import video_work


def run_video(cfg: config_lib.StyleConfig) -> Path:
  """Stylises a video (or frame sequence) named by `cfg.inputs.content_path`.

  Returns:
    The video file (or frame directory) written.
  """
  compile_cache.use(cfg.run.compile_cache)
  v = cfg.video
  if v.passes > cfg.schedule.iterations:
    raise errors.ConfigError(
      f'video.passes is {v.passes} but schedule.iterations is {cfg.schedule.iterations}, and '
      'each pass needs an iteration; raise schedule.iterations or lower video.passes'
    )
  # Trial 28: refused late in the API's words (an --init file), or taken and not done (16 bits,
  # intermediates).
  if cfg.inputs.init not in config_lib.INITS:
    raise errors.ConfigError(
      f'inputs.init {cfg.inputs.init!r}: a video starts each frame from its content, noise, '
      'grey or the frame before; give inputs.init content, random or gray'
    )
  if cfg.save.bit_depth != 8:
    raise errors.ConfigError('save.bit_depth 16 is for image results; a video is written with 8 '
                             'bits per channel: use save.bit_depth 8')  # fmt: skip
  if cfg.save.save_iter:
    logging.warning('save.save_iter applies to image and batch runs; a video saves no images '
                    'between its frames')  # fmt: skip
  clip = video_lib.open_clip(cfg.inputs.content_path, v.frames, v.fps)
  if cfg.run.checkpoint_dir:  # trial 22: a bucket asked for, and the state on the VM's disk
    logging.warning('run.checkpoint_dir applies to image and batch runs; a video keeps its '
                    'state in its work directory beside the output (.NAME.work)')  # fmt: skip
  paths = video_work.paths(cfg)
  for note in clip.notes:
    logging.info('%s: %s', clip.path, note)
  height = pixels.resized_height(clip.width, clip.height, cfg.inputs.width)
  frame = pipeline.planned_output(cfg, paths.output, height)
  plan = [
    output_plan.Output(
      paths.output,
      'the video' if not paths.as_frames else 'the frames of',
      pixels=frame.pixels * clip.count,
      state_bytes=frame.state_bytes,
      derived=(('run record', video_work.record_path(paths)),) if cfg.save.record else (),
      directory=paths.as_frames,
      resumable=paths.work,
    )
  ]
  from nst_jax.engine import distributed

  with distributed.together():  # process 0 writes the result: its checks, agreed by all
    # A work directory to discard counts as gone, and goes once the plan is accepted.
    gone = paths.work / 'discarded' if paths.discard else paths.work
    _recheck(cfg, [dataclasses.replace(plan[0], resumable=gone)])
  video_work.discard(paths)
  return _run_video(cfg, clip, paths, height, plan)


def _recheck(cfg, plan) -> None:
  local = [0] if jax.process_index() == 0 else []
  output_plan.check(
    plan, inputs=inputs_lib.input_files(cfg), overwrite=cfg.save.overwrite, local=local
  )


def _run_video(cfg: config_lib.StyleConfig, clip, paths: video_work.Paths, height, plan) -> Path:
  """`run_video` once its output is planned: inputs, weights, then the locks and the frames."""
  v, given = cfg.video, cfg  # its frames are never split over devices: run.shard is not read
  per_device = -(-clip.count // jax.device_count()) if v.passes > 1 else 1
  cfg = memory_lib.fit(height, cfg.inputs.width, config=cfg, batch=per_device, can_split=False)
  frames = list(
    video_lib.read_frames(clip, cfg.inputs.width, max_pixels=cfg.inputs.max_image_pixels)
  )
  sw = inputs_lib.style_width(cfg, cfg.inputs.width)
  styles = [image_lib.load_image(s, width=sw, max_pixels=cfg.inputs.max_image_pixels)
            for s in cfg.style_paths]  # fmt: skip
  inputs_lib.check_size(cfg, rows_lib.Row(content=frames[0], styles=styles), ' (a frame)')
  logging.info(
    'Styling %d frames of %s (%dx%d, %s fps) after %s; %s.',
    len(frames),
    clip.path,
    cfg.inputs.width,
    height,
    f'{float(clip.fps):g}',
    ' and '.join(cfg.style_paths),
    'one pass, frame after frame' if v.passes == 1 else f'{v.passes} passes over all frames',
  )
  with preview_lib.serving(cfg.run.serve, title=paths.output.name) as preview:
    w = weights_lib.for_model(cfg.model)
    # Locked once every input has loaded (a run refused until here wrote
    # nothing), by process 0, which writes the result.
    from nst_jax.engine import distributed

    local = [0] if jax.process_index() == 0 else []
    with contextlib.ExitStack() as held:
      with distributed.together():
        held.enter_context(
          output_plan.locked(plan, local=local, then_check=lambda: _recheck(cfg, plan))
        )
      # What the plan let this run replace; a file there later is someone's (trial 34).
      there = {p: results_lib.stamp(p) for p in (paths.output, video_work.record_path(paths))}
      with distributed.together():  # before any frame: a resume with other settings is refused
        now = video_work.settings(given, weights_hash=w.info.params_sha256, frames=frames,
                                  styles=styles)  # fmt: skip
        video_work.hold_settings(paths, now)
      t0 = time.perf_counter()
      record = {'frames': []}
      with signals.stop_on_signals() as stop:
        if v.passes == 1:
          results = _one_pass(cfg, w, frames, styles, paths, record, stop, preview)
        else:
          results = _passes(cfg, w, frames, styles, paths, record, stop, preview)
      _write(cfg, paths, clip, results, record, time.perf_counter() - t0, there)
      if preview is not None:  # trial 28: it never said done
        preview.finish(results[-1], str(paths.output))
  return paths.output


def _engine(cfg, w, layout):
  return pipeline.make_engine(cfg, w, layout, loss_fn=temporal.video_objective)


def _one_pass(cfg, w, frames, styles, paths, record, stop, preview) -> list[np.ndarray]:
  convention = w.info.input_convention
  engine = _engine(cfg, w, sharding_lib.SingleLayout())
  flows = temporal.Flows(frames, cfg.video.flow)
  results = []
  try:
    for t, content in enumerate(frames):
      done = paths.frame(t)
      if done.exists():  # finished before an interruption: its image and record entry
        rgb, entry = video_lib.load_work_frame(done)
        results.append(rgb)
        record['frames'] += [entry] if entry is not None else []
        continue
      t0 = time.perf_counter()
      wait = 0.0
      if t == 0:
        init, extra = None, temporal.no_temporal(content, convention)
      else:
        f, wait = flows.get(t)
        init, extra = temporal.from_neighbour(
          results[-1], f, cfg.video.temporal_weight, convention, content
        )
      flows.prefetch(t + 1)  # the next pair's flow, while the device works on this frame
      row = rows_lib.Row(
        content=content, styles=styles, init_rgb=init, extra=extra, checkpoint=paths.checkpoint(t)
      )
      prefix = f'frame {t + 1}/{len(frames)}: '
      rgb, losses_t = _run_rows(cfg, engine, {0: row}, (0,), stop, preview, prefix)
      seconds = time.perf_counter() - t0
      record['frames'].append({'frame': t, 'time_s': seconds, 'flow_wait_s': wait, **losses_t[0]})
      video_lib.save_work_frame(done, rgb[0], record['frames'][-1])
      checkpoint_store.remove(paths.checkpoint(t))
      results.append(video_lib.quantized(rgb[0]))  # as a resumed run loads it: resumes are exact
      logging.info(
        'frame %d/%d done in %.1f s (waited %.2f s for its flow)', t + 1, len(frames), seconds, wait
      )
  finally:
    record['flow_s'] = flows.seconds
    flows.close()
  return results


def _resume_point(rows, real, stages=None) -> engine_lib.ResumePoint | None:
  """Where the rows' checkpoints stand (all rows of a run checkpoint together), on every process.

  `stages`: the frame's (a checkpoint past them is refused: engine.check_budget).
  """
  from nst_jax.engine import distributed

  point = [0, 0, 0]
  for r in real:
    if r in rows and rows[r].checkpoint is not None and Path(rows[r].checkpoint).exists():
      found = engine_lib.resume_point(rows[r].checkpoint, stages)
      point = [1, found.scale, found.iteration]
      break
  table = distributed.gather_rows({jax.process_index(): point}, jax.process_count(), 3)
  for has, scale, iteration in table:
    if has:
      return engine_lib.ResumePoint(int(scale), int(iteration))
  return None


def _run_rows(cfg, engine, rows, real, stop, preview, prefix):
  """Runs rows through the engine with the run's hooks; (RGB per row, final losses per row)."""
  history = hooks_lib.History(cfg.run.print_iter, list(real))
  watch = engine_lib.Watch.of_run(
    cfg.run,
    prefix=prefix,
    monitor=preview,
    monitor_row=real[0],
    should_stop=stop,
    history=history,
  )
  # One pass: a frame's checkpoint past -i is refused as an image's. Several:
  # each pass runs a share of -i, which a refusal would name (not checked).
  width = next(iter(rows.values())).content.shape[1]
  stages = schedule_lib.plan(width, cfg.schedule) if cfg.video.passes == 1 else None
  rgb = engine.run(rows, real=real, watch=watch, resume=_resume_point(rows, real, stages))
  return rgb, {r: (history.history[r][-1] if history.history[r] else {}) for r in real}


def _passes(cfg, w, frames, styles, paths, record, stop, preview) -> list[np.ndarray]:
  """Ruder et al.'s multi-pass algorithm, each pass one batch over every device."""
  from nst_jax.engine import distributed

  v, n = cfg.video, len(frames)
  convention = w.info.input_convention
  mesh = sharding_lib.jobs_mesh()
  (group,) = distributed.plan_groups(
    [frames[0].shape[:2]] * n,
    processes=jax.process_count(),
    local_devices=mesh.size // jax.process_count(),
  )
  layout = sharding_lib.JobsLayout(mesh, len(group.rows))
  local = layout.local_rows()
  real = tuple(r for r, k in enumerate(group.rows) if k is not None)
  budgets = schedule_lib.split(cfg.schedule.iterations, [1.0] * v.passes)
  flows = temporal.PairFlows(frames, v.flow)
  results: list[np.ndarray] | None = None
  for p, budget in enumerate(budgets):
    stage = f'pass{p + 1}'
    if all(paths.frame(k, stage).exists() for k in range(n)):
      results = [video_lib.load_work_frame(paths.frame(k, stage))[0] for k in range(n)]
      continue
    _whole_pass(paths, stage, group, local, p)
    step = 1 if p % 2 else -1  # odd passes look back, even ones ahead
    rows = {}
    for r in local:
      k = group.rows[r]
      if k is None:
        rows[r] = rows_lib.filler_row(*frames[0].shape[:2])
        rows[r].extra = temporal.no_temporal(frames[0], convention)
        continue
      j = k - step
      init, extra = None, temporal.no_temporal(frames[k], convention)
      if results is not None and 0 <= j < n:
        f = flows.into(k, j)
        blend = flow_lib.Flows(f.backward, f.forward, f.weight * v.blend)
        init, extra = temporal.from_neighbour(
          results[j], blend, v.temporal_weight, convention, results[k]
        )
        extra['weight'] = f.weight
      elif results is not None:
        init = results[k]
      rows[r] = rows_lib.Row(
        content=frames[k], styles=styles, init_rgb=init, extra=extra,
        checkpoint=paths.checkpoint(k, stage),
      )  # fmt: skip
    pass_cfg = cfg.replace(schedule=cfg.schedule.replace(iterations=budget))
    t0 = time.perf_counter()
    rgb, final = _run_rows(
      pass_cfg, _engine(pass_cfg, w, layout), rows, real, stop, preview,
      f'pass {p + 1}/{v.passes}: ',
    )  # fmt: skip
    for r in local:
      if group.rows[r] is not None:
        video_lib.save_work_frame(paths.frame(group.rows[r], stage), rgb[r])
        checkpoint_store.remove(paths.checkpoint(group.rows[r], stage))
    results = _gather(layout, group, rgb, local, frames[0].shape)
    record['frames'] = [
      {'frame': group.rows[r], 'pass': p + 1, **final[r]} for r in real if r in final
    ]
    record.setdefault('passes', []).append(
      {'pass': p + 1, 'iterations': budget, 'time_s': time.perf_counter() - t0}
    )
  record['flow_s'] = flows.seconds
  return results


def _whole_pass(paths, stage, group, local, p) -> None:
  """Removes a pass's checkpoints unless every frame's holds the same iteration (trial 28).

  The frames of a pass are one batch with one iteration count, but their
  checkpoints are saved one after another: a kill between two left frames
  at different iterations, and the resume mixed them (or, with one missing,
  was refused for ever). The pass then runs again from its start, whose
  inputs (the previous pass's frames) are kept.
  """
  from nst_jax.engine import distributed

  held = {}
  for r in local:
    if group.rows[r] is not None:
      ckpt = paths.checkpoint(group.rows[r], stage)
      try:
        held[r] = np.array([checkpoint_lib.read(ckpt)['iteration'] if ckpt.exists() else -1])
      except errors.NstError:  # cut short: as missing
        held[r] = np.array([-1])
  table = distributed.gather_rows(held, len(group.rows), 1)[:, 0]
  real = [int(table[r]) for r, k in enumerate(group.rows) if k is not None]
  if len(set(real)) > 1:
    logging.warning('pass %d: its frames\' checkpoints hold different iterations (%s: stopped '
                    'while they were saved); the pass runs again from its start', p + 1,
                    ', '.join(str(i) if i >= 0 else 'none' for i in real))  # fmt: skip
    for r in held:
      checkpoint_store.remove(paths.checkpoint(group.rows[r], stage))
    output_names.remove_temporaries([paths.checkpoint(group.rows[r], stage) for r in held])


def _gather(layout, group, rgb, local, shape) -> list[np.ndarray]:
  """Every frame's result on every process (the next pass needs its neighbours')."""
  n_rows = len(group.rows)
  full = layout.gather(
    layout.assemble(
      (n_rows, *shape), layout.rows_sharding(4), lambda r: rgb.get(r, np.zeros(shape, np.float32))
    )
  )
  # On the 16-bit grid of the saved frames, so a resumed pass continues exactly.
  by_frame = {k: video_lib.quantized(full[r]) for r, k in enumerate(group.rows) if k is not None}
  return [by_frame[k] for k in sorted(by_frame)]


def _write(cfg, paths: video_work.Paths, clip, results, record, seconds, there=None) -> None:
  """The video (or frames), then the run record; the work directory goes unless kept.

  `there`: each file the plan let the run replace, as it was then
  (results.stamp; None: none there); one there by now that is not as it was
  (put there, or saved over since: trial 39) is kept, and the run stops
  with its work kept, to resume.
  """

  def replaceable(path):
    was = (there or {}).get(path)
    return was is not None and results_lib.stamp(path) in (was, None)

  written = {}  # the frames' digests, for the record too (trial 53 F1: claimed by name before)
  if jax.process_index() == 0:
    # A killed run's frames, which its work began to write (trial 49 V2), before this one's mark.
    earlier = output_names.work_frames(paths.work, paths.output)
    video_work.mark(paths, output_names.WORK_WRITING)  # the result is ours now (trial 24)
    if paths.as_frames:  # replacing the frames an earlier run's record claims, nothing else
      claimed = {*output_names.claimed(paths.output), *earlier}
      ours = {p.name for p in claimed if p.parent == paths.output}

      def note(folder: Path) -> None:  # before it is in place: ours by these digests after a kill
        written.update({f.name: output_names.file_sha256(f) for f in sorted(folder.iterdir())})
        video_work.mark(paths, output_names.WORK_FRAMES, json.dumps(written))

      try:
        video_lib.write_frames(paths.output, results, replaces=ours, then=note)
      except video_work.WorkKept:
        raise
      except errors.WriteError as e:  # a full or read-only disk (trial 55 T55-5): kept too
        raise video_work.WorkKept(video_work.kept(e, paths)) from None
      except errors.NstError as e:  # a file put there during the run: the work is kept
        raise errors.NstError(f'{e}, then continue with run.resume') from None
      video_work.mark(paths, output_names.WORK_WRITING, video_work.FRAMES_WRITTEN)
    else:

      def noted(video: Path) -> None:  # ours by digest (trial 43), before it is in place (51 V4)
        video_work.mark(paths, output_names.WORK_WRITING, output_names.file_sha256(video))

      try:
        video_lib.write_video(paths.output, results, clip.fps, audio_from=clip,
                              replace=replaceable(paths.output), then=noted)  # fmt: skip
      except errors.FileAppeared as e:  # not ours, then: a resume must not take it (trial 24)
        (paths.work / output_names.WORK_WRITING).unlink(missing_ok=True)
        raise errors.WriteError(f'{e}; move it away, then continue with run.resume') from None
      except video_work.WorkKept:
        raise
      except errors.WriteError as e:  # a full disk while encoding (trial 57 T57-8: no way on)
        raise video_work.WorkKept(video_work.kept(e, paths)) from None
    target = video_work.record_path(paths)
    if cfg.save.record:
      data = video_work.record_data(cfg, paths, clip, record, seconds, written)
      try:
        atomic.write(target, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)),
                     replace=replaceable(target))  # fmt: skip
      except errors.FileAppeared as e:  # the video is written: only its record is not
        raise errors.WriteError(
          f'{e}; the video {paths.output} is written without it: move that file away, then '
          'continue with run.resume'
        ) from None
      except errors.WriteError as e:  # a full disk, say (trial 49 V1: no way on was said)
        raise errors.WriteError(
          f'{e}; {paths.output} is written and {paths.work} kept: continue with run.resume'
        ) from None
    elif output_names.record_beside(paths.output) is not None:  # the replaced one's (trial 53 R1)
      target.unlink(missing_ok=True)
  if not cfg.run.keep_checkpoint:
    shutil.rmtree(paths.work, ignore_errors=True)
  logging.info('Done: %s, %d frames in %s (%.1f s of optical flow).', paths.output, len(results),
               results_lib.duration(seconds), record.get('flow_s', 0.0))  # fmt: skip
