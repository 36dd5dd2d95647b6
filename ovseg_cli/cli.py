"""The `ovseg` command line: parses arguments, shows progress, reports errors in one line.

Everything heavy (torch, open_clip, PyAV) is imported inside the commands, so that
``ovseg --help`` answers at once.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from ovseg_cli import __version__
from ovseg_cli.config import SegmentConfig, default_text, help_text
from ovseg_cli.errors import OvsegError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    help="Label every pixel of a video with classes you name, including ones no model was trained on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _console(stderr: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _error(message: str) -> None:
    _console().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)


def _warn(message: str) -> None:
    _console().print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)


class _WarningHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _warn(record.getMessage())


def _setup_logging() -> None:
    log = logging.getLogger("ovseg")
    if not any(isinstance(h, _WarningHandler) for h in log.handlers):
        log.addHandler(_WarningHandler(level=logging.WARNING))
    log.propagate = False


def friendly_errors(fn: F) -> F:
    """Turn OvsegError into one line and exit code 2; never show a traceback for bad input."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except OvsegError as exc:
            _error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _error("interrupted; partial output removed")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("OVSEG_DEBUG"):
                raise
            _error(
                f"internal error: {type(exc).__name__}: {exc} (set OVSEG_DEBUG=1 for the traceback)"
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


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
    out: Path = typer.Option(
        None, "--out", "-o", help="Output folder.", show_default="<video stem>_ovseg"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    config: Path = typer.Option(
        None, "--config", help="YAML file of settings; options given here win."
    ),
    clip: str = _opt("clip", "--clip"),
    pretrained: str = _opt("pretrained", "--pretrained"),
    dense_method: str = _opt("dense_method", "--dense-method"),
    size: int = _opt("size", "--size"),
    window: int = _opt("window", "--window"),
    templates: str = _opt("templates", "--templates"),
    temporal: bool = _opt("temporal", "--temporal/--no-temporal"),
    temporal_strength: float = _opt("temporal_strength", "--temporal-strength"),
    temporal_history: int = _opt("temporal_history", "--temporal-history"),
    overlay: bool = _opt("overlay", "--overlay/--no-overlay"),
    masks: bool = _opt("masks", "--masks/--no-masks"),
    alpha: float = _opt("alpha", "--alpha"),
    start: float = _opt("start", "--start"),
    end: float = _opt("end", "--end"),
    device: str = _opt("device", "--device"),
    precision: str = _opt("precision", "--precision"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Segment a video: overlay.mp4, palette masks (--masks) and meta.json in an output folder."""
    from ovseg_cli.classes import resolve_classes
    from ovseg_cli.config import resolve

    overrides = {
        "clip": clip, "pretrained": pretrained, "dense_method": dense_method, "size": size,
        "window": window, "templates": templates, "temporal": temporal,
        "temporal_strength": temporal_strength, "temporal_history": temporal_history,
        "overlay": overlay, "masks": masks, "alpha": alpha, "start": start, "end": end,
        "device": device, "precision": precision,
    }  # fmt: skip
    cfg = resolve(SegmentConfig, config, overrides)
    specs = resolve_classes(classes, classes_file)

    from ovseg_cli.segment_run import run_segment

    progress = None if quiet else _FrameProgress()
    try:
        run = run_segment(
            video,
            specs,
            cfg,
            out=out,
            overwrite=overwrite,
            on_start=progress.start if progress else None,
            on_frame=progress.advance if progress else None,
        )
    finally:
        if progress is not None:
            progress.stop()
    if run.skipped:
        _warn(f"{run.skipped} frame(s) could not be decoded and were skipped (see meta.json)")
    if not quiet:
        written = [name for name in ("overlay.mp4", "masks/") if (run.out_dir / name).exists()]
        _console().print(
            f"[green]done:[/] {run.frames} frames in {run.segment_seconds:.1f} s "
            f"({run.fps:.2f} fps) -> {run.out_dir} ({', '.join([*written, 'meta.json'])})"
        )


class _FrameProgress:
    """A rich progress bar: frames done / total and frames per second."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]segment[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames"),
            TextColumn("{task.fields[fps]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=_console(),
            transient=False,
        )
        self.task: Any = None
        self.t0 = 0.0
        self.done = 0

    def start(self, info: Any, total: int | None) -> None:
        self.progress.start()
        self.task = self.progress.add_task("segment", total=total, fps="")
        self.t0 = time.perf_counter()

    def advance(self, result: Any) -> None:
        self.done += 1
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, advance=1, fps=f"{rate:.2f} fps")

    def stop(self) -> None:
        if self.task is None:
            return  # never started: stopping would print an empty line
        total = self.progress.tasks[0].total
        if total is not None and self.done != total:  # the estimate was off: end at 100%
            self.progress.update(self.task, total=self.done)
        self.progress.stop()


@app.command()
@friendly_errors
def models(
    all_archs: bool = typer.Option(
        False, "--all", help="Also list architectures ovseg cannot run densely."
    ),
    cached: bool = typer.Option(False, "--cached", help="Only weights already in the local cache."),
) -> None:
    """List CLIP architectures and pretrained tags, marking those already in the local cache."""
    import open_clip
    from huggingface_hub import constants
    from rich.table import Table

    from ovseg_cli.clip_loading import (
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
    console = _console(stderr=False)
    console.print(table)
    console.print(
        f"Weights cache: {constants.HF_HUB_CACHE} (Hugging Face) and {URL_CACHE}.\n"
        "Offline, pass a local file instead: --pretrained /path/to/open_clip_model.safetensors; "
        "'--pretrained none' gives random weights (tests and benchmarks only)."
    )


def main() -> None:
    """Entry point of the `ovseg` console script."""
    app(prog_name="ovseg")


if __name__ == "__main__":
    sys.exit(main())
