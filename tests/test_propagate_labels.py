"""Sparse labels for `ovseg propagate` (ovseg_cli.propagate.labels): every format read back."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from typer.testing import CliRunner

from ovseg_cli import segment_video
from ovseg_cli.classes import UNLABELLED, default_color
from ovseg_cli.cli import app
from ovseg_cli.errors import OvsegError
from ovseg_cli.exports import ExportContext, ExportSet
from ovseg_cli.exports.cvat import labelmap_text
from ovseg_cli.propagate.labels import LabelSet, read_labels

NAMES = ["road", "sky", "horse"]
COLORS = [(230, 25, 75), (0, 130, 200), (60, 180, 75)]
PALETTE = bytes(np.array(COLORS + [(0, 0, 0)] * 253, np.uint8))


def random_masks(n: int, shape: tuple[int, int] = (24, 32), seed: int = 0) -> list[np.ndarray]:
    """Masks of classes 0..2 with an unlabelled (255) band: every value a reader must keep."""
    rng = np.random.default_rng(seed)
    masks = [rng.integers(0, 3, shape, dtype=np.uint8) for _ in range(n)]
    for m in masks:
        m[: shape[0] // 4] = UNLABELLED
    return masks


def save_png(path: Path, array: np.ndarray, palette: bytes | None = None) -> None:
    img = Image.fromarray(array)
    if palette is not None:
        img.putpalette(palette)
    img.save(path)


def rgb_of(mask: np.ndarray, colors=COLORS) -> np.ndarray:
    """The colour mask of a class mask: class colours, black for unlabelled."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = colors
    return lut[mask]


def all_masks(labels: LabelSet) -> dict[int, np.ndarray]:
    return {i: labels.mask(i) for i in labels.frames}


def assert_masks(labels: LabelSet, expected: dict[int, np.ndarray]) -> None:
    assert labels.frames == sorted(expected)
    for i, m in expected.items():
        got = labels.mask(i)
        assert got.dtype == np.uint8 and got.shape == m.shape
        np.testing.assert_array_equal(got, m)


def one_line_error(fn: Callable[[], object]) -> str:
    """The message of the OvsegError ``fn`` raises: one line, a clear text."""
    with pytest.raises(OvsegError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and message.strip(), message
    return message


def cvat_zip(path: Path, masks: dict[int, np.ndarray], *, prefix: str = "", labelmap=True) -> Path:
    """A zip laid out as CVAT exports a video task: colour masks, background first."""
    with zipfile.ZipFile(path, "w") as z:
        if labelmap:
            z.writestr(f"{prefix}labelmap.txt", labelmap_text(NAMES, COLORS, background="first"))
        z.writestr(f"{prefix}ImageSets/Segmentation/default.txt", "")
        for i, m in masks.items():
            for folder in ("SegmentationClass", "SegmentationObject"):
                buf = io.BytesIO()
                Image.fromarray(rgb_of(m)).save(buf, format="PNG")
                z.writestr(f"{prefix}{folder}/frame_{i:06d}.png", buf.getvalue())
    return path


# --- mask folders ----------------------------------------------------------------------------


def test_palette_folder_with_labelmap_beside(tmp_path: Path) -> None:
    masks = dict(zip([0, 3, 12], random_masks(3), strict=True))
    for i, m in masks.items():
        save_png(tmp_path / f"{i:06d}.png", m, PALETTE)
    save_png(tmp_path / "000020.png", np.full((24, 32), UNLABELLED, np.uint8), PALETTE)
    save_png(tmp_path / "overlay.png", np.zeros((5, 5), np.uint8))  # not a frame: ignored
    (tmp_path / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS, background="last"))
    with read_labels(tmp_path) as labels:
        assert labels.names == NAMES and labels.colors == COLORS  # black line: no class
        assert labels.source == "mask folder" and labels.path == tmp_path
        assert labels.size() == (32, 24)
        assert_masks(labels, masks)  # the all-255 frame 20 is no label
        assert labels.describe() == {
            "source": "mask folder", "path": str(tmp_path), "frames": [0, 3, 12], "classes": 3,
        }  # fmt: skip
        assert "not labelled" in one_line_error(lambda: labels.mask(1))
        save_png(tmp_path / "000003.png", masks[0], PALETTE)  # masks are read when asked for
        np.testing.assert_array_equal(labels.mask(3), masks[0])
    kept = read_labels(tmp_path, empty_frames=True)
    assert kept.frames == [0, 3, 12, 20] and (kept.mask(20) == UNLABELLED).all()


