"""What every command shares: one-line errors, warnings and stop signals.

Each command lives in its own module of ``ovseg_cli.cli``; their options come from
``options`` and their progress bars and summaries from ``progress``. Nothing heavy is
imported here.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ovseg_cli.errors import Interrupted, OvsegError, is_disk_full, stop_signals

F = TypeVar("F", bound=Callable[..., Any])


def console(stderr: bool = True) -> Any:
    """A rich console (stderr by default: stdout stays for results); no emoji codes, so a
    name like ``x:cat:y`` prints as it is."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, emoji=False)


def plain(text: object) -> str:
    """Text from outside (a path, a class name, an error) safe to print through rich: its
    brackets are shown, never read as markup."""
    from rich.markup import escape

    return escape(str(text))


def error(message: str) -> None:
    """Print ``error: message`` on stderr."""
    console().print(f"[bold red]error:[/] {plain(message)}", soft_wrap=True)


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr."""
    console().print(f"[bold yellow]warning:[/] {plain(message)}", soft_wrap=True)


class _WarningHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


def setup_logging() -> None:
    """Show the library's warnings (logger 'ovseg') as CLI warnings."""
    log = logging.getLogger("ovseg")
    if not any(isinstance(h, _WarningHandler) for h in log.handlers):
        log.addHandler(_WarningHandler(level=logging.WARNING))
    log.propagate = False


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
            with stop_signals() as stopped:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if stopped.signum is not None:  # the signal surfaced as another error
                        raise Interrupted(stopped.signum) from None
                    if is_disk_full(exc):
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
