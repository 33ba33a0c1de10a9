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
"""

import sys
import time

from absl import app
from absl import flags

from nst_jax import absl_app
from nst_jax import download
from nst_jax import errors
from nst_jax import image as image_lib
from nst_jax import weights as weights_lib

flags.DEFINE_string('input', None, 'Published weights file to convert (.h5, .pth, .safetensors).')
flags.DEFINE_bool('download', False, 'Download the Keras VGG-19 notop file and convert it.')
flags.DEFINE_string(
  'output', str(weights_lib.DEFAULT_WEIGHTS_PATH), 'Where to write the converted .npz.'
)
flags.DEFINE_enum(
  'input_convention',
  None,
  sorted(image_lib.CONVENTIONS),
  'Override the input convention implied by the file layout.',
)
flags.DEFINE_multi_string(
  'url',
  [],
  'A mirror of the Keras file to try first (repeatable); then $NST_JAX_WEIGHTS_URL and the '
  'published locations.',
)
flags.DEFINE_string('md5', weights_lib.KERAS_MD5, 'Expected MD5 of the downloaded file.')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if bool(FLAGS.input) == FLAGS.download:
    sys.exit('error: give exactly one of --input FILE or --download')
  t0 = time.perf_counter()
  try:
    if FLAGS.download:
      if FLAGS.input_convention:
        sys.exit('error: --input_convention applies to --input only')
      download.fetch_and_convert(
        FLAGS.output, download.mirrors(FLAGS.url), md5=FLAGS.md5 or weights_lib.KERAS_MD5
      )
    else:
      flat, info = weights_lib.convert(FLAGS.input, convention=FLAGS.input_convention)
      weights_lib.save_npz(FLAGS.output, flat, info)
    info = weights_lib.load_weights(FLAGS.output).info
  except errors.NstError as e:
    sys.exit(f'error: {e}')
  print(
    f'wrote {FLAGS.output} from {info.source} ({info.source_format}, sha256 '
    f'{info.source_sha256[:16]}..., {info.convention} input convention) in '
    f'{time.perf_counter() - t0:.1f} s'
  )


def run(argv: list[str] | None = None) -> None:
  """The program: convert_weights.py and `nst-jax-convert` both come here."""
  absl_app.run(main, doc=__doc__, module=__name__, argv=sys.argv if argv is None else argv)
