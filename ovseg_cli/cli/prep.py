"""`ovseg prep`: datasets on disk to one prepared index (``index.json`` + converted labels).

Only typer and the standard library are imported here; the dataset code is imported inside
the commands, so that ``ovseg --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ovseg_cli.cli.common import FrameProgress, console, friendly_errors, warn

prep_app = typer.Typer(
    help="Prepare a video segmentation dataset (VSPW, Cityscapes sequences, CamVid, a folder).",
    no_args_is_help=True,
)


# options of type Path are shared module-level objects (ruff's B008 allows no calls there)
_OUT = typer.Option(..., "--out", "-o", help="Output folder for index.json and labels.")
_SPLIT_FILE = typer.Option(
    None, "--split-file", help="YAML/JSON file with 'seen' and/or 'unseen' class lists."
)


def _seen(default: str) -> Any:
    return typer.Option(
        None,
        "--seen",
        help="Seen classes: indices, ranges and names, e.g. '0-79' or '0-6,sky'; "
        "'all' or 'none'. The rest are unseen.",
        show_default=default,
    )


def _copy() -> Any:
    return typer.Option(False, "--copy", help="Copy images and labels into the output folder.")


def _overwrite() -> Any:
    return typer.Option(False, "--overwrite", help="Replace an existing output folder.")


def _workers() -> Any:
    return typer.Option(
        None, "--workers", "-j", help="Threads reading labels.", show_default="cores, at most 8"
    )


def _quiet() -> Any:
    return typer.Option(False, "--quiet", "-q", help="No progress bar or summary.")


@prep_app.command()
@friendly_errors
def vspw(
    root: Path = typer.Argument(
        ...,
        help="VSPW 480p root: data/, train.txt, ..., label_num_dic_final.json.",
        show_default=False,
    ),
    out: str = _OUT,
    seen: str = _seen("0-79: the first 80 classes, as in the paper"),
    split_file: Path = _SPLIT_FILE,
    copy: bool = _copy(),
    overwrite: bool = _overwrite(),
    workers: int = _workers(),
    quiet: bool = _quiet(),
) -> None:
    """VSPW: 124 classes ("others" and void are ignored), official train/val/test videos."""
    _prepare("vspw", root, out, seen, split_file, copy, overwrite, workers, quiet)


@prep_app.command()
@friendly_errors
def cityscapes(
    root: Path = typer.Argument(
        ..., help="Cityscapes root: leftImg8bit_sequence/ and gtFine/.", show_default=False
    ),
    out: str = _OUT,
    seen: str = _seen("all: Cityscapes serves cross-dataset evaluation"),
    split_file: Path = _SPLIT_FILE,
    copy: bool = _copy(),
    overwrite: bool = _overwrite(),
    workers: int = _workers(),
    quiet: bool = _quiet(),
) -> None:
    """Cityscapes sequences: 30-frame snippets, the 20th frame labelled, 19 train classes."""
    _prepare("cityscapes", root, out, seen, split_file, copy, overwrite, workers, quiet)


@prep_app.command()
@friendly_errors
def camvid(
    root: Path = typer.Argument(
        ...,
        help="CamVid root in the SegNet layout: train/, trainannot/, val/, ...",
        show_default=False,
    ),
    out: str = _OUT,
    seen: str = _seen("0-6: the first 7 classes"),
    split_file: Path = _SPLIT_FILE,
    copy: bool = _copy(),
    overwrite: bool = _overwrite(),
    workers: int = _workers(),
    quiet: bool = _quiet(),
) -> None:
    """CamVid: 11 classes, frames grouped into sequences by file name."""
    _prepare("camvid", root, out, seen, split_file, copy, overwrite, workers, quiet)


@prep_app.command()
@friendly_errors
def folder(
    root: Path = typer.Argument(
        ..., help="Folder with classes.txt and <video>/frames/, <video>/masks/.", show_default=False
    ),
    out: str = _OUT,
    seen: str = _seen("all"),
    split_file: Path = _SPLIT_FILE,
    split: str = typer.Option(
        "train", "--split", help="Split of the videos not listed in ROOT/{train,val,test}.txt."
    ),
    copy: bool = _copy(),
    overwrite: bool = _overwrite(),
    workers: int = _workers(),
    quiet: bool = _quiet(),
) -> None:
    """Your own videos: <video>/frames/*.jpg|png, optional <video>/masks/*.png, classes.txt."""
    _prepare(
        "folder", root, out, seen, split_file, copy, overwrite, workers, quiet, {"split": split}
    )


def _prepare(
    fmt: str,
    root: Path,
    out: str,
    seen: str | None,
    split_file: Path | None,
    copy: bool,
    overwrite: bool,
    workers: int | None,
    quiet: bool,
    options: dict[str, Any] | None = None,
) -> None:
    from ovseg_cli.datasets.prep import prepare

    if workers is not None and workers < 1:
        from ovseg_cli.errors import OvsegError

        raise OvsegError(f"--workers must be at least 1, not {workers}")
    progress = None if quiet else FrameProgress(f"prep {fmt}")
    try:
        result = prepare(
            fmt,
            root,
            out,
            seen=seen,
            split_file=split_file,
            copy=copy,
            overwrite=overwrite,
            workers=workers,
            options=options,
            on_start=(lambda raw, total: progress.start(total)) if progress else None,
            on_video=(lambda video: progress.advance(len(video.frames))) if progress else None,
        )
    finally:
        if progress is not None:
            progress.stop()
    if not quiet:
        _summary(result)


def _summary(result: Any) -> None:
    """Videos, frames and labelled frames per split; classes seen/unseen; empty classes."""
    from rich.table import Table

    index = result.index
    stats = index.stats
    table = Table(title=f"{index.format} -> {result.out_dir}")
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
        f"index: {index.path} ({result.seconds:.1f} s)"
    )
    train = stats.get("splits", {}).get("train")
    if train and train["labelled_frames"]:
        empty = [index.classes[c] for c in index.seen if train["pixels_per_class"][c] == 0]
        if empty:
            more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            warn(f"{len(empty)} seen class(es) have no labelled pixels in train: "
                  f"{', '.join(empty[:5])}{more}")  # fmt: skip
