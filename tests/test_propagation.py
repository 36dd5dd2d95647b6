"""Optical-flow propagation of scores and labels (ovseg_cli.segment.propagation), on synthetic frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ovseg_cli.segment.propagation import (
    CUT_SHARE,
    Flow,
    FlowEstimator,
    KeyframeSettings,
    blend_weight,
    identity_flow,
    propagate_labels,
    propagate_scores,
    warp_labels,
    warp_scores,
    working_size,
)


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture with strong contrast (good for optical flow)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.5)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (255 * smooth).astype(np.uint8)


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The image moved right by dx and down by dy (what the camera sees when it pans)."""
    return np.roll(image, (dy, dx), axis=(0, 1))


def test_identity_flow_leaves_scores_and_labels_unchanged() -> None:
    scores = torch.randn(5, 7, 9, generator=torch.Generator().manual_seed(0))
    flow = identity_flow(60, 80)  # any resolution: it is resized to the scores' grid
    torch.testing.assert_close(warp_scores(scores, flow), scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(propagate_scores(scores, flow), scores, atol=1e-5, rtol=0)
    labels = np.random.default_rng(0).integers(0, 6, (30, 40), dtype=np.uint8)
    np.testing.assert_array_equal(propagate_labels(labels, flow), labels)


def test_flow_between_identical_frames_is_zero() -> None:
    flows = FlowEstimator("fast", None)
    grey = flows.grey(texture(64, 96))
    flow = flows(grey, grey)
    assert np.abs(flow.field).max() < 0.05 and flow.bad_share == 0.0


@pytest.mark.parametrize("size", [None, 48])  # full resolution, and a reduced working one
def test_known_translation_moves_labels_by_it(size: int | None) -> None:
    key = texture(96, 128)
    frame = shifted(key, 5, 3)
    labels = np.zeros((96, 128), np.uint8)
    labels[20:50, 30:70] = 1
    labels[60:90, 80:120] = 2
    flows = FlowEstimator("medium", size)
    flow = flows(flows.grey(frame), flows.grey(key))
    inner = (slice(12, -12), slice(12, -12))  # away from pixels that came in at the border
    scale = 128 / flow.field.shape[1]
    assert np.median(flow.field[inner][..., 0]) * scale == pytest.approx(-5, abs=0.3)
    assert np.median(flow.field[inner][..., 1]) * scale == pytest.approx(-3, abs=0.3)
    moved = warp_labels(labels, flow)
    agree = (moved == shifted(labels, 5, 3))[inner].mean()
    assert agree > 0.98


def test_scores_move_on_their_own_grid() -> None:
    # 128x128 frames, scores one cell per 4 px: an 8 px pan is 2 cells
    key = texture(128, 128, seed=1)
    flows = FlowEstimator("medium", None)
    flow = flows(flows.grey(shifted(key, 8, 0)), flows.grey(key))
    scores = torch.zeros(2, 32, 32)
    scores[1, :, 10:16] = 5.0
    moved = warp_scores(scores, flow)
    assert moved[1, 8:24, 12:18].min() > 4.5  # the band moved 2 cells right
    assert moved[1, 8:24, 11].max() < 0.5 and moved[1, 8:24, 18].max() < 0.5


def test_flow_resizing_scales_vectors() -> None:
    field = np.zeros((40, 60, 2), np.float32)
    field[..., 0], field[..., 1] = 6.0, -3.0
    flow = Flow(field, np.zeros((40, 60), np.uint8))
    small = flow.resized(10, 15)
    np.testing.assert_allclose(small[..., 0], 1.5, atol=1e-5)
    np.testing.assert_allclose(small[..., 1], -0.75, atol=1e-5)
    assert flow.resized(80, 120)[..., 0].mean() == pytest.approx(12.0)
    assert working_size(720, 1280, 240) == (240, 427)
    assert working_size(64, 96, 240) == (64, 96)  # never upsampled


def test_blend_weights_follow_time_and_drop_a_keyframe_across_a_cut() -> None:
    same = identity_flow(20, 30)
    np.testing.assert_allclose(blend_weight(same, same, 0.25), 0.75, atol=1e-5)
    error = np.zeros((20, 30), np.uint8)
    error[:, 22:] = 80  # the previous keyframe mispredicts a strip (an occlusion)
    weight = blend_weight(Flow(same.field, error), same, 0.25)
    assert weight[:, :15].min() > 0.7 and weight[:, 27:].max() < 0.05
    cut = Flow(same.field, np.full((20, 30), 200, np.uint8))
    assert cut.bad_share > CUT_SHARE
    np.testing.assert_array_equal(blend_weight(same, cut, 0.9), 1.0)
    np.testing.assert_array_equal(blend_weight(cut, same, 0.1), 0.0)


def test_bidirectional_scores_are_the_mixture_of_probabilities() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    flow = identity_flow(12, 16)
    out = propagate_scores(a, flow, b, flow, t=0.25)
    expected = 0.75 * a.softmax(0) + 0.25 * b.softmax(0)
    torch.testing.assert_close(out.softmax(0), expected, atol=1e-5, rtol=1e-4)
    la = np.zeros((12, 16), np.uint8)
    lb = np.ones((12, 16), np.uint8)
    assert (propagate_labels(la, flow, lb, flow, t=0.25) == 0).all()
    assert (propagate_labels(la, flow, lb, flow, t=0.75) == 1).all()


def test_keyframe_schedule() -> None:
    fixed = KeyframeSettings(interval=4)
    assert [fixed.is_keyframe(s) for s in (1, 3, 4)] == [False, False, True]
    assert not KeyframeSettings().propagating and fixed.propagating
    auto = KeyframeSettings(interval="auto", max_interval=6, max_error=0.1)
    calm = identity_flow(10, 10)
    torn = Flow(calm.field, np.where(np.arange(100).reshape(10, 10) < 20, 255, 0).astype(np.uint8))
    assert not auto.is_keyframe(3, calm) and auto.is_keyframe(6, calm)
    assert auto.is_keyframe(2, torn)  # 20% of the frame mispredicted
    assert auto.describe()["keyframe_interval"] == "auto"
