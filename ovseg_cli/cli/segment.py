"""`ovseg segment`: parses the options, shows progress, writes nothing itself.

One INPUT that is a video file is a single run; several, or a folder, a glob or an @list,
are a batch (``cli/batch.py``, ``ovseg_cli.batch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ovseg_cli.cli.batch import check_engine, segment_batch
from ovseg_cli.cli.common import friendly_errors, warn
from ovseg_cli.cli.options import MODEL_OPTIONS, STREAM_OPTIONS, config_options
from ovseg_cli.cli.progress import Progress, done
from ovseg_cli.config import SegmentConfig

# what only `segment` takes; the model's and the stream's options are shared with `eval`
OUTPUT_OPTIONS = ("size", "overlay", "masks", "export", "background", "alpha", "start", "end")


@friendly_errors
@config_options(SegmentConfig, (*MODEL_OPTIONS, *STREAM_OPTIONS, *OUTPUT_OPTIONS))
def segment_command(
    inputs: list[str] = typer.Argument(
        ...,
        metavar="INPUT",
        help="Video file(s), folders (searched recursively), quoted glob patterns or @list.txt "
        "files (one INPUT per line). Several videos need --out DIR: one folder per video.",
        show_default=False,
    ),
    classes: str = typer.Option(
        None, "--classes", "-c", help='Class names, e.g. "road,sky,horse".'
    ),
    classes_file: Path = typer.Option(
        None,
        "--classes-file",
        help="File with one class per line ('name: prompt, prompt, #rrggbb').",
    ),
    out: str = typer.Option(
        None,
        "--out",
        "-o",
        help="Output folder; for several videos, the folder that holds one per video.",
        show_default="<video stem>_ovseg",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing output folder (a batch: redo every video)."
    ),
    config: Path = typer.Option(
        None, "--config", help="YAML file of settings; options given here win."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="Where a batch runs: local (this process) or ray (one worker per GPU, or per "
        "--cpus-per-worker CPUs, of a Ray cluster; pip install 'ovseg\\[ray]').",
    ),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="With --engine ray: join this running cluster ('auto', HOST:PORT).",
        show_default="start a local cluster",
    ),
    cpus_per_worker: int = typer.Option(
        None,
        "--cpus-per-worker",
        help="With --engine ray on nodes without GPUs: CPUs per worker.",
        show_default="4",
    ),
    settings: dict[str, Any] | None = None,
) -> None:
    """Segment videos: overlay.mp4, palette masks (--masks) and meta.json in an output folder
    per video; a batch resumes where it stopped (DIR/manifest.jsonl)."""
    from ovseg_cli.batch.inputs import is_batch
    from ovseg_cli.batch.plan import plan_batch
    from ovseg_cli.classes import resolve_classes
    from ovseg_cli.config_io import resolve
    from ovseg_cli.segment.run import run_segment

    cfg = resolve(SegmentConfig, config, settings)
    specs = resolve_classes(classes, classes_file)
    read = [p for p in (classes_file, config) if p is not None]  # never to be overwritten
    batch = is_batch(inputs)
    check_engine(engine, ray_address, cpus_per_worker, batch)
    if batch:
        plan = plan_batch(inputs, specs, cfg, out=out, overwrite=overwrite, extra_inputs=read)
        segment_batch(plan, engine, ray_address, cpus_per_worker, quiet)
        return
    video = Path(inputs[0])
    progress = Progress("segment", enabled=not quiet)
    seen = {"frames": 0, "keyframes": 0}

    def on_frame(result: Any) -> None:
        seen["frames"] += 1
        seen["keyframes"] += result.is_keyframe
        share = seen["keyframes"] / seen["frames"]  # the rest came by optical flow
        progress.advance(note="" if cfg.keyframe_interval == 1 else f"{share:.0%} keyframes")

    try:
        run = run_segment(
            video, specs, cfg, out=out, overwrite=overwrite, inputs=read,
            on_start=lambda info, total: progress.start(total), on_frame=on_frame,
            on_status=progress.status,
        )  # fmt: skip
    finally:
        progress.stop()
    if run.skipped:
        warn(f"{run.skipped} frame(s) could not be decoded and were skipped (see meta.json)")
    names = ("overlay.mp4", "masks/", "cvat.zip", "coco.json", "stats.csv")
    written = [name for name in names if (run.out_dir / name).exists()]
    share = run.meta["propagation"]["keyframe_share"]
    keys = "" if cfg.keyframe_interval == 1 else f", {share:.0%} keyframes"
    done(
        f"{run.frames} frames in {run.segment_seconds:.1f} s ({run.fps:.2f} fps{keys}) -> "
        f"{run.out_dir} ({', '.join([*written, 'meta.json'])})",
        quiet,
    )
