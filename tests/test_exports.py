"""Annotation-tool exports (CVAT zip, COCO RLE, stats CSV): every one read back and compared."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from typer.testing import CliRunner
from video_factory import make_video

from ovseg_cli import segment_video
from ovseg_cli.classes import UNLABELLED
from ovseg_cli.cli import app
from ovseg_cli.errors import OvsegError
from ovseg_cli.exports import ExportContext, ExportSet, exporter_names, parse_exports
from ovseg_cli.exports.registry import Exporter, register_exporter

runner = CliRunner()
NAMES = ["road", "background", "sky"]
COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200)]


# --- readers: what an annotation tool would see --------------------------------------------


def coco_index_masks(path: Path) -> dict[str, np.ndarray]:
    """file_name -> (H, W) class-index mask rebuilt from the RLE annotations (255 = none)."""
    data = json.loads(path.read_text())
    COCO(str(path))  # pycocotools' own reader accepts the file
    masks = {}
    for img in data["images"]:
        masks[img["id"]] = np.full((img["height"], img["width"]), UNLABELLED, np.uint8)
    for ann in data["annotations"]:
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        binary = coco_mask.decode(ann["segmentation"]).astype(bool)
        target = masks[ann["image_id"]]
        assert (target[binary] == UNLABELLED).all()  # one class per pixel
        target[binary] = ann["category_id"] - 1
        assert ann["area"] == binary.sum()
        ys, xs = np.nonzero(binary)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    return {img["file_name"]: masks[img["id"]] for img in data["images"]}


def parse_labelmap(text: str) -> dict[str, tuple[int, ...]]:
    """labelmap.txt as CVAT reads it: label name -> colour, in line order."""
    labelmap = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, color, parts, actions = line.split(":")
        assert name not in labelmap and parts == actions == ""
        labelmap[name] = tuple(int(v) for v in color.split(","))
    return labelmap


def read_cvat(path: Path) -> tuple[dict[str, tuple[int, ...]], list[str], dict[str, np.ndarray]]:
    """(labelmap name -> colour, frame names of default.txt, frame name -> (H, W, 3) mask)."""
    with zipfile.ZipFile(path) as z:
        labelmap = parse_labelmap(z.read("labelmap.txt").decode())
        frames = z.read("ImageSets/Segmentation/default.txt").decode().split()
        masks = {}
        for frame in frames:
            img = Image.open(io.BytesIO(z.read(f"SegmentationClass/{frame}.png")))
            assert img.mode == "RGB"
            masks[frame] = np.asarray(img)
        assert len(z.namelist()) == 2 * len(frames) + 2  # + SegmentationObject/ per frame
    return labelmap, frames, masks


def voc_colormap() -> dict[tuple[int, int, int], int]:
    """PASCAL VOC's colour of each id (the devkit's labelcolormap), colour -> id."""
    colormap = {}
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r, g, b = (
                r | (c & 1) << (7 - j),
                g | (c >> 1 & 1) << (7 - j),
                b | (c >> 2 & 1) << (7 - j),
            )
            c >>= 3
        colormap[(r, g, b)] = i
    return colormap


def decode_colors(rgb: np.ndarray, ids: dict[tuple[int, int, int], int]) -> np.ndarray:
    """(H, W) ids of an (H, W, 3) image by colour; every colour must have an id."""
    colors, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    for c in colors:
        assert tuple(int(v) for v in c) in ids, f"colour {tuple(c)} has no id"
    table = np.array([ids[tuple(int(v) for v in c)] for c in colors])
    return table[inverse.ravel()].reshape(rgb.shape[:2])


def cvat_instances(path: Path) -> dict[str, list[tuple[str, int, np.ndarray]]]:
    """frame -> [(label, instance id, pixels)]: cvat.zip read as CVAT documents the format.

    labelmap.txt names the label colours, ImageSets/Segmentation/default.txt lists the
    frames, SegmentationClass/ gives each pixel its label's colour and SegmentationObject/
    its instance's VOC colour; instance 0 (black) is background and imports as nothing.
    """
    with zipfile.ZipFile(path) as z:
        labelmap = parse_labelmap(z.read("labelmap.txt").decode())
        label_ids = {c: i for i, c in enumerate(labelmap.values())}
        frames = z.read("ImageSets/Segmentation/default.txt").decode().split()
        found = {}
        for frame in frames:
            classes = decode_colors(_rgb(z.read(f"SegmentationClass/{frame}.png")), label_ids)
            objects = decode_colors(_rgb(z.read(f"SegmentationObject/{frame}.png")), voc_colormap())
            background = list(labelmap).index("background")
            np.testing.assert_array_equal(objects == 0, classes == background)
            found[frame] = []
            for instance in np.unique(objects[objects > 0]).tolist():
                pixels = objects == instance
                (label,) = np.unique(classes[pixels]).tolist()  # one label per instance
                found[frame].append((list(labelmap)[label], instance, pixels))
    return found


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def cvat_index_mask(rgb: np.ndarray, labelmap: dict, names: list[str]) -> np.ndarray:
    """Map colours back to class indices; every colour must be declared in the labelmap."""
    colors = {c: name for name, c in labelmap.items()}
    assert len(colors) == len(labelmap)  # colours tell labels apart
    out = np.full(rgb.shape[:2], UNLABELLED, np.uint8)
    for color in {tuple(int(v) for v in c) for c in rgb.reshape(-1, 3)}:
        assert color in colors, f"colour {color} not declared in labelmap.txt"
        name = colors[color]
        if name != "background":
            out[(rgb == color).all(-1)] = names.index(name)
    return out


def read_stats(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- the exporters on synthetic masks ------------------------------------------------------


def _masks(n: int, shape: tuple[int, int] = (37, 53)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, shape, dtype=np.uint8) for _ in range(max(n, 4))]
    masks[1][:10] = UNLABELLED
    masks[2][:] = 2  # one class only
    masks[3][:] = UNLABELLED  # nothing labelled
    return masks[:n]


def _export(tmp_path: Path, masks: list[np.ndarray], **kw) -> dict:
    ctx = ExportContext(tmp_path, NAMES, COLORS, "clip.mp4", unlabelled=True)
    sinks = ExportSet(
        ["cvat", "coco", "stats"], ctx, fps=kw.get("fps", 10), start=kw.get("start", 0)
    )
    for i, m in enumerate(masks):
        sinks.add(i, kw.get("t0", 0.0) + i / 10, m)
    meta = sinks.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.json", "cvat.zip", "stats.csv"]
    return meta


def test_every_export_round_trips_synthetic_masks(tmp_path: Path) -> None:
    masks = _masks(5)
    meta = _export(tmp_path, masks)
    names = [f"frame_{i:06d}" for i in range(5)]

    coco = coco_index_masks(tmp_path / "coco.json")
    assert list(coco) == [f"{n}.png" for n in names]
    for m, got in zip(masks, coco.values(), strict=True):
        np.testing.assert_array_equal(got, m)
    data = json.loads((tmp_path / "coco.json").read_text())
    assert data["categories"] == [
        {"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(NAMES)
    ]
    assert [i["frame_index"] for i in data["images"]] == [0, 1, 2, 3, 4]
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    assert meta["coco"]["annotations"] == len(data["annotations"]) == 3 + 3 + 1 + 0 + 3

    labelmap, frames, rgb = read_cvat(tmp_path / "cvat.zip")
    # CVAT's background first; the class named "background" merges into it
    assert labelmap == {"background": (0, 0, 0), "road": COLORS[0], "sky": COLORS[2]}
    assert frames == names
    for m, name in zip(masks, names, strict=True):
        expected = np.where(m == 1, UNLABELLED, m)
        np.testing.assert_array_equal(cvat_index_mask(rgb[name], labelmap, NAMES), expected)

    rows = read_stats(tmp_path / "stats.csv")
    assert len(rows) == 5 * 4 and rows[3]["class"] == "(unlabelled)"
    for i, m in enumerate(masks):
        frame_rows = [r for r in rows if r["frame"] == str(i)]
        assert sum(int(r["pixels"]) for r in frame_rows) == m.size
        assert [int(r["pixels"]) for r in frame_rows] == [(m == c).sum() for c in (0, 1, 2, 255)]
        assert float(frame_rows[0]["time_s"]) == pytest.approx(i / 10)
    totals = meta["stats"]["totals"]
    assert [t["pixels"] for t in totals] == [sum((m == c).sum() for m in masks) for c in range(3)]
    assert meta["stats"]["unlabelled"]["pixels"] == sum((m == 255).sum() for m in masks)
    assert [t["frames_present"] for t in totals] == [3, 3, 4]


def test_cvat_zip_has_segmentation_object_one_instance_per_class(tmp_path: Path) -> None:
    """SegmentationObject/ as CVAT exports it, so CVAT's importer has instances to read."""
    masks = _masks(5)
    meta = _export(tmp_path, masks)
    instances = cvat_instances(tmp_path / "cvat.zip")
    assert list(instances) == [f"frame_{i:06d}" for i in range(5)]
    for m, found in zip(masks, instances.values(), strict=True):
        labels = [label for label, _, _ in found]
        assert len(labels) == len(set(labels))  # one instance per class and frame
        rebuilt = np.full(m.shape, UNLABELLED, np.uint8)
        for label, instance, pixels in found:
            assert instance == NAMES.index(label) + 1  # the same id in every frame
            rebuilt[pixels] = NAMES.index(label)
        # exactly the class mask, "background" (1) merged into CVAT's background
        np.testing.assert_array_equal(rebuilt, np.where(m == 1, UNLABELLED, m))
    assert [len(f) for f in instances.values()] == [2, 2, 1, 0, 2]
    assert "SegmentationObject" in meta["cvat"]["instances"]