def test_ovseg_run_layout_masks_folder_and_labelmap_in_parent(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    masks = dict(enumerate(random_masks(2)))
    for i, m in masks.items():
        save_png(tmp_path / "masks" / f"{i:06d}.png", m, PALETTE)
    # a class named "background" keeps its line; black's line is then "unlabelled", last
    names = ["background", "sky", "horse"]
    (tmp_path / "labelmap.txt").write_text(labelmap_text(names, COLORS, background="last"))
    for src in (tmp_path, tmp_path / "masks"):
        labels = read_labels(src)
        assert labels.names == names and labels.path == src
        assert_masks(labels, masks)


def test_greyscale_masks_with_a_classes_file(tmp_path: Path) -> None:
    masks = {5: random_masks(1)[0]}
    save_png(tmp_path / "frame_5.PNG", masks[5])
    classes = tmp_path / "classes.txt"
    classes.write_text("road: #ff0000\nsky\nhorse: #00ff00, a horse\n")
    labels = read_labels(tmp_path, classes)  # no labelmap: line i is class i
    assert labels.names == NAMES
    assert labels.colors == [(255, 0, 0), default_color(1), (0, 255, 0)]
    assert_masks(labels, masks)

    # with a labelmap, its classes are matched to the file's by name
    (tmp_path / "labelmap.txt").write_text("horse:1,2,3::\nRoad:4,5,6::\nsky:7,8,9::\n")
    labels = read_labels(tmp_path, classes)
    assert labels.names == NAMES and labels.colors[0] == (255, 0, 0)
    lut = np.array([2, 0, 1] + [UNLABELLED] * 253, np.uint8)
    assert_masks(labels, {5: lut[masks[5]]})


def test_rgb_masks_with_cvat_labelmap(tmp_path: Path) -> None:
    masks = dict(zip([1, 2], random_masks(2), strict=True))
    for i, m in masks.items():
        save_png(tmp_path / f"frame_{i:06d}.png", rgb_of(m))
    rgba = np.dstack([rgb_of(masks[2]), np.full((24, 32), 255, np.uint8)])
    rgba[-3:, :, 3] = 0  # transparent: unpainted, whatever its colour
    rgba[-3:, :, :3] = (1, 2, 3)
    save_png(tmp_path / "frame_000004.png", rgba)
    save_png(tmp_path / "frame_000007.png", np.zeros((24, 32, 3), np.uint8))  # all black
    hidden = np.zeros((24, 32, 4), np.uint8)
    hidden[:12, :, :3] = COLORS[0]  # transparent: not painted
    hidden[12:, :, 3] = 255  # opaque black: unlabelled
    save_png(tmp_path / "frame_000009.png", hidden)
    (tmp_path / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS, background="first"))
    expected = {**masks, 4: masks[2].copy()}
    expected[4][-3:] = UNLABELLED
    labels = read_labels(tmp_path)
    assert labels.names == NAMES and labels.colors == COLORS
    assert_masks(labels, expected)
    kept = read_labels(tmp_path, empty_frames=True)
    assert kept.frames == [1, 2, 4, 7, 9]
    assert (kept.mask(7) == UNLABELLED).all() and (kept.mask(9) == UNLABELLED).all()


