"""`ovseg eval --predictions DIR`: masks already written, scored with the paper's metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from dataset_factory import make_folder, make_shapes
from PIL import Image
from test_one_stream import _lossless_video
from typer.testing import CliRunner

from ovseg_cli.cli import app
from ovseg_cli.exports.cvat import labelmap_text
from ovseg_cli.video.rendering import palette_bytes, save_palette_png

runner = CliRunner()
CLASSES = ["road", "person", "sky", "car"]  # make_folder's, in the dataset's order
ROAD, PERSON, SKY, CAR = range(4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'ride' (val): 12 frames of 40x30, all labelled; 'walk' (train): a label every 3rd."""
    from ovseg_cli.datasets import prepare

    base = tmp_path_factory.mktemp("predictions")
    root = make_folder(base / "raw", frames=12)
    return prepare("folder", root, base / "prepared", seen="0,1").out_dir


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two train videos, video0 and video1, of 4 frames of 32x32 named 000.png..003.png."""
    from ovseg_cli.datasets import prepare

    base = tmp_path_factory.mktemp("shapes")
    root = make_shapes(base / "raw", size=32, frames=4, videos=2)
    return prepare("folder", root, base / "prepared").out_dir


def _video(data: Path, name: str):
    from ovseg_cli.datasets.index import load_index

    return next(v for v in load_index(data).videos if v.name == name)


def _labels(data: Path, name: str = "ride") -> list[np.ndarray]:
    """The label of each frame of a video (all labelled)."""
    return [np.array(Image.open(f.label)) for f in _video(data, name).frames]


def _write(
    folder: Path,
    masks: list[np.ndarray] | dict[str, np.ndarray],
    names: list[str],
    *,
    meta: bool = True,
    labelmap: bool = True,
    keyframes: list[int] | None = None,
    video: str = "ride.mp4",
) -> Path:
    """An output folder as `ovseg segment --masks` writes it: masks/NNNNNN.png (or the
    given names), labelmap.txt, meta.json."""
    colors = [((40 * i) % 250 + 5, 100, 200) for i in range(len(names))]
    (folder / "masks").mkdir(parents=True)
    named = masks if isinstance(masks, dict) else {f"{i:06d}": m for i, m in enumerate(masks)}
    for stem, mask in named.items():
        save_palette_png(mask, palette_bytes(colors), folder / "masks" / f"{stem}.png")
    if labelmap:
        (folder / "labelmap.txt").write_text(labelmap_text(names, colors, background="last"))
    if meta:
        info = {
            "input": {"path": f"/videos/{video}"},
            "classes": [{"index": i, "name": n} for i, n in enumerate(names)],
            "propagation": {} if keyframes is None else {"keyframe_indices": keyframes},
        }
        (folder / "meta.json").write_text(json.dumps(info))
    return folder


def _eval(data: Path, out: Path, *args: str | Path) -> dict:
    res = runner.invoke(app, ["eval", "--data", str(data), "-o", str(out), *map(str, args)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())


def _iou(tp: int, fp: int, fn: int) -> float:
    return tp / (tp + fp + fn)


@pytest.mark.parametrize("sub", ["", "masks"])
def test_perfect_predictions(tmp_path: Path, prepared: Path, sub: str) -> None:
    """The ground truth written as masks scores 100 everywhere, given as the output folder
    or as its masks/ folder."""
    seg = _write(tmp_path / "seg", _labels(prepared), CLASSES)
    out = tmp_path / "report"
    report = _eval(prepared, out, "--predictions", seg / sub, "--split", "all", "--vc", "2,4")
    for key in ("mIoU", "fwIoU", "mAcc", "pAcc", "seen", "unseen", "hmean"):
        assert report[key] == 1.0, key
    assert [c["iou"] for c in report["per_class"]] == [1.0] * 4
    assert report["vc"] == {"VC2": 1.0, "VC4": 1.0} and report["vc_windows"]["VC4"] == 8
    assert report["frames"] == report["labelled_frames"] == 12 and report["videos"] == 1
    kinds = report["by_frame_kind"]  # no keyframe_indices: every frame is a keyframe
    assert kinds["keyframes"]["frames"] == 12 and kinds["propagated"]["frames"] == 0
    assert report["model"] is None and report["clip"] is None and report["checkpoint"] is None
    block = report["predictions"]
    assert block["path"] == str(seg / sub if sub else seg)
    assert block["unmatched_classes"] == [] and block["videos"]["ride"]["masks"] == 12
    assert block["videos"]["ride"]["classes_from"] == str(seg / "meta.json")
    assert report["config"]["model"] is None and "eval" in report["config"]
    assert len(list((out / "examples").glob("*.png"))) == 4
    example = np.array(Image.open(next((out / "examples").glob("*.png"))))
    assert example.shape == (30, 120, 3)  # frame | prediction | ground truth, 40x30 each
    assert (out / "per_class_iou.png").stat().st_size > 1000


def test_a_known_corruption(tmp_path: Path, prepared: Path) -> None:
    """Frame 0's sky predicted as car: IoU counted by hand."""
    labels = _labels(prepared)
    preds = [lab.copy() for lab in labels]
    preds[0][labels[0] == SKY] = CAR
    seg = _write(tmp_path / "seg", preds, CLASSES)
    report = _eval(prepared, tmp_path / "r", "--predictions", seg, "--split", "all")
    gt = np.stack(labels)
    sky, car, moved = int((gt == SKY).sum()), int((gt == CAR).sum()), int((labels[0] == SKY).sum())
    scored = int((gt != 255).sum())
    assert moved > 0
    expected = [1.0, 1.0, _iou(sky - moved, 0, moved), _iou(car, moved, 0)]
    assert [c["iou"] for c in report["per_class"]] == pytest.approx(expected)
    assert report["mIoU"] == pytest.approx(np.mean(expected))
    assert report["pAcc"] == pytest.approx(1 - moved / scored)
    assert report["per_class"][SKY]["acc"] == pytest.approx(1 - moved / sky)


