"""`ovseg prep`'s work, the same for every format: check, convert, count and write the index.

A reader (:mod:`ovseg_cli.datasets.formats`) lists the videos; here every frame's size is
read from its header, every label is decoded once to check its size and values against the
class list and to count pixels per class, and labels that do not already hold class indices
(or that ``--copy`` asks for) are written into the output folder as palette PNGs. The
folder appears complete or not at all (:class:`ovseg_cli.outputs.OutputFolder`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovseg_cli import __version__
from ovseg_cli.classes import default_color
from ovseg_cli.datasets.formats import RawDataset, RawVideo, get_format
from ovseg_cli.datasets.index import (
    IGNORE_INDEX,
    INDEX_NAME,
    INDEX_VERSION,
    SPLITS,
    PreparedIndex,
    index_text,
    load_index,
    resolve_split,
)
from ovseg_cli.errors import OvsegError
from ovseg_cli.outputs import OutputFolder, check_destination
from ovseg_cli.video.rendering import palette_bytes, save_palette_png

log = logging.getLogger("ovseg")

MAX_REPORTED = 3  # files named in one error line
INDEX_MODES = ("L", "P", "I", "I;16", "1")  # PIL modes that hold one integer per pixel


@dataclass
class PrepareResult:
    """What `prepare` wrote: the loaded index, its folder and the time taken."""

    index: PreparedIndex
    out_dir: Path
    seconds: float


@dataclass
class _Job:
    video: RawVideo
    out: Path  # the partial output folder
    lut: np.ndarray  # (256,) uint8: raw value -> class index or 255
    valid: np.ndarray  # (256,) bool: raw values the format allows
    write_labels: bool  # convert labels into out/labels/... (else reference them in place)
    copy: bool
    palette: bytes


@dataclass
class _Done:
    frames: list[dict[str, str | None]]
    size: tuple[int, int] | None
    counts: np.ndarray  # (256,) pixels per class index / 255
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, description)
    mixed_size: str | None = None  # a frame whose size differs from the video's first one


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def _process(job: _Job) -> _Done:
    """Check one video's frames and labels; convert/copy what must be; count label pixels."""
    v, out = job.video, job.out
    sub = Path(v.split) / v.name
    counts = np.zeros(256, np.int64)
    frames: list[dict[str, str | None]] = []
    problems: list[tuple[str, str]] = []
    size: tuple[int, int] | None = None
    mixed_size = None
    for f in v.frames:
        try:
            with Image.open(f.image) as im:  # header only: no pixels decoded
                fsize = im.size
        except (OSError, UnidentifiedImageError):
            problems.append(("unreadable", f"{f.image}"))
            continue
        if size is None:
            size = fsize
        elif fsize != size and mixed_size is None:
            mixed_size = f"{f.image} is {fsize[0]}x{fsize[1]}, the first frame {size[0]}x{size[1]}"
        image_ref = str(f.image)
        if job.copy:
            dst = out / "images" / sub / f.image.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.image, dst)
            image_ref = _rel(dst, out)
        label_ref = None
        if f.label is not None:
            try:
                with Image.open(f.label) as lm:
                    lsize, mode = lm.size, lm.mode
                    arr = np.asarray(lm) if lsize == fsize and mode in INDEX_MODES else None
            except (OSError, UnidentifiedImageError):
                problems.append(("unreadable", f"{f.label}"))
                continue
            if lsize != fsize:
                problems.append(
                    ("size", f"{f.label} is {lsize[0]}x{lsize[1]}, its frame {fsize[0]}x{fsize[1]}")
                )
                continue
            if arr is None:
                problems.append(("mode", f"{f.label} (mode {mode})"))
                continue
            if arr.dtype != np.uint8:
                if arr.size and (arr.min() < 0 or arr.max() > 255):
                    big = np.unique(arr[(arr < 0) | (arr > 255)])[:4]
                    problems.append(("values", f"{f.label} ({', '.join(map(str, big))})"))
                    continue
                arr = arr.astype(np.uint8)
            raw_counts = np.bincount(arr.ravel(), minlength=256)
            bad = np.flatnonzero(raw_counts * ~job.valid)
            if bad.size:
                problems.append(("values", f"{f.label} ({', '.join(map(str, bad[:4]))})"))
                continue
            np.add.at(counts, job.lut, raw_counts)  # raw counts -> class counts
            label_ref = str(f.label)
            if job.write_labels or mode not in ("L", "P"):
                dst = out / "labels" / sub / f"{f.image.stem}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                save_palette_png(np.take(job.lut, arr), job.palette, dst)
                label_ref = _rel(dst, out)
            elif job.copy:
                dst = out / "labels" / sub / f"{f.image.stem}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f.label, dst)
                label_ref = _rel(dst, out)
        frames.append({"image": image_ref, "label": label_ref})
    return _Done(frames, size, counts, problems, mixed_size)


