"""Format 1 checkpoints: one msgpack file (`flax.serialization`), as nst-jax wrote before format 2.

Runs no longer write them; they are read so that a run interrupted before
the change resumes, and its first save replaces the file by a format-2
directory (nst_jax.io.checkpoint_store). `write` reproduces the old writer
for the tests that check this and for `bench/bench_checkpoint.py --format 1`.
"""

import json
import os
from pathlib import Path

import flax.serialization

from nst_jax.io import atomic

FORMAT = 1


def read(path: str | os.PathLike) -> dict:
  """The file's payload, as flax.serialization restores it (unchecked).

  Raises:
    FileNotFoundError: no file.
    Exception: msgpack raises several types for a damaged file.
  """
  return flax.serialization.msgpack_restore(Path(path).read_bytes())


def write(path: str | os.PathLike, payload: dict) -> None:
  """Writes a checkpoint.snapshot payload as format 1 did (temporary file + rename)."""
  fields = {k: v for k, v in payload.items() if k != 'state'}
  data = flax.serialization.msgpack_serialize(
    {
      **fields,
      'format': FORMAT,
      'settings': json.dumps(payload['settings'], sort_keys=True),
      'extra': json.dumps(payload['extra']),
      'state': payload['state'],
    }
  )
  atomic.write(path, lambda tmp: Path(tmp).write_bytes(data))
