"""Optical flow, warping and the consistency weight against a clip with known motion."""

import cv2
import numpy as np
import pytest
import video_clips

from nst_jax.runs import flow


def _boundary_band(masks, t, radius=3):
  """Pixels within `radius` of the square's edges at t-1 or t (flow there is undefined)."""
  both = (masks[t - 1] | masks[t]).astype(np.uint8)
  kernel = np.ones((2 * radius + 1,) * 2, np.uint8)
  return (cv2.dilate(both, kernel) - cv2.erode(both, kernel)).astype(bool)


@pytest.fixture(scope='module')
def clip():
  return video_clips.moving_square_clip(n=3, height=96, width=128)


def _trusted(masks, t):
  """Pixels whose true flow is defined: not disoccluded, off the edges and the entering border."""
  disoccluded = masks[t - 1] & ~masks[t]
  valid = ~disoccluded & ~_boundary_band(masks, t)
  valid[:, :4] = False  # came in from outside the frame
  return valid


def test_dis_flow_matches_the_known_motion(clip):
  frames, masks = clip
  got = flow.dis_flow(frames[2], frames[1])
  truth = video_clips.true_backward_flow(masks, 2)
  error = np.sqrt(np.sum((got - truth) ** 2, -1))[_trusted(masks, 2)]
  assert error.mean() < 0.5, error.mean()
  assert got.shape == (96, 128, 2) and got.dtype == np.float32


def test_consistency_weight_finds_the_disoccluded_area(clip):
  frames, masks = clip
  f = flow.flows(frames[1], frames[2])
  disoccluded = masks[1] & ~masks[2]
  assert disoccluded.sum() > 40
  # Ruder et al.: c = 0 where the background reappears from behind the square.
  assert (f.weight[disoccluded] < 0.5).mean() > 0.9
  # and c = 1 on nearly all of the trusted area (false alarms cost consistency, not correctness)
  assert (f.weight[_trusted(masks, 2)] > 0.5).mean() > 0.95
  assert f.weight.min() >= 0 and f.weight.max() <= 1


def test_warp_samples_at_p_plus_flow():
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(12, 16, 3)).astype(np.float32)
  shift = np.zeros((12, 16, 2), np.float32)
  shift[..., 0], shift[..., 1] = 2.0, 1.0  # sample 2 px right, 1 px down
  got = flow.warp(image, shift)
  np.testing.assert_allclose(got[:-1, :-2], image[1:, 2:], atol=1e-6)


def test_consistency_is_one_where_flows_cancel_and_zero_where_they_do_not():
  h, w = 20, 24
  backward = np.zeros((h, w, 2), np.float32)
  backward[..., 0] = -1.0
  forward = -backward
  np.testing.assert_array_equal(flow.consistency(backward, forward)[:, 2:-2], 1.0)
  broken = forward.copy()
  broken[5:10, 5:10, 0] = -3.0  # forward flow points the other way there
  c = flow.consistency(backward, broken)
  # backward sends (y, x) to (y, x-1); pixels landing inside the broken block see |b + f| = 4
  assert (c[6:9, 7:10] == 0).all()
  assert c[15, 15] == 1
