"""Video decoding with PyAV, one upright RGB frame at a time.

Decisions worth knowing about:

* Timing: frames carry their decoded pts (input stream time base), so variable frame rate
  input keeps its timing. Containers without real presentation timestamps (H.264 in AVI
  gives out-of-order guesses) are detected on the first frames and timed from the decode
  timestamps instead, shifted so the first frame lands on the stream start.
* Corrupt input: packets that fail to demux or decode are skipped and counted in
  ``VideoReader.skipped`` (the caller warns); only a video with no decodable frame at all
  is an error.
* Rotation follows ffmpeg's autorotate convention: ``VideoInfo.rotation`` is the clockwise
  angle applied to decoded frames, i.e. minus ``VideoFrame.rotation`` (which is
  counter-clockwise), or the legacy ``rotate`` stream tag (already clockwise). A phone
  portrait clip has the QuickTime matrix (a=0, b=1, c=-1, d=0), which ffprobe shows as
  "rotation of -90.00 degrees" and ffmpeg turns upright with ``transpose=clock``; here it
  gives ``rotation == 90`` and ``np.rot90(k=-1)``. tests/test_video_io.py writes exactly
  that matrix and checks the pixels. Angles are rounded to a multiple of 90 and mirror
  flags in the matrix are ignored.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from ovseg_cli.errors import OvsegError

log = logging.getLogger("ovseg")

# Float seconds from Fraction arithmetic: treat a frame within a microsecond of a boundary as
# sitting on it, so e.g. start=1.0 keeps a frame whose pts is exactly one second.
TIME_EPS = 1e-6
_PROBE_FRAMES = 8
_PROBE_PACKETS = 64
# A demuxer that keeps failing without progress would otherwise loop forever.
_MAX_DEMUX_ERRORS = 32
# A badly encoded tag must not make the whole file unreadable: PyAV 19 reads every tag as
# UTF-8 with surrogateescape (and dropped the argument); before it, ask for "replace".
_OPEN_OPTIONS: dict[str, str] = (
    {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}
)


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as far as reading and re-encoding it is concerned."""

    path: Path
    width: int
    height: int
    rotation: int
    average_rate: Fraction
    time_base: Fraction
    duration: float | None
    frame_count: int | None
    codec: str
    has_audio: bool
    start_pts: int = 0  # pts of the stream start: DecodedFrame.time = (pts - start_pts) * time_base

    def frames_between(self, start: float, end: float | None) -> int | None:
        """Estimate how many frames have a time in [start, end), for a progress bar."""
        rate = self.average_rate
        if not rate:
            return None
        first = math.ceil(float(start * rate) - TIME_EPS)
        to_end = end is None or (self.duration is not None and end >= self.duration)
        if to_end and self.frame_count is not None:
            last = self.frame_count
        elif end is not None:
            last = math.ceil(float(end * rate) - TIME_EPS)
            if self.frame_count is not None:
                last = min(last, self.frame_count)
        else:
            return None
        return max(0, last - first)


@dataclass
class DecodedFrame:
    """One upright RGB frame and its timing."""

    index: int
    pts: int
    time: float
    rgb: np.ndarray


@dataclass(frozen=True)
class _Timing:
    mode: str  # "pts", "dts" (pts unusable) or "count" (no timestamps at all)
    dts_shift: int  # subtracted from dts in "dts" mode
    step: int  # nominal frame duration in time-base ticks


def error_reason(exc: BaseException) -> str:
    """A short human reason from an FFmpeg or OS error."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).rstrip(".")


def open_input(path: str | Path) -> tuple[Path, Any]:
    """Open a media file for reading, with one-line errors for missing or unreadable files."""
    p = Path(path)
    if not p.exists():
        raise OvsegError(f"{p}: no such file")
    if p.is_dir():
        raise OvsegError(f"{p}: is a directory, not a video file")
    try:
        return p, av.open(str(p), mode="r", **_OPEN_OPTIONS)
    except (av.error.FFmpegError, OSError) as exc:
        raise OvsegError(f"{p}: not a readable media file ({error_reason(exc)})") from None


def safe_demux(container: Any, stream: Any, on_error: Any = None) -> Iterator[Any]:
    """Yield the stream's packets, stepping over read errors (the demuxer resyncs)."""
    errors = 0
    while True:
        try:
            for packet in container.demux(stream):
                errors = 0
                yield packet
            return
        except av.error.FFmpegError:
            errors += 1
            if on_error is not None:
                on_error()
            if errors > _MAX_DEMUX_ERRORS:
                return


