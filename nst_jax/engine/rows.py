"""A batch row: one image problem's host arrays, and what each stage makes of them.

The engine optimises rows; the runs (nst_jax.runs: the runner, batches, videos
and `stylize`) make them from files and arrays. Everything here is host-side
array work done once per row and stage (colour controls, resizing), before the
device computation.
"""

from collections.abc import Sequence
import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from nst_jax import config as config_lib
from nst_jax.core import color
from nst_jax.core import pixels


@dataclasses.dataclass
class Row:
  """One image problem of a batch: host arrays at the output size, RGB in [0, 1].

  Attributes:
    content: [H, W, 3].
    styles: one [Hs, Ws, 3] per style image, at the output's style size.
    content_weight, style_weight, tv_weight: this row's weights (None: the
      config's).
    content_mask: [H, W] or None.
    style_masks: [S, H, W], one per style, or None.
    init_rgb: the start image (resized to the content's size): when the
      config's init names a file, or a row's own (a video frame's predecessor).
    checkpoint: this row's checkpoint (a NAME.ckpt path), or None.
    extra: per-row data for a custom loss (`Targets.extra`), or a callable
      (stage width, stage height) -> that data.
  """

  content: np.ndarray
  styles: Sequence[np.ndarray]
  content_weight: float | None = None
  style_weight: float | None = None
  tv_weight: float | None = None
  content_mask: np.ndarray | None = None
  style_masks: np.ndarray | None = None
  init_rgb: np.ndarray | None = None
  checkpoint: Path | None = None
  extra: Any = None


def filler_row(height: int, width: int, seed: int = 1234) -> Row:
  """A row that only pads a batch: grey content styled by seeded noise (finite, cheap)."""
  noise = np.random.default_rng(seed).uniform(size=(height, width, 3)).astype(np.float32)
  return Row(content=np.full((height, width, 3), 0.5, np.float32), styles=[noise])


def scaled(h: int, w: int, ratio: float) -> tuple[int, int]:
  return max(1, round(h * ratio)), max(1, round(w * ratio))


def resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
  if x.shape[:2] == (h, w):
    return x
  return np.asarray(pixels.resize(jnp.asarray(x)[None], h, w)[0])


def resize_masks(m: np.ndarray | None, h: int, w: int) -> np.ndarray | None:
  """[..., H, W] -> [..., h, w], antialiased and clipped to [0, 1]."""
  if m is None or m.shape[-2:] == (h, w):
    return m
  lead = m.shape[:-2]
  flat = jnp.asarray(m).reshape(-1, *m.shape[-2:])[..., None]
  out = pixels.resize(flat, h, w)[..., 0]
  return np.asarray(jnp.clip(out.reshape(*lead, h, w), 0.0, 1.0))


def prepare_colors(row: Row, controls: config_lib.ColorConfig) -> Row:
  """The row as the optimisation sees it: luminance only, or the styles' colours matched."""
  mode = controls.preserve_colors
  content = jnp.asarray(row.content)[None]
  if mode == 'luminance':
    styles = [
      np.asarray(color.luminance_image(jnp.asarray(s)[None], like=content)[0]) for s in row.styles
    ]
    init = row.init_rgb
    if init is not None:
      init = np.asarray(color.luminance_image(jnp.asarray(init)[None])[0])
    work = np.asarray(color.luminance_image(content)[0])
    return dataclasses.replace(row, content=work, styles=styles, init_rgb=init)
  if mode == 'histogram':
    styles = [
      np.asarray(color.match_color(jnp.asarray(s)[None], content, controls.color_match)[0])
      for s in row.styles
    ]
    return dataclasses.replace(row, styles=styles)
  return row


def stage_inputs(row: Row, h: int, w: int, ratio: float, convention: pixels.InputConvention):
  """A row's inputs at a stage of size h x w (`ratio` of the output).

  Returns:
    (content [1, h, w, 3] and the styles, each [1, ...] resized by `ratio`,
    in network space; the content mask [h, w] and style masks [S, h, w]
    resized, or None).
  """
  content = pixels.preprocess(resize(row.content, h, w)[None], convention)
  styles = [
    pixels.preprocess(resize(s, *scaled(*s.shape[:2], ratio))[None], convention) for s in row.styles
  ]
  return content, styles, resize_masks(row.content_mask, h, w), resize_masks(row.style_masks, h, w)
