"""The README is a short front door whose example runs; docs/ holds the rest and stays current."""

import os
from pathlib import Path
import re
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()
DOCS = sorted((ROOT / 'docs').glob('*.md'))


def _run_docs_code(script, caffe_npz) -> subprocess.CompletedProcess:
  """Runs a script of the docs' code as a user of the checkout would, deprecations as errors."""
  return subprocess.run(
    [sys.executable, '-W', 'error::DeprecationWarning', str(script)],
    cwd=ROOT,
    env={
      'NST_JAX_WEIGHTS': str(caffe_npz),
      'JAX_PLATFORMS': 'cpu',
      'PATH': '/usr/bin:/bin',
      'PYTHONPATH': str(ROOT),  # as when run from the checkout
      # The tests' compilation cache (conftest.py): the docs' code compiles
      # what it would anyway, a second session loads it.
      **{
        k: v
        for k, v in os.environ.items()
        if k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT'))
      },
    },
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_readme_api_example_runs(tmp_path, caffe_npz):
  code = re.search(r'```python\n(.*?)```', README.split('## Python API', 1)[1], re.S).group(1)
  script = tmp_path / 'example.py'
  script.write_text(code)
  r = _run_docs_code(script, caffe_npz)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  assert lines[0] == '(6, 8, 512)'
  shape, drifts = re.fullmatch(r'(\(2,\)) \[(.*)\]', lines[1]).groups()
  # The custom term holds each image's mean colour at its content's. The run
  # starts at the content (drift exactly 0), so a drift above 0 says the
  # example iterated; with the term's weight 0 the drift reaches 0.85 and
  # 0.24 (squared network units, the Caffe convention's pixels), with it 0.005
  # and 0.03 (the conftest's random weights): 0.1 tells the two apart.
  assert all(0 < float(d) < 0.1 for d in drifts.split(',')), drifts
  out = ROOT / 'output' / 'api_example.png'
  assert out.exists()
  out.unlink()


def test_the_readme_is_short_and_links_every_docs_page():
  assert len(README) < 12_000
  linked = set(re.findall(r'\]\(docs/([\w-]+\.md)', README))
  assert linked == {p.name for p in DOCS}, 'every docs/ page is linked from the README'


def test_every_docs_page_starts_with_its_question_and_its_links_resolve():
  for page in DOCS:
    text = page.read_text()
    first = text.splitlines()[0]
    assert first.startswith('# ') and first.endswith('?'), f'{page.name}: {first}'
    for target in re.findall(r'\]\(([^)#:]+\.(?:md|png|jpg|py|flags))(?:#[\w-]+)?\)', text):
      assert (page.parent / target).exists(), f'{page.name} links to missing {target}'
  for target in re.findall(r'\]\(([^)#:]+)(?:#[\w-]+)?\)', README):
    assert (ROOT / target).exists(), f'README links to missing {target}'


def test_the_command_line_reference_is_current():
  """docs/cli.md is what docs/make_cli_reference.py writes from the flags' own help."""
  r = subprocess.run(
    [sys.executable, '-c', 'from nst_jax.cli import app; print(app.reference_markdown(), end="")'],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
    env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(ROOT)},
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.count('\n| `-') + r.stdout.count('\n| `--') > 50
  assert (ROOT / 'docs' / 'cli.md').read_text() == r.stdout, (
    'docs/cli.md is out of date: run python docs/make_cli_reference.py'
  )


# The oldest Python each jaxlib minor release has wheels for. Sources: JAX's
# CHANGELOG (jax 0.7.0 dropped Python 3.10) and pip's resolution on Python
# 3.10, 3.11 and 3.12 recorded in issue 26 (jaxlib 0.10 needs 3.11, 0.11 needs
# 3.12). Extend it when requirements.txt admits a newer jaxlib.
JAXLIB_MIN_PYTHON = {(0, 10): (3, 11), (0, 11): (3, 12)}
# Ubuntu 22.04's python3, the Python of the runbook's TPU image.
TPU_IMAGE_PYTHON = {'tpu-ubuntu2204-base': (3, 10)}


def _admitted_jaxlibs() -> list[tuple[int, int]]:
  """The jaxlib minor releases requirements.txt admits, e.g. [(0, 10), (0, 11)]."""
  text = (ROOT / 'requirements.txt').read_text()
  low, high = re.search(r'^jaxlib>=(\d+\.\d+)[.\d]*,<(\d+\.\d+)', text, re.M).groups()
  lo, hi = (tuple(int(x) for x in v.split('.')) for v in (low, high))
  admitted = [v for v in JAXLIB_MIN_PYTHON if lo <= v < hi]
  assert lo in JAXLIB_MIN_PYTHON, f'jaxlib {low}: add its oldest Python to JAXLIB_MIN_PYTHON'
  return admitted


def test_the_tpu_runbook_installs_a_python_the_pinned_jaxlib_supports():
  runbook = (ROOT / 'docs' / 'scaling.md').read_text().split('### A TPU VM slice', 1)[1]
  commands = '\n'.join(re.findall(r'```sh\n(.*?)```', runbook, re.S))
  (image,) = set(re.findall(r'--version=(\S+)', commands))
  (python,) = set(re.findall(r'uv venv --python (\d+\.\d+)', commands))
  version = tuple(int(x) for x in python.split('.'))
  needed = [JAXLIB_MIN_PYTHON[v] for v in _admitted_jaxlibs()]
  # The runbook's Python installs the oldest admitted jaxlib (pip then picks
  # the newest its Python allows), where the image's own Python cannot.
  assert version >= min(needed), (python, needed)
  assert TPU_IMAGE_PYTHON[image] < min(needed)  # which is why the runbook installs one
  requires = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (ROOT / 'pyproject.toml').read_text())
  assert version >= tuple(int(x) for x in requires.groups())
  # The image has python3 but no `python` or `pip`: every command runs the
  # environment's interpreter by its path, or uv.
  assert not re.search(r'(?:^|[\s;&(])(?<!uv )(?:python|pip)\s', commands), commands
  assert '--python ~/nst-env/bin/python' in commands and '~/nst-env/bin/python main.py' in commands


def test_the_gpu_install_names_both_cuda_plugins():
  for text in (README, (ROOT / 'requirements.txt').read_text()):
    assert 'jax[cuda13]' in text and 'jax[cuda12]' in text


@pytest.mark.slow
def test_every_recipe_of_the_api_guide_runs(tmp_path, lsuv_npz):
  """docs/api.md's python blocks, in order, as one script: each block asserts what it shows.

  On weights at the real network's activation scale, where the guide's
  claims about the optimiser must hold (with He weights the sweep's order
  held after five iterations, on these it needs ten).
  """
  text = (ROOT / 'docs' / 'api.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', text.split('## Recipes', 1)[1], re.S)
  assert len(blocks) >= 9
  script = tmp_path / 'recipes.py'
  script.write_text('\n'.join(blocks) + "\nprint('recipes ran')\n")
  r = _run_docs_code(script, lsuv_npz)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().splitlines()[-1] == 'recipes ran'


def test_api_md_names_stylizes_parameters_as_the_function_does():
  """Trial 35 Z7: api.md said `style_or_styles`; passing that name was refused."""
  import inspect
  import re

  import nst_jax

  text = (ROOT / 'docs' / 'api.md').read_text()
  documented = re.search(r'`nst_jax\.stylize\((.*?)\)`', text, re.DOTALL)[1]
  names = [p.split('=')[0].strip() for p in documented.split(',') if p.strip() not in ('*', '')]
  assert names == list(inspect.signature(nst_jax.stylize).parameters)
