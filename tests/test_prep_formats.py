"""`prepare` on each format: fake VSPW, Cityscapes sequences, CamVid and folder layouts, and
the real CamVid copy when ../shared/data/camvid exists."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
from conftest import shared_file
from dataset_factory import (
    make_camvid,
    make_cityscapes,
    make_folder,
    make_vspw,
    pattern,
    vspw_names,
)
from PIL import Image

from ovseg_cli.datasets import ClipDataset, ClipSettings, list_formats, load_index, prepare
from ovseg_cli.datasets.formats import natural_key


def _label(path: str | None) -> np.ndarray:
    assert path is not None
    return np.asarray(Image.open(path))


def test_registry_lists_the_formats() -> None:
    assert list_formats() == ["camvid", "cityscapes", "folder", "vspw"]
    assert sorted(["frame10", "frame2", "Frame1"], key=natural_key) == [
        "Frame1",
        "frame2",
        "frame10",
    ]


def test_vspw_others_and_void_are_ignored_and_split_is_80_44(tmp_path: Path) -> None:
    root = make_vspw(tmp_path / "VSPW_480p")
    res = prepare("vspw", root, tmp_path / "out", workers=2)
    idx = res.index
    assert idx.format == "vspw" and idx.classes == vspw_names(124) and "others" not in idx.classes
    assert idx.seen == list(range(80)) and idx.unseen == list(range(80, 124))
    assert [(v.name, v.split) for v in idx.videos] == [
        ("v_a", "train"), ("v_b", "train"), ("v_c", "val"), ("v_d", "test"),
    ]  # fmt: skip
    v = idx.videos[0]
    assert v.size == (40, 30) and len(v.frames) == 6 and v.labelled == list(range(6))
    assert [Path(f.image).name for f in v.frames] == [f"{i:08d}.jpg" for i in range(1, 7)]
    # raw 0 (others) -> 255, id i -> i - 1, 255 stays
    raw = pattern(2, [0, 1, 81, 124, 255])
    expected = np.select([raw == 0, raw == 255], [255, 255], raw.astype(int) - 1)
    assert np.array_equal(_label(v.frames[2].label), expected)
    assert v.frames[2].label.startswith(str(res.out_dir / "labels" / "train" / "v_a"))
    test = idx.videos_in("test")[0]
    assert all(f.label is None for f in test.frames)
    stats = idx.stats
    assert stats["frames"] == 24 and stats["labelled_frames"] == 18 and stats["videos"] == 4
    counts = stats["pixels_per_class"]
    assert len(counts) == 124 and counts[0] > 0 and counts[80] > 0 and counts[123] > 0
    assert sum(counts) + stats["ignored_pixels"] == 18 * 40 * 30
    assert stats["splits"]["test"]["labelled_frames"] == 0
    assert idx.prep["labels"] == "converted"


def test_vspw_paper_split_by_ranges(tmp_path: Path) -> None:
    root = make_vspw(tmp_path / "v", videos={"train": ["a"]}, frames=2)
    idx = prepare("vspw", root, tmp_path / "o", seen="0-9,100-123").index
    assert idx.seen == [*range(10), *range(100, 124)] and len(idx.unseen) == 90


def test_cityscapes_snippets_train_ids_and_withheld_test_labels(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs")
    idx = prepare("cityscapes", root, tmp_path / "out", workers=1).index
    assert len(idx.classes) == 19 and idx.classes[0] == "road" and idx.classes[13] == "car"
    assert idx.seen == list(range(19)) and idx.unseen == []  # default: all seen
    names = [(v.name, v.split, len(v.frames), v.labelled) for v in idx.videos]
    assert names == [
        ("aachen_000000_000000", "train", 30, [19]),
        ("aachen_000001_000000", "train", 30, [19]),
        ("frankfurt_000000_000275", "val", 30, [19]),
        ("berlin_000000_000100", "test", 30, []),
    ]
    val = idx.videos_in("val")[0]
    assert Path(val.frames[19].image).name == "frankfurt_000000_000294_leftImg8bit.png"
    # labelIds 7 road -> 0, 26 car -> 13, 0 unlabeled -> 255, 33 bicycle -> 18
    raw = pattern(19, [7, 26, 0, 33])
    lut = np.full(256, 255)
    lut[[7, 26, 33]] = [0, 13, 18]
    assert np.array_equal(_label(val.frames[19].label), lut[raw])
    assert idx.stats["labelled_frames"] == 3


def test_camvid_sequences_by_file_name_and_void(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "camvid")
    idx = prepare("camvid", root, tmp_path / "out").index
    assert idx.classes[0] == "Sky" and len(idx.classes) == 11
    assert idx.seen == list(range(7)) and idx.unseen == [7, 8, 9, 10]
    got = [(v.name, v.split, [Path(f.image).stem for f in v.frames]) for v in idx.videos]
    assert got == [
        ("0001TP", "train", ["0001TP_006690", "0001TP_006720", "0001TP_006750", "0001TP_006780"]),
        ("0006R0", "train", ["0006R0_f00930", "0006R0_f00960", "0006R0_f00990"]),
        ("0016E5", "val", [f"0016E5_{n:05d}" for n in range(7959, 7975, 2)]),
    ]
    raw = np.asarray(Image.open(root / "valannot" / "0016E5_07961.png"))
    assert 11 in raw
    assert np.array_equal(_label(idx.videos[2].frames[1].label), np.where(raw == 11, 255, raw))


def test_folder_references_labels_in_place(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine")
    idx = prepare("folder", root, tmp_path / "out").index
    assert idx.classes == ["road", "person", "sky", "car"] and idx.seen == [0, 1, 2, 3]
    ride, walk = idx.videos  # video folders in name order
    assert (ride.name, ride.split) == ("ride", "val")  # listed in val.txt
    assert (walk.name, walk.split) == ("walk", "train")  # not listed: --split, train
    assert [Path(f.image).name for f in walk.frames][:3] == [
        "frame1.png",
        "frame2.png",
        "frame3.png",
    ]
    assert walk.labelled == [0, 3, 6, 9] and ride.labelled == list(range(12))
    assert walk.frames[3].label == str((root / "walk" / "masks" / "frame4.png").resolve())
    assert not (tmp_path / "out" / "labels").exists()
    assert idx.prep["labels"] == "referenced" and idx.prep["split"] == "train"


def test_folder_copy_is_self_contained_and_movable(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", frames=4)
    prepare("folder", root, tmp_path / "out", copy=True, seen="road,sky", options={"split": "test"})
    data = json.loads((tmp_path / "out" / "index.json").read_text())
    frames = [f for v in data["videos"] for f in v["frames"]]
    assert all(not f["image"].startswith("/") for f in frames)
    assert frames[0]["image"] == "images/val/ride/frame1.png"
    assert data["split"] == {"seen": [0, 2], "unseen": [1, 3]}
    shutil.rmtree(root)
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "out", moved)
    idx = load_index(moved)
    assert [v.split for v in idx.videos] == ["val", "test"]
    assert all(Path(f.image).is_file() for v in idx.videos for f in v.frames)
    lab = idx.videos[1].frames[0].label
    assert lab is not None and np.array_equal(_label(lab), pattern(0, [0, 1, 2, 3, 255]))


def test_real_camvid_copy(tmp_path: Path) -> None:
    root = shared_file("camvid")
    res = prepare("camvid", root, tmp_path / "camvid")
    idx = res.index
    assert len(idx.classes) == 11 and idx.seen == list(range(7)) and idx.unseen == [7, 8, 9, 10]
    splits = idx.stats["splits"]
    assert splits["train"]["labelled_frames"] == 367 and splits["val"]["labelled_frames"] == 101
    val = idx.videos_in("val")
    assert [(v.name, len(v.frames)) for v in val] == [("0016E5", 101)]
    stems = [Path(f.image).stem for f in val[0].frames]
    assert stems[0] == "0016E5_07959" and stems[-1] == "0016E5_08159" and stems == sorted(stems)
    assert {v.name for v in idx.videos_in("train")} == {"0001TP", "0006R0", "0016E5"}
    assert all(v.size == (480, 360) for v in idx.videos)
    lab = _label(val[0].frames[0].label)
    assert lab.max() == 255 and set(np.unique(lab)) <= {*range(11), 255}
    assert all(c > 0 for c in idx.stats["pixels_per_class"])
    # the open-vocabulary training view of the real data: seen classes only, unseen masked
    ds = ClipDataset(idx, "val", idx.seen, ClipSettings(train=False), mask_classes=idx.unseen)
    item = ds[50]
    assert len(ds) == 101 and item["indices"].tolist() == [41, 44, 47, 50, 0]
    assert item["frames"].shape == (4, 3, 360, 480)
    assert set(item["label"].unique().tolist()) <= {*range(7), 255}


def test_frames_of_mixed_sizes_are_a_warning_and_clips_resize_them(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", frames=4)
    Image.new("RGB", (20, 15)).save(root / "walk" / "frames" / "frame2.png")
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("ovseg")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.WARNING)
    try:
        idx = prepare("folder", root, tmp_path / "out").index
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert len(messages) == 1 and "frame2.png is 20x15, the first frame 40x30" in messages[0]
    ds = ClipDataset(idx, "train", range(4), ClipSettings(train=False, gaps=(2, 1)))
    item = ds[1]  # t = 3 with context frames 1 and 2 (20x15, resized)
    assert item["indices"].tolist() == [1, 2, 3, 0] and item["frames"].shape == (3, 3, 30, 40)
