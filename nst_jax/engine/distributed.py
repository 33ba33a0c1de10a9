"""Several processes as one run: start-up, job ownership, and failures that reach everyone.

All of it is JAX's own machinery: `jax.distributed`, a `Mesh` over every
device of every process, and small all-gathers (`multihost_utils`) for the
host-side decisions every process must take alike.

  * Ownership: job i belongs to process i mod P, which alone reads its
    files, computes its targets and writes its results (`owner`).
  * Planning: jobs of one output shape and one resume point form a group,
    laid out so each process's rows sit on its own devices (`plan_groups`).
  * Agreement: every step that can fail on one process ends in `together`,
    an all-gather of an ok/error flag with the message, so a failure on any
    process ends every process within seconds with the same one-line error
    (instead of the others waiting at the next collective until a timeout).
    Signals are agreed inside the loop, in the all-gather that brings the
    losses (nst_jax.engine.loop, `Layout.sync`).
  * Weights: process 0 fetches them first; the others wait at a barrier and
    then load (and so verify) them, downloading only if their disk has no copy.
  * Ending: a successful run shuts JAX's distributed runtime down on every
    process together (`finish`); a failure, once agreed, leaves at once
    (`leave`).
"""

from collections.abc import Iterator, Sequence
import contextlib
import os
import sys
from typing import NamedTuple, NoReturn

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from nst_jax import errors
from nst_jax.engine import sharding as sharding_lib
from nst_jax.io import weights as weights_lib

# Bytes of an error message carried by an agreement (longer ones are cut).
_MESSAGE_BYTES = 1000


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """`jax.distributed.initialize`, once, before any computation.

  With no arguments JAX detects the cluster (Cloud TPU VMs, SLURM, ...).
  On CPU, processes exchange data through gloo collectives.
  """
  # Collectives between CPU devices of different processes go through gloo
  # (the default has none); GPU and TPU devices use their own.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {
    k: v
    for k, v in dict(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    ).items()
    if v is not None
  }
  jax.distributed.initialize(**kwargs)
  logging.info(
    'process %d of %d: %d local of %d devices; %s',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    platform_line(),
  )


def platform_line() -> str:
  """Which devices this process computes on: 'platform gpu: 1 device (NVIDIA H100 80GB HBM3)'.

  The first line of every run, so a silent fall-back to CPU (a missing or
  mismatched CUDA or TPU plugin) shows at once.
  """
  devices = jax.local_devices()
  kinds = sorted({d.device_kind for d in devices})
  count = f'{len(devices)} device{"s" if len(devices) != 1 else ""}'
  return f'platform {devices[0].platform}: {count} ({", ".join(kinds)})'


def owner(index: int) -> int:
  """The process that reads, computes and writes job `index`: round-robin."""
  return index % jax.process_count()


def mine(index: int) -> bool:
  return owner(index) == jax.process_index()


def _encode(message: str) -> np.ndarray:
  data = message.encode('utf-8')[:_MESSAGE_BYTES]
  out = np.zeros(_MESSAGE_BYTES + 2, np.int32)
  out[0] = 1
  out[1] = len(data)
  out[2 : 2 + len(data)] = np.frombuffer(data, np.uint8)
  return out


def agree(error: BaseException | None, *, code: int = 0) -> int:
  """Shares whether this process failed; raises the first failure on every process.

  Args:
    error: this process's failure, or None.
    code: a number every process should learn the largest of (a signal).

  Returns:
    The largest `code` over the processes (when none failed).

  Raises:
    NstError: some process failed; the message names it ('process K: ...').
      The failing process re-raises its own error (keeping its traceback if
      it is a bug).
  """
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return code
  local = _encode(str(error) or type(error).__name__) if error is not None else None
  if local is None:
    local = np.zeros(_MESSAGE_BYTES + 2, np.int32)
  local = np.concatenate([local, np.asarray([code], np.int32)])
  rows = np.asarray(multihost_utils.process_allgather(local))
  for p, row in enumerate(rows):
    if row[0]:
      if error is not None:
        raise error
      text = bytes(row[2 : 2 + row[1]].astype(np.uint8)).decode('utf-8', 'replace')
      raise errors.NstError(f'process {p}: {text}')
  return int(rows[:, -1].max())


