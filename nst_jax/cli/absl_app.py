"""Running an absl program whose flags live in a library module, talking to people.

`main.py`, `python -m nst_jax` and the `nst-jax` console script all run
nst_jax.cli.app (likewise convert_weights.py and `nst-jax-convert` run
nst_jax.cli.convert), so the flags are defined once. absl's help, though,
assumes the flags live in `__main__`: the usage text is `__main__`'s
docstring, and `--helpshort` lists the key flags of the module named by
sys.argv[0]. `run` points both at the module that defines the flags.

The console: absl's log lines carry a debugging prefix (`I1202
20:01:16.992620 140704418909056 stylize.py:923]`), and JAX logs its backend
probing (`Unable to initialize backend 'tpu'`) at the same level. A normal
run prints the program's own lines only, as plain sentences (warnings
marked as such); `--verbosity 1` or `--logtostderr` bring absl's format and
every library's lines back, as absl programs allow.
"""

from collections.abc import Callable, Sequence
import gc
import logging
import os
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

from nst_jax.cli import spelling

# absl's help flags (app.py's HelpFlag, HelpshortFlag, HelpfullFlag, HelpXMLFlag).
HELP_FLAGS = frozenset({'-?', '--help', '--helpshort', '--helpfull', '--helpxml'})
# Whether `run` added its check of absl's --profile_file (once per process).
_PROFILE_CHECKED: list[bool] = []
# Libraries whose informational lines are for debugging, not for the user.
QUIET_LOGGERS = ('jax', 'jaxlib', 'absl.flags', 'flax', 'optax', 'PIL')


class PlainFormatter(logging.Formatter):
  """The message alone; warnings and errors say what they are."""

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= logging.WARNING:  # the library's field names as the user's flags
      message = spelling.for_command_line(message)
    if record.levelno >= logging.ERROR:
      return f'error: {message}'
    if record.levelno >= logging.WARNING:
      return f'warning: {message}'
    return message


class _NotFromOrbax(logging.Filter):
  """Drops orbax's own lines: it logs through absl, and a failed save said 'error: [process=0]
  [thread=...] _SignalingThread.run() raised ...' twice around the run's own one-line warning
  (trial 22), which says what failed and that the run goes on."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == 'asyncio' and str(record.msg).startswith(
      ('Future exception was never', 'Task exception was never')  # trial 28: a Task's too
    ):
      return False  # trial 26: a refused damaged checkpoint's other reads, left at exit
    return f'{os.sep}orbax{os.sep}' not in record.pathname or record.levelno >= logging.CRITICAL


def plain_console() -> bool:
  """Plain sentences unless --verbosity >= 1 or --logtostderr; returns whether set."""
  if flags.FLAGS.verbosity >= 1 or flags.FLAGS.logtostderr:
    return False
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(PlainFormatter())
  if not any(isinstance(f, _NotFromOrbax) for f in handler.filters):
    handler.addFilter(_NotFromOrbax())
  for name in QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
  return True


def run(main: Callable[[list[str]], None], *, doc: str, module: str, argv: Sequence[str]) -> None:
  """app.run(main, argv) with `module`'s docstring and flags as the program's own."""
  sys.modules['__main__'].__doc__ = doc
  for flag in flags.FLAGS.get_key_flags_for_module(module):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

  def console_main(args):
    plain_console()
    return main(args)

  if 'profile_file' in flags.FLAGS and not _PROFILE_CHECKED:
    # absl's own flag: at exit its profile replaced any file there (a content
    # image included), outside the output plan; checked as the flags are parsed.
    flags.register_validator(
      'profile_file',
      lambda path: not path or not os.path.lexists(path),
      message='it exists; name a new file (the profile would replace it)',
    )
    _PROFILE_CHECKED.append(True)

  try:
    app.run(console_main, argv=list(argv))
  except SystemExit as e:
    # absl ends its help with status 1; asking for help is no error, and
    # every command-line tool people know exits 0 there.
    if e.code == 1 and HELP_FLAGS.intersection(argv[1:]):
      sys.exit(0)
    raise
  finally:
    # The program ends here, and the interpreter's last garbage collections
    # would walk every object the libraries and the run made, to free memory
    # that the exit frees anyway: 0.5-0.7 s of every run (docs/benchmarks.md).
    # Frozen objects are skipped. Nothing is left for a collector to finish:
    # files are written and closed by the run (io/atomic.py), and the atexit
    # handlers (JAX's, absl's) still run.
    gc.freeze()
