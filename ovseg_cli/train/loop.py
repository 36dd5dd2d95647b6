"""The training loop of `ovseg train` (paper IV-B): frozen CLIP, the new modules learn.

One process or many under torchrun (DistributedDataParallel); mixed precision on GPUs,
gradient accumulation and clipping; a guard that stops on a non-finite loss before any
checkpoint can be poisoned; Ctrl-C stops after writing a checkpoint; ``--resume`` goes on
exactly where the last checkpoint was taken.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovseg_cli import distributed as dist
from ovseg_cli.errors import STOP_SIGNALS, Interrupted, OvsegError
from ovseg_cli.threads import usable_cores
from ovseg_cli.train.config import TrainConfig
from ovseg_cli.train.run_dir import RunDir
from ovseg_cli.train.state import Progress, load_training_state, save_training_state

# resuming may change these; anything else in the config must match the run
OPERATIONAL_KEYS = (
    "run.max_steps", "run.log_every", "run.ckpt_every", "run.val_every", "run.val_videos",
    "run.device", "data.workers",
)  # fmt: skip


@dataclass
class StepLog:
    """What one logged step reports."""

    step: int
    total: int
    loss: float
    main: float
    aux: float
    lr: float
    clips_per_s: float


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    steps: int
    stopped: str  # "finished" or "interrupted"
    best: float | None
    seconds: float
    last_loss: float | None = None
    validations: list[dict[str, Any]] = field(default_factory=list)
    signal: int | None = None  # the stop signal of an interrupted run


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant, linear decay or cosine decay to 0 at optim.steps."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    span = max(1, o.steps - o.warmup_steps)
    t = min(1.0, (step - o.warmup_steps) / span)
    return 1.0 - t if o.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * t))


def _precision(name: str, device: torch.device) -> str:
    from ovseg_cli.devices import resolve_precision

    return resolve_precision(name, device)


def check_run_dir(run_dir: Path, trainable: int) -> None:
    """Fail early on an unwritable folder or a disk too full for the checkpoints."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise OvsegError(f"cannot write to {run_dir}: {exc.strerror or exc}") from None
    # last + best, each weights + two AdamW moments in fp32, written next to the old ones
    need = trainable * 4 * 3 * 2 * 2 + 64 * 2**20
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise OvsegError(
            f"{run_dir}: {free / 2**20:.0f} MiB free, checkpoints need about {need / 2**20:.0f} MiB"
        )


