"""Checks of guidance masks as the API takes them: uint8 or float, in [0, 1], not labels.

One rule for every mask argument (`make_targets`, `objective`, `stylize`) and
the mask files (`nst_jax.io.images.load_mask` reads `FAINT_MASK`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import errors


def mask_float(m: np.ndarray, name: str) -> np.ndarray:
  """A concrete mask as float32: uint8 divided by 255, refused when it may be labels.

  A uint8 mask of 0s and 1s (or small labels, at most `FAINT_MASK`) would
  weigh its term 1/255 where it means 1 (trials 13, 14), and so would a
  label map of more classes, perhaps with 255 on the boundaries (PASCAL
  VOC's void, trials 16, 17): grey levels up to `MAX_LABEL` only (besides 0
  and 255), several of them or beside 255. A weak graded mask looks the
  same, so the message names both fixes (`label_fix`).
  """
  if m.dtype != np.uint8:
    return m.astype(np.float32)
  # Each mask on its own (the last two axes): a 0/1 one stacked with a 0/255
  # one passed on the stack's maximum (trial 15).
  for one in m.reshape(-1, *m.shape[-2:]) if m.ndim >= 2 and m.size else []:
    top = int(one.max())
    if 1 <= top <= FAINT_MASK:
      held = 'only 0 and 1' if top == 1 else f'values up to {top} only'
      raise errors.ConfigError(
        f'{name} is uint8 holding {held}, which weigh at most {top}/255 (uint8 masks are divided '
        'by 255); multiply it by 255, or give it as floats in [0, 1]'
      )
    if levels := label_levels(one):
      raise errors.ConfigError(f'{name} is uint8 with {levels}: {label_fix("m / 255")}')
  return m / np.float32(255)


def label_levels(levels: np.ndarray) -> str | None:
  """How [H, W] 8-bit grey levels look like a label map ('3 grey levels from 7 to 20 ...'), or None.

  Grey levels up to `MAX_LABEL` only besides 0 and 255, several of them or
  beside 255, filling regions as labels do: at least `MIN_LABEL_AREA` of
  the mask (and 4 pixels) whose four neighbours hold the same level. An
  anti-aliased or resized edge of a 0/255 mask is one grey line between the
  two, never a region (trial 18: a straight edge's level 42 was refused).
  """
  inner = np.setdiff1d(np.unique(levels), (0, 255))
  white = bool((levels == 255).any())
  if not (inner.size and inner.max() <= MAX_LABEL and (inner.size >= 2 or white)):
    return None
  middle = levels[1:-1, 1:-1]
  flat = (
    (middle == levels[:-2, 1:-1]) & (middle == levels[2:, 1:-1])
    & (middle == levels[1:-1, :-2]) & (middle == levels[1:-1, 2:])
  )  # fmt: skip
  if np.count_nonzero(flat & np.isin(middle, inner)) < max(4, MIN_LABEL_AREA * levels.size):
    return None
  besides = ' besides 255' if white else ''
  low, high = int(inner.min()), int(inner.max())
  said = f'grey level {low}' if low == high else f'{inner.size} grey levels from {low} to {high}'
  return f'{said}{besides} and none brighter'


def label_fix(as_weights: str) -> str:
  """The two readings of a mask that may hold labels, each with its fix."""
  return (
    'if it holds labels, give the region of label k: (labels == k).astype(np.float32); if its '
    f'values are weights, give them as floats in [0, 1]: {as_weights}'
  )


# The brightest a uint8 mask (or an 8-bit mask file) may be and still be read
# as weights: at most 15 of 255 it is a label map (0, 1, 2, ...), not a region.
FAINT_MASK = 15
# The largest label a uint8 label map is taken to hold: a soft or anti-aliased
# 0/255 mask has grey levels far above it, a label map (20 VOC classes, 34
# Cityscapes ids, 40 NYU classes) only small ones.
MAX_LABEL = 63
# The least share of a mask that its low grey levels must fill, away from any
# other level, to read as labels rather than an edge's anti-aliasing.
MIN_LABEL_AREA = 0.01


def mask_range(m: np.ndarray, name: str) -> None:
  """Refuses a float mask with values outside [0, 1] or not finite, naming the fix."""
  if not np.isfinite(m).all():
    raise errors.ConfigError(f'{name} has NaN or infinite values; masks are finite, in [0, 1]')
  if m.size and (m.min() < 0 or m.max() > 1):
    fix = 'scale it into [0, 1]'
    if m.max() > 1 and np.array_equal(
      m, np.round(m)
    ):  # whole numbers: labels (-1: ignored), or 0..255
      fix = label_fix('m / 255' if m.max() <= 255 else 'm / m.max()')
    raise errors.ConfigError(
      f'{name} has values from {m.min():.4g} to {m.max():.4g}; masks are in [0, 1] '
      f'(uint8 masks are divided by 255): {fix}'
    )


def mask_values(mask: Any, name: str) -> jax.Array | None:
  """A guidance mask as float32 in [0, 1] (uint8 divided by 255), as stylize takes masks.

  Values are checked where concrete: a 0..255 float mask would weight its
  term 255 times, a negative one reward the mismatch, a NaN poison the loss.
  """
  if mask is None:
    return None
  if isinstance(mask, jax.core.Tracer):
    return mask / jnp.float32(255) if mask.dtype == jnp.uint8 else mask.astype(jnp.float32)
  m = mask_float(np.asarray(mask), name)
  mask_range(m, name)
  return jnp.asarray(m)


def per_image(value, n: int, lead: int, shape: tuple[int, ...], what: str) -> list:
  """Per-image masks, as stylize takes them: n masks from one or [n, ...] of them.

  Args:
    value: the caller's mask array (or None: no mask).
    n: the batch's size.
    lead: the rank of one image's masks (2: [H, W]; 3: [S, H, W]).
    shape: one image's masks' shape.
    what: the argument's name, for the messages.

  Returns:
    n float32 arrays of `shape` (or n Nones).
  """
  if value is None:
    return [None] * n
  m = mask_float(np.asarray(value), what)
  mask_range(m, what)
  given = m.shape
  if m.ndim == lead:
    m = np.broadcast_to(m, (n, *m.shape))
  if m.shape[1:] != shape or m.shape[0] not in (1, n):
    raise errors.ConfigError(f'{what} has shape {given}; {MASK_HELP[what].format(*shape)}')
  return [m[min(k, m.shape[0] - 1)] for k in range(n)]


def mask_size(value, shape: tuple[int, ...], what: str) -> None:
  """Refuses masks whose last two axes are not the content's [H, W], first of all.

  A channel axis ([S, H, W, 1] from stacked greyscale images) was read as
  [N, S, H, W] and reported as 32 masks for 2 styles (trial 16).
  """
  try:
    given = np.shape(value) if value is not None else shape
  except ValueError:  # a list of masks of several sizes (trial 35: numpy's 'inhomogeneous')
    sizes = ', '.join(str(np.shape(m)) for m in value)
    raise errors.ConfigError(
      f"{what} holds masks of several shapes ({sizes}); each is at the content's size: "
      f'{MASK_HELP[what].format(*shape)}'
    ) from None
  if given[-2:] == shape[-2:]:
    return
  fix = ''
  if len(given) >= 3 and given[-3:-1] == shape[-2:] and given[-1] in (1, 3, 4):
    fix = (
      '; drop its channel axis: m[..., 0] (nst_jax.io.images.load_mask reads a mask file as [H, W])'
    )
  raise errors.ConfigError(f'{what} has shape {given}; {MASK_HELP[what].format(*shape)}{fix}')


# The fix, formatted with the shape a mask must have after its batch axis.
MASK_HELP = {
  'content_mask': 'give [H, W] = [{0}, {1}] or [N, {0}, {1}], at the content size',
  'style_masks': 'give one mask per style, [S, H, W] = [{0}, {1}, {2}] or [N, {0}, {1}, {2}]',
}
