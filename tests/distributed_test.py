"""Batch and spatial sharding on 8 simulated CPU devices, and two processes on loopback.

Each case runs in a subprocess (tests/distributed_cases.py), because the
device count is fixed when JAX's CPU backend starts.

Tolerances. A job in a batch, or an image split over devices, goes through
the same arithmetic as alone, except that XLA may order float32 sums
differently (other tiles, partial sums per device then an all-reduce): a
difference of a few ulps after the first evaluation. L-BFGS without line
search then amplifies any difference (with these random weights, a one-ulp
change of the start image moves the 8-iteration result by 1e-4 to 1e-1).
So the tolerance is measured, per job, in the same process: the sharded
result may differ from the single run by at most as much as the single run
moves when its start moves by one float32 ulp (`ulp_spread`), and after one
iteration, before any amplification, by at most 1e-6. Batched jobs came out
bitwise equal; spatially sharded images 3 to 600 times inside the bound
(README, Scaling out).
"""

import fcntl
import json
import os
from pathlib import Path
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import threading

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).with_name('distributed_cases.py')


def _env(devices: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'NST_JAX_WEIGHTS')}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _case(name: str, weights, workdir) -> dict:
  r = subprocess.run(
    [sys.executable, str(CASES), name, str(weights), str(workdir)],
    capture_output=True, text=True, timeout=600, env=_env(8),
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-4000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_eight_jobs_on_eight_devices_equal_eight_single_runs(tmp_path, caffe_npz):
  out = _case('jobs8', caffe_npz, tmp_path)
  assert out['devices'] == 8
  assert len(out['max_diffs']) == 8
  for diff, spread in zip(out['max_diffs'], out['ulp_spreads'], strict=True):
    assert diff <= spread, (out['max_diffs'], out['ulp_spreads'])
  assert out['written'] == out['outputs'] and len(out['written']) == 8
  (group,) = out['groups']
  # The compiled step is partitioned: its image argument is split over the
  # 'jobs' axis of all 8 devices, one [1, 48, 64, 3] row on each.
  assert group['devices'] == 8 and group['image_spec'] == ['jobs'], group
  assert group['output_image_spec'] == ['jobs']
  # Every target leaf split by job, every parameter replicated.
  assert group['targets_specs'] == ["['jobs']"] and group['params_specs'] == ['[]']
  assert group['rows'] == 8 and group['jobs_here'] == 8
  assert group['shard_devices'] == list(range(8))
  assert group['shard_shapes'] == [[1, 48, 64, 3]]


@pytest.mark.slow
def test_five_jobs_in_two_shapes_are_grouped_and_padded_not_dropped(tmp_path, caffe_npz):
  out = _case('jobs5', caffe_npz, tmp_path)
  assert len(out['max_diffs']) == 5
  for diff, spread in zip(out['max_diffs'], out['ulp_spreads'], strict=True):
    assert diff <= spread, (out['max_diffs'], out['ulp_spreads'])
  assert out['written'] == out['outputs'] and len(out['written']) == 5  # no filler written
  # From seeded noise (--init random --seed 3), as the single runs.
  # Heights alternate 48, 40: groups of 3 and 2 jobs, each padded to 8 rows.
  groups = sorted((g['height'], g['jobs_here'], g['rows'], g['devices']) for g in out['groups'])
  assert groups == [(40, 2, 8, 8), (48, 3, 8, 8)]
  assert sorted(tuple(s) for g in out['groups'] for s in g['shard_shapes']) == [
    (1, 40, 64, 3),
    (1, 48, 64, 3),
  ]


@pytest.mark.slow
# 45 rows over 5 of the 8 devices: 9 rows each, so after the poolings every
# device holds a fraction of a row and the halos cross several devices; an
# even split (48 over 8) goes through the same code and is left out for time.
@pytest.mark.parametrize('height,devices', [(45, 5)])
def test_spatial_sharding_equals_the_unsharded_run(tmp_path, caffe_npz, height, devices):
  out = _case(f'spatial{height}', caffe_npz, tmp_path)
  assert out['shape'] == [height, 64, 3]
  assert out['first_step_diff'] <= 1e-6
  # 1e-6: the rounding of the final deprocess and clip, below any 8-bit step
  # (both differences can saturate at the same clipped pixel).
  assert out['max_diff'] <= out['ulp_spread'] + 1e-6, out
  plain, sharded = out['plain'], out['sharded']
  assert plain['devices'] == 1
  # 45 rows split evenly over 5 of the 8 devices.
  assert sharded['devices'] == devices and sharded['image_spec'] == [None, 'space', None, None]
  assert sharded['output_image_spec'] == [None, 'space', None, None]
  assert sharded['params_specs'] == ['[]'] and sharded['targets_specs'] == ['[]']
  # Each device holds an eighth of the rows: less memory than one device
  # running the whole image (the ratio is reported in the README).
  assert sharded['memory_per_device_bytes'] < plain['memory_per_device_bytes']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _jobs_file(tmp_path, n: int) -> Path:
  sys.path.insert(0, str(ROOT / 'tests'))
  import distributed_cases

  jobs = distributed_cases.sample_jobs(tmp_path, n)
  jobs_file = tmp_path / 'jobs.csv'
  lines = ['content,style,content_weight,style_weight,output']
  for i, job in enumerate(jobs):
    lines.append(f'{job.content},{job.style[0]},{job.content_weight},{job.style_weight},'
                 f'out/r{i}.png')  # fmt: skip
  jobs_file.write_text('\n'.join(lines) + '\n')
  return jobs_file


def _worker(tmp_path, jobs_file, port: int, p: int, *flags, stderr=subprocess.PIPE):
  """Process p of a two-process run of `jobs_file`, on 4 simulated devices."""
  sys.path.insert(0, str(ROOT / 'tests'))
  import small_runs

  return subprocess.Popen(
    [
      sys.executable, str(ROOT / 'main.py'), '--jobs', str(jobs_file), '-w', '64',
      '--distributed', '--coordinator_address', f'127.0.0.1:{port}', '--num_processes', '2',
      '--process_id', str(p), *small_runs.FLAGS, *flags,
    ],
    stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path, env=_env(4),
  )  # fmt: skip


@pytest.mark.slow
def test_two_processes_share_a_batch_and_write_disjoint_outputs(tmp_path, caffe_npz):
  # Process 0's stderr is a terminal (a progress bar) and it serves the live
  # preview; process 1 has neither. With --tol 0 nothing else reads the
  # losses, so a collective that only process 0's hooks started would hang
  # both (issue 26: they hung until killed). Neither changes the results.
  jobs_file = _jobs_file(tmp_path, 6)
  port = _free_port()
  common = ('--weights', str(caffe_npz), '-i', '8', '--print_iter', '4', '--tol', '0')
  primary, secondary = pty.openpty()
  # 24 x 80 characters: a new pseudo-terminal is 0 wide, where tqdm draws nothing.
  fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 80, 0, 0))
  terminal: list[bytes] = []
  reader = threading.Thread(target=_drain, args=(primary, terminal), daemon=True)
  procs = [
    _worker(tmp_path, jobs_file, port, 0, *common, '--serve', '0', stderr=secondary),
    _worker(tmp_path, jobs_file, port, 1, *common),
  ]
  os.close(secondary)
  reader.start()
  try:
    outs = [proc.communicate(timeout=300) for proc in procs]
  finally:
    for proc in procs:
      proc.kill()
    reader.join(timeout=5)
    os.close(primary)
  tty = b''.join(terminal).decode('utf-8', 'replace').replace('\r\n', '\n')
  logs = [tty, outs[1][1]]
  for p, (proc, err) in enumerate(zip(procs, logs, strict=True)):
    assert proc.returncode == 0, err[-4000:]
    # Left to Python's exit, process 0 once died tearing down the coordination
    # service it hosts (gRPC 'Check failed: queue.Pop() == nullptr', SIGABRT)
    # after a successful run: every process shuts the runtime down together
    # before exit (distributed.finish), as the last thing it does.
    assert f'process {p}: shut down the distributed runtime' in err, err[-3000:]
    assert 'saved' not in err.split('shut down the distributed runtime', 1)[1]
  assert '8/8 [' in tty, tty[-3000:]  # a bar, not log lines, on the terminal
  assert 'live preview: http://127.0.0.1:' in tty
  # Each process saved exactly its own jobs (round-robin: 0, 2, 4 and 1, 3, 5).
  for p, err in enumerate(logs):
    saved = sorted(re.findall(rf'process {p}: saved (\S+\.png)\n', err))
    assert saved == sorted(str(tmp_path / 'out' / f'r{i}.png') for i in range(p, 6, 2)), err[-3000:]
    assert not re.search(rf'process {1 - p}:', err)  # logs name their own process
    assert 'process 0 of 2: 4 local of 8 devices' in err or p == 1
  written = sorted(p.name for p in (tmp_path / 'out').glob('r?.png'))
  assert written == [f'r{i}.png' for i in range(6)]
  # Each job's run record, written by its owner.
  assert sorted(p.name for p in (tmp_path / 'out').glob('*.json')) == [
    f'r{i}.json' for i in range(6)
  ]
  # And each equals the job run alone on the same kind of device (a process
  # of 4 simulated devices: their thread pools round sums differently from
  # one device's, which L-BFGS's active set can turn into visible changes):
  # the same 8-bit file, up to the ulp spread.
  r = subprocess.run(
    [sys.executable, str(CASES), 'alone6', str(caffe_npz), str(tmp_path)],
    capture_output=True, text=True, timeout=600, env=_env(4),
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-4000:]
  alone = json.loads(r.stdout.strip().splitlines()[-1])
  for i, (diff, spread) in enumerate(zip(alone['diffs'], alone['spreads'], strict=True)):
    assert diff <= 0.5 / 255 + 1e-6 + spread, (i, alone)


def _drain(fd: int, into: list) -> None:
  """Reads a pseudo-terminal until its last writer closes it (EIO on Linux)."""
  while True:
    try:
      data = os.read(fd, 4096)
    except OSError:
      return
    if not data:
      return
    into.append(data)


def test_plan_puts_each_process_jobs_on_its_own_devices():
  from nst_jax.engine import distributed

  shapes = [(48, 64), (40, 64), (48, 64), (48, 64), (48, 64), (40, 64), (48, 64)]
  # One process, 8 devices: each shape's jobs in order, padded to 8 rows.
  one = distributed.plan_groups(shapes, processes=1, local_devices=8)
  assert [(g.height, g.rows) for g in one] == [
    (48, (0, 2, 3, 4, 6, None, None, None)),
    (40, (1, 5, None, None, None, None, None, None)),
  ]
  # Two processes of 2 devices: jobs go round-robin (even to 0, odd to 1),
  # and each process's block of rows holds only its own jobs.
  two = distributed.plan_groups(shapes, processes=2, local_devices=2)
  assert [(g.height, g.rows) for g in two] == [
    (48, (0, 2, 4, 6, 3, None, None, None)),
    (40, (None, None, 1, 5)),
  ]
