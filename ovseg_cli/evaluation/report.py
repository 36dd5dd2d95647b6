"""One `ovseg eval` run: a prepared dataset in, a report folder out.

The folder holds ``report.json`` (the paper's four metrics, per-class IoU and accuracy,
VC_n, seen/unseen/harmonic mean for ``--split all``, the class split, the model and the
settings), ``per_class_iou.png`` (a bar chart) and ``examples/`` (frame | prediction |
ground truth). It is written under a temporary name and renamed when complete. With
``predictions`` (``ovseg eval --predictions DIR``) masks already written are scored instead
of a model's: report.json has the same keys, ``model``, ``checkpoint`` and ``clip`` null,
and a ``predictions`` block (the folder, each video's masks and class names, and the
``unmatched_classes``: predicted class names no dataset class has). Under
torchrun every rank evaluates its share of the videos (and writes their masks and examples
into the one folder, which rank 0 made and alone completes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ovseg_cli import __version__
from ovseg_cli import distributed as dist
from ovseg_cli.config import EvalConfig, SegmentConfig
from ovseg_cli.config_io import to_dict
from ovseg_cli.errors import OvsegError
from ovseg_cli.evaluation.predictions import Predictions
from ovseg_cli.evaluation.protocol import EvalResult
from ovseg_cli.outputs import OutputFolder, check_destination


def _clean(x: Any) -> Any:
    """NaN as null, so report.json is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def report_dict(
    result: EvalResult, index: Any, model: Any, cfg: EvalConfig, seg: SegmentConfig,
    predictions: Predictions | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The content of report.json (of a model's masks, or with ``predictions`` of those)."""
    m = result.metrics
    seen = set(index.seen)
    per_class = [
        {"index": c, "name": n, "iou": m["iou"][i], "acc": m["acc"][i], "pixels": m["pixels"][i],
         "seen": c in seen}
        for i, (c, n) in enumerate(zip(result.classes, result.names, strict=True))
    ]  # fmt: skip
    report: dict[str, Any] = {
        "ovseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": str(index.path),
        "split": result.split,
        "data_split": cfg.data_split,
        "mIoU": m["mIoU"],
        "fwIoU": m["fwIoU"],
        "mAcc": m["mAcc"],
        "pAcc": m["pAcc"],
        "per_class": per_class,
        "vc": {f"VC{n}": v for n, v in result.vc.items()},
        "vc_windows": {f"VC{n}": c for n, c in result.vc_windows.items()},
        "by_frame_kind": result.by_kind,  # keyframes and propagated frames scored apart
        "stream": result.stream,
        "class_split": {"seen": list(index.seen), "unseen": list(index.unseen)},
        "evaluated_classes": result.classes,
        "videos": result.videos,
        "frames": result.frames,
        "labelled_frames": result.labelled,
        "seconds": round(result.seconds, 3),
        "fps": round(result.fps, 3),
        "model": None,  # with predictions: no model (see "predictions")
        "checkpoint": None,
        "clip": None,
        "config": {"eval": to_dict(cfg), "model": None},
    }
    if model is not None:
        report["model"] = model.describe()
        report["checkpoint"] = seg.checkpoint
        report["clip"] = {"arch": model.clip.arch, "pretrained": model.clip.pretrained}
        report["config"]["model"] = to_dict(seg)
    if predictions is not None:
        report["predictions"] = predictions.describe()
        report["config"]["predictions"] = str(predictions.path)
    report.update(result.subsets)
    return _clean(report)


def bar_chart(result: EvalResult, index: Any, path: Path) -> None:
    """Per-class IoU as horizontal bars, seen and unseen classes in two colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ious = [0.0 if math.isnan(v) else 100 * v for v in result.metrics["iou"]]
    seen = set(index.seen)
    colors = ["#4c72b0" if c in seen else "#dd8452" for c in result.classes]
    height = max(2.5, 0.28 * len(ious) + 1.2)
    fig, ax = plt.subplots(figsize=(7, height))
    ax.barh(range(len(ious)), ious, color=colors)
    ax.set_yticks(range(len(ious)), [n.replace("_", " ") for n in result.names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    miou = result.metrics["mIoU"]
    title = (
        f"{result.split} classes: mIoU {100 * miou:.1f}" if not math.isnan(miou) else result.split
    )
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#4c72b0", "#dd8452")]
    ax.legend(handles, ["seen", "unseen"], loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class EvalRun:
    """What a finished evaluation wrote and found."""

    out_dir: Path
    report: dict[str, Any]
    result: EvalResult


def run_eval(
    data: str | Path,
    cfg: EvalConfig,
    seg: SegmentConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    model: Any = None,
    predictions: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_frame: Callable[[], None] | None = None,
    ctx: dist.DistContext | None = None,
) -> EvalRun:
    """Evaluate and write the report folder (``inputs``: more files the run reads; ``ctx``:
    this process's place in a torchrun job, whose rank 0 writes the folder).

    ``predictions``: a folder of masks already written (see ``predictions``), scored
    instead of a model's; ``seg`` and ``model`` are then unused.
    """
    ctx = ctx or dist.DistContext()
    from ovseg_cli.datasets.index import check_files, load_index
    from ovseg_cli.evaluation.protocol import check_eval_inputs, eval_selection

    index = load_index(data)
    found = None
    if predictions is not None:
        from ovseg_cli.evaluation.predictions import find_predictions

        if cfg.masks:
            raise OvsegError(
                "--masks saves a model's masks; --predictions scores masks already written"
            )
        classes, videos = eval_selection(index, cfg)
        found = find_predictions(predictions, index, videos, classes)  # every check first
        check_files(index, [vp.video for vp in found.videos])
        name = found.name
        model = None
    else:
        check_eval_inputs(index, cfg)  # a bad classes file, say, fails before the model loads
        name = index.root.name
    final = Path.cwd() / f"{name}_eval_{cfg.split}" if out is None else out
    inputs = [index.root, index.source_root or None, cfg.classes_file, *inputs]
    if found is not None:
        inputs.append(found.path)
    elif seg.checkpoint:
        from ovseg_cli.model.checkpoint import checkpoint_paths

        inputs.extend(checkpoint_paths(seg.checkpoint))
    final = check_destination(final, "eval", overwrite=overwrite, inputs=inputs)  # every rank
    folder = None
    try:
        failure = None
        if ctx.main:
            try:
                folder = OutputFolder(final, "eval", overwrite=overwrite, inputs=inputs)
            except Exception as exc:  # told to the other ranks first: they wait for the path
                failure = exc
        path = dist.broadcast(folder.path if folder is not None else None, ctx)
        if failure is not None:
            raise failure
        if path is None:
            raise OvsegError("rank 0 could not make the report folder (see its error)")
        if found is not None:
            result = _score_predictions(found, index, cfg, path, on_start, on_frame, ctx)
        else:
            model, result = _score_model(
                model, index, cfg, seg, path, on_start, on_status, on_frame, ctx
            )
        report = report_dict(result, index, model, cfg, seg, found)
        if folder is None:
            return EvalRun(final, report, result)  # rank 0 writes the report
        folder.write_json("report.json", report)
        bar_chart(result, index, folder.path / "per_class_iou.png")
        return EvalRun(folder.commit(), report, result)
    except BaseException:
        if folder is not None:
            folder.discard()
        raise


def _score_model(
    model: Any, index: Any, cfg: EvalConfig, seg: SegmentConfig, path: Path,
    on_start: Callable[[int], None] | None, on_status: Callable[[str], None] | None,
    on_frame: Callable[[], None] | None, ctx: dist.DistContext,
) -> tuple[Any, EvalResult]:  # fmt: skip
    """Load the model (unless given) and evaluate it: (the model, the result)."""
    from ovseg_cli.evaluation.protocol import evaluate
    from ovseg_cli.runtime import export_listener
    from ovseg_cli.segment.loading import load_model

    with export_listener(on_status or (lambda message: None)):  # an ONNX export says so
        model = model or load_model(seg)
    if on_start is not None:
        videos = [v for v in index.videos_in(cfg.data_split)[: cfg.limit_videos] if v.labelled]
        count = (lambda v: len(v.frames)) if cfg.unlabelled else (lambda v: len(v.labelled))
        on_start(sum(count(v) for v in videos[ctx.rank :: ctx.world]))
    return model, evaluate(model, index, cfg, seg, on_frame=on_frame, out_dir=path, ctx=ctx)


def _score_predictions(
    found: Predictions, index: Any, cfg: EvalConfig, path: Path,
    on_start: Callable[[int], None] | None, on_frame: Callable[[], None] | None,
    ctx: dist.DistContext,
) -> EvalResult:  # fmt: skip
    """Score the masks found: their labelled frames, this rank's share of the videos."""
    from ovseg_cli.evaluation.protocol import evaluate_predictions

    if on_start is not None:
        on_start(sum(len(vp.video.labelled) for vp in found.videos[ctx.rank :: ctx.world]))
    return evaluate_predictions(found, index, cfg, on_frame=on_frame, out_dir=path, ctx=ctx)
