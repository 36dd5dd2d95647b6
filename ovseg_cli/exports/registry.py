"""Export formats behind a small registry: a name maps to an ``Exporter`` class.

A new format is one module with one class::

    @register_exporter("myformat")
    class MyExporter(Exporter):
        filename = "myformat.json"
        def add(self, frame, time, mask): ...
        def close(self): return {"file": self.filename}

Exporters are streaming sinks: ``add`` is called once per frame, in order, from the
run's writer thread, and must write that frame out rather than keep it; ``close`` ends
the file(s) and returns what meta.json should say about them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from ovseg_cli.classes import RGB
from ovseg_cli.errors import OvsegError, did_you_mean


@dataclass(frozen=True)
class ExportContext:
    """What every exporter of a run knows before the first frame."""

    folder: Path  # the run's output folder (still under its temporary name)
    names: list[str]  # class names in index order
    colors: list[RGB]  # class colours in index order
    source: str  # the input video's file name, for descriptions
    unlabelled: bool = False  # masks may hold 255 (a --threshold is set)


class Exporter(ABC):
    """One export format: receives every frame's mask as it arrives and writes it out."""

    name: ClassVar[str] = ""
    filename: ClassVar[str] = ""  # the file it leaves in the output folder
    summary: ClassVar[str] = ""  # what the file is, for --help

    def __init__(self, ctx: ExportContext) -> None:
        self.ctx = ctx

    @classmethod
    def check(cls, names: Sequence[str], colors: Sequence[RGB]) -> None:
        """Refuse, with an OvsegError, classes this format cannot represent (before any work)."""
        return None  # every class list is fine unless a format says otherwise

    @abstractmethod
    def add(self, frame: int, time: float, mask: np.ndarray) -> None:
        """Write one frame: video frame number, time stamp in seconds, (H, W) uint8 class mask."""

    @abstractmethod
    def close(self) -> dict[str, Any]:
        """Finish the file(s); return the entry for meta.json."""

    def abort(self) -> None:
        """Release open files after a failure (the run deletes the folder)."""
        return None  # nothing open unless a format says otherwise


E = TypeVar("E", bound=type[Exporter])
_EXPORTERS: dict[str, type[Exporter]] = {}


def register_exporter(name: str) -> Callable[[E], E]:
    """Class decorator: make an exporter available as ``--export NAME``."""

    def add(cls: E) -> E:
        if name in _EXPORTERS:
            raise ValueError(f"export format {name!r} is registered twice")
        cls.name = name
        _EXPORTERS[name] = cls
        return cls

    return add


def exporter_names() -> list[str]:
    """Names of the registered export formats."""
    return list(_EXPORTERS)


def describe_exporters() -> str:
    """The formats for --help: ``name (file, summary)``, comma-separated."""
    return ", ".join(f"{n} ({e.filename}, {e.summary})" for n, e in _EXPORTERS.items())


def get_exporter(name: str) -> type[Exporter]:
    """The exporter class registered as ``name``."""
    try:
        return _EXPORTERS[name]
    except KeyError:
        raise OvsegError(
            f"unknown export {name!r}; known: {', '.join(_EXPORTERS)}"
            + did_you_mean(name, _EXPORTERS)
        ) from None


def parse_exports(names: str | Iterable[str]) -> list[str]:
    """Validated export names from ``"cvat,coco"`` or a list: lower case, in order, no repeats."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for i, item in enumerate(items, start=1):
        name = str(item).strip().lower()
        if not name:
            raise OvsegError(f"export {i} of {len(items)} is empty (stray comma?)")
        get_exporter(name)
        if name not in out:
            out.append(name)
    return out
