"""Prepared video segmentation datasets: `ovseg prep` writes them, `train` and `eval` read them.

- :func:`prepare` turns a dataset on disk (VSPW, Cityscapes sequences, CamVid, a folder of
  your own videos; :func:`list_formats`) into a folder with ``index.json`` (see
  :mod:`ovseg_cli.datasets.index` for the format) and converted labels;
- :func:`load_index` reads it back as a :class:`PreparedIndex`;
- :class:`ClipDataset` samples the clips of OV2VSS's Eq. 1 from it, with the training
  augmentation and the open-vocabulary masking, configured by :class:`ClipSettings`.

Names are imported on first use, so that preparing a dataset never imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "load_index": "index",
    "PreparedIndex": "index",
    "Video": "index",
    "Frame": "index",
    "INDEX_NAME": "index",
    "IGNORE_INDEX": "index",
    "parse_ranges": "index",
    "resolve_split": "index",
    "register_format": "formats",
    "get_format": "formats",
    "list_formats": "formats",
    "RawDataset": "formats",
    "prepare": "prep",
    "PrepareResult": "prep",
    "ClipSettings": "clips",
    "ClipDataset": "clips",
    "make_loader": "clips",
    "MEAN_RGB": "augment",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"ovseg_cli.datasets.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ovseg_cli.datasets' has no attribute {name!r}")
