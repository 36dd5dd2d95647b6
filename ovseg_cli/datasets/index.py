"""The prepared-dataset index (``index.json``): schema, reading, writing and class splits.

``ovseg prep`` writes one ``index.json`` per dataset; ``train`` and ``eval`` read it with
:func:`load_index` and never look at the original layout again::

    {"format": "camvid", "version": 1, "root": "/abs/source/root", "created": "2025-...Z",
     "classes": ["Sky", "Building", ...],          # label value i means classes[i]
     "split": {"seen": [0, 1, ...], "unseen": [7, ...]},   # class indices, a partition
     "ignore_index": 255,
     "videos": [{"name": "0016E5", "split": "val", "size": [480, 360],   # width, height
                 "frames": [{"image": "/abs/.../0016E5_07959.png",
                             "label": "labels/val/0016E5/0016E5_07959.png"}, ...]}],
     "stats": {"videos": V, "frames": N, "labelled_frames": M, "pixels_per_class": [...],
               "ignored_pixels": X, "splits": {"train": {...}, ...}},
     "prep": {...the options used...}}

Frames are in temporal order. ``label`` is null for unlabelled frames. Every label PNG the
index points to holds class indices 0..C-1 or 255 (ignore) directly. A path is absolute or
relative to the folder holding ``index.json`` (files prep wrote or copied there).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovseg_cli.classes import UNLABELLED as IGNORE_INDEX  # noqa: F401  (the one 255: no class)
from ovseg_cli.classes import name_key
from ovseg_cli.errors import OvsegError, did_you_mean

INDEX_NAME = "index.json"
INDEX_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: its image and, when labelled, its label PNG (absolute path strings)."""

    image: str
    label: str | None = None


@dataclass
class Video:
    """A video of a prepared dataset: frames in temporal order, ``size`` of its first frame."""

    name: str
    split: str
    frames: list[Frame]
    size: tuple[int, int] | None = None  # (width, height)

    @property
    def labelled(self) -> list[int]:
        """Indices of the labelled frames."""
        return [i for i, f in enumerate(self.frames) if f.label is not None]


@dataclass
class PreparedIndex:
    """A loaded ``index.json``; frame paths are resolved to absolute strings."""

    path: Path
    format: str
    classes: list[str]
    seen: list[int]
    unseen: list[int]
    ignore_index: int
    videos: list[Video]
    stats: dict[str, Any] = field(default_factory=dict)
    prep: dict[str, Any] = field(default_factory=dict)
    source_root: str = ""
    created: str = ""

    @property
    def root(self) -> Path:
        """The folder holding ``index.json`` (relative paths are relative to it)."""
        return self.path.parent

    def videos_in(self, split: str) -> list[Video]:
        """The videos of one split (train, val or test)."""
        check_split(split)
        return [v for v in self.videos if v.split == split]

    def class_names(self, indices: Iterable[int]) -> list[str]:
        """Names of class indices."""
        return [self.classes[i] for i in indices]


def check_split(split: str) -> str:
    """Refuse a split name other than train, val or test."""
    if split not in SPLITS:
        raise OvsegError(
            f"unknown split {split!r}: use one of {', '.join(SPLITS)}" + did_you_mean(split, SPLITS)
        )
    return split


# ---------------------------------------------------------------------------- class splits


def parse_class_list(items: Iterable[Any], classes: Sequence[str], what: str) -> list[int]:
    """Class indices from indices, names and ``a-b`` ranges (inclusive), in order, no repeats."""
    by_name = {name_key(c): i for i, c in enumerate(classes)}
    n = len(classes)
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise OvsegError(f"{what}: {item!r} is not a class index or name")
        if isinstance(item, int):
            picked = [item]
        else:
            text = str(item).strip()
            if not text:
                raise OvsegError(f"{what}: empty entry (stray comma?)")
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
            if name_key(text) in by_name:  # a name wins over a range: "t-shirt" is a class
                picked = [by_name[name_key(text)]]
            elif text.isdigit():
                picked = [int(text)]
            elif m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if lo > hi:
                    raise OvsegError(f"{what}: range {text!r} runs backwards")
                picked = list(range(lo, hi + 1))
            else:
                raise OvsegError(
                    f"{what}: {text!r} is not a class index, range or name"
                    + did_you_mean(text, classes)
                )
        for i in picked:
            if not 0 <= i < n:
                raise OvsegError(
                    f"{what}: class index {i} is out of range ({n} classes: 0..{n - 1})"
                )
            if i in out:
                raise OvsegError(f"{what}: class {i} ({classes[i]}) is given twice")
            out.append(i)
    return out


