"""Video in and out: frames as RGB arrays, and back into a video with the source's audio.

Reading and writing go through PyAV, which bundles FFmpeg: anything FFmpeg reads (.mp4, .mov,
.mkv, .webm, .avi, .gif, ...) is read, whatever the machine has installed. The result is an H.264
.mp4 (yuv420p, the format every player takes) at the source's frame rate with the same frame
count, the source's audio stream copied over unchanged, or numbered PNG frames in a directory. A
directory or glob of numbered images is read as frames too.

Conversions, each documented (docs/video.md) rather than refused:
  * more than 8 bits per channel: decoded at full precision (rgb48);
  * an alpha channel: composited over white, as for images;
  * an odd output size: H.264's 4:2:0 needs even sizes, so the .mp4 drops
    the last column or row (PNG frames keep every pixel).
Refused with a one-line error: a file FFmpeg cannot read, one without a video
stream, an empty frame range, and a variable frame rate (convert first; the
message says how).

Every output appears only when complete: the video is written to a hidden temporary file and
renamed, frames to a hidden directory and renamed.
"""

from collections.abc import Callable, Collection
import contextlib
import dataclasses
from fractions import Fraction
import json
import os
from pathlib import Path
import re
import shutil
import tempfile

import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.core import pixels
from nst_jax.io import atomic
from nst_jax.io import images as image_lib
from nst_jax.io import jobs as jobs_lib
from nst_jax.io import output_names

# What a -cp that names a file is taken to be a video by (case-insensitive).
VIDEO_SUFFIXES = (
  '.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.gif', '.mpg', '.mpeg', '.wmv', '.flv', '.ts',
)  # fmt: skip
# Frame rate given to a sequence of images (they carry none): --fps.
DEFAULT_FPS = 24
# Frames may drift this much from a constant rate (container rounding).
_RATE_TOLERANCE = 0.02


@dataclasses.dataclass(frozen=True)
class Clip:
  """A video or frame sequence, and the frames a run uses.

  Attributes:
    path: the video file, or the frame directory or glob.
    start: first frame used (0-based).
    count: frames used.
    total: frames in the source.
    fps: frames per second.
    width, height: the source's size.
    has_audio: the source has an audio stream (copied to the result).
    frame_files: the images of a frame sequence, in order (None for a video).
    notes: conversions applied (10-bit, alpha), for the log.
  """

  path: str
  start: int
  count: int
  total: int
  fps: Fraction
  width: int
  height: int
  has_audio: bool = False
  frame_files: tuple[str, ...] | None = None
  notes: tuple[str, ...] = ()


def is_video_file(spec: str) -> bool:
  return Path(spec).suffix.lower() in VIDEO_SUFFIXES and Path(spec).is_file()


def parse_range(text: str, total: int, where: str) -> tuple[int, int]:
  """'START:END' (either may be empty; END exclusive) -> (start, count), checked."""
  match = re.fullmatch(r'\s*(\d*)\s*:\s*(\d*)\s*', text or ':')
  if not match:
    raise errors.ConfigError(f'video.frames must be START:END (e.g. 0:48 or 10:), got {text!r}')
  start = int(match.group(1) or 0)
  end = min(int(match.group(2)) if match.group(2) else total, total)
  if end <= start:
    raise errors.ConfigError(
      f'video.frames {text} selects no frames of {errors.printable(where)}, which has {total}; '
      f'pick a range inside 0:{total}'
    )
  return start, end - start


