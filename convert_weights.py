"""Converts published VGG-19 weights into weights/vgg19.npz (see --help).

The flags and the program live in nst_jax/convert_cli.py, so that the installed
`nst-jax-convert` command is this same program.
"""

from nst_jax import convert_cli

if __name__ == '__main__':
  convert_cli.run()
