"""Many videos in one run: INPUT expansion (``inputs``), what identifies a run's output
(``fingerprint``), the batch's record (``manifest``), the plan (``plan``) and its engines,
local (``run``) and on Ray (``ray_engine``). ``segment_videos`` is the Python entry point."""

from __future__ import annotations

from typing import Any

__all__ = ["segment_videos"]


def __getattr__(name: str) -> Any:
    if name == "segment_videos":  # imported on use: the engines pull in torch
        from ovseg_cli.batch.run import segment_videos

        return segment_videos
    raise AttributeError(f"module 'ovseg_cli.batch' has no attribute {name!r}")