def _natural_key(path: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', Path(path).name)]


def open_frames(spec: str, frames: str = ':', fps: float = DEFAULT_FPS) -> Clip:
  """A directory or glob of numbered images as a clip (sorted by their numbers)."""
  # As a batch's: images only (a sub-folder was read as a frame), and not the frames or results
  # an nst-jax run wrote there (trial 26: a glob took an earlier run's styled frames).
  try:
    files = jobs_lib.expand(spec, what='inputs.content_path') if jobs_lib.is_pattern(spec) else []
  except errors.ConfigError:
    files = []
  files.sort(key=_natural_key)
  if not files:
    raise errors.ImageError(
      f'{errors.printable(spec)} holds no frames (numbered images); check the path'
    )
  start, count = parse_range(frames, len(files), spec)
  width, height = image_lib.image_size(files[0])
  return Clip(
    path=spec,
    start=start,
    count=count,
    total=len(files),
    fps=Fraction(fps).limit_denominator(1001),
    width=width,
    height=height,
    frame_files=tuple(files),
  )


def open_video(path: str, frames: str = ':') -> Clip:
  """Probes a video file: its frames, rate, size and audio; checks what a run needs."""
  import av  # PyAV: only video runs need it

  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError) as e:
    raise errors.ImageError(
      f'{errors.printable(path)} is not a video FFmpeg can read ({type(e).__name__}); '
      'check the file'
    ) from None
  with container:
    if not container.streams.video:
      raise errors.ImageError(
        f'{errors.printable(path)} has no video stream; give a video, or its frames as images'
      )
    stream = container.streams.video[0]
    notes = []
    pix = stream.codec_context.pix_fmt or ''
    if re.search(r'(10|12|16)(le|be)$', pix):
      notes.append(f'{pix}: decoded at full precision')
    if pix.startswith(('yuva', 'rgba', 'argb', 'bgra', 'abgr', 'pal8')):
      notes.append(f'{pix}: alpha composited over white')
    times = [f.time for f in container.decode(video=0) if f.time is not None]
    total = len(times)
    has_audio = bool(container.streams.audio)
    # Read while the file is open (PyAV 18.1.1: the closed container's stream refuses it).
    rate, width, height = stream.average_rate or stream.guessed_rate, stream.width, stream.height
  if total == 0:
    raise errors.ImageError(f'{errors.printable(path)} has no frames; check the file')
  fps = _constant_rate(times, rate, path)
  start, count = parse_range(frames, total, path)
  return Clip(path, start, count, total, fps, width, height, has_audio, None, tuple(notes))


def _constant_rate(times: list[float], rate: Fraction | None, path: str) -> Fraction:
  rate = rate or Fraction(DEFAULT_FPS)
  if len(times) > 2:
    steps = np.diff(np.asarray(times, np.float64))
    expected = 1.0 / float(rate)
    if np.max(np.abs(steps - expected)) > _RATE_TOLERANCE * expected + 1e-3:
      name = errors.printable(path)
      raise errors.ImageError(
        f'{name} has a variable frame rate (frame intervals from {steps.min():.4f} to '
        f'{steps.max():.4f} s); convert it to a constant rate first, e.g. ffmpeg -i {name} '
        f'-fps_mode cfr -r {float(rate):g} constant.mp4'
      )
  return Fraction(rate)


def open_clip(spec: str, frames: str = ':', fps: float = DEFAULT_FPS) -> Clip:
  """A video file or a frame sequence (directory or glob) as a clip."""
  if is_video_file(spec):
    return open_video(spec, frames)
  if Path(spec).is_file():
    raise errors.ImageError(
      f'{errors.printable(spec)} is not a video (known suffixes: {", ".join(VIDEO_SUFFIXES)}); '
      'give a video file or a directory of frames'
    )
  return open_frames(spec, frames, fps)


def _frame_rgb(frame) -> np.ndarray:
  """A decoded PyAV frame -> RGB float32 in [0, 1], alpha over white, full precision."""
  pix = frame.format.name
  if pix.startswith(('yuva', 'rgba', 'argb', 'bgra', 'abgr', 'pal8')):
    rgba = frame.to_ndarray(format='rgba').astype(np.float32) / 255.0
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
  if re.search(r'(10|12|16)(le|be)$', pix):
    return frame.to_ndarray(format='rgb48le').astype(np.float32) / 65535.0
  return frame.to_ndarray(format='rgb24').astype(np.float32) / 255.0


def _read_size(w: int, h: int, width: int | None) -> tuple[int, int]:
  return (w, h) if width is None else (width, pixels.resized_height(w, h, width))


def check_frame_sizes(paths, width: int | None, *, max_pixels: int) -> None:
  """Refuses frame images that would not all be read at one size (from their headers).

  Each frame is resized to `width` keeping its aspect ratio, so frames of
  one aspect ratio and different sizes are fine; frames of different aspect
  ratios would give arrays of different heights, which the optical flow
  between neighbours cannot take.

  Args:
    paths: the frame images, in order (at least one).
    width: the width frames are resized to, or None for their own size.
    max_pixels: the image size limit, as for `image.load_image`.

  Raises:
    ImageError: naming the first frame whose size differs from the first
      frame's, both sizes and the fix.
  """
  first, *rest = paths
  w0, h0 = image_lib.image_size(first, max_pixels=max_pixels)
  size0 = _read_size(w0, h0, width)
  for path in rest:
    w, h = image_lib.image_size(path, max_pixels=max_pixels)
    size = _read_size(w, h, width)
    if size != size0:
      raise errors.ImageError(
        f'frame {errors.printable(path)} is {w}x{h} but the first frame, '
        f'{errors.printable(first)}, is {w0}x{h0}, so they would be read at different sizes '
        f'({size[0]}x{size[1]} and {size0[0]}x{size0[1]}); give every frame the first '
        f"frame's size, e.g. resize or crop it to {w0}x{h0}"
      )


