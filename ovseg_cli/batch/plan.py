"""A batch's plan and its videos' results: what ``run_batch`` (``ovseg_cli.batch.run``)
and the engines share.

``plan_batch`` expands the INPUTs (``inputs``), names each video's folder, checks DIR and
decides which videos are already complete with the same settings (``fingerprint``),
writing nothing; ``segment_item`` segments one video into its atomic folder and returns
what became of it, a failure included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from ovseg_cli.batch.fingerprint import settings_fingerprint
from ovseg_cli.batch.inputs import MANIFEST, expand_inputs, output_names
from ovseg_cli.batch.manifest import check_manifest
from ovseg_cli.classes import ClassSpec
from ovseg_cli.config import SegmentConfig
from ovseg_cli.errors import OvsegError, is_disk_full
from ovseg_cli.outputs import check_location, read_marker
from ovseg_cli.segment.run import SegmentRun, check_outputs, run_inputs, run_segment

if TYPE_CHECKING:
    from ovseg_cli.clip.prompts import Vocabulary
    from ovseg_cli.segment.protocol import Segmenter

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchItem:
    """One video of a batch and where its folder goes."""

    video: Path  # absolute
    name: PurePath  # its folder, relative to the batch folder
    output: Path  # the batch folder / name
    frames: int | None  # to do: the container's estimate; complete: the frames written
    complete: bool = False  # its folder is complete with the same settings: skipped


@dataclass
class VideoResult:
    """What became of one video of a batch."""

    item: BatchItem
    status: str  # "done", "failed" or "skipped"
    error: str | None = None
    frames: int = 0
    seconds: float = 0.0
    attempts: int = 1  # the Ray engine retries a video whose worker died
    run: SegmentRun | None = None  # done: what run_segment wrote

    def record(self, fingerprint: str, engine: str) -> dict[str, Any]:
        """The manifest line of this result."""
        return {
            "input": str(self.item.video), "output": self.item.name.as_posix(),
            "status": self.status, "error": self.error, "frames": self.frames,
            "seconds": round(self.seconds, 3), "fingerprint": fingerprint,
            "attempts": self.attempts, "engine": engine,
        }  # fmt: skip


@dataclass
class BatchPlan:
    """The videos of a batch, their folders, and the settings they are segmented with."""

    out: Path
    items: list[BatchItem]
    specs: list[ClassSpec]  # as given; run_segment adds the background class
    classes: list[ClassSpec]  # what the model sees (background included)
    config: SegmentConfig
    fingerprint: str
    overwrite: bool = False
    inputs: list[Path] = field(default_factory=list)  # more files read: classes, config

    @property
    def todo(self) -> list[BatchItem]:
        """The videos to segment."""
        return [item for item in self.items if not item.complete]

    @property
    def skipped(self) -> list[BatchItem]:
        """The videos whose folders are complete with the same settings."""
        return [item for item in self.items if item.complete]


def describe_error(exc: BaseException, output: Path | None = None) -> str:
    """One line for a video's failure: the message of an OvsegError, else type and message."""
    if is_disk_full(exc):  # worded as a single run says it, not as the OS error
        where = getattr(exc, "filename", None) or output or "the output"
        return f"disk full writing {where}; partial output removed"
    text = str(exc) if isinstance(exc, OvsegError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def check_batch_root(out: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """The batch folder: new, empty, or an earlier ovseg batch (resumed); OvsegError if not."""
    final = check_location(out, inputs)
    if final.is_symlink():
        raise OvsegError(f"--out {final} is a symbolic link; name the folder itself")
    if not final.exists():
        return final
    if not final.is_dir():
        raise OvsegError(f"--out {final} exists and is not a folder")
    marker = read_marker(final)
    if marker is None and any(final.iterdir()):
        raise OvsegError(
            f"{final} holds files ovseg did not write; name a new or empty folder for the batch"
        )
    if marker is not None and marker.get("kind") != "batch":
        raise OvsegError(
            f"{final} holds an ovseg {marker.get('kind')} output, not a batch; name another folder"
        )
    return final


def output_state(output: Path, video: Path, fingerprint: str) -> str:
    """``missing``, ``complete`` (same settings, same video file), ``stale`` or ``foreign``."""
    if not output.exists() and not output.is_symlink():
        return "missing"
    marker = read_marker(output) if output.is_dir() and not output.is_symlink() else None
    if marker is None or marker.get("kind") != "segment":
        return "foreign"
    try:
        meta = json.loads((output / "meta.json").read_text(encoding="utf-8"))
        source = meta["input"]
        same = meta["settings_fingerprint"] == fingerprint and source["path"] == str(video)
    except (OSError, ValueError, KeyError, TypeError):
        return "stale"
    if same and video.exists():  # a deleted video: keep what was made from it
        st = video.stat()
        same = (source.get("bytes"), source.get("modified_ns")) == (st.st_size, st.st_mtime_ns)
    return "complete" if same else "stale"


def frames_written(output: Path) -> int | None:
    """The frame count a complete folder's meta.json records (None: unreadable)."""
    try:
        return int(json.loads((output / "meta.json").read_text())["output"]["frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _estimate(video: Path, config: SegmentConfig) -> int | None:
    """The container's frame count within --start/--end (None: unknown or unreadable)."""
    from ovseg_cli.video.reader import probe_video

    try:
        return probe_video(video).frames_between(config.start, config.end)
    except Exception:  # a bad video fails when its turn comes, with its own message
        return None


def plan_batch(
    inputs: Sequence[str | Path],
    classes: Sequence[ClassSpec],
    config: SegmentConfig,
    *,
    out: str | Path | None,
    overwrite: bool = False,
    extra_inputs: Sequence[str | Path] = (),
) -> BatchPlan:
    """Expand the INPUTs and check everything a batch can check before it writes anything.

    Refused (OvsegError): no ``out``, settings that write nothing, no video found, two
    videos with one folder, a DIR that is not a batch folder, and, without ``overwrite``,
    folders made with other settings or from a changed video.
    """
    if out is None or not str(out).strip():
        raise OvsegError("several videos need --out DIR, the folder that holds one per video")
    seen_classes = check_outputs(classes, config)
    videos = expand_inputs([str(i) for i in inputs])
    names = output_names(videos)
    weights = run_inputs(videos[0], config)[1:]
    root = check_batch_root(out, [*videos, *weights, *extra_inputs])
    check_manifest(root / MANIFEST)
    fingerprint = settings_fingerprint(config, seen_classes)
    items, stale = [], []
    for video, name in zip(videos, names, strict=True):
        output = root / name
        state = output_state(output, video, fingerprint)
        if state == "stale":
            stale.append(name)
        complete = state == "complete" and not overwrite
        frames = frames_written(output) if complete else _estimate(video, config)
        items.append(BatchItem(video, name, output, frames, complete))
    if stale and not overwrite:
        raise OvsegError(
            f"{len(stale)} folder(s) in {root} were made with other settings or from a changed "
            f"video (first: {stale[0]}); pass --overwrite to redo them, or name another --out"
        )
    return BatchPlan(
        root, items, list(classes), seen_classes, config, fingerprint, overwrite,
        [Path(p) for p in extra_inputs],
    )  # fmt: skip


Progress = Callable[[BatchItem, int], None]  # (video, frames done so far: 0 when it starts)


def segment_item(
    plan: BatchPlan,
    item: BatchItem,
    model: Segmenter,
    vocabulary: Vocabulary,
    on_progress: Progress | None = None,
) -> VideoResult:
    """Segment one video of a batch into its folder; a failure is returned, not raised.

    Stop signals (KeyboardInterrupt) are raised: run_segment has removed the partial folder.
    """
    t0 = time.perf_counter()
    count = 0

    def on_frame(_: Any) -> None:
        nonlocal count
        count += 1
        if on_progress is not None:
            on_progress(item, count)

    if on_progress is not None:
        on_progress(item, 0)
    try:
        run = run_segment(
            item.video, plan.specs, plan.config, out=item.output, overwrite=plan.overwrite,
            inputs=plan.inputs, model=model, vocabulary=vocabulary, on_frame=on_frame,
        )  # fmt: skip
    except Exception as exc:  # one bad video never stops the batch
        failure = describe_error(exc, item.output)
        return VideoResult(item, "failed", failure, count, time.perf_counter() - t0)
    return VideoResult(item, "done", None, run.frames, time.perf_counter() - t0, run=run)
