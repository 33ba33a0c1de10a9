"""The run record written beside each output: settings, provenance, losses, pictures.

For an output `NAME.png`:
  * `NAME.json`: every setting, the weights' source and SHA-256, package
    versions, the device, compile and run times per scale, the final and
    per-layer losses, and the loss history (as `stylize` reported it);
  * `NAME.loss.png`: the total loss and the unweighted content, style and TV
    terms against the iteration, on a log scale;
  * `NAME.sheet.jpg`: content | style(s) | result in a row, and the saved
    intermediate images in a row below.

Pictures are drawn with Pillow alone (no plotting library in the run path).
Every file is written atomically.
"""

from collections.abc import Collection, Sequence
import dataclasses
import functools
import importlib.metadata
import json
import math
import os
from pathlib import Path
import platform
from typing import Any

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw

from nst_jax import errors
from nst_jax.io import atomic
from nst_jax.io import images as image_lib
from nst_jax.io import output_names

FORMAT = 1
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'pillow', 'h5py', 'absl-py')
# The curves of the plot, and their colours (the total first, drawn last).
CURVES = {'content': (31, 119, 180), 'style': (214, 39, 40), 'tv': (44, 160, 44)}
TOTAL_COLOR = (0, 0, 0)
PLOT_SIZE = (800, 480)
SHEET_HEIGHT = 256
# JPEG holds at most 65535 px a side (libjpeg); a row shows at most this many images.
MAX_SHEET_SIDE = 65_000
MAX_ROW_IMAGES = 200


def paths_for(output: str | os.PathLike) -> dict[str, Path]:
  """out/a.png -> {'json': out/a.json, 'loss': out/a.loss.png, 'sheet': out/a.sheet.jpg}.

  Other suffixes stay in the names (out/a.jpg -> out/a.jpg.json): output_names.derived.
  """
  return {k: output_names.derived(output, tail) for k, tail in output_names.RECORD_TAILS.items()}


def versions() -> dict[str, str]:
  """Installed versions of the packages a result depends on."""
  found = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = 'not installed'
  return found


def _device() -> dict[str, Any]:
  device = jax.devices()[0]
  return {
    'platform': device.platform,
    'kind': device.device_kind,
    'count': jax.device_count(),
    'host': platform.node(),
  }


def _digests(output: str | os.PathLike, record: dict) -> dict[str, str]:
  """Each intermediate's SHA-256: as written where the run says (its 'written_sha256'; one
  replaced since is someone's: trial 34), else of the file there now."""
  names = [*record.get('intermediates', []), *record.get('earlier_intermediates', [])]
  written = record.get('written_sha256', {})
  there = [(n, Path(output).with_name(n)) for n in names]
  return {n: written.get(n) or output_names.file_sha256(p) for n, p in there if p.is_file()}


def build(
  *,
  config: Any,
  weights_info: Any,
  record: dict,
  total_s: float,
  output: str | os.PathLike,
  written: str | os.PathLike | None = None,
) -> dict[str, Any]:
  """The JSON record as a dict (see the module docstring)."""
  history = record.get('history', [])
  last = history[-1] if history else {}
  return {
    'format': FORMAT,
    'output': str(output),
    # Where, whatever the working directory was: a copy elsewhere is not its result (trial 26).
    'output_resolved': str(output_names.resolved(output)),
    # Which file the record is of: a file put at its name since is not this run's.
    'result_sha256': output_names.file_sha256(written or output)
    if Path(written or output).is_file()
    else None,
    # And of which inputs: a batch's resume reruns a job whose images changed (trial 24).
    'inputs_sha256': _input_digests(config),
    'settings': json.loads(json.dumps(dataclasses.asdict(config))),
    'weights': {
      'source': weights_info.source,
      'source_sha256': weights_info.source_sha256,
      'source_format': weights_info.source_format,
      'params_sha256': weights_info.params_sha256,
      'convention': weights_info.convention,
      # 'published', or why these are not known to be VGG-19's published weights.
      'provenance': weights_info.provenance or 'unknown (converted before it was recorded)',
    },
    'versions': versions(),
    'device': _device(),
    'scales': record.get('scales', []),
    'compile_s': sum(s['compile_s'] for s in record.get('scales', [])),
    # Every compiled step loaded from the persistent compilation cache.
    'compile_from_disk': bool(record.get('scales'))
    and all(s.get('compile_from_disk') for s in record['scales']),
    'total_s': total_s,
    # The losses of the result written (History scores the final image).
    'final_losses': {k: v for k, v in last.items() if k not in ('scale', 'iteration', 'time_s')},
    # The files it saved beside the output, which a rerun may replace (output_names.claimed).
    'intermediates': list(record.get('intermediates', [])),
    # Each one's digest: an image saved over one is someone's (trial 28).
    'intermediates_sha256': _digests(output, record),
    # An earlier run's to this output, not replaced by this one: still nst-jax's (trial 26).
    'earlier_intermediates': list(record.get('earlier_intermediates', [])),
    'history': history,
  }


