"""Masks already written, as ``ovseg eval --predictions DIR`` finds and reads them.

DIR is the first of these that fits:

1. an ovseg output folder of one video, as `ovseg segment --masks` and `ovseg propagate`
   write it: ``masks/NNNNNN.png``, ``labelmap.txt``, ``meta.json``;
2. an `ovseg eval --masks` report folder, whose ``masks/`` is as in 4;
3. a folder of PNG masks of one video, such as the ``masks/`` of 1 (its parent is then the
   output folder, whose meta.json and labelmap.txt are used);
4. a folder with one subfolder per dataset video, named as the video, each an output
   folder as in 1 or a bare folder of masks (``masks/<video>/<image stem>.png``, as
   `ovseg eval --masks` writes). Every evaluated video needs its subfolder; others are
   left alone.

A one-video folder (1, 3) is the evaluated video named as the stem of meta.json's
``input.path``; else the one named as its output folder (without one: as the folder);
else, if the split evaluates one video, that one; else an error.

Class names (pixel value i is class i, 255 unlabelled) come from the first found, looking
in the video's own folder, then DIR (for 2: DIR/masks, then DIR), then DIR's parent:
meta.json's ``classes`` (in the video's output folder only), a ``labelmap.txt`` (CVAT's
``name:r,g,b::`` lines, line i class i; a last black line named background or unlabelled
is no class: its value means unlabelled) or an `ovseg eval` ``report.json`` (its
``per_class`` names, in the order its masks number them). So one labelmap.txt in DIR
serves every subfolder without its own. Another value in a mask is an error.

Frames: in an ovseg output folder, ``NNNNNN.png`` (all digits) is frame NNNNNN of the
video (from 0, in the index's temporal order) and another name the frame whose image has
that stem; in a bare folder a frame image's stem comes first, then a frame number. A mask
that matches no frame, or a labelled frame without a mask, is an error; masks of
unlabelled frames are never read.

Classes are matched to the dataset's by name (case, spaces and underscores aside); a
predicted class that is no dataset class, or not an evaluated one, counts as a miss.
Keyframes: the frames in meta.json's ``propagation.keyframe_indices`` (for `propagate`
those a person labelled); without that list every frame is a keyframe.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovseg_cli.classes import UNLABELLED, name_key
from ovseg_cli.datasets.index import PreparedIndex, Video
from ovseg_cli.errors import OvsegError, did_you_mean
from ovseg_cli.video.images import image_threads, read_image

MASKS = "masks"
META = "meta.json"
LABELMAP = "labelmap.txt"
REPORT = "report.json"


def _listing(names: Sequence[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


@dataclass
class VideoPredictions:
    """The masks of one dataset video and how to read them."""

    video: Video
    folder: Path  # holding the PNG masks
    masks: dict[int, Path]  # frame number (position in video.frames) -> mask
    names: list[str]  # class names by pixel value
    classes_from: Path  # the file the names come from
    values: int  # pixel values below this are classes (or the labelmap's black line)
    lut: np.ndarray  # pixel value -> position among the evaluated classes, 255 a miss
    keyframes: frozenset[int] | None  # None: every frame is a keyframe
    meta: Path | None = None

    def is_keyframe(self, frame: int) -> bool:
        """Whether a frame counts as a keyframe (see the module doc)."""
        return self.keyframes is None or frame in self.keyframes


@dataclass
class Predictions:
    """Everything ``--predictions DIR`` holds for the evaluated videos."""

    path: Path
    layout: str  # "one video" or "one folder per video"
    videos: list[VideoPredictions]
    unmatched: list[str] = field(default_factory=list)  # class names no dataset class has

    @property
    def name(self) -> str:
        """A name for the default report folder: the output folder's, not 'masks'."""
        return (self.path.parent if self.path.name == MASKS else self.path).name

    def describe(self) -> dict[str, Any]:
        """The ``predictions`` block of report.json."""
        return {
            "path": str(self.path),
            "layout": self.layout,
            "videos": {
                vp.video.name: {
                    "folder": str(vp.folder),
                    "masks": len(vp.masks),
                    "classes": vp.names,
                    "classes_from": str(vp.classes_from),
                    "keyframes": None if vp.keyframes is None else len(vp.keyframes),
                    "keyframes_from": str(vp.meta) if vp.keyframes is not None else None,
                }
                for vp in self.videos
            },
            "unmatched_classes": self.unmatched,
        }