class _StopFlag:
    """Stop signals (Ctrl-C, SIGTERM, SIGHUP): once, finish the step, checkpoint, stop; twice,
    stop now (the last checkpoint stays)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def set(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handler
            self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def train(
    data: str | Path,
    run_dir: str | Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    on_start: Callable[[int, int], None] | None = None,
    on_log: Callable[[StepLog], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train OV2VSS on a prepared dataset into ``run_dir`` (see the module doc).

    ``overwrite`` replaces an earlier ovseg run folder; ``inputs`` are more files the run
    reads (its config file), which the run folder may not be or hold.
    """
    from ovseg_cli.clip.loading import load_clip
    from ovseg_cli.clip.prompts import encode_vocabulary
    from ovseg_cli.clip.templates import templates_named
    from ovseg_cli.config_io import dump_yaml
    from ovseg_cli.datasets.index import check_files, load_index
    from ovseg_cli.evaluation.protocol import class_specs
    from ovseg_cli.model.ov2vss import OV2VSS
    from ovseg_cli.train.data import loader_workers, training_loader

    index = load_index(data)
    run = RunDir(
        run_dir, resume=resume, overwrite=overwrite,
        inputs=[index.root, index.source_root or None, *inputs],
    )  # fmt: skip
    run_dir = run.path
    if not index.seen:
        raise OvsegError(f"{index.path}: no seen classes to train on")
    used = index.videos_in("train") + (index.videos_in("val") if cfg.run.val_every else [])
    check_files(index, used)
    ctx = dist.setup(cfg.run.device)
    finished = False
    say = on_message if (on_message and ctx.main) else (lambda _msg: None)
    try:
        if ctx.device.type == "cpu" and loader_workers(cfg):
            # loader processes need cores too; oversubscribed OpenMP threads spin and stall
            cores = usable_cores()
            torch.set_num_threads(max(1, cores // ctx.world - loader_workers(cfg)))
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        clip = load_clip(cfg.model.clip, cfg.model.pretrained, device=str(ctx.device))
        model = OV2VSS(cfg.model, clip).to(ctx.device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        if ctx.main:
            run.claim()
            check_run_dir(run_dir, sum(p.numel() for p in params))
            dump_yaml(cfg, run_dir / "config.yaml")
        dist.barrier(ctx)
        specs = class_specs(index, index.seen, None)
        text = encode_vocabulary(clip, specs, templates_named(cfg.model.templates)).embeddings.to(
            ctx.device
        )
        _, sampler, loader = training_loader(index, cfg, ctx.rank, ctx.world)
        precision = _precision(cfg.optim.precision, ctx.device)
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=precision == "fp16")
        progress = Progress()
        if resume:
            progress = load_training_state(run_dir / "last", model, optimizer, scheduler, scaler)
            if ctx.main:
                _truncate_log(run_dir / "metrics.jsonl", progress.step)
            say(f"resuming {run_dir} at step {progress.step}")
        net = model
        if ctx.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=cfg.model.num_past == 1,  # no history update to learn
            )
        loop = _Loop(cfg, ctx, run_dir, model, net, clip, index, text,
                     optimizer, scheduler, scaler, precision)  # fmt: skip
        if on_start is not None and ctx.main:
            on_start(progress.step, cfg.total_steps)
        with _StopFlag() as stop:
            result = loop.run(progress, sampler, loader, stop, on_log if ctx.main else None, say)
        finished = True
        return result
    except BaseException:
        if ctx.main:
            run.abandon()
        raise
    finally:
        dist.teardown(ctx, wait=finished)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in keep))


