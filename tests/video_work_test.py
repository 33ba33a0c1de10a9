"""A video's work directory: a resume with other settings than its frames' is refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import small_runs
import video_clips

import nst_jax
from nst_jax import errors
from nst_jax.io import images as image_lib
from nst_jax.io import output_names
from nst_jax.runs import video as video_pipeline
from nst_jax.runs import video_work

ROOT = Path(__file__).resolve().parent.parent
STYLES = [
  str(ROOT / 'style_images' / name) for name in ('starry_night.jpg', 'woman-with-hat-matisse.jpg')
]


def _clip(tmp_path):
  """Two frames of a moving square, as a folder of 16-bit PNGs: (frames, the folder)."""
  frames, _ = video_clips.moving_square_clip(n=2, height=24, width=32)
  src = tmp_path / 'clip'
  src.mkdir()
  for k, rgb in enumerate(frames):
    image_lib.save_image(src / f'f{k:03d}.png', rgb, bit_depth=16)
  return frames, src


def _config(src, weights, path, iterations=2):
  """A small run of the clip at `src` to `path`, its work directory kept."""
  return nst_jax.StyleConfig(
    inputs=nst_jax.InputConfig(content_path=str(src), style_path=(STYLES[0],), width=32),
    model=nst_jax.ModelConfig(weights=str(weights)),
    loss=small_runs.loss_config(),
    schedule=nst_jax.ScheduleConfig(iterations=iterations),
    save=nst_jax.SaveConfig(path=path),
    run=nst_jax.RunConfig(progress='log', print_iter=0, keep_checkpoint=True),
  )


def _digests(folder):
  return {p: p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_a_resume_with_other_settings_or_frames_is_refused_before_any_frame(tmp_path, caffe_npz):
  frames, src = _clip(tmp_path)
  cfg = _config(src, caffe_npz, str(tmp_path / 'v.mp4'), iterations=2)
  video_pipeline.run_video(cfg)  # the work directory kept: every frame finished
  work = tmp_path / '.v.mp4.work'
  saved = json.loads((work / video_work.SETTINGS).read_text())
  assert saved['loss.style_weight'] == cfg.loss.style_weight and len(saved['frame_pixels']) == 64
  resume = cfg.replace(run=cfg.run.replace(resume=True))
  video_pipeline.run_video(resume)  # the same settings: it goes on (here: writes the video)
  before = _digests(tmp_path)
  # Trial 26 Q2, Q3: another style, weight, width or -i made a video of two runs with exit 0
  # (finished frames are not run again), or a traceback for another width.
  cases = [
    (resume.replace(loss=resume.loss.replace(style_weight=1.0)),
     'loss.style_weight differs (checkpoint 0.01, now 1.0)'),
    (resume.replace(inputs=resume.inputs.replace(width=40)),
     'inputs.width differs (checkpoint 32, now 40)'),
    (resume.replace(schedule=resume.schedule.replace(iterations=3)),
     'schedule.iterations differs (checkpoint 2, now 3)'),
    (resume.replace(inputs=resume.inputs.replace(style_path=(STYLES[1],))),
     "the style images' pixels differ from the checkpoint's"),
  ]  # fmt: skip
  for changed, differs in cases:
    with pytest.raises(errors.ResumeMismatch) as e:
      video_pipeline.run_video(changed)
    assert str(e.value).startswith(f'cannot resume from {work}: {differs}'), str(e.value)
    assert _digests(tmp_path) == before
  image_lib.save_image(src / 'f001.png', np.flip(frames[1], 0), bit_depth=16)
  with pytest.raises(errors.ResumeMismatch, match="the video's frames differ from the checkpo"):
    video_pipeline.run_video(resume)
  # Frames from an nst-jax that wrote no settings: nothing to check them against.
  (work / video_work.SETTINGS).unlink()
  with pytest.raises(errors.NstError) as e:
    video_pipeline.run_video(resume)
  assert str(e.value) == (
    f'{work} holds frames of a run that recorded no settings (an earlier nst-jax): they cannot '
    'be checked against this run; delete it to start over'
  )
  (work / video_work.SETTINGS).write_text(
    '[1, 2]'
  )  # trial 28: valid JSON, no settings: a traceback
  with pytest.raises(errors.NstError) as e:
    video_pipeline.run_video(resume)
  assert str(e.value) == (
    f'{work / video_work.SETTINGS} is unreadable (it holds a list, not the settings); delete '
    f'{work} to start over'
  )
  (work / video_work.SETTINGS).write_text('{}')  # it named color.color_match as differing
  with pytest.raises(errors.NstError, match=r'is unreadable \(it lacks (\d+) of the \1 settings\)'):
    video_pipeline.run_video(resume)


def test_a_video_output_name_that_is_not_utf8_is_refused_before_any_frame(tmp_path, caffe_npz):
  """Trial 28: every frame checkpoint's save failed (orbax takes UTF-8 names only)."""
  import os

  frames, src = _clip(tmp_path)
  out = os.fsdecode(bytes(tmp_path) + b'/v-\xff.mp4')
  cfg = _config(src, caffe_npz, out)
  with pytest.raises(errors.NstError) as e:
    video_pipeline.run_video(cfg)
  assert str(e.value) == (
    f"'{tmp_path}/.v-\\udcff.mp4.work' is not a UTF-8 name, and orbax writes the frames' "
    'checkpoints there under UTF-8 names only; choose another save.path'
  )
  assert sorted(p.name for p in tmp_path.iterdir()) == ['clip']