def test_frame_numbers_count_from_the_start_of_the_video(tmp_path: Path) -> None:
    """With --start, frames are named by their number in the whole video, as CVAT does."""
    meta = _export(tmp_path, _masks(2), fps=Fraction(30000, 1001), start=1.0, t0=30 * 1001 / 30000)
    assert meta["cvat"]["first_frame"] == 30
    assert read_cvat(tmp_path / "cvat.zip")[1] == ["frame_000030", "frame_000031"]
    assert list(coco_index_masks(tmp_path / "coco.json")) == [
        "frame_000030.png",
        "frame_000031.png",
    ]
    assert [r["frame"] for r in read_stats(tmp_path / "stats.csv")][::4] == ["30", "31"]


def test_exports_write_each_frame_out_as_it_arrives(tmp_path: Path) -> None:
    ctx = ExportContext(tmp_path, NAMES, COLORS, "clip.mp4")
    sinks = ExportSet(["cvat", "coco", "stats"], ctx, fps=10, start=0)
    cvat, coco, stats = sinks.exporters
    zip_size = 0
    for i, m in enumerate(_masks(3, (120, 160))):
        sinks.add(i, i / 10, np.where(m == UNLABELLED, 0, m))
        for f in (cvat._zip.fp, coco._out, stats._file):  # what Python still buffers
            f.flush()
        now = (tmp_path / ".cvat.zip.part").stat().st_size
        assert now > zip_size + 100  # this frame's PNG is in the zip file already
        zip_size = now
        assert f'"image_id": {i + 1},' in (tmp_path / ".coco.json.part").read_text()
        assert len((tmp_path / ".stats.csv.part").read_text().splitlines()) == 1 + 3 * (i + 1)
    sinks.close()
    assert not list(tmp_path.glob(".*"))  # the temporary files are gone


