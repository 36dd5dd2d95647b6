"""What identifies the output of a segment run, so that a batch can tell a finished video
from one to redo: a hash of the settings, the classes and the weights (``meta.json`` holds
it as ``settings_fingerprint``; a batch's manifest lists it per video).

Covered: every setting of ``SegmentConfig`` but the operational ones, the classes as the
model sees them (names, prompts, colours, the background class), and the weights'
identity (an open_clip tag as named, a local weights file or checkpoint by path, size and
modification time; a changed file counts as new). Not covered: ``device`` and ``batch``,
which change how fast, not what (batched keyframes give batch 1's results to float
tolerance, as does another device), nor ovseg's version. ``precision`` is covered as
given: ``auto`` is the same setting on every machine of one kind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovseg_cli.classes import ClassSpec, colors_for
from ovseg_cli.config import SegmentConfig
from ovseg_cli.config_io import to_dict

OPERATIONAL = ("device", "batch")  # settings that do not change the output
WEIGHTS = ("clip", "pretrained", "checkpoint")  # named by weights_identity instead


def file_identity(path: str | Path) -> dict[str, Any]:
    """A file's real path, size and modification time (cheap: no hashing of large weights)."""
    real = os.path.realpath(Path(path).expanduser())
    st = os.stat(real)
    return {"path": real, "bytes": st.st_size, "modified_ns": st.st_mtime_ns}


def _local(value: str | None) -> Any:
    """A weights setting: its files' identities when it names local files, else the text."""
    if not value:
        return value
    p = Path(value).expanduser()
    if p.is_dir():
        return [file_identity(f) for f in sorted(p.iterdir()) if f.is_file()]
    if p.is_file():
        return file_identity(p)
    return value


def weights_identity(config: SegmentConfig) -> dict[str, Any]:
    """The CLIP and checkpoint a run uses, as files where they are files."""
    checkpoint = None
    if config.checkpoint:
        from ovseg_cli.model.checkpoint import checkpoint_paths

        checkpoint = [_local(str(p)) for p in checkpoint_paths(config.checkpoint)]
    return {"clip": config.clip, "pretrained": _local(config.pretrained), "checkpoint": checkpoint}


def settings_fingerprint(config: SegmentConfig, classes: Sequence[ClassSpec]) -> str:
    """16 hex digits naming what a run with these settings and classes writes.

    ``classes`` as the model sees them, the background class included (``with_background``).
    """
    skip = (*OPERATIONAL, *WEIGHTS)
    settings = {k: v for k, v in to_dict(config).items() if k not in skip}
    payload = {
        "settings": settings,
        "classes": [
            [c.name, list(c.texts), list(col)]
            for c, col in zip(classes, colors_for(classes), strict=True)
        ],
        "weights": weights_identity(config),
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
