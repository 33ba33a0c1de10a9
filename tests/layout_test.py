"""The package's layout: modules that name the architecture, and no reaching into privates.

Each module keeps its underscore names to itself: another module that
imports one (or reads `module._name`) couples itself to an implementation
detail, which is how the old stylize.py became a hub. Every module is listed
in the README's Layout section with its purpose, and none grows into a hub.
"""

import ast
from pathlib import Path
import re

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


# The library speaks its own language: its messages name config fields
# (`run.resume`) and calls, never a flag; nst_jax/cli/spelling.py turns them
# into flags for the command line.
LIBRARY = sorted(p for p in (ROOT / 'nst_jax').rglob('*.py') if p.parent.name != 'cli')
# Literals allowed to hold a flag-like token, by file, with why.
ALLOWED = {
  # ffmpeg's own input option, in the command a message suggests.
  'nst_jax/io/video.py': ('ffmpeg -i ',),
  # Being split by another engineer (issue 24); their messages move to
  # field names then: inputs.max_image_pixels, save.bit_depth, run.resume.
  'nst_jax/io/images.py': ('raise --max_image_pixels', 'use --bit_depth 8'),
  'nst_jax/runs/arrays.py': ('run without --resume',),
}


def _defined_flags(path: Path) -> tuple[set[str], set[str]]:
  """(names, short names) of the flags `path` defines with absl's DEFINE_*."""
  names, shorts = set(), set()
  for node in ast.walk(ast.parse(path.read_text())):
    if (
      isinstance(node, ast.Call)
      and isinstance(node.func, ast.Attribute)
      and node.func.attr.startswith('DEFINE_')
      and node.args
      and isinstance(node.args[0], ast.Constant)
    ):
      names.add(node.args[0].value)
      shorts |= {k.value.value for k in node.keywords if k.arg == 'short_name'}
  return names, shorts


def _flag_pattern() -> re.Pattern:
  # Read, not imported: the two programs' flags cannot share one FlagValues.
  names, shorts = set(), set()
  for program in ('app.py', 'convert.py'):
    more_names, more_shorts = _defined_flags(ROOT / 'nst_jax' / 'cli' / program)
    names |= more_names
    shorts |= more_shorts
  # The seed's short forms (-cp -sp -i -cw -sw -w) must be among them.
  assert {'cp', 'sp', 'i', 'cw', 'sw', 'w'} <= shorts
  # The seed's long names that are no field's, as bare words too ("raise imagewidth").
  seed = names & {'contentpath', 'stylepath', 'contentweight', 'styleweight', 'imagewidth'}
  alternatives = lambda words: '|'.join(sorted(map(re.escape, words), key=len, reverse=True))  # noqa: E731
  return re.compile(
    rf'(?<![\w-])--(?:no)?(?:{alternatives(names)})(?![\w-])'
    rf'|(?<![\w-])-(?:{alternatives(shorts)})(?![\w-])'
    rf'|\b(?:{alternatives(seed)})\b'
  )


FLAG = _flag_pattern()


def _flag_strings(source: str, allowed: tuple[str, ...] = ()) -> list[str]:
  """The string literals of `source` (f-strings' constant parts too) that name a flag.

  Docstrings may name flags (they document the program); comments are not
  in the tree.
  """
  tree = ast.parse(source)
  docstrings = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        docstrings.add(id(body[0].value))
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      if id(node) not in docstrings and FLAG.search(node.value):
        if not any(a in node.value for a in allowed):
          found.append((node.lineno, node.col_offset, node.value))
  # Stable: an f-string's parts share its position and come in their order.
  return [text for *_, text in sorted(found, key=lambda f: f[:2])]


@pytest.mark.parametrize('path', LIBRARY, ids=lambda p: str(p.relative_to(ROOT / 'nst_jax')))
def test_no_library_string_names_a_flag(path):
  allowed = ALLOWED.get(str(path.relative_to(ROOT)), ())
  assert _flag_strings(path.read_text(), allowed) == []


def test_the_check_finds_flags():
  source = '''
"""Module docs may say --resume and -w."""
def f(x):
  """So may a function's: -cp FILE."""
  # and comments: --overwrite
  a = 'continue with --resume'
  b = f'lower -w {x} or --noresume'
  c = 'raise imagewidth'
  d = 'continue with run.resume, at inputs.width; e.g. ffmpeg -i in.mp4'
  e = 'multi-pass, non-w, --resumed, x-w, -wide'
  return 'from --download' + ' (-cw)'
'''
  assert _flag_strings(source, allowed=('ffmpeg -i ',)) == [
    'continue with --resume',
    'lower -w ',
    ' or --noresume',
    'raise imagewidth',
    'from --download',
    ' (-cw)',
  ]
