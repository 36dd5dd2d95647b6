"""Carrying a person's sparse labels through a video: one ``FrameResult`` per frame, in order.

    from ovseg_cli import propagate_video
    for r in propagate_video("clip.mp4", "labels/cvat.zip"):
        print(r.index, r.is_keyframe, r.mask.shape)

Frames a person labelled (the label set's frames) are *anchors*: their masks pass through
unchanged, bit for bit. Every other frame takes its labels from the anchors of its shot:

- between two anchors, from both (``propagation`` blends the two warped label maps per
  pixel, by temporal distance and by how well each warped anchor matches the frame);
- before the first or after the last anchor of a shot, from the nearest one alone;
- never across a shot cut (``ovseg_cli.segment.shots``): a shot with no anchor stays
  unlabelled, unless a model fills it in (``fill``);
- no farther than ``max_gap`` frames from an anchor, when that is set.

A frame's coordinates in an anchor come from the flows between consecutive frames,
chained (``warping``: what measured best), computed at the working resolution
(``flow_size``, the frame's own by default) on a pool of threads as the frames are read;
the label maps are warped at their own, full resolution, softly (the argmax of the
blended bilinear one-hot maps), and unlabelled pixels (255) are carried like a class, so
they stay unlabelled where they land.

Memory: a frame that will take labels from the *next* anchor is held until that anchor
is read, so at most one gap between anchors (or ``max_gap`` frames) is held; the largest
gap is known from the label set before the video is read, and checked against the memory
available.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_cli.classes import UNLABELLED
from ovseg_cli.config import PropagateConfig, default_of
from ovseg_cli.errors import OvsegError
from ovseg_cli.propagate.labels import LabelSet, read_labels
from ovseg_cli.propagate.warping import (
    FINEST_SCALE,
    AnchorLabels,
    at_size,
    compose,
    fuse,
    prev_weight,
    side_weight,
    to_map,
)
from ovseg_cli.segment.propagation import CUT_SHARE, MAX_FLOW_THREADS, FlowPool
from ovseg_cli.segment.results import FrameResult, FrameSource, ResultStream
from ovseg_cli.segment.shots import ShotDetector
from ovseg_cli.threads import Prefetcher, resolved, usable_cores
from ovseg_cli.video.reader import DecodedFrame, VideoReader

# A model that fills frames no anchor reaches: (RGB frame, shot_start) -> (H, W) uint8 mask
Filler = Callable[[np.ndarray, bool], np.ndarray]


@dataclass(frozen=True)
class PropagateSettings:
    """How labels are carried from the labelled frames to the others."""

    bidirectional: bool = default_of(PropagateConfig, "bidirectional")
    flow_preset: str = default_of(PropagateConfig, "flow_preset")
    flow_size: int | None = default_of(PropagateConfig, "flow_size")
    shot_threshold: float = default_of(PropagateConfig, "shot_threshold")
    max_gap: int | None = default_of(PropagateConfig, "max_gap")

    @classmethod
    def from_config(cls, cfg: PropagateConfig) -> PropagateSettings:
        """The settings of a ``PropagateConfig``."""
        return cls(
            bidirectional=cfg.bidirectional, flow_preset=cfg.flow_preset,
            flow_size=cfg.flow_size, shot_threshold=cfg.shot_threshold, max_gap=cfg.max_gap,
        )  # fmt: skip

    def reaches(self, distance: int) -> bool:
        """Whether an anchor ``distance`` frames away may label a frame."""
        return self.max_gap is None or distance <= self.max_gap

    def describe(self) -> dict[str, Any]:
        """The settings for meta.json."""
        flow = dict(
            method="DIS (OpenCV)", preset=self.flow_preset, size=self.flow_size,
            finest_scale=FINEST_SCALE, chained="consecutive frames",
        )  # fmt: skip
        return {
            "method": "label maps carried from the labelled frames along chained flows of "
            "consecutive frames, warped softly at the labels' resolution (argmax of the "
            "bilinear one-hot maps); two sides blended per pixel by temporal distance and "
            "warp error",
            "bidirectional": self.bidirectional,
            "max_gap": self.max_gap,
            "flow": flow,
        }


@dataclass
class _Anchor:
    """A frame whose labels are known: labelled by a person, or by the model (``fill``)."""

    index: int
    grey: np.ndarray  # at the flow's working resolution
    mask: np.ndarray  # (H, W) uint8 at the frame's resolution

    def __post_init__(self) -> None:
        self.labels = AnchorLabels(self.mask)  # prepared once for every frame that uses it


@dataclass
class _Held:
    """A frame read and not yet returned, with what it takes its labels from."""

    frame: DecodedFrame
    grey: np.ndarray
    cut: bool
    prev: _Anchor | None = None
    back: Any = None  # with prev: the flow field to the frame before (or its Future)
    ahead: Any = None  # waiting: the flow field to the frame after, once that is read
    next: _Anchor | None = None
    next_coords: np.ndarray | None = None  # waiting: where each pixel is in the next anchor
    wait: bool = False  # takes labels from the next anchor, not read yet


@dataclass
class _Counts:
    labelled: list[int] = field(default_factory=list)  # frames that passed through
    filled: list[int] = field(default_factory=list)  # frames the model segmented
    unlabelled: int = 0  # frames no anchor reached
    cuts: list[int] = field(default_factory=list)


class LabelPropagation(ResultStream):
    """An iterator of ``FrameResult`` over one video, from a ``LabelSet``."""

    def __init__(
        self,
        source: FrameSource,
        labels: LabelSet,
        settings: PropagateSettings | None = None,
        fill: Filler | None = None,
    ) -> None:
        self.reader = source  # opened by the caller; closed with the propagation
        self.info = source.info
        self.labels = labels
        self.settings = settings = settings or PropagateSettings()
        self.fill = fill
        self.counts = _Counts()
        self.flow_resolution: tuple[int, int] | None = None
        self._wanted = set(labels.frames)
        self._closed = False
        try:
            self._check()
        except BaseException:
            source.close()
            raise
        # no model here: the flows may have the core keyframe mode keeps for it
        workers = min(MAX_FLOW_THREADS, usable_cores())
        self._flows = FlowPool(settings.flow_preset, settings.flow_size, workers, FINEST_SCALE)
        self._chain: tuple[int, int, np.ndarray] | None = None  # (anchor, frame, its map)
        self._frames = Prefetcher(self._read(), depth=4, name="ovseg-propagate-reader")
        self._results = self._run()

    def _check(self) -> None:
        """Refuse labels that cannot be this video's, and gaps that would not fit in memory."""
        from ovseg_cli.memory import available_host_bytes, check_fits

        w, h = self.info.width, self.info.height
        lw, lh = self.labels.size()
        if (lw, lh) != (w, h):
            raise OvsegError(
                f"{self.labels.path}: the labels are {lw}x{lh}, the video {self.info.path.name} "
                f"is {w}x{h}"
            )
        count = self.info.frame_count
        last = self.labels.frames[-1]
        # the container's count may be an estimate (from the duration): refuse before reading
        # only what is clearly past the end; the frames read decide the rest (``_run``)
        if count is not None and last >= count + VideoReader.count_margin(count):
            raise OvsegError(
                f"{self.labels.path}: frame {last} is labelled, but {self.info.path.name} has "
                f"{count} frames (0 to {count - 1})"
            )
        # frames wait for the next labelled frame: all of a gap (before the first labelled
        # frame only, without bidirectional); the frames after the last one never wait
        frames = self.labels.frames
        gaps = [b - a - 1 for a, b in zip([-1, *frames], frames, strict=False)]
        held = max(1, max(gaps) if self.settings.bidirectional else gaps[0])
        if self.settings.max_gap is not None:
            held = min(held, self.settings.max_gap)
        side = min(self.settings.flow_size or min(h, w), h, w)
        grey = side * side * 16 // 9  # and a map of coordinates (8 bytes a pixel) each
        check_fits(
            (held + 8) * (h * w * 3 + 9 * grey),
            available_host_bytes(),
            f"holding up to {held} frames of {w}x{h} between labelled frames",
            "label frames closer together, or pass --max-gap N or --no-bidirectional",
        )

    def _read(self) -> Iterator[tuple[DecodedFrame, np.ndarray, bool]]:
        """Reader thread: decode, make the flow's grey image, detect cuts."""
        threshold = self.settings.shot_threshold
        shots = ShotDetector(threshold) if threshold > 0 else None
        for frame in self.reader:
            grey = self._flows.estimator.grey(frame.rgb)
            self.flow_resolution = (grey.shape[1], grey.shape[0])
            yield frame, grey, shots is not None and shots(frame.rgb)

    def _next_labelled(self, index: int) -> int | None:
        """The first labelled frame after ``index`` (cuts aside)."""
        import bisect

        frames = self.labels.frames
        i = bisect.bisect_right(frames, index)
        return frames[i] if i < len(frames) else None

    def _run(self) -> Iterator[FrameResult]:
        """Frames in order; those waiting for the next anchor are held until it is read."""
        settings = self.settings
        held: deque[_Held] = deque()
        prev: _Anchor | None = None
        last: tuple[int, np.ndarray] | None = None  # the frame before, in this shot: its grey
        seen = -1
        for frame, grey, cut in self._frames:
            seen = frame.index
            if cut:
                self.counts.cuts.append(frame.index)
                yield from self._release(held, None)  # nothing crosses a cut
                prev = last = None
            if held and held[-1].wait:  # the chain towards the next anchor grows by a link
                held[-1].ahead = self._flows.submit_field(held[-1].grey, grey)
            if frame.index in self._wanted:
                anchor = _Anchor(frame.index, grey, self.labels.mask(frame.index))
                yield from self._release(held, anchor)
                prev, last = anchor, (frame.index, grey)
                self.counts.labelled.append(frame.index)
                yield self._result(frame, anchor.mask, True, cut)
                continue
            item = _Held(frame, grey, cut)
            if prev is not None and settings.reaches(frame.index - prev.index):
                assert last is not None and last[0] == frame.index - 1
                item.prev = prev
                item.back = self._flows.submit_field(grey, last[1])
            last = (frame.index, grey)
            upcoming = self._next_labelled(frame.index)
            item.wait = (
                upcoming is not None
                and settings.reaches(upcoming - frame.index)
                and (settings.bidirectional or item.prev is None)
            )
            if not item.wait and item.prev is None and self.fill is not None:
                yield from self._release(held, None)
                prev = self._filled(frame, grey, cut)
                yield self._result(frame, prev.mask, True, cut)
                continue
            held.append(item)
            while held and not held[0].wait:  # nothing ahead of it waits: out in order
                yield self._resolve(held.popleft())
        yield from self._release(held, None)
        missing = [i for i in self.labels.frames if i > seen]
        if missing:
            raise OvsegError(
                f"{self.labels.path}: frame {missing[0]} is labelled, but "
                f"{self.info.path.name} has {seen + 1} frames (0 to {seen})"
            )

    def _filled(self, frame: DecodedFrame, grey: np.ndarray, cut: bool) -> _Anchor:
        """The model's labels of a frame no anchor reaches; it becomes an anchor in turn."""
        assert self.fill is not None
        self.counts.filled.append(frame.index)
        return _Anchor(frame.index, grey, self.fill(frame.rgb, cut))

    def _release(self, held: deque[_Held], anchor: _Anchor | None) -> Iterator[FrameResult]:
        """The held frames, now that the next anchor (or a cut, or the end: None) is here.

        The waiting frames are the last ones held, consecutive up to the anchor: their maps
        into it are chained from the anchor backwards."""
        if anchor is not None:
            coords = None
            for item in reversed(held):
                if not item.wait:
                    break
                field = resolved(item.ahead)
                coords = to_map(field) if coords is None else compose(coords, field)
                item.next, item.next_coords = anchor, coords
        while held:
            yield self._resolve(held.popleft())

    def _prev_coords(self, item: _Held) -> np.ndarray:
        """Where each pixel of the frame is in its previous anchor: the map of the frame
        before (resolved just before this one, in order) and the flow between the two."""
        assert item.prev is not None
        field = resolved(item.back)
        index, anchor = item.frame.index, item.prev.index
        chain = self._chain
        if chain is not None and chain[:2] == (anchor, index - 1):
            coords = compose(chain[2], field)
        else:  # the first frame after the anchor
            coords = to_map(field)
        self._chain = (anchor, index, coords)
        return coords

    def _resolve(self, item: _Held) -> FrameResult:
        """One non-anchor frame's labels from the anchors it has; with a model, the model's
        where every anchor it has mispredicts the frame (another scene, a flow failure)."""
        frame = item.frame
        height, width = frame.rgb.shape[:2]
        prev, nxt = item.prev, item.next
        prev_coords = self._prev_coords(item) if prev is not None else None
        # (anchor, map into it, its place in time: 0 before the frame, 1 after)
        sides = [(a, c, w) for a, c, w in ((prev, prev_coords, 0.0), (nxt, item.next_coords, 1.0))
                 if a is not None and c is not None]  # fmt: skip
        grey = item.grey
        if not sides:
            self.counts.unlabelled += 1
            return self._result(
                frame, np.full((height, width), UNLABELLED, np.uint8), False, item.cut
            )
        if len(sides) == 2:
            assert prev is not None and nxt is not None
            t = (frame.index - prev.index) / (nxt.index - prev.index)
            scores = [side_weight(grey, a.grey, c, 1 - abs(w - t)) for a, c, w in sides]
        elif self.fill is not None:  # one side: its error matters only to a model
            scores = [side_weight(grey, sides[0][0].grey, sides[0][1], 1.0)]
        else:
            scores = []
        if self.fill is not None and all(bad > CUT_SHARE for _, bad in scores):
            self.counts.filled.append(frame.index)
            return self._result(frame, self.fill(frame.rgb, item.cut), True, item.cut)
        full = [(a.labels, at_size(c, height, width)) for a, c, _ in sides]
        if len(sides) == 2:
            weight = prev_weight(scores[0], scores[1], height, width)
            mask = fuse(*full[0], *full[1], weight)
        else:
            mask = fuse(*full[0])
        return self._result(frame, mask, False, item.cut)

    @staticmethod
    def _result(frame: DecodedFrame, mask: np.ndarray, anchor: bool, cut: bool) -> FrameResult:
        return FrameResult(frame.index, frame.time, frame.pts, frame.rgb, mask, None, anchor, cut)

    def describe(self) -> dict[str, Any]:
        """What was propagated how, for meta.json."""
        info = self.settings.describe()
        if self.flow_resolution is not None:
            info["flow"]["resolution"] = list(self.flow_resolution)
        c = self.counts
        return {
            **info,
            "labelled_frames": len(c.labelled),
            "model_filled_frames": c.filled,
            "unlabelled_frames": c.unlabelled,
            # the frames every other frame's labels came from, as `segment` calls them
            "keyframe_indices": sorted([*c.labelled, *c.filled]),
        }

    @property
    def shot_threshold(self) -> float:
        """The cut detection threshold (0: none)."""
        return self.settings.shot_threshold

    @property
    def cuts(self) -> list[int]:
        """Indices of the frames that started a new shot."""
        return self.counts.cuts

    def _close_more(self) -> None:
        self._flows.close()


def propagate_video(
    video: str | Path,
    labels: str | Path | LabelSet,
    *,
    classes_file: str | Path | None = None,
    config: PropagateConfig | None = None,
    fill: Filler | None = None,
    **overrides: Any,
) -> LabelPropagation:
    """Carry sparse labels (a mask folder, a CVAT zip or a COCO json) through a video;
    iterate the result for one ``FrameResult`` per frame.

    ``overrides`` are settings of ``PropagateConfig`` (e.g. ``max_gap=30``); ``fill``: a
    function that segments a frame no labelled frame reaches (see ``model_filler``).
    """
    from ovseg_cli.config_io import from_mapping, to_dict

    cfg = config or PropagateConfig()
    if overrides:
        cfg = from_mapping(PropagateConfig, {**to_dict(cfg), **overrides}, source="propagate_video")
    if not isinstance(labels, LabelSet):
        labels = read_labels(labels, classes_file, empty_frames=cfg.empty_frames)
    reader = VideoReader(video)
    return LabelPropagation(reader, labels, PropagateSettings.from_config(cfg), fill)
