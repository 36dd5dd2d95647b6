"""Keyframes, optical-flow propagation, bidirectional mode and batching in `segment`."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from video_factory import joined_clips, make_video

from ovseg_cli import segment_video
from ovseg_cli.classes import parse_classes
from ovseg_cli.cli import app
from ovseg_cli.segment.masks import logits_to_mask
from ovseg_cli.video.reader import VideoReader

SIZE = (96, 64)


def reference_results(video: Path, model, classes: str, keyframes: set[int] | None = None):
    """Logits and masks as the pipeline computed them before keyframes existed: one
    ``step`` per frame (or per listed keyframe, which alone update the state)."""
    vocabulary = model.encode_vocabulary(parse_classes(classes))
    state = model.init_state()
    out = {}
    with VideoReader(video) as reader:
        for frame in reader:
            if keyframes is not None and frame.index not in keyframes:
                continue
            logits, state = model.step(model.prepare(frame.rgb), state, vocabulary)
            logits = logits.float()
            out[frame.index] = (logits, logits_to_mask(logits, frame.rgb.shape[:2]))
    return out


def test_default_interval_gives_the_same_results_as_before(small_video: Path, tiny_model) -> None:
    stream = segment_video(small_video, "road,sky,horse", model=tiny_model)
    results = list(stream)
    reference = reference_results(small_video, tiny_model, "road,sky,horse")
    assert len(results) == len(reference) == 12
    for r in results:
        logits, mask = reference[r.index]
        assert r.is_keyframe
        assert torch.equal(r.logits, logits)
        np.testing.assert_array_equal(r.mask, mask)
    assert stream.keyframes == 12 and stream.peak_held == 1


def test_only_keyframes_run_the_model(small_video: Path, tiny_model) -> None:
    stream = segment_video(small_video, "a,b,c", model=tiny_model, keyframe_interval=4)
    results = list(stream)
    assert [r.index for r in results] == list(range(12))
    assert [r.index for r in results if r.is_keyframe] == [0, 4, 8]
    assert stream.state.frames == 3 and stream.keyframes == 3
    reference = reference_results(small_video, tiny_model, "a,b,c", keyframes={0, 4, 8})
    for r in results:
        assert r.mask.shape == (64, 96) and r.logits.shape == (3, 8, 12)
        if r.is_keyframe:  # the state saw the keyframes only, as in the reference
            assert torch.equal(r.logits, reference[r.index][0])


def test_bidirectional_blends_inside_and_goes_forward_after_the_last_keyframe(
    small_video: Path, tiny_model
) -> None:
    forward = list(segment_video(small_video, "a,b,c", model=tiny_model, keyframe_interval=4))
    both = list(
        segment_video(
            small_video, "a,b,c", model=tiny_model, keyframe_interval=4, bidirectional=True
        )
    )
    assert [r.index for r in both] == list(range(12))
    for f, b in zip(forward, both, strict=True):
        assert f.is_keyframe == b.is_keyframe
        if f.is_keyframe or f.index > 8:  # keyframes, and frames after the last one: forward
            torch.testing.assert_close(b.logits.softmax(0), f.logits.softmax(0))
            np.testing.assert_array_equal(b.mask, f.mask)
    assert any(not torch.allclose(f.logits.softmax(0), b.logits.softmax(0)) for f, b in
               zip(forward[1:4], both[1:4], strict=True))  # fmt: skip


@pytest.mark.parametrize(("interval", "bound"), [("4", 4), ("auto", 5)])
def test_bidirectional_memory_is_bounded_by_the_interval(
    tmp_path: Path, tiny_model, interval: str, bound: int
) -> None:
    video = make_video(tmp_path / "long.mp4", frames=45, size=SIZE)
    stream = segment_video(
        video, "a,b", model=tiny_model, keyframe_interval=interval, max_interval=5,
        bidirectional=True,
    )  # fmt: skip
    assert sum(1 for _ in stream) == 45
    assert stream.peak_held <= bound  # the frames waiting for their next keyframe, no more


def test_bidirectional_keeps_frame_count_order_fps_and_audio(
    tmp_path: Path, small_video: Path, tiny_weights: Path
) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        ["segment", str(small_video), "-c", "a,b", "--masks", "-o", str(out), "--clip",
         "ovseg-tiny", "--pretrained", str(tiny_weights), "--keyframe-interval", "4",
         "--bidirectional"],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "25% keyframes" in res.output
    with av.open(str(out / "overlay.mp4")) as c, av.open(str(small_video)) as src:
        assert sum(1 for _ in c.decode(video=0)) == 12
        assert c.streams.video[0].average_rate == Fraction(30000, 1001)
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
        t_in = [f.time for f in src.decode(video=0)]
    with av.open(str(out / "overlay.mp4")) as c:
        assert [f.time for f in c.decode(video=0)] == pytest.approx(t_in, abs=1e-3)
    assert sorted(p.name for p in (out / "masks").glob("*.png"))[-1] == "000011.png"
    prop = json.loads((out / "meta.json").read_text())["propagation"]
    assert prop["keyframe_indices"] == [0, 4, 8] and prop["keyframe_share"] == 0.25
    assert prop["bidirectional"] is True and prop["keyframe_interval"] == 4
    assert prop["flow"]["method"].startswith("DIS") and prop["batch"] == 1
    assert prop["flow"]["resolution"] == [96, 64]  # smaller than flow_size: its own size


@pytest.mark.parametrize("shot_threshold", [0.0, 30.0])  # by the warp alone; by both
def test_auto_starts_a_keyframe_at_a_hard_cut(
    tmp_path: Path, tiny_model, shot_threshold: float
) -> None:
    video = joined_clips(tmp_path / "cut.mp4", first=10, second=10)
    # a cut mispredicts most of the frame; 0.3 keeps the texture's incoming edge from counting
    auto = {"keyframe_interval": "auto", "max_interval": 30, "keyframe_error": 0.3}
    auto["shot_threshold"] = shot_threshold
    forward = list(segment_video(video, "a,b", model=tiny_model, **auto))
    assert [r.index for r in forward if r.is_keyframe] == [0, 10]
    both = list(segment_video(video, "a,b", model=tiny_model, bidirectional=True, **auto))
    assert [r.index for r in both if r.is_keyframe] == [0, 10]
    for f, b in zip(forward[:10], both[:10], strict=True):  # the cut keyframe is not blended in
        np.testing.assert_array_equal(f.mask, b.mask)


@pytest.mark.parametrize(("interval", "batch"), [("1", 4), ("3", 3)])
def test_batched_keyframes_equal_one_at_a_time(
    small_video: Path, tiny_model, interval: str, batch: int
) -> None:
    one = list(segment_video(small_video, "a,b,c", model=tiny_model, keyframe_interval=interval))
    stream = segment_video(
        small_video, "a,b,c", model=tiny_model, keyframe_interval=interval, batch=batch
    )
    many = list(stream)
    assert [r.index for r in many] == list(range(12)) and stream.batch == batch
    for a, b in zip(one, many, strict=True):
        assert a.is_keyframe == b.is_keyframe
        torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
        assert (a.mask == b.mask).mean() > 0.999


def test_batched_trained_model_equals_one_at_a_time(tiny_checkpoint: Path) -> None:
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model

    model = load_model(SegmentConfig(checkpoint=str(tiny_checkpoint), device="cpu"))
    vocabulary = model.encode_vocabulary(parse_classes("road,sky"))
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    state = model.init_state()
    one = []
    for x in images:
        logits, state = model.step(x[None], state, vocabulary)
        one.append(logits)
    many, batched_state = model.step_batch(images[:3], model.init_state(), vocabulary)
    rest, batched_state = model.step_batch(images[3:], batched_state, vocabulary)
    for a, b in zip(one, [*many, *rest], strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert batched_state.count == state.count == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keyframe-interval", "0"], "keyframe_interval must be"),
        (["--keyframe-interval", "fast"], "keyframe_interval must be"),
        (["--bidirectional"], "bidirectional needs"),
        (["--batch", "0"], "batch must be"),
    ],
)
def test_bad_keyframe_settings_are_one_line_errors(
    tmp_path: Path, small_video: Path, tiny_weights: Path, args: list[str], message: str
) -> None:
    res = CliRunner().invoke(
        app,
        ["segment", str(small_video), "-c", "a", "-o", str(tmp_path / "o"), "--clip",
         "ovseg-tiny", "--pretrained", str(tiny_weights), *args],
    )  # fmt: skip
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "o").exists()
