"""Tiny synthetic media files written with PyAV, for tests that need real video input."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

SQUARE = 12  # side of the moving square in pixels
SQUARE_RGB = (255, 255, 40)


def expected_frame(index: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """Frame `index` of the "moving_square" pattern: (H, W, 3) uint8 for size (W, H)."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = x
    rgb[..., 1] = y
    rgb[..., 2] = (40 + 13 * index) % 200
    left, top = square_position(index, size)
    rgb[top : top + SQUARE, left : left + SQUARE] = SQUARE_RGB
    return rgb


def square_position(index: int, size: tuple[int, int] = (64, 48)) -> tuple[int, int]:
    """Top-left (x, y) of the square in frame `index`: 3 px right and 2 px down per frame."""
    width, height = size
    return (3 * index) % max(1, width - SQUARE), (2 * index) % max(1, height - SQUARE)


def corner_marker_frame(size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A grey frame with a red block in the top-left corner, to check rotation direction."""
    width, height = size
    rgb = np.full((height, width, 3), 128, np.uint8)
    rgb[: height // 4, : width // 4] = (230, 20, 20)
    return rgb


def _rotation_matrix(clockwise: int) -> list[int]:
    """QuickTime/ffmpeg display matrix that shows the picture turned `clockwise` degrees."""
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[clockwise % 360]
    one = 1 << 16  # a, b, c, d are 16.16 fixed point; w is 2.30
    # Rows (a b u), (c d v), (x y w) map (x, y) to (a*x + c*y, b*x + d*y) before translation:
    # for 90 that is (-y, x), a clockwise quarter turn in y-down image coordinates.
    return [cos * one, sin * one, 0, -sin * one, cos * one, 0, 0, 0, 1 << 30]


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the ISO-BMFF boxes in data[start:end]."""
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[start + 8 : start + 16])[0], 16
        elif size == 0:
            size = end - start
        yield kind, start + header, start + size
        start += size


def _set_display_matrix(path: Path, matrix: list[int]) -> None:
    """Write `matrix` into the video track's header (tkhd) of an mp4/mov file in place.

    Written into the file's bytes, not through PyAV (whose API for it arrived in 17.1), so
    every PyAV version ovseg allows makes the same test files.
    """
    data = bytearray(path.read_bytes())
    moov = next((b for b in _boxes(data, 0, len(data)) if b[0] == b"moov"), None)
    if moov is None:
        raise ValueError(f"{path}: no moov box (rotation needs an mp4 or mov file)")
    for kind, start, end in _boxes(data, moov[1], moov[2]):
        inner = {k: (s, e) for k, s, e in _boxes(data, start, end)} if kind == b"trak" else {}
        mdia = inner.get(b"mdia")
        hdlr = mdia and {k: s for k, s, _ in _boxes(data, *mdia)}.get(b"hdlr")
        if b"tkhd" not in inner or not hdlr or data[hdlr + 8 : hdlr + 12] != b"vide":
            continue
        tkhd = inner[b"tkhd"][0]
        # version/flags, two times, track id, 4 reserved, duration (times and duration 4
        # bytes each in v0, 8 in v1), then 8 reserved, layer, group, volume, 2 reserved
        offset = tkhd + (40 if data[tkhd] == 0 else 52)
        data[offset : offset + 36] = struct.pack(">9i", *matrix)
        path.write_bytes(bytes(data))
        return
    raise ValueError(f"{path}: no video track header found")


def _add_audio(container: av.container.OutputContainer, codec: str, rate: int) -> av.AudioStream:
    return container.add_stream(codec, rate=rate, layout="mono")


def _tone(start: int, count: int, rate: int, codec: str) -> av.AudioFrame:
    t = np.arange(start, start + count) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    if codec.startswith("pcm_s16"):
        frame = av.AudioFrame.from_ndarray(
            (wave * 32767).astype(np.int16)[None], format="s16", layout="mono"
        )
    else:
        frame = av.AudioFrame.from_ndarray(
            wave.astype(np.float32)[None], format="fltp", layout="mono"
        )
    frame.sample_rate = rate
    frame.pts = start
    frame.time_base = Fraction(1, rate)
    return frame


def _write_audio(
    container: av.container.OutputContainer,
    stream: av.AudioStream,
    seconds: float,
    codec: str,
    rate: int,
) -> None:
    total = round(seconds * rate)
    chunk = 1024
    for start in range(0, total, chunk):
        container.mux(stream.encode(_tone(start, min(chunk, total - start), rate, codec)))
    container.mux(stream.encode(None))


