"""Tests for ovseg_cli.video.reader: decoding ranges, timing, rotation, errors and the overlay writer."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import shared_file

from ovseg_cli.errors import OvsegError
from ovseg_cli.video.reader import DecodedFrame, VideoReader, probe_video
from ovseg_cli.video.writer import VideoWriter

try:  # pytest puts tests/ itself on sys.path unless tests/ becomes a package
    import video_factory as vf
except ImportError:
    from tests import video_factory as vf


def read_all(path: Path, start: float = 0.0, end: float | None = None) -> list[DecodedFrame]:
    with VideoReader(path, start, end) as reader:
        return list(reader)


def transcode(src: Path, dst: Path, start: float = 0.0, end: float | None = None, **kw) -> dict:
    """Read src, write every frame to dst (with src's audio) and describe dst via plain PyAV."""
    with (
        VideoReader(src, start, end) as reader,
        VideoWriter(dst, reader.info, audio_from=src, start=start, end=end, **kw) as writer,
    ):
        for frame in reader:
            writer.write(frame.rgb, frame.pts)
    return describe(dst)


def describe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        out = {
            "frames": video.frames,
            "rate": video.average_rate,
            "size": (video.codec_context.width, video.codec_context.height),
            "codec": video.codec_context.name,
            "audio": None,
            "audio_seconds": None,
        }
        if container.streams.audio:
            audio = container.streams.audio[0]
            out["audio"] = audio.codec_context.name
            out["audio_seconds"] = float(audio.duration * audio.time_base)
        out["times"] = [float(f.time) for f in container.decode(video)]
    return out


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("rate", [Fraction(30000, 1001), Fraction(24), Fraction(10)])
def test_rate_and_count_round_trip(tmp_path: Path, rate: Fraction) -> None:
    src = vf.make_video(tmp_path / "in.mp4", frames=24, rate=rate)
    info = probe_video(src)
    assert info.average_rate == rate
    assert info.frame_count == 24
    assert (info.width, info.height, info.rotation, info.codec) == (64, 48, 0, "h264")
    assert info.frames_between(0, None) == 24

    frames = read_all(src)
    assert [f.index for f in frames] == list(range(24))
    assert [f.time for f in frames] == pytest.approx([i / rate for i in range(24)], abs=1e-6)

    out = transcode(src, tmp_path / "out.mp4")
    assert out["frames"] == 24
    assert out["rate"] == rate
    assert out["times"] == pytest.approx([i / rate for i in range(24)], abs=1e-3)


def test_decoded_content_matches_what_was_written(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "in.mp4", frames=10)
    for i, frame in enumerate(read_all(src)):
        assert frame.rgb.shape == (48, 64, 3) and frame.rgb.dtype == np.uint8
        assert frame.rgb.flags.c_contiguous
        assert mae(frame.rgb, vf.expected_frame(i)) < 4
        assert mae(frame.rgb, vf.expected_frame(i)) < mae(frame.rgb, vf.expected_frame(i + 1))


def test_overlay_content_survives_encoding(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "in.mp4", frames=6)
    transcode(src, tmp_path / "out.mp4")
    for i, frame in enumerate(read_all(tmp_path / "out.mp4")):
        assert mae(frame.rgb, vf.expected_frame(i)) < 6


def test_odd_size_is_read_exactly_and_padded_on_write(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "odd.mp4", frames=4, size=(65, 49))
    info = probe_video(src)
    assert (info.width, info.height) == (65, 49)
    frames = read_all(src)
    assert frames[0].rgb.shape == (49, 65, 3) and frames[0].rgb.flags.c_contiguous
    assert mae(frames[0].rgb, vf.expected_frame(0, (65, 49))) < 4

    out = transcode(src, tmp_path / "out.mp4")
    assert out["size"] == (66, 50) and out["frames"] == 4
    back = read_all(tmp_path / "out.mp4")[1].rgb
    assert mae(back[:49, :65], frames[1].rgb) < 6
    # The padding repeats the last column and row.
    assert mae(back[:, 65], back[:, 64]) < 6
    assert mae(back[49], back[48]) < 6


def test_variable_frame_rate_keeps_timing(tmp_path: Path) -> None:
    times_ms = (0, 40, 80, 200, 233, 266, 500, 540, 1000)
    src = vf.make_vfr_video(tmp_path / "vfr.mp4", times_ms)
    frames = read_all(src)
    assert [f.time for f in frames] == pytest.approx([t / 1000 for t in times_ms], abs=1e-6)
    for i, frame in enumerate(frames):
        assert mae(frame.rgb, vf.expected_frame(i)) < 4

    out = transcode(src, tmp_path / "out.mp4")
    assert out["frames"] == len(times_ms)
    assert out["times"] == pytest.approx([t / 1000 for t in times_ms], abs=1e-3)
    # The track spans the presented frames (not cut short by B-frame reordering).
    assert len(times_ms) / float(out["rate"]) > 1.0


def test_ranges_select_frames_by_time(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "in.mp4", frames=30, rate=10, gop=5)
    info = probe_video(src)
    middle = read_all(src, start=1.0, end=2.0)
    assert len(middle) == 10 == info.frames_between(1.0, 2.0)
    assert middle[0].time == pytest.approx(1.0) and middle[0].index == 0
    assert [f.pts for f in middle] == [round(t * 10240) for t in np.arange(10, 20) / 10]
    assert mae(middle[0].rgb, vf.expected_frame(10)) < 4

    assert read_all(src, start=0.95, end=1.25)[0].time == pytest.approx(1.0)
    assert len(read_all(src, start=0.95, end=1.25)) == 3
    tail = read_all(src, start=2.55)
    assert [round(f.time, 3) for f in tail] == [2.6, 2.7, 2.8, 2.9]
    assert info.frames_between(2.55, None) == 4


def test_avi_with_reordered_frames_gets_monotonic_times(tmp_path: Path) -> None:
    # AVI stores no presentation times; with B-frames the demuxer's guesses come out of order.
    src = vf.make_video(tmp_path / "b.avi", frames=20, rate=10, bframes=2, container_format="avi")
    frames = read_all(src)
    assert [f.time for f in frames] == pytest.approx([i / 10 for i in range(20)])
    for i, frame in enumerate(frames):
        assert mae(frame.rgb, vf.expected_frame(i)) < 4
    ranged = read_all(src, start=1.0, end=1.5)
    assert [f.pts for f in ranged] == [10, 11, 12, 13, 14]


@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_rotation_follows_ffmpeg_autorotate(tmp_path: Path, clockwise: int) -> None:
    src = vf.make_video(tmp_path / "rot.mp4", frames=2, pattern="corner", rotate=clockwise)
    # ffmpeg reports the matrix as a counter-clockwise angle (ffprobe: "rotation of -90").
    with av.open(str(src)) as container:
        assert next(container.decode(video=0)).rotation % 360 == (-clockwise) % 360

    info = probe_video(src)
    assert info.rotation == clockwise
    assert (info.width, info.height) == ((48, 64) if clockwise in (90, 270) else (64, 48))
    rgb = read_all(src)[0].rgb
    assert rgb.shape == (info.height, info.width, 3) and rgb.flags.c_contiguous
    h, w = rgb.shape[:2]
    # The red block starts top-left; turning clockwise moves it to the next corner clockwise.
    corner = {90: (0, w - 1), 180: (h - 1, w - 1), 270: (h - 1, 0)}[clockwise]
    red = rgb[..., 0].astype(int) - rgb[..., 1]
    assert red[corner] > 150
    assert red[0, 0] < 50 or clockwise == 0

    out = transcode(src, tmp_path / "out.mp4")
    assert out["size"] == (info.width, info.height)
    assert probe_video(tmp_path / "out.mp4").rotation == 0


def test_audio_is_copied_and_trimmed_to_the_range(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "in.mp4", frames=60, rate=30, audio=True)
    assert probe_video(src).has_audio
    out = transcode(src, tmp_path / "out.mp4", start=0.5, end=1.5)
    assert out["frames"] == 30 and out["rate"] == 30
    assert out["audio"] == "aac"
    assert out["audio_seconds"] == pytest.approx(1.0, abs=0.06)


def test_audio_that_mp4_cannot_hold_is_transcoded_to_aac(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "in.mkv", frames=20, audio=True, audio_codec="pcm_s16le")
    with (
        VideoReader(src) as reader,
        VideoWriter(tmp_path / "o.mp4", reader.info, audio_from=src) as w,
    ):
        assert w.audio_codec == "aac"
        for frame in reader:
            w.write(frame.rgb, frame.pts)
    out = describe(tmp_path / "o.mp4")
    assert out["audio"] == "aac" and out["frames"] == 20
    assert out["audio_seconds"] == pytest.approx(20 * 1001 / 30000, abs=0.06)


def test_no_audio_stream_when_the_source_has_none(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "in.mp4", frames=5)
    out = transcode(src, tmp_path / "out.mp4")
    assert out["audio"] is None and out["frames"] == 5


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("missing.mp4", lambda p: p),
        ("folder.mp4", lambda p: (p.mkdir(), p)[1]),
        ("clip.mp4", vf.make_text_file),
        ("speech.m4a", vf.make_audio_only),
        ("speech.wav", vf.make_audio_only),
        ("empty.mkv", vf.make_empty_video),
    ],
)
def test_unusable_inputs_raise_one_line_errors(tmp_path: Path, name: str, make) -> None:
    path = make(tmp_path / name)
    for attempt in (lambda: probe_video(path), lambda: read_all(path)):
        with pytest.raises(OvsegError) as err:
            attempt()
        message = str(err.value)
        assert name in message and "\n" not in message


