"""Annotation-tool exports of a `segment` run: ``--export cvat,coco,stats``.

Every format streams: each frame is written when it arrives, so memory does not grow
with the video. Frames are numbered as CVAT numbers the frames of a video task: from 0
at the first frame of the video (so with ``--start`` they begin above 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ovseg_cli.classes import RGB
from ovseg_cli.exports import coco, cvat, stats  # noqa: F401  (each registers its format)
from ovseg_cli.exports.registry import (
    ExportContext,
    Exporter,
    describe_exporters,
    exporter_names,
    get_exporter,
    parse_exports,
    register_exporter,
)

__all__ = [
    "ExportContext",
    "ExportSet",
    "Exporter",
    "check_exports",
    "describe_exporters",
    "exporter_names",
    "get_exporter",
    "parse_exports",
    "register_exporter",
]


def check_exports(names: Sequence[str], classes: Sequence[str], colors: Sequence[RGB]) -> None:
    """Refuse, before any work, classes that one of the chosen formats cannot represent."""
    for name in names:
        get_exporter(name).check(classes, colors)


class ExportSet:
    """The exports of one run: each frame's mask goes to every exporter as it arrives."""

    def __init__(
        self, names: Sequence[str], ctx: ExportContext, *, fps: Fraction | float, start: float
    ) -> None:
        self.fps = fps
        self.start = start
        self._offset: int | None = None
        self.exporters: list[Exporter] = []
        try:
            for name in names:
                self.exporters.append(get_exporter(name)(ctx))
        except BaseException:
            self.abort()
            raise

    def video_frame(self, index: int, time: float) -> int:
        """CVAT's frame number of the run's frame ``index`` (0 = first frame of the video)."""
        if self._offset is None:
            # after a seek the frames before --start were never counted: estimate them
            # from the first frame's time stamp (exact for constant frame rate)
            first = round(time * float(self.fps)) if self.start > 0 and self.fps else 0
            self._offset = first - index
        return self._offset + index

    def add(self, index: int, time: float, mask: np.ndarray) -> None:
        """Hand one frame to every exporter (called from the writer thread, in order)."""
        frame = self.video_frame(index, time)
        for exporter in self.exporters:
            exporter.add(frame, time, mask)

    def close(self) -> dict[str, Any]:
        """Finish every export; meta.json's entry for each, by format name."""
        return {e.name: e.close() for e in self.exporters}

    def abort(self) -> None:
        """Release every exporter's files after a failure."""
        for exporter in self.exporters:
            exporter.abort()
