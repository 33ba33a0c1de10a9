"""Synthetic clips with known motion, for the flow, video and video-run tests and bench_video.

The clip: a smooth random texture translating right by `dx` px per frame
(sub-pixel), with an opaque textured square moving left by `ds` px per frame
in front of it. So the true flow, the occluded pixels and the disoccluded ones
are known exactly.
"""

from fractions import Fraction
from pathlib import Path

import numpy as np


def texture(height: int, width: int, seed: int) -> np.ndarray:
  """A smooth random RGB texture in [0, 1] (blurred noise: DIS has gradients to follow)."""
  import cv2

  t = np.random.default_rng(seed).uniform(size=(height, width, 3)).astype(np.float32)
  t = cv2.GaussianBlur(t, (0, 0), 1.5)
  return (t - t.min()) / (t.max() - t.min())


def moving_square_clip(n=5, height=72, width=96, dx=1.3, ds=2.0):
  """Frames [H, W, 3] float32 in [0, 1] and the square's mask [H, W] for each frame.

  The background at frame t is the texture sampled at x - t*dx (it moves right
  by dx); the square's left edge is at 0.6*W - t*ds (it moves left by ds).
  """
  import cv2

  side = height // 4
  background = texture(height + 20, width + 40, 0)
  square = texture(side, side, 1) * 0.6 + 0.4 * np.array([1, 0.2, 0.2], np.float32)
  gx, gy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
  frames, masks = [], []
  for t in range(n):
    frame = cv2.remap(background, gx + 20 - t * dx, gy + 10, cv2.INTER_LINEAR)
    sx, sy = gx - (round(0.6 * width) - t * ds), gy - height // 2
    inside = (sx >= 0) & (sx < side - 1) & (sy >= 0) & (sy < side - 1)
    patch = cv2.remap(square, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    frames.append(np.where(inside[..., None], patch, frame).astype(np.float32))
    masks.append(inside)
  return frames, masks


def true_backward_flow(masks, t, dx=1.3, ds=2.0):
  """f_{t -> t-1}: where each pixel of frame t was in frame t-1."""
  flow = np.zeros((*masks[t].shape, 2), np.float32)
  flow[..., 0] = -dx
  flow[masks[t], 0] = ds
  return flow


def write_mp4(path, frames, fps=24, *, audio_seconds=None, codec='libx264', pix_fmt='yuv420p',
              times=None):  # fmt: skip
  """Encodes frames (and optionally a sine tone) with PyAV; `times` gives each frame's pts in s."""
  import av

  fps = Fraction(fps)
  with av.open(str(path), 'w') as out:
    stream = out.add_stream(codec, rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = pix_fmt
    if times is not None:
      stream.codec_context.time_base = Fraction(1, 1000)
    audio = None
    if audio_seconds:
      audio = out.add_stream('aac', rate=44100)
      audio.layout = 'mono'
    for k, rgb in enumerate(frames):
      has_alpha = rgb.shape[-1] == 4
      pixels = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
      frame = av.VideoFrame.from_ndarray(pixels, format='rgba' if has_alpha else 'rgb24')
      if times is not None:
        frame.pts, frame.time_base = int(round(times[k] * 1000)), Fraction(1, 1000)
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)
    if audio is not None:
      _sine(out, audio, audio_seconds)
  return Path(path)


def _sine(out, stream, seconds):
  import av

  rate, chunk = 44100, 1024
  t = np.arange(int(seconds * rate)) / rate
  samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
  for start in range(0, len(samples), chunk):
    part = samples[start : start + chunk][None]
    frame = av.AudioFrame.from_ndarray(part, format='fltp', layout='mono')
    frame.sample_rate, frame.pts = rate, start
    for packet in stream.encode(frame):
      out.mux(packet)
  for packet in stream.encode():
    out.mux(packet)


def audio_seconds(path) -> float:
  """Duration of the first audio stream, from its decoded samples (0 when none)."""
  import av

  with av.open(str(path)) as c:
    if not c.streams.audio:
      return 0.0
    stream = c.streams.audio[0]
    return sum(f.samples for f in c.decode(stream)) / stream.rate
