"""`ovseg models`: the CLIP architectures and weights ovseg can use, or what a checkpoint holds."""

from __future__ import annotations

from pathlib import Path

import typer

from ovseg_cli.cli.common import console, friendly_errors, plain


@friendly_errors
def models_command(
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

    from ovseg_cli.clip.cache import URL_CACHE, cached_weights
    from ovseg_cli.clip.loading import dense_capable, list_architectures, list_tags

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
        f"Weights cache: {plain(constants.HF_HUB_CACHE)} (Hugging Face) and {plain(URL_CACHE)}.\n"
        "Offline, pass a local file instead: --pretrained /path/to/open_clip_model.safetensors; "
        "'--pretrained none' gives random weights (tests and benchmarks only)."
    )


def _describe_checkpoint(checkpoint: Path, pretrained: str | None) -> None:
    """Parameters (total, trainable) per module and GFLOPs per paper section of one frame."""
    from rich.table import Table

    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.model.summary import model_report
    from ovseg_cli.segment.loading import load_model

    seg = load_model(SegmentConfig(checkpoint=str(checkpoint), pretrained=pretrained, device="cpu"))
    report = model_report(seg)
    out = console(stderr=False)
    meta = seg.meta
    out.print(
        f"[bold]{plain(checkpoint)}[/]: OV2VSS, CLIP "
        f"{plain(meta['clip']['arch'])}/{plain(meta['clip']['pretrained'])}, "
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
