"""The command line's table of flags: complete, true to the flags, one source of defaults.

Library messages name config fields and calls (nst_jax.cli.spelling); the
programs print them with flags and commands. Here: every StyleConfig field
has its flag, every flag in the table exists with that spelling, every flag
that sets a field defaults to the field's default, and the rewriting keeps
file names and one line.
"""

import dataclasses

import pytest

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.cli import app
from nst_jax.cli import flags as cli_flags
from nst_jax.cli import spelling
from nst_jax.io import weight_formats

FLAGS = app.FLAGS
# Flags of main.py that set no StyleConfig field: they choose what kind of
# run it is, or start the processes of a multi-host run.
NOT_FIELDS = {
  'preset',
  'jobs',
  'video',
  'distributed',
  'coordinator_address',
  'num_processes',
  'process_id',
}
# Flags whose default differs from their field's on purpose, with why.
DIFFERENT_DEFAULTS = {
  # None: required (unless --jobs), so absl's help shows no default; the
  # field's '' (no image) is what config_from_flags passes for it.
  'contentpath': (None, ''),
  'stylepath': (None, ''),
}
# The seed's documented defaults (README, main.py's usage text): -i 1000,
# -cw 100, -sw 0.01, -w 1024.
SEED_DEFAULTS = {
  'iterations': 1000,
  'contentweight': 100.0,
  'styleweight': 0.01,
  'imagewidth': 1024,
}


def _flag_fields() -> dict[str, str]:
  """Flag name -> 'group.field', from the code's own table."""
  table = spelling.FIELD_FLAGS.items()
  return {spelled.split('/')[-1].removeprefix('--'): field for field, spelled in table}


def _field_default(field: str):
  group, name = field.split('.')
  return getattr(getattr(config_lib.StyleConfig(), group), name)


def _as_config(flag):
  """A flag's default as the config holds it: absl lists are tuples there."""
  value = flag.default
  if isinstance(value, list):
    return tuple(value)
  if flag.name == 'bit_depth':  # an enum of '8' and '16', an int in SaveConfig
    return int(value)
  return value


def test_every_config_field_has_its_flag():
  fields = {
    f'{group}.{field.name}'
    for group, cls in config_lib.GROUPS.items()
    for field in dataclasses.fields(cls)
  }
  assert set(spelling.FIELD_FLAGS) == fields


@pytest.mark.parametrize('field', sorted(spelling.FIELD_FLAGS))
def test_the_table_spells_each_flag_as_defined(field):
  *short, long = spelling.FIELD_FLAGS[field].split('/')
  assert long.startswith('--') and long[2:] in FLAGS, field
  flag = FLAGS[long[2:]]
  assert flag.short_name == (short[0].removeprefix('-') if short else None), field


def test_every_flag_sets_a_field_or_is_listed_as_setting_none():
  own = {f.name for f in FLAGS.get_flags_for_module(cli_flags.__name__)}
  mapped = set(_flag_fields())
  assert not mapped & NOT_FIELDS
  assert own == mapped | NOT_FIELDS


@pytest.mark.parametrize('name', sorted(_flag_fields()))
def test_flag_defaults_are_the_config_defaults(name):
  field = _flag_fields()[name]
  if name in DIFFERENT_DEFAULTS:
    assert (FLAGS[name].default, _field_default(field)) == DIFFERENT_DEFAULTS[name]
  else:
    assert _as_config(FLAGS[name]) == _field_default(field), (name, field)


def test_the_seed_defaults_are_the_documented_ones():
  assert {name: FLAGS[name].default for name in SEED_DEFAULTS} == SEED_DEFAULTS


def test_config_errors_read_as_flags():
  with pytest.raises(errors.ConfigError) as e:
    config_lib.InputConfig(width=0)
  assert str(e.value) == 'inputs.width must be a positive integer, got 0'
  assert spelling.for_command_line(str(e.value)) == (
    '-w/--imagewidth must be a positive integer, got 0'
  )
  with pytest.raises(errors.ConfigError) as e:
    config_lib.ScheduleConfig(scales=2, min_width=64)
  assert spelling.for_command_line(str(e.value)) == 'give --scales or --min_width, not both'


def test_messages_keep_file_names_and_one_line():
  assert spelling.for_command_line('x exists; replace it with save.overwrite') == (
    'x exists; replace it with --overwrite'
  )
  # A file named like a setting keeps its name; a newline in a name stays on the line.
  assert spelling.for_command_line('run.resume.png exists; then continue with run.resume.') == (
    'run.resume.png exists; then continue with --resume.'
  )
  assert spelling.for_command_line('out/inputs.width exists') == 'out/inputs.width exists'
  assert spelling.for_command_line('model.weights_url failed') == '--weights_url failed'
  assert spelling.for_command_line('a\nb.png exists') == 'a\\nb.png exists'


def test_suggested_calls_read_as_converter_commands():
  convert = weight_formats.CONVERT_COMMAND
  assert spelling.for_command_line(f'damaged: use {weight_formats.fetch_call()}') == (
    f'damaged: use {convert} --download'
  )
  # Spaces and quotes in a name: the call holds it as a Python literal.
  odd = "my weights/it's.npz"
  assert spelling.for_command_line(f'run: {weight_formats.fetch_call(odd)}; then') == (
    f'run: {convert} --download --output {odd}; then'
  )
  assert spelling.for_command_line(f'run: {weight_formats.convert_call("a.h5")}') == (
    f'run: {convert} --input a.h5'
  )
  # A newline in the name stays escaped, on the one line.
  newline = weight_formats.convert_call('a\nb.h5')
  assert spelling.for_command_line(f'run: {newline}') == f"run: {convert} --input 'a\\nb.h5'"
