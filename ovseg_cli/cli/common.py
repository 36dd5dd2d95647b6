"""What every command shares: one-line errors, warnings, and the progress bar.

Commands live in their own modules (cli.py, prep_cli.py, eval_cli.py, train_cli.py); this
module keeps their reporting identical and has no heavy imports.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ovseg_cli.errors import Interrupted, OvsegError, stop_signals

F = TypeVar("F", bound=Callable[..., Any])


def console(stderr: bool = True) -> Any:
    """A rich console (stderr by default: stdout stays for results)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def error(message: str) -> None:
    """Print ``error: message`` on stderr."""
    console().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr."""
    console().print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)


class _WarningHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


def setup_logging() -> None:
    """Show the library's warnings (logger 'ovseg') as CLI warnings."""
    log = logging.getLogger("ovseg")
    if not any(isinstance(h, _WarningHandler) for h in log.handlers):
        log.addHandler(_WarningHandler(level=logging.WARNING))
    log.propagate = False


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc)  # safetensors and some codecs wrap the OS error in their own type
    return "No space left on device" in text or "StorageFull" in text


class DiskFull(OvsegError):
    """The disk filled up while writing an output (not a bug, not bad input)."""

    exit_code = 1


def _disk_full_error(exc: BaseException) -> DiskFull:
    from ovseg_cli.outputs import active_destinations

    where = getattr(exc, "filename", None) or next(iter(active_destinations()), None)
    return DiskFull(f"disk full writing {where or 'the output'}; partial output removed")


def friendly_errors(fn: F) -> F:
    """Turn OvsegError into one line and exit code 2; never show a traceback for bad input.

    A stop signal removes the partial output and exits 128 + its number (130 for Ctrl-C,
    143 for SIGTERM, 129 for SIGHUP).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ovseg_cli.outputs import discard_active

        setup_logging()
        try:
            with stop_signals():
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if _disk_full(exc):
                        raise _disk_full_error(exc) from None
                    raise
                finally:
                    discard_active()  # whatever the way out, no partial folder stays
        except OvsegError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            code = exc.exit_code if isinstance(exc, Interrupted) else 130
            name = str(exc) if isinstance(exc, Interrupted) else "SIGINT"
            error(f"interrupted ({name}); partial output removed")
            raise typer.Exit(code) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("OVSEG_DEBUG"):
                raise
            error(
                f"internal error: {type(exc).__name__}: {exc} (set OVSEG_DEBUG=1 for the traceback)"
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class FrameProgress:
    """A rich progress bar on stderr: frames done / total and frames per second."""

    def __init__(self, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(f"[bold]{label}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames"),
            TextColumn("{task.fields[fps]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console(),
            transient=False,
        )
        self.task: Any = None
        self.t0 = 0.0
        self.done = 0

    def start(self, total: int | None) -> None:
        """Show the bar (total None: unknown)."""
        self.progress.start()
        self.task = self.progress.add_task("frames", total=total, fps="")
        self.t0 = time.perf_counter()

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count n more frames; ``note`` is shown after the rate (e.g. '25% keyframes')."""
        self.done += n
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        text = f"{rate:.2f} fps" + (f", {note}" if note else "")
        self.progress.update(self.task, advance=n, fps=text)

    def stop(self) -> None:
        """End the bar at 100% of what was done (estimates can be off)."""
        if self.task is None:
            return  # never started: stopping would print an empty line
        total = self.progress.tasks[0].total
        if total is not None and self.done != total:
            self.progress.update(self.task, total=self.done)
        self.progress.stop()