def make_video(
    path: str | Path,
    *,
    frames: int = 12,
    size: tuple[int, int] = (64, 48),
    rate: Fraction | int = Fraction(30000, 1001),
    audio: bool = False,
    audio_codec: str = "aac",
    codec: str = "libx264",
    pattern: str = "moving_square",
    rotate: int | None = None,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    container_format: str | None = None,
    gop: int | None = None,
    bframes: int = 0,
    faststart: bool = False,
) -> Path:
    """Write a small video whose frame i is expected_frame(i) (or corner_marker_frame()).

    `rotate` stores a display matrix asking players to turn the picture that many degrees
    clockwise (like a phone's portrait clip); `pts` + `time_base` give variable frame timing;
    `bframes` turns on frame reordering (in AVI that leaves the demuxer guessing pts);
    `faststart` puts an mp4's index (frame count, durations) before the data, as streaming
    sites do, so a cut-off download still announces every frame.
    Odd sizes are encoded as yuv444p, which H.264 allows, so readers see the exact size.
    """
    if pattern not in ("moving_square", "corner"):
        raise ValueError(f"unknown pattern {pattern!r}: use 'moving_square' or 'corner'")
    path = Path(path)
    rate = Fraction(rate)
    time_base = time_base or 1 / rate
    pts = list(pts) if pts is not None else [round(i / rate / time_base) for i in range(frames)]
    width, height = size
    odd = width % 2 or height % 2
    movflags = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", format=container_format, options=movflags) as out:
        options = {"preset": "ultrafast", "crf": "12"} if codec == "libx264" else {}
        if gop:
            options["g"] = str(gop)
        if bframes and codec == "libx264":
            options["bf"] = str(bframes)
        video = out.add_stream(codec, rate=rate, options=options)
        video.width, video.height = width, height
        video.pix_fmt = "yuv444p" if odd else "yuv420p"
        video.codec_context.time_base = time_base
        audio_stream = _add_audio(out, audio_codec, 44100) if audio else None
        for i, ts in enumerate(pts):
            rgb = corner_marker_frame(size) if pattern == "corner" else expected_frame(i, size)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = ts, time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio_stream is not None:
            seconds = float((pts[-1] - pts[0]) * time_base) + float(1 / rate) if pts else 1.0
            _write_audio(out, audio_stream, seconds, audio_codec, 44100)
    if rotate:
        _set_display_matrix(path, _rotation_matrix(rotate))
    return path


def make_vfr_video(
    path: str | Path, times_ms: Sequence[int] = (0, 40, 80, 200, 233, 266, 500, 540, 1000)
) -> Path:
    """Write an H.264 mp4 whose frames sit at the given millisecond times (irregular gaps)."""
    rate = Fraction(len(times_ms) * 1000, max(1, times_ms[-1] + 40))
    return make_video(path, pts=times_ms, time_base=Fraction(1, 1000), rate=rate)


def make_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """Write a sine tone: AAC for .m4a/.mp4/.aac, 16-bit PCM for .wav."""
    path = Path(path)
    codec = "pcm_s16le" if path.suffix.lower() == ".wav" else "aac"
    with av.open(str(path), mode="w") as out:
        _write_audio(out, _add_audio(out, codec, 44100), seconds, codec, 44100)
    return path


def make_empty_video(path: str | Path) -> Path:
    """Write a Matroska file with an H.264 video track and no frames at all."""
    path = Path(path)
    with av.open(str(path), mode="w", format="matroska") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    return path


def make_text_file(path: str | Path) -> Path:
    """Write plain text under a video-looking name."""
    path = Path(path)
    path.write_text("this is not a video\n" * 20)
    return path


def truncate(path: str | Path, fraction: float) -> Path:
    """Cut a file to ``fraction`` of its bytes, as an interrupted download or copy leaves it."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def corrupt_middle(path: str | Path, fraction: float = 0.5, nbytes: int = 4000) -> Path:
    """Overwrite `nbytes` in the middle of a file with seeded random bytes, in place."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    offset = int(len(data) * fraction)
    noise = np.random.default_rng(1234).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    data[offset : offset + nbytes] = noise[: max(0, len(data) - offset)]
    path.write_bytes(bytes(data))
    return path


def joined_clips(
    path: Path, first: int = 10, second: int = 10, size: tuple[int, int] = (96, 64)
) -> Path:
    """Two unrelated synthetic clips back to back: the moving square, then a texture panning
    1 px a frame."""
    w, h = size
    rng = np.random.default_rng(7)
    noise = cv2.GaussianBlur(rng.random((h + 40, w + 60, 3)).astype(np.float32), (0, 0), 2)
    texture = (255 * (noise - noise.min()) / (noise.max() - noise.min())).astype(np.uint8)
    frames = [expected_frame(i, size) for i in range(first)]
    frames += [np.ascontiguousarray(texture[20 : 20 + h, i : i + w]) for i in range(second)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"preset": "ultrafast", "crf": "12"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path
