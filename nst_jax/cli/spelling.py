"""The command line's words for what the library's messages name.

The library speaks to a Python caller: a message names the config field to
set, as `group.field` of StyleConfig (`run.resume`, `inputs.width`), and the
function to call (`nst_jax.io.download.fetch_and_convert('w.npz')`). A
command-line user typed flags and runs the converter instead, so main.py and
convert_weights.py print every library message through `for_command_line`,
which rewrites those names with the two tables here. `FIELD_FLAGS` holds every
StyleConfig field (tests/spelling_test.py checks that, and that each flag's
default is its field's); no message names a flag itself (tests/layout_test.py).
"""

import ast
import re

from nst_jax import errors
from nst_jax.io import weight_formats

# StyleConfig field -> its flag of main.py (nst_jax.cli.app), the seed's
# options with their short names, as the usage text spells them.
FIELD_FLAGS = {
  'inputs.content_path': '-cp/--contentpath',
  'inputs.style_path': '-sp/--stylepath',
  'inputs.style_blend_weights': '--style_blend_weights',
  'inputs.style_scale': '--style_scale',
  'inputs.width': '-w/--imagewidth',
  'inputs.content_mask': '--content_mask',
  'inputs.style_masks': '--style_masks',
  'inputs.init': '--init',
  'inputs.seed': '--seed',
  'inputs.max_image_pixels': '--max_image_pixels',
  'model.weights': '--weights',
  'model.weights_url': '--weights_url',
  'model.pooling': '--pooling',
  'model.dtype': '--dtype',
  'model.precision': '--precision',
  'loss.content_layers': '--content_layers',
  'loss.style_layers': '--style_layers',
  'loss.style_layer_weights': '--style_layer_weights',
  'loss.style_loss': '--style_loss',
  'loss.normalize_gradients': '--normalize_gradients',
  'loss.content_weight': '-cw/--contentweight',
  'loss.style_weight': '-sw/--styleweight',
  'loss.tv_weight': '--tv_weight',
  'loss.tiles': '--tiles',
  'optim.name': '--optimizer',
  'optim.learning_rate': '--learning_rate',
  'optim.lbfgs_memory': '--lbfgs_memory',
  'optim.box': '--box',
  'schedule.iterations': '-i/--iterations',
  'schedule.scales': '--scales',
  'schedule.min_width': '--min_width',
  'schedule.tol': '--tol',
  'schedule.window': '--window',
  'schedule.read_every': '--read_every',
  'color.preserve_colors': '--preserve_colors',
  'color.color_match': '--color_match',
  'save.path': '--output',
  'save.bit_depth': '--bit_depth',
  'save.quality': '--quality',
  'save.save_iter': '--save_iter',
  'save.record': '--record',
  'save.overwrite': '--overwrite',
  'run.print_iter': '--print_iter',
  'run.progress': '--progress',
  'run.checkpoint_every': '--checkpoint_every',
  'run.checkpoint_seconds': '--checkpoint_seconds',
  'run.compile_cache': '--compile_cache',
  'run.resume': '--resume',
  'run.keep_checkpoint': '--keep_checkpoint',
  'run.checkpoint_dir': '--checkpoint_dir',
  'run.serve': '--serve',
  'run.memory_limit': '--memory_limit',
  'run.shard': '--shard',
  'video.temporal_weight': '--temporal_weight',
  'video.passes': '--passes',
  'video.frames': '--frames',
  'video.flow': '--flow',
  'video.blend': '--blend',
  'video.fps': '--fps',
}

# Library calls that messages suggest -> the converter's flags that do the
# same: (flags always given, the flag that takes the call's one argument).
CALL_COMMANDS = {
  'nst_jax.io.download.fetch_and_convert': ('--download', '--output'),
  'nst_jax.io.weights.convert_file': ('', '--input'),
}

# A Python string literal, as repr writes one (weight_formats.fetch_call).
_STRING = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
_CALL = '|'.join(re.escape(call) for call in CALL_COMMANDS)
# Whole names only: a file named run.resume.png or out/run.resume keeps its name.
_FIELD = '|'.join(re.escape(field) for field in FIELD_FLAGS)
_NAMES = re.compile(
  rf'(?P<call>{_CALL})\((?P<arg>{_STRING})?\)|(?<![\w./-])(?P<field>{_FIELD})(?![\w.]*\w)'
)


def _spell(match: re.Match) -> str:
  if match['field']:
    return FIELD_FLAGS[match['field']]
  always, takes = CALL_COMMANDS[match['call']]
  words = [weight_formats.CONVERT_COMMAND, always]
  if match['arg']:
    words += [takes, errors.printable(ast.literal_eval(match['arg']))]
  return ' '.join(word for word in words if word)


def for_command_line(message: str) -> str:
  """A library message as a command-line user reads it: flags and commands.

  'run.resume' becomes '--resume' and 'inputs.width' '-w/--imagewidth';
  `nst_jax.io.download.fetch_and_convert('w.npz')` becomes
  `python convert_weights.py --download --output w.npz`. The message stays
  on one line: a newline (in a file name, say) is printed as \\n.
  """
  message = message.replace('\n', '\\n').replace('\r', '\\r')
  return _NAMES.sub(_spell, message)
