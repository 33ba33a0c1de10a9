"""Video runs: the temporal loss works, the command line round-trips, runs survive signals."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys

import jax
from jax import test_util
import numpy as np
import pytest
import small_runs
import video_clips

import nst_jax
from nst_jax import errors
from nst_jax.core import losses
from nst_jax.io import images as image_lib
from nst_jax.io import video
from nst_jax.io import weights as weights_lib
from nst_jax.runs import flow
from nst_jax.runs import temporal
from nst_jax.runs import video as video_pipeline

ROOT = Path(__file__).resolve().parent.parent
STYLE = str(ROOT / 'style_images' / 'starry_night.jpg')


def _clip(n, height, width):
  return video_clips.moving_square_clip(n=n, height=height, width=width)[0]


def _write_frames(directory, frames):
  directory.mkdir()
  for k, rgb in enumerate(frames):
    image_lib.save_image(directory / f'f{k:03d}.png', rgb, bit_depth=16)
  return directory


def _config(content, output, weights, *, iterations=30, width=96, **video_settings):
  return nst_jax.StyleConfig(
    inputs=nst_jax.InputConfig(content_path=str(content), style_path=(STYLE,), width=width),
    model=nst_jax.ModelConfig(weights=str(weights)),
    schedule=nst_jax.ScheduleConfig(iterations=iterations),
    save=nst_jax.SaveConfig(path=f'{output}/'),
    run=nst_jax.RunConfig(progress='log', print_iter=0),
    video=nst_jax.VideoConfig(**video_settings),
  )


def test_temporal_loss_matches_its_formula_and_gradient():
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  c = rng.uniform(size=(5, 6)).astype(np.float32)
  expected = np.sum(c[..., None] * (x - w) ** 2) / x.size
  np.testing.assert_allclose(losses.temporal_loss(x, w, c), expected, rtol=1e-6)
  assert losses.temporal_loss(x, w, np.zeros_like(c)) == 0
  test_util.check_grads(lambda y: losses.temporal_loss(y, w, c), (x,), order=1, modes=['rev'],
                        eps=1e-2)  # fmt: skip


@pytest.mark.slow
def test_video_objective_is_the_objective_plus_the_weighted_temporal_term(caffe_npz):
  w = weights_lib.load_weights(caffe_npz)
  model = nst_jax.make_model()
  loss_config = nst_jax.LossConfig()
  rng = np.random.default_rng(1)
  content, style, image, previous = nst_jax.preprocess(
    rng.uniform(size=(4, 32, 32, 3)), w.info.input_convention
  )
  targets = nst_jax.make_targets(w.params, content[None], style[None], model=model,
                                 loss_spec=loss_config.spec, content_weight=100.0,
                                 style_weight=0.01)  # fmt: skip
  targets = jax.tree.map(lambda a: a[0], targets)  # one image's targets
  c = rng.uniform(size=(32, 32)).astype(np.float32)
  extra = {'previous': previous, 'weight': c, 'temporal_weight': np.float32(7.0)}
  base, _ = nst_jax.objective(image, w.params, targets, model=model, loss_spec=loss_config.spec)
  got, aux = temporal.video_objective(image, w.params, targets._replace(extra=extra),
                                            model=model, loss_spec=loss_config.spec)  # fmt: skip
  l_t = np.mean(c[..., None] * (np.asarray(image) - np.asarray(previous)) ** 2)
  np.testing.assert_allclose(aux['temporal'], l_t, rtol=1e-5)
  np.testing.assert_allclose(got, base + 7.0 * l_t, rtol=1e-5)


@pytest.mark.slow
def test_temporal_loss_cuts_flicker_and_frames_follow_their_content(tmp_path, lsuv_npz):
  # 48x64, not 72x96: the iterations of the default network are this test's
  # cost (0.24 s each at 72x96); at 48x64 the flicker ratio (0.14, 0.15 at 72x96)
  # and the content ratio (1.23, 1.16) stay well inside their bounds (1/3, 1.5).
  frames, _ = video_clips.moving_square_clip(n=3, height=48, width=64)
  src = _write_frames(tmp_path / 'clip', frames)
  w = weights_lib.load_weights(lsuv_npz)
  fl = [flow.flows(frames[t - 1], frames[t]) for t in range(1, len(frames))]

  def measure(name, temporal_weight):
    out = tmp_path / name
    video_pipeline.run_video(
      _config(src, out, lsuv_npz, temporal_weight=temporal_weight, iterations=20, width=64)
    )
    styled = [image_lib.load_image(p) for p in sorted(out.glob('*.png'))]
    flicker = np.mean([
      np.abs(styled[t] - flow.warp(styled[t - 1], f.backward))[f.weight > 0.5].mean()
      for t, f in enumerate(fl, 1)
    ])  # fmt: skip
    feats = [nst_jax.extract_features(w, x, ('relu4_2',))['relu4_2'] for x in (*styled, *frames)]
    n = len(styled)
    content = np.mean([np.mean((feats[k] - feats[n + k]) ** 2) for k in range(n)])
    return flicker, content

  per_frame = measure('per_frame', 0.0)
  temporal = measure('temporal', nst_jax.VideoConfig.temporal_weight)
  assert temporal[0] <= per_frame[0] / 3, (temporal, per_frame)
  # not a frozen frame: each output follows its own content
  assert temporal[1] <= 1.5 * per_frame[1], (temporal, per_frame)


def test_an_unfinished_run_needs_resume_and_resume_needs_one(tmp_path, caffe_npz, caplog):
  src = _write_frames(tmp_path / 'clip', _clip(2, 24, 32))
  cfg = _config(src, tmp_path / 'out', caffe_npz)
  # Trial 22: a checkpoint_dir (a bucket) was ignored without a word.
  with pytest.raises(errors.NstError, match='nothing to resume'):
    video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=True, checkpoint_dir='b')))
  assert (
    'run.checkpoint_dir applies to image and batch runs; a video keeps its state in its work '
    'directory beside the output (.NAME.work)'
  ) in caplog.text
  # Left by a run that failed before finishing a frame: discarded, so it blocks nothing.
  (tmp_path / '.out.work' / 'final').mkdir(parents=True)
  with pytest.raises(errors.NstError, match='nothing to resume'):
    video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=True)))
  assert not (tmp_path / '.out.work').exists()
  assert (
    f'Discarded {tmp_path / ".out.work"}: the run that left it finished no frame.' in caplog.text
  )
  (tmp_path / '.out.work' / 'final').mkdir(parents=True)
  (tmp_path / '.out.work' / 'final' / 'frame_00000.png').write_bytes(b'a finished frame')
  with pytest.raises(errors.NstError, match='unfinished video run; continue it with run.resume'):
    video_pipeline.run_video(cfg)
  assert (tmp_path / '.out.work' / 'final' / 'frame_00000.png').read_bytes() == b'a finished frame'
  # A file nst-jax never writes there: the directory is not ours to resume or remove.
  (tmp_path / '.out.work' / 'mine.dat').write_bytes(b'yours')
  for resume in (False, True):
    with pytest.raises(errors.NstError) as e:
      video_pipeline.run_video(cfg.replace(run=cfg.run.replace(resume=resume)))
    assert str(e.value) == (
      f'{tmp_path / ".out.work"} holds mine.dat, which no video run writes there; move it away '
      'to run'
    )
  assert (tmp_path / '.out.work' / 'mine.dat').read_bytes() == b'yours'
  with pytest.raises(errors.ConfigError, match='must end in .mp4'):
    video_pipeline.run_video(cfg.replace(save=cfg.save.replace(path=str(tmp_path / 'x.avi'))))
  with pytest.raises(errors.ConfigError) as e:
    video_pipeline.run_video(
      cfg.replace(video=cfg.video.replace(passes=8), schedule=cfg.schedule.replace(iterations=3))
    )
  assert str(e.value) == (
    'video.passes is 8 but schedule.iterations is 3, and each pass needs an iteration; raise '
    'schedule.iterations or lower video.passes'
  )


def _env(devices=1):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'NST_JAX_WEIGHTS')}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _main(*args, devices=1, **kwargs):
  return subprocess.Popen(
    [sys.executable, str(ROOT / 'main.py'), *map(str, args)],
    env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
  )  # fmt: skip


@pytest.mark.slow
def test_a_video_on_the_command_line_keeps_frames_rate_and_audio(tmp_path, caffe_npz):
  frames, _ = video_clips.moving_square_clip(n=6, height=36, width=48)
  src = video_clips.write_mp4(tmp_path / 'in.mp4', frames, fps=25, audio_seconds=6 / 25)
  out = tmp_path / 'styled.mp4'
  p = _main('-cp', src, '-sp', STYLE, '-i', 3, '-w', 48, '--weights', caffe_npz, '--output', out,
            *small_runs.FLAGS)  # fmt: skip
  text, _ = p.communicate(timeout=300)
  assert p.returncode == 0, text
  clip = video.open_clip(str(out))
  assert (clip.count, clip.fps, clip.has_audio, clip.width) == (6, 25, True, 48)
  # styled.mp4.json: the suffix stays in derived names (nst_jax.io.output_names.derived).
  record = json.loads((tmp_path / 'styled.mp4.json').read_text())
  assert [f['frame'] for f in record['per_frame']] == list(range(6))
  assert all(f['time_s'] > 0 and np.isfinite(f['total']) for f in record['per_frame'])
  lines = text.strip().splitlines()
  assert lines[-1].startswith(f'Done: {out}, 6 frames in ')
  assert not any('xla_bridge' in line or 'libtpu' in line for line in lines)
  assert not list(tmp_path.glob('.*'))  # no work directory or partial file left


@pytest.mark.slow
def test_sigterm_saves_and_resume_gives_the_same_frames(tmp_path, caffe_npz):
  src = _write_frames(tmp_path / 'clip', _clip(3, 36, 48))
  common = ['-cp', src, '--video', '-sp', STYLE, '-i', 20, '-w', 48, '--weights', caffe_npz,
            *small_runs.FLAGS]  # fmt: skip
  whole = _main(*common, '--output', f'{tmp_path}/whole/')
  text, _ = whole.communicate(timeout=300)
  assert whole.returncode == 0, text
  p = _main(*common, '--output', f'{tmp_path}/cut/', '--progress', 'log', '--print_iter', 1)
  seen = []
  for line in p.stdout:  # stop in the middle of frame 2
    seen.append(line)
    if line.startswith('frame 2/3: iteration 5/'):
      p.send_signal(signal.SIGTERM)
      break
  rest, _ = p.communicate(timeout=120)
  assert p.returncode == 128 + signal.SIGTERM, ''.join(seen) + rest
  assert 'interrupted by signal 15' in rest and '--resume' in rest
  work = tmp_path / '.cut.work' / 'final'
  assert (work / 'frame_00000.png').exists() and (work / 'frame_00001.ckpt').exists()
  # Another -i than the finished frames': refused (it ended frame 2 at once and deleted its
  # checkpoint; more -i made frames of two lengths: trial 26), the work directory as it was.
  kept = sorted(p.name for p in work.iterdir())
  fewer = list(common)
  fewer[fewer.index('-i') + 1] = 3
  short = _main(*fewer, '--output', f'{tmp_path}/cut/', '--resume')
  text, _ = short.communicate(timeout=120)
  assert short.returncode == 1, text
  assert text.endswith(
    f'error: cannot resume from {tmp_path / ".cut.work"}: -i/--iterations differs (checkpoint '
    '20, now 3); rerun with the same settings, or without --resume and another --output to '
    'start over\n'
  ), text
  assert sorted(p.name for p in work.iterdir()) == kept
  again = _main(*common, '--output', f'{tmp_path}/cut/', '--resume')
  text, _ = again.communicate(timeout=300)
  assert again.returncode == 0, text
  assert 'frame 1/3 done' not in text  # finished frames are not redone
  whole_frames, cut_frames = (sorted((tmp_path / d).iterdir()) for d in ('whole', 'cut'))
  assert len(cut_frames) == len(whole_frames) == 3
  for a, b in zip(whole_frames, cut_frames, strict=True):
    np.testing.assert_array_equal(image_lib.load_image(a), image_lib.load_image(b))
  # Frame 1, finished before the signal, keeps its record entry (trial 10 (b)2).
  per_frame = [
    [{k: v for k, v in f.items() if k not in ('time_s', 'flow_wait_s')} for f in record]
    for record in (json.loads((tmp_path / f'{d}.json').read_text())['per_frame']
                   for d in ('whole', 'cut'))
  ]  # fmt: skip
  assert [f['frame'] for f in per_frame[1]] == [0, 1, 2]
  assert per_frame[1] == per_frame[0]


@pytest.mark.slow
def test_multi_pass_runs_the_frames_as_a_batch_over_eight_devices(tmp_path, caffe_npz):
  src = _write_frames(tmp_path / 'clip', _clip(5, 36, 48))
  out = tmp_path / 'passes'
  p = _main('-cp', src, '--video', '-sp', STYLE, '-i', 6, '-w', 48, '--weights', caffe_npz,
            '--passes', 3, '--output', f'{out}/', *small_runs.FLAGS, devices=8)  # fmt: skip
  text, _ = p.communicate(timeout=300)
  assert p.returncode == 0, text
  assert len(list(out.glob('frame_*.png'))) == 5
  record = json.loads((tmp_path / 'passes.json').read_text())
  assert [(q['pass'], q['iterations']) for q in record['passes']] == [(1, 2), (2, 2), (3, 2)]
  assert 'pass 3/3: iteration 2/2  5 jobs' in text.replace('\r', '\n')


def test_a_rerun_replaces_its_own_frame_folder_named_without_a_slash(tmp_path, caffe_npz):
  src = _write_frames(tmp_path / 'clip', _clip(2, 24, 32))
  out = tmp_path / 'out'
  out.mkdir()  # an existing folder is one for frames, with or without the slash
  (out / 'notes.txt').write_text('yours')
  cfg = _config(src, out, caffe_npz, iterations=1)
  cfg = cfg.replace(
    save=cfg.save.replace(path=str(out)),
    loss=small_runs.loss_config(),
    inputs=cfg.inputs.replace(width=32),
  )
  with pytest.raises(errors.NstError) as e:
    video_pipeline.run_video(cfg)
  assert str(e.value) == (
    f'{out} holds notes.txt, which no nst-jax run record says nst-jax wrote; move it away or '
    'choose another save.path (save.overwrite replaces no file inside a folder)'
  )
  (out / 'notes.txt').unlink()
  for _ in range(2):  # the second run replaces the frames the first one's record claims
    assert video_pipeline.run_video(cfg) == out
    assert sorted(p.name for p in out.iterdir()) == ['frame_00001.png', 'frame_00002.png']
  assert json.loads((tmp_path / 'out.json').read_text())['frames'] == 2


def test_frames_too_small_for_the_layers_are_refused_before_any_work(tmp_path):
  src = _write_frames(tmp_path / 'clip', _clip(2, 24, 32))
  cfg = _config(src, tmp_path / 'out', tmp_path / 'no-weights-needed.npz')
  cfg = cfg.replace(inputs=cfg.inputs.replace(width=12))  # relu5_1 needs 16 px a side
  with pytest.raises(errors.ImageError, match=r'the content image \(a frame\) is 12x9 px'):
    video_pipeline.run_video(cfg)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['clip']  # nothing written