def test_rgb_masks_where_a_class_is_black(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).integers(0, 2, (24, 32), dtype=np.uint8)
    save_png(tmp_path / "000000.png", rgb_of(mask, [(230, 25, 75), (0, 0, 0)]))
    save_png(tmp_path / "000001.png", np.zeros((24, 32, 3), np.uint8))  # all "shadow"
    (tmp_path / "labelmap.txt").write_text("road:230,25,75::\nshadow:0,0,0::\n")
    labels = read_labels(tmp_path)  # black is a class, not unlabelled
    assert labels.names == ["road", "shadow"]
    assert_masks(labels, {0: mask, 1: np.ones((24, 32), np.uint8)})


def test_rgb_masks_mapped_to_a_classes_file_by_name(tmp_path: Path) -> None:
    mask = random_masks(1)[0]
    save_png(tmp_path / "000000.png", rgb_of(mask))
    (tmp_path / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS, background="first"))
    classes = tmp_path / "classes.txt"
    classes.write_text("Horse\ncar\n  SKY \nroad: #010203\n")
    labels = read_labels(tmp_path, classes)
    assert labels.names == ["Horse", "car", "SKY", "road"]
    assert labels.colors[3] == (1, 2, 3)
    lut = np.array([3, 2, 0] + [UNLABELLED] * 253, np.uint8)
    assert_masks(labels, {0: lut[mask]})


# --- CVAT zips -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "export/"])
def test_cvat_zip_round_trip_skips_all_black_frames(tmp_path: Path, prefix: str) -> None:
    masks = dict(zip([0, 10, 11], random_masks(3), strict=True))
    black = np.full((24, 32), UNLABELLED, np.uint8)
    path = cvat_zip(tmp_path / "task.zip", {**masks, 5: black}, prefix=prefix)
    with read_labels(path) as labels:
        assert labels.source == "CVAT Segmentation mask 1.1 zip"
        assert labels.names == NAMES and labels.colors == COLORS
        assert_masks(labels, masks)
    assert labels._source.zf.fp is None  # closed by the context manager
    assert_masks(read_labels(path, empty_frames=True), {**masks, 5: black})


def test_ovseg_exports_read_back_with_unlabelled_pixels(tmp_path: Path) -> None:
    """What ExportSet writes (cvat.zip, coco.json) reads back to the masks it was given."""
    masks = random_masks(4, (30, 40), seed=1)
    masks[2][:] = UNLABELLED  # nothing labelled: CVAT writes it black, COCO no annotation
    ctx = ExportContext(tmp_path, NAMES, COLORS, "clip.mp4", unlabelled=True)
    sinks = ExportSet(["cvat", "coco"], ctx, fps=10, start=0)
    for i, m in enumerate(masks):
        sinks.add(i, i / 10, m)
    sinks.close()
    expected = {i: m for i, m in enumerate(masks) if i != 2}
    for name in ("cvat.zip", "coco.json"):
        labels = read_labels(tmp_path / name)
        assert labels.names == NAMES
        assert_masks(labels, expected)
        assert_masks(read_labels(tmp_path / name, empty_frames=True), dict(enumerate(masks)))


# --- COCO ------------------------------------------------------------------------------------


