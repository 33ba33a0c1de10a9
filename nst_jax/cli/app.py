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

import importlib.resources
from pathlib import Path
import signal
import sys

from absl import app
from absl import flags

import nst_jax
from nst_jax import config as config_lib
from nst_jax.cli import absl_app
from nst_jax.cli import spelling
from nst_jax.core import color
from nst_jax.core import losses
from nst_jax.engine import distributed
from nst_jax.engine import hooks as hooks_lib
from nst_jax.io import jobs as jobs_lib
from nst_jax.io import video
from nst_jax.runs import batch as batch_lib
from nst_jax.runs import output_plan
from nst_jax.runs import video as video_pipeline


def _presets_dir() -> Path:
  # A checkout has presets/ beside nst_jax/; a wheel carries them as
  # nst_jax/presets (pyproject.toml maps the directory into the package).
  checkout = Path(__file__).resolve().parents[2] / 'presets'
  if checkout.is_dir():
    return checkout
  return Path(str(importlib.resources.files('nst_jax') / 'presets'))


PRESETS = {p.stem: p for p in sorted(_presets_dir().glob('*.flags'))}
# Every flag that sets a config field defaults to that field's default, so the
# command line and the library agree (tests/spelling_test.py).
DEFAULTS = config_lib.StyleConfig()

# The seed's options, with their short names.
flags.DEFINE_string(
  'contentpath',
  None,
  'Content image file; a directory or glob runs a batch (one job per image); a video file '
  '(or --video with frames) runs a video.',
  short_name='cp',
)
flags.DEFINE_string(
  'stylepath',
  None,
  'Style image file, or several separated by commas (blended, or placed by --style_masks); a '
  'directory or glob alone: one job per style.',
  short_name='sp',
)
flags.DEFINE_integer(
  'iterations',
  DEFAULTS.schedule.iterations,
  'Optimiser iterations of the whole run, over all scales (never more; --tol may stop sooner).',
  short_name='i',
)
flags.DEFINE_float(
  'contentweight',
  DEFAULTS.loss.content_weight,
  'Content weight cw in cw*L_content + sw*L_style.',
  short_name='cw',
)
flags.DEFINE_float(
  'styleweight',
  DEFAULTS.loss.style_weight,
  'Style weight sw in cw*L_content + sw*L_style.',
  short_name='sw',
)
flags.DEFINE_integer(
  'imagewidth',
  DEFAULTS.inputs.width,
  'Output width in pixels; the height keeps the aspect ratio.',
  short_name='w',
)

