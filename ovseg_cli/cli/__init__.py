"""The `ovseg` command line: parses arguments, shows progress, reports errors in one line.

Everything heavy (torch, open_clip, PyAV) is imported inside the commands, so that
``ovseg --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ovseg_cli import __version__
from ovseg_cli.cli.common import FrameProgress, console, friendly_errors, warn
from ovseg_cli.config import SegmentConfig, default_text, help_text

app = typer.Typer(
    help="Label every pixel of a video with classes you name, including ones no model was trained on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _opt(name: str, *decls: str, **kwargs: Any) -> Any:
    """An option whose help and default come from SegmentConfig (the one place they live)."""
    return typer.Option(
        None,
        *decls,
        help=help_text(SegmentConfig, name),
        show_default=default_text(SegmentConfig, name),
        **kwargs,
    )


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ovseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """ovseg: open-vocabulary video semantic segmentation."""


@app.command()
@friendly_errors
def segment(
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
    clip: str = _opt("clip", "--clip"),
    pretrained: str = _opt("pretrained", "--pretrained"),
    checkpoint: str = _opt("checkpoint", "--checkpoint"),
    dense_method: str = _opt("dense_method", "--dense-method"),
    size: int = _opt("size", "--size"),
    window: int = _opt("window", "--window"),
    templates: str = _opt("templates", "--templates"),
    temporal: bool = _opt("temporal", "--temporal/--no-temporal"),
    temporal_strength: float = _opt("temporal_strength", "--temporal-strength"),
    temporal_history: int = _opt("temporal_history", "--temporal-history"),
    shot_threshold: float = _opt("shot_threshold", "--shot-threshold"),
    overlay: bool = _opt("overlay", "--overlay/--no-overlay"),
    masks: bool = _opt("masks", "--masks/--no-masks"),
    export: str = _opt("export", "--export"),
    background: str = _opt("background", "--background"),
    threshold: float = _opt("threshold", "--threshold"),
    alpha: float = _opt("alpha", "--alpha"),
    start: float = _opt("start", "--start"),
    end: float = _opt("end", "--end"),
    device: str = _opt("device", "--device"),
    precision: str = _opt("precision", "--precision"),
    keyframe_interval: str = _opt("keyframe_interval", "--keyframe-interval"),
    max_interval: int = _opt("max_interval", "--max-interval"),
    bidirectional: bool = _opt("bidirectional", "--bidirectional/--no-bidirectional"),
    batch: int = _opt("batch", "--batch"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Segment a video: overlay.mp4, palette masks (--masks) and meta.json in an output folder."""
    from ovseg_cli.classes import resolve_classes
    from ovseg_cli.config import resolve

    overrides = {
        "clip": clip, "pretrained": pretrained, "dense_method": dense_method, "size": size,
        "checkpoint": checkpoint,
        "window": window, "templates": templates, "temporal": temporal,
        "temporal_strength": temporal_strength, "temporal_history": temporal_history,
        "shot_threshold": shot_threshold,
        "overlay": overlay, "masks": masks, "alpha": alpha, "start": start, "end": end,
        "export": export, "background": background, "threshold": threshold,
        "device": device, "precision": precision, "keyframe_interval": keyframe_interval,
        "max_interval": max_interval, "bidirectional": bidirectional, "batch": batch,
    }  # fmt: skip
    cfg = resolve(SegmentConfig, config, overrides)
    specs = resolve_classes(classes, classes_file)

    from ovseg_cli.segment.run import run_segment

    progress = None if quiet else FrameProgress("segment")
    seen = {"frames": 0, "keyframes": 0}

    def on_frame(result: Any) -> None:
        seen["frames"] += 1
        seen["keyframes"] += result.is_keyframe
        if cfg.keyframe_interval == "1":
            progress.advance()
        else:  # the share of frames the model ran on; the rest came by optical flow
            progress.advance(note=f"{seen['keyframes'] / seen['frames']:.0%} keyframes")

    try:
        run = run_segment(
            video,
            specs,
            cfg,
            out=out,
            overwrite=overwrite,
            inputs=[p for p in (classes_file, config) if p is not None],
            on_start=(lambda info, total: progress.start(total)) if progress else None,
            on_frame=on_frame if progress else None,
        )
    finally:
        if progress is not None:
            progress.stop()
    if run.skipped:
        warn(f"{run.skipped} frame(s) could not be decoded and were skipped (see meta.json)")
    if not quiet:
        names = ("overlay.mp4", "masks/", "cvat.zip", "coco.json", "stats.csv")
        written = [name for name in names if (run.out_dir / name).exists()]
        share = run.meta["propagation"]["keyframe_share"]
        keys = "" if cfg.keyframe_interval == "1" else f", {share:.0%} keyframes"
        console().print(
            f"[green]done:[/] {run.frames} frames in {run.segment_seconds:.1f} s "
            f"({run.fps:.2f} fps{keys}) -> {run.out_dir} ({', '.join([*written, 'meta.json'])})"
        )


