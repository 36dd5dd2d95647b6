"""`ovseg eval`: the paper's metrics on a prepared dataset, a table and a report folder.

It takes the model's and the stream's options from the same definitions as `segment`, so
``--keyframe-interval 4`` measures exactly what `segment --keyframe-interval 4` does.
``--predictions DIR`` scores masks already written (`segment`, `propagate`, another
annotator) with the same metrics and report, and no model: the model's options are refused,
a config file's 'segment:' section is left unused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from ovseg_cli.cli.common import console, friendly_errors, plain
from ovseg_cli.cli.options import MODEL_OPTIONS, STREAM_OPTIONS, config_options
from ovseg_cli.cli.progress import Progress, done
from ovseg_cli.config import EvalConfig, SegmentConfig

EVAL_OPTIONS = (
    "split", "data_split", "limit_videos", "vc", "size", "unlabelled", "classes_file", "examples",
    "masks",
)  # fmt: skip
SECTIONS = {"eval": EvalConfig, "segment": SegmentConfig}  # of an eval --config file
MODEL_EVAL_OPTIONS = ("size", "unlabelled", "classes_file")  # what --predictions has no use for


@friendly_errors
@config_options(SegmentConfig, (*MODEL_OPTIONS, *STREAM_OPTIONS), into="model_settings")
@config_options(EvalConfig, EVAL_OPTIONS, into="eval_settings")
def eval_command(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Prepared dataset (folder with index.json)."
    ),
    predictions: Path = typer.Option(
        None,
        "--predictions",
        help="Score masks already written instead of running a model: an `ovseg segment "
        "--masks` or `ovseg propagate` folder of one video (or its masks/), or a folder with "
        "one subfolder of masks per video (as `ovseg eval --masks` writes); classes matched "
        "by name (labelmap.txt or meta.json). Model options do not apply.",
    ),
    out: str = typer.Option(
        None,
        "--out",
        "-o",
        help="Report folder.",
        show_default="<dataset>_eval_<split>, or <predictions>_eval_<split>",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report folder."),
    config: Path = typer.Option(
        None,
        "--config",
        help="YAML file with an 'eval:' and a 'segment:' section of settings (see "
        "examples/configs/eval-*.yaml); options given here win.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
    eval_settings: dict[str, Any] | None = None,
    model_settings: dict[str, Any] | None = None,
) -> None:
    """Evaluate on seen, unseen or all classes: mIoU, fwIoU, mAcc, pAcc, VC_n and a report;
    a model, or with --predictions DIR masks already written (segment, propagate, an
    annotator's), scored on the dataset's labelled frames."""
    import dataclasses

    from ovseg_cli import distributed as dist
    from ovseg_cli.config_io import from_mapping, load_sections
    from ovseg_cli.evaluation.report import run_eval

    if predictions is not None:  # before the settings are read: a model's have no say
        _check_predictions_options(model_settings or {}, eval_settings or {})
    sections = load_sections(config, SECTIONS)
    eval_cfg = from_mapping(EvalConfig, {**sections["eval"], **(eval_settings or {})},
                            source=str(config or "command line"))  # fmt: skip
    seg_cfg = from_mapping(SegmentConfig, {**sections["segment"], **(model_settings or {})},
                           source=str(config or "command line"))  # fmt: skip
    # under torchrun: a share of the videos per rank (scoring written masks: on the CPU)
    ctx = dist.setup(seg_cfg.device if predictions is None else "cpu")
    finished = False
    try:
        if ctx.distributed and ctx.device.type == "cuda":  # this rank's own GPU
            seg_cfg = dataclasses.replace(seg_cfg, device=str(ctx.device))
        quiet = quiet or not ctx.main  # rank 0 alone shows its progress and the report
        progress = Progress("eval", enabled=not quiet)
        try:
            run = run_eval(
                data, eval_cfg, seg_cfg, out=out, overwrite=overwrite,
                inputs=[config] if config is not None else [], predictions=predictions,
                on_start=progress.start, on_frame=progress.advance, on_status=progress.status,
                ctx=ctx,
            )  # fmt: skip
        finally:
            progress.stop()
        finished = True
    finally:
        dist.teardown(ctx, wait=finished)
    if not quiet:
        _print_report(run.report)
    result = run.result
    done(
        f"{result.frames} frames ({result.labelled} labelled) in {result.seconds:.1f} s "
        f"({result.fps:.2f} fps) -> {run.out_dir}",
        quiet,
    )


def _check_predictions_options(model: dict[str, Any], evaluation: dict[str, Any]) -> None:
    """Refuse the options of a model given with --predictions, naming them."""
    from ovseg_cli.cli.options import flag
    from ovseg_cli.errors import OvsegError

    given = [flag(n) for n in (*MODEL_OPTIONS, *STREAM_OPTIONS) if n in model]
    given += [flag(n) for n in MODEL_EVAL_OPTIONS if n in evaluation]
    if given:
        verb = "does" if len(given) == 1 else "do"
        raise OvsegError(f"--predictions scores written masks: {', '.join(given)} {verb} not apply")


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _print_report(report: dict) -> None:
    """The per-class table, the summary and, with keyframes, keyframes against the rest."""
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
            plain(c["name"]),
            "yes" if c["seen"] else "no",
            _pct(c["iou"]),
            _pct(c["acc"]),
            f"{c['pixels']:,}",
        )
    out = console(stderr=False)
    out.print(per_class)
    out.print(summary)
    kinds = report["by_frame_kind"]
    if kinds["propagated"]["frames"]:
        title = "keyframes and frames propagated by optical flow"
        if report.get("predictions"):
            title = "keyframes (meta.json's keyframe_indices) and the other frames"
        table = Table(title=title)
        for col in ("frames", "labelled", "mIoU", "pAcc"):
            table.add_column(col, justify="left" if col == "frames" else "right")
        for kind, k in kinds.items():
            table.add_row(kind, str(k["frames"]), _pct(k["mIoU"]), _pct(k["pAcc"]))
        out.print(table)