flags.DEFINE_string(
  'output',
  DEFAULTS.save.path,
  'Result image (.png, .jpg, .webp, ...), or a directory for an automatic name; default '
  'output/<content>_<style>.png, never replacing a file.',
)
flags.DEFINE_string(
  'weights',
  DEFAULTS.model.weights,
  'Converted weights .npz; default $NST_JAX_WEIGHTS or weights/vgg19.npz.',
)
flags.DEFINE_multi_string(
  'weights_url',
  list(DEFAULTS.model.weights_url),
  'A mirror of the published weights file to try first when downloading them (repeatable); '
  'also $NST_JAX_WEIGHTS_URL.',
)
flags.DEFINE_enum('optimizer', DEFAULTS.optim.name, list(config_lib.OPTIMIZERS), 'Optimiser.')
flags.DEFINE_float(
  'learning_rate',
  DEFAULTS.optim.learning_rate,
  'Adam step size in pixel units, 0..255 (default 10); unused by L-BFGS.',
)
flags.DEFINE_integer('lbfgs_memory', DEFAULTS.optim.lbfgs_memory, 'L-BFGS history length.')
flags.DEFINE_string(
  'init',
  DEFAULTS.inputs.init,
  'Start image: content, random (faint noise), gray, or an image file.',
)
flags.DEFINE_integer('seed', DEFAULTS.inputs.seed, 'Random seed (used by --init=random).')
flags.DEFINE_list(
  'content_layers', list(DEFAULTS.loss.content_layers), 'Content layers, comma-separated.'
)
flags.DEFINE_list(
  'style_layers', list(DEFAULTS.loss.style_layers), 'Style layers, comma-separated.'
)
flags.DEFINE_list(
  'style_layer_weights',
  DEFAULTS.loss.style_layer_weights,
  'Weight w_l of each style layer, comma-separated (default all 1).',
)
flags.DEFINE_enum(
  'style_loss',
  DEFAULTS.loss.style_loss,
  list(losses.STYLE_KINDS),
  'Style term per layer: gram (Gatys), mean_cov (Wasserstein-2 of Gaussian fits), histogram '
  '(Risser et al.).',
)
flags.DEFINE_bool(
  'normalize_gradients',
  DEFAULTS.loss.normalize_gradients,
  "L1-normalise each loss term's gradient at its layer.",
)
flags.DEFINE_list(
  'style_blend_weights',
  DEFAULTS.inputs.style_blend_weights,
  'Weight of each style image, comma-separated (default equal).',
)
flags.DEFINE_float(
  'style_scale', DEFAULTS.inputs.style_scale, 'Style image width as a multiple of the output width.'
)
flags.DEFINE_float(
  'tv_weight', DEFAULTS.loss.tv_weight, 'Total variation weight (squared differences).'
)
flags.DEFINE_enum(
  'preserve_colors',
  DEFAULTS.color.preserve_colors,
  list(config_lib.PRESERVE_COLORS),
  "Keep the content's colours: luminance-only transfer, histogram (style colours matched "
  "first), or postprocess (the content's chroma put back).",
)
flags.DEFINE_enum(
  'color_match',
  DEFAULTS.color.color_match,
  list(color.COLOR_MATCH_MODES),
  'Linear colour map of --preserve_colors=histogram.',
)
flags.DEFINE_integer(
  'scales',
  DEFAULTS.schedule.scales,
  'Coarse-to-fine scales, widths sqrt(2) apart, sharing the -i iterations; 0: automatic, '
  '1: one scale.',
)
flags.DEFINE_integer(
  'min_width',
  DEFAULTS.schedule.min_width,
  'Instead of --scales: as many scales as keep the coarsest this wide.',
)
flags.DEFINE_string(
  'content_mask',
  DEFAULTS.inputs.content_mask,
  'Grey image: where the content loss applies (white: fully).',
)
flags.DEFINE_list(
  'style_masks',
  list(DEFAULTS.inputs.style_masks),
  'One grey image per style, comma-separated: where each style applies.',
)
flags.DEFINE_enum(
  'bit_depth',
  str(DEFAULTS.save.bit_depth),
  ['8', '16'],
  'Bits per channel of the output image (16: PNG only).',
)
flags.DEFINE_integer(
  'quality',
  DEFAULTS.save.quality,
  'JPEG and WebP output quality, 1-100.',
  lower_bound=1,
  upper_bound=100,
)
flags.DEFINE_enum('pooling', DEFAULTS.model.pooling, ['max', 'avg'], 'VGG pooling.')
flags.DEFINE_enum(
  'dtype',
  DEFAULTS.model.dtype,
  ['float32', 'bfloat16'],
  'Network compute dtype (the image, the first convolution and the losses stay float32).',
)
flags.DEFINE_enum(
  'precision',
  DEFAULTS.model.precision,
  list(config_lib.PRECISIONS),
  'float32 matmul/conv precision on GPU/TPU: highest (true float32), or default (TF32 on '
  'NVIDIA GPUs, bfloat16 passes on TPUs); no effect on CPU.',
)
flags.DEFINE_float(
  'tol',
  DEFAULTS.schedule.tol,
  'Stop a scale early once its loss fell by less than this fraction over --window iterations '
  '(0: never).',
)
flags.DEFINE_integer(
  'window', DEFAULTS.schedule.window, 'Iterations the early-stopping test (--tol) looks back.'
)
flags.DEFINE_bool(
  'box',
  DEFAULTS.optim.box,
  'Keep the image in the displayable range while optimising (L-BFGS); --nobox clips only the '
  'result, as the classic tools do.',
)
flags.DEFINE_enum(
  'progress',
  DEFAULTS.run.progress,
  list(config_lib.PROGRESS_MODES),
  'bar: a progress bar; log: a line every --print_iter; auto: a bar on a terminal, else lines.',
)
flags.DEFINE_bool(
  'record',
  DEFAULTS.save.record,
  'Write NAME.json, NAME.loss.png and NAME.sheet.jpg beside the output.',
)
flags.DEFINE_bool(
  'overwrite',
  DEFAULTS.save.overwrite,
  'Replace existing files at --output (and beside it) that no nst-jax run record claims; a rerun '
  'to the same output replaces its own result without it. Inputs are never replaced.',
)
flags.DEFINE_integer(
  'print_iter', DEFAULTS.run.print_iter, 'Log the losses every N iterations (0: only at the end).'
)
flags.DEFINE_integer(
  'save_iter', DEFAULTS.save.save_iter, 'Save an intermediate image every N iterations (0: never).'
)
flags.DEFINE_integer(
  'checkpoint_every',
  DEFAULTS.run.checkpoint_every,
  'Save a checkpoint (<output>.ckpt) every N iterations (0: only on a signal and at the end).',
)
flags.DEFINE_bool('resume', DEFAULTS.run.resume, "Continue from the output's checkpoint.")
flags.DEFINE_bool(
  'keep_checkpoint',
  DEFAULTS.run.keep_checkpoint,
  'Keep the checkpoint after the run finishes (to extend it later).',
)
flags.DEFINE_enum(
  'preset',
  None,
  list(PRESETS),
  'Settings from presets/NAME.flags: paper (Gatys et al. 2016), classic '
  "(jcjohnson/neural-style's defaults), fast_cpu (a quick preview). Flags given on the "
  'command line override it, wherever they stand.',
)
flags.DEFINE_integer(
  'serve',
  DEFAULTS.run.serve,
  'Serve a live preview page on http://127.0.0.1:PORT/ during the run (0: any free port).',
  lower_bound=0,
  upper_bound=65535,
)
flags.DEFINE_string(
  'jobs',
  None,
  'Batch mode: a CSV (with a header) or JSON-lines file of jobs with columns content, style, '
  'and optionally content_weight, style_weight, output. -cp and -sp may instead name '
  'directories or globs.',
)
flags.DEFINE_enum(
  'shard',
  DEFAULTS.run.shard,
  list(config_lib.SHARD_MODES),
  'jobs: a batch of jobs is split over all devices (of all hosts); spatial: each image is '
  "split by height over this host's devices, for images too large for one device.",
)
flags.DEFINE_bool(
  'distributed',
  False,
  'Call jax.distributed.initialize() first (run the same command on every host of a TPU '
  'slice or cluster); the cluster is detected unless the next three flags are given.',
)
flags.DEFINE_string('coordinator_address', None, 'With --distributed: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'With --distributed: the number of processes.')
flags.DEFINE_integer('process_id', None, 'With --distributed: this process, 0-based.')
flags.DEFINE_float(
  'temporal_weight',
  DEFAULTS.video.temporal_weight,
  'Video: weight of the temporal term mean(c (x - warp(previous))^2) (0: frames independent).',
)
flags.DEFINE_integer(
  'passes',
  DEFAULTS.video.passes,
  'Video: 1 = frame after frame; N > 1 = multi-pass, every frame of a pass in one batch over '
  'all devices, passes sharing -i.',
)
flags.DEFINE_string(
  'frames', DEFAULTS.video.frames, 'Video: the frames used, START:END (0-based, END exclusive).'
)
flags.DEFINE_enum(
  'flow',
  DEFAULTS.video.flow,
  ['ultrafast', 'fast', 'medium'],
  'Video: the DIS optical flow preset.',
)
flags.DEFINE_float(
  'blend',
  DEFAULTS.video.blend,
  'Video, multi-pass: how much of the warped neighbour a frame starts from.',
)
flags.DEFINE_float(
  'fps', DEFAULTS.video.fps, 'Video: the frame rate of a sequence of images (-cp DIR --video).'
)
flags.DEFINE_bool(
  'video',
  False,
  'Read -cp DIR or -cp GLOB as the numbered frames of one video (a video file needs no flag).',
)
flags.DEFINE_integer(
  'max_image_pixels',
  DEFAULTS.inputs.max_image_pixels,
  'Refuse input images with more pixels than this (decompression-bomb guard).',
)

FLAGS = flags.FLAGS

flags.register_multi_flags_validator(
  ['contentpath', 'stylepath', 'jobs'],
  lambda v: bool(v['jobs']) or bool(v['contentpath'] and v['stylepath']),
  message='give the content and style images with -cp/--contentpath and -sp/--stylepath '
  '(files, directories or globs), or a job list with --jobs FILE',
)


def _floats(name: str, values: list[str] | None) -> tuple[float, ...] | None:
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise nst_jax.NstError(f'--{name} must be comma-separated numbers, got {values}') from None


def _paths(name: str, value: str) -> tuple[str, ...]:
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
      resume=FLAGS.resume,
      keep_checkpoint=FLAGS.keep_checkpoint,
      serve=FLAGS.serve,
      shard=FLAGS.shard,
    ),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  early = not FLAGS.distributed
  # main.py's start-up handler ends the process on Ctrl-C; from here the
  # signal thread does (before the first iteration), or the loop saves first.
  signal.signal(
    signal.SIGINT, (lambda signum, frame: None) if early else signal.default_int_handler
  )
  with hooks_lib.exit_on_signals(early=early, before_exit=output_plan.drop_locks):
    _main()


