"""`ovseg segment`: parses the options, shows progress, writes nothing itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ovseg_cli.cli.common import friendly_errors, warn
from ovseg_cli.cli.options import MODEL_OPTIONS, STREAM_OPTIONS, config_options
from ovseg_cli.cli.progress import Progress, done
from ovseg_cli.config import SegmentConfig

# what only `segment` takes; the model's and the stream's options are shared with `eval`
OUTPUT_OPTIONS = ("size", "overlay", "masks", "export", "background", "alpha", "start", "end")


@friendly_errors
@config_options(SegmentConfig, (*MODEL_OPTIONS, *STREAM_OPTIONS, *OUTPUT_OPTIONS))
def segment_command(
    video: Path = typer.Argument(..., help="Video file to segment.", show_default=False),
    classes: str = typer.Option(
        None, "--classes", "-c", help='Class names, e.g. "road,sky,horse".'
    ),
    classes_file: Path = typer.Option(
        None,
        "--classes-file",
        help="File with one class per line ('name: prompt, prompt, #rrggbb').",
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Output folder.", show_default="<video stem>_ovseg"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    config: Path = typer.Option(
        None, "--config", help="YAML file of settings; options given here win."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    settings: dict[str, Any] | None = None,
) -> None:
    """Segment a video: overlay.mp4, palette masks (--masks) and meta.json in an output folder."""
    from ovseg_cli.classes import resolve_classes
    from ovseg_cli.config import resolve
    from ovseg_cli.segment.run import run_segment

    cfg = resolve(SegmentConfig, config, settings)
    specs = resolve_classes(classes, classes_file)
    progress = Progress("segment", enabled=not quiet)
    seen = {"frames": 0, "keyframes": 0}

    def on_frame(result: Any) -> None:
        seen["frames"] += 1
        seen["keyframes"] += result.is_keyframe
        share = seen["keyframes"] / seen["frames"]  # the rest came by optical flow
        progress.advance(note="" if cfg.keyframe_interval == 1 else f"{share:.0%} keyframes")

    try:
        run = run_segment(
            video, specs, cfg, out=out, overwrite=overwrite,
            inputs=[p for p in (classes_file, config) if p is not None],
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
