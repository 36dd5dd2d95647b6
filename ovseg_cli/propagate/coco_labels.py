"""COCO json as sparse labels: images by frame, their annotations rasterised, every field checked.

``categories`` in list order are the classes; an image's frame is its ``frame_index``, else
the last number in its file name; segmentations are RLE (compressed or not) or polygons;
pixels in no annotation are unlabelled and, where annotations overlap, the later one wins.
An annotation without a segmentation (a box alone, as CVAT's COCO export writes boxes)
labels no pixel. A json from anywhere is checked before pycocotools sees it: types, RLE
lengths and polygon coordinates, so a wrong file is a one-line error, never a crash, an
exhausted memory or a mask made of uninitialised bytes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovseg_cli.classes import RGB, UNLABELLED, default_color
from ovseg_cli.errors import OvsegError

# polygon points may stray this many image sizes outside the image (rounding, a tool's
# handles); pycocotools walks every edge pixel by pixel, so far points would exhaust memory
OUTSIDE = 1.0


def _int(obj: Any, key: str, where: str, least: int = 0) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise OvsegError(f"{where}: {key!r} is {value!r}; it must be a whole number >= {least}")
    return value


def rle_string_counts(counts: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString)."""
    out: list[int] = []
    data, p = counts.encode("ascii", "replace"), 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("the RLE string ends in the middle of a number")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_rle(seg: dict, h: int, w: int) -> dict:
    """The RLE as pycocotools takes it, once its size and run lengths are checked."""
    if list(seg.get("size", ())) != [h, w]:
        raise ValueError(f"RLE size {seg.get('size')} is not the image's {[h, w]}")
    counts = seg.get("counts")
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
    elif isinstance(counts, list) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in counts
    ):
        runs = counts
    else:
        raise ValueError("RLE counts are neither a string nor a list of whole numbers")
    if any(r < 0 for r in runs):
        raise ValueError("RLE counts hold a negative run")
    if sum(runs) != h * w:
        raise ValueError(f"RLE counts cover {sum(runs)} of the image's {h * w} pixels")
    return {"size": [h, w], "counts": counts}


def _check_polygons(seg: list, h: int, w: int) -> list[list[float]]:
    """The polygons of at least 3 points, once each is a flat list of finite coordinates
    near the image."""
    if not all(isinstance(p, list) for p in seg):
        raise ValueError("polygons must be a list of [x1, y1, x2, y2, ...] lists")
    polygons = []
    for p in seg:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p):
            raise ValueError("a polygon holds something other than numbers")
        if len(p) % 2:
            raise ValueError(f"a polygon has an odd number of coordinates ({len(p)})")
        for x, y in zip(p[::2], p[1::2], strict=True):
            inside_x = -OUTSIDE * w <= x <= (1 + OUTSIDE) * w if math.isfinite(x) else False
            inside_y = -OUTSIDE * h <= y <= (1 + OUTSIDE) * h if math.isfinite(y) else False
            if not (inside_x and inside_y):
                raise ValueError(f"polygon point ({x}, {y}) lies far outside the {w}x{h} image")
        if len(p) >= 6:  # pycocotools reads 4 numbers as a box; under 3 points, no area
            polygons.append([float(v) for v in p])
    return polygons


class CocoSource:
    """COCO images by frame index, their annotations rasterised with pycocotools."""

    def __init__(self, path: Path, images: dict[int, dict], anns: dict, categories: dict) -> None:
        self.frames, self.anns, self.categories = images, anns, categories
        self.names = {i: f"{path}: image {im.get('file_name', '')!r}" for i, im in images.items()}

    def image(self, index: int) -> Image.Image:
        """The frame's class indices (in category order; 255: no annotation), as an L image."""
        from pycocotools import mask as coco_mask  # a C extension: loaded only when needed

        image = self.frames[index]
        h, w = image["height"], image["width"]
        out = np.full((h, w), UNLABELLED, np.uint8)
        for ann in self.anns.get(image["id"], []):  # in file order: the later one wins
            seg = ann.get("segmentation")
            try:
                if seg is None or seg == []:  # a box alone
                    continue
                if isinstance(seg, dict):
                    rle = _check_rle(seg, h, w)
                    if isinstance(rle["counts"], list):
                        rle = coco_mask.frPyObjects(rle, h, w)
                elif isinstance(seg, list):
                    polygons = _check_polygons(seg, h, w)
                    if not polygons:
                        continue
                    rle = coco_mask.merge(coco_mask.frPyObjects(polygons, h, w))
                else:
                    raise ValueError("its segmentation is neither RLE nor polygons")
                pixels = coco_mask.decode(rle).astype(bool)
            except (ValueError, TypeError, OverflowError, KeyError) as e:
                raise OvsegError(f"{self.names[index]}: annotation {ann.get('id')}: {e}") from None
            out[pixels] = self.categories[ann["category_id"]]
        return Image.fromarray(out)

    def size(self, index: int) -> tuple[int, int]:
        """(width, height) of a frame's image."""
        return self.frames[index]["width"], self.frames[index]["height"]

    def labelled(self, index: int, lookup: Any) -> bool:
        """Whether any pixel of the frame is in an annotation (rasterised to tell)."""
        if not self.anns.get(self.frames[index]["id"]):
            return False
        return bool((np.asarray(self.image(index)) != UNLABELLED).any())

    def close(self) -> None:
        """Nothing to release."""


def read_coco(path: Path, data: dict) -> tuple[list[tuple[str, RGB]], CocoSource]:
    """The classes (name, colour) and the images by frame of a parsed COCO json."""
    cats = data.get("categories")
    if not isinstance(cats, list) or not all(isinstance(c, dict) for c in cats):
        raise OvsegError(f"{path}: 'categories' is not a list of categories")
    ids: dict[int, int] = {}
    for i, c in enumerate(cats):
        if _int(c, "id", f"{path}: category {i + 1}") in ids or not isinstance(c.get("name"), str):
            raise OvsegError(f"{path}: category id {c['id']} is given twice or has no name")
        ids[c["id"]] = i
    labels = [(" ".join(c["name"].split()), default_color(i)) for i, c in enumerate(cats)]

    images: dict[int, dict] = {}
    image_ids: set[int] = set()
    for image in data["images"]:
        where = f"{path}: image {image.get('file_name') if isinstance(image, dict) else image!r}"
        image_id = _int(image, "id", where)
        _int(image, "width", where, least=1), _int(image, "height", where, least=1)
        stem = re.split(r"[\\/]", str(image.get("file_name", "")))[-1].rsplit(".", 1)[0]
        if "frame_index" in image:
            index = _int(image, "frame_index", where)
        elif re.search(r"\d", stem):
            index = int(re.findall(r"\d+", stem)[-1])
        else:
            raise OvsegError(f"{where}: cannot tell its frame (no frame_index, no number)")
        if index in images or image_id in image_ids:
            raise OvsegError(f"{where}: its frame {index} or id {image_id} is another image's")
        images[index] = image
        image_ids.add(image_id)
    if not images:
        raise OvsegError(f"{path}: no images")

    anns: dict[int, list] = {}
    for ann in data["annotations"]:
        a = ann if isinstance(ann, dict) else {}
        for key, known in (("image_id", image_ids), ("category_id", ids)):
            value = a.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value not in known:
                raise OvsegError(f"{path}: annotation {a.get('id')!r}: unknown {key} {value!r}")
        anns.setdefault(a["image_id"], []).append(a)
    return labels, CocoSource(path, images, anns, ids)