def test_registry_names_and_errors() -> None:
    assert {"cvat", "coco", "stats"} <= set(exporter_names())
    assert parse_exports(" CVAT, coco,cvat ") == ["cvat", "coco"]
    assert parse_exports(["stats"]) == ["stats"]
    with pytest.raises(OvsegError, match=r"unknown export 'cvta'.*did you mean 'cvat'"):
        parse_exports("cvta")
    with pytest.raises(OvsegError, match="export 2 of 3 is empty"):
        parse_exports("cvat,,coco")
    with pytest.raises(ValueError, match="registered twice"):

        @register_exporter("cvat")
        class Again(Exporter):
            pass


# --- end to end: `ovseg segment --export ...` ----------------------------------------------


def _segment(*args: str | Path):
    return runner.invoke(app, ["segment", *map(str, args)], catch_exceptions=False)


def _tiny(weights: Path) -> list[str]:
    return ["--clip", "ovseg-tiny", "--pretrained", str(weights)]


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, small_video: Path, tiny_weights: Path, tiny_model
):
    """One run with every export, own colours, a background class and a mid threshold."""
    d = tmp_path_factory.mktemp("exported")
    classes = d / "classes.txt"
    classes.write_text("road: #ff0000, road, street\nsky\nhorse: #00ff00\n")
    # a threshold inside this model's range of best-class probabilities: some of each
    stream = segment_video(small_video, classes_file=classes, background="other", model=tiny_model)
    conf = torch.cat([torch.softmax(r.logits, 0).amax(0).flatten() for r in stream])
    threshold = float(conf.median())
    out = d / "out"
    res = _segment(
        small_video, "--classes-file", classes, "--background", "other", "--threshold",
        f"{threshold:.6f}", "--export", "cvat,coco,stats", "--masks", "-o", out, "-q",
        *_tiny(tiny_weights),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    masks = {p.stem: np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))}
    return out, masks


