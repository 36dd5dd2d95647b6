"""Class lists: parsing, validation, prompts, stable distinct colours."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovseg_cli.classes import (
    ClassSpec,
    colors_for,
    default_color,
    parse_classes,
    read_classes_file,
    resolve_classes,
)
from ovseg_cli.errors import OvsegError


def test_comma_list_is_trimmed() -> None:
    specs = parse_classes(" road , sky,  traffic   light ")
    assert [s.name for s in specs] == ["road", "sky", "traffic light"]
    assert specs[0].texts == ("road",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--classes is empty"),
        ("   ", "--classes is empty"),
        ("road,,sky", "class 2 of 3 is empty"),
        ("road,", "class 2 of 2 is empty"),
        ("road,sky,Road", "'Road' is named twice"),
        ("car, CAR ", "named twice"),
    ],
)
def test_bad_class_lists(text: str, message: str) -> None:
    with pytest.raises(OvsegError, match=message):
        parse_classes(text)


def test_too_many_classes() -> None:
    with pytest.raises(OvsegError, match="at most 255"):
        parse_classes(",".join(f"c{i}" for i in range(256)))


def test_classes_file_with_prompts_colours_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_text(
        "# my classes\n\nroad\nperson: person, pedestrian, rider  # people\n"
        "sky: #87ceeb\ncar: #FF0000, car, automobile\n"
    )
    specs = read_classes_file(f)
    assert [s.name for s in specs] == ["road", "person", "sky", "car"]
    assert specs[1].texts == ("person", "pedestrian", "rider")
    assert specs[2].color == (135, 206, 235) and specs[2].texts == ("sky",)
    assert specs[3].color == (255, 0, 0) and specs[3].prompts == ("car", "automobile")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sky: #zzz", "classes.txt:2: invalid colour '#zzz'"),
        ("sky: blue,, azure", "classes.txt:2: empty prompt"),
        (": sky", "classes.txt:2: the class name before ':' is empty"),
        ("road", "classes.txt: class 'road' is named twice"),
    ],
)
def test_malformed_classes_file_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "classes.txt"
    f.write_text(f"road\n{line}\n")
    with pytest.raises(OvsegError, match=message):
        read_classes_file(f)


def test_empty_classes_file(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_text("# nothing\n\n")
    with pytest.raises(OvsegError, match="no class names"):
        read_classes_file(f)


def test_resolve_takes_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(OvsegError, match="not both"):
        resolve_classes("a", tmp_path / "x.txt")
    with pytest.raises(OvsegError, match="no classes"):
        resolve_classes(None, None)
    assert [s.name for s in resolve_classes(["dog", ClassSpec("cat")], None)] == ["dog", "cat"]


def test_colours_are_distinct_and_stable() -> None:
    many = [default_color(i) for i in range(60)]
    assert len(set(many)) == 60
    assert (0, 0, 0) not in many  # black is "unlabelled"
    specs = parse_classes("a,b,c")
    assert colors_for(specs) == colors_for(parse_classes("a,b,c,d"))[:3]
    mixed = [ClassSpec("a"), ClassSpec("b", color=(1, 2, 3))]
    assert colors_for(mixed) == [default_color(0), (1, 2, 3)]
