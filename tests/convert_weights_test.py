"""End-to-end tests of convert_weights.py as a subprocess."""

import hashlib
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

import cli_forks
import download_test
import numpy as np
import pytest
import weight_files

from nst_jax import errors
from nst_jax.cli import spelling
from nst_jax.io import weight_formats
from nst_jax.io import weights as weights_lib

ROOT = Path(__file__).resolve().parent.parent


def _convert(*args, cwd):
  return subprocess.run(
    [sys.executable, str(ROOT / 'convert_weights.py'), *map(str, args)],
    cwd=cwd,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_input_conversion(tmp_path, random_params):
  pth = tmp_path / 'vgg19-d01eb7cb.pth'
  weight_files.write_pth(pth, weight_files.torchvision_state(random_params))
  out = tmp_path / 'w' / 'v.npz'
  r = _convert('--input', pth, '--output', out, '--input_convention', 'caffe', cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert 'caffe input convention' in r.stdout
  w = weights_lib.load_weights(out)
  assert w.info.convention == 'caffe' and w.info.source_format == 'torch_pth'
  np.testing.assert_array_equal(w.params['conv4_4']['kernel'], random_params['conv4_4'][0])


@pytest.mark.slow
def test_download_from_loopback(tmp_path):
  src = tmp_path / 'src.h5'
  weight_files.write_keras_h5(src, weight_files.random_params(seed=2))
  payload = src.read_bytes()
  out = tmp_path / 'weights' / 'vgg19.npz'
  with download_test._serve(payload) as (url, _):
    r = _convert(
        '--download', '--url', url, '--md5', hashlib.md5(payload).hexdigest(), '--output', out,
        cwd=tmp_path,
    )  # fmt: skip
  assert r.returncode == 0, r.stderr
  assert 'downloading' in r.stderr and 'MB/s' in r.stderr
  assert weights_lib.load_weights(out).info.source_sha256 == hashlib.sha256(payload).hexdigest()


@pytest.mark.slow
def test_errors(tmp_path):
  r = _convert(cwd=tmp_path)
  assert r.returncode != 0 and 'give exactly one of --input FILE or --download' in r.stderr
  (tmp_path / 'x.h5').write_text('hello')
  r = _convert('--input', tmp_path / 'x.h5', '--output', tmp_path / 'o.npz', cwd=tmp_path)
  assert r.returncode != 0
  assert 'is not a Keras .h5, PyTorch .pth or .safetensors' in r.stderr
  assert 'Traceback' not in r.stderr
  assert not (tmp_path / 'o.npz').exists()


# ---------------------------------------------------------------------------
# Never lose or spoil a user's file (issue 21): each case sets up a directory
# with a hostile --output (or input), and all of them run as one batch of
# forks of one converter process (tests/cli_forks.py).

CONVERT = weight_formats.CONVERT_COMMAND


def _new_directory_output(d, src, **_):
  return ['--input', src, '--output', 'newdir/']  # trial 22: written as a file 'newdir'


def _directory_output(d, src, **_):
  (d / 'out').mkdir()
  (d / 'out' / 'keep.txt').write_text('mine')
  return ['--input', src, '--output', d / 'out']


def _copy(src, d):
  shutil.copyfile(src, d / 'w.h5')
  return d / 'w.h5'


def _output_is_input(d, src, **_):
  _copy(src, d)
  # Relative --input, absolute --output: compared as resolved paths.
  return ['--input', 'w.h5', '--output', d / 'w.h5']


def _output_links_to_input(d, src, **_):
  _copy(src, d)
  (d / 'vgg19.npz').symlink_to('w.h5')
  return ['--input', 'w.h5', '--output', 'vgg19.npz']


def _output_in_linked_directory(d, src, **_):
  (d / 'real').mkdir()
  _copy(src, d / 'real')
  (d / 'alias').symlink_to('real')
  return ['--input', 'real/w.h5', '--output', 'alias/w.h5']


def _output_hard_links_input(d, src, **_):
  os.link(_copy(src, d), d / 'vgg19.npz')
  return ['--input', 'w.h5', '--output', 'vgg19.npz']


def _download_onto_its_file(d, **_):
  # --download saves the published file beside --output, then converts it.
  return ['--download', '--url', 'http://127.0.0.1:9/x.h5', '--output', weights_lib.KERAS_FILENAME]


def _foreign_output(d, src, **_):
  (d / 'notes.npz').write_bytes(b'my own notes, not weights\n')
  np.savez(d / 'other.npz', arr_0=np.arange(3))
  return ['--input', src, '--output', 'notes.npz']


def _foreign_npz_output(d, src, **_):
  np.savez(d / 'other.npz', arr_0=np.arange(3))
  return ['--input', src, '--output', 'other.npz']


def _foreign_output_overwritten(d, src, **_):
  (d / 'notes.npz').write_bytes(b'my own notes, not weights\n')
  return ['--input', src, '--output', 'notes.npz', '--overwrite']


def _converted_output(d, src, npz, **_):
  shutil.copyfile(npz, d / 'vgg19.npz')
  return ['--input', src, '--output', 'vgg19.npz']


def _truncated_converted_output(d, src, npz, **_):
  (d / 'vgg19.npz').write_bytes(npz.read_bytes()[:100_000])
  return ['--input', src, '--output', 'vgg19.npz']


def _non_finite_input(d, **_):
  params = dict(weight_files.random_params(seed=3))
  kernel, bias = params['conv4_3']
  params['conv4_3'] = (kernel, np.where(np.arange(bias.size) < 5, np.nan, bias))
  weight_files.write_keras_h5(d / 'nan.h5', params)
  return ['--input', 'nan.h5', '--output', 'vgg19.npz']


def _weights_directory(d, url, md5, **_):
  # The command main.py's line suggests for --weights DIR, as given, plus a
  # loopback mirror instead of the internet.
  (d / 'weights').mkdir()
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.load_weights(d / 'weights')
  suggested = spelling.for_command_line(str(e.value)).split('; run: ')[1]
  assert suggested == f'{CONVERT} --download --output {d / "weights" / "vgg19.npz"}'
  return [*suggested.removeprefix(CONVERT).split(), '--url', url, '--md5', md5]


def _output_under_a_file(d, src, **_):
  (d / 'f').write_text('mine')
  return ['--input', src, '--output', 'f/out.npz']


def _killed_converters_leftovers(d, src, **_):
  (d / '.vgg19.npz.nst-k1ll3d_x.tmp').write_bytes(b'half a file')  # a SIGKILLed write's
  (d / '.vgg19.npz.mine.tmp').write_text('mine')  # not that pattern: kept
  return ['--input', src, '--output', 'vgg19.npz']


CASES = {
  'output-under-a-file': _output_under_a_file,
  'killed-converters-leftovers': _killed_converters_leftovers,
  'directory-output': _directory_output,
  'new-directory-output': _new_directory_output,
  'output-is-input': _output_is_input,
  'output-links-to-input': _output_links_to_input,
  'output-in-linked-directory': _output_in_linked_directory,
  'output-hard-links-input': _output_hard_links_input,
  'download-onto-its-file': _download_onto_its_file,
  'foreign-output': _foreign_output,
  'foreign-npz-output': _foreign_npz_output,
  'foreign-output-overwritten': _foreign_output_overwritten,
  'converted-output': _converted_output,
  'truncated-converted-output': _truncated_converted_output,
  'non-finite-input': _non_finite_input,
  'weights-directory': _weights_directory,
}


def _files(directory):
  """Every entry below `directory`: a file's SHA-256, a link's target, or 'dir'."""
  out = {}
  for path in sorted(directory.rglob('*')):
    name = str(path.relative_to(directory))
    if path.is_symlink():
      out[name] = f'-> {os.readlink(path)}'
    elif path.is_dir():
      out[name] = 'dir'
    else:
      out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


@pytest.fixture(scope='module')
def runs(tmp_path_factory, caffe_npz):
  """name -> (exit code, stderr, directory, its files before the run)."""
  base = tmp_path_factory.mktemp('convert')
  src = base / 'src' / weights_lib.KERAS_FILENAME
  src.parent.mkdir()
  weight_files.write_keras_h5(src, weight_files.random_params(seed=3))
  payload = src.read_bytes()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('NST_JAX_WEIGHTS_URL', None)
  batch, before = [], {}
  with download_test._serve(payload) as (url, _):
    for name, setup in CASES.items():
      d = base / name
      d.mkdir()
      argv = setup(d, src=src, npz=caffe_npz, url=url, md5=hashlib.md5(payload).hexdigest())
      before[name] = _files(d)
      batch.append({
        'argv': [str(a) for a in argv], 'cwd': str(d), 'env': env,
        'stderr': str(base / f'{name}.stderr'),
      })  # fmt: skip
    codes = cli_forks.launch(batch, base, env, 'convert_weights.py')
  return {
    name: (code, Path(run['stderr']).read_text(), Path(run['cwd']), before[name])
    for name, code, run in zip(CASES, codes, batch, strict=True)
  }


REFUSED = {
  'output-under-a-file': 'f is a file, not a directory; choose another output',
  'directory-output': '--output {d}/out is a directory; name the file to write, such as '
  '--output {d}/out/vgg19.npz',
  'new-directory-output': '--output newdir/ names a directory; name the file to write, such as '
  '--output newdir/vgg19.npz',
  'output-is-input': '--output {d}/w.h5 is the --input file; write the converted .npz to '
  'another --output',
  'output-links-to-input': '--output vgg19.npz is the --input file; write the converted .npz '
  'to another --output',
  'output-in-linked-directory': '--output alias/w.h5 is the --input file; write the converted '
  '.npz to another --output',
  'output-hard-links-input': '--output vgg19.npz is the --input file; write the converted .npz '
  'to another --output',
  'download-onto-its-file': f'--output {weights_lib.KERAS_FILENAME} is where --download saves '
  'its file; write the converted .npz to another --output',
  'foreign-output': '--output notes.npz exists and is not converted nst-jax weights; choose '
  'another --output, or add --overwrite to replace it',
  'foreign-npz-output': '--output other.npz exists and is not converted nst-jax weights; '
  'choose another --output, or add --overwrite to replace it',
  'non-finite-input': 'nan.h5: conv4_3/bias holds 5 NaN values; the file is damaged: fetch '
  f'and convert the published one with {CONVERT} --download',
}


@pytest.mark.slow
@pytest.mark.parametrize('name', REFUSED)
def test_refused_with_one_line_and_every_file_kept(runs, name):
  code, stderr, d, before = runs[name]
  assert code == 1
  assert stderr.splitlines() == ['error: ' + REFUSED[name].format(d=d)]
  assert _files(d) == before


@pytest.mark.slow
@pytest.mark.parametrize(
  'name',
  ['foreign-output-overwritten', 'converted-output', 'truncated-converted-output'],
)
def test_replaced(runs, name):
  code, stderr, d, before = runs[name]
  assert code == 0, stderr
  (output,) = before
  assert _files(d).keys() == before.keys()
  w = weights_lib.load_weights(d / output)
  assert w.info.source == weights_lib.KERAS_FILENAME
  np.testing.assert_array_equal(
    w.params['conv2_2']['bias'], weight_files.random_params(seed=3)['conv2_2'][1]
  )


@pytest.mark.slow
def test_a_killed_converters_temporary_file_is_removed_by_the_next(runs):
  code, stderr, d, before = runs['killed-converters-leftovers']
  assert code == 0, stderr
  after = _files(d)
  assert sorted(after) == ['.vgg19.npz.mine.tmp', 'vgg19.npz']
  assert after['.vgg19.npz.mine.tmp'] == before['.vgg19.npz.mine.tmp']


@pytest.mark.slow
def test_weights_directory_gets_a_command_that_works(runs):
  code, stderr, d, _ = runs['weights-directory']
  assert code == 0, stderr
  converted = d / 'weights' / 'vgg19.npz'
  assert weights_lib.load_weights(converted).info.source == weights_lib.KERAS_FILENAME
  # Now the directory holds converted weights: the line names them.
  with pytest.raises(errors.WeightsError) as e:
    weights_lib.load_weights(d / 'weights')
  assert str(e.value) == (
    f'weights file {d / "weights"} (path=) is a directory; use the converted file in it, '
    f'{converted}'
  )


_SIGNALLED = """
import os, signal, sys, time
from nst_jax.cli import convert
from nst_jax.io import atomic, weights

def convert_file(source, output, convention=None):
  def write(tmp):
    with open(tmp, 'wb') as f:
      f.write(b'x' * 1000)
    os.kill(os.getpid(), int(sys.argv[2]))  # mid-write, as a kill would come
    time.sleep(5)
  atomic.write(output, write)

weights.convert_file = convert_file
convert.run(['convert_weights.py', '--input', sys.argv[1], '--output', 'out.npz'])
"""


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_conversion_is_one_line_and_leaves_nothing(tmp_path, signum):
  """Trial 22: Ctrl-C printed a traceback; SIGTERM/SIGHUP left the lock and an 80 MB temporary."""
  (tmp_path / 'in.h5').write_bytes(b'not read: convert_file is replaced')
  r = subprocess.run(
    [sys.executable, '-c', _SIGNALLED, 'in.h5', str(int(signum))], cwd=tmp_path,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)},
    capture_output=True, text=True, timeout=60,
  )  # fmt: skip
  assert r.returncode == 128 + signum, r.stderr
  assert r.stderr.splitlines() == [
    f'error: interrupted by signal {int(signum)}; out.npz was not written'
  ]
  assert sorted(p.name for p in tmp_path.iterdir()) == ['in.h5']
