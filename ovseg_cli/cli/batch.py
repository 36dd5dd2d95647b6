"""`ovseg segment` with many videos: one progress bar over the batch, a summary table, and
exit code 1 when a video failed. The work is ``ovseg_cli.batch``'s."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import typer

from ovseg_cli.cli.common import console, plain
from ovseg_cli.cli.progress import Progress, done
from ovseg_cli.errors import OvsegError

if TYPE_CHECKING:
    from ovseg_cli.batch.plan import BatchItem, BatchPlan, VideoResult

ENGINES = ("local", "ray")  # as ovseg_cli.batch.plan.ENGINES, without importing it
FAILED_SHOWN = 20  # failed videos listed in the summary; the manifest has them all


def check_engine(
    engine: str, address: str | None, cpus_per_worker: int | None, batch: bool
) -> None:
    """One-line errors for engine options that do not fit together."""
    if engine not in ENGINES:
        raise OvsegError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine != "ray" and (address is not None or cpus_per_worker is not None):
        flag = "--ray-address" if address is not None else "--cpus-per-worker"
        raise OvsegError(f"{flag} needs --engine ray")
    if engine == "ray" and not batch:
        raise OvsegError(
            "--engine ray runs batches: give several videos, a folder, a glob or an @list"
        )
    if cpus_per_worker is not None and cpus_per_worker < 1:
        raise OvsegError(f"--cpus-per-worker must be at least 1, not {cpus_per_worker}")


class BatchProgress:
    """The one bar of a batch: frames over all its videos, and the videos running now."""

    def __init__(self, plan: BatchPlan, quiet: bool) -> None:
        self.todo = len(plan.todo)
        self.total = sum(item.frames or 0 for item in plan.todo)
        self.finished = 0
        self.base = 0  # frames of finished videos
        self.running: dict[BatchItem, int] = {}
        self.t0: float | None = None  # when the first video started (the model is loaded)
        self.bar = Progress("segment", enabled=not quiet)

    def frames(self, item: BatchItem, count: int) -> None:
        """``item`` has done ``count`` frames so far."""
        if self.t0 is None:  # from the first video on: the rate leaves model loading out
            self.t0 = time.perf_counter()
            self.bar.start(self.total, items=True)
        self.running[item] = count
        self.bar.update(self.base + sum(self.running.values()))
        names = [str(i.name) for i in self.running]
        more = f" +{len(names) - 3}" if len(names) > 3 else ""  # many workers: the first few
        self.bar.item(f"videos {self.finished}/{self.todo} done, now {', '.join(names[:3])}{more}")

    def finish(self, result: VideoResult) -> None:
        """A video is over: count what it did, correct the total by what it announced."""
        if result.status == "skipped":
            return
        self.running.pop(result.item, None)
        self.finished += 1
        self.base += result.frames
        if result.item.frames != result.frames:  # an estimate, or a video that failed
            self.total += result.frames - (result.item.frames or 0)
            self.bar.set_total(self.total)
        self.bar.update(self.base + sum(self.running.values()))
        self.bar.item(f"videos {self.finished}/{self.todo} done")

    def stop(self) -> None:
        """End the bar."""
        self.bar.stop()


def segment_batch(
    plan: BatchPlan, engine: str, address: str | None, cpus_per_worker: int | None, quiet: bool
) -> None:
    """Run a planned batch with a progress bar, then print its summary; exit 1 if any failed."""
    from ovseg_cli.batch.run import run_batch

    progress = BatchProgress(plan, quiet)
    results: list[VideoResult] = []
    try:
        for result in run_batch(
            plan, engine=engine, on_progress=progress.frames, ray_address=address,
            cpus_per_worker=cpus_per_worker,
        ):  # fmt: skip
            progress.finish(result)
            result.run = None  # its meta.json is on disk: a long batch keeps only the counts
            results.append(result)
    finally:
        progress.stop()
    failed = [r for r in results if r.status == "failed"]
    if not quiet and plan.todo:
        _print_summary(results, failed)
    where = f"{plan.out} (manifest.jsonl)"
    if not plan.todo:
        done(f"nothing to do: all {len(results)} videos are complete with these settings in {where}", quiet)  # fmt: skip
    else:
        frames = sum(r.frames for r in results if r.status != "skipped")
        seconds = time.perf_counter() - progress.t0 if progress.t0 is not None else 0.0
        counts = ", ".join(f"{_count(results, s)} {s}" for s in ("done", "failed", "skipped"))
        rate = f"{frames / seconds:.2f} fps" if seconds > 0 else "-"
        done(f"{counts}: {frames} frames in {seconds:.1f} s ({rate}) -> {where}", quiet)
    if failed:
        raise typer.Exit(1)


def _count(results: list[VideoResult], status: str) -> int:
    return sum(1 for r in results if r.status == status)


def _print_summary(results: list[VideoResult], failed: list[VideoResult]) -> None:
    """Videos, frames and seconds per status; then the failed videos and why."""
    from rich.table import Table

    table = Table(title="batch")
    for col in ("status", "videos", "frames", "seconds"):
        table.add_column(col, justify="left" if col == "status" else "right")
    for status in ("done", "failed", "skipped"):
        rows = [r for r in results if r.status == status]
        if rows:
            frames = sum(r.frames for r in rows)
            seconds = sum(r.seconds for r in rows)
            table.add_row(status, str(len(rows)), f"{frames:,}", f"{seconds:.1f}")
    out: Any = console(stderr=False)
    out.print(table)
    if failed:
        why = Table(title="failed")
        why.add_column("video")
        why.add_column("error")
        for r in failed[:FAILED_SHOWN]:
            why.add_row(plain(r.item.name), plain(r.error or ""))
        if len(failed) > FAILED_SHOWN:
            why.add_row(f"... and {len(failed) - FAILED_SHOWN} more", "see manifest.jsonl")
        out.print(why)
