"""End-to-end tests of main.py, run as a subprocess like a user would."""

import json
import os
from pathlib import Path
import re
import socket
import subprocess
import sys

import cli_forks
from conftest import flat_config
import numpy as np
from PIL import Image
import pytest
import small_runs

from nst_jax import errors
from nst_jax import run

# Subprocess runs of the full network: deselect with -m "not slow".
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / 'content_images' / 'tubingen.jpg'
STYLE = ROOT / 'style_images' / 'starry_night.jpg'


def _env(env_weights=None) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'NST_JAX_WEIGHTS'}
  env['JAX_PLATFORMS'] = 'cpu'
  if env_weights:
    env['NST_JAX_WEIGHTS'] = str(env_weights)
  return env


def _subprocess(*args, cwd, env_weights=None):
  """main.py in its own interpreter, exactly as a user starts it."""
  return subprocess.run(
    [sys.executable, str(ROOT / 'main.py'), *map(str, args)],
    cwd=cwd, env=_env(env_weights), capture_output=True, text=True, timeout=300,
  )  # fmt: skip


@pytest.fixture(scope='module')
def cli(tmp_path_factory):
  """main.py's program forked from one interpreter per run (tests/cli_forks.py).

  What a run does is the program's own (its argv, directory, environment,
  exit code and output); only the interpreter's start and the imports,
  about 2 s a run, are shared. The documented command itself runs in its
  own interpreter below.
  """
  server = cli_forks.Server(tmp_path_factory.mktemp('forks'), _env())
  yield server
  server.close()


def _main(cli, *args, cwd, env_weights=None):
  """main.py with `args` (forked by `cli`), its stdout and stderr as one stream."""
  return cli.run(args, cwd=cwd, env=_env(env_weights))


