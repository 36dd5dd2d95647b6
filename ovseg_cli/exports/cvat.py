"""``--export cvat``: a zip in CVAT's "Segmentation mask 1.1" format, for a video task.

Layout (the one CVAT itself exports, docs.cvat.ai, "Segmentation Mask")::

    cvat.zip
    ├── labelmap.txt                          # name:r,g,b:: per label, background:0,0,0:: first
    ├── ImageSets/Segmentation/default.txt    # frame names, one per line, no extension
    └── SegmentationClass/frame_000000.png    # RGB: each pixel the colour of its label

Frame names are those CVAT gives the frames of a video task, ``frame_{number:06d}``
counted from the video's first frame, so the zip imports into a task made from the same
video. Unlabelled pixels (below ``--threshold``) are black, CVAT's background, which it
imports as no annotation; a class named "background" is merged into it the same way.
No SegmentationObject/ folder: CVAT then imports one mask per class and frame.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ovseg_cli.classes import RGB
from ovseg_cli.errors import OvsegError
from ovseg_cli.exports.registry import ExportContext, Exporter, register_exporter
from ovseg_cli.video.rendering import labelmap_text

FORMAT = "CVAT Segmentation mask 1.1"
BLACK: RGB = (0, 0, 0)


def is_cvat_background(name: str) -> bool:
    """Whether CVAT reads a label of this name as its background."""
    return " ".join(name.replace(":", " ").split()).lower() == "background"


@register_exporter("cvat")
class CvatExporter(Exporter):
    """Streams one RGB mask per frame into a zip (a temporary file until complete)."""

    filename = "cvat.zip"
    summary = "CVAT Segmentation mask 1.1"

    @classmethod
    def check(cls, names: Sequence[str], colors: Sequence[RGB]) -> None:
        """CVAT tells labels apart by colour: every colour distinct, and black kept for background."""
        seen: dict[RGB, str] = {}
        for name, color in zip(names, colors, strict=True):
            if is_cvat_background(name):
                continue
            hexa = "#{:02x}{:02x}{:02x}".format(*color)
            if tuple(color) == BLACK:
                raise OvsegError(
                    f"class {name!r} is black ({hexa}), the colour of CVAT's background; "
                    "give it another colour for --export cvat"
                )
            if tuple(color) in seen:
                raise OvsegError(
                    f"classes {seen[tuple(color)]!r} and {name!r} share the colour {hexa}; "
                    "CVAT tells labels apart by colour"
                )
            seen[tuple(color)] = name

    def __init__(self, ctx: ExportContext) -> None:
        super().__init__(ctx)
        labels = [
            (n, c) for n, c in zip(ctx.names, ctx.colors, strict=True) if not is_cvat_background(n)
        ]
        self.lut = np.zeros((256, 3), np.uint8)  # 255 (unlabelled) and "background" stay black
        for i, (name, color) in enumerate(zip(ctx.names, ctx.colors, strict=True)):
            if not is_cvat_background(name):
                self.lut[i] = color
        self.frames = 0
        self.first: int | None = None
        self._part = ctx.folder / f".{self.filename}.part"
        self._list_path = ctx.folder / ".cvat-default.txt.part"
        self._zip = zipfile.ZipFile(self._part, "w", zipfile.ZIP_STORED)
        self._list = open(self._list_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close/abort)
        self._zip.writestr(
            "labelmap.txt",
            labelmap_text([n for n, _ in labels], [c for _, c in labels], background=True),
        )

    def add(self, frame: int, time: float, mask: np.ndarray) -> None:
        """Add this frame's colour mask to the zip and its name to the frame list."""
        name = f"frame_{frame:06d}"
        buf = io.BytesIO()
        Image.fromarray(self.lut[mask]).save(buf, format="PNG", compress_level=1)
        self._zip.writestr(f"SegmentationClass/{name}.png", buf.getvalue())  # PNG: no recompress
        self._list.write(name + "\n")
        self.frames += 1
        if self.first is None:
            self.first = frame

    def close(self) -> dict[str, Any]:
        """Add the frame list, close the zip and give it its final name."""
        self._list.close()
        self._zip.write(self._list_path, "ImageSets/Segmentation/default.txt", zipfile.ZIP_DEFLATED)
        self._zip.close()
        os.replace(self._part, self.ctx.folder / self.filename)
        self._list_path.unlink()
        return {
            "file": self.filename,
            "format": FORMAT,
            "frames": self.frames,
            "first_frame": self.first,
            "mask_names": "SegmentationClass/frame_NNNNNN.png (CVAT video-task frame number)",
        }

    def abort(self) -> None:
        """Close the open files; the run removes its folder."""
        for f in (self._list, self._zip):
            with contextlib.suppress(Exception):  # a failing run must report its own error
                f.close()