def read_frames(clip: Clip, width: int, *, max_pixels: int = config_lib.DEFAULT_MAX_IMAGE_PIXELS):
  """Yields the clip's frames as RGB float32 [H, W, 3] in [0, 1], resized to `width`.

  Raises:
    ImageError: frame images that would come out at different sizes (checked
      from their headers before the first frame is read).
  """
  if clip.frame_files is not None:
    paths = clip.frame_files[clip.start : clip.start + clip.count]
    check_frame_sizes(paths, width, max_pixels=max_pixels)
    for path in paths:
      yield image_lib.load_image(path, width=width, max_pixels=max_pixels)
    return
  import av

  with av.open(clip.path) as container:
    for k, frame in enumerate(container.decode(video=0)):
      if k >= clip.start + clip.count:
        break
      if k >= clip.start:
        rgb = _frame_rgb(frame)
        yield image_lib.resize_to_width(rgb, width) if rgb.shape[1] != width else rgb


def even_size(height: int, width: int) -> tuple[int, int]:
  """The .mp4's size: H.264 4:2:0 needs even sides (the last row or column is dropped)."""
  return height - height % 2, width - width % 2


def write_video(
  path: str | os.PathLike, frames, fps: Fraction, *, audio_from: Clip | None = None, replace=True,
  then: Callable[[Path], None] | None = None,
):  # fmt: skip
  """Encodes RGB frames [H, W, 3] in [0, 1] as H.264 in an .mp4, atomically.

  Args:
    path: the .mp4 to write (its directory is created).
    frames: an iterable of RGB frames, all of one size.
    fps: the frame rate.
    audio_from: copy this clip's audio (the part under its frame range).
    replace: False: a file at `path` by the end is kept (nst_jax.io.atomic.write).
    then: called with the written video before it is put in place.
  """
  import av

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, name = tempfile.mkstemp(prefix=f'.{path.name}.nst-', suffix='.partial.mp4', dir=path.parent)
  os.close(fd)
  tmp = Path(name)  # a new name; the next run removes one a kill (or a read-only disk) leaves
  try:
    with av.open(str(tmp), 'w') as out:
      stream = None
      for rgb in frames:
        if stream is None:
          h, w = even_size(*rgb.shape[:2])
          stream = out.add_stream('libx264', rate=fps)
          stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
          stream.options = {'crf': '18'}  # visually lossless for stylised frames
          audio = _copy_audio_streams(out, audio_from)
        pixels = image_lib.to_uint8(rgb[: stream.height, : stream.width])
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format='rgb24')):
          out.mux(packet)
      if stream is None:
        raise errors.NstError(f'no frames to write to {errors.printable(path)}')
      for packet in stream.encode():
        out.mux(packet)
      if audio is not None:
        _mux_audio(out, audio, audio_from)
    _plain_mode(tmp, 0o666)  # mkstemp made it private
    if then is not None:
      then(tmp)
    os.replace(tmp, path) if replace else atomic.place_new(tmp, path)  # FileAppeared on one there
  except OSError as e:  # a full or read-only disk (trial 51 V6: av's traceback)
    raise errors.WriteError(errors.write_failure(path, e, e.strerror or str(e))) from e
  finally:
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)


def _copy_audio_streams(out, clip: Clip | None):
  if clip is None or not clip.has_audio or clip.frame_files is not None:
    return None
  import av

  with av.open(clip.path) as src:
    template = src.streams.audio[0]
    try:
      return out.add_stream_from_template(template)
    except (AttributeError, av.error.FFmpegError, ValueError):
      return None  # a codec the .mp4 cannot hold: the result is silent