def _main() -> None:
  try:
    if FLAGS.distributed:
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    cfg = config_from_flags()
    if FLAGS.video or video.is_video_file(cfg.inputs.content_path):
      video_pipeline.run_video(cfg)
      return
    batch = _batch_jobs(cfg)
    if batch is None and FLAGS.distributed:
      # Every process runs this command: a single job too must be owned by
      # one process, or each would compute and write it.
      batch = [jobs_lib.Job(cfg.content_path, cfg.style_paths)]
    if batch is None:
      nst_jax.run(cfg)
    else:
      batch_lib.run_batch(batch, cfg, inputs=[FLAGS.jobs] if FLAGS.jobs else ())
  except nst_jax.NstError as e:
    print(f'error: {spelling.for_command_line(str(e))}', file=sys.stderr)
    distributed.leave(getattr(e, 'exit_code', 1))
  except KeyboardInterrupt:
    # Before the loop starts (loading, compiling) there is nothing to save yet.
    print('error: interrupted before the first iteration; nothing was written', file=sys.stderr)
    sys.exit(130)


def _batch_jobs(cfg: nst_jax.StyleConfig) -> list[jobs_lib.Job] | None:
  """The job list of a batch run, or None for a single run."""
  if FLAGS.jobs:
    if FLAGS.contentpath or FLAGS.stylepath:
      raise nst_jax.NstError('give either --jobs FILE or -cp and -sp, not both')
    return jobs_lib.read_jobs(FLAGS.jobs)
  styles = cfg.style_paths
  if jobs_lib.is_pattern(cfg.content_path) or any(jobs_lib.is_pattern(s) for s in styles):
    return jobs_lib.jobs_from_specs(cfg.content_path, styles)
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
  files = [f'--flagfile={PRESETS[n]}' for n in names[-1:] if n in PRESETS]
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

  own = {f.name: f for f in FLAGS.get_flags_for_module(__name__)}
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
  absl_app.run(main, doc=__doc__, module=__name__, argv=expand_preset(argv))
