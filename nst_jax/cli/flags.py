"""The command line's flags: every option of main.py, its default read from StyleConfig().

The only module that defines flags for nst-jax runs (the converter's are in
nst_jax/cli/convert.py); nst_jax/cli/app.py turns their values into a
StyleConfig. Defaults come from `StyleConfig()`, so the library and the
command line cannot disagree (tests/spelling_test.py compares them).
"""

import importlib.resources
from pathlib import Path

from absl import flags

from nst_jax import config as config_lib
from nst_jax.core import color
from nst_jax.core import losses


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
  "L1-normalise each loss term's gradient at its layer; pair with --optimizer adam (L-BFGS can "
  'diverge on it).',
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
  'JPEG and AVIF output quality, 1-100 (WebP is written lossless: lossy WebP halves the colour '
  'resolution).',
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
flags.DEFINE_integer(
  'read_every',
  DEFAULTS.schedule.read_every,
  'Read the losses from the device every N iterations (0: every iteration on CPU, every 10 on '
  'GPU/TPU); --tol then stops up to N-1 iterations late.',
  lower_bound=0,
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
flags.DEFINE_string(
  'compile_cache',
  DEFAULTS.run.compile_cache,
  "Where compiled programs are kept, so a repeated run starts in a second: 'auto' "
  "(~/.cache/nst_jax/xla, or JAX_COMPILATION_CACHE_DIR if set), 'off', or a folder.",
)
flags.DEFINE_string(
  'tiles',
  str(DEFAULTS.loss.tiles),
  'Compute the loss and its gradient over tiles of N pixels, exactly (less memory, more time: '
  "the forward pass runs twice; 1.3-2.2x at 1024 px): 'auto' (only when the image would not "
  "fit --memory_limit), 'off', or N (even, at least 16).",
)
flags.DEFINE_float(
  'memory_limit',
  DEFAULTS.run.memory_limit,
  'GB of memory a run may use (the whole process on CPU, per device on GPU/TPU); default: what '
  'the device has free. --tiles auto picks the largest tile that fits.',
)
flags.DEFINE_float(
  'checkpoint_seconds',
  DEFAULTS.run.checkpoint_seconds,
  'Also save a checkpoint when N seconds have passed since the last (0: off); on a fast GPU or '
  'TPU use this instead of --checkpoint_every.',
)
flags.DEFINE_bool('resume', DEFAULTS.run.resume, "Continue from the output's checkpoint.")
flags.DEFINE_string(
  'checkpoint_dir',
  DEFAULTS.run.checkpoint_dir,
  "Write checkpoints (NAME.HASH.ckpt, HASH from the output's full path) into this directory "
  'instead of beside each output, e.g. a bucket mounted on every worker, which survives a '
  'preempted VM. Image and batch runs; a video keeps its state in its work directory beside '
  'the output.',
)
flags.DEFINE_bool(
  'keep_checkpoint',
  DEFAULTS.run.keep_checkpoint,
  'Keep the checkpoint after the run finishes (to extend an image run later with more -i; a '
  'video keeps its work directory, which a rerun replaces).',
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

flags.register_multi_flags_validator(
  ['contentpath', 'stylepath', 'jobs'],
  lambda v: bool(v['jobs']) or bool(v['contentpath'] and v['stylepath']),
  message='give the content and style images with -cp/--contentpath and -sp/--stylepath '
  '(files, directories or globs), or a job list with --jobs FILE',
)
