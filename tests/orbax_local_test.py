"""orbax-checkpoint set up for process-local checkpoints (nst_jax.io.orbax_local).

The two-process runs of tests/batch_test.py and tests/distributed_test.py
save and resume real checkpoints on process 1; here, in one process, orbax is
told that it is process 1 of a run, which is what its numpy handler checks.
"""

import numpy as np
import pytest

from nst_jax.io import orbax_local


def _state():
  return {'image': np.arange(24, dtype=np.float32).reshape(2, 4, 3), 'count': np.array(7, np.int32)}


def test_the_temporary_name_is_orbaxs():
  from orbax.checkpoint._src.path import atomicity

  assert orbax_local.TMP_SUFFIX == atomicity.TMP_DIR_SUFFIX


def test_a_process_other_than_0_writes_and_reads_its_own_arrays(tmp_path, monkeypatch):
  from orbax.checkpoint._src.multihost import multihost

  orbax_local._ocp()  # imported before patching
  monkeypatch.setattr(multihost, 'process_index', lambda: 1)
  orbax_local.save(tmp_path / '0', state=_state(), meta={'format': 2}, process=1)
  # This process's OCDBT files, merged by this process (its own primary host).
  assert (tmp_path / '0' / 'state' / 'ocdbt.process_1').is_dir()
  restored = orbax_local.load(tmp_path / '0', process=1)
  for name, want in _state().items():
    assert restored[name].dtype == want.dtype and restored[name].tobytes() == want.tobytes()


def test_orbaxs_own_numpy_handler_writes_nothing_on_process_1(tmp_path, monkeypatch):
  """Why nst-jax has its own: orbax's treats numpy leaves as replicated (written by process 0)."""
  import orbax.checkpoint as ocp
  from orbax.checkpoint._src.multihost import multihost

  orbax_local._ocp()
  monkeypatch.setattr(multihost, 'process_index', lambda: 1)
  monkeypatch.setattr(
    orbax_local, '_process_local_numpy_handler', lambda: ocp.type_handlers.NumpyHandler()
  )
  orbax_local.save(tmp_path / '0', state=_state(), meta={'format': 2}, process=1)
  with pytest.raises(Exception, match='does not exist'):
    orbax_local.load(tmp_path / '0', process=1)


def test_the_echo_of_a_failed_read_is_not_printed():
  """A closed event loop met by reads still in flight after one failed (orbax_local._unraisable)."""
  import types

  def call_soon_threadsafe():
    raise RuntimeError('Event loop is closed')

  def report(error):
    try:
      raise error
    except Exception as e:  # noqa: BLE001
      return types.SimpleNamespace(exc_value=e, exc_traceback=e.__traceback__)

  try:
    call_soon_threadsafe()
  except RuntimeError as e:
    echo = types.SimpleNamespace(exc_value=e, exc_traceback=e.__traceback__)
  printed = []
  other = report(RuntimeError('Event loop is closed'))  # not from a callback: printed
  orbax_local._unraisable(printed.append, echo)
  orbax_local._unraisable(printed.append, other)
  assert printed == [other]
