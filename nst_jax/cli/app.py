r"""Neural style transfer (Gatys et al.) on VGG-19, in JAX.

Usage (`nst-jax` or `python -m nst_jax` when installed with pip):
  python main.py -cp content_images/tubingen.jpg -sp style_images/starry_night.jpg \
      -i 1000 -cw 10 -sw 0.0001 -w 1024
  python main.py --preset paper -cp content.jpg -sp style.jpg

The first run downloads and converts the VGG-19 weights (about 80 MB) into
weights/vgg19.npz (~/.cache/nst_jax/ when installed). docs/cli.md lists
every flag, docs/method.md the loss formulas.

The options you need first (all flags, alphabetically, follow):
  -cp, --contentpath    content image (required)
  -sp, --stylepath      style image(s), comma-separated (required)
  -i,  --iterations     optimiser iterations (1000)
  -cw, --contentweight  content weight (100)
  -sw, --styleweight    style weight (0.01)
  -w,  --imagewidth     output width in pixels (1024)
  --output              result file or directory (output/<content>_<style>.png)
  --init                content, random, gray or an image file (content)
  --scales              coarse-to-fine scales sharing -i (0: automatic, 1: one)
  --preserve_colors     none, luminance, histogram or postprocess (none)
  --style_scale         style size relative to the output (1.0)
  --tv_weight           total variation weight (0)
  --optimizer           lbfgs or adam (lbfgs)
  --preset              paper, classic or fast_cpu settings (flags given still win)
  --serve               live preview page on 127.0.0.1:PORT (0: any free port)
  --resume              continue an interrupted run from its checkpoint
"""

import os
import signal
import sys
import traceback

from absl import app
from absl import flags
from absl import logging

import nst_jax
from nst_jax.cli import absl_app
from nst_jax.cli import flags as cli_flags
from nst_jax.cli import spelling
from nst_jax.engine import distributed
from nst_jax.engine import signals
from nst_jax.io import jobs as jobs_lib
from nst_jax.io import video
from nst_jax.runs import batch as batch_lib
from nst_jax.runs import output_locks
from nst_jax.runs import video as video_pipeline

FLAGS = flags.FLAGS


def _floats(name: str, values: list[str] | None) -> tuple[float, ...] | None:
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise nst_jax.NstError(f'--{name} must be comma-separated numbers, got {values}') from None


def _paths(name: str, value: str) -> tuple[str, ...]:
  if ',' in value and os.path.isfile(value):  # trial 26: 'image a does not exist' for a,b.jpg
    raise nst_jax.NstError(
      f'--{name} {value!r} is one file, but commas separate files here; rename it without the comma'
    )
  paths = tuple(p.strip() for p in value.split(','))
  if not all(paths):
    raise nst_jax.NstError(f'--{name} has an empty entry in {value!r}; separate files with commas')
  return paths


