"""Cityscapes video snippets: ``leftImg8bit_sequence`` with the ``gtFine`` labels (20th frames).

Layout::

    leftImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Each labelled frame comes with a 30-frame snippet (the 20th frame is labelled); a video is a
run of consecutive frame numbers of one (city, sequence). labelIds map to the 19 train
classes (trainIds); everything else is ignore (255). Test labels are withheld by Cityscapes
(the published files are placeholders), so test frames are unlabelled.

Default split: all 19 classes seen. The paper uses Cityscapes for cross-dataset evaluation
of a VSPW-trained model; pass ``--seen`` / ``--split-file`` for an open-vocabulary split.
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
    not_format,
    register_format,
)
from ovseg_cli.datasets.index import SPLITS
from ovseg_cli.errors import OvsegError

SEQUENCE = "leftImg8bit_sequence"
GT = "gtFine"

# (labelId, trainId) of the 19 evaluated classes (cityscapesScripts helpers/labels.py)
TRAIN_IDS = (
    (7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7), (21, 8), (22, 9),
    (23, 10), (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (31, 16), (32, 17), (33, 18),
)  # fmt: skip
CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]  # fmt: skip
COLORS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip
MAX_LABEL_ID = 33  # labelIds 0..33; the ones not listed above are ignored

_FRAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit\.png$")
_LABEL = re.compile(r"^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)_gtFine_labelIds\.png$")
_EXPECTED = (
    f"{SEQUENCE}/{{train,val,test}}/<city>/*_leftImg8bit.png"
    f" and {GT}/{{train,val,test}}/<city>/*_gtFine_labelIds.png"
)


def _runs(numbers: list[int]) -> list[list[int]]:
    """Split sorted frame numbers into runs of consecutive numbers (one snippet each)."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def _scan(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Files of <folder>/<city>/ whose names match ``pattern``."""
    if not folder.is_dir():
        return []
    return [
        f
        for city in sorted(p for p in folder.iterdir() if p.is_dir())
        for f in city.iterdir()
        if pattern.match(f.name)
    ]


def _labels(folder: Path) -> dict[tuple[str, str, int], Path]:
    """labelIds PNGs of one split by (city, sequence, frame number)."""
    out = {}
    for p in _scan(folder, _LABEL):
        m = _LABEL.match(p.name)
        out[(m["city"], m["seq"], int(m["frame"]))] = p  # type: ignore[index]
    return out


@register_format(
    "cityscapes",
    help="Cityscapes sequences: 30-frame snippets, the 20th frame labelled, 19 train classes.",
    root="Cityscapes root: leftImg8bit_sequence/ and gtFine/.",
    seen="all: Cityscapes serves cross-dataset evaluation",
)
def read_cityscapes(root: Path, options: dict[str, Any]) -> RawDataset:
    """Cityscapes leftImg8bit_sequence + gtFine labelIds, 19 classes."""
    seq_root, gt_root = root / SEQUENCE, root / GT
    splits = [s for s in SPLITS if (seq_root / s).is_dir()]
    if not splits or not gt_root.is_dir():
        hint = ""
        if (root / "leftImg8bit").is_dir() and not seq_root.is_dir():
            hint = f" (leftImg8bit/ holds single frames; the video snippets are in {SEQUENCE}/)"
        raise not_format(root, "Cityscapes sequence", _EXPECTED, hint)
    videos: list[RawVideo] = []
    for split in splits:
        groups: dict[tuple[str, str], dict[int, Path]] = defaultdict(dict)
        for img in _scan(seq_root / split, _FRAME):
            m = _FRAME.match(img.name)
            groups[(m["city"], m["seq"])][int(m["frame"])] = img  # type: ignore[index]
        if not groups:
            raise OvsegError(
                f"Cityscapes: no *_leftImg8bit.png frames in {seq_root / split}/<city>/"
            )
        # Cityscapes withholds test labels (the published files are placeholders)
        labels = {} if split == "test" else _labels(gt_root / split)
        for (city, seq), frames in sorted(groups.items()):
            for run in _runs(sorted(frames)):
                raw = [RawFrame(frames[n], labels.get((city, seq, n))) for n in run]
                name = frames[run[0]].name[: -len("_leftImg8bit.png")]
                videos.append(RawVideo(name, split, raw, seq_root / split / city))
    return RawDataset(
        format="cityscapes",
        root=root,
        classes=list(CLASSES),
        videos=videos,
        label_map=label_map([*((i, 255) for i in range(MAX_LABEL_ID + 1)), *TRAIN_IDS]),
        default_seen=list(range(len(CLASSES))),
        label_values=f"labelIds 0..{MAX_LABEL_ID}",
        colors=list(COLORS),
    )
