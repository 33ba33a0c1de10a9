"""Tests for nst_jax.xla_flags: the CPU scheduler flag set before JAX starts, a user's kept."""

import os
from pathlib import Path
import subprocess
import sys

from nst_jax import xla_flags

FLAG = xla_flags.FLAG
MODULE = Path(xla_flags.__file__)


def _xla_flags_after_import(xla_flags: str | None) -> str:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  r = subprocess.run(
    # The module alone (runpy), not the package: the same code, without importing JAX.
    [sys.executable, '-c', f'import os, runpy; runpy.run_path({str(MODULE)!r}); '
     'print(os.environ["XLA_FLAGS"])'],
    capture_output=True, text=True, env=env, timeout=120, check=True,
  )  # fmt: skip
  return r.stdout.strip()


def test_the_flag_is_added_and_a_users_choice_kept():
  assert FLAG == '--xla_cpu_enable_concurrency_optimized_scheduler'
  assert _xla_flags_after_import(None) == f'{FLAG}=false'
  assert _xla_flags_after_import('--xla_dump_to=/tmp/x') == f'--xla_dump_to=/tmp/x {FLAG}=false'
  assert _xla_flags_after_import(f'{FLAG}=true') == f'{FLAG}=true'
