"""Shot cuts: detection from pixels, and the stream's state starting afresh at a cut."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import torch
from conftest import shared_file
from typer.testing import CliRunner
from video_factory import expected_frame, joined_clips

from ovseg_cli import segment_video
from ovseg_cli.classes import parse_classes
from ovseg_cli.cli import app
from ovseg_cli.segment.shots import ShotDetector, content_difference, thumbnail_hsv
from ovseg_cli.video.reader import VideoReader

VIDEOS = ("sam2_01_dog.mp4", "sam2_05_default_juggle.mp4", "opencv_vtest_480x360.avi")


def test_detector_flags_the_first_frame_of_another_scene_only(tmp_path: Path) -> None:
    video = joined_clips(tmp_path / "cut.mp4", first=8, second=8)
    detector = ShotDetector()
    with VideoReader(video) as reader:
        cuts = [frame.index for frame in reader if detector(frame.rgb)]
    assert cuts == [8]
    detector.reset()  # a new video: its first frame is never a cut
    assert not detector(np.zeros((64, 96, 3), np.uint8))


def test_content_difference_is_zero_for_a_frame_and_large_across_scenes() -> None:
    a, b = thumbnail_hsv(expected_frame(0)), thumbnail_hsv(expected_frame(1))
    assert content_difference(a, a) == 0.0
    assert content_difference(a, b) < 15  # the square moved, the blue shifted a little
    black = thumbnail_hsv(np.zeros((48, 64, 3), np.uint8))
    assert content_difference(a, black) > 60
    # hue is circular: red at 0 and red at 179 are neighbours, not opposites
    red0 = np.zeros((36, 64, 3), np.int16) + np.array([0, 200, 200], np.int16)
    red179 = red0 + np.array([179, 0, 0], np.int16)
    assert content_difference(red0, red179) < 1


def _joined_real_clips(tmp_path: Path, frames: int = 6) -> tuple[Path, list[int]]:
    """The first frames of each real clip, back to back (cuts where one clip ends)."""
    paths = [shared_file("videos", name) for name in VIDEOS]
    out = tmp_path / "joined.mp4"
    cuts = []
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 480, 270, "yuv420p"
        n = 0
        for path in paths:
            cuts.append(n)
            with VideoReader(path) as reader:
                for frame in reader:
                    if frame.index >= frames:
                        break
                    image = av.VideoFrame.from_ndarray(frame.rgb, format="rgb24")
                    image = image.reformat(width=480, height=270)
                    container.mux(stream.encode(image))
                    n += 1
        container.mux(stream.encode(None))
    return out, cuts[1:]


def test_detector_finds_the_joins_of_real_clips_and_nothing_else(tmp_path: Path) -> None:
    video, joins = _joined_real_clips(tmp_path)
    detector = ShotDetector()
    with VideoReader(video) as reader:
        assert [f.index for f in reader if detector(f.rgb)] == joins


def _steps_with_resets(video: Path, model, classes: str, resets: set[int]) -> list[torch.Tensor]:
    """Logits of one ``step`` per frame, the state started afresh at ``resets``."""
    vocabulary = model.encode_vocabulary(parse_classes(classes))
    state, out = model.init_state(), []
    with VideoReader(video) as reader:
        for frame in reader:
            if frame.index in resets:
                state.reset()
            logits, state = model.step(model.prepare(frame.rgb), state, vocabulary)
            out.append(logits.float())
    return out


def test_the_temporal_state_starts_afresh_at_a_cut(tmp_path: Path, tiny_model) -> None:
    video = joined_clips(tmp_path / "cut.mp4", first=10, second=10)
    stream = segment_video(video, "a,b,c", model=tiny_model)
    results = list(stream)
    assert [r.index for r in results if r.shot_start] == [10] and stream.cuts == [10]
    expected = _steps_with_resets(video, tiny_model, "a,b,c", {10})
    for r, logits in zip(results, expected, strict=True):
        torch.testing.assert_close(r.logits, logits, atol=1e-5, rtol=1e-5)
    # with detection off the second shot is fused with the first one's history
    off = list(segment_video(video, "a,b,c", model=tiny_model, shot_threshold=0))
    assert not any(r.shot_start for r in off)
    assert not torch.allclose(off[11].logits, results[11].logits, atol=1e-4)


def test_ov2vss_distant_frame_is_the_first_of_the_current_shot(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model

    model = load_model(SegmentConfig(checkpoint=str(tiny_checkpoint), device="cpu"))
    video = joined_clips(tmp_path / "cut.mp4", first=6, second=6)
    stream = segment_video(video, "road,sky", model=model)
    results = list(stream)
    assert stream.cuts == [6] and stream.state.count == 6  # frames since the cut
    expected = _steps_with_resets(video, model, "road,sky", {6})
    for r, logits in zip(results, expected, strict=True):
        torch.testing.assert_close(r.logits, logits, atol=1e-4, rtol=1e-4)
    with VideoReader(video) as reader:  # the distant frame is the cut frame's features
        cut_frame = next(f for f in reader if f.index == 6)
    state = model.init_state()
    vocabulary = model.encode_vocabulary(parse_classes("road,sky"))
    _, state = model.step(model.prepare(cut_frame.rgb), state, vocabulary)
    torch.testing.assert_close(stream.state.distant.clip, state.distant.clip)


def test_bidirectional_goes_forward_only_before_a_cut(tmp_path: Path, tiny_model) -> None:
    video = joined_clips(tmp_path / "cut.mp4", first=10, second=10)
    settings = {"keyframe_interval": "4", "model": tiny_model}
    forward = list(segment_video(video, "a,b", **settings))
    stream = segment_video(video, "a,b", bidirectional=True, **settings)
    both = list(stream)
    assert [r.index for r in both] == list(range(20))
    assert [r.index for r in both if r.is_keyframe] == [0, 4, 8, 10, 14, 18]
    assert stream.peak_held <= 4 + 1
    for i in (9,):  # after the last keyframe of the first shot: forward only
        torch.testing.assert_close(both[i].logits, forward[i].logits)
    for i in (5, 6, 7, 11, 12, 13):  # inside a shot: the two keyframes are blended
        assert not torch.allclose(both[i].logits, forward[i].logits)


def test_meta_records_the_cuts_and_the_setting(tmp_path: Path, tiny_weights: Path) -> None:
    video = joined_clips(tmp_path / "cut.mp4", first=5, second=5)
    args = ["segment", str(video), "-c", "a,b", "--clip", "ovseg-tiny"]
    args += ["--pretrained", str(tiny_weights), "--no-overlay", "--masks", "-q"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "on")])
    assert result.exit_code == 0, result.output
    shots = json.loads((tmp_path / "on" / "meta.json").read_text())["shots"]
    assert shots["cuts"] == [5] and shots["threshold"] == 30.0
    result = CliRunner().invoke(
        app, [*args, "--out", str(tmp_path / "off"), "--shot-threshold", "0"]
    )
    assert result.exit_code == 0, result.output
    shots = json.loads((tmp_path / "off" / "meta.json").read_text())["shots"]
    assert shots["cuts"] == [] and shots["threshold"] is None
    result = CliRunner().invoke(
        app, [*args, "--out", str(tmp_path / "bad"), "--shot-threshold", "300"]
    )
    assert result.exit_code == 2 and "shot_threshold must be between 0 and 255" in result.output


def test_ov2vss_state_starts_afresh_when_the_frame_size_changes(tiny_checkpoint: Path) -> None:
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model

    model = load_model(SegmentConfig(checkpoint=str(tiny_checkpoint), device="cpu"))
    vocabulary = model.encode_vocabulary(parse_classes("road,sky"))
    state = model.init_state()
    for _ in range(3):
        _, state = model.step(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), state, vocabulary)
    logits, state = model.step(torch.zeros(1, 3, 64, 96, dtype=torch.uint8), state, vocabulary)
    assert state.count == 1 and len(state.frames) == 1 and logits.shape[-1] == 96 // 8