def test_what_a_video_cannot_do_is_refused_before_any_work(tmp_path, caffe_npz, caplog):
  """Trial 28: an --init file was refused late in the API's words (its work directory left),
  16 bits and intermediates were taken and not done, and a second run on a live one's output
  was told to delete the live run's work directory."""
  from nst_jax.runs import output_locks

  frames, src = _clip(tmp_path)
  out = tmp_path / 'v.mp4'
  cfg = _config(src, caffe_npz, str(out))
  for changed, message in (
    (cfg.replace(inputs=cfg.inputs.replace(init=STYLES[1])),
     f"inputs.init '{STYLES[1]}': a video starts each frame from its content, noise, grey or the "
     'frame before; give inputs.init content, random or gray'),
    (cfg.replace(save=cfg.save.replace(bit_depth=16)),
     'save.bit_depth 16 is for image results; a video is written with 8 bits per channel: use '
     'save.bit_depth 8'),
  ):  # fmt: skip
    with pytest.raises(errors.ConfigError) as e:
      video_pipeline.run_video(changed)
    assert str(e.value) == message
  assert sorted(p.name for p in tmp_path.iterdir()) == ['clip']
  (tmp_path / '.v.mp4.work' / 'final').mkdir(parents=True)
  (tmp_path / '.v.mp4.work' / 'final' / 'frame_00000.png').write_bytes(b'a live run frame')
  with output_locks.hold([out]), pytest.raises(errors.NstError) as e:
    video_pipeline.run_video(cfg)
  assert str(e.value) == (
    f'another nst-jax run is writing {out}; wait for it to finish or choose another output name'
  )


def test_a_pass_whose_frames_checkpoints_disagree_runs_again_from_its_start(
  tmp_path, caffe_npz, caplog
):
  """Trial 28: killed while a pass's checkpoints were saved, frame 0 one step ahead of frame 1;
  the resume mixed them into another video, exit 0 (or, one missing, was refused for ever)."""
  from nst_jax.io import checkpoint as checkpoint_lib

  frames, src = _clip(tmp_path)
  cfg = _config(src, caffe_npz, f'{tmp_path}/out/', iterations=4)
  cfg = cfg.replace(video=nst_jax.VideoConfig(passes=2))
  video_pipeline.run_video(cfg)
  whole = {p.name: p.read_bytes() for p in (tmp_path / 'out').iterdir()}
  pass2 = tmp_path / '.out.work' / 'pass2'
  for k in range(2):
    (pass2 / f'frame_{k:05d}.png').unlink()  # pass 2 unfinished ...
  state = {'image': np.zeros((1, 24, 32, 3), np.float32)}
  payload = checkpoint_lib.snapshot(state, iteration=1, total=2, settings={})
  checkpoint_lib.write(pass2 / 'frame_00000.ckpt', payload)  # ... frame 0 saved, frame 1 not
  video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=True)))
  assert (
    "pass 2: its frames' checkpoints hold different iterations (1, none: stopped " in caplog.text
  )
  assert {p.name: p.read_bytes() for p in (tmp_path / 'out').iterdir()} == whole


