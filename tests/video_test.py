"""Video files and frame folders: decoding, encoding, audio, ranges and every bad input."""

import dataclasses
from fractions import Fraction
import os

import av
import numpy as np
from PIL import Image
import pytest
import video_clips

from nst_jax import errors
from nst_jax.io import images as image_lib
from nst_jax.io import video


def _frames(n=6, height=48, width=64):
  return video_clips.moving_square_clip(n=n, height=height, width=width)[0]


def _decoded(path):
  clip = video.open_clip(str(path))
  return clip, list(video.read_frames(clip, clip.width))


def test_round_trip_keeps_frame_count_rate_and_audio(tmp_path):
  src = video_clips.write_mp4(tmp_path / 'in.mp4', _frames(12), fps=Fraction(30000, 1001),
                              audio_seconds=12 * 1001 / 30000)  # fmt: skip
  clip, frames = _decoded(src)
  assert (clip.count, clip.total, clip.fps, clip.has_audio) == (12, 12, Fraction(30000, 1001), True)
  assert (clip.width, clip.height) == (64, 48)
  out = tmp_path / 'out.mp4'
  video.write_video(out, frames, clip.fps, audio_from=clip)
  again, frames_again = _decoded(out)
  assert (again.count, again.fps, again.has_audio) == (12, clip.fps, True)
  # H.264 at crf 18 on a smooth texture: close to the decoded source.
  assert np.abs(np.stack(frames_again) - np.stack(frames)).mean() < 0.02
  # The audio covers the frames (AAC works in 1024-sample packets: within two of them).
  assert abs(video_clips.audio_seconds(out) - 12 * 1001 / 30000) < 2 * 1024 / 44100


def test_a_frame_range_trims_frames_and_audio(tmp_path):
  src = video_clips.write_mp4(tmp_path / 'in.mp4', _frames(12), fps=24, audio_seconds=0.5)
  clip = video.open_clip(str(src), frames='4:10')
  frames = list(video.read_frames(clip, 64))
  assert (clip.start, clip.count, len(frames)) == (4, 6, 6)
  whole = list(video.read_frames(video.open_clip(str(src)), 64))
  np.testing.assert_array_equal(frames[0], whole[4])
  out = tmp_path / 'out.mp4'
  video.write_video(out, frames, clip.fps, audio_from=clip)
  assert video.open_clip(str(out)).count == 6
  assert abs(video_clips.audio_seconds(out) - 6 / 24) < 2 * 1024 / 44100


def test_a_source_without_audio_gives_a_silent_result(tmp_path):
  src = video_clips.write_mp4(tmp_path / 'in.mp4', _frames(3))
  clip, frames = _decoded(src)
  video.write_video(tmp_path / 'out.mp4', frames, clip.fps, audio_from=clip)
  assert not video.open_clip(str(tmp_path / 'out.mp4')).has_audio


def test_frame_folders_and_globs_sort_by_number(tmp_path):
  frames = _frames(11)
  for k, rgb in enumerate(frames):
    image_lib.save_image(tmp_path / f'f{k}.png', rgb, bit_depth=16)  # f10 after f9
  clip = video.open_clip(str(tmp_path), fps=12.5)
  got = list(video.read_frames(clip, 64))
  assert (clip.count, clip.fps) == (11, Fraction(25, 2))
  np.testing.assert_allclose(got[10], frames[10], atol=1 / 65535)
  assert video.open_clip(str(tmp_path / 'f1*.png')).count == 2  # f1, f10


def test_write_frames_keeps_odd_sizes_and_mp4_drops_a_row_and_column(tmp_path):
  frames = _frames(2, height=49, width=65)
  assert video.write_frames(tmp_path / 'dir', frames) == 2
  assert image_lib.image_size(str(tmp_path / 'dir' / 'frame_00002.png')) == (65, 49)
  video.write_video(tmp_path / 'odd.mp4', frames, Fraction(24))
  clip = video.open_clip(str(tmp_path / 'odd.mp4'))
  assert (clip.width, clip.height) == (64, 48)