def leave(code: int) -> NoReturn:
  """Ends the process with `code`; in a multi-process run, without the exit barrier.

  Call it once every process knows the outcome (after `agree`). A normal
  exit runs JAX's `distributed.shutdown`, a barrier of all processes (up to
  300 s): in one of eight runs of the two-process missing-file test on
  2026-12-03 (a fresh virtualenv, two test workers), process 0 printed the
  agreed error and then did not exit within 120 s. Nothing is left to share
  at this point, so each process flushes its output and exits at once.
  """
  if jax.process_count() > 1:
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def finish() -> None:
  """Ends a successful multi-process run: every process shuts the distributed runtime down.

  For code that owns the process (the command line), after its last
  collective. Process 0 hosts JAX's coordination service; left to Python's
  exit, it tore the service down while another process was still leaving
  (once in a two-process batch test: `F... server.cc:584] Check failed:
  queue.Pop() == nullptr`, process 0 killed by SIGABRT after a successful
  run), as marin-community/marin#8276 saw. So every process first agrees
  that all work is done, then calls `jax.distributed.shutdown()`, whose
  client shutdown is a barrier of all processes; only after it does process
  0 stop the service (JAX's order: client, then service), so no process is
  still connected when it goes. JAX's own exit hook calls the same function
  again, which does nothing once the runtime is down.
  """
  if jax.process_count() == 1 or not jax.distributed.is_initialized():
    return
  index = jax.process_index()
  agree(None)
  jax.distributed.shutdown()
  logging.info('process %d: shut down the distributed runtime', index)


@contextlib.contextmanager
def together() -> Iterator[None]:
  """Runs the block; afterwards every process learns whether any failed (see `agree`)."""
  failure = None
  try:
    yield
  except Exception as e:  # noqa: BLE001 (shared, then re-raised by agree)
    failure = e
  agree(failure)


def gather_rows(local: dict[int, np.ndarray], n: int, width: int) -> np.ndarray:
  """Every process's per-job int rows (zeros elsewhere) -> the full [n, width] table."""
  table = np.zeros((n, width), np.int64)
  for i, row in local.items():
    table[i] = row
  if jax.process_count() > 1:
    table = np.asarray(multihost_utils.process_allgather(table)).sum(axis=0)
  return table


def fetch_weights(path, urls=()) -> weights_lib.Weights:
  """Loads the weights; with several processes, process 0 fetches them first.

  The others wait at a barrier (with the outcome agreed, so a failed
  download ends every process), then load the file, which checks its hash;
  a process whose disk has no copy (hosts without a shared directory)
  downloads its own. `path` is the config's model.weights (messages say so).
  """
  if jax.process_count() == 1:
    return weights_lib.get_weights(path, urls=urls, given_as='model.weights')
  loaded = None
  with together():
    if jax.process_index() == 0:
      loaded = weights_lib.get_weights(path, urls=urls, given_as='model.weights')
  with together():
    if loaded is None:
      loaded = weights_lib.get_weights(path, urls=urls, given_as='model.weights')
  return loaded


class Group(NamedTuple):
  """Jobs of one output shape (and resume point), laid out in rows of one sharded batch.

  Attributes:
    height, width: the output shape.
    rows: job index (into the full job list) of each row; None for a filler.
      Process p's jobs fill rows [p B, (p + 1) B), B = len(rows) / processes,
      which are the rows on p's devices.
    resume: the (scale, iteration) its jobs continue from (None: from the start).
  """

  height: int
  width: int
  rows: tuple[int | None, ...]
  resume: tuple[int, int] | None = None


def plan_groups(
  shapes: Sequence[tuple[int, int]],
  *,
  processes: int,
  local_devices: int,
  resume: Sequence[tuple[int, int] | None] | None = None,
  skip: Sequence[bool] | None = None,
) -> list[Group]:
  """Groups jobs by shape and resume point and lays each group out over the processes.

  Each process's block holds its own jobs (`owner`), padded with fillers to
  B rows, B the same for every process and a multiple of its device count.
  One process: B = N rounded up to the device count.

  Args:
    shapes: (height, width) of every job's output.
    processes: the process count.
    local_devices: devices per process.
    resume: every job's resume point (scale, iteration) or None.
    skip: jobs left out (finished ones, when resuming).
  """
  by_key: dict[tuple, list[int]] = {}
  for i, shape in enumerate(shapes):
    if skip is not None and skip[i]:
      continue
    point = None if resume is None else resume[i]
    by_key.setdefault((shape, point), []).append(i)
  groups = []
  for ((height, width), point), indices in by_key.items():
    per_process = [[i for i in indices if i % processes == p] for p in range(processes)]
    block = sharding_lib.padded_size(max(len(j) for j in per_process), local_devices)
    rows: list[int | None] = []
    for jobs in per_process:
      rows += jobs + [None] * (block - len(jobs))
    groups.append(Group(height, width, tuple(rows), point))
  return groups
