"""index.json: class splits (--seen ranges, split files), reading, writing and refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ovseg_cli.datasets.index import (
    index_text,
    load_index,
    parse_ranges,
    read_split_file,
    resolve_split,
)
from ovseg_cli.errors import OvsegError

CLASSES = ["sky", "road", "t-shirt", "traffic_light", "car", "person"]


def test_ranges_indices_and_names() -> None:
    assert parse_ranges("0-2", CLASSES) == [0, 1, 2]
    assert parse_ranges(" 4, 0-1 ,Traffic Light", CLASSES) == [4, 0, 1, 3]
    assert parse_ranges("t-shirt", CLASSES) == [2]  # a name wins over a range
    assert parse_ranges("all", CLASSES) == list(range(6))
    assert parse_ranges("none", CLASSES) == []
    assert parse_ranges("0-79", [f"c{i}" for i in range(124)]) == list(range(80))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0-6", "class index 6 is out of range (6 classes: 0..5)"),
        ("3-1", "runs backwards"),
        ("0,0", "is given twice"),
        ("0,,1", "empty entry"),
        ("prson", "did you mean 'person'?"),
    ],
)
def test_bad_ranges(text: str, message: str) -> None:
    with pytest.raises(OvsegError, match=re.escape(message)):
        parse_ranges(text, CLASSES)


def test_resolve_split_defaults_and_complements(tmp_path: Path) -> None:
    assert resolve_split(CLASSES, None, None, [0, 1]) == ([0, 1], [2, 3, 4, 5])
    assert resolve_split(CLASSES, "4-5,sky", None, [0]) == ([0, 4, 5], [1, 2, 3])
    yml = tmp_path / "split.yaml"
    yml.write_text("unseen: [car, 5]\n")
    assert read_split_file(yml, CLASSES) == ([0, 1, 2, 3], [4, 5])
    js = tmp_path / "split.json"
    js.write_text(json.dumps({"seen": ["0-2"], "unseen": [3, "car", "person"]}))
    assert resolve_split(CLASSES, None, js, [0]) == ([0, 1, 2], [3, 4, 5])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"seen": [0, 1], "unseen": [1, 2, 3, 4, 5]}, "class 1 (road) is both seen and unseen"),
        ({"seen": [0, 1], "unseen": [2, 3]}, "class 4 (car) is neither seen nor unseen"),
        ({"seen": "0-3"}, "seen must be a list"),
        ({"visible": [0]}, "expected a mapping with 'seen' and/or 'unseen'"),
        ({"seen": [0], "extra": 1}, "unknown key 'extra'"),
        ({"seen": [True]}, "is not a class index or name"),
    ],
)
def test_bad_split_files(tmp_path: Path, content: dict, message: str) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps(content))
    with pytest.raises(OvsegError, match=re.escape(message)):
        resolve_split(CLASSES, None, f, [0])


def test_seen_and_split_file_together_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OvsegError, match="not both"):
        resolve_split(CLASSES, "0", tmp_path / "x.yaml", [0])
    with pytest.raises(OvsegError, match="split file not found"):
        resolve_split(CLASSES, None, tmp_path / "x.yaml", [0])


def _index(**changes: object) -> dict:
    data = {
        "format": "folder",
        "version": 1,
        "root": "/src",
        "created": "2025-01-01T00:00:00+00:00",
        "classes": ["a", "b"],
        "split": {"seen": [0], "unseen": [1]},
        "ignore_index": 255,
        "stats": {"frames": 2},
        "prep": {},
        "videos": [
            {"name": "v", "split": "train", "size": [4, 3], "frames": [
                {"image": "/abs/0.png", "label": None},
                {"image": "images/1.png", "label": "labels/1.png"},
            ]},
            {"name": "empty-ish", "split": "val", "frames": []},
        ],
    }  # fmt: skip
    data.update(changes)
    return data


def test_index_text_round_trips_and_paths_resolve(tmp_path: Path) -> None:
    data = _index()
    text = index_text(data)
    assert json.loads(text) == data
    assert '      {"image": "/abs/0.png", "label": null},' in text  # one line per frame
    (tmp_path / "index.json").write_text(text)
    idx = load_index(tmp_path)
    assert idx.classes == ["a", "b"] and idx.seen == [0] and idx.unseen == [1]
    v = idx.videos_in("train")[0]
    assert v.size == (4, 3) and v.labelled == [1]
    assert v.frames[0].image == "/abs/0.png"  # absolute: kept
    assert v.frames[1].image == str(tmp_path / "images/1.png")  # relative to the index folder
    assert v.frames[1].label == str(tmp_path / "labels/1.png")
    assert idx.root == tmp_path and idx.class_names([1]) == ["b"]
    with pytest.raises(OvsegError, match="unknown split 'valid'"):
        idx.videos_in("valid")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 2}, "version 2"),
        ({"classes": []}, "'classes' must be a non-empty list"),
        ({"split": {"seen": [0, 2], "unseen": []}}, "split.seen must list class indices 0..1"),
        ({"ignore_index": "255"}, "'ignore_index' has the wrong type"),
        ({"videos": [{"name": "v", "split": "dev", "frames": []}]}, "video 0 is malformed"),
        ({"videos": [{"name": "v", "split": "val", "frames": [{"img": "x"}]}]}, "malformed"),
    ],
)
def test_malformed_indexes_are_refused(tmp_path: Path, changes: dict, message: str) -> None:
    (tmp_path / "index.json").write_text(json.dumps(_index(**changes)))
    with pytest.raises(OvsegError, match="not a valid ovseg index") as exc:
        load_index(tmp_path / "index.json")
    assert message in str(exc.value)


def test_missing_or_broken_index(tmp_path: Path) -> None:
    with pytest.raises(OvsegError, match="run `ovseg prep"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text("{nope")
    with pytest.raises(OvsegError, match="not JSON"):
        load_index(tmp_path)