@dataclass
class _Loop:
    """The steps, logging, validation and checkpoints of one run."""

    cfg: TrainConfig
    ctx: dist.DistContext
    run_dir: Path
    model: Any  # OV2VSS, for checkpoints and validation
    net: Any  # the model, or its DistributedDataParallel wrapper, for training steps
    clip: Any
    index: Any
    text: torch.Tensor
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    precision: str
    validations: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _save(self, name: str, progress: Progress) -> None:
        if self.ctx.main:
            save_training_state(
                self.run_dir / name, self.model, self.clip, config=self.cfg,
                optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                progress=progress, classes=self.index.class_names(self.index.seen),
                split={"seen": list(self.index.seen), "unseen": list(self.index.unseen)},
                world=self.ctx.world,
            )  # fmt: skip

    def _log(self, record: dict[str, Any]) -> None:
        if self.ctx.main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _validate(self, progress: Progress, say: Callable[[str], None]) -> None:
        from ovseg_cli.config import EvalConfig
        from ovseg_cli.evaluation.protocol import evaluate
        from ovseg_cli.model.streaming import OV2VSSSegmenter

        if not self.index.videos_in("val") or not any(
            v.labelled for v in self.index.videos_in("val")
        ):
            return
        improved = False
        if self.ctx.main:
            seg = OV2VSSSegmenter(
                self.model, self.clip, device=self.ctx.device, precision=self.precision
            )
            cfg = EvalConfig(
                split=self.cfg.run.val_split, limit_videos=self.cfg.run.val_videos, vc=(), examples=0,
                size=self.cfg.model.size,
            )  # fmt: skip
            result = evaluate(seg, self.index, cfg)
            self.model.train()
            miou = result.metrics["mIoU"]
            record = {
                "step": progress.step,
                "val_mIoU": miou,
                "val_split": cfg.split,
                **result.subsets,
            }
            self.validations.append(record)
            self._log(record)
            say(f"step {progress.step}: validation mIoU ({cfg.split}) {100 * miou:.2f}")
            improved = not math.isnan(miou) and (progress.best is None or miou > progress.best)
            if improved:
                progress.best = miou
                self._save("best", progress)
        dist.barrier(self.ctx)

    def run(self, progress: Progress, sampler, loader, stop, on_log, say) -> TrainResult:
        """Steps until the end of the schedule, max_steps, or Ctrl-C."""
        from ovseg_cli.devices import autocast
        from ovseg_cli.model.ov2vss import segmentation_loss

        cfg, ctx = self.cfg, self.ctx
        total, acc = cfg.total_steps, cfg.optim.accumulate
        window = {"loss": 0.0, "main": 0.0, "aux": 0.0, "n": 0}
        t_window, t0, micro, last = time.perf_counter(), time.perf_counter(), 0, None
        stopped = "finished"
        while progress.step < total:
            sampler.set_position(progress.epoch, progress.batch_in_epoch)
            for batch in loader:
                frames = batch["frames"].to(ctx.device, non_blocking=True)
                distant = batch["random"].to(ctx.device, non_blocking=True)
                labels = batch["label"].to(ctx.device, non_blocking=True)
                sync = (micro + 1) % acc == 0
                no_sync = (
                    self.net.no_sync()
                    if (ctx.distributed and not sync)
                    else contextlib.nullcontext()
                )
                with no_sync:
                    with autocast(ctx.device, self.precision):
                        out = self.net(frames, distant, self.text)
                    losses = segmentation_loss(out, labels, cfg.loss.alpha, cfg.loss.beta)
                    self.scaler.scale(losses["loss"] / acc).backward()
                values = {k: float(v.detach()) for k, v in losses.items()}
                progress.batch_in_epoch += 1
                micro += 1
                bad = not all(math.isfinite(v) for v in values.values())
                if dist.any_true(bad, ctx):
                    raise OvsegError(
                        f"the loss became {values['loss']} at step {progress.step + 1}; stopped without "
                        f"saving (last good checkpoint: {self.run_dir / 'last.safetensors'}). Lower "
                        "optim.lr, or use fp32/bf16"
                    )
                for k in ("loss", "main", "aux"):
                    window[k] += values[k]
                window["n"] += 1
                if not sync:
                    continue
                if cfg.optim.clip_grad > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                progress.step += 1
                if progress.step % cfg.run.log_every == 0 or progress.step == total:
                    now = time.perf_counter()
                    n = max(window["n"], 1)
                    step_log = StepLog(
                        progress.step, total, *(dist.mean(window[k] / n, ctx) for k in ("loss", "main", "aux")),
                        self.scheduler.get_last_lr()[0],
                        window["n"] * cfg.data.batch * ctx.world / max(now - t_window, 1e-9),
                    )  # fmt: skip
                    last = step_log.loss
                    self._log({
                        "step": step_log.step, "epoch": progress.epoch, "loss": step_log.loss,
                        "main": step_log.main, "aux": step_log.aux, "lr": step_log.lr,
                        "clips_per_s": step_log.clips_per_s, "elapsed_s": round(now - t0, 3),
                        "world": ctx.world,
                    })  # fmt: skip
                    if on_log is not None:
                        on_log(step_log)
                    window = {"loss": 0.0, "main": 0.0, "aux": 0.0, "n": 0}
                    t_window = now
                if cfg.run.val_every and progress.step % cfg.run.val_every == 0:
                    self._validate(progress, say)
                interrupted = dist.any_true(stop.set, ctx)
                if progress.step % cfg.run.ckpt_every == 0 or progress.step >= total or interrupted:
                    self._save("last", progress)
                    dist.barrier(ctx)
                if interrupted:
                    stopped = "interrupted"
                    break
                if progress.step >= total:
                    break
            else:  # the epoch is used up
                progress.epoch += 1
                progress.batch_in_epoch = 0
                continue
            break
        return TrainResult(
            self.run_dir,
            progress.step,
            stopped,
            progress.best,
            time.perf_counter() - t0,
            last,
            self.validations,
            stop.signum if stopped == "interrupted" else None,
        )