def coco_file(path: Path, images: list[dict], annotations: list[dict], categories=None) -> Path:
    categories = categories or [{"id": 7, "name": "sky"}, {"id": 3, "name": "road"}]
    for n, ann in enumerate(annotations, start=1):
        ann.setdefault("id", n)
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def test_coco_polygons_rle_and_overlap_order(tmp_path: Path) -> None:
    h, w = 20, 30
    square = np.zeros((h, w), np.uint8)
    square[2:8, 3:13] = 1
    rle = coco_mask.encode(np.asfortranarray(square))
    right = np.zeros((h, w), np.uint8)
    right[:, 10:] = 1
    flat = right.ravel(order="F").astype(int)  # COCO's runs: column-major, a 0s run first
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    uncompressed = {"size": [h, w], "counts": [0, *runs] if flat[0] else runs}
    polygon = [[0.0, 12.0, 6.0, 12.0, 6.0, 18.0, 0.0, 18.0]]  # x, y pairs: a 6x6 square
    images = [
        {"id": 1, "file_name": "0016E5_000123.png", "width": w, "height": h},
        {"id": 2, "file_name": "frames/frame_000007.jpg", "width": w, "height": h},
        {"id": 9, "file_name": "x.png", "width": w, "height": h, "frame_index": 40},
    ]
    annotations = [
        {"image_id": 1, "category_id": 3, "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}},
        {"image_id": 1, "category_id": 7, "segmentation": uncompressed, "iscrowd": 1},
        {"image_id": 2, "category_id": 7, "segmentation": polygon},
    ]  # fmt: skip
    path = coco_file(tmp_path / "labels.json", images, annotations)
    labels = read_labels(path)
    assert labels.source == "COCO json"
    assert labels.names == ["sky", "road"] and labels.colors == [default_color(0), default_color(1)]
    first = np.full((h, w), UNLABELLED, np.uint8)
    first[square == 1] = 1
    first[right == 1] = 0  # the later annotation wins where they overlap
    second = np.full((h, w), UNLABELLED, np.uint8)
    second[12:18, 0:6] = 0
    assert (first == 1).sum() == 6 * 7 and (first == 0).sum() == 20 * 20
    assert_masks(labels, {7: second, 123: first})
    assert read_labels(path, empty_frames=True).frames == [7, 40, 123]

    classes = tmp_path / "classes.txt"
    classes.write_text("road: #ff0000\nsky: #0000ff\n")
    labels = read_labels(path, classes)
    assert labels.names == ["road", "sky"] and labels.colors == [(255, 0, 0), (0, 0, 255)]
    swap = np.array([1, 0] + [UNLABELLED] * 254, np.uint8)  # sky, road -> road, sky
    assert_masks(labels, {7: swap[second], 123: swap[first]})


# --- ovseg's own output, from the command line -----------------------------------------------


def test_ovseg_segment_outputs_read_back_exactly(tmp_path: Path, small_video: Path) -> None:
    tiny = {"clip": "ovseg-tiny", "pretrained": "none"}
    # a threshold inside this model's confidences, so masks hold classes and 255
    stream = segment_video(small_video, "road,sky,horse", **tiny)
    conf = torch.cat([torch.softmax(r.logits, 0).amax(0).flatten() for r in stream])
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        ["segment", str(small_video), "-c", "road,sky,horse", "--clip", "ovseg-tiny",
         "--pretrained", "none", "--masks", "--export", "cvat,coco", "-o", str(out), "-q",
         "--threshold", f"{float(conf.median()):.6f}"],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    written = {int(p.stem): np.asarray(Image.open(p)) for p in (out / "masks").glob("*.png")}
    values = np.unique(np.stack(list(written.values())))
    assert UNLABELLED in values and len(values) > 2
    assert "background:0,0,0" in (out / "labelmap.txt").read_text()
    for src in (out, out / "masks", out / "cvat.zip", out / "coco.json"):
        labels = read_labels(src)
        assert labels.names == NAMES, src
        assert_masks(labels, {i: m for i, m in written.items() if (m != UNLABELLED).any()})


# --- errors ----------------------------------------------------------------------------------


def test_unknown_colour_is_named_with_its_pixel_count(tmp_path: Path) -> None:
    mask = rgb_of(random_masks(1)[0])
    mask[:2, :5] = (10, 11, 12)
    save_png(tmp_path / "000001.png", mask)
    (tmp_path / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS, background="first"))
    message = one_line_error(lambda: read_labels(tmp_path).mask(1))
    assert "000001.png" in message and "#0a0b0c (10 pixels)" in message


def test_index_out_of_range_names_file_and_value(tmp_path: Path) -> None:
    mask = random_masks(1)[0]
    mask[0, 0] = 3  # labelmap.txt's 4th line is black's: unlabelled is 255, not 3
    save_png(tmp_path / "000002.png", mask, PALETTE)
    (tmp_path / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS, background="last"))
    message = one_line_error(lambda: read_labels(tmp_path).mask(2))
    assert "000002.png" in message and "pixel value 3 (1 pixels)" in message


