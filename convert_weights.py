"""Converts published VGG-19 weights into weights/vgg19.npz (see --help).

The flags and the program live in nst_jax/cli/convert.py, so that the installed
`nst-jax-convert` command is this same program.
"""

from nst_jax.cli import convert as convert_cli

if __name__ == '__main__':
  convert_cli.run()
