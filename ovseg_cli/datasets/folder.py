"""A generic layout for users' own videos.

Layout::

    classes.txt                  one class per line (as for `ovseg segment --classes-file`)
    <video>/frames/*.jpg|png     frames, in natural file-name order (frame2 before frame10)
    <video>/masks/<stem>.png     index PNG for the frame <stem>: 0..C-1 = classes, 255 = ignore;
                                 optional, any subset of the frames
    train.txt, val.txt, test.txt optional: video names of each split; videos not listed go to
                                 --split (default train)

Labels already hold class indices, so prep references them in place (no copies unless
``--copy``). Default split: all classes seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ovseg_cli.classes import colors_for, read_classes_file
from ovseg_cli.datasets.formats import (
    FormatOption,
    RawDataset,
    RawFrame,
    RawVideo,
    identity_map,
    list_images,
    not_format,
    read_lines,
    register_format,
)
from ovseg_cli.datasets.index import SPLITS, check_split
from ovseg_cli.errors import OvsegError

_EXPECTED = "classes.txt and <video>/frames/*.jpg|png (with optional <video>/masks/*.png)"


@register_format(
    "folder",
    help="Your own videos: <video>/frames/*.jpg|png, optional <video>/masks/*.png, classes.txt.",
    root="Folder with classes.txt and <video>/frames/, <video>/masks/.",
    options={
        "split": FormatOption(
            "train", "Split of the videos not listed in ROOT/{train,val,test}.txt."
        )
    },
)
def read_folder(root: Path, options: dict[str, Any]) -> RawDataset:
    """Your own videos: <video>/frames/, <video>/masks/, classes.txt."""
    default_split = check_split(options.get("split", "train"))
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not (root / "classes.txt").is_file() or not any((d / "frames").is_dir() for d in dirs):
        raise not_format(root, "folder", _EXPECTED)
    specs = read_classes_file(root / "classes.txt")
    names = {d.name for d in dirs}
    assigned: dict[str, str] = {}
    for split in SPLITS:
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            continue
        for name in read_lines(list_file):
            if name not in names:
                raise OvsegError(
                    f"folder: video {name!r} of {list_file} has no folder {root / name}"
                )
            if name in assigned:
                raise OvsegError(
                    f"folder: video {name!r} is listed in {assigned[name]}.txt and {split}.txt"
                )
            assigned[name] = split
    videos: list[RawVideo] = []
    for d in dirs:
        if not (d / "frames").is_dir():
            raise OvsegError(f"folder: {d} has no frames/ subfolder (expected {_EXPECTED})")
        images = list_images(d / "frames")
        stems: dict[str, Path] = {}
        for img in images:
            if img.stem in stems:
                raise OvsegError(f"folder: two frames named {img.stem} in {d / 'frames'}")
            stems[img.stem] = img
        masks = (
            {p.stem: p for p in list_images(d / "masks", (".png",))}
            if (d / "masks").is_dir()
            else {}
        )
        orphans = sorted(set(masks) - set(stems))
        if orphans:
            raise OvsegError(
                f"folder: mask {d / 'masks' / orphans[0]}.png has no frame in {d / 'frames'}"
            )
        frames = [RawFrame(img, masks.get(img.stem)) for img in images]
        videos.append(RawVideo(d.name, assigned.get(d.name, default_split), frames, d / "frames"))
    return RawDataset(
        format="folder",
        root=root,
        classes=[s.name for s in specs],
        videos=videos,
        label_map=identity_map(len(specs)),
        default_seen=list(range(len(specs))),
        label_values=f"0..{len(specs) - 1} and 255",
        colors=colors_for(specs),
        options={"split": default_split},
    )