@pytest.mark.parametrize(
    ("start", "end", "words"),
    [
        (-1.0, None, ">= 0"),
        (2.0, 1.0, "after"),
        (1.0, 1.0, "after"),
        (5.0, None, "no frames between 5s"),
    ],
)
def test_bad_ranges_raise(tmp_path: Path, start: float, end: float | None, words: str) -> None:
    src = vf.make_video(tmp_path / "short.mp4", frames=10, rate=10)
    with pytest.raises(OvsegError, match=words) as err:
        read_all(src, start, end)
    assert "short.mp4" in str(err.value)


def test_corrupt_mp4_skips_broken_packets(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "bad.mp4", frames=60, size=(128, 96), gop=10)
    vf.corrupt_middle(src, 0.5, 3000)
    with VideoReader(src) as reader:
        frames = list(reader)
        assert reader.skipped > 0
    assert 0 < len(frames) < 60
    assert all(b.time > a.time for a, b in itertools.pairwise(frames))


def test_corrupt_mpegts_decodes_without_crashing(tmp_path: Path) -> None:
    src = vf.make_video(
        tmp_path / "bad.ts", frames=60, size=(128, 96), gop=10, container_format="mpegts"
    )
    vf.corrupt_middle(src, 0.5, 3000)
    with VideoReader(src) as reader:
        frames = list(reader)
    assert 0 < len(frames) <= 60
    # A 90 kHz time base over 16 bits: the mpeg4 fallback must still keep count and rate.
    out = transcode(src, tmp_path / "out.mp4", codec="mpeg4")
    assert out["codec"] == "mpeg4" and out["frames"] == len(frames)