def test_seed_command_line_short_forms(tmp_path, caffe_npz, cli):
  """The documented command, at a test-sized width and iteration count."""
  r = _subprocess(
      '-cp', CONTENT, '-sp', STYLE, '-i', 3, '-cw', 10, '-sw', 0.0001, '-w', 48,
      cwd=tmp_path, env_weights=caffe_npz,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr
  out = tmp_path / 'output' / 'tubingen_starry_night.png'
  with Image.open(out) as im:
    assert im.size == (48, 36)  # tubingen is 1024x768: the aspect ratio is kept
  assert 'iteration 3/3' in r.stderr
  # A console that talks to people: no backend probing, no absl prefixes, one summary at the end.
  lines = r.stderr.strip().splitlines()
  assert not any('xla_bridge' in line or 'libtpu' in line for line in lines), r.stderr
  assert not any(re.match(r'[IWE]\d{4} ', line) for line in lines), r.stderr
  assert re.fullmatch(
    rf'Done: {re.escape(str(out.relative_to(tmp_path)))} in .+, 3 iterations, final loss \S+; '
    r'run record .+\.json\.',
    lines[-1],
  ), lines[-1]
  # A second run never replaces the first result.
  r2 = _main(
    cli, '-cp', CONTENT, '-sp', STYLE, '-i', 1, '-w', 48, cwd=tmp_path, env_weights=caffe_npz
  )
  assert r2.returncode == 0, r2.stderr
  assert (tmp_path / 'output' / 'tubingen_starry_night_2.png').exists()


def test_long_forms_output_and_intermediates(tmp_path, caffe_npz, cli):
  out = tmp_path / 'res' / 'out.png'
  r = _main(
      cli, f'--contentpath={CONTENT}', '--stylepath', STYLE, '--iterations=4', '--imagewidth', 40,
      '--contentweight=5', '--styleweight', '0.1', '--weights', caffe_npz, '--output', out,
      '--save_iter', 2, '--optimizer', 'adam', '--print_iter', 2,
      cwd=tmp_path,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr
  assert Image.open(out).size == (40, 30)
  assert (tmp_path / 'res' / 'out_00002.png').exists()
  assert not (tmp_path / 'res' / 'out_00004.png').exists()  # the last one is the result
  assert 'iteration 2/4' in r.stderr and 'it/s' in r.stderr and 'ETA' in r.stderr


# (args, the one-line message); ids below.
_ERRORS = [
        (['-sp', STYLE], '--contentpath'),
        (['-cp', CONTENT], '--stylepath'),
        (['-cp', CONTENT, '-sp', STYLE, '-i', '0'], '--iterations must be a positive integer'),
        (['-cp', CONTENT, '-sp', STYLE, '-w', '-3'], '--imagewidth must be a positive integer'),
        (['-cp', CONTENT, '-sp', STYLE, '-cw', '-1'], '--contentweight must be a finite number'),
        (['-cp', CONTENT, '-sp', STYLE, '-sw', 'nan'], '--styleweight must be a finite number'),
        (['-cp', CONTENT, '-sp', STYLE, '-sw', 'inf'], '--styleweight must be a finite number'),
        (['-cp', CONTENT, '-sp', STYLE, '--style_layers', 'relu9_1'], '--style_layers: unknown'),
        (['-cp', 'missing.jpg', '-sp', STYLE],
         'error: -cp/--contentpath: image missing.jpg does not exist; pass the path of an image '
         'file'),
        (['-cp', CONTENT, '-sp', 'missing.jpg'],
         'error: -sp/--stylepath: image missing.jpg does not exist; pass the path of an image '
         'file'),
        (['-cp', CONTENT, '-sp', STYLE, '--output', 'out.xyz'], 'end the name in .png'),
        (['-cp', CONTENT, '-sp', STYLE, '--weights', 'nope.npz'],
         'nope.npz (--weights) does not exist'),
        (['-cp', CONTENT, '-sp', STYLE, '--weights', '.'],
         'weights file . (--weights) is a directory; run: python convert_weights.py --download '
         '--output '
         'vgg19.npz'),
        (['-cp', CONTENT, '-sp', f'{STYLE},', '-i', 1], 'has an empty entry'),
        (
            ['-cp', CONTENT, '-sp', f'{STYLE},{STYLE}', '--style_blend_weights', '1,2,3'],
            '--style_blend_weights has 3 values for 2 style images',
        ),
        (['-cp', CONTENT, '-sp', STYLE, '--style_blend_weights', 'a'], 'comma-separated numbers'),
        (['-cp', CONTENT, '-sp', STYLE, '--style_scale', '0'], '--style_scale must be a finite'),
        (['-cp', CONTENT, '-sp', STYLE, '--tv_weight', '-1'], '--tv_weight must be a finite'),
        (['-cp', CONTENT, '-sp', STYLE, '--scales', 2, '--min_width', 64], 'not both'),
        (['-cp', CONTENT, '-sp', STYLE, '--init', 'nothere.png'],
         'error: --init: image nothere.png does not exist'),
        (['-cp', CONTENT, '-sp', STYLE, '--content_mask', 'nomask.png'],
         'error: --content_mask: image nomask.png does not exist'),
        (['-cp', CONTENT, '-sp', STYLE, '--style_masks', STYLE], 'draw the mask over the content'),
        (
            ['-cp', CONTENT, '-sp', f'{STYLE},{STYLE}', '--style_masks', CONTENT],
            '--style_masks has 1 mask for 2 style images',
        ),
        (
            ['-cp', CONTENT, '-sp', STYLE, '--style_masks', CONTENT, '--style_loss', 'histogram'],
            'histogram style loss does not support style masks',
        ),
        (['-cp', CONTENT, '-sp', STYLE, '--preserve_colors', 'yes'], 'preserve_colors'),
        (['-cp', CONTENT, '-sp', STYLE, '-w', 64, '--scales', 5], 'fewer --scales'),
        (
            ['-cp', CONTENT, '-sp', STYLE, '--bit_depth', 16, '--output', 'o.jpg'],
            '16-bit output needs a .png name',
        ),
        (['-cp', CONTENT, '-sp', STYLE, '--quality', 0], '--quality'),
        (['-cp', CONTENT, '-sp', STYLE, '--preset', 'fast'], '<classic|fast_cpu|paper>'),
        (['-cp', CONTENT, '-sp', STYLE, '--serve', 70000], '--serve'),
        (['-i', 2], 'or a job list with --jobs FILE'),
        (['--jobs', 'nojobs.csv'], 'jobs file nojobs.csv does not exist'),
        (['-cp', 'no_such_dir/*.jpg', '-sp', STYLE], 'matches no files'),
        (['-cp', str(ROOT / 'content_images'), '-sp', STYLE, '--output', 'one.png'],
         'name a directory (ending in /)'),
        (['-cp', CONTENT, '-sp', STYLE, '--tol', -1], '--tol must be a finite number >= 0'),
        (['-cp', CONTENT, '-sp', STYLE, '--precision', 'low'], '<highest|high|default>'),
        (['-cp', 'frames/', '--video', '-sp', STYLE, '--passes', 8, '-i', 3],
         '--passes is 8 but -i/--iterations is 3, and each pass needs an iteration; raise '
         '-i/--iterations or lower --passes'),
    ]  # fmt: skip
_ERROR_IDS = [
        'no-cp', 'no-sp', 'iterations', 'width', 'cw', 'sw-nan', 'sw-inf', 'layer',
        'missing-image', 'missing-style', 'bad-output', 'missing-weights', 'weights-dir',
        'empty-style',
        'blend-count', 'blend-nan', 'style-scale', 'tv', 'scales-and-min-width', 'missing-init',
        'missing-content-mask',
        'mask-aspect', 'mask-count', 'histogram-masks', 'colors', 'too-many-scales',
        'bits-jpeg', 'quality', 'preset', 'serve-port', 'no-images', 'missing-jobs',
        'empty-glob', 'batch-output-file', 'tol', 'precision', 'video-passes',
    ]  # fmt: skip


@pytest.fixture(scope='module')
def error_runs(tmp_path_factory, caffe_npz):
  """Every _ERRORS case through main.py's command line, each in its own empty directory.

  One interpreter forks a process per case (tests/cli_forks.py): the 34
  cases then cost one start-up instead of 34.
  """
  base = tmp_path_factory.mktemp('errors')
  env = {k: v for k, v in os.environ.items() if k != 'NST_JAX_WEIGHTS'}
  env.update(JAX_PLATFORMS='cpu', NST_JAX_WEIGHTS=str(caffe_npz))
  runs = []
  for name, (args, _) in zip(_ERROR_IDS, _ERRORS, strict=True):
    (base / name).mkdir()
    runs.append({
      'argv': [str(a) for a in args], 'cwd': str(base / name), 'env': env,
      'stderr': str(base / f'{name}.stderr'),
    })  # fmt: skip
  codes = cli_forks.launch(runs, base, env)
  return {
    name: (code, Path(run['stderr']).read_text(), Path(run['cwd']))
    for name, code, run in zip(_ERROR_IDS, codes, runs, strict=True)
  }


@pytest.mark.parametrize('name', _ERROR_IDS)
def test_user_errors_are_one_line(error_runs, name):
  _, message = _ERRORS[_ERROR_IDS.index(name)]
  returncode, stderr, cwd = error_runs[name]
  assert returncode != 0
  assert message in stderr
  assert 'Traceback' not in stderr
  lines = [line for line in stderr.splitlines() if line.strip()]
  error_lines = [line for line in lines if message in line]
  assert len(error_lines) == 1, stderr
  assert list(cwd.iterdir()) == []  # nothing written


def test_preset_sets_flags_and_explicit_flags_win(tmp_path, caffe_npz, cli):
  # -i before --preset still wins: the preset is read before every other flag.
  r = _main(
    cli, '-i', 2, '--preset', 'classic', '-cp', CONTENT, '-sp', STYLE, '-w', 32,
    '--output', 'o.png', cwd=tmp_path, env_weights=caffe_npz,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  settings = json.loads((tmp_path / 'o.json').read_text())['settings']
  assert (settings['schedule']['iterations'], settings['inputs']['width']) == (2, 32)
  assert (
    settings['optim']['lbfgs_memory'],
    settings['inputs']['init'],
    settings['loss']['tv_weight'],
  ) == (100, 'random', 294.9)
  assert (settings['loss']['content_weight'], settings['loss']['style_weight']) == (5.0, 100.0)
  assert settings['loss']['style_layer_weights'][0] == 1 / 64**2
  assert len(json.loads((tmp_path / 'o.json').read_text())['history']) >= 1


def test_batch_from_a_directory_and_from_a_jobs_file(tmp_path, caffe_npz, cli):
  # -cp naming a directory: one job per image in it, all written to --output/.
  r = _main(
    cli, '-cp', ROOT / 'content_images', '-sp', STYLE, '-i', 2, '-w', 32, '--output', 'out/',
    *small_runs.FLAGS, cwd=tmp_path, env_weights=caffe_npz,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  written = sorted(p.name for p in (tmp_path / 'out').iterdir())
  # Each job's result, with its own run record beside it.
  assert written == sorted(
    f'{stem}_starry_night{suffix}'
    for stem in ('golden_gate', 'tubingen')
    for suffix in ('.png', '.json', '.loss.png', '.sheet.jpg')
  )
  # Both are 4:3, so 32x24: one group, run as one batched step of two rows.
  assert 'process 0: 2 jobs of 32x24 (2 rows on 1 devices)' in r.stderr, r.stderr[-3000:]
  # A JSON-lines job list with per-job weights and outputs (relative to the file).
  jobs = tmp_path / 'jobs.jsonl'
  jobs.write_text(
    json.dumps({'content': str(CONTENT), 'style': [str(STYLE)], 'content_weight': 5,
                'output': 'res/a.jpg'}) + '\n'
    + json.dumps({'content': str(CONTENT), 'style': str(STYLE), 'style_weight': 0.5}) + '\n'
  )  # fmt: skip
  r = _main(cli, '--jobs', jobs, '-i', 2, '-w', 32, '--output', 'auto/', *small_runs.FLAGS,
            cwd=tmp_path, env_weights=caffe_npz)  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  assert Image.open(tmp_path / 'res' / 'a.jpg').size == (32, 24)
  assert sorted(p.name for p in (tmp_path / 'auto').glob('*.png')) == [
    'tubingen_starry_night.loss.png',
    'tubingen_starry_night.png',
  ]


def test_distributed_single_run_goes_through_the_owned_batch_path(tmp_path, caffe_npz, cli):
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  r = _main(
    cli, '-cp', CONTENT, '-sp', STYLE, '-i', 2, '-w', 32, '--output', 'one.png', '--distributed',
    '--coordinator_address', f'127.0.0.1:{port}', '--num_processes', 1, '--process_id', 0,
    cwd=tmp_path, env_weights=caffe_npz,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  # One process owns the one job and writes it where --output says.
  assert 'process 0 of 1' in r.stderr and 'process 0: saved one.png' in r.stderr
  assert Image.open(tmp_path / 'one.png').size == (32, 24)


def test_same_seed_same_bytes(tmp_path, caffe_npz):
  # What is under test is the seed's bookkeeping, run mechanics: small_runs' network will do.
  rng = np.random.default_rng(0)
  for name in ('c.png', 's.png'):
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / name)
  outputs = []
  for i in range(2):
    cfg = flat_config(
      content_path=str(tmp_path / 'c.png'),
      style_path=str(tmp_path / 's.png'),
      output=str(tmp_path / f'o{i}.png'),
      weights=str(caffe_npz),
      iterations=5,
      width=24,
      init='random',
      seed=7,
    )
    cfg = cfg.replace(loss=small_runs.loss_config())
    outputs.append(run(cfg).read_bytes())
  assert outputs[0] == outputs[1]


def _inputs(directory, size=(24, 20)):
  directory.mkdir()
  rng = np.random.default_rng(1)
  paths = []
  for name in ('c.png', 's.png'):
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
      directory / name
    )
    paths.append(directory / name)
  return paths


def test_a_run_first_names_its_platform_and_devices(tmp_path, cli):
  # A missing or mismatched CUDA/TPU plugin falls back to CPU silently; the
  # first line says where the run computes, even when it then fails.
  r = _main(cli, '-cp', tmp_path / 'missing.png', '-sp', STYLE, cwd=tmp_path)
  assert r.returncode == 1
  assert r.stderr.splitlines()[0] == 'platform cpu: 1 device (cpu)', r.stderr


def test_non_utf8_file_name(tmp_path, caffe_npz, cli):
  content, style = _inputs(tmp_path / 'in')
  odd = Path(os.fsdecode(bytes(tmp_path / 'in') + b'/caf\xe9-\xff.png'))  # Latin-1 bytes
  content.rename(odd)
  out = tmp_path / 'out'
  r = _main(cli, '-cp', odd, '-sp', style, '-i', 2, '-w', 24, cwd=out.parent, env_weights=caffe_npz)
  assert r.returncode == 0, r.stderr
  (result,) = [p for p in (tmp_path / 'output').glob('*.png') if not p.name.endswith('.loss.png')]
  # Trial 26: its bytes kept, no checkpoint could be written (orbax takes UTF-8 names only).
  assert result.name == 'caf_-__s.png' and 'could not write' not in r.stderr, r.stderr
  assert result.with_suffix('.json').exists()
  named = Path(os.fsdecode(bytes(tmp_path) + b'/r-\xff.png'))
  r = _main(cli, '-cp', odd, '-sp', style, '--output', named, cwd=tmp_path, env_weights=caffe_npz)
  assert r.returncode == 1 and r.stderr.splitlines()[-1] == (
    f"error: '{tmp_path}/r-\\udcff.ckpt' is not a UTF-8 name, and orbax writes checkpoints under "
    'UTF-8 names only; choose another --output'
  ), r.stderr
  missing = Path(os.fsdecode(bytes(tmp_path) + b'/gone-\xff.jpg'))
  r = _main(cli, '-cp', missing, '-sp', style, cwd=tmp_path, env_weights=caffe_npz)
  assert r.returncode == 1 and 'does not exist' in r.stderr and 'Traceback' not in r.stderr


def test_pixel_limit_flag(tmp_path, caffe_npz, cli):
  content, style = _inputs(tmp_path / 'in')
  r = _main(
    cli, '-cp', content, '-sp', style, '--max_image_pixels', 100, cwd=tmp_path,
    env_weights=caffe_npz,
  )  # fmt: skip
  assert r.returncode == 1
  assert f'image {content} has 24x20 pixels, more than the limit of 100' in r.stderr
  assert 'Traceback' not in r.stderr and not (tmp_path / 'output').exists()


def test_image_too_small_for_the_network(tmp_path, caffe_npz, cli):
  content, style = _inputs(tmp_path / 'in', size=(40, 2))
  r = _main(cli, '-cp', content, '-sp', style, '-w', 40, cwd=tmp_path, env_weights=caffe_npz)
  assert r.returncode == 1
  assert 'the content image is 40x2 px at this width' in r.stderr
  assert 'need at least 16 px on each side' in r.stderr
  assert 'Traceback' not in r.stderr and not (tmp_path / 'output').exists()


def test_width_too_large_for_memory_is_refused_before_loading(tmp_path, caffe_npz, cli):
  r = _main(cli, '-cp', CONTENT, '-sp', STYLE, '-w', 200_000, cwd=tmp_path, env_weights=caffe_npz)
  assert r.returncode == 1
  assert 'a 200000x150000 run needs about' in r.stderr and 'GB is available on cpu' in r.stderr
  # Only what would fit is suggested: here the widest -w, a shorter history.
  assert re.search(r'what would fit: -w/--imagewidth \d+ or less', r.stderr), r.stderr
  assert 'bfloat16' not in r.stderr and 'Traceback' not in r.stderr
  assert list(tmp_path.iterdir()) == []


def test_classic_controls_on_the_command_line(tmp_path, caffe_npz, cli):
  style2 = ROOT / 'style_images' / 'woman-with-hat-matisse.jpg'
  r = _main(
      cli, '-cp', CONTENT, '-sp', f'{STYLE},{style2}', '--style_blend_weights', '3,1',
      '--style_scale', 0.5, '--tv_weight', 0.1, '--init', 'gray', '--preserve_colors',
      'postprocess', '--scales', 2, '--style_loss', 'mean_cov', '--normalize_gradients',
      '-i', 4, '-w', 96, '--print_iter', 1, *small_runs.FLAGS,
      cwd=tmp_path, env_weights=caffe_npz,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr
  out = tmp_path / 'output' / 'tubingen_starry_night+woman-with-hat-matisse.png'
  with Image.open(out) as im:
    assert im.size == (96, 72)
  assert 'scale 1/2: 68x51' in r.stderr and 'scale 2/2  iteration 2/2' in r.stderr


def test_masks_on_the_command_line(tmp_path, caffe_npz, cli):
  style2 = ROOT / 'style_images' / 'woman-with-hat-matisse.jpg'
  top = np.zeros((96, 128), np.uint8)
  top[:48] = 255
  Image.fromarray(top).save(tmp_path / 'top.png')
  Image.fromarray(255 - top).save(tmp_path / 'bottom.png')
  out = tmp_path / 'masked.png'
  r = _main(
      cli, '-cp', CONTENT, '-sp', f'{STYLE},{style2}', '--style_masks',
      f'{tmp_path / "top.png"},{tmp_path / "bottom.png"}', '--content_mask',
      tmp_path / 'bottom.png', '--init', CONTENT, '-i', 2, '-w', 48, '--output', out,
      *small_runs.FLAGS, cwd=tmp_path, env_weights=caffe_npz,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr
  with Image.open(out) as im:
    assert im.size == (48, 36)


def test_output_directory_16_bits_and_the_content_icc_profile(tmp_path, caffe_npz):
  from PIL import ImageCms
  import png

  profile = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
  content, style = _inputs(tmp_path / 'in')
  with Image.open(content) as im:
    im.save(content, icc_profile=profile)
  results = tmp_path / 'results'
  cfg = flat_config(
    content_path=str(content),
    style_path=str(style),
    output=f'{results}/',  # a directory: an automatic name inside it
    weights=str(caffe_npz),
    iterations=2,
    width=24,
    bit_depth=16,
  )
  out = run(cfg)
  assert out == results / 'c_s.png'
  assert run(cfg) == results / 'c_s_2.png'  # never replaces a file
  *_, info = png.Reader(filename=str(out)).read()
  assert info['bitdepth'] == 16
  with Image.open(out) as im:
    assert im.info['icc_profile'] == profile and im.size == (24, 20)


def test_output_shows_the_content_upright(tmp_path, caffe_npz):
  # A camera photo stored sideways with EXIF orientation 6 (rotate 90° clockwise
  # to view): the result is written upright, with no orientation tag to apply.
  content, style = _inputs(tmp_path / 'in', size=(40, 24))
  exif = Image.Exif()
  exif[0x0112] = 6
  with Image.open(content) as im:
    im.save(tmp_path / 'in' / 'sideways.jpg', exif=exif.tobytes())
  out = run(
    flat_config(
      content_path=str(tmp_path / 'in' / 'sideways.jpg'), style_path=str(style),
      output=str(tmp_path / 'o.png'), weights=str(caffe_npz), iterations=1, width=32,
    )
  )  # fmt: skip
  with Image.open(out) as im:
    assert im.size == (32, 53)  # stored 40x24 sideways: shown portrait, 32 wide
    assert im.getexif().get(0x0112) is None


def test_helpshort_puts_the_seed_options_and_the_most_used_first(tmp_path, cli):
  r = _main(cli, '--helpshort', cwd=tmp_path)
  assert r.returncode == 0  # asking for help is no error
  head, _, flag_list = r.stdout.partition('\nflags:\n')
  first = ['--contentpath', '--stylepath', '--iterations', '--contentweight', '--styleweight',
           '--imagewidth', '--output', '--init', '--scales', '--preserve_colors']  # fmt: skip
  positions = [head.index(name) for name in first]
  assert positions == sorted(positions), r.stdout[:2000]
  for short in ('-cp,', '-sp,', '-i,', '-cw,', '-sw,', '-w,'):
    assert short in head
  # Every option named up front is a real flag, and the full list still follows.
  for name in re.findall(r'^  (?:-\w+, *)?(--\w+)', head, re.M):
    assert f'{name}:' in flag_list or f'--[no]{name[2:]}:' in flag_list, name
  assert '--style_blend_weights' in flag_list


@pytest.mark.parametrize('flag', ['--help', '--helpfull'])
def test_help_exits_0_and_a_bad_flag_exits_1(tmp_path, flag, cli):
  r = _main(cli, flag, cwd=tmp_path)
  assert r.returncode == 0 and '--contentpath' in r.stdout
  r = _main(cli, '--no_such_flag', cwd=tmp_path)
  assert r.returncode == 1 and 'no_such_flag' in r.stderr


def test_the_program_ends_without_the_interpreters_last_garbage_collections():
  # An atexit handler registered first runs last: after the program's own,
  # just before the interpreter's final collections, which skip frozen objects.
  code = (
    'import atexit, gc, sys\n'
    'atexit.register(lambda: print("frozen", gc.get_freeze_count()))\n'
    'from nst_jax.cli import app\n'
    'app.run(["main.py", "--help"])\n'
  )
  r = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
  )
  assert r.returncode == 0, r.stderr[-2000:]
  frozen = int(re.search(r'^frozen (\d+)$', r.stdout, re.M).group(1))
  assert frozen > 10_000  # the libraries' objects and the program's (0 unfrozen)


def test_absls_profile_file_never_replaces_a_file(tmp_path, cli):
  """absl's --profile_file wrote its profile over any file at exit, an input included."""
  photo = tmp_path / 'photo.jpg'
  photo.write_bytes(CONTENT.read_bytes())
  r = _main(cli, '-cp', photo, '-sp', STYLE, '--profile_file', photo, cwd=tmp_path)
  assert r.returncode == 1
  assert r.stderr.splitlines()[0] == (
    f'FATAL Flags parsing error: flag --profile_file={photo}: it exists; name a new file (the '
    'profile would replace it)'
  )
  assert photo.read_bytes() == CONTENT.read_bytes()


def test_a_style_file_whose_name_holds_a_comma_is_named_with_the_fix(tmp_path, monkeypatch):
  """Trial 26: 'image a does not exist' for -sp a,b.jpg, which is one file."""
  from nst_jax.cli import app

  monkeypatch.chdir(tmp_path)
  (tmp_path / 'a,b.jpg').write_bytes(b'x')
  with pytest.raises(errors.NstError) as e:
    app._paths('stylepath', 'a,b.jpg')
  assert str(e.value) == (
    "--stylepath 'a,b.jpg' is one file, but commas separate files here; rename it without the comma"
  )
  assert app._paths('stylepath', 'a.jpg, b.jpg') == ('a.jpg', 'b.jpg')
