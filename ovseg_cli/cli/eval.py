"""`ovseg eval`: the paper's metrics on a prepared dataset, a table and a report folder."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ovseg_cli.cli.common import FrameProgress, console, friendly_errors
from ovseg_cli.config import EvalConfig, SegmentConfig, default_text, help_text


def _opt(cls: type, name: str, *decls: str) -> typer.models.OptionInfo:
    return typer.Option(
        None, *decls, help=help_text(cls, name), show_default=default_text(cls, name)
    )


@friendly_errors
def eval_command(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Prepared dataset (folder with index.json)."
    ),
    split: str = _opt(EvalConfig, "split", "--split"),
    checkpoint: str = _opt(SegmentConfig, "checkpoint", "--checkpoint"),
    clip: str = _opt(SegmentConfig, "clip", "--clip"),
    pretrained: str = _opt(SegmentConfig, "pretrained", "--pretrained"),
    dense_method: str = _opt(SegmentConfig, "dense_method", "--dense-method"),
    out: str = typer.Option(
        None, "--out", "-o", help="Report folder.", show_default="<dataset>_eval_<split>"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report folder."),
    limit_videos: int = _opt(EvalConfig, "limit_videos", "--limit-videos"),
    vc: str = typer.Option(
        None, "--vc", help="Window sizes of VC_n, e.g. 8,16.", show_default="8,16"
    ),
    data_split: str = _opt(EvalConfig, "data_split", "--data-split"),
    size: int = _opt(EvalConfig, "size", "--size"),
    classes_file: str = _opt(EvalConfig, "classes_file", "--classes-file"),
    examples: int = _opt(EvalConfig, "examples", "--examples"),
    device: str = _opt(SegmentConfig, "device", "--device"),
    precision: str = _opt(SegmentConfig, "precision", "--precision"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
) -> None:
    """Evaluate on seen, unseen or all classes: mIoU, fwIoU, mAcc, pAcc, VC_n and a report."""
    from ovseg_cli.config import from_mapping
    from ovseg_cli.evaluation.report import run_eval

    eval_cfg = from_mapping(
        EvalConfig,
        {k: v for k, v in {
            "split": split, "limit_videos": limit_videos, "vc": vc, "data_split": data_split,
            "size": size, "classes_file": classes_file, "examples": examples,
        }.items() if v is not None},
        source="command line",
    )  # fmt: skip
    seg_cfg = from_mapping(
        SegmentConfig,
        {k: v for k, v in {
            "checkpoint": checkpoint, "clip": clip, "pretrained": pretrained,
            "dense_method": dense_method, "device": device, "precision": precision,
        }.items() if v is not None},
        source="command line",
    )  # fmt: skip
    progress = None if quiet else FrameProgress("eval")
    try:
        folder, report, result = run_eval(
            data, eval_cfg, seg_cfg, out=out, overwrite=overwrite,
            on_start=progress.start if progress else None,
            on_frame=progress.advance if progress else None,
        )  # fmt: skip
    finally:
        if progress is not None:
            progress.stop()
    if not quiet:
        _print_report(report)
        console(stderr=False).print(
            f"[green]done:[/] {result.frames} frames ({result.labelled} labelled) in "
            f"{result.seconds:.1f} s ({result.fps:.2f} fps) -> {folder}"
        )


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _print_report(report: dict) -> None:
    """The summary and the per-class table."""
    from rich.table import Table

    summary = Table(title=f"{report['split']} classes, {report['data_split']} videos")
    keys = ["mIoU", "fwIoU", "mAcc", "pAcc", *report["vc"]] + [
        k for k in ("seen", "unseen", "hmean") if k in report
    ]
    for k in keys:
        summary.add_column(k if k not in ("seen", "unseen") else f"mIoU {k}", justify="right")
    summary.add_row(*[_pct(report[k] if k in report else report["vc"][k]) for k in keys])
    per_class = Table(title="per class")
    for col in ("class", "seen", "IoU", "Acc", "pixels"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for c in report["per_class"]:
        per_class.add_row(
            c["name"],
            "yes" if c["seen"] else "no",
            _pct(c["iou"]),
            _pct(c["acc"]),
            f"{c['pixels']:,}",
        )
    out = console(stderr=False)
    out.print(per_class)
    out.print(summary)
