"""The package's layout: sub-packages by layer, imports that run downwards, no hubs.

The tree names the architecture (DESIGN.md, "Layout"): nst_jax/core (pure),
nst_jax/io (files), nst_jax/engine (the iteration engine), nst_jax/runs (the
runner and its adapters) and nst_jax/cli (flags), with imports running
cli -> runs -> engine -> io -> core only. Each module keeps its underscore
names to itself, is listed in the README's Layout section with its purpose,
and none grows into a hub (house style: about 450 lines, functions of at
most 80 lines without their docstrings).
"""

import ast
from pathlib import Path
import re

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'nst_jax'
MODULES = sorted(PACKAGE.rglob('*.py'))
MAX_LINES = 450  # house style (STYLE.md)
MAX_FUNCTION_LINES = 80  # docstrings aside
# What each sub-package may import from the package (besides itself). config
# (the settings) sits above core and below the rest; the top-level modules:
# errors (everyone), deprecated (old names), xla_flags (set before JAX starts).
ALLOWED = {
  'core': {'errors'},
  'io': {'errors', 'core', 'config'},
  'engine': {'errors', 'core', 'io', 'config'},
  'runs': {'errors', 'core', 'io', 'engine', 'config'},
  'cli': {'errors', 'core', 'io', 'engine', 'runs', 'config', 'xla_flags'},
  'config': {'errors', 'core', 'deprecated'},
  'errors': set(),
  'deprecated': set(),
  'xla_flags': set(),
}
# Third-party modules the pure core must not import: files, flags, video,
# progress bars belong to the layers above.
NOT_IN_CORE = ('PIL', 'absl', 'av', 'cv2', 'tqdm', 'h5py', 'torch')


def _ids(p):
  return str(p.relative_to(PACKAGE))


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


@pytest.mark.parametrize('path', MODULES, ids=_ids)
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


@pytest.mark.parametrize('path', MODULES, ids=_ids)
def test_no_module_is_a_hub(path):
  assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_architecture_page_lists_every_module():
  page = (ROOT / 'docs' / 'architecture.md').read_text()
  missing = [
    _ids(p) for p in MODULES if p.name != '__init__.py' and f' {p.name} ' not in f' {page} '
  ]
  assert not missing, f'modules missing from docs/architecture.md: {missing}'


def _imports(path: Path) -> set[str]:
  """Every module name `path` imports (absolute, including from-imports' modules)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
      if node.module == 'nst_jax':
        names |= {f'nst_jax.{a.name}' for a in node.names}
  return names


def _layer(path: Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix('').parts
  return parts[0]


def _violations(path: Path, layer: str) -> list[str]:
  bad = []
  for name in sorted(_imports(path)):
    parts = name.split('.')
    if parts[0] == 'nst_jax' and len(parts) > 1:
      target = parts[1]
      if target != layer and target not in ALLOWED.get(layer, ALLOWED['cli']):
        bad.append(name)
    elif layer == 'core' and parts[0] in NOT_IN_CORE:
      bad.append(name)
  return bad


@pytest.mark.parametrize('path', [p for p in MODULES if _layer(p) in ALLOWED], ids=_ids)
def test_imports_run_downwards(path):
  assert _violations(path, _layer(path)) == []


def test_the_import_check_finds_upward_imports(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text(
    'import PIL.Image\n'
    'from nst_jax import config\n'
    'from nst_jax.io import images\n'
    'from nst_jax.core import pixels\n'
  )
  assert _violations(bad, 'core') == ['PIL.Image', 'nst_jax.config', 'nst_jax.io']
  assert _violations(bad, 'engine') == []
  assert _violations(bad, 'runs') == []


def test_the_tree_shows_the_layers():
  packages = sorted(
    p.parent.name for p in PACKAGE.glob('*/__init__.py') if p.parent.name != 'presets'
  )
  top = sorted(p.name for p in PACKAGE.glob('*.py'))
  assert packages == ['cli', 'config', 'core', 'engine', 'io', 'runs']
  assert len(top) <= 6, top
  for package in packages:
    doc = ast.get_docstring(ast.parse((PACKAGE / package / '__init__.py').read_text()))
    assert doc and 'import' in doc, f'nst_jax/{package}/__init__.py must say what it may import'


def _long_functions(path: Path) -> list[str]:
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      has_doc = (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
      )
      start = body[1].lineno if has_doc and len(body) > 1 else body[0].lineno
      if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
        found.append(node.name)
  return found


@pytest.mark.parametrize('path', MODULES, ids=_ids)
def test_no_function_is_too_long(path):
  assert _long_functions(path) == []


def test_the_function_check_counts_lines_without_the_docstring(tmp_path):
  body = '\n'.join(f'  x{i} = {i}' for i in range(MAX_FUNCTION_LINES))
  ok = tmp_path / 'ok.py'
  ok.write_text(f'def f():\n  """Doc.\n\n  More.\n  """\n{body}\n')
  long = tmp_path / 'long.py'
  long.write_text(f'def g():\n{body}\n  return 1\n')
  assert _long_functions(ok) == []
  assert _long_functions(long) == ['g']


# The library speaks its own language: its messages name config fields
# (`run.resume`) and calls, never a flag; nst_jax/cli/spelling.py turns them
# into flags for the command line.
LIBRARY = sorted(p for p in (ROOT / 'nst_jax').rglob('*.py') if p.parent.name != 'cli')
# Literals allowed to hold a flag-like token, by file, with why.
FLAG_ALLOWED = {
  # ffmpeg's own input option, in the command a message suggests.
  'nst_jax/io/video.py': ('ffmpeg -i ',),
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
  for program in ('flags.py', 'convert.py'):
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
  allowed = FLAG_ALLOWED.get(str(path.relative_to(ROOT)), ())
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


# Modules whose tests go through another door, and the test file that covers
# them (it must name what it tests).
TESTED_ELSEWHERE = {
  'nst_jax.__main__': ('packaging_test.py', "'-m', 'nst_jax'"),
  'nst_jax.cli.absl_app': ('main_test.py', '--help'),
  'nst_jax.config.checks': ('config_test.py', 'must be a positive integer'),
  'nst_jax.config.groups': ('config_test.py', 'config_lib.LossConfig'),
  'nst_jax.config.outputs': ('config_test.py', 'save.bit_depth must be 8 or 16'),
  'nst_jax.io.checkpoint_checks': ('checkpoint_test.py', 'its convergence history is not a list'),
  'nst_jax.runs.features': ('features_test.py', 'extract_features'),
}


def _modules_tests_import() -> set[str]:
  found = set()
  for test in (ROOT / 'tests').glob('*.py'):
    for node in ast.walk(ast.parse(test.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('nst_jax'):
        found.add(node.module)
        found |= {f'{node.module}.{a.name}' for a in node.names}
      elif isinstance(node, ast.Import):
        found |= {a.name for a in node.names}
  return found


def test_every_library_module_has_tests():
  """The rule docs/testing.md states: a test module imports each library module by its path."""
  imported = _modules_tests_import()
  for path in MODULES:
    if path.name == '__init__.py':
      continue
    name = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
    if name in TESTED_ELSEWHERE:
      test, marker = TESTED_ELSEWHERE[name]
      assert marker in (ROOT / 'tests' / test).read_text(), (name, test)
    else:
      assert name in imported, f'no test module imports {name}'
