"""Many videos in one run: ``segment_videos`` in Python, ``ovseg segment INPUT... --out DIR``.

    from ovseg_cli.batch import segment_videos
    for r in segment_videos(["clips/"], "road,sky", out="labelled", pretrained="openai"):
        print(r.item.name, r.status, r.frames, r.error)

``plan_batch`` (``plan``) expands the INPUTs (``inputs``), names each video's folder, checks DIR and
decides which videos are already complete with the same settings (``fingerprint``),
writing nothing. ``run_batch`` then loads the model and builds the text embeddings once
(or starts the Ray workers, ``ray_engine``), marks DIR as an ovseg batch folder, removes
what killed runs left, and segments the other videos one after another, each into its own
atomic folder (``run_segment``), appending each outcome to ``DIR/manifest.jsonl`` as it
comes. A video that fails is recorded and the batch goes on; a stop signal discards the
video in progress and ends the batch; a rerun picks up where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovseg_cli.batch.inputs import MANIFEST
from ovseg_cli.batch.manifest import Manifest
from ovseg_cli.batch.plan import (
    ENGINES,
    BatchItem,
    BatchPlan,
    Progress,
    VideoResult,
    plan_batch,
    segment_item,
)
from ovseg_cli.classes import ClassSpec, resolve_classes
from ovseg_cli.config import SegmentConfig
from ovseg_cli.config_io import from_mapping, to_dict
from ovseg_cli.errors import OvsegError
from ovseg_cli.outputs import read_marker, remove_stale, write_marker

if TYPE_CHECKING:
    from ovseg_cli.segment.protocol import Segmenter


class LocalEngine:
    """The videos one after another in this process, with one model and one vocabulary."""

    name = "local"

    def __init__(self, plan: BatchPlan, model: Segmenter | None = None) -> None:
        from ovseg_cli.segment.loading import load_model

        self.plan = plan
        self.model = model or load_model(plan.config)
        self.vocabulary = self.model.encode_vocabulary(plan.classes)

    def run(
        self, items: Sequence[BatchItem], on_progress: Progress | None
    ) -> Iterator[VideoResult]:
        """Each video's result, in the given order."""
        for item in items:
            yield segment_item(self.plan, item, self.model, self.vocabulary, on_progress)

    def close(self) -> None:
        """Nothing to release."""


def _mark_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        if read_marker(root) is None:
            write_marker(root, "batch")
    except OSError as exc:
        raise OvsegError(f"cannot write to {root}: {exc.strerror or exc}") from None


def _remove_stale(items: Sequence[BatchItem]) -> None:
    """Remove the partial folders of killed runs beside the videos' folders."""
    partials: dict[Path, set[str]] = {}
    for parent in {item.output.parent for item in items}:
        try:
            partials[parent] = {p.name for p in parent.iterdir() if ".partial-" in p.name}
        except OSError:
            continue
    for item in items:
        prefix = f".{item.output.name}.partial-"
        if any(n.startswith(prefix) for n in partials.get(item.output.parent, ())):
            remove_stale(item.output)


def run_batch(
    plan: BatchPlan,
    *,
    engine: str = "local",
    model: Segmenter | None = None,
    on_progress: Progress | None = None,
    ray_address: str | None = None,
    cpus_per_worker: int | None = None,
) -> Iterator[VideoResult]:
    """Segment the videos of a plan, yielding each result (skipped ones first) as it comes.

    The model (``local``: in this process; ``ray``: in each worker) is loaded before the
    batch folder is touched, and not at all when every video is complete.
    """
    if engine not in ENGINES:
        raise OvsegError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    todo = plan.todo
    runner: Any = None
    if todo and engine == "ray":
        from ovseg_cli.batch.ray_engine import RayEngine

        runner = RayEngine(plan, address=ray_address, cpus_per_worker=cpus_per_worker)
    elif todo:
        runner = LocalEngine(plan, model)
    try:
        _mark_root(plan.out)
        _remove_stale(plan.items)
        with Manifest(plan.out / MANIFEST) as manifest:
            for item in plan.skipped:
                result = VideoResult(item, "skipped", frames=item.frames or 0)
                manifest.append(result.record(plan.fingerprint, engine))
                yield result
            if runner is not None:
                for result in runner.run(todo, on_progress):
                    manifest.append(result.record(plan.fingerprint, engine))
                    yield result
    finally:
        if runner is not None:
            runner.close()


def segment_videos(
    inputs: str | Path | Sequence[str | Path],
    classes: str | Sequence[str | ClassSpec] | None = None,
    *,
    out: str | Path,
    classes_file: str | Path | None = None,
    config: SegmentConfig | None = None,
    overwrite: bool = False,
    model: Segmenter | None = None,
    engine: str = "local",
    on_progress: Progress | None = None,
    ray_address: str | None = None,
    cpus_per_worker: int | None = None,
    **overrides: Any,
) -> Iterator[VideoResult]:
    """Segment many videos (files, folders, globs, @lists) into one folder each under ``out``.

    Iterate the result for one ``VideoResult`` per video. The inputs and ``out`` are checked
    at once (OvsegError); the model is loaded once, on the first iteration, or pass one
    from ``load_model``. ``engine="ray"`` runs the videos on Ray workers instead
    (``ray_engine``). ``overrides`` are settings of ``SegmentConfig``.
    """
    cfg = config or SegmentConfig()
    if overrides:
        cfg = from_mapping(SegmentConfig, {**to_dict(cfg), **overrides}, source="segment_videos")
    specs = resolve_classes(classes, classes_file)
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    extra = [classes_file] if classes_file is not None else []
    plan = plan_batch(items, specs, cfg, out=out, overwrite=overwrite, extra_inputs=extra)
    return run_batch(
        plan, engine=engine, model=model, on_progress=on_progress, ray_address=ray_address,
        cpus_per_worker=cpus_per_worker,
    )  # fmt: skip
