"""pip packaging: the wheel installs `nst-jax`, `nst-jax-convert`, `python -m nst_jax`.

The wheel is built from a copy of the checkout (a build writes build/ and
*.egg-info beside its sources) and installed into a virtual environment that
sees the packages of the interpreter running the tests (no downloads; a .pth
file, because `venv --system-site-packages` would see the base interpreter's
packages instead, which inside a virtualenv lack the dependencies), then
used from a directory outside the checkout, as a user would.
"""

import os
from pathlib import Path
import re
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest
import small_runs

# Subprocess runs of the full network: deselect with -m "not slow".
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / 'content_images' / 'tubingen.jpg'
STYLE = ROOT / 'style_images' / 'starry_night.jpg'
SOURCES = ('nst_jax', 'presets', 'pyproject.toml', 'requirements.txt', 'README.md')


def _flag_names(helpxml: str) -> list[str]:
  return re.findall(r'<file>nst_jax\.cli\.flags</file>\s*<name>(\w+)</name>', helpxml)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(bin directory, environment, working directory) of a fresh install."""
  tmp = tmp_path_factory.mktemp('package')
  src = tmp / 'src'
  for name in SOURCES:
    if (ROOT / name).is_dir():
      shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      src.mkdir(exist_ok=True)
      shutil.copy(ROOT / name, src / name)
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
  subprocess.run(
    [*pip, 'wheel', '--no-deps', '--no-build-isolation', '-w', tmp / 'dist', src], check=True
  )
  (wheel,) = (tmp / 'dist').glob('nst_jax-*.whl')
  # No pip inside (ensurepip takes seconds): the outer pip installs into it (--python).
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', tmp / 'venv'], check=True)
  bin_dir = tmp / 'venv' / 'bin'
  inner = subprocess.run(
    [bin_dir / 'python', '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
    capture_output=True, text=True, check=True,
  ).stdout.strip()  # fmt: skip
  outer = dict.fromkeys(
    [*site.getsitepackages(), *(sysconfig.get_paths()[k] for k in ('purelib', 'platlib'))]
  )
  Path(inner, 'tests_outer_packages.pth').write_text('\n'.join(outer) + '\n')
  subprocess.run([*pip, '--python', bin_dir / 'python', 'install', '--no-deps', wheel], check=True)
  home = tmp / 'home'
  home.mkdir()
  env = {
    'PATH': f'{bin_dir}{os.pathsep}/usr/bin:/bin',
    'HOME': str(home),
    'JAX_PLATFORMS': 'cpu',
  }
  work = tmp / 'work'
  work.mkdir()
  return bin_dir, env, work


def _run(installed, *args):
  _, env, work = installed
  return subprocess.run(
    [str(a) for a in args], capture_output=True, text=True, env=env, cwd=work, timeout=300
  )


def test_console_script_and_module_are_the_main_py_program(installed):
  bin_dir, _, _ = installed
  checkout = subprocess.run(
    [sys.executable, ROOT / 'main.py', '--helpxml'], capture_output=True, text=True, timeout=120
  )
  expected = _flag_names(checkout.stdout)
  assert len(expected) > 30
  for command in ([bin_dir / 'nst-jax'], [bin_dir / 'python', '-m', 'nst_jax']):
    r = _run(installed, *command, '--helpxml')
    assert _flag_names(r.stdout) == expected, (command, r.stderr[-2000:])
  short = _run(installed, bin_dir / 'nst-jax', '--helpshort').stdout
  head, _, flag_list = short.partition('\nflags:\n')
  assert '-cp, --contentpath' in head and 'nst-jax' in head
  assert '--contentpath:' in flag_list and '--styleweight:' in flag_list


def test_installed_package_is_used_with_its_presets_and_cache(installed):
  bin_dir, env, _ = installed
  r = _run(
    installed, bin_dir / 'python', '-c',
    'import importlib.metadata as m, nst_jax, nst_jax.io.weights as w, '
    'nst_jax.io.weight_formats as f; print(nst_jax.__file__); print(w.DEFAULT_WEIGHTS_PATH); '
    'print(f.CONVERT_COMMAND); print(m.version("nst-jax"), nst_jax.__version__)',
  )  # fmt: skip
  module, default, command, versions = r.stdout.split('\n')[:4]
  # One version, written once (nst_jax.__version__), is the wheel's too.
  assert versions == '0.3.0 0.3.0'
  assert 'site-packages' in module and not module.startswith(str(ROOT)), module
  assert default == f'{env["HOME"]}/.cache/nst_jax/vgg19.npz'
  assert command == 'nst-jax-convert'
  r = _run(installed, bin_dir / 'nst-jax', '--preset', 'paper', '-i', '7', '--helpxml')
  current = dict(re.findall(r'<name>(\w+)</name>.*?<current>([^<]*)</current>', r.stdout, re.S))
  assert (current['pooling'], current['init'], current['iterations']) == ('avg', 'random', '7')
  assert current['styleweight'] == '0.006358'


def test_installed_commands_run(installed, caffe_npz):
  bin_dir, _, work = installed
  # The shallow layers: what is tested is the installed command, not the network.
  r = _run(
    installed, bin_dir / 'nst-jax', '-cp', CONTENT, '-sp', STYLE, '-i', 2, '-w', 32,
    '--weights', caffe_npz, '--output', 'out.png', '--norecord', *small_runs.FLAGS,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  assert (work / 'out.png').is_file()
  r = _run(installed, bin_dir / 'nst-jax-convert', '--input', 'missing.h5')
  assert r.returncode == 1
  assert r.stderr.strip().count('\n') == 0 and 'missing.h5' in r.stderr, r.stderr


def test_the_library_never_reads_flags():
  for path in sorted((ROOT / 'nst_jax').rglob('*.py')):
    if path.parent.name != 'cli' and path.name != '__main__.py':
      source = path.read_text()
      assert 'absl import flags' not in source, path.name
      assert not re.search(r'\bFLAGS\b', source), path.name  # XLA_FLAGS is not absl's
      assert 'nst_jax import cli' not in source, path.name
  r = subprocess.run(
    [sys.executable, '-c',
     'import sys, nst_jax, nst_jax.runs.video, nst_jax.engine.preview, nst_jax.io.record; '
     'print(sorted(m for m in sys.modules if m.split(".")[:2] == ["nst_jax", "cli"]))'],
    capture_output=True, text=True, cwd=ROOT, timeout=120,
  )  # fmt: skip
  assert r.stdout.strip() == '[]', r.stdout + r.stderr
