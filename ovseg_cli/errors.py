"""The one exception type users see: a single line, exit code 2, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OvsegError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
