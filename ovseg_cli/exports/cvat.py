"""``--export cvat``: a zip in CVAT's "Segmentation mask 1.1" format, for a video task.

Layout (the one CVAT itself exports, docs.cvat.ai, "Segmentation Mask")::

    cvat.zip
    ├── labelmap.txt                          # name:r,g,b:: per label, background:0,0,0:: first
    ├── ImageSets/Segmentation/default.txt    # frame names, one per line, no extension
    ├── SegmentationClass/frame_000000.png    # RGB: each pixel the colour of its label
    └── SegmentationObject/frame_000000.png   # each pixel the VOC colour of its instance id

Frame names are those CVAT gives the frames of a video task, ``frame_{number:06d}``
counted from the video's first frame, so the zip imports into a task made from the same
video. Unlabelled pixels (below ``--threshold``) are black, CVAT's background, which it
imports as no annotation; a class named "background" is merged into it the same way.

Instances: one per class and frame, with instance id = class index + 1 in every frame
(black, id 0, for CVAT's background). The model segments classes, not objects: splitting a
class into connected components would invent object identities (a road cut in two by a
car is still one road), give annotators fragments to merge back, and can exceed the 255
instance ids VOC's colours encode on noisy masks. One instance per class is what CVAT
made of these zips before they had SegmentationObject/, and what CVAT itself exports for
a task with one mask per label and frame; a fixed id per class keeps its colour the same
from frame to frame. SegmentationObject/ is a palette PNG whose pixel values are the
instance ids and whose palette is VOC's, so readers of colours (CVAT, datumaro) and of
index masks see the same ids, for about a tenth of an RGB PNG's encoding time.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ovseg_cli.classes import RGB
from ovseg_cli.errors import OvsegError
from ovseg_cli.exports.registry import ExportContext, Exporter, register_exporter

FORMAT = "CVAT Segmentation mask 1.1"
BLACK: RGB = (0, 0, 0)


def is_cvat_background(name: str) -> bool:
    """Whether CVAT reads a label of this name as its background."""
    return " ".join(name.replace(":", " ").split()).lower() == "background"


def black_label(names: Sequence[str], colors: Sequence[RGB]) -> str | None:
    """The name of black's line in a label map of these classes; None if a class is black."""
    if BLACK in (tuple(c) for c in colors):
        return None  # that class declares it: two labels of one colour would be ambiguous
    # a class CVAT reads as background keeps its own line and colour: black needs another name
    name = "unlabelled" if any(is_cvat_background(n) for n in names) else "background"
    taken = {" ".join(n.replace(":", " ").split()).lower() for n in names}
    while name in taken:
        name = f"({name})"
    return name


def voc_instance_colors() -> np.ndarray:
    """PASCAL VOC's 256 colours, (256, 3) uint8: the colour of each instance id (0 is black)."""
    ids = np.arange(256)
    colors = np.zeros((256, 3), int)
    for bit in range(8):  # bits 3k, 3k+1, 3k+2 of the id go to bit 7-k of red, green, blue
        for channel in range(3):
            colors[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return colors.astype(np.uint8)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


_LABEL_LINE = re.compile(r"([^:]*[^:\s][^:]*):\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*(:.*)?")


def parse_labelmap(text: str, where: str, *, colour: bool) -> list[tuple[str, RGB]]:
    """The classes (name, colour) of a labelmap.txt (``name:r,g,b:parts:actions`` lines),
    in order, less black's line for unlabelled pixels: CVAT writes it first, for colour
    masks; ``labelmap_text`` last, after the classes of index masks (``colour`` False)."""
    labels: list[tuple[str, RGB]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LABEL_LINE.fullmatch(line.strip())
        if m is None or max(int(v) for v in m.groups()[1:4]) > 255:
            raise OvsegError(f"{where}:{n}: expected 'name:r,g,b::', not {line.strip()!r}")
        labels.append((" ".join(m[1].split()), (int(m[2]), int(m[3]), int(m[4]))))
    for i in range(len(labels)) if colour else range(len(labels))[-1:]:
        rest = labels[:i] + labels[i + 1 :]
        black = black_label([n for n, _ in rest], [c for _, c in rest])
        if labels[i][1] == BLACK and (is_cvat_background(labels[i][0]) or labels[i][0] == black):
            return rest
    return labels


def labelmap_text(
    names: Sequence[str], colors: Sequence[RGB], *, background: str | None = None
) -> str:
    """CVAT's labelmap.txt: a ``name:r,g,b::`` line per class, black's line "first" or "last"."""
    if background not in (None, "first", "last"):
        raise ValueError(f"background must be 'first', 'last' or None, not {background!r}")
    labels = [(n.replace(":", " "), tuple(c)) for n, c in zip(names, colors, strict=True)]
    black = black_label(names, colors) if background else None
    if black is not None:
        # "first" as CVAT writes it; "last" keeps line i = class i for readers of index masks
        labels.insert(0 if background == "first" else len(labels), (black, (0, 0, 0)))
    lines = [f"{name}:{r},{g},{b}::" for name, (r, g, b) in labels]  # ':' separates the fields
    return "\n".join(["# label:color_rgb:parts:actions", *lines]) + "\n"


@register_exporter("cvat")
class CvatExporter(Exporter):
    """Streams each frame's class and instance masks into a zip (temporary until complete)."""

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
        # class index -> RGB colour and -> instance id; 255 (unlabelled) and "background"
        # stay black and instance 0, which CVAT imports as no annotation
        self.lut = np.zeros((256, 3), np.uint8)
        self.instance_ids = np.zeros(256, np.uint8)
        for i, name in enumerate(ctx.names):
            if not is_cvat_background(name):
                self.lut[i] = ctx.colors[i]
                self.instance_ids[i] = i + 1
        self.instance_palette = voc_instance_colors().tobytes()
        self.frames = 0
        self.first: int | None = None
        self._part = ctx.folder / f".{self.filename}.part"
        self._list_path = ctx.folder / ".cvat-default.txt.part"
        self._zip = zipfile.ZipFile(self._part, "w", zipfile.ZIP_STORED)
        self._list = open(self._list_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close/abort)
        self._zip.writestr(
            "labelmap.txt",
            labelmap_text([n for n, _ in labels], [c for _, c in labels], background="first"),
        )

    def add(self, frame: int, time: float, mask: np.ndarray) -> None:
        """Add this frame's class and instance masks to the zip and its name to the frame list."""
        name = f"frame_{frame:06d}"
        objects = Image.fromarray(self.instance_ids[mask])
        objects.putpalette(self.instance_palette)  # pixel value = instance id, as in VOC
        # PNGs are compressed already: stored, not deflated again
        self._zip.writestr(f"SegmentationClass/{name}.png", _png(Image.fromarray(self.lut[mask])))
        self._zip.writestr(f"SegmentationObject/{name}.png", _png(objects))
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
            "instances": "one per class and frame, SegmentationObject/ id = class index + 1",
        }

    def abort(self) -> None:
        """Close the open files; the run removes its folder."""
        for f in (self._list, self._zip):
            with contextlib.suppress(Exception):  # a failing run must report its own error
                f.close()
