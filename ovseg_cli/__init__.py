"""ovseg: open-vocabulary video semantic segmentation (OV2VSS) as a library and a CLI.

Heavy dependencies (torch, open_clip, PyAV) are imported on first use, so that
``import ovseg_cli`` and ``ovseg --help`` stay instant.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "OvsegError": "ovseg_cli.errors",
    "SegmentConfig": "ovseg_cli.config",
    "load_model": "ovseg_cli.segment.loading",
    "segment_video": "ovseg_cli.segment.stream",
    "segment_videos": "ovseg_cli.batch.run",
    "FrameResult": "ovseg_cli.segment.results",
    "load_clip": "ovseg_cli.clip.loading",
    "parse_classes": "ovseg_cli.classes",
    "PropagateConfig": "ovseg_cli.config",
    "propagate_video": "ovseg_cli.propagate.engine",
    "read_labels": "ovseg_cli.propagate.labels",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ovseg_cli' has no attribute {name!r}")
