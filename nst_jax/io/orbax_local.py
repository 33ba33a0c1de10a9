"""orbax-checkpoint, set up for checkpoints that one process writes and reads alone.

A multi-process nst-jax run (a batch over processes) gives each process its
own jobs, and each process saves and restores its own jobs' checkpoints at
its own moments. orbax-checkpoint is built for the opposite case, one state
sharded over every process and saved by all of them together. Left to its
defaults in a run where `jax.distributed` is initialised, it would
  * wait at barriers for every process on each save and restore, while the
    others are not saving: a hang;
  * treat numpy leaves as replicated and write them from process 0 only
    (`NumpyHandler`), so process 1's checkpoint would hold no arrays;
  * refuse a host-local `jax.Array` outright (`ArrayHandler`);
  * create directories asynchronously, signalling through the distributed
    key-value store under operation ids that each process counts on its own.
So every handler here takes `MultiprocessingOptions(primary_host=this process,
active_processes={this process})` (orbax skips a barrier over one process,
and this process writes the metadata and merges its OCDBT files),
directories are created synchronously (no signals), and numpy leaves go
through `_process_local_numpy_handler`, which writes on every process.

orbax is imported on the first checkpoint, so `import nst_jax` and
`main.py --help` do not pay for it.
"""

import functools
import hashlib
import json
import logging as std_logging
import os
from pathlib import Path
import sys
from typing import Any

from nst_jax import errors

# The orbax items of one step: the state's arrays (a pytree) and our metadata (JSON).
STATE_ITEM = 'state'
META_ITEM = 'meta'
META_FILE = 'metadata'  # orbax's JsonCheckpointHandler's default name, set explicitly
# The meta's key for the SHA-256 of the state's arrays, checked on load: a flipped bit in a data
# file resumed to another result, exit 0 (trial 34); orbax checks no content.
STATE_DIGEST = 'state_sha256'
# And of the rest of the meta (iteration, settings, history): a flipped digit resumed (trial 36).
META_DIGEST = 'meta_sha256'
# orbax's temporary name for a directory it is saving (AtomicRenameTemporaryPath):
# NAME + this, renamed to NAME when committed. tests/orbax_local_test.py checks
# it against orbax's own constant.
TMP_SUFFIX = '.orbax-checkpoint-tmp'


@functools.cache
def _ocp():
  """orbax.checkpoint, imported once; its INFO lines kept out of the run's log."""
  from absl import logging
  import orbax.checkpoint as ocp

  # orbax logs about 30 INFO lines per save (temporary directories, timings,
  # renames) through absl, which would bury the run's progress lines; its
  # warnings and errors still show.
  logging.get_absl_logger().addFilter(_QuietOrbax())
  sys.unraisablehook = functools.partial(_unraisable, sys.unraisablehook)
  return ocp


class _QuietOrbax(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def _unraisable(previous, unraisable) -> None:
  """Drops the echo of a damaged checkpoint's read; passes anything else on.

  When one of the tensorstore reads of a restore fails, orbax raises that
  error (a one-line refusal here) and closes its event loop; the reads still
  in flight then finish on tensorstore's threads, and each one's callback
  meets the closed loop: a RuntimeError Python can only print, as a
  traceback after the refusal.
  """
  e = unraisable.exc_value
  echo = isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'
  if not (echo and 'call_soon_threadsafe' in _frames(unraisable.exc_traceback)):
    previous(unraisable)


def _frames(tb) -> set[str]:
  names = set()
  while tb is not None:
    names.add(tb.tb_frame.f_code.co_name)
    tb = tb.tb_next
  return names


@functools.cache
def _process_local_numpy_handler():
  """A NumpyHandler that writes its arrays on every process, not only on process 0.

  orbax's NumpyHandler skips the write unless `process_index() == 0` (numpy
  leaves are replicated in the runs it is built for); here each process
  saves its own state. Everything else (the tensorstore spec, the OCDBT
  subdirectory of this process, metadata, reading) is orbax's. `deepcopy`
  is off: the snapshot is already the checkpoint's own copy.
  """
  import asyncio

  from orbax.checkpoint._src.serialization import ocdbt_utils
  from orbax.checkpoint._src.serialization import tensorstore_utils

  ocp = _ocp()
  base = ocp.type_handlers.NumpyHandler
  if not callable(getattr(base, '_background_serialize', None)):
    raise errors.NstError(
      f'orbax-checkpoint {ocp.__version__} changed how it writes numpy arrays; install the '
      'version requirements.txt names'
    )

  class ProcessLocalNumpyHandler(base):
    async def _background_serialize(self, values, infos, args=None):
      writes = []
      for value, info, arg in zip(values, infos, args, strict=True):
        await info.await_path_creation()
        spec = tensorstore_utils.build_array_write_spec(
          info=info,
          arg=arg,
          global_shape=value.shape,
          local_shape=value.shape,
          dtype=value.dtype,
          use_ocdbt=info.is_ocdbt_checkpoint,
          process_index=ocdbt_utils.get_process_index_for_subdir(
            use_ocdbt=info.is_ocdbt_checkpoint,
            override_ocdbt_process_id=self._override_ocdbt_process_id,
          ),
          metadata_key=self._metadata_key,
        )
        writes.append(self._open_and_write(value, spec.json, info.ts_context))
      await asyncio.gather(*writes)

  return ProcessLocalNumpyHandler(deepcopy_host_arrays=False)


def _state_handler(alone):
  """orbax's pytree handler with the process-local numpy handler."""
  import jax
  import numpy as np

  ocp = _ocp()
  registry = ocp.type_handlers.create_type_handler_registry(
    (np.ndarray, _process_local_numpy_handler()),
    # Never used (every leaf is a numpy array); without one, orbax warns on every save.
    (jax.Array, ocp.type_handlers.ArrayHandler(primary_host=alone.primary_host)),
  )
  return ocp.PyTreeCheckpointHandler(multiprocessing_options=alone, type_handler_registry=registry)


def _alone(process: int | None):
  import jax

  me = jax.process_index() if process is None else process
  return _ocp().options.MultiprocessingOptions(primary_host=me, active_processes={me})


def checkpointer(process: int | None = None):
  """An orbax Checkpointer of one step (state + meta) that involves `process` only.

  Args:
    process: this process's index (default jax.process_index()).
  """
  ocp = _ocp()
  alone = _alone(process)
  # Temporary directory + rename: the commit that nst-jax's litter removal knows.
  atomic = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.ATOMIC_RENAME)
  handler = ocp.CompositeCheckpointHandler(
    composite_options=ocp.CompositeOptions(
      multiprocessing_options=alone,
      atomicity_options=atomic,
      async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False),
    ),
    **{
      STATE_ITEM: _state_handler(alone),
      META_ITEM: ocp.JsonCheckpointHandler(META_FILE, multiprocessing_options=alone),
    },
  )
  return ocp.Checkpointer(handler, multiprocessing_options=alone, atomicity_options=atomic)


