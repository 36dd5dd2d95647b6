"""A batch's record, ``DIR/manifest.jsonl``: one JSON line per video and run, appended as
the videos finish.

    {"run": "20261201T101500-3f2a", "finished": "2026-12-01T10:15:07+00:00",
     "input": "/data/clips/a.mp4", "output": "a", "status": "done", "error": null,
     "frames": 240, "seconds": 12.5, "fingerprint": "9c1e0b7a52d4f318", "attempts": 1,
     "engine": "local"}

``status`` is ``done``, ``failed`` (``error`` says why) or ``skipped`` (the output was
already complete with the same settings); ``output`` is relative to DIR. A rerun appends
its own lines, so a video's latest line is its state and earlier runs stay on record.

Each line goes out in a single ``write`` on a file opened for appending, then ``fsync``:
a crash (SIGKILL, power loss) can tear only the last line. Readers skip a line that does
not parse, and the next run ends such a line before appending its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ovseg_cli.errors import OvsegError

STATUSES = ("done", "failed", "skipped")


def new_run_id() -> str:
    """A sortable id for one batch run: its start time and a random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:4]}"


def check_manifest(path: Path) -> None:
    """Refuse a manifest that is not a plain file of the batch folder (a link could point
    anywhere, and ovseg would append to it)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OvsegError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(mode):
        raise OvsegError(
            f"{path} is a symbolic link; the manifest must be a file inside --out "
            "(remove the link, or name another --out)"
        )
    if not stat.S_ISREG(mode):
        raise OvsegError(f"{path} is not a regular file; remove it, or name another --out")


class Manifest:
    """Appends records to a manifest file, each line durable once ``append`` returns."""

    def __init__(self, path: str | Path, run: str | None = None) -> None:
        self.path = Path(path)
        self.run = run or new_run_id()
        check_manifest(self.path)
        try:
            # O_NOFOLLOW: a link put in its place after the check is refused all the same
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OvsegError(f"{self.path} is a symbolic link; not appending to it") from None
            raise
        try:
            self._end_torn_line()
        except BaseException:
            self.close()
            raise

    def _end_torn_line(self) -> None:
        """A line cut short by a crash would swallow the next record: end it first."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            last = f.read(1)
        if last != b"\n":
            os.write(self._fd, b"\n")

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, and make it durable."""
        line = {
            "run": self.run,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **record,
        }
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, data)  # O_APPEND: one write lands as one piece
        if written != len(data):  # a full disk: end what was written so the next line parses
            with contextlib.suppress(OSError):
                os.write(self._fd, b"\n")
            raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (every line is already on disk)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a manifest, in order (a torn or foreign line is skipped)."""
    return list(_records(Path(path)))


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return
    for raw in lines:
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("status") in STATUSES:
            yield record


def latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each input's latest record, by input path."""
    return {r["input"]: r for r in records if "input" in r}
