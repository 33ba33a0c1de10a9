"""How a run writes and behaves: the result file, progress and devices, videos.

Frozen, hashable dataclasses validated on creation (nst_jax.config.checks);
collected by StyleConfig (nst_jax.config).
"""

import dataclasses

from nst_jax.config import checks
from nst_jax.config import groups


@dataclasses.dataclass(frozen=True)
class SaveConfig(checks.Group):
  """The result file and what goes beside it.

  Attributes:
    path: result file, or a directory for an automatic name; '' names one
      under output/ after the inputs (nst_jax.io.outputs).
    bit_depth: bits per channel of the output: 8, or 16 (PNG only).
    quality: JPEG quality, 1-100 (WebP is written lossless; this is its effort).
    save_iter: save an intermediate image every this many iterations (0: off).
    record: write NAME.json, NAME.loss.png and NAME.sheet.jpg beside the
      output (nst_jax.io.record).
    overwrite: replace files no nst-jax run record claims (nst_jax.runs.output_plan).
  """

  path: str = ''
  bit_depth: int = 8
  quality: int = groups.DEFAULT_QUALITY
  save_iter: int = 0
  record: bool = True
  overwrite: bool = False

  def __post_init__(self):
    checks.plain_numbers(self)
    checks.check(
      self.bit_depth in groups.BIT_DEPTHS, f'save.bit_depth must be 8 or 16, got {self.bit_depth!r}'
    )
    checks.check(
      isinstance(self.quality, int) and 1 <= self.quality <= 100,
      f'save.quality must be an integer from 1 to 100, got {self.quality!r}',
    )
    checks.nonnegative_int('save.save_iter', self.save_iter)


@dataclasses.dataclass(frozen=True)
class RunConfig(checks.Group):
  """How the run behaves while it goes on.

  Attributes:
    print_iter: report every this many iterations (0: only the end).
    progress: 'bar' (tqdm), 'log' (a line every print_iter, through absl
      logging at INFO: from your own code, `absl.logging.set_verbosity('info')`
      first, as the command line does) or 'auto' (a bar when stderr is a
      terminal, else lines).
    checkpoint_every: save a checkpoint every this many iterations (0: only
      on SIGINT/SIGTERM and at the end of each scale).
    checkpoint_seconds: also save one when this many seconds have passed
      since the last (0: off). For fast devices, where 100 iterations take
      seconds: count by time there, not iterations. Checkpoints are written
      in the background either way.
    compile_cache: where compiled programs are kept between runs
      (nst_jax.engine.compile_cache): 'auto' (the user's cache folder,
      ~/.cache/nst_jax/xla, for runs from files; `stylize` then leaves JAX's
      own setting alone), 'off', or a folder.
    resume: continue from the output's checkpoint (batch: every unfinished
      job's, skipping finished jobs).
    keep_checkpoint: keep the checkpoint after the run finishes (to extend it
      later with resume and more iterations).
    checkpoint_dir: a directory for the checkpoints (NAME.HASH.ckpt of each
      result NAME.png, HASH from its resolved path, so outputs of one name in
      two directories have their own), e.g. a bucket mounted on every worker, which outlives a
      preempted machine's disk; None: beside each result. Image and batch
      runs (a video keeps its state in its work directory).
    serve: a port for the live preview page on 127.0.0.1 (0 = any free port),
      or None for no page.
    shard: 'jobs' (a batch of jobs split over all devices) or 'spatial' (each
      image's height split over this process's devices).
    memory_limit: GB a run may use per device (the whole process on CPU),
      which the memory plan (nst_jax.engine.memory.plan) fits into; None:
      what the device has free.
  """

  print_iter: int = 50
  progress: str = 'auto'
  checkpoint_every: int = groups.DEFAULT_CHECKPOINT_EVERY
  checkpoint_seconds: float = 0.0
  compile_cache: str = 'auto'
  resume: bool = False
  keep_checkpoint: bool = False
  checkpoint_dir: str | None = None
  serve: int | None = None
  shard: str = 'jobs'
  memory_limit: float | None = None

  def __post_init__(self):
    checks.plain_numbers(self)
    if self.memory_limit is not None:
      checks.finite_positive('run.memory_limit', self.memory_limit)
    checks.nonnegative_int('run.print_iter', self.print_iter)
    checks.nonnegative_int('run.checkpoint_every', self.checkpoint_every)
    checks.finite_nonnegative('run.checkpoint_seconds', self.checkpoint_seconds)
    checks.check(
      isinstance(self.compile_cache, str) and self.compile_cache != '',
      f"run.compile_cache must be 'auto', 'off' or a folder, got {self.compile_cache!r}",
    )
    checks.one_of('run.progress', self.progress, groups.PROGRESS_MODES)
    checks.one_of('run.shard', self.shard, groups.SHARD_MODES)
    if self.checkpoint_dir is not None:
      checks.check(
        isinstance(self.checkpoint_dir, str) and self.checkpoint_dir != '',
        f'run.checkpoint_dir must name a directory, got {self.checkpoint_dir!r}',
      )
    if self.serve is not None:
      checks.check(
        isinstance(self.serve, int) and 0 <= self.serve <= 65535,
        f'run.serve must be a port from 0 to 65535 (0: any free port), got {self.serve!r}',
      )


@dataclasses.dataclass(frozen=True)
class VideoConfig(checks.Group):
  """Videos (nst_jax.runs.video): the temporal loss of Ruder et al. and how frames run.

  Attributes:
    temporal_weight: weight of mean(c (x - warp(x_prev))^2), the temporal
      term each frame adds (0: every frame on its own).
    passes: 1: frames one after another, each starting from its
      predecessor; N > 1: Ruder et al.'s multi-pass algorithm, every frame of
      a pass an independent problem (a batch over all devices), passes
      alternating in direction and sharing schedule.iterations.
    frames: 'START:END', the frames used (0-based, END exclusive).
    flow: DIS optical flow preset: 'ultrafast', 'fast' or 'medium'.
    blend: in multi-pass, the share of the warped neighbour each frame starts
      from, times the consistency weight (Ruder et al.'s delta).
    fps: the frame rate given to a sequence of images.
  """

  temporal_weight: float = 1000.0
  passes: int = 1
  frames: str = ':'
  flow: str = 'medium'
  blend: float = 0.5
  fps: float = 24.0

  def __post_init__(self):
    checks.plain_numbers(self)
    checks.finite_nonnegative('video.temporal_weight', self.temporal_weight)
    checks.positive_int('video.passes', self.passes)
    checks.one_of('video.flow', self.flow, ('ultrafast', 'fast', 'medium'))
    checks.check(
      isinstance(self.blend, (int, float)) and 0 <= self.blend <= 1,
      f'video.blend must be a number from 0 to 1, got {self.blend!r}',
    )
    checks.finite_positive('video.fps', self.fps)