def save(directory: Path, *, state: dict, meta: dict, process: int | None = None) -> None:
  """Saves one step: orbax writes `directory`'s temporary name, then renames it.

  Args:
    directory: the step's directory (must not exist).
    state: nested dicts of numpy arrays.
    meta: JSON-serialisable metadata.
    process: as `checkpointer`.
  """
  ocp = _ocp()
  meta = json.loads(json.dumps({**meta, STATE_DIGEST: state_digest(state)}))  # as read back
  meta[META_DIGEST] = _meta_digest(meta)
  with checkpointer(process) as ckptr:
    ckptr.save(
      Path(directory).absolute(),  # orbax refuses relative paths
      ocp.args.Composite(
        **{STATE_ITEM: ocp.args.PyTreeSave(state), META_ITEM: ocp.args.JsonSave(meta)}
      ),
    )


def layout(directory: Path, process: int | None = None) -> Any:
  """The saved state's tree, its leaves with `shape` and `dtype` (no array is read)."""
  from etils import epath

  handler = _state_handler(_alone(process))
  try:
    return handler.metadata(epath.Path(Path(directory).absolute()) / STATE_ITEM).tree
  finally:
    handler.close()


def load(directory: Path, process: int | None = None) -> dict:
  """The saved state as nested dicts of numpy arrays, bit for bit.

  Raises:
    ValueError: its arrays are not those saved (their SHA-256 in the meta;
      steps saved before it was kept are not checked).
  """
  ocp = _ocp()
  with checkpointer(process) as ckptr:
    restored = ckptr.restore(
      Path(directory).absolute(), ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeRestore()})
    )
  state = restored[STATE_ITEM]
  meta = json.loads((Path(directory) / META_ITEM / META_FILE).read_text())
  saved = meta.get(STATE_DIGEST) if isinstance(meta, dict) else None
  if saved is not None and saved != state_digest(state):
    raise ValueError(f'its arrays are not those saved (their {STATE_DIGEST} differs)')
  return state


def _meta_digest(meta: dict) -> str:
  rest = {k: v for k, v in meta.items() if k != META_DIGEST}
  return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def meta_intact(meta: Any) -> bool:
  """Whether a step's meta is as saved (by its META_DIGEST; one saved before it had one is)."""
  if not isinstance(meta, dict) or META_DIGEST not in meta:
    return True
  return meta[META_DIGEST] == _meta_digest(meta)


def state_digest(state: dict) -> str:
  """SHA-256 of a state's arrays: each leaf's path, dtype, shape and bytes, in tree order."""
  import jax
  import numpy as np

  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    value = np.ascontiguousarray(leaf)  # no copy for the saved arrays, which are
    digest.update(f'{jax.tree_util.keystr(path)} {value.dtype} {value.shape};'.encode())
    digest.update(value.data if value.size else b'')
  return digest.hexdigest()
