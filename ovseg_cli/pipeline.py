"""``segment_video``: stream a video through a segmenter, one result per frame.

    from ovseg_cli import segment_video
    for r in segment_video("clip.mp4", "road,sky,horse", pretrained="openai"):
        print(r.index, r.time, r.mask.shape)

Frames are decoded and resized in a background thread while the model runs; nothing
but a few frames in flight and the bounded temporal state is held in memory.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovseg_cli.classes import UNLABELLED, ClassSpec, resolve_classes, with_background
from ovseg_cli.config import SegmentConfig, from_mapping, to_dict
from ovseg_cli.prompts import Vocabulary
from ovseg_cli.segmenter import SegmentState, TrainingFreeSegmenter, load_model
from ovseg_cli.threads import Prefetcher
from ovseg_cli.video_reader import DecodedFrame, VideoInfo, VideoReader


@dataclass
class FrameResult:
    """The segmentation of one frame."""

    index: int  # 0-based within the segmented range
    time: float  # seconds since the start of the video
    pts: int  # presentation time stamp in the video stream's time base
    frame: np.ndarray  # (H, W, 3) uint8 RGB, upright
    mask: np.ndarray  # (H, W) uint8 class indices into the vocabulary; 255 = unlabelled
    logits: torch.Tensor  # (N, gh, gw) float32 class scores at the model's resolution


@functools.lru_cache(maxsize=8)
def _interp_matrix(n_in: int, n_out: int, device: str) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation, as F.interpolate(align_corners=False)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    lam = (src - i0).float()
    m = torch.zeros(n_out, n_in)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - lam, accumulate=True)
    m.index_put_((rows, i1), lam, accumulate=True)
    return m.to(device)


def logits_to_mask(
    logits: torch.Tensor, size: tuple[int, int], threshold: float | None = None
) -> np.ndarray:
    """Upsample (N, gh, gw) logits bilinearly to (H, W) and take the best class per pixel.

    Bilinear upsampling is separable, so each class map is two small matrix products; the
    best class is kept with a running maximum, one class at a time. On a CPU this is ~15x
    faster than F.interpolate + argmax(dim=0) and never holds all N full-size maps.

    With a ``threshold``, pixels whose best class probability (softmax over the classes)
    is below it become 255 (unlabelled). The probability is computed at the model's
    resolution and its maximum upsampled bilinearly like the logits: one more small map,
    not N full-size softmaxes; near class borders it can differ slightly from the
    per-pixel softmax of the upsampled logits.
    """
    logits = logits.float()
    dev = str(logits.device)
    wy = _interp_matrix(logits.shape[1], size[0], dev)
    wx_t = _interp_matrix(logits.shape[2], size[1], dev).T.contiguous()
    best = wy @ logits[0] @ wx_t
    label = torch.zeros(size, dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[0]):
        score = wy @ logits[c] @ wx_t
        label.masked_fill_(score > best, c)  # strict: ties keep the lower index, like argmax
        torch.maximum(best, score, out=best)
    if threshold is not None:
        confidence = torch.softmax(logits, dim=0).amax(dim=0)
        label.masked_fill_(wy @ confidence @ wx_t < threshold, UNLABELLED)
    return label.cpu().numpy()


class SegmentationStream:
    """An iterator of ``FrameResult`` over one video, with the run's context attached."""

    def __init__(
        self,
        video: str | Path | VideoReader,
        vocabulary: Vocabulary,
        model: TrainingFreeSegmenter,
        *,
        start: float = 0.0,
        end: float | None = None,
        threshold: float | None = None,
    ) -> None:
        self.model = model
        self.vocabulary = vocabulary
        self.threshold = threshold  # best-class probability below which a pixel is unlabelled
        if isinstance(video, VideoReader):
            self.reader = video  # already opened (and checked) by the caller
        else:
            self.reader = VideoReader(video, start=start, end=end)
        self.info: VideoInfo = self.reader.info
        self.state: SegmentState = model.init_state()
        self._frames = Prefetcher(self._prepared(), depth=4)
        self._closed = False

    def _prepared(self) -> Iterator[tuple[DecodedFrame, torch.Tensor]]:
        for frame in self.reader:
            yield frame, self.model.prepare(frame.rgb)

    @property
    def skipped(self) -> int:
        """Frames that could not be decoded and were skipped."""
        return self.reader.skipped

    def __iter__(self) -> Iterator[FrameResult]:
        return self

    def __next__(self) -> FrameResult:
        if self._closed:
            raise StopIteration
        try:
            frame, image = next(self._frames)
        except BaseException:
            self.close()
            raise
        logits, self.state = self.model.step(image, self.state, self.vocabulary)
        logits = logits.float()
        mask = logits_to_mask(logits, frame.rgb.shape[:2], self.threshold)
        return FrameResult(frame.index, frame.time, frame.pts, frame.rgb, mask, logits.cpu())

    def close(self) -> None:
        """Stop decoding and release the video file."""
        if not self._closed:
            self._closed = True
            self._frames.close()
            self.reader.close()

    def __enter__(self) -> SegmentationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def segment_video(
    video: str | Path,
    classes: str | Sequence[str | ClassSpec] | None = None,
    *,
    classes_file: str | Path | None = None,
    model: TrainingFreeSegmenter | None = None,
    config: SegmentConfig | None = None,
    **overrides: Any,
) -> SegmentationStream:
    """Segment a video with the given classes; iterate the result for one ``FrameResult`` per frame.

    ``overrides`` are settings of ``SegmentConfig`` (e.g. ``pretrained="none"``, ``end=2``).
    A ``model`` from ``load_model`` can be reused across videos.
    """
    cfg = config or SegmentConfig()
    if overrides:
        cfg = from_mapping(SegmentConfig, {**to_dict(cfg), **overrides}, source="segment_video")
    specs = with_background(resolve_classes(classes, classes_file), cfg.background)
    reader = VideoReader(video, start=cfg.start, end=cfg.end)  # a bad video fails before loading
    try:
        model = model or load_model(cfg)
        vocabulary = model.encode_vocabulary(specs)
    except BaseException:
        reader.close()
        raise
    return SegmentationStream(reader, vocabulary, model, threshold=cfg.threshold)