def config_from_flags() -> nst_jax.StyleConfig:
  return nst_jax.StyleConfig(
    inputs=nst_jax.InputConfig(
      content_path=FLAGS.contentpath or '',
      style_path=_paths('stylepath', FLAGS.stylepath) if FLAGS.stylepath else '',
      style_blend_weights=_floats('style_blend_weights', FLAGS.style_blend_weights),
      style_scale=FLAGS.style_scale,
      width=FLAGS.imagewidth,
      content_mask=FLAGS.content_mask,
      style_masks=tuple(FLAGS.style_masks or ()),
      init=FLAGS.init,
      seed=FLAGS.seed,
      max_image_pixels=FLAGS.max_image_pixels,
    ),
    model=nst_jax.ModelConfig(
      weights=FLAGS.weights,
      weights_url=tuple(FLAGS.weights_url),
      pooling=FLAGS.pooling,
      dtype=FLAGS.dtype,
      precision=FLAGS.precision,
    ),
    loss=nst_jax.LossConfig(
      content_layers=tuple(FLAGS.content_layers),
      style_layers=tuple(FLAGS.style_layers),
      style_layer_weights=_floats('style_layer_weights', FLAGS.style_layer_weights),
      style_loss=FLAGS.style_loss,
      normalize_gradients=FLAGS.normalize_gradients,
      tiles=FLAGS.tiles,
      content_weight=FLAGS.contentweight,
      style_weight=FLAGS.styleweight,
      tv_weight=FLAGS.tv_weight,
    ),
    optim=nst_jax.OptimConfig(
      name=FLAGS.optimizer,
      learning_rate=FLAGS.learning_rate,
      lbfgs_memory=FLAGS.lbfgs_memory,
      box=FLAGS.box,
    ),
    schedule=nst_jax.ScheduleConfig(
      iterations=FLAGS.iterations,
      scales=FLAGS.scales,
      min_width=FLAGS.min_width,
      tol=FLAGS.tol,
      window=FLAGS.window,
      read_every=FLAGS.read_every,
    ),
    color=nst_jax.ColorConfig(preserve_colors=FLAGS.preserve_colors, color_match=FLAGS.color_match),
    save=nst_jax.SaveConfig(
      path=FLAGS.output,
      bit_depth=int(FLAGS.bit_depth),
      quality=FLAGS.quality,
      save_iter=FLAGS.save_iter,
      record=FLAGS.record,
      overwrite=FLAGS.overwrite,
    ),
    video=nst_jax.VideoConfig(
      temporal_weight=FLAGS.temporal_weight,
      passes=FLAGS.passes,
      frames=FLAGS.frames,
      flow=FLAGS.flow,
      blend=FLAGS.blend,
      fps=FLAGS.fps,
    ),
    run=nst_jax.RunConfig(
      print_iter=FLAGS.print_iter,
      progress=FLAGS.progress,
      checkpoint_every=FLAGS.checkpoint_every,
      checkpoint_seconds=FLAGS.checkpoint_seconds,
      compile_cache=FLAGS.compile_cache,
      resume=FLAGS.resume,
      keep_checkpoint=FLAGS.keep_checkpoint,
      checkpoint_dir=FLAGS.checkpoint_dir or None,
      serve=FLAGS.serve,
      shard=FLAGS.shard,
      memory_limit=FLAGS.memory_limit,
    ),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  early = not FLAGS.distributed
  # main.py's start-up handler ends the process on Ctrl-C; from here the
  # signal thread does (before the first iteration), or the loop saves first,
  # or the results are finished first. Several processes must stop together:
  # SIGTERM and SIGHUP keep their default there.
  if early:
    for signum in signals.STOP_SIGNALS:
      signal.signal(signum, lambda signum, frame: None)
  else:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  with (
    signals.exit_on_signals(early=early, before_exit=output_locks.drop_locks),
    nst_jax.errors.spoken_as(spelling.for_command_line),  # the preview page's words too
  ):
    _main()


def _main() -> None:
  try:
    if FLAGS.distributed:
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    else:
      logging.info('%s', distributed.platform_line())
    _run(config_from_flags())
    # Every process, process 0 (the coordination service's host) included,
    # leaves the runtime together before Python's exit tears anything down.
    distributed.finish()
  except nst_jax.NstError as e:
    print(f'error: {spelling.for_command_line(str(e))}', file=sys.stderr)
    distributed.leave(getattr(e, 'exit_code', 1))
  except Exception:
    if not FLAGS.distributed:
      raise
    # A bug on this process: the others learned of it (an agreement) and
    # left; JAX's exit barrier would wait for them until its timeout.
    traceback.print_exc()
    distributed.leave(1)
  except KeyboardInterrupt:
    # Before the loop starts (loading, compiling) there is nothing to save yet.
    print('error: interrupted before the first iteration; nothing was written', file=sys.stderr)
    sys.exit(130)


def _run(cfg: nst_jax.StyleConfig) -> None:
  """A video, a batch, or a single image, as the flags say."""
  if FLAGS.video or video.is_video_file(cfg.inputs.content_path):
    video_pipeline.run_video(cfg)
    return
  batch = _batch_jobs(cfg)
  if batch is None and FLAGS.distributed:
    # Every process runs this command: a single job too must be owned by
    # one process, or each would compute and write it.
    batch = [jobs_lib.Job(cfg.inputs.content_path, cfg.style_paths)]
  if batch is None:
    nst_jax.run(cfg)
  else:
    batch_lib.run_batch(batch, cfg, inputs=[FLAGS.jobs] if FLAGS.jobs else ())


def _batch_jobs(cfg: nst_jax.StyleConfig) -> list[jobs_lib.Job] | None:
  """The job list of a batch run, or None for a single run."""
  if FLAGS.jobs:
    if FLAGS.contentpath or FLAGS.stylepath:
      raise nst_jax.NstError('give either --jobs FILE or -cp and -sp, not both')
    return jobs_lib.read_jobs(FLAGS.jobs)
  styles = cfg.style_paths
  if jobs_lib.is_pattern(cfg.inputs.content_path) or any(jobs_lib.is_pattern(s) for s in styles):
    return jobs_lib.jobs_from_specs(cfg.inputs.content_path, styles, cfg.run.checkpoint_dir)
  return None


def expand_preset(argv: list[str]) -> list[str]:
  """Puts `--flagfile=<preset file>` first, so that flags given explicitly win.

  absl reads a --flagfile in place, so later flags override it; placing the
  preset's flags before all others makes `-i 50 --preset paper` and
  `--preset paper -i 50` mean the same. An unknown name is left for absl to
  reject with the list of presets.
  """
  names = []
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith('--preset='):
      names.append(arg.partition('=')[2])
    elif arg == '--preset' and i + 1 < len(argv):
      names.append(argv[i + 1])
  files = [f'--flagfile={cli_flags.PRESETS[n]}' for n in names[-1:] if n in cli_flags.PRESETS]
  return [argv[0], *files, *argv[1:]]


SEED_FLAGS = ('contentpath', 'stylepath', 'iterations', 'contentweight', 'styleweight',
              'imagewidth')  # fmt: skip


def reference_markdown() -> str:
  """docs/cli.md: every flag of this module, from its own help (docs/make_cli_reference.py)."""

  def default(flag) -> str:
    value = flag.default
    if flag.name in ('contentpath', 'stylepath'):
      return 'required (unless `--jobs`)'
    if isinstance(value, bool):
      return 'on' if value else 'off'
    if value is None or value == [] or value == '':
      return 'none'
    return f'`{",".join(map(str, value)) if isinstance(value, list) else value}`'

  own = {f.name: f for f in FLAGS.get_flags_for_module(cli_flags.__name__)}
  names = [*SEED_FLAGS, *sorted(set(own) - set(SEED_FLAGS))]
  rows = []
  for name in names:
    flag = own[name]
    spelled = f'`-{flag.short_name}`, `--{name}`' if flag.short_name else f'`--{name}`'
    text = ' '.join(flag.help.split()).replace('|', '\\|')
    rows.append(f'| {spelled} | {default(flag)} | {text} |')
  return '\n'.join([
    '# Command line: what does every flag do?',
    '',
    'Generated from the flags\' own help by `python docs/make_cli_reference.py` (a test fails',
    'when this page and the flags disagree). `python main.py --helpshort` prints the options',
    'most used first; `--helpfull` adds absl\'s own, such as `--flagfile=FILE`. `nst-jax` and',
    '`python -m nst_jax` take the same flags. Boolean flags are turned off with `--noNAME`.',
    '',
    '| flag | default | meaning |',
    '| --- | --- | --- |',
    *rows,
    '',
  ])  # fmt: skip


def run(argv: list[str] | None = None) -> None:
  """The program: main.py, `nst-jax` and `python -m nst_jax` all come here."""
  argv = list(sys.argv if argv is None else argv)
  absl_app.run(main, doc=__doc__, module=cli_flags.__name__, argv=expand_preset(argv))
