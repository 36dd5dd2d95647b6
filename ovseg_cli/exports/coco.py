"""``--export coco``: one COCO JSON with an RLE mask per class present in each frame.

- ``images``: one per frame; ``id`` 1, 2, ... in frame order, ``file_name``
  ``frame_NNNNNN.png`` (CVAT's name for that video frame), ``width``, ``height``,
  ``frame_index`` (the video frame number, 0 = first frame of the video).
- ``categories``: ``id`` = class index + 1 (COCO tools keep 0 for "no category"),
  ``name``, ``supercategory`` "".
- ``annotations``: ``id`` from 1, ``image_id``, ``category_id``, ``segmentation``: the
  compressed RLE of pycocotools (``{"size": [h, w], "counts": "..."}``), ``area`` in
  pixels, ``bbox`` ``[x, y, w, h]``, ``iscrowd`` 0. Unlabelled pixels are in none.

Streaming: annotations go into the JSON as each frame arrives; the small image entries
go to a side file that is appended when the run ends ("images" then comes after
"annotations"; JSON objects are unordered).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ovseg_cli import __version__
from ovseg_cli.exports.registry import ExportContext, Exporter, register_exporter

FORMAT = "COCO instances, RLE masks (pycocotools)"


@register_exporter("coco")
class CocoExporter(Exporter):
    """Streams COCO annotations into coco.json (a temporary file until complete)."""

    filename = "coco.json"
    summary = "RLE masks, one annotation per class and frame"

    def __init__(self, ctx: ExportContext) -> None:
        super().__init__(ctx)
        from pycocotools import mask as coco_mask  # a C extension: loaded only when exporting

        self._encode, self._bbox = coco_mask.encode, coco_mask.toBbox
        self.classes = len(ctx.names)
        self.images = 0
        self.annotations = 0
        self._part = ctx.folder / f".{self.filename}.part"
        self._images_path = ctx.folder / ".coco-images.part"
        self._out = open(self._part, "w", encoding="utf-8")  # noqa: SIM115 (closed in close/abort)
        self._image_list = open(self._images_path, "w", encoding="utf-8")  # noqa: SIM115
        head = {
            "info": {
                "description": f"ovseg segment of {ctx.source}",
                "version": "1.0",
                "contributor": f"ovseg {__version__}",
                "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            "licenses": [],
            "categories": [
                {"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(ctx.names)
            ],
        }
        text = json.dumps(head, ensure_ascii=False)
        self._out.write(text[:-1] + ',\n"annotations": [')  # the array stays open until close

    def add(self, frame: int, time: float, mask: np.ndarray) -> None:
        """Write one image entry and one RLE annotation per class present in ``mask``."""
        h, w = mask.shape
        self.images += 1
        image = {
            "id": self.images,
            "file_name": f"frame_{frame:06d}.png",
            "width": w,
            "height": h,
            "frame_index": frame,
        }
        self._image_list.write(("\n" if self.images == 1 else ",\n") + json.dumps(image))
        counts = np.bincount(mask.ravel(), minlength=256)
        present = np.flatnonzero(counts[: self.classes])
        if not present.size:
            return
        # pycocotools reads column-major uint8: the transpose of a C-ordered (W, H) array is
        # one, so one transposed copy per frame serves every class without further copies
        mask_t = np.ascontiguousarray(mask.T)
        for c in present.tolist():
            rle = self._encode((mask_t == c).view(np.uint8).T)
            self.annotations += 1
            ann = {
                "id": self.annotations,
                "image_id": self.images,
                "category_id": c + 1,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(counts[c]),
                "bbox": [float(v) for v in self._bbox(rle)],
                "iscrowd": 0,
            }
            self._out.write(("\n" if self.annotations == 1 else ",\n") + json.dumps(ann))

    def close(self) -> dict[str, Any]:
        """Append the image list, end the JSON and give it its final name."""
        self._image_list.close()
        self._out.write('\n],\n"images": [')
        with open(self._images_path, encoding="utf-8") as images:
            shutil.copyfileobj(images, self._out)
        self._out.write("\n]}\n")
        self._out.close()
        os.replace(self._part, self.ctx.folder / self.filename)
        self._images_path.unlink()
        return {
            "file": self.filename,
            "format": FORMAT,
            "images": self.images,
            "annotations": self.annotations,
            "category_id": "class index + 1",
            "image_id": "1, 2, ... in frame order; file_name frame_NNNNNN.png by video frame",
        }

    def abort(self) -> None:
        """Close the open files; the run removes its folder."""
        for f in (self._image_list, self._out):
            with contextlib.suppress(Exception):  # a failing run must report its own error
                f.close()
