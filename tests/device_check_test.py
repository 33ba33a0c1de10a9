"""bench/device_check.py: it refuses to measure a CPU as a device, and its search and report logic.

CI runs the script itself with --quick after the tests (.ci/run), which covers
the child processes end to end; these tests cover what that run cannot: the
refusal, the out-of-memory stop of the size search, and the row-by-row file.
"""

import importlib.util
import json
from pathlib import Path
import signal
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'bench' / 'device_check.py'


@pytest.fixture(scope='module')
def dc():
  spec = importlib.util.spec_from_file_location('device_check', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cpu_backend_without_quick_is_refused_in_one_line():
  r = subprocess.run(
    [sys.executable, str(SCRIPT)],
    capture_output=True,
    text=True,
    timeout=30,
    env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu', 'HOME': str(Path.home())},
  )
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith('device_check: JAX sees only the CPU')
  assert 'pass --quick' in lines[0]
  assert r.stdout == ''


@pytest.mark.parametrize(
  'returncode, stderr, status',
  [
    (0, '', 'ok'),
    (
      1,
      'jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while '
      'trying to allocate 81.2GiB',
      'oom',
    ),  # fmt: skip
    (-signal.SIGKILL, '', 'oom'),  # the kernel's OOM killer
    (-signal.SIGABRT, "terminate called after throwing an instance of 'std::bad_alloc'", 'oom'),
    (1, 'ValueError: something else', 'error'),
  ],
)
def test_classify(dc, returncode, stderr, status):
  assert dc.classify(returncode, stderr) == status


def test_search_stops_at_the_first_out_of_memory_row(dc):
  asked = []

  def measure(w, h):
    asked.append((w, h))
    return {'status': 'ok' if w <= 4096 else 'oom'}

  found = dc.search('lbfgs f32', dc.SEARCH_LADDER, measure)
  assert found == {
    'variant': 'lbfgs f32',
    'largest': 4096,
    'first_failed': 5792,
    'stopped': 'out of memory',
  }
  assert asked == [(2048, 2048), (2896, 2896), (4096, 4096), (5792, 5792)]


def test_search_reports_an_error_and_the_end_of_time(dc):
  rows = iter([{'status': 'ok'}, {'status': 'error', 'error': 'boom'}])
  found = dc.search('adam f32', (64, 96, 128), lambda w, h: next(rows))
  assert found == {'variant': 'adam f32', 'largest': 64, 'first_failed': None,
                   'stopped': 'error: boom'}  # fmt: skip
  found = dc.search('adam f32', (64, 96), lambda w, h: {'status': 'skipped'})
  assert found['largest'] is None and found['stopped'] == 'out of time'
  found = dc.search('adam f32', (64, 96), lambda w, h: {'status': 'ok'})
  assert found['largest'] == 96 and found['stopped'] == 'the ladder ended'


def test_report_writes_each_row_as_it_comes_and_skips_after_the_budget(dc, tmp_path, capsys):
  path = tmp_path / 'rows.jsonl'
  report = dc.Report(str(path), deadline=0.0)  # already past: no child is started
  report.write({'part': 'device', 'platform': 'cpu'})
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
    {'part': 'device', 'platform': 'cpu'}
  ]
  row = report.step('speed', 512, 256, 'lbfgs f32', 5)
  assert row == {'part': 'speed', 'size': '512x256', 'variant': 'lbfgs f32',
                 'status': 'skipped', 'error': 'out of time (--budget_s)'}  # fmt: skip
  assert json.loads(path.read_text().splitlines()[1]) == row
  assert '| 512x256 | lbfgs f32 | skipped: out of time (--budget_s) |' in capsys.readouterr().out


def test_unknown_variant_is_refused_before_anything_starts():
  r = subprocess.run(
    [sys.executable, str(SCRIPT), '--quick', '--variants', 'lbfgs f64'],
    capture_output=True,
    text=True,
    timeout=30,
  )
  assert r.returncode == 1
  assert r.stderr.strip() == (
    "device_check: unknown variant 'lbfgs f64'; choose from lbfgs f32, "
    'lbfgs f32 default-precision, lbfgs bf16, adam f32'
  )
