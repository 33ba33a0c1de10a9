"""Batch and multi-host runs that survive: resume after SIGKILL, agreed failures and signals.

Each case runs main.py in subprocesses with simulated CPU devices
(XLA_FLAGS), as one process of 8 devices or two processes of 4 on loopback.
"""

import json
import os
from pathlib import Path
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).with_name('distributed_cases.py')
sys.path.insert(0, str(ROOT / 'tests'))

import distributed_cases  # noqa: E402
import small_runs  # noqa: E402

from nst_jax.io import checkpoint as checkpoint_lib  # noqa: E402
from nst_jax.io import output_names  # noqa: E402

# Subprocess runs of the full network: deselect with -m "not slow".
pytestmark = pytest.mark.slow

ITERATIONS = 9


def _env(devices: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'NST_JAX_WEIGHTS')}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _jobs_file(tmp_path: Path, n: int = 6, missing: int | None = None) -> Path:
  """n sample jobs in two shapes (48 and 40 rows: two groups), as a CSV."""
  jobs = distributed_cases.sample_jobs(tmp_path, n, heights=(48, 40))
  lines = ['content,style,content_weight,style_weight']
  for i, job in enumerate(jobs):
    content = str(tmp_path / 'gone.png') if i == missing else job.content
    lines.append(f'{content},{job.style[0]},{job.content_weight},{job.style_weight}')
  path = tmp_path / 'jobs.csv'
  path.write_text('\n'.join(lines) + '\n')
  return path


def _commands(jobs, weights, out, processes: int, *extra):
  base = [sys.executable, str(ROOT / 'main.py'), '--jobs', str(jobs), '-i', str(ITERATIONS),
          '-w', '64', '--weights', str(weights), '--output', f'{out}/', '--norecord',
          '--checkpoint_every', '3', '--print_iter', '3', *small_runs.FLAGS, *extra]  # fmt: skip
  if processes == 1:
    return [base]
  port = _free_port()
  return [
    base
    + [
      '--distributed',
      '--coordinator_address',
      f'127.0.0.1:{port}',
      '--num_processes',
      str(processes),
      '--process_id',
      str(p),
    ]  # fmt: skip
    for p in range(processes)
  ]


def _start(commands, devices, cwd):
  return [
    subprocess.Popen(c, cwd=cwd, env=_env(devices), stderr=subprocess.PIPE, text=True)
    for c in commands
  ]


def _finish(procs, timeout=600) -> list[str]:
  logs = []
  for proc in procs:
    _, err = proc.communicate(timeout=timeout)
    logs.append(err)
  return logs


def _pngs(directory: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(directory.glob('*.png'))}


# Two processes only: one process of several devices goes through the same
# batch code, and its every write boundary is killed and resumed in-process
# by file_safety_test (test_a_batch_killed_before_any_write_...), in seconds.
@pytest.mark.parametrize('processes,devices', [(2, 4)])
def test_sigkill_mid_batch_then_resume_equals_an_uninterrupted_batch(
  tmp_path, caffe_npz, processes, devices
):
  jobs = _jobs_file(tmp_path)
  procs = _start(_commands(jobs, caffe_npz, tmp_path / 'ref', processes), devices, tmp_path)
  for proc, err in zip(procs, _finish(procs), strict=True):
    assert proc.returncode == 0, err[-3000:]
  reference = _pngs(tmp_path / 'ref')
  assert len(reference) == 6

  out = tmp_path / 'out'
  commands = _commands(jobs, caffe_npz, out, processes)
  procs = _start(commands, devices, tmp_path)
  # Kill once the first group (3 jobs of 48 rows) is written and the second
  # group has checkpointed at least once.
  deadline = time.monotonic() + 300
  while True:
    assert time.monotonic() < deadline, 'the batch never reached its second group'
    assert all(p.poll() is None for p in procs), 'the batch ended before it could be killed'
    done = sorted(out.glob('*.png')) if out.exists() else []
    second = [checkpoint_lib.path_for(out / f'c{i}_s{i}.png') for i in (1, 3, 5)]
    if len(done) == 3 and all(c.exists() for c in second):
      if all(checkpoint_lib.read(c)['iteration'] >= 3 for c in second):
        break
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  _finish(procs)
  finished = {p.name: p.stat().st_mtime_ns for p in out.glob('*.png')}
  assert sorted(finished) == ['c0_s0.png', 'c2_s2.png', 'c4_s4.png']

  procs = _start([c + ['--resume'] for c in commands], devices, tmp_path)
  logs = _finish(procs)
  for proc, err in zip(procs, logs, strict=True):
    assert proc.returncode == 0, err[-3000:]
  assert '6 jobs, ' in logs[0] and '3 finished earlier' in logs[0], logs[0][-2000:]
  # The finished jobs were not redone; every result equals the uninterrupted batch's.
  assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished
  assert _pngs(out) == reference
  assert not list(out.glob('*.ckpt'))  # the whole batch finished: checkpoints removed


def test_a_missing_file_ends_both_processes_with_one_line(tmp_path, caffe_npz):
  # Job 1 belongs to process 1 (round-robin), which finds its content missing.
  jobs = _jobs_file(tmp_path, missing=1)
  t0 = time.monotonic()
  procs = _start(_commands(jobs, caffe_npz, tmp_path / 'out', 2), 4, tmp_path)
  logs = _finish(procs, timeout=120)
  assert time.monotonic() - t0 < 20 + 15  # 20 s as asked, plus two JAX start-ups here
  for proc, err in zip(procs, logs, strict=True):
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'gone.png does not exist (job 2)' in errors[0], err[-3000:]
    assert 'Traceback' not in err
  assert not (tmp_path / 'out').exists()


