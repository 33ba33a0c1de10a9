"""Writes docs/cli.md from the flags' own help: python docs/make_cli_reference.py"""

from pathlib import Path
import sys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nst_jax.cli import app as cli  # noqa: E402

if __name__ == '__main__':
  (ROOT / 'docs' / 'cli.md').write_text(cli.reference_markdown())
  print(f'wrote {ROOT / "docs" / "cli.md"}')