def parse_ranges(text: str, classes: Sequence[str], what: str = "--seen") -> list[int]:
    """``"0-79"``, ``"0-6,9,sky"``, ``"all"`` or ``"none"`` as class indices."""
    t = text.strip().lower()
    if t == "all":
        return list(range(len(classes)))
    if t == "none":
        return []
    return parse_class_list(text.split(","), classes, what)


def read_split_file(path: str | Path, classes: Sequence[str]) -> tuple[list[int], list[int]]:
    """Seen and unseen class indices from a YAML/JSON file with ``seen`` and/or ``unseen`` lists."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise OvsegError(f"split file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))  # YAML reads JSON too
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise OvsegError(f"{p}: not valid YAML or JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not ({"seen", "unseen"} & set(data)):
        raise OvsegError(f"{p}: expected a mapping with 'seen' and/or 'unseen' lists of classes")
    extra = set(data) - {"seen", "unseen"}
    if extra:
        raise OvsegError(f"{p}: unknown key {sorted(extra)[0]!r} (expected 'seen' and 'unseen')")
    lists: dict[str, list[int] | None] = {}
    for key in ("seen", "unseen"):
        value = data.get(key)
        if value is None:
            lists[key] = None
        elif isinstance(value, list):
            lists[key] = parse_class_list(value, classes, f"{p}: {key}")
        else:
            raise OvsegError(f"{p}: {key} must be a list of class indices or names")
    return _complete(lists["seen"], lists["unseen"], classes, str(p))


def _complete(
    seen: list[int] | None, unseen: list[int] | None, classes: Sequence[str], where: str
) -> tuple[list[int], list[int]]:
    everything = range(len(classes))
    if seen is None:
        seen = [i for i in everything if i not in set(unseen or [])]
    if unseen is None:
        unseen = [i for i in everything if i not in set(seen)]
    both = sorted(set(seen) & set(unseen))
    if both:
        raise OvsegError(f"{where}: class {both[0]} ({classes[both[0]]}) is both seen and unseen")
    missing = [i for i in everything if i not in set(seen) | set(unseen)]
    if missing:
        raise OvsegError(
            f"{where}: class {missing[0]} ({classes[missing[0]]}) is neither seen nor unseen"
        )
    return sorted(seen), sorted(unseen)


def resolve_split(
    classes: Sequence[str],
    seen: str | Sequence[int | str] | None,
    split_file: str | Path | None,
    default_seen: Sequence[int],
) -> tuple[list[int], list[int]]:
    """Seen/unseen class indices from ``--seen``, ``--split-file`` or the format's default."""
    if seen is not None and split_file is not None:
        raise OvsegError("give --seen or --split-file, not both")
    if split_file is not None:
        return read_split_file(split_file, classes)
    if seen is None:
        picked = list(default_seen)
    elif isinstance(seen, str):
        picked = parse_ranges(seen, classes)
    else:
        picked = parse_class_list(seen, classes, "seen")
    return _complete(picked, None, classes, "--seen")


# ---------------------------------------------------------------------------- reading


def _bad(path: Path, why: str) -> OvsegError:
    return OvsegError(f"{path}: not a valid ovseg index ({why}); prepare it with `ovseg prep`")


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in data:
        raise _bad(path, f"no {key!r}")
    if not isinstance(data[key], kind):
        raise _bad(path, f"{key!r} has the wrong type")
    return data[key]