def test_unseen_split_scores_unseen_pixels_and_counts_other_classes_as_misses(
    tmp_path: Path, prepared: Path
) -> None:
    """--split unseen (sky, car): road and person pixels are not scored, whatever was
    predicted there; sky predicted as road (a seen class) is a miss, nobody's false positive."""
    labels = _labels(prepared)
    preds = [lab.copy() for lab in labels]
    for p, lab in zip(preds, labels, strict=True):
        p[lab == ROAD] = CAR  # not scored: road is no unseen class
    preds[3][labels[3] == SKY] = ROAD
    seg = _write(tmp_path / "seg", preds, CLASSES)
    report = _eval(prepared, tmp_path / "r", "--predictions", seg)  # --split unseen
    gt = np.stack(labels)
    sky, car, moved = int((gt == SKY).sum()), int((gt == CAR).sum()), int((labels[3] == SKY).sum())
    assert [c["name"] for c in report["per_class"]] == ["sky", "car"]
    assert [c["iou"] for c in report["per_class"]] == pytest.approx([(sky - moved) / sky, 1.0])
    assert report["pAcc"] == pytest.approx(1 - moved / (sky + car))


def test_keyframes_and_propagated_frames_apart(tmp_path: Path, prepared: Path) -> None:
    """meta.json's keyframe_indices are the keyframes: perfect there, 'car' everywhere else."""
    labels = _labels(prepared)
    keys = [0, 4, 8]
    preds = [lab if i in keys else np.full_like(lab, CAR) for i, lab in enumerate(labels)]
    seg = _write(tmp_path / "seg", preds, CLASSES, keyframes=keys)
    report = _eval(prepared, tmp_path / "r", "--predictions", seg, "--split", "all")
    kinds = report["by_frame_kind"]
    assert kinds["keyframes"] == {"frames": 3, "mIoU": 1.0, "pAcc": 1.0}
    rest = np.stack([lab for i, lab in enumerate(labels) if i not in keys])
    scored = int((rest != 255).sum())
    car = int((rest == CAR).sum())
    assert kinds["propagated"]["frames"] == 9
    # only car is predicted: car's IoU is its share of the scored pixels, the others' 0
    assert kinds["propagated"]["mIoU"] == pytest.approx(car / scored / 4)
    assert kinds["propagated"]["pAcc"] == pytest.approx(car / scored)
    gt = np.stack(labels)  # all frames together
    wrong = {c: int((rest == c).sum()) for c in range(4)}
    total = {c: int((gt == c).sum()) for c in range(4)}
    ious = [(total[c] - wrong[c]) / total[c] for c in (ROAD, PERSON, SKY)]
    ious.append(total[CAR] / (total[CAR] + wrong[ROAD] + wrong[PERSON] + wrong[SKY]))
    assert report["mIoU"] == pytest.approx(np.mean(ious))


