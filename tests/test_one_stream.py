"""`eval` runs the very stream `segment` runs (issue 14): the same masks frame by frame, its
report recomputed independently, VSPW's VC on sequences with unlabelled gaps."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import shared_file
from dataset_factory import make_folder
from PIL import Image
from test_metrics import vspw_vc
from typer.testing import CliRunner

from ovseg_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ovseg_cli.datasets import prepare

    base = tmp_path_factory.mktemp("onestream")
    root = make_folder(base / "raw", frames=14)  # 'walk': a label on every 3rd frame
    return prepare("folder", root, base / "prepared", seen="0,1").out_dir


def _lossless_video(images: list[str], path: Path) -> Path:
    """The frames of a dataset video as a video file whose decoded pixels are the images'."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=10)
        first = Image.open(images[0])
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, "rgb24"
        for i, name in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.array(Image.open(name).convert("RGB")), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _eval(prepared: Path, out: Path, weights: Path, *extra: str) -> dict:
    res = runner.invoke(
        app, ["eval", "--data", str(prepared), "--split", "all", "--data-split", "train",
              "--clip", "ovseg-tiny", "--pretrained", str(weights), "--size", "64", "--masks",
              "--dense-method", "clearclip", "--templates", "vild",  # as the tiny_model fixture
              "--vc", "2,3", "-o", str(out), "-q", *extra],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("interval", [1, 4])
def test_eval_masks_are_segment_videos_masks(
    tmp_path: Path, prepared: Path, tiny_weights: Path, tiny_model, interval: int
) -> None:
    from ovseg_cli import segment_video
    from ovseg_cli.datasets.index import load_index
    from ovseg_cli.evaluation.protocol import class_specs

    report = _eval(prepared, tmp_path / "r", tiny_weights, "--keyframe-interval", str(interval))
    index = load_index(prepared)
    video = index.videos_in("train")[0]
    images = [f.image for f in video.frames]
    clip = _lossless_video(images, tmp_path / "walk.mov")
    specs = class_specs(index, range(len(index.classes)), None)
    stream = segment_video(clip, specs, model=tiny_model, keyframe_interval=interval)
    compared = 0
    for result, frame in zip(stream, video.frames, strict=True):
        np.testing.assert_array_equal(result.frame, np.array(Image.open(frame.image)))
        if frame.label is None:
            continue
        saved = tmp_path / "r" / "masks" / video.name / f"{Path(frame.image).stem}.png"
        np.testing.assert_array_equal(np.array(Image.open(saved)), result.mask)
        compared += 1
    assert compared == len(video.labelled) == 5
    kinds = report["by_frame_kind"]
    if interval == 1:
        assert kinds["propagated"]["frames"] == 0 and kinds["keyframes"]["frames"] == 5
    else:  # frames 0, 4, 8, 12 are keyframes; labels on 0, 3, 6, 9, 12
        assert kinds["keyframes"]["frames"] == 2 and kinds["propagated"]["frames"] == 3
        assert report["stream"]["keyframe_interval"] == 4


def test_report_recomputed_independently(tmp_path: Path, prepared: Path, tiny_weights: Path):
    """mIoU and per-class IoU from scikit-learn on the saved masks and the label PNGs, and
    VC from VSPW's definition on the same (labels every 3rd frame: gaps between them)."""
    from sklearn.metrics import jaccard_score

    from ovseg_cli.datasets.index import load_index

    report = _eval(prepared, tmp_path / "r", tiny_weights, "--keyframe-interval", "2")
    video = load_index(prepared).videos_in("train")[0]
    preds, gts, frames = [], [], []
    for frame in video.frames:
        if frame.label is None:
            continue
        pred = np.array(
            Image.open(tmp_path / "r" / "masks" / video.name / f"{Path(frame.image).stem}.png")
        )
        gt = np.array(Image.open(frame.label))
        preds.append(pred[gt != 255])
        gts.append(gt[gt != 255])
        frames.append((pred, gt))
    labels = list(range(4))
    iou = jaccard_score(np.concatenate(gts), np.concatenate(preds), labels=labels, average=None)
    present = [
        np.any(np.concatenate(gts) == c) or np.any(np.concatenate(preds) == c) for c in labels
    ]
    ours = [c["iou"] for c in report["per_class"]]
    for c in labels:
        if present[c]:
            assert ours[c] == pytest.approx(iou[c])
        else:
            assert ours[c] is None  # absent from both: no IoU, left out of the mean
    assert report["mIoU"] == pytest.approx(np.mean([iou[c] for c in labels if present[c]]))
    for n in (2, 3):
        assert report["vc"][f"VC{n}"] == pytest.approx(vspw_vc([frames], n))
    assert report["vc_windows"] == {"VC2": 3, "VC3": 2}  # 5 labelled frames: 5 - n windows


@pytest.mark.slow
def test_camvid_val_with_keyframes(tmp_path: Path, tiny_weights: Path) -> None:
    """`ovseg eval --split all --keyframe-interval 4` on prepared CamVid val."""
    root = shared_file("camvid")
    res = runner.invoke(app, ["prep", "camvid", str(root), "--out", str(tmp_path / "cv"), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["eval", "--data", str(tmp_path / "cv"), "--split", "all", "--keyframe-interval",
              "4", "--clip", "ovseg-tiny", "--pretrained", str(tiny_weights), "-o",
              str(tmp_path / "r")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "propagated" in res.output  # the table of keyframes against propagated frames
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    kinds = report["by_frame_kind"]
    assert kinds["keyframes"]["frames"] == 26 and kinds["propagated"]["frames"] == 75
    assert 0 <= kinds["propagated"]["mIoU"] <= 1 and 0 <= kinds["keyframes"]["mIoU"] <= 1


def test_both_segmenters_satisfy_the_declared_interface(tiny_model, tiny_checkpoint) -> None:
    """The stream runs either through the `Segmenter` protocol alone (no probing)."""
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model
    from ovseg_cli.segment.protocol import Segmenter, StreamState

    trained = load_model(SegmentConfig(checkpoint=str(tiny_checkpoint), device="cpu"))
    for model in (tiny_model, trained):
        assert isinstance(model, Segmenter), type(model)
        assert isinstance(model.init_state(), StreamState)
    assert (tiny_model.kind, trained.kind) == ("training-free", "ov2vss")
