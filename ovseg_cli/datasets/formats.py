"""Dataset formats behind a small registry: a name maps to a reader of that layout.

A reader lists a dataset on disk (no pixels decoded) and says how its raw label values map
to class indices; :mod:`ovseg_cli.datasets.prep` does the checking, converting and
writing, the same for every format. A new format is one function and one decorator::

    @register_format("mine", help="My layout: ...")
    def read_mine(root: Path, options: dict) -> RawDataset: ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_cli.errors import OvsegError, did_you_mean

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
INVALID = -1  # a raw label value with no meaning in the format


@dataclass
class RawFrame:
    """A frame as found on disk: its image and its raw label file, if any."""

    image: Path
    label: Path | None = None


@dataclass
class RawVideo:
    """A video as found on disk; frames in temporal order."""

    name: str
    split: str
    frames: list[RawFrame]
    source: Path | None = None  # the folder it came from, for messages


@dataclass
class RawDataset:
    """What a reader found: classes, default seen classes, videos and the raw-label mapping."""

    format: str
    root: Path
    classes: list[str]
    videos: list[RawVideo]
    label_map: np.ndarray  # (256,) int16: raw value -> class index, 255 (ignore) or INVALID
    default_seen: list[int]
    label_values: str  # the raw values the format allows, for error messages
    colors: list[tuple[int, int, int]] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def identity_labels(self) -> bool:
        """True when raw labels already hold class indices and 255, so prep can reference them."""
        valid = self.label_map >= 0
        return bool(np.all(self.label_map[valid] == np.arange(256)[valid]))


Reader = Callable[[Path, dict[str, Any]], RawDataset]


@dataclass(frozen=True)
class FormatOption:
    """An option of one format only (given to its reader in ``options``)."""

    default: Any
    help: str


@dataclass(frozen=True)
class FormatInfo:
    """A registered format: its reader and what `ovseg prep NAME --help` says of it."""

    name: str
    reader: Reader
    help: str  # one line: the format
    root: str = "Dataset root."  # what ROOT must hold
    seen: str = "all"  # the default seen classes, in words
    options: dict[str, FormatOption] = field(default_factory=dict)


_FORMATS: dict[str, FormatInfo] = {}
_BUILTIN = ("vspw", "cityscapes", "camvid", "folder")


def register_format(
    name: str,
    help: str = "",
    *,
    root: str = "Dataset root.",
    seen: str = "all",
    options: dict[str, FormatOption] | None = None,
) -> Callable[[Reader], Reader]:
    """Decorator registering a reader under a format name (``ovseg prep NAME`` comes of it)."""

    def deco(fn: Reader) -> Reader:
        line = help or (fn.__doc__ or "").strip().splitlines()[0]
        _FORMATS[name] = FormatInfo(name, fn, line, root, seen, dict(options or {}))
        return fn

    return deco


def _load_builtin() -> None:
    for mod in _BUILTIN:
        import_module(f"ovseg_cli.datasets.{mod}")


def list_formats() -> list[str]:
    """Names of the registered formats."""
    _load_builtin()
    return sorted(_FORMATS)


def get_format(name: str) -> FormatInfo:
    """The registered format called ``name``; OvsegError with a suggestion otherwise."""
    _load_builtin()
    if name not in _FORMATS:
        raise OvsegError(
            f"unknown dataset format {name!r}: use one of {', '.join(sorted(_FORMATS))}"
            + did_you_mean(name, _FORMATS)
        )
    return _FORMATS[name]


# ---------------------------------------------------------------------------- helpers for readers


def label_map(pairs: Iterable[tuple[int, int]], *, keep_ignore: bool = True) -> np.ndarray:
    """A raw-label lookup table from (raw value, class index or 255) pairs; others INVALID."""
    lut = np.full(256, INVALID, dtype=np.int16)
    for raw, idx in pairs:
        lut[raw] = idx
    if keep_ignore:
        lut[255] = 255
    return lut


def identity_map(num_classes: int) -> np.ndarray:
    """Raw value = class index for 0..C-1, 255 = ignore."""
    return label_map((i, i) for i in range(num_classes))


def natural_key(name: str) -> list[Any]:
    """Sort key treating digit runs as numbers: frame2 before frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files in a folder, in natural order (hidden files skipped)."""
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def found(root: Path, limit: int = 6) -> str:
    """A short description of what a folder holds, for "expected X, found Y" messages."""
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return "nothing readable"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries if not p.name.startswith(".")]
    if not names:
        return "an empty folder"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def not_format(root: Path, fmt: str, expected: str, hint: str = "") -> OvsegError:
    """The error for a folder that is not the named format."""
    return OvsegError(
        f"{root} is not a {fmt} dataset: expected {expected}, found {found(root)}{hint}"
    )


def read_lines(path: Path) -> list[str]:
    """Non-blank, stripped lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise OvsegError(f"cannot read {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
