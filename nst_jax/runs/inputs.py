"""A run's input files: their sizes from headers, reading them into rows, and the size check.

Also the check of stylize's `checkpoint=` path, which must not replace anything not its own.

Shared by the single-file run (nst_jax.runs.runner), batches and arrays: an
unreadable file's error names the config field it came from (or its job),
and an image smaller than the layers need is refused before any compile.
"""

from collections.abc import Sequence
import os
from pathlib import Path
from typing import Any

from absl import logging
import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.config import checks
from nst_jax.core import pixels
from nst_jax.core import vgg
from nst_jax.engine import rows as rows_lib
from nst_jax.engine import schedule as schedule_lib
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import images as image_lib
from nst_jax.io import outputs
from nst_jax.io import weights as weights_lib


def style_width(cfg: config_lib.StyleConfig, width: int) -> int:
  return max(1, round(cfg.inputs.style_scale * width))


def output_height(path: str, cfg: config_lib.StyleConfig) -> int:
  """The result's height for a content file, from its header (nothing decoded)."""
  size = image_lib.image_size(path, max_pixels=cfg.inputs.max_image_pixels)
  return pixels.resized_height(*size, cfg.inputs.width)


def largest_height(content: str, styles: Sequence[str], cfg: config_lib.StyleConfig) -> int:
  """The largest image height the step sees at the output width (content or a style)."""
  width = cfg.inputs.width
  sw = style_width(cfg, width)
  heights = [output_height(content, cfg)]
  for path in styles:
    try:
      size = image_lib.image_size(path, max_pixels=cfg.inputs.max_image_pixels)
    except errors.ImageError as e:  # named as the content's is (runner.run)
      raise errors.ImageError(f'inputs.style_path: {e}') from None
    heights.append(pixels.resized_height(*size, sw) * sw // width)
  return max(heights)


def load_row(
  cfg: config_lib.StyleConfig,
  content: str,
  styles: Sequence[str],
  *,
  content_mask: str = '',
  style_masks: Sequence[str] = (),
  content_weight: float | None = None,
  style_weight: float | None = None,
  checkpoint: Path | None = None,
  job: int | None = None,
) -> rows_lib.Row:
  """Reads one job's images, masks and start image into a Row.

  An unreadable file's error names what it was given as: its config field
  for a single run (`inputs.init: image x.png does not exist; ...`), or the
  job (1-based `job`) for a batch.
  """
  i = cfg.inputs
  checks.styles_and_masks(len(styles), n_masks=len(style_masks))

  def read(field, load, *args, **kwargs):
    try:
      return load(*args, max_pixels=i.max_image_pixels, **kwargs)
    except errors.ImageError as e:
      raise errors.ImageError(f'{field if job is None else f"job {job}"}: {e}') from None

  rgb = read('inputs.content_path', image_lib.load_image, content, width=i.width)
  sw = style_width(cfg, i.width)
  style_rgb = [read('inputs.style_path', image_lib.load_image, s, width=sw) for s in styles]
  height = rgb.shape[0]

  def mask(field, path):
    found = read(field, image_lib.load_mask, path, height, i.width)
    if not found.any():  # trial 28: the style applied nowhere, and the content came back
      logging.warning('%s %s is black everywhere: its term applies nowhere', field, path)
    return found

  init = None
  if i.init not in config_lib.INITS:
    init = read('inputs.init', image_lib.load_image, i.init)
  return rows_lib.Row(
    content=rgb,
    styles=style_rgb,
    content_weight=content_weight,
    style_weight=style_weight,
    content_mask=mask('inputs.content_mask', content_mask) if content_mask else None,
    style_masks=(
      np.stack([mask('inputs.style_masks', p) for p in style_masks]) if style_masks else None
    ),
    init_rgb=init,
    checkpoint=checkpoint,
  )


def check_size(
  cfg: config_lib.StyleConfig, row: rows_lib.Row, what: str = '', *, larger: str = 'inputs.width'
) -> None:
  """Refuses images smaller than the deepest layer needs, at the coarsest scale.

  `larger`: what to make larger, as the caller knows it (arrays: 'images').
  """

  need = vgg.min_input_size(cfg.loss.feature_layers)
  stages = schedule_lib.plan(cfg.inputs.width, cfg.schedule)
  ratio = stages[0].width / cfg.inputs.width
  images = [('content', row.content)] + [('style', s) for s in row.styles]
  for name, x in images:
    h, w = (max(1, round(v * ratio)) for v in x.shape[:2])
    if min(h, w) < need:
      where, fix = 'at this width', f'a larger {larger}'
      if len(stages) > 1:
        where, fix = 'at the coarsest scale', f'a larger {larger} or fewer schedule.scales'
      if name == 'style' and cfg.inputs.style_scale < 1:  # the style was shrunk: that is why
        fix = f'a larger inputs.style_scale (now {cfg.inputs.style_scale}) or shallower layers'
      raise errors.ImageError(
        f'the {name} image{what} is {w}x{h} px {where}, but the layers used need at least '
        f'{need} px on each side; use {fix}'
      )


def input_files(cfg: config_lib.StyleConfig, *, owner: str = '') -> dict[str, str]:
  """Every file a run reads, by what it is ('style image 2'), for the output planner."""
  i = cfg.inputs
  files = {f'content image{owner}': i.content_path}
  styles = cfg.style_paths
  for k, path in enumerate(styles, 1):
    files[f'style image{f" {k}" if len(styles) > 1 else ""}{owner}'] = path
  if i.content_mask:
    files[f'content mask{owner}'] = i.content_mask
  for k, path in enumerate(i.style_masks, 1):
    files[f'style mask {k}{owner}'] = path
  if i.init not in config_lib.INITS:
    files[f'init image{owner}'] = i.init
  files['weights file'] = str(weights_lib.resolve_weights_path(cfg.model.weights or None))
  return {what: path for what, path in files.items() if path}


def checkpoint_argument(given: Any, *, resume: bool) -> None:
  """Refuses stylize's checkpoint= that cannot be written or must not be replaced, before the run.

  The writer only logs a failed write and the run goes on (a full disk must
  not end a long run), so a directory of someone's or a missing folder would
  give no checkpoint at all. A checkpoint is itself a directory (orbax's
  steps, checkpoint_store): one nst-jax wrote is taken, as is a readable
  format-1 file; anything else there (someone's file, a link to one) is
  refused. As on the command line, a new run (not `resume`) never replaces
  an unfinished checkpoint; a finished one (kept, to extend) it does.
  """
  if not isinstance(given, str | os.PathLike):  # trial 25: pathlib's TypeError for 5 or bytes
    raise errors.ConfigError(
      f'checkpoint must be a path (str or pathlib.Path), got {type(given).__name__} {given!r}; '
      "pass e.g. checkpoint='run.ckpt'"
    )
  path = Path(given)
  shown = errors.printable(path)
  directory = checkpoint_store.is_directory(path)
  if directory and (why := checkpoint_store.foreign(path)):
    raise errors.ConfigError(
      f'checkpoint {shown} is not an nst-jax checkpoint ({why}); give a new path, e.g. '
      f'{errors.printable(path / "run.ckpt")}'
    )
  if not path.parent.is_dir():
    raise errors.ConfigError(
      f'the folder of checkpoint {shown} does not exist; create it or give another path'
    )
  if not os.path.lexists(path):
    return
  if not (directory or path.is_file()):
    raise errors.ConfigError(
      f'checkpoint {shown} is neither an nst-jax checkpoint nor a regular file (a link to nowhere '
      'or to a directory, a FIFO, a device); give a new path'
    )
  try:
    payload = checkpoint_lib.read(path)
  except errors.NstError:
    if directory:
      raise  # ours, damaged: its own message says what is wrong and what to do
    raise errors.ConfigError(
      f'checkpoint {shown} is a file that is not an nst-jax checkpoint (or a damaged one); give '
      'a new path'
    ) from None
  if not resume and (run := outputs.unfinished_run(payload)) is not None:
    raise errors.ConfigError(
      f'checkpoint {shown} holds an unfinished run ({run}); continue it with '
      'config.run.resume=True, or start afresh with another checkpoint= path (or remove this one)'
    )
