"""What users see when a run cannot go on: one-line errors (exit 2) and stop signals.

``OvsegError`` is a problem with the input or the environment, shown as one line with no
traceback. ``Interrupted`` is a stop signal (Ctrl-C, SIGTERM, SIGHUP) raised in the main
thread like Ctrl-C, so the same cleanup runs for each.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


class OvsegError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    exit_code = 2


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error means the disk filled up (however the library reporting it wraps it)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc)  # safetensors and some codecs wrap the OS error in their own type
    return "No space left on device" in text or "StorageFull" in text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) raised in the main thread like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report a process killed by it."""
        return 128 + self.signum


STOP_SIGNALS = tuple(
    s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
    if s is not None
)  # fmt: skip


_received: list[int] = []  # the stop signals raised as Interrupted, newest last


def last_stop_signal() -> int | None:
    """The last stop signal raised as Interrupted, for code whose libraries turn it into a
    plain KeyboardInterrupt (Ray's blocking calls do)."""
    return _received[-1] if _received else None


@dataclass
class StopState:
    """The stop signal received within a ``stop_signals`` block, if any."""

    signum: int | None = None


@contextlib.contextmanager
def stop_signals() -> Iterator[StopState]:
    """Within the block, each stop signal raises Interrupted once; later ones wait for cleanup.

    Schedulers send SIGTERM and closing a terminal sends SIGHUP: both must clean up like
    Ctrl-C instead of dying on the default handler with partial output on disk. The state
    yielded says which signal came, for an Interrupted that surfaced as another error (an
    extension module's import turns it into ImportError, a blocking open() into EINTR).
    """
    state = StopState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handle(signum: int, frame: Any) -> None:
        if state.signum is None:  # a second signal must not cut the cleanup of the first short
            state.signum = signum
            _received.append(signum)
            raise Interrupted(signum)

    old = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)
