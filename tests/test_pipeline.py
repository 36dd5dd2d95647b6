"""The library API: segment_video as an iterator of per-frame results."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from video_factory import make_video

from ovseg_cli import FrameResult, segment_video
from ovseg_cli.segment.masks import _mask_on_device, logits_to_mask


@pytest.mark.parametrize(
    ("n", "grid", "size"),
    [
        (5, (14, 25), (720, 1280)),
        (40, (7, 9), (61, 83)),
        (1, (3, 3), (5, 7)),
        (6, (10, 20), (5, 9)),
    ],
)
def test_logits_to_mask_equals_interpolate_then_argmax(n, grid, size) -> None:
    logits = torch.randn(n, *grid, generator=torch.Generator().manual_seed(n))
    ref = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = logits_to_mask(logits, size)
    assert mask.dtype == np.uint8 and mask.shape == size
    np.testing.assert_array_equal(mask, ref.argmax(0).numpy())
    # the GPU path (matrix products on the device), run here on the CPU
    np.testing.assert_array_equal(_mask_on_device(logits, size, None, None), mask)


def test_segment_video_yields_one_result_per_frame(small_video: Path, tiny_model) -> None:
    stream = segment_video(small_video, "road,sky,horse", model=tiny_model)
    results = list(stream)
    assert len(results) == 12 and stream.skipped == 0
    assert [r.index for r in results] == list(range(12))
    r = results[3]
    assert isinstance(r, FrameResult)
    assert r.frame.shape == (64, 96, 3) and r.mask.shape == (64, 96)
    assert r.logits.shape == (3, 8, 12) and r.mask.max() < 3
    assert r.time == pytest.approx(3 * 1001 / 30000)
    assert stream.vocabulary.names == ["road", "sky", "horse"]
    assert stream.state.frames == 12


def test_temporal_fusion_changes_results_and_can_be_turned_off(
    small_video: Path, tiny_model
) -> None:
    from ovseg_cli.segment.training_free import TrainingFreeSegmenter

    plain = TrainingFreeSegmenter(
        tiny_model.clip,
        fusion=None,
        size=tiny_model.size,
        dense_method="clearclip",
        templates="vild",
    )  # the fixture's model without its temporal fusion
    fused = [r.logits for r in segment_video(small_video, "a,b,c", model=tiny_model)]
    static = [r.logits for r in segment_video(small_video, "a,b,c", model=plain)]
    torch.testing.assert_close(fused[0], static[0])  # the first frame has no history
    assert not torch.allclose(fused[5], static[5])


def test_closing_early_stops_the_reader_thread(tmp_path: Path, tiny_model) -> None:
    video = make_video(tmp_path / "long.mp4", frames=120, size=(64, 48))
    before = threading.active_count()
    stream = segment_video(video, "a,b", model=tiny_model)
    next(stream)
    stream.close()
    assert threading.active_count() <= before
    with pytest.raises(StopIteration):
        next(stream)


def test_range_and_overrides(small_video: Path, tiny_weights: Path) -> None:
    stream = segment_video(
        small_video, ["road", "sky"], clip="ovseg-tiny", pretrained=str(tiny_weights),
        start=0.1, end=0.3, size=32, dense_method="naclip",
    )  # fmt: skip
    results = list(stream)
    assert [round(r.time, 3) for r in results] == [0.1, 0.133, 0.167, 0.2, 0.234, 0.267]
    assert results[0].logits.shape == (2, 4, 6)  # 64x96 seen at 32x48
    assert stream.model.describe()["dense_method"] == "naclip"
