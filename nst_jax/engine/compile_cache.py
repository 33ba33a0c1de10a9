"""JAX's persistent compilation cache: where it is, how big, and whether it served a compile.

Every run compiles its step (about 3 s at 256 px, 7 s at 1024 px on a 2-core
CPU) and a few small programs. An artist's loop is "change -sw, run again":
with the compiled programs kept on disk, the second run loads them instead
(0.9 s for the whole compile at 256 px). JAX keeps the cache itself
(`jax_compilation_cache_dir`); this module points it at the user's cache
folder, bounds it, and counts its hits:

  * Where (`run.compile_cache`): 'auto' is `$XDG_CACHE_HOME/nst_jax/xla`
    (`~/.cache/nst_jax/xla`, beside the downloaded weights), unless JAX's own
    setting (`JAX_COMPILATION_CACHE_DIR`) names a folder already, which is
    kept; 'off' turns the cache off; anything else is the folder.
  * Bounded: at most MAX_BYTES; JAX evicts the least recently used entries
    (its LRU cache, which takes a file lock, so processes may share it).
  * Entries are keyed by the program, the compile options, the backend and
    the jax and jaxlib versions, so a foreign entry is never matched; a
    damaged one is skipped by JAX with a warning and compiled afresh.
  * `hits()` counts the compiles the cache served (jax.monitoring's
    '/jax/compilation_cache/cache_hits'), so a run can say so.

JAX reads its cache settings at its first compile: `use` must run before it
(the runner calls it first thing).
"""

import os
from pathlib import Path
import threading

from absl import logging
import jax

from nst_jax import errors
from nst_jax.io import weights as weights_lib

# A 1024 px step's entry is about 10 MB, a 64 px one 3 MB: room for a few
# hundred, evicted oldest first.
MAX_BYTES = 2 * 1024**3
SETTINGS = ('auto', 'off')
_HIT_EVENT = '/jax/compilation_cache/cache_hits'
_hits = 0
_listening = threading.Lock()
_listener_installed = False


def default_dir() -> Path:
  """The 'auto' folder: nst_jax's user cache folder (XDG), subfolder xla."""
  return weights_lib.user_cache_dir() / 'xla'


def use(setting: str) -> Path | None:
  """Points JAX's persistent compilation cache as `setting` says; the folder, or None when off.

  Args:
    setting: 'auto', 'off', or a folder (created if missing).

  A folder that cannot be created turns the cache off with a warning: a run
  never fails for want of a cache.
  """
  _listen()
  if setting == 'off':
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  if setting == 'auto' and jax.config.jax_compilation_cache_dir:
    return Path(jax.config.jax_compilation_cache_dir)  # the user's (or the environment's) own
  path = default_dir() if setting == 'auto' else Path(setting).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise PermissionError(f'{path} is not writable')
  except OSError as e:  # trial 41: a file's name gave a bare errno
    why = f'{path} is not a folder' if path.exists() and not path.is_dir() else e
    logging.warning(
      'compiling without the compilation cache: %s; %s',
      why,
      errors.in_callers_words("name a folder with run.compile_cache (or 'off')"),
    )
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  # Every program, however quick to compile: the run's small ones add up.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  return path


def hits() -> int:
  """Compiles served by the persistent cache in this process so far."""
  _listen()
  return _hits


def _listen() -> None:
  global _listener_installed
  with _listening:
    if not _listener_installed:
      jax.monitoring.register_event_listener(_on_event)
      _listener_installed = True


def _on_event(event: str, **kwargs) -> None:
  global _hits
  if event == _HIT_EVENT:
    _hits += 1