def _input_digests(config: Any) -> dict[str, str]:
  """{path: SHA-256} of the content and style files a config names (those that are files)."""
  inputs = getattr(config, 'inputs', None)
  paths = [getattr(inputs, 'content_path', ''), *getattr(inputs, 'style_path', ())]
  return {p: output_names.file_sha256(p) for p in paths if p and os.path.isfile(p)}


def _nice_log_ticks(lo: float, hi: float) -> list[float]:
  return [10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def loss_plot(history: Sequence[dict], path: str | os.PathLike, *, replace=True, then=None) -> None:
  """Draws the total (weighted) and the unweighted L_c, L_s, L_tv per iteration, log y.

  Iterations count on across scales (History numbers them so); non-positive
  values are left out (log scale). `then(tmp)`: as atomic.write's.
  """
  w, h = PLOT_SIZE
  left, right, top, bottom = 80, 150, 20, 50
  im = Image.new('RGB', (w, h), 'white')
  draw = ImageDraw.Draw(im)
  xs = [e['iteration'] for e in history]
  names = [n for n in ('total', *CURVES) if any(e.get(n, 0) > 0 for e in history)]
  values = [e[n] for e in history for n in names if e.get(n, 0) > 0]
  draw.rectangle([left, top, w - right, h - bottom], outline='black')
  if values:
    lo, hi = min(values), max(values)
    ticks = _nice_log_ticks(lo, hi)
    y_lo, y_hi = math.log10(ticks[0]), math.log10(ticks[-1])
    x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)

    def to_px(x, v):
      px = left + (x - x_lo) / (x_hi - x_lo) * (w - left - right)
      py = h - bottom - (math.log10(v) - y_lo) / max(y_hi - y_lo, 1e-9) * (h - top - bottom)
      return px, py

    for t in ticks:
      _, py = to_px(x_lo, t)
      draw.line([left - 5, py, left, py], fill='black')
      draw.text((5, py - 6), f'{t:.0e}', fill='black')
    for x in (x_lo, x_hi):
      px, _ = to_px(x, ticks[0])
      draw.text((px - 10, h - bottom + 8), str(x), fill='black')
    draw.text(((w - right + left) // 2 - 30, h - 22), 'iteration', fill='black')
    for i, name in enumerate(reversed(names)):
      color = CURVES.get(name, TOTAL_COLOR)
      points = [to_px(x, e[name]) for x, e in zip(xs, history, strict=True) if e.get(name, 0) > 0]
      if len(points) > 1:
        draw.line(points, fill=color, width=2, joint='curve')  # no gaps at the joints
      elif points:
        draw.ellipse(
          [points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], color
        )
      draw.line([w - right + 15, top + 20 + 18 * i, w - right + 40, top + 20 + 18 * i], color, 2)
      draw.text((w - right + 45, top + 14 + 18 * i), name, fill='black')
  atomic.write(path, lambda tmp: im.save(tmp, format='PNG'), then=then, replace=replace)


def _thumb(rgb: np.ndarray, height: int) -> Image.Image:
  im = Image.fromarray(image_lib.to_uint8(rgb))
  width = max(1, round(im.width * height / im.height))
  return im.resize((width, height), Image.Resampling.LANCZOS)


def contact_sheet(
  rows: Sequence[Sequence[np.ndarray]],
  path: str | os.PathLike,
  height: int = SHEET_HEIGHT,
  *,
  replace: bool = True,
  then=None,
) -> None:
  """Images [H, W, 3] in [0, 1], each scaled to `height`, laid out in rows (JPEG); `then(tmp)`:
  as atomic.write's.

  A row of more than MAX_ROW_IMAGES keeps an even sample of them, and the
  height shrinks until the sheet fits JPEG's 65535 px a side (a panorama, or
  an intermediate every iteration, failed after the run before).
  """
  rows = [list(row)[:: -(-len(row) // MAX_ROW_IMAGES)] for row in rows if len(row)]
  gap = 8

  def row_width(row, h):
    return sum(max(1, round(x.shape[1] * h / x.shape[0])) for x in row) + gap * (len(row) + 1)

  while height > 1 and max(row_width(row, height) for row in rows) > MAX_SHEET_SIDE:
    height = max(1, height * MAX_SHEET_SIDE // max(row_width(row, height) for row in rows) - 1)
  thumbs = [[_thumb(rgb, height) for rgb in row] for row in rows]
  width = max(sum(t.width for t in row) + gap * (len(row) + 1) for row in thumbs)
  sheet = Image.new('RGB', (width, len(thumbs) * (height + gap) + gap), 'white')
  for r, row in enumerate(thumbs):
    x = gap
    for t in row:
      sheet.paste(t, (x, gap + r * (height + gap)))
      x += t.width + gap
  save = lambda tmp: sheet.save(tmp, format='JPEG', quality=90)  # noqa: E731
  atomic.write(path, save, then=then, replace=replace)


def write(
  output: str | os.PathLike,
  *,
  config: Any,
  weights_info: Any,
  record: dict,
  total_s: float,
  content: np.ndarray,
  styles: Sequence[np.ndarray],
  result: np.ndarray,
  intermediates: Sequence[np.ndarray] = (),
  written: str | os.PathLike | None = None,
  replaceable: Collection[Path] | None = None,
) -> dict[str, Path]:
  """Writes NAME.json, NAME.loss.png and NAME.sheet.jpg beside `output`.

  `written`: the result's file not yet renamed to `output` (its digest goes
  in the record), with the figures left to `figures` after the rename.
  `replaceable`: the files the run may replace (None: any); another one
  there by then is kept (errors.FileAppeared for the record).
  """
  paths = paths_for(output)
  earlier = (output_names.record_naming(output) or {}).get('figures_sha256')
  data = build(
    config=config, weights_info=weights_info, record=record, total_s=total_s, output=output,
    written=written,
  )  # fmt: skip
  # None of its own yet (`figures` notes each): a record of a run killed before its figures
  # claims only the earlier run's still there, by digest (trial 49: they were nobody's then);
  # none by name (trial 43: as an older record, it claimed them so, and pictures were lost).
  earlier = earlier if isinstance(earlier, dict) else {}
  data['figures_sha256'] = {
    f.name: d for f in (paths['loss'], paths['sheet'])
    if isinstance(d := earlier.get(f.name), str) and not output_names.changed(f, d) and f.is_file()
  }  # fmt: skip
  data['figures_drawn'] = False  # trial 47 N2: a batch killed while drawing them called it done
  text = json.dumps(data, indent=1)
  replace = replaceable is None or paths['json'] in replaceable
  atomic.write(paths['json'], lambda tmp: Path(tmp).write_text(text), replace=replace)
  if written is None:
    kept = figures(paths, data['history'], [content, *styles, result], intermediates,
                   replaceable=replaceable)  # fmt: skip
    note_figures(paths, kept)
  return paths


def note_figures(paths: dict[str, Path], kept: Collection[Path] = ()) -> None:
  """Adds the loss plot's and sheet's SHA-256 to the record at paths['json']: a picture saved
  over one since is someone's (trial 34: claimed by name, a rerun replaced it)."""
  data = json.loads(paths['json'].read_text())
  figures = [paths[k] for k in ('loss', 'sheet') if paths[k] not in kept and paths[k].is_file()]
  data['figures_sha256'] = {p.name: output_names.file_sha256(p) for p in figures}
  data.pop('figures_drawn', None)
  text = json.dumps(data, indent=1)
  atomic.write(paths['json'], lambda tmp: Path(tmp).write_text(text))


def _note_figure(paths: dict[str, Path], figure: Path, tmp: str) -> None:
  """Adds `figure`'s digest (its file `tmp`, before the rename) to the record's figures_sha256."""
  data = json.loads(paths['json'].read_text())
  data['figures_sha256'] = {
    **data.get('figures_sha256', {}),
    figure.name: output_names.file_sha256(tmp),
  }
  text = json.dumps(data, indent=1)
  atomic.write(paths['json'], lambda t: Path(t).write_text(text))


def figures(
  paths: dict[str, Path], history: list, row: Sequence, intermediates=(), *, replaceable=None
) -> list[Path]:
  """The loss plot and the contact sheet (`row`: content, styles, result).

  Returns those not written because a file not in `replaceable` (None: any
  may be replaced) was there by then, which is kept. Each is noted in the record by its digest
  before it is put in place (trial 49: killed while the sheet was drawn, the loss plot drawn
  was nobody's, and every rerun was refused for it).
  """
  kept = []
  for key, draw in (
    ('loss', lambda path, **kw: loss_plot(history, path, **kw)),
    ('sheet', lambda path, **kw: contact_sheet([list(row), list(intermediates)], path, **kw)),
  ):
    try:
      draw(paths[key], replace=replaceable is None or paths[key] in replaceable,
           then=functools.partial(_note_figure, paths, paths[key]))  # fmt: skip
    except errors.FileAppeared:
      kept.append(paths[key])
  return kept
