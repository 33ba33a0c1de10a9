"""Optical flow between video frames, warping, and where the flow can be trusted.

Flow comes from OpenCV's DIS optical flow (Kroeger et al. 2016: dense inverse
search, no learned model to download), computed forward and backward for each
pair of consecutive frames on the host. Ruder et al.'s consistency check turns
the pair into a per-pixel weight c in [0, 1]: 0 where the forward and
backward flows do not cancel (occluded or disoccluded) and at motion
boundaries, 1 elsewhere.

Conventions: a flow f_{a->b} is [H, W, 2] (dx, dy) in pixels of frame a, with
a(p) ~ b(p + f(p)). Warping frame b into frame a's coordinates samples b at
p + f_{a->b}(p) (`warp`); so the previous stylised frame is brought into the
current frame with the flow from the current frame to the previous one.

References:
  Ruder, Dosovitskiy & Brox 2016, "Artistic style transfer for videos", GCPR
  (arXiv:1604.08610), Sec. 3.1 (the consistency check, eqs. 2-3).
  Kroeger, Timofte, Dai & Van Gool 2016, "Fast Optical Flow using Dense
  Inverse Search", ECCV.
"""

from typing import NamedTuple

import numpy as np

# Ruder et al.'s thresholds (eqs. 2 and 3), in pixels^2.
OCCLUSION_RELATIVE = 0.01
OCCLUSION_ABSOLUTE = 0.5
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002
PRESETS = ('ultrafast', 'fast', 'medium')


class Flows(NamedTuple):
  """Flow between frames t-1 and t, and the weight of the temporal term at t.

  Attributes:
    backward: [H, W, 2] float32, f_{t -> t-1}: where each pixel of frame t was.
    forward: [H, W, 2] float32, f_{t-1 -> t}.
    weight: [H, W] float32 in [0, 1], c: 1 where frame t's pixel is seen in
      frame t-1 and the flow is reliable, 0 at occlusions and motion boundaries.
  """

  backward: np.ndarray
  forward: np.ndarray
  weight: np.ndarray


def _gray_u8(rgb: np.ndarray) -> np.ndarray:
  """RGB float in [0, 1] -> 8-bit luma (what DIS works on)."""
  y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
  return np.clip(np.round(y * 255), 0, 255).astype(np.uint8)


def dis_flow(a: np.ndarray, b: np.ndarray, preset: str = 'medium') -> np.ndarray:
  """f_{a->b}: DIS optical flow from RGB frame a to RGB frame b, [H, W, 2] float32."""
  import cv2  # opencv-python-headless: only video runs need it

  presets = {
    'ultrafast': cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    'fast': cv2.DISOPTICAL_FLOW_PRESET_FAST,
    'medium': cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
  }
  dis = cv2.DISOpticalFlow_create(presets[preset])
  return dis.calc(_gray_u8(a), _gray_u8(b), None).astype(np.float32)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """Samples `image` at p + flow(p), bilinear, edges clamped: [H, W, C] -> [H, W, C].

  With flow = f_{a->b} and image = frame b (or anything in b's pixels), the
  result is in a's coordinates.
  """
  import cv2

  h, w = flow.shape[:2]
  grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
  map_x = grid_x + flow[..., 0]
  map_y = grid_y + flow[..., 1]
  out = cv2.remap(
    np.ascontiguousarray(image, np.float32),
    map_x,
    map_y,
    interpolation=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_REPLICATE,
  )
  return out.reshape(image.shape)


def consistency(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
  """Ruder et al.'s weights c for frame t from f_{t->t-1} and f_{t-1->t}: [H, W] in {0, 1}.

  With w = f_{t->t-1}(p) and w~ = f_{t-1->t}(p + w) (the forward flow carried
  to frame t's pixels), p is occluded or disoccluded when the two do not cancel:

    |w~ + w|^2 > 0.01 (|w~|^2 + |w|^2) + 0.5,

  and on a motion boundary when the backward flow changes fast:

    |grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002.

  c is 0 at either, 1 elsewhere.
  """
  carried = warp(forward, backward)
  total = np.sum(np.square(carried + backward), axis=-1)
  occluded = (
    total
    > OCCLUSION_RELATIVE * (np.sum(np.square(carried), -1) + np.sum(np.square(backward), -1))
    + OCCLUSION_ABSOLUTE
  )
  du = np.gradient(backward[..., 0])
  dv = np.gradient(backward[..., 1])
  grad = du[0] ** 2 + du[1] ** 2 + dv[0] ** 2 + dv[1] ** 2
  boundary = grad > BOUNDARY_RELATIVE * np.sum(np.square(backward), -1) + BOUNDARY_ABSOLUTE
  return np.where(occluded | boundary, 0.0, 1.0).astype(np.float32)


def flows(previous: np.ndarray, current: np.ndarray, preset: str = 'medium') -> Flows:
  """Both flows between two RGB frames and the consistency weight for `current`."""
  backward = dis_flow(current, previous, preset)
  forward = dis_flow(previous, current, preset)
  return Flows(backward, forward, consistency(backward, forward))
