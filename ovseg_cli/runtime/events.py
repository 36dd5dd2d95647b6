"""Who hears that an ONNX export (seconds to minutes) is starting: the CLI's progress bar.

A module of its own, below both the runtime choice and the ONNX session, so neither
imports the other to reach it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

# called with a one-line message when an export starts (the CLI shows it in its progress bar)
ExportListener = Callable[[str], None]
_listener: contextvars.ContextVar[ExportListener | None] = contextvars.ContextVar(
    "ovseg_export_listener", default=None
)


@contextlib.contextmanager
def export_listener(callback: ExportListener) -> Iterator[None]:
    """Within this block, ``callback(message)`` is called whenever an ONNX export starts."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


def notify_export(message: str) -> None:
    """Tell the current listener, if any, that an export (seconds to minutes) is starting."""
    callback = _listener.get()
    if callback is not None:
        callback(message)
