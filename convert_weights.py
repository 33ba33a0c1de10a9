"""Converts published VGG-19 weights into weights/vgg19.npz (see --help).

The flags and the program live in nst_jax/cli/convert.py, so that the installed
`nst-jax-convert` command is this same program.
"""

import os
import signal

if __name__ == '__main__':
  # Ctrl-C while the libraries load (about 1 s) ends at once with one line, as
  # main.py's does: it printed a traceback, or was swallowed by a callback of
  # JAX's and the conversion went on (trial 24). The converter sets its own later.
  def _interrupted(signum, frame):
    del frame
    os.write(2, b'error: interrupted while starting; nothing was written\n')
    os._exit(128 + signum)

  signal.signal(signal.SIGINT, _interrupted)

from nst_jax.cli import convert as convert_cli  # noqa: E402

if __name__ == '__main__':
  convert_cli.run()