_MESSAGES = {  # in the order they are reported
    "unreadable": "cannot read {n} file(s) (not an image?): {files}",
    "size": "label size differs from its frame in {n} file(s): {files}",
    "mode": "label(s) are not index PNGs (one class index per pixel) in {n} file(s): {files}",
    "values": "label values outside the class list (allowed: {allowed}) in {n} file(s): {files}",
}


def _report(problems: list[tuple[str, str]], raw: RawDataset) -> OvsegError:
    for kind, template in _MESSAGES.items():
        items = [d for k, d in problems if k == kind]
        if items:
            files = "; ".join(items[:MAX_REPORTED])
            if len(items) > MAX_REPORTED:
                files += f"; and {len(items) - MAX_REPORTED} more"
            return OvsegError(template.format(n=len(items), files=files, allowed=raw.label_values))
    return OvsegError("; ".join(d for _, d in problems[:MAX_REPORTED]))  # pragma: no cover


def _check_videos(raw: RawDataset) -> None:
    if not raw.videos:
        raise OvsegError(f"no videos found in {raw.root}")
    empty = [v for v in raw.videos if not v.frames]
    if empty:
        where = f" (no frames in {empty[0].source})" if empty[0].source else ""
        more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
        raise OvsegError(f"empty video {empty[0].name}{where}{more}")
    keys: set[tuple[str, str]] = set()
    for v in raw.videos:
        if not v.name or "/" in v.name or "\\" in v.name or v.name in (".", ".."):
            raise OvsegError(f"invalid video name {v.name!r}")
        if (v.split, v.name) in keys:
            raise OvsegError(f"two videos named {v.name!r} in the {v.split} split")
        keys.add((v.split, v.name))


def _run_jobs(
    jobs: list[_Job], workers: int, on_video: Callable[[RawVideo], None] | None
) -> list[_Done]:
    """Process videos on a thread pool (PIL and zlib release the GIL); stop early on errors."""
    results: list[_Done | None] = [None] * len(jobs)
    n_problems = 0
    if workers <= 1 or len(jobs) == 1:
        for i, job in enumerate(jobs):
            results[i] = done = _process(job)
            n_problems += len(done.problems)
            if on_video:
                on_video(job.video)
            if n_problems >= MAX_REPORTED * 4:
                break
        return [r for r in results if r is not None]
    with ThreadPoolExecutor(workers) as pool:
        pending: dict[Future[_Done], int] = {}
        todo = iter(enumerate(jobs))
        stop = False
        while True:
            while not stop and len(pending) < 2 * workers:  # a bounded queue keeps memory flat
                nxt = next(todo, None)
                if nxt is None:
                    break
                pending[pool.submit(_process, nxt[1])] = nxt[0]
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                results[i] = done = fut.result()
                n_problems += len(done.problems)
                if on_video:
                    on_video(jobs[i].video)
            stop = stop or n_problems >= MAX_REPORTED * 4
    return [r for r in results if r is not None]


def _split_stats(videos: list[dict[str, Any]], counts: list[np.ndarray], c: int) -> dict[str, Any]:
    total = np.sum(counts, axis=0) if counts else np.zeros(256, np.int64)
    return {
        "videos": len(videos),
        "frames": sum(len(v["frames"]) for v in videos),
        "labelled_frames": sum(1 for v in videos for f in v["frames"] if f["label"] is not None),
        "pixels_per_class": [int(x) for x in total[:c]],
        "ignored_pixels": int(total[IGNORE_INDEX]),
    }


