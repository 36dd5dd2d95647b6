"""Output folders that appear complete or not at all, and never replace what ovseg did not write.

Everything is written into a hidden sibling folder ``.NAME.partial-<8 random hex digits>``, which is
renamed into place when the run succeeds; on any failure or signal it is deleted. Every
folder ovseg writes holds a marker file (``.ovseg-output.json``: the kind of output, the
version, and the writer's pid and host). ``--overwrite`` replaces only a folder with that
marker, of the same kind, that holds none of the run's inputs, and never the current
folder, a filesystem root or the home folder; an existing folder is only replaced by a
complete new one. No output goes inside an input folder (a raw or prepared dataset, a
labels folder), where it would mix with the input and go when that folder is replaced.

A run killed with SIGKILL cannot clean up; the next run for the same destination removes
the partial folders whose writer (same host, pid no longer running) is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ovseg_cli import __version__
from ovseg_cli.errors import OvsegError

MARKER = ".ovseg-output.json"
KINDS = ("segment", "eval", "prep", "train", "batch", "propagate")  # batch: many segment folders

# partial folders of this process, removed by the CLI on a signal (see cli_common)
_ACTIVE: dict[Path, OutputFolder] = {}


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (Linux), to tell a reused pid from its writer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), after the command name


def writer_record() -> dict[str, Any]:
    """Who is writing: pid, its start time and the host name."""
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "host": socket.gethostname()}


def writer_gone(writer: Any) -> bool:
    """True when ``writer`` (a writer_record) ran on this host and is no longer running."""
    if not isinstance(writer, dict) or writer.get("host") != socket.gethostname():
        return False  # another machine's run may still be going: leave it alone
    pid = writer.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return writer.get("start") != _start_time(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    started = _start_time(pid)
    return started is not None and writer.get("start") not in (None, started)  # pid reused


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a folder ovseg wrote, or None."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("ovseg") else None


def write_marker(folder: Path, kind: str, **extra: Any) -> None:
    """Mark ``folder`` as an ovseg output of ``kind`` (atomically)."""
    data = {
        "ovseg": __version__,
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "writer": writer_record(),
        **extra,
    }
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_location(
    out: str | Path, inputs: Iterable[str | Path | None] = (), option: str = "--out"
) -> Path:
    """The absolute output path; OvsegError if empty, a root, home, the cwd, holding an input
    or inside an input folder (a later run replacing that folder would take it along)."""
    if not str(out).strip():
        raise OvsegError(f"{option} is empty: give the output folder")
    final = Path(out).expanduser().absolute()
    real = _real(final)
    home = _real(Path.home())
    if real == Path(real.anchor) or real == home:
        raise OvsegError(f"{option} {final} is {'your home' if real == home else 'a root'} folder")
    if _within(_real(Path.cwd()), real):
        raise OvsegError(f"{option} {final} is the current folder or holds it; name a new folder")
    for item in inputs:
        if item is None or not str(item).strip():
            continue
        src = _real(Path(item).expanduser())
        if _within(src, real):
            what = "is" if src == real else "holds"
            raise OvsegError(f"{option} {final} {what} an input of this run ({src}); name another")
        if src.is_dir() and _within(real, src):  # a dataset, a labels folder: not ours to fill
            raise OvsegError(
                f"{option} {final} lies inside an input folder of this run ({src}); "
                "name a folder outside it"
            )
    return final


def check_destination(
    out: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    option: str = "--out",
) -> Path:
    """Where a run of ``kind`` may write; raises OvsegError (nothing touched) when it may not."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    final = check_location(out, inputs, option)
    if not final.exists() and not final.is_symlink():
        return final
    if final.is_symlink():
        raise OvsegError(f"{option} {final} is a symbolic link; name the folder itself")
    if not final.is_dir():
        raise OvsegError(f"{option} {final} exists and is not a folder")
    if not overwrite:
        raise OvsegError(f"output folder {final} already exists; pass --overwrite to replace it")
    marker = read_marker(final)
    if marker is None:
        raise OvsegError(
            f"{final} was not written by ovseg (no {MARKER}); --overwrite replaces only "
            "ovseg's own outputs: remove it yourself or name another folder"
        )
    if marker.get("kind") != kind:
        raise OvsegError(
            f"{final} holds an ovseg {marker.get('kind')} output, not a {kind} output; "
            "name another folder"
        )
    return final


