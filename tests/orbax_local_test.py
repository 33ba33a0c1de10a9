"""orbax-checkpoint set up for process-local checkpoints (nst_jax.io.orbax_local).

The two-process runs of tests/batch_test.py and tests/distributed_test.py
save and resume real checkpoints on process 1; here, in one process, orbax is
told that it is process 1 of a run, which is what its numpy handler checks.
"""

import shutil

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


def test_a_flipped_bit_in_the_saved_arrays_is_caught_on_load(tmp_path):
  """Trial 34 Y4: a bit flipped in a step's data file resumed to another result, exit 0."""
  rng = np.random.default_rng(0)
  state = {'image': rng.normal(size=(1, 48, 64, 3)).astype(np.float32),
           'opt_state': {'s': rng.normal(size=(5, 9216)).astype(np.float32)}}  # fmt: skip
  orbax_local.save(tmp_path / 'good', state=state, meta={'iteration': 3})
  loaded = orbax_local.load(tmp_path / 'good')
  np.testing.assert_array_equal(loaded['opt_state']['s'], state['opt_state']['s'])
  data = max((tmp_path / 'good').rglob('d/*'), key=lambda p: p.stat().st_size)
  size = data.stat().st_size
  assert size > 100_000  # the arrays, stored as they are
  silent = 0
  for offset in (100, 3000, 20000, size // 2, size - 200):
    step = tmp_path / f'flipped{offset}'
    shutil.copytree(tmp_path / 'good', step)
    damaged = step / data.relative_to(tmp_path / 'good')
    raw = bytearray(damaged.read_bytes())
    raw[offset] ^= 0x10
    damaged.write_bytes(bytes(raw))
    try:
      again = orbax_local.load(step)
    except Exception as e:  # noqa: BLE001 (orbax's own error where its framing broke, else ours)
      silent += str(e).startswith('its arrays are not those saved')
    else:  # a byte outside the arrays: what is read is what was saved
      np.testing.assert_array_equal(again['image'], state['image'])
      np.testing.assert_array_equal(again['opt_state']['s'], state['opt_state']['s'])
  assert silent >= 3  # most flips leave the bytes readable: only the digest tells