def _mux_audio(out, stream, clip: Clip) -> None:
  """Copies the audio packets under the clip's frame range, shifted to start at 0."""
  import av

  t0 = clip.start / clip.fps
  t1 = (clip.start + clip.count) / clip.fps
  with av.open(clip.path) as src:
    source = src.streams.audio[0]
    shift = None
    for packet in src.demux(source):
      if packet.dts is None or packet.pts is None:
        continue
      t = packet.pts * source.time_base
      if t < t0 or t >= t1:
        continue
      if shift is None:
        shift = packet.pts
      packet.pts -= shift
      packet.dts -= shift
      packet.stream = stream
      try:
        out.mux(packet)
      except av.error.FFmpegError:
        return


def _plain_mode(path: Path, mode: int) -> None:
  """The mode a plain open() or mkdir() would have given (the umask applied)."""
  os.umask(umask := os.umask(0))
  os.chmod(path, mode & ~umask)


def write_frames(
  directory: str | os.PathLike, frames, *, bit_depth: int = 8, replaces: Collection[str] = (),
  then: Callable[[Path], None] | None = None,
) -> int:  # fmt: skip
  """Writes RGB frames as directory/frame_00001.png ..., the directory appearing when complete.

  Args:
    directory: the folder of frames; an existing one empty or holding only `replaces`' files.
    frames: an iterable of RGB frames [H, W, 3] in [0, 1].
    bit_depth: 8 or 16 bits per channel.
    replaces: names of files in `directory` that an earlier run wrote (the frames its run record
      claims: output_names.claimed): deleted once the new frames are complete.
    then: called with the complete folder before it is put in place.

  Returns:
    The number of frames written.

  Raises:
    NstError: `directory` holds a file not in `replaces` (nothing is deleted).
  """
  directory = Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.nst-', suffix='.partial',
                              dir=directory.parent))  # fmt: skip
  n = 0
  try:
    for n, rgb in enumerate(frames, 1):
      image_lib.save_image(tmp / output_names.FRAME_NAME.format(n), rgb, bit_depth=bit_depth)
    _plain_mode(tmp, 0o777)  # mkdtemp made it private
    if then is not None:
      then(tmp)
    if directory.exists():
      _empty(directory, replaces)
    os.replace(tmp, directory)
  except OSError as e:  # a full or read-only disk, at the frames or their note (trial 55 T55-5)
    raise errors.WriteError(errors.write_failure(directory, e, e.strerror or str(e))) from e
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return n


def _empty(directory: Path, replaces: Collection[str]) -> None:
  """Deletes an earlier run's frames from `directory`, and it; refuses if it holds anything else
  (the planner checked it before the run; a file may have been put there since)."""
  entries = sorted(directory.iterdir())
  for p in entries:
    if p.name not in replaces or p.is_symlink() or not p.is_file():
      raise errors.NstError(
        f'{directory} now holds {p.name}, which nst-jax did not write; move it away'
      )
  for p in entries:
    p.unlink()
  directory.rmdir()


# A video run's finished frames (nst_jax.runs.video keeps them in its work directory until then).


def quantized(rgb) -> np.ndarray:
  """What `load_work_frame` gives for a frame `save_work_frame` wrote, without the file."""
  levels = np.round(np.clip(np.asarray(rgb, np.float64), 0.0, 1.0) * 65535.0)
  return levels.astype(np.float32) / np.float32(65535.0)


def save_work_frame(path: Path, rgb: np.ndarray, entry: dict | None = None) -> None:
  """A finished frame as a 16-bit PNG, and its run record entry as `path`.json.

  16 bits: the next frame starts from this one, so keep its precision. The entry is written first:
  a frame whose PNG exists has its entry (a resumed run's record lists it, as the uninterrupted
  run's does).
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  if entry is not None:
    text = json.dumps(entry)
    atomic.write(path.with_suffix('.json'), lambda tmp: Path(tmp).write_text(text))
  image_lib.save_image(path, rgb, bit_depth=16)


def load_work_frame(path: Path) -> tuple[np.ndarray, dict | None]:
  """(a finished frame's RGB, its record entry; None from a run before 2026-12-06)."""
  entry = path.with_suffix('.json')
  try:  # damaged (by hand, or a kill of an older version): the frame is kept, its entry not
    data = json.loads(entry.read_text()) if entry.exists() else None
  except (OSError, ValueError, RecursionError):
    data = None
  return image_lib.load_image(path), data if isinstance(data, dict) else None