def _resolve(base: str, p: str) -> str:
    return p if os.path.isabs(p) else os.path.join(base, p)  # str ops: indexes hold 1e5+ paths


def load_index(path_or_dir: str | Path) -> PreparedIndex:
    """Read ``index.json`` (or the one in a folder), checking its shape; OvsegError if malformed."""
    p = Path(path_or_dir).expanduser()
    if p.is_dir():
        p = p / INDEX_NAME
    if not p.is_file():
        raise OvsegError(
            f"no prepared dataset at {p}: run `ovseg prep FORMAT ROOT --out DIR` first"
        )
    p = p.absolute()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(p, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _bad(p, "not a JSON object")
    version = data.get("version")
    if version != INDEX_VERSION:
        raise _bad(p, f"version {version!r}, this ovseg reads version {INDEX_VERSION}")
    classes = _get(data, "classes", list, p)
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise _bad(p, "'classes' must be a non-empty list of names")
    n = len(classes)
    split = _get(data, "split", dict, p)
    seen, unseen = split.get("seen"), split.get("unseen")
    for name, lst in (("seen", seen), ("unseen", unseen)):
        ok = isinstance(lst, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in lst
        )
        if not ok:
            raise _bad(p, f"split.{name} must list class indices 0..{n - 1}")
    ignore = _get(data, "ignore_index", int, p)
    base = str(p.parent)
    videos: list[Video] = []
    for k, v in enumerate(_get(data, "videos", list, p)):
        try:
            frames = [
                Frame(
                    _resolve(base, f["image"]),
                    None if f["label"] is None else _resolve(base, f["label"]),
                )
                for f in v["frames"]
            ]
            size = (int(v["size"][0]), int(v["size"][1])) if v.get("size") else None
            videos.append(Video(str(v["name"]), check_split(v["split"]), frames, size))
        except (KeyError, TypeError, AttributeError, OvsegError):
            raise _bad(p, f"video {k} is malformed") from None
    return PreparedIndex(
        path=p,
        format=str(data.get("format", "")),
        classes=list(classes),
        seen=list(seen),
        unseen=list(unseen),
        ignore_index=ignore,
        videos=videos,
        stats=data.get("stats") or {},
        prep=data.get("prep") or {},
        source_root=str(data.get("root", "")),
        created=str(data.get("created", "")),
    )


def check_files(index: PreparedIndex, videos: Iterable[Video]) -> None:
    """Raise OvsegError naming the first missing files the given videos' frames point to."""
    missing: list[str] = []
    total = 0
    for video in videos:
        for f in video.frames:
            for path in (f.image, f.label):
                if path is not None and not os.path.isfile(path):
                    total += 1
                    if len(missing) < 2:
                        missing.append(path)
    if total:
        more = f" and {total - len(missing)} more" if total > len(missing) else ""
        raise OvsegError(
            f"{index.path}: {total} file(s) it lists are missing, e.g. {'; '.join(missing)}{more} "
            "(moved or deleted since `ovseg prep`? prepare the dataset again)"
        )


# ---------------------------------------------------------------------------- writing


def index_text(data: dict[str, Any]) -> str:
    """``index.json`` text: one line per top-level key, one line per frame, readable and diffable."""
    dump = lambda x: json.dumps(x, ensure_ascii=False)  # noqa: E731
    lines = ["{"]
    keys = [k for k in data if k != "videos"]
    for k in keys:
        lines.append(f"  {dump(k)}: {dump(data[k])},")
    lines.append('  "videos": [')
    for vi, video in enumerate(data.get("videos", [])):
        head = {k: video[k] for k in video if k != "frames"}
        lines.append(f'    {dump(head)[:-1]}, "frames": [')
        frames = video["frames"]
        for fi, f in enumerate(frames):
            lines.append(f"      {dump(f)}" + ("," if fi < len(frames) - 1 else ""))
        lines.append("    ]}" + ("," if vi < len(data["videos"]) - 1 else ""))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"