def test_cli_run_has_every_export_and_the_background_class(exported) -> None:
    out, masks = exported
    assert len(masks) == 12
    all_values = np.unique(np.stack(list(masks.values())))
    assert UNLABELLED in all_values and len(all_values) > 1  # the threshold left some pixels
    meta = json.loads((out / "meta.json").read_text())
    assert [c["name"] for c in meta["classes"]] == ["road", "sky", "horse", "other"]
    assert meta["classes"][3]["prompts"] == ["other", "background"]
    assert meta["classes"][0]["color"] == [255, 0, 0]
    assert meta["config"]["export"] == ["cvat", "coco", "stats"]
    assert set(meta["output"]["exports"]) == {"cvat", "coco", "stats"}
    assert [p.name for p in out.glob(".*")] == [".ovseg-output.json"]  # the marker, no temporaries


def test_cli_coco_round_trip(exported) -> None:
    out, masks = exported
    coco = coco_index_masks(out / "coco.json")
    assert list(coco) == [f"frame_{int(k):06d}.png" for k in masks]
    for key, got in zip(masks, coco.values(), strict=True):
        np.testing.assert_array_equal(got, masks[key])
    names = [c["name"] for c in json.loads((out / "coco.json").read_text())["categories"]]
    assert names == ["road", "sky", "horse", "other"]


def test_cli_cvat_round_trip(exported) -> None:
    out, masks = exported
    labelmap, frames, rgb = read_cvat(out / "cvat.zip")
    names = ["road", "sky", "horse", "other"]
    assert list(labelmap) == ["background", *names] and labelmap["road"] == (255, 0, 0)
    assert frames == [f"frame_{int(k):06d}" for k in masks]
    instances = cvat_instances(out / "cvat.zip")
    for key, frame in zip(masks, frames, strict=True):
        np.testing.assert_array_equal(cvat_index_mask(rgb[frame], labelmap, names), masks[key])
        rebuilt = np.full(masks[key].shape, UNLABELLED, np.uint8)
        for label, instance, pixels in instances[frame]:
            assert instance == names.index(label) + 1
            rebuilt[pixels] = names.index(label)
        np.testing.assert_array_equal(rebuilt, masks[key])


