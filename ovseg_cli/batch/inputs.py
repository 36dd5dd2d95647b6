"""Many videos from one command line: INPUT... expanded to video files, and their output names.

An INPUT is a video file, a folder (searched recursively for files with a video extension),
a glob pattern (``"clips/**/*.mp4"``, quoted so that ovseg expands it) or ``@list.txt`` (one
INPUT per line, relative to the list's folder; blank lines and ``#`` comments skipped).

Batch mode follows from the command line, never from what a folder or a pattern happens to
hold: one INPUT that is a video file is a single run as always (``--out`` is the output
folder); several INPUTs, or a folder, a glob or an @list, are a batch (``--out`` holds one
folder per video). So a script's output layout does not change when a pattern matches one
file.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath

from ovseg_cli.errors import OvsegError
from ovseg_cli.outputs import MARKER

log = logging.getLogger("ovseg")

VIDEO_EXTENSIONS = frozenset(
    (".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts",
     ".mxf", ".ogv", ".ts", ".webm", ".wmv"),
)  # fmt: skip
GLOB_CHARS = frozenset("*?[")
MANIFEST = "manifest.jsonl"  # the batch's record, beside the videos' folders
RESERVED = frozenset({MANIFEST.casefold(), MARKER.casefold()})


def _is_glob(item: str, base: Path | None = None) -> bool:
    return any(c in GLOB_CHARS for c in item) and not ((base or Path()) / item).exists()


def _is_list(item: str, base: Path | None = None) -> bool:
    return item.startswith("@") and not ((base or Path()) / item).exists()


def is_batch(inputs: Sequence[str]) -> bool:
    """True when the inputs ask for a batch: more than one, or a folder, a glob or an @list."""
    if len(inputs) != 1:
        return True
    item = inputs[0]
    return _is_list(item) or _is_glob(item) or Path(item).is_dir()


def is_video_file(path: Path) -> bool:
    """A file whose extension is a video container's."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _unreadable(exc: OSError) -> None:
    log.warning(f"skipped {exc.filename}: {exc.strerror or exc} (its videos are not in the batch)")


def _is_output(folder: Path) -> bool:
    """An ovseg output (a batch's --out too): it holds overlay.mp4 files, never inputs."""
    try:
        return (folder / MARKER).exists()
    except OSError:
        return False  # unreadable: os.walk reports it when it tries to list it


def _search(folder: Path) -> Iterator[Path]:
    """Video files under ``folder``, sorted, leaving out hidden folders and ovseg's outputs;
    a folder that cannot be listed is skipped with a warning, the rest is still searched."""
    for top, dirs, files in os.walk(folder, onerror=_unreadable):
        here = Path(top)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _is_output(here / d))
        for name in sorted(files):
            if not name.startswith(".") and is_video_file(here / name):
                yield here / name


def _in_output(path: Path, base: Path) -> bool:
    """Whether a glob's match lies inside an ovseg output below the pattern's fixed part."""
    return any(
        _is_output(parent) for parent in path.parents if parent != base and base in parent.parents
    )


def _expand(item: str, base: Path, seen_lists: set[str], empty: list[str]) -> Iterator[Path]:
    """The files of one INPUT; ``empty`` collects the folders and globs that gave none."""
    if _is_list(item, base):
        listed = (base / item[1:]).expanduser()
        key = os.path.realpath(listed)
        if key in seen_lists:
            raise OvsegError(f"{listed}: a list that includes itself")
        try:
            lines = listed.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise OvsegError(f"cannot read the list {listed}: {exc}") from None
        entries = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]
        for entry in entries:
            yield from _expand(entry, listed.parent, seen_lists | {key}, empty)
        return
    path = (base / item).expanduser()
    if _is_glob(item, base):
        # a rerun (how a batch resumes) must not take the outputs of the first run as inputs
        root = _fixed_part(path)
        matches = [p for p in map(Path, sorted(glob.glob(str(path), recursive=True)))
                   if not _in_output(p, root)]  # fmt: skip
        found = [m for p in matches for m in _video_files(p)]
        what = "the pattern"
    elif path.is_dir():
        found, what = list(_search(path)), "the folder"
    else:
        found, what = None, ""
    if found is not None:
        if not found:
            empty.append(f"{what} {path}")
        yield from found
        return
    yield path  # a file, whatever its extension: the user named it (missing: a failed video)


def _fixed_part(pattern: Path) -> Path:
    """The folder a glob pattern starts from: its parts before the first wildcard."""
    parts = pattern.parts
    fixed = next((i for i, part in enumerate(parts) if any(c in GLOB_CHARS for c in part)), 0)
    return Path(*parts[:fixed]) if fixed else Path(".")


def _video_files(path: Path) -> list[Path]:
    if path.is_dir():
        return [] if _is_output(path) else list(_search(path))
    return [path] if path.is_file() and is_video_file(path) else []


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """The video files the INPUTs name, in order, each once, as absolute paths.

    Folders give the video files below them (not inside hidden folders or ovseg's outputs);
    globs give the video files they match; named files are taken as they are.
    """
    videos: list[Path] = []
    seen: set[str] = set()
    empty: list[str] = []
    for item in inputs:
        if not item.strip():
            raise OvsegError("an INPUT is empty")
        for path in _expand(item, Path.cwd(), set(), empty):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                videos.append(Path(os.path.normpath(path.absolute())))
    if not videos:
        raise OvsegError(f"no video files in {'; '.join(empty) or ', '.join(inputs)}")
    for item in empty:
        log.warning(f"no video files in {item}")
    return videos


def output_names(videos: Sequence[Path]) -> list[PurePath]:
    """Each video's folder under ``--out``: its path relative to the deepest folder holding
    all the videos, without extension (``a/b.mp4`` -> ``a/b``); OvsegError for clashes."""
    root = Path(os.path.commonpath([str(v.parent) for v in videos]))
    names = [PurePath(v.relative_to(root).with_suffix("")) for v in videos]
    owner: dict[str, Path] = {}
    for video, name in zip(videos, names, strict=True):
        key = name.as_posix().casefold()  # case-insensitive file systems would merge them
        if key in RESERVED:
            raise OvsegError(f"{video} would be written to --out/{name}, a name the batch uses")
        if key in owner:
            raise OvsegError(
                f"{owner[key]} and {video} would both be written to --out/{name}; "
                "rename one or segment them apart"
            )
        owner[key] = video
    for key, video in owner.items():
        for parent in PurePath(key).parents:
            if parent.as_posix() in owner:
                raise OvsegError(
                    f"{video}'s folder would lie inside {owner[parent.as_posix()]}'s; "
                    "rename one or segment them apart"
                )
    return names
