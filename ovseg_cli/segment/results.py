"""What a stream of segmented frames gives: ``FrameResult``s, one per frame, in order.

``segment``'s ``SegmentationStream`` and ``propagate``'s ``LabelPropagation`` are both a
``ResultStream``; this module imports no torch, so that `propagate` (label maps only)
starts without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ovseg_cli.video.reader import DecodedFrame, VideoInfo

if TYPE_CHECKING:
    import torch

    from ovseg_cli.threads import Prefetcher


@dataclass
class FrameResult:
    """The segmentation of one frame."""

    index: int  # 0-based within the segmented range
    time: float  # seconds since the start of the video
    pts: int  # presentation time stamp in the video stream's time base
    frame: np.ndarray  # (H, W, 3) uint8 RGB, upright
    mask: np.ndarray  # (H, W) uint8 class indices into the vocabulary; 255 = unlabelled
    # (N, gh, gw) float32 class scores at the model's resolution (log-probabilities where
    # two keyframes were blended: same softmax and best class as the blend); None where
    # labels were carried from a person's labels (`propagate`), which have no scores
    logits: torch.Tensor | None
    # False: propagated by optical flow from keyframes (`propagate`: from labelled frames)
    is_keyframe: bool = True
    shot_start: bool = False  # a cut was detected here: the temporal state started afresh


class FrameSource(Protocol):
    """Where frames come from: a video file (VideoReader) or a dataset's images."""

    info: VideoInfo
    skipped: int

    def __iter__(self) -> Iterator[DecodedFrame]:
        """The frames in order."""
        ...

    def close(self) -> None:
        """Release the files."""
        ...


class ResultStream:
    """An iterator of ``FrameResult`` that closes its reader and threads when it ends,
    fails or is closed (``segment``'s stream and ``propagate``'s share it)."""

    reader: FrameSource
    shot_threshold: float
    cuts: list[int]
    _results: Iterator[FrameResult]
    _frames: Prefetcher
    _closed: bool

    @property
    def skipped(self) -> int:
        """Frames that could not be decoded and were skipped."""
        return self.reader.skipped

    def describe_shots(self) -> dict[str, Any]:
        """Cut detection settings and the frames where a new shot started, for meta.json."""
        return {
            "method": "mean HSV difference of consecutive 64x36 thumbnails (ovseg_cli.segment.shots)",
            "threshold": self.shot_threshold or None,
            "cuts": list(self.cuts),
        }

    def __iter__(self) -> Iterator[FrameResult]:
        return self

    def __next__(self) -> FrameResult:
        if self._closed:
            raise StopIteration
        try:
            return next(self._results)
        except BaseException:
            self.close()
            raise

    def _close_more(self) -> None:
        """What a subclass also releases on close (before the reader)."""

    def close(self) -> None:
        """Stop decoding and release the video file."""
        if not self._closed:
            self._closed = True
            self._results.close()  # drops the frames it holds
            self._frames.close()
            self._close_more()
            self.reader.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