def test_a_file_put_at_the_videos_name_while_it_runs_is_kept(tmp_path, caffe_npz, monkeypatch):
  """Trial 34 Y6: a user's v.mp4 and v.mp4.json put there mid-run were replaced, exit 0."""
  from nst_jax.io import video as video_lib

  _, src = _clip(tmp_path)
  out = tmp_path / 'v.mp4'
  real = video_lib.write_video

  def write_video(path, *args, **kwargs):
    out.write_bytes(b'my video')  # put there just before the end
    return real(path, *args, **kwargs)

  monkeypatch.setattr(video_lib, 'write_video', write_video)
  cfg = _config(src, caffe_npz, str(out))
  with pytest.raises(errors.WriteError) as e:
    video_pipeline.run_video(cfg)
  assert str(e.value) == (
    f'could not write {out}: a file appeared there while the run ran, and is kept; move it away, '
    'then continue with run.resume'
  )
  assert out.read_bytes() == b'my video'
  out.rename(tmp_path / 'mine.mp4')
  monkeypatch.undo()
  video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=True)))
  assert out.stat().st_size > 1000 and (tmp_path / 'mine.mp4').read_bytes() == b'my video'
  # Trial 39 G3: saved over the earlier run's video while a rerun ran, it was replaced.
  # Trial 43 Q7: its work, kept, was called an unfinished run and refused every rerun.
  assert (tmp_path / '.v.mp4.work').is_dir()
  out.rename(tmp_path / 'kept.mp4')  # trial 47: the user keeps the video; still "unfinished"
  video_pipeline.run_video(cfg.replace(run=cfg.run.replace(keep_checkpoint=False)))
  assert (tmp_path / 'kept.mp4').stat().st_size > 1000
  assert not (tmp_path / '.v.mp4.work').exists() and out.stat().st_size > 1000
  held = video_work.hold_settings

  def saved_over(paths, now):  # after the plan, before the first frame
    out.write_bytes(b'my video')
    return held(paths, now)

  monkeypatch.setattr(video_work, 'hold_settings', saved_over)
  rerun = cfg.replace(run=cfg.run.replace(keep_checkpoint=False))
  with pytest.raises(errors.WriteError, match='a file appeared there while the run ran'):
    video_pipeline.run_video(rerun)
  assert out.read_bytes() == b'my video'


def test_a_finished_frames_folder_run_kept_is_replaced_by_a_rerun(tmp_path, caffe_npz):
  """Trial 45 P2-1: a frames folder's work kept by a finished run (--keep_checkpoint) was called
  an unfinished video run and refused every rerun to the folder."""
  _, src = _clip(tmp_path)
  out = tmp_path / 'frames'
  cfg = _config(src, caffe_npz, f'{out}/')
  video_pipeline.run_video(cfg)
  work = next(tmp_path.glob('.frames*.work'))
  assert (work / output_names.WORK_WRITING).read_text() == video_work.FRAMES_WRITTEN
  # Trial 47 N7: a rerun refused for the user's folder at the name discarded the kept work first.
  out.rename(tmp_path / 'kept')
  (tmp_path / 'frames.json').rename(tmp_path / 'kept.json')
  out.mkdir()
  (out / 'frame_00001.png').write_bytes(b'my picture')
  with pytest.raises(errors.NstError, match='frame_00001.png, which no nst-jax run record says'):
    video_pipeline.run_video(cfg.replace(run=cfg.run.replace(keep_checkpoint=False)))
  assert (work / output_names.WORK_WRITING).read_text() == video_work.FRAMES_WRITTEN
  assert (out / 'frame_00001.png').read_bytes() == b'my picture'
  (out / 'frame_00001.png').unlink()
  out.rmdir()
  (tmp_path / 'kept').rename(out)
  (tmp_path / 'kept.json').rename(tmp_path / 'frames.json')
  video_pipeline.run_video(cfg.replace(run=cfg.run.replace(keep_checkpoint=False)))
  assert not work.exists() and sorted(p.name for p in out.iterdir()) == [
    'frame_00001.png',
    'frame_00002.png',
  ]