def test_write_frames_replaces_an_earlier_runs_frames_and_nothing_else(tmp_path):
  folder = tmp_path / 'dir'
  video.write_frames(folder, _frames(3))
  (folder / 'notes.txt').write_text('yours')  # put there after the planner's check
  with pytest.raises(errors.NstError) as e:
    video.write_frames(folder, _frames(2), replaces={f'frame_{n:05d}.png' for n in (1, 2, 3)})
  assert str(e.value) == f'{folder} now holds notes.txt, which nst-jax did not write; move it away'
  assert sorted(p.name for p in folder.iterdir()) == [
    'frame_00001.png', 'frame_00002.png', 'frame_00003.png', 'notes.txt'
  ]  # fmt: skip
  (folder / 'notes.txt').unlink()
  assert video.write_frames(folder, _frames(2), replaces={'frame_00001.png', 'frame_00002.png',
                                                          'frame_00003.png'}) == 2  # fmt: skip
  assert sorted(p.name for p in folder.iterdir()) == ['frame_00001.png', 'frame_00002.png']
  assert [p.name for p in tmp_path.iterdir()] == ['dir']  # no temporary left


def test_nothing_is_half_written(tmp_path):
  def failing():
    yield _frames(1)[0]
    raise RuntimeError('interrupted')

  with pytest.raises(RuntimeError):
    video.write_video(tmp_path / 'out.mp4', failing(), Fraction(24))
  with pytest.raises(RuntimeError):
    video.write_frames(tmp_path / 'frames', failing())
  assert list(tmp_path.iterdir()) == []


def test_files_named_like_the_temporaries_are_left_alone(tmp_path):
  # Someone's files under the names the writers used before: never replaced or removed.
  (tmp_path / '.out.mp4.partial.mp4').write_bytes(b'a video of yours')
  (tmp_path / '.frames.partial').mkdir()
  (tmp_path / '.frames.partial' / 'notes.txt').write_text('yours')
  video.write_video(tmp_path / 'out.mp4', _frames(2), Fraction(24))
  assert video.write_frames(tmp_path / 'frames', _frames(2)) == 2
  assert (tmp_path / '.out.mp4.partial.mp4').read_bytes() == b'a video of yours'
  assert (tmp_path / '.frames.partial' / 'notes.txt').read_text() == 'yours'
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    '.frames.partial',
    '.out.mp4.partial.mp4',
    'frames',
    'out.mp4',
  ]
  umask = os.umask(0)
  os.umask(umask)
  assert (tmp_path / 'out.mp4').stat().st_mode & 0o777 == 0o666 & ~umask  # not private
  assert (tmp_path / 'frames').stat().st_mode & 0o777 == 0o777 & ~umask


def test_ten_bit_video_decodes_at_full_precision(tmp_path):
  ramp = np.linspace(0, 1, 64, dtype=np.float32)[None, :, None] * np.ones((48, 1, 3), np.float32)
  src = video_clips.write_mp4(tmp_path / 'ten.mkv', [ramp] * 2, codec='ffv1', pix_fmt='yuv420p10le')
  clip, frames = _decoded(src)
  assert any('10le' in note for note in clip.notes)
  # more than 256 levels survive (rgb48): an 8-bit decode would give at most 64 here
  # but on a 64-step ramp the check is that values are not on the 1/255 grid.
  off_grid = np.abs(frames[0] * 255 - np.round(frames[0] * 255)) > 0.01
  assert off_grid.mean() > 0.3
  np.testing.assert_allclose(frames[0][24], ramp[24], atol=0.02)


