"""nst_jax.engine.compile_cache: compiled programs kept between runs, where, how, and when not.

The command-line cases run main.py forked from one interpreter (tests/cli_forks.py)
with their own XDG_CACHE_HOME, and read the run record: `compile_from_disk`
says whether the persistent cache served the step.
"""

import json
import os
from pathlib import Path
import subprocess
import sys

import cli_forks
import jax
import pytest
import small_runs

from nst_jax import errors
from nst_jax.engine import compile_cache

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / 'content_images' / 'tubingen.jpg'
STYLE = ROOT / 'style_images' / 'starry_night.jpg'


def _env(caffe_npz, xdg):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('JAX_COMPILATION_CACHE') and k != 'NST_JAX_WEIGHTS'}  # fmt: skip
  env.update(JAX_PLATFORMS='cpu', NST_JAX_WEIGHTS=str(caffe_npz), XDG_CACHE_HOME=str(xdg))
  return env


def _runs(base: Path, caffe_npz, cases: dict[str, tuple[Path, list[str]]]) -> dict:
  """name -> (exit code, stderr, record or None), each case (xdg, extra flags) in turn."""
  runs = []
  for name, (xdg, extra) in cases.items():
    (base / name).mkdir()
    argv = ['-cp', CONTENT, '-sp', STYLE, '-w', 32, '-i', 2, '--output', 'out.png',
            '--progress', 'log', *small_runs.FLAGS, *extra]  # fmt: skip
    runs.append({
      'argv': [str(a) for a in argv], 'cwd': str(base / name), 'env': _env(caffe_npz, xdg),
      'stderr': str(base / f'{name}.stderr'),
    })  # fmt: skip
  codes = cli_forks.launch(runs, base, _env(caffe_npz, base / 'unused'))
  out = {}
  for (name, _), code in zip(cases.items(), codes, strict=True):
    record = base / name / 'out.json'
    out[name] = (
      code,
      (base / f'{name}.stderr').read_text(),
      json.loads(record.read_text()) if record.exists() else None,
    )
  return out


@pytest.mark.slow
def test_a_repeated_run_loads_its_step_from_the_users_cache(tmp_path, caffe_npz):
  xdg, off_xdg = tmp_path / 'xdg', tmp_path / 'xdg-off'
  got = _runs(tmp_path, caffe_npz, {
    'first': (xdg, []),
    'second': (xdg, []),
    'off': (off_xdg, ['--compile_cache', 'off']),
  })  # fmt: skip
  for name, (code, err, _) in got.items():
    assert code == 0, (name, err[-2000:])
  folder = xdg / 'nst_jax' / 'xla'
  assert folder.is_dir() and any(folder.iterdir())  # beside the weights' cache, XDG's
  first, second = got['first'][2], got['second'][2]
  assert first['compile_from_disk'] is False
  assert second['compile_from_disk'] is True
  assert 'Loaded the compiled step from the compilation cache' in got['second'][1]
  assert second['compile_s'] < first['compile_s']
  # Off: nothing written anywhere, and the run works.
  assert got['off'][2]['compile_from_disk'] is False
  assert not (off_xdg / 'nst_jax' / 'xla').exists()

  # Every entry damaged: JAX warns, compiles afresh, and the run goes on.
  for f in folder.rglob('*'):
    if f.is_file() and not f.name.startswith('.'):
      f.write_bytes(b'not a compiled program')
  (tmp_path / 'damaged').mkdir()
  got = _runs(tmp_path / 'damaged', caffe_npz, {'again': (xdg, [])})
  code, err, record = got['again']
  assert code == 0, err[-2000:]
  assert 'Error reading persistent compilation cache entry' in err
  assert record['compile_from_disk'] is False
  assert 'Traceback' not in err


@pytest.mark.slow
def test_two_processes_share_one_cache_folder(tmp_path, caffe_npz):
  cache = tmp_path / 'shared'
  procs = []
  for k in range(2):
    (tmp_path / str(k)).mkdir()
    cmd = [sys.executable, str(ROOT / 'main.py'), '-cp', CONTENT, '-sp', STYLE, '-w', '32',
           '-i', '2', '--output', 'out.png', '--compile_cache', str(cache),
           *small_runs.FLAGS]  # fmt: skip
    procs.append(
      subprocess.Popen([str(c) for c in cmd], cwd=tmp_path / str(k),
                       env=_env(caffe_npz, tmp_path / 'xdg'), stderr=subprocess.PIPE, text=True)
    )  # fmt: skip
  for k, proc in enumerate(procs):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert (tmp_path / str(k) / 'out.png').is_file()
  assert any(cache.iterdir())
  assert not (tmp_path / 'xdg' / 'nst_jax' / 'xla').exists()  # the folder given, not the default


def test_auto_keeps_a_folder_jax_was_given_and_off_turns_it_off():
  given = jax.config.jax_compilation_cache_dir  # the test session's (conftest.py)
  assert given
  assert compile_cache.use('auto') == Path(given)
  assert jax.config.jax_compilation_cache_dir == given  # untouched
  try:
    assert compile_cache.use('off') is None
    assert jax.config.jax_enable_compilation_cache is False
  finally:
    jax.config.update('jax_enable_compilation_cache', True)


def test_a_folder_that_cannot_be_made_turns_the_cache_off_with_a_warning(tmp_path, caplog):
  blocker = tmp_path / 'file'
  blocker.write_text('a file, not a folder')
  try:
    assert compile_cache.use(str(blocker / 'xla')) is None
    assert jax.config.jax_enable_compilation_cache is False
    # Trial 41: a file's own name gave a bare "[Errno 17] File exists".
    with errors.spoken_as(lambda m: m.replace('run.compile_cache', '--compile_cache')):
      assert compile_cache.use(str(blocker)) is None
  finally:
    jax.config.update('jax_enable_compilation_cache', True)
  assert 'compiling without the compilation cache:' in caplog.text
  assert (
    f'compiling without the compilation cache: {blocker} is not a folder; name a folder with '
    "--compile_cache (or 'off')" in caplog.text
  )
  assert blocker.read_text() == 'a file, not a folder'


def test_the_default_folder_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.default_dir() == tmp_path / 'nst_jax' / 'xla'
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert compile_cache.default_dir() == tmp_path / 'home' / '.cache' / 'nst_jax' / 'xla'