def test_run_folder_labelmap_declares_black_for_unlabelled_pixels(exported) -> None:
    """--masks' labelmap.txt names every colour of the palette masks, black (255) included."""
    out, masks = exported
    labelmap = parse_labelmap((out / "labelmap.txt").read_text())
    names = ["road", "sky", "horse", "other"]
    # line i is class i (pixel value i); CVAT's black background comes after the classes
    assert list(labelmap) == [*names, "background"] and labelmap["background"] == (0, 0, 0)
    assert labelmap == read_cvat(out / "cvat.zip")[0]  # the zip's labels, colour for colour
    for key, index in masks.items():
        img = Image.open(out / "masks" / f"{key}.png")
        palette = np.asarray(img.getpalette()).reshape(-1, 3)
        assert [tuple(c) for c in palette[: len(labelmap)]] == list(labelmap.values())
        rgb = np.asarray(img.convert("RGB"))  # what readers of colours (CVAT, datumaro) see
        np.testing.assert_array_equal(cvat_index_mask(rgb, labelmap, names), index)


def test_cli_stats_sum_to_frame_area_and_match_meta(exported) -> None:
    out, masks = exported
    rows = read_stats(out / "stats.csv")
    assert list(rows[0]) == ["frame", "time_s", "class", "pixels", "fraction"]
    assert len(rows) == 12 * 5
    for i, m in enumerate(masks.values()):
        frame_rows = [r for r in rows if r["frame"] == str(i)]
        assert sum(int(r["pixels"]) for r in frame_rows) == m.size == 96 * 64
        assert sum(float(r["fraction"]) for r in frame_rows) == pytest.approx(1, abs=1e-5)
    stats = json.loads((out / "meta.json").read_text())["output"]["exports"]["stats"]
    for t in stats["totals"]:
        assert t["pixels"] == sum(int(r["pixels"]) for r in rows if r["class"] == t["class"])
    unl = sum(int(r["pixels"]) for r in rows if r["class"] == "(unlabelled)")
    assert stats["unlabelled"]["pixels"] == unl == sum((m == 255).sum() for m in masks.values())
    assert stats["pixels"] == 12 * 96 * 64


def test_threshold_near_one_and_start_without_overlay(tmp_path: Path, tiny_weights: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=30, size=(64, 48), rate=10)
    out = tmp_path / "out"
    res = _segment(
        video, "-c", "road,sky", "--threshold", "0.999", "--start", "1", "--end", "1.5",
        "--no-overlay", "--export", "stats,cvat,coco", "-o", out, "-q", *_tiny(tiny_weights),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        ".ovseg-output.json", "coco.json", "config.yaml", "cvat.zip", "meta.json", "stats.csv",
    ]  # fmt: skip
    _, frames, rgb = read_cvat(out / "cvat.zip")
    assert frames == [f"frame_{i:06d}" for i in range(10, 15)]  # CVAT's numbers in the video
    assert all((m == 0).all() for m in rgb.values())  # all unlabelled: CVAT background
    data = json.loads((out / "coco.json").read_text())
    assert data["annotations"] == [] and [i["frame_index"] for i in data["images"]] == [
        10, 11, 12, 13, 14,
    ]  # fmt: skip
    rows = read_stats(out / "stats.csv")
    assert [r["pixels"] for r in rows if r["class"] == "(unlabelled)"] == ["3072"] * 5


def test_failing_export_leaves_nothing(
    tmp_path: Path, small_video: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ovseg_cli.exports.stats import StatsExporter

    real_add = StatsExporter.add

    def add(self, frame, time, mask):
        if frame == 3:
            raise OSError("disk full")
        real_add(self, frame, time, mask)

    monkeypatch.setattr(StatsExporter, "add", add)
    out = tmp_path / "out"
    res = _segment(
        small_video, "-c", "a,b", "--export", "cvat,stats", "-o", out, *_tiny(tiny_weights)
    )
    assert res.exit_code == 1 and "disk full" in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
