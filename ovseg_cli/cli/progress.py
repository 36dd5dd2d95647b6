"""The one progress bar and the one closing summary every command prints (on stderr)."""

from __future__ import annotations

import sys
import time
from typing import Any

from ovseg_cli.cli.common import console, plain


class Progress:
    """A rich progress bar: done / total units, the rate, and a note (e.g. a loss); with
    ``items``, also what is being worked on (a batch: "video 3/12 clips/a")."""

    def __init__(
        self, label: str, unit: str = "frames", enabled: bool = True, estimated: bool = True
    ) -> None:
        self.label, self.unit, self.enabled = label, unit, enabled
        self.estimated = estimated  # the total is a guess (a container's frame count)
        self.bar: Any = None
        self.task: Any = None
        self.t0 = 0.0
        self.done = 0
        self.first = 0  # units already done when the bar started (a resumed run)

    def start(self, total: int | None, done: int = 0, items: bool = False) -> None:
        """Show the bar (total None: unknown), from ``done`` units; ``items``: a column for
        ``item``."""
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as Bar,
        )

        current = [TextColumn("{task.fields[item]}")] if items else []
        self.bar = Bar(
            TextColumn(f"[bold]{self.label}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn(f"{self.unit} {{task.fields[note]}}"), *current, TimeElapsedColumn(),
            TimeRemainingColumn(), console=console(), transient=False,
        )  # fmt: skip
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=total, completed=done, note="", item="")
        self.t0, self.done, self.first = time.perf_counter(), done, done

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more units; ``note`` is shown after the rate."""
        self.update(self.done + n, note)

    def update(self, done: int, note: str = "") -> None:
        """Set the units done so far."""
        self.done = done
        if self.task is None:
            return
        rate = (done - self.first) / max(time.perf_counter() - self.t0, 1e-9)
        text = f"{rate:.2f}/s" + (f", {plain(note)}" if note else "")
        self.bar.update(self.task, completed=done, note=text)

    def status(self, text: str) -> None:
        """Say what is happening before the bar starts (an ONNX export), or in its note."""
        if self.task is not None:
            self.bar.update(self.task, note=plain(text))
        elif self.enabled:
            console().print(f"[dim]{plain(text)}[/]", soft_wrap=True)

    def note(self, text: str) -> None:
        """Say what is happening now (e.g. an export before the first frame)."""
        if self.task is not None:
            self.bar.update(self.task, note=plain(text))

    def item(self, text: str) -> None:
        """Say which item (a batch's video) the units now come from."""
        if self.task is not None:
            self.bar.update(self.task, item=plain(text))

    def set_total(self, total: int | None) -> None:
        """Correct the total (an item turned out longer or shorter than estimated)."""
        if self.task is not None:
            self.bar.update(self.task, total=total)

    def stop(self) -> None:
        """End the bar: at 100% of what was done when the work ended (estimates can be off),
        where it stood when it failed or was interrupted (called from a ``finally``)."""
        if self.task is None:
            return  # never started: stopping would print an empty line
        total = self.bar.tasks[0].total
        failed = sys.exc_info()[0] is not None
        if total is not None and self.done != total and self.estimated and not failed:
            self.bar.update(self.task, total=self.done)
        self.bar.stop()
        self.task = None


def done(message: str, quiet: bool = False) -> None:
    """The closing line of a command: ``done: ...`` on stderr."""
    if not quiet:
        console().print(f"[green]done:[/] {plain(message)}", soft_wrap=True)