def test_a_signal_to_one_process_stops_both_after_saving(tmp_path, caffe_npz):
  jobs = _jobs_file(tmp_path)
  out = tmp_path / 'out'
  procs = _start(_commands(jobs, caffe_npz, out, 2, '-i', '100000'), 4, tmp_path)
  # The first group holds jobs 0, 2 and 4, all process 0's; process 1 runs
  # its filler rows in the same step. The signal goes to process 1.
  ckpt = checkpoint_lib.path_for(out / 'c0_s0.png')
  deadline = time.monotonic() + 300
  while not (ckpt.exists() and checkpoint_lib.read(ckpt)['iteration'] >= 3):
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  logs = _finish(procs, timeout=120)
  stopped = set()
  for proc, err in zip(procs, logs, strict=True):
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert 'interrupted by signal 15 after iteration' in err and 'Traceback' not in err
    stopped.add(int(re.search(r'after iteration (\d+);', err).group(1)))
  assert len(stopped) == 1  # both at the same iteration
  # Every job of the running group has its checkpoint at that iteration.
  (at,) = stopped
  for i in (0, 2, 4):
    assert checkpoint_lib.read(checkpoint_lib.path_for(out / f'c{i}_s{i}.png'))['iteration'] == at


def test_an_image_process_0_cannot_write_stops_both_at_once_with_one_line(tmp_path, caffe_npz):
  # Job 0 (process 0's) writes into out0/, job 1 (process 1's) into out1/.
  # Once they run, out0 becomes a file: process 0's next intermediate image
  # cannot be written. Both processes stop at the next read of the losses,
  # save their checkpoints there, and exit 1 with one line naming the
  # failure, far inside JAX's heartbeat timeout (100 s). When the failure
  # was process 0's alone, process 1 aborted in its next all-gather (SIGABRT
  # with a stack dump: gloo found process 0 gone), or, where a dead peer's
  # connection does not close, waited for that timeout.
  (job0, job1) = distributed_cases.sample_jobs(tmp_path, 2)
  jobs = tmp_path / 'jobs.csv'
  jobs.write_text(
    'content,style,output\n'
    f'{job0.content},{job0.style[0]},{tmp_path / "out0" / "a.png"}\n'
    f'{job1.content},{job1.style[0]},{tmp_path / "out1" / "b.png"}\n'
  )
  ckpt_dir = tmp_path / 'ckpt'
  # 2000, not more: the output plan checks each planned intermediate name
  # before the run (50000 names at -i 100000 cost each process a second).
  extra = ('-i', '2000', '--save_iter', '2', '--checkpoint_dir', str(ckpt_dir))
  procs = _start(_commands(jobs, caffe_npz, tmp_path / 'out', 2, *extra), 4, tmp_path)
  outputs = (tmp_path / 'out0' / 'a.png', tmp_path / 'out1' / 'b.png')
  ckpts = [checkpoint_lib.path_for(o, ckpt_dir) for o in outputs]
  # Both past their 4th iteration: their intermediate images are there (a
  # file's existence, cheaper to poll every 50 ms than a checkpoint read back).
  marks = [output_names.intermediate_path(o, 4) for o in outputs]
  deadline = time.monotonic() + 300
  while not all(m.exists() for m in marks):
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.05)
  (tmp_path / 'out0').rename(tmp_path / 'out0.moved')
  (tmp_path / 'out0').write_text('not a directory')
  t0 = time.monotonic()
  logs = _finish(procs, timeout=120)
  assert time.monotonic() - t0 < 30
  stopped = set()
  for proc, err in zip(procs, logs, strict=True):
    assert proc.returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1 and 'Traceback' not in err, err[-3000:]
    assert f'could not write {tmp_path / "out0" / "a_0000"}' in lines[0], lines[0]
    # Each process names its own job's checkpoint, saved where both stopped.
    resume = f'continue with --resume and --checkpoint_dir {ckpt_dir}'  # its folder too (28)
    at = int(re.search(rf'holds iteration (\d+): {re.escape(resume)}$', lines[0]).group(1))
    stopped.add(at)
  assert lines[0].startswith('error: process 0: could not write')  # process 1's line
  (at,) = stopped
  assert [checkpoint_lib.read(c)['iteration'] for c in ckpts] == [at, at]


def test_two_processes_download_the_weights_once(tmp_path):
  import hashlib

  import download_test
  import weight_files

  src = tmp_path / 'src.h5'
  weight_files.write_keras_h5(src, weight_files.random_params(seed=3))
  payload = src.read_bytes()
  dest = tmp_path / 'shared' / 'vgg19.npz'
  port = _free_port()
  with download_test._serve(payload) as (url, handler):
    procs = [
      subprocess.Popen(
        [
          sys.executable,
          str(CASES),
          'fetch',
          str(dest),
          str(tmp_path),
          url,
          hashlib.md5(payload).hexdigest(),
          str(p),
          str(port),
        ],  # fmt: skip
        env=_env(2),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )  # fmt: skip
      for p in range(2)
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
  for proc, (_, err) in zip(procs, outs, strict=True):
    assert proc.returncode == 0, err[-3000:]
  hashes = {json.loads(out.strip().splitlines()[-1])['params_sha256'] for out, _ in outs}
  assert len(hashes) == 1
  assert len(handler.requests) == 1  # one download, by process 0