@dataclass
class _Folder:
    """A folder of one video's masks, before it is matched to the dataset."""

    masks: Path  # the PNGs
    home: Path | None  # the ovseg output folder it belongs to (meta.json), if any
    look: list[Path]  # where labelmap.txt / report.json may be, in order


def find_predictions(
    path: str | Path, index: PreparedIndex, videos: Sequence[Video], classes: Sequence[int]
) -> Predictions:
    """The masks of DIR for the evaluated ``videos`` and ``classes``; OvsegError for anything
    that cannot be scored (see the module doc), before any mask is decoded."""
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise OvsegError(f"--predictions {root} {what}")
    single, base = _layout(root)
    if single is not None:
        pairs = [(_which_video(root, single, index, videos), single)]
        layout = "one video"
    else:
        assert base is not None
        pairs = _per_video(root, base, videos)
        layout = "one folder per video"
    found = [_video_predictions(video, folder, index, classes) for video, folder in pairs]
    known = {name_key(c) for c in index.classes}
    unmatched = list(dict.fromkeys(n for vp in found for n in vp.names if name_key(n) not in known))
    predicted = {name_key(n) for vp in found for n in vp.names}
    absent = [index.classes[c] for c in classes if name_key(index.classes[c]) not in predicted]
    if absent:  # no mask can hold them: IoU 0, whatever the masks are
        shown = ", ".join(repr(n) for n in absent[:5]) + (" ..." if len(absent) > 5 else "")
        logging.getLogger("ovseg").warning(
            f"{len(absent)} evaluated class(es) are no class of the predictions and score 0: "
            f"{shown}"
        )
    if unmatched:  # scored as misses: a renamed class would otherwise lower mIoU unseen
        shown = ", ".join(repr(n) for n in unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        logging.getLogger("ovseg").warning(
            f"{len(unmatched)} predicted class(es) not in the dataset count as misses: {shown} "
            f"(dataset classes: {', '.join(index.classes)})"
        )
    return Predictions(root, layout, found, unmatched)


def _has_png(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(_is_mask(e) for e in entries)


def _is_mask(entry: os.DirEntry[str]) -> bool:
    return (
        entry.name.lower().endswith(".png") and not entry.name.startswith(".") and entry.is_file()
    )


def _subfolders(folder: Path) -> dict[str, Path]:
    with os.scandir(folder) as entries:
        return {
            e.name: Path(e.path)
            for e in entries
            if e.is_dir() and not e.name.startswith(".")
        }  # fmt: skip


def _layout(root: Path) -> tuple[_Folder | None, Path | None]:
    """(one video's folder, None) or (None, the folder holding one subfolder per video)."""
    look = [root, root.parent]
    if (root / META).is_file() or _has_png(root / MASKS):
        return _Folder(root / MASKS, root, look), None  # 1: an ovseg output folder
    if (root / MASKS).is_dir() and _subfolders(root / MASKS):
        return None, root / MASKS  # 2: an `ovseg eval --masks` report folder
    if (root / REPORT).is_file():
        raise OvsegError(f"--predictions {root} is an ovseg eval report without masks/ (--masks)")
    if _has_png(root):  # 3: a folder of masks; its parent the output folder, if one
        home = root.parent if (root.parent / META).is_file() else None
        return _Folder(root, home, look), None
    if _subfolders(root):
        return None, root  # 4
    raise OvsegError(
        f"--predictions {root} holds no masks: expected masks/NNNNNN.png (an ovseg segment "
        "or propagate folder), PNG masks, or one subfolder per video"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OvsegError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise OvsegError(f"{path}: not a JSON object")
    return data


def _meta(folder: _Folder) -> tuple[Path, dict[str, Any]] | None:
    if folder.home is None or not (folder.home / META).is_file():
        return None
    return folder.home / META, _read_json(folder.home / META)


def _which_video(
    root: Path, folder: _Folder, index: PreparedIndex, videos: Sequence[Video]
) -> Video:
    """The evaluated video a one-video folder holds (see the module doc)."""
    by_name = {v.name: v for v in videos}
    meta_path, meta = _meta(folder) or (None, {})
    source = (meta.get("input") or {}).get("path")
    reason = "no meta.json"
    if isinstance(source, str) and source:
        stem = Path(source).stem
        if stem in by_name:
            return by_name[stem]
        _not_evaluated(root, stem, f"{meta_path}'s input", index, videos)
        reason = f"its meta.json's input is {Path(source).name!r}"
    own = (folder.home or folder.masks).name
    if own in by_name:
        return by_name[own]
    if len(videos) == 1:
        if isinstance(source, str) and source:  # made from another video, maybe: say so
            logging.getLogger("ovseg").warning(
                f"--predictions {root}: {reason}, no video of the dataset; scored as "
                f"{videos[0].name!r}, the one video evaluated"
            )
        return videos[0]
    split = videos[0].split if videos else "evaluated"
    raise OvsegError(
        f"--predictions {root}: cannot tell which of the {len(videos)} {split} videos it "
        f"holds ({reason}); videos: {_listing([v.name for v in videos])}; name its folder "
        "after the video, or give a folder that holds one subfolder per video"
    )


def _not_evaluated(
    root: Path, name: str, where: str, index: PreparedIndex, videos: Sequence[Video]
) -> None:
    """Refuse a folder whose meta.json names a dataset video that is not evaluated."""
    video = next((v for v in index.videos if v.name == name), None)
    if video is None:
        return
    if videos and video.split != videos[0].split:
        why = f"in the {video.split} split: pass --data-split {video.split}"
    elif not video.labelled:
        why = "without labelled frames"
    else:
        why = "not among the videos evaluated: see --limit-videos"
    raise OvsegError(f"--predictions {root} holds video {name!r} ({where}), which is {why}")


def _per_video(root: Path, base: Path, videos: Sequence[Video]) -> list[tuple[Video, _Folder]]:
    """Each evaluated video with its subfolder of ``base``; OvsegError if one has none."""
    subs = _subfolders(base)
    missing = [v for v in videos if v.name not in subs]
    if missing:
        frames = sum(len(v.labelled) for v in missing)
        first = missing[0].name
        have = sorted(subs)
        raise OvsegError(
            f"{frames} labelled frame(s) have no prediction: {len(missing)} of the "
            f"{len(videos)} evaluated videos have no subfolder in {base}, e.g. {first!r}"
            + did_you_mean(first, have)
            + f" (its subfolders: {_listing(have) or 'none'}; videos: "
            + f"{_listing([v.name for v in videos])})"
        )
    look = list(dict.fromkeys([base, base.parent]))
    out = []
    for video in videos:
        sub = subs[video.name]
        if (sub / META).is_file() or (sub / MASKS).is_dir():
            out.append((video, _Folder(sub / MASKS, sub, [sub, *look])))
        else:
            out.append((video, _Folder(sub, None, [sub, *look])))
    return out


# ------------------------------------------------------------------------------- classes


def read_labelmap(path: Path) -> tuple[list[str], bool]:
    """Class names of a labelmap.txt of index masks (line i is class i), and whether a last
    black line for unlabelled pixels was left out (``parse_labelmap``)."""
    from ovseg_cli.exports.cvat import parse_labelmap

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise OvsegError(f"cannot read {path}: {exc}") from None
    lines = [x for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    names = [n for n, _ in parse_labelmap(text, str(path), colour=False)]
    if not names:
        raise OvsegError(f"{path}: no classes")
    return names, len(names) < len(lines)


def _meta_classes(path: Path, meta: dict[str, Any]) -> list[str] | None:
    classes = meta.get("classes")
    if classes is None:
        return None
    try:
        by_index = {int(c["index"]): str(c["name"]) for c in classes}
    except (TypeError, KeyError, ValueError):
        raise OvsegError(f"{path}: 'classes' must list {{'index', 'name'}} entries") from None
    if sorted(by_index) != list(range(len(by_index))) or len(by_index) != len(classes):
        raise OvsegError(f"{path}: the indices of 'classes' must be 0..N-1, each once")
    return [by_index[i] for i in range(len(by_index))] or None


def _class_names(
    folder: _Folder, meta: tuple[Path, dict[str, Any]] | None
) -> tuple[list[str], int, Path]:
    """(names, extra values that mean unlabelled, the file they come from)."""
    if meta is not None and (names := _meta_classes(*meta)):
        return names, 0, meta[0]
    for place in dict.fromkeys([*([folder.home] if folder.home else []), *folder.look]):
        if (place / LABELMAP).is_file():
            names, dropped = read_labelmap(place / LABELMAP)
            return names, int(dropped), place / LABELMAP
        if (place / REPORT).is_file():
            per_class = _read_json(place / REPORT).get("per_class")
            if isinstance(per_class, list) and per_class:
                return [str(c.get("name")) for c in per_class], 0, place / REPORT
    raise OvsegError(
        f"no class names for the masks in {folder.masks}: put a labelmap.txt (a 'name:r,g,b::' "
        "line per class, line i for pixel value i) beside them or in the --predictions folder"
    )


def class_lut(
    names: Sequence[str], index: PreparedIndex, classes: Sequence[int], source: Path
) -> np.ndarray:
    """Pixel value -> position among the evaluated ``classes`` (255: a miss); OvsegError
    when no name is a dataset class."""
    if len(names) > UNLABELLED:
        raise OvsegError(f"{source}: {len(names)} classes; masks hold at most {UNLABELLED}")
    by_name: dict[str, int] = {}
    for i, c in enumerate(index.classes):
        by_name.setdefault(name_key(c), i)
    position = {c: k for k, c in enumerate(classes)}
    lut = np.full(256, UNLABELLED, np.uint8)
    matched = 0
    for value, name in enumerate(names):
        c = by_name.get(name_key(name))
        matched += c is not None
        if c is not None and c in position:
            lut[value] = position[c]
    if not matched:
        raise OvsegError(
            f"{source}: none of its classes ({_listing(list(names))}) is a class of the dataset "
            f"({_listing(index.classes)}); classes are matched by name"
        )
    return lut


# -------------------------------------------------------------------------------- frames


def _keyframes(meta: tuple[Path, dict[str, Any]] | None) -> frozenset[int] | None:
    if meta is None:
        return None
    found = (meta[1].get("propagation") or {}).get("keyframe_indices")
    if found is None:
        return None
    if not isinstance(found, list) or not all(isinstance(i, int) for i in found):
        raise OvsegError(f"{meta[0]}: propagation.keyframe_indices must list frame numbers")
    return frozenset(found)


def _match_frames(video: Video, folder: _Folder) -> dict[int, Path]:
    """Frame number -> mask file, by the naming rules of the module doc."""
    if not folder.masks.is_dir():
        hint = " (segment with --masks)" if folder.home is not None else ""
        raise OvsegError(f"no masks for video {video.name!r}: {folder.masks} does not exist{hint}")
    stems = {Path(f.image).stem: i for i, f in enumerate(video.frames)}
    numbered = folder.home is not None  # an ovseg output: numbers first
    found: dict[int, Path] = {}
    with os.scandir(folder.masks) as entries:
        for entry in entries:
            if not _is_mask(entry):
                continue
            stem = entry.name[:-4]
            number = int(stem) if stem.isascii() and stem.isdigit() else None
            i = number if numbered and number is not None else stems.get(stem, number)
            if i is None or i >= len(video.frames):
                raise OvsegError(
                    f"{entry.path}: no frame of video {video.name!r} ({len(video.frames)} "
                    "frames) is named so; masks are named NNNNNN.png (frame numbers from 0) "
                    "or after the frames' images"
                )
            if i in found:
                raise OvsegError(f"{entry.path} and {found[i]} are both masks of frame {i}")
            found[i] = Path(entry.path)
    missing = [i for i in video.labelled if i not in found]
    if missing:
        i = missing[0]
        stem = Path(video.frames[i].image).stem
        raise OvsegError(
            f"{len(missing)} labelled frame(s) of video {video.name!r} have no mask in "
            f"{folder.masks}, e.g. frame {i} ({Path(video.frames[i].image).name}): expected "
            f"{i:06d}.png or {stem}.png"
        )
    return found


def _video_predictions(
    video: Video, folder: _Folder, index: PreparedIndex, classes: Sequence[int]
) -> VideoPredictions:
    meta = _meta(folder)
    names, extra, source = _class_names(folder, meta)
    lut = class_lut(names, index, classes, source)
    masks = _match_frames(video, folder)
    keyframes = _keyframes(meta)
    return VideoPredictions(
        video, folder.masks, masks, names, source, len(names) + extra, lut, keyframes,
        meta[0] if meta else None,
    )  # fmt: skip


# ------------------------------------------------------------------------------- reading


def read_mask(path: Path) -> np.ndarray:
    """A palette or greyscale PNG's pixel values; OvsegError for anything else."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise OvsegError(
                    f"{path}: a {img.mode} image, not a mask (a palette or greyscale PNG whose "
                    "pixel values are class indices)"
                )
            return np.array(img)
    except (OSError, UnidentifiedImageError) as exc:
        raise OvsegError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _read_pair(vp: VideoPredictions, i: int) -> tuple[np.ndarray, np.ndarray]:
    """One labelled frame: its prediction (positions among the evaluated classes) and label."""
    path, label = vp.masks[i], vp.video.frames[i].label
    assert label is not None
    pred = read_mask(path)
    raw = read_image(label, None)
    if pred.shape != raw.shape[:2]:
        size = lambda a: f"{a.shape[1]}x{a.shape[0]}"  # noqa: E731
        raise OvsegError(f"{path} is {size(pred)} but its label {label} is {size(raw)}")
    counts = np.bincount(pred.ravel(), minlength=256)
    bad = np.flatnonzero(counts[vp.values : UNLABELLED])
    if bad.size:
        raise OvsegError(
            f"{path}: pixel value {vp.values + int(bad[0])} is no class of {vp.classes_from} "
            f"({len(vp.names)} classes) and not 255 (unlabelled)"
        )
    return vp.lut[pred], raw


def read_frames(
    videos: Sequence[VideoPredictions],
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(video number, frame number, prediction, raw label) of each labelled frame, in order,
    the PNGs decoded ahead by a pool of threads (PIL decodes without the GIL)."""
    jobs = ((k, i) for k, vp in enumerate(videos) for i in vp.video.labelled)
    workers = image_threads()
    with ThreadPoolExecutor(workers, thread_name_prefix="ovseg-predictions") as pool:
        ahead: deque[tuple[int, int, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        try:
            for k, i in jobs:
                ahead.append((k, i, pool.submit(_read_pair, videos[k], i)))
                if len(ahead) >= 2 * workers:
                    k0, i0, future = ahead.popleft()
                    yield k0, i0, *future.result()
            while ahead:
                k0, i0, future = ahead.popleft()
                yield k0, i0, *future.result()
        finally:
            for _, _, future in ahead:
                future.cancel()