@app.command()
@friendly_errors
def models(
    all_archs: bool = typer.Option(
        False, "--all", help="Also list architectures ovseg cannot run densely."
    ),
    cached: bool = typer.Option(False, "--cached", help="Only weights already in the local cache."),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Describe a trained checkpoint: parameters and cost per module."
    ),
    pretrained: str = typer.Option(
        None, "--pretrained", help="With --checkpoint: where its CLIP weights are (e.g. a file)."
    ),
) -> None:
    """List CLIP architectures and pretrained tags, marking those already in the local cache."""
    if checkpoint is not None:
        _describe_checkpoint(checkpoint, pretrained)
        return
    import open_clip
    from huggingface_hub import constants
    from rich.table import Table

    from ovseg_cli.clip.loading import (
        URL_CACHE,
        cached_weights,
        dense_capable,
        list_architectures,
        list_tags,
    )

    table = Table(title="CLIP models for --clip / --pretrained", show_lines=False)
    table.add_column("--clip")
    table.add_column("image size", justify="right")
    table.add_column("--pretrained tags ([green]cached[/])")
    if all_archs:
        table.add_column("dense")
    for arch in list_architectures(dense_only=not all_archs):
        cfg = open_clip.get_model_config(arch) or {}
        tags = list_tags(arch)
        shown = []
        for tag in tags:
            if cached_weights(arch, tag) is not None:
                shown.append(f"[green]{tag}[/]")
            elif not cached:
                shown.append(tag)
        if cached and not shown:
            continue
        size = cfg.get("vision_cfg", {}).get("image_size", "")
        row = [arch, str(size), ", ".join(shown) or "[dim](no published weights)[/]"]
        if all_archs:
            row.append("yes" if dense_capable(cfg) else "no")
        table.add_row(*row)
    out = console(stderr=False)
    out.print(table)
    out.print(
        f"Weights cache: {constants.HF_HUB_CACHE} (Hugging Face) and {URL_CACHE}.\n"
        "Offline, pass a local file instead: --pretrained /path/to/open_clip_model.safetensors; "
        "'--pretrained none' gives random weights (tests and benchmarks only)."
    )


def _describe_checkpoint(checkpoint: Path, pretrained: str | None) -> None:
    """Parameters (total, trainable) per module and GFLOPs per paper section of one frame."""
    from rich.table import Table

    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.model.summary import model_report
    from ovseg_cli.segment.training_free import load_model

    seg = load_model(SegmentConfig(checkpoint=str(checkpoint), pretrained=pretrained, device="cpu"))
    report = model_report(seg)
    out = console(stderr=False)
    meta = seg.meta
    out.print(
        f"[bold]{checkpoint}[/]: OV2VSS, CLIP {meta['clip']['arch']}/{meta['clip']['pretrained']}, "
        f"step {meta.get('step')}, {len(meta['classes'])} training classes, "
        f"backbone {seg.cfg.backbone}"
    )
    params = Table(title="parameters")
    params.add_column("module")
    params.add_column("total", justify="right")
    params.add_column("trainable", justify="right")
    groups = report["parameters"]
    for name, g in groups.items():
        params.add_row(name, f"{g['total']:,}", f"{g['trainable']:,}")
    params.add_row(
        "[bold]all[/]",
        f"{sum(g['total'] for g in groups.values()):,}",
        f"{sum(g['trainable'] for g in groups.values()):,}",
    )
    out.print(params)
    h, w = report["input"]
    cost = Table(title=f"cost of one streaming step (1280x720 frame seen at {w}x{h}, 10 classes)")
    cost.add_column("section")
    cost.add_column("GFLOPs", justify="right")
    for name, g in report["gflops_per_frame"].items():
        cost.add_row(name, f"{g:.2f}")
    out.print(cost)


# commands defined in their own modules
from ovseg_cli.cli.eval import eval_command  # noqa: E402
from ovseg_cli.cli.prep import prep_app  # noqa: E402
from ovseg_cli.cli.train import train_command  # noqa: E402

app.add_typer(prep_app, name="prep")
app.command("train")(train_command)
app.command("eval")(eval_command)


def main() -> None:
    """Entry point of the `ovseg` console script."""
    app(prog_name="ovseg")


if __name__ == "__main__":
    sys.exit(main())
