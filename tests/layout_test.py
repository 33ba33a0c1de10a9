"""The package's layout: modules that name the architecture, and no reaching into privates.

Each module keeps its underscore names to itself: another module that
imports one (or reads `module._name`) couples itself to an implementation
detail, which is how the old stylize.py became a hub. Every module is listed
in the README's Layout section with its purpose, and none grows into a hub.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted((ROOT / 'nst_jax').glob('*.py'))
# About 500 lines (house style), with room for the docstrings.
MAX_LINES = 560


def _private_uses(path: Path) -> list[str]:
  """Underscore names of other nst_jax modules that `path` imports or reads."""
  tree = ast.parse(path.read_text())
  aliases = set()  # local names bound to nst_jax modules
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('nst_jax'):
      for name in node.names:
        if name.name.startswith('_') or '._' in f'{node.module}.':
          found.append(f'from {node.module} import {name.name}')
        if node.module == 'nst_jax':
          aliases.add(name.asname or name.name)
    elif isinstance(node, ast.Import):
      for name in node.names:
        if name.name.startswith('nst_jax'):
          if any(part.startswith('_') for part in name.name.split('.')):
            found.append(f'import {name.name}')
          aliases.add(name.asname or name.name.split('.')[0])
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.Attribute)
      and isinstance(node.value, ast.Name)
      and node.value.id in aliases
      and node.attr.startswith('_')
      and not node.attr.startswith('__')
    ):
      found.append(f'{node.value.id}.{node.attr}')
  return found


@pytest.mark.parametrize('path', MODULES, ids=lambda p: p.name)
def test_no_module_uses_another_modules_private_names(path):
  assert _private_uses(path) == []


def test_the_check_finds_private_uses(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text(
    'from nst_jax.engine.engine import _GroupRun\n'
    'from nst_jax import steps as s\n'
    'import nst_jax._hidden\n'
    'x = s._cache\n'
  )
  assert _private_uses(bad) == [
    'from nst_jax.engine.engine import _GroupRun',
    'import nst_jax._hidden',
    's._cache',
  ]


@pytest.mark.parametrize('path', MODULES, ids=lambda p: p.name)
def test_no_module_is_a_hub(path):
  assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_readme_layout_lists_every_module():
  readme = (ROOT / 'README.md').read_text()
  layout = readme.split('## Layout', 1)[1].split('\n## ', 1)[0]
  missing = [p.name for p in MODULES if p.name != '__init__.py' and f'{p.name} ' not in layout]
  assert not missing, f'modules missing from the README Layout section: {missing}'
