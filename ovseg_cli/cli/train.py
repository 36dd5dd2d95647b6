"""`ovseg train`: parses options, shows progress; the work is in ovseg_cli.train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ovseg_cli.cli.common import console, friendly_errors, plain
from ovseg_cli.cli.progress import Progress, done


@friendly_errors
def train_command(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Prepared dataset (folder with index.json)."
    ),
    out: str = typer.Option(..., "--out", "-o", help="Run folder: config, metrics, checkpoints."),
    config: Path = typer.Option(None, "--config", help="YAML config (see examples/configs/)."),
    assignments: list[str] = typer.Option(
        [], "--set", help="Override one setting, e.g. --set optim.lr=1e-5 (repeatable)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Go on from OUT/last.safetensors."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start afresh in OUT, replacing an earlier ovseg run there."
    ),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many steps."),
    clip: str = typer.Option(None, "--clip", help="Frozen CLIP architecture (model.clip)."),
    pretrained: str = typer.Option(None, "--pretrained", help="CLIP weights (model.pretrained)."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N (run.device)."),
    precision: str = typer.Option(
        None, "--precision", help="auto, fp32, fp16, bf16 (optim.precision)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train OV2VSS on the seen classes of a prepared dataset; torchrun for many GPUs."""
    from ovseg_cli.config_io import load_yaml
    from ovseg_cli.errors import OvsegError
    from ovseg_cli.train.config import config_differences, resolve_train_config
    from ovseg_cli.train.loop import OPERATIONAL_KEYS, train

    overrides = {
        "run.max_steps": max_steps, "model.clip": clip, "model.pretrained": pretrained,
        "run.device": device, "optim.precision": precision,
    }  # fmt: skip
    if resume:
        saved_path = Path(out) / "config.yaml"
        if not saved_path.is_file():
            raise OvsegError(f"nothing to resume: {saved_path} does not exist")
        saved = resolve_train_config(load_yaml(saved_path))
        cfg = resolve_train_config(load_yaml(saved_path), config, assignments, overrides)
        diff = config_differences(saved, cfg, ignore=OPERATIONAL_KEYS)
        if diff:
            raise OvsegError(f"--resume with a different config: {'; '.join(diff[:4])}")
    else:
        cfg = resolve_train_config(None, config, assignments, overrides)

    bar = Progress("train", unit="steps", enabled=not quiet, estimated=False)

    def on_log(log: Any) -> None:
        bar.update(log.step, f"loss {log.loss:.4f} (main {log.main:.4f}, aux {log.aux:.4f}) "
                             f"lr {log.lr:.2e} {log.clips_per_s:.1f} clips/s")  # fmt: skip

    say = console().print if not quiet else None
    try:
        result = train(
            data, out, cfg, resume=resume, overwrite=overwrite,
            inputs=[config] if config is not None else [],
            on_start=lambda step, total: bar.start(total, step), on_log=on_log, on_message=say,
        )  # fmt: skip
    finally:
        bar.stop()
    best = f", best validation mIoU {100 * result.best:.2f}" if result.best is not None else ""
    if result.stopped == "interrupted":
        import signal

        name = signal.Signals(result.signal or signal.SIGINT).name
        console().print(
            f"[yellow]stopped by {name}:[/] checkpoint at step {result.steps} in "
            f"{plain(result.run_dir)}; go on with --resume",
            soft_wrap=True,
        )
        raise typer.Exit(128 + (result.signal or signal.SIGINT))  # `train && eval` stops here
    done(f"{result.steps} steps in {result.seconds:.0f} s{best} -> {result.run_dir}", quiet)
