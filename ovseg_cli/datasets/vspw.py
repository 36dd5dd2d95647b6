"""VSPW (480p release): 124 classes, densely labelled videos.

Layout (``ROOT`` is ``VSPW_480p/``)::

    label_num_dic_final.json      {"others": 0, "wall": 1, ..., "train": 124} (ids may be strings)
    train.txt, val.txt, test.txt  one video name per line
    data/<video>/origin/*.jpg
    data/<video>/mask/*.png       index PNGs: 0 = others, 1..124 = classes, 255 = void

"others" (0) is not a nameable class, so it becomes ignore (255) together with void; the 124
real classes become indices 0..123 in VSPW's order (raw id - 1, as ``reduce_zero_label`` in
the official code), so the paper's split "first 80 seen, last 44 unseen" is ``--seen 0-79``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ovseg_cli.datasets.formats import (
    RawDataset,
    RawFrame,
    RawVideo,
    label_map,
    list_images,
    not_format,
    read_lines,
    register_format,
)
from ovseg_cli.datasets.index import IGNORE_INDEX, SPLITS
from ovseg_cli.errors import OvsegError

LABEL_LIST = "label_num_dic_final.json"
PAPER_SEEN = 80  # OV2VSS IV-C: the first 80 classes in VSPW's order are seen
_EXPECTED = (
    f"data/<video>/origin/*.jpg, data/<video>/mask/*.png, {LABEL_LIST}"
    " and train.txt/val.txt/test.txt"
)


def read_label_list(path: Path) -> list[str]:
    """Class names in id order from ``label_num_dic_final.json``, without "others" (id 0)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        by_id = {int(v): str(k) for k, v in raw.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, ValueError):
        raise OvsegError(f"{path}: expected a JSON object of class name -> id") from None
    if len(by_id) != len(raw):
        raise OvsegError(f"{path}: two classes share an id")
    ids = sorted(by_id)
    if not ids or ids[0] not in (0, 1) or ids != list(range(ids[0], ids[0] + len(ids))):
        raise OvsegError(f"{path}: class ids must run 0 (others), 1, 2, ... without gaps")
    if ids[-1] >= IGNORE_INDEX:
        raise OvsegError(f"{path}: ids up to {ids[-1]} do not fit in 8-bit labels with 255 = void")
    names = [by_id[i] for i in ids if i != 0]
    if not names:
        raise OvsegError(f"{path}: no classes besides 'others'")
    return names


@register_format(
    "vspw",
    help='VSPW: 124 classes ("others" and void are ignored), official train/val/test videos.',
    root="VSPW 480p root: data/, train.txt, ..., label_num_dic_final.json.",
    seen="0-79: the first 80 classes, as in the paper",
)
def read_vspw(root: Path, options: dict[str, Any]) -> RawDataset:
    """VSPW 480p: data/<video>/{origin,mask}, train/val/test.txt, 124 classes."""
    data = root / "data"
    lists = {s: root / f"{s}.txt" for s in SPLITS if (root / f"{s}.txt").is_file()}
    if not data.is_dir() or not (root / LABEL_LIST).is_file() or not lists:
        hint = ""
        if (root / "VSPW_480p").is_dir():
            hint = f" (did you mean {root / 'VSPW_480p'}?)"
        raise not_format(root, "VSPW", _EXPECTED, hint)
    classes = read_label_list(root / LABEL_LIST)
    videos: list[RawVideo] = []
    listed: dict[str, str] = {}
    for split, list_file in lists.items():
        for name in read_lines(list_file):
            if name in listed:
                raise OvsegError(
                    f"VSPW: video {name} is listed in {listed[name]}.txt and {split}.txt"
                )
            listed[name] = split
            folder = data / name
            if not (folder / "origin").is_dir():
                raise OvsegError(
                    f"VSPW: video {name} of {list_file.name} has no folder {folder / 'origin'}"
                )
            mask_dir = folder / "mask"
            masks = (
                {p.stem: p for p in list_images(mask_dir, (".png",))} if mask_dir.is_dir() else {}
            )
            frames = [
                RawFrame(img, masks.pop(img.stem, None)) for img in list_images(folder / "origin")
            ]
            if masks:
                orphan = sorted(masks.values())[0]
                raise OvsegError(f"VSPW: mask {orphan} has no frame in {folder / 'origin'}")
            videos.append(RawVideo(name, split, frames, folder / "origin"))
    # raw 0 (others) and 255 (void) -> ignore; raw id i -> class index i - 1
    lut = label_map([(0, IGNORE_INDEX), *((i + 1, i) for i in range(len(classes)))])
    return RawDataset(
        format="vspw",
        root=root,
        classes=classes,
        videos=videos,
        label_map=lut,
        default_seen=list(range(min(PAPER_SEEN, len(classes)))),
        label_values=f"0 (others), 1..{len(classes)} and 255",
    )