def test_classes_matched_by_name_in_another_order(
    tmp_path: Path, prepared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A labelmap.txt alone (no meta.json) in another order and spelling; its last black
    'background' line is no class (its value 255 unlabelled, here nowhere)."""
    theirs = ["Car", "SKY", "per_son", "Road"]
    to_theirs = np.full(256, 255, np.uint8)
    to_theirs[[CAR, SKY, PERSON, ROAD]] = [0, 1, 2, 3]
    seg = tmp_path / "seg"
    _write(seg, [to_theirs[lab] for lab in _labels(prepared)], theirs, meta=False)
    assert (seg / "labelmap.txt").read_text().splitlines()[-1] == "background:0,0,0::"
    caplog.set_level(logging.WARNING, logger="ovseg")  # conftest hides warnings
    res = runner.invoke(app, ["eval", "--data", str(prepared), "-o", str(tmp_path / "a"),
                              "--predictions", str(seg), "--split", "all"])  # fmt: skip
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "warning: 1 predicted class(es) not in the dataset count as misses: 'per_son'" in said
    assert "1 evaluated class(es) are no class of the predictions and score 0: 'person'" in said
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [c["iou"] for c in report["per_class"]] == [1.0, 0.0, 1.0, 1.0]  # per son: a miss
    assert report["predictions"]["unmatched_classes"] == ["per_son"]
    theirs[2] = "PERSON"
    (seg / "labelmap.txt").write_text(
        labelmap_text(theirs, [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)], background="last")
    )
    report = _eval(prepared, tmp_path / "b", "--predictions", seg, "--split", "all")
    assert report["mIoU"] == 1.0 and report["pAcc"] == 1.0
    assert report["predictions"]["videos"]["ride"]["classes_from"] == str(seg / "labelmap.txt")
    assert report["predictions"]["unmatched_classes"] == []


def test_class_names_match_whatever_the_case_spaces_and_underscores() -> None:
    from ovseg_cli.datasets.index import PreparedIndex
    from ovseg_cli.evaluation.predictions import class_lut

    index = PreparedIndex(Path("index.json"), "folder", ["Playground_slide", "sky", "tree"],
                          [0], [1, 2], 255, [])  # fmt: skip
    lut = class_lut(["TREE", "playground  slide", "Sky", "other"], index, [0, 2], Path("x"))
    assert lut[:5].tolist() == [1, 0, 255, 255, 255]  # sky is not evaluated: a miss


def test_background_counts_as_a_miss_and_is_listed(tmp_path: Path, prepared: Path) -> None:
    labels = _labels(prepared)
    preds = [lab.copy() for lab in labels]
    for p, lab in zip(preds, labels, strict=True):
        p[(lab == SKY) | (lab == 255)] = 4  # 'background' on the sky and the ignored pixels
    seg = _write(tmp_path / "seg", preds, [*CLASSES, "background"])
    report = _eval(prepared, tmp_path / "r", "--predictions", seg, "--split", "all")
    gt = np.stack(labels)
    sky, scored = int((gt == SKY).sum()), int((gt != 255).sum())
    assert [c["iou"] for c in report["per_class"]] == [1.0, 1.0, 0.0, 1.0]
    assert report["per_class"][SKY]["acc"] == 0.0
    assert report["mIoU"] == 0.75 and report["pAcc"] == pytest.approx(1 - sky / scored)
    assert report["predictions"]["unmatched_classes"] == ["background"]


def test_one_subfolder_per_video(tmp_path: Path, shapes: Path) -> None:
    """video0 as an output folder (NNNNNN.png), video1 as bare masks named after the frames'
    images, sharing DIR's labelmap.txt; a subfolder of no evaluated video is left alone."""
    names = ["background", "red square", "blue disc"]
    preds = tmp_path / "preds"
    _write(preds / "video0", _labels(shapes, "video0"), names, video="video0.mp4")
    bare = {
        Path(f.image).stem: np.array(Image.open(f.label)) for f in _video(shapes, "video1").frames
    }
    assert list(bare) == ["000", "001", "002", "003"]
    (preds / "video1").mkdir()
    for stem, mask in bare.items():
        Image.fromarray(mask).save(preds / "video1" / f"{stem}.png")  # greyscale, not palette
    (preds / "labelmap.txt").write_text(labelmap_text(names, [(9, 9, 9), (1, 2, 3), (4, 5, 6)]))
    (preds / "notes").mkdir()
    report = _eval(shapes, tmp_path / "r", "--predictions", preds, "--split", "all",
                   "--data-split", "train")  # fmt: skip
    assert report["mIoU"] == 1.0 and report["videos"] == 2 and report["labelled_frames"] == 8
    videos = report["predictions"]["videos"]
    assert report["predictions"]["layout"] == "one folder per video"
    assert videos["video0"]["classes_from"] == str(preds / "video0" / "meta.json")
    assert videos["video1"]["classes_from"] == str(preds / "labelmap.txt")


def test_eval_masks_scored_again_give_the_same_report(
    tmp_path: Path, prepared: Path, tiny_weights: Path
) -> None:
    """`ovseg eval --masks` writes masks/<video>/<image stem>.png beside its report.json;
    scoring them (the report folder, or its masks/) reproduces its numbers exactly."""
    first = _eval(prepared, tmp_path / "model", "--data-split", "train", "--split", "all",
                  "--clip", "ovseg-tiny", "--pretrained", tiny_weights, "--size", "64",
                  "--masks", "--vc", "2,3", "-q")  # fmt: skip
    same = ["mIoU", "fwIoU", "mAcc", "pAcc", "per_class", "vc", "vc_windows", "by_frame_kind",
            "seen", "unseen", "hmean", "labelled_frames", "evaluated_classes"]  # fmt: skip
    for k, given in enumerate([tmp_path / "model", tmp_path / "model" / "masks"]):
        again = _eval(prepared, tmp_path / f"again{k}", "--predictions", given, "--split", "all",
                      "--data-split", "train", "--vc", "2,3", "-q")  # fmt: skip
        assert {key: again[key] for key in same} == {key: first[key] for key in same}
        source = again["predictions"]["videos"]["walk"]["classes_from"]
        assert source == str(tmp_path / "model" / "report.json")


def test_segment_output_scores_as_eval_of_the_same_model(tmp_path: Path, prepared: Path) -> None:
    """`ovseg segment --masks` on the dataset's frames (losslessly in a video file), scored
    with --predictions, reports what `ovseg eval` with the same model and settings reports,
    keyframes and propagated frames apart included (from meta.json)."""
    video = _lossless_video(
        [f.image for f in _video(prepared, "ride").frames], tmp_path / "ride.mov"
    )
    model = ["--clip", "ovseg-tiny", "--pretrained", "none", "--keyframe-interval", "3"]
    res = runner.invoke(app, ["segment", str(video), "--classes", ",".join(CLASSES), *model,
                              "--size", "64", "--masks", "--no-overlay", "-o",
                              str(tmp_path / "seg"), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    expected = _eval(prepared, tmp_path / "model", "--split", "all", *model, "--size", "64",
                     "--vc", "2,4", "-q")  # fmt: skip
    report = _eval(prepared, tmp_path / "r", "--predictions", tmp_path / "seg", "--split", "all",
                   "--vc", "2,4", "-q")  # fmt: skip
    same = ["mIoU", "fwIoU", "mAcc", "pAcc", "per_class", "vc", "vc_windows", "by_frame_kind",
            "seen", "unseen", "hmean", "labelled_frames"]  # fmt: skip
    assert {k: report[k] for k in same} == {k: expected[k] for k in same}
    assert report["by_frame_kind"]["keyframes"]["frames"] == 4  # frames 0, 3, 6, 9
    assert report["by_frame_kind"]["propagated"]["frames"] == 8


def _error(tmp_path: Path, data: Path, *args: str | Path) -> str:
    """The one error line of an eval that must fail, after checking it wrote nothing."""
    out = tmp_path / "report"
    res = runner.invoke(app, ["eval", "--data", str(data), "-o", str(out), *map(str, args)])
    line = one_line_error(res, 2)
    assert not out.exists() and not list(tmp_path.glob(".report.partial-*"))
    return line


def test_errors(tmp_path: Path, prepared: Path, shapes: Path) -> None:
    labels = _labels(prepared)
    seg = _write(tmp_path / "seg", labels, CLASSES)
    ok = ["--predictions", seg, "--split", "all"]
    assert "--masks" in _error(tmp_path, prepared, *ok, "--masks")
    line = _error(tmp_path, prepared, *ok, "--clip", "ovseg-tiny")
    assert "--predictions scores written masks: --clip does not apply" in line
    line = _error(tmp_path, prepared, *ok, "--keyframe-interval", "2", "--size", "64")
    assert "--keyframe-interval, --size do not apply" in line
    assert "does not exist" in _error(tmp_path, prepared, "--predictions", tmp_path / "nothing")
    walk = _write(tmp_path / "walk", labels, CLASSES, video="walk.mp4")
    assert "pass --data-split train" in _error(tmp_path, prepared, "--predictions", walk)

    (seg / "masks" / "000005.png").unlink()
    line = _error(tmp_path, prepared, *ok)
    assert "1 labelled frame(s) of video 'ride' have no mask" in line and "frame 5" in line
    save_palette_png(labels[5][:20, :30], palette_bytes([(1, 1, 1)]), seg / "masks" / "000005.png")
    line = _error(tmp_path, prepared, *ok)
    assert f"{seg / 'masks' / '000005.png'} is 30x20 but its label" in line
    assert "frame6.png is 40x30" in line  # the label's file, named too
    save_palette_png(
        np.full_like(labels[5], 7), palette_bytes([(1, 1, 1)]), seg / "masks" / "000005.png"
    )
    assert "pixel value 7 is no class" in _error(tmp_path, prepared, *ok)

    bare = tmp_path / "bare" / "ride"
    bare.mkdir(parents=True)
    Image.fromarray(labels[0]).save(bare / "frame1.png")
    assert "no class names" in _error(tmp_path, prepared, "--predictions", bare)
    (bare / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nfoo:1,2,3::\nbar:4,5,6::\n"
    )
    assert "none of its classes (foo, bar)" in _error(tmp_path, prepared, "--predictions", bare)

    other = _write(tmp_path / "other", _labels(shapes, "video0"), ["red square"], video="x.mp4")
    line = _error(
        tmp_path, shapes, "--predictions", other, "--data-split", "train", "--split", "all"
    )
    assert "cannot tell which of the 2 train videos" in line
    assert "video0, video1" in line and "one subfolder per video" in line
    (tmp_path / "per" / "video0").mkdir(parents=True)
    line = _error(
        tmp_path,
        shapes,
        "--predictions",
        tmp_path / "per",
        "--data-split",
        "train",
        "--split",
        "all",
    )
    assert "4 labelled frame(s) have no prediction" in line and "'video1'" in line


def test_torchrun_two_processes_score_as_one(tmp_path: Path, shapes: Path) -> None:
    """Under torchrun each rank scores its share of the videos; the sums give one's report."""
    import os
    import socket
    import subprocess
    import sys

    names = ["background", "red square", "blue disc"]
    rng = np.random.default_rng(0)
    for video in ("video0", "video1"):
        noisy = [np.where(rng.random(lab.shape) < 0.2, 1, lab) for lab in _labels(shapes, video)]
        _write(tmp_path / "preds" / video, noisy, names, keyframes=[0, 2], video=f"{video}.mp4")
    args = ["eval", "--data", str(shapes), "--predictions", str(tmp_path / "preds"), "--split",
            "all", "--data-split", "train", "--vc", "2,3", "-q"]  # fmt: skip
    one = _eval(shapes, tmp_path / "one", *args[3:])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "ovseg_cli",
           *args, "-o", str(tmp_path / "two")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    exact = ["mIoU", "fwIoU", "mAcc", "pAcc", "per_class", "by_frame_kind", "vc_windows",
             "videos", "labelled_frames", "predictions"]  # fmt: skip
    assert {k: two[k] for k in exact} == {k: one[k] for k in exact}
    assert one["mIoU"] < 1 and one["by_frame_kind"]["propagated"]["frames"] == 4
    assert two["vc"] == {k: pytest.approx(v, rel=1e-12) for k, v in one["vc"].items()}
    examples = sorted(p.name for p in (tmp_path / "two" / "examples").iterdir())
    assert examples == sorted(p.name for p in (tmp_path / "one" / "examples").iterdir())


def test_masks_of_another_video_are_scored_with_a_warning(
    tmp_path: Path, prepared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One video evaluated and a meta.json naming a video the dataset does not have: scored
    as that one video (it may be a re-encode), and said so."""
    seg = _write(tmp_path / "seg", _labels(prepared), CLASSES, video="vtest.avi")
    caplog.set_level(logging.WARNING, logger="ovseg")
    res = runner.invoke(app, ["eval", "--data", str(prepared), "-o", str(tmp_path / "a"),
                              "--predictions", str(seg)])  # fmt: skip
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "its meta.json's input is 'vtest.avi', no video of the dataset; scored as 'ride'" in said
