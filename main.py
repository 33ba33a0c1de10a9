"""Neural style transfer (Gatys et al.) on VGG-19, in JAX: the command line.

  python main.py -cp content_images/tubingen.jpg -sp style_images/starry_night.jpg \
      -i 1000 -cw 10 -sw 0.0001 -w 1024

The flags live in nst_jax/cli/flags.py and the program in nst_jax/cli/app.py,
so that the installed `nst-jax` command and `python -m nst_jax` are this same
program.
"""

import os
import signal

if __name__ == '__main__':
  # Ctrl-C while the libraries load (about 2 s) ends at once with one line: a
  # KeyboardInterrupt there printed a traceback, or was swallowed by a
  # callback and the run went on. The run installs its own handlers later.
  def _interrupted(signum, frame):
    del frame
    os.write(2, b'error: interrupted while starting; nothing was written\n')
    os._exit(128 + signum)

  signal.signal(signal.SIGINT, _interrupted)

from nst_jax.cli import app as cli  # noqa: E402

if __name__ == '__main__':
  cli.run()
