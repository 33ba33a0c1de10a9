"""The README's Python API example runs as written (with generated weights)."""

from pathlib import Path
import re
import subprocess
import sys

ROOT = Path(__file__).resolve().parent.parent


def test_readme_api_example_runs(tmp_path, caffe_npz):
  readme = (ROOT / 'README.md').read_text()
  section = readme.split('## Python API', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  script = tmp_path / 'example.py'
  script.write_text(code)
  r = subprocess.run(
    [sys.executable, str(script)],
    cwd=ROOT,
    env={
      'NST_JAX_WEIGHTS': str(caffe_npz),
      'JAX_PLATFORMS': 'cpu',
      'PATH': '/usr/bin:/bin',
      'PYTHONPATH': str(ROOT),  # as when run from the checkout
    },
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  assert lines[0] == '(6, 8, 512)'
  total, content, style = map(float, lines[1].split())
  assert total > 0 and content >= 0 and style > 0
  out = ROOT / 'output' / 'api_example.png'
  assert out.exists()
  out.unlink()


def test_readme_flag_table_lists_every_flag():
  """Every flag main.py defines has a row in the README's flag table, with its default."""
  r = subprocess.run(
    [sys.executable, str(ROOT / 'main.py'), '--helpxml'],
    capture_output=True,
    text=True,
    timeout=120,
    env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(ROOT)},
  )
  names = re.findall(r'<file>nst_jax\.cli</file>\s*<name>(\w+)</name>', r.stdout)
  assert len(names) > 30, r.stdout[:500]  # the parse found main.py's flags
  readme = (ROOT / 'README.md').read_text()
  table = readme.split('## Command line', 1)[1].split('\n## ', 1)[0]
  rows = [line for line in table.splitlines() if line.startswith('| `')]
  missing = [n for n in names if not any(f'`--{n}`' in row for row in rows)]
  assert not missing, f'flags missing from the README table: {missing}'