def test_alpha_is_composited_over_white(tmp_path):
  rgba = np.zeros((48, 64, 4), np.float32)
  rgba[..., 0] = 1.0  # red
  rgba[:, :32, 3] = 1.0  # left half opaque, right half transparent
  src = video_clips.write_mp4(tmp_path / 'alpha.mov', [rgba] * 2, codec='png', pix_fmt='rgba')
  clip, frames = _decoded(src)
  assert any('alpha' in note for note in clip.notes)
  np.testing.assert_allclose(frames[0][10, 5], [1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(frames[0][10, 50], [1, 1, 1], atol=1e-6)


def test_frames_of_another_aspect_ratio_are_refused_before_reading(tmp_path):
  # Before: the frames were read at different heights and the optical flow
  # between them failed with an OpenCV traceback.
  for name, size in [('f1.png', (64, 48)), ('f2.png', (128, 96)), ('f3.png', (64, 64))]:
    Image.new('RGB', size).save(tmp_path / name)
  clip = video.open_clip(str(tmp_path))
  with pytest.raises(errors.ImageError) as e:
    next(video.read_frames(clip, 32))
  assert str(e.value) == (
    f'frame {tmp_path}/f3.png is 64x64 but the first frame, {tmp_path}/f1.png, is 64x48, so they '
    "would be read at different sizes (32x32 and 32x24); give every frame the first frame's "
    'size, e.g. resize or crop it to 64x48'
  )
  # The same aspect ratio at another size is resized like the rest.
  frames = list(video.read_frames(dataclasses.replace(clip, count=2), 32))
  assert [f.shape for f in frames] == [(24, 32, 3), (24, 32, 3)]
  with pytest.raises(errors.ImageError, match=r'f2\.png is 128x96 .* \(128x96 and 64x48\)'):
    video.check_frame_sizes(clip.frame_files[:2], None, max_pixels=10**6)


@pytest.mark.parametrize(
  'make, spec, message',
  [
    (lambda d: (d / 'x.mp4').write_text('not a video'), 'x.mp4', 'is not a video FFmpeg can read'),
    (lambda d: (d / 'x.txt').write_text('hi'), 'x.txt', 'is not a video (known suffixes'),
    (lambda d: d.joinpath('empty').mkdir(), 'empty', 'holds no frames'),
    (lambda d: d.joinpath('new\nline').mkdir(), 'new\nline', "new\\\\nline' holds no frames"),
  ],
)
def test_unreadable_sources_are_one_line_errors(tmp_path, make, spec, message):
  make(tmp_path)
  with pytest.raises(errors.NstError, match=message.replace('(', r'\(')) as info:
    video.open_clip(str(tmp_path / spec))
  assert '\n' not in str(info.value)


def test_a_file_without_a_video_stream_is_refused(tmp_path):
  path = tmp_path / 'sound.mp4'
  with av.open(str(path), 'w') as out:
    stream = out.add_stream('aac', rate=44100)
    stream.layout = 'mono'
    video_clips._sine(out, stream, 0.2)
  with pytest.raises(errors.ImageError, match='has no video stream'):
    video.open_clip(str(path))


def test_an_empty_frame_range_is_refused(tmp_path):
  src = video_clips.write_mp4(tmp_path / 'in.mp4', _frames(4))
  for frames in ('3:3', '9:', 'x'):
    with pytest.raises(errors.ConfigError, match='video.frames'):
      video.open_clip(str(src), frames=frames)


def test_a_variable_frame_rate_is_refused_with_the_conversion(tmp_path):
  times = [0.0, 0.04, 0.08, 0.2, 0.24, 0.28]
  src = video_clips.write_mp4(tmp_path / 'vfr.mp4', _frames(6), fps=25, times=times)
  with pytest.raises(errors.ImageError, match='variable frame rate.*-fps_mode cfr'):
    video.open_clip(str(src))


def test_a_frame_folder_leaves_out_sub_folders_and_what_nst_jax_wrote(tmp_path):
  """Trial 26: a sub-folder f_005.png was read as a frame; a glob took styled frames."""
  import json

  frames = tmp_path / 'fr'
  frames.mkdir()
  for k in range(1, 4):
    Image.new('RGB', (8, 6)).save(frames / f'f_{k:03d}.png')
  (frames / 'f_005.png').mkdir()
  assert video.open_clip(str(frames)).count == 3
  styled = tmp_path / 'fr_out'
  styled.mkdir()
  Image.new('RGB', (8, 6)).save(styled / 'frame_00001.png')
  (tmp_path / 'fr_out.json').write_text(json.dumps({'output': str(styled), 'frames': 1}))
  clip = video.open_clip(f'{tmp_path}/fr*/*.png')
  assert clip.count == 3  # fr_out's frame is the run's result (its record says so)


def test_a_video_is_noted_before_it_is_in_place_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
  """Trial 51 V4: killed between the rename and the digest's note, the run's own video was
  nobody's; V6: a full or read-only disk while encoding was av's traceback."""
  import errno
  import hashlib

  frames = [np.full((16, 16, 3), v, np.float32) for v in (0.2, 0.8)]
  out = tmp_path / 'v.mp4'
  seen = []

  def then(tmp):
    seen.append((os.path.exists(out), hashlib.sha256(tmp.read_bytes()).hexdigest()))

  video.write_video(out, frames, Fraction(24), then=then)
  assert seen == [(False, hashlib.sha256(out.read_bytes()).hexdigest())]

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(av, 'open', full)
  with pytest.raises(errors.WriteError, match=r'could not write .*w\.mp4: No space left on device'):
    video.write_video(tmp_path / 'w.mp4', frames, Fraction(24))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['v.mp4']  # no partial file left