def test_a_video_run_stopped_at_its_record_goes_on(tmp_path, caffe_npz, monkeypatch):
  """Trial 49 V1, V2: stopped between its video (or frames) and the record (a full disk, a kill),
  the line said no way on, a plain rerun called the run's own video nobody's, and a frames
  folder's every rerun and resume refused its own frames; a user's video saved there since was
  called an unfinished run."""
  from nst_jax.io import atomic

  _, src = _clip(tmp_path)
  real = atomic.write

  def full(path, *args, **kwargs):
    if str(path).endswith(('v.mp4.json', 'sf.json')):  # the record, after the frames
      raise errors.WriteError(f'could not write {path}: No space left on device')
    return real(path, *args, **kwargs)

  out = tmp_path / 'v.mp4'
  cfg = _config(src, caffe_npz, str(out)).replace(run=nst_jax.RunConfig(progress='log'))
  monkeypatch.setattr(atomic, 'write', full)
  with pytest.raises(errors.WriteError, match=r'v\.mp4 is written and .*\.v\.mp4\.work kept: cont'):
    video_pipeline.run_video(cfg)
  monkeypatch.undo()
  with pytest.raises(errors.NstError, match=r'holds an unfinished video run; continue it with run'):
    video_pipeline.run_video(cfg)  # a plain rerun was told the run's own video was nobody's
  video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=True)))
  assert (tmp_path / 'v.mp4.json').is_file() and not (tmp_path / '.v.mp4.work').exists()
  kept = cfg.replace(run=cfg.run.replace(keep_checkpoint=True))
  video_pipeline.run_video(kept)
  out.write_bytes(b'my video')
  with pytest.raises(errors.NstError, match=r'v\.mp4 is not the video .* holds the digest of'):
    video_pipeline.run_video(cfg)
  assert out.read_bytes() == b'my video'
  frames = tmp_path / 'sf'
  monkeypatch.setattr(atomic, 'write', full)
  with pytest.raises(errors.WriteError, match='kept: continue with run.resume'):
    video_pipeline.run_video(_config(src, caffe_npz, f'{frames}/'))
  monkeypatch.undo()
  resumed = _config(src, caffe_npz, f'{frames}/').replace(run=nst_jax.RunConfig(resume=True))
  video_pipeline.run_video(resumed)
  assert (tmp_path / 'sf.json').is_file() and len(list(frames.iterdir())) == 2


def test_a_rerun_killed_before_its_record_resumes_over_the_earlier_record(
  tmp_path, caffe_npz, monkeypatch
):
  """Trial 53 V7: a rerun that replaced its own earlier video, killed before its record, was
  refused by --resume and every rerun: the earlier run's record called the new video changed."""
  from nst_jax.io import atomic

  _, src = _clip(tmp_path)
  out = tmp_path / 'v.mp4'
  cfg = _config(src, caffe_npz, str(out)).replace(run=nst_jax.RunConfig(progress='log'))
  video_pipeline.run_video(cfg)
  earlier = out.read_bytes()
  real = atomic.write

  def killed(path, *args, **kwargs):
    if str(path).endswith('v.mp4.json'):
      raise SystemExit('killed')
    return real(path, *args, **kwargs)

  other = cfg.replace(inputs=cfg.inputs.replace(style_path=(STYLES[1],)))
  monkeypatch.setattr(atomic, 'write', killed)
  with pytest.raises(SystemExit):
    video_pipeline.run_video(other)
  monkeypatch.undo()
  assert out.read_bytes() != earlier
  with pytest.raises(errors.NstError, match='holds an unfinished video run; continue it with run'):
    video_pipeline.run_video(other)
  video_pipeline.run_video(other.replace(run=other.run.replace(resume=True)))
  record = json.loads((tmp_path / 'v.mp4.json').read_text())
  assert record['result_sha256'] == output_names.file_sha256(out)


def test_a_run_stopped_before_its_record_names_a_file_at_the_records_name(
  tmp_path, caffe_npz, monkeypatch
):
  """Trial 51 V3: killed between its video and its record, with a user's file at the record's
  name, the rerun's line said to resume, and only the resume named the user's file."""
  from nst_jax.io import atomic

  _, src = _clip(tmp_path)
  out, notes = tmp_path / 'v.mp4', tmp_path / 'v.mp4.json'
  cfg = _config(src, caffe_npz, str(out)).replace(run=nst_jax.RunConfig(progress='log'))
  real = atomic.write

  def killed(path, *args, **kwargs):
    if str(path).endswith('v.mp4.json'):
      raise SystemExit('killed')
    return real(path, *args, **kwargs)

  monkeypatch.setattr(atomic, 'write', killed)
  with pytest.raises(SystemExit):
    video_pipeline.run_video(cfg)
  monkeypatch.undo()
  notes.write_text('my notes')
  with pytest.raises(errors.NstError) as refused:
    video_pipeline.run_video(cfg)
  assert str(refused.value) == (
    f'{tmp_path}/.v.mp4.work holds an unfinished video run; move {notes} away (no run record '
    'of v.mp4), then continue with run.resume, or delete it to start over'
  )
  assert notes.read_text() == 'my notes'
  notes.rename(tmp_path / 'mine.json')
  video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=True)))
  assert json.loads(notes.read_text())['result_sha256'] == output_names.file_sha256(out)


