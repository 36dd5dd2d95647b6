"""`ovseg propagate`: parses the options, shows progress, writes nothing itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ovseg_cli.cli.common import friendly_errors
from ovseg_cli.cli.options import MODEL_OPTIONS, config_options
from ovseg_cli.cli.progress import Progress, done
from ovseg_cli.config import PropagateConfig, SegmentConfig

PROPAGATE_OPTIONS = (
    "empty_frames", "bidirectional", "max_gap", "fill", "flow_preset", "flow_size",
    "shot_threshold", "overlay", "masks", "export", "alpha",
)  # fmt: skip
SECTIONS = {"propagate": PropagateConfig, "segment": SegmentConfig}  # of a --config file


@friendly_errors
@config_options(SegmentConfig, (*MODEL_OPTIONS, "size"), into="model_settings")
@config_options(PropagateConfig, PROPAGATE_OPTIONS, into="settings")
def propagate_command(
    video: Path = typer.Argument(..., help="The video the labels belong to.", show_default=False),
    labels: Path = typer.Option(
        ...,
        "--labels",
        "-l",
        help="Labels of some frames: a folder of masks named by frame index (000123.png, "
        "frame_000123.png; class indices, or colours with labelmap.txt), a CVAT "
        "'Segmentation mask 1.1' zip, or a COCO json (RLE or polygons).",
    ),
    classes_file: Path = typer.Option(
        None,
        "--classes-file",
        help="Classes in this order and colours ('name: prompt, prompt, #rrggbb' lines); the "
        "labels' classes are matched to it by name. Default: the labels' own.",
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Output folder.", show_default="<video stem>_propagated"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    config: Path = typer.Option(
        None,
        "--config",
        help="YAML file with a 'propagate:' and (for --fill model) a 'segment:' section of "
        "settings; options given here win.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    settings: dict[str, Any] | None = None,
    model_settings: dict[str, Any] | None = None,
) -> None:
    """Carry a person's labels of some frames to every frame of the video with optical flow:
    the same output folder as segment; no CLIP weights needed (unless --fill model)."""
    from ovseg_cli.config_io import from_mapping, load_sections
    from ovseg_cli.errors import OvsegError
    from ovseg_cli.propagate.run import run_propagate

    sections = load_sections(config, SECTIONS)
    source = str(config or "command line")
    cfg = from_mapping(
        PropagateConfig, {**sections["propagate"], **(settings or {})}, source=source
    )
    model = {**sections["segment"], **(model_settings or {})}
    seg = from_mapping(SegmentConfig, model, source=source)  # an unknown key: named first
    if model and cfg.fill != "model":
        given = ", ".join("--" + k.replace("_", "-") for k in model)
        raise OvsegError(f"{given}: model options apply only with --fill model")
    read = [config] if config is not None else []
    progress = Progress("propagate", enabled=not quiet)
    try:
        run = run_propagate(
            video, labels, cfg, seg, classes_file=classes_file, out=out, overwrite=overwrite,
            inputs=read, on_start=lambda info, total: progress.start(total),
            on_frame=lambda result: progress.advance(), on_status=progress.status,
        )  # fmt: skip
    finally:
        progress.stop()
    p = run.meta["propagation"]
    names = ("overlay.mp4", "masks/", "cvat.zip", "coco.json", "stats.csv")
    written = [name for name in names if (run.out_dir / name).exists()]
    filled = f", {len(p['model_filled_frames'])} by the model" if p["model_filled_frames"] else ""
    empty = f", {p['unlabelled_frames']} unreached" if p["unlabelled_frames"] else ""
    done(
        f"{run.frames} frames ({p['labelled_frames']} labelled{filled}{empty}) in "
        f"{run.segment_seconds:.1f} s ({run.fps:.2f} fps) -> {run.out_dir} "
        f"({', '.join([*written, 'meta.json'])})",
        quiet,
    )