def _nominal_rate(stream: Any) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return Fraction(rate)
    return Fraction(25)


def _strictly_increasing(values: list[int | None]) -> bool:
    if any(v is None for v in values):
        return False
    return all(b > a for a, b in itertools.pairwise(values))  # type: ignore[operator]


def _clockwise(frame_rotation: float, tag: str | None) -> int:
    angle = -float(frame_rotation or 0)
    if not angle and tag:
        try:
            angle = float(tag)
        except ValueError:
            angle = 0.0
    return round(angle / 90.0) % 4 * 90


def _probe(container: Any, path: Path) -> tuple[VideoInfo, _Timing]:
    """Read the stream parameters and decode a few frames for rotation and timestamp sanity."""
    if not container.streams.video:
        kind = "audio-only file" if container.streams.audio else "file"
        raise OvsegError(f"{path}: has no video stream ({kind})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise OvsegError(f"{path}: no decoder for its video codec in this PyAV build")
    stream.thread_type = "AUTO"
    time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
    rate = _nominal_rate(stream)

    samples: list[Any] = []
    at_eof = True
    for n, packet in enumerate(safe_demux(container, stream)):
        if n >= _PROBE_PACKETS or len(samples) >= _PROBE_FRAMES:
            at_eof = False
            break
        try:
            samples.extend(packet.decode())
        except av.error.FFmpegError:
            continue
    if not samples and at_eof:
        raise OvsegError(f"{path}: the video stream has no decodable frames")

    first = samples[0] if samples else None
    rotation = _clockwise(
        getattr(first, "rotation", 0) if first is not None else 0, stream.metadata.get("rotate")
    )
    start_pts = stream.start_time
    pts_list = [f.pts for f in samples]
    dts_list = [f.dts for f in samples]
    if start_pts is None:
        start_pts = next((v for v in pts_list + dts_list if v is not None), 0)
    step = max(1, round(1 / (rate * time_base)))
    if _strictly_increasing(pts_list):
        timing = _Timing("pts", 0, step)
    elif _strictly_increasing(dts_list):
        # Decode timestamps lag by the reorder delay: line the first frame up with the start.
        timing = _Timing("dts", dts_list[0] - start_pts, step)
    else:
        timing = _Timing("count", 0, step)

    cc = stream.codec_context
    width = cc.width or (first.width if first is not None else 0)
    height = cc.height or (first.height if first is not None else 0)
    if rotation in (90, 270):
        width, height = height, width

    if stream.duration:
        duration: float | None = float(stream.duration * time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = None
    frame_count = stream.frames or (round(duration * rate) if duration else None)

    info = VideoInfo(
        path=path,
        width=width,
        height=height,
        rotation=rotation,
        average_rate=rate,
        time_base=time_base,
        duration=duration,
        frame_count=frame_count,
        codec=cc.name,
        has_audio=bool(container.streams.audio),
        start_pts=start_pts,
    )
    return info, timing


def probe_video(path: str | Path) -> VideoInfo:
    """Describe a video file, raising OvsegError when it is not a usable video."""
    p, container = open_input(path)
    try:
        return _probe(container, p)[0]
    finally:
        container.close()


def _check_range(path: str | Path, start: float, end: float | None) -> None:
    if start < 0:
        raise OvsegError(f"{path}: start time must be >= 0 (got {start:g}s)")
    if end is not None and end <= start:
        raise OvsegError(f"{path}: end time ({end:g}s) must be after start time ({start:g}s)")


class VideoReader:
    """Iterate over the upright RGB frames of a video whose time lies in [start, end)."""

    def __init__(self, path: str | Path, start: float = 0.0, end: float | None = None) -> None:
        _check_range(path, start, end)
        self.start = float(start)
        self.end = None if end is None else float(end)
        self.skipped = 0
        self.frames_decoded = 0
        self.truncated = False  # the video ended before its container said it would
        self._resized = False  # a frame of another size was scaled (warned once)
        self._iterated = False
        self._last_ts: int | None = None
        p, probe_container = open_input(path)
        try:
            self.info, self._timing = _probe(probe_container, p)
        finally:
            probe_container.close()
        # A fresh container is cheaper and safer than seeking back over the probed packets.
        self._container = open_input(p)[1]
        try:
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            cc = self._stream.codec_context
            self._coded_size = (cc.width, cc.height) if cc.width and cc.height else None
            if self.start > 0 and self._timing.mode != "count":
                self._seek()
        except BaseException:
            # never leave an open container to the garbage collector: freeing one while an
            # FFmpeg thread waits for the GIL in PyAV's log callback deadlocks (PyAV 12)
            self._container.close()
            raise

    def _seek(self) -> None:
        tb = self.info.time_base
        target = self.info.start_pts + int(self.start / tb) + self._timing.dts_shift
        # A failed seek leaves the position at the beginning; frames before start get dropped.
        with contextlib.suppress(av.error.FFmpegError):
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)

    def _count_skip(self) -> None:
        self.skipped += 1

    def _frames(self) -> Iterator[Any]:
        for packet in safe_demux(self._container, self._stream, self._count_skip):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.skipped += 1
                continue
            yield from frames

    def _timestamp(self, frame: Any) -> int:
        timing = self._timing
        ts: int | None = None
        if timing.mode == "pts":
            ts = frame.pts if frame.pts is not None else frame.dts
        elif timing.mode == "dts" and frame.dts is not None:
            ts = frame.dts - timing.dts_shift
        if ts is None:
            ts = self.info.start_pts if self._last_ts is None else self._last_ts + timing.step
        self._last_ts = ts
        return ts

    def _to_rgb(self, frame: Any) -> np.ndarray:
        size = self._coded_size or (frame.width, frame.height)
        if (frame.width, frame.height) != size and not self._resized:
            self._resized = True
            log.warning(
                "%s changes its frame size to %dx%d mid-stream; such frames are scaled to the "
                "first size, %dx%d", self.info.path, frame.width, frame.height, *size,
            )  # fmt: skip
        # Forcing the probed size keeps every frame the same shape if the stream changes size.
        rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
        if self.info.rotation:
            rgb = np.rot90(rgb, k=-self.info.rotation // 90)
        return np.ascontiguousarray(rgb)

    def __iter__(self) -> Iterator[DecodedFrame]:
        """Yield the frames in the range; raise OvsegError if there are none."""
        if self._iterated:
            raise RuntimeError("a VideoReader can only be iterated once")
        self._iterated = True
        tb = self.info.time_base
        count = 0
        decoded_any = False
        reached_end = False
        for frame in self._frames():
            decoded_any = True
            ts = self._timestamp(frame)
            time = float((ts - self.info.start_pts) * tb)
            if time < self.start - TIME_EPS:
                continue
            if self.end is not None and time >= self.end - TIME_EPS:
                reached_end = True
                break
            yield DecodedFrame(index=count, pts=ts, time=time, rgb=self._to_rgb(frame))
            count += 1
            self.frames_decoded = count
        if count == 0:
            raise OvsegError(self._empty_message(decoded_any))
        if not reached_end:
            self._check_length(count)

    @property
    def frames_expected(self) -> int | None:
        """Frames the container announces for the range (None: it does not say)."""
        return self.info.frames_between(self.start, self.end)

    @staticmethod
    def count_margin(count: int) -> int:
        """Frames a duration-based frame count may be off by: 2, or 2% of a long video."""
        return max(2, count // 50)

    def _check_length(self, count: int) -> None:
        """Warn when the file ends well before its container said (a cut-off download, say)."""
        expected = self.frames_expected
        if expected is None or expected - count <= self.count_margin(expected):
            return  # within what a duration-based estimate is off by
        self.truncated = True
        log.warning(
            "%s ended after %d of the %d frames its container announces (truncated file?); "
            "segmented what is there",
            self.info.path,
            count,
            expected,
        )

    def _empty_message(self, decoded_any: bool) -> str:
        path = self.info.path
        if not decoded_any and self.skipped:
            return f"{path}: no video frame could be decoded ({self.skipped} corrupt packets)"
        if not decoded_any and self.start == 0:
            return f"{path}: the video stream has no frames"
        end = "the end" if self.end is None else f"{self.end:g}s"
        length = f" (the video is {self.info.duration:.2f}s long)" if self.info.duration else ""
        return f"{path}: no frames between {self.start:g}s and {end}{length}"

    def close(self) -> None:
        """Release the input file."""
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
