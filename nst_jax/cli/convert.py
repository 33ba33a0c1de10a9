r"""Converts published VGG-19 weights into nst-jax's .npz.

The converted file goes to weights/vgg19.npz in a source checkout, and to
~/.cache/nst_jax/vgg19.npz for an installed package (see --output).

Usage (`nst-jax-convert` when installed):
  python convert_weights.py --download
      fetch the Keras notop file (Oxford Caffe weights) from its published
      locations (mirrors tried in order; --url and $NST_JAX_WEIGHTS_URL add
      your own first), verify its published MD5, convert.
  python convert_weights.py --input FILE [--output PATH] [--input_convention caffe]
      convert a local Keras .h5, torchvision .pth or .safetensors file (format
      read from the file's content). Use --input_convention caffe for Caffe
      conversions saved with torchvision's keys, such as neural-style-pt's
      vgg19-d01eb7cb.pth.

An existing --output is replaced when it is converted weights (converting again
is how a damaged one is mended); any other file only with --overwrite. An
--output that is a directory, or the file being converted, is refused.
"""

import os
from pathlib import Path
import signal
import sys
import time

from absl import app
from absl import flags

from nst_jax import errors
from nst_jax.cli import absl_app
from nst_jax.cli import spelling
from nst_jax.core import pixels
from nst_jax.engine import signals
from nst_jax.io import download
from nst_jax.io import output_names
from nst_jax.io import weight_checks
from nst_jax.io import weights as weights_lib
from nst_jax.runs import output_plan

flags.DEFINE_string('input', None, 'Published weights file to convert (.h5, .pth, .safetensors).')
flags.DEFINE_bool('download', False, 'Download the Keras VGG-19 notop file and convert it.')
flags.DEFINE_string(
  'output', str(weights_lib.DEFAULT_WEIGHTS_PATH), 'Where to write the converted .npz.'
)
flags.DEFINE_enum(
  'input_convention',
  None,
  sorted(pixels.CONVENTIONS),
  'Override the input convention implied by the file layout.',
)
flags.DEFINE_multi_string(
  'url',
  [],
  'A mirror of the Keras file to try first (repeatable); then $NST_JAX_WEIGHTS_URL and the '
  'published locations.',
)
flags.DEFINE_string('md5', weights_lib.KERAS_MD5, 'Expected MD5 of the downloaded file.')
flags.DEFINE_bool(
  'overwrite',
  False,
  'Replace an existing --output file that is not converted nst-jax weights (converted weights '
  'are replaced without it).',
)

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if bool(FLAGS.input) == FLAGS.download:
    sys.exit('error: give exactly one of --input FILE or --download')
  _check_output(Path(FLAGS.output))
  t0 = time.perf_counter()
  # One converter per output at a time; a killed one's temporary files go.
  target = output_plan.Output(Path(FLAGS.output), derived=())
  # A signal unwinds the work like Ctrl-C, so the temporary file and the lock
  # go (trial 22: SIGTERM/SIGHUP left an 80 MB temporary, Ctrl-C a traceback).
  for signum in signals.STOP_SIGNALS:
    signal.signal(signum, _interrupted)
  try:
    with output_plan.locked([target]):
      _convert()
  except errors.NstError as e:
    sys.exit(f'error: {spelling.for_command_line(str(e))}')
  except KeyboardInterrupt as e:
    signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
    print(f'error: interrupted by signal {signum}; {FLAGS.output} was not written', file=sys.stderr)
    sys.exit(128 + signum)
  for signum in signals.STOP_SIGNALS:  # written: the rest takes a moment
    signal.signal(signum, signal.SIG_IGN)
  try:
    info = weights_lib.load_weights(FLAGS.output).info
  except errors.NstError as e:
    sys.exit(f'error: {spelling.for_command_line(str(e))}')
  print(
    f'wrote {FLAGS.output} from {info.source} ({info.source_format}, sha256 '
    f'{info.source_sha256[:16]}..., {info.convention} input convention) in '
    f'{time.perf_counter() - t0:.1f} s'
  )


def _convert() -> None:
  if FLAGS.download:
    if FLAGS.input_convention:
      sys.exit('error: --input_convention applies to --input only')
    download.fetch_and_convert(
      FLAGS.output, download.mirrors(FLAGS.url), md5=FLAGS.md5 or weights_lib.KERAS_MD5
    )
  else:
    weights_lib.convert_file(FLAGS.input, FLAGS.output, convention=FLAGS.input_convention)


def _interrupted(signum, frame) -> None:
  raise KeyboardInterrupt(signum)


def _check_output(output: Path) -> None:
  """Exits with one line where writing `output` would lose a file.

  Checked before anything is read, downloaded or written. A converted file
  may be replaced (converting again is how a damaged one is mended); any
  other file only with --overwrite.
  """
  if FLAGS.output.endswith(('/', os.sep)) and not output.is_dir():  # trial 22: a file 'newdir'
    sys.exit(
      f'error: --output {FLAGS.output} names a directory; name the file to write, such as '
      f'--output {output / weights_lib.DEFAULT_WEIGHTS_PATH.name}'
    )
  if output.is_dir():
    sys.exit(
      f'error: --output {output} is a directory; name the file to write, such as '
      f'--output {output / weights_lib.DEFAULT_WEIGHTS_PATH.name}'
    )
  try:  # a directory that is a file or not writable, a name too long: before the work
    output_names.check_place(output)
  except errors.NstError as e:
    sys.exit(f'error: {spelling.for_command_line(str(e))}')
  # --download saves the published file beside the output, then converts it.
  if FLAGS.input:
    source, role = Path(FLAGS.input), 'the --input file'
  else:
    source, role = output.parent / weights_lib.KERAS_FILENAME, 'where --download saves its file'
  if _same_file(output, source):
    sys.exit(f'error: --output {output} is {role}; write the converted .npz to another --output')
  if output.exists() and not FLAGS.overwrite and not is_converted(output):
    sys.exit(
      f'error: --output {output} exists and is not converted nst-jax weights; choose another '
      '--output, or add --overwrite to replace it'
    )


def _same_file(a: Path, b: Path) -> bool:
  # resolve() follows symbolic links; samefile also catches hard links.
  if a.resolve() == b.resolve():
    return True
  return a.exists() and b.exists() and os.path.samefile(a, b)


def is_converted(path: Path) -> bool:
  """Whether `path` is an .npz the converter wrote, even a truncated one.

  np.savez writes the arrays in order, each after a zip local header that
  names it, so the first name, at the start of the file, tells: one of
  the model's `conv1_1/kernel` etc. or a `__meta__/` entry.
  """
  try:
    with open(path, 'rb') as f:
      head = f.read(1024)
  except OSError:
    return False
  if not head.startswith(b'PK\x03\x04') or len(head) < 30:
    return False
  size = int.from_bytes(head[26:28], 'little')  # the local header's file name length
  name = head[30 : 30 + size].decode('utf-8', 'replace').removesuffix('.npy')
  return name.startswith(weights_lib.META_PREFIX) or name in weight_checks.expected_shapes()


def run(argv: list[str] | None = None) -> None:
  """The program: convert_weights.py and `nst-jax-convert` both come here."""
  absl_app.run(main, doc=__doc__, module=__name__, argv=sys.argv if argv is None else argv)
