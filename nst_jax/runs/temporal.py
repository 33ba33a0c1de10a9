"""The temporal part of video style transfer (Ruder et al. 2016): flows, start images, the loss.

`video_objective` adds `temporal_weight * mean(c (x - warp(x_prev))^2)` to a
frame's objective; `from_neighbour` builds a frame's start image and the targets'
`extra` from its neighbour's result and the flows between them; `Flows`
computes consecutive frames' flows ahead in a thread (one pass), `PairFlows`
any two frames' on demand (several passes). The runs themselves are in
nst_jax.runs.video.
"""

import concurrent.futures
import time

import numpy as np

from nst_jax.core import losses
from nst_jax.core import objective
from nst_jax.core import pixels
from nst_jax.runs import flow as flow_lib


def video_objective(image, params, targets, *, model, loss_spec):
  """`core.objective` plus the temporal term of Ruder et al. (`losses.temporal_loss`).

  `targets.extra` holds 'previous' [H, W, 3] (the neighbour's result warped
  into this frame, network space), 'weight' [H, W] (c) and
  'temporal_weight' (a scalar).
  """
  total, aux = objective.objective(image, params, targets, model=model, loss_spec=loss_spec)
  t = targets.extra
  l_t = losses.temporal_loss(image, t['previous'], t['weight'])
  total = total + t['temporal_weight'] * l_t
  return total, {**aux, 'total': total, 'temporal': l_t}


class Flows:
  """Flows between consecutive content frames, computed ahead in a thread (the host's work)."""

  def __init__(self, frames: list[np.ndarray], preset: str):
    self.frames = frames
    self.preset = preset
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='nst-jax-flow')
    self.pending: dict[int, concurrent.futures.Future] = {}
    self.seconds = 0.0

  def _compute(self, t: int) -> flow_lib.Flows:
    t0 = time.perf_counter()
    out = flow_lib.flows(self.frames[t - 1], self.frames[t], self.preset)
    self.seconds += time.perf_counter() - t0
    return out

  def prefetch(self, t: int) -> None:
    if 0 < t < len(self.frames) and t not in self.pending:
      self.pending[t] = self.pool.submit(self._compute, t)

  def get(self, t: int) -> tuple[flow_lib.Flows, float]:
    """The flows into frame t, and the seconds the run waited for them."""
    self.prefetch(t)
    t0 = time.perf_counter()
    out = self.pending.pop(t).result()
    return out, time.perf_counter() - t0

  def close(self) -> None:
    self.pool.shutdown(wait=False, cancel_futures=True)


def from_neighbour(prev_rgb, flows, weight_scale, convention, content):
  """(start image, extra targets) for a frame from its neighbour's result and the flows."""
  warped = np.clip(flow_lib.warp(prev_rgb, flows.backward), 0.0, 1.0)
  c = flows.weight
  start = c[..., None] * warped + (1.0 - c[..., None]) * content
  extra = {
    'previous': np.asarray(pixels.preprocess(warped[None], convention)[0]),
    'weight': c,
    'temporal_weight': np.float32(weight_scale),
  }
  return start, extra


def no_temporal(content, convention):
  h, w = content.shape[:2]
  return {
    'previous': np.zeros((h, w, 3), np.float32),
    'weight': np.zeros((h, w), np.float32),
    'temporal_weight': np.float32(0.0),
  }


class PairFlows:
  """Flows between any two frames, on demand and kept (the multi-pass needs both directions)."""

  def __init__(self, frames, preset):
    self.frames, self.preset = frames, preset
    self.cache: dict[tuple[int, int], np.ndarray] = {}
    self.seconds = 0.0

  def flow(self, a: int, b: int) -> np.ndarray:
    if (a, b) not in self.cache:
      t0 = time.perf_counter()
      self.cache[(a, b)] = flow_lib.dis_flow(self.frames[a], self.frames[b], self.preset)
      self.seconds += time.perf_counter() - t0
    return self.cache[(a, b)]

  def into(self, k: int, j: int) -> flow_lib.Flows:
    """Frame j brought into frame k: f_{k->j}, f_{j->k} and k's consistency weight."""
    backward, forward = self.flow(k, j), self.flow(j, k)
    return flow_lib.Flows(backward, forward, flow_lib.consistency(backward, forward))
