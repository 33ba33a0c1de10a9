"""Neural style transfer (Gatys et al.) on VGG-19, in JAX: the command line.

  python main.py -cp content_images/tubingen.jpg -sp style_images/starry_night.jpg \
      -i 1000 -cw 10 -sw 0.0001 -w 1024

The flags and the program live in nst_jax/cli.py, so that the installed
`nst-jax` command and `python -m nst_jax` are this same program.
"""

from nst_jax import cli

if __name__ == '__main__':
  cli.run()
