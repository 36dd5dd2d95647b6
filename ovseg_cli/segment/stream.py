"""The stream: any segmenter over a sequence of frames, one result per frame, in order.

    from ovseg_cli import segment_video
    for r in segment_video("clip.mp4", "road,sky,horse", pretrained="openai"):
        print(r.index, r.time, r.mask.shape)

``SegmentationStream`` is the one loop that `segment` and `eval` (and the Python API) run:
frames come from a video file (``VideoReader``) or from a prepared dataset's images
(``ImageSequence``), and the same settings (``StreamSettings``) choose keyframes, batch
them, detect shot cuts and threshold the masks. Frames are decoded in a background thread
and resized on a pool of threads while the model runs (as uint8: the model's device
normalises them); nothing but a few frames in flight and the bounded temporal state is held
in memory.

With a keyframe interval above 1 (or ``auto``) only keyframes run the model and update its
state. The reader thread picks the keyframes and computes every other frame's optical
flow to its previous keyframe (with ``bidirectional``, to its next one as well); the
model's thread warps the keyframes' class scores with it (``ovseg_cli.segment.propagation``).
Results still come in frame order: a frame waiting for its next keyframe is held, so at
most one interval of frames (times ``batch`` keyframes) is in memory.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovseg_cli.classes import ClassSpec, resolve_classes, with_background
from ovseg_cli.clip.prompts import Vocabulary
from ovseg_cli.config import SegmentConfig, default_of
from ovseg_cli.config_io import from_mapping, to_dict
from ovseg_cli.segment.loading import load_model
from ovseg_cli.segment.masks import logits_to_mask
from ovseg_cli.segment.propagation import (
    Flow,
    FlowPool,
    KeyframeSettings,
    flow_threads,
    propagate_scores,
)
from ovseg_cli.segment.protocol import Segmenter
from ovseg_cli.segment.results import FrameResult, FrameSource, ResultStream
from ovseg_cli.segment.shots import ShotDetector
from ovseg_cli.threads import Prefetcher, resolved, spare_cores
from ovseg_cli.video.reader import DecodedFrame, VideoInfo, VideoReader

MASKS_AHEAD = 2  # results whose masks are being made while the model runs on
# threads resizing keyframes for the model (PIL's bicubic, about 9 ms a 720p frame, releases
# the GIL): with one reader thread doing it, a fast model waited on the resizing
MAX_PREPARE_THREADS = 4


@dataclass
class _Planned:
    """A decoded frame and what the reader thread prepared for it."""

    frame: DecodedFrame
    key: bool
    image: torch.Tensor | Future[torch.Tensor] | None = None  # keyframes: the model's input
    cut: bool = False  # the frame starts a new shot (always a keyframe)
    # Flow, or its Future while a FlowPool computes it (``resolved`` where it is used)
    prev_flow: Flow | Future[Flow] | None = None  # frames in between: to the previous keyframe
    next_flow: Flow | Future[Flow] | None = None  # bidirectional: to the next keyframe, once read
    next_key: _Planned | None = None  # bidirectional: the next keyframe, once read
    forward_only: bool = False  # bidirectional: a cut comes before the next keyframe
    # bidirectional keyframe: flows of the frames since the previous keyframe, by index
    back_flows: dict[int, Flow | Future[Flow]] | None = None
    logits: torch.Tensor | None = None  # keyframes, once the model has run


def prepare_threads() -> int:
    """Threads resizing keyframes: the spare cores up to 4, and at least 2 so that resizing
    overlaps decoding even on a 2-core machine."""
    return max(2, spare_cores(MAX_PREPARE_THREADS))


def default_batch(device: torch.device) -> int:
    """Keyframes per encoder pass: batching pays on a GPU, only costs memory on a CPU."""
    return 8 if device.type == "cuda" else 1


@dataclass(frozen=True)
class StreamSettings:
    """How the stream runs a segmenter over frames: the same for `segment` and `eval`."""

    keyframes: KeyframeSettings = field(default_factory=KeyframeSettings)
    batch: int | None = None  # keyframes per encoder pass (None: default_batch)
    shot_threshold: float = default_of(SegmentConfig, "shot_threshold")  # 0: no cut detection
    threshold: float | None = None  # best-class probability below which a pixel is unlabelled
    size: int | None = None  # short side the model sees (None: the segmenter's own)

    @classmethod
    def from_config(cls, cfg: SegmentConfig, size: int | None = None) -> StreamSettings:
        """The stream settings of a ``SegmentConfig`` (``size``: a short side of its own)."""
        return cls(
            keyframes=KeyframeSettings.from_config(cfg), batch=cfg.batch,
            shot_threshold=cfg.shot_threshold, threshold=cfg.threshold, size=size,
        )  # fmt: skip


class SegmentationStream(ResultStream):
    """An iterator of ``FrameResult`` over one video, with the run's context attached."""

    def __init__(
        self,
        source: FrameSource,
        vocabulary: Vocabulary,
        model: Segmenter,
        settings: StreamSettings | None = None,
    ) -> None:
        self.model = model
        self.vocabulary = vocabulary
        self.stream_settings = settings = settings or StreamSettings()
        self.settings = settings.keyframes
        self.threshold = settings.threshold
        self.size = settings.size
        self.shot_threshold = settings.shot_threshold
        self.batch = settings.batch or default_batch(model.device)
        self.reader = source  # opened (and checked) by the caller; closed with the stream
        self.info: VideoInfo = source.info
        try:
            self._check_memory()
        except BaseException:
            source.close()
            raise
        self.state = model.init_state()
        self.keyframes = 0  # frames that went through the model so far
        self.cuts: list[int] = []  # indices of the frames that started a new shot
        self.peak_held = 0  # most frames held at once between reading and returning them
        self.flow_resolution: tuple[int, int] | None = None  # (w, h) the flow is computed at
        self.flow_workers = flow_threads()  # threads computing keyframe mode's flows
        self.prepare_workers = prepare_threads()  # threads resizing keyframes
        # a whole batch of frames can be read while the previous batch runs
        self._frames = Prefetcher(self._plan(), depth=max(4, self.batch))
        self._results = self._stream()
        self._closed = False

    def _check_memory(self) -> None:
        """Refuse settings whose memory would exceed what is available, before any work."""
        from ovseg_cli.memory import available_device_bytes, available_host_bytes, check_fits

        h, w = self.info.height, self.info.width
        step = self.model.memory_estimate(h, w, self.batch, len(self.vocabulary.names), self.size)
        s = self.settings
        gap = s.longest_gap if s.propagating else 1
        side = min(s.flow_size or h, h, w)
        flow = side * side * 16 // 9 * 8 if s.propagating else 0  # (h, w, 2) float32
        held = (gap * self.batch + max(4, self.batch) + 4) * (h * w * 3 + flow)
        advice = "use a smaller --size, --window N, --batch or --keyframe-interval"
        device = self.model.device
        on_device = available_device_bytes(device)
        what = f"segmenting {w}x{h} frames with these settings"
        if on_device is not None:
            check_fits(step, on_device, f"{what} on {device}", advice)
            check_fits(held, available_host_bytes(), what, advice)
        else:
            check_fits(step + held, available_host_bytes(), what, advice)

    def _plan(self) -> Iterator[_Planned]:
        """Reader thread: decode, choose keyframes, have their input prepared on a pool
        (a future in ``image``), compute flows."""
        pool = ThreadPoolExecutor(self.prepare_workers, thread_name_prefix="ovseg-prepare")
        try:
            yield from self._planned(lambda rgb: pool.submit(self.model.prepare, rgb, self.size))
        finally:  # nothing cancelled: frames already planned still wait for their input;
            # the threads end with the reader (a few resizes at most), none outlives the stream
            pool.shutdown(wait=True)

    def _planned(self, prepare: Callable[[np.ndarray], Future[torch.Tensor]]) -> Iterator[_Planned]:
        settings = self.settings
        shots = ShotDetector(self.shot_threshold) if self.shot_threshold > 0 else None
        if not settings.propagating:
            for frame in self.reader:
                cut = shots is not None and shots(frame.rgb)
                yield _Planned(frame, True, prepare(frame.rgb), cut=cut)
            return
        # the pairs' flows on a pool (futures, resolved where they are used): auto mode
        # needs each flow at once to choose keyframes, and computes it here
        flows = FlowPool(settings.flow_preset, settings.flow_size, self.flow_workers)
        key_grey: np.ndarray | None = None
        waiting: dict[int, np.ndarray] = {}  # bidirectional: grey frames since the keyframe
        since = 0
        try:
            for frame in self.reader:
                grey = flows.estimator.grey(frame.rgb)
                self.flow_resolution = (grey.shape[1], grey.shape[0])
                since += 1
                cut = shots is not None and shots(frame.rgb)
                flow = None
                if key_grey is not None and not cut and settings.auto:  # auto: the warp
                    flow = flows.estimator(grey, key_grey)
                if key_grey is None or cut or settings.is_keyframe(since, flow):
                    item = _Planned(frame, True, prepare(frame.rgb), cut=cut)
                    if settings.bidirectional:
                        # across a cut the other shot's scores are no use: forward only
                        back = {} if cut else {i: flows.submit(g, grey) for i, g in waiting.items()}
                        item.back_flows = back
                        waiting.clear()
                    key_grey, since = grey, 0
                else:
                    prev = flow if flow is not None else flows.submit(grey, key_grey)
                    item = _Planned(frame, False, prev_flow=prev)
                    if settings.bidirectional:
                        waiting[frame.index] = grey
                yield item
        finally:
            flows.close()

    def _stream(self) -> Iterator[FrameResult]:
        """The frames' results in order; each mask (upsampling, best class) is made in a
        thread of its own while the model goes on with the next frames."""
        with ThreadPoolExecutor(1, thread_name_prefix="ovseg-masks") as masks:
            pending: deque[Future[FrameResult]] = deque()
            for head, logits in self._scores():
                pending.append(masks.submit(self._result, head, logits))
                if len(pending) > MASKS_AHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _scores(self) -> Iterator[tuple[_Planned, torch.Tensor]]:
        """Model thread: run keyframes (in batches), propagate to the rest, in frame order."""
        window: deque[_Planned] = deque()  # frames read and not yet returned, in order
        prev_logits: torch.Tensor | None = None
        prev_index = 0
        exhausted = False

        def pull() -> bool:
            nonlocal exhausted
            if exhausted:
                return False
            try:
                item = next(self._frames)
            except StopIteration:
                exhausted = True
                return False
            if item.back_flows is not None:  # bidirectional: the frames waiting for this
                for held in window:  # keyframe get their flows to it (none across a cut)
                    if held.key or held.next_key is not None or held.forward_only:
                        continue
                    if held.frame.index in item.back_flows:
                        held.next_flow = item.back_flows[held.frame.index]
                        held.next_key = item
                    else:
                        held.forward_only = True
                item.back_flows = None
            window.append(item)
            self.peak_held = max(self.peak_held, len(window))
            return True

        while window or pull():
            head = window[0]
            if self.settings.bidirectional and not head.key:
                while head.next_key is None and not head.forward_only and pull():  # read ahead
                    pass
            needed = head if head.key else head.next_key
            if needed is not None and needed.logits is None:
                while self._pending(window) < self.batch and pull():
                    pass
                self._run_keyframes(window)
            window.popleft()
            if head.key:
                prev_logits, prev_index = head.logits, head.frame.index
                logits = head.logits
            else:
                nxt = head.next_key
                t = 0.0
                if nxt is not None:
                    t = (head.frame.index - prev_index) / (nxt.frame.index - prev_index)
                logits = propagate_scores(
                    prev_logits, resolved(head.prev_flow), nxt.logits if nxt else None,
                    resolved(head.next_flow), t,
                )  # fmt: skip
            yield head, logits

    @staticmethod
    def _pending(window: deque[_Planned]) -> int:
        return sum(1 for item in window if item.key and item.logits is None)

    def _run_keyframes(self, window: deque[_Planned]) -> None:
        """Run the model on the next ``batch`` keyframes of the window, in order."""
        todo = [item for item in window if item.key and item.logits is None][: self.batch]
        for item in todo:
            item.image = resolved(item.image)
        shape = todo[0].image.shape
        todo = list(itertools.takewhile(lambda item: item.image.shape == shape, todo))
        # a batch never spans a cut: the state is reset before the cut's frame
        todo = todo[:1] + list(itertools.takewhile(lambda item: not item.cut, todo[1:]))
        if todo[0].cut:
            self.state.reset()
            self.cuts.append(todo[0].frame.index)
        images = torch.cat([item.image for item in todo])
        outputs, self.state = self.model.step_batch(images, self.state, self.vocabulary)
        for item, logits in zip(todo, outputs, strict=True):
            item.logits, item.image = logits.float(), None
        self.keyframes += len(todo)

    def _result(self, item: _Planned, logits: torch.Tensor) -> FrameResult:
        frame = item.frame
        mask = logits_to_mask(logits, frame.rgb.shape[:2], self.threshold)
        return FrameResult(
            frame.index, frame.time, frame.pts, frame.rgb, mask, logits.cpu(), item.key, item.cut
        )

    def describe(self) -> dict[str, Any]:
        """Keyframe and propagation settings, for meta.json."""
        info = {**self.settings.describe(), "batch": self.batch}
        if self.flow_resolution is not None:
            info["flow"]["resolution"] = list(self.flow_resolution)
        return info


def segment_video(
    video: str | Path,
    classes: str | Sequence[str | ClassSpec] | None = None,
    *,
    classes_file: str | Path | None = None,
    model: Segmenter | None = None,
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
    return SegmentationStream(reader, vocabulary, model, StreamSettings.from_config(cfg))