def test_format_errors(tmp_path: Path) -> None:
    masks = {0: random_masks(1)[0]}
    no_labelmap = cvat_zip(tmp_path / "a.zip", masks, labelmap=False)
    assert "not a CVAT Segmentation mask 1.1 zip" in one_line_error(
        lambda: read_labels(no_labelmap)
    )
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:
        z.writestr("labelmap.txt", "road:1,2,3::\n")
    assert "no SegmentationClass" in one_line_error(lambda: read_labels(tmp_path / "b.zip"))
    (tmp_path / "c.zip").write_bytes(b"PK\x03\x04 truncated")
    assert "not a CVAT" in one_line_error(lambda: read_labels(tmp_path / "c.zip"))
    for name, data in [("d.txt", b"hello"), ("e.json", b"[1, 2]"), ("f.json", b'{"a": 1}')]:
        (tmp_path / name).write_bytes(data)
        message = one_line_error(lambda name=name: read_labels(tmp_path / name))
        assert name in message and "CVAT" in message and "COCO" in message and "folder" in message
    (tmp_path / "g.json").write_text('{"images": [')
    assert "invalid JSON" in one_line_error(lambda: read_labels(tmp_path / "g.json"))
    assert "not found" in one_line_error(lambda: read_labels(tmp_path / "nothing"))


def test_folder_errors(tmp_path: Path) -> None:
    assert "no masks" in one_line_error(lambda: read_labels(tmp_path))
    mask = random_masks(1)[0]
    save_png(tmp_path / "000005.png", mask, PALETTE)
    assert "no class names" in one_line_error(lambda: read_labels(tmp_path))
    save_png(tmp_path / "frame_000005.png", mask, PALETTE)
    message = one_line_error(lambda: read_labels(tmp_path))
    assert "000005.png" in message and "frame_000005.png" in message
    (tmp_path / "frame_000005.png").unlink()
    (tmp_path / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS))
    save_png(tmp_path / "000006.png", np.zeros((10, 10), np.uint8), PALETTE)
    message = one_line_error(lambda: all_masks(read_labels(tmp_path)))
    assert "000006.png" in message and "10x10" in message
    save_png(tmp_path / "000006.png", rgb_of(mask))
    message = one_line_error(lambda: all_masks(read_labels(tmp_path)))
    assert "000006.png" in message and "masks of one kind" in message
    (tmp_path / "000006.png").write_bytes(b"not a png")
    assert "000006.png" in one_line_error(lambda: all_masks(read_labels(tmp_path)))


def test_classes_file_must_name_every_label_class(tmp_path: Path) -> None:
    save_png(tmp_path / "000000.png", random_masks(1)[0], PALETTE)
    (tmp_path / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS))
    classes = tmp_path / "classes.txt"
    classes.write_text("road\nsky\nhorses\n")
    message = one_line_error(lambda: read_labels(tmp_path, classes))
    assert "'horse'" in message and "did you mean 'horses'" in message


def test_coco_errors(tmp_path: Path) -> None:
    image = {"id": 1, "file_name": "frame.png", "width": 4, "height": 3}
    path = coco_file(tmp_path / "a.json", [image], [])
    message = one_line_error(lambda: read_labels(path))
    assert "'frame.png'" in message and "cannot tell its frame" in message
    image["frame_index"] = 0
    ann = {"image_id": 1, "category_id": 99, "segmentation": []}
    path = coco_file(tmp_path / "b.json", [image], [ann])
    assert "category_id 99" in one_line_error(lambda: read_labels(path))
    ann = {"image_id": 1, "category_id": 3, "segmentation": {"size": [5, 5], "counts": "00"}}
    path = coco_file(tmp_path / "c.json", [image], [ann])
    assert "RLE size" in one_line_error(lambda: read_labels(path).mask(0))
