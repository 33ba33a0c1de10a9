"""Running an absl program whose flags live in a library module.

`main.py`, `python -m nst_jax` and the `nst-jax` console script all run
nst_jax.cli (likewise convert_weights.py and `nst-jax-convert` run
nst_jax.convert_cli), so the flags are defined once. absl's help, though,
assumes the flags live in `__main__`: the usage text is `__main__`'s
docstring, and `--helpshort` lists the key flags of the module named by
sys.argv[0]. `run` points both at the module that defines the flags.
"""

from collections.abc import Callable, Sequence
import sys

from absl import app
from absl import flags


def run(main: Callable[[list[str]], None], *, doc: str, module: str, argv: Sequence[str]) -> None:
  """app.run(main, argv) with `module`'s docstring and flags as the program's own."""
  sys.modules['__main__'].__doc__ = doc
  for flag in flags.FLAGS.get_key_flags_for_module(module):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, argv=list(argv))