def test_writer_close_is_idempotent_and_abort_is_safe(tmp_path: Path) -> None:
    src = vf.make_video(tmp_path / "in.mp4", frames=3)
    frames = read_all(src)
    info = probe_video(src)
    writer = VideoWriter(tmp_path / "a.mp4", info)
    assert writer.codec_name == "libx264"
    for frame in frames:
        writer.write(frame.rgb, frame.pts)
    writer.close()
    writer.close()
    assert describe(tmp_path / "a.mp4")["frames"] == 3

    aborted = VideoWriter(tmp_path / "b.mp4", info, audio_from=src)
    aborted.write(frames[0].rgb, frames[0].pts)
    aborted.abort()
    aborted.close()
    with pytest.raises(ValueError, match="uint8"), VideoWriter(tmp_path / "c.mp4", info) as w:
        w.write(np.zeros((10, 10, 3), np.uint8), 0)


def test_writer_duplicate_pts_are_made_increasing(tmp_path: Path) -> None:
    info = probe_video(vf.make_video(tmp_path / "in.mp4", frames=2))
    with VideoWriter(tmp_path / "dup.mp4", info) as writer:
        for pts in (0, 1001, 1001, 2002):
            writer.write(vf.expected_frame(0), pts)
    assert describe(tmp_path / "dup.mp4")["frames"] == 4


def test_unknown_encoder_is_an_error(tmp_path: Path) -> None:
    info = probe_video(vf.make_video(tmp_path / "in.mp4", frames=2))
    with pytest.raises(OvsegError, match="not-a-codec"):
        VideoWriter(tmp_path / "x.mp4", info, codec="not-a-codec")


@pytest.mark.slow
def test_real_dog_clip_two_seconds(tmp_path: Path) -> None:
    DOG = shared_file("videos", "sam2_01_dog.mp4")
    info = probe_video(DOG)
    assert info.average_rate == Fraction(30000, 1001) and info.has_audio
    assert info.frames_between(0, 2) == 60
    out = transcode(DOG, tmp_path / "dog.mp4", end=2.0)
    assert out["frames"] == 60
    assert out["rate"] == Fraction(30000, 1001)
    assert out["audio"] == "aac"
    assert out["audio_seconds"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.slow
def test_real_avi_with_audio(tmp_path: Path) -> None:
    AVI = shared_file("videos", "opencv_vtest_480x360.avi")
    info = probe_video(AVI)
    assert info.average_rate == 10 and info.has_audio and info.frame_count == 795
    frames = read_all(AVI, 40.0, 42.5)
    assert [f.pts for f in frames] == list(range(400, 425))
    out = transcode(AVI, tmp_path / "avi.mp4", start=40.0, end=42.5)
    assert out["frames"] == 25 and out["rate"] == 10
    assert out["audio"] == "aac"
    assert out["audio_seconds"] == pytest.approx(2.5, abs=0.06)


@pytest.mark.parametrize("size", [(720, 1280), (65, 97), (1, 1)])
def test_rgb_frame_is_the_frame_from_ndarray_makes(size: tuple[int, int]) -> None:
    from ovseg_cli.video.writer import rgb_frame

    rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    ours, theirs = rgb_frame(rgb), av.VideoFrame.from_ndarray(rgb, format="rgb24")
    assert np.array_equal(ours.to_ndarray(), rgb) and np.array_equal(theirs.to_ndarray(), rgb)
    fmt = "yuv420p" if size[0] % 2 == 0 and size[1] % 2 == 0 else "yuv444p"
    assert np.array_equal(ours.reformat(format=fmt).to_ndarray(),
                          theirs.reformat(format=fmt).to_ndarray())  # fmt: skip
