"""The run folder of `ovseg train`: claimed safely, marked as ovseg's, removed if nothing came of it.

A fresh run needs a new or empty folder, or ``--overwrite`` of an earlier ovseg run folder
(never the dataset, the config file, the current folder, home or a root). A run that fails
before its first checkpoint removes what it wrote, so no half-started run is left to be
mistaken for one that can be resumed.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from pathlib import Path

from ovseg_cli.errors import OvsegError
from ovseg_cli.outputs import check_destination, check_location, read_marker, write_marker

CHECKPOINT_META = "last.json"


class RunDir:
    """A training run's folder, checked before any work and cleaned up after a failed start."""

    def __init__(
        self,
        path: str | Path,
        *,
        resume: bool,
        overwrite: bool,
        inputs: Iterable[str | Path | None] = (),
    ) -> None:
        if resume and overwrite:
            raise OvsegError("--resume goes on with a run, --overwrite starts afresh: pick one")
        inputs = list(inputs)
        self.path = Path(path).expanduser().absolute()
        self.resume = resume
        self.overwrite = False  # set once the old run is known to be replaceable
        self.existed = self.path.exists()
        self._files: list[Path] = []  # written by this run before its first checkpoint
        if resume:
            if not (self.path / CHECKPOINT_META).exists():
                raise OvsegError(f"nothing to resume: {self.path} has no {CHECKPOINT_META}")
            return
        if self.existed and not self.path.is_dir():
            raise OvsegError(f"--out {self.path} exists and is not a folder")
        if self.existed and any(self.path.iterdir()):
            if not overwrite:
                what = "a run" if (self.path / CHECKPOINT_META).exists() else "files"
                raise OvsegError(
                    f"{self.path} already holds {what}; pass --resume to go on, --overwrite to "
                    "start afresh, or another --out"
                )
            check_destination(self.path, "train", overwrite=True, inputs=inputs)
            self.overwrite = True
        else:
            check_location(self.path, inputs)

    def claim(self) -> None:
        """Make the folder this run's (an earlier run's files go now), marked as ovseg's."""
        try:
            if self.overwrite:
                for p in self.path.iterdir():
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
            self.path.mkdir(parents=True, exist_ok=True)
            if self.resume and read_marker(self.path) is not None:
                return
            write_marker(self.path, "train")
        except OSError as exc:
            raise OvsegError(f"cannot write to {self.path}: {exc.strerror or exc}") from None

    def abandon(self) -> None:
        """After a failure: remove the folder if no checkpoint was written into it."""
        if self.resume or (self.path / CHECKPOINT_META).exists():
            return  # a resumable run stays
        if not self.existed:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for p in self.path.iterdir():  # an empty folder the user made: empty it again
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
