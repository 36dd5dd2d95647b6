"""The exports read by datumaro, the library CVAT imports them with (skipped without it).

CVAT's "Segmentation mask 1.1" importer is datumaro's VOC reader (CVAT's fork of datumaro
calls it ``voc``; datumaro 1.x ``voc_segmentation``), and its COCO importer datumaro's
``coco_instances``. Every import must succeed without a warning and give the masks back
exactly. datumaro is not a dependency of ovseg: install it to run these (datumaro 1.13
has wheels up to Python 3.11; CVAT's fork is pure Python).
"""

from __future__ import annotations

import logging
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from ovseg_cli.classes import UNLABELLED
from ovseg_cli.exports import ExportContext, ExportSet
from ovseg_cli.exports.cvat import labelmap_text
from ovseg_cli.video.rendering import palette_bytes, save_palette_png

pytest.importorskip("datumaro")
from datumaro.components.annotation import AnnotationType
from datumaro.components.dataset import Dataset

NAMES = ["road", "background", "sky", "car"]
COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25)]
# warnings about library versions, not about the data (pycocotools' decode on NumPy 2,
# CVAT's fork compiled on a newer Python)
LIBRARY_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, SyntaxWarning)


def _datumaro_major() -> int:
    import datumaro.version as v

    return int(str(getattr(v, "__version__", getattr(v, "VERSION", "0"))).split(".")[0])


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    masks = [rng.integers(0, len(NAMES), (29, 41), dtype=np.uint8) for _ in range(4)]
    masks[1][:8] = UNLABELLED
    masks[2][:] = 2  # one class only
    masks[3][:] = UNLABELLED  # nothing labelled
    return masks


def _export(folder: Path, masks: list[np.ndarray]) -> None:
    ctx = ExportContext(folder, NAMES, COLORS, "clip.mp4", unlabelled=True)
    sinks = ExportSet(["cvat", "coco"], ctx, fps=10, start=0)
    for i, m in enumerate(masks):
        sinks.add(i, i / 10, m)
    sinks.close()


def _run_folder(folder: Path, masks: list[np.ndarray], names: list[str]) -> None:
    """masks/ and labelmap.txt as `segment --masks` writes them, laid out as VOC reads them."""
    (folder / "SegmentationClass").mkdir(parents=True)
    (folder / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = palette_bytes(COLORS)
    for i, m in enumerate(masks):
        save_palette_png(m, palette, folder / "SegmentationClass" / f"{i:06d}.png")
    lines = "".join(f"{i:06d}\n" for i in range(len(masks)))
    (folder / "ImageSets" / "Segmentation" / "default.txt").write_text(lines)
    (folder / "labelmap.txt").write_text(labelmap_text(names, COLORS, background="last"))


class _Collect(logging.Handler):
    def __init__(self, found: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        self.found.append(f"{record.levelname}: {record.getMessage()}")


@contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Every warning datumaro logs or raises inside the block (library-version ones aside)."""
    found: list[str] = []
    root, handler = logging.getLogger(), _Collect(found)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # datumaro logs to the root logger
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    found += [str(w.message) for w in caught if not issubclass(w.category, LIBRARY_WARNINGS)]


def _load(path: Path, fmt: str, names: list[str]) -> dict[str, np.ndarray]:
    """item id -> (H, W) class-index mask (255: none) rebuilt from datumaro's mask annotations."""
    dataset = Dataset.import_from(str(path), fmt)
    labels = [label.name for label in dataset.categories()[AnnotationType.label]]
    found = {}
    for item in dataset:
        masks = [a for a in item.annotations if a.type == AnnotationType.mask]
        assert len({a.label for a in masks}) == len(masks)  # one mask per class
        index = None
        for ann in masks:
            binary = np.asarray(ann.image).astype(bool)
            index = np.full(binary.shape, UNLABELLED, np.uint8) if index is None else index
            assert (index[binary] == UNLABELLED).all()  # one class per pixel
            if labels[ann.label] in names:
                index[binary] = names.index(labels[ann.label])
        found[item.id] = index
    return found


def _check(found: dict[str, np.ndarray], expected: list[np.ndarray], ids: list[str]) -> None:
    assert sorted(found) == ids
    for item_id, m in zip(ids, expected, strict=True):
        if found[item_id] is None:  # no annotation at all
            assert (m == UNLABELLED).all()
        else:
            np.testing.assert_array_equal(found[item_id], m)


@pytest.mark.parametrize("fmt", ["voc_segmentation", "voc"])
def test_cvat_zip_imports_as_voc_without_warnings(tmp_path: Path, fmt: str) -> None:
    if fmt == "voc" and _datumaro_major() >= 1:
        pytest.skip("datumaro 1.x's `voc` reads VOC's Main task only; CVAT's fork reads all")
    masks = _masks()
    _export(tmp_path, masks)
    with zipfile.ZipFile(tmp_path / "cvat.zip") as z:
        z.extractall(tmp_path / "cvat")
    with collected_warnings() as said:
        found = _load(tmp_path / "cvat", fmt, NAMES)
    assert said == []
    # "background" (1) is merged into CVAT's background: imported as no annotation
    expected = [np.where(m == 1, UNLABELLED, m) for m in masks]
    _check(found, expected, [f"frame_{i:06d}" for i in range(len(masks))])


def test_coco_json_imports_as_coco_instances_without_warnings(tmp_path: Path) -> None:
    masks = _masks()
    _export(tmp_path, masks)
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)  # datumaro 1.x wants the folder, images or not
    (root / "annotations").mkdir()
    shutil.copy(tmp_path / "coco.json", root / "annotations" / "instances_default.json")
    with collected_warnings() as said:
        found = _load(root, "coco_instances", NAMES)
    assert said == []
    _check(found, masks, [f"frame_{i:06d}" for i in range(len(masks))])


@pytest.mark.parametrize("names", [["road", "sky", "car", "tree"], NAMES])
def test_run_folder_masks_import_by_their_labelmap(tmp_path: Path, names: list[str]) -> None:
    """Unlabelled pixels (black) are declared: no "Undeclared color (0, 0, 0)" any more."""
    masks = _masks()
    _run_folder(tmp_path, masks, names)
    with collected_warnings() as said:
        found = _load(tmp_path, "voc_segmentation", names)
    # the folder has class masks only, no instances: that is all datumaro may say
    assert said and all("only class segmentations available" in w for w in said), said
    _check(found, masks, [f"{i:06d}" for i in range(len(masks))])


def test_run_folder_masks_read_as_indices_keep_their_classes(tmp_path: Path) -> None:
    """A reader of pixel values (datumaro's PIL backend) finds class i on labelmap line i."""
    image = pytest.importorskip("datumaro.util.image")
    if not hasattr(image, "IMAGE_BACKEND"):
        pytest.skip("this datumaro cannot switch to its PIL backend")
    masks = [m for m in _masks() if (m != UNLABELLED).all()]  # 255 is VOC's undeclared "void"
    _run_folder(tmp_path, masks, NAMES)
    backend = image.IMAGE_BACKEND.get()
    image.IMAGE_BACKEND.set(image.ImageBackend.PIL)
    try:
        found = _load(tmp_path, "voc_segmentation", NAMES)
    finally:
        image.IMAGE_BACKEND.set(backend)
    _check(found, masks, [f"{i:06d}" for i in range(len(masks))])