def test_a_read_only_disk_at_the_works_notes_is_one_line_and_resumes(
  tmp_path, caffe_npz, monkeypatch
):
  """Trial 55 T55-5: the disk made read-only after the last frame, before the result, was a
  traceback from the work directory's note that the result is being written (and a frames
  folder's note of its frames' digests)."""
  import errno

  _, src = _clip(tmp_path)
  real_touch, real_write = Path.touch, Path.write_text

  def read_only(names):
    def refuse(real):
      def call(self, *args, **kwargs):
        if self.name in names:
          raise OSError(errno.EROFS, 'Read-only file system')
        return real(self, *args, **kwargs)

      return call

    monkeypatch.setattr(Path, 'touch', refuse(real_touch))
    monkeypatch.setattr(Path, 'write_text', refuse(real_write))

  for out, note in ((tmp_path / 'v.mp4', output_names.WORK_WRITING),
                    (tmp_path / 'sf', output_names.WORK_FRAMES)):  # fmt: skip
    cfg = _config(src, caffe_npz, f'{out}/' if out.suffix == '' else str(out))
    work = out.with_name(f'.{out.name}.work')
    read_only({note})
    with pytest.raises(errors.WriteError) as e:
      video_pipeline.run_video(cfg)
    monkeypatch.undo()
    assert str(e.value) == (
      f'could not write {work / note}: Read-only file system; {work} keeps the finished frames: '
      'free space or make it writable, then continue with run.resume'
    )
    assert not out.exists() and work.is_dir()
    video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=True, keep_checkpoint=False)))
    assert out.exists() and not work.exists()
    assert json.loads(video_work.record_path(video_work.Paths(out, False, work)).read_text())


def test_a_full_disk_while_the_video_is_encoded_keeps_the_work_and_says_resume(
  tmp_path, caffe_npz, monkeypatch
):
  """Trial 57 T57-8: the line named the disk's fix and 'choose another place', not that the
  finished frames were kept for --resume (a fresh run would redo every frame)."""
  import errno

  import av

  _, src = _clip(tmp_path)
  out, work = tmp_path / 'v.mp4', tmp_path / '.v.mp4.work'
  cfg = _config(src, caffe_npz, str(out))
  real = av.open

  def full(file, mode='r', *args, **kwargs):
    if mode == 'w':
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real(file, mode, *args, **kwargs)

  monkeypatch.setattr(av, 'open', full)
  with pytest.raises(errors.WriteError) as e:
    video_pipeline.run_video(cfg)
  monkeypatch.undo()
  assert str(e.value).endswith(
    f'{work} keeps the finished frames: free space or make it writable, then continue with '
    'run.resume'
  )
  assert str(e.value).startswith(f'could not write {out}: No space left on device')
  assert not out.exists() and work.is_dir()
  video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=True, keep_checkpoint=False)))
  assert out.is_file() and not work.exists()


def test_a_picture_saved_over_a_finished_runs_frame_is_kept(tmp_path, caffe_npz):
  """Trial 53 F1: a frames folder's record claimed its frames by name, and a rerun replaced a
  picture the user had saved over one of them; now by the digests the record notes."""
  _, src = _clip(tmp_path)
  out = tmp_path / 'frames'
  cfg = _config(src, caffe_npz, f'{out}/').replace(run=nst_jax.RunConfig(progress='log'))
  video_pipeline.run_video(cfg)
  record = json.loads((tmp_path / 'frames.json').read_text())
  assert sorted(record['frames_sha256']) == ['frame_00001.png', 'frame_00002.png']
  (out / 'frame_00001.png').write_bytes(b'my picture')
  with pytest.raises(errors.NstError, match='frames holds frame_00001.png, which no nst-jax run'):
    video_pipeline.run_video(cfg)
  assert (out / 'frame_00001.png').read_bytes() == b'my picture'
  (out / 'frame_00001.png').unlink()
  video_pipeline.run_video(cfg)  # the run's own frame 2 is replaced as before
  assert sorted(p.name for p in out.iterdir()) == ['frame_00001.png', 'frame_00002.png']


def test_a_norecord_rerun_removes_the_replaced_videos_record(tmp_path, caffe_npz):
  """Trial 53 R1: it stayed, naming the old style and digest (the next rerun was then refused)."""
  _, src = _clip(tmp_path)
  out = tmp_path / 'v.mp4'
  cfg = _config(src, caffe_npz, str(out)).replace(run=nst_jax.RunConfig(progress='log'))
  video_pipeline.run_video(cfg)
  assert (tmp_path / 'v.mp4.json').is_file()
  video_pipeline.run_video(cfg.replace(save=cfg.save.replace(record=False)))
  assert not (tmp_path / 'v.mp4.json').exists() and out.is_file()
  # Without a record nothing says nst-jax wrote it, as for an image (long-runs.md).
  with pytest.raises(errors.NstError, match=r'v\.mp4 exists and no nst-jax run record says'):
    video_pipeline.run_video(cfg)
