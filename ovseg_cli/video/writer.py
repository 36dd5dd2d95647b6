"""Overlay encoding with PyAV: MP4 with the input's timing and its audio.

Decisions worth knowing about:

* Output timing: pts = input pts - first written pts, in the input time base (the mp4
  muxer may multiply its timescale). The last frame lasts 1/average_rate and the last mp4
  sample is sized so the track spans the presented frames, so ``stream.frames`` and
  ``average_rate`` read back exactly for constant-rate input, B-frames or not.
* Odd frame sizes: yuv420p needs even dimensions, so the writer pads the right/bottom edge
  by replicating the last column/row; the overlay is then up to one pixel larger.
* Audio is copied without re-encoding when mp4 takes the codec (AAC from an AVI included:
  libavformat converts ADTS on the fly), otherwise transcoded to AAC. It is trimmed at
  packet granularity to the written video: from the first written frame to ``end`` or to
  the end of the last written frame, whichever comes first.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from ovseg_cli.errors import OvsegError
from ovseg_cli.video.reader import TIME_EPS, VideoInfo, error_reason, open_input, safe_demux

_VIDEO_ENCODERS = ("libx264", "libopenh264", "mpeg4")
# Codecs that mp4 muxes as-is and common players accept; anything else becomes AAC.
_MP4_AUDIO_COPY = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})
_MPEG4_MAX_TB_DEN = 65535
# Codec options (AVOptions), not attributes: they mean the same in every PyAV version.
# libx264 by measurement on the 720p dog clip (90 frames, 2 cores, threads auto, which beat
# 2): veryfast crf 20 9.3 ms a frame, 38.5 dB PSNR, 0.57 MB; superfast crf 22 7.0 ms,
# 38.6 dB, 0.84 MB; ultrafast crf 23 6.0 ms, 38.8 dB, 1.24 MB. superfast: a quarter less
# time for the same quality, at half again the size (an overlay is a preview).
_ENCODER_OPTIONS = {
    "libx264": {"preset": "superfast", "crf": "22"},
    "mpeg4": {"global_quality": str(3 * 118)},  # qscale 3 in lambda units (FF_QP2LAMBDA)
}


@cache
def _encoder_works(name: str) -> bool:
    try:
        cc = av.CodecContext.create(name, "w")
        cc.width, cc.height, cc.pix_fmt = 64, 64, "yuv420p"
        cc.time_base = Fraction(1, 25)
        cc.framerate = Fraction(25)
        cc.open()
    except Exception:  # any failure means "not usable here", whatever PyAV raises
        return False
    return True


def _pick_encoder(codec: str | None) -> str:
    if codec is not None:
        if not _encoder_works(codec):
            raise OvsegError(f"video encoder {codec!r} is not available in this PyAV build")
        return codec
    for name in _VIDEO_ENCODERS:
        if _encoder_works(name):
            return name
    raise OvsegError(f"no usable video encoder found (tried {', '.join(_VIDEO_ENCODERS)})")


def rgb_frame(rgb: np.ndarray) -> Any:
    """An (H, W, 3) uint8 array as an rgb24 ``av.VideoFrame``, by one copy into its plane.

    The same frame as ``VideoFrame.from_ndarray`` gives, so the same encoded bytes, in a
    tenth of the time at 720p (0.3 against 4 ms here).
    """
    h, w = rgb.shape[:2]
    frame = av.VideoFrame(w, h, "rgb24")
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(h, plane.line_size)  # a view: no copy
    rows[:, : w * 3] = rgb.reshape(h, w * 3)
    return frame


def _packet_seconds(packet: Any) -> float | None:
    ts = packet.pts if packet.pts is not None else packet.dts
    return None if ts is None else float(ts * packet.time_base)


class _AudioTrack:
    """One audio stream fed into the output in step with the video, copied or made AAC."""

    def __init__(self, source: str | Path, output: Any, out_path: Path) -> None:
        p, self._container = open_input(source)
        streams = self._container.streams.audio
        self.active = bool(streams) and streams[0].codec_context is not None
        if not self.active:
            self._container.close()
            return
        self._in = self._container.streams.audio[0]
        cc = self._in.codec_context
        self.copy = cc.name in _MP4_AUDIO_COPY and cc.name in output.supported_codecs
        try:
            if self.copy:
                self.stream = output.add_stream_from_template(self._in)
            else:
                # The AAC encoder rejects unordered layouts ("1 channels" from PCM in mkv).
                layout = "mono" if cc.layout and cc.layout.nb_channels == 1 else "stereo"
                self.stream = output.add_stream("aac", rate=cc.sample_rate or 48000, layout=layout)
        except (av.error.FFmpegError, ValueError) as exc:
            self._container.close()
            raise OvsegError(
                f"{out_path}: cannot add the audio of {p} ({error_reason(exc)})"
            ) from None
        self.codec_name = cc.name if self.copy else "aac"
        self._output = output
        self._tb = Fraction(1, cc.sample_rate) if cc.sample_rate else Fraction(self._in.time_base)
        self._packets: Iterator[Any] | None = None
        self._next: Any = None
        self._offset = self._start = 0.0
        self._end = math.inf

    def begin(self, offset: float, start: float, end: float) -> None:
        """Shift source time `offset` to 0 in the output and keep packets in [start, end)."""
        self._offset, self._start, self._end = offset, max(offset, start), end
        if offset > 1.0:
            target = int((offset - 1.0) / Fraction(self._in.time_base))
            # Unseekable input still works: packets before `start` are read and dropped.
            with contextlib.suppress(av.error.FFmpegError):
                self._container.seek(target, stream=self._in, backward=True)
        self._packets = safe_demux(self._container, self._in)

    def _peek(self) -> Any:
        while self._next is None and self._packets is not None:
            packet = next(self._packets, None)
            if packet is None:
                self._packets = None
                break
            t = _packet_seconds(packet)
            if t is None or packet.size == 0 or t < self._start - TIME_EPS:
                continue
            self._next = packet
        return self._next

    def mux_until(self, out_seconds: float) -> None:
        """Mux the packets that start no later than `out_seconds` of output time."""
        while (packet := self._peek()) is not None:
            t = _packet_seconds(packet)
            if t >= self._end - TIME_EPS:
                self._packets = self._next = None  # past the window: stop reading for good
                return
            if t - self._offset > out_seconds + TIME_EPS:
                return
            self._next = None
            if self.copy:
                self._mux_copy(packet)
            else:
                self._transcode(packet)

    def _shift(self, ts: int | None, tb: Fraction) -> int | None:
        return None if ts is None else round((ts * tb - Fraction(self._offset)) / self._tb)

    def _mux_copy(self, packet: Any) -> None:
        tb = Fraction(packet.time_base)
        pts, dts = self._shift(packet.pts, tb), self._shift(packet.dts, tb)
        duration = round(packet.duration * tb / self._tb) if packet.duration else 0
        packet.time_base = self._tb
        packet.pts, packet.dts, packet.duration = pts, dts, duration
        packet.stream = self.stream
        self._output.mux(packet)

    def _transcode(self, packet: Any) -> None:
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            return  # a broken audio packet costs a few ms of sound, not the video
        for frame in frames:
            if frame.pts is not None:
                frame.pts = self._shift(frame.pts, Fraction(frame.time_base))
                frame.time_base = self._tb
            self._output.mux(self.stream.encode(frame))

    def finish(self, out_end: float) -> None:
        """Mux what is left before `out_end` seconds of output time and flush the encoder."""
        self._end = min(self._end, self._offset + out_end)
        self.mux_until(math.inf)
        if not self.copy:
            self._output.mux(self.stream.encode(None))

    def close(self) -> None:
        """Release the audio source."""
        self._container.close()


class VideoWriter:
    """Encode upright RGB frames into an MP4 with the input's timing, plus its audio.

    `start`/`end` are the reader's range; `audio_from` (normally the input itself) is assumed
    to share the input's timeline. The context manager aborts instead of closing on error.
    """

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        *,
        audio_from: str | Path | None = None,
        start: float = 0.0,
        end: float | None = None,
        codec: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.info = info
        self._closed = False
        self._start, self._end = float(start), end  # the reader's range, to cut the audio
        self._width, self._height = info.width + info.width % 2, info.height + info.height % 2
        self.codec_name = _pick_encoder(codec)
        tb = info.time_base
        # mpeg4 stores the time base in 16 bits; fall back to one tick per nominal frame.
        if self.codec_name == "mpeg4" and tb.denominator > _MPEG4_MAX_TB_DEN:
            self._enc_tb = 1 / info.average_rate
        else:
            self._enc_tb = tb
        self._step = max(1, round(1 / (info.average_rate * self._enc_tb)))
        self._pts0: int | None = None
        self._last_enc: int | None = None
        self._first_dts: int | None = None
        self._held: Any = None
        self._audio: _AudioTrack | None = None
        try:
            self._out = av.open(str(self.path), mode="w", format="mp4")
        except (av.error.FFmpegError, OSError) as exc:
            raise OvsegError(
                f"{self.path}: cannot create the output video ({error_reason(exc)})"
            ) from None
        try:
            self._stream = self._add_video_stream()
            if audio_from is not None:
                audio = _AudioTrack(audio_from, self._out, self.path)
                self._audio = audio if audio.active else None
        except BaseException:
            self.abort()
            raise

    def _add_video_stream(self) -> Any:
        options = _ENCODER_OPTIONS.get(self.codec_name, {})
        try:
            stream = self._out.add_stream(
                self.codec_name, rate=self.info.average_rate, options=options
            )
        except (av.error.FFmpegError, ValueError) as exc:
            raise OvsegError(
                f"{self.path}: cannot encode with {self.codec_name} ({error_reason(exc)})"
            ) from None
        stream.width, stream.height, stream.pix_fmt = self._width, self._height, "yuv420p"
        stream.time_base = self.info.time_base
        cc = stream.codec_context
        cc.time_base = self._enc_tb
        cc.thread_count = 0  # let the encoder pick the thread count
        if self.codec_name == "mpeg4":
            cc.qscale = True  # with _ENCODER_OPTIONS' global_quality: a fixed quantiser
        elif self.codec_name == "libopenh264":
            cc.bit_rate = max(1_000_000, int(self._width * self._height * 4))
        return stream

    @property
    def audio_codec(self) -> str | None:
        """Codec of the output audio track, or None when there is none."""
        return self._audio.codec_name if self._audio else None

    def write(self, rgb: np.ndarray, pts: int) -> None:
        """Encode one (H, W, 3) uint8 frame whose pts is in the input stream's time base."""
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        arr = np.asarray(rgb)
        expected = (self.info.height, self.info.width, 3)
        if arr.shape != expected or arr.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {expected}, got {arr.dtype} {arr.shape}")
        pad_h, pad_w = self._height - arr.shape[0], self._width - arr.shape[1]
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = rgb_frame(arr)

        tb = self.info.time_base
        if self._pts0 is None:
            self._pts0 = pts
            if self._audio is not None:
                origin = self.info.start_pts * tb
                end = math.inf if self._end is None else float(origin + Fraction(self._end))
                self._audio.begin(float(pts * tb), float(origin + Fraction(self._start)), end)
        enc = round((pts - self._pts0) * tb / self._enc_tb)
        if self._last_enc is not None and enc <= self._last_enc:
            enc = self._last_enc + 1  # the encoder and muxer need strictly increasing pts
        self._last_enc = enc
        frame.pts, frame.time_base = enc, self._enc_tb
        try:
            self._mux_video(self._stream.encode(frame))
            if self._audio is not None:
                self._audio.mux_until(float(enc * self._enc_tb))
        except (av.error.FFmpegError, OSError) as exc:
            raise OvsegError(f"{self.path}: failed to write video ({error_reason(exc)})") from None

    def _mux_video(self, packets: list[Any]) -> None:
        # Hold back the newest packet: its duration is only known once the input ends.
        for packet in packets:
            if self._first_dts is None:
                self._first_dts = packet.dts if packet.dts is not None else packet.pts
            if self._held is not None:
                self._out.mux(self._held)
            self._held = packet

    def _mux_last_video_packet(self, end_pts: int) -> None:
        packet, self._held = self._held, None
        if packet is None:
            return
        dts = packet.dts if packet.dts is not None else packet.pts
        # The mp4 track lasts (last dts - first dts + last duration). With B-frames and
        # uneven frame times that differs from the presented span, so size the last sample
        # to make the two equal: frame count / duration then gives the input's rate.
        packet.duration = max(1, end_pts - (dts - self._first_dts))
        self._out.mux(packet)

    def close(self) -> None:
        """Flush the encoder and the remaining audio and finish the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._last_enc is not None:
                end_pts = self._last_enc + self._step
                self._mux_video(self._stream.encode(None))
                self._mux_last_video_packet(end_pts)
                if self._audio is not None:
                    self._audio.finish(float(end_pts * self._enc_tb))
            if self._audio is not None:
                self._audio.close()
            self._out.close()
        except (av.error.FFmpegError, OSError) as exc:
            self.abort()
            raise OvsegError(
                f"{self.path}: failed to finish the video ({error_reason(exc)})"
            ) from None

    def abort(self) -> None:
        """Close without flushing, for a file the caller is about to delete."""
        self._closed = True
        self._held = None
        closers = [self._audio.close] if self._audio is not None else []
        for closer in [*closers, self._out.close]:
            # The partial file is going away; an error closing it has nothing useful to say.
            with contextlib.suppress(Exception):
                closer()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        # On an exception the file is going to be deleted: do not spend time flushing it.
        if exc_type is None:
            self.close()
        else:
            self.abort()
