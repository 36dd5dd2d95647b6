"""The `ovseg` command line: one thin module per command, sharing ``common`` (errors and
signals), ``options`` (options made from the config) and ``progress`` (bar and summary);
``application`` holds the Typer application.

Everything heavy (torch, open_clip, PyAV) is imported inside the commands, so that
``ovseg --help`` answers at once; this module imports nothing at all, so that Ctrl-C while
the CLI itself loads still ends in one line.
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    """Entry point of the `ovseg` console script."""
    try:
        from ovseg_cli.cli.application import run

        code = run()
    except KeyboardInterrupt:  # before or after a command's own handling: nothing written
        sys.stderr.write("error: interrupted (SIGINT)\n")
        code = 130
    sys.exit(code)


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from ovseg_cli.cli import app``: the Typer application
        from ovseg_cli.cli.application import app

        return app
    raise AttributeError(f"module 'ovseg_cli.cli' has no attribute {name!r}")
