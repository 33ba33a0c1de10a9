"""`python -m nst_jax`: the same program as main.py and `nst-jax`."""

from nst_jax.cli import app as cli

if __name__ == '__main__':
  cli.run()
