"""``--export stats``: pixels per class and frame in stats.csv, totals in meta.json.

stats.csv has one row per frame and class, in class order::

    frame,time_s,class,pixels,fraction
    0,0.000000,road,3012,0.490234

``frame`` is the video frame number (as in the other exports), ``time_s`` its time stamp,
``fraction`` = pixels / frame area. With ``--threshold`` each frame also has a row for
the unlabelled pixels, class ``(unlabelled)``, so a frame's rows always add up to its area.
Only a few integers per class are kept; the rows are written as frames arrive.
"""

from __future__ import annotations

import contextlib
import csv
import os
from typing import Any

import numpy as np

from ovseg_cli.classes import UNLABELLED
from ovseg_cli.exports.registry import ExportContext, Exporter, register_exporter

COLUMNS = ("frame", "time_s", "class", "pixels", "fraction")
UNLABELLED_ROW = "(unlabelled)"


@register_exporter("stats")
class StatsExporter(Exporter):
    """Appends CSV rows per frame and keeps per-class totals."""

    filename = "stats.csv"
    summary = "pixels per class and frame"

    def __init__(self, ctx: ExportContext) -> None:
        super().__init__(ctx)
        self.classes = len(ctx.names)
        self.pixels = [0] * (self.classes + 1)  # per class, then unlabelled
        self.present = [0] * self.classes  # frames in which each class appears
        self.frames = 0
        self.area = 0
        self._part = ctx.folder / f".{self.filename}.part"
        self._file = open(self._part, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)

    def add(self, frame: int, time: float, mask: np.ndarray) -> None:
        """Write this frame's rows and add its counts to the totals."""
        counts = np.bincount(mask.ravel(), minlength=256)
        values = [*counts[: self.classes].tolist(), int(counts[UNLABELLED])]
        rows = self.classes + (1 if self.ctx.unlabelled else 0)
        names = [*self.ctx.names, UNLABELLED_ROW]
        area = mask.size
        t = f"{time:.6f}"
        self._csv.writerows(
            (frame, t, names[i], values[i], f"{values[i] / area:.6f}") for i in range(rows)
        )
        for i, v in enumerate(values):
            self.pixels[i] += v
        for i in range(self.classes):
            self.present[i] += values[i] > 0
        self.frames += 1
        self.area += area

    def close(self) -> dict[str, Any]:
        """Close the CSV; the per-class totals for meta.json."""
        self._file.close()
        os.replace(self._part, self.ctx.folder / self.filename)
        total = max(self.area, 1)
        return {
            "file": self.filename,
            "columns": list(COLUMNS),
            "frames": self.frames,
            "pixels": self.area,
            "totals": [
                {
                    "index": i,
                    "class": name,
                    "pixels": self.pixels[i],
                    "fraction": round(self.pixels[i] / total, 6),
                    "frames_present": self.present[i],
                }
                for i, name in enumerate(self.ctx.names)
            ],
            "unlabelled": {
                "pixels": self.pixels[-1],
                "fraction": round(self.pixels[-1] / total, 6),
            },
        }

    def abort(self) -> None:
        """Close the CSV; the run removes its folder."""
        with contextlib.suppress(Exception):  # a failing run must report its own error
            self._file.close()