def _partials(final: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """The partial folders beside ``final`` with their markers (None: not a marked folder)."""
    prefix = f".{final.name}.partial-"
    try:
        siblings = sorted(p for p in final.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []
    return [(p, read_marker(p) if p.is_dir() and not p.is_symlink() else None) for p in siblings]


def remove_stale(final: Path) -> list[Path]:
    """Clear what killed runs left beside ``final``; returns the folders removed."""
    removed: list[Path] = []
    for p, marker in _partials(final):
        if marker is None or not writer_gone(marker.get("writer")):
            continue  # not ours, or its writer may still be running
        if marker.get("committing") and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(p, final)  # complete: the commit was cut short, finish it
                continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def remove_abandoned(final: Path, writer: dict[str, Any]) -> list[Path]:
    """Remove the partial folders beside ``final`` written by ``writer``, known to be dead.

    For a process that cannot check the writer itself: a Ray driver whose worker died on
    another machine (``remove_stale`` only judges writers of its own host).
    """
    removed: list[Path] = []
    keys = ("pid", "start", "host")
    for p, marker in _partials(final):
        found = marker.get("writer") if marker is not None else None
        if not isinstance(found, dict) or any(found.get(k) != writer.get(k) for k in keys):
            continue  # not ours, or another writer's
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


class OutputFolder:
    """A folder written under a temporary name and renamed when complete."""

    def __init__(
        self,
        final: str | Path,
        kind: str,
        *,
        overwrite: bool = False,
        inputs: Iterable[str | Path | None] = (),
        option: str = "--out",
    ) -> None:
        self.final = check_destination(
            final, kind, overwrite=overwrite, inputs=inputs, option=option
        )
        self.kind = kind
        self.done = False
        parent = self.final.parent
        self._created: list[Path] = []  # parent folders made for this run, removed on failure
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        self.path = parent / f".{self.final.name}.partial-{uuid.uuid4().hex[:8]}"
        _ACTIVE[self.path] = self  # from here on a signal removes what exists of it
        try:
            remove_stale(self.final)
            for p in reversed(missing):
                p.mkdir()
                self._created.append(p)
            self.path.mkdir()
            write_marker(self.path, kind)
        except OSError as exc:
            self.discard()
            raise OvsegError(f"cannot write to {parent}: {exc.strerror or exc}") from None

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file inside the folder."""
        p = self.path / name
        p.write_text(text, encoding="utf-8")
        return p

    def write_json(self, name: str, data: Any) -> Path:
        """Write a JSON file inside the folder."""
        return self.write_text(name, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def commit(self) -> Path:
        """Move the complete folder into place (replacing an old one only now)."""
        write_marker(self.path, self.kind, committing=True)
        if self.final.exists() and _exchange(self.path, self.final):
            shutil.rmtree(self.path, ignore_errors=True)  # the old output, swapped out
        else:
            old = None
            if self.final.exists():
                old = self.final.parent / f".{self.final.name}.partial-{uuid.uuid4().hex[:8]}"
                os.replace(self.final, old)  # its marker names a gone writer: stale if killed
            os.replace(self.path, self.final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        write_marker(self.final, self.kind)
        self.done = True
        _ACTIVE.pop(self.path, None)
        return self.final

    def discard(self) -> None:
        """Delete the partial folder and the parent folders made for it."""
        if self.done:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for p in reversed(self._created):
            with contextlib.suppress(OSError):
                p.rmdir()  # only if empty: another run may have written beside us
        _ACTIVE.pop(self.path, None)


def active_destinations() -> list[Path]:
    """Final paths of the folders this process is writing."""
    return [folder.final for folder in _ACTIVE.values()]


def discard_active() -> None:
    """Remove every partial folder this process is still writing (signal cleanup)."""
    for folder in list(_ACTIVE.values()):
        folder.discard()
