"""`ovseg prep`: one command per registered dataset format, made from its registry entry.

Each format's help, what its ROOT holds, its default seen classes and its own options come
from ``ovseg_cli.datasets.formats`` (the one place they are written). The dataset code is
imported inside the commands' work, so that preparing never imports torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ovseg_cli.cli.common import console, friendly_errors, plain, warn
from ovseg_cli.cli.progress import Progress, done
from ovseg_cli.datasets.formats import FormatInfo, get_format, list_formats

prep_app = typer.Typer(
    help="Prepare a video segmentation dataset (VSPW, Cityscapes sequences, CamVid, a folder).",
    no_args_is_help=True,
)

SEEN_HELP = (
    "Seen classes: indices, ranges and names, e.g. '0-79' or '0-6,sky'; 'all' or 'none'. "
    "The rest are unseen."
)


def _parameters(info: FormatInfo) -> list[inspect.Parameter]:
    """The options of `ovseg prep NAME`: the common ones and the format's own."""
    o, kw = typer.Option, inspect.Parameter.KEYWORD_ONLY
    common: list[tuple[str, Any, Any]] = [
        ("root", Path, typer.Argument(..., help=info.root, show_default=False)),
        ("out", str, o(..., "--out", "-o", help="Output folder for index.json and labels.")),
        ("seen", str, o(None, "--seen", help=SEEN_HELP, show_default=info.seen)),
        ("split_file", Path, o(None, "--split-file",
                               help="YAML/JSON file with 'seen' and/or 'unseen' class lists.")),
        ("copy", bool, o(False, "--copy", help="Copy images and labels into the output folder.")),
        ("overwrite", bool, o(False, "--overwrite", help="Replace an existing output folder.")),
        ("workers", int, o(None, "--workers", "-j", help="Threads reading labels.",
                           show_default="cores, at most 8")),
        ("quiet", bool, o(False, "--quiet", "-q", help="No progress bar or summary.")),
    ]  # fmt: skip
    for name, opt in info.options.items():
        flag = "--" + name.replace("_", "-")
        common.append((name, type(opt.default), o(opt.default, flag, help=opt.help)))
    return [inspect.Parameter(n, kw, default=d, annotation=t) for n, t, d in common]


def _command(info: FormatInfo) -> Callable[..., None]:
    """`ovseg prep NAME` for one format."""

    def command(**kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in info.options}
        _prepare(info.name, options=options, **kwargs)

    params = _parameters(info)
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = info.help
    command.__name__ = info.name
    return friendly_errors(command)


def _prepare(
    fmt: str,
    *,
    root: Path,
    out: str,
    seen: str | None,
    split_file: Path | None,
    copy: bool,
    overwrite: bool,
    workers: int | None,
    quiet: bool,
    options: dict[str, Any],
) -> None:
    from ovseg_cli.datasets.prep import prepare

    if workers is not None and workers < 1:
        from ovseg_cli.errors import OvsegError

        raise OvsegError(f"--workers must be at least 1, not {workers}")
    progress = Progress(f"prep {fmt}", enabled=not quiet)
    try:
        result = prepare(
            fmt, root, out, seen=seen, split_file=split_file, copy=copy, overwrite=overwrite,
            workers=workers, options=options,
            on_start=lambda raw, total: progress.start(total),
            on_video=lambda video: progress.advance(len(video.frames)),
        )  # fmt: skip
    finally:
        progress.stop()
    if not quiet:
        _summary(result)
    done(f"{len(result.index.videos)} videos -> {result.out_dir} ({result.seconds:.1f} s)", quiet)


for _name in list_formats():
    prep_app.command(_name)(_command(get_format(_name)))


def _summary(result: Any) -> None:
    """Videos, frames and labelled frames per split; classes seen/unseen; empty classes."""
    from rich.table import Table

    index = result.index
    stats = index.stats
    table = Table(title=plain(f"{index.format} -> {result.out_dir}"))
    for col in ("split", "videos", "frames", "labelled frames"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, s in stats.get("splits", {}).items():
        table.add_row(split, f"{s['videos']:,}", f"{s['frames']:,}", f"{s['labelled_frames']:,}")
    table.add_row(
        "[bold]all[/]",
        f"{stats['videos']:,}",
        f"{stats['frames']:,}",
        f"{stats['labelled_frames']:,}",
    )
    out = console()
    out.print(table)
    out.print(
        f"classes: {len(index.classes)} ({len(index.seen)} seen, {len(index.unseen)} unseen); "
        f"index: {plain(index.path)}"
    )
    train = stats.get("splits", {}).get("train")
    if train and train["labelled_frames"]:
        empty = [index.classes[c] for c in index.seen if train["pixels_per_class"][c] == 0]
        if empty:
            more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            warn(f"{len(empty)} seen class(es) have no labelled pixels in train: "
                  f"{', '.join(empty[:5])}{more}")  # fmt: skip
