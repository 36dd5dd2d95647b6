"""Output folders that appear complete or not at all.

Everything is written into a hidden sibling folder, which is renamed into place when the
run succeeds; on any failure it is deleted, and an existing folder (kept unless
``--overwrite``) is only replaced by a complete new one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ovseg_cli.errors import OvsegError


class OutputFolder:
    """A folder written under a temporary name and renamed when complete."""

    def __init__(self, final: str | Path, overwrite: bool = False) -> None:
        self.final = Path(final).expanduser().absolute()
        if self.final.exists() and not self.final.is_dir():
            raise OvsegError(f"output {self.final} exists and is not a folder")
        if self.final.exists() and not overwrite:
            raise OvsegError(
                f"output folder {self.final} already exists; pass --overwrite to replace it"
            )
        parent = self.final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = parent / f".{self.final.name}.partial-{uuid.uuid4().hex[:8]}"
            self.path.mkdir()
        except OSError as exc:
            raise OvsegError(f"cannot write to {parent}: {exc.strerror or exc}") from None
        self.done = False

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
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.done = True
        return self.final

    def discard(self) -> None:
        """Delete the partial folder."""
        if not self.done:
            shutil.rmtree(self.path, ignore_errors=True)
