"""Hostile input, round three: `ovseg propagate`'s labels and the messages every command prints.

Each test is a defect a hostile probe found: COCO files that crashed, exhausted memory or
decoded uninitialised bytes, box-only images taken for labelled frames, paths printed as
rich markup, zips from macOS, zip members that unpack to gigabytes, broken links skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image
from pycocotools import mask as coco_mask
from test_propagate_labels import COLORS, NAMES, PALETTE, cvat_zip, random_masks, save_png
from typer.testing import CliRunner
from video_factory import make_video

from ovseg_cli.cli import app
from ovseg_cli.errors import OvsegError
from ovseg_cli.exports.cvat import labelmap_text
from ovseg_cli.propagate import labels as labels_module
from ovseg_cli.propagate.coco_labels import rle_string_counts
from ovseg_cli.propagate.labels import read_labels

runner = CliRunner()
W, H = 96, 64


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "v.mp4", frames=12, size=(W, H))


def _coco(path: Path, annotations: list[dict], frames=(0, 11)) -> Path:
    images = [{"id": i + 1, "file_name": f"f{f}.png", "width": W, "height": H, "frame_index": f}
              for i, f in enumerate(frames)]  # fmt: skip
    for n, ann in enumerate(annotations, start=1):
        ann.setdefault("id", n)
    categories = [{"id": 1, "name": "road"}, {"id": 2, "name": "sky"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return path


def _box(image_id: int, category: int = 1) -> dict:
    return {"image_id": image_id, "category_id": category,
            "segmentation": [[10, 10, 60, 10, 60, 50, 10, 50]]}  # fmt: skip


def _propagate(video: Path, labels: Path, out: Path, *args: str):
    return runner.invoke(app, ["propagate", str(video), "--labels", str(labels), "--masks",
                               "--no-overlay", "-o", str(out), "-q", *args])  # fmt: skip


@pytest.mark.parametrize("value", [1e30, float("nan"), -5000])
def test_polygons_far_outside_the_image_are_refused_before_rasterising(
    tmp_path: Path, video: Path, value: float
) -> None:
    ann = _box(1)
    ann["segmentation"][0][0] = value
    labels = _coco(tmp_path / "far.json", [ann, _box(2)])
    res = _propagate(video, labels, tmp_path / "o")
    assert "lies far outside the 96x64 image" in one_line_error(res)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [({"category_id": [1]}, "unknown category_id [1]"),
     ({"image_id": {"a": 1}}, "unknown image_id {'a': 1}"),
     ({"category_id": True}, "unknown category_id True"),
     ({"segmentation": [10, 10, 60, 10, 60, 50]}, "list of [x1, y1, x2, y2, ...] lists"),
     ({"segmentation": [[10, "a", 60, 10, 60, 50]]}, "other than numbers"),
     ({"segmentation": [[10, 10, 60, 10, 60]]}, "odd number of coordinates"),
     ({"segmentation": "oops"}, "neither RLE nor polygons")],
)  # fmt: skip
def test_wrong_types_in_a_coco_json_are_one_line_errors(
    tmp_path: Path, change: dict, expected: str
) -> None:
    ann = {**_box(1), **change}
    path = _coco(tmp_path / "t.json", [ann, _box(2)])
    with pytest.raises(OvsegError, match="annotation") as info:
        read_labels(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_json_nested_too_deeply_is_a_one_line_error(tmp_path: Path, video: Path) -> None:
    (tmp_path / "deep.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    res = _propagate(video, tmp_path / "deep.json", tmp_path / "o")
    assert "nested too deeply" in one_line_error(res)


def test_a_box_only_image_is_no_labelled_frame(tmp_path: Path, video: Path) -> None:
    box_only = {"image_id": 2, "category_id": 2, "segmentation": [], "bbox": [0, 0, 96, 64]}
    no_key = {"image_id": 2, "category_id": 2, "bbox": [0, 0, 9, 9]}
    path = _coco(tmp_path / "b.json", [_box(1), box_only, no_key, _box(3)], frames=(0, 5, 11))
    labels = read_labels(path)
    assert labels.frames == [0, 11]
    out = tmp_path / "o"
    assert _propagate(video, path, out).exit_code == 0
    middle = np.asarray(Image.open(out / "masks" / "000005.png"))
    assert (middle == 0).mean() > 0.2  # carried from frames 0 and 11, not wiped by frame 5
    assert json.loads((out / "meta.json").read_text())["labels"]["frames"] == [0, 11]


def test_rle_runs_must_cover_the_image(tmp_path: Path) -> None:
    short = {
        "image_id": 1,
        "category_id": 1,
        "segmentation": {"size": [H, W], "counts": [5, 10, 20]},
    }
    with pytest.raises(OvsegError, match=f"RLE counts cover 35 of the image's {H * W} pixels"):
        read_labels(_coco(tmp_path / "s.json", [short]))
    negative = {**short, "segmentation": {"size": [H, W], "counts": [5, -10, H * W + 5]}}
    with pytest.raises(OvsegError, match="negative run"):
        read_labels(_coco(tmp_path / "n.json", [negative]))
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[5:20, 7:30] = 1
    rle = coco_mask.encode(np.asfortranarray(mask))
    cut = {**short, "segmentation": {"size": [H, W], "counts": rle["counts"].decode()[:-1]}}
    with pytest.raises(OvsegError, match="RLE"):
        read_labels(_coco(tmp_path / "c.json", [cut]))


@pytest.mark.parametrize("seed", range(3))
def test_rle_string_runs_are_pycocotools_runs(seed: int) -> None:
    mask = (np.random.default_rng(seed).random((H, W)) > 0.7).astype(np.uint8)
    flat = mask.flatten(order="F")  # COCO runs go down the columns, zeros first
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    runs = ([0] if flat[0] else []) + runs
    counts = coco_mask.encode(np.asfortranarray(mask))["counts"].decode()
    assert rle_string_counts(counts) == runs and sum(runs) == H * W


@pytest.mark.parametrize("name", ["[bold]nope", "x:smile:y"])
def test_paths_print_as_they_are_never_as_markup(tmp_path: Path, video: Path, name: str) -> None:
    res = _propagate(video, tmp_path / name, tmp_path / "o")
    assert f"labels not found: {tmp_path / name}" in one_line_error(res)


def test_a_class_name_in_brackets_prints_as_it_is(tmp_path: Path, video: Path) -> None:
    (tmp_path / "m").mkdir()
    save_png(tmp_path / "m" / "000000.png", random_masks(1, (H, W))[0], PALETTE)
    names = ["car [parked]", *NAMES[1:]]
    (tmp_path / "m" / "labelmap.txt").write_text(labelmap_text(names, COLORS))
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(["car", *NAMES[1:]]))
    res = _propagate(video, tmp_path / "m", tmp_path / "o", "--classes-file", str(classes))
    assert "class 'car [parked]' is not in" in one_line_error(res)


def test_a_macos_zip_of_a_cvat_export_is_read(tmp_path: Path) -> None:
    masks = {0: random_masks(1)[0]}
    path = cvat_zip(tmp_path / "mac.zip", masks, prefix="task/")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("__MACOSX/task/._labelmap.txt", b"\x00\x05\x16\x07 resource fork")
        z.writestr("task/SegmentationClass/._frame_000000.png", b"\x00\x05\x16\x07")
    labels = read_labels(path)
    assert labels.frames == [0] and labels.names == NAMES


def test_a_zip_member_too_large_to_be_a_mask_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = cvat_zip(tmp_path / "big.zip", {0: random_masks(1)[0]})
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("SegmentationClass/frame_000001.png", b"\x00" * (1 << 20))
    monkeypatch.setattr(labels_module, "MAX_MEMBER", 1 << 19)
    with pytest.raises(OvsegError) as info:
        read_labels(path)
    message = str(info.value)
    assert "frame_000001.png: unpacks to 1 MiB: not a mask" in message
    monkeypatch.setattr(labels_module, "MAX_MEMBER", 1 << 30)
    with pytest.raises(OvsegError) as info:
        read_labels(path)
    message = str(info.value)
    assert "no image format PIL knows" in message and "BytesIO" not in message


def test_a_broken_link_named_as_a_mask_is_an_error(tmp_path: Path) -> None:
    save_png(tmp_path / "000000.png", random_masks(1)[0], PALETTE)
    (tmp_path / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS))
    os.symlink(tmp_path / "gone.png", tmp_path / "000005.png")
    with pytest.raises(OvsegError, match=r"000005\.png: not a readable file"):
        read_labels(tmp_path)
    (tmp_path / "000005.png").unlink()
    os.mkfifo(tmp_path / "000006.png")
    with pytest.raises(OvsegError, match=r"000006\.png: not a readable file"):
        read_labels(tmp_path)
    with pytest.raises(OvsegError, match=r"000006\.png: not a file or a folder"):
        read_labels(tmp_path / "000006.png")  # given as the labels: refused, never opened


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["propagate", "x.mp4"], "error: Missing option '--labels' / '-l'. (see 'ovseg propagate --help')"),
     (["propagate", "x.mp4", "-l", "y", "--lables", "z"], "error: No such option: --lables"),
     (["bogus"], "error: No such command 'bogus'. (see 'ovseg --help')"),
     (["segment", "x.mp4", "--out"], "error: Option '--out' requires an argument. (see 'ovseg segment --help')")],
)  # fmt: skip
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ovseg_cli", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith(expected), proc.stderr


def test_ctrl_c_while_the_cli_loads_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from ovseg_cli import cli
    from ovseg_cli.cli import application as app_module

    def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(app_module, "run", interrupted)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 130
    assert capsys.readouterr().err == "error: interrupted (SIGINT)\n"


def test_config_keys_given_twice_or_unknown_are_named(tmp_path: Path, video: Path) -> None:
    labels = _coco(tmp_path / "l.json", [_box(1), _box(2)])
    config = tmp_path / "c.yaml"
    config.write_text("propagate:\n  max_gap: 3\n  max_gap: 4\n")
    res = _propagate(video, labels, tmp_path / "o", "--config", str(config))
    assert "'max_gap' is given twice (line 3)" in one_line_error(res)
    config.write_text("segment:\n  clipp: ViT-B-16\n")
    res = _propagate(video, labels, tmp_path / "o", "--config", str(config))
    message = one_line_error(res)
    assert "unknown setting 'clipp'" in message and "--clipp" not in message
    res = _propagate(video, labels, tmp_path / "o", "--config", str(tmp_path))
    assert "is a folder, not a config file" in one_line_error(res)


def test_output_inside_the_labels_folder_is_refused(tmp_path: Path, video: Path) -> None:
    (tmp_path / "m").mkdir()
    save_png(tmp_path / "m" / "000000.png", random_masks(1, (H, W))[0], PALETTE)
    (tmp_path / "m" / "labelmap.txt").write_text(labelmap_text(NAMES, COLORS))
    res = _propagate(video, tmp_path / "m", tmp_path / "m" / "out")
    assert "lies inside an input folder" in one_line_error(res)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["000000.png", "labelmap.txt"]


def test_messages_name_what_was_wrong(tmp_path: Path, tiny_weights: Path) -> None:
    """A text file given as weights is no weights file (not a dangerous pickle); a list for a
    number-or-text setting names both types."""
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.config_io import from_mapping
    from ovseg_cli.segment.loading import load_model

    text = tmp_path / "weights.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(OvsegError, match="it is no weights file"):
        load_model(SegmentConfig(clip="ovseg-tiny", pretrained=str(text)))
    with pytest.raises(OvsegError, match=r"keyframe_interval must be int or str, not \[1, 2\]"):
        from_mapping(SegmentConfig, {"keyframe_interval": [1, 2]}, source="c.yaml")


def test_training_loader_takes_no_more_workers_than_cores(monkeypatch) -> None:
    from ovseg_cli import threads
    from ovseg_cli.train.config import TrainConfig
    from ovseg_cli.train.data import loader_workers

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    cfg = TrainConfig()
    assert cfg.data.workers == 4 and loader_workers(cfg) == 2


def test_the_bar_of_an_interrupted_run_stays_where_it_stopped() -> None:
    from ovseg_cli.cli.progress import Progress

    def run(bar: Progress, fail: bool) -> None:
        try:  # as the commands do: the bar stops in a finally
            bar.start(240)
            bar.advance(84)
            if fail:
                raise KeyboardInterrupt
        finally:
            bar.stop()

    done, interrupted = Progress("segment"), Progress("segment")
    run(done, fail=False)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted, fail=True)
    assert done.bar.tasks[0].total == 84  # a container's count was an estimate: ends full
    assert interrupted.bar.tasks[0].total == 240  # 84 of 240, not "84/84"


def test_a_size_change_mid_stream_is_said_and_no_truncation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two encodes of another size back to back in one MPEG-TS (as a stream switching
    quality writes): every frame comes at the first size, with one warning, all 30 read."""
    import logging

    from ovseg_cli.video.reader import VideoReader

    first = make_video(tmp_path / "a.ts", frames=15, size=(64, 48), rate=25)
    second = make_video(tmp_path / "b.ts", frames=15, size=(32, 24), rate=25,
                        pts=[15 + i for i in range(15)])  # fmt: skip
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    caplog.set_level(logging.WARNING, logger="ovseg")
    with VideoReader(joined) as reader:
        shapes = [f.rgb.shape for f in reader]
        truncated = reader.truncated
    assert len(shapes) == 30 and set(shapes) == {(48, 64, 3)} and not truncated
    said = [r.getMessage() for r in caplog.records]
    assert sum("changes its frame size to 32x24 mid-stream" in m for m in said) == 1, said
    assert not any("truncated" in m for m in said), said