def _jobs(raw: RawDataset, out: Path, copy: bool) -> list[_Job]:
    colors = raw.colors or [default_color(i) for i in range(len(raw.classes))]
    lut = np.where(raw.label_map >= 0, raw.label_map, IGNORE_INDEX).astype(np.uint8)
    shared = {
        "out": out,
        "lut": lut,
        "valid": raw.label_map >= 0,
        "write_labels": not raw.identity_labels,
        "copy": copy,
        "palette": palette_bytes(colors),
    }
    return [_Job(video=v, **shared) for v in raw.videos]


def _index_data(
    raw: RawDataset, done: list[_Done], split: dict[str, list[int]], prep: dict[str, Any]
) -> dict[str, Any]:
    """The content of index.json (see :mod:`ovseg_cli.datasets.index`)."""
    c = len(raw.classes)
    pairs = list(zip(raw.videos, done, strict=True))
    videos = [
        {
            "name": v.name,
            "split": v.split,
            "size": list(d.size) if d.size else None,
            "frames": d.frames,
        }
        for v, d in pairs
    ]
    stats = _split_stats(videos, [d.counts for d in done], c)
    stats["splits"] = {
        s: _split_stats(
            [vd for vd in videos if vd["split"] == s],
            [d.counts for v, d in pairs if v.split == s],
            c,
        )
        for s in SPLITS
        if any(v.split == s for v in raw.videos)
    }
    return {
        "format": raw.format,
        "version": INDEX_VERSION,
        "root": str(raw.root),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": raw.classes,
        "split": split,
        "ignore_index": IGNORE_INDEX,
        "stats": stats,
        "prep": prep,
        "videos": videos,
    }


def prepare(
    fmt: str,
    root: str | Path,
    out: str | Path,
    *,
    seen: str | Sequence[int | str] | None = None,
    split_file: str | Path | None = None,
    copy: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    options: dict[str, Any] | None = None,
    on_start: Callable[[RawDataset, int], None] | None = None,
    on_video: Callable[[RawVideo], None] | None = None,
) -> PrepareResult:
    """Prepare dataset ``root`` of format ``fmt`` into folder ``out`` (``index.json`` + labels).

    ``seen``: class ranges/names such as ``"0-79"`` (or a list), else ``split_file``, else
    the format's default; the rest are unseen. ``options``: format-specific (folder:
    ``{"split": "train"}``). ``on_start(raw, total_frames)`` and ``on_video(video)`` report
    progress. Raises OvsegError, leaving nothing behind, on any bad input.
    """
    t0 = time.perf_counter()
    info = get_format(fmt)
    src = Path(root).expanduser()
    check_destination(out, "prep", overwrite=overwrite, inputs=[src, split_file])
    if not src.exists():
        raise OvsegError(f"dataset root not found: {src}")
    if not src.is_dir():
        raise OvsegError(f"dataset root {src} is not a folder")
    raw = info.reader(src.resolve(), dict(options or {}))
    _check_videos(raw)
    seen_idx, unseen_idx = resolve_split(raw.classes, seen, split_file, raw.default_seen)
    folder = None
    try:
        folder = OutputFolder(out, "prep", overwrite=overwrite, inputs=[src, split_file])
        jobs = _jobs(raw, folder.path, copy)
        if on_start:
            on_start(raw, sum(len(v.frames) for v in raw.videos))
        n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        done = _run_jobs(jobs, n_workers, on_video)
        problems = [p for d in done for p in d.problems]
        if problems:
            raise _report(problems, raw)
        mixed = [d.mixed_size for d in done if d.mixed_size]
        if mixed:  # the clip sampler resizes such frames to the size of the labelled frame t
            log.warning(
                f"{len(mixed)} video(s) hold frames of different sizes (e.g. {mixed[0]}); "
                "clips resize them to the labelled frame's size"
            )
        labels = "converted" if not raw.identity_labels else ("copied" if copy else "referenced")
        prep = {
            "ovseg": __version__,
            "seen": seen if isinstance(seen, str) or seen is None else list(seen),
            "split_file": str(split_file) if split_file is not None else None,
            "copy": copy,
            "labels": labels,
            "raw_label_values": raw.label_values,
            **raw.options,
        }
        data = _index_data(raw, done, {"seen": seen_idx, "unseen": unseen_idx}, prep)
        folder.write_text(INDEX_NAME, index_text(data))
        final = folder.commit()
    except BaseException:
        if folder is not None:
            folder.discard()
        raise
    return PrepareResult(load_index(final), final, time.perf_counter() - t0)
